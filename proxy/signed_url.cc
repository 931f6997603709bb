#include "proxy/signed_url.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lazypull::proxy {

UrlSigner::UrlSigner() : key_(32, '\0') {
  RAND_bytes(reinterpret_cast<unsigned char*>(key_.data()),
             static_cast<int>(key_.size()));
}

std::string UrlSigner::Mac(absl::string_view path, int64_t expires_ms) const {
  std::string msg = absl::StrCat(path, "\n", expires_ms);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out,
       &len);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(out), len));
}

std::string UrlSigner::Sign(absl::string_view path, absl::Time expires) const {
  int64_t ms = absl::ToUnixMillis(expires);
  return absl::StrCat(path, "?expires=", ms, "&sig=", Mac(path, ms));
}

absl::Status UrlSigner::Verify(absl::string_view target, absl::Time now,
                               std::string* path) const {
  size_t q = target.find('?');
  if (q == absl::string_view::npos) {
    return absl::PermissionDeniedError("unsigned URL (no query)");
  }
  absl::string_view p = target.substr(0, q);
  absl::string_view sig;
  int64_t expires_ms = 0;
  bool has_expires = false;
  for (absl::string_view kv : absl::StrSplit(target.substr(q + 1), '&')) {
    std::pair<absl::string_view, absl::string_view> pair =
        absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (pair.first == "sig") sig = pair.second;
    if (pair.first == "expires") {
      has_expires = absl::SimpleAtoi(pair.second, &expires_ms);
    }
  }
  if (sig.empty() || !has_expires) {
    return absl::PermissionDeniedError("unsigned URL (no sig or expires)");
  }
  std::string want = Mac(p, expires_ms);
  if (want.size() != sig.size() ||
      CRYPTO_memcmp(want.data(), sig.data(), want.size()) != 0) {
    return absl::PermissionDeniedError("bad signature");
  }
  if (absl::ToUnixMillis(now) > expires_ms) {
    return absl::PermissionDeniedError(
        absl::StrCat("URL expired at ", expires_ms, " ms"));
  }
  *path = std::string(p);
  return absl::OkStatus();
}

}  // namespace lazypull::proxy
