// LinkProxy against real loopback servers: latency, bandwidth, sharing,
// transparency, counters; the lazypull-proxy binary and its control port;
// TLS + HTTP/2 from docker-registry through the link (skipped, loudly, when
// /usr/bin/docker-registry is missing).
//
// Timings are printed (look for "measured") so the test log doubles as a
// record of what the emulation achieves on this machine.
#include "proxy/link_proxy.h"

#include <curl/curl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "proxy/registry_process.h"
#include "proxy/tcp_server.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

// Upper bounds on timings allow for a loaded 2-core CI machine (the test is
// also tagged exclusive); lower bounds stay strict: the emulated link must
// never be faster than configured.
constexpr double kSlack = 1.6;

// A byte service: the client's first line picks the mode.
//   "ECHO\n"    echo every byte until EOF, then close.
//   "SEND N\n"  write N bytes, then close.
//   "SINK N\n"  read N bytes, note the time, then write "ok" and close.
class ByteServer {
 public:
  ByteServer() {
    server_ = *TcpServer::Start(0, [this](int fd) { Serve(fd); });
  }
  int port() const { return server_->port(); }
  void Stop() { server_->Stop(); }
  // When the last SINK got its last byte.
  absl::Time sink_done() const {
    return absl::FromUnixNanos(sink_done_ns_.load());
  }

 private:
  void Serve(int fd) {
    std::string line;
    char c;
    while (recv(fd, &c, 1, 0) == 1 && c != '\n') line += c;
    std::vector<std::string> words = absl::StrSplit(line, ' ');
    uint64_t n = 0;
    if (words.size() == 2) (void)absl::SimpleAtoi(words[1], &n);
    std::string buf(64 * 1024, 'x');
    if (words[0] == "ECHO") {
      while (true) {
        ssize_t got = recv(fd, buf.data(), buf.size(), 0);
        if (got <= 0 || !SendAll(fd, absl::string_view(buf.data(), got)).ok()) {
          return;
        }
      }
    } else if (words[0] == "SEND") {
      while (n > 0) {
        size_t k = std::min<uint64_t>(n, buf.size());
        if (!SendAll(fd, absl::string_view(buf.data(), k)).ok()) return;
        n -= k;
      }
    } else if (words[0] == "SINK") {
      while (n > 0) {
        ssize_t got =
            recv(fd, buf.data(), std::min<uint64_t>(n, buf.size()), 0);
        if (got <= 0) return;
        n -= got;
      }
      sink_done_ns_.store(absl::GetCurrentTimeNanos());
      (void)SendAll(fd, "ok");
    }
  }

  std::atomic<int64_t> sink_done_ns_{0};
  std::unique_ptr<TcpServer> server_;
};

UniqueFd Connect(int port) {
  absl::StatusOr<UniqueFd> fd =
      ConnectTcp(*Resolve("127.0.0.1", port), /*nonblocking=*/false);
  EXPECT_TRUE(fd.ok()) << fd.status();
  if (!fd.ok()) return UniqueFd();
  (void)SetNoDelay(fd->get());
  return std::move(*fd);
}

// Reads until EOF; returns the byte count (-1 on error).
int64_t ReadToEof(int fd) {
  char buf[65536];
  int64_t total = 0;
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0) return -1;
    if (n == 0) return total;
    total += n;
  }
}

