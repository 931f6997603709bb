// RegistryClient against Debian's docker-registry on 127.0.0.1 (plain HTTP
// and TLS/HTTP/2, htpasswd Basic auth, JWT token auth with a token server of
// our own) and against scripted servers for what a real registry will not
// do (redirects to blob storage, mirrors).
#include "fetch/registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/testing/tar_builder.h"
#include "fetch/curl_http.h"
#include "fetch/testing/loopback_http_server.h"
#include "fetch/testing/oci_image.h"
#include "fetch/testing/one_use_url_storage.h"
#include "fetch/testing/registry_fixture.h"
#include "fetch/testing/token_server.h"
#include "gtest/gtest.h"
#include "proxy/link_proxy.h"

namespace lazypull {
namespace {

using testing::LoopbackHttpServer;
using testing::OciLayout;
using testing::RegistryServer;
using testing::RegistryServerOptions;
using testing::TarBuilder;
using testing::TestDir;
using testing::TestImage;
using testing::TestRequest;
using testing::TestResponse;

std::string LayerTar(const std::string& name, const std::string& content) {
  TarBuilder b;
  b.File(name, content);
  return b.Finish();
}

std::string ReadAllBlob(BlobReader* r, absl::Status* st) {
  std::string out;
  while (true) {
    auto p = r->Read(1 << 16);
    if (!p.ok()) {
      *st = p.status();
      return out;
    }
    if (p->empty()) break;
    out.append(p->data(), p->size());
  }
  *st = absl::OkStatus();
  return out;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto h = CurlHttpTransport::Create();
    ASSERT_TRUE(h.ok());
    http_ = *std::move(h);
  }

  std::unique_ptr<RegistryServer> StartRegistry(RegistryServerOptions o) {
    if (o.work_dir.empty()) o.work_dir = TestDir("registry");
    auto s = RegistryServer::Start(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  // Pushes a one-image layout as repo:tag.
  TestImage Push(const RegistryServer& r, const std::string& repo,
                 const std::string& tag, const std::vector<std::string>& tars,
                 const std::string& creds = "") {
    auto layout = OciLayout::Create(TestDir("layout-" + tag));
    EXPECT_TRUE(layout.ok());
    auto img = layout->AddImage(tars);
    EXPECT_TRUE(img.ok());
    EXPECT_TRUE(layout->Tag(tag, img->manifest).ok());
    absl::Status st =
        testing::PushWithSkopeo(*layout, tag, r.host(), repo, false, creds);
    EXPECT_TRUE(st.ok()) << st;
    return *img;
  }

  std::unique_ptr<RegistryClient> Client(const std::string& ref,
                                         RegistryOptions o) {
    o.http = http_.get();
    o.hosts.hosts_dir = TestDir("no-hosts-dir");
    o.retry.initial_backoff = absl::Milliseconds(5);
    auto r = ImageReference::Parse(ref);
    EXPECT_TRUE(r.ok()) << r.status();
    auto c = RegistryClient::Create(*r, o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // A client of `ref` over plain HTTP with the Docker config in
  // `config_dir` as its credentials (the store lives as long as the test).
  std::unique_ptr<RegistryClient> PlainClientWithConfig(
      const std::string& ref, const std::string& config_dir) {
    CredentialStore::Options co;
    co.docker_config_dir = config_dir;
    co.podman_auth_file = "/nonexistent";
    stores_.push_back(std::make_unique<CredentialStore>(co));
    RegistryOptions o;
    o.hosts.plain_http = true;
    o.credentials = stores_.back().get();
    return Client(ref, o);
  }

  // Reads blob `bytes` (by its digest) through `c`, expecting it whole.
  void ExpectBlob(RegistryClient* c, const std::string& bytes) {
    Descriptor d;
    d.digest = Sha256::Of(bytes);
    d.size = static_cast<int64_t>(bytes.size());
    auto b = c->OpenBlob(d);
    ASSERT_TRUE(b.ok()) << b.status();
    absl::Status st;
    EXPECT_EQ(ReadAllBlob(b->get(), &st), bytes);
    EXPECT_TRUE(st.ok()) << st;
  }

  std::unique_ptr<CurlHttpTransport> http_;
  std::vector<std::unique_ptr<CredentialStore>> stores_;
};

TEST_F(RegistryTest, ResolvesAndVerifiesOverPlainHttp) {
  auto reg = StartRegistry({});
  ASSERT_NE(reg, nullptr);
  TestImage img = Push(*reg, "team/app", "v1",
                       {LayerTar("a", "one"), LayerTar("b", "two")});
  RegistryOptions o;
  o.hosts.plain_http = true;
  auto c = Client(reg->host() + "/team/app:v1", o);
  ASSERT_NE(c, nullptr);
  auto res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, img.manifest.digest);
  EXPECT_FALSE(res->index_digest.has_value());
  ASSERT_EQ(res->manifest.layers.size(), 2u);
  EXPECT_EQ(res->manifest.layers[1].digest, img.layers[1].digest);
  EXPECT_EQ(res->config.diff_ids[0], Sha256::Of(LayerTar("a", "one")));

  // By digest, too.
  auto by_digest =
      Client(reg->host() + "/team/app@" + img.manifest.digest.ToString(), o);
  auto m = by_digest->FetchManifest(img.manifest.digest.ToString());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->digest, img.manifest.digest);

  auto blob = c->OpenBlob(res->manifest.layers[0]);
  ASSERT_TRUE(blob.ok()) << blob.status();
  absl::Status st;
  std::string bytes = ReadAllBlob(blob->get(), &st);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(Sha256::Of(bytes), img.layers[0].digest);

  auto missing = Client(reg->host() + "/team/app:nope", o);
  auto r2 = missing->Resolve();
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), absl::StatusCode::kNotFound) << r2.status();
  EXPECT_TRUE(absl::StrContains(r2.status().message(), "MANIFEST_UNKNOWN"))
      << r2.status();
}

TEST_F(RegistryTest, CorruptBlobIsRefused) {
  auto reg = StartRegistry({});
  ASSERT_NE(reg, nullptr);
  TestImage img = Push(*reg, "x/corrupt", "v1", {LayerTar("f", "payload")});
  // Same size, other bytes: only the digest can tell.
  std::string path = reg->BlobDataPath(img.layers[0].digest);
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  f.seekp(4);  // the gzip header's MTIME field
  f.write("\x01\x02\x03\x04", 4);
  f.close();
  RegistryOptions o;
  o.hosts.plain_http = true;
  auto c = Client(reg->host() + "/x/corrupt:v1", o);
  Descriptor d;
  d.media_type = img.layers[0].media_type;
  d.digest = img.layers[0].digest;
  d.size = img.layers[0].size;
  auto blob = c->OpenBlob(d);
  ASSERT_TRUE(blob.ok()) << blob.status();
  absl::Status st;
  ReadAllBlob(blob->get(), &st);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "corrupt")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), img.layers[0].digest.ToString()));
}

