// Golden-layer tests of `lazypull extract`: every layer that must read
// (shared/testdata/estargz, described in its README.md) is extracted into a
// fresh directory, which is then walked with lstat/readlink/llistxattr and
// compared with expected.json's entries, in the overlay form `extract`
// promises:
// - `.../.wh.X` is not present as such; `.../X` is a character device 0:0
//   instead (unless the layer also has a real X);
// - `.../.wh..wh..opq` is not present; its directory carries the xattr
//   trusted.overlay.opaque = "y" (and no other directory gains it).
// Every extracted path must be an expected entry and vice versa.
//
// Needs root (devices, owners, trusted.* and security.* xattrs), hence the
// `no-sandbox` tag; skips loudly otherwise.
#include <dirent.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

class ExtractGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_TESTDATA();
    if (geteuid() != 0) {
      GTEST_SKIP() << "SKIPPED: extract_golden_test must run as root (it "
                      "creates devices, applies owners and sets trusted.* "
                      "xattrs)";
    }
    layer_ = LoadExpectedLayer(GetParam());
    ASSERT_TRUE(layer_.has_value());
    if (layer_->failure) {
      // Only a layer whose trusted digest lies (actual_toc_digest) extracts:
      // its blob is valid. golden_test.cc checks the refusals.
      if (!layer_->actual_toc_digest) {
        GTEST_SKIP() << "must_fail case: refusals are tested by golden_test";
      }
    }
  }

  // Extracts the layer into a fresh directory and compares the tree with
  // the expected entries.
  void ExtractAndCompare(const std::vector<std::string>& extra_args) {
    Extraction x = ExtractLayer(layer_->blob, extra_args);
    ASSERT_TRUE(x.ok()) << "extract failed: " << x.result.err;

    // Nothing beside the target directory.
    DIR* d = opendir(x.sandbox.c_str());
    ASSERT_NE(d, nullptr);
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      EXPECT_TRUE(name == "." || name == ".." || name == "root")
          << "extract wrote outside its directory: " << x.sandbox << "/"
          << name;
    }
    closedir(d);

    CompareTreeWithExpected(x.root, *layer_);
  }

  std::optional<ExpectedLayer> layer_;
};

TEST_P(ExtractGoldenTest, MatchesExpected) {
  ExtractAndCompare({"--toc-digest", layer_->ValidTocDigest()});
}

TEST_P(ExtractGoldenTest, MatchesExpectedSingleThreadedUnchecked) {
  ExtractAndCompare({"--threads", "1"});
}

INSTANTIATE_TEST_SUITE_P(Estargz, ExtractGoldenTest,
                         ::testing::ValuesIn(EstargzCases()), CaseParamName);
// Without shared/testdata there are no cases; ExtractGoldenTestdata skips.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ExtractGoldenTest);

TEST(ExtractGoldenTestdata, Present) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  ASSERT_FALSE(EstargzCases().empty()) << "no cases under estargz/";
}

}  // namespace
}  // namespace lazypull::testing
