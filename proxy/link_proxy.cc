#include "proxy/link_proxy.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/status_macros.h"
#include "proxy/link_model.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

constexpr int kUp = 0;    // client -> upstream: reads fd[kClient]
constexpr int kDown = 1;  // upstream -> client: reads fd[kUpstream]
constexpr int kClient = 0;
constexpr int kUpstream = 1;

// The unit of link admission and of round-robin between waiting streams:
// about 1 ms at the link rate, so store-and-forward of a segment adds about
// what a packet would at slow rates, between one MSS and 16 KiB.
constexpr uint64_t kMinSegmentBytes = 1460;
constexpr uint64_t kMaxSegmentBytes = 16 * 1024;
// With no rate limit there is nothing to share: read more per call.
constexpr size_t kUnlimitedSegmentBytes = 64 * 1024;

constexpr uint64_t kListenTag = std::numeric_limits<uint64_t>::max();
constexpr uint64_t kTimerTag = kListenTag - 1;
constexpr uint64_t kWakeTag = kListenTag - 2;

int64_t MonotonicNow() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// Bytes crossing the link for one connection; `fin` marks the sender's EOF.
struct Segment {
  uint64_t conn_id;
  int64_t arrive_at;
  std::string data;
  bool fin;
};

struct Conn {
  // Direction d reads fd[d] and writes fd[1 - d].
  struct Half {
    bool src_eof = false;      // EOF read; a fin segment is on the link
    bool waiting = false;      // in the direction's round-robin queue
    bool fin_arrived = false;  // the fin came out of the link
    bool shut = false;         // shutdown(dst, SHUT_WR) done
    std::string out;           // arrived, not yet written to dst
    size_t out_off = 0;
    uint64_t unwritten = 0;  // read from src, not yet written to dst
  };

  uint64_t id = 0;
  UniqueFd fd[2];
  uint32_t registered[2] = {0, 0};  // epoll mask; 0 = not in the epoll set
  bool connecting = true;           // upstream connect in progress
  int64_t open_at = 0;  // no client bytes are read before (handshake)
  bool silent = false;  // SilenceOpenConnections(): nothing crosses
  Half half[2];
};

enum class ReadResult { kFull, kDrained, kEof, kError };

}  // namespace

class LinkProxy::Loop {
 public:
  Loop(const LinkProxy::Options& options, const Endpoint& upstream,
       UniqueFd listener, UniqueFd epoll, UniqueFd timer, UniqueFd wake,
       AtomicCounters* counters)
      : options_(options),
        upstream_(upstream),
        listener_(std::move(listener)),
        epoll_(std::move(epoll)),
        timer_(std::move(timer)),
        wake_(std::move(wake)),
        counters_(counters),
        link_{LinkDirection(LinkParams(options)),
              LinkDirection(LinkParams(options))} {
    segment_bytes_ =
        link_[0].limited()
            ? std::clamp<uint64_t>(options.bits_per_second / 8 / 1000,
                                   kMinSegmentBytes, kMaxSegmentBytes)
            : kUnlimitedSegmentBytes;
    // Queue admission waits for room for a whole segment (or half the queue
    // if that is smaller), so a full link is not fed in slivers.
    low_water_ = std::min<uint64_t>(segment_bytes_, link_[0].queue_bytes() / 2);
  }

  void Run();
  void RequestStop() {
    stop_asked_.store(true);
    Wake();
  }
  void Wake() {
    uint64_t one = 1;
    ssize_t rc = write(wake_.get(), &one, sizeof(one));
    (void)rc;
  }

 private:
  static LinkDirection::Params LinkParams(const LinkProxy::Options& o) {
    LinkDirection::Params p;
    p.bits_per_second = o.bits_per_second;
    p.delay_ns = absl::ToInt64Nanoseconds(o.rtt / 2);
    p.queue_bytes = o.queue_bytes;
    return p;
  }

