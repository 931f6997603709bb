// LinkProxy: a TCP proxy that puts an emulated access link between its
// clients and one upstream server (this machine has no netem/tbf qdiscs, so
// latency and bandwidth are emulated here, in userspace).
//
// Every accepted connection is paired with a new connection to the upstream;
// bytes are forwarded unchanged (TLS, HTTP/1.1 and HTTP/2 pass through), but
// each direction crosses one LinkDirection (proxy/link_model.h) shared by ALL
// connections: one bounded FIFO queue drained at the link rate, then the
// one-way delay rtt/2. Connections waiting for room in a full queue are
// served round-robin, one segment each (about 1 ms at the rate, 1460 B to
// 16 KiB), so N busy streams get about rate/N each, as on a shared link.
// TCP_NODELAY is set on both sides.
//
// A new connection pays one extra RTT before its first byte goes upstream,
// as its TCP handshake would over the link (Options::handshake_rtt).
// EOF is forwarded in order (shutdown(SHUT_WR) after the last byte arrives);
// a reset or error on either side resets the other.
//
// Usage:
//   LinkProxy::Options o;
//   o.upstream_port = registry_port;
//   o.rtt = absl::Milliseconds(20);
//   o.bits_per_second = 100'000'000;
//   ASSIGN_OR_RETURN(std::unique_ptr<LinkProxy> p, LinkProxy::Start(o));
//   ... connect to 127.0.0.1:p->port() ...
//
// Thread-safety: one event-loop thread per proxy does all the I/O. port(),
// counters(), CountersJson() and ResetCounters() are safe from any thread;
// SilenceOpenConnections() from any thread but the loop's, not concurrently
// with Stop();
// Stop() (and the destructor) from any thread but the loop's.
#ifndef LAZYPULL_PROXY_LINK_PROXY_H_
#define LAZYPULL_PROXY_LINK_PROXY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lazypull::proxy {

// A snapshot of a LinkProxy's counters.
struct LinkCounters {
  uint64_t connections_accepted = 0;  // since start or the last reset
  uint64_t connections_active = 0;    // open now (never reset)
  uint64_t bytes_up = 0;    // client -> upstream, written to the upstream
  uint64_t bytes_down = 0;  // upstream -> client, written to the client
};

class LinkProxy {
 public:
  struct Options {
    std::string upstream_host = "127.0.0.1";
    int upstream_port = 0;  // required
    // Listens on 127.0.0.1:listen_port; 0 = a free port (see port()).
    int listen_port = 0;
    // Round-trip propagation delay; each direction delays rtt/2.
    absl::Duration rtt = absl::ZeroDuration();
    // Link rate in bits/s, the same in each direction; 0 = unlimited.
    uint64_t bits_per_second = 0;
    // Queue bound per direction; 0 = LinkDirection's default (64 KiB or
    // 5 ms at the rate, the larger).
    uint64_t queue_bytes = 0;
    // Per connection and direction: bytes read from the sender and not yet
    // written to the receiver. A stand-in for the TCP window: caps one
    // stream at window/rtt, and bounds memory when a receiver stalls.
    uint64_t window_bytes = 4 << 20;
    // A new connection's first bytes upstream wait one RTT (its handshake).
    bool handshake_rtt = true;
  };

  // Resolves the upstream, binds the listener and starts the loop thread.
  // The upstream is connected per accepted connection; a refused upstream
  // connection closes the client's.
  static absl::StatusOr<std::unique_ptr<LinkProxy>> Start(
      const Options& options);

  ~LinkProxy();
  LinkProxy(const LinkProxy&) = delete;
  LinkProxy& operator=(const LinkProxy&) = delete;

  int port() const { return port_; }
  LinkCounters counters() const;
  // {"connections_accepted":N,"connections_active":N,"bytes_up":N,
  //  "bytes_down":N}
  std::string CountersJson() const;
  // Zeroes every counter but connections_active.
  void ResetCounters();
  // Every connection open now goes silent, as when a NAT or load balancer on
  // the path loses its state: from now on nothing more crosses in either
  // direction (bytes on the emulated link are lost too), and nothing is
  // closed or reset, so neither end learns of it but by a timeout.
  // Connections accepted afterwards are served as usual. Returns once it
  // holds (at once after Stop()). For tests of a client's recovery from a
  // dead connection.
  void SilenceOpenConnections();
  // Closes the listener and every connection and joins the loop thread.
  // Idempotent.
  void Stop();

 private:
  class Loop;
  struct AtomicCounters {
    std::atomic<uint64_t> accepted{0};
    std::atomic<uint64_t> active{0};
    std::atomic<uint64_t> bytes_up{0};
    std::atomic<uint64_t> bytes_down{0};
    // SilenceOpenConnections() calls made, and applied by the loop.
    std::atomic<uint64_t> silence_asked{0};
    std::atomic<uint64_t> silence_done{0};
  };

  LinkProxy() = default;

  int port_ = 0;
  AtomicCounters counters_;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_LINK_PROXY_H_
