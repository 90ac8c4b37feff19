/* tg_utf8: strings taken from outside (an upstream's error body, its
 * x-request-id, a curl message, a client's User-Agent or run header) made
 * fit for a protobuf string field, which must be valid UTF-8 for other
 * readers (protobuf-c packs anything; Go, Python and protobuf-c's own
 * unpacker in tollctl refuse it). Cuts land on character boundaries, and
 * every byte that does not start a valid UTF-8 sequence (stray
 * continuation bytes, overlongs, surrogates, past U+10FFFF) becomes
 * U+FFFD. Pure functions, thread-safe. */
#ifndef TG_UTF8_H
#define TG_UTF8_H

#include <stddef.h>

/* Copies src[0..n) into dst[0..dstlen) as valid UTF-8, NUL-terminated:
 * invalid bytes replaced by U+FFFD (3 bytes), stopping before the first
 * character that would not fit whole (never a partial sequence). A NUL in
 * src ends the copy. Returns the bytes written without the NUL. dstlen 0
 * writes nothing. Can't fail. */
size_t tg_utf8_clean(char *dst, size_t dstlen, const char *src, size_t n);

/* Length of the valid UTF-8 sequence at p[0..n), 0 when the bytes there do
 * not start one. Can't fail. */
size_t tg_utf8_seq(const unsigned char *p, size_t n);

#endif
