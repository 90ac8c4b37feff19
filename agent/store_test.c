/* store_test.c: unit tests of the agent's stateful pieces that need no
 * sockets: the configuration tables (JSON snapshot in, lookups, the price
 * in effect, refusal of inconsistent snapshots) and the LMDB outbox (puts,
 * batches written down before sending and resent unchanged, ack, reject,
 * reopen) with its journal (what a killed process left, recovered once;
 * torn and corrupt frames; an emptying that did not reach the disk;
 * emptying under load). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "agent/agent_int.h"
#include "crypto/tg_crypto.h"

static const char *SNAP =
    "{\"revision\":\"5\","
    "\"accounts\":[{\"id\":\"a1\",\"name\":\"A\",\"buckets\":[{\"name\":\"credit\",\"currency\":\"EUR\"}],"
    "  \"route_buckets\":[{\"route_type\":\"ROUTE_TYPE_POOLED\",\"bucket\":\"credit\"}]}],"
    "\"balances\":[{\"account_id\":\"a1\",\"bucket\":\"credit\",\"balance_nano\":\"7\"}],"
    "\"keys\":[{\"id\":\"k1\",\"account_id\":\"a1\",\"secret_sha256\":\"%s\"}],"
    "\"channels\":[{\"id\":\"c1\",\"base_url\":\"http://h/v1/\",\"credential_ref\":\"env:TG_AGENT_TEST_CRED\"}],"
    "\"routes\":[{\"model\":\"m\",\"aliases\":[\"m-alias\"],\"tiers\":[{\"targets\":[{\"channel_id\":\"c1\"}]}]}],"
    "\"price_cards\":["
    "  {\"id\":\"p\",\"version\":\"1\",\"effective_at_us\":\"10\",\"currency\":\"EUR\",\"entries\":[{\"model\":\"m*\","
    "     \"input_per_mtok_nano\":\"1\"}]},"
    "  {\"id\":\"p\",\"version\":\"2\",\"effective_at_us\":\"20\",\"currency\":\"EUR\",\"entries\":[{\"model\":\"m*\","
    "     \"input_per_mtok_nano\":\"2\"},{\"model\":\"m\",\"route_type\":\"ROUTE_TYPE_DIRECT\",\"input_per_mtok_nano\":\"3\"}]},"
    "  {\"id\":\"q\",\"version\":\"9\",\"effective_at_us\":\"0\",\"currency\":\"USD\",\"entries\":[{\"model\":\"*\","
    "     \"input_per_mtok_nano\":\"4\"}]}],"
    "\"policy\":{\"trusted_proxies\":[\"10.0.0.0/8\"],\"max_request_bytes\":\"1234\"}}";

static tg_cfg_t *load(const char *extra_route, char *err)
{
    /* base64 of SHA-256("secret") */
    char text[8192];
    snprintf(text, sizeof text, SNAP, "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=");
    if (extra_route) {
        char *r = strstr(text, "\"routes\":[");
        char tmp[8192];
        size_t at = (size_t)(r - text) + 10;
        snprintf(tmp, sizeof tmp, "%.*s%s,%s", (int)at, text, extra_route, text + at);
        memcpy(text, tmp, strlen(tmp) + 1);
    }
    tg_cfg_t *c = NULL;
    err[0] = '\0';
    tg_cfg_load(text, strlen(text), &c, err, TG_ERRLEN);
    return c;
}

