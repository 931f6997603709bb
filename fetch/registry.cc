#include "fetch/registry.h"

#include <simdjson.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

constexpr int kMaxRedirects = 5;

bool IsRedirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 ||
         status == 308;
}

// Adds what to do to errors whose cause is a TLS or scheme mismatch.
absl::Status WithHint(const absl::Status& st, const RegistryHost& h) {
  if (st.ok()) return st;
  std::string hint;
  absl::string_view m = st.message();
  if (absl::StrContains(m, "curl error 60")) {
    hint = absl::StrCat("the TLS certificate of ", h.host,
                        " is not trusted: pass its CA with --ca-file, or use "
                        "--insecure-skip-tls-verify");
  } else if (absl::StrContains(m, "curl error 35") &&
             absl::StrContains(m, "wrong version number")) {
    hint = absl::StrCat(h.host, " does not speak TLS: use --plain-http");
  } else if (absl::StrContains(m, "HTTP 400") &&
             absl::StrContains(m, "HTTPS server")) {
    hint = absl::StrCat(h.host, " speaks only HTTPS: drop --plain-http");
  }
  if (hint.empty()) return st;
  return Restated(st, absl::StrCat(m, "; ", hint));
}

absl::StatusOr<std::string> ReadAll(HttpBodyReader* r, size_t max,
                                    absl::string_view what) {
  std::string out;
  while (true) {
    ASSIGN_OR_RETURN(absl::string_view piece, r->Read(1 << 20));
    if (piece.empty()) return out;
    if (out.size() + piece.size() > max) {
      return absl::ResourceExhaustedError(
          absl::StrCat(what, " is larger than the ", max, " bytes accepted"));
    }
    out.append(piece.data(), piece.size());
  }
}

// Joins the failures of several hosts into one message.
absl::Status AllHostsFailed(
    absl::string_view what,
    const std::vector<std::pair<std::string, absl::Status>>& errs) {
  if (errs.size() == 1) return errs[0].second;
  std::vector<std::string> parts;
  for (const auto& [host, st] : errs) {
    parts.push_back(absl::StrCat(host, ": ", st.message()));
  }
  // The origin's code decides (it is last).
  return Restated(errs.back().second,
                  absl::StrCat(what, " failed on every host: ",
                               absl::StrJoin(parts, "; ")));
}

// The error a registry answered with: the status (from `r`'s response) and
// the codes of its JSON error body; an unexpected 2xx/3xx is Unavailable.
absl::Status ErrorResponse(HttpBodyReader* r, absl::string_view what) {
  const int status = r->response().status;
  absl::StatusOr<std::string> body = ReadAll(r, 64 << 10, "error body");
  absl::Status st = HttpStatusToStatus(
      status, what, body.ok() ? RegistryErrorDetail(*body) : "");
  if (st.ok()) {
    st = absl::UnavailableError(
        absl::StrCat(what, ": unexpected HTTP ", status));
  }
  return st;
}

// Checks a Docker-Content-Digest answer, if any, against `want`.
absl::Status CheckContentDigest(const HttpResponse& resp, const Digest& want,
                                absl::string_view what) {
  std::optional<std::string> dcd = resp.headers.Get("docker-content-digest");
  if (!dcd) return absl::OkStatus();
  absl::StatusOr<Digest> said = Digest::Parse(*dcd);
  if (!said.ok() || *said != want) {
    return absl::DataLossError(absl::StrCat(
        what, ": the registry stored ", *dcd, " instead of ", want.ToString()));
  }
  return absl::OkStatus();
}

}  // namespace

bool AskRegistryAgain(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
      return true;
    default:
      return false;
  }
}

namespace {

class VerifyingBlobReader : public BlobReader {
 public:
  // `reopen` (may be empty): the blob's bytes from an offset on, asked of
  // the registry again (AskRegistryAgain).
  using Reopen = std::function<absl::StatusOr<std::unique_ptr<HttpBodyReader>>(
      uint64_t from)>;
  VerifyingBlobReader(std::unique_ptr<HttpBodyReader> r, Descriptor d,
                      std::string source, Reopen reopen = nullptr)
      : r_(std::move(r)),
        d_(std::move(d)),
        source_(std::move(source)),
        reopen_(std::move(reopen)) {}

