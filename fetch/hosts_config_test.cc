#include "fetch/hosts_config.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t ? t : "/tmp";
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(TomlTest, TablesKeysAndValues) {
  auto doc = ParseToml(R"(# comment
server = "https://r.example"   # trailing
skip_verify = true
n = 1_000

[host."https://m1:5000"]
  capabilities = ["pull",
     "resolve",   # inside an array
  ]
  ca = 'lit\eral'
[host."https://m1:5000".header]
  x-a = ["b"]
a.b = "esc\"\u00e9"
)");
  ASSERT_TRUE(doc.ok()) << doc.status();
  ASSERT_EQ(doc->tables.size(), 2u);
  EXPECT_EQ(doc->tables[0],
            (std::vector<std::string>{"host", "https://m1:5000"}));
  ASSERT_EQ(doc->keys.size(), 7u);
  EXPECT_EQ(doc->keys[0].second.str, "https://r.example");
  EXPECT_TRUE(doc->keys[1].second.boolean);
  EXPECT_EQ(doc->keys[2].second.integer, 1000);
  EXPECT_EQ(
      doc->keys[3].first,
      (std::vector<std::string>{"host", "https://m1:5000", "capabilities"}));
  EXPECT_EQ(doc->keys[3].second.array.size(), 2u);
  EXPECT_EQ(doc->keys[4].second.str, "lit\\eral");
  EXPECT_EQ(doc->keys[6].first,
            (std::vector<std::string>{"host", "https://m1:5000", "header", "a",
                                      "b"}));
  EXPECT_EQ(doc->keys[6].second.str, "esc\"\xc3\xa9");
}

TEST(TomlTest, ErrorsNameTheLine) {
  auto doc = ParseToml("a = 1\nb = \"open\n");
  ASSERT_FALSE(doc.ok());
  EXPECT_NE(doc.status().message().find("line 2"), std::string::npos)
      << doc.status();
  EXPECT_FALSE(ParseToml("[[arr]]\n").ok());
  EXPECT_FALSE(ParseToml("a = {x = 1}\n").ok());
  EXPECT_FALSE(ParseToml("a = 1 2\n").ok());
}

TEST(HostsConfigTest, NoDirectoryMeansTheOrigin) {
  RegistryHostDefaults d;
  d.hosts_dir = TempDir() + "/nonexistent";
  d.plain_http = true;
  auto hosts = LoadRegistryHosts("127.0.0.1:5000", "127.0.0.1:5000", d);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 1u);
  EXPECT_EQ((*hosts)[0].BaseUrl(), "http://127.0.0.1:5000/v2");
  EXPECT_FALSE((*hosts)[0].mirror);
}

TEST(HostsConfigTest, MirrorsInOrderThenTheServer) {
  std::string dir = TempDir() + "/certs.d";
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/docker.io").c_str(), 0755);
  Write(dir + "/docker.io/hosts.toml", R"(
server = "https://registry-1.docker.io"
ca = "origin.pem"

[host."http://127.0.0.1:6000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example/custom"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["/abs/m.pem"]
)");
  RegistryHostDefaults d;
  d.hosts_dir = dir;
  d.ca_files = {"/global.pem"};
  auto hosts = LoadRegistryHosts("docker.io", "registry-1.docker.io", d);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 3u);
  const RegistryHost& m1 = (*hosts)[0];
  EXPECT_EQ(m1.BaseUrl(), "http://127.0.0.1:6000/v2");
  EXPECT_TRUE(m1.mirror);
  EXPECT_TRUE(m1.can_pull && m1.can_resolve);
  EXPECT_FALSE(m1.can_push);
  const RegistryHost& m2 = (*hosts)[1];
  EXPECT_EQ(m2.BaseUrl(), "https://mirror.example/custom/v2");
  EXPECT_FALSE(m2.can_resolve);
  EXPECT_FALSE(m2.tls.verify);
  EXPECT_EQ(m2.tls.ca_files,
            (std::vector<std::string>{"/global.pem", "/abs/m.pem"}));
  const RegistryHost& o = (*hosts)[2];
  EXPECT_FALSE(o.mirror);
  EXPECT_EQ(o.BaseUrl(), "https://registry-1.docker.io/v2");
  EXPECT_EQ(o.tls.ca_files, (std::vector<std::string>{
                                "/global.pem", dir + "/docker.io/origin.pem"}));
}

// A `server` on another host than the registry is a pull-through cache:
// flagged a mirror (?ns=, its own credentials); override_path applies to it
// wherever the key is in the file.
TEST(HostsConfigTest, AServerElsewhereIsAMirrorAndTakesOverridePath) {
  std::string dir = TempDir() + "/certs-server.d";
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/reg.example").c_str(), 0755);
  Write(dir + "/reg.example/hosts.toml", R"(
server = "https://cache.example/api/docker/remote"
override_path = true
)");
  RegistryHostDefaults d;
  d.hosts_dir = dir;
  auto hosts = LoadRegistryHosts("reg.example", "reg.example", d);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 1u);
  EXPECT_EQ((*hosts)[0].BaseUrl(), "https://cache.example/api/docker/remote");
  EXPECT_TRUE((*hosts)[0].mirror);
  // Without override_path the API root gets /v2; the registry's own host as
  // `server` is no mirror.
  Write(dir + "/reg.example/hosts.toml",
        "server = \"https://reg.example/base\"\n");
  hosts = LoadRegistryHosts("reg.example", "reg.example", d);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  EXPECT_EQ((*hosts)[0].BaseUrl(), "https://reg.example/base/v2");
  EXPECT_FALSE((*hosts)[0].mirror);
}

