#include "fetch/curl_http.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "core/status_macros.h"
#include "fetch/testing/loopback_http_server.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using testing::LoopbackHttpServer;
using testing::TestRequest;
using testing::TestResponse;

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
  return s;
}

// Serves `body` with ranges, the way a registry serves blobs.
void ServeRanges(const std::string& body, const TestRequest& req,
                 TestResponse* resp) {
  auto it = req.headers.find("range");
  if (it == req.headers.end()) {
    resp->body = body;
    return;
  }
  std::optional<ByteRange> r = ParseRangeHeader(it->second);
  uint64_t last = r->last.value_or(body.size() - 1);
  resp->status = 206;
  resp->headers.push_back(
      {"Content-Range",
       absl::StrCat("bytes ", r->first, "-", last, "/", body.size())});
  resp->body = body.substr(r->first, last - r->first + 1);
}

class CurlHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = CurlHttpTransport::Create();
    ASSERT_TRUE(t.ok()) << t.status();
    http_ = *std::move(t);
  }
  HttpRequest Get(const LoopbackHttpServer& s, const std::string& path) {
    HttpRequest r;
    r.url = s.url() + path;
    r.retry.initial_backoff = absl::Milliseconds(5);
    return r;
  }
  // A body of `size` pattern bytes served with ranges, read through a
  // transport of `window` bytes per reader.
  struct PatternRead {
    std::string body;
    std::unique_ptr<CurlHttpTransport> transport;
    std::unique_ptr<LoopbackHttpServer> server;
    std::unique_ptr<HttpBodyReader> reader;
  };
  void OpenPattern(size_t size, size_t window, PatternRead* p) {
    p->body = Pattern(size);
    CurlHttpOptions o;
    o.reader_window = window;
    auto t = CurlHttpTransport::Create(o);
    ASSERT_TRUE(t.ok());
    p->transport = *std::move(t);
    auto s =
        LoopbackHttpServer::Start([p](const TestRequest& q, TestResponse* r) {
          ServeRanges(p->body, q, r);
        });
    ASSERT_TRUE(s.ok());
    p->server = *std::move(s);
    auto reader = p->transport->Open(Get(*p->server, "/blob"));
    ASSERT_TRUE(reader.ok()) << reader.status();
    p->reader = *std::move(reader);
  }
  std::unique_ptr<CurlHttpTransport> http_;
};

// A configured header with an empty value is sent empty ("Name:" alone
// would tell curl to drop it).
TEST_F(CurlHttpTest, AnEmptyHeaderValueIsSent) {
  std::map<std::string, std::string> seen;
  std::mutex mu;
  auto s =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        std::lock_guard<std::mutex> l(mu);
        seen = q.headers;
        r->body = "ok";
      });
  ASSERT_TRUE(s.ok());
  HttpRequest req = Get(**s, "/e");
  req.headers.push_back({"X-Empty", ""});
  req.headers.push_back({"X-Full", "v"});
  auto a = http_->Fetch(req);
  ASSERT_TRUE(a.ok()) << a.status();
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(seen.count("x-empty"), 1u);
  EXPECT_EQ(seen["x-empty"], "");
  EXPECT_EQ(seen["x-full"], "v");
}

TEST_F(CurlHttpTest, FetchReusesTheConnectionAndLowercasesHeaders) {
  auto s = LoopbackHttpServer::Start([](const TestRequest&, TestResponse* r) {
    r->headers.push_back({"X-Thing", "  Value  "});
    r->body = "hello";
  });
  ASSERT_TRUE(s.ok());
  auto a = http_->Fetch(Get(**s, "/a"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->status, 200);
  EXPECT_EQ(a->body, "hello");
  EXPECT_EQ(a->headers.Get("x-thing").value_or(""), "Value");
  EXPECT_EQ(a->version, HttpVersion::kHttp11);
  EXPECT_EQ(a->new_connections, 1);
  auto b = http_->Fetch(Get(**s, "/b"));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->new_connections, 0) << "the second request should reuse";
  EXPECT_EQ(http_->stats().connections, 1);
}

