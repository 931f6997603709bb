// Golden-layer tests of `lazypull inspect`, `verify` and the failing paths of
// `extract`, against the layers and expected.json files that the Go
// reference produced (shared/testdata/estargz, described in its README.md).
//
// Every expectation comes from expected.json:
// - valid cases (must_fail null): `inspect --json` agrees with expected.json
//   on the layer's format, TOC digest, landmarks, counts, footer and on every
//   field of every entry; `verify` accepts the expected TOC digest and
//   DiffID and rejects a wrong DiffID or TOC digest.
// - failure.stage "open": inspect, verify and extract refuse the layer and
//   extract writes nothing; when expected.json carries actual_toc_digest
//   (the blob is valid, only the trusted digest is wrong) the layer is
//   refused exactly when that wrong digest is given.
// - failure.stage "read": the TOC is intact, so inspect lists every entry,
//   but verify and extract fail naming the file and the chunk's offset.
//
// Successful extraction (which needs root) is tested by
// extract_golden_test.cc.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "simdjson.h"
#include "tests/testdata.h"

namespace lazypull::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
namespace dom = simdjson::dom;

// The entry fields expected.json defines (README.md, "Each entry").
const std::vector<std::string> kEntryFields = {
    "path",      "type",  "mode",   "uid",      "gid",    "uname",
    "gname",     "size",  "sha256", "link",     "xattrs", "dev_major",
    "dev_minor", "nlink", "mtime",  "implicit", "chunks"};

// How a case must behave, from expected.json's must_fail / failure.
enum class Kind {
  kValid,        // must_fail null
  kOpenFail,     // failure.stage "open": no reader may open the blob
  kTocMismatch,  // stage "open" with actual_toc_digest: only the digest lies
  kReadFail,     // failure.stage "read": one chunk is corrupt
};

std::string Json(dom::element e) { return simdjson::minify(e); }

bool Has(dom::object o, std::string_view key) {
  return o.at_key(key).error() == simdjson::SUCCESS;
}

// Compares two JSON values, recording differences as "<where>: got X, want
// Y". Objects must have the same keys, arrays the same length.
void CompareJson(const std::string& where, dom::element got, dom::element want,
                 std::vector<std::string>* diffs) {
  auto mismatch = [&] {
    diffs->push_back(where + ": got " + Json(got) + ", want " + Json(want));
  };
  if (want.is_object()) {
    if (!got.is_object()) return mismatch();
    dom::object g = got.get_object().value(), w = want.get_object().value();
    for (auto [key, value] : w) {
      std::string sub = where + "." + std::string(key);
      if (!Has(g, key)) {
        diffs->push_back(sub + ": missing, want " + Json(value));
      } else {
        CompareJson(sub, g.at_key(key).value(), value, diffs);
      }
    }
    for (auto [key, value] : g) {
      if (!Has(w, key)) {
        diffs->push_back(where + "." + std::string(key) + ": unexpected " +
                         Json(value));
      }
    }
    return;
  }
  if (want.is_array()) {
    if (!got.is_array()) return mismatch();
    dom::array g = got.get_array().value(), w = want.get_array().value();
    if (g.size() != w.size()) {
      diffs->push_back(where + ": got " + std::to_string(g.size()) +
                       " elements, want " + std::to_string(w.size()) +
                       " (got " + Json(got) + ", want " + Json(want) + ")");
      return;
    }
    for (size_t i = 0; i < w.size(); ++i) {
      CompareJson(where + "[" + std::to_string(i) + "]", g.at(i).value(),
                  w.at(i).value(), diffs);
    }
    return;
  }
  if (want.is_null() || want.is_bool() || want.is_string()) {
    if (Json(got) != Json(want)) mismatch();
    return;
  }
  // Numbers: compare as integers when both are (uid 4000000000 needs 64
  // bits), as text otherwise.
  if (want.is_number() && got.is_number()) {
    auto wi = want.get_uint64(), gi = got.get_uint64();
    if (wi.error() == simdjson::SUCCESS && gi.error() == simdjson::SUCCESS) {
      if (wi.value() != gi.value()) mismatch();
      return;
    }
  }
  if (Json(got) != Json(want)) mismatch();
}