// As containerd: a host without a scheme is HTTPS; capabilities in any case;
// an unknown capability is an error naming it (not a host that silently
// serves nothing).
TEST(HostsConfigTest, SchemelessHostsAndCapabilitiesAsContainerdReadsThem) {
  std::string dir = TempDir() + "/certs-caps.d";
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/reg.example").c_str(), 0755);
  Write(dir + "/reg.example/hosts.toml", R"(
server = "reg.example:5000"
[host."mirror.example"]
  capabilities = ["Pull", "RESOLVE"]
)");
  RegistryHostDefaults d;
  d.hosts_dir = dir;
  auto hosts = LoadRegistryHosts("reg.example", "reg.example", d);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 2u);
  EXPECT_EQ((*hosts)[0].BaseUrl(), "https://mirror.example/v2");
  EXPECT_TRUE((*hosts)[0].can_pull && (*hosts)[0].can_resolve);
  EXPECT_FALSE((*hosts)[0].can_push);
  EXPECT_EQ((*hosts)[1].BaseUrl(), "https://reg.example:5000/v2");
  Write(dir + "/reg.example/hosts.toml", R"(
[host."https://mirror.example"]
  capabilities = ["pul"]
)");
  hosts = LoadRegistryHosts("reg.example", "reg.example", d);
  ASSERT_FALSE(hosts.ok());
  EXPECT_TRUE(absl::StrContains(hosts.status().message(), "\"pul\""))
      << hosts.status();
  EXPECT_TRUE(absl::StrContains(hosts.status().message(), "hosts.toml"))
      << hosts.status();
}

// containerd's host_port_ directory form (tried first), [header] tables,
// and client certificates in each of containerd's forms.
TEST(HostsConfigTest, HeadersClientCertsAndThePortDirectoryForm) {
  std::string dir = TempDir() + "/certs3.d";
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/reg.local:5000").c_str(), 0755);
  Write(dir + "/reg.local:5000/hosts.toml", "server = \"https://wrong\"\n");
  mkdir((dir + "/reg.local_5000_").c_str(), 0755);
  Write(dir + "/reg.local_5000_/hosts.toml", R"(
server = "https://reg.local:5000"
client = [["c.crt", "c.key"]]

[header]
  x-origin = "o"

[host."https://m.example"]
  client = "/abs/m.pem"
  [host."https://m.example".header]
    x-mirror = ["a", "b"]

[host."https://n.example"]
  client = ["n.pem", "unused.pem"]
)");
  RegistryHostDefaults d;
  d.hosts_dir = dir;
  auto hosts = LoadRegistryHosts("reg.local:5000", "reg.local:5000", d);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 3u);
  const std::string base = dir + "/reg.local_5000_/";
  const RegistryHost& m = (*hosts)[0];
  EXPECT_EQ(m.tls.client_cert, "/abs/m.pem");
  EXPECT_EQ(m.tls.client_key, "");
  using Headers = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(m.headers, (Headers{{"x-mirror", "a"}, {"x-mirror", "b"}}));
  EXPECT_EQ((*hosts)[1].tls.client_cert, base + "n.pem");
  const RegistryHost& o = (*hosts)[2];
  EXPECT_EQ(o.BaseUrl(), "https://reg.local:5000/v2");
  EXPECT_EQ(o.tls.client_cert, base + "c.crt");
  EXPECT_EQ(o.tls.client_key, base + "c.key");
  EXPECT_EQ(o.headers, (Headers{{"x-origin", "o"}}));
  // A header value with a line break (TOML's escapes) would end the header
  // line and inject another: refused.
  Write(dir + "/reg.local_5000_/hosts.toml",
        "[header]\n  x-a = \"v\\r\\nInjected: 1\"\n");
  hosts = LoadRegistryHosts("reg.local:5000", "reg.local:5000", d);
  ASSERT_FALSE(hosts.ok());
  EXPECT_NE(hosts.status().message().find("line break"), std::string::npos)
      << hosts.status();
  // A bad `client` is an error naming the file.
  Write(dir + "/reg.local_5000_/hosts.toml", "client = 5\n");
  hosts = LoadRegistryHosts("reg.local:5000", "reg.local:5000", d);
  ASSERT_FALSE(hosts.ok());
  EXPECT_NE(hosts.status().message().find("client must be"), std::string::npos)
      << hosts.status();
}

TEST(HostsConfigTest, PlainHttpServerAndCertsDirCrtFiles) {
  std::string dir = TempDir() + "/certs2.d";
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/reg.local:5000").c_str(), 0755);
  Write(dir + "/reg.local:5000/hosts.toml",
        "server = \"http://reg.local:5000\"\n");
  mkdir((dir + "/other:443").c_str(), 0755);
  Write(dir + "/other:443/ca.crt", "x");
  RegistryHostDefaults d;
  d.hosts_dir = dir;
  auto hosts = LoadRegistryHosts("reg.local:5000", "reg.local:5000", d);
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 1u);
  EXPECT_EQ((*hosts)[0].scheme, "http");
  hosts = LoadRegistryHosts("other:443", "other:443", d);
  ASSERT_TRUE(hosts.ok());
  EXPECT_EQ((*hosts)[0].tls.ca_files,
            (std::vector<std::string>{dir + "/other:443/ca.crt"}));
  Write(dir + "/reg.local:5000/hosts.toml", "server = [\n");
  hosts = LoadRegistryHosts("reg.local:5000", "reg.local:5000", d);
  ASSERT_FALSE(hosts.ok());
  EXPECT_NE(hosts.status().message().find("hosts.toml"), std::string::npos);
}

}  // namespace
}  // namespace lazypull
