/* tg_crypto: Ed25519, SHA-256, hex, identifiers and secrets over OpenSSL 3,
 * and the reading of X.509 files for configuration checks (see tg_crypto.h
 * for the contract). */
#include "crypto/tg_crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "base/tg_base.h"

struct tg_crypto_key {
    EVP_PKEY *k_pkey;
    int k_private; /* 1 when the key can sign */
    uint8_t k_pub[TG_ED25519_PUBLIC_LEN];
};

const char *tg_crypto_strerror(int code)
{
    switch ((enum tg_crypto_error)code) {
    case TG_CRYPTO_OK: return "ok";
    case TG_CRYPTO_EIO: return "key file I/O error";
    case TG_CRYPTO_EFORMAT: return "malformed key or encoding";
    case TG_CRYPTO_EBADSIG: return "signature does not verify";
    case TG_CRYPTO_EOPENSSL: return "OpenSSL failure";
    case TG_CRYPTO_EARG: return "invalid argument";
    }
    return "unknown error";
}

/* The newest OpenSSL error as text, for messages. */
static const char *ossl_reason(void)
{
    unsigned long e = ERR_get_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown OpenSSL error";
}

/* SHA-256 fetched once: EVP_sha256() makes every digest fetch it again
 * from the provider (2.3K instructions of a 2.7K digest of an API key on
 * the request path). Kept for the process's life. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void tg_crypto_sha256(const void *data, size_t n, uint8_t out[TG_SHA256_LEN])
{
    unsigned int len = TG_SHA256_LEN;
    pthread_once(&sha256_once, sha256_fetch);
    /* EVP_Digest with SHA-256 cannot fail on valid arguments short of a
     * broken library; a zeroed output would then fail every comparison. */
    if (EVP_Digest(data, n, out, &len, sha256_md ? sha256_md : EVP_sha256(), NULL) != 1)
        memset(out, 0, TG_SHA256_LEN);
}

void tg_crypto_wipe(void *p, size_t n)
{
    OPENSSL_cleanse(p, n);
}

void tg_crypto_hmac_sha256(const void *key, size_t klen, const void *data, size_t n, uint8_t out[TG_SHA256_LEN])
{
    unsigned int len = TG_SHA256_LEN;
    if (HMAC(EVP_sha256(), key, (int)klen, data, n, out, &len) == NULL)
        memset(out, 0, TG_SHA256_LEN);
}

