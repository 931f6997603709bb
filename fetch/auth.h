// Registry authentication: where credentials come from, and the Basic and
// Bearer-token flows of the distribution spec.
//
// Credentials (CredentialStore), first match wins:
//  1. Docker's config: $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
//  2. Podman's (containers-auth.json(5)): $REGISTRY_AUTH_FILE when set;
//     else ${XDG_RUNTIME_DIR}/containers/auth.json (without XDG_RUNTIME_DIR,
//     /run/containers/$UID/auth.json, where `podman login` writes as root
//     under sudo, cron or systemd), then ${XDG_CONFIG_HOME:-~/.config}/
//     containers/auth.json.
// In each file: `credHelpers[host]` (runs `docker-credential-<helper> get`
// with the server on stdin), then `auths[key]` ("auth": base64 of
// user:password, or "username"/"password", or "identitytoken"), then
// `credsStore` (a helper for every host). Keys of `auths` may carry a scheme
// and path ("https://index.docker.io/v1/": Docker's, the host alone counts),
// or, without a scheme, a namespace or repository ("quay.io/team",
// containers-auth.json(5)): the most specific key naming the repository
// wins. Docker Hub is known under its historic names too. A helper that
// cannot run is an error naming the file and the key that names it.
//
// Flows (RegistryAuth), after a 401 with `WWW-Authenticate`:
//  - Bearer realm,service,scope: a token from the realm (GET with Basic
//    credentials, or anonymous; POST grant_type=refresh_token with an
//    identity token), cached per host and scope until `expires_in` (60 s when
//    absent) runs short, refreshed before it does, and dropped on a 401
//    mid-session (a token the registry no longer accepts).
//  - Basic: the credentials themselves, on every request to that host.
// Credentials are read again for every token fetch and after every 401, so a
// long-lived mount follows a rotated password (a helper's short-lived one,
// another `docker login`); only Basic's per-request header uses the copy
// read last.
// After the first challenge the host's realm is remembered, so new scopes get
// their token without another 401 round trip.
//
// Secrets are never logged and never appear in a Status: messages name the
// file the credentials came from, not their value.
//
// Thread-safety: CredentialStore is immutable after construction. RegistryAuth
// is safe from any thread: one mutex over its caches, never held across a
// request; token fetches for one host and scope are single-flight (a
// per-key mutex, taken before the cache mutex), so concurrent layers that
// need a token wait for one fetch instead of each making their own.
#ifndef LAZYPULL_FETCH_AUTH_H_
#define LAZYPULL_FETCH_AUTH_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "fetch/http.h"

namespace lazypull {

struct Credentials {
  std::string username;
  std::string password;
  // An OAuth2 refresh token (Docker's "identitytoken", or a helper's answer
  // with Username "<token>").
  std::string identity_token;
  // Where they came from ("/root/.docker/config.json"), for messages.
  std::string source;
};

class CredentialStore {
 public:
  struct Options {
    // Docker's config directory; empty: $DOCKER_CONFIG, else ~/.docker.
    std::string docker_config_dir;
    // Podman's auth file; empty: the files of containers-auth.json(5), as
    // above.
    std::string podman_auth_file;
  };
  // Reads nothing yet: files are read on each Lookup (they are small, and a
  // `docker login` between two pulls is seen).
  explicit CredentialStore(Options options = {});

  // Credentials for `registry` (as in the image reference: "docker.io",
  // "127.0.0.1:5000"); nullopt when none is configured. An unreadable or
  // malformed file, or a failing helper, is an error naming it.
  // `repository` ("team/app"), when given, selects among namespaced keys.
  absl::StatusOr<std::optional<Credentials>> Lookup(
      absl::string_view registry, absl::string_view repository = "") const;

  // The files consulted, in order (for "no credentials" messages).
  std::vector<std::string> Files() const;

 private:
  std::string docker_config_;
  std::vector<std::string> podman_auth_;
};

// Runs `docker-credential-<helper> get` with `server` on stdin. nullopt if
// the helper says it has nothing for that server.
absl::StatusOr<std::optional<Credentials>> RunCredentialHelper(
    absl::string_view helper, absl::string_view server);

// One challenge of a WWW-Authenticate header; scheme lower-cased, parameter
// names lower-cased.
struct AuthChallenge {
  std::string scheme;
  std::map<std::string, std::string> params;
};
std::vector<AuthChallenge> ParseWwwAuthenticate(absl::string_view value);

class RegistryAuth {
 public:
  struct Options {
    HttpTransport* http = nullptr;  // REQUIRED; not owned
    // Credentials per registry; may be null (anonymous only).
    const CredentialStore* credentials = nullptr;
    // TLS settings for a token realm URL.
    std::function<TlsOptions(absl::string_view url)> realm_tls;
    RetryPolicy retry;  // for token requests
  };
  explicit RegistryAuth(Options options);

  // The Authorization header value for a request to `host` (an endpoint's
  // host[:port]) of `registry` needing `scope` ("repository:x/y:pull"), or
  // "" when nothing is known to be needed yet. Refreshes a token that is
  // about to expire.
  absl::StatusOr<std::string> Authorization(absl::string_view registry,
                                            absl::string_view host,
                                            absl::string_view scope);

  // After a 401 from `host`: learns the challenge and obtains what it asks
  // for (dropping the token that was refused, if `sent` was one). Returns
  // Unauthenticated, saying what to do, when retrying cannot help.
  // `over_tls`: the 401 came over HTTPS; credentials then never go to a
  // plain-HTTP token realm (a downgrade the registry's answer may not
  // impose). A token whose characters are not RFC 6750's is refused (one
  // with CR LF would inject headers into every later request).
  absl::Status HandleUnauthorized(absl::string_view registry,
                                  absl::string_view host,
                                  absl::string_view scope,
                                  const std::vector<std::string>& challenges,
                                  absl::string_view sent,
                                  bool over_tls = false);

  // The final error when `host` still answers 401 to a request that carried
  // `sent` (what was answered to the first 401): names the credentials'
  // source, never their value.
  absl::Status Refused(absl::string_view registry, absl::string_view host,
                       absl::string_view scope, absl::string_view sent);

  // Tokens fetched so far (tests).
  int tokens_fetched() const;

 private:
  struct HostState {
    bool basic = false;
    bool over_tls = false;  // the challenge came over HTTPS
    std::string realm, service;
  };
  struct Token {
    std::string value;
    absl::Time refresh_at;  // fetch a new one from then on
  };
  // The credentials for `registry` and the repository of `scope`: the
  // copy read last, or read afresh (`fresh`, and cached for the next).
  absl::StatusOr<std::optional<Credentials>> CredsFor(
      absl::string_view registry, absl::string_view scope, bool fresh = false);
  // The mutex that serializes token fetches for one host|scope.
  std::shared_ptr<absl::Mutex> FlightFor(const std::string& key);
  // `given`: the credentials to use, else read afresh for scopes[0].
  absl::StatusOr<Token> FetchToken(
      absl::string_view registry, const HostState& hs,
      const std::vector<std::string>& scopes,
      std::optional<std::optional<Credentials>> given = std::nullopt);

  const Options opts_;
  mutable absl::Mutex mu_;
  std::map<std::string, HostState> hosts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Token> tokens_ ABSL_GUARDED_BY(mu_);  // host|scope
  std::map<std::string, std::shared_ptr<absl::Mutex>> flights_
      ABSL_GUARDED_BY(mu_);
  // registry/repository -> what was read last.
  std::map<std::string, std::optional<Credentials>> creds_ ABSL_GUARDED_BY(mu_);
  int tokens_fetched_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_AUTH_H_
