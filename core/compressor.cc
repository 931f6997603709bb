#include "core/compressor.h"

#include <isa-l/igzip_lib.h>
#include <libdeflate.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lazypull {
namespace {

// The one translation of ISA-L deflate return codes.
absl::Status IsalDeflateStatus(int code) {
  return absl::InternalError(
      absl::StrCat("ISA-L isal_deflate failed (code ", code, ")"));
}

// The one translation of zstd compression errors.
absl::Status ZstdCompressStatus(size_t code) {
  return absl::InternalError(
      absl::StrCat("zstd compression failed: ", ZSTD_getErrorName(code),
                   " (code ", static_cast<int>(ZSTD_getErrorCode(code)), ")"));
}

class LibdeflateGzip : public MemberCompressor {
 public:
  explicit LibdeflateGzip(libdeflate_compressor* c) : c_(c) {}
  ~LibdeflateGzip() override { libdeflate_free_compressor(c_); }

 protected:
  absl::Status CompressContiguous(absl::string_view in,
                                  std::string* out) override {
    size_t bound = libdeflate_gzip_compress_bound(c_, in.size());
    char* buf = OutputBuffer(bound);
    size_t n = libdeflate_gzip_compress(c_, in.data(), in.size(), buf, bound);
    if (n == 0) {
      return absl::InternalError(absl::StrCat(
          "libdeflate_gzip_compress found no room in ", bound, " bytes"));
    }
    out->append(buf, n);
    return absl::OkStatus();
  }

 private:
  libdeflate_compressor* c_;
};

class IsalGzip : public MemberCompressor {
 public:
  explicit IsalGzip(int level)
      : level_(level),
        level_buf_(level == 1   ? ISAL_DEF_LVL1_DEFAULT
                   : level == 2 ? ISAL_DEF_LVL2_DEFAULT
                                : ISAL_DEF_LVL3_DEFAULT) {}

 protected:
  absl::Status CompressContiguous(absl::string_view in,
                                  std::string* out) override {
    // Generous: ISA-L falls back to stored blocks (5 bytes per 64 KiB) on
    // incompressible input; the state check below catches any shortfall.
    if (in.size() > (size_t{1} << 31)) {
      // isal_zstream counts in 32 bits; members this large (gigabytes of
      // tar headers in a row) are left to libdeflate.
      return absl::InvalidArgumentError(absl::StrCat(
          "a gzip member of ", in.size(),
          " bytes is too large for the ISA-L levels (1-2); use --level 3 or "
          "higher"));
    }
    size_t bound = in.size() + in.size() / 8 + 1024;
    char* buf = OutputBuffer(bound);
    isal_zstream z;
    isal_deflate_init(&z);
    z.level = static_cast<uint32_t>(level_);
    z.level_buf = level_buf_.data();
    z.level_buf_size = static_cast<uint32_t>(level_buf_.size());
    z.gzip_flag = IGZIP_GZIP;
    z.end_of_stream = 1;
    z.flush = NO_FLUSH;
    z.next_in = reinterpret_cast<uint8_t*>(const_cast<char*>(in.data()));
    z.avail_in = static_cast<uint32_t>(in.size());
    z.next_out = reinterpret_cast<uint8_t*>(buf);
    z.avail_out = static_cast<uint32_t>(bound);
    int rc = isal_deflate(&z);
    if (rc != COMP_OK) return IsalDeflateStatus(rc);
    if (z.internal_state.state != ZSTATE_END) {
      return absl::InternalError(absl::StrCat(
          "ISA-L isal_deflate did not finish within ", bound, " bytes"));
    }
    out->append(buf, z.total_out);
    return absl::OkStatus();
  }

 private:
  int level_;
  std::vector<uint8_t> level_buf_;
};

class ZstdFrame : public MemberCompressor {
 public:
  explicit ZstdFrame(ZSTD_CCtx* c) : c_(c) {}
  ~ZstdFrame() override { ZSTD_freeCCtx(c_); }

 protected:
  absl::Status CompressContiguous(absl::string_view in,
                                  std::string* out) override {
    size_t bound = ZSTD_compressBound(in.size());
    char* buf = OutputBuffer(bound);
    size_t n = ZSTD_compress2(c_, buf, bound, in.data(), in.size());
    if (ZSTD_isError(n)) return ZstdCompressStatus(n);
    out->append(buf, n);
    return absl::OkStatus();
  }

 private:
  ZSTD_CCtx* c_;
};

}  // namespace

absl::StatusOr<int> ResolveCompressionLevel(Compression c, int level) {
  if (c == Compression::kGzip) {
    if (level == 0) return kDefaultGzipLevel;
    if (level < 1 || level > 9) {
      return absl::InvalidArgumentError(
          absl::StrCat("gzip level ", level, " is outside 1-9"));
    }
    return level;
  }
  if (level == 0) return kDefaultZstdLevel;
  if (level < 1 || level > 19) {
    return absl::InvalidArgumentError(
        absl::StrCat("zstd level ", level, " is outside 1-19"));
  }
  return level;
}

absl::StatusOr<std::unique_ptr<MemberCompressor>> MemberCompressor::New(
    Compression c, int level) {
  if (c == Compression::kGzip) {
    if (level <= 2) {
      // ISA-L's level 3 is its densest; lazypull's 2 maps onto it.
      return std::unique_ptr<MemberCompressor>(
          new IsalGzip(level == 1 ? 1 : 3));
    }
    libdeflate_compressor* d =
        libdeflate_alloc_compressor(level == 9 ? 12 : level);
    if (d == nullptr) {
      return absl::ResourceExhaustedError("libdeflate_alloc_compressor failed");
    }
    return std::unique_ptr<MemberCompressor>(new LibdeflateGzip(d));
  }
  ZSTD_CCtx* z = ZSTD_createCCtx();
  if (z == nullptr)
    return absl::ResourceExhaustedError("ZSTD_createCCtx failed");
  for (auto [param, value] : {std::pair{ZSTD_c_compressionLevel, level},
                              std::pair{ZSTD_c_checksumFlag, 1},
                              std::pair{ZSTD_c_contentSizeFlag, 1}}) {
    size_t rc = ZSTD_CCtx_setParameter(z, param, value);
    if (ZSTD_isError(rc)) {
      ZSTD_freeCCtx(z);
      return ZstdCompressStatus(rc);
    }
  }
  return std::unique_ptr<MemberCompressor>(new ZstdFrame(z));
}

char* MemberCompressor::OutputBuffer(size_t n) {
  if (n > out_capacity_) {
    // Uninitialized: zero-filling a chunk-sized buffer per member showed up
    // in profiles.
    out_buf_.reset(new char[n]);
    out_capacity_ = n;
  }
  return out_buf_.get();
}

absl::Status MemberCompressor::Compress(
    absl::Span<const absl::string_view> pieces, std::string* out) {
  if (pieces.size() == 1) return CompressContiguous(pieces[0], out);
  size_t total = 0;
  for (absl::string_view p : pieces) total += p.size();
  scratch_.resize(total);
  size_t at = 0;
  for (absl::string_view p : pieces) {
    if (!p.empty()) std::memcpy(scratch_.data() + at, p.data(), p.size());
    at += p.size();
  }
  return CompressContiguous(scratch_, out);
}

}  // namespace lazypull
