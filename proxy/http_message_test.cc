#include "proxy/http_message.h"

#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

TEST(HttpMessageTest, ParsesRequestHead) {
  absl::StatusOr<RequestHead> r = ParseRequestHead(
      "GET /v2/x/blobs/sha256:ab?a=1 HTTP/1.1\r\nHost: h\r\n"
      "Range:  bytes=0-9 \r\nconnection: Keep-Alive, Upgrade\r\n\r\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method, "GET");
  EXPECT_EQ(r->target, "/v2/x/blobs/sha256:ab?a=1");
  EXPECT_EQ(r->path(), "/v2/x/blobs/sha256:ab");
  ASSERT_NE(r->headers.Get("range"), nullptr);
  EXPECT_EQ(*r->headers.Get("RANGE"), "bytes=0-9");
  EXPECT_TRUE(r->headers.HasToken("Connection", "keep-alive"));
  EXPECT_FALSE(WantsClose(r->version, r->headers));
  EXPECT_EQ(r->Serialize(),
            "GET /v2/x/blobs/sha256:ab?a=1 HTTP/1.1\r\nHost: h\r\n"
            "Range: bytes=0-9\r\nconnection: Keep-Alive, Upgrade\r\n\r\n");
}

TEST(HttpMessageTest, RejectsMalformedHeads) {
  EXPECT_FALSE(ParseRequestHead("GET /\r\n\r\n").ok());
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/2\r\n\r\n").ok());
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/1.1\r\nNoColon\r\n\r\n").ok());
  EXPECT_FALSE(
      ParseRequestHead("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n").ok());
  EXPECT_FALSE(ParseResponseHead("HTTP/1.1 abc OK\r\n\r\n").ok());
}

TEST(HttpMessageTest, ResponseFraming) {
  ResponseHead r = *ParseResponseHead(
      "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\n");
  EXPECT_EQ(r.reason, "Partial Content");
  BodyFraming f = *ResponseFraming(r, "GET");
  EXPECT_EQ(f.kind, BodyFraming::kLength);
  EXPECT_EQ(f.length, 10u);
  EXPECT_EQ(ResponseFraming(r, "HEAD")->kind, BodyFraming::kNone);
  r.headers.Add("Transfer-Encoding", "gzip, chunked");
  EXPECT_EQ(ResponseFraming(r, "GET")->kind, BodyFraming::kChunked);
  ResponseHead close = *ParseResponseHead("HTTP/1.0 200 OK\r\n\r\n");
  EXPECT_EQ(ResponseFraming(close, "GET")->kind, BodyFraming::kUntilClose);
  EXPECT_TRUE(WantsClose(close.version, close.headers));
  ResponseHead none = *ParseResponseHead("HTTP/1.1 304 Not Modified\r\n\r\n");
  EXPECT_EQ(ResponseFraming(none, "GET")->kind, BodyFraming::kNone);
  RequestHead get = *ParseRequestHead("GET / HTTP/1.1\r\n\r\n");
  EXPECT_EQ(RequestFraming(get)->kind, BodyFraming::kNone);
  get.headers.Add("Content-Length", "x");
  EXPECT_FALSE(RequestFraming(get).ok());
}

TEST(HttpMessageTest, HeadersSetAndRemove) {
  HttpHeaders h;
  h.Add("A", "1");
  h.Add("b", "2");
  h.Add("a", "3");
  h.Set("A", "4");
  EXPECT_EQ(h.fields().size(), 2u);
  EXPECT_EQ(*h.Get("a"), "4");
  h.Remove("B");
  EXPECT_EQ(h.fields().size(), 1u);
}

TEST(HttpReaderTest, ReadsHeadsLinesAndBodiesAcrossWrites) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  std::thread writer([fd = b.get()] {
    // Split at awkward places: inside the CRLFCRLF, inside a line.
    for (const char* piece : {"\r\nGET / HTTP/1.1\r\nHost: x\r", "\n\r",
                              "\nbody", "12345\nline", "2\r\nrest"}) {
      ASSERT_TRUE(SendAll(fd, piece).ok());
      usleep(2000);
    }
    shutdown(fd, SHUT_WR);
  });
  HttpReader r(a.get());
  absl::StatusOr<std::string> head = r.ReadHead();
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(*head, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string body;
  ASSERT_TRUE(r.ReadExactly(4, &body).ok());
  EXPECT_EQ(body, "body");
  EXPECT_EQ(*r.ReadLine(), "12345");
  EXPECT_EQ(*r.ReadLine(), "line2");
  char buf[16];
  EXPECT_EQ(*r.ReadSome(buf, sizeof(buf)), 4u);
  EXPECT_EQ(*r.ReadSome(buf, sizeof(buf)), 0u);
  EXPECT_EQ(*r.ReadHead(), "");  // clean EOF
  writer.join();
}

TEST(HttpReaderTest, HeadCutShortIsAnError) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  ASSERT_TRUE(SendAll(b.get(), "HTTP/1.1 200 OK\r\nA: b\r\n").ok());
  b.Reset();
  HttpReader r(a.get());
  EXPECT_FALSE(r.ReadHead().ok());
}

}  // namespace
}  // namespace lazypull::proxy
