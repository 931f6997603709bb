#include "fetch/background_budget.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace lazypull {

BackgroundBudget::BackgroundBudget(const BackgroundBudgetOptions& options)
    : options_([&] {
        BackgroundBudgetOptions o = options;
        o.min_bytes = std::max<uint64_t>(4096, o.min_bytes);
        o.min_piece_bytes = std::max<uint64_t>(1, o.min_piece_bytes);
        o.max_bytes = std::max(o.min_bytes, o.max_bytes);
        o.initial_bytes = std::clamp(o.initial_bytes, o.min_bytes, o.max_bytes);
        if (!(o.gain >= 1.0)) o.gain = 1.0;
        if (o.window <= absl::ZeroDuration()) o.window = absl::Seconds(10);
        return o;
      }()) {}

int64_t BackgroundBudget::EpochNow() const {
  absl::Duration rem;  // IDivDuration writes it: it may not be null
  return absl::IDivDuration(absl::Now() - start_, options_.window / kSlots,
                            &rem);
}

BackgroundBudget::Slot& BackgroundBudget::SlotNow() {
  const int64_t epoch = EpochNow();
  Slot& s = slots_[epoch % kSlots];
  if (s.epoch != epoch) s = Slot{epoch};
  return s;
}

void BackgroundBudget::EstimatesLocked(absl::Duration* rtt,
                                       double* rate) const {
  const int64_t epoch = EpochNow();
  *rtt = min_rtt_;
  *rate = 0;
  for (const Slot& s : slots_) {
    if (s.epoch < 0 || s.epoch <= epoch - kSlots) continue;
    *rate = std::max(*rate, s.max_rate);
  }
}

uint64_t BackgroundBudget::CapLocked() const {
  if (options_.fixed_bytes != 0) return options_.fixed_bytes;
  absl::Duration rtt;
  double rate;
  EstimatesLocked(&rtt, &rate);
  if (rtt == absl::InfiniteDuration() || rate <= 0) {
    return options_.initial_bytes;
  }
  const double cap =
      std::ceil(options_.gain * rate * absl::ToDoubleSeconds(rtt));
  return std::clamp<uint64_t>(static_cast<uint64_t>(std::min(cap, 1e15)),
                              options_.min_bytes, options_.max_bytes);
}

bool BackgroundBudget::CanStart(uint64_t bytes) const {
  absl::MutexLock l(&mu_);
  return in_flight_ == 0 || in_flight_ + bytes <= CapLocked();
}

bool BackgroundBudget::TryStart(uint64_t bytes) {
  absl::MutexLock l(&mu_);
  if (in_flight_ != 0 && in_flight_ + bytes > CapLocked()) return false;
  in_flight_ += bytes;
  return true;
}

void BackgroundBudget::Start(uint64_t bytes) {
  absl::MutexLock l(&mu_);
  in_flight_ += bytes;
}

bool BackgroundBudget::Release(uint64_t bytes) {
  absl::MutexLock l(&mu_);
  const uint64_t before = in_flight_;
  in_flight_ -= std::min(bytes, in_flight_);
  if (in_flight_ == before) return false;
  if (in_flight_ == 0) return true;
  // Wake waiters when a piece newly fits.
  const uint64_t cap = CapLocked();
  const uint64_t piece = PieceFor(cap);
  return before + piece > cap && in_flight_ + piece <= cap;
}

bool BackgroundBudget::Delivered(uint64_t bytes) {
  absl::MutexLock l(&mu_);
  const absl::Time now = absl::Now();
  if (interval_start_ == absl::InfinitePast()) interval_start_ = now;
  interval_bytes_ += bytes;
  const absl::Duration interval =
      std::max(absl::Milliseconds(50), min_rtt_ == absl::InfiniteDuration()
                                           ? absl::ZeroDuration()
                                           : 2 * min_rtt_);
  const absl::Duration elapsed = now - interval_start_;
  if (elapsed < interval) return false;
  const uint64_t before = CapLocked();
  Slot& s = SlotNow();
  s.max_rate = std::max(s.max_rate, static_cast<double>(interval_bytes_) /
                                        absl::ToDoubleSeconds(elapsed));
  interval_start_ = now;
  interval_bytes_ = 0;
  return CapLocked() > before;
}

bool BackgroundBudget::RequestDone(uint64_t bytes, absl::Duration elapsed) {
  if (bytes == 0 || elapsed <= absl::ZeroDuration()) return false;
  absl::MutexLock l(&mu_);
  const uint64_t before = CapLocked();
  Slot& s = SlotNow();
  s.max_rate = std::max(
      s.max_rate, static_cast<double>(bytes) / absl::ToDoubleSeconds(elapsed));
  return CapLocked() > before;
}

void BackgroundBudget::OnHeaders(absl::Duration time_to_headers) {
  if (time_to_headers <= absl::ZeroDuration()) return;
  absl::MutexLock l(&mu_);
  min_rtt_ = std::min(min_rtt_, time_to_headers);
}

uint64_t BackgroundBudget::Cap() const {
  absl::MutexLock l(&mu_);
  return CapLocked();
}

uint64_t BackgroundBudget::PieceFor(uint64_t cap) const {
  return std::max<uint64_t>(cap / 4, options_.min_piece_bytes);
}

uint64_t BackgroundBudget::PieceBytes() const { return PieceFor(Cap()); }

uint64_t BackgroundBudget::in_flight() const {
  absl::MutexLock l(&mu_);
  return in_flight_;
}

absl::Duration BackgroundBudget::min_rtt() const {
  absl::MutexLock l(&mu_);
  return min_rtt_ == absl::InfiniteDuration() ? absl::ZeroDuration() : min_rtt_;
}

double BackgroundBudget::bandwidth() const {
  absl::MutexLock l(&mu_);
  absl::Duration rtt;
  double rate;
  EstimatesLocked(&rtt, &rate);
  return rate;
}

int BackgroundBudget::AddListener(std::function<void()> f) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  const int id = next_listener_++;
  listeners_.emplace(id, std::move(f));
  return id;
}

void BackgroundBudget::RemoveListener(int id) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  listeners_.erase(id);
}

void BackgroundBudget::Notify() {
  std::lock_guard<std::mutex> l(listeners_mu_);
  for (auto& [id, f] : listeners_) f();
}

}  // namespace lazypull