static void test_config(void **st)
{
    (void)st;
    char err[TG_ERRLEN];
    setenv("TG_AGENT_TEST_CRED", "sk-from-env", 1);
    tg_cfg_t *c = load(NULL, err);
    assert_non_null(c);
    uint8_t h[32];
    tg_crypto_sha256("secret", 6, h);
    const tg_key_t *k = tg_cfg_key(c, h);
    assert_non_null(k);
    assert_string_equal(k->id, "k1");
    tg_crypto_sha256("other", 5, h);
    assert_null(tg_cfg_key(c, h));
    assert_ptr_equal(tg_cfg_route(c, "m-alias"), tg_cfg_route(c, "m"));
    assert_null(tg_cfg_route(c, "n"));
    const tg_chan_t *ch = tg_cfg_channel(c, "c1");
    assert_string_equal(ch->ch_credential, "sk-from-env");
    assert_string_equal(ch->ch_chat_url, "http://h/v1/chat/completions");
    const tg_account_t *a = tg_cfg_account(c, "a1");
    assert_string_equal(tg_cfg_bucket(a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED), "credit");
    assert_string_equal(tg_cfg_bucket(a, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_DIRECT), "credit");
    assert_string_equal(tg_cfg_bucket(NULL, TOLLGATE__V1__ROUTE_TYPE__ROUTE_TYPE_POOLED), "wallet");
    assert_int_equal(tg_cfg_balance(c, "a1", "credit")->balance_nano, 7);
    assert_null(tg_cfg_balance(c, "a1", "wallet"));
    assert_string_equal(tg_cfg_currency(c, a, "credit"), "EUR");
    assert_int_equal(tg_cfg_max_request_bytes(c), 1234);
    tg_ip_t ip;
    tg_agent_ip_parse("10.2.3.4", &ip);
    assert_true(tg_cfg_trusted_proxy(c, &ip));
    tg_agent_ip_parse("11.2.3.4", &ip);
    assert_false(tg_cfg_trusted_proxy(c, &ip));

    /* price in effect: by time, version, exact entry and route type, currency */
    const Tollgate__V1__PriceEntry *pe;
    assert_null(tg_cfg_price(c, "m", 1, "EUR", 5, &pe));
    assert_int_equal(tg_cfg_price(c, "m", 1, "EUR", 15, &pe)->version, 1);
    assert_int_equal(pe->input_per_mtok_nano, 1);
    assert_int_equal(tg_cfg_price(c, "m", 1, "EUR", 25, &pe)->version, 2);
    assert_int_equal(pe->input_per_mtok_nano, 3);
    tg_cfg_price(c, "m", 2, "EUR", 25, &pe);
    assert_int_equal(pe->input_per_mtok_nano, 2);
    assert_string_equal(tg_cfg_price(c, "m", 1, "USD", 25, &pe)->id, "q");
    tg_cfg_unref(c);

    /* inconsistent snapshots are refused with the reason */
    assert_null(load("{\"model\":\"x\",\"tiers\":[{\"targets\":[{\"channel_id\":\"nope\"}]}]}", err));
    assert_non_null(strstr(err, "unknown channel \"nope\""));
    assert_null(load("{\"model\":\"m-alias\",\"tiers\":[{\"targets\":[{\"channel_id\":\"c1\"}]}]}", err));
    assert_non_null(strstr(err, "alias m-alias already names a route"));
    unsetenv("TG_AGENT_TEST_CRED");
    assert_null(load(NULL, err));
    assert_non_null(strstr(err, "variable not set"));
    tg_cfg_t *x = NULL;
    assert_int_equal(tg_cfg_load("{\"nope\":1}", 10, &x, err, sizeof err), TG_AGENT_ECONFIG);
    assert_int_equal(tg_cfg_load("\x08\x96", 2, &x, err, sizeof err), TG_AGENT_ECONFIG);
}

typedef struct seen {
    int n;
    uint64_t seq[16];
} seen_t;

static int see(void *arg, uint64_t seq, const void *data, size_t len)
{
    seen_t *s = arg;
    char want[32];
    snprintf(want, sizeof want, "rec-%llu", (unsigned long long)seq);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(data, want, len);
    s->seq[s->n++] = seq;
    return 0;
}

static void put(tg_outbox_t *o, uint64_t want)
{
    char rec[32], err[TG_ERRLEN] = "";
    uint64_t seq = 0;
    snprintf(rec, sizeof rec, "rec-%llu", (unsigned long long)want);
    assert_int_equal(tg_outbox_put(o, rec, strlen(rec), &seq, err, sizeof err), 0);
    assert_int_equal(seq, want);
}

/* The end of an outbox test: its directory removed, nothing left allocated. */
static void done_dir(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(tg_alloc_live(), 0);
}

/* Opens a new outbox with a map of map_bytes in a new directory made from
 * the template dir (filled in); end with tg_outbox_close and done_dir. */
static tg_outbox_t *new_outbox(char *dir, size_t map_bytes)
{
    char err[TG_ERRLEN] = "";
    tg_outbox_t *o = NULL;
    assert_non_null(mkdtemp(dir));
    assert_int_equal(tg_outbox_open(dir, map_bytes, 0, &o, err, sizeof err), 0);
    return o;
}

