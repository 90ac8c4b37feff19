/* tgstore: a command-line client for tg_store, for operators looking at the
 * control plane's state (either backend) and for the end-to-end tests.
 *
 *   tgstore SPEC get KEY
 *   tgstore SPEC put KEY VALUE [--lease ID]
 *   tgstore SPEC del KEY [--prefix]
 *   tgstore SPEC range PREFIX [--limit N]
 *   tgstore SPEC watch PREFIX [--from REV] [--count N] [--timeout-ms MS]
 *   tgstore SPEC rev | compact REV | lease-grant TTL | lease-revoke ID
 *
 * Keys and values on the command line may use \xNN escapes for any byte;
 * output escapes bytes outside printable ASCII (and backslash) the same way.
 * Exit status: 0 ok, 1 not found / watch timed out, 2 store error (message
 * on stderr), 64 usage. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/tg_base.h"
#include "store/store.h"

static int usage(void)
{
    fprintf(stderr, "usage: tgstore SPEC get KEY | put KEY VALUE [--lease ID] | del KEY [--prefix]\n"
                    "       | range PREFIX [--limit N] | watch PREFIX [--from REV] [--count N]\n"
                    "       [--timeout-ms MS] | rev | compact REV | lease-grant TTL | lease-revoke ID\n"
                    "SPEC: lmdb:/dir or etcd:http://host:port[,http://...]\n");
    return 64;
}

/* Decodes \xNN escapes in place; returns the byte length. */
static size_t unescape(char *s)
{
    size_t o = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '\\' && s[i + 1] == 'x' && isxdigit((unsigned char)s[i + 2]) &&
            isxdigit((unsigned char)s[i + 3])) {
            char hex[3] = {s[i + 2], s[i + 3], 0};
            s[o++] = (char)strtol(hex, NULL, 16);
            i += 3;
        } else {
            s[o++] = s[i];
        }
    }
    return o;
}

static void print_bytes(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
            putchar(p[i]);
        else
            printf("\\x%02x", p[i]);
    }
}

static long long num(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end) {
        fprintf(stderr, "tgstore: '%s' is not a number\n", s);
        exit(64);
    }
    return v;
}

/* Value of --name in argv[from..], or def. */
static const char *flag(int argc, char **argv, int from, const char *name, const char *def)
{
    for (int i = from; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return i + 1 < argc ? argv[i + 1] : def;
    return def;
}

static int has(int argc, char **argv, int from, const char *name)
{
    for (int i = from; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    char err[TG_ERRLEN] = "";
    tg_store_t *s = NULL;
    int rc = 0, out = 0;
    if (argc < 3)
        return usage();
    const char *cmd = argv[2];
    if (tg_store_open(&s, argv[1], NULL, err, sizeof(err))) {
        fprintf(stderr, "tgstore: %s\n", err);
        return 2;
    }
    if (!strcmp(cmd, "get") && argc >= 4) {
        tg_store_kv_t *kv = NULL;
        size_t kl = unescape(argv[3]);
        if (!(rc = tg_store_get(s, argv[3], kl, &kv, NULL, err, sizeof(err)))) {
            if (!kv) {
                fprintf(stderr, "tgstore: not found\n");
                out = 1;
            } else {
                print_bytes(kv->kv_val, kv->kv_val_len);
                printf("\n");
            }
            tg_store_kv_free(kv);
        }
    } else if (!strcmp(cmd, "put") && argc >= 5) {
        int64_t rev = 0;
        size_t kl = unescape(argv[3]), vl = unescape(argv[4]);
        long long lease = num(flag(argc, argv, 5, "--lease", "0"));
        if (!(rc = tg_store_put(s, argv[3], kl, argv[4], vl, lease, &rev, err, sizeof(err))))
            printf("%lld\n", (long long)rev);
    } else if (!strcmp(cmd, "del") && argc >= 4) {
        int64_t n = 0;
        size_t kl = unescape(argv[3]);
        if (!(rc = tg_store_delete(s, argv[3], kl, has(argc, argv, 4, "--prefix"), &n, NULL, err,
                                   sizeof(err))))
            printf("%lld\n", (long long)n);
    } else if (!strcmp(cmd, "range") && argc >= 4) {
        tg_store_range_res_t res;
        tg_store_range_req_t rq = {.rq_key = argv[3],
                                   .rq_key_len = unescape(argv[3]),
                                   .rq_prefix = 1,
                                   .rq_limit = num(flag(argc, argv, 4, "--limit", "0"))};
        if (!(rc = tg_store_range(s, &rq, &res, err, sizeof(err)))) {
            for (size_t i = 0; i < res.rs_n; i++) {
                print_bytes(res.rs_kvs[i].kv_key, res.rs_kvs[i].kv_key_len);
                printf("\t");
                print_bytes(res.rs_kvs[i].kv_val, res.rs_kvs[i].kv_val_len);
                printf("\t%lld\n", (long long)res.rs_kvs[i].kv_mod_rev);
            }
            tg_store_range_res_free(&res);
        }
    } else if (!strcmp(cmd, "watch") && argc >= 4) {
        tg_store_watch_t *w = NULL;
        size_t kl = unescape(argv[3]);
        long long count = num(flag(argc, argv, 4, "--count", "-1"));
        int tmo = (int)num(flag(argc, argv, 4, "--timeout-ms", "-1"));
        rc = tg_store_watch(s, argv[3], kl, NULL, 0, 1, num(flag(argc, argv, 4, "--from", "0")), &w, err,
                            sizeof(err));
        if (!rc) {
            printf("watching from %lld\n", (long long)tg_store_watch_next_rev(w));
            fflush(stdout);
        }
        for (long long i = 0; !rc && i != count; i++) {
            tg_store_event_t *ev = NULL;
            rc = tg_store_watch_next(w, tmo, &ev, err, sizeof(err));
            if (rc == TG_STORE_EAGAIN) {
                fprintf(stderr, "tgstore: no event within %d ms\n", tmo);
                rc = 0;
                out = 1;
                break;
            }
            if (rc)
                break;
            printf("%s ", ev->ev_type == TG_STORE_EV_PUT ? "PUT" : "DELETE");
            print_bytes(ev->ev_kv.kv_key, ev->ev_kv.kv_key_len);
            if (ev->ev_type == TG_STORE_EV_PUT) {
                printf(" ");
                print_bytes(ev->ev_kv.kv_val, ev->ev_kv.kv_val_len);
            }
            printf(" %lld\n", (long long)ev->ev_kv.kv_mod_rev);
            fflush(stdout);
            tg_store_event_free(ev);
        }
        tg_store_watch_cancel(w);
    } else if (!strcmp(cmd, "rev")) {
        int64_t rev = 0;
        if (!(rc = tg_store_revision(s, &rev, err, sizeof(err))))
            printf("%lld\n", (long long)rev);
    } else if (!strcmp(cmd, "compact") && argc >= 4) {
        rc = tg_store_compact(s, num(argv[3]), err, sizeof(err));
    } else if (!strcmp(cmd, "lease-grant") && argc >= 4) {
        int64_t id = 0;
        if (!(rc = tg_store_lease_grant(s, num(argv[3]), &id, err, sizeof(err))))
            printf("%lld\n", (long long)id);
    } else if (!strcmp(cmd, "lease-revoke") && argc >= 4) {
        rc = tg_store_lease_revoke(s, num(argv[3]), err, sizeof(err));
    } else {
        tg_store_close(s);
        return usage();
    }
    if (rc) {
        fprintf(stderr, "tgstore: %s: %s\n", tg_store_strerror(rc), err);
        out = 2;
    }
    tg_store_close(s);
    return out;
}
