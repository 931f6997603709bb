#include "fetch/auth.h"

#include <fcntl.h>
#include <poll.h>
#include <simdjson.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

extern char** environ;

namespace lazypull {
namespace {

using simdjson::dom::element;
using simdjson::dom::object;

// Docker Hub's names, the first being what credential helpers and
// `docker login` use as the key.
const std::vector<std::string>& DockerHubKeys() {
  static const auto* keys = new std::vector<std::string>{
      "https://index.docker.io/v1/", "index.docker.io", "docker.io",
      "registry-1.docker.io"};
  return *keys;
}

// "https://host:5000/v1/" -> "host:5000".
std::string NormalizeKey(absl::string_view key) {
  absl::ConsumePrefix(&key, "https://");
  absl::ConsumePrefix(&key, "http://");
  key = key.substr(0, key.find('/'));
  return absl::AsciiStrToLower(key);
}

bool HostMatches(absl::string_view host, absl::string_view registry) {
  if (registry == "docker.io") {
    for (const std::string& alias : DockerHubKeys()) {
      if (host == NormalizeKey(alias)) return true;
    }
    return false;
  }
  return host == absl::AsciiStrToLower(registry);
}

bool KeyMatches(absl::string_view key, absl::string_view registry) {
  return HostMatches(NormalizeKey(key), registry);
}

// How specifically an `auths` key names `registry`/`repository`: -1 when it
// does not; else the length of its namespace. A key with a scheme is
// Docker's (its path, "/v1/", is no namespace); one without may name a
// namespace or repository (containers-auth.json(5): "quay.io/team" covers
// quay.io/team/app, and the most specific key wins).
int KeySpecificity(absl::string_view key, absl::string_view registry,
                   absl::string_view repository) {
  if (absl::StartsWith(key, "https://") || absl::StartsWith(key, "http://")) {
    return KeyMatches(key, registry) ? 0 : -1;
  }
  const size_t slash = key.find('/');
  if (!HostMatches(absl::AsciiStrToLower(key.substr(0, slash)), registry)) {
    return -1;
  }
  if (slash == absl::string_view::npos) return 0;
  absl::string_view ns = key.substr(slash + 1);
  while (absl::ConsumeSuffix(&ns, "/")) {
  }
  if (ns.empty()) return 0;
  if (repository == ns ||
      (absl::StartsWith(repository, ns) && repository[ns.size()] == '/')) {
    return static_cast<int>(ns.size());
  }
  return -1;
}

std::string HelperServer(absl::string_view registry) {
  return registry == "docker.io" ? DockerHubKeys()[0] : std::string(registry);
}

// A helper's failure, naming the file and key that asked for it.
absl::Status HelperError(const absl::Status& st, const std::string& path,
                         absl::string_view key, absl::string_view helper) {
  return absl::Status(
      st.code(),
      absl::StrCat("credentials file ", path, ": ", key, " names the helper ",
                   "docker-credential-", helper, ": ", st.message(),
                   st.code() == absl::StatusCode::kNotFound
                       ? absl::StrCat(" (install the helper, or remove ", key,
                                      " from the file)")
                       : std::string()));
}

// One config file (Docker's config.json or Podman's auth.json).
absl::StatusOr<std::optional<Credentials>> LookupInFile(
    const std::string& path, absl::string_view registry,
    absl::string_view repository) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::optional<Credentials>();  // no such file: nothing here
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("credentials file ", path, ": ", why));
  };
  simdjson::dom::parser parser;
  element root;
  if (parser.parse(text).get(root) != simdjson::SUCCESS) {
    return bad("not valid JSON");
  }
  object obj;
  if (root.get(obj) != simdjson::SUCCESS) return bad("not a JSON object");

  object helpers;
  if (obj["credHelpers"].get(helpers) == simdjson::SUCCESS) {
    for (auto [key, value] : helpers) {
      std::string_view helper;
      if (KeyMatches(absl::string_view(key.data(), key.size()), registry) &&
          value.get(helper) == simdjson::SUCCESS) {
        const absl::string_view name(helper.data(), helper.size());
        absl::StatusOr<std::optional<Credentials>> c =
            RunCredentialHelper(name, HelperServer(registry));
        if (!c.ok()) {
          return HelperError(
              c.status(), path,
              absl::StrCat("credHelpers[\"", std::string(key), "\"]"), name);
        }
        return c;
      }
    }
  }
  object auths;
  if (obj["auths"].get(auths) == simdjson::SUCCESS) {
    // The most specific key that names the repository (file order among
    // equals); an empty entry (what `docker login` with a credsStore
    // leaves) is no key.
    std::optional<Credentials> best;
    int best_specificity = -1;
    for (auto [key, value] : auths) {
      const int specificity = KeySpecificity(
          absl::string_view(key.data(), key.size()), registry, repository);
      if (specificity <= best_specificity) continue;
      Credentials c;
      c.source = path;
      std::string_view s;
      if (value["auth"].get(s) == simdjson::SUCCESS && !s.empty()) {
        std::string decoded;
        if (!absl::Base64Unescape(absl::string_view(s.data(), s.size()),
                                  &decoded)) {
          return bad(
              absl::StrCat("\"auth\" of ", std::string(key), " is not base64"));
        }
        size_t colon = decoded.find(':');
        if (colon == std::string::npos) {
          return bad(absl::StrCat("\"auth\" of ", std::string(key),
                                  " is not base64 of user:password"));
        }
        c.username = decoded.substr(0, colon);
        c.password = decoded.substr(colon + 1);
      }
      if (value["username"].get(s) == simdjson::SUCCESS) c.username = s;
      if (value["password"].get(s) == simdjson::SUCCESS) c.password = s;
      if (value["identitytoken"].get(s) == simdjson::SUCCESS) {
        c.identity_token = s;
      }
      if (!c.username.empty() || !c.identity_token.empty()) {
        best = std::move(c);
        best_specificity = specificity;
      }
    }
    if (best) return best;
  }
  std::string_view store;
  if (obj["credsStore"].get(store) == simdjson::SUCCESS && !store.empty()) {
    const absl::string_view name(store.data(), store.size());
    absl::StatusOr<std::optional<Credentials>> c =
        RunCredentialHelper(name, HelperServer(registry));
    if (!c.ok()) return HelperError(c.status(), path, "credsStore", name);
    return c;
  }
  return std::optional<Credentials>();
}

}  // namespace

