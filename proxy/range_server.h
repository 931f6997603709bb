// RangeServer: a minimal HTTP/1.1 origin for the proxies' tests, standing in
// for a registry's blob endpoint.
//
// GET and HEAD of a stored path answer 200 with the bytes, or 206 with
// Content-Range for a single "Range: bytes=A-B" (A-, -N too); a Range with
// several ranges gets the whole body as 200 (RFC 9110 allows ignoring
// Range), an unsatisfiable one 416. A path stored as chunked is sent with
// chunked coding. PUT and POST store the request body (Content-Length or
// chunked) at the path and answer 201. Connections are kept alive.
// Unknown paths get 404.
//
// Thread-safety: all methods are safe from any thread.
#ifndef LAZYPULL_PROXY_RANGE_SERVER_H_
#define LAZYPULL_PROXY_RANGE_SERVER_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proxy/http_message.h"
#include "proxy/tcp_server.h"

namespace lazypull::proxy {

class RangeServer {
 public:
  static absl::StatusOr<std::unique_ptr<RangeServer>> Start();

  int port() const { return server_->port(); }
  void Put(const std::string& path, std::string bytes, bool chunked = false);
  // The stored bytes of `path` ("" if none).
  std::string Get(const std::string& path) const;
  // Every request head received so far, in order.
  std::vector<RequestHead> requests() const;
  void Stop() { server_->Stop(); }

 private:
  struct Blob {
    std::string bytes;
    bool chunked = false;
  };
  RangeServer() = default;
  void Serve(int fd);

  std::unique_ptr<TcpServer> server_;
  mutable absl::Mutex mu_;
  std::map<std::string, Blob> blobs_ ABSL_GUARDED_BY(mu_);
  std::vector<RequestHead> requests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_RANGE_SERVER_H_