// Records a difference between a top-level key of `got` and `want`.
void CompareKey(const std::string& label, dom::object got, dom::element want,
                std::string_view got_key, std::vector<std::string>* diffs) {
  if (!Has(got, got_key)) {
    diffs->push_back(label + ": missing from inspect --json");
    return;
  }
  CompareJson(label, got.at_key(got_key).value(), want, diffs);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_TESTDATA();
    dir_ = *TestdataDir() + "/estargz/" + GetParam();
    json_ = simdjson::padded_string::load(dir_ + "/expected.json").value();
    expected_ = parser_.parse(json_).get_object().value();
    layer_ = dir_ + "/" + std::string(Str("blob_file"));
    toc_digest_ = std::string(Str("toc_digest"));
    diff_id_ = std::string(Str("diff_id"));
    dom::element failure = expected_["failure"].value();
    ASSERT_EQ(expected_["must_fail"].is_null(), failure.is_null())
        << "expected.json: must_fail and failure disagree";
    if (failure.is_null()) {
      kind_ = Kind::kValid;
    } else {
      std::string stage(failure["stage"].get_string().value());
      if (stage == "read") {
        kind_ = Kind::kReadFail;
        failure_path_ = std::string(failure["path"].get_string().value());
        failure_offset_ = failure["chunk_offset"].get_uint64().value();
      } else if (stage == "open") {
        kind_ = Has(expected_, "actual_toc_digest") ? Kind::kTocMismatch
                                                    : Kind::kOpenFail;
      } else {
        FAIL() << "expected.json: unknown failure.stage \"" << stage << "\"";
      }
    }
  }

  std::string_view Str(std::string_view key) {
    return expected_[key].get_string().value();
  }

  RunResult Lazypull(std::vector<std::string> args) {
    args.insert(args.begin(), LazypullBinary());
    return ::lazypull::testing::Run(args);
  }

  // Runs `inspect --json` and compares it with expected.json, field by
  // field. `toc_digest` is what the TOC really hashes to.
  void CheckInspectJson(const std::string& toc_digest) {
    RunResult r = Lazypull({"inspect", layer_, "--json"});
    ASSERT_EQ(r.exit_code, 0) << "inspect --json failed: " << r.err;
    simdjson::padded_string out(r.out);
    dom::parser parser;
    auto parsed = parser.parse(out).get_object();
    ASSERT_EQ(parsed.error(), simdjson::SUCCESS)
        << "inspect --json printed invalid JSON: " << r.out;
    dom::object got = parsed.value();

    std::vector<std::string> diffs;
    for (const char* key :
         {"format", "prefetch_landmark_offset", "no_prefetch_landmark",
          "toc_entry_count", "blob_size"}) {
      CompareKey(key, got, expected_[key].value(), key, &diffs);
    }
    if (!Has(got, "toc_digest")) {
      diffs.push_back("toc_digest: missing from inspect --json");
    } else if (Json(got["toc_digest"].value()) != "\"" + toc_digest + "\"") {
      diffs.push_back("toc_digest: got " + Json(got["toc_digest"].value()) +
                      ", want \"" + toc_digest + "\"");
    }
    dom::element footer = expected_["footer"].value();
    ASSERT_FALSE(footer.is_null()) << "a readable layer has a footer";
    CompareKey("footer.size", got, footer["size"].value(), "footer_size",
               &diffs);
    for (const char* key :
         {"toc_offset", "toc_compressed_size", "toc_uncompressed_size"}) {
      CompareKey(std::string("footer.") + key, got, footer[key].value(), key,
                 &diffs);
    }

    dom::array want = expected_["entries"].get_array().value();
    ASSERT_TRUE(Has(got, "entries")) << "inspect --json has no entries";
    auto got_entries = got["entries"].get_array();
    ASSERT_EQ(got_entries.error(), simdjson::SUCCESS)
        << "inspect --json: entries is not an array";
    dom::array have = got_entries.value();

    // chunk_count counts the chunks of all regular files.
    uint64_t want_chunks = 0;
    for (dom::element e : want) {
      dom::element c = e["chunks"].value();
      if (!c.is_null()) want_chunks += c.get_array().value().size();
    }
    if (!Has(got, "chunk_count")) {
      diffs.push_back("chunk_count: missing from inspect --json");
    } else if (got["chunk_count"].get_uint64().value() != want_chunks) {
      diffs.push_back("chunk_count: got " + Json(got["chunk_count"].value()) +
                      ", want " + std::to_string(want_chunks) +
                      " (the chunks listed in entries)");
    }

    // Same entries in the same (path) order...
    if (have.size() != want.size()) {
      diffs.push_back("entries: got " + std::to_string(have.size()) +
                      " entries, want " + std::to_string(want.size()));
    }
    std::vector<std::string> have_paths, want_paths;
    std::map<std::string, dom::element> by_path;
    for (dom::element e : have) {
      auto p = e["path"].get_string();
      if (p.error() != simdjson::SUCCESS) {
        diffs.push_back("entries: an entry without a string path: " + Json(e));
        continue;
      }
      have_paths.emplace_back(p.value());
      by_path[have_paths.back()] = e;
    }
    for (dom::element e : want) {
      want_paths.emplace_back(e["path"].get_string().value());
    }
    std::set<std::string> have_set(have_paths.begin(), have_paths.end());
    std::set<std::string> want_set(want_paths.begin(), want_paths.end());
    if (have_set.size() != have_paths.size()) {
      diffs.push_back("entries: inspect --json lists a path twice");
    }
    for (const std::string& p : want_paths) {
      if (!have_set.count(p)) diffs.push_back("entry \"" + p + "\": missing");
    }
    for (const std::string& p : have_paths) {
      if (!want_set.count(p)) {
        diffs.push_back("entry \"" + p + "\": not in expected.json");
      }
    }
    if (have_set == want_set && have_paths != want_paths) {
      diffs.push_back("entries: not in expected.json's (byte-sorted) order");
    }
    // ... and equal on every field.
    for (dom::element e : want) {
      dom::object w = e.get_object().value();
      std::string path(w["path"].get_string().value());
      for (const std::string& f : kEntryFields) {
        if (!Has(w, f)) {
          ADD_FAILURE() << "expected.json entry \"" << path << "\" lacks field "
                        << f;
        }
      }
      for (auto [key, value] : w) {
        (void)value;
        if (std::find(kEntryFields.begin(), kEntryFields.end(), key) ==
            kEntryFields.end()) {
          ADD_FAILURE() << "expected.json entry \"" << path
                        << "\" has a field this test does not know: " << key;
        }
      }
      auto it = by_path.find(path);
      if (it == by_path.end()) continue;
      CompareJson("entry \"" + path + "\"", it->second, e, &diffs);
    }

    constexpr size_t kMaxReported = 60;
    for (size_t i = 0; i < diffs.size() && i < kMaxReported; ++i) {
      ADD_FAILURE() << "case " << GetParam() << ": " << diffs[i];
    }
    if (diffs.size() > kMaxReported) {
      ADD_FAILURE() << "case " << GetParam() << ": ... and "
                    << diffs.size() - kMaxReported << " more differences";
    }
  }

  // Runs `extract` expecting a refusal before anything is written: the
  // target directory, three levels below a fresh sandbox, must stay absent
  // (or empty) and nothing may appear anywhere else in the sandbox.
  RunResult ExtractRefused(const std::vector<std::string>& extra_args) {
    std::string sandbox = MakeTempDir("refused");
    std::string parent = sandbox + "/a/b/c";
    for (const std::string& d :
         {sandbox + "/a", sandbox + "/a/b", sandbox + "/a/b/c"}) {
      EXPECT_EQ(mkdir(d.c_str(), 0755), 0) << d;
    }
    std::string out = parent + "/out";
    std::vector<std::string> args = {"extract", layer_, out, "--no-same-owner"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    RunResult r = Lazypull(args);
    EXPECT_EQ(r.exit_code, 1)
        << "extract must refuse the layer; stdout: " << r.out
        << "\nstderr: " << r.err;
    EXPECT_THAT(r.err, Not(IsEmpty())) << "extract must say why it failed";
    std::vector<std::string> found;
    ListTree(sandbox, "", &found);
    std::set<std::string> allowed = {"a", "a/b", "a/b/c", "a/b/c/out"};
    for (const std::string& p : found) {
      EXPECT_TRUE(allowed.count(p))
          << "extract of a refused layer wrote " << sandbox << "/" << p;
    }
    struct stat st;
    if (lstat(out.c_str(), &st) == 0) {
      EXPECT_TRUE(S_ISDIR(st.st_mode)) << out << " is not a directory";
    }
    return r;
  }

  static void ListTree(const std::string& root, const std::string& rel,
                       std::vector<std::string>* out) {
    std::string path = rel.empty() ? root : root + "/" + rel;
    DIR* d = opendir(path.c_str());
    if (d == nullptr) return;
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string sub = rel.empty() ? name : rel + "/" + name;
      out->push_back(sub);
      struct stat st;
      if (lstat((root + "/" + sub).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        ListTree(root, sub, out);
      }
    }
    closedir(d);
  }

  // expected.json's digest with its last hex digit changed.
  static std::string WrongDigest(std::string d) {
    d.back() = d.back() == '0' ? '1' : '0';
    return d;
  }

  std::string dir_, layer_, toc_digest_, diff_id_;
  simdjson::padded_string json_;
  dom::parser parser_;
  dom::object expected_;
  Kind kind_ = Kind::kValid;
  std::string failure_path_;
  uint64_t failure_offset_ = 0;
};

