// HttpBlobSource: a core BlobSource over one registry blob, read with
// single-range GETs through RegistryClient::OpenBlobRange (hosts, mirrors,
// auth, redirects and the signed-URL cache as for a full pull; retries in
// the HTTP engine, fetch/http.h). The blob's size is its descriptor's.
//
// A range scheduler sits between ReadAt and the network:
//  - Every ReadAt is cut into pieces of at most `max_request_size` bytes
//    (background: the budget's piece size; prefetch: never across a 1 MiB
//    grid line). Where a piece already queued, in flight or warm (below)
//    holds the read's next byte, it serves as much of the read as it holds
//    (single-flight), and a new piece ends where the next existing one
//    begins: every byte is fetched once and handed to every waiter, each
//    copying exactly its own sub-range.
//  - Queued pieces are dispatched most urgent first (ReadPriority:
//    on-demand > prefetch > background). A dispatched piece absorbs queued
//    pieces of the same or a more urgent class that lie within
//    `coalesce_gap` bytes of it, up to `max_request_size` in all: one GET.
//  - Background reads go through `background_client` (their own HTTP
//    engine, hence connection), their bytes in flight capped by a
//    BackgroundBudget shared by every source on the link (2 x the measured
//    bandwidth-delay product, at least 4 MiB); prefetch + background
//    together never take the last `reserved_on_demand` request slots. So an
//    on-demand read is dispatched at once and shares only the link itself
//    with background bytes. Requests carry HTTP/2 stream weights by class
//    (a hint for servers that schedule by them).
//  - A reader need not wait for the end of the request serving it: the body
//    lands in place as it arrives, and a read returns as soon as every byte
//    it asked for is in (ReadAtStreaming also reports each longer prefix of
//    its range as it lands; a request's last bytes are handed out at its
//    end, once hashed and counted). A prefetch reader thus uses a file's
//    bytes while the rest of its span is still on the way. An on-demand
//    read more than two round trips (at the link's measured rate) ahead of
//    what an in-flight request has brought asks for its bytes itself.
//  - Warm(): the prefetch range fetched ahead before anyone reads it (1 MiB
//    pieces, sent together in requests of up to `max_request_size`), kept
//    until read or DropWarm(). The requests go one after another, each sent
//    when the one before has about 1.5 round trips left to arrive: the
//    range comes in blob order, as a starting process reads it, and the
//    link does not idle between them.
//  - Whole-blob digest: the bytes of every request extend a running
//    SHA-256 of the blob's prefix, those in blob order as they land. Ranges
//    that arrive ahead of it (parallel requests finishing out of order,
//    on-demand reads anywhere in the blob) wait in memory if within
//    `hash_window_bytes` of its end, else in a spill file (unnamed, in
//    `spill_dir`; holes are punched as the prefix passes), and are hashed once
//    the prefix reaches them, so no byte is fetched twice for the check.
//    VerifyWholeBlob() reads whatever the prefix is still missing (bytes never
//    fetched; without a spill directory, also those fetched out of order beyond
//    the window) at background priority and compares the digest with the
//    descriptor's: the check `mount` makes once a layer's background fetch
//    completes. Bytes join the hash as they land, before their chunks are
//    checked, so an answer that failed its check and was read again went
//    in: on a mismatch the whole blob is read once more, alone, before it
//    is called corrupt.
//  - A body cut off and refused when the transport resumed it (a signed
//    storage URL that expired meanwhile) is asked of the registry again,
//    once, from where it stopped.
//  - Every answer must be a 206 whose Content-Range is exactly the range
//    asked for, with the blob's size as total, and whose body has exactly
//    that length; anything else (a 200, a wrong Content-Range) fails the
//    reads of that request before any byte of it lands. A body that breaks
//    off (and cannot be resumed) or runs long fails the reads still waiting
//    for it; reads it had covered got the answer's own first bytes (the
//    callers verify every byte against the TOC in any case).
//
// Thread-safety: ReadAt may be called from any number of threads at once.
#ifndef LAZYPULL_FETCH_HTTP_BLOB_SOURCE_H_
#define LAZYPULL_FETCH_HTTP_BLOB_SOURCE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
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
#include "fetch/background_budget.h"
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
  // The budget of background bytes in flight, shared by the sources of one
  // link; null = a budget of this source's own, adaptive unless
  // `max_background_bytes` (a fixed cap) is set.
  std::shared_ptr<BackgroundBudget> background_budget;
  uint64_t max_background_bytes = 0;
  // Queued ranges at most this far apart (default 64 KiB) are fetched by
  // one request; the gap's bytes are read and dropped.
  uint64_t coalesce_gap = 64 << 10;
  // The largest single request (default 4 MiB): bigger reads are split,
  // coalescing stops there.
  uint64_t max_request_size = 4 << 20;
  // Out-of-order bytes kept in memory for the whole-blob hash (default
  // 8 MiB); beyond it they go to a spill file in `spill_dir` if set (else
  // they are read again by VerifyWholeBlob).
  uint64_t hash_window_bytes = 8 << 20;
  std::string spill_dir;
  // Bytes Warm() may fetch ahead and hold (default 16 MiB).
  uint64_t max_warm_bytes = 16 << 20;
};

