#include "core/footer.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace lazypull {
namespace {

constexpr absl::string_view kNoFooterUrl = "type.lazypull.dev/no-footer";
constexpr absl::string_view kExternalTocUrl = "type.lazypull.dev/external-toc";

uint64_t LoadLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

uint32_t LoadLe32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

constexpr char kSkippableMagic[4] = {0x50, 0x2a, 0x4d, 0x18};

// Parses 16 lowercase hex digits (the reference writes %016x).
bool ParseHex16(absl::string_view s, uint64_t* out) {
  if (s.size() != 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return false;
    }
    v = v << 4 | static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

// The fixed parts of the empty gzip member: header with FEXTRA, then (after
// the extra field) an empty stored final block and a zero CRC/ISIZE.
constexpr unsigned char kGzipHeader[10] = {0x1f, 0x8b, 0x08, 0x04, 0x00,
                                           0x00, 0x00, 0x00, 0x00, 0xff};
constexpr unsigned char kGzipTrailer[13] = {0x01, 0x00, 0x00, 0xff, 0xff, 0, 0,
                                            0,    0,    0,    0,    0,    0};

bool GzipFrameMatches(const char* p, size_t size, uint16_t xlen) {
  if (std::memcmp(p, kGzipHeader, 4) != 0) return false;
  // MTIME, XFL and OS are not checked: other writers set them differently.
  if (static_cast<uint8_t>(p[10]) != (xlen & 0xff) ||
      static_cast<uint8_t>(p[11]) != (xlen >> 8)) {
    return false;
  }
  return std::memcmp(p + size - 13, kGzipTrailer, 13) == 0;
}

absl::Status CheckTocRange(const Footer& f, uint64_t blob_size,
                           const FooterLimits& limits) {
  const uint64_t tail_start = blob_size - f.footer_size;
  if (f.toc_offset > tail_start) {
    return absl::InvalidArgumentError(absl::StrCat(
        "footer points the TOC at offset ", f.toc_offset,
        ", past the blob's data (", tail_start, " bytes before the footer)"));
  }
  if (f.toc_compressed_size > tail_start - f.toc_offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "footer claims a TOC of ", f.toc_compressed_size, " bytes at offset ",
        f.toc_offset, ", which runs past the footer at ", tail_start));
  }
  if (f.toc_compressed_size > limits.max_toc_size ||
      f.toc_uncompressed_size > limits.max_toc_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TOC of ", std::max(f.toc_compressed_size, f.toc_uncompressed_size),
        " bytes exceeds the limit of ", limits.max_toc_size, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view LayerFormatName(LayerFormat f) {
  switch (f) {
    case LayerFormat::kEstargz:
      return "estargz";
    case LayerFormat::kStargzLegacy:
      return "stargz-legacy";
    case LayerFormat::kZstdChunked:
    case LayerFormat::kZstdChunkedStorage:
      return "zstd:chunked";
  }
  return "unknown";
}

absl::StatusOr<Footer> ParseFooter(absl::string_view tail, uint64_t blob_size,
                                   const FooterLimits& limits) {
  if (tail.size() > blob_size || tail.size() > kFooterTailSize) {
    return absl::InvalidArgumentError("footer tail larger than the blob");
  }
  if (tail.size() < std::min<uint64_t>(blob_size, kFooterTailSize)) {
    return absl::InvalidArgumentError("footer tail shorter than required");
  }
  const char* end = tail.data() + tail.size();
  Footer f;

  // zstd:chunked: a skippable frame whose payload starts with TOC offset,
  // compressed and uncompressed TOC length and manifest type (LE64 each),
  // with a magic at a fixed place in it. The dialects, by their magic's
  // distance from the end:
  struct ZstdDialect {
    const char* magic;
    size_t magic_from_end;  // magic at end - this
    uint32_t payload;       // the skippable frame's length field
    LayerFormat format;
  };
  static constexpr ZstdDialect kZstdDialects[] = {
      // containers/storage: 64 bytes, tar-split fields, magic last.
      {"GNUlInUx", 8, 64, LayerFormat::kZstdChunkedStorage},
      // the stargz reference: 40 bytes, magic last.
      {"GnUlInUx", 8, 40, LayerFormat::kZstdChunked},
      // containers/storage v1.47.0-v1.49.0 (mended by "chunked: fix
      // generating footer", Aug 2023): 56 bytes, the reference's magic at
      // [32:40], then 16 zero bytes. Current containers/storage still reads
      // such layers (through the manifest-position annotation).
      {"GnUlInUx", 24, 56, LayerFormat::kZstdChunkedStorage},
  };
  for (const ZstdDialect& d : kZstdDialects) {
    const size_t size = 8 + d.payload;
    if (tail.size() < size ||
        std::memcmp(end - d.magic_from_end, d.magic, 8) != 0) {
      continue;
    }
    const char* p = end - d.payload;
    if (d.magic_from_end != 8 &&
        (LoadLe64(end - 16) != 0 || LoadLe64(end - 8) != 0)) {
      continue;  // (not this dialect: its last 16 bytes are zero)
    }
    if (std::memcmp(p - 8, kSkippableMagic, 4) != 0 ||
        LoadLe32(p - 4) != d.payload) {
      return absl::InvalidArgumentError(
          absl::StrCat("zstd:chunked footer (", d.magic, ") is not inside a ",
                       d.payload, "-byte skippable frame"));
    }
    if (LoadLe64(p + 24) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "zstd:chunked footer has manifest type ", LoadLe64(p + 24),
          ", only 1 (zstd-compressed JSON TOC) is supported"));
    }
    f.format = d.format;
    f.footer_size = size;
    f.toc_offset = LoadLe64(p);
    f.toc_compressed_size = LoadLe64(p + 8);
    f.toc_uncompressed_size = LoadLe64(p + 16);
    if (absl::Status s = CheckTocRange(f, blob_size, limits); !s.ok()) return s;
    return f;
  }
  // eStargz: 51 bytes, extra field = "SG" + LE16 22 + "%016xSTARGZ".
  if (tail.size() >= kEstargzFooterSize) {
    const char* p = end - kEstargzFooterSize;
    if (GzipFrameMatches(p, kEstargzFooterSize, 26) && p[12] == 'S' &&
        p[13] == 'G' && p[14] == 22 && p[15] == 0 &&
        std::memcmp(p + 32, "STARGZ", 6) == 0) {
      uint64_t off;
      if (!ParseHex16(absl::string_view(p + 16, 16), &off)) {
        return absl::InvalidArgumentError(
            "eStargz footer's TOC offset is not 16 hex digits");
      }
      f.format = LayerFormat::kEstargz;
      f.footer_size = kEstargzFooterSize;
      f.toc_offset = off;
      if (off <= blob_size - kEstargzFooterSize) {
        f.toc_compressed_size = blob_size - kEstargzFooterSize - off;
      }
      if (absl::Status s = CheckTocRange(f, blob_size, limits); !s.ok()) {
        return s;
      }
      return f;
    }
  }
  // External-TOC eStargz: 46 bytes, subfield "SG" of 17 bytes.
  if (tail.size() >= 46) {
    const char* p = end - 46;
    if (GzipFrameMatches(p, 46, 21) && p[12] == 'S' && p[13] == 'G' &&
        p[14] == 17 && std::memcmp(p + 16, "STARGZEXTERNALTOC", 17) == 0) {
      absl::Status external = absl::UnimplementedError(
          "this eStargz blob keeps its TOC in a separate image (external-TOC "
          "footer); lazypull does not support external TOCs");
      external.SetPayload(kExternalTocUrl, absl::Cord("1"));
      return external;
    }
  }
  // Legacy stargz (CRFS): 47 bytes, bare 22-byte extra field.
  if (tail.size() >= kLegacyFooterSize) {
    const char* p = end - kLegacyFooterSize;
    if (GzipFrameMatches(p, kLegacyFooterSize, 22) &&
        std::memcmp(p + 28, "STARGZ", 6) == 0) {
      uint64_t off;
      if (!ParseHex16(absl::string_view(p + 12, 16), &off)) {
        return absl::InvalidArgumentError(
            "stargz footer's TOC offset is not 16 hex digits");
      }
      f.format = LayerFormat::kStargzLegacy;
      f.footer_size = kLegacyFooterSize;
      f.toc_offset = off;
      if (off <= blob_size - kLegacyFooterSize) {
        f.toc_compressed_size = blob_size - kLegacyFooterSize - off;
      }
      if (absl::Status s = CheckTocRange(f, blob_size, limits); !s.ok()) {
        return s;
      }
      return f;
    }
  }
  absl::Status none = absl::InvalidArgumentError(
      "no eStargz, stargz or zstd:chunked footer at the end of the blob (not a "
      "lazily-pullable layer, or truncated)");
  none.SetPayload(kNoFooterUrl, absl::Cord("1"));
  return none;
}

bool IsNoFooter(const absl::Status& s) {
  return s.GetPayload(kNoFooterUrl).has_value();
}

bool IsExternalToc(const absl::Status& s) {
  return s.GetPayload(kExternalTocUrl).has_value();
}

}  // namespace lazypull
