// LinkDirection: the timing model of one direction of an emulated access
// link, apart from any socket (a pure function of the bytes offered and the
// clock, so it is unit-tested without sleeping).
//
// The model is a drop-tail router in front of a wire: bytes join one FIFO
// queue shared by every connection, leave it at the link rate (serialization,
// store-and-forward per segment), then take the one-way propagation delay to
// reach the far end. The queue is bounded: the proxy stops reading from its
// senders while it is full, which TCP turns into back-pressure, as a full
// router queue does through congestion control on a real link. N streams
// that keep the queue busy therefore share the rate, about 1/N each.
//
// Times are nanoseconds on any monotonic clock; the caller passes `now`.
//
// Thread-safety: a value type; one thread per object.
#ifndef LAZYPULL_PROXY_LINK_MODEL_H_
#define LAZYPULL_PROXY_LINK_MODEL_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazypull::proxy {

class LinkDirection {
 public:
  struct Params {
    // Link rate in bits per second; 0 = unlimited (no serialization delay,
    // no queue).
    uint64_t bits_per_second = 0;
    // One-way propagation delay (half the round-trip time), ns.
    int64_t delay_ns = 0;
    // Bound on bytes queued for the wire, the one being sent included.
    // 0 = the default: the larger of 64 KiB and 5 ms at the link rate (a
    // "realistic small queue": 64 KiB is 5 ms at 100 Mbit/s).
    uint64_t queue_bytes = 0;
  };

  explicit LinkDirection(const Params& params);

  bool limited() const { return bits_per_second_ != 0; }
  uint64_t queue_bytes() const { return queue_bytes_; }

  // Bytes queued (not yet fully serialized) at `now`.
  uint64_t Backlog(int64_t now) const;
  // Bytes that may join the queue at `now` without exceeding its bound;
  // UINT64_MAX when the link is unlimited.
  uint64_t Room(int64_t now) const;
  // The earliest time >= now at which Room() >= `bytes`.
  // REQUIRES: bytes <= queue_bytes().
  int64_t TimeRoomFor(int64_t now, uint64_t bytes) const;
  // Queues `bytes` sent at `now` (callers keep to Room(); more is accepted
  // and simply waits longer). Returns when the last byte reaches the far
  // end. Non-decreasing over successive calls with non-decreasing `now`, so
  // a FIFO of segments stays sorted by arrival.
  int64_t Send(int64_t now, uint64_t bytes);

 private:
  int64_t SerializationNs(uint64_t bytes) const;

  uint64_t bits_per_second_;
  int64_t delay_ns_;
  uint64_t queue_bytes_;
  int64_t wire_free_at_ = INT64_MIN;  // when the wire has sent all it holds
};

// Parses a rate in tc's notation: "100mbit", "8mbit", "1.5gbit", "500kbit",
// "64000bit" (decimal prefixes, bits per second); "0" or "unlimited" = 0.
absl::StatusOr<uint64_t> ParseBandwidth(absl::string_view text);

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_LINK_MODEL_H_
