#include "fetch/curl_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <queue>
#include <random>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/thread_priority.h"

namespace lazypull {

absl::Status CurlCodeToStatus(CURLcode code, absl::string_view what,
                              absl::string_view detail) {
  if (code == CURLE_OK) return absl::OkStatus();
  absl::StatusCode sc;
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      sc = absl::StatusCode::kDeadlineExceeded;
      break;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
      sc = absl::StatusCode::kUnavailable;
      break;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
      sc = absl::StatusCode::kFailedPrecondition;
      break;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      sc = absl::StatusCode::kInvalidArgument;
      break;
    case CURLE_ABORTED_BY_CALLBACK:
    case CURLE_WRITE_ERROR:
      sc = absl::StatusCode::kAborted;
      break;
    case CURLE_OUT_OF_MEMORY:
      sc = absl::StatusCode::kResourceExhausted;
      break;
    default:
      sc = absl::StatusCode::kUnknown;
      break;
  }
  std::string msg = absl::StrCat(what, ": ", curl_easy_strerror(code),
                                 " (curl error ", static_cast<int>(code), ")");
  if (!detail.empty()) absl::StrAppend(&msg, ": ", detail);
  return absl::Status(sc, msg);
}

absl::Status CurlMCodeToStatus(CURLMcode code, absl::string_view what) {
  if (code == CURLM_OK) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", curl_multi_strerror(code),
                                          " (curl multi error ",
                                          static_cast<int>(code), ")"));
}

bool IsRetryableCurlCode(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    // (A reset in the TLS handshake, a DNS answer "try again": a load
    // balancer or resolver of the moment, as the reference retries them.
    // A certificate that does not verify is another code, final.)
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

namespace {

// What a reader and the loop share about one request.
struct Channel {
  absl::Mutex mu;
  absl::CondVar cv;
  bool headers_ready ABSL_GUARDED_BY(mu) = false;  // response is final
  HttpResponse response ABSL_GUARDED_BY(mu);
  std::string buf ABSL_GUARDED_BY(mu);      // body bytes not read yet
  bool done ABSL_GUARDED_BY(mu) = false;    // no more bytes will come
  absl::Status status ABSL_GUARDED_BY(mu);  // the final error, if done
  bool paused ABSL_GUARDED_BY(mu) = false;  // the loop paused the transfer
  bool cancelled ABSL_GUARDED_BY(mu) = false;
  // Every byte a 206's Content-Range promised has arrived (the transfer may
  // still wait for the server to end the stream).
  bool body_complete ABSL_GUARDED_BY(mu) = false;
  // While a reader waits in ReadInto, body bytes go straight to
  // sink[sink_len, sink_cap) instead of `buf`; the reader is woken every
  // kSinkWakeBytes, when the sink is full, when the transfer ends, and
  // when bytes have waited kSinkWakeDelay for a wake (a slow or pausing
  // server: a streaming reader gets what came, not only every 256 KiB).
  char* sink ABSL_GUARDED_BY(mu) = nullptr;
  size_t sink_cap ABSL_GUARDED_BY(mu) = 0;
  size_t sink_len ABSL_GUARDED_BY(mu) = 0;
  size_t sink_woken ABSL_GUARDED_BY(mu) = 0;
  // When the oldest sink byte the reader was not woken for landed.
  absl::Time unwoken_since ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
};

constexpr size_t kSinkWakeBytes = 256 << 10;
constexpr absl::Duration kSinkWakeDelay = absl::Milliseconds(1);

// Reads the system CA bundle once.
const std::string& SystemCaBundle() {
  static const std::string* bundle = [] {
    auto* s = new std::string;
    const curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
    std::vector<std::string> candidates;
    if (v->cainfo != nullptr) candidates.emplace_back(v->cainfo);
    candidates.emplace_back("/etc/ssl/certs/ca-certificates.crt");
    for (const std::string& path : candidates) {
      std::ifstream in(path, std::ios::binary);
      if (!in) continue;
      std::stringstream ss;
      ss << in.rdbuf();
      *s = ss.str();
      break;
    }
    return s;
  }();
  return *bundle;
}

absl::StatusOr<std::string> CaBlob(const std::vector<std::string>& files) {
  std::string blob = SystemCaBundle();
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot read CA file ", f));
    }
    std::stringstream ss;
    ss << in.rdbuf();
    if (ss.str().find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return absl::FailedPreconditionError(
          absl::StrCat("CA file ", f, " holds no PEM certificate"));
    }
    absl::StrAppend(&blob, "\n", ss.str(), "\n");
  }
  return blob;
}

}  // namespace

// ---------------------------------------------------------------------------
// The event loop.

class CurlHttpTransport::Loop {
 public:
  explicit Loop(const CurlHttpOptions& o)
      : opts_(o), rng_(std::random_device{}()) {}
  ~Loop();

  absl::Status Start();
  // Queues a new request; returns the channel its reader waits on.
  absl::StatusOr<std::shared_ptr<Channel>> Submit(const HttpRequest& req,
                                                  uint64_t* id);
  void Resume(uint64_t id);
  void Cancel(uint64_t id);
  void CancelAll();
  size_t window() const { return opts_.reader_window; }

  Stats stats() const {
    Stats s;
    s.requests = requests_.load();
    s.attempts = attempts_.load();
    s.connections = connections_.load();
    return s;
  }

