// The state file's format: a constant size (so that a reader never sees it
// cut short by a size the kernel read a moment earlier), valid JSON, and an
// error message cut at a character boundary when it does not fit.
#include "fuse/layer_fs.h"

#include <string>

#include "gtest/gtest.h"
#include "simdjson.h"

namespace lazypull {
namespace {

using simdjson::dom::object;
using simdjson::dom::parser;

struct Parsed {
  std::string error;
  uint64_t size = 0, fetched = 0;
  double percent = -1;
};

Parsed Parse(const std::string& bytes) {
  Parsed p;
  parser json;
  object o;
  EXPECT_EQ(json.parse(bytes).get_object().get(o), simdjson::SUCCESS) << bytes;
  std::string_view e;
  EXPECT_EQ(o["error"].get_string().get(e), simdjson::SUCCESS);
  p.error = std::string(e);
  EXPECT_EQ(o["size"].get_uint64().get(p.size), simdjson::SUCCESS);
  EXPECT_EQ(o["fetchedSize"].get_uint64().get(p.fetched), simdjson::SUCCESS);
  EXPECT_EQ(o["fetchedPercent"].get_double().get(p.percent), simdjson::SUCCESS);
  return p;
}

TEST(StateFileTest, HasOneSizeWhateverItReports) {
  for (uint64_t fetched : {0ull, 9ull, 10ull, 123456789ull, 1ull << 40}) {
    const std::string s =
        LayerFs::FormatState("", "sha256:ab", 1ull << 40, fetched);
    ASSERT_EQ(s.size(), LayerFs::kStateFileSize) << fetched;
    EXPECT_EQ(s.back(), '\n');
    Parsed p = Parse(s);
    EXPECT_EQ(p.error, "");
    EXPECT_EQ(p.size, 1ull << 40);
    EXPECT_EQ(p.fetched, fetched);
    const double want =
        100.0 * static_cast<double>(fetched) / static_cast<double>(1ull << 40);
    EXPECT_NEAR(p.percent, want, want * 1e-5);
  }
  Parsed empty = Parse(LayerFs::FormatState("", "sha256:ab", 0, 0));
  EXPECT_EQ(empty.percent, 100.0);
}

TEST(StateFileTest, KeepsAShortErrorWhole) {
  const std::string error = "chunk 7 of /usr/bin/x: digest mismatch \"q\"";
  Parsed p = Parse(LayerFs::FormatState(error, "sha256:ab", 100, 50));
  EXPECT_EQ(p.error, error);
}

TEST(StateFileTest, CutsALongErrorAtACharacterBoundary) {
  // Multi-byte characters and bytes that need escaping, far over the size.
  std::string error;
  for (int i = 0; i < 3000; ++i) error += (i % 3 == 0) ? "\xc3\xa9" : "\x01";
  const std::string s = LayerFs::FormatState(error, "sha256:ab", 100, 50);
  ASSERT_EQ(s.size(), LayerFs::kStateFileSize);
  Parsed p = Parse(s);  // simdjson rejects broken UTF-8
  ASSERT_FALSE(p.error.empty());
  EXPECT_LT(p.error.size(), error.size());
  EXPECT_GT(s.find_last_not_of(" \n"), LayerFs::kStateFileSize - 64)
      << "cut far more than needed";
  EXPECT_EQ(error.compare(0, p.error.size(), p.error), 0)
      << "not a prefix of the message";
  EXPECT_EQ(p.fetched, 50u);
}

TEST(StateFileTest, KeepsAsMuchOfAHugeErrorAsFits) {
  // 100 KiB of plain text, then 100 KiB of bytes that JSON escapes 6-fold.
  for (const std::string& error :
       {std::string(100 << 10, 'x'), std::string(100 << 10, '\x01')}) {
    const std::string s = LayerFs::FormatState(error, "sha256:ab", 100, 50);
    ASSERT_EQ(s.size(), LayerFs::kStateFileSize);
    Parsed p = Parse(s);
    EXPECT_FALSE(p.error.empty()) << "the failure must still show";
    EXPECT_EQ(error.compare(0, p.error.size(), p.error), 0);
    EXPECT_GT(s.find_last_not_of(" \n"), LayerFs::kStateFileSize - 64)
        << "cut far more than needed";
  }
}

TEST(StateFileTest, BrokenUtf8InTheErrorDoesNotEmptyIt) {
  // Stray continuation bytes (a non-UTF-8 file name, say), far too many.
  std::string error(20000, '\x80');
  error.insert(0, "read of \"");
  const std::string s = LayerFs::FormatState(error, "sha256:ab", 100, 50);
  ASSERT_EQ(s.size(), LayerFs::kStateFileSize);
  EXPECT_NE(s.find("read of"), std::string::npos) << s.substr(0, 80);
}

}  // namespace
}  // namespace lazypull
