// Test fixtures around real servers on 127.0.0.1:
//  - RegistryServer runs Debian's `docker-registry` (distribution 2.8) on a
//    free loopback port with a config it writes: filesystem storage under
//    the test's directory, plain HTTP or TLS (a throwaway self-signed
//    certificate for 127.0.0.1, so Go's server offers HTTP/2 over ALPN),
//    optionally htpasswd Basic auth or JWT token auth. Start() returns once
//    `/v2/` answers; the destructor stops the process (SIGTERM, then
//    SIGKILL). Its log (with the access log, which records "HTTP/2.0" or
//    "HTTP/1.1" per request) is readable for assertions.
//  - MakeSelfSignedCert and RunProcess are the shell-outs the fixtures need
//    (openssl, htpasswd, skopeo).
// If docker-registry is not installed, Start() fails saying how to get it.
//
// Thread-safety: one thread per object.
#ifndef LAZYPULL_FETCH_TESTING_REGISTRY_FIXTURE_H_
#define LAZYPULL_FETCH_TESTING_REGISTRY_FIXTURE_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/digest.h"

namespace lazypull::testing {

// Runs argv (argv[0] looked up in PATH) with stdin from /dev/null, stdout
// and stderr into *output; Ok only for exit status 0 (else the output is in
// the message). `env` entries ("K=V") are added to the environment.
absl::Status RunProcess(const std::vector<std::string>& argv,
                        std::string* output = nullptr,
                        const std::vector<std::string>& env = {});

// openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=<cn>
//   -addext subjectAltName=IP:127.0.0.1 -keyout <key> -out <cert>
absl::Status MakeSelfSignedCert(const std::string& cert, const std::string& key,
                                const std::string& cn = "127.0.0.1");

// The directory for this test's files: $TEST_TMPDIR/<suite>.<test>/<name>,
// created.
std::string TestDir(const std::string& name);

struct RegistryServerOptions {
  std::string work_dir;  // REQUIRED: config, log, certificate, storage
  bool tls = false;
  // An htpasswd file (htpasswd -Bbn user pass): Basic auth.
  std::string htpasswd;
  // Token auth (auth.token): the registry trusts JWTs signed by the key of
  // a certificate in `rootcertbundle`.
  struct Token {
    std::string realm, service, issuer, rootcertbundle;
  };
  std::optional<Token> token;
  // Storage root; default <work_dir>/storage. Share it between two servers
  // to push without auth and serve with auth.
  std::string storage_dir;
  // With `tls`: clients must present a certificate these CAs sign (mutual
  // TLS, http.tls.clientcas); Start's readiness probe presents this one.
  std::vector<std::string> client_cas;
  std::string probe_client_cert, probe_client_key;
  // Accept manifests whose layers carry http(s) `urls` (non-distributable
  // layers; validation.manifests.urls.allow).
  bool allow_manifest_urls = false;
};

class RegistryServer {
 public:
  static absl::StatusOr<std::unique_ptr<RegistryServer>> Start(
      const RegistryServerOptions& options);
  ~RegistryServer();

  int port() const { return port_; }
  std::string host() const;  // "127.0.0.1:PORT"
  std::string url() const;   // "http(s)://127.0.0.1:PORT"
  // The certificate to trust (TLS only).
  std::string ca_file() const { return cert_; }
  std::string storage_dir() const { return storage_; }
  // The data file of a blob in the filesystem storage (to corrupt it).
  std::string BlobDataPath(const Digest& d) const;
  std::string Log() const;
  void Stop();

 private:
  RegistryServer() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  bool tls_ = false;
  std::string cert_, storage_, log_;
};

}  // namespace lazypull::testing

#endif  // LAZYPULL_FETCH_TESTING_REGISTRY_FIXTURE_H_
