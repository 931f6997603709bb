// TcpServer: a blocking accept loop on 127.0.0.1 with one thread per
// connection, for the fault proxy, its blob-storage server and the control
// interface (all low-rate test traffic, where blocking code is simplest).
//
// Stop() must not hang on a handler blocked in I/O: it shuts down every
// accepted socket and every fd a handler registered with Track() (e.g. its
// upstream connection), so blocked reads and writes return, and it notifies
// stopping() so handlers that sleep (pacing) wake up.
//
// Thread-safety: all methods are safe from any thread; Stop() must not be
// called from a handler.
#ifndef LAZYPULL_PROXY_TCP_SERVER_H_
#define LAZYPULL_PROXY_TCP_SERVER_H_

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {

class TcpServer {
 public:
  // Runs on the connection's own thread; the socket (blocking, TCP_NODELAY)
  // is closed when the handler returns.
  using Handler = std::function<void(int fd)>;

  // Listens on 127.0.0.1:`port` (0 = a free port) and starts accepting.
  static absl::StatusOr<std::unique_ptr<TcpServer>> Start(int port,
                                                          Handler handler);
  ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  int port() const { return port_; }
  // Stops accepting, shuts down every tracked socket and joins every thread.
  // Idempotent.
  void Stop();

  // Sockets Stop() shuts down besides the accepted ones. A handler tracks
  // each socket it opens and untracks it before closing it.
  void Track(int fd);
  void Untrack(int fd);
  // Notified when Stop() begins.
  const absl::Notification& stopping() const { return stopping_; }

 private:
  struct Worker {
    std::thread thread;
    std::atomic<bool> done{false};
  };

  TcpServer(UniqueFd listener, int port, Handler handler)
      : listener_(std::move(listener)),
        port_(port),
        handler_(std::move(handler)) {}
  void AcceptLoop();
  void ReapFinished() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  UniqueFd listener_;
  const int port_;
  const Handler handler_;
  absl::Notification stopping_;
  std::thread acceptor_;
  absl::Mutex mu_;
  std::list<Worker> workers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<int> tracked_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_TCP_SERVER_H_