 private:
  struct Transfer {
    uint64_t id = 0;
    Loop* loop = nullptr;
    HttpRequest req;
    std::shared_ptr<const std::string> ca_blob;  // null: curl's default
    std::shared_ptr<Channel> ch;
    CURL* easy = nullptr;
    curl_slist* headers = nullptr;
    char errbuf[CURL_ERROR_SIZE] = {0};
    int attempt = 0;
    std::optional<ByteRange> range;  // the caller's single range, if any
    bool revealed = false;           // the reader has the headers
    int revealed_status = 0;
    uint64_t delivered = 0;  // body bytes handed to the reader
    // Body bytes of this attempt to drop: a resumed body answered with the
    // whole resource (200) repeats the `delivered` bytes first.
    uint64_t skip = 0;
    // The current attempt.
    HttpHeaders hdrs;
    int status = 0;
    bool headers_done = false;
    bool discard = false;    // a retryable status: body is dropped
    std::string error_body;  // its first bytes, for the message
    uint64_t attempt_body = 0;
    std::optional<uint64_t> expected;  // body length a 206 promised
    absl::Status fatal;                // set by a callback to end it all
    // HttpRequest::body_file, open for the whole transfer; each attempt
    // sends it from offset 0.
    int body_fd = -1;
    uint64_t body_size = 0;
    uint64_t body_pos = 0;  // the current attempt's next byte

    Transfer() = default;
    Transfer(const Transfer&) = delete;
    Transfer& operator=(const Transfer&) = delete;
    ~Transfer() {
      if (body_fd >= 0) close(body_fd);
    }
  };
  enum class CommandKind { kStart, kResume, kCancel, kCancelAll };
  struct Command {
    CommandKind kind;
    uint64_t id;
    std::unique_ptr<Transfer> transfer;  // kStart
  };

  void Run();
  // Wakes readers whose sink bytes have waited kSinkWakeDelay; returns
  // whether others still wait (the loop then comes back within 1 ms).
  bool WakeWaitingReaders();
  void Wake();
  void StartAttempt(Transfer* t);
  void ReleaseEasy(Transfer* t);
  void Finish(Transfer* t, absl::Status st);
  void OnDone(Transfer* t, CURLcode code);
  void ScheduleRetry(Transfer* t, const absl::Status& why,
                     std::optional<absl::Duration> retry_after);
  absl::Duration Backoff(const Transfer& t);
  void RevealHeaders(Transfer* t);
  size_t OnHeaderLine(Transfer* t, absl::string_view line);
  size_t OnBody(Transfer* t, const char* data, size_t n);

  static size_t HeaderCb(char* data, size_t size, size_t n, void* p);
  static size_t WriteCb(char* data, size_t size, size_t n, void* p);
  static size_t ReadCb(char* data, size_t size, size_t n, void* p);
  static int SeekCb(void* p, curl_off_t offset, int origin);
  static curl_socket_t OpenSocketCb(void* p, curlsocktype purpose,
                                    curl_sockaddr* address);
  static int CloseSocketCb(void* p, curl_socket_t s);
  // Shuts down the connection `easy`'s last attempt used, if it is open.
  void ShutDownConnectionOf(CURL* easy);

  const CurlHttpOptions opts_;
  CURLM* multi_ = nullptr;
  std::thread thread_;

  absl::Mutex mu_;
  std::vector<Command> commands_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_all_ ABSL_GUARDED_BY(mu_) = false;  // CancelAll() was called
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // CA bundles by the list of extra files they hold.
  absl::flat_hash_map<std::string, std::shared_ptr<const std::string>> ca_blobs_
      ABSL_GUARDED_BY(mu_);

  // Loop thread only.
  absl::flat_hash_map<uint64_t, std::unique_ptr<Transfer>> transfers_;
  std::priority_queue<std::pair<absl::Time, uint64_t>,
                      std::vector<std::pair<absl::Time, uint64_t>>,
                      std::greater<>>
      timers_;
  std::mt19937_64 rng_;
  // The connections' sockets curl has open (its open/close socket
  // callbacks), so that one can be found, while surely still curl's, by its
  // ports.
  absl::flat_hash_set<curl_socket_t> sockets_;

  std::atomic<int64_t> requests_{0}, attempts_{0}, connections_{0};
};

CurlHttpTransport::Loop::~Loop() {
  if (thread_.joinable()) {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
    }
    Wake();
    thread_.join();
  }
  if (multi_ != nullptr) curl_multi_cleanup(multi_);
}

absl::Status CurlHttpTransport::Loop::Start() {
  static std::once_flag once;
  static CURLcode init_rc = CURLE_OK;
  std::call_once(once, [] { init_rc = curl_global_init(CURL_GLOBAL_ALL); });
  if (init_rc != CURLE_OK) return CurlCodeToStatus(init_rc, "curl_global_init");
  multi_ = curl_multi_init();
  if (multi_ == nullptr) return absl::InternalError("curl_multi_init failed");
  CURLMcode mc = curl_multi_setopt(multi_, CURLMOPT_PIPELINING,
                                   static_cast<long>(CURLPIPE_MULTIPLEX));
  if (mc == CURLM_OK) {
    mc = curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS,
                           static_cast<long>(opts_.max_connections_per_host));
  }
  if (mc == CURLM_OK) {
    mc = curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS,
                           static_cast<long>(opts_.max_cached_connections));
  }
  if (mc == CURLM_OK) {
    mc = curl_multi_setopt(multi_, CURLMOPT_MAX_CONCURRENT_STREAMS,
                           static_cast<long>(opts_.max_streams_per_connection));
  }
  if (mc != CURLM_OK) return CurlMCodeToStatus(mc, "curl_multi_setopt");
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void CurlHttpTransport::Loop::Wake() {
  CURLMcode mc = curl_multi_wakeup(multi_);
  (void)mc;  // only fails on a bad handle, which Start rules out
}

