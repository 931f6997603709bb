// The HTTP interface of lazypull: requests, responses and the transport that
// runs them. No curl here: //fetch:curl_http implements it, and everything
// above (registry client, puller, blob sources) is written against this
// header only.
//
// Contract of every HttpTransport:
//  - Retries happen here and nowhere else. Connection errors, 429 and 5xx
//    (except 501/505) are retried with exponential backoff and jitter,
//    honouring Retry-After; a caller sees the final outcome only. An
//    exhausted retry is final and its error names the request, the attempt
//    count and the last failure. Other statuses (2xx, 3xx, 4xx) are handed to
//    the caller as responses, not errors: redirects are never followed by the
//    transport (the registry client follows them itself, to drop credentials).
//  - A request carrying a single-range `Range: bytes=a-b` / `bytes=a-` header
//    must be answered by a 206 whose Content-Range starts at `a` (and ends at
//    `b`, when given) and whose body has exactly that length; a 200 to a range
//    request is an error (FailedPrecondition), never trusted.
//  - A body that breaks off after some bytes were delivered is resumed with a
//    range request from the first missing byte (validated as above), so a
//    streaming reader sees one continuous body or a final error.
//  - Response header names are lower-case; values are trimmed.
//  - Error statuses never contain request headers (credentials live there).
//
// Thread-safety: HttpTransport implementations are safe to use from any
// number of threads at once. An HttpBodyReader is used by one thread at a
// time; it may be destroyed from any thread (an unfinished transfer is
// cancelled).
#ifndef LAZYPULL_FETCH_HTTP_H_
#define LAZYPULL_FETCH_HTTP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace lazypull {

// Response headers, in arrival order, names lower-case.
class HttpHeaders {
 public:
  void Add(std::string name, std::string value);
  // The first value of `name` (lower-case), if any.
  std::optional<std::string> Get(absl::string_view name) const;
  // Every value of `name`, in order (e.g. several WWW-Authenticate).
  std::vector<std::string> GetAll(absl::string_view name) const;
  const std::vector<std::pair<std::string, std::string>>& entries() const {
    return entries_;
  }
  void Clear() { entries_.clear(); }

 private:
  std::vector<std::pair<std::string, std::string>> entries_;
};

enum class HttpVersion : uint8_t { kUnknown, kHttp10, kHttp11, kHttp2 };
const char* HttpVersionName(HttpVersion v);

// TLS settings of one request. Verification is on unless turned off.
struct TlsOptions {
  // Verify the peer's certificate chain and host name (default true).
  bool verify = true;
  // PEM files of extra trusted CAs, added to the system's (default none).
  std::vector<std::string> ca_files;
  // A client certificate for servers that ask for one (mutual TLS): PEM
  // files of the certificate and of its key (empty: the key is in the
  // certificate's file). Default none.
  std::string client_cert;
  std::string client_key;
};

// When and how often the transport retries.
struct RetryPolicy {
  // Attempts in all, the first included (default 5, as the reference).
  int max_attempts = 5;
  // Backoff before the second attempt (default 30 ms), doubling each time up
  // to max_backoff (default 2 s); each wait is drawn uniformly from
  // [backoff/2, backoff] (jitter).
  absl::Duration initial_backoff = absl::Milliseconds(30);
  absl::Duration max_backoff = absl::Seconds(2);
  // A Retry-After longer than this (default 30 s) ends the retries at once.
  absl::Duration max_retry_after = absl::Seconds(30);
};

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, POST, PUT, PATCH, DELETE
  std::string url;
  // Request headers, sent verbatim ("Authorization", "Range", "Accept"...).
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // sent when non-empty (POST/PUT/PATCH)
  // A body sent from this file instead (when non-empty; `body` must then be
  // empty, the method PUT, POST or PATCH): streamed, never held in memory,
  // Content-Length its size when the request starts. Every attempt (retries
  // included) sends it from its first byte. A file that cannot be opened fails
  // the request (NotFound,
  // ...); one that shrinks while being sent fails it with DataLoss.
  std::string body_file;
  TlsOptions tls;
  RetryPolicy retry;
  // Total time for one attempt (default 30 s). Zero: no total limit, for
  // streamed bodies of any size; the stall limit still applies.
  absl::Duration timeout = absl::Seconds(30);
  absl::Duration connect_timeout = absl::Seconds(10);
  // An attempt whose body averages under `stall_bytes_per_second` over
  // `stall_timeout` fails (defaults: 30 s at 1 byte/s, i.e. no progress for
  // 30 s). Time a reader spends not reading does not count.
  absl::Duration stall_timeout = absl::Seconds(30);
  uint64_t stall_bytes_per_second = 1;
  // HTTP/2 stream weight, 1 to 256 (0: the protocol's default, 16). A hint
  // only: servers that schedule by RFC 7540 priorities send heavier streams'
  // frames first; others ignore it (and HTTP/1.1 has none).
  int stream_weight = 0;

  // For error messages: "GET https://host/path" (never headers or query
  // values that may be signed).
  std::string Describe() const;
};