  absl::StatusOr<absl::string_view> Read(size_t n) override {
    if (!final_.ok()) return final_;
    if (done_) return absl::string_view();
    absl::StatusOr<absl::string_view> piece = r_->Read(n);
    if (!piece.ok() && reopen_ && count_ > 0 &&
        count_ < static_cast<uint64_t>(d_.size) &&
        AskRegistryAgain(piece.status())) {
      absl::StatusOr<std::unique_ptr<HttpBodyReader>> again = reopen_(count_);
      reopen_ = nullptr;  // (once)
      if (again.ok()) {
        r_ = *std::move(again);
        piece = r_->Read(n);
      }
    }
    if (!piece.ok()) {
      final_ = absl::Status(piece.status().code(),
                            absl::StrCat("blob ", d_.digest.ToString(), ": ",
                                         piece.status().message()));
      return final_;
    }
    if (piece->empty()) {
      done_ = true;
      if (count_ != static_cast<uint64_t>(d_.size)) {
        final_ = absl::DataLossError(absl::StrCat(
            "blob ", d_.digest.ToString(), " from ", source_, " has ", count_,
            " bytes; its descriptor says ", d_.size));
        return final_;
      }
      Digest got = hash_.Finish();
      if (got != d_.digest) {
        final_ = absl::DataLossError(absl::StrCat(
            "blob ", d_.digest.ToString(), " from ", source_,
            " is corrupt: its content hashes to ", got.ToString()));
        return final_;
      }
      return absl::string_view();
    }
    count_ += piece->size();
    if (count_ > static_cast<uint64_t>(d_.size)) {
      final_ = absl::DataLossError(absl::StrCat(
          "blob ", d_.digest.ToString(), " from ", source_,
          " is longer than the ", d_.size, " bytes its descriptor says"));
      return final_;
    }
    hash_.Update(piece->data(), piece->size());
    return piece;
  }

  uint64_t bytes_read() const override { return count_; }
  std::string source() const override { return source_; }

 private:
  std::unique_ptr<HttpBodyReader> r_;
  const Descriptor d_;
  const std::string source_;
  Reopen reopen_;
  Sha256 hash_;
  uint64_t count_ = 0;
  bool done_ = false;
  absl::Status final_;
};

}  // namespace

std::string RegistryErrorDetail(absl::string_view body) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (parser.parse(body.data(), body.size()).get(root) != simdjson::SUCCESS) {
    return "";
  }
  simdjson::dom::array errors;
  if (root["errors"].get(errors) != simdjson::SUCCESS) return "";
  constexpr size_t kMaxErrors = 5;
  std::vector<std::string> parts;
  size_t more = 0;
  for (simdjson::dom::element e : errors) {
    std::string_view code, message, detail;
    if (e["code"].get(code) != simdjson::SUCCESS) code = {};
    if (e["message"].get(message) != simdjson::SUCCESS) message = {};
    if (e["detail"].get(detail) != simdjson::SUCCESS) detail = {};
    if (code.empty() && message.empty()) continue;
    if (parts.size() == kMaxErrors) {
      ++more;
      continue;
    }
    parts.push_back(absl::StrCat(
        std::string(code), code.empty() ? "" : ": ", std::string(message),
        detail.empty() ? "" : absl::StrCat(" (", std::string(detail), ")")));
  }
  std::string out = absl::StrJoin(parts, "; ");
  if (more > 0) absl::StrAppend(&out, "; and ", more, " more");
  return out;
}

absl::StatusOr<std::unique_ptr<RegistryClient>> RegistryClient::Create(
    const ImageReference& ref, const RegistryOptions& options) {
  if (options.http == nullptr) {
    return absl::InvalidArgumentError("RegistryOptions.http is required");
  }
  ASSIGN_OR_RETURN(
      std::vector<RegistryHost> hosts,
      LoadRegistryHosts(ref.registry, ref.ApiHost(), options.hosts));
  return std::unique_ptr<RegistryClient>(
      new RegistryClient(ref, options, std::move(hosts)));
}

RegistryClient::RegistryClient(const ImageReference& ref,
                               const RegistryOptions& options,
                               std::vector<RegistryHost> hosts)
    : ref_(ref), opts_(options), hosts_(std::move(hosts)), auth_([&] {
        RegistryAuth::Options o;
        o.http = options.http;
        o.credentials = options.credentials;
        o.retry = options.retry;
        o.realm_tls = [this](absl::string_view url) { return TlsFor(url); };
        return o;
      }()) {}

std::string RegistryClient::CredentialKey(const RegistryHost& h) const {
  // The origin's credentials are the registry's (docker.io for Docker Hub);
  // a mirror's are its own host's.
  return h.mirror ? h.host : ref_.registry;
}

