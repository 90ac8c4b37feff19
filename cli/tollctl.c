/* tollctl: the Tollgate operator tool. main() looks the first argument up
 * in the command table below and hands the rest to that subcommand; every
 * subcommand lives in its own tollctl_<name>.c. Only `tokens` exists so far
 * (it needs no control plane); admin subcommands that talk to the control
 * plane are added here as they are built. */
#include <stdio.h>
#include <string.h>

#include "cli/tollctl_int.h"

static const struct command {
    const char *c_name;       /* the subcommand as typed */
    tollctl_cmd_fn c_run;     /* runs it */
    void (*c_usage)(void);    /* prints its usage to stdout */
    const char *c_summary;    /* one line for `tollctl help` */
} commands[] = {
    {"tokens", cmd_tokens, usage_tokens,
     "count the tokens of stdin (cl100k_base, o200k_base), exactly as tiktoken"},
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
