// The shared-memory fast path's protocol (common/shm_fast_path.h) and the
// server's end of it (server/shm_fast_path.h), with a scripted handler:
// requests are taken once, a request withdrawn before it is taken is never
// handled, an answer to an abandoned request never lands on a newer one,
// the bell tells whether its server lives, and replies keep the gRPC status
// (code, message, details) the RPC would carry.
#include "server/shm_fast_path.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/shm_fast_path.h"
#include "server/shm_transport.h"
#include "tests/server/part_test_util.h"

namespace gradacc {
namespace {

using part_test::Event;
using part_test::TempDir;

// The worker's side of a mailbox, as worker/client/client_shm.cc drives it.
uint32_t Post(ShmMailbox* mailbox, ShmBellSegment* bell, const std::string& request) {
  const uint32_t seq = ShmMailbox::SeqOf(mailbox->slot.load()) + 1;
  std::memcpy(mailbox->request, request.data(), request.size());
  mailbox->request_bytes = static_cast<uint32_t>(request.size());
  mailbox->slot.store(ShmMailbox::Slot(seq, ShmMailbox::kRequested), std::memory_order_release);
  bell->Ring();
  return seq;
}

bool AwaitReply(ShmMailbox* mailbox, uint32_t seq, absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (absl::Now() < until) {
    const uint32_t r = mailbox->reply_seq.load(std::memory_order_acquire);
    if (r == seq) return true;
    FutexWait(&mailbox->reply_seq, r, kShmPollInterval);
  }
  return false;
}

class ShmFastPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("fastpath");
    shm_ = std::make_unique<ShmTransport>(dir_, false, 64, 2, std::vector<float>(64, 0.0f), /*fast_path=*/true);
    ASSERT_TRUE(shm_->on()) << shm_->off_reason();
    ASSERT_NE(shm_->bell(), nullptr);
    offer_ = shm_->Attach(0, false);
    ASSERT_TRUE(offer_.available());
    ASSERT_FALSE(offer_.bell_path().empty());
    auto grad = ShmSegment::Open(offer_.grad_path(), true, 64, {offer_.nonce_hi(), offer_.nonce_lo()});
    ASSERT_TRUE(grad.ok()) << grad.status();
    grad_ = *std::move(grad);
    auto bell = ShmBellSegment::Open(offer_.bell_path(), {offer_.nonce_hi(), offer_.nonce_lo()});
    ASSERT_TRUE(bell.ok()) << bell.status();
    bell_ = *std::move(bell);
  }

  std::string dir_;
  std::unique_ptr<ShmTransport> shm_;
  v1::AttachSharedMemoryResponse offer_;
  std::unique_ptr<ShmSegment> grad_;
  std::unique_ptr<ShmBellSegment> bell_;
};

TEST_F(ShmFastPathTest, RequestsAreTakenOnceAndAnsweredWithTheRpcsStatus) {
  std::atomic<int> handled{0};
  std::vector<std::string> seen;
  Mutex mu;
  ShmFastPath fast(shm_.get(), [&](uint32_t worker, std::string request, ShmFastPath::Reply reply) {
    {
      MutexLock lock(&mu);
      seen.push_back(request);
    }
    ++handled;
    EXPECT_EQ(worker, 0u);
    if (request == "refuse") {
      reply(Refusal(v1::ERROR_REASON_STALE_WINDOW, "window 3 is closed", {{"window", "3"}}));
      return;
    }
    v1::PushResponse answer;
    answer.set_window(7);
    answer.set_closed_window(true);
    reply(answer);
  });
  ShmMailbox* const mailbox = MailboxOf(*grad_);
  uint32_t seq = Post(mailbox, bell_.get(), "push");
  ASSERT_TRUE(AwaitReply(mailbox, seq, absl::Seconds(10)));
  ShmReply reply;
  ASSERT_TRUE(DecodeShmReply(*mailbox, &reply));
  EXPECT_EQ(reply.code, 0);
  v1::PushResponse answer;
  ASSERT_TRUE(answer.ParseFromString(reply.body));
  EXPECT_EQ(answer.window(), 7u);
  EXPECT_EQ(ShmMailbox::StateOf(mailbox->slot.load()), ShmMailbox::kTaken);

  seq = Post(mailbox, bell_.get(), "refuse");
  ASSERT_TRUE(AwaitReply(mailbox, seq, absl::Seconds(10)));
  ASSERT_TRUE(DecodeShmReply(*mailbox, &reply));
  const absl::Status status =
      FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(reply.code), reply.message, reply.details));
  EXPECT_EQ(ReasonOf(status), v1::ERROR_REASON_STALE_WINDOW) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "window 3 is closed")) << status;
  EXPECT_EQ(handled.load(), 2);
  EXPECT_EQ(fast.requests(), 2u);
  // Rings without a request handle nothing.
  bell_->Ring();
  bell_->Ring();
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(handled.load(), 2);
}

