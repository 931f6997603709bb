// LayerReader: opens one lazily-pullable layer over a BlobSource and reads
// verified chunks from it.
//
// Open() does the trust chain of formats.md §1.4 up to the TOC: one tail read
// (72 bytes, or more when the source asks for a speculative tail read) finds
// the footer, the TOC is read, decompressed with its size bounded, hashed over
// the exact bytes stored and compared with every anchor given (TOC digest;
// for zstd:chunked also the manifest checksum of the compressed TOC), then
// parsed and normalized into a LayerIndex. ReadChunk() is the read path's
// miss handler: compressed extent from the source -> decompress -> sha256
// against the chunk digest -> bytes. No byte leaves ReadChunk unverified.
//
// Thread-safety: after Open, all const methods may be called concurrently
// (the BlobSource must allow concurrent reads, which its contract requires).
#ifndef LAZYPULL_CORE_LAYER_READER_H_
#define LAZYPULL_CORE_LAYER_READER_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/blob_source.h"
#include "core/decompressor.h"
#include "core/digest.h"
#include "core/footer.h"
#include "core/layer_index.h"
#include "core/toc.h"

namespace lazypull {

struct LayerOpenOptions {
  // Trust anchors. A layer whose TOC does not match one is refused.
  std::optional<Digest> toc_digest;             // sha256 of the TOC JSON
  std::optional<Digest> toc_compressed_digest;  // zstd: manifest-checksum
  FooterLimits footer_limits;
  TocLimits toc_limits;
  // How many bytes to read from the end of the blob in the first read; when
  // the TOC lies within them, no second read is needed.
  uint64_t tail_read_size = kFooterTailSize;
  // Called with the TOC's JSON once it matches the trust anchors, before it
  // is parsed and indexed (e.g. to start fetching the prefetch range while
  // that runs). Must not keep the view.
  std::function<void(absl::string_view toc_json)> on_toc;
};

class LayerReader {
 public:
  static absl::StatusOr<std::unique_ptr<LayerReader>> Open(
      std::shared_ptr<BlobSource> source, const LayerOpenOptions& options);

  const Footer& footer() const { return footer_; }
  LayerFormat format() const { return footer_.format; }
  Compression compression() const {
    return IsZstd(footer_.format) ? Compression::kZstd : Compression::kGzip;
  }
  const LayerIndex& index() const { return index_; }
  // sha256 of the TOC JSON as stored (verified against the anchor if given).
  const Digest& toc_digest() const { return toc_digest_; }
  // sha256 of the compressed TOC bytes (zstd:chunked's manifest checksum).
  const Digest& toc_compressed_digest() const { return toc_compressed_digest_; }
  uint64_t toc_size() const { return toc_size_; }
  BlobSource& source() const { return *source_; }
  uint64_t blob_size() const { return source_->size(); }

  // Reads chunk `chunk` (an index into index().chunks()) into `out`, which
  // must be exactly the chunk's size, verified against its digest. Errors:
  // DataLoss naming file, chunk offset and blob offset on a mismatch or
  // corrupt data; the source's error if it fails.
  absl::Status ReadChunk(uint32_t chunk, absl::Span<char> out,
                         ReadPriority priority = ReadPriority::kOnDemand) const;

  // Decompresses chunk `chunk` out of `extent`, the bytes of its compressed
  // extent [blob_offset, blob_end), and verifies it. For callers that fetched
  // the extent themselves (coalesced reads).
  absl::Status DecodeChunk(uint32_t chunk, absl::string_view extent,
                           absl::Span<char> out) const;

  // Checks `data` (a chunk's bytes) against the chunk's digest.
  absl::Status VerifyChunk(uint32_t chunk, absl::string_view data) const;
  // For a zeros chunk (zstd:chunked's chunkType "zeros": its bytes are
  // zeros, none stored, fixed by the verified TOC): checks its digest, if it
  // has one and the chunk is at most kMaxHashedZeros bytes, hashing the
  // zeros a piece at a time (nothing the size of the chunk is allocated).
  // OK for a zeros chunk without a digest or longer than that: the digest
  // only checks the TOC against itself, and a TOC may declare any size (a
  // sparse file's hole of hundreds of GB; 2^49 bytes from a hostile one).
  static constexpr uint64_t kMaxHashedZeros = uint64_t{64} << 20;
  absl::Status VerifyZerosChunk(uint32_t chunk) const;

  // "file \"a/b\", chunk at offset N (M bytes, blob offset B)": for errors
  // and log lines.
  std::string DescribeChunk(uint32_t chunk) const;

 private:
  LayerReader() = default;
  // InvalidArgument if a chunk claims more bytes (innerOffset + size) than
  // its member's compressed extent can inflate to: a hostile TOC's absurd
  // sizes are refused at open, before a read would try to allocate them.
  absl::Status CheckChunkClaims() const;

  std::shared_ptr<BlobSource> source_;
  Footer footer_;
  LayerIndex index_;
  Digest toc_digest_;
  Digest toc_compressed_digest_;
  uint64_t toc_size_ = 0;
};

// Extracts the TOC JSON from the decompressed TOC member of a gzip layer:
// a tar stream whose first file is "stargz.index.json". Exposed for tests.
absl::StatusOr<std::string> ReadGzipTocMember(absl::string_view compressed,
                                              uint64_t max_toc_size);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LAYER_READER_H_