static void test_outbox(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-outbox-XXXXXX", err[TG_ERRLEN] = "";
    tg_outbox_t *o = new_outbox(dir, 1 << 20);
    tg_outbox_batch_t b, b2;
    assert_int_equal(tg_outbox_batch(o, 10, &b, err, sizeof err), 0); /* empty */
    for (uint64_t i = 1; i <= 5; i++)
        put(o, i);
    assert_int_equal(tg_outbox_depth(o), 5);
    assert_int_equal(tg_outbox_sync(o, err, sizeof err), 0);
    /* a batch of the 3 oldest, then the same batch again until acknowledged */
    assert_int_equal(tg_outbox_batch(o, 3, &b, err, sizeof err), 1);
    assert_int_equal(b.ob_seq, 1);
    assert_int_equal(b.ob_first, 1);
    assert_int_equal(b.ob_last, 3);
    assert_int_equal(b.ob_count, 3);
    put(o, 6);
    assert_int_equal(tg_outbox_batch(o, 100, &b2, err, sizeof err), 1);
    assert_memory_equal(&b, &b2, sizeof b);
    /* reopen (a restart): the batch in flight and the sequence survive */
    tg_outbox_close(o);
    assert_int_equal(tg_outbox_open(dir, 1 << 20, 0, &o, err, sizeof err), 0);
    assert_int_equal(tg_outbox_depth(o), 6);
    assert_int_equal(tg_outbox_batch(o, 100, &b2, err, sizeof err), 1);
    assert_memory_equal(&b, &b2, sizeof b);
    put(o, 7);
    assert_int_equal(tg_outbox_batch_done(o, &b, 0, err, sizeof err), 0);
    assert_int_equal(tg_outbox_depth(o), 4);
    seen_t s = {0};
    assert_int_equal(tg_outbox_scan(o, 100, see, &s, err, sizeof err), 0);
    assert_int_equal(s.n, 4);
    assert_int_equal(s.seq[0], 4);
    assert_int_equal(s.seq[3], 7);
    /* the next batch has the next sequence; a rejected one is set aside */
    assert_int_equal(tg_outbox_batch(o, 2, &b, err, sizeof err), 1);
    assert_int_equal(b.ob_seq, 2);
    assert_int_equal(b.ob_first, 4);
    assert_int_equal(b.ob_last, 5);
    assert_int_equal(tg_outbox_batch_done(o, &b, 1, err, sizeof err), 0);
    assert_int_equal(tg_outbox_depth(o), 2);
    assert_int_equal(tg_outbox_batch(o, 10, &b, err, sizeof err), 1);
    assert_int_equal(b.ob_seq, 3);
    assert_int_equal(b.ob_first, 6);
    tg_outbox_close(o);
    /* a read-only open (the dump command) sees the records */
    assert_int_equal(tg_outbox_open(dir, 1 << 20, 1, &o, err, sizeof err), 0);
    s.n = 0;
    assert_int_equal(tg_outbox_scan(o, 100, see, &s, err, sizeof err), 0);
    assert_int_equal(s.n, 2);
    s.n = 0;
    assert_int_equal(tg_outbox_scan_table(o, 1, 100, see, &s, err, sizeof err), 0);
    assert_int_equal(s.n, 2); /* records 4 and 5, set aside */
    assert_int_equal(s.seq[0], 4);
    tg_outbox_close(o);
    done_dir(dir);
}

/* A withheld answer's record: a zero-cost receipt that keeps the usage. */
static void test_withhold(void **st)
{
    (void)st;
    Tollgate__V1__UsageRecord r = TOLLGATE__V1__USAGE_RECORD__INIT;
    Tollgate__V1__TokenUsage u = TOLLGATE__V1__TOKEN_USAGE__INIT;
    u.input_tokens = 120;
    u.output_tokens = 9;
    r.record_id = "local-x";
    r.usage = &u;
    r.client_status = 200;
    r.error_class = TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_NONE;
    r.cost_nano = 5000;
    r.upstream_cost_nano = 4000;
    r.bucket = "credit";
    uint8_t in[256];
    size_t n = tollgate__v1__usage_record__pack(&r, in);
    void *out = NULL;
    size_t outlen = 0;
    int64_t cost = -1;
    assert_int_equal(tg_outbox_withhold(in, n, "withheld", &out, &outlen, &cost), 0);
    assert_int_equal(cost, 5000);
    Tollgate__V1__UsageRecord *w = tollgate__v1__usage_record__unpack(NULL, outlen, out);
    assert_non_null(w);
    assert_int_equal(w->client_status, 503);
    assert_int_equal(w->error_class, TOLLGATE__V1__ERROR_CLASS__ERROR_CLASS_GATEWAY);
    assert_string_equal(w->error_message, "withheld");
    assert_true(w->answer_withheld);
    assert_int_equal(w->cost_nano, 0);
    assert_int_equal(w->upstream_cost_nano, 4000);
    assert_int_equal(w->usage->input_tokens, 120);
    assert_int_equal(w->usage->output_tokens, 9);
    assert_string_equal(w->bucket, "credit");
    tollgate__v1__usage_record__free_unpacked(w, NULL);
    tg_free(out);
    assert_int_equal(tg_outbox_withhold("\xff\xff", 2, "x", &out, &outlen, &cost), TG_AGENT_EJSON);
}

/* ---- the journal ---------------------------------------------------------- */

/* A process that opens the outbox, puts records from..to (one frame each)
 * and dies without closing: what kill -9 leaves. */