absl::StatusOr<std::shared_ptr<Channel>> CurlHttpTransport::Loop::Submit(
    const HttpRequest& req, uint64_t* id_out) {
  auto t = std::make_unique<Transfer>();
  t->req = req;
  for (const auto& [k, v] : req.headers) {
    if (absl::EqualsIgnoreCase(k, "range")) t->range = ParseRangeHeader(v);
  }
  if (!req.tls.ca_files.empty()) {
    // Built once per set of files (a PEM bundle is ~200 KB).
    const std::string key = absl::StrJoin(req.tls.ca_files, "\n");
    {
      absl::MutexLock l(&mu_);
      auto it = ca_blobs_.find(key);
      if (it != ca_blobs_.end()) t->ca_blob = it->second;
    }
    if (t->ca_blob == nullptr) {
      absl::StatusOr<std::string> blob = CaBlob(req.tls.ca_files);
      if (!blob.ok()) {
        return absl::Status(
            blob.status().code(),
            absl::StrCat(req.Describe(), ": ", blob.status().message()));
      }
      t->ca_blob = std::make_shared<const std::string>(*std::move(blob));
      absl::MutexLock l(&mu_);
      ca_blobs_[key] = t->ca_blob;
    }
  }
  if (!req.body_file.empty()) {
    if (!req.body.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          req.Describe(), ": a request has a body or a body file, not both"));
    }
    if (req.method != "PUT" && req.method != "POST" && req.method != "PATCH") {
      return absl::InvalidArgumentError(absl::StrCat(
          req.Describe(), ": a body file goes with PUT, POST or PATCH"));
    }
    t->body_fd = open(req.body_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (t->body_fd < 0) {
      return ErrnoToStatus(
          errno, absl::StrCat(req.Describe(), ": open body ", req.body_file));
    }
    struct stat st;
    if (fstat(t->body_fd, &st) != 0) {
      return ErrnoToStatus(
          errno, absl::StrCat(req.Describe(), ": stat body ", req.body_file));
    }
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          req.Describe(), ": body ", req.body_file, " is not a regular file"));
    }
    t->body_size = static_cast<uint64_t>(st.st_size);
  }
  t->ch = std::make_shared<Channel>();
  std::shared_ptr<Channel> ch = t->ch;
  {
    absl::MutexLock l(&mu_);
    if (stop_ || cancel_all_) {
      return absl::CancelledError(
          absl::StrCat(req.Describe(), ": HTTP transport shut down"));
    }
    t->id = next_id_++;
    t->loop = this;
    uint64_t id = t->id;
    *id_out = id;
    commands_.push_back({CommandKind::kStart, id, std::move(t)});
  }
  requests_.fetch_add(1);
  Wake();
  return ch;
}

void CurlHttpTransport::Loop::Resume(uint64_t id) {
  {
    absl::MutexLock l(&mu_);
    commands_.push_back({CommandKind::kResume, id, nullptr});
  }
  Wake();
}

bool CurlHttpTransport::Loop::WakeWaitingReaders() {
  const absl::Time now = absl::Now();
  bool pending = false;
  for (auto& [id, t] : transfers_) {
    Channel& c = *t->ch;
    absl::MutexLock l(&c.mu);
    if (c.unwoken_since == absl::InfiniteFuture()) continue;
    if (c.sink == nullptr || c.sink_len == c.sink_woken) {
      c.unwoken_since = absl::InfiniteFuture();
    } else if (now - c.unwoken_since >= kSinkWakeDelay) {
      c.sink_woken = c.sink_len;
      c.unwoken_since = absl::InfiniteFuture();
      c.cv.SignalAll();
    } else {
      pending = true;
    }
  }
  return pending;
}

void CurlHttpTransport::Loop::Cancel(uint64_t id) {
  {
    absl::MutexLock l(&mu_);
    commands_.push_back({CommandKind::kCancel, id, nullptr});
  }
  Wake();
}

void CurlHttpTransport::Loop::CancelAll() {
  {
    absl::MutexLock l(&mu_);
    cancel_all_ = true;
    commands_.push_back({CommandKind::kCancelAll, 0, nullptr});
  }
  Wake();
}

void CurlHttpTransport::Loop::Run() {
  NameThisThread(opts_.thread_nice > 0 ? "lp-http-bg" : "lp-http");
  if (opts_.thread_nice > 0) {
    absl::Status st = LowerThisThreadPriority(opts_.thread_nice);
    if (!st.ok()) LogWarning("HTTP event loop: ", st.message());
  }
  while (true) {
    std::vector<Command> cmds;
    bool stop;
    {
      absl::MutexLock l(&mu_);
      cmds.swap(commands_);
      stop = stop_;
    }
    if (stop) {
      // Requests started as the transport shut down end below with the
      // others (their readers wait on the channel: never drop them).
      for (Command& c : cmds) {
        if (c.kind == CommandKind::kStart) {
          transfers_[c.id] = std::move(c.transfer);
        }
      }
      break;
    }
    for (Command& c : cmds) {
      if (c.kind == CommandKind::kCancelAll) {
        std::vector<Transfer*> all;
        for (auto& [id, t] : transfers_) all.push_back(t.get());
        for (Transfer* t : all) {
          Finish(t, absl::CancelledError(absl::StrCat(
                        t->req.Describe(), ": HTTP transport shut down")));
        }
        continue;
      }
      if (c.kind == CommandKind::kStart) {
        Transfer* t = c.transfer.get();
        transfers_[c.id] = std::move(c.transfer);
        StartAttempt(t);
        continue;
      }
      auto it = transfers_.find(c.id);
      if (it == transfers_.end()) continue;  // finished meanwhile
      Transfer* t = it->second.get();
      if (c.kind == CommandKind::kResume) {
        if (t->easy != nullptr) curl_easy_pause(t->easy, CURLPAUSE_CONT);
      } else {
        Finish(t, absl::CancelledError("cancelled by the reader"));
      }
    }
    // Retries whose backoff is over.
    absl::Time now = absl::Now();
    while (!timers_.empty() && timers_.top().first <= now) {
      uint64_t id = timers_.top().second;
      timers_.pop();
      auto it = transfers_.find(id);
      if (it != transfers_.end()) StartAttempt(it->second.get());
    }
    int running = 0;
    CURLMcode mc = curl_multi_perform(multi_, &running);
    if (mc != CURLM_OK) {
      absl::Status st = CurlMCodeToStatus(mc, "curl_multi_perform");
      std::vector<Transfer*> all;
      for (auto& [id, t] : transfers_) all.push_back(t.get());
      for (Transfer* t : all) Finish(t, st);
    }
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
      if (m->msg != CURLMSG_DONE) continue;
      Transfer* t = nullptr;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &t);
      if (t != nullptr) OnDone(t, m->data.result);
    }
    int timeout_ms = 1000;
    if (!timers_.empty()) {
      absl::Duration d = timers_.top().first - absl::Now();
      timeout_ms = static_cast<int>(
          std::clamp<int64_t>(absl::ToInt64Milliseconds(d) + 1, 0, timeout_ms));
    }
    if (WakeWaitingReaders()) timeout_ms = std::min(timeout_ms, 1);
    curl_multi_poll(multi_, nullptr, 0, timeout_ms, nullptr);
  }
  std::vector<Transfer*> all;
  for (auto& [id, t] : transfers_) all.push_back(t.get());
  for (Transfer* t : all) {
    Finish(t, absl::CancelledError(absl::StrCat(t->req.Describe(),
                                                ": HTTP transport shut down")));
  }
}

