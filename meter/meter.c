/* meter.c: the public tokenizer API of tg_meter.h: loading the embedded
 * encodings, UTF-8 repair, special tokens, the encode/count loop, and the
 * model-to-encoding map. */
#include <pthread.h>
#include <string.h>

#include "base/tg_base.h"
#include "meter/tg_meter_int.h"

extern const char tg_meter_data_cl100k_base[];
extern const uint64_t tg_meter_data_cl100k_base_len;
extern const char tg_meter_data_o200k_base[];
extern const uint64_t tg_meter_data_o200k_base_len;

/* Each encoding is loaded on first use (parsing ~2-4 MB of ranks takes tens
 * of milliseconds; a tool that needs one should not pay for both). */
struct tg_meter {
    pthread_mutex_t m_lock;
    int m_ready[TG_METER_NENCODINGS]; /* read with acquire, set with release */
    bpe_enc_t m_enc[TG_METER_NENCODINGS];
};

/* The special tokens of each encoding, as tiktoken's encoders define them
 * (node_modules/tiktoken/encoders/<name>.json, "special_tokens"). */
#define ST(s, id) {s, sizeof(s) - 1, id}
static const special_tok_t cl100k_special[] = {
    ST("<|endoftext|>", 100257), ST("<|fim_prefix|>", 100258), ST("<|fim_middle|>", 100259),
    ST("<|fim_suffix|>", 100260), ST("<|endofprompt|>", 100276),
};
static const special_tok_t o200k_special[] = {
    ST("<|endoftext|>", 199999),
    ST("<|endofprompt|>", 200018),
};

const char *tg_meter_strerror(int code)
{
    switch ((code > 0 || code < TG_METER_ELAST) ? TG_METER_ELAST : code) {
    case TG_METER_OK:
        return "ok";
    case TG_METER_ENOMEM:
        return "out of memory";
    case TG_METER_EENCODING:
        return "unknown encoding";
    case TG_METER_ESPECIAL:
        return "text holds a special token";
    case TG_METER_EDATA:
        return "embedded tokenizer data is corrupt";
    case TG_METER_EJSON:
        return "not a valid chat request";
    case TG_METER_EMODEL:
        return "unknown model";
    case TG_METER_ETOOBIG:
        return "input too large";
    case TG_METER_ELAST:
        return "unknown error code";
    }
    return "unknown error code";
}

int tg_meter_encoding_from_name(const char *name, tg_meter_encoding_t *out, char *err,
                                size_t errlen)
{
    if (name && strcmp(name, "cl100k_base") == 0) {
        *out = TG_METER_CL100K_BASE;
        return 0;
    }
    if (name && strcmp(name, "o200k_base") == 0) {
        *out = TG_METER_O200K_BASE;
        return 0;
    }
    return tg_errf(err, errlen, TG_METER_EENCODING,
                   "unknown encoding '%s': use cl100k_base or o200k_base", name ? name : "");
}

const char *tg_meter_encoding_name(tg_meter_encoding_t enc)
{
    switch (enc) {
    case TG_METER_CL100K_BASE:
        return "cl100k_base";
    case TG_METER_O200K_BASE:
        return "o200k_base";
    case TG_METER_NENCODINGS:
        break;
    }
    return "?";
}

tg_meter_t *tg_meter_create(char *err, size_t errlen)
{
    tg_meter_t *m = NULL;

    if (tg_meter_uc_init(err, errlen) != 0)
        return NULL;
    m = tg_calloc(1, sizeof *m);
    if (!m) {
        tg_errf(err, errlen, TG_METER_ENOMEM, "out of memory creating the tokenizer");
        return NULL;
    }
    pthread_mutex_init(&m->m_lock, NULL);
    return m;
}

void tg_meter_destroy(tg_meter_t *m)
{
    if (!m)
        return;
    for (int i = 0; i < TG_METER_NENCODINGS; i++)
        if (m->m_ready[i])
            bpe_enc_free(&m->m_enc[i]);
    pthread_mutex_destroy(&m->m_lock);
    tg_free(m);
}

/* Sets *out to the encoding, loading it on first use. Returns 0,
 * TG_METER_EENCODING, TG_METER_ENOMEM or TG_METER_EDATA. */