absl::StatusOr<std::optional<Credentials>> RunCredentialHelper(
    absl::string_view helper, absl::string_view server) {
  for (char c : helper) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') {
      return absl::InvalidArgumentError(
          absl::StrCat("credential helper name \"", helper, "\" is invalid"));
    }
  }
  const std::string prog = absl::StrCat("docker-credential-", helper);
  int in_pipe[2], out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe");
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    close(in_pipe[0]);
    close(in_pipe[1]);
    return ErrnoToStatus(e, "pipe");
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  std::string get = "get";
  char* argv[] = {const_cast<char*>(prog.c_str()), get.data(), nullptr};
  pid_t pid;
  int rc = posix_spawnp(&pid, prog.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in_pipe[0]);
  close(out_pipe[1]);
  if (rc != 0) {
    close(in_pipe[1]);
    close(out_pipe[0]);
    return ErrnoToStatus(rc, absl::StrCat("run credential helper ", prog));
  }
  std::string input = std::string(server);
  (void)!write(in_pipe[1], input.data(), input.size());
  close(in_pipe[1]);
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = read(out_pipe[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (out.size() < (1 << 20)) out.append(buf, static_cast<size_t>(n));
  }
  close(out_pipe[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    // The helpers' protocol: "credentials not found" on stdout, exit 1.
    if (absl::StrContains(out, "credentials not found")) {
      return std::optional<Credentials>();
    }
    return absl::UnavailableError(absl::StrCat(
        "credential helper ", prog, " failed for ", server,
        WIFEXITED(status)
            ? absl::StrCat(" (exit status ", WEXITSTATUS(status), ")")
            : std::string(" (killed by a signal)")));
  }
  simdjson::dom::parser parser;
  element root;
  std::string_view user, secret;
  if (parser.parse(out).get(root) != simdjson::SUCCESS ||
      root["Username"].get(user) != simdjson::SUCCESS ||
      root["Secret"].get(secret) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("credential helper ", prog,
                     " answered something other than "
                     "{\"Username\", \"Secret\"} JSON"));
  }
  Credentials c;
  c.source = prog;
  if (user == "<token>") {
    c.identity_token = secret;
  } else {
    c.username = user;
    c.password = secret;
  }
  return std::optional<Credentials>(std::move(c));
}