struct HttpBlobSourceStats {
  uint64_t requests = 0;        // range GETs sent
  uint64_t bytes = 0;           // body bytes received
  uint64_t max_concurrent = 0;  // most GETs in flight at once
  uint64_t coalesced = 0;       // pieces that rode on another's request
  uint64_t shared = 0;          // pieces served by single-flight
  uint64_t failures = 0;        // requests that failed
  uint64_t requests_by_priority[3] = {0, 0, 0};
  uint64_t warm_hits = 0;  // pieces served by what Warm() fetched (or is)
};

class HttpBlobSource : public BlobSource {
 public:
  // `client` must outlive the source (it is shared). `blob` is the layer's
  // descriptor (digest and size). Background reads go through
  // `background_client` if given: a client over another HTTP transport, so
  // that they travel on connections of their own and an on-demand response
  // never waits behind background bytes already buffered for a shared
  // connection (at the server or on the way); then only the link's own
  // queue, which the background budget bounds, is shared.
  HttpBlobSource(std::shared_ptr<RegistryClient> client, Descriptor blob,
                 const HttpBlobSourceOptions& options = {},
                 std::shared_ptr<RegistryClient> background_client = nullptr);
  ~HttpBlobSource() override;
  HttpBlobSource(const HttpBlobSource&) = delete;
  HttpBlobSource& operator=(const HttpBlobSource&) = delete;

  uint64_t size() const override { return static_cast<uint64_t>(blob_.size); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority priority) override;
  using BlobSource::ReadAt;
  absl::Status ReadAtStreaming(
      uint64_t offset, absl::Span<char> dst, ReadPriority priority,
      const std::function<void(size_t)>& progress) override;
  // One GET for the whole range (background priority: through
  // `background_client`), read as the caller asks: the transport's window
  // holds what arrives ahead of the reader, and pauses the transfer beyond
  // it. Not scheduled with the pieces (no single-flight with them, no
  // background budget charge; its bytes do feed the link's rate and the
  // whole-blob hash, in order as they land), so one read is one request
  // however long. The answer is checked as any other (a 206 with exactly
  // this Content-Range).
  absl::StatusOr<std::unique_ptr<BlobStream>> OpenStream(
      uint64_t offset, uint64_t len, ReadPriority priority) override;
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

