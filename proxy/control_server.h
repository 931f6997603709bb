// ControlServer: the proxies' tiny HTTP control interface, so that scripts
// and benchmarks outside the process can read and reset counters (and load
// fault rules) with curl:
//
//   curl -s http://127.0.0.1:CONTROL/counters     # JSON
//   curl -s -X POST http://127.0.0.1:CONTROL/reset
//
// Each connection carries one request and is closed after the answer
// ("Connection: close"). An unknown method or path gets 404.
//
// Thread-safety: handlers run on connection threads, possibly concurrently;
// they must be thread-safe. Stop() is safe from any thread but a handler's.
#ifndef LAZYPULL_PROXY_CONTROL_SERVER_H_
#define LAZYPULL_PROXY_CONTROL_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "proxy/tcp_server.h"

namespace lazypull::proxy {

class ControlServer {
 public:
  struct Reply {
    int status = 200;
    std::string body;  // JSON, or plain text for errors
  };
  // Receives the request body (empty for GET).
  using Handler = std::function<Reply(const std::string& body)>;

  // `routes` maps "METHOD /path" (e.g. "GET /counters") to its handler.
  // Listens on 127.0.0.1:`port` (0 = a free port).
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(
      int port, std::map<std::string, Handler> routes);

  int port() const { return server_->port(); }
  void Stop() { server_->Stop(); }

 private:
  explicit ControlServer(std::map<std::string, Handler> routes)
      : routes_(std::move(routes)) {}
  void Serve(int fd);

  const std::map<std::string, Handler> routes_;
  std::unique_ptr<TcpServer> server_;
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_CONTROL_SERVER_H_
