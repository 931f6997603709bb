// The registry client and the full pull against every fault the fault proxy
// injects between them and a real docker-registry (issue 6): each fault is
// recovered from, with the pulled tree exactly that of a pull without
// faults, or it fails with an error naming what failed, after a bounded
// number of requests (counted by the proxy), leaving DIR as it was.
//
// In process (PullImage with short retry backoffs) for most cases, and
// through the `lazypull pull` binary for its defaults and messages.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/testing/tar_builder.h"
#include "fetch/auth.h"
#include "fetch/curl_http.h"
#include "fetch/image_puller.h"
#include "fetch/reference.h"
#include "fetch/registry.h"
#include "fetch/testing/fault_registry.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull {
namespace {

using testing::FaultRegistry;
using testing::TarBuilder;
using testing::TarSpec;
using testing::TestImage;

// Incompressible bytes, so that a layer is as big on the wire as on disk.
std::string RandomBytes(size_t n, uint64_t seed) {
  std::string s(n, '\0');
  uint64_t x = 88172645463325252ull ^ (seed * 0x9e3779b97f4a7c15ull);
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  return s;
}

std::vector<std::string> LayerTars() {
  TarBuilder l1;
  l1.Dir("./");
  l1.Dir("etc/");
  l1.File("etc/passwd", "root:x:0:0::/root:/bin/sh\n");
  l1.File("etc/remove-me", "gone in layer 2");
  l1.Dir("data/");
  l1.File("data/big", RandomBytes(300000, 1));
  l1.Hardlink("data/big-link", "data/big");
  l1.Symlink("data/link", "big");
  l1.Dir("opq/");
  l1.File("opq/old", "old");
  l1.Dir("bin/");
  l1.File("bin/tool", "#!/bin/sh\necho tool\n", 0755);
  TarBuilder l2;
  l2.Dir("etc/");
  l2.File("etc/.wh.remove-me", "");
  l2.File("etc/motd", "layer 2\n");
  l2.Dir("opq/");
  l2.File("opq/.wh..wh..opq", "");
  l2.File("opq/new", "new");
  l2.Dir("data/");
  l2.File("data/medium", RandomBytes(100000, 2));
  TarBuilder l3;
  l3.Dir("etc/");
  l3.File("etc/motd", "layer 3\n");
  TarSpec t;
  t.name = "etc/owned";
  t.content = "owned by 1000";
  t.uid = t.gid = 1000;
  l3.Add(t);
  return {l1.Finish(), l2.Finish(), l3.Finish()};
}

// Entries of `parent` left by a pull (its work directory).
std::vector<std::string> Leftovers(const std::string& parent) {
  std::vector<std::string> out;
  DIR* d = opendir(parent.c_str());
  while (struct dirent* e = d ? readdir(d) : nullptr) {
    if (absl::StrContains(e->d_name, "lazypull-pull")) out.push_back(e->d_name);
  }
  if (d) closedir(d);
  return out;
}

class RegistryFaultsTest : public ::testing::Test {
 public:
  // One registry, image and reference pull for the whole test binary (see
  // SharedRegistry below).
  static void SetUpShared() {
    const char* tmp = getenv("TEST_TMPDIR");
    base_ = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/registry-faults");
    mkdir(base_.c_str(), 0755);
    testing::RegistryServerOptions o;
    o.work_dir = base_ + "/registry";
    mkdir(o.work_dir.c_str(), 0755);
    auto reg = FaultRegistry::Start(o);
    if (!reg.ok()) {
      setup_ = new absl::Status(reg.status());
      return;
    }
    reg_ = reg->release();
    std::vector<testing::TestLayer> layers;
    for (const std::string& tar : LayerTars()) {
      layers.push_back(testing::GzipTestLayer(tar));
    }
    auto img = reg_->Push("faults/app", layers);
    if (!img.ok()) {
      setup_ = new absl::Status(img.status());
      return;
    }
    img_ = new TestImage(*img);
    // The reference: a pull without faults.
    ref_dir_ = base_ + "/reference";
    auto http = CurlHttpTransport::Create();
    if (!http.ok()) {
      setup_ = new absl::Status(http.status());
      return;
    }
    absl::StatusOr<PullResult> r =
        PullTo(ClientOn(http->get(), nullptr).get(), ref_dir_);
    setup_ = new absl::Status(r.status());
  }
  static void TearDownShared() {
    delete reg_;
    reg_ = nullptr;
  }