bool ReadExactly(int fd, size_t n, std::string* out) {
  out->clear();
  char buf[65536];
  while (out->size() < n) {
    ssize_t got = recv(fd, buf, std::min(sizeof(buf), n - out->size()), 0);
    if (got <= 0) return false;
    out->append(buf, got);
  }
  return true;
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

std::unique_ptr<LinkProxy> StartProxy(int upstream_port, absl::Duration rtt,
                                      uint64_t bps, bool handshake = true) {
  LinkProxy::Options o;
  o.upstream_port = upstream_port;
  o.rtt = rtt;
  o.bits_per_second = bps;
  o.handshake_rtt = handshake;
  absl::StatusOr<std::unique_ptr<LinkProxy>> p = LinkProxy::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

// Lower bounds are hard: the link must never be faster than emulated. Upper
// bounds hold for the median of a few samples, so that one scheduling stall
// on a loaded 2-core machine does not fail the test, while a systematic
// error (a delay applied twice, a lost timer) still does.
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Round trip of one byte through an ECHO connection.
double EchoRoundTripMs(int fd, absl::string_view prefix = "") {
  std::string got;
  absl::Time t0 = absl::Now();
  EXPECT_TRUE(SendAll(fd, absl::StrCat(prefix, "1")).ok());
  EXPECT_TRUE(ReadExactly(fd, 1, &got));
  return Ms(absl::Now() - t0);
}

TEST(LinkProxyTest, RoundTripTakesOneRttPlusOneForTheHandshake) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(40), 0);
  ASSERT_NE(proxy, nullptr);
  std::vector<double> firsts, rts;
  for (int conn = 0; conn < 3; ++conn) {
    UniqueFd fd = Connect(proxy->port());
    firsts.push_back(EchoRoundTripMs(fd.get(), "ECHO\n"));
    printf(
        "measured: first round trip on a new connection %.1f ms (2 x rtt "
        "40 ms)\n",
        firsts.back());
    // (The proxy's emulated handshake starts when it accepts, which can be
    // a fraction of a millisecond before connect() returns here and the
    // clock starts: a millisecond of slack below 2 x rtt.)
    EXPECT_GE(firsts.back(), 79.0);
    for (int i = 0; conn == 0 && i < 5; ++i) {
      rts.push_back(EchoRoundTripMs(fd.get()));
      printf("measured: round trip %.1f ms (rtt 40 ms)\n", rts.back());
      EXPECT_GE(rts.back(), 40.0);
    }
  }
  EXPECT_LT(Median(firsts), 120.0);
  EXPECT_LT(Median(rts), 80.0);
}

TEST(LinkProxyTest, WithoutHandshakeRttTheFirstRoundTripIsOneRtt) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(40), 0,
                          /*handshake=*/false);
  ASSERT_NE(proxy, nullptr);
  std::vector<double> firsts;
  for (int conn = 0; conn < 3; ++conn) {
    UniqueFd fd = Connect(proxy->port());
    firsts.push_back(EchoRoundTripMs(fd.get(), "ECHO\n"));
    printf("measured: first round trip without handshake %.1f ms\n",
           firsts.back());
    EXPECT_GE(firsts.back(), 40.0);
  }
  EXPECT_LT(Median(firsts), 80.0);
}

// 8 Mbit/s is 1 MB/s: 256 KiB take 262 ms. Sizes are scaled down from the
// 1 MB of the issue to keep the test short; the rate is the same.
constexpr uint64_t kBps = 8'000'000;
constexpr uint64_t kSize = 256 * 1024;
constexpr double kExpectedMs = kSize * 8 * 1000.0 / kBps;

TEST(LinkProxyTest, BandwidthCapsOneDownload) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(2), kBps);
  ASSERT_NE(proxy, nullptr);
  UniqueFd fd = Connect(proxy->port());
  absl::Time t0 = absl::Now();
  ASSERT_TRUE(SendAll(fd.get(), absl::StrCat("SEND ", kSize, "\n")).ok());
  ASSERT_EQ(ReadToEof(fd.get()), int64_t{kSize});
  double ms = Ms(absl::Now() - t0);
  printf(
      "measured: %llu bytes at 8 Mbit/s in %.1f ms (%.2f Mbit/s; ideal "
      "%.1f ms)\n",
      static_cast<unsigned long long>(kSize), ms, kSize * 8 / ms / 1000,
      kExpectedMs);
  EXPECT_GT(ms, kExpectedMs * 0.75);
  EXPECT_LT(ms, kExpectedMs * kSlack);
}

// Reads until EOF, noting when a quarter and three quarters of `size` bytes
// had arrived.
int64_t ReadToEofTimingQuarters(int fd, uint64_t size, absl::Time t0,
                                double* quarter_ms, double* three_ms) {
  char buf[65536];
  uint64_t total = 0;
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0) return -1;
    if (n == 0) return static_cast<int64_t>(total);
    for (auto [mark, out] :
         {std::pair{size / 4, quarter_ms}, std::pair{size * 3 / 4, three_ms}}) {
      if (total < mark && total + n >= mark) *out = Ms(absl::Now() - t0);
    }
    total += static_cast<uint64_t>(n);
  }
}

