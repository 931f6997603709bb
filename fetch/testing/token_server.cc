#include "fetch/testing/token_server.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <time.h>

#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace lazypull::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string B64Url(absl::string_view s) { return absl::WebSafeBase64Escape(s); }

// RFC 3339 in UTC (strftime: this abseil's time-zone library is not linked).
std::string IssuedAt(int64_t unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenServer>> TokenServer::Start(
    const TokenServerOptions& options) {
  std::unique_ptr<TokenServer> t(new TokenServer);
  t->opts_ = options;
  t->expires_in_ = options.expires_in;
  t->valid_for_ = options.valid_for;
  t->require_credentials_ = !options.user.empty();
  t->key_pem_ = ReadFile(options.key_file);
  std::string cert_pem = ReadFile(options.cert_file);
  BIO* bio =
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (cert == nullptr || t->key_pem_.empty()) {
    if (cert) X509_free(cert);
    return absl::InvalidArgumentError("token server: unreadable key or cert");
  }
  unsigned char* der = nullptr;
  int len = i2d_X509(cert, &der);
  X509_free(cert);
  if (len <= 0) return absl::InternalError("i2d_X509 failed");
  t->cert_der_b64_ =
      absl::Base64Escape(absl::string_view(reinterpret_cast<char*>(der), len));
  OPENSSL_free(der);
  TokenServer* raw = t.get();
  auto server = LoopbackHttpServer::Start(
      [raw](const TestRequest& req, TestResponse* resp) {
        raw->Handle(req, resp);
      });
  if (!server.ok()) return server.status();
  t->server_ = *std::move(server);
  return t;
}

std::string TokenServer::Sign(const std::string& input) const {
  BIO* bio =
      BIO_new_mem_buf(key_pem_.data(), static_cast<int>(key_pem_.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  std::string sig;
  if (key == nullptr) return sig;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  size_t n = 0;
  if (EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
      EVP_DigestSign(ctx, nullptr, &n,
                     reinterpret_cast<const unsigned char*>(input.data()),
                     input.size()) == 1) {
    sig.resize(n);
    if (EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &n,
                       reinterpret_cast<const unsigned char*>(input.data()),
                       input.size()) == 1) {
      sig.resize(n);
    } else {
      sig.clear();
    }
  }
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(key);
  return sig;
}

void TokenServer::Handle(const TestRequest& req, TestResponse* resp) {
  if (req.path != "/token") {
    resp->status = 404;
    return;
  }
  std::string account = "anonymous";
  if (require_credentials_.load()) {
    auto it = req.headers.find("authorization");
    std::string want = absl::StrCat(
        "Basic ",
        absl::Base64Escape(absl::StrCat(opts_.user, ":", opts_.password)));
    if (it == req.headers.end() || it->second != want) {
      resp->status = 401;
      resp->body = "{\"details\":\"bad credentials\"}";
      return;
    }
    account = opts_.user;
  }
  std::vector<std::string> access;
  for (const std::string& scope : req.query_all("scope")) {
    for (absl::string_view one :
         absl::StrSplit(scope, ' ', absl::SkipEmpty())) {
      std::vector<std::string> p = absl::StrSplit(one, ':');
      if (p.size() < 3) continue;
      std::string actions = p.back();
      std::string name = absl::StrJoin(
          std::vector<std::string>(p.begin() + 1, p.end() - 1), ":");
      std::vector<std::string> acts;
      for (absl::string_view a :
           absl::StrSplit(actions, ',', absl::SkipEmpty())) {
        acts.push_back(absl::StrCat("\"", a, "\""));
      }
      access.push_back(absl::StrCat("{\"type\":\"", p[0], "\",\"name\":\"",
                                    name, "\",\"actions\":[",
                                    absl::StrJoin(acts, ","), "]}"));
    }
  }
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  const int n = issued_.fetch_add(1) + 1;
  std::string header = absl::StrCat(
      "{\"typ\":\"JWT\",\"alg\":\"RS256\",\"x5c\":[\"", cert_der_b64_, "\"]}");
  std::string claims = absl::StrCat(
      "{\"iss\":\"", opts_.issuer, "\",\"sub\":\"", account, "\",\"aud\":\"",
      opts_.service, "\",\"exp\":", now + valid_for_.load() - 60,
      ",\"nbf\":", now - 1, ",\"iat\":", now, ",\"jti\":\"token-", n,
      "\",\"access\":[", absl::StrJoin(access, ","), "]}");
  std::string input = absl::StrCat(B64Url(header), ".", B64Url(claims));
  std::string token = absl::StrCat(input, ".", B64Url(Sign(input)));
  resp->headers.push_back({"Content-Type", "application/json"});
  resp->body = absl::StrCat("{\"token\":\"", token, "\",\"access_token\":\"",
                            token, "\",\"expires_in\":", expires_in_.load(),
                            ",\"issued_at\":\"", IssuedAt(now), "\"}");
}

}  // namespace lazypull::testing