 protected:
  void SetUp() override {
    ASSERT_NE(setup_, nullptr);
    ASSERT_TRUE(setup_->ok()) << *setup_;
    MakeTransport();
  }

  void MakeTransport() {
    auto h = CurlHttpTransport::Create();
    ASSERT_TRUE(h.ok()) << h.status();
    http_ = *std::move(h);
  }

  // A client of the image through the proxy: at most 4 attempts per
  // request, short backoffs.
  std::unique_ptr<RegistryClient> Client(
      const CredentialStore* creds = nullptr,
      const std::function<void(RegistryOptions*)>& adjust = nullptr) {
    return ClientOn(http_.get(), creds, adjust);
  }
  static std::unique_ptr<RegistryClient> ClientOn(
      HttpTransport* http, const CredentialStore* creds,
      const std::function<void(RegistryOptions*)>& adjust = nullptr) {
    static const CredentialStore* const no_creds = new CredentialStore(
        CredentialStore::Options{"/nonexistent-docker", "/nonexistent-auth"});
    RegistryOptions o;
    o.http = http;
    o.credentials = creds != nullptr ? creds : no_creds;
    o.hosts.plain_http = true;
    o.hosts.hosts_dir = base_ + "/no-hosts-dir";
    o.platform = *Platform::Parse("linux/amd64");
    o.retry.max_attempts = 4;
    o.retry.initial_backoff = absl::Milliseconds(5);
    o.retry.max_backoff = absl::Milliseconds(50);
    if (adjust) adjust(&o);
    auto ref = ImageReference::Parse(Ref());
    EXPECT_TRUE(ref.ok()) << ref.status();
    auto c = RegistryClient::Create(*ref, o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  static absl::StatusOr<PullResult> PullTo(RegistryClient* c,
                                           const std::string& dir) {
    if (c == nullptr) return absl::InternalError("no client");
    PullOptions po;
    po.same_owner = geteuid() == 0;
    return PullImage(c, dir, po);
  }

  static std::string Ref() { return reg_->host() + "/faults/app:v1"; }

  // A fresh parent directory for one pull; the pull's DIR is <it>/rootfs.
  std::string NewParent() {
    const std::string p = absl::StrCat(base_, "/pull-", ++pulls_);
    mkdir(p.c_str(), 0755);
    return p;
  }

  void SetRules(absl::string_view rules) {
    absl::Status st = reg_->SetRules(rules);
    ASSERT_TRUE(st.ok()) << st;
  }

  static std::string BlobPath(const testing::TestDescriptor& d) {
    return absl::StrCat("/blobs/", d.digest.ToString());
  }
  static std::string Layer(size_t i) { return BlobPath(img_->layers[i]); }
  static std::string Config() { return BlobPath(img_->config); }

  // The registry's access log lines for GETs of `path` (a repository path)
  // answered with `status`.
  static int AccessLogLines(const std::string& path, int status) {
    int n = 0;
    for (absl::string_view line :
         absl::StrSplit(reg_->registry().Log(), '\n')) {
      if (absl::StrContains(line, absl::StrCat("GET /v2/faults/app", path)) &&
          absl::StrContains(line, absl::StrCat("\" ", status, " "))) {
        ++n;
      }
    }
    return n;
  }

  // AccessLogLines once it reaches `want`, or after 5 s: the registry logs a
  // request after its response, which the client may have finished reading.
  static int AccessLogLinesReaching(const std::string& path, int status,
                                    int want) {
    int n = AccessLogLines(path, status);
    for (int i = 0; i < 500 && n < want; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
      n = AccessLogLines(path, status);
    }
    return n;
  }

  // The tree at `dir` is exactly the reference pull's.
  void ExpectReferenceTree(const std::string& dir) {
    testing::TreeCompareOptions o;
    o.label = "pull through faults vs pull without";
    testing::CompareTrees(dir, ref_dir_, o);
  }

  // A failed pull into <parent>/rootfs left nothing: no DIR, no work dir.
  void ExpectNothingWritten(const std::string& parent) {
    struct stat st;
    EXPECT_NE(lstat((parent + "/rootfs").c_str(), &st), 0)
        << "a failed pull created DIR";
    EXPECT_TRUE(Leftovers(parent).empty()) << Leftovers(parent)[0];
  }

  // Pulls into a fresh directory expecting success and the reference tree;
  // returns how long it took.
  absl::Duration PullExpectingSuccess(RegistryClient* c) {
    const std::string dir = NewParent() + "/rootfs";
    const absl::Time start = absl::Now();
    absl::StatusOr<PullResult> r = PullTo(c, dir);
    const absl::Duration took = absl::Now() - start;
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) ExpectReferenceTree(dir);
    return took;
  }

  // Pulls into a fresh directory expecting failure; checks nothing was
  // written and returns the error.
  absl::Status PullExpectingFailure(RegistryClient* c) {
    const std::string parent = NewParent();
    absl::StatusOr<PullResult> r = PullTo(c, parent + "/rootfs");
    EXPECT_FALSE(r.ok()) << "the pull succeeded through the fault";
    std::cout << "  the pull failed: " << r.status() << std::endl;
    ExpectNothingWritten(parent);
    return r.status();
  }

  static inline std::string base_;
  static inline std::string ref_dir_;
  static inline FaultRegistry* reg_ = nullptr;
  static inline TestImage* img_ = nullptr;
  static inline absl::Status* setup_ = nullptr;
  static inline int pulls_ = 0;

  std::unique_ptr<CurlHttpTransport> http_;
};

class SharedRegistry : public ::testing::Environment {
 public:
  void SetUp() override { RegistryFaultsTest::SetUpShared(); }
  void TearDown() override { RegistryFaultsTest::TearDownShared(); }
};
::testing::Environment* const shared_registry =
    ::testing::AddGlobalTestEnvironment(new SharedRegistry);

// ---- Transient statuses: one retry, honouring Retry-After. ----

class TransientStatusTest : public RegistryFaultsTest,
                            public ::testing::WithParamInterface<
                                std::tuple<const char*, const char*>> {};

TEST_P(TransientStatusTest, IsRetriedAndThePullIsExact) {
  const std::string target = std::get<0>(GetParam());
  const std::string fault = std::get<1>(GetParam());
  const std::string where = target == "manifest" ? "/manifests/v1"
                            : target == "config" ? Config()
                                                 : Layer(1);
  SetRules(absl::StrCat("GET ", where, " first=1 ", fault));
  auto c = Client();
  const absl::Duration took = PullExpectingSuccess(c.get());
  EXPECT_EQ(reg_->Rule(0).fired, 1u);
  EXPECT_EQ(reg_->Rule(0).matched, 2u) << "one failed request, one retry";
  if (absl::StrContains(fault, "retry-after=1")) {
    EXPECT_GE(took, absl::Milliseconds(950))
        << "Retry-After: 1 was not honoured";
  }
}

INSTANTIATE_TEST_SUITE_P(
    EveryRequestKind, TransientStatusTest,
    ::testing::Combine(::testing::Values("manifest", "config", "layer"),
                       ::testing::Values("status=500",
                                         "status=503 retry-after=1",
                                         "status=503 retry-after=none",
                                         "status=429 retry-after=1")),
    [](const ::testing::TestParamInfo<std::tuple<const char*, const char*>>&
           info) {
      std::string name =
          absl::StrCat(std::get<0>(info.param), "_", std::get<1>(info.param));
      return absl::StrReplaceAll(name, {{"=", ""}, {" ", "_"}, {"-", ""}});
    });

// ---- Persistent failures: a final error naming the request and the attempts;
// nothing written. ----

TEST_F(RegistryFaultsTest, PersistentServerErrorsFailClearly) {
  struct Case {
    std::string where, names;
  };
  for (const Case& k : {Case{"/manifests/v1", "/v2/faults/app/manifests/v1"},
                        Case{Config(), img_->config.digest.ToString()},
                        Case{Layer(1), img_->layers[1].digest.ToString()}}) {
    SCOPED_TRACE(k.where);
    SetRules(absl::StrCat("GET ", k.where, " every status=500"));
    auto c = Client();
    absl::Status st = PullExpectingFailure(c.get());
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), k.names)) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "HTTP 500")) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "gave up after 4 attempts"))
        << st;
    EXPECT_EQ(reg_->Rule(0).matched, 4u);
  }
  // The layer's error says which layer.
  SetRules(
      absl::StrCat("GET ", Layer(1), " every status=503 retry-after=none"));
  auto c = Client();
  absl::Status st = PullExpectingFailure(c.get());
  EXPECT_TRUE(absl::StrContains(st.message(), "layer 2/3")) << st;
  // An existing empty DIR stays empty.
  const std::string parent = NewParent();
  const std::string dir = parent + "/rootfs";
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  c = Client();
  EXPECT_FALSE(PullTo(c.get(), dir).ok());
  EXPECT_TRUE(testing::ListDir(dir).empty());
  EXPECT_TRUE(Leftovers(parent).empty());
}

