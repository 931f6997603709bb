// Builders of small eStargz and zstd:chunked blobs for tests.
//
// Two levels:
//  - primitives that write the formats' pieces byte by byte (formats.md §1.1,
//    §2): a gzip member (zlib), a zstd frame, a skippable frame, a 512-byte
//    ustar header, the four footers; and assemblers that append a TOC given
//    as an arbitrary JSON string (so a test can hand-write a hostile TOC) and
//    the footer to a payload;
//  - TestLayer, which lays out a list of entries the way the reference
//    writer does (a new member/frame at every regular file's payload and at
//    every chunk boundary, tar headers of other entries in between), writes a
//    matching TOC and records where every chunk went, so a test can edit the
//    TOC or the blob and reassemble.
//
// Nothing here validates its input: it writes what it is told to, which is
// the point. Failures of zlib/zstd abort (test set-up only).
//
// Thread-safety: pure functions and value types.
#ifndef LAZYPULL_CORE_TESTING_TEST_LAYER_H_
#define LAZYPULL_CORE_TESTING_TEST_LAYER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/decompressor.h"
#include "core/digest.h"
#include "core/toc.h"

namespace lazypull::testing {

// ---- Primitives -------------------------------------------------------------

// `n` pseudo-random bytes (incompressible), the same for the same seed.
std::string RandomBytes(size_t n, int seed);

// One gzip member holding `data` (zlib deflate, windowBits 31, MTIME 0).
std::string GzipMember(absl::string_view data, int level = 6);
// One zstd frame holding `data` (ZSTD_compress: content size recorded, no
// checksum).
std::string ZstdFrame(absl::string_view data, int level = 3);
// A member or frame of `data` in compression `c` (default levels).
std::string Compress(Compression c, absl::string_view data);
// A zstd skippable frame: 50 2a 4d 18, LE32 length, `payload`.
std::string SkippableFrame(absl::string_view payload);

// A 512-byte ustar header. REQUIRES: name.size() <= 100, linkname too.
std::string TarHeader(absl::string_view name, char typeflag, uint64_t size,
                      uint32_t mode = 0644, absl::string_view linkname = "");
// Zero bytes that pad `size` bytes of file data to a 512-byte boundary.
std::string TarPadding(uint64_t size);

// The 51-byte eStargz footer (extra subfield "SG", "%016xSTARGZ").
std::string EstargzFooter(uint64_t toc_offset);
// The 47-byte legacy stargz footer (bare 22-byte extra field).
std::string LegacyStargzFooter(uint64_t toc_offset);
// The 46-byte external-TOC eStargz footer ("SG", "STARGZEXTERNALTOC").
std::string ExternalTocFooter();
// The zstd:chunked footer of the stargz reference: skippable frame with a
// 40-byte payload ending "GnUlInUx" (48 bytes).
std::string ZstdChunkedFooter(uint64_t toc_offset, uint64_t toc_compressed,
                              uint64_t toc_uncompressed,
                              uint64_t manifest_type = 1);
// The containers/storage footer: skippable frame with a 64-byte payload
// ending "GNUlInUx" (72 bytes); the tar-split fields are zero.
std::string ZstdStorageFooter(uint64_t toc_offset, uint64_t toc_compressed,
                              uint64_t toc_uncompressed,
                              uint64_t manifest_type = 1);

// The eStargz TOC member: one gzip member holding a tar entry
// "stargz.index.json" with `toc_json`, then the tar EOF blocks.
std::string EstargzTocMember(absl::string_view toc_json);

// payload + TOC member of `toc_json` + 51-byte footer (TOC at payload.size()).
std::string AssembleEstargz(absl::string_view payload,
                            absl::string_view toc_json);
// payload + skippable frame holding ZstdFrame(toc_json) + 48-byte footer.
std::string AssembleZstdChunked(absl::string_view payload,
                                absl::string_view toc_json);
// Either of the above.
std::string Assemble(Compression c, absl::string_view payload,
                     absl::string_view toc_json);

// ---- Entry-level builder ----------------------------------------------------

struct TestEntry {
  std::string name;  // written verbatim into the tar header and the TOC
  EntryType type = EntryType::kReg;
  std::string content;  // kReg
  std::string link;     // kSymlink, kHardlink
  uint32_t mode = 0644;
  // kReg: split the content into chunks of this many bytes, each in its own
  // member/frame; 0 = one chunk.
  uint64_t chunk_size = 0;
};

// Where one chunk of a regular file went.
struct TestChunk {
  std::string name;
  uint64_t file_offset = 0;
  uint64_t size = 0;
  uint64_t blob_offset = 0;  // start of its member/frame
  uint64_t blob_end = 0;     // end of its member/frame
  Digest digest;
};

struct TestBlob {
  Compression compression = Compression::kGzip;
  std::string blob;      // the whole layer
  std::string payload;   // blob[0, toc start): reassemble with Assemble()
  std::string toc_json;  // the TOC as stored
  Digest toc_digest;     // sha256(toc_json)
  std::vector<TestChunk> chunks;  // in blob order
  // The uncompressed stream (what VerifyLayer's diff_id hashes), and its
  // digest.
  std::string uncompressed;
  Digest diff_id;
};

class TestLayer {
 public:
  explicit TestLayer(Compression c = Compression::kGzip) : c_(c) {}

  TestLayer& Add(TestEntry e);
  TestLayer& AddDir(absl::string_view name, uint32_t mode = 0755);
  TestLayer& AddFile(absl::string_view name, absl::string_view content,
                     uint64_t chunk_size = 0, uint32_t mode = 0644);
  TestLayer& AddSymlink(absl::string_view name, absl::string_view target);
  TestLayer& AddHardlink(absl::string_view name, absl::string_view target);

  // Lays out the entries. Every chunk entry but a file's last carries
  // chunkSize; the last one omits it (readers fill it in).
  TestBlob Build() const;

 private:
  Compression c_;
  std::vector<TestEntry> entries_;
};

}  // namespace lazypull::testing

#endif  // LAZYPULL_CORE_TESTING_TEST_LAYER_H_
