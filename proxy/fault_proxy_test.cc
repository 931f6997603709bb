// FaultProxy against a RangeServer origin (and docker-registry when it is
// installed), with libcurl as the client: every fault is observed the way a
// registry client would see it.
#include "proxy/fault_proxy.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/digest.h"
#include "gtest/gtest.h"
#include "proxy/fault_rules.h"
#include "proxy/range_server.h"
#include "proxy/registry_process.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

constexpr char kBlobPath[] = "/v2/test/blobs/sha256:0123";
constexpr char kChunkedPath[] = "/v2/test/blobs/sha256:chunked";
constexpr size_t kBlobSize = 100000;

std::string RandomBytes(size_t n, int seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// What a libcurl client saw.
struct Fetch {
  CURLcode rc = CURLE_OK;
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lowercase names, last reply
  double ms = 0;
  long redirects = 0;

  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

size_t OnBody(char* p, size_t size, size_t n, void* ud) {
  static_cast<Fetch*>(ud)->body.append(p, size * n);
  return size * n;
}

size_t OnHeader(char* p, size_t size, size_t n, void* ud) {
  Fetch* f = static_cast<Fetch*>(ud);
  absl::string_view line(p, size * n);
  if (absl::StartsWith(line, "HTTP/")) f->headers.clear();  // a new reply
  size_t colon = line.find(':');
  if (colon != absl::string_view::npos) {
    f->headers[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * n;
}

struct Request {
  std::string method = "GET";
  std::vector<std::string> headers;
  bool follow = false;
  const std::string* upload = nullptr;  // PUT body
  bool chunked_upload = false;
};

struct UploadState {
  const std::string* data;
  size_t pos = 0;
};

size_t OnRead(char* p, size_t size, size_t n, void* ud) {
  UploadState* u = static_cast<UploadState*>(ud);
  size_t k = std::min(size * n, u->data->size() - u->pos);
  memcpy(p, u->data->data() + u->pos, k);
  u->pos += k;
  return k;
}

// One request on `curl` (reused between calls, so connections are kept).
Fetch Perform(CURL* curl, const std::string& url, const Request& req = {}) {
  Fetch f;
  curl_easy_reset(curl);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROXY, "");
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &f);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &f);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, req.follow ? 1L : 0L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
  UploadState up{req.upload};
  std::vector<std::string> headers = req.headers;
  if (req.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (req.upload != nullptr) {
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, OnRead);
    curl_easy_setopt(curl, CURLOPT_READDATA, &up);
    if (req.chunked_upload) {
      headers.push_back("Transfer-Encoding: chunked");
    } else {
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE,
                       static_cast<curl_off_t>(req.upload->size()));
    }
    if (req.method != "PUT") {
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    }
  } else if (req.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  curl_slist* list = nullptr;
  for (const std::string& h : headers)
    list = curl_slist_append(list, h.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
  absl::Time t0 = absl::Now();
  f.rc = curl_easy_perform(curl);
  f.ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &f.status);
  curl_easy_getinfo(curl, CURLINFO_REDIRECT_COUNT, &f.redirects);
  curl_slist_free_all(list);
  return f;
}

Request WithRange(const std::string& range) {
  Request r;
  r.headers.push_back("Range: " + range);
  return r;
}

class FaultProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    origin_ = *RangeServer::Start();
    blob_ = RandomBytes(kBlobSize, 1);
    origin_->Put(kBlobPath, blob_);
    origin_->Put(kChunkedPath, blob_, /*chunked=*/true);
    FaultProxy::Options o;
    o.upstream_port = origin_->port();
    absl::StatusOr<std::unique_ptr<FaultProxy>> p = FaultProxy::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    proxy_ = std::move(*p);
    curl_ = curl_easy_init();
  }
  void TearDown() override {
    curl_easy_cleanup(curl_);
    proxy_.reset();
  }

  void SetRules(const std::string& text) {
    absl::StatusOr<std::vector<FaultRule>> rules = ParseFaultRules(text);
    ASSERT_TRUE(rules.ok()) << rules.status();
    ASSERT_TRUE(proxy_->SetRules(std::move(*rules)).ok());
  }
  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", proxy_->port(), path);
  }
  Fetch Get(absl::string_view path, Request req = {}) {
    return Perform(curl_, Url(path), req);
  }

  std::unique_ptr<RangeServer> origin_;
  std::unique_ptr<FaultProxy> proxy_;
  std::string blob_;
  CURL* curl_ = nullptr;
};