static int get_enc(const tg_meter_t *cm, tg_meter_encoding_t enc, const bpe_enc_t **out,
                   char *err, size_t errlen)
{
    tg_meter_t *m = (tg_meter_t *)cm; /* lazily filled; immutable once ready */
    int rc = 0;
    if ((unsigned)enc >= TG_METER_NENCODINGS)
        return tg_errf(err, errlen, TG_METER_EENCODING, "unknown encoding %d", (int)enc);
    if (__atomic_load_n(&m->m_ready[enc], __ATOMIC_ACQUIRE)) {
        *out = &m->m_enc[enc];
        return 0;
    }
    pthread_mutex_lock(&m->m_lock);
    if (!m->m_ready[enc]) {
        const char *text = enc == TG_METER_CL100K_BASE ? tg_meter_data_cl100k_base
                                                       : tg_meter_data_o200k_base;
        size_t len = enc == TG_METER_CL100K_BASE ? tg_meter_data_cl100k_base_len
                                                 : tg_meter_data_o200k_base_len;
        if ((rc = bpe_enc_load(&m->m_enc[enc], enc, text, len, err, errlen)) == 0) {
            m->m_enc[enc].be_special = enc == TG_METER_CL100K_BASE ? cl100k_special : o200k_special;
            m->m_enc[enc].be_nspecial = enc == TG_METER_CL100K_BASE
                                            ? sizeof cl100k_special / sizeof cl100k_special[0]
                                            : sizeof o200k_special / sizeof o200k_special[0];
            __atomic_store_n(&m->m_ready[enc], 1, __ATOMIC_RELEASE);
        }
    }
    *out = &m->m_enc[enc];
    pthread_mutex_unlock(&m->m_lock);
    return rc;
}

void tg_meter_ids_free(tg_meter_ids_t *ids)
{
    if (!ids)
        return;
    tg_free(ids->ids_v);
    memset(ids, 0, sizeof *ids);
}

const char *tg_meter_token_bytes(const tg_meter_t *m, tg_meter_encoding_t enc, uint32_t id,
                                 size_t *len)
{
    const bpe_enc_t *e;
    if (get_enc(m, enc, &e, NULL, 0) != 0)
        return NULL;
    if (id < e->be_ntok) {
        *len = e->be_off[id + 1] - e->be_off[id];
        return (const char *)e->be_blob + e->be_off[id];
    }
    for (size_t i = 0; i < e->be_nspecial; i++) {
        if (e->be_special[i].st_id == id) {
            *len = e->be_special[i].st_len;
            return e->be_special[i].st_text;
        }
    }
    return NULL;
}

/* ---- UTF-8 repair ------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[i], or 0 with *bad set to the
 * length of the maximal ill-formed subpart (WHATWG / Unicode 3.9 "U+FFFD
 * substitution of maximal subparts"). */
