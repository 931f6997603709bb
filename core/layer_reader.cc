#include "core/layer_reader.h"

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/buffer_pool.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

// Parses a tar numeric field: octal text, or base-256 when the high bit of
// the first byte is set.
bool ParseTarNumber(const char* p, size_t n, uint64_t* out) {
  if (n > 0 && (static_cast<uint8_t>(p[0]) & 0x80)) {
    uint64_t v = static_cast<uint8_t>(p[0]) & 0x7f;
    for (size_t i = 1; i < n; ++i) {
      if (v >> 56) return false;
      v = v << 8 | static_cast<uint8_t>(p[i]);
    }
    *out = v;
    return true;
  }
  uint64_t v = 0;
  size_t i = 0;
  while (i < n && p[i] == ' ') ++i;
  bool any = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v >> 60) return false;
    v = v * 8 + static_cast<uint64_t>(p[i] - '0');
    any = true;
  }
  for (; i < n; ++i) {
    if (p[i] != ' ' && p[i] != '\0') return false;
  }
  *out = v;
  return any;
}

absl::Status DecompressExactly(StreamDecompressor& d, absl::string_view* in,
                               absl::Span<char> out) {
  size_t filled = 0;
  while (filled < out.size()) {
    ASSIGN_OR_RETURN(StreamDecompressor::Result r,
                     d.Decompress(*in, out.subspan(filled)));
    in->remove_prefix(r.consumed);
    filled += r.produced;
    if (r.consumed == 0 && r.produced == 0 && !r.frame_end) {
      return absl::DataLossError(absl::StrCat("TOC data ended after ", filled,
                                              " of ", out.size(), " bytes"));
    }
  }
  return absl::OkStatus();
}

// Decompresses exactly `size` bytes into a string that grows as data really
// arrives (a tiny hostile blob claiming a huge TOC costs no huge allocation),
// leaving kTocParsePadding bytes of slack for the JSON parser.
absl::StatusOr<std::string> DecompressGrowing(StreamDecompressor& d,
                                              absl::string_view* in,
                                              uint64_t size) {
  std::string out;
  uint64_t filled = 0;
  // The declared size is trusted up to 32x the compressed bytes at hand (a
  // JSON TOC compresses ~7x): one allocation for real TOCs, while a header
  // claiming a bomb's size gets a buffer that grows only as bytes arrive.
  const uint64_t first = std::min<uint64_t>(
      size, std::max<uint64_t>(uint64_t{1} << 20, uint64_t{in->size()} * 32));
  while (filled < size) {
    const uint64_t next =
        filled == 0
            ? first
            : std::min<uint64_t>(
                  size, std::max<uint64_t>(filled * 2, uint64_t{1} << 20));
    out.reserve(next + kTocParsePadding);
    out.resize(next);
    RETURN_IF_ERROR(DecompressExactly(
        d, in, absl::MakeSpan(out.data() + filled, next - filled)));
    filled = next;
  }
  out.reserve(size + kTocParsePadding);
  return out;
}

}  // namespace

absl::StatusOr<std::string> ReadGzipTocMember(absl::string_view compressed,
                                              uint64_t max_toc_size) {
  std::unique_ptr<StreamDecompressor> d =
      StreamDecompressor::New(Compression::kGzip);
  char hdr[512];
  // Skip PAX / GNU long-name headers the writer may have put first.
  for (int headers = 0;; ++headers) {
    if (headers > 4) {
      return absl::InvalidArgumentError("TOC member has too many tar headers");
    }
    absl::Status st = DecompressExactly(*d, &compressed, absl::MakeSpan(hdr));
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC member is not a readable tar: ", st.message()));
    }
    uint64_t size;
    if (!ParseTarNumber(hdr + 124, 12, &size)) {
      return absl::InvalidArgumentError("TOC tar header has a bad size field");
    }
    char type = hdr[156];
    if (type == 'x' || type == 'g' || type == 'L') {
      if (size > (1 << 20)) {
        return absl::InvalidArgumentError("TOC tar extension header too big");
      }
      std::string skip((size + 511) / 512 * 512, '\0');
      RETURN_IF_ERROR(DecompressExactly(*d, &compressed, absl::MakeSpan(skip)));
      continue;
    }
    absl::string_view name(hdr, strnlen(hdr, 100));
    if (name != kTocTarName) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC member holds \"", name.substr(0, 100),
                       "\", not stargz.index.json"));
    }
    if (type != '0' && type != '\0') {
      return absl::InvalidArgumentError(
          "TOC tar entry stargz.index.json is not a regular file");
    }
    if (size > max_toc_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC of ", size, " bytes exceeds the limit of ",
                       max_toc_size, " bytes"));
    }
    absl::StatusOr<std::string> json = DecompressGrowing(*d, &compressed, size);
    if (!json.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TOC is truncated or corrupt: ", json.status().message()));
    }
    return json;
  }
}