TEST_F(RegistryTest, TlsGivesHttp2AndMultiplexes) {
  RegistryServerOptions ro;
  ro.tls = true;
  auto reg = StartRegistry(ro);
  ASSERT_NE(reg, nullptr);
  std::vector<std::string> tars;
  for (int i = 0; i < 4; ++i) {
    tars.push_back(
        LayerTar(absl::StrCat("f", i), std::string(300000 + i, 'a' + i)));
  }
  TestImage img = Push(*reg, "tls/app", "v1", tars);

  // Untrusted: a clear error saying what to do.
  auto untrusted = Client(reg->host() + "/tls/app:v1", {});
  auto bad = untrusted->Resolve();
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "--ca-file"))
      << bad.status();
  // Skipping verification works.
  RegistryOptions skip;
  skip.hosts.skip_verify = true;
  EXPECT_TRUE(Client(reg->host() + "/tls/app:v1", skip)->Resolve().ok());

  // Trusted through --ca-file; a fresh transport counts connections.
  auto h = CurlHttpTransport::Create();
  ASSERT_TRUE(h.ok());
  http_ = *std::move(h);
  RegistryOptions o;
  o.hosts.ca_files = {reg->ca_file()};
  auto c = Client(reg->host() + "/tls/app:v1", o);
  auto res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  // Four blobs at once, read in parallel.
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto b = c->OpenBlob(res->manifest.layers[i]);
      if (!b.ok()) return;
      absl::Status st;
      ReadAllBlob(b->get(), &st);
      if (st.ok()) ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(http_->stats().connections, 1)
      << "every request should share one HTTP/2 connection";
  HttpRequest req;
  req.url = reg->url() + "/v2/";
  req.tls.ca_files = {reg->ca_file()};
  auto v2 = http_->Fetch(req);
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(v2->version, HttpVersion::kHttp2);
  // The registry's access log records the protocol of each of our requests
  // (skopeo's pushes, HTTP/1.1 there, are someone else's).
  int ours = 0;
  for (absl::string_view line : absl::StrSplit(reg->Log(), '\n')) {
    if (!absl::StrContains(line, "\"lazypull/")) continue;
    ++ours;
    EXPECT_TRUE(absl::StrContains(line, " HTTP/2.0\"")) << line;
  }
  EXPECT_GE(ours, 6);
}

// Slow readers with a small window pause their HTTP/2 streams; the others
// on the same connection must keep flowing.
TEST_F(RegistryTest, PausedHttp2StreamsDoNotStallEachOther) {
  RegistryServerOptions ro;
  ro.tls = true;
  auto reg = StartRegistry(ro);
  ASSERT_NE(reg, nullptr);
  std::vector<std::string> tars;
  for (int i = 0; i < 3; ++i) {
    // Incompressible, so that the blobs are big on the wire too.
    std::string big(3 << 20, '\0');
    uint64_t x = 88172645463325252ull + static_cast<uint64_t>(i);
    for (char& ch : big) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      ch = static_cast<char>(x);
    }
    tars.push_back(LayerTar(absl::StrCat("big", i), big));
  }
  Push(*reg, "slow/app", "v1", tars);
  CurlHttpOptions ho;
  ho.reader_window = 32 << 10;
  auto h = CurlHttpTransport::Create(ho);
  ASSERT_TRUE(h.ok());
  http_ = *std::move(h);
  RegistryOptions o;
  o.hosts.ca_files = {reg->ca_file()};
  auto c = Client(reg->host() + "/slow/app:v1", o);
  auto res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto b = c->OpenBlob(res->manifest.layers[i]);
      if (!b.ok()) return;
      int reads = 0;
      while (true) {
        auto p = (*b)->Read(4096);
        if (!p.ok()) return;
        if (p->empty()) break;
        // Reader i is slow in a different rhythm from the others.
        if (++reads % (16 * (i + 1)) == 0)
          absl::SleepFor(absl::Milliseconds(1));
      }
      ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 3);
  EXPECT_EQ(http_->stats().connections, 1);
}

// A connection that goes silent (a NAT or load balancer on the path lost
// it: no reset, no close) must not take every later request down with it.
// curl keeps an HTTP/2 connection whose stream timed out, so the retries and
// every request after them stalled on it in turn; the attempt after a stall
// now opens a new connection, and later requests use that one.
TEST_F(RegistryTest, ASilentlyDeadConnectionIsLeftForANewOne) {
  RegistryServerOptions ro;
  ro.tls = true;
  auto reg = StartRegistry(ro);
  ASSERT_NE(reg, nullptr);
  std::string noise(100000, '\0');  // incompressible: a blob this big
  uint64_t x = 88172645463325252ull;
  for (char& ch : noise) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    ch = static_cast<char>(x);
  }
  TestImage img = Push(*reg, "dead/app", "v1", {LayerTar("f", noise)});
  proxy::LinkProxy::Options po;
  ASSERT_TRUE(absl::SimpleAtoi(reg->host().substr(reg->host().rfind(':') + 1),
                               &po.upstream_port));
  auto link = proxy::LinkProxy::Start(po);
  ASSERT_TRUE(link.ok()) << link.status();
  auto range = [&](int first) {
    HttpRequest req;
    req.url =
        absl::StrCat("https://127.0.0.1:", (*link)->port(),
                     "/v2/dead/app/blobs/", img.layers[0].digest.ToString());
    req.headers = {{"Range", absl::StrCat("bytes=", first, "-", first + 99)}};
    req.tls.ca_files = {reg->ca_file()};
    req.stall_timeout = absl::Seconds(1);
    req.timeout = absl::Seconds(2);
    req.retry.max_attempts = 4;
    req.retry.initial_backoff = absl::Milliseconds(10);
    return http_->Fetch(req);
  };
  auto r = range(0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 206);
  EXPECT_EQ(r->body.size(), 100u);
  EXPECT_EQ((*link)->counters().connections_accepted, 1u);

  // Three reads on the connection when it goes silent, started 400 ms
  // apart: the first to time out shuts it down while the others still
  // wait on it (they fail at once), and all three are retried on one new
  // connection. (CURLINFO_ACTIVESOCKET names no socket while other streams
  // use the connection: shutting that one down left the later reads and
  // every retry stalling on the dead connection.)
  (*link)->SilenceOpenConnections();
  absl::Time t0 = absl::Now();
  std::vector<absl::StatusOr<HttpResponse>> got(3, absl::UnknownError(""));
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) {
    readers.emplace_back([&, i] {
      absl::SleepFor(absl::Milliseconds(400) * i);
      got[i] = range(100 * (i + 1));
    });
  }
  for (std::thread& th : readers) th.join();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(got[i].ok()) << i << ": " << got[i].status();
    EXPECT_EQ(got[i]->status, 206);
    EXPECT_EQ(got[i]->body.size(), 100u);
    EXPECT_EQ(got[i]->attempts, 2) << i;  // one stall, then a new connection
  }
  EXPECT_LT(absl::Now() - t0, absl::Seconds(6));
  EXPECT_EQ((*link)->counters().connections_accepted, 2u);
  // The dead connection is not tried again.
  t0 = absl::Now();
  r = range(400);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->attempts, 1);
  EXPECT_LT(absl::Now() - t0, absl::Milliseconds(900));
  EXPECT_EQ((*link)->counters().connections_accepted, 2u);
  // It was HTTP/2 (the registry's access log).
  EXPECT_TRUE(absl::StrContains(reg->Log(), " HTTP/2.0\"")) << reg->Log();
}