  void AcceptAll(int64_t now);
  void OnWake();
  void OnConnEvent(uint64_t tag, uint32_t events, int64_t now);
  bool Eligible(const Conn& c, int d, int64_t now) const;
  void OnReadable(Conn& c, int d, int64_t now);
  ReadResult ReadSegment(Conn& c, int d, int64_t now);
  void ServeWaiting(int d, int64_t now);
  void DeliverArrived(int64_t now);
  // Writes pending output of direction d; false if the connection was
  // aborted.
  bool Flush(Conn& c, int d);
  void Abort(uint64_t id);
  void UpdateInterest(Conn& c, int side, uint32_t want);
  void Reconcile(int64_t now);
  void ArmTimer(int64_t deadline);
  Conn* Find(uint64_t id) {
    auto it = conns_.find(id);
    return it == conns_.end() ? nullptr : &it->second;
  }

  const LinkProxy::Options options_;
  const Endpoint upstream_;
  UniqueFd listener_;
  UniqueFd epoll_;
  UniqueFd timer_;
  UniqueFd wake_;
  AtomicCounters* const counters_;
  LinkDirection link_[2];
  size_t segment_bytes_;
  uint64_t low_water_;
  std::deque<Segment> in_flight_[2];  // sorted by arrive_at
  std::deque<uint64_t> waiting_[2];   // conn ids, round-robin order
  std::map<uint64_t, Conn> conns_;    // by id; ids are never reused
  uint64_t next_id_ = 1;
  int64_t armed_at_ = 0;
  bool stopping_ = false;
  std::atomic<bool> stop_asked_{false};
};

void LinkProxy::Loop::Run() {
  epoll_event events[128];
  while (!stopping_) {
    int n = epoll_wait(epoll_.get(), events, 128, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      LogError("link proxy: epoll_wait: ", ErrnoToStatus(errno, "").message());
      break;
    }
    int64_t now = MonotonicNow();
    for (int i = 0; i < n; ++i) {
      uint64_t tag = events[i].data.u64;
      if (tag == kListenTag) {
        AcceptAll(now);
      } else if (tag == kTimerTag) {
        uint64_t expirations;
        ssize_t rc = read(timer_.get(), &expirations, sizeof(expirations));
        (void)rc;
        armed_at_ = 0;
      } else if (tag == kWakeTag) {
        OnWake();
      } else {
        OnConnEvent(tag, events[i].events, now);
      }
    }
    Reconcile(MonotonicNow());
  }
  for (auto& [id, conn] : conns_) {
    (void)id;
    counters_->active.fetch_sub(1);
  }
  conns_.clear();
}

void LinkProxy::Loop::OnWake() {
  uint64_t count;
  ssize_t rc = read(wake_.get(), &count, sizeof(count));
  (void)rc;
  if (stop_asked_.load()) stopping_ = true;
  const uint64_t asked = counters_->silence_asked.load();
  if (asked == counters_->silence_done.load()) return;
  for (auto& [id, c] : conns_) {
    (void)id;
    c.silent = true;
    for (Conn::Half& h : c.half) {
      h.out.clear();
      h.out_off = 0;
      h.unwritten = 0;
    }
  }
  // (Their segments on the link are dropped as they arrive; their places in
  // the round-robin are skipped: no longer Eligible.)
  counters_->silence_done.store(asked);
}

void LinkProxy::Loop::AcceptAll(int64_t now) {
  while (true) {
    int cfd = accept4(listener_.get(), nullptr, nullptr,
                      SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN) {
        LogWarning("link proxy: ", ErrnoToStatus(errno, "accept").message());
      }
      return;
    }
    UniqueFd client(cfd);
    (void)SetNoDelay(client.get());
    absl::StatusOr<UniqueFd> up = ConnectTcp(upstream_, /*nonblocking=*/true);
    if (!up.ok()) {
      LogWarning("link proxy: upstream ", up.status().message());
      SetResetOnClose(client.get());
      continue;
    }
    (void)SetNoDelay(up->get());
    counters_->accepted.fetch_add(1);
    counters_->active.fetch_add(1);
    uint64_t id = next_id_++;
    Conn& c = conns_[id];
    c.id = id;
    c.fd[kClient] = std::move(client);
    c.fd[kUpstream] = std::move(*up);
    c.open_at =
        now +
        (options_.handshake_rtt ? absl::ToInt64Nanoseconds(options_.rtt) : 0);
  }
}

