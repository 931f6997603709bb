#include "proxy/registry_process.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/errno_status.h"
#include "core/status_macros.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

// A P-256 key and a self-signed certificate for IP 127.0.0.1, as PEM files.
absl::Status WriteSelfSignedCert(const std::string& cert_path,
                                 const std::string& key_path) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  absl::Status st;
  if (key == nullptr || cert == nullptr) {
    st = absl::InternalError("libcrypto: key or certificate allocation");
  } else {
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(
        name, "CN", MBSTRING_ASC,
        reinterpret_cast<const unsigned char*>("127.0.0.1"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION* san =
        X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name,
                            const_cast<char*>("IP:127.0.0.1,DNS:localhost"));
    if (san == nullptr || !X509_add_ext(cert, san, -1) ||
        X509_sign(cert, key, EVP_sha256()) == 0) {
      st = absl::InternalError("libcrypto: signing the certificate");
    }
    X509_EXTENSION_free(san);
  }
  if (st.ok()) {
    FILE* c = fopen(cert_path.c_str(), "w");
    FILE* k = fopen(key_path.c_str(), "w");
    if (c == nullptr || k == nullptr || !PEM_write_X509(c, cert) ||
        !PEM_write_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr)) {
      st = absl::InternalError("writing the certificate or key");
    }
    if (c != nullptr) fclose(c);
    if (k != nullptr) fclose(k);
  }
  X509_free(cert);
  EVP_PKEY_free(key);
  return st;
}

absl::StatusOr<int> FreePort() {
  ASSIGN_OR_RETURN(UniqueFd fd, ListenLoopback(0, false));
  return LocalPort(fd.get());
}

}  // namespace

bool RegistryProcess::Available() { return access(kBinary, X_OK) == 0; }

absl::StatusOr<std::unique_ptr<RegistryProcess>> RegistryProcess::Start(
    const std::string& dir, bool tls) {
  std::unique_ptr<RegistryProcess> r(new RegistryProcess());
  ASSIGN_OR_RETURN(r->port_, FreePort());
  std::string config = absl::StrCat(
      "version: 0.1\n"
      "log:\n  level: info\n"
      "storage:\n  filesystem:\n    rootdirectory: ",
      dir,
      "/storage\n  delete:\n    enabled: true\n"
      "http:\n  addr: 127.0.0.1:",
      r->port_, "\n  secret: lazypull-proxy-test\n");
  if (tls) {
    r->cert_path_ = absl::StrCat(dir, "/cert.pem");
    std::string key_path = absl::StrCat(dir, "/key.pem");
    RETURN_IF_ERROR(WriteSelfSignedCert(r->cert_path_, key_path));
    absl::StrAppend(&config, "  tls:\n    certificate: ", r->cert_path_,
                    "\n    key: ", key_path, "\n");
  }
  const std::string config_path = absl::StrCat(dir, "/config.yml");
  {
    std::ofstream out(config_path);
    out << config;
    if (!out) return absl::InternalError("writing " + config_path);
  }
  r->log_path_ = absl::StrCat(dir, "/registry.log");
  int log_fd = open(r->log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (log_fd < 0) return ErrnoToStatus(errno, "open " + r->log_path_);
  pid_t pid = fork();
  if (pid < 0) return ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execl(kBinary, kBinary, "serve", config_path.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(log_fd);
  r->pid_ = pid;
  ASSIGN_OR_RETURN(Endpoint ep, Resolve("127.0.0.1", r->port_));
  absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (true) {
    if (ConnectTcp(ep, false).ok()) return r;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      r->pid_ = -1;
      return absl::InternalError(
          absl::StrCat("docker-registry exited: ", r->Log()));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("docker-registry not listening after 15 s: ", r->Log()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

RegistryProcess::~RegistryProcess() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
}

std::string RegistryProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace lazypull::proxy