TEST_F(FaultProxyTest, PassesRequestsThroughOnOneKeptAliveConnection) {
  Fetch full = Get(kBlobPath);
  ASSERT_EQ(full.rc, CURLE_OK) << curl_easy_strerror(full.rc);
  EXPECT_EQ(full.status, 200);
  EXPECT_TRUE(full.body == blob_);
  Fetch part = Get(kBlobPath, WithRange("bytes=100-199"));
  EXPECT_EQ(part.status, 206);
  EXPECT_EQ(part.Header("content-range"), "bytes 100-199/100000");
  EXPECT_EQ(part.body, blob_.substr(100, 100));
  Fetch chunked = Get(kChunkedPath);
  EXPECT_EQ(chunked.status, 200);
  EXPECT_EQ(chunked.Header("transfer-encoding"), "chunked");
  EXPECT_TRUE(chunked.body == blob_);
  Request head;
  head.method = "HEAD";
  Fetch h = Get(kBlobPath, head);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.Header("content-length"), "100000");
  EXPECT_EQ(Get("/v2/test/blobs/sha256:none").status, 404);

  FaultCounters c = proxy_->counters();
  EXPECT_EQ(c.connections, 1u);
  EXPECT_EQ(c.requests, 5u);
  EXPECT_EQ(c.upstream_requests, 5u);
  EXPECT_EQ(c.faults, 0u);
  EXPECT_GT(c.bytes_to_clients, 2 * kBlobSize + 100);
}

TEST_F(FaultProxyTest, ForwardsRequestBodies) {
  const std::string data = RandomBytes(300000, 2);
  Request put;
  put.method = "PUT";
  put.upload = &data;
  EXPECT_EQ(Get("/v2/test/blobs/uploads/1", put).status, 201);
  EXPECT_TRUE(origin_->Get("/v2/test/blobs/uploads/1") == data);
  put.chunked_upload = true;
  EXPECT_EQ(Get("/v2/test/blobs/uploads/2", put).status, 201);
  EXPECT_TRUE(origin_->Get("/v2/test/blobs/uploads/2") == data);
  // The proxy answers "100 Continue" itself: curl does not wait its 1 s.
  put.chunked_upload = false;
  put.method = "POST";
  put.headers.push_back("Expect: 100-continue");
  Fetch f = Get("/v2/test/blobs/uploads/3", put);
  EXPECT_EQ(f.status, 201);
  EXPECT_LT(f.ms, 900);
  EXPECT_TRUE(origin_->Get("/v2/test/blobs/uploads/3") == data);
}

TEST_F(FaultProxyTest, AnswersChosenStatusesWithoutAskingUpstream) {
  for (int status : {401, 403, 404, 429, 500, 503}) {
    SCOPED_TRACE(status);
    SetRules(
        absl::StrCat("GET /blobs/ nth=1 status=", status, " retry-after=3\n"));
    size_t upstream_before = origin_->requests().size();
    Fetch f = Get(kBlobPath);
    ASSERT_EQ(f.rc, CURLE_OK);
    EXPECT_EQ(f.status, status);
    EXPECT_EQ(origin_->requests().size(), upstream_before);
    EXPECT_TRUE(absl::StrContains(f.body, "\"errors\":[{\"code\":\""))
        << f.body;
    if (status == 401) {
      EXPECT_TRUE(absl::StartsWith(f.Header("www-authenticate"),
                                   "Bearer realm=\"http://127.0.0.1:"));
      EXPECT_TRUE(absl::StrContains(f.Header("www-authenticate"),
                                    "scope=\"repository:test:pull\""));
    }
    if (status == 429 || status == 503) {
      EXPECT_EQ(f.Header("retry-after"), "3");
    } else {
      EXPECT_EQ(f.Header("retry-after"), "");
    }
    // nth=1: the next request goes through.
    Fetch next = Get(kBlobPath);
    EXPECT_EQ(next.status, 200);
    EXPECT_EQ(origin_->requests().size(), upstream_before + 1);
  }
  // Synthetic answers keep the connection alive.
  EXPECT_EQ(proxy_->counters().connections, 1u);
}