TEST_F(CurlHttpTest, NotFoundIsAResponseNotAnError) {
  auto s = LoopbackHttpServer::Start([](const TestRequest&, TestResponse* r) {
    r->status = 404;
    r->body = "{\"errors\":[]}";
  });
  ASSERT_TRUE(s.ok());
  auto a = http_->Fetch(Get(**s, "/x"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->status, 404);
  EXPECT_EQ(a->body, "{\"errors\":[]}");
  EXPECT_EQ(a->attempts, 1);
}

TEST_F(CurlHttpTest, RetriesServerErrorsThenSucceeds) {
  std::atomic<int> n{0};
  auto s = LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
    if (n.fetch_add(1) < 2) {
      r->status = 503;
      r->body = "busy";
    } else {
      r->body = "ok";
    }
  });
  ASSERT_TRUE(s.ok());
  auto a = http_->Fetch(Get(**s, "/x"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->body, "ok");
  EXPECT_EQ(a->attempts, 3);
}

TEST_F(CurlHttpTest, HonoursRetryAfter) {
  std::atomic<int> n{0};
  auto s = LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
    if (n.fetch_add(1) == 0) {
      r->status = 429;
      r->headers.push_back({"Retry-After", "1"});
    } else {
      r->body = "ok";
    }
  });
  ASSERT_TRUE(s.ok());
  absl::Time start = absl::Now();
  auto a = http_->Fetch(Get(**s, "/x"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(950));
  EXPECT_EQ(a->attempts, 2);
}

TEST_F(CurlHttpTest, ExhaustedRetriesAreFinalAndSayWhatFailed) {
  auto s = LoopbackHttpServer::Start([](const TestRequest&, TestResponse* r) {
    r->status = 503;
    r->body = "overloaded";
  });
  ASSERT_TRUE(s.ok());
  HttpRequest req = Get(**s, "/v2/x");
  req.retry.max_attempts = 3;
  auto a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(a.status().message().find("HTTP 503"), std::string::npos)
      << a.status();
  EXPECT_NE(a.status().message().find("gave up after 3 attempts"),
            std::string::npos)
      << a.status();
  EXPECT_NE(a.status().message().find("/v2/x"), std::string::npos);
  EXPECT_EQ((*s)->requests().size(), 3u);
}

TEST_F(CurlHttpTest, RetryAfterBeyondTheLimitEndsAtOnce) {
  auto s = LoopbackHttpServer::Start([](const TestRequest&, TestResponse* r) {
    r->status = 429;
    r->headers.push_back({"Retry-After", "3600"});
  });
  ASSERT_TRUE(s.ok());
  auto a = http_->Fetch(Get(**s, "/x"));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(a.status().message().find("retry after"), std::string::npos)
      << a.status();
  EXPECT_EQ((*s)->requests().size(), 1u);
}

TEST_F(CurlHttpTest, ConnectionRefusedIsRetriedThenFinal) {
  int port;
  {
    auto s =
        LoopbackHttpServer::Start([](const TestRequest&, TestResponse*) {});
    ASSERT_TRUE(s.ok());
    port = (*s)->port();
  }  // closed: nothing listens there now
  HttpRequest req;
  req.url = absl::StrCat("http://127.0.0.1:", port, "/v2/");
  req.retry.max_attempts = 2;
  req.retry.initial_backoff = absl::Milliseconds(1);
  auto a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(a.status().message().find("curl error 7"), std::string::npos)
      << a.status();
  EXPECT_NE(a.status().message().find("gave up after 2 attempts"),
            std::string::npos);
}

// A server on 127.0.0.1 that reads what a client sends first, then either
// resets the connection (a load balancer dropping a TLS handshake) or
// answers as a plain-HTTP server would (`reply`); counts connections.
class RawServer {
 public:
  explicit RawServer(std::string reply) : reply_(std::move(reply)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 ||
        listen(fd_, 16) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ADD_FAILURE() << "listen: " << strerror(errno);
    }
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;  // (shut down)
        ++connections_;
        char buf[4096];
        (void)!read(c, buf, sizeof(buf));
        if (reply_.empty()) {
          linger l{1, 0};  // close with a reset
          setsockopt(c, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        } else {
          (void)!write(c, reply_.data(), reply_.size());
        }
        close(c);
      }
    });
  }
  ~RawServer() {
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  int port() const { return port_; }
  int connections() const { return connections_.load(); }

 private:
  std::string reply_;
  int fd_ = -1, port_ = 0;
  std::atomic<int> connections_{0};
  std::thread thread_;
};