TEST(LinkProxyTest, ParallelDownloadsShareTheLink) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(2), kBps);
  ASSERT_NE(proxy, nullptr);
  constexpr int kStreams = 2;
  double done_ms[kStreams] = {}, q1_ms[kStreams] = {}, q3_ms[kStreams] = {};
  absl::Time t0 = absl::Now();
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      UniqueFd fd = Connect(proxy->port());
      EXPECT_TRUE(SendAll(fd.get(), absl::StrCat("SEND ", kSize, "\n")).ok());
      EXPECT_EQ(
          ReadToEofTimingQuarters(fd.get(), kSize, t0, &q1_ms[i], &q3_ms[i]),
          int64_t{kSize});
      done_ms[i] = Ms(absl::Now() - t0);
    });
  }
  for (auto& t : threads) t.join();
  double total = Ms(absl::Now() - t0);
  printf(
      "measured: %d parallel downloads of %llu bytes: done at %.1f and "
      "%.1f ms, middle halves took %.1f and %.1f ms (ideal %.1f), total "
      "%.1f ms (ideal %.1f ms)\n",
      kStreams, static_cast<unsigned long long>(kSize), done_ms[0], done_ms[1],
      q3_ms[0] - q1_ms[0], q3_ms[1] - q1_ms[1], kExpectedMs, total,
      kStreams * kExpectedMs);
  EXPECT_GT(total, kStreams * kExpectedMs * 0.75);
  EXPECT_LT(total, kStreams * kExpectedMs * kSlack);
  // Shared all along, not in turns: in its middle half (from 1/4 to 3/4 of
  // its bytes) each stream got half the rate. The one that started first
  // may finish up to a queue's worth (64 KiB, 64 ms) earlier: its bytes
  // were ahead in the FIFO.
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_GT(q3_ms[i] - q1_ms[i], kExpectedMs * 0.75) << "stream " << i;
    EXPECT_LT(q3_ms[i] - q1_ms[i], kExpectedMs * kSlack) << "stream " << i;
    EXPECT_GT(done_ms[i], total * 0.75) << "stream " << i;
  }
}

TEST(LinkProxyTest, DirectionsAreCappedIndependently) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(2), kBps);
  ASSERT_NE(proxy, nullptr);
  // The download starts first: a request queued behind an upload's 64 KiB
  // would wait 64 ms (as on a real link with a full uplink queue), which is
  // not what this test measures. The upload ends when the server has its
  // last byte, for the same reason in the other direction.
  double down_ms = 0;
  absl::Notification downloading;
  std::thread down([&] {
    absl::Time t0 = absl::Now();
    UniqueFd fd = Connect(proxy->port());
    EXPECT_TRUE(SendAll(fd.get(), absl::StrCat("SEND ", kSize, "\n")).ok());
    char c;
    EXPECT_EQ(recv(fd.get(), &c, 1, MSG_PEEK), 1);
    downloading.Notify();
    EXPECT_EQ(ReadToEof(fd.get()), int64_t{kSize});
    down_ms = Ms(absl::Now() - t0);
  });
  downloading.WaitForNotification();
  absl::Time up_start = absl::Now();
  {
    UniqueFd fd = Connect(proxy->port());
    EXPECT_TRUE(SendAll(fd.get(), absl::StrCat("SINK ", kSize, "\n")).ok());
    EXPECT_TRUE(SendAll(fd.get(), std::string(kSize, 'u')).ok());
    std::string ok;
    EXPECT_TRUE(ReadExactly(fd.get(), 2, &ok));
  }
  double up_ms = Ms(server.sink_done() - up_start);
  down.join();
  printf(
      "measured: concurrent upload %.1f ms and download %.1f ms of %llu "
      "bytes (ideal %.1f ms each)\n",
      up_ms, down_ms, static_cast<unsigned long long>(kSize), kExpectedMs);
  for (double ms : {up_ms, down_ms}) {
    EXPECT_GT(ms, kExpectedMs * 0.75);
    EXPECT_LT(ms, kExpectedMs * kSlack);
  }
}

TEST(LinkProxyTest, CarriesArbitraryBytesBothWaysAndCountsThem) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(1), 0);
  ASSERT_NE(proxy, nullptr);
  constexpr int kConns = 6;
  constexpr size_t kBytes = 2 << 20;
  std::vector<std::thread> threads;
  for (int i = 0; i < kConns; ++i) {
    threads.emplace_back([&, i] {
      std::mt19937 rng(i);
      std::string data(kBytes, '\0');
      for (char& c : data) c = static_cast<char>(rng());
      UniqueFd fd = Connect(proxy->port());
      ASSERT_TRUE(SendAll(fd.get(), "ECHO\n").ok());
      // Write and read at once (an echo of this size overflows buffers);
      // then half-close: the EOF must travel through and come back.
      std::thread writer([&] {
        EXPECT_TRUE(SendAll(fd.get(), data).ok());
        shutdown(fd.get(), SHUT_WR);
      });
      std::string back;
      EXPECT_TRUE(ReadExactly(fd.get(), kBytes, &back));
      EXPECT_EQ(ReadToEof(fd.get()), 0);
      writer.join();
      EXPECT_TRUE(back == data) << "stream " << i << " corrupted";
    });
  }
  for (auto& t : threads) t.join();
  // The last close may still be on its way through the loop.
  for (int i = 0; i < 100 && proxy->counters().connections_active > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  LinkCounters c = proxy->counters();
  EXPECT_EQ(c.connections_accepted, uint64_t{kConns});
  EXPECT_EQ(c.connections_active, 0u);
  EXPECT_EQ(c.bytes_up, kConns * (kBytes + 5));
  EXPECT_EQ(c.bytes_down, kConns * kBytes);
  proxy->ResetCounters();
  EXPECT_EQ(proxy->counters().bytes_up, 0u);
  EXPECT_EQ(proxy->CountersJson(),
            "{\"connections_accepted\":0,\"connections_active\":0,"
            "\"bytes_up\":0,\"bytes_down\":0}");
}

