// HttpBlobSource: a core BlobSource over one registry blob, read with
// single-range GETs through RegistryClient::OpenBlobRange (hosts, mirrors,
// auth, redirects and the signed-URL cache as for a full pull; retries in
// the HTTP engine, fetch/http.h). The blob's size is its descriptor's.
//
// A range scheduler sits between ReadAt and the network:
//  - Every ReadAt is cut into pieces of at most `max_request_size` bytes.
//    A piece already queued or in flight that covers a new one is shared
//    (single-flight): the bytes are fetched once and handed to every waiter.
//  - Queued pieces are dispatched most urgent first (ReadPriority:
//    on-demand > prefetch > background). A dispatched piece absorbs queued
//    pieces of the same or a more urgent class that lie within
//    `coalesce_gap` bytes of it, up to `max_request_size` in all: one GET.
//  - Background bytes in flight are capped (`max_background_bytes`, about
//    one bandwidth-delay product), and prefetch + background together never
//    take the last `reserved_on_demand` request slots, so an on-demand read
//    never waits behind queued background bytes: it is dispatched at once.
//  - Whole-blob digest: the bytes of every successful request that starts
//    at or before the end of the verified prefix extend a running SHA-256
//    of the blob's prefix (ranges that arrive ahead of it, as parallel
//    requests finish out of order, wait in a window of 8 MiB).
//    VerifyWholeBlob() reads whatever the prefix is still missing (bytes first
//    fetched out of order, the TOC read at open) at background priority and
//    compares the digest with the descriptor's: the check `mount` makes once a
//    layer's background fetch completes.
//  - Every answer must be a 206 whose Content-Range is exactly the range
//    asked for, with the blob's size as total, and whose body has exactly
//    that length; anything else (a 200, a wrong Content-Range, a short body)
//    fails the reads of that request (no byte of it is returned).
//
// Thread-safety: ReadAt may be called from any number of threads at once.
#ifndef LAZYPULL_FETCH_HTTP_BLOB_SOURCE_H_
#define LAZYPULL_FETCH_HTTP_BLOB_SOURCE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "core/blob_source.h"
#include "core/digest.h"
#include "fetch/manifest.h"
#include "fetch/registry.h"

namespace lazypull {

struct HttpBlobSourceOptions {
  // HTTP requests in flight at once for this blob (default 8; with HTTP/2
  // they share one connection).
  int max_concurrent_requests = 8;
  // Request slots only on-demand reads may use (default 1), so that
  // prefetch and background work can never occupy them all.
  int reserved_on_demand = 1;
  // Background bytes in flight at most (default 4 MiB, about one
  // bandwidth-delay product of a 100 ms, 300 Mbit/s link). One background
  // request is always allowed, whatever its size.
  uint64_t max_background_bytes = 4 << 20;
  // Queued ranges at most this far apart (default 64 KiB) are fetched by
  // one request; the gap's bytes are read and dropped.
  uint64_t coalesce_gap = 64 << 10;
  // The largest single request (default 4 MiB): bigger reads are split,
  // coalescing stops there.
  uint64_t max_request_size = 4 << 20;
};

struct HttpBlobSourceStats {
  uint64_t requests = 0;        // range GETs sent
  uint64_t bytes = 0;           // body bytes received
  uint64_t max_concurrent = 0;  // most GETs in flight at once
  uint64_t coalesced = 0;       // pieces that rode on another's request
  uint64_t shared = 0;          // pieces served by single-flight
  uint64_t failures = 0;        // requests that failed
  uint64_t requests_by_priority[3] = {0, 0, 0};
};

class HttpBlobSource : public BlobSource {
 public:
  // `client` must outlive the source (it is shared). `blob` is the layer's
  // descriptor (digest and size).
  HttpBlobSource(std::shared_ptr<RegistryClient> client, Descriptor blob,
                 const HttpBlobSourceOptions& options = {});
  ~HttpBlobSource() override;
  HttpBlobSource(const HttpBlobSource&) = delete;
  HttpBlobSource& operator=(const HttpBlobSource&) = delete;

  uint64_t size() const override { return static_cast<uint64_t>(blob_.size); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority priority) override;
  using BlobSource::ReadAt;
  std::string Describe() const override;

  const Descriptor& descriptor() const { return blob_; }
  HttpBlobSourceStats stats() const;

  // Completes the running hash (see above) and checks it against the
  // descriptor's digest: DataLoss on a mismatch. Returns how many bytes it
  // had to read again through *refetched, if given. Safe to call
  // concurrently with reads; the bytes it reads are not returned. Returns
  // Cancelled between requests once *stop (if given) is set.
  absl::Status VerifyWholeBlob(uint64_t* refetched = nullptr,
                               const std::atomic<bool>* stop = nullptr);
  // Bytes [0, n) of the blob already hashed.
  uint64_t hashed_prefix() const;

 private:
  struct Piece;
  struct Request;

  void WorkerLoop();
  // Whether a worker may take `p` now. REQUIRES: mu_ held.
  bool Eligible(const Piece& p) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs one GET of [first, last] into `out`.
  absl::Status Fetch(uint64_t first, uint64_t last, std::string* out);

  const std::shared_ptr<RegistryClient> client_;
  const Descriptor blob_;
  const HttpBlobSourceOptions options_;

  mutable absl::Mutex mu_;
  // Queued pieces (not yet dispatched), any priority.
  std::vector<std::shared_ptr<Piece>> queued_ ABSL_GUARDED_BY(mu_);
  // Dispatched pieces whose request is in flight.
  std::vector<std::shared_ptr<Piece>> in_flight_ ABSL_GUARDED_BY(mu_);
  int requests_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int non_urgent_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t background_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  HttpBlobSourceStats stats_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;

  // The running hash of the blob's prefix [0, hashed_).
  mutable absl::Mutex hash_mu_;
  Sha256 hash_ ABSL_GUARDED_BY(hash_mu_);
  uint64_t hashed_ ABSL_GUARDED_BY(hash_mu_) = 0;
  std::optional<Digest> whole_digest_ ABSL_GUARDED_BY(hash_mu_);
  // Ranges fetched ahead of the prefix, by offset, at most kHashWindow
  // bytes of them within kHashWindow of its end.
  static constexpr uint64_t kHashWindow = 8 << 20;
  std::map<uint64_t, std::string> hash_pending_ ABSL_GUARDED_BY(hash_mu_);
  uint64_t hash_pending_bytes_ ABSL_GUARDED_BY(hash_mu_) = 0;
  // Extends the hash with [first, first + data.size()) if it reaches it.
  void ExtendHash(uint64_t first, absl::string_view data);
};

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_HTTP_BLOB_SOURCE_H_
