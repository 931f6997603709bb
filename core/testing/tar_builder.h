// TarBuilder: writes small tar archives for tests of the tar reader and the
// layer writer, in the three dialects they must read: plain USTAR, GNU
// (././@LongLink 'L'/'K' records, base-256 numbers) and PAX ('x' records for
// long names, big ids, fractional mtimes, xattrs).
//
// It writes what it is told (a test may ask for hostile input through
// RawHeader); it validates nothing.
//
// Thread-safety: a TarBuilder is used by one thread at a time.
#ifndef LAZYPULL_CORE_TESTING_TAR_BUILDER_H_
#define LAZYPULL_CORE_TESTING_TAR_BUILDER_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace lazypull::testing {

enum class TarDialect : uint8_t {
  kPax,  // USTAR, with a PAX 'x' header where a field does not fit
  kGnu,  // GNU magic, 'L'/'K' long names, base-256 for big numbers
};

struct TarSpec {
  std::string name;
  char typeflag = '0';
  std::string content;  // payload of '0' entries
  std::string link;     // '1' / '2'
  uint32_t mode = 0644;
  uint64_t uid = 0;
  uint64_t gid = 0;
  std::string uname;
  std::string gname;
  int64_t mtime = 1622548800;  // 2021-06-01T12:00:00Z
  std::string pax_mtime;       // if set, a PAX "mtime" record (kPax)
  uint32_t dev_major = 0;
  uint32_t dev_minor = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;  // SCHILY.xattr
  // Extra PAX records, written verbatim (kPax), e.g. LIBARCHIVE.xattr.*.
  std::vector<std::pair<std::string, std::string>> pax_records;
};

class TarBuilder {
 public:
  explicit TarBuilder(TarDialect d = TarDialect::kPax) : dialect_(d) {}

  TarBuilder& Add(const TarSpec& spec);
  // Shorthands.
  TarBuilder& File(absl::string_view name, absl::string_view content,
                   uint32_t mode = 0644);
  TarBuilder& Dir(absl::string_view name, uint32_t mode = 0755);
  TarBuilder& Symlink(absl::string_view name, absl::string_view target);
  TarBuilder& Hardlink(absl::string_view name, absl::string_view target);
  // Appends bytes verbatim (a hand-made header, garbage, ...).
  TarBuilder& Raw(absl::string_view bytes);

  // The archive so far plus the two zero blocks.
  std::string Finish() const;
  // The archive so far, without EOF blocks.
  const std::string& bytes() const { return out_; }

  // One 512-byte header block with a valid checksum; `size` is written as
  // given. gnu: GNU magic "ustar  \0" instead of "ustar\0" "00".
  static std::string Header(absl::string_view name, char typeflag,
                            uint64_t size, uint32_t mode = 0644,
                            absl::string_view link = "", bool gnu = false);

 private:
  TarDialect dialect_;
  std::string out_;
};

// A PAX record "<len> key=value\n".
std::string PaxRecord(absl::string_view key, absl::string_view value);

}  // namespace lazypull::testing

#endif  // LAZYPULL_CORE_TESTING_TAR_BUILDER_H_
