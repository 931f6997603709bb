// Locating ../shared/testdata from a Bazel test, and running the lazypull
// binary from one.
//
// The shared test data lives beside the checkout (../shared/testdata), read
// only. Tests find it through $LAZYPULL_TESTDATA (set by the test command),
// or else by resolving this package's runfiles back to the source tree.
// When it is absent (a user's fresh clone), tests call SkipWithoutTestdata(),
// which skips loudly.
//
// Thread-safety: pure helpers for single-threaded test set-up.
#ifndef LAZYPULL_TESTS_TESTDATA_H_
#define LAZYPULL_TESTS_TESTDATA_H_

#include <optional>
#include <string>
#include <vector>

namespace lazypull::testing {

// Absolute path of shared/testdata, if it exists.
std::optional<std::string> TestdataDir();

// Case directories under shared/testdata/estargz (sorted), or empty.
std::vector<std::string> EstargzCases();

// Path of the lazypull binary in this test's runfiles.
std::string LazypullBinary();

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `argv` (argv[0] is the program path) and captures its output.
RunResult Run(const std::vector<std::string>& argv);

// A fresh directory under $TEST_TMPDIR.
std::string MakeTempDir(const std::string& prefix);

// Reads a whole file; aborts the test on failure.
std::string ReadFile(const std::string& path);

}  // namespace lazypull::testing

// Skips the current gtest loudly when shared/testdata is absent.
#define LAZYPULL_SKIP_WITHOUT_TESTDATA()                                   \
  do {                                                                     \
    if (!::lazypull::testing::TestdataDir()) {                             \
      GTEST_SKIP() << "SKIPPED: ../shared/testdata is not present beside " \
                      "this checkout (set LAZYPULL_TESTDATA to run the "   \
                      "golden-layer tests)";                               \
    }                                                                      \
  } while (0)

#endif  // LAZYPULL_TESTS_TESTDATA_H_