static void child_puts(const char *dir, uint64_t from, uint64_t to)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char err[TG_ERRLEN], rec[32];
        tg_outbox_t *o = NULL;
        if (tg_outbox_open(dir, 1 << 20, 0, &o, err, sizeof err) != 0)
            _exit(2);
        for (uint64_t i = from; i <= to; i++) {
            uint64_t seq = 0;
            snprintf(rec, sizeof rec, "rec-%llu", (unsigned long long)i);
            if (tg_outbox_put(o, rec, strlen(rec), &seq, err, sizeof err) != 0 || seq != i)
                _exit(3);
        }
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static size_t slurp(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

static void spill(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* Opens dir, checks it holds exactly records first..last, in order. */
static void holds(const char *dir, int readonly, uint64_t first, uint64_t last)
{
    char err[TG_ERRLEN] = "";
    tg_outbox_t *o = NULL;
    assert_int_equal(tg_outbox_open(dir, 1 << 20, readonly, &o, err, sizeof err), 0);
    seen_t s = {0};
    assert_int_equal(tg_outbox_scan(o, 100, see, &s, err, sizeof err), 0);
    assert_int_equal(s.n, (int)(last - first + 1));
    for (int i = 0; i < s.n; i++)
        assert_int_equal(s.seq[i], first + (uint64_t)i);
    if (!readonly)
        assert_int_equal(tg_outbox_depth(o), s.n);
    tg_outbox_close(o);
}

static void test_journal_recovery(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-journal-XXXXXX", err[TG_ERRLEN] = "", jpath[64];
    assert_non_null(mkdtemp(dir));
    snprintf(jpath, sizeof jpath, "%s/journal", dir);
    uint8_t buf[4096], stale[4096];
    /* killed after three puts: nothing in LMDB yet; the dump reads the
     * journal, the next start moves the records into LMDB, once */
    child_puts(dir, 1, 3);
    assert_true(slurp(jpath, buf, sizeof buf) > 0);
    holds(dir, 1, 1, 3);
    holds(dir, 0, 1, 3);
    assert_int_equal(slurp(jpath, buf, sizeof buf), 0); /* emptied by the open */
    holds(dir, 0, 1, 3);
    /* a torn last frame (the power went mid-write): the whole frames count */
    child_puts(dir, 4, 6);
    size_t n = slurp(jpath, buf, sizeof buf);
    assert_true(n > 3);
    assert_int_equal(truncate(jpath, (off_t)n - 3), 0);
    holds(dir, 0, 1, 5);
    /* a frame that fails its CRC ends the journal: records 7 in, 8 and 9 out
     * (what follows a corrupt frame is not trusted) */
    child_puts(dir, 6, 9);
    n = slurp(jpath, buf, sizeof buf);
    size_t frame = n / 4;           /* four frames of one equal-length record each */
    buf[frame + frame - 2] ^= 0x20; /* a byte of record 7's frame */
    spill(jpath, buf, n);
    holds(dir, 0, 1, 6);
    /* the emptying of the journal did not reach the disk: its old frames,
     * of records since acknowledged, come back, whole or under new ones,
     * and are not moved again */
    tg_outbox_t *o = NULL;
    assert_int_equal(tg_outbox_open(dir, 1 << 20, 0, &o, err, sizeof err), 0);
    put(o, 7);
    put(o, 8);
    put(o, 9);
    size_t ns = slurp(jpath, stale, sizeof stale);
    assert_true(ns > 0);
    tg_outbox_batch_t b;
    assert_int_equal(tg_outbox_batch(o, 100, &b, err, sizeof err), 1);
    assert_int_equal(b.ob_last, 9);
    assert_int_equal(tg_outbox_batch_done(o, &b, 0, err, sizeof err), 0);
    tg_outbox_set_rotate(o, 1);
    assert_int_equal(tg_outbox_sync(o, err, sizeof err), 0);
    assert_int_equal(slurp(jpath, buf, sizeof buf), 0);
    tg_outbox_close(o);
    spill(jpath, stale, ns); /* [7][8][9] */
    holds(dir, 0, 1, 0);
    spill(jpath, stale, ns);
    child_puts(dir, 10, 10); /* its open skips them too */
    n = slurp(jpath, buf, sizeof buf);
    assert_true(n > 0 && n < ns);
    memcpy(stale, buf, n); /* [10][torn rest of 7..9]: a read stops there */
    spill(jpath, stale, ns);
    holds(dir, 1, 10, 10);
    holds(dir, 0, 10, 10);
    done_dir(dir);
}

/* The journal's CRC is zlib's crc32 (ISA-L computes it now): frames an
 * older agent wrote with zlib read back after an upgrade, and the frames
 * written now carry zlib's value (a downgrade reads them). The header is
 * magic "TGJ1", record count, payload bytes, CRC, first sequence, in host
 * order; each record a 4-byte length and its bytes ("rec-N", then pad
 * dots: ISA-L takes another code path from 256 bytes on). */
static size_t zlib_frame(uint8_t *out, uint64_t first, int n, size_t pad)
{
    uint32_t hdr[4] = {0x314a4754u, (uint32_t)n, 0, 0};
    size_t len = 24;
    for (int i = 0; i < n; i++) {
        char *rec = (char *)out + len + 4;
        uint32_t l = (uint32_t)snprintf(rec, 32, "rec-%llu", (unsigned long long)(first + (uint64_t)i));
        memset(rec + l, '.', pad);
        l += (uint32_t)pad;
        memcpy(out + len, &l, 4);
        len += 4 + l;
    }
    hdr[2] = (uint32_t)(len - 24);
    memcpy(out, hdr, 16);
    memcpy(out + 16, &first, 8);
    hdr[3] = (uint32_t)crc32(0L, out, (uInt)len); /* the header's CRC field still zero */
    memcpy(out + 12, &hdr[3], 4);
    return len;
}

typedef struct {
    uint64_t next;
    size_t pad; /* the dots after records 4 and 5 */
} padded_t;

static int see_padded(void *arg, uint64_t seq, const void *data, size_t len)
{
    padded_t *pd = arg;
    char want[2048];
    int l = snprintf(want, sizeof want, "rec-%llu", (unsigned long long)seq);
    size_t pad = seq == 4 || seq == 5 ? pd->pad : 0;
    memset(want + l, '.', pad);
    assert_int_equal(seq, pd->next);
    assert_int_equal(len, (size_t)l + pad);
    assert_memory_equal(data, want, len);
    pd->next++;
    return 0;
}

static void test_journal_zlib_crc(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-journal-XXXXXX", jpath[64];
    assert_non_null(mkdtemp(dir));
    snprintf(jpath, sizeof jpath, "%s/journal", dir);
    uint8_t buf[4096];
    size_t n = zlib_frame(buf, 1, 3, 0);
    n += zlib_frame(buf + n, 4, 2, 1500);
    spill(jpath, buf, n);
    char err[TG_ERRLEN] = "";
    tg_outbox_t *o = NULL;
    assert_int_equal(tg_outbox_open(dir, 1 << 20, 0, &o, err, sizeof err), 0);
    padded_t pd = {1, 1500};
    assert_int_equal(tg_outbox_scan(o, 100, see_padded, &pd, err, sizeof err), 0);
    assert_int_equal(pd.next, 6);
    assert_int_equal(tg_outbox_depth(o), 5);
    tg_outbox_close(o);
    /* a frame written now: its CRC is zlib's of the same bytes */
    child_puts(dir, 6, 6);
    n = slurp(jpath, buf, sizeof buf);
    assert_int_equal(n, 24 + 4 + 5);
    uint8_t want[64];
    assert_int_equal(zlib_frame(want, 6, 1, 0), n);
    assert_memory_equal(buf, want, n);
    assert_int_equal(tg_outbox_open(dir, 1 << 20, 0, &o, err, sizeof err), 0);
    pd.next = 1;
    assert_int_equal(tg_outbox_scan(o, 100, see_padded, &pd, err, sizeof err), 0);
    assert_int_equal(pd.next, 7);
    tg_outbox_close(o);
    done_dir(dir);
}

typedef struct {
    uint64_t next;
    int bad;
} count_t;

static int count_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    count_t *c = arg;
    char want[32];
    snprintf(want, sizeof want, "rec-%llu", (unsigned long long)seq);
    if (seq != c->next || len != strlen(want) || memcmp(data, want, len) != 0)
        c->bad++;
    c->next++;
    return 0;
}

typedef struct {
    int n;
    size_t big;
} sizes_t;

static int size_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    (void)data;
    sizes_t *z = arg;
    z->n++;
    if (seq == 4)
        z->big = len;
    return 0;
}

