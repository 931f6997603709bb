#include "tests/tree_check.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "simdjson.h"

namespace lazypull::testing {
namespace {

namespace dom = simdjson::dom;

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";

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

std::string Under(const std::string& root, const std::string& rel) {
  return rel.empty() ? root : root + "/" + rel;
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

// sha256 of a file's content, or "error: ..." (reported) if unreadable.
std::string Sha256File(const std::string& path, const std::string& context) {
  FileContent c = ReadWholeFile(path);
  if (c.error != 0) {
    ADD_FAILURE() << context << "reading " << path << ": " << strerror(c.error);
    return std::string("error: ") + strerror(c.error);
  }
  return Sha256Of(c.data);
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

void Walk(const std::string& root, const std::string& rel, Tree* out) {
  std::string path = Under(root, rel);
  TreeNode h;
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
  for (const std::string& name : ListDir(path)) {
    Walk(root, Join(rel, name), out);
  }
}

// Compares xattrs; `want` is complete (anything else in `have` is a
// failure).
void CompareXattrs(const std::map<std::string, std::string>& want,
                   const std::map<std::string, std::string>& have,
                   const std::string& context) {
  for (const auto& [name, value] : want) {
    auto it = have.find(name);
    if (it == have.end()) {
      ADD_FAILURE() << context << name << " is missing, want "
                    << Printable(value);
    } else {
      EXPECT_EQ(Printable(it->second), Printable(value)) << context << name;
    }
  }
  for (const auto& [name, value] : have) {
    if (!want.count(name)) {
      ADD_FAILURE() << context << "unexpected " << name << " = "
                    << Printable(value);
    }
  }
}

// For every non-directory path, the paths sharing its inode (itself
// included).
std::map<std::string, std::set<std::string>> InodePeers(const Tree& t) {
  std::map<std::pair<dev_t, ino_t>, std::set<std::string>> by_inode;
  for (const auto& [path, n] : t) {
    if (!S_ISDIR(n.st.st_mode)) {
      by_inode[{n.st.st_dev, n.st.st_ino}].insert(path);
    }
  }
  std::map<std::string, std::set<std::string>> out;
  for (const auto& [key, paths] : by_inode) {
    for (const std::string& p : paths) out[p] = paths;
  }
  return out;
}

std::string JoinSet(const std::set<std::string>& s) {
  std::string out = "{";
  for (const std::string& p : s) {
    if (out.size() > 1) out += ", ";
    out += "\"" + p + "\"";
  }
  return out + "}";
}

// The mount points in /proc/self/mountinfo, in order, with their types.
std::vector<std::pair<std::string, std::string>> Mounts() {
  std::vector<std::pair<std::string, std::string>> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::vector<std::string> f;
    std::string field;
    while (ss >> field) f.push_back(field);
    if (f.size() < 5) continue;
    std::string type;
    for (size_t i = 5; i + 1 < f.size(); ++i) {
      if (f[i] == "-") {
        type = f[i + 1];
        break;
      }
    }
    // Unescape \ooo (space, tab, newline, backslash).
    std::string mp;
    const std::string& e = f[4];
    for (size_t i = 0; i < e.size(); ++i) {
      if (e[i] == '\\' && i + 3 < e.size() &&
          isdigit(static_cast<unsigned char>(e[i + 1]))) {
        mp += static_cast<char>(std::stoi(e.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        mp += e[i];
      }
    }
    out.emplace_back(mp, type);
  }
  return out;
}

}  // namespace

std::string Sha256Of(std::string_view data) {
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

FileContent ReadWholeFile(const std::string& path) {
  FileContent c;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    c.error = errno;
    return c;
  }
  char buf[1 << 16];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      c.error = errno;
      break;
    }
    if (n == 0) break;
    c.data.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return c;
}

std::string Printable(const std::string& v) {
  return "base64:" + absl::Base64Escape(absl::string_view(v.data(), v.size()));
}

std::set<std::string> ListDir(const std::string& path) {
  std::set<std::string> names;
  DIR* d = opendir(path.c_str());
  if (d == nullptr) {
    ADD_FAILURE() << "opendir " << path << ": " << strerror(errno);
    return names;
  }
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.insert(name);
  }
  closedir(d);
  return names;
}

std::set<std::string> ExpectedLayer::UnspecifiedMtimePaths() const {
  std::set<std::string> out;
  for (const auto& [path, e] : overlay) {
    if (e.implicit || e.whiteout) out.insert(path);
  }
  return out;
}

std::optional<ExpectedLayer> LoadExpectedLayer(const std::string& case_name) {
  std::optional<std::string> testdata = TestdataDir();
  if (!testdata) {
    ADD_FAILURE() << "no testdata directory";
    return std::nullopt;
  }
  const std::string dir = *testdata + "/estargz/" + case_name;
  ExpectedLayer layer;
  layer.case_name = case_name;
  simdjson::padded_string json =
      simdjson::padded_string::load(dir + "/expected.json").value();
  dom::parser parser;
  dom::object expected = parser.parse(json).get_object().value();
  layer.blob =
      dir + "/" + std::string(expected["blob_file"].get_string().value());
  layer.blob_size = expected["blob_size"].get_uint64().value();
  layer.toc_digest = std::string(expected["toc_digest"].get_string().value());
  if (auto actual = expected["actual_toc_digest"].get_string();
      actual.error() == simdjson::SUCCESS) {
    layer.actual_toc_digest = std::string(actual.value());
  }
  dom::element failure = expected["failure"].value();
  if (!failure.is_null()) {
    ExpectedFailure f;
    f.stage = std::string(failure["stage"].get_string().value());
    if (f.stage == "read") {
      f.path = std::string(failure["path"].get_string().value());
      f.chunk_offset = failure["chunk_offset"].get_uint64().value();
      f.chunk_size = failure["chunk_size"].get_uint64().value();
    }
    layer.failure = f;
  }

  for (dom::element e : expected["entries"].get_array()) {
    ExpectedEntry w;
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
      if (!absl::Base64Unescape(absl::string_view(b64.data(), b64.size()),
                                &decoded)) {
        ADD_FAILURE() << case_name << "/expected.json: bad base64 in "
                      << w.path;
        return std::nullopt;
      }
      w.xattrs[std::string(name)] = decoded;
    }
    w.dev_major = e["dev_major"].get_uint64().value();
    w.dev_minor = e["dev_minor"].get_uint64().value();
    w.nlink = e["nlink"].get_uint64().value();
    dom::element mtime = e["mtime"].value();
    if (!mtime.is_null()) w.mtime = mtime.get_int64().value();
    w.implicit = e["implicit"].get_bool().value();
    dom::element chunks = e["chunks"].value();
    if (!chunks.is_null()) {
      for (dom::element c : chunks.get_array()) {
        ExpectedChunk ch;
        ch.offset = c["offset"].get_uint64().value();
        ch.size = c["size"].get_uint64().value();
        ch.digest = std::string(c["digest"].get_string().value());
        w.chunks.push_back(std::move(ch));
      }
    }
    layer.raw[w.path] = std::move(w);
  }

