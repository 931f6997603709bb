#include "core/decompressor.h"

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/testing/test_layer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using ::lazypull::testing::GzipMember;
using ::lazypull::testing::SkippableFrame;
using ::lazypull::testing::ZstdFrame;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Incompressible bytes (deflate stores them, zstd writes raw blocks).
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

// Compressible text (exercises Huffman blocks and matches).
std::string Text(size_t n) {
  std::string out;
  for (int i = 0; out.size() < n; ++i) {
    absl::StrAppend(&out, "line ", i, ": the quick brown fox ", i * 7919 % 1000,
                    "\n");
  }
  out.resize(n);
  return out;
}

std::string Compress(Compression c, absl::string_view data) {
  return ::lazypull::testing::Compress(c, data);
}

const char* Name(Compression c) {
  return c == Compression::kZstd ? "zstd" : "gzip";
}

struct StreamResult {
  absl::Status status;
  std::string out;
  std::vector<size_t> ends;  // input offsets at which frame_end was reported
};

// Drives a StreamDecompressor over `data`, at most `in_step` input bytes and
// `out_step` output bytes per call, until it makes no more progress.
StreamResult Stream(Compression c, absl::string_view data, size_t in_step,
                    size_t out_step) {
  std::unique_ptr<StreamDecompressor> d = StreamDecompressor::New(c);
  StreamResult res;
  std::string buf(out_step, '\0');
  size_t pos = 0;
  for (uint64_t iter = 0;; ++iter) {
    if (iter > 20'000'000) {
      res.status = absl::InternalError("no termination");
      return res;
    }
    absl::string_view in = data.substr(pos, in_step);
    absl::StatusOr<StreamDecompressor::Result> r =
        d->Decompress(in, absl::MakeSpan(buf));
    if (!r.ok()) {
      res.status = r.status();
      return res;
    }
    if (r->consumed > in.size() || r->produced > buf.size()) {
      res.status = absl::InternalError("consumed or produced too much");
      return res;
    }
    res.out.append(buf.data(), r->produced);
    pos += r->consumed;
    if (r->frame_end) res.ends.push_back(pos);
    if (r->consumed == 0 && r->produced == 0 && !r->frame_end) {
      if (pos < data.size()) {
        res.status = absl::InternalError(
            absl::StrCat("no progress at input offset ", pos));
      }
      return res;
    }
  }
}

// ---- Streams of members / frames --------------------------------------------

class StreamTest : public ::testing::TestWithParam<Compression> {};

TEST_P(StreamTest, MultiMemberStreamReportsEveryEnd) {
  const Compression c = GetParam();
  const std::vector<std::string> parts = {
      "hello", "", RandomBytes(150 << 10, 1), Text(200 << 10), "world"};
  std::string data, want;
  std::vector<size_t> want_ends;
  for (const std::string& p : parts) {
    data += Compress(c, p);
    want += p;
    want_ends.push_back(data.size());
  }
  for (size_t in_step : {size_t{1}, size_t{7}, size_t{4096}, data.size()}) {
    for (size_t out_step :
         {size_t{1}, size_t{13}, size_t{65536}, size_t{1} << 20}) {
      // One byte in and one byte out is slow and proves nothing more.
      if (in_step == 1 && out_step == 1) continue;
      SCOPED_TRACE(
          absl::StrCat(Name(c), " in_step ", in_step, " out_step ", out_step));
      StreamResult r = Stream(c, data, in_step, out_step);
      ASSERT_TRUE(r.status.ok()) << r.status;
      EXPECT_EQ(r.out.size(), want.size());
      EXPECT_TRUE(r.out == want);
      EXPECT_THAT(r.ends, ElementsAreArray(want_ends));
    }
  }
}