TEST(LinkProxyTest, RefusedUpstreamClosesTheClient) {
  int dead_port;
  {
    UniqueFd l = *ListenLoopback(0, false);
    dead_port = *LocalPort(l.get());
  }
  auto proxy = StartProxy(dead_port, absl::Milliseconds(10), 0);
  ASSERT_NE(proxy, nullptr);
  UniqueFd fd = Connect(proxy->port());
  (void)SendAll(fd.get(), "hello");
  char c;
  EXPECT_LE(recv(fd.get(), &c, 1, 0), 0);
}

// A silenced connection carries nothing more either way and is neither
// closed nor reset (its peers cannot tell); one opened afterwards is served
// as usual.
TEST(LinkProxyTest, SilencedConnectionsCarryNothingAndStayOpen) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(2), kBps, false);
  ASSERT_NE(proxy, nullptr);
  UniqueFd old = Connect(proxy->port());
  EchoRoundTripMs(old.get(), "ECHO\n");
  proxy->SilenceOpenConnections();
  ASSERT_TRUE(SendAll(old.get(), "2").ok());  // taken by the proxy's socket
  pollfd p{old.get(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 300), 0) << "an echo, an EOF or a reset came back";
  UniqueFd fresh = Connect(proxy->port());
  EXPECT_LT(EchoRoundTripMs(fresh.get(), "ECHO\n"), 1000.0);
  EXPECT_EQ(proxy->counters().connections_active, 2u);
  proxy->SilenceOpenConnections();
  ASSERT_TRUE(SendAll(fresh.get(), "3").ok());
  p = {fresh.get(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 300), 0);
  proxy->Stop();
  proxy->SilenceOpenConnections();  // nothing open: returns
  server.Stop();
}

TEST(LinkProxyTest, StopsWithConnectionsOpen) {
  ByteServer server;
  auto proxy = StartProxy(server.port(), absl::Milliseconds(10), kBps);
  ASSERT_NE(proxy, nullptr);
  UniqueFd fd = Connect(proxy->port());
  ASSERT_TRUE(SendAll(fd.get(), "SEND 100000000\n").ok());
  absl::SleepFor(absl::Milliseconds(50));
  absl::Time t0 = absl::Now();
  proxy->Stop();
  EXPECT_LT(Ms(absl::Now() - t0), 1000.0);
  EXPECT_LE(ReadToEof(fd.get()), 100000);
  server.Stop();  // its handler blocked on the full socket returns too
}

// --- The binary, with its control port ---------------------------------

std::string ProxyBinary() {
  const char* srcdir = getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".",
                      "/lazypull/proxy/lazypull-proxy");
}

// Sends one request to 127.0.0.1:port and returns the whole answer.
std::string HttpExchange(int port, const std::string& request) {
  UniqueFd fd = Connect(port);
  if (!SendAll(fd.get(), request).ok()) return "";
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd.get(), buf, sizeof(buf), 0)) > 0) all.append(buf, n);
  return all;
}

