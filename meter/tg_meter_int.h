/* tg_meter internals shared by the files of meter/: the rank table of one
 * encoding (bpe.c), the pre-tokenizers (split.c) and the Unicode classes
 * they use. Not a public header. */
#ifndef TG_METER_INT_H
#define TG_METER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "meter/tg_meter.h"

/* ---- Unicode classes (data from meter/tools/gen-unicode.mjs) ---------- */

enum {
    UC_L = 1,   /* \p{L} */
    UC_N = 2,   /* \p{N} */
    UC_WS = 4,  /* \s: White_Space */
    UC_M = 8,   /* \p{M} */
    UC_UP = 16, /* o200k [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] */
    UC_LO = 32  /* o200k [\p{Ll}\p{Lm}\p{Lo}\p{M}] */
};

/* Checks and installs the embedded class table. Returns 0 or TG_METER_EDATA. */
int tg_meter_uc_init(char *err, size_t errlen);

/* ---- one encoding's ranks ---------------------------------------------- */

/* A hash slot: a 32-bit tag and the token's length and id. Slots are 8
 * bytes and the table is up to 80% full, so the o200k_base table is 2 MB
 * and mostly stays in cache (16-byte slots with the key inline made it 8 MB
 * and most probes cache misses: 3.5x slower). Keys up to 4 bytes (most of
 * the lookups while merging) are their own tag, so they match without
 * reading the token; longer ones confirm a tag match against the token's
 * bytes, which for frequent (low-rank) tokens are cache-hot. */
typedef struct rank_slot {
    uint32_t rs_tag;  /* the key's bytes (length <= 4) or 32 bits of its hash */
    uint32_t rs_meta; /* length << 24 | (token id + 1); 0 = empty */
} rank_slot_t;

typedef struct special_tok {
    const char *st_text; /* e.g. "<|endoftext|>" */
    size_t st_len;
    uint32_t st_id;
} special_tok_t;

typedef struct bpe_enc {
    tg_meter_encoding_t be_id;
    uint8_t *be_blob;          /* all tokens' bytes, back to back */
    uint32_t *be_off;          /* be_off[id]: offset in be_blob; be_off[n] = end */
    uint32_t be_ntok;          /* ordinary tokens (ids 0..be_ntok-1) */
    uint32_t be_maxlen;        /* longest token in bytes */
    rank_slot_t *be_slots;     /* open addressing, power-of-two size */
    uint32_t be_mask;          /* slots - 1 */
    uint32_t be_byte[256];     /* id of each single byte */
    uint32_t *be_pair;         /* [b0 << 8 | b1]: id of the two-byte token, or UINT32_MAX */
    const special_tok_t *be_special; /* the encoding's special tokens */
    size_t be_nspecial;
} bpe_enc_t;

/* Builds e from the .tiktoken text (base64 token, space, rank per line).
 * Returns 0, TG_METER_ENOMEM or TG_METER_EDATA. Free with bpe_enc_free. */
int bpe_enc_load(bpe_enc_t *e, tg_meter_encoding_t id, const char *text, size_t len, char *err,
                 size_t errlen);
void bpe_enc_free(bpe_enc_t *e);

/* Receives the ids of one piece; returns 0 or a negative code to stop. */
typedef struct bpe_sink {
    int (*bs_emit)(struct bpe_sink *s, const uint32_t *ids, size_t n);
    uint64_t bs_count;
} bpe_sink_t;

/* Byte-pair-encodes one pre-tokenized piece and passes its ids to sink.
 * Returns 0, TG_METER_ENOMEM or what the sink returned. */
int bpe_piece(const bpe_enc_t *e, const uint8_t *p, size_t n, bpe_sink_t *sink);

/* ---- pre-tokenizers ----------------------------------------------------- */

/* End (byte offset) of the piece that starts at i < n in valid UTF-8 s,
 * exactly as the encoding's regex would match it. */
size_t split_cl100k(const uint8_t *s, size_t n, size_t i);
size_t split_o200k(const uint8_t *s, size_t n, size_t i);

#endif
