/* journal_fuzz.c: libFuzzer target for the outbox journal's reader
 * (journal.c), the code that decides after a crash which records a file of
 * any bytes holds. The input is the journal file. The read stops within
 * the file; the records it gives lie within the file; reading again up to
 * where it stopped gives the same records; a read from that offset gives
 * none; and cutting the file there (what recovery does) then appending a
 * frame gives every earlier record back and the new one after them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent_int.h"
#include "tests/fuzz/fuzz.h"

typedef struct {
    uint64_t sum; /* a hash of (seq, len, bytes) of every record, in order */
    size_t n, bytes;
} tally_t;

static int take(void *arg, uint64_t seq, const void *data, size_t len)
{
    tally_t *t = arg;
    const uint8_t *p = data;
    t->sum = t->sum * 1000003u + seq;
    t->sum = t->sum * 1000003u + len;
    for (size_t i = 0; i < len; i++)
        t->sum = t->sum * 31u + p[i];
    t->n++;
    t->bytes += len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    char err[TG_ERRLEN] = "";
    if (!path[0]) {
        snprintf(path, sizeof path, "/tmp/tg-journal-fuzz-%d", (int)getpid());
    }
    FILE *f = fopen(path, "wb");
    TG_FUZZ_CHECK(f != NULL);
    TG_FUZZ_CHECK(fwrite(data, 1, size, f) == size);
    fclose(f);

    tg_journal_t *j = NULL;
    TG_FUZZ_CHECK(tg_journal_open(path, 0, &j, err, sizeof err) == 0);
    TG_FUZZ_CHECK(tg_journal_end(j) == size);
    tally_t a = {0, 0, 0}, b = {0, 0, 0}, c = {0, 0, 0};
    uint64_t at = UINT64_MAX, at2 = UINT64_MAX;
    TG_FUZZ_CHECK(tg_journal_read(j, 0, size, take, &a, &at, err, sizeof err) == 0);
    TG_FUZZ_CHECK(at <= size);
    TG_FUZZ_CHECK(a.bytes + 4 * a.n <= at);
    TG_FUZZ_CHECK(tg_journal_read(j, 0, at, take, &b, &at2, err, sizeof err) == 0);
    TG_FUZZ_CHECK(at2 == at && b.n == a.n && b.sum == a.sum);
    TG_FUZZ_CHECK(tg_journal_read(j, at, size, take, &c, NULL, err, sizeof err) == 0);
    TG_FUZZ_CHECK(c.n == 0);

    /* recovery's cut, then an append: all of it back, the new one last */
    TG_FUZZ_CHECK(tg_journal_reset(j, at, err, sizeof err) == 0);
    tg_outbox_item_t it = {"fresh", 5};
    TG_FUZZ_CHECK(tg_journal_append(j, 77, &it, 1, err, sizeof err) == 0);
    tally_t d = {0, 0, 0}, want = a;
    take(&want, 77, "fresh", 5);
    uint64_t end = tg_journal_end(j), at3 = 0;
    TG_FUZZ_CHECK(tg_journal_read(j, 0, end, take, &d, &at3, err, sizeof err) == 0);
    TG_FUZZ_CHECK(at3 == end && d.n == want.n && d.sum == want.sum);
    tg_journal_close(j);
    return 0;
}
