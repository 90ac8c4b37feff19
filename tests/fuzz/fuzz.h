/* fuzz.h: what every fuzz target shares: the libFuzzer entry point's
 * prototype and TG_FUZZ_CHECK, an assertion that holds in every build mode
 * (NDEBUG does not remove it) and names the failed condition. */
#ifndef TG_FUZZ_H
#define TG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TG_FUZZ_CHECK(c)                                                              \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#endif