/* A record larger than the journal's read window (1 MB) between small
 * ones: moved whole, and what follows it too, at runtime and on recovery. */
static void test_journal_large_frame(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-journal-XXXXXX", err[TG_ERRLEN] = "";
    assert_non_null(mkdtemp(dir));
    size_t big = (3u << 20) / 2;
    char *rec = malloc(big);
    assert_non_null(rec);
    memset(rec, 'b', big);
    for (int recovering = 0; recovering < 2; recovering++) {
        tg_outbox_t *o = NULL;
        assert_int_equal(tg_outbox_open(dir, 64 << 20, 0, &o, err, sizeof err), 0);
        if (!recovering) {
            for (int i = 0; i < 6; i++)
                assert_int_equal(
                    tg_outbox_put(o, i == 3 ? rec : "small", i == 3 ? big : 5, NULL, err, sizeof err), 0);
        }
        sizes_t z = {0, 0};
        assert_int_equal(tg_outbox_scan(o, 100, size_one, &z, err, sizeof err), 0);
        assert_int_equal(z.n, 6);
        assert_int_equal(z.big, big);
        tg_outbox_close(o);
        if (!recovering) { /* again from a journal a crash left: the same six */
            char cmd[160];
            snprintf(cmd, sizeof cmd, "rm -f %s/data.mdb %s/lock.mdb", dir, dir);
            assert_int_equal(system(cmd), 0);
            pid_t pid = fork();
            assert_true(pid >= 0);
            if (pid == 0) {
                tg_outbox_t *c = NULL;
                if (tg_outbox_open(dir, 64 << 20, 0, &c, err, sizeof err) != 0)
                    _exit(2);
                for (int i = 0; i < 6; i++)
                    if (tg_outbox_put(c, i == 3 ? rec : "small", i == 3 ? big : 5, NULL, err, sizeof err) !=
                        0)
                        _exit(3);
                _exit(0);
            }
            int status = 0;
            assert_int_equal(waitpid(pid, &status, 0), pid);
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
    }
    free(rec);
    done_dir(dir);
}

/* Records of 2,000 bytes, "rec-<seq>" and padding, checked in order. */
static int padded_one(void *arg, uint64_t seq, const void *data, size_t len)
{
    count_t *c = arg;
    char want[32];
    int n = snprintf(want, sizeof want, "rec-%llu", (unsigned long long)seq);
    if (seq != c->next || len != 2000 || memcmp(data, want, (size_t)n) != 0)
        c->bad++;
    c->next++;
    return 0;
}

static int put_padded(tg_outbox_t *o, uint64_t want, char *err, size_t errlen)
{
    char rec[2000];
    memset(rec, 'p', sizeof rec);
    memcpy(rec, "rec-", 4);
    int n = snprintf(rec + 4, 24, "%llu", (unsigned long long)want);
    rec[4 + n] = 'p';
    uint64_t seq = 0;
    int rc = tg_outbox_put(o, rec, sizeof rec, &seq, err, errlen);
    if (rc == 0)
        assert_int_equal(seq, want);
    return rc;
}

/* LMDB's map full: the records already put wait in the journal (counted,
 * scanned after LMDB's, recovered on open), new ones are refused, a batch
 * of what LMDB holds still goes out; once it is acknowledged (LMDB empty,
 * nothing else committed) the map frees and puts work again. */
static void test_journal_full_map(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-journal-XXXXXX", err[TG_ERRLEN] = "";
    tg_outbox_t *o = new_outbox(dir, 1 << 20);
    uint64_t seq = 1;
    int full = 0;
    for (int i = 0; i < 5000 && !full; i++) {
        int rc = put_padded(o, seq, err, sizeof err);
        if (rc == 0) {
            seq++;
            if (i % 3 == 2 && tg_outbox_sync(o, err, sizeof err) == TG_AGENT_EFULL)
                assert_non_null(strstr(err, "records wait in the journal"));
        } else {
            assert_int_equal(rc, TG_AGENT_EFULL);
            full = 1;
        }
    }
    assert_true(full);
    uint64_t held = seq - 1;
    assert_int_equal(tg_outbox_depth(o), (long)held);
    count_t c = {1, 0};
    assert_int_equal(tg_outbox_scan(o, SIZE_MAX, padded_one, &c, err, sizeof err), 0);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.next, held + 1); /* LMDB's records, then the journal's */
    tg_outbox_close(o);
    /* reopened: still full, the journal's records held and scanned */
    assert_int_equal(tg_outbox_open(dir, 1 << 20, 0, &o, err, sizeof err), 0);
    assert_int_equal(tg_outbox_depth(o), (long)held);
    c = (count_t){1, 0};
    assert_int_equal(tg_outbox_scan(o, SIZE_MAX, padded_one, &c, err, sizeof err), 0);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.next, held + 1);
    /* full again (the open's move may have found room for what waited) */
    for (int i = 0; i < 5000 && put_padded(o, seq, err, sizeof err) == 0; i++) {
        seq++;
        (void)tg_outbox_sync(o, err, sizeof err);
    }
    assert_int_equal(put_padded(o, seq, err, sizeof err), TG_AGENT_EFULL);
    held = seq - 1;
    /* the reporter: one batch of everything LMDB holds, acknowledged */
    tg_outbox_batch_t b;
    assert_int_equal(tg_outbox_batch(o, 100000, &b, err, sizeof err), 1);
    assert_int_equal(b.ob_first, 1);
    assert_true(b.ob_last < held);
    c = (count_t){1, 0};
    assert_int_equal(tg_outbox_scan(o, b.ob_count, padded_one, &c, err, sizeof err), 0);
    assert_int_equal(c.next, b.ob_last + 1); /* the reporter's read: the batch, nothing more */
    assert_int_equal(tg_outbox_batch_done(o, &b, 0, err, sizeof err), 0);
    /* nothing else commits: the sync thread's ticks free the map */
    int rc = -1;
    for (int tick = 0; tick < 3 && rc != 0; tick++) {
        err[0] = '\0';
        rc = tg_outbox_sync(o, err, sizeof err);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(put_padded(o, seq, err, sizeof err), 0);
    assert_int_equal(tg_outbox_depth(o), (long)(held + 1 - b.ob_last));
    tg_outbox_close(o);
    assert_int_equal(tg_outbox_open(dir, 1 << 20, 0, &o, err, sizeof err), 0);
    c = (count_t){b.ob_last + 1, 0};
    assert_int_equal(tg_outbox_scan(o, SIZE_MAX, padded_one, &c, err, sizeof err), 0);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.next, seq + 1);
    tg_outbox_close(o);
    done_dir(dir);
}

