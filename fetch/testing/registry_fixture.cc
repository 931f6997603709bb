#include "fetch/testing/registry_fixture.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "fetch/curl_http.h"
#include "gtest/gtest.h"

extern char** environ;

namespace lazypull::testing {
namespace {

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string FindInPath(const std::string& prog) {
  if (prog.find('/') != std::string::npos) return prog;
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  for (absl::string_view dir : absl::StrSplit(p, ':')) {
    std::string cand = absl::StrCat(dir, "/", prog);
    if (access(cand.c_str(), X_OK) == 0) return cand;
  }
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin"}) {
    std::string cand = absl::StrCat(dir, "/", prog);
    if (access(cand.c_str(), X_OK) == 0) return cand;
  }
  return "";
}

// fork + exec with stdout/stderr into `log_path`; the child dies with the
// thread that started it (PR_SET_PDEATHSIG), so a crashed test leaves no
// server behind.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            const std::string& log_path,
                            const std::vector<std::string>& env) {
  std::string exe = FindInPath(argv[0]);
  if (exe.empty()) {
    return absl::NotFoundError(absl::StrCat(argv[0], " is not on PATH"));
  }
  std::vector<char*> args;
  for (const std::string& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
  for (const std::string& e : env) env_store.push_back(e);
  std::vector<char*> envp;
  for (const std::string& e : env_store)
    envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  int log =
      open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) return absl::InternalError(absl::StrCat("open ", log_path));
  pid_t pid = fork();
  if (pid < 0) {
    close(log);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(log, 1);
    dup2(log, 2);
    execve(exe.c_str(), args.data(), envp.data());
    _exit(127);
  }
  close(log);
  return pid;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

bool CanConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

}  // namespace

absl::Status RunProcess(const std::vector<std::string>& argv,
                        std::string* output,
                        const std::vector<std::string>& env) {
  std::string log =
      TestDir("processes") + "/" +
      absl::StrCat("run-", getpid(), "-", absl::ToUnixNanos(absl::Now()));
  absl::StatusOr<pid_t> pid = Spawn(argv, log, env);
  if (!pid.ok()) return pid.status();
  int status = 0;
  while (waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string out = ReadFileOrEmpty(log);
  unlink(log.c_str());
  if (output != nullptr) *output = out;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(
        absl::StrJoin(argv, " "), " failed (status ", status, "): ", out));
  }
  return absl::OkStatus();
}

absl::Status MakeSelfSignedCert(const std::string& cert, const std::string& key,
                                const std::string& cn) {
  return RunProcess({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                     "-days", "2", "-subj", absl::StrCat("/CN=", cn), "-addext",
                     "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out",
                     cert});
}

std::string TestDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string base = tmp ? tmp : "/tmp";
  const ::testing::TestInfo* info =
      ::testing::UnitTest::GetInstance()->current_test_info();
  std::string dir =
      info ? absl::StrCat(base, "/", info->test_suite_name(), ".", info->name())
           : base + "/global";
  mkdir(dir.c_str(), 0755);
  dir = absl::StrCat(dir, "/", name);
  mkdir(dir.c_str(), 0755);
  return dir;
}

