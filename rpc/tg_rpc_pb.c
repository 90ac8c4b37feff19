/* tg_rpc_pb.c: protobuf-c glue, so callers hand rpc/ a ProtobufCMessage
 * instead of bytes. Packing streams straight into a tg_buf_t (no size pass
 * plus copy); unpacking allocates through tg_malloc so tests count it. */
#include <protobuf-c/protobuf-c.h>
#include <string.h>

#include "rpc/rpc_int.h"

static void *pb_alloc(void *data, size_t size)
{
    (void)data;
    return tg_malloc(size);
}

static void pb_release(void *data, void *p)
{
    (void)data;
    tg_free(p);
}

static ProtobufCAllocator pb_allocator = {pb_alloc, pb_release, NULL};

/* A ProtobufCBuffer that appends to a tg_buf_t and remembers a failure. */
typedef struct {
    ProtobufCBuffer pb_base;
    tg_buf_t *pb_out;
    int pb_rc;
} buf_sink_t;

static void sink_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    buf_sink_t *s = (buf_sink_t *)b;
    if (s->pb_rc == 0)
        s->pb_rc = tg_buf_append(s->pb_out, data, len);
}

int tg_rpc_pb_pack(const ProtobufCMessage *msg, tg_buf_t *out, char *err, size_t errlen)
{
    if (!msg || !out || !msg->descriptor)
        return tg_errf(err, errlen, TG_RPC_EINVAL, "pb_pack: NULL message or buffer");
    size_t before = out->b_len;
    buf_sink_t s = {{sink_append}, out, 0};
    protobuf_c_message_pack_to_buffer(msg, &s.pb_base);
    if (s.pb_rc != 0) {
        out->b_len = before; /* leave the buffer as it was */
        if (out->b_data)
            out->b_data[before] = '\0';
        return tg_errf(err, errlen, TG_RPC_ENOMEM, "packing %s: %s", msg->descriptor->name,
                       s.pb_rc == TG_BUF_ETOOBIG ? "larger than the buffer's maximum" : "out of memory");
    }
    return 0;
}

int tg_rpc_pb_unpack(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                     ProtobufCMessage **out, char *err, size_t errlen)
{
    if (out)
        *out = NULL;
    if (!desc || !out || (!data && len))
        return tg_errf(err, errlen, TG_RPC_EINVAL, "pb_unpack: NULL descriptor, data or out");
    *out = protobuf_c_message_unpack(desc, &pb_allocator, len, data ? data : (const void *)"");
    if (!*out)
        return tg_errf(err, errlen, TG_RPC_EPROTO, "%zu bytes are not a valid %s message (or out of memory)",
                       len, desc->name);
    return 0;
}

void tg_rpc_pb_free(ProtobufCMessage *msg)
{
    if (msg)
        protobuf_c_message_free_unpacked(msg, &pb_allocator);
}

int tg_rpc_call_send_pb(tg_rpc_call_t *call, const ProtobufCMessage *msg, int timeout_ms)
{
    tg_buf_t b;
    int rc;
    tg_buf_init(&b, (size_t)1 << 30); /* not SIZE_MAX: tg_buf caps at max + 1 */
    rc = tg_rpc_pb_pack(msg, &b, NULL, 0);
    if (rc == 0)
        rc = tg_rpc_call_send(call, b.b_data ? b.b_data : "", b.b_len, timeout_ms);
    tg_buf_free(&b);
    return rc;
}

int tg_rpc_unary_pb(tg_rpc_channel_t *ch, const char *method, const tg_rpc_md_t *md, size_t nmd,
                    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *reply_desc,
                    ProtobufCMessage **reply, int timeout_ms, tg_rpc_result_t *res, char *err, size_t errlen)
{
    tg_buf_t b;
    int rc;

    if (reply)
        *reply = NULL;
    if (res)
        memset(res, 0, sizeof *res);
    if (!reply_desc || !reply)
        return tg_errf(err, errlen, TG_RPC_EINVAL, "unary_pb: NULL reply type or reply");
    tg_buf_init(&b, (size_t)1 << 30);
    rc = tg_rpc_pb_pack(req, &b, err, errlen);
    if (rc == 0)
        rc = tg_rpc_unary(ch, method, md, nmd, b.b_data ? b.b_data : "", b.b_len, timeout_ms, res, err,
                          errlen);
    if (rc == 0)
        rc = tg_rpc_pb_unpack(reply_desc, res->rs_data, res->rs_len, reply, err, errlen);
    tg_buf_free(&b);
    return rc;
}
