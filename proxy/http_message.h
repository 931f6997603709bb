// HTTP/1.1 message heads and body framing, as much as a reverse proxy needs
// to read, rewrite and re-send messages (RFC 9112): request and status
// lines, header fields (order and case kept), Content-Length / chunked /
// close-delimited bodies, and a blocking buffered reader over a socket.
//
// Not a general HTTP library: no header folding (obsolete, refused), no
// trailers interpretation (forwarded as read), no HTTP/2.
//
// Thread-safety: value types; an HttpReader is used by one thread at a time.
#ifndef LAZYPULL_PROXY_HTTP_MESSAGE_H_
#define LAZYPULL_PROXY_HTTP_MESSAGE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazypull::proxy {

// Header fields in arrival order; names compared case-insensitively.
class HttpHeaders {
 public:
  // The first value of `name`, or nullptr.
  const std::string* Get(absl::string_view name) const;
  bool Has(absl::string_view name) const { return Get(name) != nullptr; }
  void Add(absl::string_view name, absl::string_view value);
  // Replaces every field named `name` by one (appended if absent).
  void Set(absl::string_view name, absl::string_view value);
  void Remove(absl::string_view name);
  // Whether a comma-separated field (Connection, Transfer-Encoding) lists
  // `token`, case-insensitively, in any of its fields.
  bool HasToken(absl::string_view name, absl::string_view token) const;

  const std::vector<std::pair<std::string, std::string>>& fields() const {
    return fields_;
  }
  // "Name: value\r\n" per field.
  void AppendTo(std::string* out) const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

struct RequestHead {
  std::string method;   // "GET"
  std::string target;   // "/v2/x/blobs/sha256:...?a=b" (origin form)
  std::string version;  // "HTTP/1.1"
  HttpHeaders headers;

  // The target up to '?'.
  absl::string_view path() const;
  // The request line, headers and the blank line.
  std::string Serialize() const;
};

struct ResponseHead {
  std::string version = "HTTP/1.1";
  int status = 0;
  std::string reason;
  HttpHeaders headers;

  std::string Serialize() const;
};

// Parse a head (start line, fields, the blank line; as ReadHead returns it).
absl::StatusOr<RequestHead> ParseRequestHead(absl::string_view text);
absl::StatusOr<ResponseHead> ParseResponseHead(absl::string_view text);

// The standard reason phrase ("Partial Content"), or "Status".
const char* ReasonPhrase(int status);

// How a message body is delimited (RFC 9112 section 6.3).
struct BodyFraming {
  enum Kind { kNone, kLength, kChunked, kUntilClose };
  Kind kind = kNone;
  uint64_t length = 0;  // kLength only
};

// A request has a body only with Content-Length or chunked coding.
absl::StatusOr<BodyFraming> RequestFraming(const RequestHead& head);
// No body for HEAD, 1xx, 204 and 304; otherwise chunked, Content-Length, or
// until the connection closes.
absl::StatusOr<BodyFraming> ResponseFraming(const ResponseHead& head,
                                            absl::string_view request_method);
// Whether the sender closes after this message: "Connection: close", or
// HTTP/1.0 without "Connection: keep-alive".
bool WantsClose(absl::string_view version, const HttpHeaders& headers);

// A blocking, buffered reader over a connected socket.
class HttpReader {
 public:
  explicit HttpReader(int fd) : fd_(fd) {}

  // Reads a message head through its blank line (leading empty lines are
  // skipped, RFC 9112 2.2). Returns "" if the peer closed before sending a
  // byte; an error if it closed mid-head or the head exceeds `max_bytes`.
  absl::StatusOr<std::string> ReadHead(size_t max_bytes = 64 * 1024);
  // One line through CRLF (or LF), without it; error at EOF or over `max`.
  absl::StatusOr<std::string> ReadLine(size_t max_bytes = 8 * 1024);
  // Up to `max` bytes, buffered ones first; 0 means EOF.
  absl::StatusOr<size_t> ReadSome(char* dst, size_t max);
  // Exactly `n` bytes appended to `out`; error at an early EOF.
  absl::Status ReadExactly(size_t n, std::string* out);

 private:
  // Reads more from the socket into buf_; false at EOF.
  absl::StatusOr<bool> Fill();

  int fd_;
  std::string buf_;
  size_t pos_ = 0;
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_HTTP_MESSAGE_H_