void RegistryClient::SetAttemptLimits(HttpRequest* req) const {
  req->retry = opts_.retry;
  req->stall_timeout = opts_.stall_timeout;
  req->stall_bytes_per_second = opts_.stall_bytes_per_second;
}

TlsOptions RegistryClient::TlsFor(absl::string_view url) const {
  std::string host = UrlHost(url);
  for (const RegistryHost& h : hosts_) {
    if (h.host == host) return h.tls;
  }
  // A token realm or storage host the registry sends us to: its TLS
  // settings (trusted CAs, --insecure-skip-tls-verify, skip_verify), as
  // containerd reaches them with the registry host's own client; never its
  // client certificate.
  TlsOptions t = Origin().tls;
  t.client_cert.clear();
  t.client_key.clear();
  return t;
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> RegistryClient::OpenOnHost(
    const RegistryHost& h, const std::string& method, const std::string& suffix,
    std::vector<std::pair<std::string, std::string>> headers,
    absl::Duration timeout, int stream_weight) {
  HttpRequest req;
  req.stream_weight = stream_weight;
  req.method = method;
  req.url = absl::StrCat(h.BaseUrl(), "/", ref_.repository, suffix);
  if (h.mirror) {
    absl::StrAppend(&req.url, absl::StrContains(req.url, "?") ? "&" : "?",
                    "ns=", UrlQueryEscape(ref_.registry));
  }
  req.headers = std::move(headers);
  req.timeout = timeout;
  return SendOnHost(h, std::move(req), PullScope());
}

std::string RegistryClient::PullScope() const {
  return absl::StrCat("repository:", ref_.repository, ":pull");
}

absl::Status RegistryClient::FollowRedirects(
    const RegistryHost& h, const HttpRequest& tmpl, const std::string& scope,
    std::string* url, std::unique_ptr<HttpBodyReader>* r) {
  return FollowRedirects(
      [&](HttpRequest q) { return SendOnHost(h, std::move(q), scope); }, tmpl,
      url, r);
}

absl::Status RegistryClient::FollowRedirects(
    const Sender& send, const HttpRequest& tmpl, std::string* url,
    std::unique_ptr<HttpBodyReader>* r) {
  for (int hop = 0; IsRedirect((*r)->response().status); ++hop) {
    std::optional<std::string> loc = (*r)->response().headers.Get("location");
    if (!loc || hop >= kMaxRedirects) {
      return absl::UnavailableError(absl::StrCat(
          "GET ", url->substr(0, url->find('?')), ": ",
          loc ? "too many redirects" : "redirect without a Location"));
    }
    *url = ResolveUrl(*url, *loc);
    r->reset();
    HttpRequest req = tmpl;
    req.url = *url;
    ASSIGN_OR_RETURN(*r, send(std::move(req)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> RegistryClient::SendOnHost(
    const RegistryHost& h, HttpRequest req, const std::string& scope) {
  const std::string key = CredentialKey(h);
  const bool same_origin = UrlOrigin(req.url) == UrlOrigin(h.BaseUrl());
  const std::vector<std::pair<std::string, std::string>> headers =
      std::move(req.headers);
  req.tls = same_origin ? h.tls : TlsFor(req.url);
  SetAttemptLimits(&req);
  std::vector<std::pair<std::string, std::string>> host_headers;
  if (same_origin) host_headers = h.headers;
  for (int round = 0;; ++round) {
    std::string authz;
    if (same_origin) {
      ASSIGN_OR_RETURN(authz, auth_.Authorization(key, h.host, scope));
    }
    req.headers = headers;
    req.headers.insert(req.headers.end(), host_headers.begin(),
                       host_headers.end());
    if (!authz.empty()) req.headers.push_back({"Authorization", authz});
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r = opts_.http->Open(req);
    if (!r.ok()) return WithHint(r.status(), h);
    if (!same_origin) return r;
    if ((*r)->response().status == 401 && round > 0) {
      return auth_.Refused(key, h.host, scope, authz);
    }
    if ((*r)->response().status == 401) {
      std::vector<std::string> challenges =
          (*r)->response().headers.GetAll("www-authenticate");
      r->reset();  // the error body is not needed
      RETURN_IF_ERROR(
          auth_.HandleUnauthorized(key, h.host, scope, challenges, authz,
                                   /*over_tls=*/h.scheme == "https"));
      continue;
    }
    return r;
  }
}

absl::StatusOr<FetchedManifest> RegistryClient::FetchManifestOnHost(
    const RegistryHost& h, absl::string_view selector) {
  const std::string what =
      absl::StrCat("manifest ", ref_.registry, "/", ref_.repository,
                   absl::StartsWith(selector, "sha256:") ? "@" : ":", selector,
                   " from ", h.BaseUrl());
  ASSIGN_OR_RETURN(
      std::unique_ptr<HttpBodyReader> r,
      OpenOnHost(h, "GET", absl::StrCat("/manifests/", selector),
                 {{"Accept", ManifestAcceptHeader()}}, absl::Seconds(60)));
  {  // http -> https, a canonical host, a proxy's storage: followed.
    HttpRequest tmpl;
    tmpl.headers = {{"Accept", ManifestAcceptHeader()}};
    tmpl.timeout = absl::Seconds(60);
    std::string url = absl::StrCat(h.BaseUrl(), "/", ref_.repository,
                                   "/manifests/", selector);
    RETURN_IF_ERROR(FollowRedirects(h, tmpl, PullScope(), &url, &r));
  }
  const HttpResponse& resp = r->response();
  ASSIGN_OR_RETURN(std::string body,
                   ReadAll(r.get(), opts_.max_manifest_size, what));
  if (resp.status != 200) {
    absl::Status st =
        HttpStatusToStatus(resp.status, what, RegistryErrorDetail(body));
    if (st.ok()) {
      st = absl::UnavailableError(
          absl::StrCat(what, ": unexpected HTTP ", resp.status));
    }
    return WithHint(st, h);
  }
  FetchedManifest m;
  m.digest = Sha256::Of(body);
  m.content_type = resp.headers.Get("content-type").value_or("");
  if (absl::StartsWith(selector, "sha256:")) {
    ASSIGN_OR_RETURN(Digest want, Digest::Parse(selector));
    if (want != m.digest) {
      return absl::DataLossError(absl::StrCat(what, ": the content hashes to ",
                                              m.digest.ToString(),
                                              ", not the digest asked for"));
    }
  } else if (auto dcd = resp.headers.Get("docker-content-digest")) {
    absl::StatusOr<Digest> said = Digest::Parse(*dcd);
    if (said.ok() && *said != m.digest) {
      return absl::DataLossError(absl::StrCat(what, ": the content hashes to ",
                                              m.digest.ToString(),
                                              " but the registry says ", *dcd));
    }
  }
  ASSIGN_OR_RETURN(m.kind, SniffManifestKind(body));
  m.bytes = std::move(body);
  return m;
}

absl::StatusOr<FetchedManifest> RegistryClient::FetchManifest(
    absl::string_view selector) {
  const bool by_digest = absl::StartsWith(selector, "sha256:");
  std::vector<std::pair<std::string, absl::Status>> errs;
  for (const RegistryHost& h : hosts_) {
    if (by_digest ? !h.can_pull : !h.can_resolve) continue;
    absl::StatusOr<FetchedManifest> m = FetchManifestOnHost(h, selector);
    if (m.ok()) return m;
    errs.emplace_back(h.BaseUrl(), m.status());
  }
  if (errs.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no host of ", ref_.registry, " may ", by_digest ? "pull" : "resolve",
        " (check capabilities in hosts.toml)"));
  }
  return AllHostsFailed(absl::StrCat("fetching manifest ", selector), errs);
}

absl::StatusOr<ResolvedImage> RegistryClient::Resolve() {
  ASSIGN_OR_RETURN(ResolvedImage img, ResolveManifest());
  ASSIGN_OR_RETURN(img.config, FetchConfig(img));
  return img;
}

absl::StatusOr<ResolvedImage> RegistryClient::ResolveManifest() {
  ResolvedImage img;
  ASSIGN_OR_RETURN(FetchedManifest top, FetchManifest(ref_.ManifestSelector()));
  FetchedManifest m = std::move(top);
  // An index may name another (nested indexes); a few levels at most.
  for (int depth = 0; m.kind == ManifestKind::kIndex; ++depth) {
    if (depth == 4) {
      return absl::InvalidArgumentError(
          "indexes nested more than 4 deep; refusing to follow them");
    }
    ASSIGN_OR_RETURN(ImageIndex idx, ParseImageIndex(m.bytes));
    ASSIGN_OR_RETURN(Descriptor d, SelectPlatform(idx, opts_.platform));
    if (!d.platform) img.platform_from_config = true;
    if (depth == 0) img.index_digest = m.digest;
    ASSIGN_OR_RETURN(m, FetchManifest(d.digest.ToString()));
    if (m.bytes.size() != static_cast<size_t>(d.size)) {
      return absl::DataLossError(
          absl::StrCat("manifest ", d.digest.ToString(), " has ",
                       m.bytes.size(), " bytes; the index says ", d.size));
    }
  }
  img.manifest_digest = m.digest;
  ASSIGN_OR_RETURN(img.manifest, ParseImageManifest(m.bytes));
  img.config_descriptor = img.manifest.config;
  return img;
}

absl::StatusOr<ImageConfig> RegistryClient::FetchConfig(
    const ResolvedImage& img) {
  ASSIGN_OR_RETURN(std::string bytes, FetchBlob(img.manifest.config));
  ASSIGN_OR_RETURN(ImageConfig config, ParseImageConfig(bytes));
  if (img.platform_from_config) {
    RETURN_IF_ERROR(CheckConfigPlatform(config, opts_.platform));
  }
  if (config.diff_ids.size() != img.manifest.layers.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("image config lists ", config.diff_ids.size(),
                     " diff_ids for ", img.manifest.layers.size(), " layers"));
  }
  return config;
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> RegistryClient::OpenBlobOnHost(
    const RegistryHost& h, const Descriptor& d, std::string* source,
    const std::string& range, int stream_weight, absl::Duration timeout) {
  const std::string cache_key = absl::StrCat(d.digest.ToString(), "@", h.host);
  const int ok_status = range.empty() ? 200 : 206;
  std::vector<std::pair<std::string, std::string>> range_headers;
  if (!range.empty()) {
    range_headers.push_back({"Range", range});
    range_headers.push_back({"Accept-Encoding", "identity"});
  }
  // A redirect's hop: to storage (signed URLs) without Authorization or
  // registry headers (the Range is part of the request), to the registry's
  // own origin with its credentials (SendOnHost tells them apart).
  HttpRequest tmpl;
  tmpl.headers = range_headers;
  tmpl.timeout = timeout;
  tmpl.stream_weight = stream_weight;
  auto open_plain = [&](const std::string& url)
      -> absl::StatusOr<std::unique_ptr<HttpBodyReader>> {
    HttpRequest req = tmpl;
    req.url = url;
    return SendOnHost(h, std::move(req), PullScope());
  };
  std::optional<std::string> cached;
  {
    absl::MutexLock l(&mu_);
    auto it = signed_urls_.find(cache_key);
    if (it != signed_urls_.end()) {
      if (absl::Now() - it->second.resolved < opts_.signed_url_ttl) {
        cached = it->second.url;
      } else {
        signed_urls_.erase(it);  // expired: re-resolve
      }
    }
  }
  if (cached) {
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r = open_plain(*cached);
    if (r.ok() && (*r)->response().status == ok_status) {
      *source = cached->substr(0, cached->find('?'));
      return r;
    }
    // 401/403/404 (an expired signature) or any failure: ask the registry
    // again, once.
    absl::MutexLock l(&mu_);
    signed_urls_.erase(cache_key);
  }
  const std::string suffix = absl::StrCat("/blobs/", d.digest.ToString());
  ASSIGN_OR_RETURN(
      std::unique_ptr<HttpBodyReader> r,
      OpenOnHost(h, "GET", suffix, range_headers, timeout, stream_weight));
  std::string url = absl::StrCat(h.BaseUrl(), "/", ref_.repository, suffix);
  const bool redirected = IsRedirect(r->response().status);
  RETURN_IF_ERROR(FollowRedirects(h, tmpl, PullScope(), &url, &r));
  *source = url.substr(0, url.find('?'));  // signatures stay out of messages
  if (redirected && r->response().status == ok_status) {
    absl::MutexLock l(&mu_);
    signed_urls_[cache_key] = {url, absl::Now()};
  }
  return r;
}

absl::StatusOr<std::unique_ptr<BlobReader>> RegistryClient::OpenBlob(
    const Descriptor& d) {
  std::vector<std::pair<std::string, absl::Status>> errs;
  // An answer that must be the whole blob: 200, and its Content-Length (when
  // given) the descriptor's size.
  auto whole_blob = [&](absl::StatusOr<std::unique_ptr<HttpBodyReader>> r,
                        const std::string& source)
      -> absl::StatusOr<std::unique_ptr<BlobReader>> {
    if (!r.ok()) return r.status();
    if ((*r)->response().status != 200) {
      return ErrorResponse(r->get(), absl::StrCat("blob ", d.digest.ToString(),
                                                  " from ", source));
    }
    if (auto cl = (*r)->response().headers.Get("content-length")) {
      int64_t n;
      if (absl::SimpleAtoi(*cl, &n) && n != d.size) {
        return absl::DataLossError(absl::StrCat(
            "blob ", d.digest.ToString(), " from ", source, " has ", n,
            " bytes (Content-Length); its descriptor says ", d.size));
      }
    }
    return std::unique_ptr<BlobReader>(new VerifyingBlobReader(
        *std::move(r), d, source,
        [this,
         d](uint64_t from) -> absl::StatusOr<std::unique_ptr<HttpBodyReader>> {
          std::string where;
          return OpenBlobRange(d, from, static_cast<uint64_t>(d.size) - 1,
                               &where, 0, /*reader_paced=*/true);
        }));
  };
  for (const RegistryHost& h : hosts_) {
    if (!h.can_pull) continue;
    std::string source;
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r =
        OpenBlobOnHost(h, d, &source);
    absl::StatusOr<std::unique_ptr<BlobReader>> b =
        whole_blob(std::move(r), source);
    if (b.ok()) return b;
    errs.emplace_back(h.BaseUrl(), WithHint(b.status(), h));
  }
  if (errs.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no host of ", ref_.registry,
                     " may pull (check capabilities in hosts.toml)"));
  }
  // A non-distributable (foreign) layer may live only at its descriptor's
  // `urls`, as containerd and podman fetch it: when every host says it does
  // not have the blob, plain GETs there (and their redirects) with neither
  // the registry's credentials, its headers nor a client certificate
  // (whatever origin the manifest names), the bytes checked against the
  // digest as any blob's.
  const bool unknown_everywhere =
      std::all_of(errs.begin(), errs.end(),
                  [](const auto& e) { return absl::IsNotFound(e.second); });
  auto send_plain = [this](HttpRequest q) {
    q.tls = TlsFor(q.url);
    q.tls.client_cert.clear();
    q.tls.client_key.clear();
    SetAttemptLimits(&q);
    return opts_.http->Open(q);
  };
  for (const std::string& u :
       unknown_everywhere ? d.urls : std::vector<std::string>{}) {
    if (!absl::StartsWith(u, "https://") && !absl::StartsWith(u, "http://")) {
      errs.emplace_back(
          u, absl::InvalidArgumentError("not an http(s) URL: not fetched"));
      continue;
    }
    HttpRequest tmpl;
    tmpl.timeout = absl::ZeroDuration();
    HttpRequest req = tmpl;
    req.url = u;
    std::string url = u;
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r = send_plain(req);
    if (r.ok()) {
      absl::Status st = FollowRedirects(send_plain, tmpl, &url, &*r);
      if (!st.ok()) r = st;
    }
    absl::StatusOr<std::unique_ptr<BlobReader>> b =
        whole_blob(std::move(r), url.substr(0, url.find('?')));
    if (b.ok()) return b;
    errs.emplace_back(u.substr(0, u.find('?')), b.status());
  }
  return AllHostsFailed(absl::StrCat("fetching blob ", d.digest.ToString()),
                        errs);
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> RegistryClient::OpenBlobRange(
    const Descriptor& d, uint64_t first, uint64_t last, std::string* source,
    int stream_weight, bool reader_paced) {
  const std::string range = absl::StrCat("bytes=", first, "-", last);
  std::vector<std::pair<std::string, absl::Status>> errs;
  size_t pullers = 0;
  for (const RegistryHost& h : hosts_) pullers += h.can_pull;
  for (const RegistryHost& h : hosts_) {
    if (!h.can_pull) continue;
    --pullers;  // those after h
    const std::string failed_key =
        absl::StrCat(d.digest.ToString(), "@", h.host);
    if (h.mirror && pullers > 0) {
      absl::MutexLock l(&mu_);
      auto it = mirror_failed_.find(failed_key);
      if (it != mirror_failed_.end() &&
          absl::Now() - it->second < opts_.mirror_retry_after) {
        continue;
      }
    }
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r = OpenBlobOnHost(
        h, d, source, range, stream_weight,
        reader_paced ? absl::ZeroDuration() : opts_.range_timeout);
    absl::Status st;
    if (!r.ok()) {
      st = r.status();
    } else if ((*r)->response().status != 206) {
      st = ErrorResponse(
          r->get(), absl::StrCat("blob ", d.digest.ToString(), " range ", range,
                                 " from ", *source));
    }
    if (st.ok()) return r;
    if (h.mirror && pullers > 0) {
      absl::MutexLock l(&mu_);
      mirror_failed_[failed_key] = absl::Now();
    }
    errs.emplace_back(h.BaseUrl(), WithHint(st, h));
  }
  if (errs.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no host of ", ref_.registry,
                     " may pull (check capabilities in hosts.toml)"));
  }
  return AllHostsFailed(
      absl::StrCat("fetching blob ", d.digest.ToString(), " range ", range),
      errs);
}

