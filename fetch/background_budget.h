// BackgroundBudget: how many background bytes may be in flight on one link
// (every HttpBlobSource of an image mount shares one), so that an on-demand
// read never queues behind more than a fraction of a round trip of
// background data.
//
// A background request is charged its length when it is sent and releases
// it as its body arrives. The cap is either fixed, or adaptive (the
// default): `gain` times the link's measured bandwidth-delay product,
// within [min_bytes, max_bytes]. The product is estimated as BBR does:
//  - round-trip time: the smallest time-to-headers of any request (any
//    priority) seen since the budget was made (a queue kept full by other
//    traffic never lowers it, so it is not taken over a window: the queue
//    would then inflate the estimate, the cap, and the queue in turn);
//  - bandwidth: the largest delivery rate seen in the last `window`, a
//    sample being the body bytes the whole link received (every request,
//    every priority) over an interval of max(2 RTT, 50 ms) (long enough
//    that bursts of buffered bytes average out), or one request's bytes
//    over its whole time from sending to its last byte (a lower bound of
//    what the link carries: a mount's TOC read tells a fast link at once,
//    before any interval of steady traffic).
// A link kept below its capacity shows a lower rate, hence a lower cap, but
// gain > 1 lets in flight grow past rate x RTT, so the rate and the cap
// grow until the link is full, and stop there: the queue then holds about
// (gain - 1) bandwidth-delay products, which is what an on-demand response
// waits behind.
// Background requests are cut to `PieceBytes()` (a quarter of the cap, at
// least `min_piece_bytes`) so that several are in flight at once and a new
// one is admitted while about one bandwidth-delay product is still in
// flight: the link does not idle between them.
//
// Listeners (the blob sources' schedulers) are called when budget is freed,
// so that a request waiting for it is sent.
//
// Thread-safety: every method may be called from any thread. Listeners are
// called without the budget's lock held, possibly concurrently.
#ifndef LAZYPULL_FETCH_BACKGROUND_BUDGET_H_
#define LAZYPULL_FETCH_BACKGROUND_BUDGET_H_

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lazypull {

struct BackgroundBudgetOptions {
  // A fixed cap in bytes; 0 = adaptive (see above).
  uint64_t fixed_bytes = 0;
  // Adaptive cap = gain x bandwidth x RTT, clamped to [min_bytes, max_bytes];
  // before the first sample it is `initial_bytes`. The floor keeps requests
  // big enough that their per-request cost stays small when the rate is
  // bound by something other than the link (the client's CPU).
  double gain = 2.0;
  uint64_t min_bytes = 4 << 20;
  uint64_t max_bytes = 16 << 20;
  uint64_t initial_bytes = 4 << 20;
  uint64_t min_piece_bytes = 512 << 10;
  // How long a bandwidth sample counts.
  absl::Duration window = absl::Seconds(10);
};

class BackgroundBudget {
 public:
  explicit BackgroundBudget(const BackgroundBudgetOptions& options = {});
  BackgroundBudget(const BackgroundBudget&) = delete;
  BackgroundBudget& operator=(const BackgroundBudget&) = delete;

  // Whether a background request of `bytes` may be sent now: nothing in
  // flight (one request is always allowed, whatever its size), or room for
  // it under the cap.
  bool CanStart(uint64_t bytes) const;
  // CanStart and, if it may, charges it: one step, so that of two sources
  // sharing the budget that both saw room for one more request, only one
  // sends it. Returns whether it was charged.
  [[nodiscard]] bool TryStart(uint64_t bytes);
  // Charges `bytes` unconditionally (a request that grew past its admitted
  // piece by coalescing).
  void Start(uint64_t bytes);
  // Releases `bytes` of a background request (as they arrive, or what is
  // left of it when it ends). Returns true when the caller should call
  // Notify() (once it holds no lock a listener takes): the release may let
  // a waiting request go.
  [[nodiscard]] bool Release(uint64_t bytes);
  // Calls every listener.
  void Notify();

  // Link measurements, from every request of any priority: body bytes as
  // they arrive, and each request's time from sending to its headers.
  // Delivered returns true when the cap grew (call Notify() as for
  // Release).
  [[nodiscard]] bool Delivered(uint64_t bytes);
  void OnHeaders(absl::Duration time_to_headers);
  // A request's `bytes` of body took `elapsed` from sending it to its last
  // byte: a rate sample. Returns as Delivered.
  [[nodiscard]] bool RequestDone(uint64_t bytes, absl::Duration elapsed);

  // The current cap, and the size background requests are cut to.
  uint64_t Cap() const;
  uint64_t PieceBytes() const;
  uint64_t in_flight() const;
  // The current estimates (zero before the first sample).
  absl::Duration min_rtt() const;
  double bandwidth() const;  // bytes per second

  // Registers a callback run (without the budget's lock) whenever released
  // budget may let a waiting request go. Returns an id for RemoveListener,
  // which returns only when no call of that listener is running.
  int AddListener(std::function<void()> f);
  void RemoveListener(int id);

 private:
  uint64_t CapLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The piece size for a cap of `cap` bytes.
  uint64_t PieceFor(uint64_t cap) const;
  // The min RTT (infinite without a sample) and windowed max rate.
  void EstimatesLocked(absl::Duration* rtt, double* rate) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const BackgroundBudgetOptions options_;
  mutable absl::Mutex mu_;
  uint64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // The current rate-sampling interval.
  absl::Time interval_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t interval_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // The smallest RTT seen; windowed max rate, kept per time slot
  // (window / kSlots) so that old samples expire in O(kSlots).
  absl::Duration min_rtt_ ABSL_GUARDED_BY(mu_) = absl::InfiniteDuration();
  static constexpr int kSlots = 8;
  struct Slot {
    int64_t epoch = -1;  // which slot of time this is
    double max_rate = 0;
  };
  Slot slots_[kSlots] ABSL_GUARDED_BY(mu_);
  Slot& SlotNow() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t EpochNow() const;
  absl::Time start_ = absl::Now();

  // Listeners: called under listeners_mu_ (never with mu_ held).
  std::mutex listeners_mu_;
  std::map<int, std::function<void()>> listeners_;
  int next_listener_ = 0;
};

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_BACKGROUND_BUDGET_H_
