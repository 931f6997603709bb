#include "core/digest.h"

#include <openssl/evp.h>

#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lazypull {
namespace {

// Hex digit values, -1 for anything else: one table look-up per digit (a
// 100,000-entry TOC has ~200,000 digests to parse).
struct HexTable {
  int8_t v[256];
  constexpr HexTable() : v() {
    for (int i = 0; i < 256; ++i) v[i] = -1;
    for (int i = 0; i < 10; ++i) v['0' + i] = static_cast<int8_t>(i);
    for (int i = 0; i < 6; ++i) {
      v['a' + i] = static_cast<int8_t>(10 + i);
      v['A' + i] = static_cast<int8_t>(10 + i);
    }
  }
};
constexpr HexTable kHexTable;

int HexValue(char c) { return kHexTable.v[static_cast<uint8_t>(c)]; }

constexpr absl::string_view kPrefix = "sha256:";

}  // namespace

absl::StatusOr<Digest> Digest::Parse(absl::string_view text) {
  if (text.substr(0, kPrefix.size()) != kPrefix) {
    return absl::InvalidArgumentError(absl::StrCat(
        "digest \"", text.substr(0, 80), "\" is not of the form sha256:<hex>"));
  }
  absl::string_view hex = text.substr(kPrefix.size());
  if (hex.size() != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("digest \"", text.substr(0, 80),
                     "\" must have 64 hex digits, has ", hex.size()));
  }
  Digest d;
  for (size_t i = 0; i < 32; ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("digest \"", text, "\" has a non-hex digit"));
    }
    d.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return d;
}

std::string Digest::Hex() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

std::string Digest::ToString() const { return absl::StrCat(kPrefix, Hex()); }

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
    std::abort();  // Out of memory or a broken libcrypto: nothing to recover.
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(const void* data, size_t len) {
  if (len > 0) EVP_DigestUpdate(ctx_, data, len);
}

Digest Sha256::Finish() {
  Digest d;
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_, d.bytes.data(), &len);
  EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
  return d;
}

Digest Sha256::Of(absl::string_view data) {
  Digest d;
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), d.bytes.data(), &len, EVP_sha256(),
             nullptr);
  return d;
}

}  // namespace lazypull