TEST_F(RegistryTest, IndexResolvesToThePlatformAsked) {
  auto reg = StartRegistry({});
  ASSERT_NE(reg, nullptr);
  auto layout = OciLayout::Create(TestDir("multi"));
  ASSERT_TRUE(layout.ok());
  auto amd = layout->AddImage({LayerTar("arch", "amd64")}, "linux/amd64");
  auto arm = layout->AddImage({LayerTar("arch", "arm64")}, "linux/arm64/v8");
  ASSERT_TRUE(amd.ok() && arm.ok());
  auto idx = layout->AddIndex({arm->manifest, amd->manifest});
  ASSERT_TRUE(idx.ok());
  ASSERT_TRUE(layout->Tag("multi", *idx).ok());
  absl::Status st =
      testing::PushWithSkopeo(*layout, "multi", reg->host(), "m/app", true);
  ASSERT_TRUE(st.ok()) << st;

  RegistryOptions o;
  o.hosts.plain_http = true;
  o.platform = *Platform::Parse("linux/amd64");
  auto res = Client(reg->host() + "/m/app:multi", o)->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, amd->manifest.digest);
  ASSERT_TRUE(res->index_digest.has_value());
  EXPECT_EQ(*res->index_digest, idx->digest);

  o.platform = *Platform::Parse("linux/arm64");
  res = Client(reg->host() + "/m/app:multi", o)->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, arm->manifest.digest);

  o.platform = *Platform::Parse("linux/s390x");
  res = Client(reg->host() + "/m/app:multi", o)->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(res.status().message(), "linux/arm64/v8"))
      << res.status();
}

// `platform` is optional in an index entry: a single-manifest index without
// one (as OCI layouts and artifact tools write) resolves, checked against
// the config's platform; an index inside an index is followed.
TEST_F(RegistryTest, IndexEntriesWithoutPlatformAndNestedIndexes) {
  auto reg = StartRegistry({});
  ASSERT_NE(reg, nullptr);
  auto layout = OciLayout::Create(TestDir("plain-index"));
  ASSERT_TRUE(layout.ok());
  auto amd = layout->AddImage({LayerTar("arch", "amd64")}, "linux/amd64");
  auto arm = layout->AddImage({LayerTar("arch", "arm64")}, "linux/arm64/v8");
  ASSERT_TRUE(amd.ok() && arm.ok());
  testing::TestDescriptor bare = amd->manifest;
  bare.platform.clear();
  auto single = layout->AddIndex({bare});
  ASSERT_TRUE(single.ok());
  auto multi = layout->AddIndex({arm->manifest, amd->manifest});
  ASSERT_TRUE(multi.ok());
  auto outer = layout->AddIndex({*multi});
  ASSERT_TRUE(outer.ok());
  ASSERT_TRUE(layout->Tag("single", *single).ok());
  ASSERT_TRUE(layout->Tag("multi", *multi).ok());
  for (const char* tag : {"single", "multi"}) {
    absl::Status st =
        testing::PushWithSkopeo(*layout, tag, reg->host(), "m/idx", true);
    ASSERT_TRUE(st.ok()) << tag << ": " << st;
  }
  RegistryOptions o;
  o.hosts.plain_http = true;
  {  // skopeo does not copy nested indexes: the outer one is PUT here.
    std::ifstream in(layout->BlobPath(outer->digest));
    const std::string bytes((std::istreambuf_iterator<char>(in)),
                            std::istreambuf_iterator<char>());
    auto pushed = Client(reg->host() + "/m/idx:nested", o)
                      ->PushManifest("nested", outer->media_type, bytes);
    ASSERT_TRUE(pushed.ok()) << pushed.status();
  }
  o.platform = *Platform::Parse("linux/amd64");
  auto res = Client(reg->host() + "/m/idx:single", o)->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, amd->manifest.digest);
  EXPECT_EQ(res->config.platform.String(), "linux/amd64");

  o.platform = *Platform::Parse("linux/arm64");
  res = Client(reg->host() + "/m/idx:single", o)->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(
      absl::StrContains(res.status().message(), "its config says linux/amd64"))
      << res.status();

  res = Client(reg->host() + "/m/idx:nested", o)->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, arm->manifest.digest);
  ASSERT_TRUE(res->index_digest.has_value());
  EXPECT_EQ(*res->index_digest, outer->digest);
}

// A 401 asking for a Bearer token from `realm` (a URL), as registries send.
void ChallengeFor(const std::string& realm, TestResponse* r) {
  r->status = 401;
  r->headers.push_back(
      {"WWW-Authenticate", absl::StrCat("Bearer realm=\"", realm, "\"")});
}

// Writes $dir/config.json with Docker's "auths" for `host`.
std::string WriteDockerConfig(const std::string& dir, const std::string& host,
                              const std::string& user,
                              const std::string& pass) {
  std::ofstream(dir + "/config.json")
      << "{\"auths\":{\"" << host << "\":{\"auth\":\""
      << absl::Base64Escape(user + ":" + pass) << "\"}}}";
  return dir;
}

TEST_F(RegistryTest, BasicAuthWithCredentialsFromDockerConfig) {
  const std::string dir = TestDir("auth");
  std::string htpasswd;
  ASSERT_TRUE(
      testing::RunProcess({"htpasswd", "-Bbn", "alice", "s3cret"}, &htpasswd)
          .ok());
  std::ofstream(dir + "/htpasswd") << htpasswd;
  RegistryServerOptions ro;
  ro.tls = true;
  ro.htpasswd = dir + "/htpasswd";
  auto reg = StartRegistry(ro);
  ASSERT_NE(reg, nullptr);
  TestImage img = Push(*reg, "private/app", "v1", {LayerTar("secret", "data")},
                       "alice:s3cret");

  RegistryOptions o;
  o.hosts.ca_files = {reg->ca_file()};
  // No credentials: a message saying where to put them.
  CredentialStore::Options none;
  none.docker_config_dir = TestDir("empty-config");
  none.podman_auth_file = TestDir("empty-config") + "/auth.json";
  CredentialStore empty(none);
  o.credentials = &empty;
  auto res = Client(reg->host() + "/private/app:v1", o)->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(res.status().message(), "config.json"))
      << res.status();

  // Wrong password.
  CredentialStore::Options wrong;
  wrong.docker_config_dir =
      WriteDockerConfig(TestDir("wrong"), reg->host(), "alice", "nope");
  wrong.podman_auth_file = "/nonexistent";
  CredentialStore wrong_store(wrong);
  o.credentials = &wrong_store;
  res = Client(reg->host() + "/private/app:v1", o)->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_TRUE(absl::StrContains(res.status().message(), "rejected"))
      << res.status();
  EXPECT_FALSE(absl::StrContains(res.status().message(), "nope"));

  // Right password, in Podman's auth.json this time.
  CredentialStore::Options right;
  right.docker_config_dir = TestDir("empty-config");
  right.podman_auth_file =
      WriteDockerConfig(TestDir("podman"), "https://" + reg->host(), "alice",
                        "s3cret") +
      "/config.json";
  CredentialStore store(right);
  o.credentials = &store;
  auto c = Client(reg->host() + "/private/app:v1", o);
  res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, img.manifest.digest);
  auto blob = c->OpenBlob(res->manifest.layers[0]);
  ASSERT_TRUE(blob.ok()) << blob.status();
  absl::Status st;
  ReadAllBlob(blob->get(), &st);
  EXPECT_TRUE(st.ok()) << st;
}