/* A control plane that refuses every batch: the refused records fill the
 * map's share, then puts are refused, and setting the batches aside keeps
 * working (the map is never full to the brim; before the share counted
 * every table, batch_done failed with MDB_MAP_FULL at record ~237). */
static void test_journal_rejected_share(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-journal-XXXXXX", err[TG_ERRLEN] = "";
    tg_outbox_t *o = new_outbox(dir, 1 << 20);
    uint64_t seq = 1;
    int refused = 0;
    tg_outbox_batch_t b;
    for (int i = 0; i < 5000 && !refused; i++) {
        err[0] = '\0';
        if (put_padded(o, seq, err, sizeof err) != 0) {
            refused = 1;
            break;
        }
        seq++;
        (void)tg_outbox_sync(o, err, sizeof err);
        err[0] = '\0';
        if (tg_outbox_batch(o, 10, &b, err, sizeof err) == 1)
            assert_int_equal(tg_outbox_batch_done(o, &b, 1, err, sizeof err), 0);
    }
    assert_true(refused);
    /* what is left goes aside too */
    err[0] = '\0';
    while (tg_outbox_batch(o, 10, &b, err, sizeof err) == 1)
        assert_int_equal(tg_outbox_batch_done(o, &b, 1, err, sizeof err), 0);
    count_t c = {1, 0};
    assert_int_equal(tg_outbox_scan_table(o, 1, SIZE_MAX, padded_one, &c, err, sizeof err), 0);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.next - 1 + (uint64_t)tg_outbox_depth(o), seq - 1); /* each once: aside or waiting */
    tg_outbox_close(o);
    done_dir(dir);
}