CredentialStore::CredentialStore(Options o) {
  if (!o.docker_config_dir.empty()) {
    docker_config_ = o.docker_config_dir + "/config.json";
  } else if (const char* d = std::getenv("DOCKER_CONFIG"); d && *d) {
    docker_config_ = absl::StrCat(d, "/config.json");
  } else if (const char* h = std::getenv("HOME"); h && *h) {
    docker_config_ = absl::StrCat(h, "/.docker/config.json");
  }
  // containers-auth.json(5): $REGISTRY_AUTH_FILE alone when set; else the
  // runtime file `podman login` writes, then the persistent one it reads.
  if (!o.podman_auth_file.empty()) {
    podman_auth_.push_back(o.podman_auth_file);
  } else if (const char* f = std::getenv("REGISTRY_AUTH_FILE"); f && *f) {
    podman_auth_.push_back(f);
  } else {
    if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) {
      podman_auth_.push_back(absl::StrCat(x, "/containers/auth.json"));
    } else {
      podman_auth_.push_back(
          absl::StrCat("/run/containers/", geteuid(), "/auth.json"));
    }
    if (const char* c = std::getenv("XDG_CONFIG_HOME"); c && *c) {
      podman_auth_.push_back(absl::StrCat(c, "/containers/auth.json"));
    } else if (const char* h = std::getenv("HOME"); h && *h) {
      podman_auth_.push_back(absl::StrCat(h, "/.config/containers/auth.json"));
    }
  }
}

std::vector<std::string> CredentialStore::Files() const {
  std::vector<std::string> out;
  if (!docker_config_.empty()) out.push_back(docker_config_);
  out.insert(out.end(), podman_auth_.begin(), podman_auth_.end());
  return out;
}

absl::StatusOr<std::optional<Credentials>> CredentialStore::Lookup(
    absl::string_view registry, absl::string_view repository) const {
  for (const std::string& f : Files()) {
    ASSIGN_OR_RETURN(std::optional<Credentials> c,
                     LookupInFile(f, registry, repository));
    if (c) return c;
  }
  return std::optional<Credentials>();
}

// ---------------------------------------------------------------------------
// WWW-Authenticate (RFC 9110 §11.6.1): challenges separated by commas, each
// a scheme followed by auth-params `name=token` or `name="quoted"`.

std::vector<AuthChallenge> ParseWwwAuthenticate(absl::string_view v) {
  std::vector<AuthChallenge> out;
  size_t i = 0;
  auto skip_ws = [&] {
    while (i < v.size() && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) ++i;
  };
  auto token = [&] {
    size_t s = i;
    while (i < v.size() && v[i] != ' ' && v[i] != '\t' && v[i] != ',' &&
           v[i] != '=') {
      ++i;
    }
    return std::string(v.substr(s, i - s));
  };
  while (true) {
    skip_ws();
    if (i >= v.size()) break;
    std::string word = token();
    size_t save = i;
    while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) ++i;
    if (i < v.size() && v[i] == '=' && !out.empty()) {
      // An auth-param of the current challenge.
      ++i;
      while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) ++i;
      std::string value;
      if (i < v.size() && v[i] == '"') {
        ++i;
        while (i < v.size() && v[i] != '"') {
          if (v[i] == '\\' && i + 1 < v.size()) ++i;
          value.push_back(v[i++]);
        }
        ++i;  // closing quote
      } else {
        size_t s = i;
        while (i < v.size() && v[i] != ',' && v[i] != ' ') ++i;
        value = std::string(v.substr(s, i - s));
      }
      out.back().params[absl::AsciiStrToLower(word)] = value;
      continue;
    }
    i = save;
    AuthChallenge c;
    c.scheme = absl::AsciiStrToLower(word);
    out.push_back(std::move(c));
  }
  return out;
}

