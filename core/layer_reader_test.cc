// Tests of LayerReader and VerifyLayer: synthesized layers (both
// compressions), hostile layers, and the golden blobs of the Go reference
// (shared/testdata/estargz), truncated and bit-flipped.
#include "core/layer_reader.h"

#include <simdjson.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"
#include "core/layer_verifier.h"
#include "core/memory_blob_source.h"
#include "core/testing/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull {
namespace {

using ::lazypull::testing::Assemble;
using ::lazypull::testing::Compress;
using ::lazypull::testing::EstargzFooter;
using ::lazypull::testing::GzipMember;
using ::lazypull::testing::TarHeader;
using ::lazypull::testing::TarPadding;
using ::lazypull::testing::TestBlob;
using ::lazypull::testing::TestLayer;
using ::lazypull::testing::ZstdChunkedFooter;
using ::lazypull::testing::ZstdFrame;
using ::testing::HasSubstr;

std::string RandomBytes(size_t n, uint64_t seed) {
  std::string out(n, '\0');
  uint64_t x = seed * 0x9e3779b97f4a7c15 + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<char>(x >> 32);
  }
  return out;
}

std::string Text(size_t n) {
  std::string out;
  for (int i = 0; out.size() < n; ++i) {
    absl::StrAppend(&out, "line ", i, " of some compressible text\n");
  }
  out.resize(n);
  return out;
}

const char* Name(Compression c) {
  return c == Compression::kZstd ? "zstd" : "gzip";
}

// A BlobSource over a shared blob cut to `keep` bytes, followed by `suffix`,
// optionally with one byte XORed with `mask`: edits without copying the blob.
class EditedSource final : public BlobSource {
 public:
  EditedSource(std::shared_ptr<const std::string> base, uint64_t keep,
               std::string suffix = "", uint64_t flip_at = UINT64_MAX,
               uint8_t mask = 0)
      : base_(std::move(base)),
        keep_(keep),
        suffix_(std::move(suffix)),
        flip_at_(flip_at),
        mask_(mask) {}

  uint64_t size() const override { return keep_ + suffix_.size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority) override {
    if (offset > size() || dst.size() > size() - offset) {
      return absl::OutOfRangeError("read past the end");
    }
    for (size_t i = 0; i < dst.size();) {
      uint64_t at = offset + i;
      if (at < keep_) {
        size_t n = std::min<uint64_t>(dst.size() - i, keep_ - at);
        std::memcpy(dst.data() + i, base_->data() + at, n);
        i += n;
      } else {
        size_t n = dst.size() - i;
        std::memcpy(dst.data() + i, suffix_.data() + (at - keep_), n);
        i += n;
      }
    }
    if (flip_at_ >= offset && flip_at_ - offset < dst.size()) {
      dst[flip_at_ - offset] =
          static_cast<char>(dst[flip_at_ - offset] ^ mask_);
    }
    return absl::OkStatus();
  }
  using BlobSource::ReadAt;
  std::string Describe() const override { return "edited blob"; }

 private:
  std::shared_ptr<const std::string> base_;
  uint64_t keep_;
  std::string suffix_;
  uint64_t flip_at_;
  uint8_t mask_;
};

absl::StatusOr<std::unique_ptr<LayerReader>> OpenSource(
    std::shared_ptr<BlobSource> src, const LayerOpenOptions& opts = {}) {
  return LayerReader::Open(std::move(src), opts);
}

absl::StatusOr<std::unique_ptr<LayerReader>> OpenBlob(
    std::string blob, const LayerOpenOptions& opts = {}) {
  return OpenSource(std::make_shared<MemoryBlobSource>(std::move(blob), "test"),
                    opts);
}