class TokenAuthTest : public RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    dir_ = TestDir("token");
    ASSERT_TRUE(testing::MakeSelfSignedCert(
                    dir_ + "/signer.crt", dir_ + "/signer.key", "token-signer")
                    .ok());
    // Push without auth, then serve the same storage with token auth.
    {
      RegistryServerOptions plain;
      plain.work_dir = TestDir("push-registry");
      plain.storage_dir = dir_ + "/storage";
      mkdir(plain.storage_dir.c_str(), 0755);
      auto push_reg = StartRegistry(plain);
      ASSERT_NE(push_reg, nullptr);
      img_ = Push(*push_reg, "tok/app", "v1",
                  {LayerTar("l1", std::string(100000, 'x')),
                   LayerTar("l2", std::string(100000, 'y')),
                   LayerTar("l3", std::string(100000, 'z'))});
    }
    testing::TokenServerOptions to;
    to.key_file = dir_ + "/signer.key";
    to.cert_file = dir_ + "/signer.crt";
    to.user = "bob";
    to.password = "hunter2";
    auto ts = testing::TokenServer::Start(to);
    ASSERT_TRUE(ts.ok()) << ts.status();
    tokens_ = *std::move(ts);
    RegistryServerOptions ro;
    ro.work_dir = TestDir("token-registry");
    ro.storage_dir = dir_ + "/storage";
    ro.token = RegistryServerOptions::Token{tokens_->realm(), to.service,
                                            to.issuer, to.cert_file};
    reg_ = StartRegistry(ro);
    ASSERT_NE(reg_, nullptr);
    CredentialStore::Options co;
    co.docker_config_dir =
        WriteDockerConfig(TestDir("docker"), reg_->host(), "bob", "hunter2");
    co.podman_auth_file = "/nonexistent";
    creds_ = std::make_unique<CredentialStore>(co);
  }

  std::unique_ptr<RegistryClient> TokenClient() {
    RegistryOptions o;
    o.hosts.plain_http = true;
    o.credentials = creds_.get();
    return Client(reg_->host() + "/tok/app:v1", o);
  }

  // Every layer at once, as a pull does: a token refresh must happen once.
  absl::Status PullBlobs(RegistryClient* c, const ResolvedImage& res) {
    std::vector<absl::Status> st(res.manifest.layers.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < st.size(); ++i) {
      threads.emplace_back([&, i] {
        auto b = c->OpenBlob(res.manifest.layers[i]);
        if (!b.ok()) {
          st[i] = b.status();
          return;
        }
        ReadAllBlob(b->get(), &st[i]);
      });
    }
    for (auto& t : threads) t.join();
    for (const absl::Status& s : st) {
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  std::string dir_;
  TestImage img_;
  std::unique_ptr<testing::TokenServer> tokens_;
  std::unique_ptr<RegistryServer> reg_;
  std::unique_ptr<CredentialStore> creds_;
};

TEST_F(TokenAuthTest, BearerTokenFlow) {
  auto c = TokenClient();
  auto res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, img_.manifest.digest);
  ASSERT_TRUE(PullBlobs(c.get(), *res).ok());
  EXPECT_EQ(tokens_->issued(), 1) << "one token serves the whole pull";
  auto reqs = tokens_->requests();
  ASSERT_FALSE(reqs.empty());
  EXPECT_EQ(reqs[0].query["service"], "lazypull-test-registry");
  EXPECT_EQ(reqs[0].query["scope"], "repository:tok/app:pull");
  EXPECT_TRUE(absl::StartsWith(reqs[0].headers["authorization"], "Basic "));
}

TEST_F(TokenAuthTest, AnonymousTokens) {
  tokens_->set_require_credentials(false);
  RegistryOptions o;
  o.hosts.plain_http = true;  // and no credential store at all
  auto c = Client(reg_->host() + "/tok/app:v1", o);
  auto res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  ASSERT_TRUE(PullBlobs(c.get(), *res).ok());
  auto reqs = tokens_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].headers.count("authorization"), 0u);
  // Refused anonymous access says how to give credentials.
  tokens_->set_require_credentials(true);
  auto c2 = Client(reg_->host() + "/tok/app:v1", o);
  auto denied = c2->Resolve();
  ASSERT_FALSE(denied.ok());
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "anonymous"))
      << denied.status();
}

TEST_F(TokenAuthTest, WrongCredentialsAtTheTokenServer) {
  CredentialStore::Options co;
  co.docker_config_dir =
      WriteDockerConfig(TestDir("bad"), reg_->host(), "bob", "wrong");
  co.podman_auth_file = "/nonexistent";
  CredentialStore bad(co);
  RegistryOptions o;
  o.hosts.plain_http = true;
  o.credentials = &bad;
  auto res = Client(reg_->host() + "/tok/app:v1", o)->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(res.status().message(), "refused"))
      << res.status();
  EXPECT_FALSE(absl::StrContains(res.status().message(), "wrong"));
}

TEST_F(TokenAuthTest, TokenIsRefreshedWhenItExpires) {
  // Told 2 s, accepted 2 s: the client must fetch a new one by itself.
  tokens_->set_lifetimes(2, 2);
  auto c = TokenClient();
  auto res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  absl::SleepFor(absl::Milliseconds(2500));
  ASSERT_TRUE(PullBlobs(c.get(), *res).ok());
  EXPECT_EQ(tokens_->issued(), 2);
  EXPECT_EQ(c->tokens_fetched(), 2);
}

TEST_F(TokenAuthTest, TokenRefusedMidSessionIsReplaced) {
  // Told 300 s, accepted 2 s: the registry's 401 mid-pull must make the
  // client drop the token and fetch another.
  tokens_->set_lifetimes(300, 2);
  auto c = TokenClient();
  auto res = c->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  absl::SleepFor(absl::Milliseconds(2500));
  absl::Status st = PullBlobs(c.get(), *res);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(tokens_->issued(), 2);
}

