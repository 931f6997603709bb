// TCP sockets on loopback for the proxies: an owning file descriptor, a
// listener, an outgoing connection, and the socket options the proxies use.
//
// Every failing OS call becomes an absl::Status through ErrnoToStatus (raw
// errno kept in the message); name resolution errors name the gai code.
//
// Thread-safety: UniqueFd is a move-only value; one thread per object. The
// free functions are safe from any thread.
#ifndef LAZYPULL_PROXY_TCP_SOCKET_H_
#define LAZYPULL_PROXY_TCP_SOCKET_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazypull::proxy {

// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release();
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// A resolved TCP endpoint (IPv4 or IPv6).
struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

// Resolves `host` (a name or numeric address) and `port` to the first
// address getaddrinfo returns.
absl::StatusOr<Endpoint> Resolve(const std::string& host, int port);

// Splits "host:port" ("[::1]:5000" for IPv6). Error if the port is missing or
// not in 1..65535.
absl::Status ParseHostPort(absl::string_view text, std::string* host,
                           int* port);

// A listening socket on 127.0.0.1:`port` (0 = a free port chosen by the
// kernel), SO_REUSEADDR set, backlog 512. `nonblocking` sets O_NONBLOCK.
absl::StatusOr<UniqueFd> ListenLoopback(int port, bool nonblocking);

// The local port a bound socket listens on.
absl::StatusOr<int> LocalPort(int fd);

// Connects to `to`. Blocking: returns once connected. Non-blocking: the
// connect may still be in progress (EINPROGRESS is not an error); wait for
// EPOLLOUT and check FinishConnect().
absl::StatusOr<UniqueFd> ConnectTcp(const Endpoint& to, bool nonblocking);

// After a non-blocking connect became writable: OK if connected.
absl::Status FinishConnect(int fd);

// TCP_NODELAY on: the proxies forward what they have at once and leave
// batching to the emulated link.
absl::Status SetNoDelay(int fd);
absl::Status SetNonBlocking(int fd);
// SO_LINGER {1, 0}: the next close() sends RST instead of FIN.
void SetResetOnClose(int fd);

// Writes all of `data`, retrying short writes and EINTR (blocking fds only).
// Uses MSG_NOSIGNAL: a peer that went away is an error, not a SIGPIPE.
absl::Status SendAll(int fd, absl::string_view data);

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_TCP_SOCKET_H_