absl::StatusOr<std::unique_ptr<LayerReader>> LayerReader::Open(
    std::shared_ptr<BlobSource> source, const LayerOpenOptions& options) {
  std::unique_ptr<LayerReader> r(new LayerReader());
  r->source_ = std::move(source);
  BlobSource& src = *r->source_;
  const uint64_t size = src.size();

  // One tail read: the footer, and the TOC too when it is within reach.
  const uint64_t tail_len = std::min(
      size, std::max<uint64_t>(options.tail_read_size, kFooterTailSize));
  // (Not zero-filled: the read overwrites it all, and touching fresh memory
  // before the request goes out would only delay it.)
  const std::shared_ptr<std::string> tail_buf =
      BufferPool::Default().Get(tail_len);
  const std::string& tail = *tail_buf;
  RETURN_IF_ERROR(src.ReadAt(size - tail_len, absl::MakeSpan(*tail_buf)));
  const uint64_t foot_len = std::min<uint64_t>(tail_len, kFooterTailSize);
  ASSIGN_OR_RETURN(
      r->footer_,
      ParseFooter(absl::string_view(tail).substr(tail_len - foot_len), size,
                  options.footer_limits));
  const Footer& f = r->footer_;

  // The compressed TOC bytes.
  std::string toc_buf;
  absl::string_view toc_compressed;
  if (f.toc_offset >= size - tail_len) {
    toc_compressed = absl::string_view(tail).substr(
        f.toc_offset - (size - tail_len), f.toc_compressed_size);
  } else {
    // Only the part the tail read did not bring.
    const uint64_t tail_start = size - tail_len;
    const uint64_t toc_end = f.toc_offset + f.toc_compressed_size;
    const uint64_t have =
        toc_end > tail_start ? std::min(toc_end - tail_start, tail_len) : 0;
    toc_buf.resize(f.toc_compressed_size);
    RETURN_IF_ERROR(src.ReadAt(
        f.toc_offset,
        absl::MakeSpan(toc_buf.data(), f.toc_compressed_size - have)));
    std::memcpy(toc_buf.data() + (f.toc_compressed_size - have), tail.data(),
                have);
    toc_compressed = toc_buf;
  }
  r->toc_compressed_digest_ = Sha256::Of(toc_compressed);
  if (options.toc_compressed_digest &&
      *options.toc_compressed_digest != r->toc_compressed_digest_) {
    return absl::DataLossError(absl::StrCat(
        "compressed TOC hashes to ", r->toc_compressed_digest_.ToString(),
        " but the layer's manifest checksum says ",
        options.toc_compressed_digest->ToString(), ": refusing the layer"));
  }

  std::string json;
  uint64_t data_end;
  if (IsZstd(f.format)) {
    if (f.toc_offset < 8) {
      return absl::InvalidArgumentError(
          "zstd:chunked TOC offset leaves no room for its skippable frame");
    }
    data_end = f.toc_offset - 8;
    std::unique_ptr<StreamDecompressor> zd =
        StreamDecompressor::New(Compression::kZstd);
    absl::string_view in = toc_compressed;
    absl::StatusOr<std::string> z =
        DecompressGrowing(*zd, &in, f.toc_uncompressed_size);
    if (!z.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("zstd:chunked TOC is corrupt: ", z.status().message()));
    }
    json = *std::move(z);
  } else {
    data_end = f.toc_offset;
    ASSIGN_OR_RETURN(
        json,
        ReadGzipTocMember(toc_compressed, options.footer_limits.max_toc_size));
  }
  r->toc_size_ = json.size();
  r->toc_digest_ = Sha256::Of(json);
  if (options.toc_digest && *options.toc_digest != r->toc_digest_) {
    return absl::DataLossError(absl::StrCat(
        "TOC digest mismatch: the layer's TOC hashes to ",
        r->toc_digest_.ToString(), " but ", options.toc_digest->ToString(),
        " was expected: refusing the layer"));
  }
  if (options.on_toc) options.on_toc(json);
  ASSIGN_OR_RETURN(Toc toc, ParseToc(json, options.toc_limits));
  json = std::string();
  ASSIGN_OR_RETURN(r->index_, LayerIndex::Build(toc, data_end));
  RETURN_IF_ERROR(r->CheckChunkClaims());
  return r;
}

