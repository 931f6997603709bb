#include "tests/testdata.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace lazypull::testing {
namespace {

bool IsDir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string Runfiles() {
  const char* s = getenv("TEST_SRCDIR");
  return s ? s : ".";
}

}  // namespace

std::optional<std::string> TestdataDir() {
  if (const char* env = getenv("LAZYPULL_TESTDATA"); env && *env) {
    if (IsDir(env)) return std::string(env);
    return std::nullopt;
  }
  // tests/testdata.h is a runfile symlinked back into the source tree:
  // <checkout>/tests/testdata.h -> <checkout>/../shared/testdata.
  char real[PATH_MAX];
  std::string probe = Runfiles() + "/lazypull/tests/BUILD.bazel";
  if (realpath(probe.c_str(), real) != nullptr) {
    std::string p(real);
    p = p.substr(0, p.rfind('/'));  // tests
    p = p.substr(0, p.rfind('/'));  // checkout
    p = p.substr(0, p.rfind('/')) + "/shared/testdata";
    if (IsDir(p)) return p;
  }
  return std::nullopt;
}

std::vector<std::string> EstargzCases() {
  std::vector<std::string> out;
  auto dir = TestdataDir();
  if (!dir) return out;
  std::string base = *dir + "/estargz";
  DIR* d = opendir(base.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name[0] != '.' && IsDir(base + "/" + name)) out.push_back(name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string LazypullBinary() { return Runfiles() + "/lazypull/cli/lazypull"; }

RunResult Run(const std::vector<std::string>& argv) {
  RunResult r;
  std::string tmp = MakeTempDir("run");
  std::string out = tmp + "/out", err = tmp + "/err";
  // (Built before the fork: the child of a threaded test only makes
  // async-signal-safe calls.)
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(o, 1);
    dup2(e, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code =
      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

std::string MakeTempDir(const std::string& prefix) {
  const char* base = getenv("TEST_TMPDIR");
  std::string tmpl =
      std::string(base ? base : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) abort();
  return std::string(buf.data());
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace lazypull::testing