TEST_F(RegistryFaultsTest, RetryAfterBeyondTheLimitFailsAtOnce) {
  SetRules(absl::StrCat("GET ", Layer(0), " every status=429 retry-after=60"));
  auto c = Client();
  const absl::Time start = absl::Now();
  absl::Status st = PullExpectingFailure(c.get());
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "retry after 1m")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "layer 1/3")) << st;
  EXPECT_EQ(reg_->Rule(0).matched, 1u);
}

TEST_F(RegistryFaultsTest, NotFoundIsFinal) {
  SetRules(absl::StrCat("GET ", Layer(2), " every status=404"));
  auto c = Client();
  absl::Status st = PullExpectingFailure(c.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "layer 3/3")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "BLOB_UNKNOWN")) << st;
  EXPECT_EQ(reg_->Rule(0).matched, 1u) << "a 404 is not retried";

  SetRules("GET /manifests/ every status=404");
  c = Client();
  st = PullExpectingFailure(c.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "MANIFEST_UNKNOWN")) << st;
  EXPECT_EQ(reg_->Rule(0).matched, 1u);
}

proxy::FaultRule Status401(const std::string& where,
                           const std::string& challenge) {
  proxy::FaultRule r;
  r.method = "GET";
  r.target_contains = where;
  r.status = 401;
  r.www_authenticate = challenge;
  return r;
}