  // The overlay form.
  std::set<std::string> opaque;
  for (const auto& [path, w] : layer.raw) {
    const std::string name = Basename(path);
    const std::string parent = Dirname(path);
    if (w.type != "dir" && name == kOpaqueMarker) {
      opaque.insert(parent);
      continue;
    }
    if (w.type != "dir" && name.rfind(kWhiteoutPrefix, 0) == 0) {
      std::string target = Join(parent, name.substr(kWhiteoutPrefix.size()));
      if (layer.raw.count(target)) continue;  // a real X wins
      ExpectedEntry c;
      c.path = target;
      c.type = "char";
      c.nlink = 1;
      c.whiteout = true;
      c.source = path;
      layer.overlay[target] = c;
      continue;
    }
    layer.overlay[path] = w;
  }
  for (const std::string& dir : opaque) {
    auto it = layer.overlay.find(dir);
    if (it == layer.overlay.end()) {
      ADD_FAILURE() << case_name << ": opaque marker in a missing dir " << dir;
      return std::nullopt;
    }
    it->second.opaque = true;
  }
  return layer;
}

Tree WalkTree(const std::string& root) {
  Tree out;
  Walk(root, "", &out);
  return out;
}

namespace {

void CompareEntry(const std::string& root, const ExpectedLayer& layer,
                  const ExpectedEntry& w, const TreeNode& h, const Tree& have,
                  const ExpectedCompareOptions& options) {
  const struct stat& st = h.st;
  auto fail = [&](const char* field) {
    return ::testing::Message() << "case " << layer.case_name << ", path \""
                                << w.path << "\", field " << field << ": ";
  };
  // A hardlink is its target's inode: same type, same inode number.
  std::string want_type = w.type;
  if (w.type == "hardlink") {
    if (!w.link.has_value()) {
      ADD_FAILURE() << fail("link") << "hardlink without a target";
      return;
    }
    auto target = layer.raw.find(*w.link);
    if (target == layer.raw.end()) {
      ADD_FAILURE() << fail("link") << "hardlink to a missing entry";
      return;
    }
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
    if (!w.sha256.has_value()) {
      ADD_FAILURE() << fail("sha256") << "not expected";
    } else if (!options.skip_content.count(w.path)) {
      std::string msg = (fail("sha256")).GetString();
      EXPECT_EQ(Sha256File(Under(root, w.path), msg), *w.sha256) << msg;
    }
  }
  if (want_type == "symlink") {
    EXPECT_EQ(h.link, w.link.value_or("")) << fail("link");
  }
  std::map<std::string, std::string> want_xattrs = w.xattrs;
  if (w.opaque) {
    for (const std::string& name : options.opaque_xattrs) {
      want_xattrs[name] = "y";
    }
  }
  CompareXattrs(want_xattrs, h.xattrs, fail("xattrs").GetString());
}

void CompareNodes(const std::string& a, const std::string& b,
                  const std::string& path, const TreeNode& na,
                  const TreeNode& nb, const TreeCompareOptions& options) {
  auto fail = [&](const char* field) {
    return ::testing::Message()
           << options.label << ": path \"" << path << "\", field " << field
           << " (" << a << " vs " << b << "): ";
  };
  const std::string type = TypeOf(na.st.st_mode);
  EXPECT_EQ(type, TypeOf(nb.st.st_mode)) << fail("type");
  if (type != TypeOf(nb.st.st_mode)) return;
  if (type != "symlink") {
    EXPECT_EQ(na.st.st_mode & 07777, nb.st.st_mode & 07777)
        << fail("mode") << std::oct << "0" << (na.st.st_mode & 07777) << " vs 0"
        << (nb.st.st_mode & 07777);
  }
  EXPECT_EQ(na.st.st_uid, nb.st.st_uid) << fail("uid");
  EXPECT_EQ(na.st.st_gid, nb.st.st_gid) << fail("gid");
  if (!(options.skip_dir_nlink && S_ISDIR(na.st.st_mode))) {
    EXPECT_EQ(na.st.st_nlink, nb.st.st_nlink) << fail("nlink");
  }
  if (type == "reg" || type == "symlink") {
    EXPECT_EQ(na.st.st_size, nb.st.st_size) << fail("size");
  }
  if (type == "reg" && !options.skip_content.count(path)) {
    std::string msg = fail("content").GetString();
    EXPECT_EQ(Sha256File(Under(a, path), msg), Sha256File(Under(b, path), msg))
        << msg;
  }
  if (type == "symlink") {
    EXPECT_EQ(na.link, nb.link) << fail("link");
  }
  if (type == "char" || type == "block") {
    EXPECT_EQ(major(na.st.st_rdev), major(nb.st.st_rdev)) << fail("rdev major");
    EXPECT_EQ(minor(na.st.st_rdev), minor(nb.st.st_rdev)) << fail("rdev minor");
  }
  if (!options.skip_mtime.count(path)) {
    EXPECT_EQ(na.st.st_mtim.tv_sec, nb.st.st_mtim.tv_sec) << fail("mtime");
    EXPECT_EQ(na.st.st_mtim.tv_nsec, nb.st.st_mtim.tv_nsec)
        << fail("mtime nsec");
  }
  std::set<std::string> names;
  for (const auto& [k, v] : na.xattrs) names.insert(k);
  for (const auto& [k, v] : nb.xattrs) names.insert(k);
  for (const std::string& k : names) {
    if (options.ignore_xattrs.count(k)) continue;
    auto va = na.xattrs.find(k), vb = nb.xattrs.find(k);
    EXPECT_EQ(va == na.xattrs.end() ? "<absent>" : Printable(va->second),
              vb == nb.xattrs.end() ? "<absent>" : Printable(vb->second))
        << fail("xattrs") << k;
  }
}

}  // namespace

void CompareTreeWithExpected(const std::string& root,
                             const ExpectedLayer& layer,
                             const ExpectedCompareOptions& options) {
  Tree have = WalkTree(root);
  for (const auto& [path, h] : have) {
    if (!layer.overlay.count(path)) {
      ADD_FAILURE() << "case " << layer.case_name << ": \"" << path << "\" ("
                    << TypeOf(h.st.st_mode) << ") under " << root
                    << " is not an expected entry";
    }
  }
  for (const auto& [path, w] : layer.overlay) {
    auto it = have.find(path);
    if (it == have.end()) {
      ADD_FAILURE() << "case " << layer.case_name << ": \"" << path << "\" ("
                    << w.type << ") is missing under " << root;
      continue;
    }
    CompareEntry(root, layer, w, it->second, have, options);
  }
}

void CompareTrees(const std::string& a, const std::string& b,
                  const TreeCompareOptions& options) {
  Tree ta = WalkTree(a), tb = WalkTree(b);
  for (const std::string& p : options.ignore_paths) {
    ta.erase(p);
    tb.erase(p);
  }
  for (const auto& [path, n] : ta) {
    if (!tb.count(path)) {
      ADD_FAILURE() << options.label << ": \"" << path << "\" ("
                    << TypeOf(n.st.st_mode) << ") is in " << a << " but not in "
                    << b;
    }
  }
  for (const auto& [path, n] : tb) {
    if (!ta.count(path)) {
      ADD_FAILURE() << options.label << ": \"" << path << "\" ("
                    << TypeOf(n.st.st_mode) << ") is in " << b << " but not in "
                    << a;
    }
  }
  const auto peers_a = InodePeers(ta), peers_b = InodePeers(tb);
  for (const auto& [path, na] : ta) {
    auto it = tb.find(path);
    if (it == tb.end()) continue;
    CompareNodes(a, b, path, na, it->second, options);
    auto pa = peers_a.find(path);
    auto pb = peers_b.find(path);
    if (pa != peers_a.end() && pb != peers_b.end()) {
      EXPECT_EQ(JoinSet(pa->second), JoinSet(pb->second))
          << options.label << ": path \"" << path
          << "\": the paths sharing its inode differ (" << a << " vs " << b
          << ")";
    }
  }
}

std::string CaseParamName(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

// ---- Mounts ----

int MountCount(const std::string& path) {
  int n = 0;
  for (const auto& [mp, type] : Mounts()) n += mp == path;
  return n;
}

std::string MountType(const std::string& path) {
  std::string out;
  for (const auto& [mp, type] : Mounts()) {
    if (mp == path) out = type;
  }
  return out;
}

bool ProcessGone(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return true;
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return true;
  char state = stat[paren + 2];
  return state == 'Z' || state == 'X';
}

bool WaitProcessGone(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!ProcessGone(pid)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

std::string FuseUnavailableReason() {
  if (geteuid() != 0) {
    return "FUSE mount tests must run as root (mounts, devices, trusted.* "
           "xattrs)";
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    return std::string("/dev/fuse is not usable: ") + strerror(errno);
  }
  // Once per process, before any thread or mount exists.
  static const std::string namespace_error = []() -> std::string {
    if (unshare(CLONE_NEWNS) != 0) {
      return std::string("unshare(CLONE_NEWNS): ") + strerror(errno);
    }
    // Mounts made here must not propagate back to the parent namespace.
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      return std::string("making / private: ") + strerror(errno);
    }
    return "";
  }();
  if (!namespace_error.empty()) {
    return "cannot enter a private mount namespace: " + namespace_error;
  }
  return "";
}

void MountJanitor::Track(const std::string& mountpoint) {
  mountpoints_.push_back(mountpoint);
}

void MountJanitor::TrackProcess(pid_t pid) {
  if (pid > 0) pids_.push_back(pid);
}

int MountJanitor::DetachAll() {
  int left = 0;
  for (auto it = mountpoints_.rbegin(); it != mountpoints_.rend(); ++it) {
    while (MountCount(*it) > 0) {
      ++left;
      if (umount2(it->c_str(), MNT_DETACH) != 0) {
        ADD_FAILURE() << "umount2(" << *it
                      << ", MNT_DETACH): " << strerror(errno);
        break;
      }
    }
  }
  mountpoints_.clear();
  for (pid_t pid : pids_) {
    if (WaitProcessGone(pid, std::chrono::seconds(5))) continue;
    std::string comm = ReadFile("/proc/" + std::to_string(pid) + "/comm");
    if (comm.rfind("lazypull", 0) == 0) {
      ADD_FAILURE() << "serving process " << pid
                    << " outlived its mount: killing it";
      kill(pid, SIGKILL);
    }
  }
  pids_.clear();
  return left;
}

std::string LayerMount::Log() const { return ReadFile(log_file); }

LayerMount MountLayer(MountJanitor* janitor, const std::string& blob,
                      const std::vector<std::string>& trust_args,
                      std::string mountpoint, std::string cache_dir) {
  LayerMount m;
  if (mountpoint.empty()) mountpoint = MakeTempDir("mnt");
  if (cache_dir.empty()) cache_dir = MakeTempDir("cache");
  // mountinfo lists real paths.
  char real[PATH_MAX];
  if (realpath(mountpoint.c_str(), real) != nullptr) mountpoint = real;
  m.mountpoint = mountpoint;
  m.cache_dir = cache_dir;
  m.log_file = MakeTempDir("log") + "/lazypull.log";
  janitor->Track(mountpoint);
  std::vector<std::string> argv = {LazypullBinary(), "mount", "--blob", blob};
  argv.insert(argv.end(), trust_args.begin(), trust_args.end());
  argv.insert(argv.end(),
              {mountpoint, "--cache-dir", cache_dir, "--log-file", m.log_file});
  m.result = Run(argv);
  size_t p = m.result.out.find("(pid ");
  if (p != std::string::npos) {
    m.pid = static_cast<pid_t>(atoi(m.result.out.c_str() + p + 5));
    janitor->TrackProcess(m.pid);
  }
  return m;
}

ConvertedLayer ConvertTar(const std::string& tar, const std::string& format) {
  ConvertedLayer out;
  const std::string dir = MakeTempDir("layer");
  {
    std::ofstream f(dir + "/in.tar", std::ios::binary);
    f << tar;
    if (!f.good()) {
      ADD_FAILURE() << "writing " << dir << "/in.tar";
      return out;
    }
  }
  RunResult r =
      Run({LazypullBinary(), "convert", dir + "/in.tar", dir + "/layer",
           "--format", format, "--chunk-size", "64K"});
  if (r.exit_code != 0) {
    ADD_FAILURE() << "convert: " << r.err;
    return out;
  }
  simdjson::dom::parser parser;
  std::string_view digest;
  if (parser.parse(r.out)["toc_digest"].get_string().get(digest) !=
      simdjson::SUCCESS) {
    ADD_FAILURE() << "convert printed no toc_digest: " << r.out;
    return out;
  }
  out.blob = dir + "/layer";
  out.toc_digest = std::string(digest);
  return out;
}

LayerMount MountExpected(MountJanitor* janitor, const ExpectedLayer& layer) {
  return MountLayer(janitor, layer.blob,
                    {"--toc-digest", layer.ValidTocDigest()});
}

LayerState ReadLayerState(const std::string& mountpoint,
                          const std::string& digest) {
  LayerState s;
  const std::string path =
      mountpoint + "/.stargz-snapshotter/" + digest + ".json";
  FileContent c = ReadWholeFile(path);
  if (c.error != 0) {
    ADD_FAILURE() << "state file " << path << ": " << strerror(c.error);
    return s;
  }
  dom::parser parser;
  dom::object o;
  if (parser.parse(c.data).get_object().get(o) != simdjson::SUCCESS) {
    ADD_FAILURE() << "state file " << path
                  << " is not a JSON object: " << c.data;
    return s;
  }
  for (auto [key, value] : o) s.keys.insert(std::string(key));
  std::string_view error, d;
  if (o["error"].get_string().get(error) != simdjson::SUCCESS ||
      o["digest"].get_string().get(d) != simdjson::SUCCESS ||
      o["size"].get_uint64().get(s.size) != simdjson::SUCCESS ||
      o["fetchedSize"].get_uint64().get(s.fetched_size) != simdjson::SUCCESS ||
      o["fetchedPercent"].get_double().get(s.fetched_percent) !=
          simdjson::SUCCESS) {
    ADD_FAILURE() << "state file " << path
                  << " lacks a key or has a wrong type: " << c.data;
    return s;
  }
  s.error = std::string(error);
  s.digest = std::string(d);
  s.ok = true;
  return s;
}

RunResult UnmountLayer(const std::string& mountpoint, bool force) {
  std::vector<std::string> argv = {LazypullBinary(), "unmount", mountpoint};
  if (force) argv.push_back("--force");
  return Run(argv);
}

Extraction ExtractLayer(const std::string& blob,
                        const std::vector<std::string>& extra_args) {
  Extraction x;
  x.sandbox = MakeTempDir("extract");
  x.root = x.sandbox + "/root";
  std::vector<std::string> argv = {LazypullBinary(), "extract", blob, x.root};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  x.result = Run(argv);
  return x;
}

std::vector<pid_t> WatchdogsOf(pid_t server) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  const std::string needle = absl::StrCat("__fuse-watchdog ", server, " ");
  while (struct dirent* e = readdir(d)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    std::ifstream f(absl::StrCat("/proc/", pid, "/cmdline"));
    std::string cmd((std::istreambuf_iterator<char>(f)),
                    std::istreambuf_iterator<char>());
    for (char& c : cmd) c = c == '\0' ? ' ' : c;
    if (absl::StrContains(cmd, needle)) out.push_back(pid);
  }
  closedir(d);
  return out;
}

}  // namespace lazypull::testing
