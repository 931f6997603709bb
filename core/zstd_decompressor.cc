#include "core/zstd_decompressor.h"

#include <zstd.h>
#include <zstd_errors.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace lazypull {

absl::Status ZstdError(size_t code, absl::string_view what) {
  return absl::DataLossError(
      absl::StrCat(what, ": ", ZSTD_getErrorName(code), " (zstd error ",
                   static_cast<int>(ZSTD_getErrorCode(code)), ")"));
}

namespace {

constexpr int kMaxWindowLog = 27;

class ZstdDecompressor final : public StreamDecompressor {
 public:
  ZstdDecompressor() : dctx_(ZSTD_createDCtx()) {
    if (dctx_ == nullptr) std::abort();
    ZSTD_DCtx_setParameter(dctx_, ZSTD_d_windowLogMax, kMaxWindowLog);
  }
  ~ZstdDecompressor() override { ZSTD_freeDCtx(dctx_); }

  void Reset() override {
    ZSTD_DCtx_reset(dctx_, ZSTD_reset_session_only);
    in_frame_ = false;
  }

  absl::StatusOr<Result> Decompress(absl::string_view in,
                                    absl::Span<char> out) override {
    ZSTD_inBuffer ib{in.data(), in.size(), 0};
    ZSTD_outBuffer ob{out.data(), out.size(), 0};
    Result r;
    while (ib.pos < ib.size && ob.pos < ob.size) {
      size_t rc = ZSTD_decompressStream(dctx_, &ob, &ib);
      if (ZSTD_isError(rc)) {
        Reset();
        return ZstdError(rc, "zstd");
      }
      in_frame_ = true;
      if (rc == 0) {
        in_frame_ = false;
        r.frame_end = true;
        break;
      }
    }
    // An empty output buffer still lets a pending frame end be observed.
    if (!r.frame_end && ob.pos == ob.size && ib.pos < ib.size &&
        out.size() == 0) {
      size_t rc = ZSTD_decompressStream(dctx_, &ob, &ib);
      if (ZSTD_isError(rc)) {
        Reset();
        return ZstdError(rc, "zstd");
      }
      if (rc == 0) r.frame_end = true;
    }
    r.consumed = ib.pos;
    r.produced = ob.pos;
    return r;
  }

 private:
  ZSTD_DCtx* dctx_;
  bool in_frame_ = false;
};

}  // namespace

std::unique_ptr<StreamDecompressor> NewZstdDecompressor() {
  return std::make_unique<ZstdDecompressor>();
}

}  // namespace lazypull