TEST_P(StreamTest, ResetForgetsAPartialMember) {
  const Compression c = GetParam();
  std::string a = Compress(c, Text(10000));
  std::string b = Compress(c, "second");
  std::unique_ptr<StreamDecompressor> d = StreamDecompressor::New(c);
  std::string buf(100, '\0');
  absl::StatusOr<StreamDecompressor::Result> r = d->Decompress(
      absl::string_view(a).substr(0, a.size() / 2), absl::MakeSpan(buf));
  ASSERT_TRUE(r.ok()) << r.status();
  d->Reset();
  std::string out(64, '\0');
  r = d->Decompress(b, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(absl::string_view(out.data(), r->produced), "second");
}

TEST_P(StreamTest, EmptyInputOrOutputMakesNoProgress) {
  const Compression c = GetParam();
  std::unique_ptr<StreamDecompressor> d = StreamDecompressor::New(c);
  std::string buf(10, '\0');
  absl::StatusOr<StreamDecompressor::Result> r =
      d->Decompress("", absl::MakeSpan(buf));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->consumed, 0u);
  EXPECT_EQ(r->produced, 0u);
  EXPECT_FALSE(r->frame_end);
}

INSTANTIATE_TEST_SUITE_P(
    Both, StreamTest, ::testing::Values(Compression::kGzip, Compression::kZstd),
    [](const auto& info) { return std::string(Name(info.param)); });

// Other gzip writers set FNAME, FCOMMENT, FEXTRA and FHCRC; headers must also
// survive arriving a byte at a time.
TEST(GzipTest, OptionalHeaderFieldsAcrossCallBoundaries) {
  std::string member = GzipMember("payload with a named header");
  std::string fancy = member.substr(0, 10);
  fancy[3] = 0x04 | 0x08 | 0x10;  // FEXTRA | FNAME | FCOMMENT
  fancy += std::string(
      "\x06\x00"
      "AB\x02\x00xy",
      8);  // XLEN 6, one subfield
  fancy += std::string("name.txt\0", 9);
  fancy += std::string("a comment\0", 10);
  fancy += member.substr(10);
  std::string data = fancy + member;
  for (size_t in_step : {size_t{1}, size_t{2}, size_t{5}, data.size()}) {
    SCOPED_TRACE(in_step);
    StreamResult r = Stream(Compression::kGzip, data, in_step, 4096);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.out,
              "payload with a named header"
              "payload with a named header");
    EXPECT_THAT(r.ends, ElementsAreArray({fancy.size(), data.size()}));
  }
}

TEST(GzipTest, CrcMismatchOfAWholeMemberIsDataLoss) {
  std::string data = RandomBytes(5000, 3);
  std::string member = GzipMember(data);
  // Stored blocks: a flipped payload byte inflates fine, the CRC catches it.
  std::string bad = member;
  bad[member.size() / 2] ^= 0x01;
  StreamResult r = Stream(Compression::kGzip, bad, bad.size(), 1 << 16);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(r.status.message()), HasSubstr("CRC"));
  // ISIZE is checked too.
  bad = member;
  bad[bad.size() - 1] ^= 0x01;
  r = Stream(Compression::kGzip, bad, bad.size(), 1 << 16);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss);
}

// A zstd skippable frame between data frames is passed over.
TEST(ZstdTest, SkippableFramesAreSkipped) {
  std::string data = ZstdFrame("hello") + SkippableFrame("ignored bytes") +
                     ZstdFrame("world") + SkippableFrame("");
  StreamResult r = Stream(Compression::kZstd, data, data.size(), 4096);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, "helloworld");
  r = Stream(Compression::kZstd, data, 3, 4096);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.out, "helloworld");
  std::string out(10, '\0');
  EXPECT_TRUE(DecompressRange(Compression::kZstd, data, 2,
                              absl::MakeSpan(out.data(), 6))
                  .ok());
  EXPECT_EQ(out.substr(0, 6), "llowor");
}

// ---- DecompressRange --------------------------------------------------------

class RangeTest : public ::testing::TestWithParam<Compression> {};