// A scripted registry that sends blobs to a separate "storage" host with
// signed, single-use URLs (as S3/CDN-backed registries do).
TEST_F(RegistryTest, FollowsRedirectsWithoutCredentialsAndReResolves) {
  const std::string blob = "blob bytes served by storage";
  const Digest digest = Sha256::Of(blob);
  std::atomic<int> signature{0};
  std::atomic<int> storage_auth_headers{0};
  auto storage =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("authorization")) storage_auth_headers.fetch_add(1);
        // Only the newest signature is valid (the others have "expired").
        if (q.query.count("sig") == 0 ||
            q.query.at("sig") != std::to_string(signature.load())) {
          r->status = 403;
          return;
        }
        r->body = blob;
      });
  ASSERT_TRUE(storage.ok());
  std::atomic<int> redirects{0};
  auto registry =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("authorization") == 0 ||
            q.headers.at("authorization") !=
                "Basic " + absl::Base64Escape("carol:pw")) {
          r->status = 401;
          r->headers.push_back({"WWW-Authenticate", "Basic realm=\"test\""});
          return;
        }
        if (absl::StrContains(q.path, "/blobs/")) {
          int sig = signature.fetch_add(1) + 1;
          redirects.fetch_add(1);
          r->status = 307;
          r->headers.push_back(
              {"Location", absl::StrCat((*storage)->url(), "/data?sig=", sig)});
          return;
        }
        r->status = 404;
      });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  auto c = PlainClientWithConfig(
      host + "/r/app:v1",
      WriteDockerConfig(TestDir("cfg"), host, "carol", "pw"));
  Descriptor d;
  d.digest = digest;
  d.size = static_cast<int64_t>(blob.size());
  for (int round = 0; round < 3; ++round) {
    auto b = c->OpenBlob(d);
    ASSERT_TRUE(b.ok()) << b.status();
    absl::Status st;
    EXPECT_EQ(ReadAllBlob(b->get(), &st), blob);
    EXPECT_TRUE(st.ok()) << st;
    if (round == 0) {
      // The cached URL is reused while its signature is valid...
      auto again = c->OpenBlob(d);
      ASSERT_TRUE(again.ok());
      EXPECT_EQ(redirects.load(), 1);
    }
    // ... and re-resolved once storage refuses it.
    signature.fetch_add(100);
  }
  EXPECT_EQ(redirects.load(), 3);
  EXPECT_EQ(storage_auth_headers.load(), 0)
      << "credentials must never reach the redirected host";
}

// Redirects within the registry's own origin (a relative Location: a
// canonical path, a proxy's blob store on the same host) keep the
// registry's credentials, for manifests and blobs alike.
TEST_F(RegistryTest, SameOriginRedirectsKeepCredentials) {
  const std::string blob = "blob bytes behind a same-origin redirect";
  const std::string manifest = absl::StrCat(
      R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",)",
      R"("config":{"mediaType":"application/vnd.oci.image.config.v1+json",)",
      R"("digest":"sha256:)", std::string(64, 'a'),
      R"(","size":2},"layers":[]})");
  std::atomic<int> redirects{0};
  auto registry = LoopbackHttpServer::Start([&](const TestRequest& q,
                                                TestResponse* r) {
    if (q.headers.count("authorization") == 0 ||
        q.headers.at("authorization") !=
            "Basic " + absl::Base64Escape("dave:pw")) {
      r->status = 401;
      r->headers.push_back({"WWW-Authenticate", "Basic realm=\"test\""});
      return;
    }
    if (absl::StartsWith(q.path, "/store/")) {
      r->body = absl::StrContains(q.path, "manifest") ? manifest : blob;
      if (absl::StrContains(q.path, "manifest")) {
        r->headers.push_back(
            {"Content-Type", "application/vnd.oci.image.manifest.v1+json"});
      }
      return;
    }
    redirects.fetch_add(1);
    r->status = absl::StrContains(q.path, "/manifests/") ? 301 : 307;
    r->headers.push_back({"Location", absl::StrContains(q.path, "/manifests/")
                                          ? "/store/manifest"
                                          : "/store/blob?x=1"});
  });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  auto c = PlainClientWithConfig(
      host + "/r/app:v1",
      WriteDockerConfig(TestDir("cfg"), host, "dave", "pw"));
  auto m = c->ResolveManifest();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->manifest_digest, Sha256::Of(manifest));
  ExpectBlob(c.get(), blob);
  EXPECT_EQ(redirects.load(), 2);
}

// A token realm that redirects is followed: within its origin with the
// user's credentials, elsewhere without them.
TEST_F(RegistryTest, TokenRealmRedirectsAreFollowed) {
  std::atomic<int> issued_with_basic{0}, issued_without{0};
  auto other =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        q.headers.count("authorization") ? issued_with_basic.fetch_add(1)
                                         : issued_without.fetch_add(1);
        r->body = R"({"token":"T2"})";
      });
  ASSERT_TRUE(other.ok());
  auto realm =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.path == "/token") {  // same origin, then
          r->status = 307;
          r->headers.push_back({"Location", "/issue?" + q.raw_query});
        } else if (q.path == "/issue") {
          if (q.headers.count("authorization") == 0) {
            r->status = 401;
            return;
          }
          issued_with_basic.fetch_add(1);
          r->body = R"({"token":"T1"})";
        } else {  // "/cross": another origin
          r->status = 302;
          r->headers.push_back({"Location", (*other)->url() + "/issue"});
        }
      });
  ASSERT_TRUE(realm.ok());
  std::atomic<bool> cross{false};
  auto registry =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        const std::string want = cross ? "Bearer T2" : "Bearer T1";
        if (q.headers.count("authorization") == 0 ||
            q.headers.at("authorization") != want) {
          r->status = 401;
          r->headers.push_back({"WWW-Authenticate",
                                absl::StrCat("Bearer realm=\"", (*realm)->url(),
                                             cross ? "/cross" : "/token",
                                             "\",service=\"svc\"")});
          return;
        }
        r->body = "blob";
      });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  const std::string cfg = WriteDockerConfig(TestDir("cfg"), host, "erin", "pw");
  for (bool c : {false, true}) {
    SCOPED_TRACE(c ? "cross-origin" : "same origin");
    cross = c;
    ExpectBlob(PlainClientWithConfig(host + "/r/app:v1", cfg).get(), "blob");
  }
  EXPECT_EQ(issued_with_basic.load(), 1);
  EXPECT_EQ(issued_without.load(), 1) << "credentials left the realm's origin";
}

