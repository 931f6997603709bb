// How a mount fills a layer's cache ahead of its readers: the prefetch range
// and background fetch, in spans (one range read each) or, once the link
// proves fast, in streams (one request per stretch still missing, read in
// order: CachedLayer::FillStream). The policy sits here, over CachedLayer
// and a link-rate probe, so that it can be tested without a network; `mount`
// supplies the probe from its HTTP blob source.
//
// Thread-safety: the functions may run concurrently for different layers or
// chunk lists; RateLimiter may be shared by any number of threads.
#ifndef LAZYPULL_CORE_LAYER_FILL_H_
#define LAZYPULL_CORE_LAYER_FILL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <semaphore>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/cached_layer.h"

namespace lazypull {

// Paces fills to `rate` bytes/s across threads (0: no cap).
class RateLimiter {
 public:
  explicit RateLimiter(uint64_t rate) : rate_(rate) {}
  // Waits until `bytes` more may go, or `stop`.
  void Take(uint64_t bytes, const std::atomic<bool>* stop);

 private:
  const uint64_t rate_;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// Fetches `chunks` of `layer` at `priority` in spans of at most `span_size`
// blob bytes (members closer than `gap` merged), `threads` spans at a time,
// until done, `stop`, or `hand_over` (if given) says so before a span (given
// the span's first blob byte: it is filled unless that says so, and no span
// after it is). With `nice` > 0 every thread doing it, the caller's
// included, runs at that nice value from then on. Failed spans are counted
// in *errors (the first few logged, as are failures to lower the priority,
// under `what`).
void FillChunks(CachedLayer* layer, const std::vector<uint32_t>& chunks,
                ReadPriority priority, int threads, uint64_t span_size,
                uint64_t gap, int nice, RateLimiter* limiter,
                const std::atomic<bool>* stop, std::atomic<uint64_t>* errors,
                const std::function<bool(uint64_t)>* hand_over,
                const char* what);

// How FillAdaptive fills a layer's chunks.
struct AdaptiveFill {
  const char* what = "fill";  // for the log: "prefetch", "background fetch"
  ReadPriority priority = ReadPriority::kBackground;
  int span_threads = 1;    // spans in flight at once
  int stream_threads = 1;  // a stream's decoding threads
  int nice = 0;            // of every thread doing it from then on (0: as is)
  uint64_t span_size = 1 << 20;
  uint64_t gap = 0;  // members closer than this share a span
  // The link's measured rate (bytes/s). Streams once it has been at least
  // `stream_rate` (UINT64_MAX: never; 0: at once), for the spans from blob
  // offset `streams_from` on.
  std::function<double()> link_rate;
  uint64_t stream_rate = UINT64_MAX;
  uint64_t streams_from = 0;
  // Blob bytes [0, n) already in the whole-blob hash: a stream starts there
  // instead if that is near (its bytes then extend the hash as they land).
  std::function<uint64_t()> hashed_prefix;
  // Spans less than this apart share one stream (the bytes between them
  // are read and dropped).
  uint64_t stream_gap = 1 << 20;
  // A stream gives way once the members that reads running ahead of it
  // fetched, which it brings again, pass this many bytes (and a sixteenth of
  // what it read): CachedLayer::FillStream.
  uint64_t stream_give_way = CachedLayer::kStreamGiveWayBytes;
  // Times a stream that gave way to reads running ahead of it is opened
  // again past them before the rest goes in spans.
  int stream_restarts = 4;
  // Go over the chunks once more at the end in any case, retrying spans
  // that failed (else only after a stream, for what it did not bring).
  bool retry_spans = false;
  uint64_t rate_cap = 0;                            // bytes/s, 0 = none
  RateLimiter* limiter = nullptr;                   // paces it, if given
  std::counting_semaphore<256>* streams = nullptr;  // streams at once, if given
};

// Fills `chunks` of `layer`: in spans until the link has been measured at
// `how.stream_rate`; then each stretch still missing as one request read in
// order (CachedLayer::FillStream), the first one from the hashed prefix if
// that is near, opened again past reads that ran ahead of it (up to
// `stream_restarts` times); then whatever that left (a stream that gave way
// too often, or failed) in spans. Once seen fast, the link stays so for this
// call (the measurement may be a windowed maximum that falls back). Returns
// when every chunk is filled or failed, or at `stop`. Spans that failed are
// counted in `errors` (a stream's failure is not: spans take its chunks up;
// with `retry_spans`, only spans that failed in the last pass count);
// what the streams did is logged under `name`.
void FillAdaptive(CachedLayer* layer, const std::vector<uint32_t>& chunks,
                  const AdaptiveFill& how, const std::string& name,
                  const std::atomic<bool>* stop, std::atomic<uint64_t>* errors);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LAYER_FILL_H_