// Reads every chunk through ReadChunk.
absl::Status ReadEveryChunk(const LayerReader& r) {
  for (uint32_t i = 0; i < r.index().chunks().size(); ++i) {
    std::string out(r.index().chunks()[i].size, '\0');
    absl::Status s = r.ReadChunk(i, absl::MakeSpan(out));
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// A file's content, assembled from verified chunks.
absl::StatusOr<std::string> ReadFile(const LayerReader& r,
                                     absl::string_view path) {
  std::optional<uint32_t> ino = r.index().Resolve(path);
  if (!ino) return absl::NotFoundError(path);
  std::string out;
  const uint32_t first = r.index().inode(*ino).first_chunk;
  for (uint32_t k = 0; k < r.index().inode(*ino).num_chunks; ++k) {
    const Chunk& c = r.index().chunks()[first + k];
    std::string buf(c.size, '\0');
    absl::Status s = r.ReadChunk(first + k, absl::MakeSpan(buf));
    if (!s.ok()) return s;
    out += buf;
  }
  return out;
}

// ---- MemoryBlobSource -------------------------------------------------------

TEST(MemoryBlobSourceTest, ReadsCountsAndBounds) {
  MemoryBlobSource src("0123456789", "ten");
  EXPECT_EQ(src.size(), 10u);
  EXPECT_EQ(src.Describe(), "memory ten");
  char buf[4];
  ASSERT_TRUE(src.ReadAt(3, absl::MakeSpan(buf, 4)).ok());
  EXPECT_EQ(absl::string_view(buf, 4), "3456");
  ASSERT_TRUE(src.ReadAt(10, absl::Span<char>()).ok());
  EXPECT_EQ(src.reads(), 2u);
  EXPECT_EQ(src.bytes_read(), 4u);
  EXPECT_EQ(src.ReadAt(7, absl::MakeSpan(buf, 4)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(src.ReadAt(11, absl::Span<char>()).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(src.ReadAt(UINT64_MAX, absl::MakeSpan(buf, 1)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(src.reads(), 2u);  // failed reads are not counted
  src.ResetCounters();
  EXPECT_EQ(src.reads(), 0u);
  EXPECT_EQ(src.bytes_read(), 0u);
}

TEST(MemoryBlobSourceTest, ConcurrentReads) {
  const std::string data = RandomBytes(1 << 16, 5);
  MemoryBlobSource src(data);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) {
        uint64_t off = static_cast<uint64_t>((i * 977 + t * 131) % 60000);
        char buf[100];
        ASSERT_TRUE(src.ReadAt(off, absl::MakeSpan(buf)).ok());
        ASSERT_EQ(absl::string_view(buf, 100), data.substr(off, 100));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(src.reads(), 4000u);
  EXPECT_EQ(src.bytes_read(), 400000u);
}

// ---- Synthesized layers -----------------------------------------------------

// Some synthesized blobs below hold file payloads only, no tar headers:
// those are verified without the tar check.
absl::StatusOr<VerifyResult> VerifyRaw(const LayerReader& r,
                                       VerifyOptions o = {}) {
  o.check_tar = false;
  return VerifyLayer(r, o);
}

class SynthesizedTest : public ::testing::TestWithParam<Compression> {
 protected:
  TestBlob Build() const {
    return TestLayer(GetParam())
        .AddDir("etc/")
        .AddFile("etc/hosts", "127.0.0.1 localhost\n")
        .AddFile("big.bin", big_, 64 << 10)
        .AddFile("./text.txt", text_)
        .AddFile("empty", "")
        .AddSymlink("link", "etc/hosts")
        .AddHardlink("hard", "etc/hosts")
        .Build();
  }
  const std::string big_ = RandomBytes(300 << 10, 1);
  const std::string text_ = Text(100 << 10);
};

TEST_P(SynthesizedTest, OpenReadAndVerify) {
  const TestBlob t = Build();
  auto src = std::make_shared<MemoryBlobSource>(t.blob, "synth");
  LayerOpenOptions opts;
  opts.toc_digest = t.toc_digest;
  if (GetParam() == Compression::kZstd) {
    opts.toc_compressed_digest = Sha256::Of(ZstdFrame(t.toc_json));
  }
  absl::StatusOr<std::unique_ptr<LayerReader>> r = OpenSource(src, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  const LayerReader& reader = **r;
  // One tail read, one TOC read.
  EXPECT_EQ(src->reads(), 2u);
  EXPECT_EQ(reader.compression(), GetParam());
  EXPECT_EQ(reader.format(), GetParam() == Compression::kZstd
                                 ? LayerFormat::kZstdChunked
                                 : LayerFormat::kEstargz);
  EXPECT_EQ(reader.toc_digest(), t.toc_digest);
  EXPECT_EQ(reader.toc_size(), t.toc_json.size());
  EXPECT_EQ(reader.blob_size(), t.blob.size());

  const LayerIndex& idx = reader.index();
  ASSERT_EQ(idx.chunks().size(), t.chunks.size());
  for (size_t i = 0; i < t.chunks.size(); ++i) {
    const Chunk& c = idx.chunks()[i];
    EXPECT_EQ(c.blob_offset, t.chunks[i].blob_offset) << i;
    EXPECT_GE(c.blob_end, t.chunks[i].blob_end) << i;
    EXPECT_EQ(c.size, t.chunks[i].size) << i;
    EXPECT_EQ(c.digest, t.chunks[i].digest) << i;
    src->ResetCounters();
    std::string out(c.size, '\0');
    ASSERT_TRUE(
        reader.ReadChunk(static_cast<uint32_t>(i), absl::MakeSpan(out)).ok());
    // Exactly the chunk's compressed extent was fetched.
    EXPECT_EQ(src->reads(), 1u);
    EXPECT_EQ(src->bytes_read(), c.blob_end - c.blob_offset);
  }
  EXPECT_EQ(ReadFile(reader, "etc/hosts").value(), "127.0.0.1 localhost\n");
  EXPECT_TRUE(ReadFile(reader, "big.bin").value() == big_);
  EXPECT_TRUE(ReadFile(reader, "text.txt").value() == text_);
  EXPECT_EQ(ReadFile(reader, "empty").value(), "");
  EXPECT_EQ(idx.Resolve("hard"), idx.Resolve("etc/hosts"));
  EXPECT_EQ(idx.inode(*idx.Resolve("link")).symlink, "etc/hosts");
  EXPECT_EQ(idx.FileChunks(*idx.Resolve("big.bin")).size(), 5u);

  absl::StatusOr<VerifyResult> v = VerifyLayer(reader);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->diff_id, t.diff_id);
  EXPECT_EQ(v->uncompressed_size, t.uncompressed.size());
  EXPECT_EQ(v->chunks_verified, t.chunks.size());
  EXPECT_EQ(v->files_verified, 4u);  // etc/hosts, big.bin, text.txt, empty
  EXPECT_EQ(v->blob_digest, Sha256::Of(t.blob));
  // Small read pieces give the same answer.
  VerifyOptions small;
  small.read_size = 1;
  absl::StatusOr<VerifyResult> v2 = VerifyLayer(reader, small);
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(v2->diff_id, t.diff_id);
}

// A legacy stargz layer as CRFS wrote it: the 47-byte footer and no
// chunkDigest anywhere, only each file's `digest`. A file of several chunks
// is read whole and checked against that digest: served when it matches,
// DataLoss (never a byte) when it does not.
TEST(LayerReaderTest, CrfsFilesOfSeveralChunksAreCheckedWhole) {
  const std::string big = RandomBytes(300 << 10, 7);
  const TestBlob t = TestLayer()
                         .AddFile("small", "one chunk")
                         .AddFile("big.bin", big, 64 << 10)
                         .AddFile("after", "the next file")
                         .Build();
  std::string toc = t.toc_json;
  // Each `"chunkDigest": "..."` goes with the comma before it.
  for (size_t at; (at = toc.find("\"chunkDigest\"")) != std::string::npos;) {
    const size_t from = toc.rfind(',', at);
    const size_t value = toc.find('"', at + 14);
    toc.erase(from, toc.find('"', value + 1) + 1 - from);
  }
  ASSERT_FALSE(absl::StrContains(toc, "chunkDigest"));
  auto open = [&](const std::string& toc_json) {
    const std::string blob =
        t.payload + ::lazypull::testing::EstargzTocMember(toc_json) +
        ::lazypull::testing::LegacyStargzFooter(t.payload.size());
    LayerOpenOptions opts;
    opts.toc_digest = Sha256::Of(toc_json);
    return OpenSource(std::make_shared<MemoryBlobSource>(blob), opts);
  };
  absl::StatusOr<std::unique_ptr<LayerReader>> r = open(toc);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->format(), LayerFormat::kStargzLegacy);
  const LayerIndex& idx = (*r)->index();
  EXPECT_EQ(idx.FileChunks(*idx.Resolve("big.bin")).size(), 1u);
  EXPECT_TRUE(ReadFile(**r, "big.bin").value() == big);
  EXPECT_EQ(ReadFile(**r, "small").value(), "one chunk");
  EXPECT_EQ(ReadFile(**r, "after").value(), "the next file");
  absl::StatusOr<VerifyResult> v = VerifyLayer(**r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->chunks_verified, 3u);
  EXPECT_EQ(v->files_verified, 3u);

  // The same layer whose TOC gives big.bin another file's digest.
  const std::string theirs = Sha256::Of(big).ToString();
  std::string lying = toc;
  lying.replace(lying.find(theirs), theirs.size(),
                Sha256::Of("not big").ToString());
  absl::StatusOr<std::unique_ptr<LayerReader>> bad = open(lying);
  ASSERT_TRUE(bad.ok()) << bad.status();
  absl::StatusOr<std::string> got = ReadFile(**bad, "big.bin");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("big.bin"));
}

TEST_P(SynthesizedTest, TailReadCanCoverTheToc) {
  const TestBlob t = Build();
  auto src = std::make_shared<MemoryBlobSource>(t.blob);
  LayerOpenOptions opts;
  opts.tail_read_size = t.blob.size() + 100;
  absl::StatusOr<std::unique_ptr<LayerReader>> r = OpenSource(src, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(src->reads(), 1u);
  EXPECT_EQ((*r)->toc_digest(), t.toc_digest);
}

TEST_P(SynthesizedTest, ASecondReadFetchesOnlyTheTocsMissingPart) {
  const TestBlob t = Build();
  // Find where the TOC starts (a first open with a tail holding it all).
  auto whole = std::make_shared<MemoryBlobSource>(t.blob);
  LayerOpenOptions all;
  all.tail_read_size = t.blob.size();
  absl::StatusOr<std::unique_ptr<LayerReader>> r0 = OpenSource(whole, all);
  ASSERT_TRUE(r0.ok()) << r0.status();
  const uint64_t toc_offset = (*r0)->footer().toc_offset;
  const uint64_t size = t.blob.size();
  ASSERT_GT(size - toc_offset, kFooterTailSize + 10);
  // A tail that holds the footer and the TOC's last 10 bytes.
  LayerOpenOptions part;
  part.toc_digest = t.toc_digest;
  const uint64_t toc_end = toc_offset + (*r0)->footer().toc_compressed_size;
  part.tail_read_size =
      std::max<uint64_t>(kFooterTailSize, size - toc_end) + 10;
  ASSERT_LT(part.tail_read_size, size - toc_offset) << "the TOC must not fit";
  auto src = std::make_shared<MemoryBlobSource>(t.blob);
  absl::StatusOr<std::unique_ptr<LayerReader>> r = OpenSource(src, part);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->toc_digest(), t.toc_digest);
  EXPECT_EQ(src->reads(), 2u);
  // Every byte from the TOC's start to the end, once.
  EXPECT_EQ(src->bytes_read(), size - toc_offset);
}

TEST_P(SynthesizedTest, FlippedChunkByteIsDataLossNamingTheFile) {
  const TestBlob t = Build();
  for (const auto& tc : t.chunks) {
    if (tc.name != "big.bin") continue;
    SCOPED_TRACE(absl::StrCat("chunk at ", tc.file_offset));
    std::string bad = t.blob;
    // Random data is stored verbatim (deflate stored blocks, zstd raw
    // blocks): the flip inflates fine and only the digest can catch it.
    const uint64_t at = (tc.blob_offset + tc.blob_end) / 2;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    LayerOpenOptions opts;
    opts.toc_digest = t.toc_digest;
    absl::StatusOr<std::unique_ptr<LayerReader>> r = OpenBlob(bad, opts);
    ASSERT_TRUE(r.ok()) << r.status();
    const LayerIndex& idx = (*r)->index();
    for (uint32_t i = 0; i < idx.chunks().size(); ++i) {
      const Chunk& c = idx.chunks()[i];
      std::string out(c.size, '\0');
      absl::Status s = (*r)->ReadChunk(i, absl::MakeSpan(out));
      if (c.blob_offset == tc.blob_offset) {
        EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
        EXPECT_THAT(std::string(s.message()), HasSubstr("\"big.bin\""));
        EXPECT_THAT(
            std::string(s.message()),
            HasSubstr(absl::StrCat("chunk at offset ", tc.file_offset)));
        EXPECT_THAT(std::string(s.message()),
                    HasSubstr(absl::StrCat("blob offset ", tc.blob_offset)));
      } else {
        EXPECT_TRUE(s.ok()) << s;
      }
    }
    absl::StatusOr<VerifyResult> v = VerifyLayer(**r);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  }
}

// The TOC is checked against the tar headers of the stream: an edited TOC
// (its chunks still verify) that would make a lazy mount show what a full
// pull does not is DataLoss naming the entry and what differs.
TEST_P(SynthesizedTest, VerifyChecksTheTocAgainstTheTarStream) {
  const TestBlob t = Build();
  absl::StatusOr<std::unique_ptr<LayerReader>> r = OpenBlob(t.blob);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(VerifyLayer(**r).ok());
  auto verify_edited = [&](absl::string_view from, absl::string_view to) {
    std::string edited = t.toc_json;
    const size_t at = edited.find(std::string(from));
    EXPECT_NE(at, std::string::npos) << from << " in " << t.toc_json;
    if (at == std::string::npos) return absl::UnknownError("no such text");
    edited.replace(at, from.size(), std::string(to));
    absl::StatusOr<std::unique_ptr<LayerReader>> e =
        OpenBlob(Assemble(GetParam(), t.payload, edited));
    if (!e.ok()) return e.status();
    return VerifyLayer(**e).status();
  };
  // A mode the tar does not have (setuid).
  absl::Status s = verify_edited("\"mode\": 420", "\"mode\": 2541");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("(mode)"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("tar stream"));
  // A symlink pointing elsewhere (the first "linkName" is the symlink's).
  s = verify_edited("\"linkName\": \"etc/hosts\"",
                    "\"linkName\": \"/etc/shadow\"");
  EXPECT_THAT(std::string(s.message()), HasSubstr("symlink target")) << s;
  // An entry the tar stream does not have.
  s = verify_edited("\"entries\": [",
                    "\"entries\": [{\"name\": \"extra\", \"type\": "
                    "\"dir\", \"mode\": 493}, ");
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"extra\"")) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("no such entry")) << s;
}

TEST_P(SynthesizedTest, TocDigestMismatchIsRefused) {
  const TestBlob t = Build();
  LayerOpenOptions opts;
  opts.toc_digest = Sha256::Of("some other TOC");
  absl::Status s = OpenBlob(t.blob, opts).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("TOC digest mismatch"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(t.toc_digest.ToString()));

  opts = {};
  opts.toc_compressed_digest = Sha256::Of("some other TOC");
  s = OpenBlob(t.blob, opts).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("manifest checksum"));

  // An edited TOC (one digit of a size changed) in an otherwise valid blob.
  std::string edited = t.toc_json;
  size_t pos = edited.find("\"size\": 20");
  ASSERT_NE(pos, std::string::npos);
  edited[pos + 9] = '3';
  opts = {};
  opts.toc_digest = t.toc_digest;
  s = OpenBlob(Assemble(GetParam(), t.payload, edited), opts).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
}

// A member holding more than its chunk claims: the read is bounded by the
// chunk and verifies.
TEST_P(SynthesizedTest, MemberLargerThanItsChunkIsBounded) {
  const Compression c = GetParam();
  const std::string payload = Compress(c, std::string(16 << 20, 'a'));
  const std::string d = Sha256::Of(std::string(4096, 'a')).ToString();
  const std::string toc = absl::StrCat(
      R"({"version":1,"entries":[{"name":"f","type":"reg","size":4096,)",
      R"("offset":0,"digest":")", d, R"(","chunkDigest":")", d, R"("}]})");
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenBlob(Assemble(c, payload, toc));
  ASSERT_TRUE(r.ok()) << r.status();
  std::string out(4096, '\0');
  ASSERT_TRUE((*r)->ReadChunk(0, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, std::string(4096, 'a'));
  absl::StatusOr<VerifyResult> v = VerifyRaw(**r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->chunks_verified, 1u);
  EXPECT_EQ(v->files_verified, 1u);
}

// A chunk claiming more bytes than its member holds cannot be read.
TEST_P(SynthesizedTest, ChunkLargerThanItsMemberIsAnError) {
  const Compression c = GetParam();
  const std::string payload = Compress(c, std::string(100, 'a'));
  const std::string d = Sha256::Of(std::string(200, 'a')).ToString();
  const std::string toc = absl::StrCat(
      R"({"version":1,"entries":[{"name":"short","type":"reg","size":200,)",
      R"("offset":0,"digest":")", d, R"(","chunkDigest":")", d, R"("}]})");
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenBlob(Assemble(c, payload, toc));
  ASSERT_TRUE(r.ok()) << r.status();
  std::string out(200, '\0');
  absl::Status s = (*r)->ReadChunk(0, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"short\""));
  EXPECT_FALSE(VerifyLayer(**r).ok());
}

// Two small files sharing one member (innerOffset), as the reference's
// "min chunk size" writes them.
TEST_P(SynthesizedTest, FilesSharingAMember) {
  const Compression c = GetParam();
  const std::string payload = Compress(c, "AAAABBBBBB");
  const std::string da = Sha256::Of("AAAA").ToString();
  const std::string db = Sha256::Of("BBBBBB").ToString();
  const std::string toc = absl::StrCat(
      R"({"version":1,"entries":[)",
      R"({"name":"a","type":"reg","size":4,"offset":0,"digest":")", da,
      R"(","chunkDigest":")", da, R"("},)",
      R"({"name":"b","type":"reg","size":6,"offset":0,"innerOffset":4,)",
      R"("digest":")", db, R"(","chunkDigest":")", db, R"("}]})");
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenBlob(Assemble(c, payload, toc));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ReadFile(**r, "a").value(), "AAAA");
  EXPECT_EQ(ReadFile(**r, "b").value(), "BBBBBB");
  absl::StatusOr<VerifyResult> v = VerifyRaw(**r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->chunks_verified, 2u);
  EXPECT_EQ(v->files_verified, 2u);
  // The wrong innerOffset gives the wrong bytes, which do not verify.
  std::string wrong = toc;
  wrong.replace(wrong.find("\"innerOffset\":4"), 15, "\"innerOffset\":3");
  r = OpenBlob(Assemble(c, payload, wrong));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ReadFile(**r, "b").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(VerifyLayer(**r).status().code(), absl::StatusCode::kDataLoss);
}

