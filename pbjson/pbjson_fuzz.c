/* pbjson_fuzz.c: libFuzzer target for JSON -> protobuf (tg_pbjson.c), the
 * reader of the agent's config snapshot file, tollctl's --file input and
 * the admin API's JSON objects. The first byte picks a message type, the
 * rest is JSON text.
 *
 * Checked besides "no sanitizer report": loads returns 0, EINVALID or
 * ESYNTAX with a message, and *out is NULL on failure; a message that
 * loads packs, and its JSON (with and without defaults, with a redaction)
 * is produced and loads again into a message that packs to the same
 * bytes (the JSON mapping round-trips). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_base.h"
#include "pbjson/tg_pbjson.h"
#include "tests/fuzz/fuzz.h"
#include "tollgate/v1/admin.pb-c.h"
#include "tollgate/v1/agent.pb-c.h"
#include "tollgate/v1/config.pb-c.h"
#include "tollgate/v1/usage.pb-c.h"

static const ProtobufCMessageDescriptor *const TYPES[] = {
    &tollgate__v1__snapshot__descriptor,     &tollgate__v1__model_route__descriptor,
    &tollgate__v1__api_key__descriptor,      &tollgate__v1__account__descriptor,
    &tollgate__v1__channel__descriptor,      &tollgate__v1__gateway_policy__descriptor,
    &tollgate__v1__price_card__descriptor,   &tollgate__v1__usage_batch__descriptor,
    &tollgate__v1__sync_message__descriptor, &tollgate__v1__ledger_entry__descriptor,
};

static uint8_t *pack(const ProtobufCMessage *m, size_t *n)
{
    *n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*n ? *n : 1);
    TG_FUZZ_CHECK(b != NULL);
    TG_FUZZ_CHECK(protobuf_c_message_pack(m, b) == *n);
    return b;
}

/* m's JSON (opts) loads again as the same message. */
static void roundtrip(const ProtobufCMessageDescriptor *d, const ProtobufCMessage *m, const uint8_t *want,
                      size_t wn, const tg_pbjson_opts_t *opts)
{
    char err[512] = "";
    ProtobufCMessage *m2 = NULL;
    char *text = tg_pbjson_dumps(m, opts);
    TG_FUZZ_CHECK(text != NULL);
    int rc = tg_pbjson_loads(d, text, strlen(text), &m2, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "reload of %s failed: %s\n", text, err);
    TG_FUZZ_CHECK(rc == 0);
    if (want != NULL) {
        size_t n2;
        uint8_t *b2 = pack(m2, &n2);
        if (n2 != wn || memcmp(b2, want, wn) != 0)
            fprintf(stderr, "round trip changed the message: %s\n", text);
        TG_FUZZ_CHECK(n2 == wn && memcmp(b2, want, wn) == 0);
        free(b2);
    }
    protobuf_c_message_free_unpacked(m2, NULL);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const ProtobufCMessageDescriptor *d = TYPES[data[0] % (sizeof TYPES / sizeof TYPES[0])];
    char err[512] = "";
    ProtobufCMessage *m = (ProtobufCMessage *)1;
    int rc = tg_pbjson_loads(d, (const char *)data + 1, size - 1, &m, err, sizeof err);
    TG_FUZZ_CHECK(rc == 0 || rc == TG_PBJSON_EINVALID || rc == TG_PBJSON_ESYNTAX);
    if (rc != 0) {
        TG_FUZZ_CHECK(m == NULL && err[0] != '\0');
        return 0;
    }
    TG_FUZZ_CHECK(m != NULL && m->descriptor == d);
    size_t n;
    uint8_t *b = pack(m, &n);
    ProtobufCMessage *u = protobuf_c_message_unpack(d, NULL, n, b);
    TG_FUZZ_CHECK(u != NULL);
    protobuf_c_message_free_unpacked(u, NULL);
    tg_pbjson_opts_t plain = {0, NULL}, defaults = {TG_PBJSON_DEFAULTS, NULL};
    static const char *const redact[] = {"secret_sha256", "credential", NULL};
    tg_pbjson_opts_t red = {0, redact};
    roundtrip(d, m, b, n, &plain);
    roundtrip(d, m, b, n, &defaults);
    char *r = tg_pbjson_dumps(m, &red);
    TG_FUZZ_CHECK(r != NULL);
    free(r);
    free(b);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
