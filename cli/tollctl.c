/* tollctl: the Tollgate operator tool. main() looks the first argument up
 * in the command table below and hands the rest to that subcommand; every
 * subcommand lives in its own tollctl_<name>.c. Only `tokens` exists so far
 * (it needs no control plane); admin subcommands that talk to the control
 * plane are added here as they are built. */
#include <stdio.h>
#include <string.h>

#include "cli/cmd_admin.h"
#include "cli/tollctl_int.h"

static const struct command {
    const char *c_name;       /* the subcommand as typed */
    tollctl_cmd_fn c_run;     /* runs it */
    void (*c_usage)(void);    /* prints its usage to stdout */
    const char *c_summary;    /* one line for `tollctl help` */
} commands[] = {
    {"tokens", cmd_tokens, usage_tokens,
     "count the tokens of stdin (cl100k_base, o200k_base), exactly as tiktoken"},
    /* admin commands (cmd_*.c): they talk to tollgate-cp's AdminService */
    {"account", cmd_account, usage_account, "accounts and their balance buckets"},
    {"project", cmd_project, usage_project, "projects of an account"},
    {"key", cmd_key, usage_key, "API keys: create (secret shown once), pause, resume, revoke"},
    {"channel", cmd_channel, usage_channel, "upstream channels (credentials are write-only)"},
    {"route", cmd_route, usage_route, "model routes: tiers of channel targets"},
    {"alert", cmd_alert, usage_alert, "alert rules (thresholds, velocity, error rates, webhooks, pause)"},
    {"price", cmd_price, usage_price, "versioned price cards: publish, get, list"},
    {"topup", cmd_topup, usage_money, "add money to a bucket (idempotent, writes a ledger row)"},
    {"adjust", cmd_adjust, usage_money, "correct a bucket by either sign (idempotent)"},
    {"balance", cmd_balance, usage_admin, "an account's bucket balances"},
    {"ledger", cmd_ledger, usage_ledger, "ledger query, and export as CSV"},
    {"run", cmd_run, usage_run, "run receipt: every request and attempt of a run"},
    {"budget", cmd_budget, usage_run, "run budgets"},
    {"policy", cmd_policy, usage_admin, "the gateway policy"},
    {"agents", cmd_agents, usage_admin, "enrolled edge agents: list, revoke"},
    {"agent", cmd_agents, usage_admin, "the same as agents"},
    {"audit", cmd_audit, usage_admin, "the audit log of admin changes"},
    {"whoami", cmd_whoami, usage_admin, "the admin token's name and role"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: tollctl <command> [flags]\n\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].c_name, commands[i].c_summary);
    fprintf(f, "  %-10s %s\n", "help", "show this list, or `tollctl help <command>`");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return TOLLCTL_USAGE;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        for (size_t i = 0; argc > 2 && i < NCOMMANDS; i++) {
            if (strcmp(argv[2], commands[i].c_name) == 0) {
                commands[i].c_usage();
                return TOLLCTL_OK;
            }
        }
        usage(stdout);
        return TOLLCTL_OK;
    }
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(argv[1], commands[i].c_name) == 0)
            return commands[i].c_run(argc - 1, argv + 1);
    fprintf(stderr, "tollctl: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return TOLLCTL_USAGE;
}