// Without Retry-After or any challenge, when the rule says so; requests
// carrying credentials are counted per listener.
TEST_F(FaultProxyTest, OmitsRetryAfterAndChallengeAndCountsCredentials) {
  FaultRule no_challenge;
  no_challenge.method = "GET";
  no_challenge.target_contains = "/blobs/";
  no_challenge.when = Occurrence::kNth;
  no_challenge.n = 1;
  no_challenge.status = 401;
  no_challenge.www_authenticate = "none";
  ASSERT_TRUE(proxy_->SetRules({no_challenge}).ok());
  Fetch f = Get(kBlobPath);
  EXPECT_EQ(f.status, 401);
  EXPECT_EQ(f.headers.count("www-authenticate"), 0u);
  SetRules("GET /blobs/ nth=1 status=503 retry-after=none\n");
  f = Get(kBlobPath);
  EXPECT_EQ(f.status, 503);
  EXPECT_EQ(f.headers.count("retry-after"), 0u);

  proxy_->ResetCounters();
  SetRules("GET /blobs/ every redirect=30s\n");
  Request with_creds;
  with_creds.headers.push_back("Authorization: Basic eDp5");
  EXPECT_EQ(Get(kBlobPath, with_creds).status, 307);
  Fetch hop = Get(kBlobPath);
  CURL* other = curl_easy_init();
  EXPECT_EQ(Perform(other, hop.Header("location")).status, 200);
  EXPECT_EQ(Perform(other, hop.Header("location"), with_creds).status, 200);
  curl_easy_cleanup(other);
  FaultCounters c = proxy_->counters();
  EXPECT_EQ(c.authorized, 1u);
  EXPECT_EQ(c.blob_requests, 2u);
  EXPECT_EQ(c.blob_authorized, 1u);
  EXPECT_TRUE(
      absl::StrContains(proxy_->CountersJson(), "\"blob_authorized\":1"))
      << proxy_->CountersJson();
}

TEST_F(FaultProxyTest, OccurrencesAndPerRuleCounters) {
  FaultRule every_third_404;
  every_third_404.method = "GET";
  every_third_404.target_contains = "/blobs/";
  every_third_404.when = Occurrence::kNth;
  every_third_404.n = 3;
  every_third_404.status = 404;
  FaultRule first_two_500 = every_third_404;
  first_two_500.when = Occurrence::kFirstN;
  first_two_500.n = 2;
  first_two_500.status = 500;
  first_two_500.name = "first two";
  ASSERT_TRUE(proxy_->SetRules({every_third_404, first_two_500}).ok());
  std::vector<long> seen;
  for (int i = 0; i < 4; ++i) seen.push_back(Get(kBlobPath).status);
  EXPECT_EQ(seen, (std::vector<long>{500, 500, 404, 200}));
  FaultCounters c = proxy_->counters();
  ASSERT_EQ(c.rules.size(), 2u);
  EXPECT_EQ(c.rules[0].name, "rule 1");
  EXPECT_EQ(c.rules[0].matched, 4u);
  EXPECT_EQ(c.rules[0].fired, 1u);
  EXPECT_EQ(c.rules[1].name, "first two");
  EXPECT_EQ(c.rules[1].fired, 2u);
  EXPECT_EQ(c.faults, 3u);
  EXPECT_TRUE(absl::StrContains(
      proxy_->CountersJson(),
      "\"rules\":[{\"name\":\"rule 1\",\"matched\":4,\"fired\":1},"
      "{\"name\":\"first two\",\"matched\":4,\"fired\":2}]"))
      << proxy_->CountersJson();
  proxy_->ResetCounters();
  c = proxy_->counters();
  EXPECT_EQ(c.requests, 0u);
  EXPECT_EQ(c.rules[1].matched, 0u);
  EXPECT_EQ(Get(kBlobPath).status, 500);  // occurrences count afresh
}