// A whole zstd:chunked layer with containers/storage v1.47-v1.49's 56-byte
// footer payload reads and verifies.
TEST(LayerReaderTest, ZstdChunkedWithThe56ByteFooter) {
  TestLayer t(Compression::kZstd);
  t.AddFile("etc/hello", "hello, world\n");
  t.AddFile("big", RandomBytes(300000, 5));
  TestBlob b = t.Build();
  std::string blob = b.blob;
  ASSERT_EQ(blob.substr(blob.size() - 8), "GnUlInUx");
  blob[blob.size() - 48 + 4] = 56;
  blob += std::string(16, '\0');
  absl::StatusOr<std::unique_ptr<LayerReader>> r = OpenBlob(blob);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->footer().footer_size, 64u);
  EXPECT_EQ(ReadFile(**r, "etc/hello").value(), "hello, world\n");
  EXPECT_EQ(ReadFile(**r, "big").value(), RandomBytes(300000, 5));
  absl::StatusOr<VerifyResult> v = VerifyRaw(**r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->files_verified, 2u);
}

// containers/storage stores runs of zeros as no data at all.
TEST_P(SynthesizedTest, ZerosChunks) {
  const Compression c = GetParam();
  const std::string data(4096, 'D');
  const std::string zeros(4096, '\0');
  const std::string payload = Compress(c, data);
  const std::string toc = absl::StrCat(
      R"({"version":1,"entries":[)",
      R"({"name":"z","type":"reg","size":8192,"offset":0,"chunkSize":4096,)",
      R"("digest":")", Sha256::Of(data + zeros).ToString(),
      R"(","chunkDigest":")", Sha256::Of(data).ToString(), R"("},)",
      R"({"name":"z","type":"chunk","offset":0,"chunkOffset":4096,)",
      R"("chunkType":"zeros","chunkDigest":")", Sha256::Of(zeros).ToString(),
      R"("}]})");
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenBlob(Assemble(c, payload, toc));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(ReadFile(**r, "z").value() == data + zeros);
  absl::StatusOr<VerifyResult> v = VerifyRaw(**r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->chunks_verified, 2u);
  EXPECT_EQ(v->files_verified, 1u);
}

