// FaultProxy: an HTTP/1.1 reverse proxy that injects scripted faults between
// a registry client and a registry on plain HTTP (e.g. docker-registry),
// for tests of lazypull's error handling, retries and range validation.
//
// Requests are forwarded unchanged (Host included, so a registry's Location
// headers point back at the proxy) over one upstream connection per client
// connection, kept alive when both sides allow. Bodies may be delimited by
// Content-Length, chunked coding or connection close. "Expect:
// 100-continue" is answered by the proxy itself. A request matching a fault
// rule (proxy/fault_rules.h) gets its fault instead: a synthetic status
// (registry-style JSON error body), a dropped connection, a 200 for a 206, a
// shifted Content-Range, a flipped body byte, a slow body, or a 307 redirect
// to the built-in blob storage.
//
// The blob storage is a second listener on its own port: it serves the same
// upstream paths, but only through signed URLs (proxy/signed_url.h) that the
// redirect rule hands out; it answers 403 (S3-style XML) to an unsigned,
// tampered or expired URL. It applies no fault rules.
//
// Counters: totals (connections, requests, faults, upstream requests, bytes
// each way, requests carrying credentials), per rule (matched, fired) and
// for the blob storage (requests, denials, requests carrying credentials).
//
// Thread-safety: one thread per client connection (TcpServer). All public
// methods are safe from any thread; Stop() (and the destructor) not from a
// connection thread.
#ifndef LAZYPULL_PROXY_FAULT_PROXY_H_
#define LAZYPULL_PROXY_FAULT_PROXY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "proxy/fault_rules.h"
#include "proxy/signed_url.h"
#include "proxy/tcp_server.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {

// A snapshot of a FaultProxy's counters (since start or the last reset).
struct FaultCounters {
  uint64_t connections = 0;         // client connections accepted
  uint64_t requests = 0;            // requests read from clients
  uint64_t faults = 0;              // requests a rule fired on
  uint64_t upstream_requests = 0;   // sent upstream (blob storage's included)
  uint64_t bytes_from_clients = 0;  // request heads and bodies
  uint64_t bytes_to_clients = 0;    // response heads and bodies
  uint64_t blob_connections = 0;
  uint64_t blob_requests = 0;
  uint64_t blob_denied = 0;  // 403 for an unsigned/tampered/expired URL
  // Requests carrying an Authorization header: to the registry side, and
  // to the blob storage (where a client must never send its credentials).
  uint64_t authorized = 0;
  uint64_t blob_authorized = 0;
  std::vector<FaultRuleSet::RuleCounts> rules;  // in rule order
};

class FaultProxy {
 public:
  struct Options {
    std::string upstream_host = "127.0.0.1";
    int upstream_port = 0;  // required
    int listen_port = 0;    // 0 = a free port (see port())
    int blob_port = 0;      // the blob storage's; 0 = a free port
  };

  static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(
      const Options& options, std::vector<FaultRule> rules = {});
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  int port() const { return port_; }
  int blob_port() const { return blob_port_; }

  // Replaces the rules; their occurrence counts start from zero. Requests
  // already past matching keep the fault they got.
  absl::Status SetRules(std::vector<FaultRule> rules);
  FaultCounters counters() const;
  // The counters as JSON: {"connections":N,...,"rules":[{"name":...,
  // "matched":N,"fired":N}]}.
  std::string CountersJson() const;
  // Zeroes every counter, per-rule occurrence counts included.
  void ResetCounters();
  // Stops both listeners and closes every connection. Idempotent.
  void Stop();

 private:
  class Session;
  struct AtomicCounters {
    std::atomic<uint64_t> connections{0};
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> faults{0};
    std::atomic<uint64_t> upstream_requests{0};
    std::atomic<uint64_t> bytes_from_clients{0};
    std::atomic<uint64_t> bytes_to_clients{0};
    std::atomic<uint64_t> blob_connections{0};
    std::atomic<uint64_t> blob_requests{0};
    std::atomic<uint64_t> blob_denied{0};
    std::atomic<uint64_t> authorized{0};
    std::atomic<uint64_t> blob_authorized{0};
  };

  FaultProxy() = default;
  void Serve(int fd, bool blob_storage);
  // The rule that fires for this request, copied, or false.
  bool MatchRule(absl::string_view method, absl::string_view target,
                 const std::string* range, FaultRule* rule);

  Endpoint upstream_;
  UrlSigner signer_;
  int port_ = 0;
  int blob_port_ = 0;
  AtomicCounters counters_;
  absl::Notification ready_;  // both servers are set
  std::unique_ptr<TcpServer> server_;
  std::unique_ptr<TcpServer> blob_server_;
  mutable absl::Mutex mu_;
  std::unique_ptr<FaultRuleSet> rules_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_FAULT_PROXY_H_
