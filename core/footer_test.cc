#include "core/footer.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"
#include "core/testing/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull {
namespace {

using ::lazypull::testing::EstargzFooter;
using ::lazypull::testing::ExternalTocFooter;
using ::lazypull::testing::LegacyStargzFooter;
using ::lazypull::testing::ZstdChunkedFooter;
using ::lazypull::testing::ZstdStorageFooter;
using ::testing::HasSubstr;

// The tail ParseFooter expects for a whole blob.
absl::string_view TailOf(absl::string_view blob) {
  size_t n = std::min<size_t>(blob.size(), kFooterTailSize);
  return blob.substr(blob.size() - n);
}

absl::StatusOr<Footer> Parse(absl::string_view blob,
                             const FooterLimits& limits = {}) {
  return ParseFooter(TailOf(blob), blob.size(), limits);
}

// ---- Golden blobs -----------------------------------------------------------

struct GoldenFooter {
  const char* dir;
  const char* file;
  LayerFormat format;
  uint64_t blob_size;
  uint64_t footer_size;  // bytes at the end, skippable-frame header included
  uint64_t toc_offset;
  uint64_t toc_compressed_size;
  uint64_t toc_uncompressed_size;  // 0 for gzip (not in the footer)
};

// Values from each case's expected.json ("footer", "blob_size").
constexpr GoldenFooter kGolden[] = {
    {"basic", "layer.esgz", LayerFormat::kEstargz, 7845, 51, 5890, 1904, 0},
    {"legacy", "layer.esgz", LayerFormat::kStargzLegacy, 7841, 47, 5890, 1904,
     0},
    {"empty", "layer.esgz", LayerFormat::kEstargz, 176, 51, 0, 125, 0},
    {"zstd", "layer.zstdchunked", LayerFormat::kZstdChunked, 1920671, 48,
     1916686, 3937, 17709},
};

TEST(FooterGoldenTest, ParsesEveryDialectFromTheTail) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  for (const GoldenFooter& g : kGolden) {
    SCOPED_TRACE(g.dir);
    std::string blob =
        ::lazypull::testing::ReadFile(*::lazypull::testing::TestdataDir() +
                                      "/estargz/" + g.dir + "/" + g.file);
    ASSERT_EQ(blob.size(), g.blob_size);
    absl::StatusOr<Footer> f = Parse(blob);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->format, g.format);
    EXPECT_EQ(f->footer_size, g.footer_size);
    EXPECT_EQ(f->toc_offset, g.toc_offset);
    EXPECT_EQ(f->toc_compressed_size, g.toc_compressed_size);
    EXPECT_EQ(f->toc_uncompressed_size, g.toc_uncompressed_size);
  }
}

TEST(FooterGoldenTest, BrokenCasesAreRefused) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  for (const char* dir : {"bad-footer", "truncated"}) {
    SCOPED_TRACE(dir);
    std::string blob =
        ::lazypull::testing::ReadFile(*::lazypull::testing::TestdataDir() +
                                      "/estargz/" + dir + "/layer.esgz");
    ASSERT_FALSE(blob.empty());
    EXPECT_EQ(Parse(blob).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// Cutting bytes off the end of a valid blob always destroys its footer.
TEST(FooterGoldenTest, EveryTruncationOfTheTailIsRefused) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  for (const GoldenFooter& g : kGolden) {
    SCOPED_TRACE(g.dir);
    std::string blob =
        ::lazypull::testing::ReadFile(*::lazypull::testing::TestdataDir() +
                                      "/estargz/" + g.dir + "/" + g.file);
    ASSERT_EQ(blob.size(), g.blob_size);
    // Every cut within the last 4 KiB, then every 97th one before that.
    for (uint64_t len = blob.size(); len-- > 0;) {
      if (len + 4096 < blob.size() && len % 97 != 0) continue;
      absl::string_view cut = absl::string_view(blob).substr(0, len);
      absl::StatusOr<Footer> f = Parse(cut);
      EXPECT_FALSE(f.ok()) << "cut at " << len;
      if (!f.ok()) {
        EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
      }
    }
  }
}

// ---- Hand-made footers ------------------------------------------------------

TEST(FooterTest, Estargz) {
  std::string blob = std::string(1000, 'x') + EstargzFooter(900);
  ASSERT_EQ(EstargzFooter(900).size(), kEstargzFooterSize);
  absl::StatusOr<Footer> f = Parse(blob);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->format, LayerFormat::kEstargz);
  EXPECT_EQ(f->footer_size, 51u);
  EXPECT_EQ(f->toc_offset, 900u);
  EXPECT_EQ(f->toc_compressed_size, 100u);
  EXPECT_EQ(f->toc_uncompressed_size, 0u);
  EXPECT_EQ(LayerFormatName(f->format), "estargz");
}