/* Puts in batches with syncs between, the journal emptied every few KB,
 * batches formed and acknowledged meanwhile: every record once, in order. */
static void test_journal_rotation(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-journal-XXXXXX", err[TG_ERRLEN] = "", jpath[64];
    tg_outbox_t *o = new_outbox(dir, 16 << 20);
    snprintf(jpath, sizeof jpath, "%s/journal", dir);
    tg_outbox_set_rotate(o, 4096);
    uint64_t seq = 1, acked = 0;
    for (int round = 0; round < 200; round++) {
        tg_outbox_item_t items[7];
        char recs[7][32];
        for (int i = 0; i < 7; i++) {
            snprintf(recs[i], sizeof recs[i], "rec-%llu", (unsigned long long)(seq + (uint64_t)i));
            items[i] = (tg_outbox_item_t){recs[i], strlen(recs[i])};
        }
        assert_int_equal(tg_outbox_put_many(o, items, 7, err, sizeof err), 0);
        seq += 7;
        if (round % 3 == 0)
            assert_int_equal(tg_outbox_sync(o, err, sizeof err), 0);
        if (round % 50 == 49) { /* the reporter: a batch acknowledged */
            tg_outbox_batch_t b;
            assert_int_equal(tg_outbox_batch(o, 100, &b, err, sizeof err), 1);
            assert_int_equal(b.ob_first, acked + 1);
            assert_int_equal(b.ob_count, 100);
            assert_int_equal(tg_outbox_batch_done(o, &b, 0, err, sizeof err), 0);
            acked = b.ob_last;
        }
    }
    uint8_t buf[8192];
    assert_true(slurp(jpath, buf, sizeof buf) < sizeof buf); /* emptied along the way */
    assert_int_equal(tg_outbox_depth(o), (long)(seq - 1 - acked));
    count_t c = {acked + 1, 0};
    assert_int_equal(tg_outbox_scan(o, SIZE_MAX, count_one, &c, err, sizeof err), 0);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.next, seq);
    tg_outbox_close(o);
    assert_int_equal(slurp(jpath, buf, sizeof buf), 0); /* a clean close leaves it empty */
    assert_int_equal(tg_outbox_open(dir, 16 << 20, 0, &o, err, sizeof err), 0);
    assert_int_equal(tg_outbox_depth(o), (long)(seq - 1 - acked));
    uint64_t s2 = 0;
    assert_int_equal(tg_outbox_put(o, "x", 1, &s2, err, sizeof err), 0);
    assert_int_equal(s2, seq); /* the sequence goes on */
    tg_outbox_close(o);
    done_dir(dir);
}

/* ---- the journal under threads ------------------------------------------- */

#define RACE_PUTTERS 3
#define RACE_PUTS 400 /* put_many calls per putter, 1-5 records each */

typedef struct {
    tg_outbox_t *rc_o;
    atomic_int rc_putters_left;
    atomic_int rc_failed;
    uint64_t rc_acked; /* the reporter's */
    int rc_bad;        /* the reporter's: a batch not starting after the last */
} race_t;