// A registry that requires a client certificate (mutual TLS) is reached
// with the one hosts.toml's `client` names (containerd's forms), or
// Docker's certs.d X.cert + X.key; without one the handshake fails.
TEST_F(RegistryTest, ClientCertificatesFromHostsConfig) {
  const std::string certs = TestDir("client-certs");
  ASSERT_TRUE(testing::MakeSelfSignedCert(certs + "/client.crt",
                                          certs + "/client.key",
                                          "lazypull-client")
                  .ok());
  RegistryServerOptions plain;
  plain.work_dir = TestDir("push-registry");
  plain.storage_dir = TestDir("shared-storage");
  auto push_reg = StartRegistry(plain);
  ASSERT_NE(push_reg, nullptr);
  TestImage img = Push(*push_reg, "mtls/app", "v1", {LayerTar("m", "mutual")});
  RegistryServerOptions ro;
  ro.work_dir = TestDir("mtls-registry");
  ro.storage_dir = plain.storage_dir;
  ro.tls = true;
  ro.client_cas = {certs + "/client.crt"};
  ro.probe_client_cert = certs + "/client.crt";
  ro.probe_client_key = certs + "/client.key";
  auto reg = StartRegistry(ro);
  ASSERT_NE(reg, nullptr);
  auto resolve = [&](const std::string& hosts_dir) {
    RegistryOptions o;
    o.http = http_.get();
    o.hosts.hosts_dir = hosts_dir;
    o.hosts.ca_files = {reg->ca_file()};
    auto ref = ImageReference::Parse(reg->host() + "/mtls/app:v1");
    auto c = RegistryClient::Create(*ref, o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? (*c)->Resolve() : c.status();
  };
  // No certificate: refused by the server.
  auto none = resolve(TestDir("no-hosts"));
  EXPECT_FALSE(none.ok());
  for (const std::string& client :
       {std::string("[[\"client.crt\", \"client.key\"]]"),
        absl::StrCat("[\"", certs, "/both.pem\"]")}) {
    SCOPED_TRACE(client);
    const std::string hosts_dir = TestDir(absl::StrCat("hosts", client.size()));
    const std::string host_dir = hosts_dir + "/" + reg->host();
    mkdir(host_dir.c_str(), 0755);
    for (const char* f : {"client.crt", "client.key"}) {
      std::ifstream in(certs + "/" + f);
      std::ofstream(host_dir + "/" + f) << in.rdbuf();
    }
    {
      std::ifstream crt(certs + "/client.crt"), key(certs + "/client.key");
      std::ofstream both(certs + "/both.pem");
      both << crt.rdbuf() << key.rdbuf();
    }
    std::ofstream(host_dir + "/hosts.toml")
        << "server = \"" << reg->url() << "\"\nclient = " << client << "\n";
    auto res = resolve(hosts_dir);
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_EQ(res->manifest_digest, img.manifest.digest);
  }
  // Docker's certs.d layout.
  const std::string docker_dir = TestDir("docker-certs.d");
  const std::string host_dir = docker_dir + "/" + reg->host();
  mkdir(host_dir.c_str(), 0755);
  {
    std::ifstream crt(certs + "/client.crt"), key(certs + "/client.key");
    std::ofstream(host_dir + "/client.cert") << crt.rdbuf();
    std::ofstream(host_dir + "/client.key") << key.rdbuf();
  }
  auto res = resolve(docker_dir);
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, img.manifest.digest);
}

// A token realm on another host is reached with the registry's TLS
// settings: --insecure-skip-tls-verify covers it too (it was verified, so a
// self-signed realm failed with a certificate error).
TEST_F(RegistryTest, TokenRealmGetsTheRegistrysTlsSettings) {
  RegistryServerOptions to;  // any TLS server with a self-signed certificate
  to.work_dir = TestDir("tls-realm");
  to.tls = true;
  auto tls_server = StartRegistry(to);
  ASSERT_NE(tls_server, nullptr);
  auto registry =
      LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
        r->status = 401;
        r->headers.push_back({"WWW-Authenticate",
                              absl::StrCat("Bearer realm=\"", tls_server->url(),
                                           "/v2/\",service=\"svc\"")});
      });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  for (bool skip : {false, true}) {
    SCOPED_TRACE(skip ? "skip verify" : "verify");
    RegistryOptions o;
    o.hosts.plain_http = true;
    o.hosts.skip_verify = skip;
    auto m = Client(host + "/r/app:v1", o)->ResolveManifest();
    ASSERT_FALSE(m.ok());
    // Verified: the realm's self-signed certificate is refused. Not
    // verified: the realm answers (with no token: it is not a token server).
    EXPECT_EQ(absl::StrContains(m.status().message(), "curl error 60"), !skip)
        << m.status();
    EXPECT_EQ(absl::StrContains(m.status().message(), "without a token"), skip)
        << m.status();
  }
}

// An identity token (OAuth2 refresh token) goes to the realm as a POST; a
// realm without that form (404/405/400/401) gets the GET form with the
// token as the password, as containerd falls back.
TEST_F(RegistryTest, IdentityTokenFallsBackToGetWhenPostIsRefused) {
  std::atomic<int> posts{0}, gets{0};
  auto realm =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.method == "POST") {
          posts.fetch_add(1);
          r->status = 404;
          return;
        }
        gets.fetch_add(1);
        if (q.headers.count("authorization") == 0 ||
            q.headers.at("authorization") !=
                "Basic " + absl::Base64Escape("frank:idtok")) {
          r->status = 401;
          return;
        }
        r->body = R"({"access_token":"AT"})";
      });
  ASSERT_TRUE(realm.ok());
  auto registry =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("authorization") == 0 ||
            q.headers.at("authorization") != "Bearer AT") {
          r->status = 401;
          r->headers.push_back({"WWW-Authenticate",
                                absl::StrCat("Bearer realm=\"", (*realm)->url(),
                                             "/token\",service=\"svc\"")});
          return;
        }
        r->body = "blob";
      });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  const std::string cfg = TestDir("idtok");
  std::ofstream(cfg + "/config.json")
      << "{\"auths\":{\"" << host << "\":{\"auth\":\""
      << absl::Base64Escape("frank:") << "\",\"identitytoken\":\"idtok\"}}}";
  ExpectBlob(PlainClientWithConfig(host + "/r/app:v1", cfg).get(), "blob");
  EXPECT_EQ(posts.load(), 1);
  EXPECT_EQ(gets.load(), 1);
}

// The refresh token is the POST's body: a realm redirecting the POST to
// another origin does not get it sent there.
TEST_F(RegistryTest, RefreshTokenNeverLeavesTheRealmsOrigin) {
  std::atomic<int> elsewhere{0};
  auto other =
      LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
        elsewhere.fetch_add(1);
        r->body = R"({"access_token":"AT"})";
      });
  ASSERT_TRUE(other.ok());
  auto realm =
      LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
        r->status = 307;
        r->headers.push_back({"Location", (*other)->url() + "/token"});
      });
  ASSERT_TRUE(realm.ok());
  auto registry =
      LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
        ChallengeFor((*realm)->url() + "/token", r);
      });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  const std::string cfg = TestDir("idtok2");
  std::ofstream(cfg + "/config.json")
      << "{\"auths\":{\"" << host << "\":{\"identitytoken\":\"secret\"}}}";
  auto m = PlainClientWithConfig(host + "/r/app:v1", cfg)->ResolveManifest();
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(absl::StrContains(m.status().message(), "307")) << m.status();
  EXPECT_EQ(elsewhere.load(), 0);
}

