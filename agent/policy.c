/* policy.c: the small matchers key policy is made of: model allowlist
 * globs and IP allowlist CIDRs (v4 and v6; v4 is compared as v4-mapped v6
 * so one code path serves both). */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent_int.h"

int tg_agent_glob(const char *pat, const char *s)
{
    /* Iterative with one backtrack point: linear in practice, no recursion
     * for a hostile pattern to exploit. */
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*pat == '*') {
            star = pat++;
            resume = s;
        } else if (*pat == '?' || *pat == *s) {
            pat++;
            s++;
        } else if (star) {
            pat = star + 1;
            s = ++resume;
        } else {
            return 0;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == '\0';
}

int tg_agent_ip_parse(const char *s, tg_ip_t *ip)
{
    struct in_addr a4;
    memset(ip, 0, sizeof *ip);
    if (inet_pton(AF_INET, s, &a4) == 1) {
        ip->ip_addr[10] = 0xff;
        ip->ip_addr[11] = 0xff;
        memcpy(ip->ip_addr + 12, &a4, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, s, ip->ip_addr) == 1)
        return 0;
    return -1;
}

int tg_agent_cidr_match(const char *cidr, const tg_ip_t *ip)
{
    char addr[64];
    const char *slash = strchr(cidr, '/');
    size_t n = slash ? (size_t)(slash - cidr) : strlen(cidr);
    if (n == 0 || n >= sizeof addr)
        return -1;
    memcpy(addr, cidr, n);
    addr[n] = '\0';
    tg_ip_t net;
    if (tg_agent_ip_parse(addr, &net) != 0)
        return -1;
    int v4 = strchr(addr, ':') == NULL;
    long bits = v4 ? 32 : 128;
    if (slash) {
        char *end;
        bits = strtol(slash + 1, &end, 10);
        if (*end != '\0' || end == slash + 1 || bits < 0 || bits > (v4 ? 32 : 128))
            return -1;
    }
    if (v4)
        bits += 96;
    for (long i = 0; i < bits / 8; i++)
        if (net.ip_addr[i] != ip->ip_addr[i])
            return 0;
    if (bits % 8) {
        uint8_t mask = (uint8_t)(0xff << (8 - bits % 8));
        if ((net.ip_addr[bits / 8] & mask) != (ip->ip_addr[bits / 8] & mask))
            return 0;
    }
    return 1;
}
