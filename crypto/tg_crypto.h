/* tg_crypto: the cryptography Tollgate needs, over OpenSSL 3 (libcrypto).
 *
 *  - Ed25519 keys: agents sign usage batches and identity proofs; the control
 *    plane signs ledger checkpoints. Keys live in PEM files (PKCS#8, mode
 *    0600), so `openssl pkey -in key.pem -text` can inspect them.
 *  - SHA-256: API key secrets are stored only as their hash; ledger rows are
 *    hash-chained.
 *  - Identifiers and secrets from the OS CSPRNG (RAND_bytes).
 *
 * OpenSSL is used rather than a hand-written Ed25519 because it is the
 * audited implementation already on every machine (libssl-dev) and it also
 * provides the TLS that gRPC and libcurl use.
 *
 * Thread safety: every function may be called from any thread; a
 * tg_crypto_key_t is immutable after creation and may be shared.
 */
#ifndef TG_CRYPTO_H
#define TG_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

enum tg_crypto_error {
    TG_CRYPTO_OK = 0,
    TG_CRYPTO_EIO = -200,      /* reading or writing a key file failed */
    TG_CRYPTO_EFORMAT = -201,  /* not an Ed25519 key, or a malformed one */
    TG_CRYPTO_EBADSIG = -202,  /* the signature does not verify */
    TG_CRYPTO_EOPENSSL = -203, /* OpenSSL failed (out of memory, no entropy) */
    TG_CRYPTO_EARG = -204      /* an argument is out of range */
};

/* Name of an error code. Can't fail; unknown codes give "unknown error". */
const char *tg_crypto_strerror(int code);

#define TG_SHA256_LEN 32
#define TG_ED25519_PUBLIC_LEN 32
#define TG_ED25519_SIG_LEN 64

/* SHA-256 of n bytes into out. Can't fail. */
void tg_crypto_sha256(const void *data, size_t n, uint8_t out[TG_SHA256_LEN]);

/* HMAC-SHA256 under key (klen bytes) of n bytes into out. Can't fail (a
 * broken library gives zeros, which fail every comparison). */
void tg_crypto_hmac_sha256(const void *key, size_t klen, const void *data, size_t n, uint8_t out[TG_SHA256_LEN]);

/* Lowercase hex of n bytes into out, which must hold 2n+1 bytes. */
void tg_crypto_hex(const uint8_t *in, size_t n, char *out);

/* Decodes 2n hex characters of `hex` into out (n bytes). Returns 0 or
 * TG_CRYPTO_EFORMAT when hex is not exactly 2n hex digits. */
int tg_crypto_unhex(const char *hex, uint8_t *out, size_t n);

/* Compares n bytes in constant time. Returns 1 when equal, 0 otherwise. */
int tg_crypto_equal(const void *a, const void *b, size_t n);
/* Zeroes n bytes at p in a way the compiler keeps (secrets before free). */
void tg_crypto_wipe(void *p, size_t n);

/* Fills buf with n random bytes. Returns 0 or TG_CRYPTO_EOPENSSL. */
int tg_crypto_random(void *buf, size_t n);

/* A new identifier: prefix, then 26 Crockford base32 characters holding a
 * 48-bit millisecond timestamp and 80 random bits, so identifiers sort by
 * creation time (ULID layout). out must hold strlen(prefix)+27 bytes.
 * Returns 0 or TG_CRYPTO_EOPENSSL / TG_CRYPTO_EARG (outlen too small). */
int tg_crypto_new_id(const char *prefix, char *out, size_t outlen);

/* A new API key secret: prefix then 43 base62 characters (256 bits of
 * entropy). out must hold strlen(prefix)+44 bytes. Returns 0 or an error. */
int tg_crypto_new_secret(const char *prefix, char *out, size_t outlen);

/* ---- Ed25519 ------------------------------------------------------------ */

typedef struct tg_crypto_key tg_crypto_key_t;

/* Generates a new Ed25519 key pair. Returns 0 and *out (free with
 * tg_crypto_key_free) or TG_CRYPTO_EOPENSSL. */
int tg_crypto_key_generate(tg_crypto_key_t **out, char *err, size_t errlen);

/* Loads the private key in the PEM file at path, or, when the file does not
 * exist, generates one and writes it there (mode 0600, written to a temp
 * file, fsync'd and renamed, so a crash never leaves half a key). Returns 0
 * and *out, or TG_CRYPTO_EIO / TG_CRYPTO_EFORMAT with the path and reason in
 * err. */
int tg_crypto_key_load_or_create(const char *path, tg_crypto_key_t **out, char *err, size_t errlen);

/* A signing key from a 32-byte Ed25519 seed (RFC 8032 private key).
 * Returns 0 and *out (free with tg_crypto_key_free) or TG_CRYPTO_EFORMAT. */
int tg_crypto_key_from_seed(const uint8_t seed[32], tg_crypto_key_t **out, char *err, size_t errlen);

/* A verify-only key from a 32-byte raw public key. Returns 0 and *out, or
 * TG_CRYPTO_EFORMAT. */
int tg_crypto_key_from_public(const uint8_t pub[TG_ED25519_PUBLIC_LEN], tg_crypto_key_t **out,
                              char *err, size_t errlen);

/* Copies the raw 32-byte public key. Can't fail. */
void tg_crypto_key_public(const tg_crypto_key_t *key, uint8_t pub[TG_ED25519_PUBLIC_LEN]);

/* Signs n bytes. The key must hold a private key. Returns 0 or
 * TG_CRYPTO_EARG (verify-only key) / TG_CRYPTO_EOPENSSL. */
int tg_crypto_sign(const tg_crypto_key_t *key, const void *data, size_t n,
                   uint8_t sig[TG_ED25519_SIG_LEN]);

/* Verifies sig over n bytes. Returns 0 when valid, TG_CRYPTO_EBADSIG
 * otherwise (including a wrong-length signature). */
int tg_crypto_verify(const tg_crypto_key_t *key, const void *data, size_t n, const uint8_t *sig,
                     size_t siglen);

/* Frees a key. Accepts NULL. */
void tg_crypto_key_free(tg_crypto_key_t *key);

/* ---- TLS files (X.509, for --check-config and certificate-expiry metrics) ---- */

/* The notAfter of the first certificate in a PEM text of len bytes, as Unix
 * seconds in *not_after. Returns 0, or TG_CRYPTO_EFORMAT (no certificate
 * parses) with the reason in err. */
int tg_crypto_cert_not_after(const char *pem, size_t len, int64_t *not_after, char *err, size_t errlen);

/* Checks TLS files the way a server or client will load them: cert_path
 * holds a PEM certificate (its notAfter in *not_after when not NULL);
 * key_path, when not NULL, a PEM private key that matches that
 * certificate. Returns 0, or TG_CRYPTO_EIO (unreadable: errno's reason) /
 * TG_CRYPTO_EFORMAT (not a certificate, not a key, key and certificate
 * differ) with the path and the reason in err. Expiry is not an error here:
 * the caller compares *not_after with the clock. */
int tg_crypto_tls_files_check(const char *cert_path, const char *key_path, int64_t *not_after, char *err,
                              size_t errlen);

#endif
