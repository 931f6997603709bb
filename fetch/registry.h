// RegistryClient: the OCI distribution API for one image reference. Read
// side: manifests (OCI and Docker media types), image indexes resolved to one
// platform's manifest, the image config, and blobs. Write side (push): blob
// existence, cross-repository mounts, monolithic blob uploads (from memory
// or streamed from a file) and manifest PUTs.
//
// Integrity: a manifest fetched by digest must hash to it; one fetched by tag
// must match the registry's Docker-Content-Digest when it sends one; a child
// manifest must also have its descriptor's size; every blob (config and
// layers) is hashed as it is read and refused (DataLoss) unless its sha256
// and size are those of its descriptor. Callers never see an unverified
// blob's end: the last Read of a corrupt blob fails.
//
// Hosts: mirrors from hosts.toml first (for resolving a tag only those with
// the "resolve" capability, for blobs and digests those with "pull"; their
// requests carry ?ns=<registry>), then the origin; a host that fails (error,
// 404, ...) passes the request to the next, and the final error names every
// host's failure. TLS is verified unless turned off for that host.
//
// Pushes go to the origin only (never a mirror), with the scope
// "repository:<repo>:pull,push" (a mount's challenge adds the source
// repository's pull scope, which auth.cc asks for too).
//
// Auth: see fetch/auth.h; a 401 is answered once per request, after which the
// registry's answer is final.
//
// Redirects (blob storage, e.g. S3/CDN behind a registry): followed here, not
// by the transport, so that the Authorization header never goes to the
// redirected host. The signed URL is cached per blob and reused until
// `signed_url_ttl` passes or the storage answers 401/403/404, when the blob
// is re-resolved through the registry once.
//
// Thread-safety: all methods are safe from any thread; blob readers are used
// by one thread each.
#ifndef LAZYPULL_FETCH_REGISTRY_H_
#define LAZYPULL_FETCH_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/digest.h"
#include "core/tar_reader.h"
#include "fetch/auth.h"
#include "fetch/hosts_config.h"
#include "fetch/http.h"
#include "fetch/manifest.h"
#include "fetch/reference.h"

namespace lazypull {

struct RegistryOptions {
  HttpTransport* http = nullptr;  // REQUIRED; not owned
  // Credentials; null means anonymous only. Not owned.
  const CredentialStore* credentials = nullptr;
  // Hosts dir, --plain-http, --insecure-skip-tls-verify, --ca-file.
  RegistryHostDefaults hosts;
  // The platform to pick from an index (default: this machine).
  Platform platform = Platform::Host();
  RetryPolicy retry;
  // An attempt whose body averages under `stall_bytes_per_second` over
  // `stall_timeout` fails, and is retried (a download resumes where it
  // stopped) as a dropped connection is: a server or middlebox trickling a
  // whole blob a few bytes at a time would otherwise hold a pull forever
  // (whole-blob transfers have no total time limit). Defaults: 1 KiB/s over
  // 30 s.
  absl::Duration stall_timeout = absl::Seconds(30);
  uint64_t stall_bytes_per_second = 1024;
  // Manifests and configs larger than this are refused (default 4 MiB, as
  // containerd).
  size_t max_manifest_size = 4 << 20;
  // How long a redirect target is reused before re-resolving (default 5 min).
  absl::Duration signed_url_ttl = absl::Minutes(5);
  // How long range requests for a blob skip a mirror that failed one for
  // it, while a host after it can serve them (default 1 min).
  absl::Duration mirror_retry_after = absl::Minutes(1);
  // An attempt of a range request may take this long in all (not one read
  // at its reader's pace: see OpenBlobRange).
  absl::Duration range_timeout = absl::Seconds(60);
};

struct FetchedManifest {
  Digest digest;      // sha256 of `bytes`
  std::string bytes;  // exactly as served
  ManifestKind kind = ManifestKind::kManifest;
  std::string content_type;
};

// An image resolved to one platform.
struct ResolvedImage {
  // The index the reference named, if it named one.
  std::optional<Digest> index_digest;
  Digest manifest_digest;
  ImageManifest manifest;
  Descriptor config_descriptor;
  ImageConfig config;
  // The manifest came from an index entry without a platform: FetchConfig
  // checks the config's instead (CheckConfigPlatform).
  bool platform_from_config = false;
};

// A blob's bytes, checked against its descriptor as they are read (see the
// ByteStream contract in core/tar_reader.h). The Read that reaches the end
// fails with DataLoss if the digest or size is wrong.
class BlobReader : public ByteStream {
 public:
  virtual uint64_t bytes_read() const = 0;
  // Where the bytes came from ("https://host/v2/..."), for messages.
  virtual std::string source() const = 0;
};

// Whether a blob body cut off with `st` after some of it came should be
// asked for again through the registry, from where it stopped: the transport
// resumed it at the same URL and was refused (401/403, or 400/404 from some
// storages), as a signed storage URL that expired meanwhile is; the registry
// resolves a fresh one.
bool AskRegistryAgain(const absl::Status& st);

class RegistryClient {
 public:
  static absl::StatusOr<std::unique_ptr<RegistryClient>> Create(
      const ImageReference& ref, const RegistryOptions& options);