TEST_F(FaultProxyTest, RefusesMultiRangeRequests) {
  for (int status : {400, 416, 501}) {
    SCOPED_TRACE(status);
    SetRules(absl::StrCat("GET * every refuse-multirange=", status, "\n"));
    Fetch multi = Get(kBlobPath, WithRange("bytes=0-9,20-29"));
    EXPECT_EQ(multi.status, status);
    Fetch single = Get(kBlobPath, WithRange("bytes=0-9"));
    EXPECT_EQ(single.status, 206);
    EXPECT_EQ(single.body, blob_.substr(0, 10));
  }
}

TEST_F(FaultProxyTest, DropsConnectionsMidBody) {
  SetRules(
      "GET /sha256:0123 nth=1 drop-after=1000\n"
      "GET /sha256:0123 nth=2 drop-after=1000 reset\n"
      "GET /sha256:chunked nth=1 drop-after=5000\n"
      "GET /sha256:0123 nth=3 drop-after=-1\n");
  Fetch fin = Get(kBlobPath);
  EXPECT_EQ(fin.rc, CURLE_PARTIAL_FILE) << curl_easy_strerror(fin.rc);
  EXPECT_EQ(fin.status, 200);
  EXPECT_EQ(fin.body, blob_.substr(0, 1000));
  Fetch rst = Get(kBlobPath);
  EXPECT_NE(rst.rc, CURLE_OK);
  EXPECT_LE(rst.body.size(), 1000u);
  Fetch chunked = Get(kChunkedPath);
  EXPECT_NE(chunked.rc, CURLE_OK);
  EXPECT_EQ(chunked.body, blob_.substr(0, 5000));
  Fetch nothing = Get(kBlobPath);
  EXPECT_EQ(nothing.rc, CURLE_GOT_NOTHING) << curl_easy_strerror(nothing.rc);
  Fetch ok = Get(kBlobPath);
  EXPECT_EQ(ok.rc, CURLE_OK);
  EXPECT_TRUE(ok.body == blob_);
  EXPECT_EQ(proxy_->counters().connections, 5u);
}

TEST_F(FaultProxyTest, AnswersAWholeBody200InsteadOf206) {
  SetRules("GET /blobs/ every full-200\n");
  Fetch f = Get(kBlobPath, WithRange("bytes=100-199"));
  EXPECT_EQ(f.status, 200);
  EXPECT_EQ(f.Header("content-range"), "");
  EXPECT_TRUE(f.body == blob_);
  EXPECT_EQ(origin_->requests().back().headers.Get("Range"), nullptr);
}

TEST_F(FaultProxyTest, ShiftsContentRange) {
  SetRules("GET /blobs/ every shift-content-range=5\n");
  Fetch f = Get(kBlobPath, WithRange("bytes=100-199"));
  EXPECT_EQ(f.status, 206);
  EXPECT_EQ(f.Header("content-range"), "bytes 105-204/100000");
  EXPECT_EQ(f.body, blob_.substr(100, 100));  // the body is not moved
  SetRules("GET /blobs/ every shift-content-range=-100\n");
  EXPECT_EQ(Get(kBlobPath, WithRange("bytes=100-199")).Header("content-range"),
            "bytes 0-99/100000");
}

