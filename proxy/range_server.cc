#include "proxy/range_server.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

// Parses a single "bytes=A-B" (or A-, or -N) against `size`. Returns false if
// unsatisfiable or malformed.
bool ParseSingleRange(absl::string_view value, uint64_t size, uint64_t* first,
                      uint64_t* last) {
  if (!absl::ConsumePrefix(&value, "bytes=")) return false;
  size_t dash = value.find('-');
  if (dash == absl::string_view::npos || size == 0) return false;
  absl::string_view a = value.substr(0, dash), b = value.substr(dash + 1);
  uint64_t x, y;
  if (a.empty()) {
    if (!absl::SimpleAtoi(b, &y) || y == 0) return false;
    *first = y >= size ? 0 : size - y;
    *last = size - 1;
    return true;
  }
  if (!absl::SimpleAtoi(a, &x) || x >= size) return false;
  *first = x;
  *last = size - 1;
  if (!b.empty()) {
    if (!absl::SimpleAtoi(b, &y) || y < x) return false;
    *last = std::min(y, size - 1);
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RangeServer>> RangeServer::Start() {
  std::unique_ptr<RangeServer> s(new RangeServer());
  ASSIGN_OR_RETURN(
      s->server_, TcpServer::Start(0, [p = s.get()](int fd) { p->Serve(fd); }));
  return s;
}

void RangeServer::Put(const std::string& path, std::string bytes,
                      bool chunked) {
  absl::MutexLock lock(&mu_);
  blobs_[path] = Blob{std::move(bytes), chunked};
}

std::string RangeServer::Get(const std::string& path) const {
  absl::MutexLock lock(&mu_);
  auto it = blobs_.find(path);
  return it == blobs_.end() ? "" : it->second.bytes;
}

std::vector<RequestHead> RangeServer::requests() const {
  absl::MutexLock lock(&mu_);
  return requests_;
}

void RangeServer::Serve(int fd) {
  HttpReader reader(fd);
  while (true) {
    absl::StatusOr<std::string> text = reader.ReadHead();
    if (!text.ok() || text->empty()) return;
    absl::StatusOr<RequestHead> req = ParseRequestHead(*text);
    if (!req.ok()) return;
    absl::StatusOr<BodyFraming> framing = RequestFraming(*req);
    if (!framing.ok()) return;
    std::string body;
    if (framing->kind == BodyFraming::kLength) {
      if (!reader.ReadExactly(framing->length, &body).ok()) return;
    } else if (framing->kind == BodyFraming::kChunked) {
      while (true) {
        absl::StatusOr<std::string> line = reader.ReadLine();
        uint64_t n = 0;
        if (!line.ok() ||
            !absl::SimpleHexAtoi(absl::StripAsciiWhitespace(*line), &n)) {
          return;
        }
        if (n == 0) {
          absl::StatusOr<std::string> end = reader.ReadLine();
          if (!end.ok()) return;
          break;
        }
        if (!reader.ReadExactly(n, &body).ok()) return;
        if (!reader.ReadLine().ok()) return;
      }
    }
    const std::string path(req->path());
    Blob blob;
    bool found;
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*req);
      if (req->method == "PUT" || req->method == "POST") {
        blobs_[path] = Blob{body, false};
      }
      auto it = blobs_.find(path);
      found = it != blobs_.end();
      if (found) blob = it->second;
    }
    std::string out;
    if (req->method == "PUT" || req->method == "POST") {
      out = "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    } else if (!found) {
      out = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    } else {
      const std::string* range = req->headers.Get("Range");
      uint64_t first = 0, last = 0;
      const uint64_t size = blob.bytes.size();
      std::string payload = blob.bytes;
      std::string status = "200 OK", extra;
      if (range != nullptr && !absl::StrContains(*range, ',')) {
        if (!ParseSingleRange(*range, size, &first, &last)) {
          out = absl::StrCat(
              "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */",
              size, "\r\nContent-Length: 0\r\n\r\n");
        } else {
          status = "206 Partial Content";
          extra = absl::StrCat("Content-Range: bytes ", first, "-", last, "/",
                               size, "\r\n");
          payload = blob.bytes.substr(first, last - first + 1);
        }
      }
      if (out.empty()) {
        out = absl::StrCat("HTTP/1.1 ", status, "\r\nAccept-Ranges: bytes\r\n",
                           extra);
        if (blob.chunked) {
          out += "Transfer-Encoding: chunked\r\n\r\n";
          if (req->method != "HEAD") {
            // Uneven chunks, so tests cross chunk boundaries.
            for (size_t at = 0; at < payload.size();) {
              size_t n = std::min<size_t>(1000 + at % 777, payload.size() - at);
              absl::StrAppend(&out, absl::Hex(n), "\r\n",
                              absl::string_view(payload).substr(at, n), "\r\n");
              at += n;
            }
            out += "0\r\n\r\n";
          }
        } else {
          absl::StrAppend(&out, "Content-Length: ", payload.size(), "\r\n\r\n");
          if (req->method != "HEAD") out += payload;
        }
      }
    }
    if (!SendAll(fd, out).ok()) return;
    if (WantsClose(req->version, req->headers)) return;
  }
}

}  // namespace lazypull::proxy