  const ImageReference& reference() const { return ref_; }
  const std::vector<RegistryHost>& hosts() const { return hosts_; }

  // The manifest or index the reference names (tag or digest), verified.
  absl::StatusOr<FetchedManifest> FetchManifest(absl::string_view selector);

  // Reference -> (index ->) platform manifest -> config.
  absl::StatusOr<ResolvedImage> Resolve();
  // The same in two steps, for callers that overlap the config's round trip
  // with other work: the manifest (ResolvedImage::config left empty), then
  // the config it names, checked against it (one diff_id per layer).
  absl::StatusOr<ResolvedImage> ResolveManifest();
  absl::StatusOr<ImageConfig> FetchConfig(const ResolvedImage& img);

  // A whole small blob (a config), verified.
  absl::StatusOr<std::string> FetchBlob(const Descriptor& d);

  // A blob as a stream, verified at its end.
  absl::StatusOr<std::unique_ptr<BlobReader>> OpenBlob(const Descriptor& d);

  // Bytes [first, last] of blob `d`: one single-range GET, with the same
  // hosts (mirrors first), auth and redirect handling (signed URL cache) as
  // OpenBlob. The answer is a 206 whose Content-Range the transport has
  // checked against the range asked for; a 200 is an error. The bytes are
  // NOT verified (a range cannot be): callers check them (chunk digests).
  // `*source` names where they came from (no signature).
  // `stream_weight`: HttpRequest::stream_weight of the request(s).
  // `reader_paced`: the body is read at its reader's pace (a stream over
  // much of the blob): no limit on an attempt's whole time, which would
  // count the time it waits for its reader (the stall limit still holds);
  // else an attempt has RegistryOptions::range_timeout.
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> OpenBlobRange(
      const Descriptor& d, uint64_t first, uint64_t last, std::string* source,
      int stream_weight = 0, bool reader_paced = false);

  // --- Write side. The origin only; scope pull,push.

  // Whether the repository holds blob `d` (HEAD): false on 404; a blob the
  // registry reports with another size is an error.
  absl::StatusOr<bool> HasBlob(const Descriptor& d);

  // Asks the registry to mount blob `d` from repository `from_repo` of this
  // registry (POST .../blobs/uploads/?mount=&from=): true when mounted
  // (201); false when declined (202, e.g. `from_repo` lacks the blob or does
  // not exist; the upload session the registry opened instead is kept for
  // the next PushBlob* of `d`), or when the credentials do not reach
  // `from_repo` (401/403).
  absl::StatusOr<bool> MountBlob(const Descriptor& d,
                                 absl::string_view from_repo);

  // Uploads blob `d` in one request (POST .../blobs/uploads/ for a session,
  // then PUT <location>&digest=<d>): from memory, or streamed from the file
  // at `path` (never held in memory; its size must be d.size, checked before
  // sending). The registry verifies the digest: a mismatch comes back as
  // its DIGEST_INVALID error (InvalidArgument). A Docker-Content-Digest
  // answered must be d's.
  absl::Status PushBlob(const Descriptor& d, absl::string_view bytes);
  absl::Status PushBlobFile(const Descriptor& d, const std::string& path);

  // PUT .../manifests/<selector> (a tag or "sha256:...") with Content-Type
  // `media_type`. The registry's refusal (MANIFEST_BLOB_UNKNOWN,
  // MANIFEST_INVALID, ...) is an error carrying its codes and details; a
  // Docker-Content-Digest answered must be sha256(bytes). Returns that
  // digest.
  absl::StatusOr<Digest> PushManifest(absl::string_view selector,
                                      absl::string_view media_type,
                                      absl::string_view bytes);