static size_t utf8_seq(const uint8_t *s, size_t n, size_t i, size_t *bad)
{
    uint8_t b = s[i], lo = 0x80, hi = 0xBF;
    size_t need;
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0)
            lo = 0xA0;
        if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0)
            lo = 0x90;
        if (b == 0xF4)
            hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t k = 1; k <= need; k++) {
        if (i + k >= n || s[i + k] < lo || s[i + k] > hi) {
            *bad = k;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

/* Sets *out to text when it is valid UTF-8 (*copy NULL), else to a repaired
 * copy the caller frees (*copy). Returns 0 or TG_METER_ENOMEM. */
static int utf8_repair(const uint8_t *s, size_t n, const uint8_t **out, size_t *outn,
                       uint8_t **copy)
{
    size_t i = 0, bad;
    *copy = NULL;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t l = utf8_seq(s, n, i, &bad);
        if (!l)
            break;
        i += l;
    }
    if (i == n) {
        *out = s;
        *outn = n;
        return 0;
    }
    /* each bad byte becomes at most 3 bytes (EF BF BD) */
    uint8_t *d = tg_malloc(n * 3 + 1);
    if (!d)
        return TG_METER_ENOMEM;
    memcpy(d, s, i);
    size_t o = i;
    while (i < n) {
        size_t l = utf8_seq(s, n, i, &bad);
        if (l) {
            memcpy(d + o, s + i, l);
            o += l;
            i += l;
        } else {
            memcpy(d + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    *out = d;
    *outn = o;
    *copy = d;
    return 0;
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct ids_sink {
    bpe_sink_t is_base;
    tg_meter_ids_t *is_ids;
} ids_sink_t;

static int emit_ids(bpe_sink_t *s, const uint32_t *ids, size_t n)
{
    tg_meter_ids_t *v = ((ids_sink_t *)s)->is_ids;
    if (v->ids_n + n > v->ids_cap) {
        size_t cap = v->ids_cap ? v->ids_cap : 64;
        while (cap < v->ids_n + n)
            cap *= 2;
        uint32_t *p = tg_realloc(v->ids_v, cap * sizeof *p);
        if (!p)
            return TG_METER_ENOMEM;
        v->ids_v = p;
        v->ids_cap = cap;
    }
    memcpy(v->ids_v + v->ids_n, ids, n * sizeof *ids);
    v->ids_n += n;
    s->bs_count += n;
    return 0;
}

static int emit_count(bpe_sink_t *s, const uint32_t *ids, size_t n)
{
    (void)ids;
    s->bs_count += n;
    return 0;
}

/* The first special token at or after s[from], or NULL; sets *at. */
static const special_tok_t *find_special(const bpe_enc_t *e, const uint8_t *s, size_t n,
                                         size_t from, size_t *at)
{
    const uint8_t *p = s + from, *end = s + n;
    while (p < end && (p = memchr(p, '<', (size_t)(end - p))) != NULL) {
        if (end - p >= 2 && p[1] == '|') {
            for (size_t k = 0; k < e->be_nspecial; k++) {
                const special_tok_t *st = &e->be_special[k];
                if ((size_t)(end - p) >= st->st_len && memcmp(p, st->st_text, st->st_len) == 0) {
                    *at = (size_t)(p - s);
                    return st;
                }
            }
        }
        p++;
    }
    return NULL;
}

static int encode_ordinary(const bpe_enc_t *e, const uint8_t *s, size_t n, bpe_sink_t *sink)
{
    size_t (*split)(const uint8_t *, size_t, size_t) =
        e->be_id == TG_METER_CL100K_BASE ? split_cl100k : split_o200k;
    size_t i = 0;
    while (i < n) {
        size_t j = split(s, n, i);
        int rc = bpe_piece(e, s + i, j - i, sink);
        if (rc != 0)
            return rc;
        i = j;
    }
    return 0;
}

static int encode_any(const tg_meter_t *m, tg_meter_encoding_t enc, const char *text, size_t len,
                      tg_meter_special_t special, bpe_sink_t *sink, char *err, size_t errlen)
{
    const uint8_t *s;
    uint8_t *copy = NULL;
    size_t n, at, from = 0;
    const special_tok_t *st;
    int rc = 0;

    if (len > TG_METER_MAX_INPUT)
        return tg_errf(err, errlen, TG_METER_ETOOBIG,
                       "input of %zu bytes is larger than the %zu-byte limit", len,
                       TG_METER_MAX_INPUT);
    const bpe_enc_t *e;
    if ((rc = get_enc(m, enc, &e, err, errlen)) != 0)
        return rc;
    if (utf8_repair((const uint8_t *)text, len, &s, &n, &copy) != 0) {
        rc = tg_errf(err, errlen, TG_METER_ENOMEM, "out of memory repairing UTF-8");
        goto done;
    }
    if (special == TG_METER_SPECIAL_TEXT) {
        rc = encode_ordinary(e, s, n, sink);
        goto done;
    }
    if (special == TG_METER_SPECIAL_REJECT) {
        if ((st = find_special(e, s, n, 0, &at)) != NULL) {
            rc = tg_errf(err, errlen, TG_METER_ESPECIAL,
                         "the text holds the special token %s at byte %zu; allow special "
                         "tokens or count them as text",
                         st->st_text, at);
            goto done;
        }
        rc = encode_ordinary(e, s, n, sink);
        goto done;
    }
    while ((st = find_special(e, s, n, from, &at)) != NULL) {
        if ((rc = encode_ordinary(e, s + from, at - from, sink)) != 0 ||
            (rc = sink->bs_emit(sink, &st->st_id, 1)) != 0)
            goto done;
        from = at + st->st_len;
    }
    rc = encode_ordinary(e, s + from, n - from, sink);
done:
    if (rc == TG_METER_ENOMEM)
        tg_errf(err, errlen, rc, "out of memory encoding %zu bytes", len);
    tg_free(copy);
    return rc;
}

int tg_meter_encode(const tg_meter_t *m, tg_meter_encoding_t enc, const char *text, size_t len,
                    tg_meter_special_t special, tg_meter_ids_t *ids, char *err, size_t errlen)
{
    ids_sink_t s = {{emit_ids, 0}, ids};
    size_t before = ids->ids_n;
    int rc = encode_any(m, enc, text, len, special, &s.is_base, err, errlen);
    if (rc != 0)
        ids->ids_n = before;
    return rc;
}

int tg_meter_count(const tg_meter_t *m, tg_meter_encoding_t enc, const char *text, size_t len,
                   tg_meter_special_t special, uint64_t *count, char *err, size_t errlen)
{
    bpe_sink_t s = {emit_count, 0};
    int rc = encode_any(m, enc, text, len, special, &s, err, errlen);
    if (rc == 0)
        *count = s.bs_count;
    return rc;
}

/* ---- models ------------------------------------------------------------- */

/* Model families, matched by prefix at a boundary ('-', '.', ':', '@' or
 * the end); the longest match wins. Exact families follow tiktoken's
 * model_to_encoding.json; estimate scales are documented in README.md. */
static const struct family {
    const char *f_prefix;
    tg_meter_model_kind_t f_kind;
    tg_meter_encoding_t f_enc;
    uint32_t f_scale_ppm;
} families[] = {
    {"gpt-4o", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"chatgpt-4o", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"gpt-4.1", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"gpt-4.5", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"gpt-5", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"o1", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"o3", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"o4", TG_METER_MODEL_EXACT, TG_METER_O200K_BASE, 1000000},
    {"gpt-4", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
    {"gpt-3.5", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
    {"gpt-35", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
    {"text-embedding-3", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
    {"text-embedding-ada-002", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
    {"davinci-002", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
    {"babbage-002", TG_METER_MODEL_EXACT, TG_METER_CL100K_BASE, 1000000},
    {"claude", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1200000},
    {"gemini", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
    {"deepseek", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
    {"qwen", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
    {"kimi", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
    {"moonshot", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
    {"glm", TG_METER_MODEL_ESTIMATE, TG_METER_O200K_BASE, 1100000},
};

int tg_meter_model_lookup(const char *model, int allow_estimate, tg_meter_model_t *out, char *err,
                          size_t errlen)
{
    const struct family *best = NULL;
    const char *name = model ? model : "";
    const char *slash = strrchr(name, '/');
    if (slash)
        name = slash + 1;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        size_t l = strlen(families[i].f_prefix);
        if (strncasecmp(name, families[i].f_prefix, l) != 0)
            continue;
        char next = name[l]; /* in bounds: name matched l characters */
        /* exact families end at a boundary ("o1" must not take "o10");
         * estimate families take any suffix ("qwen2.5-72b") */
        if (families[i].f_kind == TG_METER_MODEL_EXACT && next != '\0' && next != '-' &&
            next != '.' && next != ':' && next != '@')
            continue;
        if (!best || l > strlen(best->f_prefix))
            best = &families[i];
    }
    if (best) {
        out->mm_kind = best->f_kind;
        out->mm_encoding = best->f_enc;
        out->mm_scale_ppm = best->f_scale_ppm;
        out->mm_family = best->f_prefix;
        return 0;
    }
    if (!allow_estimate)
        return tg_errf(err, errlen, TG_METER_EMODEL,
                       "unknown model '%s': no tokenizer is known for it", name);
    out->mm_kind = TG_METER_MODEL_ESTIMATE;
    out->mm_encoding = TG_METER_O200K_BASE;
    out->mm_scale_ppm = 1000000;
    out->mm_family = "unknown";
    return 0;
}
