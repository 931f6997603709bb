// TarReader: a streaming parser of tar archives, for `lazypull convert`.
//
// Formats: POSIX ustar (name prefix), GNU (././@LongLink 'L' / 'K' records,
// base-256 numbers), PAX ('x' records: path, linkpath, size, uid, gid, uname,
// gname, mtime with a fraction, SCHILY.xattr.*, SCHILY.devmajor/devminor;
// LIBARCHIVE.xattr.* is not read, as Go's archive/tar - containerd, the
// eStargz writer - does not) and old V7 headers. A PAX 'g' global header is
// skipped: its records are not applied (as the eStargz reference does) and
// its blocks are not part of any entry.
//
// Entry types: '0', '\0' and '7' are regular files ('\0' with a trailing "/"
// is a directory, as GNU tar and Go's archive/tar read it), '1' hardlink,
// '2' symlink, '3' char, '4' block, '5' dir, '6' fifo. Anything else (GNU
// sparse 'S', multi-volume 'M', ...) is refused with a clear error.
//
// Every header is checked: its checksum (unsigned, or the signed sum old tars
// wrote), its numbers (octal or base-256, never negative), a size above
// TarReaderOptions::max_entry_size, extension records larger than
// max_extension_size, PAX records that do not parse, names holding NUL. Errors
// are InvalidArgument (malformed archive) or DataLoss (the stream ends inside
// an entry) and name the entry and its stream offset.
//
// The end of the archive is the first all-zero block, or the end of the
// stream exactly at a header boundary (zstd:chunked blobs from the stargz
// reference carry no EOF blocks).
//
// Each TarHeader records the exact header blocks it came from (`raw`,
// extension headers included) and where its payload starts, so a caller that
// holds the stream in memory can copy headers verbatim and slice payloads
// without copying.
//
// Thread-safety: a TarReader and its ByteStream are used by one thread at a
// time.
#ifndef LAZYPULL_CORE_TAR_READER_H_
#define LAZYPULL_CORE_TAR_READER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazypull {

// A forward-only byte source.
class ByteStream {
 public:
  virtual ~ByteStream() = default;
  // Returns the next min(n, remaining) bytes; an empty view means the end of
  // the stream. The view stays valid until the next call.
  virtual absl::StatusOr<absl::string_view> Read(size_t n) = 0;
  // Skips n bytes (fewer only at the end of the stream; returns how many).
  virtual absl::StatusOr<uint64_t> Skip(uint64_t n);
};

// A ByteStream over memory the caller keeps alive; Read never copies.
class MemoryByteStream : public ByteStream {
 public:
  explicit MemoryByteStream(absl::string_view data) : data_(data) {}
  absl::StatusOr<absl::string_view> Read(size_t n) override;
  absl::StatusOr<uint64_t> Skip(uint64_t n) override;

 private:
  absl::string_view data_;
  size_t pos_ = 0;
};

enum class TarType : uint8_t {
  kReg,
  kHardlink,
  kSymlink,
  kChar,
  kBlock,
  kDir,
  kFifo,
};

struct TarHeader {
  std::string name;       // full path as stored (prefix/long name/PAX applied)
  std::string link_name;  // symlink target / hardlink target, as stored
  TarType type = TarType::kReg;
  char typeflag = '0';  // the raw type byte
  int64_t mode = 0;     // the mode field as stored (may hold S_IFxxx bits)
  uint64_t uid = 0;
  uint64_t gid = 0;
  std::string uname;
  std::string gname;
  int64_t mtime_sec = 0;  // floor of the time; nsec in [0, 1e9)
  uint32_t mtime_nsec = 0;
  uint64_t dev_major = 0;
  uint64_t dev_minor = 0;
  // Extended attributes (SCHILY.xattr.*) in the order the records appeared;
  // values are raw bytes.
  std::vector<std::pair<std::string, std::string>> xattrs;
  uint64_t size = 0;  // payload length (0 for header-only types)
  // The header blocks exactly as read (GNU long-name and PAX extension
  // headers with their data, then the entry's own 512-byte header).
  std::string raw;
  uint64_t header_offset = 0;  // stream offset of raw's first byte
  uint64_t data_offset = 0;    // stream offset of the payload
};

struct TarReaderOptions {
  // Largest payload accepted (default 1 TiB): bigger sizes are taken for a
  // hostile or corrupt header.
  uint64_t max_entry_size = uint64_t{1} << 40;
  // Largest GNU long-name or PAX extension payload (default 1 MiB, as Go's
  // archive/tar).
  uint64_t max_extension_size = 1 << 20;
  // Largest sum of the extension headers before one entry (default 4 MiB):
  // each is kept until the entry comes, and a stream of them is otherwise a
  // memory bomb (1 MiB of NULs per KiB of gzip).
  uint64_t max_extensions_per_entry = 4 << 20;
};

class TarReader {
 public:
  explicit TarReader(ByteStream* in, const TarReaderOptions& options = {})
      : in_(in), options_(options) {}

  // Reads the next entry's header into *h, first skipping whatever payload
  // (and padding) of the previous entry was not read. Returns false at the
  // end of the archive.
  absl::StatusOr<bool> Next(TarHeader* h);

  // Reads up to n bytes of the current entry's payload; an empty view means
  // the payload is used up. DataLoss if the stream ends early.
  absl::StatusOr<absl::string_view> ReadData(size_t n);

  // Stream offset of the next byte the reader would consume.
  uint64_t position() const { return pos_; }

 private:
  absl::Status ReadBlock(const char** block, bool* eof);
  absl::Status ReadExtension(uint64_t size, std::string* out, std::string* raw);
  absl::Status SkipRest();

  ByteStream* in_;
  TarReaderOptions options_;
  uint64_t pos_ = 0;
  uint64_t data_left_ = 0;     // payload bytes of the current entry not read
  uint64_t padding_left_ = 0;  // then this many padding bytes
  bool done_ = false;
  std::string current_name_;  // for error messages
};

// Parses a tar numeric field: octal (leading spaces/NULs allowed, ending at
// a space or NUL) or GNU base-256 (first byte 0x80; 0xff means negative,
// refused). False if malformed or above 2^63.
bool ParseTarNumber(absl::string_view field, uint64_t* out);

// The header checksum check: true if `block` (512 bytes) carries a valid
// unsigned or signed checksum.
bool TarChecksumOk(absl::string_view block);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_TAR_READER_H_
