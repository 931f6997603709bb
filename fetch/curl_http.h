// CurlHttpTransport: the one HTTP engine of lazypull, over libcurl's multi
// interface (see fetch/http.h for the contract every transport keeps).
//
// Design (tensorstore's internal/curl, liburing's "one owner per ring"):
//  - One libcurl multi handle, owned by one event-loop thread that the
//    transport starts and joins. Other threads never touch curl handles: they
//    enqueue commands (start, resume, cancel) and wake the loop with
//    curl_multi_wakeup.
//  - HTTP/2 over TLS when the server offers it (ALPN; CURL_HTTP_VERSION_2TLS)
//    with streams multiplexed on one connection (CURLPIPE_MULTIPLEX,
//    CURLOPT_PIPEWAIT); HTTP/1.1 otherwise, with keep-alive connection reuse
//    from the multi handle's cache. Connections per host are capped.
//  - Retries (fetch/http.h) are timers of the loop, not sleeping threads.
//  - Readers get body bytes through a bounded window: a transfer whose reader
//    lags is paused (CURL_WRITEFUNC_PAUSE) and resumed from the loop when the
//    reader has drained half the window.
//  - Extra CAs are passed as one PEM blob: the system bundle followed by the
//    files of TlsOptions::ca_files (CURLOPT_CAINFO_BLOB), so both are trusted.
//
// The three foreign error domains are translated by one function each:
// CurlCodeToStatus (CURLcode), CurlMCodeToStatus (CURLMcode) here, and
// HttpStatusToStatus (fetch/http.h); each keeps the raw code in the message.
//
// Thread-safety: all public methods are safe from any thread. Destroying the
// transport fails every unfinished transfer with Cancelled; readers may
// outlive it.
#ifndef LAZYPULL_FETCH_CURL_HTTP_H_
#define LAZYPULL_FETCH_CURL_HTTP_H_

#include <curl/curl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fetch/http.h"

namespace lazypull {

struct CurlHttpOptions {
  // Connections to one host:port at once (CURLMOPT_MAX_HOST_CONNECTIONS,
  // default 6, as browsers); with HTTP/2 one connection carries them all.
  int max_connections_per_host = 6;
  // HTTP/2 streams one connection carries at once
  // (CURLMOPT_MAX_CONCURRENT_STREAMS, default 100); past it, requests open
  // further connections (up to max_connections_per_host).
  int max_streams_per_connection = 100;
  // Open connections kept in the cache for reuse (default 32).
  int max_cached_connections = 32;
  // Body bytes buffered per reader before its transfer pauses (default
  // 4 MiB).
  size_t reader_window = 4 << 20;
  // Offer HTTP/2 over TLS (default true). Plain-text HTTP is HTTP/1.1.
  bool http2 = true;
  std::string user_agent = "lazypull/0.1";
  // Nice value of the event-loop thread (default 0: the process's). A
  // transport that carries only background requests runs its loop (TLS,
  // HTTP/2 framing, body copies) at a lower CPU priority, so that the
  // threads serving blocked readers get the cores first. (A reader that
  // joins a background request in flight gets its bytes at that priority.)
  int thread_nice = 0;
};

class CurlHttpTransport : public HttpTransport {
 public:
  // Starts the event-loop thread. Internal if libcurl cannot be set up.
  static absl::StatusOr<std::unique_ptr<CurlHttpTransport>> Create(
      const CurlHttpOptions& options = {});
  ~CurlHttpTransport() override;
  CurlHttpTransport(const CurlHttpTransport&) = delete;
  CurlHttpTransport& operator=(const CurlHttpTransport&) = delete;

  absl::StatusOr<HttpResponse> Fetch(const HttpRequest& req,
                                     size_t max_body = 64 << 20) override;
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> Open(
      const HttpRequest& req) override;

  // Ends every request in flight or waiting for a retry, and every later
  // one, with Cancelled: a process shutting down stops waiting on a server
  // at once (its retries could take minutes).
  void CancelAll();

  // Counters since creation, for tests and the pull summary.
  struct Stats {
    int64_t requests = 0;     // Fetch/Open calls
    int64_t attempts = 0;     // attempts started (retries included)
    int64_t connections = 0;  // new connections (sum of NUM_CONNECTS)
  };
  Stats stats() const;

  class Loop;  // the event loop (curl_http.cc)

 private:
  explicit CurlHttpTransport(std::shared_ptr<Loop> loop);
  // Shared with readers (as weak_ptr) so that they may outlive the transport.
  std::shared_ptr<Loop> loop_;
};

// The CURLcode domain: Unavailable for connection-level failures,
// DeadlineExceeded for timeouts, FailedPrecondition for TLS verification
// failures, InvalidArgument for bad URLs. Message: "<what>: <curl's text>
// (curl error N)" plus `detail` (curl's error buffer) when given.
absl::Status CurlCodeToStatus(CURLcode code, absl::string_view what,
                              absl::string_view detail = "");

// The CURLMcode domain (always Internal: a multi-handle misuse or OOM).
absl::Status CurlMCodeToStatus(CURLMcode code, absl::string_view what);

// Whether a failed attempt with this code is worth retrying (connection
// refused/reset, timeouts, truncated bodies, HTTP/2 stream errors).
bool IsRetryableCurlCode(CURLcode code);

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_CURL_HTTP_H_
