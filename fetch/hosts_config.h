// Per-registry host settings in containerd's layout:
// `<hosts-dir>/<host[:port]>/hosts.toml` (default hosts dir
// /etc/containerd/certs.d; `_default/hosts.toml` applies to registries
// without a directory of their own).
//
//   server = "https://registry.example.com"   # origin; http:// = plain HTTP
//   ca = "/etc/certs/ca.pem"                  # or an array; relative paths
//   skip_verify = false                       #   are relative to the file
//   override_path = false                     # server's path is the API root
//
//   [host."https://mirror.example.com"]      # mirrors, tried in file order
//     capabilities = ["pull", "resolve"]
//     ca = ["mirror-ca.pem"]
//     skip_verify = true
//     override_path = false
//
// A `server` on another host than the registry's (a pull-through cache as
// the only host) is flagged `mirror` like the [host] tables: requests carry
// ?ns=<registry> and credentials are looked up for its own host.
//
// A directory without hosts.toml still contributes its `*.crt` files as CAs
// of the origin (Docker's certs.d convention, which containerd also reads).
//
// The TOML reader is deliberately minimal, for this layout only: tables
// (`[a."b".c]`), bare/quoted/dotted keys, basic and literal strings,
// booleans, integers and (multi-line) arrays of those; anything else
// (arrays of tables, inline tables, multi-line strings, dates) is refused
// with the line number.
//
// Thread-safety: pure functions over files read once.
#ifndef LAZYPULL_FETCH_HOSTS_CONFIG_H_
#define LAZYPULL_FETCH_HOSTS_CONFIG_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fetch/http.h"

namespace lazypull {

// One endpoint that can serve a registry's API: a mirror or the origin.
struct RegistryHost {
  std::string scheme = "https";  // "http" or "https"
  std::string host;              // host[:port]
  std::string path = "/v2";      // API root
  bool can_pull = true;          // serves blobs
  bool can_resolve = true;       // resolves tags to manifests
  bool can_push = true;
  bool mirror = false;  // requests carry ?ns=<upstream registry>
  TlsOptions tls;
  // hosts.toml's [header] / [host."...".header]: sent with every request to
  // this host (not to the places it redirects to).
  std::vector<std::pair<std::string, std::string>> headers;

  // "scheme://host/path", no trailing slash.
  std::string BaseUrl() const;
};

// How to reach one registry when no file says otherwise, and what the
// command line adds.
struct RegistryHostDefaults {
  std::string hosts_dir = "/etc/containerd/certs.d";
  bool plain_http = false;            // --plain-http: the origin speaks HTTP
  bool skip_verify = false;           // --insecure-skip-tls-verify (origin)
  std::vector<std::string> ca_files;  // --ca-file: trusted for every host
};

// The hosts to try for `registry` (as in the image reference, e.g.
// "docker.io", "127.0.0.1:5000"), mirrors first, the origin last. The
// directory is the first of HOSTS_DIR/host_port_ (containerd's form for a
// port), HOSTS_DIR/host:port, HOSTS_DIR/_default that exists.
// `api_host` is the origin's default host (registry-1.docker.io for
// docker.io). A malformed hosts.toml is an InvalidArgument naming file and
// line.
absl::StatusOr<std::vector<RegistryHost>> LoadRegistryHosts(
    absl::string_view registry, absl::string_view api_host,
    const RegistryHostDefaults& defaults);

// The minimal TOML reader, exposed for tests.
struct TomlValue {
  enum class Type : uint8_t { kString, kBool, kInt, kArray };
  Type type = Type::kString;
  std::string str;
  bool boolean = false;
  int64_t integer = 0;
  std::vector<TomlValue> array;
};
struct TomlDocument {
  // Table headers ([a."b"]) in file order, as paths.
  std::vector<std::vector<std::string>> tables;
  // Every key with its full path (table path + dotted key), in file order.
  std::vector<std::pair<std::vector<std::string>, TomlValue>> keys;
};
absl::StatusOr<TomlDocument> ParseToml(absl::string_view text);

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_HOSTS_CONFIG_H_
