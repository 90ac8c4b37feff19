/* stream.c: the stream converter's driver: an SSE splitter that keeps at
 * most one partial upstream event, the upstream adapter's decoder turning
 * each event into IR events, and the client adapter's encoder writing them,
 * every client event checked against the client grammar (check.c) before
 * its bytes are appended. Nothing else is buffered: the converted bytes of
 * an upstream event leave in the same feed call that completed it. In
 * passthrough (so_passthrough, one protocol both sides) each upstream event
 * is checked itself against the client grammar (check.c's passthrough
 * mode), decoded as in a conversion, and its bytes written unchanged; the splitter also holds the bytes of the event
 * in progress (se_raw) until it completes, and bytes that belong to no
 * event (comments, keep-alives) leave at the end of the feed that brought
 * them. */
#include <stdio.h>
#include <string.h>

#include "proto/proto_int.h"

#define DEFAULT_MAX_EVENT ((size_t)8 << 20)
#define RAW_KEEP_CAP ((size_t)64 << 10) /* se_raw memory kept between events */

/* ---- SSE splitting -------------------------------------------------------- */

void tg_proto__sse_init(tg_proto_sse_t *p, size_t max_event)
{
    memset(p, 0, sizeof *p);
    tg_buf_init(&p->se_line, max_event);
    tg_buf_init(&p->se_data, max_event);
    tg_buf_init(&p->se_raw, max_event + 4096);
}

void tg_proto__sse_free(tg_proto_sse_t *p)
{
    tg_buf_free(&p->se_line);
    tg_buf_free(&p->se_data);
    tg_buf_free(&p->se_raw);
}

/* One complete line (without its end). A blank line dispatches. */
static int sse_line(tg_proto_sse_t *p, const char *l, size_t n,
                    int (*fn)(void *, const char *, const char *, size_t), void *arg, char *err, size_t errlen)
{
    if (n == 0) {
        int rc = 0;
        if (p->se_has_data)
            rc = fn(arg, p->se_event, p->se_data.b_data ? p->se_data.b_data : "", p->se_data.b_len);
        tg_buf_reset(&p->se_data);
        p->se_event[0] = '\0';
        p->se_has_data = 0;
        return rc;
    }
    if (l[0] == ':')
        return 0; /* comment */
    const char *colon = memchr(l, ':', n);
    size_t flen = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    size_t vlen = colon ? n - flen - 1 : 0;
    if (vlen && *v == ' ')
        v++, vlen--;
    if (flen == 4 && !memcmp(l, "data", 4)) {
        if ((p->se_has_data && tg_buf_append(&p->se_data, "\n", 1)) || tg_buf_append(&p->se_data, v, vlen))
            return tg_errf(err, errlen, TG_PROTO_ETOOBIG, "an upstream event passed %zu bytes", p->se_data.b_max);
        p->se_has_data = 1;
    } else if (flen == 5 && !memcmp(l, "event", 5)) {
        size_t k = vlen < sizeof p->se_event - 1 ? vlen : sizeof p->se_event - 1;
        memcpy(p->se_event, v, k);
        p->se_event[k] = '\0';
    }
    return 0; /* id:, retry: and unknown fields: nothing */
}

/* Passthrough: keeps consumed bytes for the event they belong to. */
static int keep_raw(tg_proto_sse_t *p, const char *b, size_t n, char *err, size_t errlen)
{
    int rc = p->se_keep_raw && n ? tg_buf_append(&p->se_raw, b, n) : 0;
    if (rc == TG_BUF_ENOMEM)
        return tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory keeping an upstream event");
    if (rc)
        return tg_errf(err, errlen, TG_PROTO_ETOOBIG, "an upstream event passed %zu bytes", p->se_raw.b_max);
    return 0;
}

int tg_proto__sse_idle(const tg_proto_sse_t *p)
{
    return !p->se_has_data && !p->se_event[0] && !p->se_line.b_len;
}

