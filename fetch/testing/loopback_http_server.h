// LoopbackHttpServer: a tiny HTTP/1.1 server on 127.0.0.1 for tests, run by
// a handler function. Used for faults a real registry will not produce (429
// with Retry-After, 503 storms, 200 to a range request, a body that breaks
// off), for a fake blob store behind redirects, and for the Bearer token
// server (fetch/testing/token_server.h).
//
// Each connection is served by its own thread, one request after another
// (keep-alive) until the client or a response closes it. Requests are
// recorded for assertions.
//
// Thread-safety: the handler runs on connection threads, several at once;
// requests() and Stop() are safe from any thread.
#ifndef LAZYPULL_FETCH_TESTING_LOOPBACK_HTTP_SERVER_H_
#define LAZYPULL_FETCH_TESTING_LOOPBACK_HTTP_SERVER_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lazypull::testing {

struct TestRequest {
  std::string method;
  std::string target;                        // path and query, as sent
  std::string path;                          // without the query
  std::map<std::string, std::string> query;  // decoded; last value wins
  std::vector<std::string> query_all(const std::string& key) const;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string raw_query;
};

struct TestResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Send only this many body bytes (after a full Content-Length header),
  // then close the connection: a transfer that breaks off.
  std::optional<size_t> truncate_after;
  // Wait this long before answering.
  absl::Duration delay = absl::ZeroDuration();
  // Send the first `pause_after` body bytes, then call `pause` (which may
  // block, e.g. until a test lets the rest go), then the rest: a body that
  // arrives in two parts far apart.
  std::optional<size_t> pause_after;
  std::function<void()> pause;
  // Close the connection after this response.
  bool close = false;
};

class LoopbackHttpServer {
 public:
  using Handler = std::function<void(const TestRequest&, TestResponse*)>;

  // Binds 127.0.0.1 on a free port and starts serving.
  static absl::StatusOr<std::unique_ptr<LoopbackHttpServer>> Start(
      Handler handler);
  ~LoopbackHttpServer();

  int port() const { return port_; }
  std::string url() const;  // "http://127.0.0.1:PORT"
  std::vector<TestRequest> requests() const;
  void Stop();

 private:
  LoopbackHttpServer(int fd, int port, Handler h);
  void AcceptLoop();
  void Serve(int fd);

  const int listen_fd_;
  const int port_;
  const Handler handler_;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  mutable absl::Mutex mu_;
  std::vector<TestRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> conn_threads_ ABSL_GUARDED_BY(mu_);
  std::vector<int> conn_fds_ ABSL_GUARDED_BY(mu_);
};

// "a%2Fb+c" -> "a/b c".
std::string UrlDecode(const std::string& s);

}  // namespace lazypull::testing

#endif  // LAZYPULL_FETCH_TESTING_LOOPBACK_HTTP_SERVER_H_
