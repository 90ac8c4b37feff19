/* tg_utf8.c: UTF-8 validation and the cleaning copy of tg_utf8.h
 * (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF). */
#include <string.h>

#include "base/tg_utf8.h"

size_t tg_utf8_seq(const unsigned char *p, size_t n)
{
    if (n == 0)
        return 0;
    unsigned char c = p[0];
    size_t k;
    unsigned long cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return k;
}

size_t tg_utf8_clean(char *dst, size_t dstlen, const char *src, size_t n)
{
    static const char repl[] = "\xef\xbf\xbd"; /* U+FFFD */
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0, i = 0;
    if (dstlen == 0)
        return 0;
    while (i < n && s[i]) {
        size_t k = tg_utf8_seq(s + i, n - i);
        const char *from = k ? src + i : repl;
        size_t len = k ? k : 3;
        if (o + len >= dstlen)
            break;
        memcpy(dst + o, from, len);
        o += len;
        i += k ? k : 1;
    }
    dst[o] = '\0';
    return o;
}
