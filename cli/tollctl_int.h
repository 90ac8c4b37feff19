/* tollctl internals: the signature every subcommand implements, so that
 * tollctl.c's table can dispatch to it. Add a subcommand by writing
 * tollctl_<name>.c with a cmd_<name>() and one line in the table. */
#ifndef TOLLCTL_INT_H
#define TOLLCTL_INT_H

/* Exit codes shared by every subcommand. */
enum {
    TOLLCTL_OK = 0,    /* success */
    TOLLCTL_FAIL = 1,  /* the command ran and failed (I/O, bad input data) */
    TOLLCTL_USAGE = 2  /* bad flags or arguments: nothing was done */
};

/* A subcommand: argv[0] is the subcommand's name; returns a TOLLCTL_* code
 * and writes its own messages (results to stdout, errors to stderr). */
typedef int (*tollctl_cmd_fn)(int argc, char **argv);

int cmd_tokens(int argc, char **argv);
void usage_tokens(void);

#endif