void CurlHttpTransport::Loop::ReleaseEasy(Transfer* t) {
  if (t->easy != nullptr) {
    curl_multi_remove_handle(multi_, t->easy);
    curl_easy_cleanup(t->easy);
    t->easy = nullptr;
  }
  if (t->headers != nullptr) {
    curl_slist_free_all(t->headers);
    t->headers = nullptr;
  }
}

void CurlHttpTransport::Loop::Finish(Transfer* t, absl::Status st) {
  ReleaseEasy(t);
  {
    absl::MutexLock l(&t->ch->mu);
    t->ch->done = true;
    t->ch->status = std::move(st);
    t->ch->cv.SignalAll();
  }
  transfers_.erase(t->id);  // destroys *t
}

void CurlHttpTransport::Loop::StartAttempt(Transfer* t) {
  ReleaseEasy(t);
  ++t->attempt;
  attempts_.fetch_add(1);
  t->hdrs.Clear();
  t->status = 0;
  t->headers_done = false;
  t->discard = false;
  t->error_body.clear();
  t->attempt_body = 0;
  t->skip = 0;
  t->expected.reset();
  t->errbuf[0] = '\0';

  const HttpRequest& r = t->req;
  CURL* e = curl_easy_init();
  if (e == nullptr) {
    Finish(t, absl::ResourceExhaustedError(
                  absl::StrCat(r.Describe(), ": curl_easy_init failed")));
    return;
  }
  t->easy = e;
  // A resumed body asks for the bytes from the first one missing.
  std::optional<std::string> range_header;
  if (t->delivered > 0) {
    uint64_t first = (t->range ? t->range->first : 0) + t->delivered;
    range_header = absl::StrCat("bytes=", first, "-");
    if (t->range && t->range->last)
      absl::StrAppend(&*range_header, *t->range->last);
  }
  for (const auto& [k, v] : r.headers) {
    if (range_header && absl::EqualsIgnoreCase(k, "range")) continue;
    // ("Name:" with nothing after it tells curl to drop the header; "Name;"
    // sends it empty.)
    t->headers = curl_slist_append(
        t->headers,
        (v.empty() ? absl::StrCat(k, ";") : absl::StrCat(k, ": ", v)).c_str());
  }
  if (range_header) {
    t->headers = curl_slist_append(
        t->headers, absl::StrCat("Range: ", *range_header).c_str());
  }
  // No "Expect: 100-continue" round trip for uploads.
  t->headers = curl_slist_append(t->headers, "Expect:");

  curl_easy_setopt(e, CURLOPT_URL, r.url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, opts_.user_agent.c_str());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, &Loop::OpenSocketCb);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, this);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, &Loop::CloseSocketCb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, this);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Loop::HeaderCb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Loop::WriteCb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                   opts_.http2 ? static_cast<long>(CURL_HTTP_VERSION_2TLS)
                               : static_cast<long>(CURL_HTTP_VERSION_1_1));
  // Wait for a connection that can multiplex rather than open another.
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  if (r.stream_weight > 0) {
    curl_easy_setopt(e, CURLOPT_STREAM_WEIGHT,
                     static_cast<long>(std::clamp(r.stream_weight, 1, 256)));
  }
  curl_easy_setopt(
      e, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(r.connect_timeout)));
  if (r.timeout > absl::ZeroDuration()) {
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                     static_cast<long>(absl::ToInt64Milliseconds(r.timeout)));
  }
  if (r.stall_timeout > absl::ZeroDuration()) {
    // Paused transfers are exempt from curl's speed check.
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT,
                     static_cast<long>(std::clamp<uint64_t>(
                         r.stall_bytes_per_second, 1, uint64_t{1} << 30)));
    curl_easy_setopt(
        e, CURLOPT_LOW_SPEED_TIME,
        std::max<long>(
            1, static_cast<long>(absl::ToInt64Seconds(r.stall_timeout))));
  }
  if (!r.tls.client_cert.empty()) {
    curl_easy_setopt(e, CURLOPT_SSLCERT, r.tls.client_cert.c_str());
    curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(e, CURLOPT_SSLKEY,
                     r.tls.client_key.empty() ? r.tls.client_cert.c_str()
                                              : r.tls.client_key.c_str());
  }
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, r.tls.verify ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, r.tls.verify ? 2L : 0L);
  if (t->ca_blob != nullptr) {
    curl_blob blob;
    blob.data = const_cast<char*>(t->ca_blob->data());
    blob.len = t->ca_blob->size();
    blob.flags = CURL_BLOB_NOCOPY;  // t->ca_blob outlives the handle
    curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob);
  }
  if (r.method == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (r.method != "GET") {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method.c_str());
  }
  if (t->body_fd >= 0) {
    // Streamed from the file; CURLOPT_UPLOAD alone would make it a PUT, the
    // custom request above keeps POST/PATCH.
    t->body_pos = 0;
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, &Loop::ReadCb);
    curl_easy_setopt(e, CURLOPT_READDATA, t);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, &Loop::SeekCb);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                     static_cast<curl_off_t>(t->body_size));
  } else if (!r.body.empty() || r.method == "POST" || r.method == "PUT" ||
             r.method == "PATCH") {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(r.body.size()));
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r.body.data());
  }
  CURLMcode mc = curl_multi_add_handle(multi_, e);
  if (mc != CURLM_OK) {
    Finish(t, CurlMCodeToStatus(
                  mc, absl::StrCat(r.Describe(), ": curl_multi_add_handle")));
  }
}