void tg_crypto_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int tg_crypto_unhex(const char *hex, uint8_t *out, size_t n)
{
    if (strlen(hex) != 2 * n)
        return TG_CRYPTO_EFORMAT;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return TG_CRYPTO_EFORMAT;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

int tg_crypto_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

int tg_crypto_random(void *buf, size_t n)
{
    if (n > INT32_MAX || RAND_bytes(buf, (int)n) != 1)
        return TG_CRYPTO_EOPENSSL;
    return 0;
}

int tg_crypto_new_id(const char *prefix, char *out, size_t outlen)
{
    static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"; /* Crockford */
    size_t plen = strlen(prefix);
    if (outlen < plen + 27)
        return TG_CRYPTO_EARG;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t ms = (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
    uint8_t bytes[16];
    for (int i = 0; i < 6; i++)
        bytes[i] = (uint8_t)(ms >> (40 - 8 * i));
    if (tg_crypto_random(bytes + 6, 10))
        return TG_CRYPTO_EOPENSSL;
    memcpy(out, prefix, plen);
    /* 128 bits as 26 base32 digits, most significant first (the first digit
     * carries only 3 bits). */
    for (int d = 0; d < 26; d++) {
        int bit = 128 - 5 * (26 - d); /* position of this digit's top bit; <0 for the first */
        unsigned v = 0;
        for (int b = 0; b < 5; b++) {
            int pos = bit + b;
            if (pos < 0)
                continue;
            v = v << 1 | ((bytes[pos / 8] >> (7 - pos % 8)) & 1u);
        }
        out[plen + (size_t)d] = b32[v];
    }
    out[plen + 26] = '\0';
    return 0;
}

int tg_crypto_new_secret(const char *prefix, char *out, size_t outlen)
{
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    size_t plen = strlen(prefix);
    if (outlen < plen + 44)
        return TG_CRYPTO_EARG;
    memcpy(out, prefix, plen);
    /* Rejection sampling keeps every character uniform (248 = 4 * 62). */
    size_t i = 0;
    uint8_t pool[64];
    while (i < 43) {
        if (tg_crypto_random(pool, sizeof(pool)))
            return TG_CRYPTO_EOPENSSL;
        for (size_t j = 0; j < sizeof(pool) && i < 43; j++)
            if (pool[j] < 248)
                out[plen + i++] = b62[pool[j] % 62];
    }
    out[plen + 43] = '\0';
    return 0;
}

/* ---- Ed25519 ------------------------------------------------------------ */

static int key_wrap(EVP_PKEY *pkey, int priv, tg_crypto_key_t **out, char *err, size_t errlen)
{
    size_t publen = TG_ED25519_PUBLIC_LEN;
    tg_crypto_key_t *k = tg_calloc(1, sizeof(*k));
    if (k == NULL) {
        EVP_PKEY_free(pkey);
        return tg_errf(err, errlen, TG_CRYPTO_EOPENSSL, "out of memory");
    }
    if (EVP_PKEY_get_raw_public_key(pkey, k->k_pub, &publen) != 1 || publen != TG_ED25519_PUBLIC_LEN) {
        EVP_PKEY_free(pkey);
        tg_free(k);
        return tg_errf(err, errlen, TG_CRYPTO_EFORMAT, "not an Ed25519 key");
    }
    k->k_pkey = pkey;
    k->k_private = priv;
    *out = k;
    return 0;
}

int tg_crypto_key_generate(tg_crypto_key_t **out, char *err, size_t errlen)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    int ok = ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_keygen(ctx, &pkey) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        return tg_errf(err, errlen, TG_CRYPTO_EOPENSSL, "Ed25519 key generation failed: %s", ossl_reason());
    return key_wrap(pkey, 1, out, err, errlen);
}

static int key_write(const tg_crypto_key_t *key, const char *path, char *err, size_t errlen)
{
    char tmp[4096];
    int rc = TG_CRYPTO_EIO;
    FILE *f = NULL;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= sizeof(tmp))
        return tg_errf(err, errlen, TG_CRYPTO_EARG, "key path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        tg_errf(err, errlen, rc, "cannot create key file %s: %s", tmp, strerror(errno));
        goto fail;
    }
    f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        tg_errf(err, errlen, rc, "cannot open key file %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (PEM_write_PrivateKey(f, key->k_pkey, NULL, NULL, 0, NULL, NULL) != 1) {
        tg_errf(err, errlen, rc, "cannot write key file %s: %s", tmp, ossl_reason());
        goto fail;
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        tg_errf(err, errlen, rc, "cannot sync key file %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (fclose(f) != 0) {
        f = NULL;
        tg_errf(err, errlen, rc, "cannot close key file %s: %s", tmp, strerror(errno));
        goto fail;
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        tg_errf(err, errlen, rc, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    if (f)
        fclose(f);
    unlink(tmp);
    return rc;
}

int tg_crypto_key_load_or_create(const char *path, tg_crypto_key_t **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (errno != ENOENT)
            return tg_errf(err, errlen, TG_CRYPTO_EIO, "cannot read key file %s: %s", path, strerror(errno));
        tg_crypto_key_t *k = NULL;
        int rc = tg_crypto_key_generate(&k, err, errlen);
        if (rc == 0 && (rc = key_write(k, path, err, errlen)) != 0) {
            tg_crypto_key_free(k);
            k = NULL;
        }
        *out = k;
        return rc;
    }
    EVP_PKEY *pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (pkey == NULL)
        return tg_errf(err, errlen, TG_CRYPTO_EFORMAT, "key file %s is not a PEM private key: %s", path,
                       ossl_reason());
    if (EVP_PKEY_get_id(pkey) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(pkey);
        return tg_errf(err, errlen, TG_CRYPTO_EFORMAT, "key file %s holds a key that is not Ed25519", path);
    }
    return key_wrap(pkey, 1, out, err, errlen);
}

int tg_crypto_key_from_seed(const uint8_t seed[32], tg_crypto_key_t **out, char *err, size_t errlen)
{
    EVP_PKEY *pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
    if (pkey == NULL)
        return tg_errf(err, errlen, TG_CRYPTO_EFORMAT, "invalid Ed25519 seed: %s", ossl_reason());
    return key_wrap(pkey, 1, out, err, errlen);
}

int tg_crypto_key_from_public(const uint8_t pub[TG_ED25519_PUBLIC_LEN], tg_crypto_key_t **out,
                              char *err, size_t errlen)
{
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, TG_ED25519_PUBLIC_LEN);
    if (pkey == NULL)
        return tg_errf(err, errlen, TG_CRYPTO_EFORMAT, "invalid Ed25519 public key: %s", ossl_reason());
    return key_wrap(pkey, 0, out, err, errlen);
}

void tg_crypto_key_public(const tg_crypto_key_t *key, uint8_t pub[TG_ED25519_PUBLIC_LEN])
{
    memcpy(pub, key->k_pub, TG_ED25519_PUBLIC_LEN);
}

int tg_crypto_sign(const tg_crypto_key_t *key, const void *data, size_t n, uint8_t sig[TG_ED25519_SIG_LEN])
{
    if (!key->k_private)
        return TG_CRYPTO_EARG;
    size_t siglen = TG_ED25519_SIG_LEN;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, key->k_pkey) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, data, n) == 1 && siglen == TG_ED25519_SIG_LEN;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        ERR_clear_error();
    return ok ? 0 : TG_CRYPTO_EOPENSSL;
}