// A TLS handshake reset is a passing fault, retried (the first one failed
// an on-demand read with EIO); a plain-HTTP server behind an https:// URL is
// not, and is said at once.
TEST_F(CurlHttpTest, AResetTlsHandshakeIsRetriedAPlainHttpServerIsNot) {
  RawServer reset("");
  HttpRequest req;
  req.url = absl::StrCat("https://127.0.0.1:", reset.port(), "/v2/");
  req.retry.max_attempts = 3;
  req.retry.initial_backoff = absl::Milliseconds(1);
  auto a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_TRUE(absl::StrContains(a.status().message(), "curl error 35"))
      << a.status();
  EXPECT_TRUE(absl::StrContains(a.status().message(), "gave up after 3"))
      << a.status();
  EXPECT_EQ(reset.connections(), 3);

  RawServer plain("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
  req.url = absl::StrCat("https://127.0.0.1:", plain.port(), "/v2/");
  a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_FALSE(absl::StrContains(a.status().message(), "gave up after"))
      << a.status();
  EXPECT_EQ(plain.connections(), 1);
}

TEST_F(CurlHttpTest, RangeAnsweredWith200IsRefused) {
  auto s = LoopbackHttpServer::Start(
      [](const TestRequest&, TestResponse* r) { r->body = "whole body"; });
  ASSERT_TRUE(s.ok());
  HttpRequest req = Get(**s, "/blob");
  req.headers.push_back({"Range", "bytes=2-5"});
  auto a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(a.status().message().find("200"), std::string::npos) << a.status();
  // Marked, so that a caller can tell a server that ignores ranges.
  EXPECT_TRUE(IsRangeIgnored(a.status()));
  EXPECT_FALSE(IsRangeIgnored(absl::FailedPreconditionError("other")));
  EXPECT_TRUE(IsRangeIgnored(Restated(a.status(), "with context")));
}

// A whole-resource GET broken mid-body is resumed with a Range; a server
// that ignores it sends everything again with a 200: the bytes the reader
// already has are dropped, and the body comes out whole, once.
TEST_F(CurlHttpTest, ResumeAnsweredWithTheWholeBodyDropsTheRepeat) {
  const std::string body = Pattern(3 << 20);
  std::atomic<int> n{0};
  auto s = LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
    r->body = body;  // never a 206
    if (n.fetch_add(1) == 0) r->truncate_after = 1 << 20;
  });
  ASSERT_TRUE(s.ok());
  auto a = http_->Fetch(Get(**s, "/blob"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->status, 200);
  EXPECT_TRUE(a->body == body);
  auto reqs = (*s)->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].headers["range"], "bytes=1048576-");

  // The same through a reader whose window is small (the transfer pauses
  // while the repeat is skipped and after).
  CurlHttpOptions o;
  o.reader_window = 64 << 10;
  auto t = CurlHttpTransport::Create(o);
  ASSERT_TRUE(t.ok());
  n = 0;
  auto reader = (*t)->Open(Get(**s, "/blob"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string got;
  int reads = 0;
  while (true) {
    auto piece = (*reader)->Read(16 << 10);
    ASSERT_TRUE(piece.ok()) << piece.status();
    if (piece->empty()) break;
    got.append(piece->data(), piece->size());
    if (++reads % 32 == 0) absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE(got == body) << got.size();

  // A "whole body" shorter than what the reader already has is not the
  // same resource: an error, not a short body.
  n = 0;
  auto shorter =
      LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
        if (n.fetch_add(1) == 0) {
          r->body = body;
          r->truncate_after = 1 << 20;
        } else {
          r->body = body.substr(0, 1000);
        }
      });
  ASSERT_TRUE(shorter.ok());
  auto c = http_->Fetch(Get(**shorter, "/blob"));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDataLoss) << c.status();
}