TEST_F(FaultProxyTest, FlipsOneBodyByte) {
  SetRules(
      "GET /sha256:0123 every flip-byte=10\n"
      "GET /sha256:chunked every flip-byte=1500\n");
  for (auto [path, offset] :
       {std::pair<const char*, size_t>{kBlobPath, 10}, {kChunkedPath, 1500}}) {
    Fetch f = Get(path);
    ASSERT_EQ(f.rc, CURLE_OK);
    ASSERT_EQ(f.body.size(), kBlobSize);
    std::string want = blob_;
    want[offset] = static_cast<char>(want[offset] ^ 0xff);
    EXPECT_TRUE(f.body == want) << path;
  }
}

TEST_F(FaultProxyTest, SlowsBodies) {
  const std::string small = RandomBytes(20000, 3);
  origin_->Put("/small", small);
  SetRules("GET /small every slow=40000\n");
  Fetch f = Get("/small");
  ASSERT_EQ(f.rc, CURLE_OK);
  EXPECT_TRUE(f.body == small);
  printf("measured: 20000 bytes at slow=40000 B/s in %.1f ms (ideal 500)\n",
         f.ms);
  EXPECT_GT(f.ms, 500 * 0.75);
  EXPECT_LT(f.ms, 500 * 1.8);  // slack for a loaded CI machine
}

TEST_F(FaultProxyTest, RedirectsToSignedExpiringBlobStorageUrls) {
  SetRules("GET /blobs/ every redirect=400ms\n");
  Fetch hop = Get(kBlobPath, WithRange("bytes=10-19"));
  EXPECT_EQ(hop.status, 307);
  const std::string location = hop.Header("location");
  EXPECT_TRUE(absl::StartsWith(
      location, absl::StrCat("http://127.0.0.1:", proxy_->blob_port(),
                             kBlobPath, "?expires=")))
      << location;
  EXPECT_TRUE(absl::StrContains(location, "&sig="));

  Request follow = WithRange("bytes=10-19");
  follow.follow = true;
  Fetch f = Get(kBlobPath, follow);
  EXPECT_EQ(f.rc, CURLE_OK);
  EXPECT_EQ(f.redirects, 1);
  EXPECT_EQ(f.status, 206);
  EXPECT_EQ(f.body, blob_.substr(10, 10));
  // The storage got the path without the signature.
  EXPECT_EQ(origin_->requests().back().target, kBlobPath);

  CURL* other = curl_easy_init();
  Fetch tampered = Perform(other, location + "0");
  EXPECT_EQ(tampered.status, 403);
  EXPECT_TRUE(absl::StrContains(tampered.body, "AccessDenied"));
  Fetch unsigned_url = Perform(
      other, absl::StrCat("http://127.0.0.1:", proxy_->blob_port(), kBlobPath));
  EXPECT_EQ(unsigned_url.status, 403);
  absl::SleepFor(absl::Milliseconds(500));
  Fetch expired = Perform(other, location);
  EXPECT_EQ(expired.status, 403);
  EXPECT_TRUE(absl::StrContains(expired.body, "expired")) << expired.body;
  curl_easy_cleanup(other);

  FaultCounters c = proxy_->counters();
  EXPECT_EQ(c.blob_requests, 4u);
  EXPECT_EQ(c.blob_denied, 3u);
  EXPECT_EQ(c.faults, 2u);
}

TEST_F(FaultProxyTest, StopsDuringASlowBody) {
  SetRules("GET /blobs/ every slow=1000\n");
  std::thread client([&] {
    CURL* c = curl_easy_init();
    Fetch f = Perform(c, Url(kBlobPath));
    EXPECT_NE(f.rc, CURLE_OK);
    curl_easy_cleanup(c);
  });
  absl::SleepFor(absl::Milliseconds(200));
  absl::Time t0 = absl::Now();
  proxy_->Stop();
  EXPECT_LT(absl::ToDoubleMilliseconds(absl::Now() - t0), 1000);
  client.join();
}

