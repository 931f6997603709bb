#include "fetch/testing/loopback_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace lazypull::testing {
namespace {

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 206:
      return "Partial Content";
    case 307:
      return "Temporary Redirect";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

}  // namespace

std::string UrlDecode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size()) {
      int v = 0;
      if (absl::SimpleHexAtoi(s.substr(i + 1, 2), &v)) {
        out.push_back(static_cast<char>(v));
        i += 2;
      } else {
        out.push_back(s[i]);
      }
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::string> TestRequest::query_all(const std::string& key) const {
  std::vector<std::string> out;
  for (absl::string_view kv :
       absl::StrSplit(raw_query, '&', absl::SkipEmpty())) {
    size_t eq = kv.find('=');
    std::string k = UrlDecode(std::string(kv.substr(0, eq)));
    if (k == key) {
      out.push_back(eq == absl::string_view::npos
                        ? ""
                        : UrlDecode(std::string(kv.substr(eq + 1))));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<LoopbackHttpServer>> LoopbackHttpServer::Start(
    Handler handler) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd, 64) != 0) {
    int e = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("bind/listen: ", strerror(e)));
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  auto* s =
      new LoopbackHttpServer(fd, ntohs(addr.sin_port), std::move(handler));
  return std::unique_ptr<LoopbackHttpServer>(s);
}

LoopbackHttpServer::LoopbackHttpServer(int fd, int port, Handler h)
    : listen_fd_(fd), port_(port), handler_(std::move(h)) {
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

LoopbackHttpServer::~LoopbackHttpServer() { Stop(); }

std::string LoopbackHttpServer::url() const {
  return absl::StrCat("http://127.0.0.1:", port_);
}

std::vector<TestRequest> LoopbackHttpServer::requests() const {
  absl::MutexLock l(&mu_);
  return requests_;
}

void LoopbackHttpServer::Stop() {
  if (stop_.exchange(true)) return;
  shutdown(listen_fd_, SHUT_RDWR);
  accept_thread_.join();
  close(listen_fd_);
  std::vector<std::thread> threads;
  {
    absl::MutexLock l(&mu_);
    for (int fd : conn_fds_) shutdown(fd, SHUT_RDWR);
    threads.swap(conn_threads_);
  }
  for (auto& t : threads) t.join();
}

void LoopbackHttpServer::AcceptLoop() {
  while (!stop_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    absl::MutexLock l(&mu_);
    conn_fds_.push_back(fd);
    conn_threads_.emplace_back([this, fd] { Serve(fd); });
  }
}

void LoopbackHttpServer::Serve(int fd) {
  std::string in;
  char buf[16384];
  bool open = true;
  while (open && !stop_.load()) {
    size_t hdr_end;
    while ((hdr_end = in.find("\r\n\r\n")) == std::string::npos) {
      ssize_t r = recv(fd, buf, sizeof(buf), 0);
      if (r <= 0) {
        open = false;
        break;
      }
      in.append(buf, static_cast<size_t>(r));
    }
    if (!open) break;
    TestRequest req;
    std::vector<std::string> lines =
        absl::StrSplit(in.substr(0, hdr_end), "\r\n");
    std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
    if (first.size() < 2) break;
    req.method = first[0];
    req.target = first[1];
    size_t q = req.target.find('?');
    req.path = req.target.substr(0, q);
    if (q != std::string::npos) {
      req.raw_query = req.target.substr(q + 1);
      for (absl::string_view kv :
           absl::StrSplit(req.raw_query, '&', absl::SkipEmpty())) {
        size_t eq = kv.find('=');
        req.query[UrlDecode(std::string(kv.substr(0, eq)))] =
            eq == absl::string_view::npos
                ? ""
                : UrlDecode(std::string(kv.substr(eq + 1)));
      }
    }
    for (size_t i = 1; i < lines.size(); ++i) {
      size_t c = lines[i].find(':');
      if (c == std::string::npos) continue;
      std::string k = absl::AsciiStrToLower(lines[i].substr(0, c));
      req.headers[k] =
          std::string(absl::StripAsciiWhitespace(lines[i].substr(c + 1)));
    }
    in.erase(0, hdr_end + 4);
    size_t clen = 0;
    if (auto it = req.headers.find("content-length"); it != req.headers.end()) {
      if (!absl::SimpleAtoi(it->second, &clen)) clen = 0;
    }
    while (in.size() < clen) {
      ssize_t r = recv(fd, buf, sizeof(buf), 0);
      if (r <= 0) {
        open = false;
        break;
      }
      in.append(buf, static_cast<size_t>(r));
    }
    if (!open) break;
    req.body = in.substr(0, clen);
    in.erase(0, clen);
    {
      absl::MutexLock l(&mu_);
      requests_.push_back(req);
    }
    TestResponse resp;
    handler_(req, &resp);
    if (resp.delay > absl::ZeroDuration()) absl::SleepFor(resp.delay);
    std::string head = absl::StrCat("HTTP/1.1 ", resp.status, " ",
                                    Reason(resp.status), "\r\n");
    bool has_len = false;
    for (const auto& [k, v] : resp.headers) {
      absl::StrAppend(&head, k, ": ", v, "\r\n");
      if (absl::AsciiStrToLower(k) == "content-length") has_len = true;
    }
    if (!has_len) {
      absl::StrAppend(&head, "Content-Length: ", resp.body.size(), "\r\n");
    }
    if (resp.close) absl::StrAppend(&head, "Connection: close\r\n");
    absl::StrAppend(&head, "\r\n");
    size_t body_n = req.method == "HEAD" ? 0 : resp.body.size();
    if (resp.truncate_after) body_n = std::min(body_n, *resp.truncate_after);
    const size_t first_n =
        resp.pause_after ? std::min(body_n, *resp.pause_after) : body_n;
    if (!WriteAll(fd, head.data(), head.size()) ||
        !WriteAll(fd, resp.body.data(), first_n)) {
      break;
    }
    if (first_n < body_n) {
      if (resp.pause) resp.pause();
      if (!WriteAll(fd, resp.body.data() + first_n, body_n - first_n)) break;
    }
    if (resp.close || resp.truncate_after) break;
  }
  shutdown(fd, SHUT_RDWR);
  absl::MutexLock l(&mu_);
  for (int& f : conn_fds_) {
    if (f == fd) f = -1;
  }
  close(fd);
}

}  // namespace lazypull::testing