TEST_F(RegistryFaultsTest, AuthFailuresAreFinal) {
  // 401 without any challenge: nothing to answer it with.
  ASSERT_TRUE(reg_->SetRules({Status401("/manifests/", "none")}).ok());
  auto c = Client();
  absl::Status st = PullExpectingFailure(c.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "without a Basic or Bearer"))
      << st;
  EXPECT_EQ(reg_->Rule(0).matched, 1u);

  // 401 to a layer, Basic challenge, credentials given: one retry with them,
  // then the refusal is final.
  const std::string cfg = absl::StrCat(base_, "/docker-config");
  mkdir(cfg.c_str(), 0755);
  std::ofstream(cfg + "/config.json")
      << "{\"auths\":{\"" << reg_->host() << "\":{\"auth\":\""
      << absl::Base64Escape("alice:s3cret") << "\"}}}";
  CredentialStore creds(CredentialStore::Options{cfg, "/nonexistent"});
  ASSERT_TRUE(
      reg_->SetRules({Status401(Layer(0), "Basic realm=\"faults\"")}).ok());
  c = Client(&creds);
  st = PullExpectingFailure(c.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "rejected the user name")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "layer 1/3")) << st;
  EXPECT_FALSE(absl::StrContains(st.message(), "s3cret")) << st;
  EXPECT_EQ(reg_->Rule(0).matched, 2u);
  EXPECT_GE(reg_->proxy().counters().authorized, 1u);

  // 401 with a Bearer challenge whose realm issues no token.
  ASSERT_TRUE(reg_->SetRules({Status401(Config(), "")}).ok());
  c = Client();
  st = PullExpectingFailure(c.get());
  EXPECT_TRUE(absl::StrContains(st.message(), "token")) << st;
  EXPECT_EQ(reg_->Rule(0).matched, 1u);

  // 403: final at once.
  SetRules(absl::StrCat("GET ", Config(), " every status=403"));
  c = Client();
  st = PullExpectingFailure(c.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "HTTP 403")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), img_->config.digest.ToString()))
      << st;
  EXPECT_EQ(reg_->Rule(0).matched, 1u);
}

