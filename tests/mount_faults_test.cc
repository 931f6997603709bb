// `lazypull mount IMAGE_REF` (the real binary, as root) of an image of two
// eStargz layers in a docker-registry behind the fault proxy, with faults
// injected mid-session, after the mount is up (issue 7): each read either
// recovers (signed URL re-resolved, token replaced, Retry-After waited out)
// or fails with EIO and a log line in the serving process's log, while
// cached files keep reading; never a wrong byte.
//
// The range faults RegistryMountTest.RangeFaultsFailTheReadOrRecover covers
// (200 for a range, shifted Content-Range, flipped byte, one dropped
// connection) are not repeated here.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/testing/tar_builder.h"
#include "fetch/testing/fault_registry.h"
#include "fetch/testing/registry_fixture.h"
#include "fetch/testing/token_server.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull {
namespace {

using testing::FaultRegistry;
using testing::RegistryServerOptions;
using testing::TarBuilder;
using testing::TestDir;

constexpr int kFiles = 8;

// Printable pseudo-random bytes, different for every seed.
std::string Payload(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>('a' + (x % 26));
  }
  return s;
}

std::string FileName(int i) { return absl::StrCat("data/f", i); }
std::string FileContent(int i) { return Payload(150000 + i, 10 + i); }

// Two eStargz layers (64 KiB chunks): data/f0..f7 in the bottom one, each
// read cold by one step of a test; with `prioritized`, all of them before
// its prefetch landmark.
std::vector<testing::TestLayer> Layers(bool prioritized = false) {
  TarBuilder b0;
  b0.Dir("./");
  b0.Dir("data/");
  for (int i = 0; i < kFiles; ++i) b0.File(FileName(i), FileContent(i));
  TarBuilder b1;
  b1.Dir("etc/");
  b1.File("etc/motd", "hello from layer 1\n");
  std::vector<std::string> first;
  for (int i = 0; prioritized && i < kFiles; ++i) first.push_back(FileName(i));
  std::vector<testing::TestLayer> out;
  for (const std::string& tar : {b0.Finish(), b1.Finish()}) {
    auto l = testing::EstargzTestLayer(
        tar, 64 << 10, out.empty() ? first : std::vector<std::string>());
    EXPECT_TRUE(l.ok()) << l.status();
    if (l.ok()) out.push_back(*std::move(l));
  }
  return out;
}

class MountFaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Before any thread: moves this process into a mount namespace of its
    // own.
    LAZYPULL_SKIP_WITHOUT_FUSE();
    bin_ = testing::LazypullBinary();
    dir_ = TestDir("work");
  }

  void TearDown() override {
    for (const std::string& m : mounts_) {
      testing::Run({bin_, "unmount", m, "--force"});
    }
  }

  // A plain registry behind the proxy, with the image pushed (Layers(
  // prioritized)).
  void StartRegistry(bool prioritized = false) {
    RegistryServerOptions o;
    o.work_dir = dir_ + "/registry";
    mkdir(o.work_dir.c_str(), 0755);
    auto r = FaultRegistry::Start(o);
    ASSERT_TRUE(r.ok()) << r.status();
    reg_ = *std::move(r);
    auto img = reg_->Push("faults/lazy", Layers(prioritized));
    ASSERT_TRUE(img.ok()) << img.status();
    image_ = *std::move(img);
  }

  std::string Ref() const { return reg_->host() + "/faults/lazy:v1"; }
  std::string cache_dir() const { return dir_ + "/cache"; }
  std::string mnt() const { return dir_ + "/mnt"; }

  // Mounts the image lazily: no background fetch and no directory
  // prefetch, so nothing is fetched but the TOCs until a file is read, and
  // each file's first read is a request of its own (or with `flags`
  // instead of those two).
  void Mount(std::vector<std::string> flags = {"--no-background-fetch",
                                               "--dir-prefetch", "0"}) {
    mkdir(mnt().c_str(), 0755);
    std::vector<std::string> args = {
        bin_,          "mount",        Ref(),
        mnt(),         "--plain-http", "--platform",
        "linux/amd64", "--hosts-dir",  dir_ + "/no-hosts",
        "--cache-dir", cache_dir()};
    args.insert(args.end(), flags.begin(), flags.end());
    testing::RunResult r = testing::Run(args);
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    mounts_.push_back(mnt());
  }

  void Unmount() {
    testing::RunResult u = testing::Run({bin_, "unmount", mnt()});
    EXPECT_EQ(u.exit_code, 0) << u.err;
    mounts_.clear();
  }

  void SetRules(absl::string_view rules) {
    absl::Status st = reg_->SetRules(rules);
    ASSERT_TRUE(st.ok()) << st;
  }

  // Reads file i through the mount; expects its exact content.
  void ExpectReads(int i) {
    testing::FileContent f = testing::ReadWholeFile(mnt() + "/" + FileName(i));
    EXPECT_EQ(f.error, 0) << FileName(i) << ": " << strerror(f.error);
    EXPECT_TRUE(f.data == FileContent(i))
        << FileName(i) << ": wrong bytes (" << f.data.size() << ")";
  }

  // After a stream met `fault`: a 200 to its range left the rest to spans
  // (says `log`), and every file is cached: they read with the registry
  // refusing blobs. Unmounts.
  void ExpectStreamRecoveredAndAllCached(absl::string_view fault,
                                         const std::string& log) {
    if (fault == "full-200") {
      EXPECT_TRUE(absl::StrContains(log, "the rest goes in spans")) << log;
    }
    SetRules("GET /blobs/ every status=404");
    for (int i = 0; i < kFiles; ++i) ExpectReads(i);
    EXPECT_EQ(reg_->Rule(0).matched, 0u);
    SetRules("");
    Unmount();
  }

  std::string Log() const {
    std::ifstream f(cache_dir() + "/lazypull.log");
    return std::string((std::istreambuf_iterator<char>(f)),
                       std::istreambuf_iterator<char>());
  }

  std::string bin_, dir_;
  std::unique_ptr<FaultRegistry> reg_;
  testing::TestImage image_;
  std::vector<std::string> mounts_;
};

// Blob GETs are redirected to storage URLs valid for 1 s. A URL cached by
// the mount process and then expired is refused (403) and resolved again.
TEST_F(MountFaultsTest, ExpiredSignedUrlIsResolvedAgain) {
  ASSERT_NO_FATAL_FAILURE(StartRegistry());
  SetRules("GET /blobs/ every redirect=1s");
  ASSERT_NO_FATAL_FAILURE(Mount());
  ExpectReads(0);
  const uint64_t redirects = reg_->Rule(0).fired;
  const uint64_t denied = reg_->proxy().counters().blob_denied;
  EXPECT_GT(redirects, 0u);
  // The URL cached by then (resolved, or reused, within the last second)
  // expires.
  absl::SleepFor(absl::Milliseconds(1200));
  ExpectReads(1);
  proxy::FaultCounters c = reg_->proxy().counters();
  EXPECT_GT(c.blob_denied, denied) << "the expired URL was not tried";
  EXPECT_GT(reg_->Rule(0).fired, redirects) << "it was not resolved again";
  EXPECT_EQ(c.blob_authorized, 0u);
  Unmount();
}