void LinkProxy::Loop::OnConnEvent(uint64_t tag, uint32_t events, int64_t now) {
  uint64_t id = tag >> 1;
  int side = static_cast<int>(tag & 1);
  Conn* c = Find(id);
  if (c == nullptr) return;
  if (side == kUpstream && c->connecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    absl::Status st = FinishConnect(c->fd[kUpstream].get());
    if (!st.ok()) {
      LogWarning("link proxy: upstream ", st.message());
      Abort(id);
      return;
    }
    c->connecting = false;
    return;
  }
  if (events & EPOLLERR) {
    Abort(id);
    return;
  }
  // The fd on `side` is the source of direction `side` and the destination
  // of direction 1 - side.
  if (events & (EPOLLOUT | EPOLLHUP)) {
    if (!Flush(*c, 1 - side)) return;
  }
  if (events & (EPOLLIN | EPOLLHUP)) OnReadable(*c, side, now);
}

bool LinkProxy::Loop::Eligible(const Conn& c, int d, int64_t now) const {
  const Conn::Half& h = c.half[d];
  return !c.connecting && !c.silent && !h.src_eof && !h.waiting &&
         h.unwritten < options_.window_bytes && (d != kUp || now >= c.open_at);
}

void LinkProxy::Loop::OnReadable(Conn& c, int d, int64_t now) {
  if (!Eligible(c, d, now)) return;
  // A stream that finds the queue full, or others already waiting for it,
  // joins the round-robin instead of jumping ahead.
  if (!waiting_[d].empty() || link_[d].Room(now) < low_water_) {
    c.half[d].waiting = true;
    waiting_[d].push_back(c.id);
    return;
  }
  ReadSegment(c, d, now);
}

ReadResult LinkProxy::Loop::ReadSegment(Conn& c, int d, int64_t now) {
  Conn::Half& h = c.half[d];
  uint64_t room = link_[d].Room(now);
  size_t want = static_cast<size_t>(std::min<uint64_t>(
      {segment_bytes_, room, options_.window_bytes - h.unwritten}));
  std::string buf(want, '\0');
  ssize_t n;
  do {
    n = read(c.fd[d].get(), buf.data(), want);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return ReadResult::kDrained;
    Abort(c.id);
    return ReadResult::kError;
  }
  if (n == 0) {
    h.src_eof = true;
    in_flight_[d].push_back({c.id, link_[d].Send(now, 0), "", true});
    return ReadResult::kEof;
  }
  buf.resize(static_cast<size_t>(n));
  h.unwritten += static_cast<uint64_t>(n);
  in_flight_[d].push_back({c.id, link_[d].Send(now, static_cast<uint64_t>(n)),
                           std::move(buf), false});
  return static_cast<size_t>(n) == want ? ReadResult::kFull
                                        : ReadResult::kDrained;
}

void LinkProxy::Loop::ServeWaiting(int d, int64_t now) {
  while (!waiting_[d].empty() && link_[d].Room(now) >= low_water_) {
    uint64_t id = waiting_[d].front();
    waiting_[d].pop_front();
    Conn* c = Find(id);
    if (c == nullptr) continue;
    c->half[d].waiting = false;
    if (!Eligible(*c, d, now)) continue;
    // A stream that filled its segment probably has more: back of the line.
    // Otherwise it goes back to waiting for EPOLLIN.
    if (ReadSegment(*c, d, now) == ReadResult::kFull) {
      c->half[d].waiting = true;
      waiting_[d].push_back(id);
    }
  }
}