absl::StatusOr<std::string> RegistryClient::FetchBlob(const Descriptor& d) {
  if (static_cast<uint64_t>(d.size) > opts_.max_manifest_size) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "blob ", d.digest.ToString(), " has ", d.size, " bytes, more than the ",
        opts_.max_manifest_size, " accepted for a config"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<BlobReader> r, OpenBlob(d));
  std::string out;
  while (true) {
    ASSIGN_OR_RETURN(absl::string_view piece, r->Read(1 << 20));
    if (piece.empty()) return out;
    out.append(piece.data(), piece.size());
  }
}

// ---------------------------------------------------------------------------
// Write side.

std::string RegistryClient::PushScope() const {
  return absl::StrCat("repository:", ref_.repository, ":pull,push");
}

std::string RegistryClient::RepoName() const {
  return absl::StrCat(ref_.registry, "/", ref_.repository);
}

namespace {

absl::Status CheckCanPush(const RegistryHost& origin,
                          absl::string_view registry) {
  if (origin.can_push) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("hosts.toml does not give ", origin.BaseUrl(), " (",
                   registry, ") the \"push\" capability"));
}

}  // namespace

absl::StatusOr<bool> RegistryClient::HasBlob(const Descriptor& d) {
  const RegistryHost& h = Origin();
  RETURN_IF_ERROR(CheckCanPush(h, ref_.registry));
  const std::string what = absl::StrCat(
      "checking for blob ", d.digest.ToString(), " in ", RepoName());
  HttpRequest req;
  req.method = "HEAD";
  req.url = absl::StrCat(h.BaseUrl(), "/", ref_.repository, "/blobs/",
                         d.digest.ToString());
  req.timeout = absl::Seconds(60);
  ASSIGN_OR_RETURN(std::unique_ptr<HttpBodyReader> r,
                   SendOnHost(h, std::move(req), PushScope()));
  const HttpResponse& resp = r->response();
  if (resp.status == 404) return false;
  // A redirect to blob storage: the registry has it.
  if (IsRedirect(resp.status)) return true;
  if (resp.status != 200) return WithHint(ErrorResponse(r.get(), what), h);
  int64_t n;
  if (auto cl = resp.headers.Get("content-length");
      cl && absl::SimpleAtoi(*cl, &n) && n != d.size) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": the registry holds it with ", n,
                     " bytes; its descriptor says ", d.size));
  }
  return true;
}

