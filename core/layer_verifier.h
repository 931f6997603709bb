// Full verification of a layer: every chunk against its digest, every file
// against its digest, the TOC against the tar headers of the stream, and
// the DiffID (sha256 of the whole uncompressed stream), in one sequential
// pass over the blob.
//
// The pass streams the blob through one decompressor, notes the uncompressed
// position at which each gzip member / zstd frame starts, and so knows where
// every chunk (blob_offset, innerOffset) lies in the stream; each chunk's
// bytes are hashed as they go by. A chunk whose blob offset is not the start
// of a member/frame is an error (no reader could decompress it). The blob is
// read in large sequential pieces at background priority.
//
// Thread-safety: VerifyLayer may run concurrently with other readers of the
// same LayerReader.
#ifndef LAZYPULL_CORE_LAYER_VERIFIER_H_
#define LAZYPULL_CORE_LAYER_VERIFIER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/digest.h"
#include "core/layer_reader.h"

namespace lazypull {

struct VerifyResult {
  Digest diff_id;  // sha256 of the uncompressed stream
  uint64_t uncompressed_size = 0;
  uint64_t chunks_verified = 0;
  uint64_t files_verified = 0;
  Digest blob_digest;  // sha256 of the compressed blob
};

struct VerifyOptions {
  // Compressed bytes read from the source at a time.
  uint64_t read_size = 4 << 20;
  // Also read the uncompressed stream as the tar archive it is and check
  // it against the TOC: every entry of one in the other, with the same
  // type, mode, owner, size, link target, device numbers, xattrs and
  // mtime (what a lazy mount shows, from the TOC, must be what a full pull
  // unpacks, from the tar stream). Off only for synthesized blobs that are
  // not tar streams.
  bool check_tar = true;
};

// Verifies everything; the first failure (in blob order) is returned as
// DataLoss naming the file, the chunk's file offset and its blob offset.
absl::StatusOr<VerifyResult> VerifyLayer(const LayerReader& reader,
                                         const VerifyOptions& options = {});

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LAYER_VERIFIER_H_
