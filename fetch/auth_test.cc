#include "fetch/auth.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

std::string Dir(const std::string& name) {
  std::string d = absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  mkdir(d.c_str(), 0755);
  return d;
}

CredentialStore StoreWith(const std::string& docker_json,
                          const std::string& podman_json = "") {
  static int n = 0;
  std::string d = Dir(absl::StrCat("store", n++));
  std::ofstream(d + "/config.json") << docker_json;
  CredentialStore::Options o;
  o.docker_config_dir = d;
  o.podman_auth_file = d + "/auth.json";
  if (!podman_json.empty()) std::ofstream(o.podman_auth_file) << podman_json;
  return CredentialStore(o);
}

std::string Auth(const std::string& user, const std::string& pass) {
  return absl::Base64Escape(user + ":" + pass);
}

TEST(WwwAuthenticateTest, ParsesBearerAndBasic) {
  auto c = ParseWwwAuthenticate(
      "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker."
      "io\",scope=\"repository:library/alpine:pull\"");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].scheme, "bearer");
  EXPECT_EQ(c[0].params["realm"], "https://auth.docker.io/token");
  EXPECT_EQ(c[0].params["service"], "registry.docker.io");
  EXPECT_EQ(c[0].params["scope"], "repository:library/alpine:pull");

  c = ParseWwwAuthenticate(
      "Basic realm=\"Registry Realm\", Bearer realm=x,Scope=\"a\\\"b\"");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].scheme, "basic");
  EXPECT_EQ(c[0].params["realm"], "Registry Realm");
  EXPECT_EQ(c[1].scheme, "bearer");
  EXPECT_EQ(c[1].params["realm"], "x");
  EXPECT_EQ(c[1].params["scope"], "a\"b");
}

TEST(CredentialStoreTest, AuthsKeysInEveryForm) {
  CredentialStore s = StoreWith(absl::StrCat(
      "{\"auths\":{", "\"https://index.docker.io/v1/\":{\"auth\":\"",
      Auth("hub", "p1"), "\"},", "\"http://reg.local:5000\":{\"auth\":\"",
      Auth("local", "p:2"), "\"},",
      "\"ghcr.io\":{\"username\":\"gh\",\"password\":\"p3\"},",
      "\"quay.io\":{\"identitytoken\":\"refresh-me\"},", "\"empty.io\":{}}}"));
  auto c = s.Lookup("docker.io");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->username, "hub");
  EXPECT_EQ((*c)->password, "p1");
  c = s.Lookup("reg.local:5000");
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_EQ((*c)->password, "p:2") << "only the first ':' splits";
  c = s.Lookup("ghcr.io");
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_EQ((*c)->username, "gh");
  c = s.Lookup("quay.io");
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_EQ((*c)->identity_token, "refresh-me");
  c = s.Lookup("empty.io");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->has_value());
  c = s.Lookup("other.io");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->has_value());
}

// containers-auth.json(5): a key may name a namespace or a repository, and
// the most specific one naming the repository wins, whatever the order; a
// key with a scheme is Docker's, its path no namespace.
TEST(CredentialStoreTest, NamespacedKeysMostSpecificFirst) {
  CredentialStore s = StoreWith(
      "{\"auths\":{}}",
      absl::StrCat(
          "{\"auths\":{", "\"reg.io\":{\"auth\":\"", Auth("whole", "w"), "\"},",
          "\"reg.io/team-a\":{\"auth\":\"", Auth("robot-a", "a"), "\"},",
          "\"reg.io/team-b/\":{\"auth\":\"", Auth("robot-b", "b"), "\"},",
          "\"reg.io/team-b/app\":{\"auth\":\"", Auth("app-b", "c"), "\"},",
          "\"only.io/ns\":{\"auth\":\"", Auth("ns", "n"), "\"},",
          "\"https://legacy.io/v1/\":{\"auth\":\"", Auth("legacy", "l"),
          "\"}}}"));
  auto user = [&](const char* registry, const char* repo) -> std::string {
    auto c = s.Lookup(registry, repo);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() && c->has_value() ? (*c)->username : std::string("(none)");
  };
  EXPECT_EQ(user("reg.io", "team-a/app"), "robot-a");
  EXPECT_EQ(user("reg.io", "team-b/tool"), "robot-b");
  EXPECT_EQ(user("reg.io", "team-b/app"), "app-b");
  EXPECT_EQ(user("reg.io", "team-b/app2"), "robot-b") << "components, not "
                                                         "prefixes";
  EXPECT_EQ(user("reg.io", "team-c/app"), "whole");
  EXPECT_EQ(user("reg.io", "team-ab/app"), "whole");
  EXPECT_EQ(user("reg.io", ""), "whole");
  EXPECT_EQ(user("only.io", "ns/app"), "ns");
  EXPECT_EQ(user("only.io", "other/app"), "(none)");
  EXPECT_EQ(user("legacy.io", "any/thing"), "legacy");
}

