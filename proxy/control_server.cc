#include "proxy/control_server.h"

#include <sys/socket.h>
#include <sys/time.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "proxy/http_message.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

constexpr uint64_t kMaxBody = 1 << 20;

}  // namespace

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(
    int port, std::map<std::string, Handler> routes) {
  std::unique_ptr<ControlServer> cs(new ControlServer(std::move(routes)));
  ASSIGN_OR_RETURN(cs->server_, TcpServer::Start(port, [c = cs.get()](int fd) {
                     c->Serve(fd);
                   }));
  return cs;
}

void ControlServer::Serve(int fd) {
  // A client that connects and says nothing must not hold a thread forever.
  timeval tv{};
  tv.tv_sec = 5;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  HttpReader reader(fd);
  Reply reply;
  absl::StatusOr<std::string> text = reader.ReadHead();
  if (!text.ok() || text->empty()) return;
  absl::StatusOr<RequestHead> req = ParseRequestHead(*text);
  std::string body;
  if (!req.ok()) {
    reply = {400, absl::StrCat(req.status().message(), "\n")};
  } else {
    absl::StatusOr<BodyFraming> framing = RequestFraming(*req);
    if (!framing.ok() || framing->kind == BodyFraming::kChunked ||
        framing->length > kMaxBody) {
      reply = {400, "request body: Content-Length up to 1 MiB only\n"};
    } else if (framing->length > 0 &&
               req->headers.HasToken("Expect", "100-continue") &&
               !SendAll(fd, "HTTP/1.1 100 Continue\r\n\r\n").ok()) {
      return;  // curl uploads wait (1 s) for this before sending the body
    } else if (!reader.ReadExactly(framing->length, &body).ok()) {
      return;
    } else {
      auto it = routes_.find(absl::StrCat(req->method, " ", req->path()));
      if (it == routes_.end()) {
        reply = {404, "not found\n"};
      } else {
        reply = it->second(body);
      }
    }
  }
  const bool json = !reply.body.empty() && reply.body[0] == '{';
  std::string out = absl::StrCat(
      "HTTP/1.1 ", reply.status, " ", ReasonPhrase(reply.status),
      "\r\nContent-Type: ", json ? "application/json" : "text/plain",
      "\r\nContent-Length: ", reply.body.size(),
      "\r\nConnection: close\r\n\r\n", reply.body);
  (void)SendAll(fd, out);
}

}  // namespace lazypull::proxy