// ---- Broken bodies. ----

TEST_F(RegistryFaultsTest, DroppedConnectionsAreResumed) {
  for (const char* how :
       {"first=1 drop-after=100000", "first=1 drop-after=100000 reset",
        "every drop-after=150000"}) {
    SCOPED_TRACE(how);
    const int ranges_before = AccessLogLines(Layer(0), 206);
    SetRules(absl::StrCat("GET ", Layer(0), " ", how));
    auto c = Client();
    PullExpectingSuccess(c.get());
    const uint64_t requests = reg_->Rule(0).matched;
    if (absl::StartsWith(how, "first=1")) {
      EXPECT_EQ(requests, 2u);
    } else {
      // ~300 KB in pieces of 150000 bytes: every piece a resumed range.
      EXPECT_EQ(requests, 3u);
    }
    // The resumed requests asked for the rest only: 206 answers.
    EXPECT_EQ(
        AccessLogLinesReaching(Layer(0), 206,
                               ranges_before + static_cast<int>(requests) - 1) -
            ranges_before,
        static_cast<int>(requests) - 1)
        << reg_->registry().Log();
  }
}

// The request that resumes a dropped body is a range request like any
// other: retried on a 503, and refused when its answer does not match.
TEST_F(RegistryFaultsTest, ResumedRequestsAreValidated) {
  const std::string drop =
      absl::StrCat("GET ", Layer(0), " first=1 drop-after=100000\n");
  SetRules(absl::StrCat(drop, "GET ", Layer(0),
                        " nth=2 status=503 retry-after=none"));
  auto c = Client();
  PullExpectingSuccess(c.get());
  EXPECT_EQ(reg_->Rule(1).fired, 1u);
  EXPECT_EQ(reg_->Rule(0).matched, 3u);

  // A resume answered with the whole blob (a server that ignores Range):
  // the repeated bytes are dropped, and the blob verifies.
  SetRules(absl::StrCat(drop, "GET ", Layer(0), " nth=2 full-200"));
  c = Client();
  PullExpectingSuccess(c.get());
  EXPECT_EQ(reg_->Rule(1).fired, 1u);
  EXPECT_EQ(reg_->Rule(0).matched, 2u);

  struct Case {
    const char* fault;
    absl::StatusCode code;
    const char* says;
  };
  for (const Case& k :
       {Case{"shift-content-range=1", absl::StatusCode::kDataLoss,
             "which does not match"}}) {
    SCOPED_TRACE(k.fault);
    SetRules(absl::StrCat(drop, "GET ", Layer(0), " nth=2 ", k.fault));
    c = Client();
    absl::Status st = PullExpectingFailure(c.get());
    EXPECT_EQ(st.code(), k.code) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), k.says)) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "layer 1/3")) << st;
    EXPECT_EQ(reg_->Rule(1).fired, 1u);
    EXPECT_EQ(reg_->Rule(0).matched, 2u) << "a refused answer is not retried";
  }
}