absl::StatusOr<bool> RegistryClient::MountBlob(const Descriptor& d,
                                               absl::string_view from_repo) {
  const RegistryHost& h = Origin();
  RETURN_IF_ERROR(CheckCanPush(h, ref_.registry));
  const std::string what =
      absl::StrCat("mounting blob ", d.digest.ToString(), " from ", from_repo,
                   " into ", RepoName());
  HttpRequest req;
  req.method = "POST";
  req.url = absl::StrCat(
      h.BaseUrl(), "/", ref_.repository,
      "/blobs/uploads/?mount=", UrlQueryEscape(d.digest.ToString()),
      "&from=", UrlQueryEscape(from_repo));
  req.timeout = absl::Seconds(60);
  const std::string url = req.url;
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> r =
      SendOnHost(h, std::move(req), PushScope());
  if (!r.ok()) {
    // Credentials that do not reach `from_repo`: not a mount, but the
    // upload may still be allowed.
    if (absl::IsUnauthenticated(r.status()) ||
        absl::IsPermissionDenied(r.status())) {
      return false;
    }
    return r.status();
  }
  const HttpResponse& resp = (*r)->response();
  if (resp.status == 201) {
    RETURN_IF_ERROR(CheckContentDigest(resp, d.digest, what));
    return true;
  }
  if (resp.status == 202) {
    if (std::optional<std::string> loc = resp.headers.Get("location")) {
      absl::MutexLock l(&mu_);
      upload_sessions_[d.digest.ToString()] = ResolveUrl(url, *loc);
    }
    return false;
  }
  if (resp.status == 401 || resp.status == 403) return false;
  return WithHint(ErrorResponse(r->get(), what), h);
}