size_t CurlHttpTransport::Loop::HeaderCb(char* data, size_t size, size_t n,
                                         void* p) {
  auto* t = static_cast<Transfer*>(p);
  return t->loop->OnHeaderLine(t, absl::string_view(data, size * n));
}

size_t CurlHttpTransport::Loop::WriteCb(char* data, size_t size, size_t n,
                                        void* p) {
  auto* t = static_cast<Transfer*>(p);
  return t->loop->OnBody(t, data, size * n);
}

size_t CurlHttpTransport::Loop::ReadCb(char* data, size_t size, size_t n,
                                       void* p) {
  auto* t = static_cast<Transfer*>(p);
  if (!t->fatal.ok()) return CURL_READFUNC_ABORT;
  const size_t want = static_cast<size_t>(
      std::min<uint64_t>(size * n, t->body_size - t->body_pos));
  if (want == 0) return 0;  // the whole file is sent
  ssize_t got;
  do {
    got = pread(t->body_fd, data, want, static_cast<off_t>(t->body_pos));
  } while (got < 0 && errno == EINTR);
  if (got < 0) {
    t->fatal = ErrnoToStatus(
        errno,
        absl::StrCat(t->req.Describe(), ": read body ", t->req.body_file));
    return CURL_READFUNC_ABORT;
  }
  if (got == 0) {
    t->fatal = absl::DataLossError(
        absl::StrCat(t->req.Describe(), ": body ", t->req.body_file,
                     " ended at byte ", t->body_pos, " of the ", t->body_size,
                     " it had when the request began"));
    return CURL_READFUNC_ABORT;
  }
  t->body_pos += static_cast<uint64_t>(got);
  return static_cast<size_t>(got);
}