TEST_F(RegistryFaultsTest, ConnectionsDroppedEveryTimeFailClearly) {
  for (const char* how : {"every drop-after=-1", "every drop-after=0"}) {
    SCOPED_TRACE(how);
    SetRules(absl::StrCat("GET ", Layer(0), " ", how));
    auto c = Client();
    absl::Status st = PullExpectingFailure(c.get());
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "layer 1/3")) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), "gave up after 4 attempts"))
        << st;
    // libcurl itself resends a request once when a kept-alive connection
    // it reused turns out closed: up to two requests per attempt.
    EXPECT_GE(reg_->Rule(0).matched, 4u);
    EXPECT_LE(reg_->Rule(0).matched, 8u);
  }
}

TEST_F(RegistryFaultsTest, AFlippedByteIsDataLoss) {
  for (const std::string& where :
       {Layer(0), Layer(2), Config(), std::string("/manifests/v1")}) {
    SCOPED_TRACE(where);
    SetRules(absl::StrCat("GET ", where, " first=1 flip-byte=100"));
    auto c = Client();
    absl::Status st = PullExpectingFailure(c.get());
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_EQ(reg_->Rule(0).fired, 1u);
  }
}

TEST_F(RegistryFaultsTest, SlowBodiesStillPullExactly) {
  SetRules("GET /blobs/ every slow=500000");
  auto c = Client();
  const absl::Duration took = PullExpectingSuccess(c.get());
  uint64_t bytes = 0;
  for (const auto& l : img_->layers) bytes += static_cast<uint64_t>(l.size);
  // At least the paced time of the biggest layer: the pace was applied.
  EXPECT_GE(took, absl::Seconds(img_->layers[0].size / 500000.0 * 0.8));
  EXPECT_LT(took, absl::Seconds(bytes / 500000.0 + 20));
  EXPECT_EQ(reg_->Rule(0).fired, 4u) << "the config and three layers";
}

// A server (or middlebox) trickling bytes keeps a connection alive but a
// whole-blob download, which has no total time limit, would never end: an
// attempt under the speed floor fails, and the pull fails clearly once the
// attempts are spent.
TEST_F(RegistryFaultsTest, ATricklingServerFailsThePullClearly) {
  SetRules("GET /blobs/ every slow=200");  // 200 bytes/s: alive, never done
  auto c = Client(nullptr, [](RegistryOptions* o) {
    o->stall_timeout = absl::Seconds(1);  // (the default is 30 s)
  });
  const absl::Time t0 = absl::Now();
  absl::Status st = PullExpectingFailure(c.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "too slow")) << st;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(60));
  EXPECT_GE(reg_->Rule(0).fired, 4u) << "every attempt was tried";
}

// ---- Redirects to blob storage with signed, expiring URLs. ----

TEST_F(RegistryFaultsTest, RedirectsToSignedUrlsWithoutCredentials) {
  // A Basic challenge first, so that the client holds credentials it must
  // not send to the storage.
  const std::string cfg = absl::StrCat(base_, "/docker-config-redirect");
  mkdir(cfg.c_str(), 0755);
  std::ofstream(cfg + "/config.json")
      << "{\"auths\":{\"" << reg_->host() << "\":{\"auth\":\""
      << absl::Base64Escape("carol:pw") << "\"}}}";
  CredentialStore creds(CredentialStore::Options{cfg, "/nonexistent"});
  proxy::FaultRule challenge = Status401("/manifests/", "Basic realm=\"x\"");
  challenge.when = proxy::Occurrence::kNth;
  challenge.n = 1;
  auto redirect = proxy::ParseFaultRules("GET /blobs/ every redirect=30s");
  ASSERT_TRUE(redirect.ok());
  ASSERT_TRUE(reg_->SetRules({challenge, (*redirect)[0]}).ok());
  auto c = Client(&creds);
  PullExpectingSuccess(c.get());
  proxy::FaultCounters n = reg_->proxy().counters();
  EXPECT_EQ(reg_->Rule(1).fired, 4u);
  EXPECT_EQ(n.blob_requests, 4u);
  EXPECT_EQ(n.blob_denied, 0u);
  EXPECT_GE(n.authorized, 5u) << "the registry got the credentials";
  EXPECT_EQ(n.blob_authorized, 0u) << "credentials sent to the blob storage";

  // Signed URLs that expire between two pulls of one client are resolved
  // again through the registry.
  SetRules("GET /blobs/ every redirect=1s");
  c = Client();
  PullExpectingSuccess(c.get());
  EXPECT_EQ(reg_->Rule(0).fired, 4u);
  absl::SleepFor(absl::Milliseconds(1100));  // the URLs expire
  PullExpectingSuccess(c.get());
  n = reg_->proxy().counters();
  EXPECT_EQ(n.blob_denied, 4u) << "the cached URLs were not tried";
  EXPECT_EQ(reg_->Rule(0).fired, 8u) << "expired URLs were not re-resolved";
  EXPECT_EQ(n.blob_requests, 12u);
}