TEST_F(ShmFastPathTest, AWithdrawnRequestIsNeverHandled) {
  ShmMailbox* const mailbox = MailboxOf(*grad_);
  // Posted while no server thread looks, then withdrawn.
  const uint32_t seq = ShmMailbox::SeqOf(mailbox->slot.load()) + 1;
  std::memcpy(mailbox->request, "old", 3);
  mailbox->request_bytes = 3;
  mailbox->slot.store(ShmMailbox::Slot(seq, ShmMailbox::kRequested));
  uint32_t posted = ShmMailbox::Slot(seq, ShmMailbox::kRequested);
  ASSERT_TRUE(mailbox->slot.compare_exchange_strong(posted, ShmMailbox::Slot(seq, ShmMailbox::kCancelled)));
  std::atomic<int> handled{0};
  ShmFastPath fast(shm_.get(), [&](uint32_t, std::string request, ShmFastPath::Reply reply) {
    EXPECT_EQ(request, "new");
    ++handled;
    reply(v1::PushResponse());
  });
  const uint32_t next = Post(mailbox, bell_.get(), "new");
  EXPECT_EQ(next, seq + 1);
  ASSERT_TRUE(AwaitReply(mailbox, next, absl::Seconds(10)));
  EXPECT_EQ(handled.load(), 1);
}

TEST_F(ShmFastPathTest, AnAnswerToAnAbandonedRequestDoesNotOverwriteANewerOne) {
  ShmMailbox* const mailbox = MailboxOf(*grad_);
  ShmFastPath::Reply held;
  Event first_taken;
  ShmFastPath fast(shm_.get(), [&](uint32_t, std::string request, ShmFastPath::Reply reply) {
    if (request == "slow") {
      held = std::move(reply);  // answered later (a closing push waits for its version)
      first_taken.Notify();
      return;
    }
    v1::PushResponse answer;
    answer.set_window(2);
    reply(answer);
  });
  const uint32_t slow = Post(mailbox, bell_.get(), "slow");
  ASSERT_TRUE(first_taken.WaitFor(absl::Seconds(10)));
  // The worker gave up on it (taken: its cancel fails) and pushes again.
  const uint32_t again = Post(mailbox, bell_.get(), "again");
  ASSERT_TRUE(AwaitReply(mailbox, again, absl::Seconds(10)));
  v1::PushResponse late;
  late.set_window(1);
  held(late);  // the abandoned request's answer comes now
  EXPECT_EQ(mailbox->reply_seq.load(), again) << "slow was " << slow;
  ShmReply reply;
  ASSERT_TRUE(DecodeShmReply(*mailbox, &reply));
  v1::PushResponse answer;
  ASSERT_TRUE(answer.ParseFromString(reply.body));
  EXPECT_EQ(answer.window(), 2u);
}

TEST_F(ShmFastPathTest, TheBellTellsWhetherItsServerLivesAndCarriesTheHeader) {
  EXPECT_TRUE(bell_->ServerAlive());
  v1::ParametersHeader header;
  header.set_version(5);
  header.set_num_elements(64);
  shm_->PublishHeader(header);
  ShmBell* const b = bell_->bell();
  EXPECT_EQ(b->published.load() % 2, 0u);
  EXPECT_GT(b->published.load(), 0u);
  v1::ParametersHeader read;
  ASSERT_TRUE(read.ParseFromArray(b->params_header, static_cast<int>(b->params_header_bytes)));
  EXPECT_EQ(read.version(), 5u);
  EXPECT_TRUE(read.shared_memory());
  // A header that does not fit leaves none: the worker pulls through gRPC.
  header.mutable_plan()->set_window(1);
  for (uint32_t i = 0; i < 2000; ++i) header.mutable_plan()->add_members(i + 1000);
  shm_->PublishHeader(header);
  EXPECT_EQ(b->params_header_bytes, 0u);
  shm_.reset();  // the server goes: its flock with it
  EXPECT_FALSE(bell_->ServerAlive());
}

TEST(ShmReplyTest, RoundTripsAndCutsOnlyTheMessage) {
  ShmMailbox mailbox{};
  ShmReply in;
  in.code = 9;
  in.message = std::string(10000, 'm');
  in.details = "details";
  in.body = "body";
  ASSERT_TRUE(EncodeShmReply(in, &mailbox));
  ShmReply out;
  ASSERT_TRUE(DecodeShmReply(mailbox, &out));
  EXPECT_EQ(out.code, 9);
  EXPECT_EQ(out.details, "details");
  EXPECT_EQ(out.body, "body");
  EXPECT_LT(out.message.size(), in.message.size());
  EXPECT_EQ(out.message, in.message.substr(0, out.message.size()));
  in.body = std::string(sizeof(mailbox.reply), 'b');
  EXPECT_FALSE(EncodeShmReply(in, &mailbox));
  mailbox.reply_bytes = sizeof(mailbox.reply) + 1;
  EXPECT_FALSE(DecodeShmReply(mailbox, &out));
}

TEST(ShmBellTest, AnotherServersBellIsRefused) {
  const std::string dir = TempDir("bell");
  auto bell = ShmBellSegment::Create(dir + "/b", {1, 2});
  ASSERT_TRUE(bell.ok()) << bell.status();
  EXPECT_FALSE(ShmBellSegment::Open(dir + "/b", {1, 3}).ok());
  EXPECT_FALSE(ShmBellSegment::Open(dir + "/missing", {1, 2}).ok());
  auto mine = ShmBellSegment::Open(dir + "/b", {1, 2});
  ASSERT_TRUE(mine.ok());
  EXPECT_TRUE((*mine)->ServerAlive());
}

}  // namespace
}  // namespace gradacc
