#include "proxy/link_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace lazypull::proxy {
namespace {

constexpr uint64_t kMinQueueBytes = 64 * 1024;
constexpr int64_t kDefaultQueueNs = 5'000'000;

}  // namespace

LinkDirection::LinkDirection(const Params& params)
    : bits_per_second_(params.bits_per_second),
      delay_ns_(params.delay_ns),
      queue_bytes_(params.queue_bytes) {
  if (queue_bytes_ == 0) {
    uint64_t five_ms = static_cast<uint64_t>(
        static_cast<double>(bits_per_second_) / 8 * kDefaultQueueNs / 1e9);
    queue_bytes_ = std::max(kMinQueueBytes, five_ms);
  }
}

int64_t LinkDirection::SerializationNs(uint64_t bytes) const {
  return static_cast<int64_t>(
      std::ceil(static_cast<double>(bytes) * 8e9 / bits_per_second_));
}

uint64_t LinkDirection::Backlog(int64_t now) const {
  if (!limited() || wire_free_at_ <= now) return 0;
  double bytes =
      static_cast<double>(wire_free_at_ - now) * bits_per_second_ / 8e9;
  return static_cast<uint64_t>(std::ceil(bytes));
}

uint64_t LinkDirection::Room(int64_t now) const {
  if (!limited()) return std::numeric_limits<uint64_t>::max();
  uint64_t backlog = Backlog(now);
  return backlog >= queue_bytes_ ? 0 : queue_bytes_ - backlog;
}

int64_t LinkDirection::TimeRoomFor(int64_t now, uint64_t bytes) const {
  if (!limited() || Room(now) >= bytes) return now;
  // Room >= bytes once the backlog has drained to queue_bytes_ - bytes.
  // The microsecond of slack absorbs rounding, so Room() at the returned
  // time is never a byte short (a caller re-arming on it would spin).
  int64_t drained_at =
      wire_free_at_ -
      SerializationNs(queue_bytes_ - std::min(bytes, queue_bytes_)) + 1000;
  return std::max(now, drained_at);
}

int64_t LinkDirection::Send(int64_t now, uint64_t bytes) {
  if (!limited()) return now + delay_ns_;
  int64_t start = std::max(now, wire_free_at_);
  wire_free_at_ = start + SerializationNs(bytes);
  return wire_free_at_ + delay_ns_;
}

absl::StatusOr<uint64_t> ParseBandwidth(absl::string_view text) {
  std::string t = absl::AsciiStrToLower(text);
  if (t == "0" || t == "unlimited") return 0;
  struct Unit {
    const char* suffix;
    double scale;
  };
  // Longest suffixes first: "kbit" must not be read as "bit".
  static constexpr Unit kUnits[] = {
      {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}};
  for (const Unit& u : kUnits) {
    if (!absl::EndsWith(t, u.suffix)) continue;
    double v = 0;
    absl::string_view num(t.data(), t.size() - strlen(u.suffix));
    if (!absl::SimpleAtod(num, &v) || !(v > 0) || v * u.scale > 1e12) break;
    return static_cast<uint64_t>(v * u.scale);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "bad bandwidth \"", text,
      "\": expected a number and bit, kbit, mbit or gbit (tc's notation, bits "
      "per second), e.g. 100mbit; or 0 / unlimited"));
}

}  // namespace lazypull::proxy
