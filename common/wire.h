// The data plane's chunk messages without copies. A push's chunks
// (PushRequest.chunk) and a pull's (PullResponse.chunk) are the same
// GradientChunk in field 2 of their stream message; on the wire each is
//
//   0x12 len  [0x08 tensor] [0x10 offset] 0x1a data_len data  [0x22 len name]
//
// (protobuf's encoding). The sender builds a grpc::ByteBuffer of a small
// prefix slice and a slice over the payload where it already lies (the
// worker's gradient buffer, a version's snapshot); the receiver scans the
// message without copying and copies the payload once, from gRPC's receive
// slices straight to where it belongs. Any message the scan does not
// recognise (fields repeated, a header, unknown fields) is parsed as
// protobuf instead, so every valid encoding from any client is accepted.
//
// Stateless functions; thread-safe.
#ifndef GRADACC_COMMON_WIRE_H_
#define GRADACC_COMMON_WIRE_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "google/protobuf/message_lite.h"

namespace gradacc {

// The field number of `chunk` in PushRequest and in PullResponse, and of
// `header` in both.
inline constexpr int kChunkField = 2;
inline constexpr int kHeaderField = 1;

// Bytes of the prefix of a chunk message with these fields.
size_t ChunkPrefixSize(uint32_t tensor, uint64_t offset, size_t payload_bytes);
// Writes that prefix at `out` (ChunkPrefixSize bytes); returns its end.
char* WriteChunkPrefix(char* out, uint32_t tensor, uint64_t offset, size_t payload_bytes);

// A chunk message whose payload is `payload` itself, not a copy: it must
// stay valid and unchanged until the call the message is written to is
// finished.
grpc::ByteBuffer ChunkMessage(uint32_t tensor, uint64_t offset, const char* payload, size_t payload_bytes);

// gRPC channel arguments for the data plane, for both ends (the server's
// builder and the workers' channels): a stream window that lets a chunked
// push or pull run several chunks ahead of its reader. The server sets its
// own receive window before these (--grpc_stream_window_kb; gRPC takes the
// first value of an argument given twice): a push stream paused for its
// turn holds its window in server memory.
std::vector<std::pair<std::string, int>> BulkTransferChannelArgs();

// The call metadata that names the shard a call is for (decimal index).
// Every call to a shard of a sharded job carries it (workers, peer shards),
// so that one address may serve several shards of a job: a gradacc-server
// started with --shard=0,4,... serves them all on one port, and a worker's
// calls to all of them share one connection.
inline constexpr char kShardMetadataKey[] = "x-gradacc-shard";

// Serialises any message into a ByteBuffer (one copy, for small messages).
grpc::ByteBuffer SerializeMessage(const google::protobuf::MessageLite& message);
// Parses a whole ByteBuffer as `message`; false when it is not one.
bool ParseMessage(grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);

// Where a scanned chunk's fields are; the payload stays in the buffer.
struct ChunkRef {
  uint32_t tensor = 0;
  uint64_t offset = 0;
  std::string name;
  size_t data_begin = 0;  // byte position of the payload in the message
  size_t data_size = 0;
};

enum class MessageKind {
  kChunk,  // a canonical chunk message: `ChunkRef` says where its payload is
  kOther,  // anything else (a header, or an encoding the scan leaves to
           // protobuf): parse it with ParseMessage
};
MessageKind ScanMessage(grpc::ByteBuffer& buffer, ChunkRef* chunk);

// Copies the scanned chunk's payload into `dst` (chunk.data_size bytes);
// false when the buffer is shorter than the scan said.
bool ReadChunkPayload(grpc::ByteBuffer& buffer, const ChunkRef& chunk, char* dst);

}  // namespace gradacc

#endif  // GRADACC_COMMON_WIRE_H_