// ---------------------------------------------------------------------------
// RegistryAuth.

RegistryAuth::RegistryAuth(Options options) : opts_(std::move(options)) {}

int RegistryAuth::tokens_fetched() const {
  absl::MutexLock l(&mu_);
  return tokens_fetched_;
}

namespace {

// "repository:team/app:pull" -> "team/app" ("" for other scopes).
absl::string_view RepositoryOfScope(absl::string_view scope) {
  if (!absl::ConsumePrefix(&scope, "repository:")) return "";
  const size_t colon = scope.rfind(':');
  return colon == absl::string_view::npos ? scope : scope.substr(0, colon);
}

// The Basic Authorization header value for `c`.
std::string BasicHeader(const Credentials& c) {
  return absl::StrCat(
      "Basic ", absl::Base64Escape(absl::StrCat(c.username, ":", c.password)));
}

}  // namespace

absl::StatusOr<std::optional<Credentials>> RegistryAuth::CredsFor(
    absl::string_view registry, absl::string_view scope, bool fresh) {
  const absl::string_view repository = RepositoryOfScope(scope);
  const std::string key = absl::StrCat(registry, "/", repository);
  if (!fresh) {
    absl::MutexLock l(&mu_);
    auto it = creds_.find(key);
    if (it != creds_.end()) return it->second;
  }
  std::optional<Credentials> c;
  if (opts_.credentials != nullptr) {
    ASSIGN_OR_RETURN(c, opts_.credentials->Lookup(registry, repository));
  }
  absl::MutexLock l(&mu_);
  creds_[key] = c;
  return c;
}

absl::StatusOr<std::string> RegistryAuth::Authorization(
    absl::string_view registry, absl::string_view host,
    absl::string_view scope) {
  HostState hs;
  {
    absl::MutexLock l(&mu_);
    auto h = hosts_.find(std::string(host));
    if (h == hosts_.end()) return std::string();  // no challenge seen yet
    hs = h->second;
    if (!hs.basic) {
      auto t = tokens_.find(absl::StrCat(host, "|", scope));
      if (t != tokens_.end() && absl::Now() < t->second.refresh_at) {
        return absl::StrCat("Bearer ", t->second.value);
      }
    }
  }
  if (hs.basic) {
    ASSIGN_OR_RETURN(std::optional<Credentials> c, CredsFor(registry, scope));
    if (!c || c->username.empty()) return std::string();
    return BasicHeader(*c);
  }
  // A token is missing or about to expire: get a fresh one now, once for
  // all the threads that need it (single flight per host and scope).
  const std::string key = absl::StrCat(host, "|", scope);
  std::shared_ptr<absl::Mutex> flight = FlightFor(key);
  absl::MutexLock one(flight.get());
  {
    absl::MutexLock l(&mu_);
    auto t = tokens_.find(key);
    if (t != tokens_.end() && absl::Now() < t->second.refresh_at) {
      return absl::StrCat("Bearer ", t->second.value);  // another thread's
    }
  }
  ASSIGN_OR_RETURN(Token t, FetchToken(registry, hs, {std::string(scope)}));
  absl::MutexLock l(&mu_);
  tokens_[key] = t;
  return absl::StrCat("Bearer ", t.value);
}

std::shared_ptr<absl::Mutex> RegistryAuth::FlightFor(const std::string& key) {
  absl::MutexLock l(&mu_);
  std::shared_ptr<absl::Mutex>& m = flights_[key];
  if (m == nullptr) m = std::make_shared<absl::Mutex>();
  return m;
}