int tg_crypto_verify(const tg_crypto_key_t *key, const void *data, size_t n, const uint8_t *sig, size_t siglen)
{
    if (sig == NULL || siglen != TG_ED25519_SIG_LEN)
        return TG_CRYPTO_EBADSIG;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key->k_pkey) == 1 &&
             EVP_DigestVerify(ctx, sig, siglen, data, n) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        ERR_clear_error();
    return ok ? 0 : TG_CRYPTO_EBADSIG;
}

void tg_crypto_key_free(tg_crypto_key_t *key)
{
    if (key == NULL)
        return;
    EVP_PKEY_free(key->k_pkey);
    tg_free(key);
}

/* ---- TLS files -------------------------------------------------------------------- */

/* Unix seconds of an ASN1_TIME. */
static int asn1_unix(const ASN1_TIME *t, int64_t *out)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return -1;
    *out = (int64_t)timegm(&tm);
    return 0;
}

int tg_crypto_cert_not_after(const char *pem, size_t len, int64_t *not_after, char *err, size_t errlen)
{
    int rc = TG_CRYPTO_EFORMAT;
    X509 *x = NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) {
        rc = tg_errf(err, errlen, TG_CRYPTO_EOPENSSL, "out of memory");
        goto fail;
    }
    if (!(x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
        tg_errf(err, errlen, rc, "no PEM certificate (%s)", ossl_reason());
        goto fail;
    }
    if (asn1_unix(X509_get0_notAfter(x), not_after) != 0) {
        tg_errf(err, errlen, rc, "the certificate's notAfter does not parse");
        goto fail;
    }
    rc = 0;
fail:
    X509_free(x);
    BIO_free(bio);
    return rc;
}

int tg_crypto_tls_files_check(const char *cert_path, const char *key_path, int64_t *not_after, char *err,
                              size_t errlen)
{
    int rc = TG_CRYPTO_EFORMAT;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    FILE *f = fopen(cert_path, "r");
    if (!f) {
        rc = tg_errf(err, errlen, TG_CRYPTO_EIO, "%s: cannot read it: %s", cert_path, strerror(errno));
        goto fail;
    }
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x) {
        tg_errf(err, errlen, rc, "%s: not a PEM certificate (%s)", cert_path, ossl_reason());
        goto fail;
    }
    if (not_after && asn1_unix(X509_get0_notAfter(x), not_after) != 0) {
        tg_errf(err, errlen, rc, "%s: the certificate's notAfter does not parse", cert_path);
        goto fail;
    }
    if (key_path) {
        if (!(f = fopen(key_path, "r"))) {
            rc = tg_errf(err, errlen, TG_CRYPTO_EIO, "%s: cannot read it: %s", key_path, strerror(errno));
            goto fail;
        }
        k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        if (!k) {
            tg_errf(err, errlen, rc, "%s: not a PEM private key (%s)", key_path, ossl_reason());
            goto fail;
        }
        if (X509_check_private_key(x, k) != 1) {
            ERR_clear_error();
            tg_errf(err, errlen, rc, "%s does not match the certificate %s", key_path, cert_path);
            goto fail;
        }
    }
    rc = 0;
fail:
    EVP_PKEY_free(k);
    X509_free(x);
    return rc;
}