TEST(LazypullProxyBinaryTest, PrintsPortsAndServesCounters) {
  ByteServer server;
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const std::string binary = ProxyBinary();
  const std::string upstream = absl::StrCat("127.0.0.1:", server.port());
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out[1], 1);
    execl(binary.c_str(), binary.c_str(), "--upstream", upstream.c_str(),
          "--rtt", "10ms", "--bw", "100mbit", "--control-port", "0",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  FILE* f = fdopen(out[0], "r");
  int port = 0, control = 0;
  char line[256];
  while ((port == 0 || control == 0) && fgets(line, sizeof(line), f)) {
    sscanf(line, "listening 127.0.0.1:%d", &port);
    sscanf(line, "control 127.0.0.1:%d", &control);
  }
  ASSERT_GT(port, 0);
  ASSERT_GT(control, 0);
  {
    UniqueFd fd = Connect(port);
    ASSERT_TRUE(SendAll(fd.get(), "SEND 100000\n").ok());
    EXPECT_EQ(ReadToEof(fd.get()), 100000);
  }
  std::string counters;
  for (int i = 0; i < 50; ++i) {  // until the proxy saw the close
    counters = HttpExchange(control, "GET /counters HTTP/1.1\r\n\r\n");
    if (counters.find("\"connections_active\":0") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_NE(counters.find("HTTP/1.1 200"), std::string::npos) << counters;
  EXPECT_NE(counters.find("{\"link\":{\"connections_accepted\":1,"
                          "\"connections_active\":0,\"bytes_up\":12,"
                          "\"bytes_down\":100000}}"),
            std::string::npos)
      << counters;
  std::string reset = HttpExchange(
      control, "POST /reset HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_NE(reset.find("HTTP/1.1 200"), std::string::npos) << reset;
  counters = HttpExchange(control, "GET /counters HTTP/1.1\r\n\r\n");
  EXPECT_NE(counters.find("\"bytes_down\":0"), std::string::npos) << counters;
  EXPECT_NE(
      HttpExchange(control, "GET /nope HTTP/1.1\r\n\r\n").find("HTTP/1.1 404"),
      std::string::npos);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  fclose(f);
}

TEST(LazypullProxyBinaryTest, BadFlagsAreUsageErrors) {
  const std::string binary = ProxyBinary();
  for (const char* args : {"--upstream 127.0.0.1:1 --bw 100mbps",
                           "--upstream 127.0.0.1:1 --rtt fast", "--rtt 10ms",
                           "--upstream nohost"}) {
    std::string cmd = absl::StrCat(binary, " ", args, " >/dev/null 2>&1");
    int status = system(cmd.c_str());
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << args;
  }
}

// --- TLS and HTTP/2 through the link, from a real registry --------------

size_t Discard(char*, size_t size, size_t n, void*) { return size * n; }

TEST(LinkProxyRegistryTest, CarriesTlsAndHttp2FromDockerRegistry) {
  if (!RegistryProcess::Available()) {
    GTEST_SKIP() << "SKIPPED LOUDLY: " << RegistryProcess::kBinary
                 << " is missing (./dev.sh test installs docker-registry); "
                    "TLS/HTTP2 through the link proxy is NOT tested";
  }
  const char* tmp = getenv("TEST_TMPDIR");
  std::string dir =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/tls_registry");
  mkdir(dir.c_str(), 0755);
  absl::StatusOr<std::unique_ptr<RegistryProcess>> registry =
      RegistryProcess::Start(dir, /*tls=*/true);
  ASSERT_TRUE(registry.ok()) << registry.status();
  auto proxy =
      StartProxy((*registry)->port(), absl::Milliseconds(20), 100'000'000);
  ASSERT_NE(proxy, nullptr);

  CURL* curl = curl_easy_init();
  ASSERT_NE(curl, nullptr);
  std::string url = absl::StrCat("https://127.0.0.1:", proxy->port(), "/v2/");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROXY, "");
  curl_easy_setopt(curl, CURLOPT_CAINFO, (*registry)->cert_path().c_str());
  curl_easy_setopt(curl, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Discard);
  double first_ms = 0;
  for (int i = 0; i < 2; ++i) {
    absl::Time t0 = absl::Now();
    CURLcode rc = curl_easy_perform(curl);
    ASSERT_EQ(rc, CURLE_OK) << curl_easy_strerror(rc);
    double ms = Ms(absl::Now() - t0);
    long code = 0, version = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(curl, CURLINFO_HTTP_VERSION, &version);
    EXPECT_EQ(code, 200);
    EXPECT_EQ(version, CURL_HTTP_VERSION_2_0);
    printf(
        "measured: GET /v2/ over TLS + HTTP/2 through rtt 20 ms: %.1f ms "
        "(%s connection)\n",
        ms, i == 0 ? "new" : "reused");
    if (i == 0) {
      first_ms = ms;
      // Handshake + TLS 1.3 (1 RTT) + request: at least 3 RTTs.
      EXPECT_GE(ms, 60.0);
    } else {
      EXPECT_GE(ms, 20.0);
      EXPECT_LT(ms, first_ms);
    }
  }
  curl_easy_cleanup(curl);
  EXPECT_EQ(proxy->counters().connections_accepted, 1u);
  EXPECT_NE((*registry)->Log().find("HTTP/2.0"), std::string::npos)
      << (*registry)->Log();
}

}  // namespace
}  // namespace lazypull::proxy