TEST_F(CurlHttpTest, RangeIsCheckedAgainstContentRange) {
  const std::string body = Pattern(1000);
  auto good = LoopbackHttpServer::Start(
      [&](const TestRequest& q, TestResponse* r) { ServeRanges(body, q, r); });
  ASSERT_TRUE(good.ok());
  HttpRequest req = Get(**good, "/blob");
  req.headers.push_back({"Range", "bytes=100-199"});
  auto a = http_->Fetch(req);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->status, 206);
  EXPECT_EQ(a->body, body.substr(100, 100));

  auto bad =
      LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
        r->status = 206;
        r->headers.push_back({"Content-Range", "bytes 0-99/1000"});
        r->body = body.substr(0, 100);
      });
  ASSERT_TRUE(bad.ok());
  HttpRequest req2 = Get(**bad, "/blob");
  req2.headers.push_back({"Range", "bytes=100-199"});
  auto b = http_->Fetch(req2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(b.status().message().find("bytes 0-99/1000"), std::string::npos)
      << b.status();
}

TEST_F(CurlHttpTest, BodyLongerThanItsContentRangeFails) {
  // HttpBlobSource stops reading at the end of the range it asked for: the
  // transport is what refuses the bytes beyond it.
  const std::string body = Pattern(1000);
  auto s = LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
    r->status = 206;
    r->headers.push_back({"Content-Range", "bytes 100-199/1000"});
    r->body = body.substr(100, 150);
  });
  ASSERT_TRUE(s.ok());
  HttpRequest req = Get(**s, "/blob");
  req.headers.push_back({"Range", "bytes=100-199"});
  auto a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDataLoss) << a.status();
  EXPECT_TRUE(absl::StrContains(a.status().message(), "more than the 100"))
      << a.status();
  // So does a reader that asks for just the range: the piece that goes
  // past it fails the transfer before any of it is handed out.
  auto r = http_->Open(req);
  ASSERT_TRUE(r.ok()) << r.status();
  std::string got(100, '\0');
  auto n = (*r)->ReadInto(absl::MakeSpan(got), nullptr);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss) << n.status();
}

TEST_F(CurlHttpTest, BrokenBodyIsResumedWithARange) {
  const std::string body = Pattern(300000);
  std::atomic<int> n{0};
  auto s =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        ServeRanges(body, q, r);
        if (n.fetch_add(1) == 0) r->truncate_after = 100000;
      });
  ASSERT_TRUE(s.ok());
  auto a = http_->Fetch(Get(**s, "/blob"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->status, 200);
  ASSERT_EQ(a->body.size(), body.size());
  EXPECT_TRUE(a->body == body);
  auto reqs = (*s)->requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].headers["range"], "bytes=100000-");
}