absl::Status RegistryAuth::HandleUnauthorized(
    absl::string_view registry, absl::string_view host, absl::string_view scope,
    const std::vector<std::string>& challenges, absl::string_view sent,
    bool over_tls) {
  std::vector<AuthChallenge> parsed;
  for (const std::string& h : challenges) {
    for (AuthChallenge& c : ParseWwwAuthenticate(h))
      parsed.push_back(std::move(c));
  }
  const AuthChallenge* bearer = nullptr;
  const AuthChallenge* basic = nullptr;
  for (const AuthChallenge& c : parsed) {
    if (c.scheme == "bearer" && bearer == nullptr) bearer = &c;
    if (c.scheme == "basic" && basic == nullptr) basic = &c;
  }
  // Read again: they may have changed since (a helper's short-lived
  // password, another `docker login`) and a long-lived mount must see it.
  ASSIGN_OR_RETURN(std::optional<Credentials> creds,
                   CredsFor(registry, scope, /*fresh=*/true));
  auto no_creds_hint = [&] {
    std::vector<std::string> files;
    if (opts_.credentials != nullptr) files = opts_.credentials->Files();
    return absl::StrCat("log in first (docker login / podman login ", registry,
                        "), or add credentials for ", registry, " to ",
                        files.empty() ? std::string("~/.docker/config.json")
                                      : absl::StrJoin(files, " or "));
  };
  if (bearer != nullptr) {
    auto realm = bearer->params.find("realm");
    if (realm == bearer->params.end() || realm->second.empty()) {
      return absl::UnauthenticatedError(absl::StrCat(
          host, " asked for a Bearer token without naming a realm"));
    }
    HostState hs;
    hs.realm = realm->second;
    hs.over_tls = over_tls;
    if (auto s = bearer->params.find("service"); s != bearer->params.end()) {
      hs.service = s->second;
    }
    // The challenge's scopes, space-separated (a cross-repository mount
    // asks for two), each its own `scope` parameter.
    std::vector<std::string> scopes = {std::string(scope)};
    if (auto s = bearer->params.find("scope"); s != bearer->params.end()) {
      for (absl::string_view one :
           absl::StrSplit(s->second, ' ', absl::SkipEmpty())) {
        if (std::find(scopes.begin(), scopes.end(), one) == scopes.end()) {
          scopes.emplace_back(one);
        }
      }
    }
    const std::string key = absl::StrCat(host, "|", scope);
    std::shared_ptr<absl::Mutex> flight = FlightFor(key);
    absl::MutexLock one(flight.get());
    {
      absl::MutexLock l(&mu_);
      auto cur = tokens_.find(key);
      if (cur != tokens_.end()) {
        if (absl::StrCat("Bearer ", cur->second.value) != sent &&
            absl::Now() < cur->second.refresh_at) {
          // Another thread replaced the refused token meanwhile.
          hosts_[std::string(host)] = hs;
          return absl::OkStatus();
        }
        // The registry refused a token we thought valid (expired early, or
        // revoked): it is dropped and a new one fetched below.
        tokens_.erase(cur);
      }
    }
    ASSIGN_OR_RETURN(Token t, FetchToken(registry, hs, scopes, creds));
    if (absl::StartsWith(sent, "Bearer ") &&
        absl::StrCat("Bearer ", t.value) == sent) {
      return absl::UnauthenticatedError(absl::StrCat(
          host, " refused the token its realm just issued for \"", scope, "\"",
          creds ? "" : absl::StrCat("; ", no_creds_hint())));
    }
    absl::MutexLock l(&mu_);
    hosts_[std::string(host)] = hs;
    tokens_[absl::StrCat(host, "|", scope)] = t;
    return absl::OkStatus();
  }
  if (basic != nullptr) {
    if (!creds || creds->username.empty()) {
      return absl::UnauthenticatedError(absl::StrCat(
          host, " requires a user name and password: ", no_creds_hint()));
    }
    if (sent == BasicHeader(*creds)) {
      return absl::UnauthenticatedError(absl::StrCat(
          host, " rejected the user name and password from ", creds->source));
    }
    // (Credentials that changed since `sent` are tried.)
    absl::MutexLock l(&mu_);
    hosts_[std::string(host)].basic = true;
    return absl::OkStatus();
  }
  return absl::UnauthenticatedError(absl::StrCat(
      host, " answered 401 without a Basic or Bearer challenge",
      challenges.empty() ? "" : absl::StrCat(" (", challenges[0], ")")));
}