TEST_P(GoldenTest, Inspect) {
  switch (kind_) {
    case Kind::kValid:
    case Kind::kReadFail:  // the TOC is intact: listing succeeds
      CheckInspectJson(toc_digest_);
      break;
    case Kind::kTocMismatch: {
      std::string actual(Str("actual_toc_digest"));
      ASSERT_NE(actual, toc_digest_);
      // Unchecked, the blob reads fine and reports its real digest...
      CheckInspectJson(actual);
      RunResult ok = Lazypull({"inspect", layer_, "--toc-digest", actual});
      EXPECT_EQ(ok.exit_code, 0) << ok.err;
      // ... but the (wrong) trusted digest must make it refuse the layer.
      RunResult r =
          Lazypull({"inspect", layer_, "--json", "--toc-digest", toc_digest_});
      EXPECT_EQ(r.exit_code, 1) << r.out;
      EXPECT_THAT(r.err, HasSubstr("TOC digest mismatch"));
      break;
    }
    case Kind::kOpenFail:
      for (bool json : {false, true}) {
        SCOPED_TRACE(json ? "inspect --json" : "inspect");
        std::vector<std::string> args = {"inspect", layer_};
        if (json) args.push_back("--json");
        RunResult r = Lazypull(args);
        EXPECT_EQ(r.exit_code, 1) << r.out;
        EXPECT_THAT(r.err, Not(IsEmpty()));
        EXPECT_THAT(r.out, IsEmpty());
      }
      break;
  }
}