// --- The binary in --faults mode -----------------------------------------

std::string ProxyBinary() {
  const char* srcdir = getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".",
                      "/lazypull/proxy/lazypull-proxy");
}

TEST_F(FaultProxyTest, BinaryLoadsRuleFilesAndServesCounters) {
  const char* tmp = getenv("TEST_TMPDIR");
  const std::string rules_path =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/rules.txt");
  std::ofstream(rules_path) << "# test rules\nGET /blobs/ nth=1 status=429\n";
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const std::string binary = ProxyBinary();
  const std::string upstream = absl::StrCat("127.0.0.1:", origin_->port());
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out[1], 1);
    execl(binary.c_str(), binary.c_str(), "--upstream", upstream.c_str(),
          "--faults", rules_path.c_str(), "--rtt", "10ms", "--control-port",
          "0", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  FILE* f = fdopen(out[0], "r");
  int port = 0, blob = 0, control = 0;
  char line[256];
  while (control == 0 && fgets(line, sizeof(line), f)) {
    sscanf(line, "listening 127.0.0.1:%d", &port);
    sscanf(line, "blob-storage 127.0.0.1:%d", &blob);
    sscanf(line, "control 127.0.0.1:%d", &control);
  }
  ASSERT_GT(port, 0);
  ASSERT_GT(blob, 0);
  ASSERT_GT(control, 0);
  auto url = [](int p, absl::string_view path) {
    return absl::StrCat("http://127.0.0.1:", p, path);
  };
  EXPECT_EQ(Perform(curl_, url(port, kBlobPath)).status, 429);
  Fetch ok = Perform(curl_, url(port, kBlobPath));
  EXPECT_EQ(ok.status, 200);
  // Through the emulated link (rtt 10 ms) between proxy and upstream.
  EXPECT_GE(ok.ms, 10);
  Request rules;
  rules.method = "POST";
  const std::string new_rules = "GET /blobs/ every status=404 name=gone\n";
  rules.upload = &new_rules;
  Fetch loaded = Perform(curl_, url(control, "/rules"), rules);
  EXPECT_EQ(loaded.status, 200);
  EXPECT_LT(loaded.ms, 500);  // "Expect: 100-continue" answered at once
  EXPECT_EQ(Perform(curl_, url(port, kBlobPath)).status, 404);
  const std::string bad_rules = "GET /blobs/ whenever status=404\n";
  rules.upload = &bad_rules;
  EXPECT_EQ(Perform(curl_, url(control, "/rules"), rules).status, 400);
  Fetch counters = Perform(curl_, url(control, "/counters"));
  EXPECT_EQ(counters.status, 200);
  EXPECT_TRUE(absl::StrContains(counters.body, "\"link\":{")) << counters.body;
  EXPECT_TRUE(absl::StrContains(counters.body, "\"requests\":3"))
      << counters.body;
  EXPECT_TRUE(absl::StrContains(
      counters.body,
      "\"rules\":[{\"name\":\"gone\",\"matched\":1,\"fired\":1}"))
      << counters.body;
  Request reset;
  reset.method = "POST";
  EXPECT_EQ(Perform(curl_, url(control, "/reset"), reset).status, 200);
  counters = Perform(curl_, url(control, "/counters"));
  EXPECT_TRUE(absl::StrContains(counters.body, "\"requests\":0"))
      << counters.body;
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  fclose(f);
}

// --- In front of a real registry -------------------------------------------