// A token is what may follow "Bearer " in a header line (RFC 6750): one
// holding CR LF injected a header (or a whole second request) into every
// later request to the registry.
TEST_F(RegistryTest, TokensThatWouldInjectHeadersAreRefused) {
  auto realm =
      LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
        r->body = R"({"token":"abc\r\nX-Injected: yes"})";
      });
  ASSERT_TRUE(realm.ok());
  std::atomic<int> injected{0};
  auto registry =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("x-injected") != 0) injected.fetch_add(1);
        ChallengeFor((*realm)->url() + "/token", r);
      });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  auto m = PlainClientWithConfig(host + "/r/app:v1", TestDir("inject"))
               ->ResolveManifest();
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(absl::StrContains(m.status().message(), "cannot hold"))
      << m.status();
  EXPECT_EQ(injected.load(), 0);
}

// A registry reached over HTTPS that names a plain-HTTP token realm does
// not get the user's credentials sent there in the clear (an anonymous
// token request may go).
TEST_F(RegistryTest, CredentialsNeverGoToAPlainHttpRealmOfAnHttpsRegistry) {
  std::atomic<int> with_creds{0}, without{0};
  auto realm =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        (q.headers.count("authorization") ? with_creds : without).fetch_add(1);
        r->body = R"({"token":"T"})";
      });
  ASSERT_TRUE(realm.ok());
  const std::string registry = "registry.example:443";
  const std::string cfg =
      WriteDockerConfig(TestDir("downgrade"), registry, "dave", "secret");
  CredentialStore::Options co;
  co.docker_config_dir = cfg;
  co.podman_auth_file = "/nonexistent";
  CredentialStore creds(co);
  auto http = CurlHttpTransport::Create();
  ASSERT_TRUE(http.ok());
  RegistryAuth::Options ao;
  ao.http = http->get();
  ao.credentials = &creds;
  RegistryAuth auth(ao);
  const std::vector<std::string> challenge = {
      absl::StrCat("Bearer realm=\"", (*realm)->url(), "/token\"")};
  absl::Status s =
      auth.HandleUnauthorized(registry, registry, "repository:r/app:pull",
                              challenge, "", /*over_tls=*/true);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "not sent over plain HTTP")) << s;
  EXPECT_EQ(with_creds.load() + without.load(), 0);
  // Over plain HTTP already (--plain-http), the realm gets them.
  s = auth.HandleUnauthorized(registry, registry, "repository:r/app:pull",
                              challenge, "", /*over_tls=*/false);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(with_creds.load(), 1);
}

// hosts.toml's [header] table goes with every request to the registry,
// not to the storage host it redirects blob reads to.
TEST_F(RegistryTest, HostsConfigHeadersGoToTheirHostOnly) {
  const std::string blob = "blob with a header";
  std::atomic<int> storage_saw_header{0};
  auto storage =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("x-team")) storage_saw_header.fetch_add(1);
        r->body = blob;
      });
  ASSERT_TRUE(storage.ok());
  std::atomic<int> without_header{0};
  auto registry =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("x-team") == 0 || q.headers.at("x-team") != "a") {
          without_header.fetch_add(1);
          r->status = 403;
          return;
        }
        r->status = 307;
        r->headers.push_back({"Location", (*storage)->url() + "/b"});
      });
  ASSERT_TRUE(registry.ok());
  const std::string host = absl::StrCat("127.0.0.1:", (*registry)->port());
  const std::string hosts_dir = TestDir("hdr.d");
  const std::string host_dir = hosts_dir + "/" + host;
  mkdir(host_dir.c_str(), 0755);
  std::ofstream(host_dir + "/hosts.toml")
      << "server = \"http://" << host << "\"\n[header]\n  x-team = \"a\"\n";
  RegistryOptions o;
  o.http = http_.get();
  o.hosts.hosts_dir = hosts_dir;
  auto ref = ImageReference::Parse(host + "/r/app:v1");
  auto c = RegistryClient::Create(*ref, o);
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectBlob(c->get(), blob);
  EXPECT_EQ(without_header.load(), 0);
  EXPECT_EQ(storage_saw_header.load(), 0);
}

TEST_F(RegistryTest, MirrorsFirstWithNsThenTheOrigin) {
  auto reg = StartRegistry({});
  ASSERT_NE(reg, nullptr);
  TestImage img = Push(*reg, "mir/app", "v1", {LayerTar("m", "mirrored")});
  auto mirror =
      LoopbackHttpServer::Start([](const TestRequest&, TestResponse* r) {
        r->status = 404;
        r->body =
            "{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"no\"}]}";
      });
  ASSERT_TRUE(mirror.ok());
  const std::string hosts_dir = TestDir("certs.d");
  const std::string host_dir = hosts_dir + "/" + reg->host();
  mkdir(host_dir.c_str(), 0755);
  std::ofstream(host_dir + "/hosts.toml")
      << "server = \"" << reg->url() << "\"\n\n[host.\"" << (*mirror)->url()
      << "\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
  RegistryOptions o;
  o.http = http_.get();
  o.hosts.hosts_dir = hosts_dir;  // no --plain-http: hosts.toml says http://
  auto ref = ImageReference::Parse(reg->host() + "/mir/app:v1");
  auto c = RegistryClient::Create(*ref, o);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->hosts().size(), 2u);
  auto res = (*c)->Resolve();
  ASSERT_TRUE(res.ok()) << res.status();
  EXPECT_EQ(res->manifest_digest, img.manifest.digest);
  auto reqs = (*mirror)->requests();
  ASSERT_FALSE(reqs.empty());
  EXPECT_EQ(reqs[0].path, "/v2/mir/app/manifests/v1");
  EXPECT_EQ(reqs[0].query["ns"], reg->host());

  // Range reads of a blob the mirror lacks ask it once, then go straight to
  // the origin (a lazy mount's every read would pay the mirror's round trip).
  const size_t before = (*mirror)->requests().size();
  const Descriptor& layer = res->manifest.layers[0];
  for (int i = 0; i < 5; ++i) {
    std::string source;
    auto r = (*c)->OpenBlobRange(layer, i, i + 9, &source);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)->response().status, 206);
    EXPECT_TRUE(absl::StartsWith(source, reg->url())) << source;
  }
  EXPECT_EQ((*mirror)->requests().size(), before + 1);
}

// A challenge naming several scopes (space-separated, as distribution's
// registry sends for a cross-repository mount) asks the realm for each as
// its own `scope` parameter, as the token spec and containerd do.
TEST_F(RegistryTest, AChallengesScopesGoToTheRealmOneByOne) {
  auto realm =
      LoopbackHttpServer::Start([](const TestRequest&, TestResponse* r) {
        r->body = "{\"token\":\"tok\",\"expires_in\":300}";
      });
  ASSERT_TRUE(realm.ok());
  const std::string realm_url = (*realm)->url() + "/token";
  auto server =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("authorization") == 0) {
          r->status = 401;
          r->headers.push_back(
              {"WWW-Authenticate",
               "Bearer realm=\"" + realm_url +
                   "\",service=\"svc\",scope=\"repository:team/app:pull "
                   "repository:team/base:pull\""});
          return;
        }
        r->status = 404;
        r->body =
            "{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"no\"}]}";
      });
  ASSERT_TRUE(server.ok());
  RegistryOptions o;
  o.hosts.plain_http = true;
  auto c =
      Client((*server)->url().substr(strlen("http://")) + "/team/app:v1", o);
  auto res = c->Resolve();
  EXPECT_EQ(res.status().code(), absl::StatusCode::kNotFound) << res.status();
  auto reqs = (*realm)->requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].query_all("scope"),
            (std::vector<std::string>{"repository:team/app:pull",
                                      "repository:team/base:pull"}));
  EXPECT_EQ(reqs[0].query["service"], "svc");
}