  // Token fetches so far (tests).
  int tokens_fetched() const { return auth_.tokens_fetched(); }

 private:
  RegistryClient(const ImageReference& ref, const RegistryOptions& options,
                 std::vector<RegistryHost> hosts);

  // Runs `req` (URL relative to the host's API root + repository) on `h`
  // with auth: one retry after a 401. The reader's response may have any
  // status; redirects are returned, not followed.
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> OpenOnHost(
      const RegistryHost& h, const std::string& method,
      const std::string& suffix,
      std::vector<std::pair<std::string, std::string>> headers,
      absl::Duration timeout, int stream_weight = 0);
  // The one auth loop: runs `req` (its URL absolute) on `h` with the
  // Authorization for `scope`, answering one 401. A URL outside h's origin
  // (an upload Location elsewhere) is sent without credentials. TLS and
  // retry policy are set here.
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> SendOnHost(
      const RegistryHost& h, HttpRequest req, const std::string& scope);
  // Follows the redirects `*r` (an answer to a request for `*url`) leads
  // to, at most 5: each hop is `tmpl` sent to the Location (relative ones
  // resolved) through SendOnHost, so a hop within `h`'s origin carries its
  // credentials and one elsewhere (signed storage URLs) none. `*url`
  // becomes the final URL.
  absl::Status FollowRedirects(const RegistryHost& h, const HttpRequest& tmpl,
                               const std::string& scope, std::string* url,
                               std::unique_ptr<HttpBodyReader>* r);
  // The same with each hop sent by `send`.
  using Sender = std::function<absl::StatusOr<std::unique_ptr<HttpBodyReader>>(
      HttpRequest)>;
  absl::Status FollowRedirects(const Sender& send, const HttpRequest& tmpl,
                               std::string* url,
                               std::unique_ptr<HttpBodyReader>* r);
  std::string PullScope() const;
  // The origin host (pushes never go to mirrors).
  const RegistryHost& Origin() const { return hosts_.back(); }
  std::string PushScope() const;
  // "127.0.0.1:5000/repo", for messages.
  std::string RepoName() const;
  // The upload of PushBlob / PushBlobFile (exactly one of bytes / path).
  absl::Status Upload(const Descriptor& d, absl::string_view bytes,
                      const std::string& path);
  // Opens the blob on `h`, following a redirect (or a cached one).
  // With `range` ("bytes=a-b"), a range request: the expected answer is 206;
  // each attempt is limited to `timeout` (zero: no limit).
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> OpenBlobOnHost(
      const RegistryHost& h, const Descriptor& d, std::string* source,
      const std::string& range = "", int stream_weight = 0,
      absl::Duration timeout = absl::ZeroDuration());
  absl::StatusOr<FetchedManifest> FetchManifestOnHost(
      const RegistryHost& h, absl::string_view selector);
  std::string CredentialKey(const RegistryHost& h) const;
  // TLS for a URL: its host's settings if configured, else the origin's
  // (CAs and verification, no client certificate).
  TlsOptions TlsFor(absl::string_view url) const;
  // The retry policy and stall limits of these options, on `req`.
  void SetAttemptLimits(HttpRequest* req) const;

  const ImageReference ref_;
  const RegistryOptions opts_;
  const std::vector<RegistryHost> hosts_;
  RegistryAuth auth_;

  struct SignedUrl {
    std::string url;
    absl::Time resolved;
  };
  absl::Mutex mu_;
  std::map<std::string, SignedUrl> signed_urls_ ABSL_GUARDED_BY(mu_);
  // "digest@host" -> when a mirror last failed a range request for that
  // blob: range requests skip it for `mirror_retry_after`, so that a mirror
  // without the blob (or down) does not cost every lazy read a round trip
  // (or retries) before the origin answers.
  std::map<std::string, absl::Time> mirror_failed_ ABSL_GUARDED_BY(mu_);
  // Upload sessions a declined mount opened, by digest: absolute URLs.
  std::map<std::string, std::string> upload_sessions_ ABSL_GUARDED_BY(mu_);
};

// The errors of a registry's JSON error body
// ({"errors":[{"code":...,"message":...,"detail":...}]}) as
// "CODE: message (detail)" joined by "; " (a detail only when it is a
// string, e.g. the digest of MANIFEST_BLOB_UNKNOWN; at most 5 errors, then
// how many more), or "".
std::string RegistryErrorDetail(absl::string_view body);

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_REGISTRY_H_
