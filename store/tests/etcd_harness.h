/* etcd_harness: starts a real etcd (Debian etcd-server, /usr/bin/etcd) for
 * tests, on free loopback ports in a temp data dir; kills, restarts on the
 * same data dir and ports, and stops it. Test code only. */
#ifndef TG_STORE_ETCD_HARNESS_H
#define TG_STORE_ETCD_HARNESS_H

#include <sys/types.h>

typedef struct etcd_proc {
    char ep_dir[512];     /* data dir and log live here */
    int ep_client;        /* client port */
    int ep_peer;          /* peer port */
    pid_t ep_pid;         /* 0 when not running */
    char ep_url[64];      /* http://127.0.0.1:<client> */
    char ep_name[16];     /* member name */
    char ep_token[32];    /* --initial-cluster-token, shared by members */
    char ep_cluster[512]; /* --initial-cluster */
} etcd_proc_t;

/* A port that nothing listens on right now (bind to 0, read, close). */
int harness_free_port(void);

/* Makes a fresh temp dir (under TEST_TMPDIR or /tmp) into buf. 0 or -1. */
int harness_tmpdir(char *buf, size_t len, const char *tag);

/* Starts etcd in a new temp dir on new ports and waits (up to 20 s) until it
 * answers. 0 or -1 (with a message on stderr). */
int etcd_start(etcd_proc_t *e);

/* Starts an n-member cluster (n <= 5), each member in its own dir, and
 * waits until every member answers a linearizable read (a leader exists). */
int etcd_cluster_start(etcd_proc_t *nodes, int n);

/* Starts etcd again on the same dir and ports (after a kill). */
int etcd_restart(etcd_proc_t *e);

/* SIGKILLs etcd and reaps it. */
void etcd_kill(etcd_proc_t *e);

/* SIGTERMs etcd, waits up to 5 s (then SIGKILL), removes the dir. */
void etcd_stop(etcd_proc_t *e);

/* rm -rf of a test dir. */
void harness_rmdir(const char *dir);

#endif