absl::Status RegistryClient::PushBlob(const Descriptor& d,
                                      absl::string_view bytes) {
  if (bytes.size() != static_cast<uint64_t>(d.size) ||
      Sha256::Of(bytes) != d.digest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob ", d.digest.ToString(), " (", d.size, " bytes) to push has ",
        bytes.size(), " bytes hashing to ", Sha256::Of(bytes).ToString()));
  }
  return Upload(d, bytes, "");
}

absl::Status RegistryClient::PushBlobFile(const Descriptor& d,
                                          const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", path));
  }
  if (static_cast<int64_t>(st.st_size) != d.size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob ", d.digest.ToString(), " to push from ", path, " has ",
        st.st_size, " bytes; its descriptor says ", d.size));
  }
  return Upload(d, "", path);
}

absl::Status RegistryClient::Upload(const Descriptor& d,
                                    absl::string_view bytes,
                                    const std::string& path) {
  const RegistryHost& h = Origin();
  RETURN_IF_ERROR(CheckCanPush(h, ref_.registry));
  const std::string what =
      absl::StrCat("uploading blob ", d.digest.ToString(), " to ", RepoName());
  std::optional<std::string> session;
  {
    absl::MutexLock l(&mu_);
    auto it = upload_sessions_.find(d.digest.ToString());
    if (it != upload_sessions_.end()) {
      session = std::move(it->second);
      upload_sessions_.erase(it);
    }
  }
  while (true) {
    const bool reused = session.has_value();
    std::string location;
    if (reused) {
      location = *std::move(session);
      session.reset();
    } else {
      HttpRequest post;
      post.method = "POST";
      post.url =
          absl::StrCat(h.BaseUrl(), "/", ref_.repository, "/blobs/uploads/");
      post.timeout = absl::Seconds(60);
      const std::string post_url = post.url;
      ASSIGN_OR_RETURN(std::unique_ptr<HttpBodyReader> r,
                       SendOnHost(h, std::move(post), PushScope()));
      std::optional<std::string> loc = r->response().headers.Get("location");
      if (r->response().status != 202) {
        return WithHint(ErrorResponse(r.get(), what), h);
      }
      if (!loc || loc->empty()) {
        return absl::UnavailableError(
            absl::StrCat(what,
                         ": the registry opened an upload session without a "
                         "Location"));
      }
      location = ResolveUrl(post_url, *loc);
    }
    HttpRequest put;
    put.method = "PUT";
    put.url =
        absl::StrCat(location, absl::StrContains(location, "?") ? "&" : "?",
                     "digest=", UrlQueryEscape(d.digest.ToString()));
    put.headers.push_back({"Content-Type", "application/octet-stream"});
    if (path.empty()) {
      put.body = std::string(bytes);
    } else {
      put.body_file = path;
    }
    put.timeout = absl::ZeroDuration();  // any size; the stall limit applies
    ASSIGN_OR_RETURN(std::unique_ptr<HttpBodyReader> r,
                     SendOnHost(h, std::move(put), PushScope()));
    const HttpResponse& resp = r->response();
    if (resp.status >= 200 && resp.status < 300) {
      return CheckContentDigest(resp, d.digest, what);
    }
    if (reused && resp.status == 404) continue;  // the session expired
    return WithHint(ErrorResponse(r.get(), what), h);
  }
}

