/* pbfill: test support that fills every field of any protobuf-c message with
 * a non-default value, and lists every message of package tollgate.v1. */
#ifndef TG_API_TESTING_PBFILL_H
#define TG_API_TESTING_PBFILL_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

/* A new message of type d with every field set (strings, bytes, nested
 * messages and arrays from malloc). seed varies the values. Free with
 * protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *tg_pbfill_message(const ProtobufCMessageDescriptor *d, unsigned seed);

/* Every message descriptor generated from api/tollgate/v1. */
extern const ProtobufCMessageDescriptor *const tg_pbfill_all[];
extern const size_t tg_pbfill_count;

#endif