int tg_proto__sse_feed(tg_proto_sse_t *p, const char *b, size_t n,
                       int (*fn)(void *arg, const char *event, const char *data, size_t len), void *arg,
                       char *err, size_t errlen)
{
    size_t i = 0;
    while (i < n) {
        if (p->se_skip_lf) {
            p->se_skip_lf = 0;
            if (b[i] == '\n') {
                int krc = keep_raw(p, b + i, 1, err, errlen);
                if (krc)
                    return krc;
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < n && b[j] != '\n' && b[j] != '\r')
            j++;
        if (j == n) { /* partial line: keep it */
            if (tg_buf_append(&p->se_line, b + i, n - i))
                return tg_errf(err, errlen, TG_PROTO_ETOOBIG, "an upstream line passed %zu bytes",
                               p->se_line.b_max);
            return keep_raw(p, b + i, n - i, err, errlen);
        }
        /* the line's end: LF, CR, or CR LF when both are here (a CR at
         * the end of the bytes leaves a following LF to skip) */
        size_t e = j + 1;
        if (b[j] == '\r' && e < n && b[e] == '\n')
            e++;
        int rc = keep_raw(p, b + i, e - i, err, errlen);
        if (rc)
            return rc;
        if (p->se_line.b_len) {
            if (tg_buf_append(&p->se_line, b + i, j - i))
                return tg_errf(err, errlen, TG_PROTO_ETOOBIG, "an upstream line passed %zu bytes",
                               p->se_line.b_max);
            rc = sse_line(p, p->se_line.b_data, p->se_line.b_len, fn, arg, err, errlen);
            tg_buf_reset(&p->se_line);
        } else {
            rc = sse_line(p, b + i, j - i, fn, arg, err, errlen);
        }
        p->se_skip_lf = b[j] == '\r' && e == j + 1;
        i = e;
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- the driver ------------------------------------------------------------ */

int tg_proto_stream_create(const tg_proto_stream_opts_t *opts, tg_proto_stream_t **out, char *err,
                           size_t errlen)
{
    *out = NULL;
    if ((unsigned)opts->so_from >= TG_PROTO_NKINDS || (unsigned)opts->so_to >= TG_PROTO_NKINDS)
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "stream: unknown protocol");
    if (opts->so_passthrough && opts->so_from != opts->so_to)
        return tg_errf(err, errlen, TG_PROTO_EINVALID, "stream: passthrough needs one protocol on both sides");
    tg_proto_stream_t *s = tg_calloc(1, sizeof *s);
    if (!s)
        return tg_errf(err, errlen, TG_PROTO_ENOMEM, "out of memory creating a stream converter");
    s->st_opts = *opts;
    if (!s->st_opts.so_max_event)
        s->st_opts.so_max_event = DEFAULT_MAX_EVENT;
    s->st_from = tg_proto__adapters[opts->so_from];
    s->st_to = tg_proto__adapters[opts->so_to];
    tg_proto__sse_init(&s->st_sse, s->st_opts.so_max_event);
    s->st_sse.se_keep_raw = opts->so_passthrough;
    tg_proto__check_init(&s->st_check, opts->so_to, opts->so_include_usage);
    s->st_check.ck_pass = opts->so_passthrough;
    s->st_from->pa_dec_init(s);
    *out = s;
    return 0;
}

void tg_proto_stream_destroy(tg_proto_stream_t *s)
{
    if (!s)
        return;
    s->st_from->pa_dec_free(s);
    if (s->st_to->pa_enc_free)
        s->st_to->pa_enc_free(s);
    tg_proto__sse_free(&s->st_sse);
    tg_free(s->st_raw);
    tg_free(s->st_stop_seq);
    tg_free(s);
}

int tg_proto_stream_done(const tg_proto_stream_t *s)
{
    return s->st_done;
}

void tg_proto_stream_result(const tg_proto_stream_t *s, tg_proto_usage_t *usage, tg_proto_stop_t *stop)
{
    if (usage) {
        *usage = s->st_usage;
        usage->us_raw = s->st_raw;
    }
    if (stop)
        *stop = s->st_stop;
}

int tg_proto__set_usage(tg_proto_stream_t *s, const tg_proto_usage_t *u)
{
    char *raw = u->us_raw ? tg_strdup(u->us_raw) : NULL;
    if (u->us_raw && !raw)
        return TG_PROTO_ENOMEM;
    tg_free(s->st_raw);
    s->st_raw = raw;
    s->st_usage = *u;
    s->st_usage.us_raw = raw;
    return 0;
}

int tg_proto__fail(tg_proto_stream_t *s, int code, tg_proto_errtype_t type, const char *message)
{
    if (s->st_done)
        return code;
    s->st_done = 1;
    tg_errf(s->st_err, s->st_errlen, code, "%s", message);
    /* passthrough: the upstream's own error event goes out as it came
     * (on_sse appends it) */
    if (code == TG_PROTO_ENOMEM || !s->st_out || (s->st_pass && code == TG_PROTO_EUPSTREAM))
        return code;
    tg_proto_errinfo_t e = {.pe_type = type, .pe_message = message};
    s->st_to->pa_enc_error(s, &e, s->st_out);
    return code;
}

int tg_proto__fail_upstream(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    const tg_proto_errinfo_t *e = ev->ev_error;
    return tg_proto__fail(s, TG_PROTO_EUPSTREAM, e ? e->pe_type : TG_PROTO_ERR_API,
                          e && e->pe_message ? e->pe_message : "upstream error");
}

int tg_proto__write_event(tg_proto_stream_t *s, const char *event, json_t *data)
{
    if (s->st_done) {
        json_decref(data);
        return 0;
    }
    int done_marker = s->st_opts.so_to == TG_PROTO_OPENAI && event && !strcmp(event, "[DONE]");
    if (!data && !done_marker)
        return tg_proto__fail(s, TG_PROTO_ENOMEM, TG_PROTO_ERR_API, "out of memory converting the stream");
    char why[TG_ERRLEN] = "";
    if (s->st_pass) {
        /* passthrough: the upstream's own event was checked (on_sse); its
         * bytes go out, not this re-encoding */
        json_decref(data);
        return 0;
    }
    if (tg_proto__check(&s->st_check, s->st_opts.so_to == TG_PROTO_OPENAI && !done_marker ? NULL : event, data, why,
                        sizeof why)) {
        json_decref(data);
        char msg[TG_ERRLEN + 64];
        snprintf(msg, sizeof msg, "the converted stream would break the %s grammar: %s", s->st_to->pa_name, why);
        return tg_proto__fail(s, TG_PROTO_EGRAMMAR, TG_PROTO_ERR_API, msg);
    }
    tg_buf_t *out = s->st_out;
    size_t len = out->b_len;
    int rc = 0;
    if (s->st_opts.so_to != TG_PROTO_OPENAI) /* named events */
        rc = tg_buf_printf(out, "event: %s\ndata: ", event);
    else
        rc = tg_buf_puts(out, "data: ");
    if (!rc)
        rc = done_marker ? tg_buf_puts(out, "[DONE]") : tg_proto__append_json(out, data);
    if (!rc)
        rc = tg_buf_puts(out, "\n\n");
    json_decref(data);
    if (rc) {
        out->b_len = len;
        if (out->b_data)
            out->b_data[len] = '\0';
        s->st_done = 1;
        return tg_errf(s->st_err, s->st_errlen, TG_PROTO_ETOOBIG, "the client output buffer is full");
    }
    if (tg_proto__check_complete(&s->st_check))
        s->st_done = 1;
    return 0;
}

int tg_proto__emit(tg_proto_stream_t *s, const tg_proto_event_t *ev)
{
    if (s->st_done)
        return 0;
    if (s->st_opts.so_on_event)
        s->st_opts.so_on_event(s->st_opts.so_arg, ev);
    if (ev->ev_type == TG_PROTO_EV_END && ev->ev_stop != TG_PROTO_STOP_NONE)
        s->st_stop = ev->ev_stop;
    if (ev->ev_type == TG_PROTO_EV_START)
        s->st_enc.en_started = 1;
    return s->st_to->pa_enc_event(s, ev);
}

/* Passthrough: the upstream's event, parsed, against the client grammar.
 * A violation ends the stream with the client's error event. */
static int check_upstream(tg_proto_stream_t *s, const char *event, const char *data, size_t len)
{
    json_t *v = json_loadb(data, len, 0, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        return tg_proto__fail(s, TG_PROTO_EJSON, TG_PROTO_ERR_API, "upstream sent a malformed stream event");
    }
    char why[TG_ERRLEN] = "", msg[TG_ERRLEN + 64];
    int rc = tg_proto__check(&s->st_check, event[0] ? event : json_string_value(json_object_get(v, "type")), v, why,
                             sizeof why);
    json_decref(v);
    if (!rc)
        return 0;
    snprintf(msg, sizeof msg, "the upstream stream breaks the %s grammar: %s", s->st_to->pa_name, why);
    return tg_proto__fail(s, TG_PROTO_EGRAMMAR, TG_PROTO_ERR_API, msg);
}

static int on_sse(void *arg, const char *event, const char *data, size_t len)
{
    tg_proto_stream_t *s = arg;
    if (s->st_done) {
        tg_buf_reset(&s->st_sse.se_raw); /* what follows the end is not the client's */
        return 0;
    }
    if (!s->st_opts.so_passthrough)
        return s->st_from->pa_dec_event(s, event, data, len);
    /* passthrough: the upstream's own event is checked against the client
     * grammar (check.c's passthrough mode) and decoded as in a conversion
     * (usage, stop, text counts), then its bytes are written: a violation
     * writes the client's error event instead, an upstream error event goes
     * out as it is */
    tg_buf_t *raw = &s->st_sse.se_raw;
    int rc = check_upstream(s, event, data, len);
    if (!rc) {
        s->st_pass = 1;
        rc = s->st_from->pa_dec_event(s, event, data, len);
        s->st_pass = 0;
        if (!rc && tg_proto__check_complete(&s->st_check))
            s->st_done = 1;
    }
    if ((rc == 0 || rc == TG_PROTO_EUPSTREAM) && raw->b_len && tg_buf_append(s->st_out, raw->b_data, raw->b_len)) {
        s->st_done = 1;
        rc = tg_errf(s->st_err, s->st_errlen, TG_PROTO_ETOOBIG, "the client output buffer is full");
    }
    s->st_pass_last = rc == 0 && s->st_done; /* the upstream's own last event ended it */
    tg_buf_reset(raw);
    if (raw->b_cap > RAW_KEEP_CAP) { /* a large event's memory is not kept for the stream's life */
        size_t max = raw->b_max;
        tg_buf_free(raw);
        tg_buf_init(raw, max);
    }
    return rc;
}

/* Passthrough, at the end of a feed: bytes no event claims yet (comments,
 * keep-alives, blank lines, the LF of a CR LF split across reads) go out
 * now rather than wait for the next event. */
static int flush_idle(tg_proto_stream_t *s)
{
    tg_buf_t *raw = &s->st_sse.se_raw;
    if (!s->st_opts.so_passthrough || s->st_done || !raw->b_len || !tg_proto__sse_idle(&s->st_sse))
        return 0;
    int rc = tg_buf_append(s->st_out, raw->b_data, raw->b_len);
    tg_buf_reset(raw);
    if (rc) {
        s->st_done = 1;
        return tg_errf(s->st_err, s->st_errlen, TG_PROTO_ETOOBIG, "the client output buffer is full");
    }
    return 0;
}

static void begin(tg_proto_stream_t *s, tg_buf_t *out, char *err, size_t errlen)
{
    s->st_out = out;
    s->st_err = err;
    s->st_errlen = errlen;
}

static int end_call(tg_proto_stream_t *s, int rc)
{
    s->st_out = NULL;
    s->st_err = NULL;
    s->st_errlen = 0;
    return rc;
}

int tg_proto_stream_feed(tg_proto_stream_t *s, const char *bytes, size_t n, tg_buf_t *out, char *err,
                         size_t errlen)
{
    if (s->st_done) {
        /* passthrough: the LF of the last event's CR LF, split from it */
        if (s->st_opts.so_passthrough && s->st_sse.se_skip_lf && n && bytes[0] == '\n' &&
            s->st_pass_last && tg_buf_append(out, "\n", 1) == 0)
            s->st_sse.se_skip_lf = 0;
        return 0;
    }
    begin(s, out, err, errlen);
    char why[TG_ERRLEN] = "";
    int rc = tg_proto__sse_feed(&s->st_sse, bytes, n, on_sse, s, why, sizeof why);
    if ((rc == TG_PROTO_ETOOBIG || rc == TG_PROTO_ENOMEM) && why[0])
        tg_proto__fail(s, rc, TG_PROTO_ERR_API, why);
    if (!rc)
        rc = flush_idle(s);
    return end_call(s, rc);
}

int tg_proto_stream_finish(tg_proto_stream_t *s, tg_buf_t *out, char *err, size_t errlen)
{
    if (s->st_done)
        return 0;
    begin(s, out, err, errlen);
    /* a last event whose lines are whole but lack the blank line still
     * counts; a line cut by the EOF is dropped (it is not an event) */
    char why[TG_ERRLEN] = "";
    tg_buf_t *raw = &s->st_sse.se_raw, *line = &s->st_sse.se_line;
    if (s->st_sse.se_keep_raw) { /* the cut line is not forwarded either */
        raw->b_len -= line->b_len <= raw->b_len ? line->b_len : raw->b_len;
        if (raw->b_data)
            raw->b_data[raw->b_len] = '\0';
    }
    tg_buf_reset(line);
    s->st_sse.se_skip_lf = 0;
    int rc = tg_proto__sse_feed(&s->st_sse, "\n", 1, on_sse, s, why, sizeof why);
    if (!rc && !s->st_done)
        rc = s->st_from->pa_dec_eof(s);
    return end_call(s, rc);
}

/* An Anthropic passthrough ended by the gateway: its closing events follow
 * the bytes the client already has, not the encoder's view. The open block
 * (a skipped server-tool block too) closes with the upstream's own index;
 * once the upstream's message_delta went out only message_stop follows. */
static int pass_end(tg_proto_stream_t *s, tg_proto_stop_t stop, const tg_proto_usage_t *usage_override)
{
    tg_proto_an_dec_t *d = &s->st_dec.an;
    int rc = 0;
    if (d->ad_up_open >= 0) {
        if (tg_buf_printf(s->st_out, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":%d}\n\n",
                          d->ad_up_open))
            return tg_errf(s->st_err, s->st_errlen, TG_PROTO_ETOOBIG, "the client output buffer is full");
        json_t *bs_ev = json_pack("{ss si}", "type", "content_block_stop", "index", d->ad_up_open);
        char why[TG_ERRLEN] = "";
        if (!bs_ev)
            return tg_errf(s->st_err, s->st_errlen, TG_PROTO_ENOMEM, "out of memory");
        rc = tg_proto__check(&s->st_check, "content_block_stop", bs_ev, why, sizeof why);
        json_decref(bs_ev);
        if (rc)
            return tg_errf(s->st_err, s->st_errlen, rc, "%s", why);
        if (!d->ad_skip && d->ad_open >= 0) {
            /* the encoder follows the block's end (written above, not by it) */
            tg_proto_event_t bs = {.ev_type = TG_PROTO_EV_BLOCK_STOP, .ev_index = d->ad_open};
            s->st_pass = 1;
            rc = tg_proto__emit(s, &bs);
            s->st_pass = 0;
        }
        d->ad_up_open = d->ad_open = -1;
        d->ad_skip = 0;
    }
    if (!rc && d->ad_delta_seen) {
        if (tg_buf_puts(s->st_out, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"))
            return tg_errf(s->st_err, s->st_errlen, TG_PROTO_ETOOBIG, "the client output buffer is full");
        return 0;
    }
    if (!rc && usage_override)
        rc = tg_proto__set_usage(s, usage_override);
    if (!rc) {
        tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_END, .ev_stop = stop, .ev_usage = &s->st_usage};
        rc = tg_proto__emit(s, &ev);
    }
    return rc;
}

int tg_proto_stream_end(tg_proto_stream_t *s, tg_proto_stop_t stop, const tg_proto_usage_t *usage_override,
                        tg_buf_t *out, char *err, size_t errlen)
{
    if (s->st_done)
        return 0;
    begin(s, out, err, errlen);
    int rc = 0;
    if (!s->st_enc.en_started) {
        tg_proto_event_t st = {.ev_type = TG_PROTO_EV_START};
        rc = tg_proto__emit(s, &st);
    }
    if (s->st_opts.so_passthrough && s->st_opts.so_from == TG_PROTO_ANTHROPIC) {
        if (!rc)
            rc = pass_end(s, stop, usage_override);
        s->st_done = 1;
        return end_call(s, rc);
    }
    /* the open block, whichever decoder opened it */
    int open = s->st_opts.so_from == TG_PROTO_OPENAI ? s->st_dec.oa.od_open : s->st_dec.an.ad_open;
    if (!rc && open >= 0) {
        tg_proto_event_t bs = {.ev_type = TG_PROTO_EV_BLOCK_STOP, .ev_index = open};
        rc = tg_proto__emit(s, &bs);
    }
    if (!rc && usage_override)
        rc = tg_proto__set_usage(s, usage_override);
    if (!rc) {
        tg_proto_event_t ev = {.ev_type = TG_PROTO_EV_END, .ev_stop = stop, .ev_usage = &s->st_usage};
        rc = tg_proto__emit(s, &ev);
    }
    s->st_done = 1;
    return end_call(s, rc);
}