absl::StatusOr<Digest> RegistryClient::PushManifest(
    absl::string_view selector, absl::string_view media_type,
    absl::string_view bytes) {
  const RegistryHost& h = Origin();
  RETURN_IF_ERROR(CheckCanPush(h, ref_.registry));
  const Digest digest = Sha256::Of(bytes);
  const std::string what =
      absl::StrCat("pushing manifest ", digest.ToString(), " to ", RepoName(),
                   absl::StartsWith(selector, "sha256:") ? "@" : ":", selector);
  if (media_type.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": no media type given"));
  }
  HttpRequest req;
  req.method = "PUT";
  req.url =
      absl::StrCat(h.BaseUrl(), "/", ref_.repository, "/manifests/", selector);
  req.headers.push_back({"Content-Type", std::string(media_type)});
  req.body = std::string(bytes);
  req.timeout = absl::Seconds(60);
  ASSIGN_OR_RETURN(std::unique_ptr<HttpBodyReader> r,
                   SendOnHost(h, std::move(req), PushScope()));
  const HttpResponse& resp = r->response();
  if (resp.status < 200 || resp.status >= 300) {
    return WithHint(ErrorResponse(r.get(), what), h);
  }
  RETURN_IF_ERROR(CheckContentDigest(resp, digest, what));
  return digest;
}

}  // namespace lazypull