int CurlHttpTransport::Loop::SeekCb(void* p, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(p);
  if (origin != SEEK_SET || offset < 0 ||
      static_cast<uint64_t>(offset) > t->body_size) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  t->body_pos = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

curl_socket_t CurlHttpTransport::Loop::OpenSocketCb(void* p,
                                                    curlsocktype purpose,
                                                    curl_sockaddr* address) {
  curl_socket_t s = socket(address->family, address->socktype | SOCK_CLOEXEC,
                           address->protocol);
  if (s < 0) return CURL_SOCKET_BAD;
  if (purpose == CURLSOCKTYPE_IPCXN) static_cast<Loop*>(p)->sockets_.insert(s);
  return s;
}

int CurlHttpTransport::Loop::CloseSocketCb(void* p, curl_socket_t s) {
  static_cast<Loop*>(p)->sockets_.erase(s);
  return close(s);
}

void CurlHttpTransport::Loop::ShutDownConnectionOf(CURL* easy) {
  long local_port = 0, peer_port = 0;
  char* peer_ip = nullptr;
  if (curl_easy_getinfo(easy, CURLINFO_LOCAL_PORT, &local_port) != CURLE_OK ||
      curl_easy_getinfo(easy, CURLINFO_PRIMARY_PORT, &peer_port) != CURLE_OK ||
      curl_easy_getinfo(easy, CURLINFO_PRIMARY_IP, &peer_ip) != CURLE_OK ||
      local_port <= 0 || peer_port <= 0 || peer_ip == nullptr) {
    return;
  }
  // "ip", port of an address.
  auto parts = [](const sockaddr_storage& a) -> std::pair<std::string, long> {
    char ip[INET6_ADDRSTRLEN] = {0};
    if (a.ss_family == AF_INET) {
      const auto& in = reinterpret_cast<const sockaddr_in&>(a);
      inet_ntop(AF_INET, &in.sin_addr, ip, sizeof(ip));
      return {ip, ntohs(in.sin_port)};
    }
    if (a.ss_family == AF_INET6) {
      const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
      inet_ntop(AF_INET6, &in6.sin6_addr, ip, sizeof(ip));
      return {ip, ntohs(in6.sin6_port)};
    }
    return {"", -1};
  };
  for (curl_socket_t s : sockets_) {
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof(local), pl = sizeof(peer);
    if (getsockname(s, reinterpret_cast<sockaddr*>(&local), &ll) == 0 &&
        getpeername(s, reinterpret_cast<sockaddr*>(&peer), &pl) == 0 &&
        parts(local).second == local_port &&
        parts(peer) == std::make_pair(std::string(peer_ip), peer_port)) {
      shutdown(s, SHUT_RDWR);
      return;
    }
  }
}

size_t CurlHttpTransport::Loop::OnHeaderLine(Transfer* t,
                                             absl::string_view line) {
  const size_t n = line.size();
  if (!t->fatal.ok()) return 0;
  if (absl::StartsWith(line, "HTTP/")) {  // a new response block
    t->hdrs.Clear();
    t->headers_done = false;
    return n;
  }
  absl::string_view trimmed = absl::StripTrailingAsciiWhitespace(line);
  if (!trimmed.empty()) {
    size_t colon = trimmed.find(':');
    if (colon != absl::string_view::npos) {
      t->hdrs.Add(std::string(trimmed.substr(0, colon)),
                  std::string(trimmed.substr(colon + 1)));
    }
    return n;
  }
  long code = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
  if (code < 200) return n;  // 100 Continue and other interim responses
  t->status = static_cast<int>(code);
  t->headers_done = true;
  const std::string what = t->req.Describe();
  if (IsRetryableHttpStatus(t->status)) {
    t->discard = true;  // the body is an error page; retried at the end
    return n;
  }
  const bool sent_range =
      t->req.method == "GET" && (t->range.has_value() || t->delivered > 0);
  if (sent_range) {
    const uint64_t want_first = (t->range ? t->range->first : 0) + t->delivered;
    std::string asked = absl::StrCat("bytes=", want_first, "-");
    if (t->range && t->range->last) absl::StrAppend(&asked, *t->range->last);
    if (t->status == 200 && !t->range) {
      // Resuming a whole-resource GET: a server that ignores Range sends
      // it all again; the bytes the reader has are dropped (the caller
      // verifies the whole body, as it would have anyway).
      t->skip = t->delivered;
      return n;
    }
    if (t->status == 200) {
      t->fatal = RangeIgnoredError(absl::StrCat(
          what, ": the server answered the range request \"", asked,
          "\" with 200 (the whole body); refusing to trust it"));
      return 0;
    }
    if (t->status == 206) {
      std::optional<std::string> cr_text = t->hdrs.Get("content-range");
      absl::StatusOr<ContentRange> cr =
          cr_text ? ParseContentRange(*cr_text)
                  : absl::InvalidArgumentError("no Content-Range header");
      bool ok = cr.ok() && cr->first == want_first;
      if (ok && t->range && t->range->last) {
        // The last byte may be clipped to the end of the resource.
        ok = cr->last == *t->range->last ||
             (cr->last < *t->range->last && cr->total &&
              cr->last + 1 == *cr->total);
      } else if (ok && cr->total) {
        ok = cr->last + 1 == *cr->total;
      }
      if (!ok) {
        t->fatal = absl::DataLossError(absl::StrCat(
            what, ": 206 answer to \"", asked, "\" has ",
            cr.ok() ? absl::StrCat("Content-Range \"", *cr_text, "\"")
                    : std::string(cr.status().message()),
            ", which does not match"));
        return 0;
      }
      t->expected = cr->last - cr->first + 1;
    } else if (t->delivered > 0) {
      t->fatal = HttpStatusToStatus(
          t->status, what,
          absl::StrCat("while resuming the body at byte ", t->delivered));
      if (t->fatal.ok()) {
        t->fatal = absl::DataLossError(
            absl::StrCat(what, ": HTTP ", t->status,
                         " while resuming the body at byte ", t->delivered));
      }
      return 0;
    }
  }
  if (t->revealed) {
    // A retried attempt: the reader already has the headers.
    if (t->delivered == 0 && t->status != t->revealed_status) {
      t->fatal = absl::DataLossError(absl::StrCat(
          what, ": the status changed to ", t->status, " on a retry"));
      return 0;
    }
    return n;
  }
  RevealHeaders(t);
  return n;
}

void CurlHttpTransport::Loop::RevealHeaders(Transfer* t) {
  long version = 0, connects = 0;
  curl_easy_getinfo(t->easy, CURLINFO_HTTP_VERSION, &version);
  curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
  HttpVersion v = HttpVersion::kUnknown;
  if (version == CURL_HTTP_VERSION_1_0) v = HttpVersion::kHttp10;
  if (version == CURL_HTTP_VERSION_1_1) v = HttpVersion::kHttp11;
  if (version == CURL_HTTP_VERSION_2_0) v = HttpVersion::kHttp2;
  absl::MutexLock l(&t->ch->mu);
  HttpResponse& r = t->ch->response;
  r.status = t->status;
  r.headers = t->hdrs;
  r.version = v;
  r.new_connections = connects;
  r.attempts = t->attempt;
  t->ch->headers_ready = true;
  t->ch->cv.SignalAll();
  t->revealed = true;
  t->revealed_status = t->status;
}

size_t CurlHttpTransport::Loop::OnBody(Transfer* t, const char* data,
                                       size_t n) {
  if (!t->fatal.ok()) return 0;
  if (t->discard) {
    if (t->error_body.size() < 512) {
      t->error_body.append(data, std::min(n, 512 - t->error_body.size()));
    }
    return n;
  }
  size_t skipped = 0;
  if (t->skip > 0) {
    skipped = static_cast<size_t>(std::min<uint64_t>(t->skip, n));
    t->skip -= skipped;
    t->attempt_body += skipped;
    if (skipped == n) return n;
    data += skipped;
    n -= skipped;
  }
  if (t->expected && t->attempt_body + n > *t->expected) {
    t->fatal = absl::DataLossError(
        absl::StrCat(t->req.Describe(), ": the server sent more than the ",
                     *t->expected, " bytes its Content-Range promised"));
    return 0;
  }
  const bool completes = t->expected && t->attempt_body + n == *t->expected;
  {
    Channel& c = *t->ch;
    absl::MutexLock l(&c.mu);
    if (c.cancelled) return 0;
    size_t sunk = 0;
    if (c.sink != nullptr) {
      sunk = std::min(n, c.sink_cap - c.sink_len);
      std::memcpy(c.sink + c.sink_len, data, sunk);
      c.sink_len += sunk;
      if (c.sink_len == c.sink_cap ||
          c.sink_len - c.sink_woken >= kSinkWakeBytes) {
        c.sink_woken = c.sink_len;
        c.unwoken_since = absl::InfiniteFuture();
        c.cv.SignalAll();
      } else if (sunk != 0 && c.unwoken_since == absl::InfiniteFuture()) {
        c.unwoken_since = absl::Now();
      }
    }
    if (sunk < n) {
      // (Part of this piece went to the sink: the rest is kept whatever the
      // window, since a pause would hand back the sunk part again.)
      // (Nor is a piece whose first bytes were skipped paused: curl
      // would hand them back too.)
      if (sunk == 0 && skipped == 0 && c.buf.size() >= opts_.reader_window) {
        c.paused = true;
        return CURL_WRITEFUNC_PAUSE;  // curl hands the same bytes back later
      }
      c.buf.append(data + sunk, n - sunk);
      c.cv.SignalAll();
    }
    if (completes) c.body_complete = true;
  }
  t->delivered += n;
  t->attempt_body += n;
  return n + skipped;
}

void CurlHttpTransport::Loop::OnDone(Transfer* t, CURLcode code) {
  long connects = 0;
  curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &connects);
  connections_.fetch_add(connects);
  if (!t->fatal.ok()) {
    Finish(t, t->fatal);
    return;
  }
  bool cancelled;
  {
    absl::MutexLock l(&t->ch->mu);
    cancelled = t->ch->cancelled;
  }
  if (cancelled) {
    Finish(t, absl::CancelledError("cancelled by the reader"));
    return;
  }
  const std::string what = t->req.Describe();
  if (code != CURLE_OK) {
    if (code == CURLE_OPERATION_TIMEDOUT) {
      // The stall may be the connection's, gone silently dead (a NAT or
      // load balancer on the path lost it). curl keeps an HTTP/2 connection
      // whose stream timed out, so the retry and every later request would
      // stall on it in turn, until TCP gave up (~15 minutes). It is shut
      // down instead: its other streams fail at once (and are retried), and
      // the next request opens a new one. A stall that was the server's
      // costs a reconnect. (HTTP/1.1: curl closed it already. The socket is
      // found by its ports among those curl has open: CURLINFO_ACTIVESOCKET
      // names none while other streams still use the connection.)
      ShutDownConnectionOf(t->easy);
    }
    absl::Status st = CurlCodeToStatus(code, what, t->errbuf);
    // (A TLS handshake that failed because the server speaks plain HTTP is
    // no passing fault: said at once, with WithHint's advice.)
    if (IsRetryableCurlCode(code) &&
        !(code == CURLE_SSL_CONNECT_ERROR &&
          absl::StrContains(t->errbuf, "wrong version number"))) {
      ScheduleRetry(t, st, std::nullopt);
    } else {
      Finish(t, st);
    }
    return;
  }
  if (t->discard) {
    std::string snippet(absl::StripAsciiWhitespace(t->error_body));
    if (snippet.size() > 200) snippet = snippet.substr(0, 200) + "...";
    absl::Status st = HttpStatusToStatus(t->status, what, snippet);
    std::optional<absl::Duration> ra;
    if (auto v = t->hdrs.Get("retry-after"))
      ra = ParseRetryAfter(*v, absl::Now());
    ScheduleRetry(t, st, ra);
    return;
  }
  if (t->skip > 0) {
    // A resume answered with a whole body shorter than what the reader
    // already has: not the same resource (or a truncated one).
    Finish(t, absl::DataLossError(absl::StrCat(
                  what, ": resumed at byte ", t->delivered,
                  ", the server answered with a whole body of only ",
                  t->attempt_body, " bytes")));
    return;
  }
  if (t->expected && t->attempt_body != *t->expected) {
    ScheduleRetry(t,
                  absl::DataLossError(absl::StrCat(
                      what, ": the body ended after ", t->attempt_body,
                      " of the ", *t->expected, " bytes promised")),
                  std::nullopt);
    return;
  }
  if (!t->revealed) RevealHeaders(t);
  Finish(t, absl::OkStatus());
}