TEST(FooterTest, EstargzFooterMatchesTheSpecExample) {
  // formats.md §1.1: the footer for TOC offset 0x1d2a4, byte for byte.
  const std::string want =
      std::string("\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x1a\x00SG\x16\x00",
                  16) +
      "000000000001d2a4STARGZ" + std::string("\x01\x00\x00\xff\xff", 5) +
      std::string(8, '\0');
  EXPECT_EQ(EstargzFooter(0x1d2a4), want);
  std::string blob = std::string(0x1d2a4 + 10, 'x') + want;
  absl::StatusOr<Footer> f = Parse(blob);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->toc_offset, 0x1d2a4u);
}

TEST(FooterTest, UppercaseHexIsAccepted) {
  std::string footer = EstargzFooter(0xabc);
  for (size_t i = 16; i < 32; ++i) footer[i] = absl::ascii_toupper(footer[i]);
  std::string blob = std::string(0xabc + 1, 'x') + footer;
  absl::StatusOr<Footer> f = Parse(blob);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->toc_offset, 0xabcu);
}

TEST(FooterTest, LegacyStargz) {
  std::string footer = LegacyStargzFooter(10);
  ASSERT_EQ(footer.size(), kLegacyFooterSize);
  std::string blob = std::string(30, 'x') + footer;
  absl::StatusOr<Footer> f = Parse(blob);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->format, LayerFormat::kStargzLegacy);
  EXPECT_EQ(f->footer_size, 47u);
  EXPECT_EQ(f->toc_offset, 10u);
  EXPECT_EQ(f->toc_compressed_size, 20u);
  EXPECT_EQ(LayerFormatName(f->format), "stargz-legacy");
}

TEST(FooterTest, ZstdChunked) {
  // [payload 100][skippable hdr 8][TOC 50][footer 48]
  std::string blob = std::string(108, 'x') + std::string(50, 't') +
                     ZstdChunkedFooter(108, 50, 400);
  absl::StatusOr<Footer> f = Parse(blob);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->format, LayerFormat::kZstdChunked);
  EXPECT_TRUE(IsZstd(f->format));
  EXPECT_EQ(f->footer_size, 48u);
  EXPECT_EQ(f->toc_offset, 108u);
  EXPECT_EQ(f->toc_compressed_size, 50u);
  EXPECT_EQ(f->toc_uncompressed_size, 400u);
  EXPECT_EQ(LayerFormatName(f->format), "zstd:chunked");
}

TEST(FooterTest, ZstdChunkedStorage) {
  std::string blob = std::string(108, 'x') + std::string(50, 't') +
                     ZstdStorageFooter(108, 50, 400);
  ASSERT_EQ(ZstdStorageFooter(0, 0, 0).size(), kZstdStorageFooterSize);
  absl::StatusOr<Footer> f = Parse(blob);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->format, LayerFormat::kZstdChunkedStorage);
  EXPECT_TRUE(IsZstd(f->format));
  EXPECT_EQ(f->footer_size, 72u);
  EXPECT_EQ(f->toc_offset, 108u);
  EXPECT_EQ(f->toc_compressed_size, 50u);
  EXPECT_EQ(f->toc_uncompressed_size, 400u);
}