TEST_F(CurlHttpTest, SlowReaderPausesTheTransferAndGetsEveryByte) {
  PatternRead p;
  ASSERT_NO_FATAL_FAILURE(OpenPattern(4 << 20, 64 << 10, &p));
  std::string got;
  int reads = 0;
  while (true) {
    auto piece = p.reader->Read(8192);
    ASSERT_TRUE(piece.ok()) << piece.status();
    if (piece->empty()) break;
    got.append(piece->data(), piece->size());
    if (++reads % 64 == 0) absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_TRUE(got == p.body);
  EXPECT_EQ(p.server->requests().size(), 1u);
}

// ReadInto takes what Read() left and what the loop queued (here enough to
// pause the transfer), then has the loop write the rest straight into the
// destination, across a resumed break in the body; what does not fit is left
// for Read(), and the progress calls add up to the bytes written.
TEST_F(CurlHttpTest, ReadIntoGetsEveryByteInOrderAndLeavesTheRest) {
  CurlHttpOptions o;
  o.reader_window = 64 << 10;
  auto t = CurlHttpTransport::Create(o);
  ASSERT_TRUE(t.ok());
  const std::string body = Pattern(3 << 20);
  std::atomic<int> n{0};
  auto s =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        ServeRanges(body, q, r);
        if (n.fetch_add(1) == 0) r->truncate_after = 1 << 20;
      });
  ASSERT_TRUE(s.ok());
  auto reader = (*t)->Open(Get(**s, "/blob"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto head = (*reader)->Read(1000);
  ASSERT_TRUE(head.ok()) << head.status();
  std::string got(head->data(), head->size());
  absl::SleepFor(absl::Milliseconds(50));  // the window fills: paused
  std::string dst(body.size() - got.size() - 5000, '\0');
  size_t progressed = 0;
  int calls = 0;
  auto into = (*reader)->ReadInto(absl::MakeSpan(dst), [&](size_t k) {
    progressed += k;
    ++calls;
  });
  ASSERT_TRUE(into.ok()) << into.status();
  EXPECT_EQ(*into, dst.size());
  EXPECT_EQ(progressed, dst.size());
  EXPECT_GT(calls, 2);  // as the bytes landed, not once at the end
  got += dst;
  while (true) {
    auto piece = (*reader)->Read(4096);
    ASSERT_TRUE(piece.ok()) << piece.status();
    if (piece->empty()) break;
    got.append(piece->data(), piece->size());
  }
  EXPECT_TRUE(got == body);
  EXPECT_EQ((*s)->requests().size(), 2u);  // one resume after the break
}

// A stream's reader takes a member at a time: many small ReadInto calls,
// some Read calls between them, a reader that sometimes lags (the window
// fills and the transfer pauses): every byte once, in order.
TEST_F(CurlHttpTest, SmallReadsIntoTakeEveryByteInOrder) {
  PatternRead p;
  ASSERT_NO_FATAL_FAILURE(OpenPattern(4 << 20, 256 << 10, &p));
  const std::string& body = p.body;
  auto& reader = p.reader;
  std::string got;
  uint32_t x = 12345;
  int step = 0;
  while (got.size() < body.size()) {
    x = x * 1103515245 + 12345;
    const size_t want =
        std::min<size_t>(1 + (x >> 8) % 20000, body.size() - got.size());
    if (++step % 7 == 0) {
      auto piece = reader->Read(want);
      ASSERT_TRUE(piece.ok()) << piece.status();
      ASSERT_FALSE(piece->empty());
      got.append(piece->data(), piece->size());
      continue;
    }
    if (step % 50 == 0) absl::SleepFor(absl::Milliseconds(5));
    std::string dst(want, '\0');
    size_t progressed = 0;
    auto into = reader->ReadInto(absl::MakeSpan(dst),
                                 [&](size_t k) { progressed += k; });
    ASSERT_TRUE(into.ok()) << into.status();
    ASSERT_EQ(*into, want);
    ASSERT_EQ(progressed, want);
    got += dst;
  }
  EXPECT_TRUE(got == body);
  auto end = reader->Read(1);
  ASSERT_TRUE(end.ok());
  EXPECT_TRUE(end->empty());
}

// A destination larger than the body: ReadInto returns the body's length;
// a failed transfer fails ReadInto.
TEST_F(CurlHttpTest, ReadIntoStopsAtTheEndAndReportsFailures) {
  const std::string body = Pattern(200000);
  auto s = LoopbackHttpServer::Start(
      [&](const TestRequest& q, TestResponse* r) { ServeRanges(body, q, r); });
  ASSERT_TRUE(s.ok());
  auto reader = http_->Open(Get(**s, "/blob"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::string dst(body.size() + 100, '\0');
  auto into = (*reader)->ReadInto(absl::MakeSpan(dst), nullptr);
  ASSERT_TRUE(into.ok()) << into.status();
  ASSERT_EQ(*into, body.size());
  EXPECT_TRUE(dst.substr(0, body.size()) == body);

  auto broken =
      LoopbackHttpServer::Start([&](const TestRequest& q, TestResponse* r) {
        ServeRanges(body, q, r);
        r->truncate_after = 10000;  // every attempt: more than 5 needed
      });
  ASSERT_TRUE(broken.ok());
  auto r2 = http_->Open(Get(**broken, "/blob"));
  ASSERT_TRUE(r2.ok()) << r2.status();
  auto failed = (*r2)->ReadInto(absl::MakeSpan(dst), nullptr);
  EXPECT_FALSE(failed.ok());
}

TEST_F(CurlHttpTest, DroppingAReaderCancelsTheTransfer) {
  const std::string body = Pattern(16 << 20);
  auto s = LoopbackHttpServer::Start(
      [&](const TestRequest& q, TestResponse* r) { ServeRanges(body, q, r); });
  ASSERT_TRUE(s.ok());
  {
    auto reader = http_->Open(Get(**s, "/blob"));
    ASSERT_TRUE(reader.ok()) << reader.status();
    auto piece = (*reader)->Read(10);
    ASSERT_TRUE(piece.ok());
  }
  // The transport still works afterwards.
  auto a = http_->Fetch(Get(**s, "/blob"), 32 << 20);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->body.size(), body.size());
}

TEST_F(CurlHttpTest, PerRequestTimeout) {
  auto s = LoopbackHttpServer::Start(
      [](const TestRequest&, TestResponse* r) { r->delay = absl::Seconds(2); });
  ASSERT_TRUE(s.ok());
  HttpRequest req = Get(**s, "/slow");
  req.timeout = absl::Milliseconds(300);
  req.retry.max_attempts = 1;
  auto a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kDeadlineExceeded)
      << a.status();
  EXPECT_NE(a.status().message().find("curl error 28"), std::string::npos);
}

TEST_F(CurlHttpTest, ManyThreadsAtOnce) {
  const std::string body = Pattern(100000);
  auto s = LoopbackHttpServer::Start(
      [&](const TestRequest& q, TestResponse* r) { ServeRanges(body, q, r); });
  ASSERT_TRUE(s.ok());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      HttpRequest req = Get(**s, "/blob");
      req.headers.push_back(
          {"Range", absl::StrCat("bytes=", i * 1000, "-", i * 1000 + 999)});
      auto a = http_->Fetch(req);
      if (a.ok() && a->body == body.substr(i * 1000, 1000)) ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8);
}