// Token auth: tokens the registry accepts for 2 s only, while the client is
// told 300 s. A read after that gets a 401 from the registry mid-session;
// the mount process drops the token, fetches another and the read succeeds.
TEST_F(MountFaultsTest, TokenRefusedMidSessionIsReplaced) {
  const std::string tok = TestDir("token");
  ASSERT_TRUE(testing::MakeSelfSignedCert(tok + "/signer.crt",
                                          tok + "/signer.key", "signer")
                  .ok());
  const std::string storage = tok + "/storage";
  mkdir(storage.c_str(), 0755);
  {
    // Pushed without auth; served below with token auth from the same
    // storage.
    RegistryServerOptions plain;
    plain.work_dir = TestDir("push-registry");
    plain.storage_dir = storage;
    auto push = testing::RegistryServer::Start(plain);
    ASSERT_TRUE(push.ok()) << push.status();
    auto img = testing::PushTestImage(tok + "/layout", (*push)->host(),
                                      "faults/lazy", "v1", Layers());
    ASSERT_TRUE(img.ok()) << img.status();
  }
  testing::TokenServerOptions to;
  to.key_file = tok + "/signer.key";
  to.cert_file = tok + "/signer.crt";
  to.user = "bob";
  to.password = "pw";
  auto tokens = testing::TokenServer::Start(to);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  (*tokens)->set_lifetimes(/*expires_in=*/300, /*valid_for=*/2);
  RegistryServerOptions o;
  o.work_dir = TestDir("token-registry");
  o.storage_dir = storage;
  o.token = RegistryServerOptions::Token{(*tokens)->realm(), to.service,
                                         to.issuer, to.cert_file};
  auto r = FaultRegistry::Start(o);
  ASSERT_TRUE(r.ok()) << r.status();
  reg_ = *std::move(r);
  const std::string cfg = TestDir("docker");
  std::ofstream(cfg + "/config.json")
      << "{\"auths\":{\"" << reg_->host() << "\":{\"auth\":\""
      << absl::Base64Escape("bob:pw") << "\"}}}";
  setenv("DOCKER_CONFIG", cfg.c_str(), 1);
  Mount();
  unsetenv("DOCKER_CONFIG");
  ASSERT_FALSE(HasFatalFailure());
  ExpectReads(0);
  // Every token issued so far is older than this.
  const absl::Time read = absl::Now();
  const int issued = (*tokens)->issued();
  EXPECT_GE(issued, 1);
  auto refusals = [&] {
    int n = 0;
    for (absl::string_view line :
         absl::StrSplit(reg_->registry().Log(), '\n')) {
      if (absl::StrContains(line, "GET /v2/faults/lazy/blobs/") &&
          absl::StrContains(line, "\" 401 ")) {
        ++n;
      }
    }
    return n;
  };
  const int refused_before = refusals();
  absl::SleepFor(read + absl::Milliseconds(2300) - absl::Now());
  ExpectReads(1);
  EXPECT_EQ((*tokens)->issued(), issued + 1)
      << "the refused token was not replaced (once)";
  EXPECT_GT(refusals(), refused_before)
      << "the registry never refused the old token:\n"
      << reg_->registry().Log();
  Unmount();
}

// 429 and 503 with Retry-After on range requests: the read waits and
// succeeds.
TEST_F(MountFaultsTest, RetryAfterOnRangesIsWaitedOut) {
  ASSERT_NO_FATAL_FAILURE(StartRegistry());
  ASSERT_NO_FATAL_FAILURE(Mount());
  int file = 0;
  for (const char* status : {"429", "503"}) {
    SCOPED_TRACE(status);
    SetRules(
        absl::StrCat("GET /blobs/ first=1 status=", status, " retry-after=1"));
    const absl::Time start = absl::Now();
    ExpectReads(file++);
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(950))
        << "Retry-After: 1 was not honoured";
    EXPECT_EQ(reg_->Rule(0).fired, 1u);
    EXPECT_GE(reg_->Rule(0).matched, 2u);
  }
  Unmount();
}

// Faults that outlast the retries fail the read with EIO (whatever the HTTP
// status: not EACCES for a 403, ENOENT for a 404 or ENOMEM for a 429), with
// a log line naming the file; files already cached keep reading, and the
// failed file reads once the registry is healthy again.
TEST_F(MountFaultsTest, PersistentFaultsFailTheReadWithEio) {
  ASSERT_NO_FATAL_FAILURE(StartRegistry());
  ASSERT_NO_FATAL_FAILURE(Mount());
  ExpectReads(0);  // cached from now on
  int file = 1;
  for (const char* fault :
       {"status=500", "status=503 retry-after=0", "status=429 retry-after=0",
        "status=403", "status=404", "drop-after=-1"}) {
    SCOPED_TRACE(fault);
    ASSERT_LT(file, kFiles);
    SetRules(absl::StrCat("GET /blobs/ every ", fault));
    const std::string name = FileName(file);
    testing::FileContent f = testing::ReadWholeFile(mnt() + "/" + name);
    EXPECT_EQ(f.error, EIO) << strerror(f.error);
    EXPECT_GE(reg_->Rule(0).fired, 1u);
    EXPECT_TRUE(absl::StrContains(Log(), absl::StrCat("\"", name, "\"")))
        << "no log line about " << name << ":\n"
        << Log();
    ExpectReads(0);
    ++file;
  }
  EXPECT_TRUE(absl::StrContains(Log(), "HTTP 500")) << Log();
  EXPECT_TRUE(absl::StrContains(Log(), "gave up after")) << Log();
  SetRules("");
  for (int i = 0; i < file; ++i) ExpectReads(i);
  Unmount();
}

