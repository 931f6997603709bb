#include "proxy/fault_proxy.h"

#include <sys/socket.h>

#include <algorithm>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "core/json_writer.h"
#include "core/log.h"
#include "core/status_macros.h"
#include "proxy/http_message.h"

namespace lazypull::proxy {
namespace {

constexpr size_t kRelayBytes = 16 * 1024;

// Edits applied to the payload bytes of a response body (chunk framing is
// left alone, so a chunked body stays well-formed up to the fault).
struct BodyEdits {
  int64_t drop_after = -1;  // close once this many bytes were sent; -1 never
  int64_t flip_offset = -1;
  uint64_t bytes_per_second = 0;  // 0 = unpaced
};

// The error code a registry would put in its JSON body
// (distribution/distribution, docs/spec/api.md "Errors").
const char* RegistryErrorCode(int status, absl::string_view path) {
  switch (status) {
    case 401:
      return "UNAUTHORIZED";
    case 403:
      return "DENIED";
    case 404:
      return absl::StrContains(path, "/blobs/")       ? "BLOB_UNKNOWN"
             : absl::StrContains(path, "/manifests/") ? "MANIFEST_UNKNOWN"
                                                      : "NAME_UNKNOWN";
    case 429:
      return "TOOMANYREQUESTS";
    case 400:
    case 416:
    case 501:
      return "UNSUPPORTED";
    default:
      return "UNKNOWN";
  }
}

// "repository:NAME:pull" for /v2/NAME/{blobs,manifests}/..., or "".
std::string PullScope(absl::string_view path) {
  if (!absl::ConsumePrefix(&path, "/v2/")) return "";
  for (absl::string_view kind : {"/blobs/", "/manifests/"}) {
    size_t at = path.find(kind);
    if (at != absl::string_view::npos && at > 0) {
      return absl::StrCat("repository:", path.substr(0, at), ":pull");
    }
  }
  return "";
}

// Moves both positions of "bytes FIRST-LAST/LENGTH" by `shift`; other values
// are returned unchanged.
std::string ShiftContentRange(absl::string_view value, int64_t shift) {
  absl::string_view v = value;
  if (!absl::ConsumePrefix(&v, "bytes ")) return std::string(value);
  size_t dash = v.find('-');
  size_t slash = v.find('/');
  int64_t first, last;
  if (dash == absl::string_view::npos || slash == absl::string_view::npos ||
      slash < dash || !absl::SimpleAtoi(v.substr(0, dash), &first) ||
      !absl::SimpleAtoi(v.substr(dash + 1, slash - dash - 1), &last)) {
    return std::string(value);
  }
  return absl::StrCat("bytes ", first + shift, "-", last + shift,
                      v.substr(slash));
}

}  // namespace

// One client connection: reads requests, applies faults, forwards the rest
// over its own upstream connection.
class FaultProxy::Session {
 public:
  Session(FaultProxy* proxy, TcpServer* server, int client_fd,
          bool blob_storage)
      : proxy_(proxy),
        counters_(&proxy->counters_),
        server_(server),
        client_fd_(client_fd),
        client_(client_fd),
        blob_storage_(blob_storage) {}
  ~Session() { CloseUpstream(); }

  void Run();

 private:
  // Each returns whether the client connection stays open.
  bool HandleFault(const RequestHead& req, const BodyFraming& framing,
                   const FaultRule& rule);
  bool HandleBlobStorage(RequestHead req, const BodyFraming& framing);
  bool Forward(RequestHead req, const BodyFraming& framing,
               const FaultRule* rule);

  absl::Status SendToClient(absl::string_view data);
  // Sends a complete response with `body` (not sent for HEAD).
  bool Respond(const RequestHead& req, ResponseHead resp,
               absl::string_view body);
  absl::Status EnsureUpstream();
  void CloseUpstream();
  // Copies a body from `src` to `dst` (-1: discard) under `edits`; sets
  // *dropped when drop_after cut it short.
  absl::Status RelayBody(HttpReader& src, int dst, const BodyFraming& framing,
                         const BodyEdits& edits, std::atomic<uint64_t>* counter,
                         bool* dropped);