// A whole-blob download (pull) cut off at storage whose signed URLs serve
// once (as one that expired meanwhile refuses the next use): the transport's
// resume at the same URL got 403 and failed the pull; the rest is asked of
// the registry again, which resolves a fresh URL.
TEST_F(RegistryTest, ACutDownloadWhoseSignedUrlExpiredIsAskedAgain) {
  std::string blob(1 << 20, '\0');
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(i * 7);
  auto server = testing::OneUseUrlStorage::Start(blob, 300000);
  ASSERT_TRUE(server.ok()) << server.status();
  RegistryOptions o;
  o.hosts.plain_http = true;
  auto c = Client((*server)->host() + "/team/app:v1", o);
  Descriptor d;
  d.digest = Sha256::Of(blob);
  d.size = static_cast<int64_t>(blob.size());
  auto reader = c->OpenBlob(d);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string got;
  for (;;) {
    absl::StatusOr<absl::string_view> piece = (*reader)->Read(64 << 10);
    ASSERT_TRUE(piece.ok()) << piece.status();
    if (piece->empty()) break;
    got.append(piece->data(), piece->size());
  }
  EXPECT_TRUE(got == blob);
  EXPECT_EQ((*server)->registry_hits(), 2)
      << "the registry was not asked again";
}

// A long-lived client (a mount) follows credentials that change under it:
// the password the registry accepts is rotated, and so is the one in the
// config (a helper's short-lived password, another `docker login`). The
// next 401 reads them again instead of failing every read from then on.
TEST_F(RegistryTest, RotatedCredentialsAreReadAgainAfterA401) {
  std::atomic<int> accepted{1};
  auto server = LoopbackHttpServer::Start([&](const TestRequest& q,
                                              TestResponse* r) {
    auto a = q.headers.find("authorization");
    const std::string want =
        "Basic " + absl::Base64Escape(absl::StrCat("u:pw", accepted.load()));
    if (a == q.headers.end() || a->second != want) {
      r->status = 401;
      r->headers.push_back({"WWW-Authenticate", "Basic realm=\"r\""});
      return;
    }
    r->status = 404;  // (authenticated: what is asked for is not here)
    r->body = "{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"no\"}]}";
  });
  ASSERT_TRUE(server.ok());
  const std::string host = (*server)->url().substr(strlen("http://"));
  const std::string config_dir = TestDir("rotating-creds");
  auto write_config = [&](int n) {
    WriteDockerConfig(config_dir, host, "u", absl::StrCat("pw", n));
  };
  write_config(1);
  CredentialStore::Options co;
  co.docker_config_dir = config_dir;
  co.podman_auth_file = "/nonexistent";
  CredentialStore store(co);
  RegistryOptions o;
  o.http = http_.get();
  o.credentials = &store;
  o.hosts.plain_http = true;
  auto c = Client(host + "/team/app:v1", o);
  auto res = c->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kNotFound) << res.status();

  accepted = 2;
  write_config(2);
  res = c->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kNotFound) << res.status();
  EXPECT_EQ((*server)->requests().back().headers["authorization"],
            "Basic " + absl::Base64Escape("u:pw2"));

  // Credentials rotated on the server only: refused, naming their file.
  accepted = 3;
  res = c->Resolve();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(res.status().message(), "rejected"))
      << res.status();
  EXPECT_TRUE(absl::StrContains(res.status().message(), "config.json"))
      << res.status();
}

// A hosts.toml `server` on another host than the registry (a pull-through
// cache as the only host, as containerd's docs suggest): requests carry
// ?ns=<registry>, and the credentials sent are the cache's own, never the
// registry's; its path is the API root with override_path.
TEST_F(RegistryTest, AServerElsewhereGetsNsAndItsOwnCredentials) {
  auto cache =
      LoopbackHttpServer::Start([](const TestRequest& q, TestResponse* r) {
        if (q.headers.count("authorization") == 0) {
          r->status = 401;
          r->headers.push_back({"WWW-Authenticate", "Basic realm=\"cache\""});
          return;
        }
        r->status = 404;
        r->body =
            "{\"errors\":[{\"code\":\"NAME_UNKNOWN\",\"message\":\"no\"}]}";
      });
  ASSERT_TRUE(cache.ok());
  const std::string registry = "registry.invalid:5000";
  const std::string hosts_dir = TestDir("server-elsewhere.d");
  mkdir((hosts_dir + "/" + registry).c_str(), 0755);
  std::ofstream(hosts_dir + "/" + registry + "/hosts.toml")
      << "server = \"" << (*cache)->url() << "/api/docker/remote\"\n"
      << "override_path = true\n";
  const std::string config_dir = TestDir("server-elsewhere-creds");
  const std::string cache_host = (*cache)->url().substr(strlen("http://"));
  std::ofstream(config_dir + "/config.json")
      << "{\"auths\":{\"" << registry << "\":{\"auth\":\""
      << absl::Base64Escape("upstream:UPSTREAM-SECRET") << "\"},\""
      << cache_host << "\":{\"auth\":\""
      << absl::Base64Escape("cacheuser:cachepass") << "\"}}}";
  CredentialStore::Options co;
  co.docker_config_dir = config_dir;
  co.podman_auth_file = "/nonexistent";
  CredentialStore store(co);
  RegistryOptions o;
  o.http = http_.get();
  o.credentials = &store;
  o.hosts.hosts_dir = hosts_dir;
  auto ref = ImageReference::Parse(registry + "/team/app:v1");
  ASSERT_TRUE(ref.ok());
  auto c = RegistryClient::Create(*ref, o);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->hosts().size(), 1u);
  EXPECT_TRUE((*c)->hosts()[0].mirror);
  auto res = (*c)->Resolve();
  EXPECT_FALSE(res.ok());  // the cache has no such image
  auto reqs = (*cache)->requests();
  ASSERT_GE(reqs.size(), 2u);
  for (TestRequest q : reqs) {
    EXPECT_EQ(q.path, "/api/docker/remote/team/app/manifests/v1");
    EXPECT_EQ(q.query["ns"], registry);
    auto a = q.headers.find("authorization");
    if (a != q.headers.end()) {
      EXPECT_EQ(a->second,
                "Basic " + absl::Base64Escape("cacheuser:cachepass"));
    }
  }
  EXPECT_EQ(reqs.back().headers.count("authorization"), 1u);
}

}  // namespace
}  // namespace lazypull
