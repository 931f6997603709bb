// `lazypull mount IMAGE_REF MOUNTPOINT` end to end: an image of two
// eStargz layers made by `lazypull convert` (descriptors annotated with
// toc.digest and the uncompressed size) and one plain-gzip layer, pushed
// with skopeo to docker-registry over TLS, mounted lazily by the real binary
// as root and compared byte for byte with `lazypull pull` of the same image.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/digest.h"
#include "core/testing/tar_builder.h"
#include "core/testing/test_layer.h"
#include "fetch/testing/oci_image.h"
#include "fetch/testing/registry_fixture.h"
#include "gtest/gtest.h"
#include "proxy/fault_proxy.h"
#include "proxy/fault_rules.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull {
namespace {

using testing::CompareTrees;
using testing::OciLayout;
using testing::RegistryServer;
using testing::RegistryServerOptions;
using testing::TarBuilder;
using testing::TarSpec;
using testing::TestDescriptor;
using testing::TestDir;
using testing::TreeCompareOptions;

constexpr char kLayerGzip[] = "application/vnd.oci.image.layer.v1.tar+gzip";

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)),
                     std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary) << data;
}

// A pseudo-random payload (incompressible enough to span several chunks).
std::string Payload(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s[i] = static_cast<char>('a' + (x % 26));
  }
  return s;
}

// A JSON string field of `json`.
std::string JsonField(const std::string& json, const std::string& key) {
  std::string k = absl::StrCat("\"", key, "\": ");
  size_t p = json.find(k);
  if (p == std::string::npos) return "";
  p += k.size();
  if (json[p] == '"') {
    size_t e = json.find('"', p + 1);
    return json.substr(p + 1, e - p - 1);
  }
  size_t e = json.find_first_of(",\n}", p);
  return json.substr(p, e - p);
}

// fetchedPercent from a layer's state file, or -1 if unreadable.
double FetchedPercent(const std::string& state_file) {
  std::ifstream f(state_file);
  std::string json((std::istreambuf_iterator<char>(f)),
                   std::istreambuf_iterator<char>());
  const std::string key = "\"fetchedPercent\":";
  size_t p = json.find(key);
  if (p == std::string::npos) return -1;
  return std::atof(json.c_str() + p + key.size());
}

struct LayerBlob {
  std::string bytes;
  std::string diff_id;
  std::map<std::string, std::string> annotations;
};

class RegistryMountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (FUSE, overlay)";
    if (access("/dev/fuse", R_OK | W_OK) != 0) {
      GTEST_SKIP() << "SKIPPED: /dev/fuse is not available";
    }
    bin_ = testing::LazypullBinary();
    dir_ = TestDir("work");
    RegistryServerOptions o;
    o.work_dir = dir_ + "/registry";
    mkdir(o.work_dir.c_str(), 0755);
    o.tls = true;
    auto reg = RegistryServer::Start(o);
    ASSERT_TRUE(reg.ok()) << reg.status();
    reg_ = std::move(*reg);
  }

  void TearDown() override {
    for (const std::string& m : mounts_) {
      testing::Run({bin_, "unmount", m, "--force"});
    }
  }

  // Converts a tar with `lazypull convert` into an eStargz blob.
  LayerBlob Convert(const std::string& tar, const std::string& name,
                    std::vector<std::string> extra = {}) {
    LayerBlob b;
    const std::string in = absl::StrCat(dir_, "/", name, ".tar");
    const std::string out = absl::StrCat(dir_, "/", name, ".esgz");
    WriteFile(in, tar);
    std::vector<std::string> argv = {bin_, "convert", in, out};
    for (auto& e : extra) argv.push_back(e);
    testing::RunResult r = testing::Run(argv);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    b.bytes = ReadAll(out);
    b.diff_id = JsonField(r.out, "diff_id");
    b.annotations["containerd.io/snapshot/stargz/toc.digest"] =
        JsonField(r.out, "toc_digest");
    b.annotations["io.containers.estargz.uncompressed-size"] =
        JsonField(r.out, "uncompressed_size");
    // lazypull's hints (where the prefetch range ends, where the TOC is).
    for (const char* k :
         {"io.lazypull.prefetch-size", "io.lazypull.toc-offset"}) {
      if (std::string v = JsonField(r.out, k); !v.empty()) b.annotations[k] = v;
    }
    return b;
  }

  // A layer of data/hot (prioritized) and data/cold, `size` bytes each of
  // Payload(size, hot_seed) and Payload(size, cold_seed).
  LayerBlob HotAndCold(const std::string& name, size_t size, int hot_seed,
                       int cold_seed) {
    TarBuilder b;
    b.Dir("./");
    b.Dir("data/");
    b.File("data/hot", Payload(size, hot_seed));
    b.File("data/cold", Payload(size, cold_seed));
    const std::string list = absl::StrCat(dir_, "/prioritize-", name, ".txt");
    WriteFile(list, "data/hot\n");
    return Convert(b.Finish(), name, {"--prioritize", list});
  }

  LayerBlob Gzip(const std::string& tar) {
    LayerBlob b;
    b.bytes = testing::GzipForTest(tar);
    b.diff_id = Sha256::Of(tar).ToString();
    return b;
  }

  // Pushes an image of `layers` (bottom first) as REPO:v1; returns its
  // reference.
  std::string Push(const std::string& repo,
                   const std::vector<LayerBlob>& layers,
                   RegistryServer* reg = nullptr) {
    if (reg == nullptr) reg = reg_.get();
    std::string flat = repo;
    std::replace(flat.begin(), flat.end(), '/', '-');
    const std::string layout_dir = absl::StrCat(dir_, "/oci-", flat);
    auto layout = OciLayout::Create(layout_dir);
    EXPECT_TRUE(layout.ok()) << layout.status();
    std::vector<std::string> diff_ids, descs;
    for (const LayerBlob& l : layers) {
      auto d = layout->AddBlob(kLayerGzip, l.bytes);
      EXPECT_TRUE(d.ok()) << d.status();
      std::vector<std::string> ann;
      for (const auto& [k, v] : l.annotations) {
        ann.push_back(absl::StrCat("\"", k, "\":\"", v, "\""));
      }
      descs.push_back(
          absl::StrCat("{\"mediaType\":\"", kLayerGzip, "\",\"digest\":\"",
                       d->digest.ToString(), "\",\"size\":", d->size,
                       ann.empty() ? ""
                                   : absl::StrCat(",\"annotations\":{",
                                                  absl::StrJoin(ann, ","), "}"),
                       "}"));
      diff_ids.push_back(absl::StrCat("\"", l.diff_id, "\""));
    }
    const std::string config = absl::StrCat(
        "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{},"
        "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[",
        absl::StrJoin(diff_ids, ","), "]}}");
    auto c =
        layout->AddBlob("application/vnd.oci.image.config.v1+json", config);
    EXPECT_TRUE(c.ok());
    const std::string manifest = absl::StrCat(
        "{\"schemaVersion\":2,\"mediaType\":\"application/"
        "vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":"
        "\"application/vnd.oci.image.config.v1+json\",\"digest\":\"",
        c->digest.ToString(), "\",\"size\":", c->size, "},\"layers\":[",
        absl::StrJoin(descs, ","), "]}");
    auto m =
        layout->AddBlob("application/vnd.oci.image.manifest.v1+json", manifest);
    EXPECT_TRUE(m.ok());
    EXPECT_TRUE(layout->Tag("v1", *m).ok());
    absl::Status st = testing::PushWithSkopeo(*layout, "v1", reg->host(), repo);
    EXPECT_TRUE(st.ok()) << st;
    return absl::StrCat(reg->host(), "/", repo, ":v1");
  }

  std::vector<LayerBlob> StandardLayers() {
    TarBuilder b1;
    b1.Dir("./");
    b1.Dir("etc/");
    b1.File("etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    TarSpec hosts;
    hosts.name = "etc/hosts";
    hosts.content = "127.0.0.1 localhost\n";
    hosts.xattrs = {{"user.note", "n"}};
    b1.Add(hosts);
    b1.File("etc/remove-me", "x");
    b1.Dir("data/");
    b1.File("data/big", Payload(3 << 20, 1));
    b1.File("data/small", "small");
    b1.Hardlink("data/small-link", "data/small");
    b1.Symlink("data/link", "big");
    b1.Dir("opq/");
    b1.File("opq/old", "old");
    b1.Dir("sbin/");
    const std::string ldconfig = ReadAll("/sbin/ldconfig");
    has_static_binary_ = !ldconfig.empty();
    if (has_static_binary_) b1.File("sbin/ldconfig", ldconfig, 0755);

    TarBuilder b2;
    b2.Dir("etc/");
    b2.File("etc/.wh.remove-me", "");
    b2.File("etc/motd", "hello from layer 2\n");
    b2.Dir("opq/");
    b2.File("opq/.wh..wh..opq", "");
    b2.File("opq/new", "new");
    b2.Dir("data/");
    b2.File("data/medium", Payload(700 << 10, 2));

    TarBuilder b3;
    b3.Dir("etc/");
    b3.File("etc/motd", "hello from the gzip layer\n");
    b3.File("etc/.wh.hosts", "");
    b3.Dir("top/");
    b3.File("top/file", Payload(100 << 10, 3));

    return {Convert(b1.Finish(), "l1"), Convert(b2.Finish(), "l2"),
            Gzip(b3.Finish())};
  }

  testing::RunResult Mount(const std::string& ref, const std::string& mnt,
                           std::vector<std::string> extra = {}) {
    mkdir(mnt.c_str(), 0755);
    std::vector<std::string> argv = {
        bin_,        "mount",         ref,           mnt,
        "--ca-file", reg_->ca_file(), "--cache-dir", cache_dir()};
    for (auto& e : extra) argv.push_back(e);
    testing::RunResult r = testing::Run(argv);
    if (r.exit_code == 0) mounts_.push_back(mnt);
    return r;
  }

  // Pushes a lazy (eStargz) `lower` and an `upper` layer, eStargz or plain
  // gzip (pulled in full by the mount), as an image named after `mnt`, and
  // mounts it at `mnt` without background fetch; *ref gets the image.
  testing::RunResult MountTwoLayers(TarBuilder* lower, TarBuilder* upper,
                                    bool plain_upper, const std::string& mnt,
                                    std::string* ref = nullptr) {
    const std::string name = mnt.substr(mnt.rfind('/') + 1);
    const std::string r =
        Push("test/" + name,
             {Convert(lower->Finish(), name + "-lower", {}),
              plain_upper ? Gzip(upper->Finish())
                          : Convert(upper->Finish(), name + "-upper", {})});
    if (ref != nullptr) *ref = r;
    return Mount(r, mnt, {"--no-background-fetch"});
  }

  // MountTwoLayers, and `pull` of the same image into mnt + "-pulled".
  void MountAndPullTwoLayers(TarBuilder* lower, TarBuilder* upper,
                             bool plain_upper, const std::string& mnt) {
    std::string ref;
    testing::RunResult m = MountTwoLayers(lower, upper, plain_upper, mnt, &ref);
    ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
    testing::RunResult p = testing::Run(
        {bin_, "pull", ref, mnt + "-pulled", "--ca-file", reg_->ca_file()});
    ASSERT_EQ(p.exit_code, 0) << p.err << p.out;
  }

  // A directory an upper layer only implies (a file beneath it, no entry
  // of its own) keeps the attributes the layer below gives it, as
  // containerd's unpack (and `pull`) keep them; it showed 0755, root, time
  // 0. Whiteouts hide lower files, and are not listed where there is
  // nothing to hide.
  void CheckImpliedDirectoriesAndIdleWhiteouts(bool plain_upper) {
    TarBuilder lower, upper;
    lower.Dir("./");
    TarSpec meta;
    meta.name = "meta/";
    meta.typeflag = '5';
    meta.mode = 0710;
    meta.uid = 5;
    meta.gid = 6;
    meta.mtime = 1500000000;
    lower.Add(meta);
    TarSpec deep = meta;
    deep.name = "meta/deep/";
    deep.mode = 0750;
    deep.mtime = 1400000000;
    lower.Add(deep);
    lower.File("meta/a", "a").File("meta/gone", "g");
    upper.File("meta/new", "new");    // no "meta/" entry, no "./" either
    upper.File("meta/.wh.gone", "");  // hides the lower file
    upper.File("meta/deep/x", "x");   // two implied levels
    // A whiteout in a directory no lower layer has hides nothing; overlayfs
    // would list it as an entry nothing can open.
    upper.Dir("fresh/").File("fresh/.wh.nothing", "").File("fresh/x", "x");
    const std::string mnt = dir_ + "/mnt-implied" + (plain_upper ? "-p" : "");
    testing::RunResult m = MountTwoLayers(&lower, &upper, plain_upper, mnt);
    ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
    EXPECT_EQ(absl::StrContains(m.out, "pulled in full"), plain_upper) << m.out;
    struct stat st;
    ASSERT_EQ(stat((mnt + "/meta").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0710u) << std::oct << st.st_mode;
    EXPECT_EQ(st.st_uid, 5u);
    EXPECT_EQ(st.st_gid, 6u);
    EXPECT_EQ(st.st_mtime, 1500000000);
    ASSERT_EQ(stat((mnt + "/meta/deep").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0750u) << std::oct << st.st_mode;
    EXPECT_EQ(st.st_uid, 5u);
    EXPECT_EQ(st.st_mtime, 1400000000);
    EXPECT_EQ(ReadAll(mnt + "/meta/new"), "new");
    EXPECT_EQ(ReadAll(mnt + "/meta/a"), "a");
    EXPECT_EQ(ReadAll(mnt + "/meta/deep/x"), "x");
    EXPECT_NE(access((mnt + "/meta/gone").c_str(), F_OK), 0);
    std::vector<std::string> fresh;
    if (DIR* d = opendir((mnt + "/fresh").c_str())) {
      while (struct dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') fresh.push_back(e->d_name);
      }
      closedir(d);
    }
    EXPECT_EQ(fresh, std::vector<std::string>{"x"});
    testing::RunResult u = testing::Run({bin_, "unmount", mnt});
    EXPECT_EQ(u.exit_code, 0) << u.err;
    mounts_.clear();
  }

  std::string cache_dir() const { return dir_ + "/cache"; }
  // The content of `rel` under `dir` read by a process of user `uid` (which
  // starts in `dir`: the test's own directories are not others'), or
  // "errno N".
  static std::string ReadAs(uid_t uid, const std::string& dir,
                            const std::string& rel) {
    int p[2];
    if (pipe(p) != 0) return "pipe failed";
    const pid_t pid = fork();
    if (pid == 0) {
      close(p[0]);
      int e = 0;
      if (chdir(dir.c_str()) != 0 || setgroups(0, nullptr) != 0 ||
          setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) {
        e = errno;
      }
      int fd = e == 0 ? open(rel.c_str(), O_RDONLY) : -1;
      if (fd < 0 && e == 0) e = errno;
      char buf[4096];
      ssize_t n = 0;
      while (fd >= 0 && (n = read(fd, buf, sizeof(buf))) > 0) {
        if (write(p[1], buf, static_cast<size_t>(n)) != n) break;
      }
      _exit(e == 0 && n == 0 ? 0 : (e != 0 ? e : 255));
    }
    close(p[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof(buf))) > 0) out.append(buf, n);
    close(p[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return absl::StrCat("errno ", WEXITSTATUS(status));
    }
    return out;
  }
  // The serving process `lazypull mount` reported ("... (pid N)"); 0 if none.
  static pid_t ServerPid(const testing::RunResult& m) {
    const size_t at = m.out.find("(pid ");
    pid_t pid = 0;
    if (at == std::string::npos ||
        !absl::SimpleAtoi(m.out.substr(at + 5, m.out.find(')', at) - at - 5),
                          &pid)) {
      return 0;
    }
    return pid;
  }

  std::string bin_, dir_;
  std::unique_ptr<RegistryServer> reg_;
  std::vector<std::string> mounts_;
  bool has_static_binary_ = false;
};

TEST_F(RegistryMountTest, MountMatchesPullAndUnmounts) {
  const std::vector<LayerBlob> layers = StandardLayers();
  const std::string ref = Push("test/app", layers);
  const std::string pulled = dir_ + "/pulled";
  testing::RunResult p =
      testing::Run({bin_, "pull", ref, pulled, "--ca-file", reg_->ca_file()});
  ASSERT_EQ(p.exit_code, 0) << p.err << p.out;

  const std::string mnt = dir_ + "/mnt";
  testing::RunResult m = Mount(ref, mnt, {"--wait-prefetch=30"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  // The plain-gzip layer (index 2) is pulled in full, with a reason.
  EXPECT_TRUE(absl::StrContains(m.out, "layer 2/3")) << m.out;
  EXPECT_TRUE(absl::StrContains(m.out, "pulled in full")) << m.out;

  // Background fetch fills the bottom layer without any read; its state
  // file (reachable by name through the overlay) shows the progress.
  const std::string state0 =
      absl::StrCat(mnt, "/.stargz-snapshotter/",
                   Sha256::Of(layers[0].bytes).ToString(), ".json");
  double pct = -1;
  for (int i = 0; i < 300 && pct < 90; ++i) {
    pct = FetchedPercent(state0);
    usleep(100 * 1000);
  }
  EXPECT_GE(pct, 90) << ReadAll(state0);

  // Once a lazy layer is complete its whole blob is checked against its
  // digest, and a marker in the cache dir remembers it.
  for (int layer = 0; layer < 2; ++layer) {
    const std::string marker = absl::StrCat(
        cache_dir(), "/verified/", Sha256::Of(layers[layer].bytes).Hex());
    for (int i = 0; i < 300 && access(marker.c_str(), F_OK) != 0; ++i) {
      usleep(100 * 1000);
    }
    EXPECT_EQ(access(marker.c_str(), F_OK), 0)
        << "layer " << layer << ": " << ReadAll(cache_dir() + "/lazypull.log");
  }
  // Complete layers say so (chunk extents alone stopped at ~93%).
  EXPECT_EQ(FetchedPercent(state0), 100) << ReadAll(state0);
  const std::string mount_log = ReadAll(cache_dir() + "/lazypull.log");
  EXPECT_TRUE(absl::StrContains(mount_log, "whole blob verified"));
  // Background fetch began once the (idle) workload let it: after a quiet
  // period, or at once if the TOC reads measured the link as fast.
  EXPECT_TRUE(absl::StrContains(
                  mount_log,
                  "background fetch starts (no read has missed the cache for a "
                  "while)") ||
              absl::StrContains(mount_log,
                                "background fetch starts (the link is fast: "))
      << mount_log;

  // The full pull leaves out an eStargz layer's TOC entry and landmarks, as
  // the lazy mount hides them (runtime.md §5): the trees are equal.
  EXPECT_NE(access((pulled + "/stargz.index.json").c_str(), F_OK), 0);
  EXPECT_NE(access((pulled + "/.no.prefetch.landmark").c_str(), F_OK), 0);
  TreeCompareOptions cmp;
  cmp.label = "lazy mount vs full pull";
  cmp.skip_dir_nlink = true;  // overlayfs counts merged directories its way
  // The merged root shows the topmost layer's root, which that layer does
  // not declare (its time is whenever it was made); pull keeps the lowest.
  cmp.skip_mtime = {""};
  CompareTrees(mnt, pulled, cmp);
  EXPECT_NE(access((mnt + "/etc/remove-me").c_str(), F_OK), 0);
  EXPECT_NE(access((mnt + "/opq/old").c_str(), F_OK), 0);
  EXPECT_EQ(ReadAll(mnt + "/etc/motd"), "hello from the gzip layer\n");

  // A state file of a lazy layer, through the overlay.
  // (Layer digests are not known here; the runtime dir has the layer mounts.)
  if (has_static_binary_) {
    testing::RunResult c =
        testing::Run({"/usr/sbin/chroot", mnt, "/sbin/ldconfig", "--version"});
    EXPECT_EQ(c.exit_code, 0) << c.err;
    EXPECT_TRUE(absl::StrContains(c.out, "ldconfig")) << c.out;
  } else {
    std::cout << "SKIPPED the chroot run: no static binary (/sbin/ldconfig)"
              << std::endl;
  }

  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  struct stat a, b;
  ASSERT_EQ(stat(mnt.c_str(), &a), 0);
  ASSERT_EQ(stat(dir_.c_str(), &b), 0);
  EXPECT_EQ(a.st_dev, b.st_dev) << "still mounted";
  // The layer mounts and the runtime dir are gone.
  DIR* md = opendir((cache_dir() + "/mounts").c_str());
  ASSERT_NE(md, nullptr);
  int left = 0;
  while (struct dirent* e = readdir(md)) {
    if (e->d_name[0] != '.') ++left;
  }
  closedir(md);
  EXPECT_EQ(left, 0);

  // HTTP/2 for our requests, and fewer connections than requests.
  int ours = 0;
  for (absl::string_view line : absl::StrSplit(reg_->Log(), '\n')) {
    if (!absl::StrContains(line, "\"lazypull/")) continue;
    ++ours;
    EXPECT_TRUE(absl::StrContains(line, " HTTP/2.0\"")) << line;
  }
  EXPECT_GE(ours, 4);
  const std::string log = ReadAll(cache_dir() + "/lazypull.log");
  size_t p2 = log.rfind("http: ");
  ASSERT_NE(p2, std::string::npos) << log;
  std::vector<std::string> words = absl::StrSplit(log.substr(p2), ' ');
  // "http: N requests, A attempts over C connection(s)"
  ASSERT_GE(words.size(), 7u);
  const int requests = std::atoi(words[1].c_str());
  const int connections = std::atoi(words[6].c_str());
  EXPECT_GT(requests, 3);
  EXPECT_GE(connections, 1);
  EXPECT_LT(connections, requests) << log.substr(p2);
  // "... (background: B requests over D)": background fetch ran on a
  // connection of its own, apart from on-demand reads.
  const size_t pb = log.find("(background: ", p2);
  ASSERT_NE(pb, std::string::npos) << log.substr(p2);
  std::vector<std::string> bw = absl::StrSplit(log.substr(pb), ' ');
  ASSERT_GE(bw.size(), 5u);
  const int bg_requests = std::atoi(bw[1].c_str());
  const int bg_connections = std::atoi(bw[4].c_str());
  std::cout << log.substr(p2, log.find('\n', p2) - p2) << std::endl;
  if (bg_requests > 0) {  // none if on-demand reads fetched it all first
    EXPECT_GE(bg_connections, 1) << log.substr(p2);
    EXPECT_GT(connections, bg_connections) << log.substr(p2);
  }
}

TEST_F(RegistryMountTest, LyingTocDigestIsRefused) {
  std::vector<LayerBlob> layers = StandardLayers();
  layers[1].annotations["containerd.io/snapshot/stargz/toc.digest"] =
      Sha256::Of("not the TOC").ToString();
  const std::string ref = Push("test/liar", layers);
  const std::string mnt = dir_ + "/mnt-liar";
  testing::RunResult m = Mount(ref, mnt);
  EXPECT_NE(m.exit_code, 0) << m.out;
  EXPECT_TRUE(absl::StrContains(m.err, "layer 1/3")) << m.err;
  EXPECT_TRUE(absl::StrContains(m.err, "refusing")) << m.err;
  struct stat a, b;
  ASSERT_EQ(stat(mnt.c_str(), &a), 0);
  ASSERT_EQ(stat(dir_.c_str(), &b), 0);
  EXPECT_EQ(a.st_dev, b.st_dev) << "mounted despite the lie";
}

// A TOC anchor on a blob with no lazy-pull footer at all (an ordinary gzip
// layer whose annotations were copied over): the layer is pulled in full,
// saying why, as other clients would pull it (it failed the whole mount).
TEST_F(RegistryMountTest, AnchorOnAPlainLayerFallsBackToAFullPull) {
  std::vector<LayerBlob> layers = StandardLayers();
  layers[2].annotations["containerd.io/snapshot/stargz/toc.digest"] =
      Sha256::Of("no TOC here").ToString();
  const std::string ref = Push("test/plain-anchored", layers);
  const std::string mnt = dir_ + "/mnt-plain-anchored";
  testing::RunResult m = Mount(ref, mnt, {"--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_TRUE(absl::StrContains(m.out, "layer 2/3")) << m.out;
  EXPECT_TRUE(absl::StrContains(m.out, "has no eStargz/zstd:chunked footer"))
      << m.out;
  EXPECT_EQ(ReadAll(mnt + "/etc/motd"), "hello from the gzip layer\n");
  EXPECT_EQ(ReadAll(mnt + "/data/small"), "small");
}

// An eStargz layer written with an external TOC (ctr-remote's and
// nerdctl's --estargz-external-toc: the TOC lives in a separate image, the
// blob ends with a 46-byte footer saying so) is pulled in full, with the
// reason, instead of failing the whole mount.
TEST_F(RegistryMountTest, ExternalTocLayerFallsBackToAFullPull) {
  std::vector<LayerBlob> layers = StandardLayers();
  // The footer is an empty gzip member: the blob stays the same tar stream.
  layers[2].bytes += testing::ExternalTocFooter();
  layers[2].annotations["containerd.io/snapshot/stargz/toc.digest"] =
      Sha256::Of("the TOC is elsewhere").ToString();
  const std::string ref = Push("test/external-toc", layers);
  const std::string mnt = dir_ + "/mnt-external-toc";
  testing::RunResult m = Mount(ref, mnt, {"--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_TRUE(absl::StrContains(m.out, "layer 2/3")) << m.out;
  EXPECT_TRUE(absl::StrContains(m.out, "external-TOC footer")) << m.out;
  EXPECT_TRUE(absl::StrContains(m.out, "pulled in full")) << m.out;
  EXPECT_EQ(ReadAll(mnt + "/etc/motd"), "hello from the gzip layer\n");
  EXPECT_EQ(ReadAll(mnt + "/data/small"), "small");
}

TEST_F(RegistryMountTest, SingleLayerIsBindMounted) {
  const std::vector<LayerBlob> layers = StandardLayers();
  const std::string ref = Push("test/one", layers);
  const std::string mnt = dir_ + "/mnt-one";
  testing::RunResult m =
      Mount(ref, mnt, {"--layer", "0", "--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  const std::string state =
      absl::StrCat(mnt, "/.stargz-snapshotter/",
                   Sha256::Of(layers[0].bytes).ToString(), ".json");
  // No background fetch, no prefetch landmark: nothing fetched until read.
  usleep(300 * 1000);
  EXPECT_EQ(FetchedPercent(state), 0) << ReadAll(state);
  EXPECT_EQ(ReadAll(mnt + "/data/small"), "small");
  const double after_small = FetchedPercent(state);
  EXPECT_GT(after_small, 0);
  EXPECT_LT(after_small, 10);
  EXPECT_EQ(ReadAll(mnt + "/data/big"), Payload(3 << 20, 1));
  EXPECT_EQ(ReadAll(mnt + "/etc/remove-me"), "x");
  // Read-only.
  EXPECT_NE(access((mnt + "/etc").c_str(), W_OK), 0);
  // A container's non-root process reads it as any filesystem (the bind
  // mount is the layer's FUSE mount itself: allow_other, as root), the
  // kernel checking modes.
  EXPECT_EQ(ReadAs(65534, mnt, "data/small"), "small");
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// An image of no layers (a valid manifest; pull makes an empty directory of
// it) mounts as an empty read-only root.
TEST_F(RegistryMountTest, AnImageWithNoLayersMountsEmpty) {
  const std::string ref = Push("test/no-layers", {});
  const std::string mnt = dir_ + "/mnt-none";
  testing::RunResult m = Mount(ref, mnt, {});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  DIR* d = opendir(mnt.c_str());
  ASSERT_NE(d, nullptr);
  int entries = 0;
  while (struct dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) ++entries;
  }
  closedir(d);
  EXPECT_EQ(entries, 0);
  EXPECT_NE(mkdir((mnt + "/x").c_str(), 0755), 0);
  EXPECT_EQ(errno, EROFS);
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  EXPECT_EQ(testing::MountCount(mnt), 0);
}

// (See CheckImpliedDirectoriesAndIdleWhiteouts.)
TEST_F(RegistryMountTest, ImpliedDirectoriesKeepTheLowerLayersAttributes) {
  CheckImpliedDirectoriesAndIdleWhiteouts(/*plain_upper=*/false);
}

// The same with the upper layer pulled in full (plain gzip): its extracted
// directory gave implied directories 0755, root, and made whiteout devices
// that hide nothing (listed in a directory no lower layer has).
TEST_F(RegistryMountTest, ImpliedDirectoriesOfAPlainUpperLayer) {
  CheckImpliedDirectoriesAndIdleWhiteouts(/*plain_upper=*/true);
}

// A hardlink in a layer pulled in full to a file of a lower layer is a
// copy of it; the lookup must not follow a lower layer's symlink out of the
// image ("a -> /", then a hardlink to "a/etc/passwd" copied the host's).
TEST_F(RegistryMountTest, LowerHardlinkTargetsDoNotFollowSymlinks) {
  TarBuilder lower, upper;
  lower.Dir("./");
  lower.Symlink("a", "/");
  lower.Dir("d/").File("d/f", "lower file\n");
  upper.Hardlink("copy", "d/f");
  upper.Hardlink("leak", "a/etc/passwd");
  const std::string mnt = dir_ + "/mnt-lower-links";
  testing::RunResult m =
      MountTwoLayers(&lower, &upper, /*plain_upper=*/true, mnt);
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/copy"), "lower file\n");
  struct stat st;
  EXPECT_NE(lstat((mnt + "/leak").c_str(), &st), 0)
      << "a host file came through a lower layer's symlink: "
      << ReadAll(mnt + "/leak");
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// A lower layer's opaque directory hides the layers below it from a layer
// pulled in full too: a hardlink to a file it hides is no copy of that file,
// and a directory the upper layer only implies there does not take the
// hidden directory's attributes (both did: the lookup in the lower layers
// went past the opaque directory).
TEST_F(RegistryMountTest, AnOpaqueLowerDirectoryHidesFromAPlainUpperLayer) {
  TarBuilder l0, l1, l2;
  l0.Dir("./").Dir("a/");
  TarSpec b;
  b.name = "a/b/";
  b.typeflag = '5';
  b.mode = 0700;
  b.uid = 7;
  b.gid = 8;
  b.mtime = 1400000000;
  l0.Add(b);
  l0.File("a/b/hidden", "hidden by layer 1's opaque a/\n");
  l1.Dir("a/").File("a/.wh..wh..opq", "").File("a/keep", "k");
  l2.File("a/b/c", "c");  // implies a/b
  l2.Hardlink("link", "a/b/hidden");
  const std::string ref =
      Push("test/opaque-lower",
           {Convert(l0.Finish(), "ol0", {}), Convert(l1.Finish(), "ol1", {}),
            Gzip(l2.Finish())});
  const std::string mnt = dir_ + "/mnt-opaque-lower";
  testing::RunResult m = Mount(ref, mnt, {"--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/a/keep"), "k");
  EXPECT_EQ(ReadAll(mnt + "/a/b/c"), "c");
  struct stat st;
  EXPECT_NE(lstat((mnt + "/a/b/hidden").c_str(), &st), 0);
  EXPECT_NE(lstat((mnt + "/link").c_str(), &st), 0)
      << "a file an opaque directory hides came back: "
      << ReadAll(mnt + "/link");
  ASSERT_EQ(stat((mnt + "/a/b").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u) << std::oct << st.st_mode;
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_NE(st.st_mtime, 1400000000);
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// The same with every layer lazy: a lazy layer's implied directory takes
// no attributes from a lower one that an opaque directory (its own, or a
// layer's between) or a whiteout of its parent hides, and its whiteouts
// there hide nothing (one was listed with no entry behind it).
TEST_F(RegistryMountTest, LazyLayersSeeTheLowerLayersAsOverlayfsMergesThem) {
  TarBuilder l0, l1, l2;
  l0.Dir("./");
  TarSpec hidden;
  hidden.typeflag = '5';
  hidden.mode = 0700;
  hidden.uid = 7;
  hidden.mtime = 1400000000;
  for (const char* d : {"p/", "q/", "r/", "keep/"}) l0.Dir(d);
  for (const char* d : {"p/b/", "q/b/", "r/s/", "keep/b/"}) {
    hidden.name = d;
    l0.Add(hidden);
  }
  l0.File("p/b/old", "o").File("q/b/x", "x").File("r/s/old", "o");
  l1.Dir("q/").File("q/.wh..wh..opq", "").File("q/other", "other");
  l2.File("p/.wh..wh..opq", "").File("p/b/c", "c");  // p opaque, implies p/b
  l2.File("q/b/.wh.x", "").File("q/b/y", "y");       // implies q/b
  l2.File(".wh.r", "").File("r/s/t", "t");           // r replaced
  l2.File("keep/b/z", "z");  // keep/b: the lower one's attributes
  const std::string ref =
      Push("test/lazy-opaque",
           {Convert(l0.Finish(), "lo0", {}), Convert(l1.Finish(), "lo1", {}),
            Convert(l2.Finish(), "lo2", {})});
  const std::string mnt = dir_ + "/mnt-lazy-opaque";
  testing::RunResult m = Mount(ref, mnt, {"--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  for (const char* d : {"p/b", "q/b", "r/s"}) {
    SCOPED_TRACE(d);
    struct stat st;
    ASSERT_EQ(stat((mnt + "/" + d).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0755u) << std::oct << st.st_mode;
    EXPECT_EQ(st.st_uid, 0u);
    EXPECT_NE(st.st_mtime, 1400000000);
  }
  struct stat st;
  ASSERT_EQ(stat((mnt + "/keep/b").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u) << "an implied directory nothing hides";
  EXPECT_EQ(st.st_uid, 7u);
  using testing::ListDir;
  EXPECT_EQ(ListDir(mnt + "/p/b"), std::set<std::string>{"c"});
  EXPECT_EQ(ListDir(mnt + "/q"), (std::set<std::string>{"b", "other"}));
  EXPECT_EQ(ListDir(mnt + "/q/b"), std::set<std::string>{"y"});
  EXPECT_EQ(ListDir(mnt + "/r/s"), std::set<std::string>{"t"});
  EXPECT_EQ(ReadAll(mnt + "/q/b/y"), "y");
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// The same within one layer pulled in full: its own opaque directory, or a
// whiteout of a directory it then fills again, hides the lower one, so a
// directory it implies there is a new one (it took the hidden directory's
// attributes) and a hardlink to a file hidden so is no copy of it.
TEST_F(RegistryMountTest, APlainLayersOwnWhiteoutsHideFromItself) {
  TarBuilder lower, upper;
  lower.Dir("./").Dir("a/");
  TarSpec hidden;
  hidden.name = "a/b/";
  hidden.typeflag = '5';
  hidden.mode = 0700;
  hidden.uid = 7;
  hidden.mtime = 1400000000;
  lower.Add(hidden);
  lower.File("a/x", "hidden by the upper layer's opaque a/\n");
  hidden.name = "e/";
  lower.Add(hidden);
  lower.File("e/old", "old");
  upper.File("a/.wh..wh..opq", "").File("a/b/c", "c");  // implies a/b
  upper.Hardlink("link", "a/x");
  upper.File(".wh.e", "").File("e/new", "new");  // implies e
  const std::string mnt = dir_ + "/mnt-own-whiteouts";
  testing::RunResult m =
      MountTwoLayers(&lower, &upper, /*plain_upper=*/true, mnt);
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/a/b/c"), "c");
  EXPECT_EQ(ReadAll(mnt + "/e/new"), "new");
  struct stat st;
  EXPECT_NE(lstat((mnt + "/a/x").c_str(), &st), 0);
  EXPECT_NE(lstat((mnt + "/e/old").c_str(), &st), 0);
  EXPECT_NE(lstat((mnt + "/link").c_str(), &st), 0)
      << "a file the layer's own opaque directory hides came back: "
      << ReadAll(mnt + "/link");
  for (const char* d : {"/a/b", "/e"}) {
    ASSERT_EQ(stat((mnt + d).c_str(), &st), 0) << d;
    EXPECT_EQ(st.st_mode & 07777, 0755u) << d << " " << std::oct << st.st_mode;
    EXPECT_EQ(st.st_uid, 0u) << d;
  }
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  ASSERT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// A `--layer N` mount whose server was killed leaves RUN/N (a dead FUSE
// mount) and no RUN/0: the next image mount's sweep of dead run
// directories stopped at the first missing layer directory, so that mount
// and the directory stayed for good.
TEST_F(RegistryMountTest, ADeadLayerMountIsSweptByTheNextMount) {
  TarBuilder lower, upper;
  lower.Dir("./").File("a", "a");
  upper.File("b", "b");
  const std::string ref = Push(
      "test/dead-layer",
      {Convert(lower.Finish(), "dl0", {}), Convert(upper.Finish(), "dl1", {})});
  const std::string mnt = dir_ + "/mnt-dead-layer";
  testing::RunResult m = Mount(ref, mnt, {"--layer", "1"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/b"), "b");
  const pid_t pid = ServerPid(m);
  ASSERT_GT(pid, 0) << m.out;
  const std::string run = absl::StrCat(cache_dir(), "/mounts/", pid);
  ASSERT_EQ(testing::MountCount(run + "/1"), 1);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  for (int i = 0; i < 500 && kill(pid, 0) == 0; ++i) usleep(10000);
  ASSERT_NE(kill(pid, 0), 0) << "the server outlived SIGKILL";
  umount2(mnt.c_str(), MNT_DETACH);
  mounts_.clear();
  const std::string mnt2 = dir_ + "/mnt-dead-layer-2";
  testing::RunResult m2 = Mount(ref, mnt2, {"--no-background-fetch"});
  ASSERT_EQ(m2.exit_code, 0) << m2.err << m2.out;
  EXPECT_EQ(testing::MountCount(run + "/1"), 0)
      << "the dead server's layer mount stayed";
  struct stat st;
  EXPECT_NE(lstat(run.c_str(), &st), 0) << run << " stayed";
  testing::RunResult u = testing::Run({bin_, "unmount", mnt2});
  ASSERT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// An image mount whose server was killed leaves a dead mount at its
// mountpoint: the next image mount there detaches it rather than stacking
// on it (after which one unmount left the dead mount in place).
TEST_F(RegistryMountTest, AMountOnAKilledServersMountpointReplacesIt) {
  for (bool single : {true, false}) {
    SCOPED_TRACE(single ? "one layer (a bind mount)" : "two layers (overlay)");
    TarBuilder lower, upper;
    lower.Dir("./").File("a", "a");
    upper.File("b", "b");
    std::vector<LayerBlob> layers = {Convert(lower.Finish(), "kl0", {})};
    if (!single) layers.push_back(Convert(upper.Finish(), "kl1", {}));
    const std::string ref =
        Push(single ? "test/killed-one" : "test/killed-two", layers);
    const std::string mnt =
        dir_ + (single ? "/mnt-killed-one" : "/mnt-killed-two");
    // (Whatever fails, no dead mount is left behind.)
    absl::Cleanup detach = [&] {
      for (int i = 0; i < 4 && testing::MountCount(mnt) > 0; ++i) {
        umount2(mnt.c_str(), MNT_DETACH);
      }
    };
    testing::RunResult m = Mount(ref, mnt, {"--no-background-fetch"});
    ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
    const pid_t pid = ServerPid(m);
    ASSERT_GT(pid, 0) << m.out;
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    for (int i = 0; i < 500 && kill(pid, 0) == 0; ++i) usleep(10000);
    ASSERT_NE(kill(pid, 0), 0) << "the server outlived SIGKILL";
    ASSERT_EQ(testing::MountCount(mnt), 1);
    mounts_.clear();
    testing::RunResult m2 = Mount(ref, mnt, {"--no-background-fetch"});
    ASSERT_EQ(m2.exit_code, 0) << m2.err << m2.out;
    EXPECT_EQ(testing::MountCount(mnt), 1) << "stacked on the dead mount";
    EXPECT_EQ(ReadAll(mnt + "/a"), "a");
    testing::RunResult u = testing::Run({bin_, "unmount", mnt});
    ASSERT_EQ(u.exit_code, 0) << u.err;
    mounts_.clear();
    EXPECT_EQ(testing::MountCount(mnt), 0);
    struct stat st;
    EXPECT_EQ(stat(mnt.c_str(), &st), 0) << strerror(errno);
  }
}

// An image of 130 layers, some lazy, most pulled in full, with a cache
// directory whose name holds ',' and ':': the overlay's options are longer
// than the page mount(2) takes, and overlayfs splits them at both (the
// mount failed). Each layer's file shows, the topmost of a shared one wins.
TEST_F(RegistryMountTest, ManyLayersAndAnAwkwardCacheDir) {
  constexpr int kLayers = 130;
  std::vector<LayerBlob> layers;
  for (int i = 0; i < kLayers; ++i) {
    TarBuilder b;
    b.File(absl::StrCat("f", i), absl::StrCat(i));
    b.File("top", absl::StrCat("layer ", i));
    layers.push_back(i % 26 == 0 ? Convert(b.Finish(), absl::StrCat("m", i))
                                 : Gzip(b.Finish()));
  }
  const std::string ref = Push("test/many-layers", layers);
  const std::string mnt = dir_ + "/mnt-many";
  const std::string cache = dir_ + "/cache,with:" + std::string(40, 'c');
  mkdir(mnt.c_str(), 0755);
  testing::RunResult m =
      testing::Run({bin_, "mount", ref, mnt, "--ca-file", reg_->ca_file(),
                    "--cache-dir", cache, "--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  mounts_.push_back(mnt);
  EXPECT_EQ(ReadAll(mnt + "/top"), absl::StrCat("layer ", kLayers - 1));
  for (int i : {0, 1, 26, 77, kLayers - 1}) {
    EXPECT_EQ(ReadAll(absl::StrCat(mnt, "/f", i)), absl::StrCat(i)) << i;
  }
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  ASSERT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  EXPECT_EQ(testing::MountCount(mnt), 0);
}

// A layer's own overlayfs xattrs: the opaque marker on a directory means
// what it means to overlayfs and containerd's unpack (the lower layers'
// files there are hidden), for `pull` too (which showed them); the others
// (a redirect) are dropped, lazy layer or pulled in full (the mount showed
// another directory's files).
TEST_F(RegistryMountTest, LayersOwnOverlayXattrs) {
  for (bool plain_upper : {false, true}) {
    SCOPED_TRACE(plain_upper ? "plain upper" : "lazy upper");
    TarBuilder lower, upper;
    lower.Dir("./").Dir("d/").File("d/lowerfile", "low");
    lower.Dir("red/").File("red/own", "own");
    lower.Dir("secret/").File("secret/s", "s");
    TarSpec d;
    d.name = "d/";
    d.typeflag = '5';
    d.mode = 0755;
    d.xattrs = {{"trusted.overlay.opaque", "y"}, {"user.note", "kept"}};
    upper.Add(d);
    upper.File("d/upperfile", "up");
    TarSpec e;
    e.name = "red/";
    e.typeflag = '5';
    e.mode = 0755;
    e.xattrs = {{"trusted.overlay.redirect", "/secret"}};
    upper.Add(e);
    const std::string mnt = dir_ + "/mnt-ovx" + (plain_upper ? "-p" : "");
    MountAndPullTwoLayers(&lower, &upper, plain_upper, mnt);
    if (HasFatalFailure()) return;
    const std::string pulled = mnt + "-pulled";
    for (const std::string& root : {mnt, pulled}) {
      SCOPED_TRACE(root);
      struct stat st;
      EXPECT_NE(lstat((root + "/d/lowerfile").c_str(), &st), 0);
      EXPECT_EQ(ReadAll(root + "/d/upperfile"), "up");
      EXPECT_EQ(ReadAll(root + "/red/own"), "own");
      EXPECT_NE(lstat((root + "/red/s").c_str(), &st), 0);
      char buf[64];
      const ssize_t n =
          lgetxattr((root + "/d").c_str(), "user.note", buf, sizeof(buf));
      EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "kept");
    }
    testing::RunResult u = testing::Run({bin_, "unmount", mnt});
    EXPECT_EQ(u.exit_code, 0) << u.err;
    mounts_.clear();
  }
}

// A layer whose root is opaque ("./.wh..wh..opq") hides every layer below
// it, also when it is the top one (overlayfs ignores the mark on a lower
// root; with one layer left the mount showed the lower layers' files, where
// pull showed none).
TEST_F(RegistryMountTest, AnOpaqueRootHidesTheLayersBelow) {
  for (bool plain_upper : {false, true}) {
    SCOPED_TRACE(plain_upper ? "plain upper" : "lazy upper");
    TarBuilder lower, upper;
    lower.Dir("./").File("x", "x").Dir("d/").File("d/y", "y");
    upper.File(".wh..wh..opq", "").File("n", "n").Dir("d/").File("d/.wh.y", "");
    const std::string mnt = dir_ + "/mnt-opq" + (plain_upper ? "-p" : "");
    MountAndPullTwoLayers(&lower, &upper, plain_upper, mnt);
    if (HasFatalFailure()) return;
    const std::string pulled = mnt + "-pulled";
    for (const std::string& root : {mnt, pulled}) {
      SCOPED_TRACE(root);
      std::vector<std::string> names;
      for (const std::string& dir : {root, root + "/d"}) {
        if (DIR* dd = opendir(dir.c_str())) {
          while (struct dirent* e = readdir(dd)) {
            if (e->d_name[0] != '.') names.push_back(e->d_name);
          }
          closedir(dd);
        }
      }
      std::sort(names.begin(), names.end());
      EXPECT_EQ(names, (std::vector<std::string>{"d", "n"}));
      EXPECT_EQ(ReadAll(root + "/n"), "n");
    }
    testing::RunResult u = testing::Run({bin_, "unmount", mnt});
    EXPECT_EQ(u.exit_code, 0) << u.err;
    mounts_.clear();
  }
}

// An image may list one layer twice (identical layers made by two build
// steps): each listing mounts (or, plain, is pulled) on its own, and the
// merged root is what `pull` makes of it, the upper copy undoing what the
// layer between hid.
TEST_F(RegistryMountTest, ALayerListedTwice) {
  for (bool plain_middle : {false, true}) {
    SCOPED_TRACE(plain_middle ? "plain middle" : "lazy middle");
    TarBuilder twice, middle;
    twice.Dir("./").File("a", "a").Dir("d/").File("d/x", "x");
    middle.File(".wh.a", "").Dir("d/").File("d/x", "changed").File("m", "m");
    const LayerBlob t = Convert(twice.Finish(), "twice");
    const LayerBlob m =
        plain_middle ? Gzip(middle.Finish()) : Convert(middle.Finish(), "mid");
    const std::string name = plain_middle ? "twice-p" : "twice-l";
    const std::string ref = Push("test/" + name, {t, m, t});
    const std::string mnt = dir_ + "/mnt-" + name;
    testing::RunResult r = Mount(ref, mnt, {"--no-background-fetch"});
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    const std::string pulled = mnt + "-pulled";
    r = testing::Run({bin_, "pull", ref, pulled, "--ca-file", reg_->ca_file()});
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    for (const std::string& root : {mnt, pulled}) {
      SCOPED_TRACE(root);
      EXPECT_EQ(ReadAll(root + "/a"), "a");
      EXPECT_EQ(ReadAll(root + "/d/x"), "x");
      EXPECT_EQ(ReadAll(root + "/m"), "m");
    }
    TreeCompareOptions cmp;
    cmp.label = "lazy mount vs full pull";
    cmp.skip_dir_nlink = true;
    cmp.skip_mtime = {""};
    CompareTrees(mnt, pulled, cmp);
    r = testing::Run({bin_, "unmount", mnt});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    mounts_.clear();
  }
}

// The prioritized files (before the prefetch landmark) are fetched before
// `mount --wait-prefetch` returns, without any read.
TEST_F(RegistryMountTest, WaitPrefetchFetchesThePrioritizedFiles) {
  LayerBlob l = HotAndCold("prio", 2 << 20, 7, 8);
  const std::string ref = Push("test/prio", {l});
  const std::string mnt = dir_ + "/mnt-prio";
  testing::RunResult m =
      Mount(ref, mnt, {"--wait-prefetch=30", "--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  const std::string state = absl::StrCat(
      mnt, "/.stargz-snapshotter/", Sha256::Of(l.bytes).ToString(), ".json");
  const double pct = FetchedPercent(state);
  // About half the blob (data/hot), not all of it.
  EXPECT_GT(pct, 40) << ReadAll(state);
  EXPECT_LT(pct, 60) << ReadAll(state);
  EXPECT_EQ(ReadAll(mnt + "/data/hot"), Payload(2 << 20, 7));
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  // The prefetch began as soon as the TOC was verified: its reads found
  // pieces already on their way ("(K pieces fetched ahead ...").
  auto ahead = [&] {
    const std::string log = ReadAll(cache_dir() + "/lazypull.log");
    const size_t at = log.rfind("chunks (");
    if (at == std::string::npos) return -1;
    return std::atoi(log.c_str() + at + 8);
  };
  EXPECT_GT(ahead(), 0) << ReadAll(cache_dir() + "/lazypull.log");
  // From the descriptor's hint, it began when the tail read was in.
  EXPECT_TRUE(l.annotations.count("io.lazypull.prefetch-size"));
  EXPECT_TRUE(absl::StrContains(ReadAll(cache_dir() + "/lazypull.log"),
                                "on its way since the tail read"))
      << ReadAll(cache_dir() + "/lazypull.log");
  // Not with --no-early-prefetch.
  std::filesystem::remove_all(cache_dir());
  m = Mount(
      ref, mnt,
      {"--wait-prefetch=30", "--no-background-fetch", "--no-early-prefetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/data/hot"), Payload(2 << 20, 7));
  u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  EXPECT_EQ(ahead(), 0) << ReadAll(cache_dir() + "/lazypull.log");
}

// The descriptor's hints are only hints: a prefetch size and a TOC offset
// that lie cost bytes and a second read, never a wrong byte.
TEST_F(RegistryMountTest, LyingHintsCostBytesNotCorrectness) {
  LayerBlob l = HotAndCold("lie", 1 << 20, 3, 4);
  ASSERT_TRUE(l.annotations.count("io.lazypull.toc-offset"));
  const uint64_t size = l.bytes.size();
  l.annotations["io.lazypull.prefetch-size"] = absl::StrCat(size);
  l.annotations["io.lazypull.toc-offset"] = absl::StrCat(size - 1);
  const std::string ref = Push("test/lie", {l});
  const std::string mnt = dir_ + "/mnt-lie";
  testing::RunResult m =
      Mount(ref, mnt, {"--wait-prefetch=30", "--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/data/hot"), Payload(1 << 20, 3));
  EXPECT_EQ(ReadAll(mnt + "/data/cold"), Payload(1 << 20, 4));
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  const std::string log = ReadAll(cache_dir() + "/lazypull.log");
  EXPECT_TRUE(absl::StrContains(
      log, absl::StrCat("io.lazypull.prefetch-size annotation says ", size)))
      << log;
  EXPECT_TRUE(absl::StrContains(log, "the TOC wins")) << log;
}

// A layer pulled in full (plain gzip) with a hardlink to a file of a lazy
// layer below: the file is copied up, so the merged root shows it.
TEST_F(RegistryMountTest, HardlinkIntoALazyLowerLayerIsCopiedUp) {
  TarBuilder b1;
  b1.Dir("./");
  b1.Dir("data/");
  b1.File("data/target", Payload(50 << 10, 21), 0750);
  TarBuilder b2;
  b2.Dir("data/");
  b2.Hardlink("data/link", "data/target");
  b2.File("data/own", "own\n");
  const std::string ref =
      Push("test/hardlink", {Convert(b1.Finish(), "hl1"), Gzip(b2.Finish())});
  const std::string mnt = dir_ + "/mnt-hl";
  testing::RunResult m = Mount(ref, mnt, {"--no-background-fetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/data/link"), Payload(50 << 10, 21));
  EXPECT_EQ(ReadAll(mnt + "/data/target"), Payload(50 << 10, 21));
  struct stat st;
  ASSERT_EQ(stat((mnt + "/data/link").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  EXPECT_TRUE(
      absl::StrContains(ReadAll(cache_dir() + "/lazypull.log"), "made a copy"));
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// Layers written with a min chunk size (small files sharing gzip members /
// zstd frames, innerOffset in the TOC), both formats in one image: reads in
// any order give the exact bytes, and background fetch completes each
// layer and checks its whole blob.
TEST_F(RegistryMountTest, LayersWithSharedMembersMountAndComplete) {
  std::vector<LayerBlob> layers;
  std::vector<std::pair<std::string, std::string>> files;
  for (const char* format : {"estargz", "zstd:chunked"}) {
    TarBuilder b;
    b.Dir("./");
    const std::string d = format[0] == 'e' ? "gz" : "zst";
    b.Dir(d + "/");
    for (int i = 0; i < 60; ++i) {
      files.emplace_back(absl::StrCat(d, "/f", i),
                         Payload(300 + 97 * i, 40 + i + 100 * layers.size()));
      b.File(files.back().first, files.back().second);
    }
    files.emplace_back(d + "/big", Payload(200 << 10, 7 + layers.size()));
    b.File(files.back().first, files.back().second);
    layers.push_back(Convert(b.Finish(), "shared-" + d,
                             {"--format", format, "--chunk-size", "64K",
                              "--min-chunk-size", "16K"}));
  }
  const std::string ref = Push("test/shared", layers);
  const std::string mnt = dir_ + "/mnt-shared";
  testing::RunResult m = Mount(ref, mnt, {});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  // One watchdog guards the serving process's pushes (both layers).
  const pid_t server = ServerPid(m);
  ASSERT_GT(server, 0) << m.out;
  EXPECT_EQ(testing::WatchdogsOf(server).size(), 1u);
  for (auto it = files.rbegin(); it != files.rend(); ++it) {
    EXPECT_EQ(ReadAll(mnt + "/" + it->first), it->second) << it->first;
  }
  for (const LayerBlob& l : layers) {
    const std::string marker =
        absl::StrCat(cache_dir(), "/verified/", Sha256::Of(l.bytes).Hex());
    for (int i = 0; i < 300 && access(marker.c_str(), F_OK) != 0; ++i) {
      usleep(100 * 1000);
    }
    EXPECT_EQ(access(marker.c_str(), F_OK), 0)
        << ReadAll(cache_dir() + "/lazypull.log");
  }
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

// An image mount taken away by hand (umount, umount -l: not `lazypull
// unmount`) ends its serving process, its watchdog and its layers' mounts.
TEST_F(RegistryMountTest, PlainUmountEndsTheServer) {
  const std::vector<LayerBlob> layers = StandardLayers();
  const std::string ref = Push("test/plain-umount", layers);
  for (const bool lazy : {false, true}) {
    SCOPED_TRACE(lazy ? "umount -l" : "umount");
    const std::string mnt =
        absl::StrCat(dir_, "/mnt-plain-umount-", static_cast<int>(lazy));
    testing::RunResult m = Mount(ref, mnt, {});
    ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
    const pid_t server = ServerPid(m);
    ASSERT_GT(server, 0) << m.out;
    const std::vector<pid_t> watchdogs = testing::WatchdogsOf(server);
    EXPECT_EQ(ReadAll(mnt + "/data/small"), "small");
    const std::string run_dir = absl::StrCat(cache_dir(), "/mounts/", server);
    int layer_mounts = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
      layer_mounts += testing::MountCount(absl::StrCat(run_dir, "/", i));
    }
    EXPECT_GT(layer_mounts, 0);
    ASSERT_EQ(umount2(mnt.c_str(), lazy ? MNT_DETACH : 0), 0)
        << strerror(errno);
    EXPECT_TRUE(testing::WaitProcessGone(server, std::chrono::seconds(10)))
        << ReadAll(cache_dir() + "/lazypull.log");
    for (pid_t w : watchdogs) {
      EXPECT_TRUE(testing::WaitProcessGone(w, std::chrono::seconds(5)));
    }
    for (size_t i = 0; i < layers.size(); ++i) {
      EXPECT_EQ(testing::MountCount(absl::StrCat(run_dir, "/", i)), 0) << i;
    }
    EXPECT_TRUE(absl::StrContains(ReadAll(cache_dir() + "/lazypull.log"),
                                  "was unmounted (not by lazypull unmount)"));
    // A new mount at the same place works.
    m = Mount(ref, mnt, {});
    ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
    EXPECT_EQ(ReadAll(mnt + "/data/small"), "small");
    testing::RunResult u = testing::Run({bin_, "unmount", mnt});
    EXPECT_EQ(u.exit_code, 0) << u.err;
  }
  mounts_.clear();
}

// Every fetch knob is a flag: HTTP/1.1 pools, one stream, no coalescing,
// small requests and a background rate cap still give the same bytes; bad
// values are usage errors.
TEST_F(RegistryMountTest, FetchKnobsAreFlags) {
  TarBuilder b;
  b.Dir("./");
  b.Dir("data/");
  b.File("data/a", Payload(600 << 10, 11));
  b.File("data/b", Payload(300 << 10, 12));
  LayerBlob l = Convert(b.Finish(), "knobs", {"--chunk-size", "64K"});
  const std::string ref = Push("test/knobs", {l});
  const std::string mnt = dir_ + "/mnt-knobs";
  testing::RunResult m =
      Mount(ref, mnt, {"--http1.1", "--max-requests",
                       "2",         "--reserved-on-demand",
                       "1",         "--prefetch-streams",
                       "1",         "--background-streams",
                       "1",         "--coalesce-gap",
                       "0",         "--max-request-size",
                       "16K",       "--readahead-chunks",
                       "0",         "--background-bytes",
                       "64K",       "--background-rate",
                       "2M",        "--max-connections-per-host",
                       "2",         "--background-after-misses",
                       "0",         "--background-quiet-ms",
                       "50",        "--stall-timeout",
                       "20",        "--min-speed",
                       "1"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt + "/data/a"), Payload(600 << 10, 11));
  EXPECT_EQ(ReadAll(mnt + "/data/b"), Payload(300 << 10, 12));
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  // `pull` takes --http1.1 too (every networked command does).
  const std::string pulled = dir_ + "/pulled-knobs";
  testing::RunResult p = testing::Run(
      {bin_, "pull", ref, pulled, "--ca-file", reg_->ca_file(), "--http1.1"});
  ASSERT_EQ(p.exit_code, 0) << p.err;
  EXPECT_EQ(ReadAll(pulled + "/data/b"), Payload(300 << 10, 12));
  // Blob requests by protocol, from line `since` of the registry's log.
  auto blob_requests = [&](size_t since) {
    std::map<std::string, int> n;
    size_t i = 0;
    for (absl::string_view line : absl::StrSplit(reg_->Log(), '\n')) {
      if (i++ < since || !absl::StrContains(line, "\"lazypull/") ||
          !absl::StrContains(line, "/v2/test/knobs/blobs/")) {
        continue;
      }
      ++n[absl::StrContains(line, " HTTP/1.1\"")   ? "1.1"
          : absl::StrContains(line, " HTTP/2.0\"") ? "2"
                                                   : std::string(line)];
    }
    return n;
  };
  std::map<std::string, int> all = blob_requests(0);
  EXPECT_GE(all["1.1"], 4);
  EXPECT_EQ(all.size(), 1u) << "all HTTP/1.1 with --http1.1";

  // --background-http1.1: background fetch alone on HTTP/1.1; the
  // manifest, the TOC and the prefetch stay on HTTP/2.
  std::filesystem::remove_all(cache_dir());
  const std::string log_before = reg_->Log();
  const size_t before = std::count(log_before.begin(), log_before.end(), '\n');
  const std::string mnt_bg = dir_ + "/mnt-knobs-bg";
  m = Mount(ref, mnt_bg,
            {"--background-http1.1", "--background-after-misses", "0",
             "--max-request-size", "64K", "--span-size", "64K"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  EXPECT_EQ(ReadAll(mnt_bg + "/data/a"), Payload(600 << 10, 11));
  // Background fetch completes the layer (and checks its digest).
  const std::string marker =
      absl::StrCat(cache_dir(), "/verified/", Sha256::Of(l.bytes).Hex());
  for (int i = 0; i < 300 && access(marker.c_str(), F_OK) != 0; ++i) {
    usleep(100 * 1000);
  }
  const std::string log = ReadAll(cache_dir() + "/lazypull.log");
  EXPECT_EQ(access(marker.c_str(), F_OK), 0) << log;
  u = testing::Run({bin_, "unmount", mnt_bg});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
  std::map<std::string, int> bg = blob_requests(before);
  EXPECT_GE(bg["1.1"], 1) << log;
  EXPECT_GE(bg["2"], 1) << log;
  EXPECT_EQ(bg.size(), 2u);

  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{
           {"--max-requests", "0"},
           {"--max-requests", "2", "--reserved-on-demand", "2"},
           {"--coalesce-gap", "lots"},
           {"--max-request-size", "100"},
           {"--prefetch-streams", "-1"},
           {"--max-streams-per-connection", "0"},
           {"--background-bytes", "0"},
           {"--background-gain", "0.5"},
           {"--background-after-misses", "-3"},
           {"--background-quiet-ms", "soon"},
           {"--stall-timeout", "0"},
           {"--min-speed", "0"},
           {"--span-size", "1"}}) {
    testing::RunResult r = Mount(ref, dir_ + "/mnt-bad", bad);
    EXPECT_EQ(r.exit_code, 2) << bad[0] << ": " << r.err;
    EXPECT_TRUE(
        absl::StrContains(r.err, bad.back() == "2" ? "reserved" : bad[0]))
        << r.err;
  }
}

// Background fetch waits for a starting program (a quiet spell or a few
// misses), except on a link its TOC reads already measured at the stream
// rate: there it starts at once. --background-after-misses keeps the wait.
TEST_F(RegistryMountTest, AFastLinkStartsBackgroundFetchAtOnce) {
  TarBuilder b;
  b.Dir("./");
  b.File("a", Payload(300 << 10, 21));
  LayerBlob l = Convert(b.Finish(), "fast", {"--chunk-size", "64K"});
  const std::string ref = Push("test/fast", {l});
  const std::string marker =
      absl::StrCat(cache_dir(), "/verified/", Sha256::Of(l.bytes).Hex());
  // Nothing reads, and the quiet spell is 10 minutes: background fetch
  // starts now only because the link counts as fast.
  struct Case {
    std::vector<std::string> flags;
    bool starts;
  };
  const std::vector<Case> cases = {
      {{"--background-stream-rate", "1"}, true},  // any link is "fast"
      {{"--background-stream-rate", "1000G"}, false},
      {{"--background-stream-rate", "1", "--background-after-misses", "4"},
       false}};
  int n = 0;
  for (const Case& c : cases) {
    std::filesystem::remove_all(cache_dir());
    const std::string mnt = absl::StrCat(dir_, "/mnt-fast-", n++);
    std::vector<std::string> flags = c.flags;
    flags.insert(flags.end(), {"--background-quiet-ms", "600000"});
    testing::RunResult m = Mount(ref, mnt, flags);
    ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
    for (int i = 0;
         i < (c.starts ? 300 : 20) && access(marker.c_str(), F_OK) != 0; ++i) {
      usleep(100 * 1000);
    }
    const std::string log = ReadAll(cache_dir() + "/lazypull.log");
    EXPECT_EQ(access(marker.c_str(), F_OK) == 0, c.starts) << c.flags[1] << log;
    EXPECT_EQ(absl::StrContains(log,
                                "background fetch starts (the link is "
                                "fast: measured at "),
              c.starts)
        << c.flags[1] << log;
    EXPECT_EQ(absl::StrContains(log, "background fetch starts"), c.starts)
        << c.flags[1] << log;
    EXPECT_EQ(ReadAll(mnt + "/a"), Payload(300 << 10, 21));
    testing::RunResult u = testing::Run({bin_, "unmount", mnt});
    EXPECT_EQ(u.exit_code, 0) << u.err;
    mounts_.clear();
  }
}

// Range faults between the mount and the registry fail that read (EIO) or
// are recovered from; never a wrong byte, and nothing bad is cached.
TEST_F(RegistryMountTest, RangeFaultsFailTheReadOrRecover) {
  RegistryServerOptions o;
  o.work_dir = dir_ + "/plain-registry";
  mkdir(o.work_dir.c_str(), 0755);
  auto plain = RegistryServer::Start(o);
  ASSERT_TRUE(plain.ok()) << plain.status();
  std::vector<LayerBlob> layers = StandardLayers();
  layers.pop_back();  // the two lazy layers
  Push("test/faults", layers, plain->get());
  proxy::FaultProxy::Options po;
  po.upstream_port = (*plain)->port();
  auto fp = proxy::FaultProxy::Start(po);
  ASSERT_TRUE(fp.ok()) << fp.status();
  const std::string ref =
      absl::StrCat("127.0.0.1:", (*fp)->port(), "/test/faults:v1");
  const std::string mnt = dir_ + "/mnt-faults";
  mkdir(mnt.c_str(), 0755);
  testing::RunResult m = testing::Run({bin_, "mount", ref, mnt, "--plain-http",
                                       "--no-background-fetch", "--cache-dir",
                                       dir_ + "/cache-faults"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  mounts_.push_back(mnt);
  const std::string want = Payload(3 << 20, 1);
  // Reads data/big with read(2); false on an error (the errno in *err).
  int err = 0;
  auto read_big = [&](std::string* out) {
    out->clear();
    err = 0;
    int fd = open((mnt + "/data/big").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      err = errno;
      return false;
    }
    char buf[1 << 16];
    while (true) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n < 0) {
        err = errno;
        break;
      }
      if (n == 0) break;
      out->append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return err == 0 && out->size() == want.size();
  };
  auto set = [&](const std::string& rules) {
    auto r = proxy::ParseFaultRules(rules);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE((*fp)->SetRules(std::move(*r)).ok());
  };
  std::string got;
  for (const char* rule :
       {"GET /blobs/ every full-200", "GET /blobs/ every shift-content-range=1",
        "GET /blobs/ every flip-byte=100"}) {
    set(rule);
    got.clear();
    const bool ok = read_big(&got);
    EXPECT_FALSE(ok) << rule << ": the read should fail";
    EXPECT_EQ(err, EIO) << rule;
    // Whatever came back before the failure is a prefix of the truth.
    EXPECT_EQ(got, want.substr(0, got.size())) << rule;
    EXPECT_GT((*fp)->counters().faults, 0u) << rule;
  }
  // A connection dropped mid-body: the HTTP engine resumes the range.
  set("GET /blobs/ first=1 drop-after=1000");
  EXPECT_TRUE(read_big(&got));
  EXPECT_TRUE(got == want) << "wrong bytes after a resumed transfer";
  set("");
  EXPECT_TRUE(read_big(&got));
  EXPECT_TRUE(got == want);
  testing::RunResult u = testing::Run({bin_, "unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();

  // A registry that answers every range request with the whole blob (a
  // pull-through cache, say) cannot be pulled lazily: each layer is pulled
  // in full instead, saying why, and the image still mounts.
  set("GET /blobs/ every full-200");
  const std::string mnt2 = dir_ + "/mnt-no-ranges";
  mkdir(mnt2.c_str(), 0755);
  m = testing::Run({bin_, "mount", ref, mnt2, "--plain-http", "--cache-dir",
                    dir_ + "/cache-no-ranges"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  mounts_.push_back(mnt2);
  const std::string log = m.err + m.out;
  EXPECT_TRUE(absl::StrContains(log,
                                "is pulled in full: its registry does "
                                "not serve byte ranges"))
      << log;
  EXPECT_TRUE(ReadAll(mnt2 + "/data/big") == want);
  u = testing::Run({bin_, "unmount", mnt2});
  EXPECT_EQ(u.exit_code, 0) << u.err;
  mounts_.clear();
}

}  // namespace
}  // namespace lazypull