TEST_F(CurlHttpTest, StreamCallbacksGetTheBodyAndCanStopIt) {
  const std::string body = Pattern(1 << 20);
  auto s = LoopbackHttpServer::Start(
      [&](const TestRequest& q, TestResponse* r) { ServeRanges(body, q, r); });
  ASSERT_TRUE(s.ok());
  std::string got;
  auto resp = http_->Stream(Get(**s, "/blob"), [&](absl::string_view piece) {
    got.append(piece.data(), piece.size());
    return absl::OkStatus();
  });
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->status, 200);
  EXPECT_TRUE(resp->body.empty());
  EXPECT_TRUE(got == body);
  auto stopped = http_->Stream(Get(**s, "/blob"), [](absl::string_view) {
    return absl::AbortedError("enough");
  });
  ASSERT_FALSE(stopped.ok());
  EXPECT_EQ(stopped.status().message(), "enough");
}

TEST_F(CurlHttpTest, ReadersOutliveTheTransport) {
  const std::string body = Pattern(8 << 20);
  auto s = LoopbackHttpServer::Start(
      [&](const TestRequest& q, TestResponse* r) { ServeRanges(body, q, r); });
  ASSERT_TRUE(s.ok());
  CurlHttpOptions o;
  o.reader_window = 16 << 10;
  auto t = CurlHttpTransport::Create(o);
  ASSERT_TRUE(t.ok());
  auto reader = (*t)->Open(Get(**s, "/blob"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  t->reset();  // joins the loop; the unfinished transfer is cancelled
  absl::Status final_status;
  while (true) {
    auto piece = (*reader)->Read(1 << 20);
    if (!piece.ok()) {
      final_status = piece.status();
      break;
    }
    if (piece->empty()) break;
  }
  EXPECT_EQ(final_status.code(), absl::StatusCode::kCancelled) << final_status;
}

// CancelAll ends a request the server sits on, and refuses later ones.
TEST_F(CurlHttpTest, CancelAllEndsWaitingRequestsAtOnce) {
  absl::Notification release;
  auto s = LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
    release.WaitForNotificationWithTimeout(absl::Seconds(20));
    r->body = "late";
  });
  ASSERT_TRUE(s.ok());
  absl::Status got;
  absl::Notification done;
  std::thread waiter([&] {
    got = http_->Fetch(Get(**s, "/slow")).status();
    done.Notify();
  });
  absl::SleepFor(absl::Milliseconds(200));  // the request is in flight
  const absl::Time t0 = absl::Now();
  http_->CancelAll();
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  waiter.join();
  EXPECT_EQ(got.code(), absl::StatusCode::kCancelled) << got;
  EXPECT_EQ(http_->Fetch(Get(**s, "/later")).status().code(),
            absl::StatusCode::kCancelled);
  release.Notify();
}

