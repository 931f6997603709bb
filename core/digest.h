// SHA-256 digests: the `sha256:<hex>` value type and an incremental hasher.
//
// Every integrity check in lazypull (TOC digest, chunk digests, file digests,
// DiffIDs, blob digests) goes through this file. The hasher wraps OpenSSL's
// EVP interface, which uses SHA-NI where the CPU has it.
//
// Thread-safety: Digest is a value type. A Sha256 object must not be used from
// two threads at once; distinct objects are independent.
#ifndef LAZYPULL_CORE_DIGEST_H_
#define LAZYPULL_CORE_DIGEST_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace lazypull {

// A SHA-256 digest. The only algorithm the formats use.
struct Digest {
  std::array<uint8_t, 32> bytes{};

  // Parses "sha256:" followed by 64 lowercase or uppercase hex digits.
  static absl::StatusOr<Digest> Parse(absl::string_view text);
  // "sha256:<64 lowercase hex>".
  std::string ToString() const;
  // The 64 hex digits alone.
  std::string Hex() const;

  friend bool operator==(const Digest& a, const Digest& b) {
    return a.bytes == b.bytes;
  }
  friend bool operator!=(const Digest& a, const Digest& b) { return !(a == b); }
  template <typename H>
  friend H AbslHashValue(H h, const Digest& d) {
    return H::combine_contiguous(std::move(h), d.bytes.data(), d.bytes.size());
  }
};

// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t len);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }
  // Returns the digest and resets the hasher for reuse.
  Digest Finish();

  // One-shot convenience.
  static Digest Of(absl::string_view data);

 private:
  EVP_MD_CTX* ctx_;
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_DIGEST_H_
