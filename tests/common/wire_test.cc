// common/wire.h: chunk messages built over their payload parse as the
// protobuf messages they claim to be; the scan finds a canonical chunk's
// fields and payload, whatever the slices; any other encoding is left to
// protobuf (kOther), never misread.
#include "common/wire.h"

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstring>
#include <string>
#include <vector>

#include "gradacc/v1/data.pb.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

std::string Bytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// The same bytes split into slices of `piece` bytes (as gRPC's receive path
// hands over a message in HTTP/2 frames).
grpc::ByteBuffer Split(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < bytes.size(); at += piece) {
    slices.emplace_back(bytes.data() + at, std::min(piece, bytes.size() - at));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Payload(size_t n) {
  std::string p(n, '\0');
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(i * 7 + 3);
  return p;
}

TEST(WireTest, ChunkMessageIsTheProtobufMessage) {
  for (uint64_t offset : {uint64_t{0}, uint64_t{1}, uint64_t{300}, uint64_t{1} << 40}) {
    for (uint32_t tensor : {0u, 5u, 70000u}) {
      const std::string payload = Payload(4 * 1000);
      const grpc::ByteBuffer message = ChunkMessage(tensor, offset, payload.data(), payload.size());
      const std::string bytes = Bytes(message);
      EXPECT_EQ(bytes.size(), ChunkPrefixSize(tensor, offset, payload.size()) + payload.size());
      v1::PushRequest push;
      ASSERT_TRUE(push.ParseFromString(bytes));
      ASSERT_TRUE(push.has_chunk());
      EXPECT_EQ(push.chunk().tensor(), tensor);
      EXPECT_EQ(push.chunk().offset(), offset);
      EXPECT_EQ(push.chunk().data(), payload);
      v1::PullResponse pull;  // the same field number in a pull
      ASSERT_TRUE(pull.ParseFromString(bytes));
      EXPECT_EQ(pull.chunk().data(), payload);
    }
  }
}

TEST(WireTest, ChunkMessageDoesNotCopyItsPayload) {
  std::string payload = Payload(64);
  const grpc::ByteBuffer message = ChunkMessage(1, 2, payload.data(), payload.size());
  payload[10] = 'X';  // the message sees the change: it points at the payload
  v1::PushRequest push;
  ASSERT_TRUE(push.ParseFromString(Bytes(message)));
  EXPECT_EQ(push.chunk().data()[10], 'X');
}

TEST(WireTest, ScanFindsTheFieldsAndReadsThePayloadAcrossSlices) {
  const std::string payload = Payload(4 * 4099);
  v1::PushRequest push;
  push.mutable_chunk()->set_tensor(3);
  push.mutable_chunk()->set_offset(12345);
  push.mutable_chunk()->set_data(payload);
  push.mutable_chunk()->set_name("layer.weight");
  const std::string bytes = push.SerializeAsString();  // protobuf's own, canonical encoding
  for (size_t piece : {size_t{1}, size_t{7}, size_t{16384}, bytes.size()}) {
    grpc::ByteBuffer buffer = Split(bytes, piece);
    ChunkRef ref;
    ASSERT_EQ(ScanMessage(buffer, &ref), MessageKind::kChunk) << piece;
    EXPECT_EQ(ref.tensor, 3u);
    EXPECT_EQ(ref.offset, 12345u);
    EXPECT_EQ(ref.name, "layer.weight");
    ASSERT_EQ(ref.data_size, payload.size());
    std::string got(payload.size(), '\0');
    ASSERT_TRUE(ReadChunkPayload(buffer, ref, got.data()));
    EXPECT_EQ(got, payload) << piece;
  }
}

TEST(WireTest, DefaultFieldsOmittedByProtobufAreZero) {
  v1::PushRequest push;
  push.mutable_chunk()->set_data("abcd");  // tensor 0, offset 0: not on the wire
  grpc::ByteBuffer buffer = Split(push.SerializeAsString(), 3);
  ChunkRef ref;
  ASSERT_EQ(ScanMessage(buffer, &ref), MessageKind::kChunk);
  EXPECT_EQ(ref.tensor, 0u);
  EXPECT_EQ(ref.offset, 0u);
  EXPECT_EQ(ref.data_size, 4u);
}

TEST(WireTest, FieldsAfterThePayloadStillCount) {
  // Legal protobuf: fields in any order; the last value of a field wins.
  std::string bytes;
  v1::GradientChunk first, second;
  first.set_data("abcdefgh");
  first.set_tensor(1);
  second.set_offset(9);
  second.set_tensor(2);
  const std::string inner = first.SerializeAsString() + second.SerializeAsString();
  bytes.push_back(0x12);
  bytes.push_back(static_cast<char>(inner.size()));
  bytes += inner;
  grpc::ByteBuffer buffer = Split(bytes, 5);
  ChunkRef ref;
  ASSERT_EQ(ScanMessage(buffer, &ref), MessageKind::kChunk);
  EXPECT_EQ(ref.tensor, 2u);
  EXPECT_EQ(ref.offset, 9u);
  std::string got(ref.data_size, '\0');
  ASSERT_TRUE(ReadChunkPayload(buffer, ref, got.data()));
  EXPECT_EQ(got, "abcdefgh");
}

TEST(WireTest, EverythingElseIsLeftToProtobuf) {
  ChunkRef ref;
  {  // a header
    v1::PushRequest push;
    push.mutable_header()->set_job_id("j");
    grpc::ByteBuffer buffer = SerializeMessage(push);
    EXPECT_EQ(ScanMessage(buffer, &ref), MessageKind::kOther);
    v1::PushRequest parsed;
    ASSERT_TRUE(ParseMessage(buffer, &parsed));
    EXPECT_EQ(parsed.header().job_id(), "j");
  }
  {  // two chunk fields in one message (protobuf merges them)
    v1::PushRequest a, b;
    a.mutable_chunk()->set_data("abcd");
    b.mutable_chunk()->set_tensor(1);
    grpc::ByteBuffer buffer = Split(a.SerializeAsString() + b.SerializeAsString(), 4);
    EXPECT_EQ(ScanMessage(buffer, &ref), MessageKind::kOther);
    v1::PushRequest merged;
    ASSERT_TRUE(ParseMessage(buffer, &merged));
    EXPECT_EQ(merged.chunk().tensor(), 1u);
    EXPECT_EQ(merged.chunk().data(), "abcd");
  }
  {  // an unknown field inside the chunk
    std::string bytes = {0x12, 6, 0x1a, 1, 'x', static_cast<char>(0x78), 1, 0};  // field 15, varint
    bytes[1] = 5;
    bytes.resize(7);
    grpc::ByteBuffer buffer = Split(bytes, 2);
    EXPECT_EQ(ScanMessage(buffer, &ref), MessageKind::kOther);
  }
  {  // the data field twice
    std::string bytes = {0x12, 6, 0x1a, 1, 'x', 0x1a, 1, 'y'};
    grpc::ByteBuffer buffer = Split(bytes, 3);
    EXPECT_EQ(ScanMessage(buffer, &ref), MessageKind::kOther);
  }
  {  // truncated: the payload is longer than the message
    std::string bytes = {0x12, 6, 0x1a, 40, 'x', 'y', 'z', 'w'};
    grpc::ByteBuffer buffer = Split(bytes, 3);
    EXPECT_EQ(ScanMessage(buffer, &ref), MessageKind::kOther);
    v1::PushRequest parsed;
    EXPECT_FALSE(ParseMessage(buffer, &parsed));
  }
}

}  // namespace
}  // namespace gradacc