void LinkProxy::Loop::DeliverArrived(int64_t now) {
  for (int d = 0; d < 2; ++d) {
    while (!in_flight_[d].empty() && in_flight_[d].front().arrive_at <= now) {
      Segment seg = std::move(in_flight_[d].front());
      in_flight_[d].pop_front();
      Conn* c = Find(seg.conn_id);
      if (c == nullptr || c->silent) continue;  // aborted, or lost
      Conn::Half& h = c->half[d];
      if (seg.fin) {
        h.fin_arrived = true;
      } else if (h.out_off == h.out.size()) {
        h.out = std::move(seg.data);
        h.out_off = 0;
      } else {
        h.out.append(seg.data);
      }
      Flush(*c, d);
    }
  }
}

bool LinkProxy::Loop::Flush(Conn& c, int d) {
  Conn::Half& h = c.half[d];
  int dst = c.fd[1 - d].get();
  if (d == kUp && c.connecting) return true;
  while (h.out_off < h.out.size()) {
    ssize_t n = send(dst, h.out.data() + h.out_off, h.out.size() - h.out_off,
                     MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return true;
      Abort(c.id);
      return false;
    }
    h.out_off += static_cast<size_t>(n);
    h.unwritten -= static_cast<uint64_t>(n);
    (d == kUp ? counters_->bytes_up : counters_->bytes_down)
        .fetch_add(static_cast<uint64_t>(n));
  }
  h.out.clear();
  h.out_off = 0;
  if (h.fin_arrived && !h.shut) {
    shutdown(dst, SHUT_WR);
    h.shut = true;
  }
  return true;
}

void LinkProxy::Loop::Abort(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  // The peer of a reset side sees a reset too, not a clean end of stream.
  SetResetOnClose(it->second.fd[kClient].get());
  SetResetOnClose(it->second.fd[kUpstream].get());
  conns_.erase(it);  // closing the fds removes them from the epoll set
  counters_->active.fetch_sub(1);
}

void LinkProxy::Loop::UpdateInterest(Conn& c, int side, uint32_t want) {
  if (c.registered[side] == want) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = (c.id << 1) | static_cast<uint64_t>(side);
  int op = want == 0                 ? EPOLL_CTL_DEL
           : c.registered[side] == 0 ? EPOLL_CTL_ADD
                                     : EPOLL_CTL_MOD;
  if (epoll_ctl(epoll_.get(), op, c.fd[side].get(), &ev) != 0) {
    LogWarning("link proxy: ", ErrnoToStatus(errno, "epoll_ctl").message());
  }
  c.registered[side] = want;
}

void LinkProxy::Loop::Reconcile(int64_t now) {
  DeliverArrived(now);
  ServeWaiting(kUp, now);
  ServeWaiting(kDown, now);

  int64_t deadline = std::numeric_limits<int64_t>::max();
  for (int d = 0; d < 2; ++d) {
    if (!in_flight_[d].empty()) {
      deadline = std::min(deadline, in_flight_[d].front().arrive_at);
    }
    if (!waiting_[d].empty()) {
      deadline = std::min(deadline, link_[d].TimeRoomFor(now, low_water_));
    }
  }
  for (auto it = conns_.begin(); it != conns_.end();) {
    Conn& c = it->second;
    if (c.half[kUp].shut && c.half[kDown].shut) {
      counters_->active.fetch_sub(1);
      it = conns_.erase(it);
      continue;
    }
    if (!c.connecting && !c.half[kUp].src_eof && now < c.open_at) {
      deadline = std::min(deadline, c.open_at);
    }
    for (int side = 0; side < 2; ++side) {
      uint32_t want = 0;
      // `side` is the source of direction `side`...
      if (Eligible(c, side, now)) want |= EPOLLIN;
      // ...and the destination of direction 1 - side.
      const Conn::Half& out = c.half[1 - side];
      if (out.out_off < out.out.size()) want |= EPOLLOUT;
      if (side == kUpstream && c.connecting) want = EPOLLOUT;
      UpdateInterest(c, side, want);
    }
    ++it;
  }
  ArmTimer(deadline);
}