// ---- The binary, with its default retry policy. ----

class PullBinaryFaultsTest : public RegistryFaultsTest {
 protected:
  testing::RunResult Pull(const std::string& dir,
                          const std::vector<std::string>& flags = {}) {
    std::vector<std::string> argv = {testing::LazypullBinary(),
                                     "pull",
                                     "--plain-http",
                                     "--platform",
                                     "linux/amd64",
                                     "--hosts-dir",
                                     base_ + "/no-hosts-dir"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.insert(argv.end(), {Ref(), dir});
    return testing::Run(argv);
  }
};

TEST_F(PullBinaryFaultsTest, RecoversFromTransientFaults) {
  SetRules(absl::StrCat("GET /manifests/ first=1 status=503 retry-after=1\n",
                        "GET ", Layer(0), " first=1 drop-after=50000\n", "GET ",
                        Layer(1), " first=1 status=429 retry-after=none\n"));
  const std::string dir = NewParent() + "/rootfs";
  testing::RunResult r = Pull(dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectReferenceTree(dir);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(reg_->Rule(i).fired, 1u) << i;
}

TEST_F(PullBinaryFaultsTest, ReportsTheFinalError) {
  SetRules(absl::StrCat("GET ", Layer(1), " every status=500"));
  const std::string parent = NewParent();
  testing::RunResult r = Pull(parent + "/rootfs");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "layer 2/3")) << r.err;
  EXPECT_TRUE(absl::StrContains(
      r.err,
      absl::StrCat("GET http://", reg_->host(), "/v2/faults/app", Layer(1))))
      << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "HTTP 500")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "gave up after 5 attempts")) << r.err;
  EXPECT_EQ(reg_->Rule(0).matched, 5u);
  ExpectNothingWritten(parent);
}

// --stall-timeout and --min-speed set the speed floor a transfer must keep.
TEST_F(PullBinaryFaultsTest, TheSpeedFloorIsAFlag) {
  struct Case {
    std::string pace;
    std::vector<std::string> flags;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {"200", {"--stall-timeout", "1"}, "Less than 1024 bytes/sec"},
           {"2000",
            {"--stall-timeout", "1", "--min-speed", "8K"},
            "Less than 8192 bytes/sec"}}) {
    SCOPED_TRACE(c.pace);
    SetRules(absl::StrCat("GET ", Layer(0), " every slow=", c.pace));
    const std::string parent = NewParent();
    const absl::Time t0 = absl::Now();
    testing::RunResult r = Pull(parent + "/rootfs", c.flags);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_LT(absl::Now() - t0, absl::Seconds(60));
    EXPECT_TRUE(absl::StrContains(r.err, c.says)) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "gave up after 5 attempts")) << r.err;
    ExpectNothingWritten(parent);
  }
  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{{"--stall-timeout", "0"},
                                             {"--stall-timeout", "soon"},
                                             {"--min-speed", "0"},
                                             {"--min-speed", "fast"}}) {
    testing::RunResult r = Pull(NewParent() + "/rootfs", bad);
    EXPECT_NE(r.exit_code, 0) << bad[0] << " " << bad[1];
    EXPECT_TRUE(absl::StrContains(r.err, bad[0])) << r.err;
  }
}

}  // namespace
}  // namespace lazypull
