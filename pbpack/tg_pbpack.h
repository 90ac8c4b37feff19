/* tg_pbpack: protobuf-c messages to wire bytes in one pass, byte for byte
 * what protobuf_c_message_pack() writes, at a fraction of its cost.
 *
 * protobuf-c sizes a message before it packs it, and sizes every nested
 * message again when it packs the parent's length prefix: a UsageRecord
 * with its attempts, usage and prices cost ~13K instructions, an eighth of
 * the agent's user-space work per request. This packer walks the same
 * descriptors once, writing each nested message after a one-byte length
 * slot that it widens (moving the bytes) only when the message turns out to
 * be 128 bytes or longer.
 *
 * Covered: proto3 fields (no label) of every scalar type, strings, bytes,
 * messages, oneof members, repeated fields packed or not. A message with a
 * proto2 label (required, optional) or unknown fields anywhere in it is
 * packed by protobuf-c instead, so the bytes are always protobuf-c's.
 * pbpack/tg_pbpack_test.c compares the two on every message of api/. */
#ifndef TG_PBPACK_H
#define TG_PBPACK_H

#include <protobuf-c/protobuf-c.h>

#include "base/tg_base.h"

/* Appends m's encoding to out. Returns 0, or TG_BUF_ENOMEM / TG_BUF_ETOOBIG
 * (out's bytes and length are then as they were; its capacity may have
 * grown). out keeps ownership of its memory. */
int tg_pbpack(const ProtobufCMessage *m, tg_buf_t *out);

/* The bytes one value of type t takes in a message struct (or in a
 * repeated field's array). */
size_t tg_pbpack_elem_size(ProtobufCType t);

#endif