void LinkProxy::Loop::ArmTimer(int64_t deadline) {
  if (deadline == std::numeric_limits<int64_t>::max()) deadline = 0;
  if (deadline == armed_at_) return;
  itimerspec its{};
  its.it_value.tv_sec = deadline / 1'000'000'000;
  its.it_value.tv_nsec = deadline % 1'000'000'000;
  if (deadline != 0 && its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) {
    its.it_value.tv_nsec = 1;
  }
  timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &its, nullptr);
  armed_at_ = deadline;
}

absl::StatusOr<std::unique_ptr<LinkProxy>> LinkProxy::Start(
    const Options& options) {
  if (options.upstream_port <= 0 || options.upstream_port > 65535) {
    return absl::InvalidArgumentError("link proxy: upstream port not set");
  }
  if (options.rtt < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("link proxy: negative rtt");
  }
  if (options.window_bytes == 0) {
    return absl::InvalidArgumentError("link proxy: window_bytes is 0");
  }
  ASSIGN_OR_RETURN(Endpoint upstream,
                   Resolve(options.upstream_host, options.upstream_port));
  ASSIGN_OR_RETURN(UniqueFd listener,
                   ListenLoopback(options.listen_port, /*nonblocking=*/true));
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  if (!ep.valid()) return ErrnoToStatus(errno, "epoll_create1");
  UniqueFd timer(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer.valid()) return ErrnoToStatus(errno, "timerfd_create");
  UniqueFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake.valid()) return ErrnoToStatus(errno, "eventfd");
  const std::pair<int, uint64_t> fixed[] = {{listener.get(), kListenTag},
                                            {timer.get(), kTimerTag},
                                            {wake.get(), kWakeTag}};
  for (const auto& [fd, tag] : fixed) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    if (epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return ErrnoToStatus(errno, "epoll_ctl");
    }
  }
  std::unique_ptr<LinkProxy> proxy(new LinkProxy());
  ASSIGN_OR_RETURN(proxy->port_, LocalPort(listener.get()));
  proxy->loop_ = std::make_unique<Loop>(options, upstream, std::move(listener),
                                        std::move(ep), std::move(timer),
                                        std::move(wake), &proxy->counters_);
  proxy->thread_ = std::thread([loop = proxy->loop_.get()] { loop->Run(); });
  return proxy;
}

LinkProxy::~LinkProxy() { Stop(); }

void LinkProxy::Stop() {
  if (!thread_.joinable()) return;
  loop_->RequestStop();
  thread_.join();
  loop_.reset();
}

LinkCounters LinkProxy::counters() const {
  LinkCounters c;
  c.connections_accepted = counters_.accepted.load();
  c.connections_active = counters_.active.load();
  c.bytes_up = counters_.bytes_up.load();
  c.bytes_down = counters_.bytes_down.load();
  return c;
}

std::string LinkProxy::CountersJson() const {
  LinkCounters c = counters();
  return absl::StrCat("{\"connections_accepted\":", c.connections_accepted,
                      ",\"connections_active\":", c.connections_active,
                      ",\"bytes_up\":", c.bytes_up,
                      ",\"bytes_down\":", c.bytes_down, "}");
}

void LinkProxy::SilenceOpenConnections() {
  if (!thread_.joinable()) return;  // stopped: nothing is open
  const uint64_t ticket = counters_.silence_asked.fetch_add(1) + 1;
  loop_->Wake();
  while (counters_.silence_done.load() < ticket) {
    absl::SleepFor(absl::Milliseconds(1));
  }
}

void LinkProxy::ResetCounters() {
  counters_.accepted.store(0);
  counters_.bytes_up.store(0);
  counters_.bytes_down.store(0);
}

}  // namespace lazypull::proxy
