// RegistryProcess: Debian's docker-registry (distribution 2.8) run as a
// child process for a test, on a free 127.0.0.1 port with filesystem
// storage under a test directory; optionally with TLS (a throwaway
// self-signed certificate for IP 127.0.0.1, made with libcrypto), in which
// case Go's server negotiates HTTP/2 over ALPN.
//
// Tests that use it call Available() first and skip, saying so, when the
// binary is missing (`./dev.sh test` installs it).
//
// Thread-safety: one thread per object.
#ifndef LAZYPULL_PROXY_REGISTRY_PROCESS_H_
#define LAZYPULL_PROXY_REGISTRY_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lazypull::proxy {

class RegistryProcess {
 public:
  static constexpr char kBinary[] = "/usr/bin/docker-registry";

  static bool Available();
  // Writes the configuration (and certificate) under `dir`, starts the
  // registry and waits (up to 15 s) until it accepts connections.
  static absl::StatusOr<std::unique_ptr<RegistryProcess>> Start(
      const std::string& dir, bool tls);
  // SIGTERM, then SIGKILL after 5 s; reaps the child.
  ~RegistryProcess();
  RegistryProcess(const RegistryProcess&) = delete;
  RegistryProcess& operator=(const RegistryProcess&) = delete;

  int port() const { return port_; }
  // The PEM certificate to trust (TLS only).
  const std::string& cert_path() const { return cert_path_; }
  // The registry's stdout and stderr so far (its access log included).
  std::string Log() const;

 private:
  RegistryProcess() = default;

  pid_t pid_ = -1;
  int port_ = 0;
  std::string cert_path_;
  std::string log_path_;
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_REGISTRY_PROCESS_H_
