// OneUseUrlStorage: a registry that redirects every blob GET to storage
// whose signed URLs serve once (the next use of one is refused with 403, as
// a URL that expired meanwhile is), on one loopback HTTP server. The first
// storage answer breaks off after `cut_after` body bytes, so the transport
// resumes it at the same URL and is refused: what a client must then do is
// ask the registry again.
//
// Serves one blob: whole (200) or by single ranges (206). Paths under /v2/
// are the registry's (any repository, any digest); /store?t=N the storage's.
//
// Thread-safety: the server answers on its own threads; the accessors may be
// called from any thread.
#ifndef LAZYPULL_FETCH_TESTING_ONE_USE_URL_STORAGE_H_
#define LAZYPULL_FETCH_TESTING_ONE_USE_URL_STORAGE_H_

#include <atomic>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "fetch/testing/loopback_http_server.h"

namespace lazypull::testing {

class OneUseUrlStorage {
 public:
  static absl::StatusOr<std::unique_ptr<OneUseUrlStorage>> Start(
      std::string blob, size_t cut_after);

  std::string host() const;  // "127.0.0.1:PORT"
  // Blob GETs the registry answered (each a redirect to a new URL).
  int registry_hits() const { return registry_hits_.load(); }
  // A new round: URL numbers from 0 again (so the first answer breaks off
  // again), none used, no hits counted.
  void Reset();

 private:
  OneUseUrlStorage(std::string blob, size_t cut_after)
      : blob_(std::move(blob)), cut_after_(cut_after) {}
  void Handle(const TestRequest& q, TestResponse* r);

  const std::string blob_;
  const size_t cut_after_;
  std::atomic<int> tokens_{0}, registry_hits_{0};
  absl::Mutex mu_;
  std::set<std::string> used_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<LoopbackHttpServer> server_;
};

}  // namespace lazypull::testing

#endif  // LAZYPULL_FETCH_TESTING_ONE_USE_URL_STORAGE_H_