absl::Status LayerReader::CheckChunkClaims() const {
  // Deflate expands at most 1032:1; zstd at most 32768:1 (a 4-byte RLE
  // block of 128 KiB).
  const uint64_t ratio = compression() == Compression::kGzip ? 1032 : 32768;
  const auto& cs = index_.chunks();
  for (uint32_t ci = 0; ci < cs.size(); ++ci) {
    const Chunk& c = cs[ci];
    if (c.zeros) continue;
    const uint64_t extent = c.blob_end - c.blob_offset;
    const uint64_t most =
        extent > UINT64_MAX / ratio ? UINT64_MAX : extent * ratio;
    if (c.inner_offset > most || c.size > most - c.inner_offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TOC: ", DescribeChunk(ci), " claims ", c.size,
          " bytes at innerOffset ", c.inner_offset, " of a member of ", extent,
          " compressed bytes, more than it can inflate to (", ratio,
          ":1): refusing the layer"));
    }
  }
  return absl::OkStatus();
}

std::string LayerReader::DescribeChunk(uint32_t chunk) const {
  const Chunk& c = index_.chunks()[chunk];
  return absl::StrCat("file \"", index_.Path(index_.inode(c.inode).dirent),
                      "\", chunk at offset ", c.file_offset, " (", c.size,
                      " bytes, blob offset ", c.blob_offset, ")");
}

absl::Status LayerReader::VerifyChunk(uint32_t chunk,
                                      absl::string_view data) const {
  const Chunk& c = index_.chunks()[chunk];
  if (!c.has_digest) return absl::OkStatus();  // a zeros chunk
  Digest got = Sha256::Of(data);
  if (got != c.digest) {
    return absl::DataLossError(
        absl::StrCat(DescribeChunk(chunk), " does not match its digest: got ",
                     got.ToString(), ", want ", c.digest.ToString()));
  }
  return absl::OkStatus();
}

absl::Status LayerReader::VerifyZerosChunk(uint32_t chunk) const {
  const Chunk& c = index_.chunks()[chunk];
  if (!c.zeros) {
    return absl::InvalidArgumentError("VerifyZerosChunk: not a zeros chunk");
  }
  // (Its bytes are what the verified TOC says; the digest only checks the
  // TOC against itself, so a run too long to hash in a moment is not: a
  // sparse file's hole may be hundreds of GB, and a hostile TOC may claim
  // 2^49 bytes for a thread to hash for days.)
  if (!c.has_digest || c.size > kMaxHashedZeros) return absl::OkStatus();
  static const std::string kZeros(1 << 20, '\0');
  Sha256 h;
  for (uint64_t left = c.size; left > 0;) {
    const uint64_t n = std::min<uint64_t>(left, kZeros.size());
    h.Update(kZeros.data(), n);
    left -= n;
  }
  const Digest got = h.Finish();
  if (got != c.digest) {
    return absl::DataLossError(
        absl::StrCat(DescribeChunk(chunk), " does not match its digest: got ",
                     got.ToString(), ", want ", c.digest.ToString()));
  }
  return absl::OkStatus();
}

absl::Status LayerReader::DecodeChunk(uint32_t chunk, absl::string_view extent,
                                      absl::Span<char> out) const {
  const Chunk& c = index_.chunks()[chunk];
  if (out.size() != c.size) {
    return absl::InvalidArgumentError("DecodeChunk: wrong output size");
  }
  if (c.zeros) {
    std::memset(out.data(), 0, out.size());
  } else {
    absl::Status st =
        DecompressRange(compression(), extent, c.inner_offset, out);
    if (!st.ok()) {
      return absl::DataLossError(
          absl::StrCat(DescribeChunk(chunk), ": ", st.message()));
    }
  }
  return VerifyChunk(chunk, absl::string_view(out.data(), out.size()));
}

absl::Status LayerReader::ReadChunk(uint32_t chunk, absl::Span<char> out,
                                    ReadPriority priority) const {
  const Chunk& c = index_.chunks()[chunk];
  std::string extent;
  if (!c.zeros) {
    extent.resize(c.blob_end - c.blob_offset);
    absl::Status st =
        source_->ReadAt(c.blob_offset, absl::MakeSpan(extent), priority);
    if (!st.ok()) {
      return absl::Status(
          st.code(), absl::StrCat(DescribeChunk(chunk), ": ", st.message()));
    }
  }
  return DecodeChunk(chunk, extent, out);
}

}  // namespace lazypull