absl::Duration CurlHttpTransport::Loop::Backoff(const Transfer& t) {
  const RetryPolicy& p = t.req.retry;
  absl::Duration b = p.initial_backoff;
  for (int i = 1; i < t.attempt && b < p.max_backoff; ++i) b *= 2;
  b = std::min(b, p.max_backoff);
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  return b * jitter(rng_);
}

void CurlHttpTransport::Loop::ScheduleRetry(
    Transfer* t, const absl::Status& why,
    std::optional<absl::Duration> retry_after) {
  const RetryPolicy& p = t->req.retry;
  const bool can_resume = t->delivered == 0 || t->req.method == "GET";
  if (t->attempt >= p.max_attempts || !can_resume) {
    Finish(t, absl::Status(
                  why.code(),
                  absl::StrCat(why.message(), " (gave up after ", t->attempt,
                               t->attempt == 1 ? " attempt)" : " attempts)")));
    return;
  }
  if (retry_after && *retry_after > p.max_retry_after) {
    Finish(t, absl::Status(
                  why.code(),
                  absl::StrCat(
                      why.message(), " (the server asked to retry after ",
                      absl::FormatDuration(*retry_after), ", longer than the ",
                      absl::FormatDuration(p.max_retry_after),
                      " allowed; gave up after ", t->attempt, " attempts)")));
    return;
  }
  absl::Duration delay = Backoff(*t);
  if (retry_after) delay = std::max(delay, *retry_after);
  ReleaseEasy(t);
  timers_.push({absl::Now() + delay, t->id});
}

// ---------------------------------------------------------------------------
// Readers and the public face.

namespace {

class CurlBodyReader : public HttpBodyReader {
 public:
  CurlBodyReader(std::weak_ptr<CurlHttpTransport::Loop> loop, uint64_t id,
                 std::shared_ptr<Channel> ch, HttpResponse meta)
      : loop_(std::move(loop)),
        id_(id),
        ch_(std::move(ch)),
        meta_(std::move(meta)) {}

  ~CurlBodyReader() override {
    bool cancel = false;
    {
      absl::MutexLock l(&ch_->mu);
      // A body that is all in is left to end by itself: resetting the
      // stream would cost nothing here, but servers that count streams
      // reset early (a "rapid reset" defence) may close the connection.
      if (!ch_->done && !ch_->body_complete) {
        ch_->cancelled = true;
        cancel = true;
      }
    }
    if (cancel) {
      if (auto loop = loop_.lock()) loop->Cancel(id_);
    }
  }

