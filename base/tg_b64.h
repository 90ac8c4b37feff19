/* tg_b64: standard base64 (RFC 4648, with padding), the one codec of the
 * project: etcd's JSON gateway carries keys and values in it, meter's rank
 * files spell tokens in it, pbjson writes protobuf bytes fields with it.
 * Strict: the decoder accepts only canonical input (no whitespace, no stray
 * bits, padding only at the end), so mangled input is an error, never
 * silently different bytes. Pure functions, thread-safe. */
#ifndef TG_B64_H
#define TG_B64_H

#include <stddef.h>
#include <stdint.h>

/* Bytes tg_b64_encode writes for n input bytes, plus the NUL. */
#define TG_B64_ENCLEN(n) ((((n) + 2) / 3) * 4 + 1)

/* Encodes n bytes of src into dst (TG_B64_ENCLEN(n) bytes), NUL-terminated.
 * Returns the length without the NUL. Can't fail. */
size_t tg_b64_encode(const uint8_t *src, size_t n, char *dst);

/* Decodes n characters of src into dst (at least n / 4 * 3 bytes). Returns
 * the decoded length, or -1 when src is not canonical padded base64. */
long tg_b64_decode(const char *src, size_t n, uint8_t *dst);

#endif