  // Starts fetching [offset, offset + len) at prefetch priority with no
  // reader waiting yet, up to `max_warm_bytes` in all, and keeps what
  // arrives for the reads that follow (prefetch reads are cut on the same
  // 1 MiB grid, so they find it) until prefetch-priority reads have read
  // every byte of a piece once (other reads use warm pieces too, but do not
  // use them up), or DropWarm(). For starting a layer's prefetch while its
  // TOC is still being parsed and indexed.
  //
  // With `after_next_read`, the pieces wait until the next on-demand read
  // dispatched (a mount's tail read, issued right after) has its answer's
  // headers, or has ended: the server is then sending that answer before
  // their request reaches it, so a server that answers requests in order
  // (or shares the link between them) sends the footer and TOC first, and
  // the link still goes on from them to the warm bytes without idling. If
  // that read fails, nothing more is fetched ahead (its queued pieces no
  // read waits for are dropped, as by DropWarm).
  void Warm(uint64_t offset, uint64_t len, bool after_next_read = false);
  // Frees what Warm() kept, drops its queued pieces no read waits for and
  // opens its gate; later completions of its requests are not kept.
  void DropWarm();

  // Starts every worker thread now (max_concurrent_requests of them), on
  // the calling thread. Workers are otherwise started as requests queue
  // up, by the thread whose read needs one, and a thread takes the nice
  // value of the thread that starts it (core/thread_priority.h): call this
  // from a normal-priority thread before threads that read from this
  // source lower their priority, so that no worker, which may later carry
  // an on-demand request, runs at theirs.
  void StartWorkers();

 private:
  struct Piece;
  struct Request;
  class BodyStream;

  // Checks that `resp`, from `source`, answers the range [first, last]: a
  // 206 with exactly that Content-Range (and the blob's size as total).
  absl::Status CheckRangeAnswer(const HttpResponse& resp,
                                const std::string& source, uint64_t first,
                                uint64_t last) const;
  // Opens [first, last] and checks the answer (CheckRangeAnswer).
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> OpenRange(
      uint64_t first, uint64_t last, ReadPriority priority, bool reader_paced,
      std::string* where);