TEST_P(GoldenTest, Verify) {
  switch (kind_) {
    case Kind::kValid: {
      RunResult r = Lazypull({"verify", layer_, "--toc-digest", toc_digest_,
                              "--diff-id", diff_id_});
      EXPECT_EQ(r.exit_code, 0) << "stdout: " << r.out << "\nstderr: " << r.err;
      EXPECT_THAT(r.out, HasSubstr(diff_id_));
      EXPECT_THAT(r.err, IsEmpty());

      RunResult bad_diff =
          Lazypull({"verify", layer_, "--toc-digest", toc_digest_, "--diff-id",
                    WrongDigest(diff_id_)});
      EXPECT_EQ(bad_diff.exit_code, 1) << "a wrong --diff-id was accepted";
      EXPECT_THAT(bad_diff.err, Not(IsEmpty()));

      RunResult bad_toc =
          Lazypull({"verify", layer_, "--toc-digest", WrongDigest(toc_digest_),
                    "--diff-id", diff_id_});
      EXPECT_EQ(bad_toc.exit_code, 1) << "a wrong --toc-digest was accepted";
      EXPECT_THAT(bad_toc.err, HasSubstr("TOC digest mismatch"));
      break;
    }
    case Kind::kTocMismatch: {
      RunResult r = Lazypull({"verify", layer_, "--toc-digest", toc_digest_});
      EXPECT_EQ(r.exit_code, 1) << r.out;
      EXPECT_THAT(r.err, HasSubstr("TOC digest mismatch"));
      // Without the lying digest the blob (a copy of a valid one) verifies.
      RunResult ok = Lazypull({"verify", layer_, "--diff-id", diff_id_});
      EXPECT_EQ(ok.exit_code, 0) << ok.err;
      RunResult ok2 = Lazypull({"verify", layer_, "--toc-digest",
                                std::string(Str("actual_toc_digest")),
                                "--diff-id", diff_id_});
      EXPECT_EQ(ok2.exit_code, 0) << ok2.err;
      break;
    }
    case Kind::kReadFail: {
      // The TOC digest is right: the failure must be the corrupt chunk.
      RunResult r = Lazypull({"verify", layer_, "--toc-digest", toc_digest_});
      EXPECT_EQ(r.exit_code, 1) << r.out;
      EXPECT_THAT(r.err, HasSubstr(failure_path_));
      EXPECT_THAT(r.err, HasSubstr(std::to_string(failure_offset_)));
      EXPECT_THAT(r.out, Not(HasSubstr("OK")));
      break;
    }
    case Kind::kOpenFail: {
      RunResult r = Lazypull({"verify", layer_});
      EXPECT_EQ(r.exit_code, 1) << r.out;
      EXPECT_THAT(r.err, Not(IsEmpty()));
      break;
    }
  }
}