absl::Status RegistryAuth::Refused(absl::string_view registry,
                                   absl::string_view host,
                                   absl::string_view scope,
                                   absl::string_view sent) {
  absl::StatusOr<std::optional<Credentials>> creds = CredsFor(registry, scope);
  std::string source = creds.ok() && *creds ? (*creds)->source : "";
  if (absl::StartsWith(sent, "Basic ")) {
    return absl::UnauthenticatedError(absl::StrCat(
        host, " rejected the user name and password from ", source));
  }
  if (absl::StartsWith(sent, "Bearer ")) {
    return absl::UnauthenticatedError(absl::StrCat(
        host, " refused a fresh token for \"", scope, "\": ",
        source.empty()
            ? std::string("anonymous access is not allowed")
            : absl::StrCat("the credentials from ", source, " do not grant it"),
        " (or the repository does not exist)"));
  }
  return absl::UnauthenticatedError(
      absl::StrCat(host, " answered 401 again after authentication"));
}

absl::StatusOr<RegistryAuth::Token> RegistryAuth::FetchToken(
    absl::string_view registry, const HostState& hs,
    const std::vector<std::string>& scopes,
    std::optional<std::optional<Credentials>> given) {
  // A token outlives nothing: the credentials are read afresh for each
  // (containerd asks its credentials callback on every token fetch).
  std::optional<Credentials> creds;
  if (given) {
    creds = *given;
  } else {
    ASSIGN_OR_RETURN(creds, CredsFor(registry, scopes[0], /*fresh=*/true));
  }
  if (creds && hs.over_tls &&
      absl::StartsWith(absl::AsciiStrToLower(hs.realm), "http://")) {
    return absl::UnauthenticatedError(
        absl::StrCat("the registry ", registry,
                     ", reached over HTTPS, names a plain-HTTP "
                     "token realm (",
                     hs.realm, "): the credentials from ", creds->source,
                     " are not sent over plain HTTP"));
  }
  HttpRequest req;
  req.retry = opts_.retry;
  if (opts_.realm_tls) req.tls = opts_.realm_tls(hs.realm);
  std::string query;
  if (!hs.service.empty()) {
    absl::StrAppend(&query, "service=", UrlQueryEscape(hs.service));
  }
  for (const std::string& s : scopes) {
    absl::StrAppend(&query, query.empty() ? "" : "&",
                    "scope=", UrlQueryEscape(s));
  }
  if (creds && !creds->identity_token.empty()) {
    // OAuth2 refresh-token grant (Docker's token spec, "oauth.md").
    req.method = "POST";
    req.url = hs.realm;
    req.headers.push_back(
        {"Content-Type", "application/x-www-form-urlencoded"});
    req.body =
        absl::StrCat("grant_type=refresh_token&client_id=lazypull",
                     "&refresh_token=", UrlQueryEscape(creds->identity_token),
                     query.empty() ? "" : "&", query);
  } else {
    req.url = absl::StrCat(hs.realm,
                           absl::StrContains(hs.realm, "?") ? "&" : "?", query);
    if (creds && !creds->username.empty()) {
      req.headers.push_back({"Authorization", BasicHeader(*creds)});
    }
  }
  ASSIGN_OR_RETURN(HttpResponse resp, opts_.http->Fetch(req, 1 << 20));
  // A realm may redirect (a load balancer, http -> https): followed, the
  // credentials kept within the realm's origin only. A POST goes on as a
  // POST through 307/308 alone.
  const std::string realm_origin = UrlOrigin(req.url);
  for (int hop = 0; resp.status >= 300 && resp.status < 400 && hop < 5; ++hop) {
    std::optional<std::string> loc = resp.headers.Get("location");
    if (!loc) break;
    if (req.method == "POST" && resp.status != 307 && resp.status != 308) {
      break;
    }
    const std::string next = ResolveUrl(req.url, *loc);
    // A POST's body is the refresh token: it never leaves the realm's
    // origin.
    if (req.method == "POST" && UrlOrigin(next) != realm_origin) break;
    req.url = next;
    if (UrlOrigin(req.url) != realm_origin) {
      std::erase_if(req.headers, [](const auto& h) {
        return absl::EqualsIgnoreCase(h.first, "authorization");
      });
      if (opts_.realm_tls) req.tls = opts_.realm_tls(req.url);
    }
    ASSIGN_OR_RETURN(resp, opts_.http->Fetch(req, 1 << 20));
  }
  if (req.method == "POST" && (resp.status == 400 || resp.status == 401 ||
                               resp.status == 404 || resp.status == 405)) {
    // Realms without the OAuth2 POST (GCR 404, Artifactory 401, ACR 400, as
    // containerd notes): the GET form, the identity token as the password.
    req.method = "GET";
    req.body.clear();
    req.headers.clear();
    if (opts_.realm_tls) req.tls = opts_.realm_tls(hs.realm);
    req.url = absl::StrCat(hs.realm,
                           absl::StrContains(hs.realm, "?") ? "&" : "?", query);
    req.headers.push_back(
        {"Authorization",
         absl::StrCat("Basic ",
                      absl::Base64Escape(absl::StrCat(
                          creds->username, ":", creds->identity_token)))});
    ASSIGN_OR_RETURN(resp, opts_.http->Fetch(req, 1 << 20));
  }
  if (resp.status >= 300 && resp.status < 400) {
    return absl::UnavailableError(
        absl::StrCat("the token service ", req.Describe(), " answered HTTP ",
                     resp.status, " (a redirect not followed)"));
  }
  if (resp.status == 401 || resp.status == 403) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the token service ", req.Describe(), " refused ",
        creds ? absl::StrCat("the credentials from ", creds->source)
              : std::string("anonymous access"),
        " (HTTP ", resp.status, ")"));
  }
  RETURN_IF_ERROR(HttpStatusToStatus(
      resp.status, absl::StrCat("token request ", req.Describe())));
  simdjson::dom::parser parser;
  element root;
  std::string_view value;
  if (parser.parse(resp.body).get(root) != simdjson::SUCCESS ||
      (root["token"].get(value) != simdjson::SUCCESS &&
       root["access_token"].get(value) != simdjson::SUCCESS) ||
      value.empty()) {
    return absl::UnauthenticatedError(absl::StrCat(
        "the token service ", req.Describe(), " answered without a token"));
  }
  // RFC 6750's b64token: what may follow "Bearer " in a header line.
  for (char ch : value) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) &&
        !absl::StrContains("-._~+/=", ch)) {
      return absl::UnauthenticatedError(absl::StrCat(
          "the token service ", req.Describe(),
          " answered a token with characters a Bearer token cannot hold"));
    }
  }
  int64_t expires_in = 60;  // the distribution spec's default
  int64_t e;
  if (root["expires_in"].get(e) == simdjson::SUCCESS && e > 0) expires_in = e;
  Token t;
  t.value = std::string(value);
  // Refresh a little early: a quarter of the lifetime, at most 30 s.
  absl::Duration life = absl::Seconds(expires_in);
  t.refresh_at = absl::Now() + life - std::min(life / 4, absl::Seconds(30));
  absl::MutexLock l(&mu_);
  ++tokens_fetched_;
  return t;
}

}  // namespace lazypull