TEST(CredentialStoreTest, PodmanAuthFileAfterDocker) {
  CredentialStore s = StoreWith(
      "{\"auths\":{}}", absl::StrCat("{\"auths\":{\"r.io\":{\"auth\":\"",
                                     Auth("pod", "man"), "\"}}}"));
  auto c = s.Lookup("r.io");
  ASSERT_TRUE(c.ok() && c->has_value()) << c.status();
  EXPECT_EQ((*c)->username, "pod");
  EXPECT_TRUE(absl::EndsWith((*c)->source, "auth.json"));
}

// Sets environment variables for one scope (nullptr: unset), then puts the
// old values back.
class ScopedEnv {
 public:
  ScopedEnv(std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k);
      saved_.push_back({k, old ? std::optional<std::string>(old)
                               : std::optional<std::string>()});
      if (v) {
        setenv(k, v, 1);
      } else {
        unsetenv(k);
      }
    }
  }
  ~ScopedEnv() {
    for (const auto& [k, v] : saved_) {
      if (v) {
        setenv(k.c_str(), v->c_str(), 1);
      } else {
        unsetenv(k.c_str());
      }
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// Where `podman login` writes as root without XDG_RUNTIME_DIR (sudo, cron,
// systemd), and the persistent file podman also reads, are both consulted.
TEST(CredentialStoreTest, PodmanLoginFilesOfContainersAuthJson) {
  const std::string home = Dir("home");
  const std::string docker = Dir("home-docker");
  const std::string runtime_file =
      absl::StrCat("/run/containers/", geteuid(), "/auth.json");
  const std::string config_file = home + "/.config/containers/auth.json";
  {
    ScopedEnv env({{"HOME", home.c_str()},
                   {"DOCKER_CONFIG", docker.c_str()},
                   {"XDG_RUNTIME_DIR", nullptr},
                   {"XDG_CONFIG_HOME", nullptr},
                   {"REGISTRY_AUTH_FILE", nullptr}});
    CredentialStore s;
    EXPECT_EQ(s.Files(), (std::vector<std::string>{docker + "/config.json",
                                                   runtime_file, config_file}));
    auto none = s.Lookup("persist.io");
    ASSERT_TRUE(none.ok()) << none.status();
    EXPECT_FALSE(none->has_value());
    mkdir((home + "/.config").c_str(), 0700);
    mkdir((home + "/.config/containers").c_str(), 0700);
    std::ofstream(config_file) << absl::StrCat(
        "{\"auths\":{\"persist.io\":{\"auth\":\"", Auth("p", "q"), "\"}}}");
    auto c = s.Lookup("persist.io");
    ASSERT_TRUE(c.ok() && c->has_value()) << c.status();
    EXPECT_EQ((*c)->username, "p");
    EXPECT_EQ((*c)->source, config_file);
  }
  {
    const std::string xdg = Dir("xdg-runtime");
    const std::string cfg = Dir("xdg-config");
    ScopedEnv env({{"HOME", home.c_str()},
                   {"DOCKER_CONFIG", docker.c_str()},
                   {"XDG_RUNTIME_DIR", xdg.c_str()},
                   {"XDG_CONFIG_HOME", cfg.c_str()},
                   {"REGISTRY_AUTH_FILE", nullptr}});
    EXPECT_EQ(CredentialStore().Files(),
              (std::vector<std::string>{docker + "/config.json",
                                        xdg + "/containers/auth.json",
                                        cfg + "/containers/auth.json"}));
  }
  {
    ScopedEnv env({{"DOCKER_CONFIG", docker.c_str()},
                   {"REGISTRY_AUTH_FILE", "/etc/my-auth.json"}});
    EXPECT_EQ(CredentialStore().Files(),
              (std::vector<std::string>{docker + "/config.json",
                                        "/etc/my-auth.json"}));
  }
}

TEST(CredentialStoreTest, MalformedFilesSayWhichAndNeverLeakSecrets) {
  CredentialStore s =
      StoreWith("{\"auths\":{\"r.io\":{\"auth\":\"%%%secret\"}}}");
  auto c = s.Lookup("r.io");
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::StrContains(c.status().message(), "config.json"));
  EXPECT_FALSE(absl::StrContains(c.status().message(), "secret"));
  CredentialStore broken = StoreWith("{not json");
  EXPECT_FALSE(broken.Lookup("r.io").ok());
}

// A fake docker-credential-<name> on PATH that answers for one server.
std::string InstallHelper(const std::string& name, const std::string& server,
                          const std::string& user, const std::string& secret) {
  std::string bin = Dir("bin");
  std::string path = bin + "/docker-credential-" + name;
  std::ofstream(path)
      << "#!/bin/sh\n"
      << "[ \"$1\" = get ] || exit 2\n"
      << "read server\n"
      << "echo \"$server\" >> " << bin << "/asked-" << name << "\n"
      << "if [ \"$server\" = \"" << server << "\" ]; then\n"
      << "  echo '{\"ServerURL\":\"" << server << "\",\"Username\":\"" << user
      << "\",\"Secret\":\"" << secret << "\"}'\n"
      << "else\n"
      << "  echo 'credentials not found in native keychain'; exit 1\n"
      << "fi\n";
  chmod(path.c_str(), 0755);
  static bool once = [&] {
    std::string p = absl::StrCat(bin, ":", std::getenv("PATH"));
    setenv("PATH", p.c_str(), 1);
    return true;
  }();
  (void)once;
  return bin;
}

TEST(CredentialStoreTest, CredentialHelpers) {
  std::string bin =
      InstallHelper("fake", "reg.example:443", "helper-user", "hs");
  InstallHelper("store", "https://index.docker.io/v1/", "<token>", "idtok");
  CredentialStore s = StoreWith(
      "{\"credHelpers\":{\"reg.example:443\":\"fake\"},\"credsStore\":"
      "\"store\"}");
  auto c = s.Lookup("reg.example:443");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->username, "helper-user");
  EXPECT_EQ((*c)->password, "hs");
  EXPECT_EQ((*c)->source, "docker-credential-fake");
  // Docker Hub through the store, with an identity token.
  c = s.Lookup("docker.io");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->identity_token, "idtok");
  // Nothing stored for this one: not an error.
  c = s.Lookup("unknown.io");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->has_value());
  std::ifstream asked(bin + "/asked-store");
  std::string first;
  std::getline(asked, first);
  EXPECT_EQ(first, "https://index.docker.io/v1/");
  // A helper that is not installed.
  CredentialStore missing = StoreWith("{\"credsStore\":\"absent\"}");
  auto m = missing.Lookup("x.io");
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(
      absl::StrContains(m.status().message(), "docker-credential-absent"));
  // ...said with the file and the key that named it, and what to do.
  EXPECT_TRUE(absl::StrContains(m.status().message(), "config.json"))
      << m.status();
  EXPECT_TRUE(absl::StrContains(m.status().message(), "credsStore"))
      << m.status();
  EXPECT_TRUE(absl::StrContains(m.status().message(), "install the helper"))
      << m.status();
  CredentialStore missing_for_host =
      StoreWith("{\"credHelpers\":{\"y.io\":\"gone\"}}");
  m = missing_for_host.Lookup("y.io");
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(absl::StrContains(m.status().message(), "credHelpers[\"y.io\"]"))
      << m.status();
  // Names that could escape PATH lookup are refused.
  EXPECT_FALSE(RunCredentialHelper("../x", "h").ok());
}

TEST(CredentialStoreTest, DockerConfigEnvironment) {
  std::string d = Dir("envcfg");
  std::ofstream(d + "/config.json")
      << "{\"auths\":{\"e.io\":{\"auth\":\"" << Auth("env", "x") << "\"}}}";
  setenv("DOCKER_CONFIG", d.c_str(), 1);
  unsetenv("REGISTRY_AUTH_FILE");
  CredentialStore s;
  unsetenv("DOCKER_CONFIG");
  auto c = s.Lookup("e.io");
  ASSERT_TRUE(c.ok() && c->has_value()) << c.status();
  EXPECT_EQ((*c)->username, "env");
}

}  // namespace
}  // namespace lazypull
