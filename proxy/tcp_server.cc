#include "proxy/tcp_server.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/errno_status.h"
#include "core/log.h"
#include "core/status_macros.h"

namespace lazypull::proxy {

absl::StatusOr<std::unique_ptr<TcpServer>> TcpServer::Start(int port,
                                                            Handler handler) {
  ASSIGN_OR_RETURN(UniqueFd listener,
                   ListenLoopback(port, /*nonblocking=*/false));
  ASSIGN_OR_RETURN(int bound, LocalPort(listener.get()));
  std::unique_ptr<TcpServer> server(
      new TcpServer(std::move(listener), bound, std::move(handler)));
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

TcpServer::~TcpServer() { Stop(); }

void TcpServer::AcceptLoop() {
  while (!stopping_.HasBeenNotified()) {
    int fd = accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // Stop() shuts the listener down: accept fails with EINVAL.
      if (!stopping_.HasBeenNotified()) {
        LogWarning(ErrnoToStatus(errno, "accept").message());
      }
      return;
    }
    (void)SetNoDelay(fd);
    absl::MutexLock lock(&mu_);
    ReapFinished();
    if (stopping_.HasBeenNotified()) {
      close(fd);
      return;
    }
    tracked_.insert(fd);
    Worker& w = workers_.emplace_back();
    w.thread = std::thread([this, fd, &w] {
      handler_(fd);
      {
        absl::MutexLock lock(&mu_);
        tracked_.erase(fd);
      }
      close(fd);
      w.done.store(true);
    });
  }
}

void TcpServer::ReapFinished() {
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (it->done.load()) {
      it->thread.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void TcpServer::Track(int fd) {
  absl::MutexLock lock(&mu_);
  tracked_.insert(fd);
  // A socket opened while stopping must not block its handler either.
  if (stopping_.HasBeenNotified()) shutdown(fd, SHUT_RDWR);
}

void TcpServer::Untrack(int fd) {
  absl::MutexLock lock(&mu_);
  tracked_.erase(fd);
}

void TcpServer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_.HasBeenNotified()) return;
    stopping_.Notify();
    shutdown(listener_.get(), SHUT_RDWR);
    for (int fd : tracked_) shutdown(fd, SHUT_RDWR);
  }
  acceptor_.join();
  std::list<Worker> workers;
  {
    absl::MutexLock lock(&mu_);
    workers.swap(workers_);
  }
  for (Worker& w : workers) w.thread.join();
}

}  // namespace lazypull::proxy
