#include "fetch/registry.h"

#include <simdjson.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
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
  return absl::Status(st.code(), absl::StrCat(m, "; ", hint));
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
  return absl::Status(errs.back().second.code(),
                      absl::StrCat(what, " failed on every host: ",
                                   absl::StrJoin(parts, "; ")));
}

class VerifyingBlobReader : public BlobReader {
 public:
  VerifyingBlobReader(std::unique_ptr<HttpBodyReader> r, Descriptor d,
                      std::string source)
      : r_(std::move(r)), d_(std::move(d)), source_(std::move(source)) {}

  absl::StatusOr<absl::string_view> Read(size_t n) override {
    if (!final_.ok()) return final_;
    if (done_) return absl::string_view();
    absl::StatusOr<absl::string_view> piece = r_->Read(n);
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
  for (simdjson::dom::element e : errors) {
    std::string_view code, message;
    if (e["code"].get(code) != simdjson::SUCCESS) code = {};
    if (e["message"].get(message) != simdjson::SUCCESS) message = {};
    if (code.empty() && message.empty()) continue;
    return absl::StrCat(std::string(code), code.empty() ? "" : ": ",
                        std::string(message));
  }
  return "";
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

TlsOptions RegistryClient::TlsFor(absl::string_view url) const {
  std::string host = UrlHost(url);
  for (const RegistryHost& h : hosts_) {
    if (h.host == host) return h.tls;
  }
  TlsOptions t;
  t.ca_files = opts_.hosts.ca_files;
  return t;
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> RegistryClient::OpenOnHost(
    const RegistryHost& h, const std::string& method, const std::string& suffix,
    std::vector<std::pair<std::string, std::string>> headers,
    absl::Duration timeout) {
  std::string url = absl::StrCat(h.BaseUrl(), "/", ref_.repository, suffix);
  if (h.mirror) {
    absl::StrAppend(&url, absl::StrContains(url, "?") ? "&" : "?",
                    "ns=", UrlQueryEscape(ref_.registry));
  }
  const std::string scope =
      absl::StrCat("repository:", ref_.repository, ":pull");
  const std::string key = CredentialKey(h);
  for (int round = 0;; ++round) {
    ASSIGN_OR_RETURN(std::string authz,
                     auth_.Authorization(key, h.host, scope));
    HttpRequest req;
    req.method = method;
    req.url = url;
    req.headers = headers;
    if (!authz.empty()) req.headers.push_back({"Authorization", authz});
    req.tls = h.tls;
    req.retry = opts_.retry;
    req.timeout = timeout;
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r = opts_.http->Open(req);
    if (!r.ok()) return WithHint(r.status(), h);
    if ((*r)->response().status == 401 && round > 0) {
      return auth_.Refused(key, h.host, scope, authz);
    }
    if ((*r)->response().status == 401) {
      std::vector<std::string> challenges =
          (*r)->response().headers.GetAll("www-authenticate");
      r->reset();  // the error body is not needed
      RETURN_IF_ERROR(
          auth_.HandleUnauthorized(key, h.host, scope, challenges, authz));
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
  ResolvedImage img;
  ASSIGN_OR_RETURN(FetchedManifest top, FetchManifest(ref_.ManifestSelector()));
  FetchedManifest m;
  if (top.kind == ManifestKind::kIndex) {
    ASSIGN_OR_RETURN(ImageIndex idx, ParseImageIndex(top.bytes));
    ASSIGN_OR_RETURN(Descriptor d, SelectPlatform(idx, opts_.platform));
    ASSIGN_OR_RETURN(m, FetchManifest(d.digest.ToString()));
    if (m.bytes.size() != static_cast<size_t>(d.size)) {
      return absl::DataLossError(
          absl::StrCat("manifest ", d.digest.ToString(), " has ",
                       m.bytes.size(), " bytes; the index says ", d.size));
    }
    if (m.kind != ManifestKind::kManifest) {
      return absl::UnimplementedError(
          absl::StrCat("the index entry for ", opts_.platform.String(),
                       " is another index; nested indexes are not supported"));
    }
    img.index_digest = top.digest;
  } else {
    m = std::move(top);
  }
  img.manifest_digest = m.digest;
  ASSIGN_OR_RETURN(img.manifest, ParseImageManifest(m.bytes));
  img.config_descriptor = img.manifest.config;
  ASSIGN_OR_RETURN(std::string config, FetchBlob(img.manifest.config));
  ASSIGN_OR_RETURN(img.config, ParseImageConfig(config));
  if (img.config.diff_ids.size() != img.manifest.layers.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("image config lists ", img.config.diff_ids.size(),
                     " diff_ids for ", img.manifest.layers.size(), " layers"));
  }
  return img;
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> RegistryClient::OpenBlobOnHost(
    const RegistryHost& h, const Descriptor& d, std::string* source,
    const std::string& range) {
  const std::string cache_key = absl::StrCat(d.digest.ToString(), "@", h.host);
  const int ok_status = range.empty() ? 200 : 206;
  std::vector<std::pair<std::string, std::string>> range_headers;
  if (!range.empty()) {
    range_headers.push_back({"Range", range});
    range_headers.push_back({"Accept-Encoding", "identity"});
  }
  auto open_plain = [&](const std::string& url)
      -> absl::StatusOr<std::unique_ptr<HttpBodyReader>> {
    // Storage URLs are signed: no Authorization, no registry headers (the
    // Range is part of the request, not a registry header).
    HttpRequest req;
    req.url = url;
    req.headers = range_headers;
    req.tls = TlsFor(url);
    req.retry = opts_.retry;
    req.timeout = range.empty() ? absl::ZeroDuration() : absl::Seconds(60);
    return opts_.http->Open(req);
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
      OpenOnHost(h, "GET", suffix, range_headers,
                 range.empty() ? absl::ZeroDuration() : absl::Seconds(60)));
  std::string url = absl::StrCat(h.BaseUrl(), "/", ref_.repository, suffix);
  *source = url;
  for (int hop = 0; IsRedirect(r->response().status); ++hop) {
    std::optional<std::string> loc = r->response().headers.Get("location");
    if (!loc || hop >= kMaxRedirects) {
      return absl::UnavailableError(absl::StrCat(
          "GET ", *source, ": ",
          loc ? "too many redirects" : "redirect without a Location"));
    }
    url = ResolveUrl(url, *loc);
    r.reset();
    ASSIGN_OR_RETURN(r, open_plain(url));
    *source = url.substr(0, url.find('?'));  // signatures stay out of messages
    if (r->response().status == ok_status) {
      absl::MutexLock l(&mu_);
      signed_urls_[cache_key] = {url, absl::Now()};
    }
  }
  return r;
}

absl::StatusOr<std::unique_ptr<BlobReader>> RegistryClient::OpenBlob(
    const Descriptor& d) {
  std::vector<std::pair<std::string, absl::Status>> errs;
  for (const RegistryHost& h : hosts_) {
    if (!h.can_pull) continue;
    std::string source;
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r =
        OpenBlobOnHost(h, d, &source);
    absl::Status st;
    if (!r.ok()) {
      st = r.status();
    } else if ((*r)->response().status != 200) {
      const int status = (*r)->response().status;
      absl::StatusOr<std::string> body = ReadAll(r->get(), 64 << 10, "error");
      st = HttpStatusToStatus(
          status, absl::StrCat("blob ", d.digest.ToString(), " from ", source),
          body.ok() ? RegistryErrorDetail(*body) : "");
      if (st.ok()) {
        st = absl::UnavailableError(absl::StrCat("blob ", d.digest.ToString(),
                                                 " from ", source,
                                                 ": unexpected HTTP ", status));
      }
    } else if (auto cl = (*r)->response().headers.Get("content-length")) {
      int64_t n;
      if (absl::SimpleAtoi(*cl, &n) && n != d.size) {
        st = absl::DataLossError(absl::StrCat(
            "blob ", d.digest.ToString(), " from ", source, " has ", n,
            " bytes (Content-Length); its descriptor says ", d.size));
      }
    }
    if (st.ok()) {
      return std::unique_ptr<BlobReader>(
          new VerifyingBlobReader(*std::move(r), d, source));
    }
    errs.emplace_back(h.BaseUrl(), WithHint(st, h));
  }
  if (errs.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no host of ", ref_.registry,
                     " may pull (check capabilities in hosts.toml)"));
  }
  return AllHostsFailed(absl::StrCat("fetching blob ", d.digest.ToString()),
                        errs);
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> RegistryClient::OpenBlobRange(
    const Descriptor& d, uint64_t first, uint64_t last, std::string* source) {
  const std::string range = absl::StrCat("bytes=", first, "-", last);
  std::vector<std::pair<std::string, absl::Status>> errs;
  for (const RegistryHost& h : hosts_) {
    if (!h.can_pull) continue;
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> r =
        OpenBlobOnHost(h, d, source, range);
    absl::Status st;
    if (!r.ok()) {
      st = r.status();
    } else if ((*r)->response().status != 206) {
      const int status = (*r)->response().status;
      absl::StatusOr<std::string> body = ReadAll(r->get(), 64 << 10, "error");
      const std::string what = absl::StrCat(
          "blob ", d.digest.ToString(), " range ", range, " from ", *source);
      st = HttpStatusToStatus(status, what,
                              body.ok() ? RegistryErrorDetail(*body) : "");
      if (st.ok()) {
        st = absl::UnavailableError(
            absl::StrCat(what, ": unexpected HTTP ", status));
      }
    }
    if (st.ok()) return r;
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

}  // namespace lazypull