// Zero runs first and between data chunks (containers/storage writes any
// run of 1 KiB or more so): the file reads right, and verify checks the
// whole file's digest (it used to skip the file: its data chunk after the
// zeros came out of file order).
TEST_P(SynthesizedTest, ZerosChunksBetweenDataChunks) {
  const Compression c = GetParam();
  const std::string zeros(4096, '\0'), d1(4096, 'D'), d2(4096, 'E');
  const std::string m1 = Compress(c, d1);
  const std::string payload = m1 + Compress(c, d2);
  const std::string whole = zeros + d1 + zeros + d2;
  auto toc_with = [&](const std::string& file_digest) {
    const std::string z = Sha256::Of(zeros).ToString();
    return absl::StrCat(
        R"({"version":1,"entries":[)",
        R"({"name":"z","type":"reg","size":16384,"offset":0,"chunkSize":4096,)",
        R"("chunkType":"zeros","digest":")", file_digest,
        R"(","chunkDigest":")", z, R"("},)",
        R"({"name":"z","type":"chunk","offset":0,"chunkOffset":4096,)",
        R"("chunkSize":4096,"chunkDigest":")", Sha256::Of(d1).ToString(),
        R"("},)",
        R"({"name":"z","type":"chunk","offset":0,"chunkOffset":8192,)",
        R"("chunkSize":4096,"chunkType":"zeros","chunkDigest":")", z, R"("},)",
        R"({"name":"z","type":"chunk","offset":)", m1.size(),
        R"(,"chunkOffset":12288,"chunkDigest":")", Sha256::Of(d2).ToString(),
        R"("}]})");
  };
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenBlob(Assemble(c, payload, toc_with(Sha256::Of(whole).ToString())));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(ReadFile(**r, "z").value() == whole);
  absl::StatusOr<VerifyResult> v = VerifyRaw(**r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->chunks_verified, 4u);
  EXPECT_EQ(v->files_verified, 1u);
  // A wrong whole-file digest is caught.
  r = OpenBlob(Assemble(c, payload, toc_with(Sha256::Of("x").ToString())));
  ASSERT_TRUE(r.ok()) << r.status();
  v = VerifyRaw(**r);
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss) << v.status();
  EXPECT_TRUE(absl::StrContains(v.status().message(), "\"z\" does not match"))
      << v.status();
}