std::string WriteTempFile(const std::string& name, const std::string& data) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string path = absl::StrCat(tmp ? tmp : "/tmp", "/", name);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
  return path;
}

TEST_F(CurlHttpTest, BodyFileIsStreamedAndResentWholeOnARetry) {
  const std::string data = Pattern(3 << 20);
  const std::string path = WriteTempFile("upload-body", data);
  std::atomic<int> n{0};
  auto s = LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
    if (n.fetch_add(1) == 0) {
      r->status = 503;  // after the whole body arrived: it must come again
    } else {
      r->status = 201;
    }
  });
  ASSERT_TRUE(s.ok());
  HttpRequest req = Get(**s, "/upload?digest=x");
  req.method = "PUT";
  req.body_file = path;
  req.headers.push_back({"Content-Type", "application/octet-stream"});
  EXPECT_EQ(req.Describe(), absl::StrCat("PUT ", (*s)->url(), "/upload"));
  auto a = http_->Fetch(req);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->status, 201);
  EXPECT_EQ(a->attempts, 2);
  auto reqs = (*s)->requests();
  ASSERT_EQ(reqs.size(), 2u);
  for (const TestRequest& r : reqs) {
    EXPECT_EQ(r.method, "PUT");
    EXPECT_EQ(r.headers.at("content-length"), absl::StrCat(data.size()));
    EXPECT_EQ(r.headers.at("content-type"), "application/octet-stream");
    EXPECT_TRUE(r.body == data) << "body of " << r.body.size() << " bytes";
  }

  // POST keeps its method with a body file.
  req.method = "POST";
  auto b = http_->Fetch(req);
  ASSERT_TRUE(b.ok()) << b.status();
  reqs = (*s)->requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[2].method, "POST");
  EXPECT_TRUE(reqs[2].body == data);
}

TEST_F(CurlHttpTest, BodyFileErrors) {
  auto s = LoopbackHttpServer::Start(
      [&](const TestRequest&, TestResponse* r) { r->status = 201; });
  ASSERT_TRUE(s.ok());
  HttpRequest req = Get(**s, "/upload");
  req.method = "PUT";
  req.body_file = "/nonexistent/lazypull-body";
  auto a = http_->Fetch(req);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound) << a.status();
  EXPECT_TRUE(absl::StrContains(a.status().message(), req.body_file))
      << a.status();
  EXPECT_TRUE((*s)->requests().empty());

  // A file that shrinks between two attempts: the retry cannot send the
  // length it announced.
  const std::string data = Pattern(100000);
  const std::string path = WriteTempFile("shrinking-body", data);
  std::atomic<int> n{0};
  auto s2 = LoopbackHttpServer::Start([&](const TestRequest&, TestResponse* r) {
    if (n.fetch_add(1) == 0) {
      EXPECT_EQ(truncate(path.c_str(), 1000), 0);
      r->status = 503;
    } else {
      r->status = 201;
    }
  });
  ASSERT_TRUE(s2.ok());
  req = Get(**s2, "/upload");
  req.method = "PUT";
  req.body_file = path;
  auto b = http_->Fetch(req);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kDataLoss) << b.status();
  EXPECT_TRUE(absl::StrContains(b.status().message(), "ended at byte 1000"))
      << b.status();
}