  const HttpResponse& response() const override { return meta_; }

  absl::StatusOr<absl::string_view> Read(size_t max) override {
    bool resume = false;
    {
      absl::MutexLock l(&ch_->mu);
      while (pos_ == cur_.size()) {
        if (!ch_->buf.empty()) {
          cur_.clear();
          cur_.swap(ch_->buf);
          pos_ = 0;
          if (ch_->paused) {
            ch_->paused = false;
            resume = true;
          }
          break;
        }
        if (ch_->done) {
          if (!ch_->status.ok()) return ch_->status;
          return absl::string_view();
        }
        ch_->cv.Wait(&ch_->mu);
      }
    }
    if (resume) {
      if (auto loop = loop_.lock()) loop->Resume(id_);
    }
    size_t n = std::min(max, cur_.size() - pos_);
    absl::string_view out(cur_.data() + pos_, n);
    pos_ += n;
    return out;
  }

  absl::StatusOr<size_t> ReadInto(
      absl::Span<char> dst,
      const std::function<void(size_t)>& progress) override {
    auto report = [&](size_t n) {
      if (n != 0 && progress) progress(n);
    };
    // First what was taken from the channel and not read yet, then what the
    // loop queued (taken whole, by a swap: a reader takes a member at a time
    // out of up to a window of bytes, and erasing each from the front of
    // the queue moved the rest every time: 11% of a fast-link mount's CPU),
    // then the rest straight from the loop, once the queue is empty.
    size_t got = 0;
    bool resume = false;
    while (true) {
      const size_t n = std::min(dst.size() - got, cur_.size() - pos_);
      std::memcpy(dst.data() + got, cur_.data() + pos_, n);
      pos_ += n;
      got += n;
      report(n);
      if (got == dst.size()) break;
      absl::MutexLock l(&ch_->mu);
      if (ch_->paused) {
        ch_->paused = false;
        resume = true;
      }
      if (!ch_->buf.empty()) {
        cur_.clear();
        cur_.swap(ch_->buf);
        pos_ = 0;
        continue;
      }
      ch_->sink = dst.data() + got;
      ch_->sink_cap = dst.size() - got;
      ch_->sink_len = ch_->sink_woken = 0;
      ch_->unwoken_since = absl::InfiniteFuture();
      break;
    }
    if (resume) {
      if (auto loop = loop_.lock()) loop->Resume(id_);
    }
    if (got == dst.size()) return got;
    size_t seen = 0;  // sink bytes reported
    while (got < dst.size()) {
      size_t now;
      bool end = false;
      absl::Status st;
      {
        absl::MutexLock l(&ch_->mu);
        while (ch_->sink_len == seen && !ch_->done) ch_->cv.Wait(&ch_->mu);
        now = ch_->sink_len;
        if (now == ch_->sink_cap || ch_->done) {
          end = true;
          st = ch_->status;
          ch_->sink = nullptr;
          ch_->sink_cap = ch_->sink_len = ch_->sink_woken = 0;
          ch_->unwoken_since = absl::InfiniteFuture();
        }
      }
      got += now - seen;
      report(now - seen);
      seen = now;
      if (end) {
        if (!st.ok()) return st;
        break;
      }
    }
    return got;
  }

 private:
  std::weak_ptr<CurlHttpTransport::Loop> loop_;
  const uint64_t id_;
  std::shared_ptr<Channel> ch_;
  const HttpResponse meta_;
  std::string cur_;  // bytes taken from the channel
  size_t pos_ = 0;
};

}  // namespace

CurlHttpTransport::CurlHttpTransport(std::shared_ptr<Loop> loop)
    : loop_(std::move(loop)) {}

CurlHttpTransport::~CurlHttpTransport() = default;

absl::StatusOr<std::unique_ptr<CurlHttpTransport>> CurlHttpTransport::Create(
    const CurlHttpOptions& options) {
  auto loop = std::make_shared<Loop>(options);
  absl::Status st = loop->Start();
  if (!st.ok()) return st;
  return std::unique_ptr<CurlHttpTransport>(
      new CurlHttpTransport(std::move(loop)));
}

void CurlHttpTransport::CancelAll() { loop_->CancelAll(); }

CurlHttpTransport::Stats CurlHttpTransport::stats() const {
  return loop_->stats();
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> CurlHttpTransport::Open(
    const HttpRequest& req) {
  uint64_t id = 0;
  absl::StatusOr<std::shared_ptr<Channel>> ch = loop_->Submit(req, &id);
  if (!ch.ok()) return ch.status();
  HttpResponse meta;
  {
    Channel& c = **ch;
    absl::MutexLock l(&c.mu);
    while (!c.headers_ready && !c.done) c.cv.Wait(&c.mu);
    if (!c.headers_ready) return c.status;
    meta = c.response;
  }
  return std::unique_ptr<HttpBodyReader>(
      new CurlBodyReader(loop_, id, *std::move(ch), std::move(meta)));
}

absl::StatusOr<HttpResponse> CurlHttpTransport::Fetch(const HttpRequest& req,
                                                      size_t max_body) {
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> r = Open(req);
  if (!r.ok()) return r.status();
  HttpResponse resp = (*r)->response();
  while (true) {
    absl::StatusOr<absl::string_view> piece = (*r)->Read(1 << 20);
    if (!piece.ok()) return piece.status();
    if (piece->empty()) break;
    if (resp.body.size() + piece->size() > max_body) {
      return absl::ResourceExhaustedError(
          absl::StrCat(req.Describe(), ": the body is larger than the ",
                       max_body, " bytes allowed"));
    }
    resp.body.append(piece->data(), piece->size());
  }
  return resp;
}

}  // namespace lazypull
