/* cmd_money.c: tollctl's commands about prices and money and the rest of
 * the admin API: price cards, top-ups and adjustments, balances, ledger
 * queries and CSV export, run receipts, run budgets, the gateway policy,
 * agents, the audit log and whoami. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/tg_base.h"
#include "cli/cmd_admin.h"
#include "cli/tollctl_int.h"
#include "tollgate/v1/admin.pb-c.h"

#define CONN "  common: --server HOST:PORT --token-file F --json --tls --ca F --cert F --key F --timeout S\n"

static void set_str(json_t *o, const char *k, const char *v)
{
    if (v) json_object_set_new(o, k, json_string(v));
}

/* Parses, connects, calls and prints an object; for the simple commands. */
static int simple(tc_t *c, const char *method, const ProtobufCMessageDescriptor *reqd, json_t *req,
                  const ProtobufCMessageDescriptor *respd, json_t **out)
{
    int rc = tc_connect(c);
    if (rc != TOLLCTL_OK) {
        json_decref(req);
        return rc;
    }
    return tc_call(c, method, reqd, req, respd, out);
}

static int usage_err(const char *u)
{
    fputs(u, stderr);
    return TOLLCTL_USAGE;
}

static void r_nano(const json_t *o, const char *field, char *buf, size_t len)
{
    tc_nano(json_string_value(json_object_get(o, field)), buf, len);
}
static void r_balance(const json_t *o, char *b, size_t l) { r_nano(o, "balance_nano", b, l); }
static void r_reserved(const json_t *o, char *b, size_t l) { r_nano(o, "reserved_nano", b, l); }
static void r_amount(const json_t *o, char *b, size_t l) { r_nano(o, "amount_nano", b, l); }
static void r_cost(const json_t *o, char *b, size_t l) { r_nano(o, "cost_nano", b, l); }
static void r_charged(const json_t *o, char *b, size_t l) { r_nano(o, "charged_nano", b, l); }
static void r_after(const json_t *o, char *b, size_t l) { r_nano(o, "balance_after_nano", b, l); }
static void r_entries(const json_t *o, char *b, size_t l)
{
    snprintf(b, l, "%zu", json_array_size(json_object_get(o, "entries")));
}
static void r_time(const json_t *o, const char *field, char *buf, size_t len)
{
    const char *s = json_string_value(json_object_get(o, field));
    long long us = s ? strtoll(s, NULL, 10) : 0;
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    buf[0] = '\0';
    if (!us) return;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
static void r_effective(const json_t *o, char *b, size_t l) { r_time(o, "effective_at_us", b, l); }
static void r_settled(const json_t *o, char *b, size_t l) { r_time(o, "settled_at_us", b, l); }
static void r_at(const json_t *o, char *b, size_t l) { r_time(o, "at_us", b, l); }
static void r_seen(const json_t *o, char *b, size_t l) { r_time(o, "last_seen_at_us", b, l); }
static void r_model(const json_t *o, char *b, size_t l)
{
    const char *m = json_string_value(json_object_get(json_object_get(o, "record"), "requested_model"));
    snprintf(b, l, "%s", m ? m : "");
}

/* ---- price ----------------------------------------------------------------------------- */

static const tc_col_t CARD_COLS[] = {{"ID", "id", NULL},
                                     {"VERSION", "version", NULL},
                                     {"CURRENCY", "currency", NULL},
                                     {"EFFECTIVE", NULL, r_effective},
                                     {"ENTRIES", NULL, r_entries},
                                     {"BY", "published_by.token_name", NULL},
                                     {"NOTE", "note", NULL},
                                     {NULL, NULL, NULL}};

static const char PRICE_USAGE[] =
    "usage: tollctl price publish --file card.json [--expected-version V] [--effective TIME]\n"
    "       tollctl price get ID [--version V]     (default: the version in effect now)\n"
    "       tollctl price list [ID]                (no ID: current version of every card;\n"
    "                                               ID: every version of that card)\n"
    "  card.json is a PriceCard: {\"id\":\"std\",\"currency\":\"USD\",\"entries\":[{\"model\":\"gpt-4o\",\n"
    "  \"input_per_mtok_nano\":\"2500000000\",\"output_per_mtok_nano\":\"10000000000\"}],\"note\":\"why\"}\n" CONN;

int cmd_price(int argc, char **argv)
{
    const char *verb = argc > 1 ? argv[1] : "";
    json_t *req = NULL, *r = NULL;
    tc_t c;
    int rc;
    if (strcmp(verb, "publish") && strcmp(verb, "get") && strcmp(verb, "list")) return usage_err(PRICE_USAGE);
    if ((rc = tc_parse(&c, "price", argc - 2, argv + 2,
                       "file= expected-version= effective= version= page-size= page-token=", 1)) != TOLLCTL_OK)
        return rc;
    if (verb[0] == 'p') {
        json_t *card;
        if (!tc_get(&c, "file")) {
            rc = usage_err(PRICE_USAGE);
            goto done;
        }
        if (!(card = tc_read_json_file(&c, tc_get(&c, "file")))) {
            rc = TOLLCTL_FAIL;
            goto done;
        }
        if (tc_get(&c, "effective")) {
            long long us;
            char s[32];
            if (tc_parse_time(tc_get(&c, "effective"), &us) != 0) {
                fprintf(stderr, "tollctl price: --effective %s: expected a time\n", tc_get(&c, "effective"));
                json_decref(card);
                rc = TOLLCTL_USAGE;
                goto done;
            }
            snprintf(s, sizeof s, "%lld", us);
            set_str(card, "effective_at_us", s);
        }
        req = json_pack("{s:o}", "card", card);
        set_str(req, "expected_version", tc_get(&c, "expected-version"));
        if ((rc = simple(&c, "PublishPriceCard", &tollgate__v1__publish_price_card_request__descriptor, req,
                         &tollgate__v1__price_card__descriptor, &r)) == TOLLCTL_OK) {
            if (c.tc_json) tc_print_obj(&c, r);
            else printf("published price card %s version %s\n", json_string_value(json_object_get(r, "id")),
                        json_string_value(json_object_get(r, "version")));
        }
    } else if (verb[0] == 'g') {
        const char *id = tc_need_pos(&c, 0, "the card id");
        if (!id) {
            rc = TOLLCTL_USAGE;
            goto done;
        }
        req = json_pack("{s:s}", "id", id);
        set_str(req, "version", tc_get(&c, "version"));
        if ((rc = simple(&c, "GetPriceCard", &tollgate__v1__get_price_card_request__descriptor, req,
                         &tollgate__v1__price_card__descriptor, &r)) == TOLLCTL_OK)
            tc_print_obj(&c, r);
    } else {
        req = json_object();
        set_str(req, "id", tc_pos(&c, 0));
        tc_page_flags(&c, req);
        if ((rc = simple(&c, "ListPriceCards", &tollgate__v1__list_price_cards_request__descriptor, req,
                         &tollgate__v1__list_price_cards_response__descriptor, &r)) == TOLLCTL_OK) {
            if (c.tc_json) tc_print_obj(&c, r);
            else tc_print_table(json_object_get(r, "cards"), CARD_COLS);
            tc_more(r);
        }
    }
done:
    json_decref(r);
    tc_done(&c);
    return rc;
}

/* ---- top-up, adjust, balance ------------------------------------------------------------- */

static const char MONEY_USAGE[] =
    "usage: tollctl topup  --account ACC --bucket B --amount 12.50 --currency USD\n"
    "                      --idempotency-key K [--reason R]\n"
    "       tollctl adjust --account ACC --bucket B --amount -3.20 --currency USD\n"
    "                      --idempotency-key K --reason R\n"
    "  --amount is in currency units (up to 9 decimals); --amount-nano N gives nano-units.\n"
    "  A repeated idempotency key changes nothing and returns the first result;\n"
    "  the same key with another amount, bucket or reason is refused.\n" CONN;

static int balance_change(int argc, char **argv, const char *method)
{
    json_t *req, *r = NULL;
    long long nano = 0;
    char s[32], aerr[TG_ERRLEN] = "";
    tc_t c;
    int rc;
    if ((rc = tc_parse(&c, argv[0], argc - 1, argv + 1,
                       "account= bucket= amount= amount-nano= currency= idempotency-key= reason=", 0)) != TOLLCTL_OK)
        return rc;
    if (!tc_get(&c, "account") || !tc_get(&c, "bucket") || !tc_get(&c, "currency") ||
        !tc_get(&c, "idempotency-key") || !!tc_get(&c, "amount") == !!tc_get(&c, "amount-nano")) {
        tc_done(&c);
        return usage_err(MONEY_USAGE);
    }
    if (tc_get(&c, "amount") && tc_parse_amount(tc_get(&c, "amount"), &nano, aerr, sizeof aerr) != 0) {
        fprintf(stderr, "tollctl %s: --amount: %s\n", argv[0], aerr);
        tc_done(&c);
        return TOLLCTL_USAGE;
    }
    if (tc_get(&c, "amount-nano")) snprintf(s, sizeof s, "%s", tc_get(&c, "amount-nano"));
    else snprintf(s, sizeof s, "%lld", nano);
    req = json_pack("{s:s, s:s, s:s, s:s, s:s}", "account_id", tc_get(&c, "account"), "bucket", tc_get(&c, "bucket"),
                    "amount_nano", s, "currency", tc_get(&c, "currency"), "idempotency_key",
                    tc_get(&c, "idempotency-key"));
    set_str(req, "reason", tc_get(&c, "reason"));
    if ((rc = simple(&c, method, &tollgate__v1__balance_change_request__descriptor, req,
                     &tollgate__v1__balance_change_response__descriptor, &r)) == TOLLCTL_OK) {
        if (c.tc_json) {
            tc_print_obj(&c, r);
        } else {
            const json_t *b = json_object_get(r, "balance");
            char bal[64];
            tc_nano(json_string_value(json_object_get(b, "balance_nano")), bal, sizeof bal);
            printf("%s%s/%s balance %s %s (ledger entry %s)\n",
                   json_is_true(json_object_get(r, "duplicate")) ? "duplicate, nothing changed: " : "",
                   json_string_value(json_object_get(b, "account_id")), json_string_value(json_object_get(b, "bucket")),
                   bal, json_string_value(json_object_get(b, "currency")),
                   json_string_value(json_object_get(json_object_get(r, "entry"), "entry_id")));
        }
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

int cmd_topup(int argc, char **argv) { return balance_change(argc, argv, "TopUp"); }
int cmd_adjust(int argc, char **argv) { return balance_change(argc, argv, "Adjust"); }

static const tc_col_t BALANCE_COLS[] = {{"BUCKET", "bucket", NULL},        {"CURRENCY", "currency", NULL},
                                        {"BALANCE", NULL, r_balance},      {"RESERVED", NULL, r_reserved},
                                        {"REVISION", "revision", NULL},    {NULL, NULL, NULL}};

int cmd_balance(int argc, char **argv)
{
    json_t *r = NULL;
    const char *acc;
    tc_t c;
    int rc;
    if ((rc = tc_parse(&c, "balance", argc - 1, argv + 1, "", 1)) != TOLLCTL_OK) return rc;
    if (!(acc = tc_need_pos(&c, 0, "the account id (tollctl balance ACCOUNT)"))) {
        tc_done(&c);
        return TOLLCTL_USAGE;
    }
    if ((rc = simple(&c, "GetBalances", &tollgate__v1__get_balances_request__descriptor,
                     json_pack("{s:s}", "account_id", acc), &tollgate__v1__get_balances_response__descriptor,
                     &r)) == TOLLCTL_OK) {
        if (c.tc_json) tc_print_obj(&c, r);
        else tc_print_table(json_object_get(r, "balances"), BALANCE_COLS);
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

/* ---- ledger ------------------------------------------------------------------------------ */

static const char LEDGER_USAGE[] =
    "usage: tollctl ledger query  [FILTERS] [--page-size N] [--page-token T]\n"
    "       tollctl ledger export [FILTERS] > usage.csv\n"
    "  FILTERS: --account A --project P --key K --run R --model M --channel C\n"
    "           --route-type direct|pooled --kind usage|topup|adjustment (repeatable)\n"
    "           --since TIME --until TIME   (RFC 3339, 2026-11-24, Unix seconds, or 24h/7d ago)\n"
    "  (--key is the API key filter here: give an mTLS client key as TOLLGATE_KEY=F)\n" CONN;

static const char LEDGER_SPEC[] =
    "account= project= key= run= model= channel= route-type= kind= since= until= page-size= page-token=";

/* The LedgerQuery of the filter flags, or NULL after printing why. */
static json_t *ledger_query(const tc_t *c)
{
    json_t *q = json_object(), *kinds = NULL;
    const char *v;
    static const char *const tf[][2] = {{"since", "since_us"}, {"until", "until_us"}};
    set_str(q, "account_id", tc_get(c, "account"));
    set_str(q, "project_id", tc_get(c, "project"));
    set_str(q, "key_id", tc_get(c, "key"));
    set_str(q, "run_id", tc_get(c, "run"));
    set_str(q, "model", tc_get(c, "model"));
    set_str(q, "channel_id", tc_get(c, "channel"));
    set_str(q, "route_type", tc_get(c, "route-type"));
    for (int i = 0; (v = tc_nth(c, "kind", i)); i++) {
        if (!kinds) kinds = json_array();
        json_array_append_new(kinds, json_string(v));
    }
    if (kinds) json_object_set_new(q, "kinds", kinds);
    for (int i = 0; i < 2; i++)
        if ((v = tc_get(c, tf[i][0]))) {
            long long us;
            char s[32];
            if (tc_parse_time(v, &us) != 0) {
                fprintf(stderr,
                        "tollctl %s: --%s %s: expected RFC 3339, YYYY-MM-DD, Unix seconds or an age (24h, 7d)\n",
                        c->tc_cmd, tf[i][0], v);
                json_decref(q);
                return NULL;
            }
            snprintf(s, sizeof s, "%lld", us);
            set_str(q, tf[i][1], s);
        }
    return q;
}

static const tc_col_t LEDGER_COLS[] = {{"SEQ", "seq", NULL},
                                       {"SETTLED", NULL, r_settled},
                                       {"KIND", "kind", NULL},
                                       {"ACCOUNT", "account_id", NULL},
                                       {"BUCKET", "bucket", NULL},
                                       {"AMOUNT", NULL, r_amount},
                                       {"CUR", "currency", NULL},
                                       {"BALANCE_AFTER", NULL, r_after},
                                       {"MODEL", NULL, r_model},
                                       {"ENTRY", "entry_id", NULL},
                                       {NULL, NULL, NULL}};
static const tc_col_t TOTAL_COLS[] = {{"CURRENCY", "currency", NULL},
                                      {"ROWS", "count", NULL},
                                      {"COST", NULL, r_cost},
                                      {"CHARGED", NULL, r_charged},
                                      {"UNBILLED_ROWS", "unbilled_count", NULL},
                                      {"INPUT_TOKENS", "input_tokens", NULL},
                                      {"OUTPUT_TOKENS", "output_tokens", NULL},
                                      {NULL, NULL, NULL}};

int cmd_ledger(int argc, char **argv)
{
    const char *verb = argc > 1 ? argv[1] : "";
    json_t *q, *r = NULL;
    tc_t c;
    int rc;
    if (strcmp(verb, "query") && strcmp(verb, "export")) return usage_err(LEDGER_USAGE);
    if ((rc = tc_parse(&c, verb[0] == 'q' ? "ledger query" : "ledger export", argc - 2, argv + 2, LEDGER_SPEC,
                       0)) != TOLLCTL_OK)
        return rc;
    if (!(q = ledger_query(&c))) {
        tc_done(&c);
        return TOLLCTL_USAGE;
    }
    if (verb[0] == 'e') {
        if ((rc = tc_connect(&c)) == TOLLCTL_OK)
            rc = tc_stream_text(&c, "ExportLedger", &tollgate__v1__ledger_query__descriptor, q,
                                &tollgate__v1__csv_chunk__descriptor, "lines");
        else json_decref(q);
        tc_done(&c);
        return rc;
    }
    tc_page_flags(&c, q);
    if ((rc = simple(&c, "QueryLedger", &tollgate__v1__ledger_query__descriptor, q,
                     &tollgate__v1__ledger_page__descriptor, &r)) == TOLLCTL_OK) {
        if (c.tc_json) {
            tc_print_obj(&c, r);
        } else {
            tc_print_table(json_object_get(r, "entries"), LEDGER_COLS);
            if (json_array_size(json_object_get(r, "totals"))) { /* first page only */
                printf("\ntotals (every matching row):\n");
                tc_print_table(json_object_get(r, "totals"), TOTAL_COLS);
            }
        }
        tc_more(r);
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

/* ---- key limits ----------------------------------------------------------------------------- */

static void r_limit(const json_t *o, char *b, size_t l) { r_nano(o, "limit_nano", b, l); }
static void r_spent(const json_t *o, char *b, size_t l) { r_nano(o, "spent_nano", b, l); }
static void r_lres(const json_t *o, char *b, size_t l) { r_nano(o, "reserved_nano", b, l); }
static void r_left(const json_t *o, char *b, size_t l) { r_nano(o, "remaining_nano", b, l); }
static void r_resets(const json_t *o, char *b, size_t l)
{
    const char *v = json_string_value(json_object_get(o, "resets_at_us"));
    long long us = v ? strtoll(v, NULL, 10) : 0;
    time_t t = (time_t)(us / 1000000);
    struct tm tm;
    if (us <= 0 || !gmtime_r(&t, &tm) || !strftime(b, l, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(b, l, "never");
}
static const tc_col_t LIMIT_COLS[] = {{"SCOPE", "kind", NULL},         {"WINDOW", "window", NULL},
                                      {"LIMIT", NULL, r_limit},        {"SPENT", NULL, r_spent},
                                      {"HELD", NULL, r_lres},          {"REMAINING", NULL, r_left},
                                      {"CURRENCY", "currency", NULL},  {"RESETS", NULL, r_resets},
                                      {NULL, NULL, NULL}};

int cmd_key_limits(int argc, char **argv)
{
    json_t *r = NULL, *req;
    const char *id;
    tc_t c;
    int rc;
    if ((rc = tc_parse(&c, "key limits", argc - 2, argv + 2, "", 1)) != TOLLCTL_OK) return rc;
    if (!(id = tc_need_pos(&c, 0, "the key id"))) {
        tc_done(&c);
        return TOLLCTL_USAGE;
    }
    req = json_pack("{s:s}", "key_id", id);
    if ((rc = simple(&c, "GetKeyLimits", &tollgate__v1__get_key_limits_request__descriptor, req,
                     &tollgate__v1__get_key_limits_response__descriptor, &r)) == TOLLCTL_OK) {
        if (c.tc_json)
            tc_print_obj(&c, r);
        else if (json_array_size(json_object_get(r, "limits")) == 0)
            printf("key %s has no spend limits (its project neither)\n", id);
        else
            tc_print_table(json_object_get(r, "limits"), LIMIT_COLS);
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

/* ---- run receipts and budgets -------------------------------------------------------------- */

static const char RUN_USAGE[] = "usage: tollctl run receipt RUN [--account ACC]\n"
                                "       tollctl budget put --file budget.json | get RUN\n" CONN;

static void r_rt(const json_t *o, char *b, size_t l) { tc_cell(json_object_get(o, "route_type"), b, l); }
static void r_tcount(const json_t *o, char *b, size_t l) { tc_cell(json_object_get(json_object_get(o, "totals"), "count"), b, l); }
static void r_tcost(const json_t *o, char *b, size_t l) { r_nano(json_object_get(o, "totals"), "cost_nano", b, l); }

static const tc_col_t BYROUTE_COLS[] = {{"ROUTE_TYPE", NULL, r_rt},   {"BUCKET", "bucket", NULL},
                                        {"REQUESTS", NULL, r_tcount}, {"COST", NULL, r_tcost},
                                        {NULL, NULL, NULL}};
static void r_rcost(const json_t *o, char *b, size_t l) { r_nano(o, "cost_nano", b, l); }
static void r_attempts(const json_t *o, char *b, size_t l)
{
    snprintf(b, l, "%zu", json_array_size(json_object_get(o, "attempts")));
}
static const tc_col_t RECORD_COLS[] = {{"REQUEST", "request_id", NULL},   {"MODEL", "requested_model", NULL},
                                       {"CHANNEL", "channel_id", NULL},    {"ATTEMPTS", NULL, r_attempts},
                                       {"FALLBACK", "fallback_used", NULL}, {"IN", "usage.input_tokens", NULL},
                                       {"OUT", "usage.output_tokens", NULL}, {"COST", NULL, r_rcost},
                                       {NULL, NULL, NULL}};

int cmd_run(int argc, char **argv)
{
    json_t *r = NULL, *req;
    const char *run;
    tc_t c;
    int rc;
    if (argc < 2 || strcmp(argv[1], "receipt") != 0) return usage_err(RUN_USAGE);
    if ((rc = tc_parse(&c, "run receipt", argc - 2, argv + 2, "account=", 1)) != TOLLCTL_OK) return rc;
    if (!(run = tc_need_pos(&c, 0, "the run id"))) {
        tc_done(&c);
        return TOLLCTL_USAGE;
    }
    req = json_pack("{s:s}", "run_id", run);
    set_str(req, "account_id", tc_get(&c, "account"));
    if ((rc = simple(&c, "GetRunReceipt", &tollgate__v1__get_run_receipt_request__descriptor, req,
                     &tollgate__v1__run_receipt__descriptor, &r)) == TOLLCTL_OK) {
        if (c.tc_json) {
            tc_print_obj(&c, r);
        } else {
            const json_t *t = json_object_get(r, "total");
            char cost[64], att[32], fb[32], n[32];
            r_nano(t, "cost_nano", cost, sizeof cost);
            tc_cell(json_object_get(t, "count"), n, sizeof n);
            tc_cell(json_object_get(r, "attempts"), att, sizeof att);
            tc_cell(json_object_get(r, "fallbacks"), fb, sizeof fb);
            printf("run %s: %s requests, %s attempts, %s fallbacks, cost %s %s\n", run, n, att[0] ? att : "0",
                   fb[0] ? fb : "0", cost, json_string_value(json_object_get(t, "currency")));
            const json_t *bs = json_object_get(r, "budget_state");
            if (bs) {
                char lim[64], spent[64], held[64], left[64];
                r_limit(bs, lim, sizeof lim);
                r_spent(bs, spent, sizeof spent);
                r_lres(bs, held, sizeof held);
                r_left(bs, left, sizeof left);
                printf("budget %s %s: spent %s, held %s, remaining %s\n", lim,
                       json_string_value(json_object_get(bs, "currency")), spent, held, left);
            }
            printf("\n");
            tc_print_table(json_object_get(r, "records"), RECORD_COLS);
            printf("\nby route type and bucket:\n");
            tc_print_table(json_object_get(r, "by_route"), BYROUTE_COLS);
        }
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

int cmd_budget(int argc, char **argv)
{
    const char *verb = argc > 1 ? argv[1] : "";
    json_t *r = NULL, *req;
    tc_t c;
    int rc;
    if (strcmp(verb, "put") && strcmp(verb, "get")) return usage_err(RUN_USAGE);
    if ((rc = tc_parse(&c, "budget", argc - 2, argv + 2, "file=", 1)) != TOLLCTL_OK) return rc;
    if (verb[0] == 'p') {
        json_t *b = tc_get(&c, "file") ? tc_read_json_file(&c, tc_get(&c, "file")) : NULL;
        if (!b) {
            tc_done(&c);
            return tc_get(&c, "file") ? TOLLCTL_FAIL : usage_err(RUN_USAGE);
        }
        req = json_pack("{s:o}", "budget", b);
        rc = simple(&c, "PutRunBudget", &tollgate__v1__put_run_budget_request__descriptor, req,
                    &tollgate__v1__run_budget__descriptor, &r);
    } else {
        const char *run = tc_need_pos(&c, 0, "the run id");
        if (!run) {
            tc_done(&c);
            return TOLLCTL_USAGE;
        }
        rc = simple(&c, "GetRunBudget", &tollgate__v1__get_request__descriptor, json_pack("{s:s}", "id", run),
                    &tollgate__v1__run_budget__descriptor, &r);
    }
    if (rc == TOLLCTL_OK) tc_print_obj(&c, r);
    json_decref(r);
    tc_done(&c);
    return rc;
}

int cmd_policy(int argc, char **argv)
{
    const char *verb = argc > 1 ? argv[1] : "";
    static const char U[] = "usage: tollctl policy get | put --file policy.json\n" CONN;
    json_t *r = NULL;
    tc_t c;
    int rc;
    if (strcmp(verb, "put") && strcmp(verb, "get")) return usage_err(U);
    if ((rc = tc_parse(&c, "policy", argc - 2, argv + 2, "file=", 0)) != TOLLCTL_OK) return rc;
    if (verb[0] == 'p') {
        json_t *p = tc_get(&c, "file") ? tc_read_json_file(&c, tc_get(&c, "file")) : NULL;
        if (!p) {
            tc_done(&c);
            return usage_err(U);
        }
        rc = simple(&c, "PutPolicy", &tollgate__v1__put_policy_request__descriptor, json_pack("{s:o}", "policy", p),
                    &tollgate__v1__gateway_policy__descriptor, &r);
    } else {
        rc = simple(&c, "GetPolicy", &tollgate__v1__get_request__descriptor, json_object(),
                    &tollgate__v1__gateway_policy__descriptor, &r);
    }
    if (rc == TOLLCTL_OK) tc_print_obj(&c, r);
    json_decref(r);
    tc_done(&c);
    return rc;
}

/* ---- agents, audit, whoami --------------------------------------------------------------------- */

static void r_revoked(const json_t *o, char *b, size_t l)
{
    const json_t *rv = json_object_get(o, "revocation");
    if (rv == NULL || json_is_null(rv)) {
        snprintf(b, l, "-");
        return;
    }
    r_time(rv, "revoked_at_us", b, l);
}
static const tc_col_t AGENT_COLS[] = {{"ID", "agent_id", NULL},         {"NAME", "name", NULL},
                                      {"REGION", "region", NULL},       {"VERSION", "version", NULL},
                                      {"LAST_SEEN", NULL, r_seen},      {"CONNECTED", "connected", NULL},
                                      {"LAST_BATCH", "last_batch_sequence", NULL}, {"REVOKED", NULL, r_revoked},
                                      {NULL, NULL, NULL}};

#define AGENTS_USAGE                                                                                           \
    "usage: tollctl agents list\n"                                                                          \
    "       tollctl agents revoke ID [--reason R]   for good (a stolen agent key): its Sync, Lease and\n"    \
    "                                               ReportUsage calls are refused, its stream ended; its\n"   \
    "                                               ledger rows stay (enroll a new agent to replace it)\n" CONN

/* `tollctl agents list | revoke ID` (`agent` is the same command). */
int cmd_agents(int argc, char **argv)
{
    json_t *r = NULL, *req;
    tc_t c;
    int rc;
    const char *verb = argc >= 2 ? argv[1] : "";
    if (strcmp(verb, "revoke") == 0) {
        const char *id;
        if ((rc = tc_parse(&c, "agents revoke", argc - 2, argv + 2, "reason=", 1)) != TOLLCTL_OK) return rc;
        if (!(id = tc_need_pos(&c, 0, "the agent id (tollctl agents list shows them)"))) {
            tc_done(&c);
            return TOLLCTL_USAGE;
        }
        req = json_pack("{s:s}", "agent_id", id);
        if (tc_get(&c, "reason")) json_object_set_new(req, "reason", json_string(tc_get(&c, "reason")));
        if ((rc = simple(&c, "RevokeAgent", &tollgate__v1__revoke_agent_request__descriptor, req,
                         &tollgate__v1__agent_info__descriptor, &r)) == TOLLCTL_OK) {
            if (c.tc_json) {
                tc_print_obj(&c, r);
            } else {
                char when[64];
                r_time(json_object_get(r, "revocation"), "revoked_at_us", when, sizeof when);
                printf("agent %s (%s) revoked at %s: its Sync, Lease and ReportUsage calls are refused\n",
                       id, json_string_value(json_object_get(r, "name")), when);
            }
        }
        json_decref(r);
        tc_done(&c);
        return rc;
    }
    if (strcmp(verb, "list") != 0) return usage_err(AGENTS_USAGE);
    if ((rc = tc_parse(&c, "agents list", argc - 2, argv + 2, "page-size= page-token=", 0)) != TOLLCTL_OK) return rc;
    req = json_object();
    tc_page_flags(&c, req);
    if ((rc = simple(&c, "ListAgents", &tollgate__v1__list_request__descriptor, req,
                     &tollgate__v1__list_agents_response__descriptor, &r)) == TOLLCTL_OK) {
        if (c.tc_json) tc_print_obj(&c, r);
        else tc_print_table(json_object_get(r, "agents"), AGENT_COLS);
        tc_more(r);
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

static const tc_col_t AUDIT_COLS[] = {{"SEQ", "seq", NULL},
                                      {"AT", NULL, r_at},
                                      {"TOKEN", "actor.token_name", NULL},
                                      {"ROLE", "actor.role", NULL},
                                      {"METHOD", "method", NULL},
                                      {"TYPE", "object_type", NULL},
                                      {"OBJECT", "object_id", NULL},
                                      {"REVISION", "revision", NULL},
                                      {NULL, NULL, NULL}};

int cmd_audit(int argc, char **argv)
{
    static const char U[] = "usage: tollctl audit [--type T] [--id ID] [--token NAME] [--since TIME] [--until TIME]\n"
                            "                     [--page-size N] [--page-token T]   (--json shows before/after)\n" CONN;
    json_t *r = NULL, *req;
    const char *v;
    tc_t c;
    int rc;
    if ((rc = tc_parse(&c, "audit", argc - 1, argv + 1, "type= id= token= since= until= page-size= page-token=", 0)) !=
        TOLLCTL_OK)
        return argc > 1 && strcmp(argv[1], "help") == 0 ? usage_err(U) : rc;
    req = json_object();
    set_str(req, "object_type", tc_get(&c, "type"));
    set_str(req, "object_id", tc_get(&c, "id"));
    set_str(req, "token_name", tc_get(&c, "token"));
    for (int i = 0; i < 2; i++)
        if ((v = tc_get(&c, i ? "until" : "since"))) {
            long long us;
            char s[32];
            if (tc_parse_time(v, &us) != 0) {
                fprintf(stderr, "tollctl audit: --%s %s: expected a time\n", i ? "until" : "since", v);
                json_decref(req);
                tc_done(&c);
                return TOLLCTL_USAGE;
            }
            snprintf(s, sizeof s, "%lld", us);
            set_str(req, i ? "until_us" : "since_us", s);
        }
    tc_page_flags(&c, req);
    if ((rc = simple(&c, "QueryAudit", &tollgate__v1__audit_query__descriptor, req,
                     &tollgate__v1__audit_page__descriptor, &r)) == TOLLCTL_OK) {
        if (c.tc_json) tc_print_obj(&c, r);
        else tc_print_table(json_object_get(r, "events"), AUDIT_COLS);
        tc_more(r);
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

int cmd_whoami(int argc, char **argv)
{
    json_t *r = NULL;
    tc_t c;
    int rc;
    if ((rc = tc_parse(&c, "whoami", argc - 1, argv + 1, "", 0)) != TOLLCTL_OK) return rc;
    if ((rc = simple(&c, "WhoAmI", &tollgate__v1__who_am_irequest__descriptor, json_object(),
                     &tollgate__v1__who_am_iresponse__descriptor, &r)) == TOLLCTL_OK) {
        if (c.tc_json) tc_print_obj(&c, r);
        else printf("%s (role %s) at %s\n", json_string_value(json_object_get(r, "token_name")),
                    json_string_value(json_object_get(r, "role")), c.tc_target);
    }
    json_decref(r);
    tc_done(&c);
    return rc;
}

/* `tollctl help <command>` */
void usage_price(void) { fputs(PRICE_USAGE, stdout); }
void usage_money(void) { fputs(MONEY_USAGE, stdout); }
void usage_ledger(void) { fputs(LEDGER_USAGE, stdout); }
void usage_run(void) { fputs(RUN_USAGE, stdout); }

void usage_admin(void)
{
    printf("admin commands talk to tollgate-cp over gRPC (AdminService):\n"
           "  account, project, key, channel   create/get/list/update/delete (key: pause/resume/revoke)\n"
           "  route put/get/list/delete        model routes\n"
           "  price publish/get/list           versioned price cards\n"
           "  topup, adjust, balance           money (each change writes a ledger row)\n"
           "  ledger query/export              the ledger; export writes CSV to stdout\n"
           "  run receipt, budget put/get      runs (tasks)\n"
           "  policy get/put, agents list/revoke, audit, whoami\n"
           "connection: --server HOST:PORT (TOLLGATE_SERVER, default 127.0.0.1:7443),\n"
           "  the admin token from TOLLGATE_TOKEN or --token-file FILE, --tls/--ca/--cert/--key\n"
           "  (or TOLLGATE_CA, TOLLGATE_CERT, TOLLGATE_KEY);\n"
           "  --json prints proto3 JSON for scripts; --file x.json gives an object as JSON.\n"
           "Run `tollctl <command>` without arguments for its usage.\n");
}