static void *race_putter(void *arg)
{
    race_t *r = arg;
    char err[TG_ERRLEN] = "", recs[5][16];
    for (int i = 0; i < RACE_PUTS; i++) {
        tg_outbox_item_t items[5];
        int n = 1 + i % 5;
        for (int k = 0; k < n; k++) {
            snprintf(recs[k], sizeof recs[k], "r%d", i);
            items[k] = (tg_outbox_item_t){recs[k], strlen(recs[k])};
        }
        if (tg_outbox_put_many(r->rc_o, items, (size_t)n, err, sizeof err) != 0)
            atomic_fetch_add(&r->rc_failed, 1);
        if (i % 8 == 0)
            usleep(100); /* long enough for the sync thread and the reporter to run beside */
    }
    atomic_fetch_sub(&r->rc_putters_left, 1);
    return NULL;
}

static void *race_syncer(void *arg)
{
    race_t *r = arg;
    char err[TG_ERRLEN] = "";
    while (atomic_load(&r->rc_putters_left) > 0) {
        if (tg_outbox_sync(r->rc_o, err, sizeof err) != 0) {
            atomic_fetch_add(&r->rc_failed, 1);
        }
        usleep(200);
    }
    return NULL;
}

static void *race_reporter(void *arg)
{
    race_t *r = arg;
    char err[TG_ERRLEN] = "";
    /* and at least one batch, however the threads were scheduled */
    for (int spins = 0; atomic_load(&r->rc_putters_left) > 0 || (r->rc_acked == 0 && spins < 1000); spins++) {
        tg_outbox_batch_t b;
        int got = tg_outbox_batch(r->rc_o, 37, &b, err, sizeof err);
        if (got == 1) {
            if (b.ob_first != r->rc_acked + 1 || b.ob_last - b.ob_first + 1 != b.ob_count)
                r->rc_bad++;
            if (tg_outbox_batch_done(r->rc_o, &b, 0, err, sizeof err) != 0)
                atomic_fetch_add(&r->rc_failed, 1);
            r->rc_acked = b.ob_last;
        } else if (got < 0) {
            atomic_fetch_add(&r->rc_failed, 1);
        }
        usleep(300);
    }
    return NULL;
}

static int race_count(void *arg, uint64_t seq, const void *data, size_t len)
{
    count_t *c = arg;
    (void)data;
    (void)len;
    if (seq != c->next)
        c->bad++;
    c->next = seq + 1;
    return 0;
}

/* Workers putting while the sync thread moves and empties the journal
 * (every 2 KB) and the reporter forms and acknowledges batches: every
 * sequence once, in order, acknowledged or held; nothing fails. */
static void test_journal_threads(void **st)
{
    (void)st;
    char dir[] = "/tmp/tg-agent-journal-XXXXXX", err[TG_ERRLEN] = "";
    race_t r = {0};
    r.rc_o = new_outbox(dir, 64 << 20);
    tg_outbox_set_rotate(r.rc_o, 2048);
    atomic_init(&r.rc_putters_left, RACE_PUTTERS);
    atomic_init(&r.rc_failed, 0);
    pthread_t t[RACE_PUTTERS + 2];
    for (int i = 0; i < RACE_PUTTERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, race_putter, &r), 0);
    assert_int_equal(pthread_create(&t[RACE_PUTTERS], NULL, race_syncer, &r), 0);
    assert_int_equal(pthread_create(&t[RACE_PUTTERS + 1], NULL, race_reporter, &r), 0);
    for (int i = 0; i < RACE_PUTTERS + 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(atomic_load(&r.rc_failed), 0);
    assert_int_equal(r.rc_bad, 0);
    uint64_t total = 0;
    for (int i = 0; i < RACE_PUTS; i++)
        total += (uint64_t)(1 + i % 5);
    total *= RACE_PUTTERS;
    assert_true(r.rc_acked > 0);
    assert_int_equal(tg_outbox_depth(r.rc_o), (long)(total - r.rc_acked));
    count_t c = {r.rc_acked + 1, 0};
    assert_int_equal(tg_outbox_scan(r.rc_o, SIZE_MAX, race_count, &c, err, sizeof err), 0);
    assert_int_equal(c.bad, 0);
    assert_int_equal(c.next, total + 1);
    tg_outbox_close(r.rc_o);
    done_dir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_outbox),
        cmocka_unit_test(test_journal_recovery),
        cmocka_unit_test(test_journal_zlib_crc),
        cmocka_unit_test(test_journal_rotation),
        cmocka_unit_test(test_journal_large_frame),
        cmocka_unit_test(test_journal_full_map),
        cmocka_unit_test(test_journal_rejected_share),
        cmocka_unit_test(test_journal_threads),
        cmocka_unit_test(test_withhold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