TEST_P(RangeTest, EverySkipAndLength) {
  const Compression c = GetParam();
  const std::string plain = RandomBytes(150 << 10, 7) + Text(150 << 10);
  // One member, and the same bytes as three members.
  const std::string one = Compress(c, plain);
  const std::string three = Compress(c, plain.substr(0, 100 << 10)) +
                            Compress(c, plain.substr(100 << 10, 100 << 10)) +
                            Compress(c, plain.substr(200 << 10));
  for (const std::string* data : {&one, &three}) {
    for (uint64_t skip :
         {0, 1, 4095, 65535, 65536, 65537, 80000, 100 << 10, 131071, 131072,
          131073, 150 << 10, 200000, 262144, (300 << 10) - 1, 300 << 10}) {
      for (uint64_t len : {uint64_t{0}, uint64_t{1}, uint64_t{4096},
                           uint64_t{65536}, (300 << 10) - skip}) {
        if (skip + len > plain.size()) continue;
        SCOPED_TRACE(absl::StrCat(Name(c), data == &one ? " one" : " three",
                                  " skip ", skip, " len ", len));
        std::string out(len, '\0');
        absl::Status s = DecompressRange(c, *data, skip, absl::MakeSpan(out));
        ASSERT_TRUE(s.ok()) << s;
        EXPECT_TRUE(out == plain.substr(skip, len));
      }
    }
    // Asking for more than the stream holds.
    for (uint64_t skip :
         {uint64_t{0}, uint64_t{1000}, plain.size(), plain.size() + 100000}) {
      std::string out(plain.size() - std::min<uint64_t>(skip, plain.size()) + 1,
                      '\0');
      absl::Status s = DecompressRange(c, *data, skip, absl::MakeSpan(out));
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "skip " << skip;
    }
  }
}

TEST_P(RangeTest, StopsAtTheRequestedBytes) {
  // A member followed by garbage: the garbage is never reached.
  const Compression c = GetParam();
  std::string data = Compress(c, "0123456789") + "garbage that is not data";
  std::string out(4, '\0');
  ASSERT_TRUE(DecompressRange(c, data, 3, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, "3456");
  out.assign(11, '\0');
  EXPECT_EQ(DecompressRange(c, data, 0, absl::MakeSpan(out)).code(),
            absl::StatusCode::kDataLoss);
}

TEST_P(RangeTest, EmptyInputs) {
  const Compression c = GetParam();
  EXPECT_TRUE(DecompressRange(c, "", 0, absl::Span<char>()).ok());
  char one;
  EXPECT_EQ(DecompressRange(c, "", 0, absl::MakeSpan(&one, 1)).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecompressRange(c, "", 1, absl::Span<char>()).code(),
            absl::StatusCode::kDataLoss);
  // An empty member / frame holds no bytes.
  EXPECT_EQ(
      DecompressRange(c, Compress(c, ""), 0, absl::MakeSpan(&one, 1)).code(),
      absl::StatusCode::kDataLoss);
}

TEST_P(RangeTest, TruncatedDataIsDataLoss) {
  const Compression c = GetParam();
  for (const std::string& plain : {RandomBytes(3000, 11), Text(20000)}) {
    const std::string data = Compress(c, plain);
    for (size_t len = 0; len < data.size(); ++len) {
      absl::string_view cut = absl::string_view(data).substr(0, len);
      std::string out(plain.size(), '\0');
      absl::Status s = DecompressRange(c, cut, 0, absl::MakeSpan(out));
      // The last bytes of a member (end of block, checksum) may be cut
      // without losing data the caller asked for; anything else is an error.
      if (s.ok()) {
        EXPECT_GT(len, data.size() / 2) << "cut at " << len;
        EXPECT_TRUE(out == plain) << "cut at " << len;
      } else {
        EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "cut at " << len;
      }
      // Streaming the cut never reports the end of the member.
      StreamResult r = Stream(c, cut, cut.size(), 1 << 16);
      EXPECT_TRUE(r.ends.empty()) << "cut at " << len;
      if (!r.status.ok()) {
        EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss)
            << "cut at " << len << ": " << r.status;
      }
    }
  }
}