TEST_P(SynthesizedTest, ChunkNotAtAMemberStart) {
  const Compression c = GetParam();
  const std::string payload = Compress(c, "first") + Compress(c, "second");
  const uint64_t second = Compress(c, "first").size();
  const std::string d = Sha256::Of("second").ToString();
  const std::string toc = absl::StrCat(
      R"({"version":1,"entries":[{"name":"f","type":"reg","size":6,)",
      R"("offset":)", second + 1, R"(,"digest":")", d, R"(","chunkDigest":")",
      d, R"("}]})");
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenBlob(Assemble(c, payload, toc));
  ASSERT_TRUE(r.ok()) << r.status();
  std::string out(6, '\0');
  EXPECT_EQ((*r)->ReadChunk(0, absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
  absl::Status s = VerifyLayer(**r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"f\""));
}

TEST_P(SynthesizedTest, HostileTocsAreRefusedAtOpen) {
  const Compression c = GetParam();
  const std::string payload = Compress(c, "x");
  const std::string d = Sha256::Of("x").ToString();
  for (
      absl::string_view toc : {
          absl::string_view("not json at all"),
          absl::string_view(
              R"({"version":1,"entries":[{"name":"../../etc/passwd","type":"dir"}]})"),
          absl::string_view(
              R"({"version":1,"entries":[{"name":"hl","type":"hardlink","linkName":"../x"}]})"),
          absl::string_view(
              R"({"version":1,"entries":[{"name":"h","type":"hardlink","linkName":"h"}]})"),
          absl::string_view(
              R"({"version":1,"entries":[{"name":"c","type":"chunk"}]})"),
          absl::string_view(R"({"version":9,"entries":[]})"),
          absl::string_view(
              R"({"version":1,"entries":[{"name":"f","type":"reg","size":1,"offset":99999}]})"),
      }) {
    SCOPED_TRACE(toc);
    absl::Status s = OpenBlob(Assemble(c, payload, toc)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  }
}

// Sizes no member could inflate to (a file of 1 TiB in a few bytes; a
// payload 2^61 bytes into a shared member) are refused at open, naming the
// file, rather than allocated at the first read.
TEST_P(SynthesizedTest, AbsurdChunkSizesAreRefusedAtOpen) {
  const Compression c = GetParam();
  const std::string payload = Compress(c, "AAAABBBBBB");
  const std::string da = Sha256::Of("AAAA").ToString();
  const std::string db = Sha256::Of("BBBBBB").ToString();
  for (const std::string& toc : {
           absl::StrCat(
               R"({"version":1,"entries":[{"name":"huge","type":"reg",)",
               R"("size":1099511627776,"offset":0,"digest":")", da,
               R"(","chunkDigest":")", da, R"("}]})"),
           absl::StrCat(
               R"({"version":1,"entries":[{"name":"a","type":"reg","size":4,)",
               R"("offset":0,"digest":")", da, R"(","chunkDigest":")", da,
               R"("},{"name":"far","type":"reg","size":6,"offset":0,)",
               R"("innerOffset":2305843009213693952,"digest":")", db,
               R"(","chunkDigest":")", db, R"("}]})"),
       }) {
    absl::Status s = OpenBlob(Assemble(c, payload, toc)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("more than it can inflate"))
        << s;
  }
  // (FilesSharingAMember: the same member with honest claims opens.)
}