  FaultProxy* const proxy_;
  AtomicCounters* const counters_;
  TcpServer* const server_;
  const int client_fd_;
  HttpReader client_;
  const bool blob_storage_;
  UniqueFd upstream_;
  std::optional<HttpReader> upstream_reader_;
};

void FaultProxy::Session::Run() {
  while (true) {
    absl::StatusOr<std::string> text = client_.ReadHead();
    if (!text.ok() || text->empty()) return;
    counters_->bytes_from_clients.fetch_add(text->size());
    absl::StatusOr<RequestHead> req = ParseRequestHead(*text);
    absl::StatusOr<BodyFraming> framing =
        req.ok() ? RequestFraming(*req) : req.status();
    if (!framing.ok()) {
      ResponseHead bad;
      bad.status = 400;
      bad.reason = ReasonPhrase(400);
      bad.headers.Add("Connection", "close");
      RequestHead none;
      Respond(none, std::move(bad),
              absl::StrCat(framing.status().message(), "\n"));
      return;
    }
    counters_->requests.fetch_add(1);
    if (blob_storage_) counters_->blob_requests.fetch_add(1);
    if (req->headers.Get("Authorization") != nullptr) {
      (blob_storage_ ? counters_->blob_authorized : counters_->authorized)
          .fetch_add(1);
    }
    // The proxy reads the body only after choosing what to do, so it says
    // "continue" itself rather than relaying the upstream's 100.
    if (req->headers.HasToken("Expect", "100-continue")) {
      req->headers.Remove("Expect");
      if (framing->kind != BodyFraming::kNone &&
          !SendToClient("HTTP/1.1 100 Continue\r\n\r\n").ok()) {
        return;
      }
    }
    const bool client_close = WantsClose(req->version, req->headers);
    bool keep;
    FaultRule rule;
    if (blob_storage_) {
      keep = HandleBlobStorage(std::move(*req), *framing);
    } else if (proxy_->MatchRule(req->method, req->target,
                                 req->headers.Get("Range"), &rule)) {
      counters_->faults.fetch_add(1);
      keep = HandleFault(*req, *framing, rule);
    } else {
      keep = Forward(std::move(*req), *framing, nullptr);
    }
    if (!keep || client_close) return;
  }
}

bool FaultProxy::Session::HandleFault(const RequestHead& req,
                                      const BodyFraming& framing,
                                      const FaultRule& rule) {
  switch (rule.action) {
    case FaultAction::kStatus:
    case FaultAction::kRefuseMultiRange:
    case FaultAction::kRedirect: {
      bool dropped;
      if (!RelayBody(client_, -1, framing, {}, &counters_->bytes_from_clients,
                     &dropped)
               .ok()) {
        return false;
      }
      ResponseHead resp;
      resp.status = rule.action == FaultAction::kRedirect ? 307 : rule.status;
      resp.reason = ReasonPhrase(resp.status);
      if (rule.action == FaultAction::kRedirect) {
        resp.headers.Add(
            "Location",
            absl::StrCat(
                "http://127.0.0.1:", proxy_->blob_port_,
                proxy_->signer_.Sign(req.path(), absl::Now() + rule.expiry)));
        return Respond(req, std::move(resp), "");
      }
      if (resp.status == 401) {
        std::string challenge = rule.www_authenticate;
        if (challenge.empty()) {
          challenge =
              absl::StrCat("Bearer realm=\"http://127.0.0.1:", proxy_->port_,
                           "/token\",service=\"lazypull-fault-proxy\"");
          std::string scope = PullScope(req.path());
          if (!scope.empty()) {
            absl::StrAppend(&challenge, ",scope=\"", scope, "\"");
          }
        }
        if (challenge != "none")
          resp.headers.Add("WWW-Authenticate", challenge);
      }
      if ((resp.status == 429 || resp.status == 503) &&
          rule.retry_after_seconds >= 0) {
        resp.headers.Add("Retry-After", absl::StrCat(rule.retry_after_seconds));
      }
      resp.headers.Add("Content-Type", "application/json; charset=utf-8");
      resp.headers.Add("Docker-Distribution-Api-Version", "registry/2.0");
      std::string body = absl::StrCat(
          "{\"errors\":[{\"code\":\"",
          RegistryErrorCode(resp.status, req.path()),
          "\",\"message\":\"injected by the lazypull fault proxy\","
          "\"detail\":null}]}\n");
      return Respond(req, std::move(resp), body);
    }
    case FaultAction::kDropAfter:
      if (rule.drop_after < 0) {
        if (rule.reset) SetResetOnClose(client_fd_);
        return false;
      }
      return Forward(req, framing, &rule);
    default:
      return Forward(req, framing, &rule);
  }
}

bool FaultProxy::Session::HandleBlobStorage(RequestHead req,
                                            const BodyFraming& framing) {
  std::string path;
  absl::Status st = proxy_->signer_.Verify(req.target, absl::Now(), &path);
  if (st.ok()) {
    req.target = path;
    return Forward(std::move(req), framing, nullptr);
  }
  counters_->blob_denied.fetch_add(1);
  bool dropped;
  if (!RelayBody(client_, -1, framing, {}, &counters_->bytes_from_clients,
                 &dropped)
           .ok()) {
    return false;
  }
  ResponseHead resp;
  resp.status = 403;
  resp.reason = ReasonPhrase(403);
  resp.headers.Add("Content-Type", "application/xml");
  // The shape of S3's answer to an expired pre-signed URL.
  return Respond(req, std::move(resp),
                 absl::StrCat("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                              "<Error><Code>AccessDenied</Code><Message>",
                              st.message(), "</Message></Error>\n"));
}

bool FaultProxy::Session::Forward(RequestHead req, const BodyFraming& framing,
                                  const FaultRule* rule) {
  const FaultAction action =
      rule != nullptr ? rule->action : FaultAction::kStatus;
  if (rule != nullptr && action == FaultAction::kFullInsteadOfRange) {
    req.headers.Remove("Range");
    req.headers.Remove("If-Range");
  }
  const std::string head = req.Serialize();
  counters_->upstream_requests.fetch_add(1);
  std::string resp_text;
  for (int attempt = 0;; ++attempt) {
    const bool fresh = !upstream_.valid();
    absl::Status st = EnsureUpstream();
    if (st.ok()) st = SendAll(upstream_.get(), head);
    bool dropped;
    if (st.ok()) {
      st = RelayBody(client_, upstream_.get(), framing, {},
                     &counters_->bytes_from_clients, &dropped);
    }
    if (st.ok()) {
      absl::StatusOr<std::string> text = upstream_reader_->ReadHead();
      // 1xx interim responses (but 101) are not the answer: skip them.
      while (text.ok() && text->size() > 12 && (*text)[9] == '1' &&
             text->compare(9, 3, "101") != 0) {
        text = upstream_reader_->ReadHead();
      }
      if (text.ok() && !text->empty()) {
        resp_text = std::move(*text);
        break;
      }
      st =
          text.ok() ? absl::UnavailableError("upstream closed") : text.status();
    }
    CloseUpstream();
    // A kept-alive upstream connection may have been closed by the server
    // while idle (RFC 9112 9.3.1): retry once on a fresh one, if the request
    // had no body to replay.
    if (fresh || attempt > 0 || framing.kind != BodyFraming::kNone) {
      LogWarning("fault proxy: upstream: ", st.message());
      ResponseHead bad;
      bad.status = 502;
      bad.reason = ReasonPhrase(502);
      bad.headers.Add("Connection", "close");
      Respond(req, std::move(bad), absl::StrCat(st.message(), "\n"));
      return false;
    }
  }
  absl::StatusOr<ResponseHead> resp = ParseResponseHead(resp_text);
  if (!resp.ok()) {
    LogWarning("fault proxy: upstream: ", resp.status().message());
    CloseUpstream();
    return false;
  }
  absl::StatusOr<BodyFraming> body = ResponseFraming(*resp, req.method);
  if (!body.ok()) {
    CloseUpstream();
    return false;
  }
  BodyEdits edits;
  if (rule != nullptr) {
    switch (action) {
      case FaultAction::kDropAfter:
        edits.drop_after = rule->drop_after;
        break;
      case FaultAction::kFlipByte:
        edits.flip_offset = rule->flip_offset;
        break;
      case FaultAction::kSlowBody:
        edits.bytes_per_second = rule->bytes_per_second;
        break;
      case FaultAction::kShiftContentRange:
        if (const std::string* cr = resp->headers.Get("Content-Range")) {
          resp->headers.Set("Content-Range",
                            ShiftContentRange(*cr, rule->shift));
        }
        break;
      default:
        break;
    }
  }
  const bool upstream_close = WantsClose(resp->version, resp->headers) ||
                              body->kind == BodyFraming::kUntilClose;
  std::string out_head = resp->Serialize();
  counters_->bytes_to_clients.fetch_add(out_head.size());
  if (!SendAll(client_fd_, out_head).ok()) return false;
  bool dropped = false;
  absl::Status st = RelayBody(*upstream_reader_, client_fd_, *body, edits,
                              &counters_->bytes_to_clients, &dropped);
  if (dropped) {
    CloseUpstream();
    if (rule->reset) SetResetOnClose(client_fd_);
    return false;
  }
  if (!st.ok() || upstream_close) CloseUpstream();
  // A close-delimited body ends only when the client sees the close.
  return st.ok() && !upstream_close;
}

absl::Status FaultProxy::Session::SendToClient(absl::string_view data) {
  counters_->bytes_to_clients.fetch_add(data.size());
  return SendAll(client_fd_, data);
}

bool FaultProxy::Session::Respond(const RequestHead& req, ResponseHead resp,
                                  absl::string_view body) {
  resp.headers.Set("Content-Length", absl::StrCat(body.size()));
  std::string out = resp.Serialize();
  if (req.method != "HEAD") out.append(body.data(), body.size());
  return SendToClient(out).ok() && !WantsClose(resp.version, resp.headers);
}

absl::Status FaultProxy::Session::EnsureUpstream() {
  if (upstream_.valid()) return absl::OkStatus();
  ASSIGN_OR_RETURN(upstream_, ConnectTcp(proxy_->upstream_, false));
  (void)SetNoDelay(upstream_.get());
  server_->Track(upstream_.get());
  upstream_reader_.emplace(upstream_.get());
  return absl::OkStatus();
}

void FaultProxy::Session::CloseUpstream() {
  if (!upstream_.valid()) return;
  server_->Untrack(upstream_.get());
  upstream_reader_.reset();
  upstream_.Reset();
}

absl::Status FaultProxy::Session::RelayBody(HttpReader& src, int dst,
                                            const BodyFraming& framing,
                                            const BodyEdits& edits,
                                            std::atomic<uint64_t>* counter,
                                            bool* dropped) {
  *dropped = false;
  int64_t offset = 0;  // payload bytes sent so far
  const absl::Time start = absl::Now();
  const size_t pace_piece =
      edits.bytes_per_second == 0
          ? kRelayBytes
          : std::clamp<size_t>(edits.bytes_per_second / 100, 1, kRelayBytes);
  auto send = [&](absl::string_view bytes) -> absl::Status {
    if (dst < 0) return absl::OkStatus();
    counter->fetch_add(bytes.size());
    return SendAll(dst, bytes);
  };
  // Payload bytes go through the edits; framing bytes go through `send`.
  auto payload = [&](absl::string_view bytes) -> absl::Status {
    while (!bytes.empty()) {
      size_t take = std::min(bytes.size(), pace_piece);
      if (edits.drop_after >= 0) {
        if (offset >= edits.drop_after) {
          *dropped = true;
          return absl::AbortedError("connection dropped by a fault rule");
        }
        take = std::min<size_t>(take, edits.drop_after - offset);
      }
      std::string piece(bytes.substr(0, take));
      if (edits.flip_offset >= offset &&
          edits.flip_offset < offset + static_cast<int64_t>(take)) {
        piece[edits.flip_offset - offset] ^= static_cast<char>(0xff);
      }
      if (edits.bytes_per_second > 0) {
        absl::Time due = start + absl::Seconds(static_cast<double>(offset) /
                                               edits.bytes_per_second);
        absl::Duration wait = due - absl::Now();
        if (wait > absl::ZeroDuration() &&
            server_->stopping().WaitForNotificationWithTimeout(wait)) {
          return absl::CancelledError("proxy stopping");
        }
      }
      RETURN_IF_ERROR(send(piece));
      offset += static_cast<int64_t>(take);
      bytes.remove_prefix(take);
    }
    return absl::OkStatus();
  };
  char buf[kRelayBytes];
  switch (framing.kind) {
    case BodyFraming::kNone:
      return absl::OkStatus();
    case BodyFraming::kLength:
    case BodyFraming::kUntilClose: {
      const bool until_close = framing.kind == BodyFraming::kUntilClose;
      uint64_t left = framing.length;
      while (until_close || left > 0) {
        size_t want =
            until_close
                ? sizeof(buf)
                : static_cast<size_t>(std::min<uint64_t>(left, sizeof(buf)));
        ASSIGN_OR_RETURN(size_t n, src.ReadSome(buf, want));
        if (n == 0) {
          if (until_close) return absl::OkStatus();
          return absl::UnavailableError("connection closed in a body");
        }
        RETURN_IF_ERROR(payload(absl::string_view(buf, n)));
        left -= n;
      }
      return absl::OkStatus();
    }
    case BodyFraming::kChunked:
      while (true) {
        ASSIGN_OR_RETURN(std::string line, src.ReadLine());
        uint64_t size = 0;
        absl::string_view hex = absl::StripAsciiWhitespace(
            absl::string_view(line).substr(0, line.find(';')));
        if (hex.empty() || !absl::SimpleHexAtoi(hex, &size)) {
          return absl::InvalidArgumentError(
              absl::StrCat("bad chunk size line \"", line, "\""));
        }
        RETURN_IF_ERROR(send(absl::StrCat(line, "\r\n")));
        if (size == 0) {
          // Trailer fields, then the empty line that ends the body.
          while (true) {
            ASSIGN_OR_RETURN(std::string trailer, src.ReadLine());
            RETURN_IF_ERROR(send(absl::StrCat(trailer, "\r\n")));
            if (trailer.empty()) return absl::OkStatus();
          }
        }
        while (size > 0) {
          ASSIGN_OR_RETURN(
              size_t n,
              src.ReadSome(buf, static_cast<size_t>(
                                    std::min<uint64_t>(size, sizeof(buf)))));
          if (n == 0)
            return absl::UnavailableError("connection closed in a chunk");
          RETURN_IF_ERROR(payload(absl::string_view(buf, n)));
          size -= n;
        }
        ASSIGN_OR_RETURN(std::string crlf, src.ReadLine());
        if (!crlf.empty())
          return absl::InvalidArgumentError("chunk not ended by CRLF");
        RETURN_IF_ERROR(send("\r\n"));
      }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(
    const Options& options, std::vector<FaultRule> rules) {
  if (options.upstream_port <= 0 || options.upstream_port > 65535) {
    return absl::InvalidArgumentError("fault proxy: upstream port not set");
  }
  std::unique_ptr<FaultProxy> proxy(new FaultProxy());
  ASSIGN_OR_RETURN(proxy->upstream_,
                   Resolve(options.upstream_host, options.upstream_port));
  RETURN_IF_ERROR(proxy->SetRules(std::move(rules)));
  FaultProxy* p = proxy.get();
  ASSIGN_OR_RETURN(proxy->server_,
                   TcpServer::Start(options.listen_port,
                                    [p](int fd) { p->Serve(fd, false); }));
  ASSIGN_OR_RETURN(
      proxy->blob_server_,
      TcpServer::Start(options.blob_port, [p](int fd) { p->Serve(fd, true); }));
  proxy->port_ = proxy->server_->port();
  proxy->blob_port_ = proxy->blob_server_->port();
  proxy->ready_.Notify();
  return proxy;
}

FaultProxy::~FaultProxy() {
  // Handlers wait for ready_; a failed Start() never notified it.
  if (!ready_.HasBeenNotified()) ready_.Notify();
  Stop();
}

void FaultProxy::Stop() {
  if (server_ != nullptr) server_->Stop();
  if (blob_server_ != nullptr) blob_server_->Stop();
}

void FaultProxy::Serve(int fd, bool blob_storage) {
  ready_.WaitForNotification();
  TcpServer* server = blob_storage ? blob_server_.get() : server_.get();
  if (server == nullptr) return;  // Start() failed half-way
  (blob_storage ? counters_.blob_connections : counters_.connections)
      .fetch_add(1);
  Session session(this, server, fd, blob_storage);
  session.Run();
}

bool FaultProxy::MatchRule(absl::string_view method, absl::string_view target,
                           const std::string* range, FaultRule* rule) {
  absl::MutexLock lock(&mu_);
  const FaultRule* r = rules_->Match(method, target, range);
  if (r == nullptr) return false;
  *rule = *r;
  return true;
}

absl::Status FaultProxy::SetRules(std::vector<FaultRule> rules) {
  ASSIGN_OR_RETURN(std::unique_ptr<FaultRuleSet> set,
                   FaultRuleSet::Create(std::move(rules)));
  absl::MutexLock lock(&mu_);
  rules_ = std::move(set);
  return absl::OkStatus();
}

FaultCounters FaultProxy::counters() const {
  FaultCounters c;
  c.connections = counters_.connections.load();
  c.requests = counters_.requests.load();
  c.faults = counters_.faults.load();
  c.upstream_requests = counters_.upstream_requests.load();
  c.bytes_from_clients = counters_.bytes_from_clients.load();
  c.bytes_to_clients = counters_.bytes_to_clients.load();
  c.blob_connections = counters_.blob_connections.load();
  c.blob_requests = counters_.blob_requests.load();
  c.blob_denied = counters_.blob_denied.load();
  c.authorized = counters_.authorized.load();
  c.blob_authorized = counters_.blob_authorized.load();
  absl::MutexLock lock(&mu_);
  c.rules = rules_->counts();
  return c;
}

std::string FaultProxy::CountersJson() const {
  FaultCounters c = counters();
  JsonWriter w;
  w.BeginObject();
  w.Key("connections").Uint(c.connections);
  w.Key("requests").Uint(c.requests);
  w.Key("faults").Uint(c.faults);
  w.Key("upstream_requests").Uint(c.upstream_requests);
  w.Key("bytes_from_clients").Uint(c.bytes_from_clients);
  w.Key("bytes_to_clients").Uint(c.bytes_to_clients);
  w.Key("blob_connections").Uint(c.blob_connections);
  w.Key("blob_requests").Uint(c.blob_requests);
  w.Key("blob_denied").Uint(c.blob_denied);
  w.Key("authorized").Uint(c.authorized);
  w.Key("blob_authorized").Uint(c.blob_authorized);
  w.Key("rules").BeginArray();
  for (const FaultRuleSet::RuleCounts& r : c.rules) {
    w.BeginObject();
    w.Key("name").String(r.name);
    w.Key("matched").Uint(r.matched);
    w.Key("fired").Uint(r.fired);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return w.Release();
}

void FaultProxy::ResetCounters() {
  for (std::atomic<uint64_t>* a :
       {&counters_.connections, &counters_.requests, &counters_.faults,
        &counters_.upstream_requests, &counters_.bytes_from_clients,
        &counters_.bytes_to_clients, &counters_.blob_connections,
        &counters_.blob_requests, &counters_.blob_denied, &counters_.authorized,
        &counters_.blob_authorized}) {
    a->store(0);
  }
  absl::MutexLock lock(&mu_);
  rules_->ResetCounts();
}

}  // namespace lazypull::proxy
