/* journal.c: the outbox's append-only journal, the file a worker writes its
 * loop iteration's usage records to with one pwrite before the answers'
 * last bytes leave (an LMDB commit there cost ~6 system calls and 10-12 us
 * a request at one connection). The outbox moves the records into LMDB
 * later (outbox.c); the journal holds them until then, in the page cache
 * (survives kill -9) and, after tg_journal_sync, on disk.
 *
 * A frame is a 24-byte header (magic, record count, payload bytes, CRC-32
 * of header and payload, first record sequence) and the payload: each
 * record as a 4-byte length and its bytes. Frames follow one another from
 * offset 0; reading stops at the first frame that is short, torn or fails
 * its CRC, which after a power loss is the end of what reached the disk.
 * Host byte order: the file never leaves the machine.
 *
 * Not thread-safe: the outbox serializes appends, and serializes reads,
 * which may run beside an append but read only what appends before them
 * finished (own buffers; `to` comes from tg_journal_end under the
 * outbox's append lock). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <isa-l/crc.h>

#include "agent/agent_int.h"

#define J_MAGIC 0x314a4754u /* "TGJ1" */
#define J_HDR 24
#define J_MAX_FRAME (256u << 20) /* a frame larger than this is not one */
#define J_WINDOW (1u << 20)     /* bytes read at a time, unless a frame is larger */

struct tg_journal {
    int j_fd;
    uint64_t j_end;  /* where the next frame goes */
    uint8_t *j_wbuf; /* the frame being built (appends) */
    size_t j_wcap;
    uint8_t *j_rbuf; /* the frames being read (reads run beside appends) */
    size_t j_rcap;
};

typedef struct {
    uint32_t h_magic, h_count, h_bytes, h_crc;
    uint64_t h_first;
} j_hdr_t;

static int grow(uint8_t **buf, size_t *cap, size_t n)
{
    if (n <= *cap)
        return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < n)
        c *= 2;
    uint8_t *p = tg_realloc(*buf, c);
    if (!p)
        return -1;
    *buf = p;
    *cap = c;
    return 0;
}

/* The CRC of a frame: its header with h_crc zero, then the payload.
 * ISA-L's crc32_gzip_refl is zlib's crc32 (same polynomial, reflection
 * and chaining: journals written with zlib read back), 7x as fast on a
 * 1.2 KB frame with the CPU's carry-less multiply. */
static uint32_t frame_crc(const uint8_t *frame, size_t len)
{
    j_hdr_t h;
    memcpy(&h, frame, J_HDR);
    h.h_crc = 0;
    uint32_t c = crc32_gzip_refl(0, (const unsigned char *)&h, J_HDR);
    return crc32_gzip_refl(c, frame + J_HDR, len - J_HDR);
}

int tg_journal_open(const char *path, int readonly, tg_journal_t **out, char *err, size_t errlen)
{
    *out = NULL;
    tg_journal_t *j = tg_calloc(1, sizeof *j);
    if (!j)
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "out of memory opening the journal");
    j->j_fd = open(path, readonly ? O_RDONLY | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->j_fd < 0) {
        int rc = readonly && errno == ENOENT
                     ? 0
                     : tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal %s: %s", path, strerror(errno));
        tg_free(j);
        return rc; /* readonly and absent: *out stays NULL, nothing to read */
    }
    struct stat st;
    if (fstat(j->j_fd, &st) != 0) {
        int rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal %s: %s", path, strerror(errno));
        tg_journal_close(j);
        return rc;
    }
    j->j_end = (uint64_t)st.st_size;
    *out = j;
    return 0;
}

void tg_journal_close(tg_journal_t *j)
{
    if (!j)
        return;
    close(j->j_fd);
    tg_free(j->j_wbuf);
    tg_free(j->j_rbuf);
    tg_free(j);
}

uint64_t tg_journal_end(const tg_journal_t *j)
{
    return j->j_end;
}

int tg_journal_append(tg_journal_t *j, uint64_t first, const tg_outbox_item_t *items, size_t n, char *err,
                      size_t errlen)
{
    size_t len = J_HDR;
    for (size_t i = 0; i < n; i++)
        len += 4 + items[i].oi_len;
    if (len > J_MAX_FRAME || n > UINT32_MAX)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal: a frame of %zu bytes is too large", len);
    if (grow(&j->j_wbuf, &j->j_wcap, len) != 0)
        return tg_errf(err, errlen, TG_AGENT_ENOMEM, "outbox journal: out of memory");
    uint8_t *p = j->j_wbuf + J_HDR;
    for (size_t i = 0; i < n; i++) {
        uint32_t l = (uint32_t)items[i].oi_len;
        memcpy(p, &l, 4);
        if (l)
            memcpy(p + 4, items[i].oi_data, l);
        p += 4 + l;
    }
    j_hdr_t h = {J_MAGIC, (uint32_t)n, (uint32_t)(len - J_HDR), 0, first};
    memcpy(j->j_wbuf, &h, J_HDR);
    h.h_crc = frame_crc(j->j_wbuf, len);
    memcpy(j->j_wbuf, &h, J_HDR);
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(j->j_fd, j->j_wbuf + done, len - done, (off_t)(j->j_end + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            /* the partial frame would fail its CRC and end a recovery
             * read, and the next append overwrites it; cut it anyway
             * (failing that, the CRC still guards) */
            int cut = done ? ftruncate(j->j_fd, (off_t)j->j_end) : 0;
            (void)cut;
            return tg_errf(err, errlen, e == ENOSPC ? TG_AGENT_EFULL : TG_AGENT_ESYS, "outbox journal: %s",
                           strerror(e));
        }
        done += (size_t)w;
    }
    j->j_end += len;
    if (j->j_wcap > 4 * J_WINDOW) { /* nor a large frame's here */
        tg_free(j->j_wbuf);
        j->j_wbuf = NULL;
        j->j_wcap = 0;
    }
    return 0;
}