// containers/storage v1.47.0-v1.49.0 wrote a 56-byte payload: the
// reference's fields and magic, then 16 zero bytes.
TEST(FooterTest, ZstdChunkedStorage56) {
  std::string footer = ZstdChunkedFooter(108, 50, 400);
  footer[4] = 56;
  footer += std::string(16, '\0');
  ASSERT_EQ(footer.size(), kZstdStorage56FooterSize);
  std::string blob = std::string(108, 'x') + std::string(50, 't') + footer;
  absl::StatusOr<Footer> f = Parse(blob);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->format, LayerFormat::kZstdChunkedStorage);
  EXPECT_EQ(f->footer_size, 64u);
  EXPECT_EQ(f->toc_offset, 108u);
  EXPECT_EQ(f->toc_compressed_size, 50u);
  EXPECT_EQ(f->toc_uncompressed_size, 400u);
  // Its frame length must say 56; the 16 bytes must be zero.
  std::string wrong_len = blob;
  wrong_len[wrong_len.size() - 64 + 4] = 40;
  EXPECT_EQ(Parse(wrong_len).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::string not_zero = blob;
  not_zero.back() = 1;
  EXPECT_EQ(Parse(not_zero).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FooterTest, ZstdManifestTypeOtherThanOneIsRefused) {
  std::string blob =
      std::string(200, 'x') + ZstdChunkedFooter(108, 50, 400, /*type=*/2);
  EXPECT_EQ(Parse(blob).status().code(), absl::StatusCode::kInvalidArgument);
  blob = std::string(200, 'x') + ZstdStorageFooter(108, 50, 400, /*type=*/0);
  EXPECT_EQ(Parse(blob).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FooterTest, ZstdMagicOutsideItsSkippableFrameIsRefused) {
  std::string footer = ZstdChunkedFooter(8, 10, 10);
  std::string blob = std::string(200, 'x') + footer;
  blob[blob.size() - 48] = 0x51;  // skippable magic byte 0: 0x50 -> 0x51
  // 0x184D2A51 is also a skippable magic, but the footer frame must be
  // 0x184D2A50.
  EXPECT_FALSE(Parse(blob).ok());
  blob = std::string(200, 'x') + footer;
  blob[blob.size() - 44] = 41;  // frame length 40 -> 41
  EXPECT_EQ(Parse(blob).status().code(), absl::StatusCode::kInvalidArgument);
  blob = std::string(200, 'x') + ZstdStorageFooter(8, 10, 10);
  blob[blob.size() - 68] = 40;  // frame length 64 -> 40
  EXPECT_EQ(Parse(blob).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FooterTest, ExternalTocIsUnimplemented) {
  std::string footer = ExternalTocFooter();
  ASSERT_EQ(footer.size(), 46u);
  std::string blob = std::string(500, 'x') + footer;
  absl::Status s = Parse(blob).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("external"));
  EXPECT_TRUE(IsExternalToc(s));
  EXPECT_FALSE(IsNoFooter(s));
  EXPECT_FALSE(IsExternalToc(Parse(std::string(500, 'x')).status()));
  // Also when the blob is the footer alone.
  EXPECT_EQ(Parse(footer).status().code(), absl::StatusCode::kUnimplemented);
}

// Every byte of the footer that a reader checks, damaged one at a time.
TEST(FooterTest, DamagedEstargzFooterBytesAreRefused) {
  const std::string good = std::string(100, 'x') + EstargzFooter(50);
  ASSERT_TRUE(Parse(good).ok());
  const size_t base = good.size() - kEstargzFooterSize;
  // ID1 ID2 CM FLG, XLEN, "SG", subfield length, "STARGZ", the empty block
  // and CRC/ISIZE. (MTIME, XFL and OS vary between writers: not checked.)
  std::vector<size_t> checked = {0, 1, 2, 3, 10, 11, 12, 13, 14, 15};
  for (size_t i = 32; i < 51; ++i) checked.push_back(i);
  for (size_t i : checked) {
    std::string bad = good;
    bad[base + i] ^= 0x20;
    absl::StatusOr<Footer> f = Parse(bad);
    EXPECT_FALSE(f.ok()) << "byte " << i << " damaged";
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument)
          << "byte " << i;
    }
  }
  // A non-hex digit in the offset.
  for (size_t i = 16; i < 32; ++i) {
    std::string bad = good;
    bad[base + i] = 'g';
    EXPECT_EQ(Parse(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << "byte " << i;
  }
  // MTIME/XFL/OS are not part of the format.
  std::string other_os = good;
  other_os[base + 9] = 3;
  other_os[base + 8] = 2;
  EXPECT_TRUE(Parse(other_os).ok());
}

TEST(FooterTest, DamagedLegacyFooterIsRefused) {
  const std::string good = std::string(100, 'x') + LegacyStargzFooter(50);
  ASSERT_TRUE(Parse(good).ok());
  const size_t base = good.size() - kLegacyFooterSize;
  for (size_t i : {0, 1, 2, 3, 10, 11, 28, 33, 34, 38, 46}) {
    std::string bad = good;
    bad[base + i] ^= 0x20;
    EXPECT_EQ(Parse(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << "byte " << i;
  }
  std::string bad = good;
  bad[base + 12] = 'z';
  EXPECT_EQ(Parse(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FooterTest, DamagedZstdMagicIsRefused) {
  for (bool storage : {false, true}) {
    const std::string good =
        std::string(300, 'x') + (storage ? ZstdStorageFooter(108, 50, 400)
                                         : ZstdChunkedFooter(108, 50, 400));
    ASSERT_TRUE(Parse(good).ok());
    for (size_t i = good.size() - 8; i < good.size(); ++i) {
      std::string bad = good;
      bad[i] ^= 0x01;
      EXPECT_EQ(Parse(bad).status().code(), absl::StatusCode::kInvalidArgument)
          << "storage=" << storage << " byte " << i;
    }
  }
}

TEST(FooterTest, NotAFooterAtAll) {
  EXPECT_EQ(Parse(std::string(4096, '\0')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse(std::string(4096, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- Offsets and sizes that must not be trusted -----------------------------

TEST(FooterTest, TocOffsetPastTheEndIsRefused) {
  // 100 bytes of data before the footer: offsets 0..100 are in range.
  std::string ok_blob = std::string(100, 'x') + EstargzFooter(100);
  ASSERT_TRUE(Parse(ok_blob).ok());
  EXPECT_EQ(Parse(ok_blob)->toc_compressed_size, 0u);
  for (uint64_t off :
       {uint64_t{101}, uint64_t{151}, uint64_t{1} << 40, ~uint64_t{0}}) {
    SCOPED_TRACE(off);
    EXPECT_EQ(Parse(std::string(100, 'x') + EstargzFooter(off)).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(
        Parse(std::string(100, 'x') + LegacyStargzFooter(off)).status().code(),
        absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Parse(std::string(100, 'x') + ZstdChunkedFooter(off, 0, 0))
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Parse(std::string(100, 'x') + ZstdStorageFooter(off, 0, 0))
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(FooterTest, ZstdTocRunningPastTheFooterIsRefused) {
  // 100 bytes before the footer, TOC at 20: at most 80 bytes fit.
  EXPECT_TRUE(
      Parse(std::string(100, 'x') + ZstdChunkedFooter(20, 80, 1000)).ok());
  for (uint64_t len :
       {uint64_t{81}, uint64_t{1} << 33, ~uint64_t{0}, ~uint64_t{0} - 19}) {
    SCOPED_TRACE(len);
    EXPECT_EQ(Parse(std::string(100, 'x') + ZstdChunkedFooter(20, len, 1000))
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Parse(std::string(100, 'x') + ZstdStorageFooter(20, len, 1000))
                  .status()
                  .code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(FooterTest, TocOverTheLimitIsRefused) {
  FooterLimits limits;
  limits.max_toc_size = 64;
  // gzip: the compressed TOC runs from its offset to the footer.
  EXPECT_TRUE(Parse(std::string(100, 'x') + EstargzFooter(36), limits).ok());
  absl::Status s =
      Parse(std::string(100, 'x') + EstargzFooter(35), limits).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("limit"));
  // zstd: compressed or uncompressed length over the limit.
  EXPECT_TRUE(
      Parse(std::string(100, 'x') + ZstdChunkedFooter(8, 64, 64), limits).ok());
  EXPECT_EQ(Parse(std::string(100, 'x') + ZstdChunkedFooter(8, 65, 64), limits)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse(std::string(100, 'x') + ZstdChunkedFooter(8, 10, 65), limits)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // A 2 GiB uncompressed TOC claim, with the default limit.
  EXPECT_EQ(
      Parse(std::string(100, 'x') + ZstdChunkedFooter(8, 10, uint64_t{2} << 30))
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Parse(std::string(100, 'x') + ZstdStorageFooter(8, 10, ~uint64_t{0}))
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
}

// ---- Short blobs and short tails --------------------------------------------

TEST(FooterTest, BlobsShorterThan72Bytes) {
  // The footer alone: TOC offset 0 and size 0 is a well-formed footer (the
  // TOC read then fails, not the footer).
  absl::StatusOr<Footer> f = Parse(EstargzFooter(0));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->toc_compressed_size, 0u);
  f = Parse(std::string(10, 'x') + EstargzFooter(3));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->toc_compressed_size, 7u);
  f = Parse(std::string(20, 'x') + LegacyStargzFooter(5));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->toc_compressed_size, 15u);
  f = Parse(std::string(8, 'x') + ZstdChunkedFooter(8, 0, 0));
  ASSERT_TRUE(f.ok()) << f.status();
  // The storage footer needs all 72 bytes.
  std::string storage = ZstdStorageFooter(0, 0, 0);
  EXPECT_FALSE(Parse(absl::string_view(storage).substr(1)).ok());
  // Anything shorter than the smallest footer.
  for (size_t n = 0; n < kLegacyFooterSize; ++n) {
    SCOPED_TRACE(n);
    EXPECT_EQ(Parse(std::string(n, 'x')).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(
        Parse(EstargzFooter(0).substr(kEstargzFooterSize - n)).status().code(),
        absl::StatusCode::kInvalidArgument);
  }
  // A 51-byte eStargz footer whose offset points into itself.
  EXPECT_EQ(Parse(EstargzFooter(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FooterTest, TailOfTheWrongLengthIsRefused) {
  std::string blob = std::string(1000, 'x') + EstargzFooter(900);
  absl::string_view tail = TailOf(blob);
  ASSERT_TRUE(ParseFooter(tail, blob.size()).ok());
  // Every shorter tail: the caller must pass min(blob_size, 72) bytes.
  for (size_t k = 1; k <= tail.size(); ++k) {
    EXPECT_EQ(ParseFooter(tail.substr(k), blob.size()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << "tail short by " << k;
  }
  // A tail longer than the blob it claims to end.
  EXPECT_FALSE(ParseFooter(tail, 60).ok());
  // A tail longer than kFooterTailSize.
  EXPECT_FALSE(
      ParseFooter(absl::string_view(blob).substr(blob.size() - 73), blob.size())
          .ok());
}

TEST(FooterTest, EveryTruncationOfAHandMadeBlobIsRefused) {
  for (const std::string& footer :
       {EstargzFooter(20), LegacyStargzFooter(20),
        ZstdChunkedFooter(28, 10, 10), ZstdStorageFooter(28, 10, 10)}) {
    std::string blob = std::string(100, 'x') + footer;
    ASSERT_TRUE(Parse(blob).ok());
    for (size_t len = 0; len < blob.size(); ++len) {
      EXPECT_FALSE(Parse(absl::string_view(blob).substr(0, len)).ok())
          << "footer size " << footer.size() << ", cut at " << len;
    }
  }
}

}  // namespace
}  // namespace lazypull