// Background fetch's stream (`--background-stream-rate 0`: from its start)
// through faults: a connection dropped mid-body or a 500 is retried, a 200
// to its range leaves the layer to spans; either way both layers complete,
// their whole blobs verified, and every file reads right from the cache.
TEST_F(MountFaultsTest, BackgroundStreamFaultsRecover) {
  ASSERT_NO_FATAL_FAILURE(StartRegistry());
  for (const char* fault : {"drop-after=20000", "status=500", "full-200"}) {
    SCOPED_TRACE(fault);
    std::filesystem::remove_all(cache_dir());  // a cold cache, a new log
    // Background fetch starts once no read has missed for 3 s: the rule is
    // in place by then, and the stream's GET is the first of the bottom
    // layer's blob that it sees.
    ASSERT_NO_FATAL_FAILURE(Mount(
        {"--background-stream-rate", "0", "--background-quiet-ms", "3000"}));
    SetRules(absl::StrCat("GET /blobs/", image_.layers[0].digest.ToString(),
                          " first=1 ", fault));
    auto verified = [](const std::string& log) {
      std::vector<absl::string_view> parts =
          absl::StrSplit(log, "whole blob verified");
      return parts.size() - 1;
    };
    std::string log;
    for (int i = 0; i < 300 && verified(log = Log()) < 2; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(verified(log), 2u) << "both layers complete and verified:\n"
                                 << log;
    EXPECT_TRUE(absl::StrContains(log, "background fetch streams the rest"))
        << log;
    EXPECT_EQ(reg_->Rule(0).fired, 1u) << reg_->Rule(0).matched;
    ExpectStreamRecoveredAndAllCached(fault, log);
  }
}

// The prefetch range's stream (`--prefetch-stream-rate 0` with no early
// prefetch: the whole range in one request from the start), clean and
// through faults: a connection dropped mid-body or a 500 is retried, a 200
// to its range leaves the range to spans. Either way `--wait-prefetch`
// returns with every prioritized file cached: they read with the registry
// refusing blobs.
TEST_F(MountFaultsTest, PrefetchStreamFaultsRecover) {
  ASSERT_NO_FATAL_FAILURE(StartRegistry(/*prioritized=*/true));
  const std::string blob =
      absl::StrCat("GET /blobs/", image_.layers[0].digest.ToString());
  // The bottom layer's blob GETs: the mount's tail read, then the stream.
  for (const char* fault : {"", "drop-after=20000", "status=500", "full-200"}) {
    SCOPED_TRACE(fault);
    std::filesystem::remove_all(cache_dir());  // a cold cache, a new log
    // (No fault: a rule that never fires, to count the GETs.)
    const bool clean = *fault == '\0';
    SetRules(
        absl::StrCat(blob, clean ? " nth=1000 status=500" : " nth=2 ", fault));
    ASSERT_NO_FATAL_FAILURE(Mount(
        {"--prefetch-stream-rate", "0", "--no-early-prefetch",
         "--wait-prefetch", "--no-background-fetch", "--dir-prefetch", "0"}));
    const std::string log = Log();
    EXPECT_TRUE(absl::StrContains(log, "prefetch streams the rest")) << log;
    if (clean) {
      EXPECT_EQ(reg_->Rule(0).matched, 2u) << "one request for the range";
    } else {
      EXPECT_EQ(reg_->Rule(0).fired, 1u) << reg_->Rule(0).matched;
    }
    ExpectStreamRecoveredAndAllCached(fault, log);
  }
}

}  // namespace
}  // namespace lazypull