TEST_P(GoldenTest, ExtractFailures) {
  switch (kind_) {
    case Kind::kValid:
      return;  // extract_golden_test.cc checks successful extraction
    case Kind::kOpenFail:
      ExtractRefused({});
      break;
    case Kind::kTocMismatch: {
      RunResult r = ExtractRefused({"--toc-digest", toc_digest_});
      EXPECT_THAT(r.err, HasSubstr("TOC digest mismatch"));
      break;
    }
    case Kind::kReadFail: {
      std::string out = MakeTempDir("corrupt") + "/out";
      RunResult r = Lazypull({"extract", layer_, out, "--toc-digest",
                              toc_digest_, "--no-same-owner"});
      EXPECT_EQ(r.exit_code, 1) << r.out;
      EXPECT_THAT(r.err, HasSubstr(failure_path_));
      EXPECT_THAT(r.err, HasSubstr(std::to_string(failure_offset_)));
      break;
    }
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

INSTANTIATE_TEST_SUITE_P(Estargz, GoldenTest,
                         ::testing::ValuesIn(EstargzCases()), CaseName);
// Without shared/testdata there are no cases; GoldenTestdata.Present skips.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenTest);

TEST(GoldenTestdata, Present) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  std::vector<std::string> cases = EstargzCases();
  ASSERT_THAT(cases, Not(IsEmpty())) << "no cases under estargz/";
  for (const std::string& c : cases) {
    std::string dir = *TestdataDir() + "/estargz/" + c;
    struct stat st;
    EXPECT_EQ(stat((dir + "/expected.json").c_str(), &st), 0)
        << c << " has no expected.json";
  }
}

}  // namespace
}  // namespace lazypull::testing