int tg_journal_sync(tg_journal_t *j)
{
    return fdatasync(j->j_fd) == 0 ? 0 : TG_AGENT_ESYS;
}

/* Checks the frame at buf[0..avail): 0 and *flen when it is whole and
 * sound, 1 when it may go on past avail, -1 when it is not a frame. */
static int frame_check(const uint8_t *buf, size_t avail, size_t *flen)
{
    j_hdr_t h;
    memcpy(&h, buf, J_HDR);
    if (h.h_magic != J_MAGIC || h.h_bytes > J_MAX_FRAME || h.h_count > h.h_bytes / 4)
        return -1;
    *flen = J_HDR + (size_t)h.h_bytes;
    if (*flen > avail)
        return 1;
    if (frame_crc(buf, *flen) != h.h_crc)
        return -1;
    /* the records' lengths fill the payload exactly */
    const uint8_t *q = buf + J_HDR, *e = q + h.h_bytes;
    for (uint32_t i = 0; i < h.h_count; i++) {
        uint32_t l;
        if ((size_t)(e - q) < 4)
            return -1;
        memcpy(&l, q, 4);
        if ((size_t)(e - q - 4) < l)
            return -1;
        q += 4 + l;
    }
    return q == e ? 0 : -1;
}

int tg_journal_read(tg_journal_t *j, uint64_t from, uint64_t to, tg_journal_fn fn, void *arg, uint64_t *at,
                    char *err, size_t errlen)
{
    int rc = 0, stop = 0;
    uint64_t off = from; /* the start of the next frame to deliver */
    size_t need = 0;     /* a frame larger than the window: read whole */
    while (!stop && rc == 0 && off + J_HDR <= to) {
        /* a window of frames at a time: the whole rest when it is small */
        size_t want = need > J_WINDOW ? need : J_WINDOW;
        if (want > to - off)
            want = (size_t)(to - off);
        if (grow(&j->j_rbuf, &j->j_rcap, want) != 0) {
            rc = tg_errf(err, errlen, TG_AGENT_ENOMEM, "outbox journal: out of memory");
            break;
        }
        ssize_t r = pread(j->j_fd, j->j_rbuf, want, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal: %s", strerror(errno));
            break;
        }
        size_t got = (size_t)r, pos = 0, flen = 0;
        need = 0;
        while (rc == 0 && pos + J_HDR <= got) {
            int c = frame_check(j->j_rbuf + pos, got - pos, &flen);
            if (c > 0 && pos == 0 && got == want && flen <= to - off) {
                need = flen; /* longer than the window: again, whole */
                break;
            }
            if (c != 0) {
                /* not a frame, or one running past the end of the file:
                 * the end of what was written (torn by a crash) */
                stop = c < 0 || pos == 0;
                break;
            }
            j_hdr_t h;
            memcpy(&h, j->j_rbuf + pos, J_HDR);
            const uint8_t *p = j->j_rbuf + pos + J_HDR;
            for (uint32_t i = 0; i < h.h_count && rc == 0; i++) {
                uint32_t l;
                memcpy(&l, p, 4);
                rc = fn(arg, h.h_first + i, p + 4, l);
                p += 4 + l;
            }
            if (rc == 0) { /* on an error off stays at this frame */
                pos += flen;
                off += flen;
            }
        }
        if (pos + J_HDR > got && got < want)
            stop = 1; /* the file ended short of `to` */
    }
    if (at)
        *at = off;
    if (j->j_rcap > 4 * J_WINDOW) { /* a large frame's buffer is not kept */
        tg_free(j->j_rbuf);
        j->j_rbuf = NULL;
        j->j_rcap = 0;
    }
    return rc;
}

int tg_journal_reset(tg_journal_t *j, uint64_t at, char *err, size_t errlen)
{
    if (ftruncate(j->j_fd, (off_t)at) != 0)
        return tg_errf(err, errlen, TG_AGENT_ESYS, "outbox journal: truncating: %s", strerror(errno));
    j->j_end = at;
    return 0;
}
