/* tg_b64: strict base64 (see tg_b64.h). Written here rather than OpenSSL's
 * EVP_DecodeBlock because that one reports padding as zero bytes of output
 * and skips whitespace, both wrong for binary data; this is 60 lines and
 * tested with every byte value. */
#include "base/tg_b64.h"

static const char ALPHA[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t tg_b64_encode(const uint8_t *src, size_t n, char *dst)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)src[i] << 16) | ((uint32_t)src[i + 1] << 8) | src[i + 2];
        dst[o++] = ALPHA[v >> 18];
        dst[o++] = ALPHA[(v >> 12) & 63];
        dst[o++] = ALPHA[(v >> 6) & 63];
        dst[o++] = ALPHA[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)src[i] << 16;
        dst[o++] = ALPHA[v >> 18];
        dst[o++] = ALPHA[(v >> 12) & 63];
        dst[o++] = '=';
        dst[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)src[i] << 16) | ((uint32_t)src[i + 1] << 8);
        dst[o++] = ALPHA[v >> 18];
        dst[o++] = ALPHA[(v >> 12) & 63];
        dst[o++] = ALPHA[(v >> 6) & 63];
        dst[o++] = '=';
    }
    dst[o] = 0;
    return o;
}

static int val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long tg_b64_decode(const char *src, size_t n, uint8_t *dst)
{
    size_t o = 0;
    if (n % 4)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int a = val(src[i]), b = val(src[i + 1]), c, d;
        int last = i + 4 == n;
        if (a < 0 || b < 0)
            return -1;
        if (last && src[i + 2] == '=' && src[i + 3] == '=') {
            if (b & 15) /* non-canonical: stray bits */
                return -1;
            dst[o++] = (uint8_t)((a << 2) | (b >> 4));
            break;
        }
        c = val(src[i + 2]);
        if (c < 0)
            return -1;
        if (last && src[i + 3] == '=') {
            if (c & 3)
                return -1;
            dst[o++] = (uint8_t)((a << 2) | (b >> 4));
            dst[o++] = (uint8_t)(((b & 15) << 4) | (c >> 2));
            break;
        }
        d = val(src[i + 3]);
        if (d < 0)
            return -1;
        dst[o++] = (uint8_t)((a << 2) | (b >> 4));
        dst[o++] = (uint8_t)(((b & 15) << 4) | (c >> 2));
        dst[o++] = (uint8_t)(((c & 3) << 6) | d);
    }
    return (long)o;
}
