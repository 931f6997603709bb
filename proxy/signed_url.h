// UrlSigner: signed, expiring URLs for the fault proxy's built-in blob
// storage, the stand-in for the object store a registry redirects blob
// downloads to (S3, GCS, Azure: "307 Temporary Redirect" to a pre-signed
// URL that stops working after a while).
//
// A signed URL is PATH?expires=MS&sig=HEX where MS is the expiry in Unix
// milliseconds (milliseconds, so tests can expire URLs within a second) and
// HEX is HMAC-SHA256(key, PATH "\n" MS). Editing the path or the expiry
// breaks the signature.
//
// Thread-safety: immutable after construction; safe from any thread.
#ifndef LAZYPULL_PROXY_SIGNED_URL_H_
#define LAZYPULL_PROXY_SIGNED_URL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace lazypull::proxy {

class UrlSigner {
 public:
  // A random 32-byte key.
  UrlSigner();
  explicit UrlSigner(std::string key) : key_(std::move(key)) {}

  // "PATH?expires=MS&sig=HEX" (`path` without a query).
  std::string Sign(absl::string_view path, absl::Time expires) const;
  // OK if `target` (path and query) carries a valid signature that has not
  // expired at `now`; PermissionDenied saying why otherwise. On success
  // *path is the target's path.
  absl::Status Verify(absl::string_view target, absl::Time now,
                      std::string* path) const;

 private:
  std::string Mac(absl::string_view path, int64_t expires_ms) const;

  std::string key_;
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_SIGNED_URL_H_