TEST_P(RangeTest, CorruptDataNeverCrashes) {
  const Compression c = GetParam();
  const std::string plain = Text(20000);
  const std::string data = Compress(c, plain);
  for (size_t i = 0; i < data.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xff}) {
      std::string bad = data;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      std::string out(plain.size(), '\0');
      absl::Status s = DecompressRange(c, bad, 0, absl::MakeSpan(out));
      if (!s.ok()) {
        EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss)
            << "byte " << i << ": " << s;
      }
      StreamResult r = Stream(c, bad, bad.size(), 1 << 16);
      if (!r.status.ok()) {
        EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss)
            << "byte " << i << ": " << r.status;
      } else if (c == Compression::kGzip && r.ends.size() == 1 &&
                 r.ends[0] == bad.size()) {
        // A whole gzip member that decoded cleanly passed its CRC and ISIZE
        // checks: the flip hit bytes that carry no data (MTIME, XFL, OS,
        // FTEXT, padding bits), so the output is intact.
        EXPECT_TRUE(r.out == plain) << "byte " << i;
      }
    }
  }
}

TEST_P(RangeTest, GarbageIsDataLoss) {
  const Compression c = GetParam();
  for (uint64_t seed = 1; seed < 50; ++seed) {
    std::string garbage = RandomBytes(1000, seed);
    std::string out(100, '\0');
    EXPECT_EQ(DecompressRange(c, garbage, 0, absl::MakeSpan(out)).code(),
              absl::StatusCode::kDataLoss);
  }
  std::string out(100, '\0');
  absl::Status s = DecompressRange(c, "definitely not compressed data", 0,
                                   absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  // The library and its code are named.
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(c == Compression::kZstd ? "zstd error" : "ISA-L"));
}

// A "bomb": a small member that inflates to 100 MiB. Asked for one 4 KiB
// chunk, the decompressor produces exactly that and stops.
TEST_P(RangeTest, BombIsBoundedByTheRequest) {
  const Compression c = GetParam();
  const std::string zeros(100 << 20, '\0');
  const std::string bomb =
      c == Compression::kGzip ? GzipMember(zeros, 1) : ZstdFrame(zeros, 1);
  ASSERT_LT(bomb.size(), 1u << 20);
  std::string out(4096, 'x');
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(DecompressRange(c, bomb, 0, absl::MakeSpan(out)).ok());
  }
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(out, std::string(4096, '\0'));
  // 100 bounded reads take microseconds each; 100 full inflates of 100 MiB
  // would take seconds.
  EXPECT_LT(elapsed, std::chrono::milliseconds(500));
  // The stream interface stops when the output is full, having consumed a
  // small part of the input.
  std::unique_ptr<StreamDecompressor> d = StreamDecompressor::New(c);
  absl::StatusOr<StreamDecompressor::Result> r =
      d->Decompress(bomb, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->produced, 4096u);
  EXPECT_LT(r->consumed, bomb.size());
  EXPECT_FALSE(r->frame_end);
}

INSTANTIATE_TEST_SUITE_P(
    Both, RangeTest, ::testing::Values(Compression::kGzip, Compression::kZstd),
    [](const auto& info) { return std::string(Name(info.param)); });

// A hand-made zstd frame whose header declares a window of 2^window_log
// bytes, holding one raw byte.
std::string FrameWithWindowLog(int window_log) {
  std::string f("\x28\xb5\x2f\xfd", 4);  // magic
  f.push_back('\x00');  // descriptor: no content size, not single-segment
  f.push_back(
      static_cast<char>((window_log - 10) << 3));  // exponent, mantissa 0
  f += std::string("\x09\x00\x00", 3);             // last block, raw, size 1
  f.push_back('!');
  return f;
}

TEST(ZstdTest, HugeDeclaredWindowIsRefused) {
  for (int log : {28, 31, 41}) {
    SCOPED_TRACE(log);
    std::string frame = FrameWithWindowLog(log);
    char out;
    absl::Status s =
        DecompressRange(Compression::kZstd, frame, 0, absl::MakeSpan(&out, 1));
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(s.message()), HasSubstr("zstd"));
    StreamResult r = Stream(Compression::kZstd, frame, frame.size(), 16);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss);
  }
  // The same frame with a modest window is fine.
  std::string frame = FrameWithWindowLog(20);
  char out = 0;
  absl::Status s =
      DecompressRange(Compression::kZstd, frame, 0, absl::MakeSpan(&out, 1));
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(out, '!');
}

}  // namespace
}  // namespace lazypull