TEST(HttpHelpersTest, ParsesRangesAndRetryAfter) {
  auto r = ParseRangeHeader("bytes=5-9");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->first, 5u);
  EXPECT_EQ(*r->last, 9u);
  EXPECT_FALSE(ParseRangeHeader("bytes=1-2,5-6").has_value());
  EXPECT_FALSE(ParseRangeHeader("bytes=-5").has_value());
  auto cr = ParseContentRange("bytes 0-99/1000");
  ASSERT_TRUE(cr.ok());
  EXPECT_EQ(cr->last, 99u);
  EXPECT_FALSE(ParseContentRange("bytes 10-5/100").ok());
  EXPECT_FALSE(ParseContentRange("bytes 0-99/50").ok());
  absl::Time now = absl::FromUnixSeconds(784111777);  // 1994-11-06 08:49:37
  EXPECT_EQ(*ParseRetryAfter("120", now), absl::Seconds(120));
  EXPECT_EQ(*ParseRetryAfter("Sun, 06 Nov 1994 08:49:47 GMT", now),
            absl::Seconds(10));
  EXPECT_FALSE(ParseRetryAfter("soon", now).has_value());
  EXPECT_EQ(ResolveUrl("https://a/v2/x/blobs/y", "https://b/z?s=1"),
            "https://b/z?s=1");
  EXPECT_EQ(ResolveUrl("https://a:5000/v2/x/blobs/y", "/z"),
            "https://a:5000/z");
  EXPECT_EQ(ResolveUrl("https://a/v2/x/blobs/y", "//c/d"), "https://c/d");
  // A "://" in a relative reference's query does not make it absolute.
  EXPECT_EQ(ResolveUrl("https://a/v2/r/blobs/uploads/",
                       "/v2/r/blobs/uploads/u?next=https://cdn/x"),
            "https://a/v2/r/blobs/uploads/u?next=https://cdn/x");
  EXPECT_EQ(ResolveUrl("https://a/v2/r/blobs/uploads/", "u?next=http://c"),
            "https://a/v2/r/blobs/uploads/u?next=http://c");
  // A query alone keeps the base's path; "." and ".." segments go.
  EXPECT_EQ(ResolveUrl("https://a/v2/x/blobs/sha256:1?old=1", "?x=1"),
            "https://a/v2/x/blobs/sha256:1?x=1");
  EXPECT_EQ(ResolveUrl("https://a/v2/x/blobs/y", "../manifests/./m"),
            "https://a/v2/x/manifests/m");
  EXPECT_EQ(ResolveUrl("https://a/v2/x", "../../../z"), "https://a/z");
  EXPECT_EQ(ResolveUrl("https://a/v2/x/blobs/y", "./sha256:2"),
            "https://a/v2/x/blobs/sha256:2");
  EXPECT_EQ(ResolveUrl("http://a/b", "HTTPS://c/d"), "HTTPS://c/d");
  // A fragment alone, or nothing, keeps the base (whose origin stays whole).
  EXPECT_EQ(ResolveUrl("https://a/b?q", "#f"), "https://a/b?q#f");
  EXPECT_EQ(ResolveUrl("https://a/b#old", ""), "https://a/b");
  EXPECT_EQ(UrlHost("https://u:p@h:1/x"), "h:1");
  HttpRequest q;
  q.url = "https://h/p?sig=secret";
  EXPECT_EQ(q.Describe(), "GET https://h/p");
}

TEST(HttpStatusTest, KeepsTheRawCode) {
  absl::Status s = HttpStatusToStatus(401, "GET x");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s.message(), "GET x: HTTP 401 Unauthorized");
  EXPECT_TRUE(HttpStatusToStatus(206, "x").ok());
  EXPECT_EQ(HttpStatusToStatus(418, "x").code(),
            absl::StatusCode::kFailedPrecondition);
  absl::Status c = CurlCodeToStatus(CURLE_COULDNT_CONNECT, "GET y", "detail");
  EXPECT_EQ(c.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(c.message().find("(curl error 7)"), std::string::npos);
  EXPECT_NE(CurlMCodeToStatus(CURLM_BAD_HANDLE, "m")
                .message()
                .find("curl multi error 1"),
            std::string::npos);
}

}  // namespace
}  // namespace lazypull
