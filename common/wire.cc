#include "common/wire.h"

#include <grpc/grpc.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <cstring>

#include "google/protobuf/io/coded_stream.h"

namespace gradacc {
namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;

constexpr uint32_t Tag(int field, int wire_type) { return static_cast<uint32_t>(field << 3 | wire_type); }
constexpr int kVarint = 0, kLengthDelimited = 2;
constexpr uint32_t kTensorTag = Tag(1, kVarint);
constexpr uint32_t kOffsetTag = Tag(2, kVarint);
constexpr uint32_t kDataTag = Tag(3, kLengthDelimited);
constexpr uint32_t kNameTag = Tag(4, kLengthDelimited);

size_t InnerSize(uint32_t tensor, uint64_t offset, size_t payload_bytes) {
  return 1 + CodedOutputStream::VarintSize32(tensor) + 1 + CodedOutputStream::VarintSize64(offset) + 1 +
         CodedOutputStream::VarintSize64(payload_bytes) + payload_bytes;
}

uint8_t* Put(uint8_t* out, uint64_t value) { return CodedOutputStream::WriteVarint64ToArray(value, out); }

// The fields of a GradientChunk after its length; false when the encoding
// is one the scan leaves to protobuf.
bool ScanChunkFields(CodedInputStream& in, ChunkRef* chunk) {
  bool have_data = false;
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    uint32_t size = 0;
    switch (tag) {
      case kTensorTag:
        if (!in.ReadVarint32(&chunk->tensor)) return false;
        break;
      case kOffsetTag:
        if (!in.ReadVarint64(&chunk->offset)) return false;
        break;
      case kDataTag:
        if (have_data || !in.ReadVarint32(&size)) return false;
        chunk->data_begin = static_cast<size_t>(in.CurrentPosition());
        chunk->data_size = size;
        if (!in.Skip(static_cast<int>(size))) return false;
        have_data = true;
        break;
      case kNameTag:
        if (!in.ReadVarint32(&size) || !in.ReadString(&chunk->name, static_cast<int>(size))) return false;
        break;
      default:
        return false;  // unknown fields: protobuf keeps or skips them
    }
  }
  return in.ConsumedEntireMessage();
}

}  // namespace

size_t ChunkPrefixSize(uint32_t tensor, uint64_t offset, size_t payload_bytes) {
  const size_t inner = InnerSize(tensor, offset, payload_bytes);
  return 1 + CodedOutputStream::VarintSize64(inner) + (inner - payload_bytes);
}

char* WriteChunkPrefix(char* out, uint32_t tensor, uint64_t offset, size_t payload_bytes) {
  auto* p = reinterpret_cast<uint8_t*>(out);
  *p++ = Tag(kChunkField, kLengthDelimited);
  p = Put(p, InnerSize(tensor, offset, payload_bytes));
  *p++ = kTensorTag;
  p = Put(p, tensor);
  *p++ = kOffsetTag;
  p = Put(p, offset);
  *p++ = kDataTag;
  p = Put(p, payload_bytes);
  return reinterpret_cast<char*>(p);
}

grpc::ByteBuffer ChunkMessage(uint32_t tensor, uint64_t offset, const char* payload, size_t payload_bytes) {
  char prefix[48];  // 1 + 10 + 1 + 5 + 1 + 10 + 1 + 10
  const char* end = WriteChunkPrefix(prefix, tensor, offset, payload_bytes);
  grpc::Slice slices[2] = {grpc::Slice(prefix, static_cast<size_t>(end - prefix)),
                           grpc::Slice(payload, payload_bytes, grpc::Slice::STATIC_SLICE)};
  return grpc::ByteBuffer(slices, payload_bytes == 0 ? 1 : 2);
}

std::vector<std::pair<std::string, int>> BulkTransferChannelArgs() {
  // gRPC's own frame and read sizes measured best on loopback and shaped
  // links (larger frames or TCP reads did not help: tests/bench/README.md).
  return {{GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20}};
}

grpc::ByteBuffer SerializeMessage(const google::protobuf::MessageLite& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

bool ParseMessage(grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  grpc::ProtoBufferReader reader(&buffer);
  return reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
}

MessageKind ScanMessage(grpc::ByteBuffer& buffer, ChunkRef* chunk) {
  *chunk = ChunkRef();
  grpc::ProtoBufferReader reader(&buffer);
  if (!reader.status().ok()) return MessageKind::kOther;
  CodedInputStream in(&reader);
  uint32_t length = 0;
  if (in.ReadTag() != Tag(kChunkField, kLengthDelimited) || !in.ReadVarint32(&length)) return MessageKind::kOther;
  const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(length));
  if (!ScanChunkFields(in, chunk)) return MessageKind::kOther;
  in.PopLimit(limit);
  // A second field in the stream message (a repeated chunk merges in
  // protobuf's rules): protobuf decides.
  if (in.ReadTag() != 0 || !in.ConsumedEntireMessage()) return MessageKind::kOther;
  return MessageKind::kChunk;
}

bool ReadChunkPayload(grpc::ByteBuffer& buffer, const ChunkRef& chunk, char* dst) {
  grpc::ProtoBufferReader reader(&buffer);
  if (!reader.status().ok() || !reader.Skip(static_cast<int>(chunk.data_begin))) return false;
  size_t left = chunk.data_size;
  while (left > 0) {
    const void* data = nullptr;
    int size = 0;
    if (!reader.Next(&data, &size)) return false;
    const size_t take = std::min(left, static_cast<size_t>(size));
    std::memcpy(dst, data, take);
    dst += take;
    left -= take;
    if (take < static_cast<size_t>(size)) reader.BackUp(static_cast<int>(static_cast<size_t>(size) - take));
  }
  return true;
}

}  // namespace gradacc
