// TokenServer: a tiny Docker token service for tests (the "realm" of a
// registry in auth.token mode), on a LoopbackHttpServer.
//
// GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...] answers
// {"token", "access_token", "expires_in", "issued_at"} where the token is an
// RS256 JWT signed with `key_file` and carrying its certificate in the `x5c`
// header (the registry checks it against `rootcertbundle`), with claims iss,
// sub, aud (= service), exp, nbf, iat, jti and `access` granting what each
// scope asks for.
//
// Two lifetimes, to test refresh: `expires_in` is what the client is told;
// `valid_for` is when the registry stops accepting the token (distribution
// adds 60 s of leeway to `exp`, so exp is set 60 s early to compensate).
// With `user` set, Basic credentials are required (401 otherwise).
//
// Thread-safety: all methods are safe from any thread.
#ifndef LAZYPULL_FETCH_TESTING_TOKEN_SERVER_H_
#define LAZYPULL_FETCH_TESTING_TOKEN_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fetch/testing/loopback_http_server.h"

namespace lazypull::testing {

struct TokenServerOptions {
  std::string service = "lazypull-test-registry";
  std::string issuer = "lazypull-test-issuer";
  std::string key_file;   // REQUIRED: PEM private key (RSA)
  std::string cert_file;  // REQUIRED: its PEM certificate
  int64_t expires_in = 300;
  int64_t valid_for = 300;
  std::string user, password;  // required credentials, if user is set
};

class TokenServer {
 public:
  static absl::StatusOr<std::unique_ptr<TokenServer>> Start(
      const TokenServerOptions& options);

  std::string realm() const { return server_->url() + "/token"; }
  int issued() const { return issued_.load(); }
  std::vector<TestRequest> requests() const { return server_->requests(); }
  // Whether `user`/`password` are required (default: when `user` is set).
  void set_require_credentials(bool on) { require_credentials_.store(on); }
  void set_lifetimes(int64_t expires_in, int64_t valid_for) {
    expires_in_.store(expires_in);
    valid_for_.store(valid_for);
  }

 private:
  TokenServer() = default;
  void Handle(const TestRequest& req, TestResponse* resp);
  std::string Sign(const std::string& signing_input) const;

  TokenServerOptions opts_;
  std::string key_pem_, cert_der_b64_;
  std::atomic<int64_t> expires_in_{300}, valid_for_{300};
  std::atomic<int> issued_{0};
  std::atomic<bool> require_credentials_{false};
  std::unique_ptr<LoopbackHttpServer> server_;
};

}  // namespace lazypull::testing

#endif  // LAZYPULL_FETCH_TESTING_TOKEN_SERVER_H_