absl::StatusOr<std::unique_ptr<RegistryServer>> RegistryServer::Start(
    const RegistryServerOptions& o) {
  if (FindInPath("docker-registry").empty()) {
    return absl::FailedPreconditionError(
        "docker-registry is not installed: these tests run a real registry "
        "(Debian package docker-registry; `./dev.sh test` installs it)");
  }
  std::unique_ptr<RegistryServer> s(new RegistryServer);
  s->tls_ = o.tls;
  s->storage_ = o.storage_dir.empty() ? o.work_dir + "/storage" : o.storage_dir;
  mkdir(s->storage_.c_str(), 0755);
  s->log_ = o.work_dir + "/registry.log";
  std::string key;
  if (o.tls) {
    s->cert_ = o.work_dir + "/registry.crt";
    key = o.work_dir + "/registry.key";
    absl::Status st = MakeSelfSignedCert(s->cert_, key);
    if (!st.ok()) return st;
  }
  for (int attempt = 0; attempt < 5; ++attempt) {
    s->port_ = FreePort();
    std::string cfg = absl::StrCat(
        "version: 0.1\n"
        "log:\n  level: info\n"
        "storage:\n  filesystem:\n    rootdirectory: ",
        s->storage_, "\n",
        "  delete:\n    enabled: true\n"
        "http:\n  addr: 127.0.0.1:",
        s->port_, "\n");
    if (o.tls) {
      absl::StrAppend(&cfg, "  tls:\n    certificate: ", s->cert_,
                      "\n    key: ", key, "\n");
      if (!o.client_cas.empty()) {
        absl::StrAppend(&cfg, "    clientcas:\n");
        for (const std::string& ca : o.client_cas) {
          absl::StrAppend(&cfg, "      - ", ca, "\n");
        }
      }
    }
    if (!o.htpasswd.empty()) {
      absl::StrAppend(&cfg, "auth:\n  htpasswd:\n    realm: lazypull-test\n",
                      "    path: ", o.htpasswd, "\n");
    } else if (o.token) {
      absl::StrAppend(&cfg, "auth:\n  token:\n    realm: ", o.token->realm,
                      "\n    service: ", o.token->service,
                      "\n    issuer: ", o.token->issuer,
                      "\n    rootcertbundle: ", o.token->rootcertbundle, "\n");
    }
    if (o.allow_manifest_urls) {
      absl::StrAppend(&cfg,
                      "validation:\n  manifests:\n    urls:\n      allow:\n"
                      "        - ^https?://\n");
    }
    const std::string cfg_path = o.work_dir + "/config.yml";
    std::ofstream(cfg_path) << cfg;
    absl::StatusOr<pid_t> pid =
        Spawn({"docker-registry", "serve", cfg_path}, s->log_, {});
    if (!pid.ok()) return pid.status();
    s->pid_ = *pid;
    // Wait for /v2/ to answer (200, or 401 with auth).
    auto http = CurlHttpTransport::Create();
    if (!http.ok()) return http.status();
    absl::Time deadline = absl::Now() + absl::Seconds(20);
    bool exited = false;
    while (absl::Now() < deadline) {
      int status;
      if (waitpid(s->pid_, &status, WNOHANG) == s->pid_) {
        exited = true;
        s->pid_ = -1;
        break;
      }
      if (CanConnect(s->port_)) {
        HttpRequest req;
        req.url = s->url() + "/v2/";
        req.tls.ca_files = o.tls ? std::vector<std::string>{s->cert_}
                                 : std::vector<std::string>{};
        req.tls.client_cert = o.probe_client_cert;
        req.tls.client_key = o.probe_client_key;
        req.retry.max_attempts = 1;
        auto r = (*http)->Fetch(req);
        if (r.ok() && (r->status == 200 || r->status == 401)) return s;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    std::string log = ReadFileOrEmpty(s->log_);
    if (exited && absl::StrContains(log, "address already in use")) continue;
    s->Stop();
    return absl::UnavailableError(absl::StrCat(
        "docker-registry did not answer /v2/ on port ", s->port_, ": ", log));
  }
  return absl::UnavailableError("no free port for docker-registry");
}

RegistryServer::~RegistryServer() { Stop(); }

void RegistryServer::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  for (int i = 0; i < 100; ++i) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string RegistryServer::host() const {
  return absl::StrCat("127.0.0.1:", port_);
}

std::string RegistryServer::url() const {
  return absl::StrCat(tls_ ? "https://" : "http://", host());
}

std::string RegistryServer::BlobDataPath(const Digest& d) const {
  const std::string hex = d.Hex();
  return absl::StrCat(storage_, "/docker/registry/v2/blobs/sha256/",
                      hex.substr(0, 2), "/", hex, "/data");
}

std::string RegistryServer::Log() const { return ReadFileOrEmpty(log_); }

}  // namespace lazypull::testing