TEST(FaultProxyRegistryTest, FaultsOnDockerRegistryBlobs) {
  if (!RegistryProcess::Available()) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << RegistryProcess::kBinary
                 << " is missing (./dev.sh test installs docker-registry); "
                    "the fault proxy is NOT tested against a real registry";
  }
  const char* tmp = getenv("TEST_TMPDIR");
  std::string dir = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/registry");
  mkdir(dir.c_str(), 0755);
  absl::StatusOr<std::unique_ptr<RegistryProcess>> registry =
      RegistryProcess::Start(dir, /*tls=*/false);
  ASSERT_TRUE(registry.ok()) << registry.status();
  FaultProxy::Options o;
  o.upstream_port = (*registry)->port();
  std::unique_ptr<FaultProxy> proxy = *FaultProxy::Start(o);
  CURL* curl = curl_easy_init();
  auto url = [&](absl::string_view path) {
    return absl::StrCat("http://127.0.0.1:", proxy->port(), path);
  };

  // Push a blob through the proxy: POST starts an upload, PUT completes it.
  const std::string blob = RandomBytes(200000, 4);
  const std::string digest = Sha256::Of(blob).ToString();
  Request post;
  post.method = "POST";
  const std::string empty;
  post.upload = &empty;
  Fetch started = Perform(curl, url("/v2/test/blobs/uploads/"), post);
  ASSERT_EQ(started.status, 202) << started.body;
  std::string location = started.Header("location");
  ASSERT_FALSE(location.empty());
  if (absl::StartsWith(location, "/")) location = url(location);
  // The registry built the upload URL from the Host header: the proxy's.
  EXPECT_TRUE(absl::StartsWith(location, url("/"))) << location;
  Request put;
  put.method = "PUT";
  put.upload = &blob;
  put.headers.push_back("Content-Type: application/octet-stream");
  Fetch done =
      Perform(curl,
              absl::StrCat(location,
                           location.find('?') == std::string::npos ? "?" : "&",
                           "digest=", digest),
              put);
  ASSERT_EQ(done.status, 201) << done.body;

  const std::string path = absl::StrCat("/v2/test/blobs/", digest);
  Request head;
  head.method = "HEAD";
  Fetch h = Perform(curl, url(path), head);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.Header("content-length"), "200000");
  Fetch part = Perform(curl, url(path), WithRange("bytes=1000-1999"));
  EXPECT_EQ(part.status, 206);
  EXPECT_EQ(part.body, blob.substr(1000, 1000));

  auto set_rules = [&](const char* text) {
    ASSERT_TRUE(proxy->SetRules(*ParseFaultRules(text)).ok());
  };
  set_rules("GET /blobs/ nth=1 full-200\n");
  Fetch full = Perform(curl, url(path), WithRange("bytes=1000-1999"));
  EXPECT_EQ(full.status, 200);
  EXPECT_TRUE(full.body == blob);
  set_rules("GET /blobs/ nth=1 drop-after=5000\n");
  Fetch cut = Perform(curl, url(path));
  EXPECT_EQ(cut.rc, CURLE_PARTIAL_FILE);
  EXPECT_EQ(cut.body, blob.substr(0, 5000));
  set_rules("GET /blobs/ every refuse-multirange=416\n");
  EXPECT_EQ(Perform(curl, url(path), WithRange("bytes=0-9,100-109")).status,
            416);
  set_rules("GET /blobs/ every redirect=30s\n");
  Request follow = WithRange("bytes=100-199");
  follow.follow = true;
  Fetch via_storage = Perform(curl, url(path), follow);
  EXPECT_EQ(via_storage.redirects, 1);
  EXPECT_EQ(via_storage.status, 206);
  EXPECT_EQ(via_storage.body, blob.substr(100, 100));
  set_rules("GET /blobs/ every status=401\n");
  Fetch denied = Perform(curl, url(path));
  EXPECT_EQ(denied.status, 401);
  EXPECT_TRUE(absl::StrContains(denied.Header("www-authenticate"),
                                "scope=\"repository:test:pull\""));
  curl_easy_cleanup(curl);
}

}  // namespace
}  // namespace lazypull::proxy

// libcurl's global state, once, before any test thread.
int main(int argc, char** argv) {
  curl_global_init(CURL_GLOBAL_ALL);
  ::testing::InitGoogleTest(&argc, argv);
  int rc = RUN_ALL_TESTS();
  curl_global_cleanup();
  return rc;
}