struct HttpResponse {
  int status = 0;
  HttpHeaders headers;
  // The whole body (Fetch), or empty for a reader (the reader yields it).
  std::string body;
  HttpVersion version = HttpVersion::kUnknown;
  // New connections opened by the final attempt (CURLINFO_NUM_CONNECTS): 0
  // means it reused one.
  int64_t new_connections = 0;
  int attempts = 1;  // attempts the transport made
};

// A response whose body is read incrementally. Body bytes are buffered in a
// bounded window; when the reader falls behind, the transfer pauses (no
// unbounded memory for big blobs) and resumes as the reader catches up.
class HttpBodyReader {
 public:
  virtual ~HttpBodyReader() = default;
  // Status line and headers of the response (body empty).
  virtual const HttpResponse& response() const = 0;
  // Up to `max` next body bytes; an empty view is the end of the body. The
  // view stays valid until the next call. A failure is final.
  virtual absl::StatusOr<absl::string_view> Read(size_t max) = 0;

  // Reads body bytes into `dst` until it is full or the body ends, and
  // returns how many it wrote (fewer than dst.size() only at the end of the
  // body). `progress(n)`, when given, is called on this thread as each batch
  // of n more bytes has landed in `dst`, so that a caller can account for
  // delivery while the transfer runs. Bytes beyond `dst` are left for
  // Read(). A failure is final. This default copies from Read(); a transport
  // may have the body written into `dst` directly, saving a copy.
  virtual absl::StatusOr<size_t> ReadInto(
      absl::Span<char> dst, const std::function<void(size_t)>& progress);
};

class HttpTransport {
 public:
  virtual ~HttpTransport() = default;

  // Runs `req` and returns the response with its whole body (at most
  // `max_body` bytes: ResourceExhausted beyond).
  virtual absl::StatusOr<HttpResponse> Fetch(const HttpRequest& req,
                                             size_t max_body = 64 << 20) = 0;

  // Runs `req` and returns once the final response's headers are in; the
  // body is then read from the returned reader.
  virtual absl::StatusOr<std::unique_ptr<HttpBodyReader>> Open(
      const HttpRequest& req) = 0;

  // Streaming with callbacks: `on_data` gets each piece of the body (on the
  // calling thread); a non-OK return cancels the transfer and is returned.
  // The response's body is left empty.
  absl::StatusOr<HttpResponse> Stream(
      const HttpRequest& req,
      const std::function<absl::Status(absl::string_view)>& on_data);
};

// The HTTP status domain into absl::Status: 2xx/3xx are OK; otherwise the
// code follows the status (401 Unauthenticated, 403 PermissionDenied, 404
// NotFound, 416 OutOfRange, 429 ResourceExhausted, 5xx Unavailable, ...) and
// the message is "<what>: HTTP <status> <reason>", plus `detail` if given.
// The standard reason phrase of an HTTP status ("Partial Content"), or "".
const char* HttpReasonPhrase(int status);

absl::Status HttpStatusToStatus(int status, absl::string_view what,
                                absl::string_view detail = "");

// The error a range request answered with a 200 (the whole resource: the
// server ignores Range) ends with: FailedPrecondition, marked so that a
// caller can tell a server that cannot serve ranges from other failures.
// Wrappers that add context keep the mark (Restated, core/status_macros.h).
absl::Status RangeIgnoredError(absl::string_view message);
bool IsRangeIgnored(const absl::Status& s);

// Whether a status is worth retrying: 408, 429 and 5xx except 501 and 505.
bool IsRetryableHttpStatus(int status);

// Retry-After: delta-seconds or an HTTP-date (RFC 9110 §10.2.3), relative to
// `now`. nullopt if absent or unparsable.
std::optional<absl::Duration> ParseRetryAfter(absl::string_view value,
                                              absl::Time now);

// A single byte range "bytes=first-last" (last absent: to the end).
struct ByteRange {
  uint64_t first = 0;
  std::optional<uint64_t> last;
};
// Parses a Range request header holding exactly one range. nullopt for
// multi-range or suffix ranges (the transport leaves those to the caller).
std::optional<ByteRange> ParseRangeHeader(absl::string_view value);

// Content-Range: "bytes first-last/total" (total may be "*").
struct ContentRange {
  uint64_t first = 0;
  uint64_t last = 0;
  std::optional<uint64_t> total;
};
absl::StatusOr<ContentRange> ParseContentRange(absl::string_view value);

// Resolves `location` (a URL, or a reference relative to `base`: "//host/...",
// "/path", "path", "?query", "#fragment", with "." and ".." segments)
// against `base`, as RFC 3986 section 5.2 does.
std::string ResolveUrl(absl::string_view base, absl::string_view location);

// Percent-encodes everything but RFC 3986 unreserved characters.
std::string UrlQueryEscape(absl::string_view s);

// scheme://host[:port] of a URL, and the host[:port] part alone.
std::string UrlOrigin(absl::string_view url);
std::string UrlHost(absl::string_view url);

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_HTTP_H_
