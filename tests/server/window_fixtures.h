// Jobs, push headers and joins for the unit tests of the window's parts
// (request_validator, contribution_ledger, window, window_state _test.cc).
#ifndef GRADACC_TESTS_SERVER_WINDOW_FIXTURES_H_
#define GRADACC_TESTS_SERVER_WINDOW_FIXTURES_H_

#include <cstdint>

#include "gradacc/v1/data.pb.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {
namespace window_fixtures {

inline v1::JobSpec Job(uint32_t workers, uint32_t max_workers = 0) {
  v1::JobSpec spec;
  spec.set_job_id("unit");
  auto* t = spec.mutable_model()->add_tensors();
  t->set_name("w");
  t->add_shape(10);
  spec.mutable_window()->set_num_workers(workers);
  spec.mutable_window()->set_max_workers(max_workers);
  spec.set_total_steps(5);
  return spec;
}

inline v1::PushHeader Header(uint32_t worker, uint64_t window, uint64_t key) {
  v1::PushHeader h;
  h.set_job_id("unit");
  h.set_worker(worker);
  h.set_window(window);
  h.set_contribution_key(key);
  h.set_samples(2);
  h.set_num_elements(10);
  return h;
}

inline v1::JoinRequest JoinOf(uint32_t worker) {
  v1::JoinRequest r;
  r.set_worker(worker);
  return r;
}

}  // namespace window_fixtures
}  // namespace gradacc

#endif  // GRADACC_TESTS_SERVER_WINDOW_FIXTURES_H_