  void WorkerLoop();
  // Starts another worker if a queued piece has none waiting for it.
  void AddWorkerIfNeeded() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts one worker thread (it inherits the calling thread's priority).
  void AddWorker() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a worker may take `p` now. REQUIRES: mu_ held.
  bool Eligible(const Piece& p) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs one GET of [first, last] into `request`'s buffer, counting its
  // bytes as they land, feeding the budget's link measurements and, for a
  // background request, releasing its charge.
  absl::Status Fetch(uint64_t first, uint64_t last, ReadPriority prio,
                     Request& request);
  // The largest request of class `prio` now.
  uint64_t MaxRequest(ReadPriority prio) const;
  // The length of the piece of a read of class `prio` starting at `o`
  // (ending at most at `end`).
  uint64_t PieceLen(uint64_t o, uint64_t end, ReadPriority prio) const;
  // A queued, in-flight or warm piece holding byte o (a queued one is
  // raised to `priority` if that is more urgent), or null. An on-demand
  // read skips in-flight pieces far ahead of their bytes
  // (FarAheadOfItsBytes); *skipped_end, if given, is lowered to the end of
  // each one skipped.
  std::shared_ptr<Piece> FindHolding(uint64_t o, ReadPriority priority,
                                     uint64_t* skipped_end = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The first byte after o, below `limit`, where a queued, in-flight or warm
  // piece begins; `limit` if none does.
  uint64_t NextPieceStart(uint64_t o, uint64_t limit) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static constexpr uint64_t kWarmGrid = 1 << 20;
  // Counts blob bytes [from, from + n) of warm piece `p` as read (bytes read
  // again count once); a piece read in full is dropped (memory: warm pieces
  // live only until their reader came).
  void ConsumeWarm(const std::shared_ptr<Piece>& p, uint64_t from, uint64_t n);

  const std::shared_ptr<RegistryClient> client_;
  const std::shared_ptr<RegistryClient> background_client_;
  const Descriptor blob_;
  const HttpBlobSourceOptions options_;
  const std::shared_ptr<BackgroundBudget> budget_;
  int budget_listener_ = -1;

  mutable absl::Mutex mu_;
  // Queued pieces (not yet dispatched), any priority.
  std::vector<std::shared_ptr<Piece>> queued_ ABSL_GUARDED_BY(mu_);
  // Dispatched pieces whose request is in flight.
  std::vector<std::shared_ptr<Piece>> in_flight_ ABSL_GUARDED_BY(mu_);
  int requests_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int non_urgent_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Done pieces Warm() fetched, kept for readers; bytes of every warm piece
  // not dropped yet (queued, in flight or kept).
  std::vector<std::shared_ptr<Piece>> warm_ ABSL_GUARDED_BY(mu_);
  uint64_t warm_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int warm_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // Warm requests in flight that have not let the next one start yet.
  int warm_streaming_ ABSL_GUARDED_BY(mu_) = 0;
  // Warm(after_next_read): warm pieces wait for the next on-demand read
  // (kForRead) and then for its answer's headers (kForHeaders, that read's
  // request in `warm_gate_request_`).
  enum class WarmGate { kOpen, kForRead, kForHeaders };
  WarmGate warm_gate_ ABSL_GUARDED_BY(mu_) = WarmGate::kOpen;
  const Request* warm_gate_request_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Opens the gate if `request` is the one it waits for (`status`: how that
  // read went; failed, no more warm bytes are fetched).
  void OpenWarmGate(const Request* request, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queued warm pieces no read waits for are dropped; those one does become
  // ordinary pieces.
  void DropQueuedWarm() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether byte o of in-flight piece `p` is more than two round trips of
  // the link's measured rate ahead of what its request has brought.
  bool FarAheadOfItsBytes(const Piece& p, uint64_t o) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static constexpr int kWarmStreams = 2;
  bool warm_open_ ABSL_GUARDED_BY(mu_) = true;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  HttpBlobSourceStats stats_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  // Workers waiting for work (or just started).
  int idle_workers_ ABSL_GUARDED_BY(mu_) = 0;

  // The running hash of the blob's prefix [0, hashed_).
  mutable absl::Mutex hash_mu_;
  Sha256 hash_ ABSL_GUARDED_BY(hash_mu_);
  uint64_t hashed_ ABSL_GUARDED_BY(hash_mu_) = 0;
  std::optional<Digest> whole_digest_ ABSL_GUARDED_BY(hash_mu_);
  // Ranges fetched ahead of the prefix, by offset: in memory (at most
  // hash_window_bytes of them, within that of its end), or spilled to
  // spill_fd_ at their blob offset (spilled_: disjoint [first, end)).
  std::map<uint64_t, std::string> hash_pending_ ABSL_GUARDED_BY(hash_mu_);
  uint64_t hash_pending_bytes_ ABSL_GUARDED_BY(hash_mu_) = 0;
  int spill_fd_ ABSL_GUARDED_BY(hash_mu_) = -1;
  bool spill_failed_ ABSL_GUARDED_BY(hash_mu_) = false;
  std::map<uint64_t, uint64_t> spilled_ ABSL_GUARDED_BY(hash_mu_);
  // Extends the hash with [first, first + data.size()) if it reaches it,
  // else keeps the range for later.
  void ExtendHash(uint64_t first, absl::string_view data);
  // The first bytes of a request at `first`, as they land: those the
  // prefix reaches extend it (the rest wait for ExtendHash at its end).
  void HashLanded(uint64_t first, absl::string_view landed);
  // Keeps a range ahead of the prefix in the spill file (best effort).
  void Spill(uint64_t first, absl::string_view data)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(hash_mu_);
  // Hashes kept ranges that the prefix has reached.
  void CatchUp() ABSL_EXCLUSIVE_LOCKS_REQUIRED(hash_mu_);
};

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_HTTP_BLOB_SOURCE_H_
