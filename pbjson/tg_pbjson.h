/* tg_pbjson: protobuf-c messages to and from JSON, driven by descriptors.
 *
 * Used where people and scripts read or write Tollgate objects: the audit
 * log's before/after, `tollctl --json` output, and `tollctl ... --file x.json`
 * input. Not used on any hot path.
 *
 * Mapping (the proto3 JSON mapping, with original field names):
 *  - field names as written in the .proto (snake_case); input also accepts
 *    lowerCamelCase;
 *  - 64-bit integers as JSON strings (lossless in jq and JavaScript); input
 *    accepts strings or numbers; 32-bit integers and floats as numbers;
 *  - enums by name ("ROUTE_TYPE_DIRECT"); input also accepts the number or
 *    the short name in any case ("direct");
 *  - bytes as standard base64; maps as objects; repeated as arrays; a oneof as
 *    its one set member;
 *  - output skips fields equal to their default unless TG_PBJSON_DEFAULTS.
 *  - output of a string field that is not valid UTF-8 (protobuf-c does not
 *    check, and stored rows may hold cut or foreign text) has each invalid
 *    byte replaced by U+FFFD, so a reader sees the row instead of failing.
 * Input is strict: an unknown field or a value of the wrong type is an error
 * whose message names the path ("tiers[0].targets[1].weight: expected an
 * integer"), so a typo in an operator's file never passes silently.
 *
 * jansson (Debian libjansson-dev) builds the tree: these documents are small
 * and the control plane is not latency-bound here.
 */
#ifndef TG_PBJSON_H
#define TG_PBJSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

enum tg_pbjson_error {
    TG_PBJSON_OK = 0,
    TG_PBJSON_EINVALID = -300, /* the JSON does not fit the message */
    TG_PBJSON_ENOMEM = -301,   /* allocation failed */
    TG_PBJSON_ESYNTAX = -302   /* the text is not JSON */
};

const char *tg_pbjson_strerror(int code);

enum {
    TG_PBJSON_DEFAULTS = 1 << 0, /* emit fields that hold their default value */
};

/* Options of tg_pbjson_to_json. redact: NULL-terminated field names whose
 * values are replaced by the string "<redacted>" wherever they appear
 * (credentials, secret hashes); may be NULL. */
typedef struct tg_pbjson_opts {
    int po_flags;              /* TG_PBJSON_* */
    const char *const *po_redact;
} tg_pbjson_opts_t;

/* Converts m to a new JSON object (caller owns it: json_decref). opts may be
 * NULL. Returns NULL only when out of memory (bad UTF-8 is replaced, never
 * an error). */
json_t *tg_pbjson_to_json(const ProtobufCMessage *m, const tg_pbjson_opts_t *opts);

/* Converts m to compact JSON text (caller frees with free()). NULL when out
 * of memory. */
char *tg_pbjson_dumps(const ProtobufCMessage *m, const tg_pbjson_opts_t *opts);

/* Builds a message of type d from JSON object j. On success returns 0 and
 * *out, which the caller frees with protobuf_c_message_free_unpacked(*out,
 * NULL). On failure returns TG_PBJSON_EINVALID / TG_PBJSON_ENOMEM, writes the
 * path and reason into err and leaves *out NULL. */
int tg_pbjson_from_json(const ProtobufCMessageDescriptor *d, const json_t *j, ProtobufCMessage **out,
                        char *err, size_t errlen);

/* The same from JSON text of len bytes (TG_PBJSON_ESYNTAX with line and
 * column when it does not parse). */
int tg_pbjson_loads(const ProtobufCMessageDescriptor *d, const char *text, size_t len,
                    ProtobufCMessage **out, char *err, size_t errlen);

#endif