INSTANTIATE_TEST_SUITE_P(Both, SynthesizedTest,
                         ::testing::Values(Compression::kGzip,
                                           Compression::kZstd),
                         [](const auto& info) {
                           return std::string(Name(info.param));
                         });

// ---- TOC size and TOC member ------------------------------------------------

TEST(LayerReaderTest, TwoGiBClaimedTocIsRefused) {
  // gzip: the TOC's tar header claims 2 GiB; nothing that size is allocated.
  std::string member =
      GzipMember(TarHeader("stargz.index.json", '0', uint64_t{2} << 30) + "{}");
  std::string blob = member + EstargzFooter(0);
  absl::Status s = OpenBlob(blob).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("limit"));
  // zstd: the footer claims a 2 GiB TOC (uncompressed), or a 2 GiB
  // compressed one.
  std::string frame = ZstdFrame("{}");
  blob = std::string(8, '\0') + frame +
         ZstdChunkedFooter(8, frame.size(), uint64_t{2} << 30);
  EXPECT_EQ(OpenBlob(blob).status().code(), absl::StatusCode::kInvalidArgument);
  blob =
      std::string(8, '\0') + frame + ZstdChunkedFooter(8, uint64_t{2} << 30, 2);
  EXPECT_EQ(OpenBlob(blob).status().code(), absl::StatusCode::kInvalidArgument);
  // A configured limit applies to both.
  LayerOpenOptions opts;
  opts.footer_limits.max_toc_size = 100;
  TestBlob t = TestLayer().AddFile("f", "content").Build();
  s = OpenBlob(t.blob, opts).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  t = TestLayer(Compression::kZstd).AddFile("f", "content").Build();
  s = OpenBlob(t.blob, opts).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(LayerReaderTest, ZstdTocShorterThanTheFooterSays) {
  std::string frame = ZstdFrame(R"({"version":1})");
  std::string blob = std::string(8, '\0') + frame +
                     ZstdChunkedFooter(8, frame.size(), 14);  // one byte more
  absl::Status s = OpenBlob(blob).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  blob = std::string(8, '\0') + "garbage!" + ZstdChunkedFooter(8, 8, 13);
  EXPECT_EQ(OpenBlob(blob).status().code(), absl::StatusCode::kInvalidArgument);
  // TOC offset leaving no room for its skippable frame header.
  blob = frame + ZstdChunkedFooter(0, frame.size(), 13);
  EXPECT_EQ(OpenBlob(blob).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LayerReaderTest, ReadGzipTocMember) {
  const std::string json = R"({"version":1,"entries":null})";
  std::string tar = TarHeader("stargz.index.json", '0', json.size()) + json +
                    TarPadding(json.size()) + std::string(1024, '\0');
  absl::StatusOr<std::string> got = ReadGzipTocMember(GzipMember(tar), 1000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, json);
  // With a PAX header first.
  std::string pax = "30 mtime=1622548800.000000000\n";
  std::string with_pax = TarHeader("PaxHeaders/x", 'x', pax.size()) + pax +
                         TarPadding(pax.size()) + tar;
  got = ReadGzipTocMember(GzipMember(with_pax), 1000);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, json);
  // Over the limit.
  EXPECT_EQ(ReadGzipTocMember(GzipMember(tar), json.size() - 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Another file name, another type, a bad size field.
  std::string other = TarHeader("etc/passwd", '0', json.size()) + json;
  EXPECT_THAT(
      std::string(
          ReadGzipTocMember(GzipMember(other), 1000).status().message()),
      HasSubstr("etc/passwd"));
  std::string dir = TarHeader("stargz.index.json", '5', 0);
  EXPECT_FALSE(ReadGzipTocMember(GzipMember(dir), 1000).ok());
  std::string bad_size = tar;
  std::memcpy(&bad_size[124], "zzzzzzzzzzz", 11);
  EXPECT_EQ(ReadGzipTocMember(GzipMember(bad_size), 1000).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Truncated: a header cut short, the JSON cut short, not gzip at all.
  EXPECT_FALSE(ReadGzipTocMember(GzipMember(tar.substr(0, 300)), 1000).ok());
  EXPECT_FALSE(
      ReadGzipTocMember(GzipMember(tar.substr(0, 512 + 5)), 1000).ok());
  EXPECT_FALSE(ReadGzipTocMember(tar, 1000).ok());
  EXPECT_FALSE(ReadGzipTocMember("", 1000).ok());
  // Endless extension headers.
  std::string many;
  for (int i = 0; i < 10; ++i) {
    many += TarHeader("PaxHeaders/x", 'x', pax.size()) + pax +
            TarPadding(pax.size());
  }
  EXPECT_FALSE(ReadGzipTocMember(GzipMember(many + tar), 1000).ok());
}

TEST(LayerReaderTest, TinyBlobs) {
  for (size_t n : {0, 1, 46, 47, 51, 71, 72, 100}) {
    EXPECT_EQ(OpenBlob(std::string(n, '\0')).status().code(),
              absl::StatusCode::kInvalidArgument)
        << n;
  }
  // A footer and nothing else.
  EXPECT_EQ(OpenBlob(EstargzFooter(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- Golden blobs -----------------------------------------------------------

struct Golden {
  std::string name;
  std::shared_ptr<const std::string> blob;
  bool valid = false;
  std::string stage;  // "open" or "read" for broken cases
  std::optional<Digest> toc_digest;
  std::optional<Digest> manifest_checksum;
  Digest diff_id;
  uint64_t uncompressed_size = 0;
  std::string fail_path;
  uint64_t fail_chunk_offset = 0;
};

std::optional<Digest> DigestAt(simdjson::dom::element e, const char* key) {
  std::string_view s;
  if (e[key].get_string().get(s) != simdjson::SUCCESS) return std::nullopt;
  absl::StatusOr<Digest> d =
      Digest::Parse(absl::string_view(s.data(), s.size()));
  if (!d.ok()) return std::nullopt;
  return *d;
}

Golden LoadGolden(const std::string& name) {
  const std::string dir =
      *::lazypull::testing::TestdataDir() + "/estargz/" + name;
  Golden g;
  g.name = name;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.load(dir + "/expected.json").get(doc) != simdjson::SUCCESS) {
    ADD_FAILURE() << "cannot parse " << dir << "/expected.json";
    return g;
  }
  std::string_view file;
  if (doc["blob_file"].get_string().get(file) != simdjson::SUCCESS) {
    ADD_FAILURE() << name << ": no blob_file";
    return g;
  }
  g.blob = std::make_shared<const std::string>(
      ::lazypull::testing::ReadFile(dir + "/" + std::string(file)));
  simdjson::dom::element must_fail;
  g.valid = doc["must_fail"].get(must_fail) == simdjson::SUCCESS &&
            must_fail.is_null();
  g.toc_digest = DigestAt(doc, "toc_digest");
  if (auto d = DigestAt(doc, "diff_id")) g.diff_id = *d;
  uint64_t u;
  if (doc["uncompressed_size"].get_uint64().get(u) == simdjson::SUCCESS) {
    g.uncompressed_size = u;
  }
  simdjson::dom::element ann;
  if (doc["annotations"].get(ann) == simdjson::SUCCESS) {
    g.manifest_checksum =
        DigestAt(ann, "io.containers.zstd-chunked.manifest-checksum");
  }
  simdjson::dom::element failure;
  if (doc["failure"].get(failure) == simdjson::SUCCESS && !failure.is_null()) {
    std::string_view s;
    if (failure["stage"].get_string().get(s) == simdjson::SUCCESS) g.stage = s;
    if (failure["path"].get_string().get(s) == simdjson::SUCCESS) {
      g.fail_path = s;
    }
    if (failure["chunk_offset"].get_uint64().get(u) == simdjson::SUCCESS) {
      g.fail_chunk_offset = u;
    }
  }
  return g;
}

std::vector<Golden> LoadAll() {
  std::vector<Golden> out;
  for (const std::string& c : ::lazypull::testing::EstargzCases()) {
    out.push_back(LoadGolden(c));
  }
  return out;
}

LayerOpenOptions AnchoredOptions(const Golden& g) {
  LayerOpenOptions opts;
  opts.toc_digest = g.toc_digest;
  opts.toc_compressed_digest = g.manifest_checksum;
  return opts;
}

TEST(GoldenTest, ValidLayersOpenReadAndVerify) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  std::vector<Golden> all = LoadAll();
  ASSERT_GE(all.size(), 10u);
  int valid = 0;
  for (const Golden& g : all) {
    if (!g.valid) continue;
    ++valid;
    SCOPED_TRACE(g.name);
    ASSERT_TRUE(g.toc_digest.has_value());
    absl::StatusOr<std::unique_ptr<LayerReader>> r =
        OpenSource(std::make_shared<EditedSource>(g.blob, g.blob->size()),
                   AnchoredOptions(g));
    ASSERT_TRUE(r.ok()) << r.status();
    absl::Status read = ReadEveryChunk(**r);
    EXPECT_TRUE(read.ok()) << read;
    absl::StatusOr<VerifyResult> v = VerifyLayer(**r);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->diff_id, g.diff_id);
    EXPECT_EQ(v->uncompressed_size, g.uncompressed_size);
    EXPECT_EQ(v->blob_digest, Sha256::Of(*g.blob));
    EXPECT_EQ(v->chunks_verified, (*r)->index().chunks().size());
  }
  EXPECT_GE(valid, 10);
}

TEST(GoldenTest, BrokenLayersFailWhereTheySay) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  int broken = 0;
  for (const Golden& g : LoadAll()) {
    if (g.valid) continue;
    ++broken;
    SCOPED_TRACE(g.name);
    absl::StatusOr<std::unique_ptr<LayerReader>> r =
        OpenSource(std::make_shared<EditedSource>(g.blob, g.blob->size()),
                   AnchoredOptions(g));
    if (g.stage == "open") {
      EXPECT_FALSE(r.ok());
      continue;
    }
    ASSERT_EQ(g.stage, "read");
    ASSERT_TRUE(r.ok()) << r.status();
    const LayerIndex& idx = (*r)->index();
    std::optional<uint32_t> ino = idx.Resolve(g.fail_path);
    ASSERT_TRUE(ino.has_value()) << g.fail_path;
    int failed = 0;
    for (uint32_t i = 0; i < idx.chunks().size(); ++i) {
      const Chunk& c = idx.chunks()[i];
      std::string out(c.size, '\0');
      absl::Status s = (*r)->ReadChunk(i, absl::MakeSpan(out));
      if (c.inode == *ino && c.file_offset == g.fail_chunk_offset) {
        ++failed;
        EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
        EXPECT_THAT(std::string(s.message()), HasSubstr(g.fail_path));
      } else {
        EXPECT_TRUE(s.ok()) << (*r)->DescribeChunk(i) << ": " << s;
      }
    }
    EXPECT_EQ(failed, 1);
    EXPECT_EQ(VerifyLayer(**r).status().code(), absl::StatusCode::kDataLoss);
  }
  EXPECT_GE(broken, 6);
}

// Truncation at every 97th byte: as cut (no footer left), and with the
// original footer put back after the cut (a footer pointing at data that is
// not there). Open or VerifyLayer must fail, cleanly.
TEST(GoldenTest, TruncationAtEvery97thByte) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  for (const Golden& g : LoadAll()) {
    if (!g.valid) continue;
    SCOPED_TRACE(g.name);
    absl::StatusOr<std::unique_ptr<LayerReader>> whole =
        OpenSource(std::make_shared<EditedSource>(g.blob, g.blob->size()));
    ASSERT_TRUE(whole.ok()) << whole.status();
    const uint64_t footer_size = (*whole)->footer().footer_size;
    const std::string footer = g.blob->substr(g.blob->size() - footer_size);
    for (uint64_t cut = 0; cut + footer_size < g.blob->size(); cut += 97) {
      EXPECT_FALSE(OpenSource(std::make_shared<EditedSource>(g.blob, cut)).ok())
          << "cut at " << cut;
      absl::StatusOr<std::unique_ptr<LayerReader>> r =
          OpenSource(std::make_shared<EditedSource>(g.blob, cut, footer));
      if (r.ok()) {
        EXPECT_FALSE(VerifyLayer(**r).ok()) << "cut at " << cut;
      }
    }
  }
}

// Random single-byte flips: Open fails, VerifyLayer fails, or the byte
// carried no data (gzip MTIME/OS, padding bits, ...) and everything still
// reads and verifies to the same DiffID. Never a crash, a hang, or a wrong
// byte.
TEST(GoldenTest, RandomSingleByteFlips) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  std::mt19937_64 rng(20240601);
  for (const Golden& g : LoadAll()) {
    if (!g.valid) continue;
    SCOPED_TRACE(g.name);
    const uint64_t size = g.blob->size();
    // Every byte of `basic` and of tiny blobs, every 5th byte of other
    // small ones, 300 random positions of large ones; always the last 200
    // bytes (TOC end and footer).
    std::vector<uint64_t> positions;
    const uint64_t tail = std::min<uint64_t>(size, 200);
    const uint64_t step = g.name == "basic" || size <= 2048 ? 1 : 5;
    if (size <= 16384) {
      for (uint64_t i = 0; i < size - tail; i += step) positions.push_back(i);
    } else {
      for (int i = 0; i < 300; ++i) positions.push_back(rng() % (size - tail));
    }
    for (uint64_t i = size - tail; i < size; ++i) positions.push_back(i);
    int open_failed = 0, verify_failed = 0, harmless = 0;
    for (uint64_t at : positions) {
      const uint8_t mask = static_cast<uint8_t>(1u << (rng() % 8));
      absl::StatusOr<std::unique_ptr<LayerReader>> r =
          OpenSource(std::make_shared<EditedSource>(g.blob, size, "", at, mask),
                     AnchoredOptions(g));
      if (!r.ok()) {
        ++open_failed;
        continue;
      }
      absl::StatusOr<VerifyResult> v = VerifyLayer(**r);
      if (!v.ok()) {
        ++verify_failed;
        continue;
      }
      ++harmless;
      EXPECT_EQ(v->diff_id, g.diff_id)
          << "flip of byte " << at << " (mask " << int{mask}
          << ") changed the content undetected";
      EXPECT_TRUE(ReadEveryChunk(**r).ok()) << "byte " << at;
    }
    EXPECT_GT(open_failed + verify_failed, 0);
    std::cerr << g.name << ": " << positions.size() << " flips: " << open_failed
              << " refused at open, " << verify_failed << " by verification, "
              << harmless << " harmless\n";
  }
}

}  // namespace
}  // namespace lazypull
