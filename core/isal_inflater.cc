#include "core/isal_inflater.h"

#include <isa-l/igzip_lib.h>

#include "absl/strings/str_cat.h"

namespace lazypull {

absl::Status IsalInflateError(int code, absl::string_view what) {
  const char* name = "unknown error";
  switch (code) {
    case ISAL_INVALID_BLOCK:
      name = "invalid deflate block";
      break;
    case ISAL_INVALID_SYMBOL:
      name = "invalid deflate symbol";
      break;
    case ISAL_INVALID_LOOKBACK:
      name = "invalid lookback distance";
      break;
    case ISAL_INVALID_WRAPPER:
      name = "invalid gzip header";
      break;
    case ISAL_UNSUPPORTED_METHOD:
      name = "unsupported compression method";
      break;
    case ISAL_INCORRECT_CHECKSUM:
      name = "gzip CRC mismatch";
      break;
    case ISAL_NEED_DICT:
      name = "stream needs a dictionary";
      break;
    default:
      break;
  }
  return absl::DataLossError(
      absl::StrCat(what, ": ", name, " (ISA-L inflate code ", code, ")"));
}

namespace {

class IsalInflater final : public StreamDecompressor {
 public:
  IsalInflater() { Reset(); }

  void Reset() override {
    isal_inflate_init(&state_);
    state_.crc_flag = ISAL_GZIP;
    in_member_ = false;
  }

  absl::StatusOr<Result> Decompress(absl::string_view in,
                                    absl::Span<char> out) override {
    Result r;
    if (!in_member_) {
      if (in.empty()) return r;
      isal_inflate_reset(&state_);
      state_.crc_flag = ISAL_GZIP;
      in_member_ = true;
    }
    state_.next_in = reinterpret_cast<uint8_t*>(const_cast<char*>(in.data()));
    state_.avail_in =
        static_cast<uint32_t>(std::min<size_t>(in.size(), UINT32_MAX));
    state_.next_out = reinterpret_cast<uint8_t*>(out.data());
    state_.avail_out =
        static_cast<uint32_t>(std::min<size_t>(out.size(), UINT32_MAX));
    const uint32_t avail_in = state_.avail_in;
    const uint32_t avail_out = state_.avail_out;
    int rc = isal_inflate(&state_);
    r.consumed = avail_in - state_.avail_in;
    r.produced = avail_out - state_.avail_out;
    if (rc != ISAL_DECOMP_OK) {
      in_member_ = false;
      return IsalInflateError(rc, "gzip");
    }
    if (state_.block_state == ISAL_BLOCK_FINISH) {
      in_member_ = false;
      r.frame_end = true;
    }
    return r;
  }

 private:
  inflate_state state_;
  bool in_member_ = false;
};

}  // namespace

std::unique_ptr<StreamDecompressor> NewIsalInflater() {
  return std::make_unique<IsalInflater>();
}

}  // namespace lazypull
