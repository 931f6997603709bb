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
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "simdjson.h"
#include "tests/testdata.h"

namespace lazypull::testing {
namespace {

namespace dom = simdjson::dom;

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr char kOpaqueXattr[] = "trusted.overlay.opaque";

// One entry of expected.json, after the overlay transform.
struct Want {
  std::string path;
  std::string type;  // dir, reg, symlink, hardlink, char, block, fifo
  uint64_t mode = 0, uid = 0, gid = 0, size = 0;
  std::optional<std::string> sha256, link;
  std::map<std::string, std::string> xattrs;  // decoded values
  uint64_t dev_major = 0, dev_minor = 0, nlink = 0;
  std::optional<int64_t> mtime;
  bool implicit = false;
  // A char 0:0 made from a `.wh.X` entry (`source` is that entry's path).
  bool whiteout = false;
  std::string source;
};

// What the extracted tree holds at one path.
struct Have {
  struct stat st;
  std::string link;                           // symlinks
  std::map<std::string, std::string> xattrs;  // all of them
};

std::optional<std::string> OptString(dom::element e) {
  if (e.is_null()) return std::nullopt;
  return std::string(e.get_string().value());
}

std::string Dirname(const std::string& p) {
  size_t s = p.rfind('/');
  return s == std::string::npos ? "" : p.substr(0, s);
}

std::string Basename(const std::string& p) {
  size_t s = p.rfind('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

std::string Join(const std::string& dir, std::string_view name) {
  return dir.empty() ? std::string(name) : dir + "/" + std::string(name);
}

std::string TypeOf(mode_t m) {
  if (S_ISDIR(m)) return "dir";
  if (S_ISREG(m)) return "reg";
  if (S_ISLNK(m)) return "symlink";
  if (S_ISCHR(m)) return "char";
  if (S_ISBLK(m)) return "block";
  if (S_ISFIFO(m)) return "fifo";
  if (S_ISSOCK(m)) return "socket";
  return "unknown";
}

std::string Sha256File(const std::string& path) {
  std::string data = ReadFile(path);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char kHex[] = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

std::string Printable(const std::string& v) {
  return "base64:" + absl::Base64Escape(absl::string_view(v.data(), v.size()));
}

// Reads every xattr of `path` (not following symlinks).
std::map<std::string, std::string> Xattrs(const std::string& path) {
  std::map<std::string, std::string> out;
  ssize_t n = llistxattr(path.c_str(), nullptr, 0);
  if (n <= 0) return out;
  std::string names(static_cast<size_t>(n), '\0');
  n = llistxattr(path.c_str(), names.data(), names.size());
  if (n < 0) {
    ADD_FAILURE() << "llistxattr " << path << ": " << strerror(errno);
    return out;
  }
  names.resize(static_cast<size_t>(n));
  for (size_t i = 0; i < names.size();) {
    std::string name = names.c_str() + i;
    i += name.size() + 1;
    ssize_t m = lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
    std::string value(m > 0 ? static_cast<size_t>(m) : 0, '\0');
    if (m > 0) m = lgetxattr(path.c_str(), name.c_str(), value.data(), m);
    if (m < 0) {
      ADD_FAILURE() << "lgetxattr " << path << " " << name << ": "
                    << strerror(errno);
      continue;
    }
    value.resize(static_cast<size_t>(m));
    out[name] = value;
  }
  return out;
}

// Walks the extracted tree below `root`; the root itself is path "".
void Walk(const std::string& root, const std::string& rel,
          std::map<std::string, Have>* out) {
  std::string path = rel.empty() ? root : root + "/" + rel;
  Have h;
  if (lstat(path.c_str(), &h.st) != 0) {
    ADD_FAILURE() << "lstat " << path << ": " << strerror(errno);
    return;
  }
  if (S_ISLNK(h.st.st_mode)) {
    std::string buf(PATH_MAX + 1, '\0');
    ssize_t n = readlink(path.c_str(), buf.data(), buf.size());
    if (n < 0) {
      ADD_FAILURE() << "readlink " << path << ": " << strerror(errno);
    } else {
      h.link = buf.substr(0, static_cast<size_t>(n));
    }
  }
  h.xattrs = Xattrs(path);
  // Labels a system may add on its own; never part of a layer here.
  h.xattrs.erase("security.selinux");
  const bool is_dir = S_ISDIR(h.st.st_mode);
  (*out)[rel] = std::move(h);
  if (!is_dir) return;
  DIR* d = opendir(path.c_str());
  if (d == nullptr) {
    ADD_FAILURE() << "opendir " << path << ": " << strerror(errno);
    return;
  }
  std::vector<std::string> names;
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  for (const std::string& name : names) Walk(root, Join(rel, name), out);
}

class ExtractGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_TESTDATA();
    if (geteuid() != 0) {
      GTEST_SKIP() << "SKIPPED: extract_golden_test must run as root (it "
                      "creates devices, applies owners and sets trusted.* "
                      "xattrs)";
    }
    std::string dir = *TestdataDir() + "/estargz/" + GetParam();
    json_ = simdjson::padded_string::load(dir + "/expected.json").value();
    expected_ = parser_.parse(json_).get_object().value();
    layer_ =
        dir + "/" + std::string(expected_["blob_file"].get_string().value());
    toc_digest_ = std::string(expected_["toc_digest"].get_string().value());
    dom::element failure = expected_["failure"].value();
    if (!failure.is_null()) {
      // Only a layer whose trusted digest lies (actual_toc_digest) extracts:
      // its blob is valid. golden_test.cc checks the refusals.
      auto actual = expected_["actual_toc_digest"].get_string();
      if (actual.error() != simdjson::SUCCESS) {
        GTEST_SKIP() << "must_fail case: refusals are tested by golden_test";
      }
      toc_digest_ = std::string(actual.value());
    }
    ParseEntries();
  }

  void ParseEntries() {
    std::vector<Want> raw;
    for (dom::element e : expected_["entries"].get_array()) {
      Want w;
      w.path = std::string(e["path"].get_string().value());
      w.type = std::string(e["type"].get_string().value());
      w.mode = e["mode"].get_uint64().value();
      w.uid = e["uid"].get_uint64().value();
      w.gid = e["gid"].get_uint64().value();
      w.size = e["size"].get_uint64().value();
      w.sha256 = OptString(e["sha256"].value());
      w.link = OptString(e["link"].value());
      for (auto [name, value] : e["xattrs"].get_object()) {
        std::string_view b64 = value.get_string().value();
        std::string decoded;
        ASSERT_TRUE(absl::Base64Unescape(
            absl::string_view(b64.data(), b64.size()), &decoded))
            << "expected.json: bad base64 in " << w.path;
        w.xattrs[std::string(name)] = decoded;
      }
      w.dev_major = e["dev_major"].get_uint64().value();
      w.dev_minor = e["dev_minor"].get_uint64().value();
      w.nlink = e["nlink"].get_uint64().value();
      dom::element mtime = e["mtime"].value();
      if (!mtime.is_null()) w.mtime = mtime.get_int64().value();
      w.implicit = e["implicit"].get_bool().value();
      raw.push_back(std::move(w));
    }
    for (const Want& w : raw) raw_[w.path] = w;

    // The overlay form.
    std::set<std::string> opaque;
    for (const Want& w : raw) {
      const std::string name = Basename(w.path);
      const std::string parent = Dirname(w.path);
      if (w.type != "dir" && name == kOpaqueMarker) {
        opaque.insert(parent);
        continue;
      }
      if (w.type != "dir" && name.rfind(kWhiteoutPrefix, 0) == 0) {
        std::string target = Join(parent, name.substr(kWhiteoutPrefix.size()));
        if (raw_.count(target)) continue;  // a real X wins
        Want c;
        c.path = target;
        c.type = "char";
        c.nlink = 1;
        c.whiteout = true;
        c.source = w.path;
        want_[target] = c;
        continue;
      }
      want_[w.path] = w;
    }
    for (const std::string& dir : opaque) {
      ASSERT_TRUE(want_.count(dir)) << "opaque marker in a missing dir " << dir;
      want_[dir].xattrs[kOpaqueXattr] = "y";
    }
  }

  // Extracts the layer into a fresh directory and compares the tree with
  // the expected entries.
  void ExtractAndCompare(const std::vector<std::string>& extra_args) {
    std::string sandbox = MakeTempDir("extract");
    std::string root = sandbox + "/root";
    std::vector<std::string> argv = {LazypullBinary(), "extract", layer_, root};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    RunResult r = ::lazypull::testing::Run(argv);
    ASSERT_EQ(r.exit_code, 0) << "extract failed: " << r.err;

    // Nothing beside the target directory.
    DIR* d = opendir(sandbox.c_str());
    ASSERT_NE(d, nullptr);
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      EXPECT_TRUE(name == "." || name == ".." || name == "root")
          << "extract wrote outside its directory: " << sandbox << "/" << name;
    }
    closedir(d);

    std::map<std::string, Have> have;
    Walk(root, "", &have);

    for (const auto& [path, h] : have) {
      if (!want_.count(path)) {
        ADD_FAILURE() << "case " << GetParam() << ": extracted \"" << path
                      << "\" (" << TypeOf(h.st.st_mode)
                      << ") is not an expected entry";
      }
    }
    for (const auto& [path, w] : want_) {
      auto it = have.find(path);
      if (it == have.end()) {
        ADD_FAILURE() << "case " << GetParam() << ": \"" << path << "\" ("
                      << w.type << ") was not extracted";
        continue;
      }
      Compare(root, w, it->second, have);
    }
  }

  void Compare(const std::string& root, const Want& w, const Have& h,
               const std::map<std::string, Have>& have) {
    const struct stat& st = h.st;
    auto fail = [&](const char* field) {
      return ::testing::Message() << "case " << GetParam() << ", path \""
                                  << w.path << "\", field " << field << ": ";
    };
    // A hardlink is its target's inode: same type, same inode number.
    std::string want_type = w.type;
    if (w.type == "hardlink") {
      ASSERT_TRUE(w.link.has_value());
      auto target = raw_.find(*w.link);
      ASSERT_NE(target, raw_.end()) << "hardlink to a missing entry";
      want_type = target->second.type;
      auto ht = have.find(*w.link);
      if (ht != have.end()) {
        EXPECT_EQ(st.st_ino, ht->second.st.st_ino)
            << fail("inode") << "not a hardlink of \"" << *w.link << "\"";
      }
    }
    const std::string got_type = TypeOf(st.st_mode);
    EXPECT_EQ(got_type, want_type) << fail("type");
    if (got_type != want_type) return;

    EXPECT_EQ(st.st_nlink, w.nlink) << fail("nlink");
    if (want_type == "char" || want_type == "block") {
      EXPECT_EQ(major(st.st_rdev), w.dev_major) << fail("dev_major");
      EXPECT_EQ(minor(st.st_rdev), w.dev_minor) << fail("dev_minor");
    }
    // Whiteouts have no attributes of their own.
    if (w.whiteout) {
      EXPECT_EQ(major(st.st_rdev), 0u) << fail("dev_major") << "whiteout";
      EXPECT_EQ(minor(st.st_rdev), 0u) << fail("dev_minor") << "whiteout";
      EXPECT_TRUE(h.xattrs.empty()) << fail("xattrs") << "whiteout";
      return;
    }

    // Linux symlinks have no mode of their own (always 0777).
    if (want_type != "symlink") {
      EXPECT_EQ(st.st_mode & 07777, w.mode)
          << fail("mode") << std::oct << "got 0" << (st.st_mode & 07777)
          << ", want 0" << w.mode;
    }
    EXPECT_EQ(static_cast<uint64_t>(st.st_uid), w.uid) << fail("uid");
    EXPECT_EQ(static_cast<uint64_t>(st.st_gid), w.gid) << fail("gid");
    if (w.mtime) {
      EXPECT_EQ(static_cast<int64_t>(st.st_mtim.tv_sec), *w.mtime)
          << fail("mtime");
    }
    if (want_type == "reg") {
      EXPECT_EQ(static_cast<uint64_t>(st.st_size), w.size) << fail("size");
      ASSERT_TRUE(w.sha256.has_value()) << fail("sha256") << "not expected";
      std::string path = w.path.empty() ? root : root + "/" + w.path;
      EXPECT_EQ(Sha256File(path), *w.sha256) << fail("sha256");
    }
    if (want_type == "symlink") {
      ASSERT_TRUE(w.link.has_value());
      EXPECT_EQ(h.link, *w.link) << fail("link");
    }
    for (const auto& [name, value] : w.xattrs) {
      auto it = h.xattrs.find(name);
      if (it == h.xattrs.end()) {
        ADD_FAILURE() << fail("xattrs") << name << " is missing, want "
                      << Printable(value);
      } else {
        EXPECT_EQ(Printable(it->second), Printable(value))
            << fail("xattrs") << name;
      }
    }
    for (const auto& [name, value] : h.xattrs) {
      if (!w.xattrs.count(name)) {
        ADD_FAILURE() << fail("xattrs") << "unexpected " << name << " = "
                      << Printable(value);
      }
    }
  }

  simdjson::padded_string json_;
  dom::parser parser_;
  dom::object expected_;
  std::string layer_, toc_digest_;
  std::map<std::string, Want> raw_;   // expected.json's entries by path
  std::map<std::string, Want> want_;  // the overlay form, by path
};

TEST_P(ExtractGoldenTest, MatchesExpected) {
  ExtractAndCompare({"--toc-digest", toc_digest_});
}

TEST_P(ExtractGoldenTest, MatchesExpectedSingleThreadedUnchecked) {
  ExtractAndCompare({"--threads", "1"});
}

std::string CaseName(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

INSTANTIATE_TEST_SUITE_P(Estargz, ExtractGoldenTest,
                         ::testing::ValuesIn(EstargzCases()), CaseName);
// Without shared/testdata there are no cases; ExtractGoldenTestdata skips.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ExtractGoldenTest);

TEST(ExtractGoldenTestdata, Present) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  ASSERT_FALSE(EstargzCases().empty()) << "no cases under estargz/";
}

}  // namespace
}  // namespace lazypull::testing
