#include "fetch/hosts_config.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace lazypull {

std::string RegistryHost::BaseUrl() const {
  return absl::StrCat(scheme, "://", host, path);
}

// ---------------------------------------------------------------------------
// The minimal TOML reader.

namespace {

class TomlParser {
 public:
  explicit TomlParser(absl::string_view text) : s_(text) {}

  absl::StatusOr<TomlDocument> Parse() {
    TomlDocument doc;
    std::vector<std::string> table;
    while (true) {
      SkipBlankAndComments();
      if (pos_ >= s_.size()) break;
      if (s_[pos_] == '[') {
        if (Peek(1) == '[') return Error("arrays of tables are not supported");
        ++pos_;
        ASSIGN_OR_RETURN(table, ParseKeyPath(']'));
        ++pos_;  // ']'
        RETURN_IF_ERROR(EndOfLine());
        doc.tables.push_back(table);
        continue;
      }
      ASSIGN_OR_RETURN(std::vector<std::string> key, ParseKeyPath('='));
      ++pos_;  // '='
      SkipSpaces();
      ASSIGN_OR_RETURN(TomlValue v, ParseValue());
      RETURN_IF_ERROR(EndOfLine());
      std::vector<std::string> full = table;
      full.insert(full.end(), key.begin(), key.end());
      doc.keys.emplace_back(std::move(full), std::move(v));
    }
    return doc;
  }

 private:
  char Peek(size_t ahead = 0) const {
    return pos_ + ahead < s_.size() ? s_[pos_ + ahead] : '\0';
  }
  int Line() const {
    return 1 +
           static_cast<int>(std::count(s_.begin(), s_.begin() + pos_, '\n'));
  }
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", Line(), ": ", what));
  }
  void SkipSpaces() {
    while (Peek() == ' ' || Peek() == '\t') ++pos_;
  }
  void SkipBlankAndComments() {
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
        ++pos_;
      } else if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }
  absl::Status EndOfLine() {
    SkipSpaces();
    if (Peek() == '#') {
      while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
    }
    if (Peek() == '\r') ++pos_;
    if (pos_ < s_.size() && s_[pos_] != '\n') {
      return Error(absl::StrCat("unexpected \"", s_.substr(pos_, 10),
                                "\" after a value"));
    }
    return absl::OkStatus();
  }
  // Dotted keys up to `end` ('=' or ']'), which is left unconsumed.
  absl::StatusOr<std::vector<std::string>> ParseKeyPath(char end) {
    std::vector<std::string> path;
    while (true) {
      SkipSpaces();
      std::string part;
      if (Peek() == '"' || Peek() == '\'') {
        ASSIGN_OR_RETURN(part, ParseString());
      } else {
        while (absl::ascii_isalnum(Peek()) || Peek() == '_' || Peek() == '-') {
          part.push_back(s_[pos_++]);
        }
        if (part.empty()) return Error("expected a key");
      }
      path.push_back(std::move(part));
      SkipSpaces();
      if (Peek() == '.') {
        ++pos_;
        continue;
      }
      if (Peek() != end) {
        return Error(
            absl::StrCat("expected '", std::string(1, end), "' after a key"));
      }
      return path;
    }
  }
  absl::StatusOr<std::string> ParseString() {
    const char quote = s_[pos_];
    if (Peek(1) == quote && Peek(2) == quote) {
      return Error("multi-line strings are not supported");
    }
    ++pos_;
    std::string out;
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] == '\n') {
        return Error("unterminated string");
      }
      char c = s_[pos_++];
      if (c == quote) return out;
      if (c != '\\' || quote == '\'') {
        out.push_back(c);
        continue;
      }
      char e = Peek();
      ++pos_;
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'u':
        case 'U': {
          size_t n = e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          if (pos_ + n > s_.size() ||
              !absl::SimpleHexAtoi(s_.substr(pos_, n), &cp)) {
            return Error("bad \\u escape");
          }
          pos_ += n;
          // UTF-8.
          if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xC0 | cp >> 6));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else if (cp < 0x10000) {
            out.push_back(static_cast<char>(0xE0 | cp >> 12));
            out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          } else {
            out.push_back(static_cast<char>(0xF0 | cp >> 18));
            out.push_back(static_cast<char>(0x80 | (cp >> 12 & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
          }
          break;
        }
        default:
          return Error(absl::StrCat("unknown escape \\", std::string(1, e)));
      }
    }
  }
  absl::StatusOr<TomlValue> ParseValue() {
    TomlValue v;
    char c = Peek();
    if (c == '"' || c == '\'') {
      v.type = TomlValue::Type::kString;
      ASSIGN_OR_RETURN(v.str, ParseString());
      return v;
    }
    if (c == '[') {
      ++pos_;
      v.type = TomlValue::Type::kArray;
      while (true) {
        SkipBlankAndComments();
        if (Peek() == ']') {
          ++pos_;
          return v;
        }
        ASSIGN_OR_RETURN(TomlValue item, ParseValue());
        v.array.push_back(std::move(item));
        SkipBlankAndComments();
        if (Peek() == ',') {
          ++pos_;
        } else if (Peek() != ']') {
          return Error("expected ',' or ']' in an array");
        }
      }
    }
    if (c == '{') return Error("inline tables are not supported");
    size_t start = pos_;
    while (absl::ascii_isalnum(Peek()) || Peek() == '_' || Peek() == '-' ||
           Peek() == '+') {
      ++pos_;
    }
    absl::string_view word = s_.substr(start, pos_ - start);
    if (word == "true" || word == "false") {
      v.type = TomlValue::Type::kBool;
      v.boolean = word == "true";
      return v;
    }
    std::string digits;
    for (char d : word) {
      if (d != '_') digits.push_back(d);
    }
    if (!digits.empty() && absl::SimpleAtoi(digits, &v.integer)) {
      v.type = TomlValue::Type::kInt;
      return v;
    }
    return Error(
        absl::StrCat("unsupported value \"", s_.substr(start, 20), "\""));
  }

  absl::string_view s_;
  size_t pos_ = 0;
};

absl::StatusOr<std::string> ReadFile(const std::string& path, bool* exists) {
  std::ifstream in(path, std::ios::binary);
  *exists = static_cast<bool>(in);
  if (!in) return std::string();
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Splits "scheme://host[:port][/path]".
absl::Status ParseHostUrl(absl::string_view url, RegistryHost* h,
                          bool override_path) {
  size_t sep = url.find("://");
  if (sep == absl::string_view::npos) {
    // containerd: a host without a scheme is reached over HTTPS.
    std::string with_scheme = absl::StrCat("https://", url);
    return ParseHostUrl(with_scheme, h, override_path);
  }
  h->scheme = absl::AsciiStrToLower(url.substr(0, sep));
  if (h->scheme != "http" && h->scheme != "https") {
    return absl::InvalidArgumentError(
        absl::StrCat("host \"", url, "\": scheme must be http or https"));
  }
  absl::string_view rest = url.substr(sep + 3);
  size_t slash = rest.find('/');
  h->host = std::string(rest.substr(0, slash));
  if (h->host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("host \"", url, "\" has no host"));
  }
  std::string path =
      slash == absl::string_view::npos ? "" : std::string(rest.substr(slash));
  while (absl::EndsWith(path, "/")) path.pop_back();
  // containerd: the API root is /v2 unless the path says otherwise.
  if (path.empty()) {
    path = "/v2";
  } else if (!override_path && !absl::EndsWith(path, "/v2")) {
    path += "/v2";
  }
  h->path = path;
  return absl::OkStatus();
}

absl::Status ApplyCa(const TomlValue& v, const std::string& dir,
                     RegistryHost* h) {
  std::vector<std::string> files;
  if (v.type == TomlValue::Type::kString) {
    files.push_back(v.str);
  } else if (v.type == TomlValue::Type::kArray) {
    for (const TomlValue& e : v.array) {
      if (e.type != TomlValue::Type::kString) {
        return absl::InvalidArgumentError("ca must be a path or paths");
      }
      files.push_back(e.str);
    }
  } else {
    return absl::InvalidArgumentError("ca must be a path or paths");
  }
  for (std::string& f : files) {
    if (!absl::StartsWith(f, "/")) f = absl::StrCat(dir, "/", f);
    h->tls.ca_files.push_back(f);
  }
  return absl::OkStatus();
}

// containerd's `client`: "cert+key.pem", ["a.pem", ...] (each a cert and
// its key) or [["a.cert", "a.key"], ...]. One certificate is presented: the
// first.
absl::Status ApplyClient(const TomlValue& v, const std::string& dir,
                         RegistryHost* h) {
  const absl::Status bad = absl::InvalidArgumentError(
      "client must be a path, paths, or [certificate, key] pairs");
  const TomlValue* first = &v;
  if (v.type == TomlValue::Type::kArray) {
    if (v.array.empty()) return absl::OkStatus();
    first = &v.array[0];
  }
  std::string cert, key;
  if (first->type == TomlValue::Type::kString) {
    cert = first->str;
  } else if (first->type == TomlValue::Type::kArray && !first->array.empty() &&
             first->array.size() <= 2 &&
             first->array[0].type == TomlValue::Type::kString) {
    cert = first->array[0].str;
    if (first->array.size() == 2) {
      if (first->array[1].type != TomlValue::Type::kString) return bad;
      key = first->array[1].str;
    }
  } else {
    return bad;
  }
  if (cert.empty()) return bad;
  auto abs = [&](const std::string& f) {
    return f.empty() || absl::StartsWith(f, "/") ? f
                                                 : absl::StrCat(dir, "/", f);
  };
  h->tls.client_cert = abs(cert);
  h->tls.client_key = abs(key);
  return absl::OkStatus();
}

// A header's value: a string, or an array of them (the header repeated).
// CR, LF or NUL in a name or value would end the header line and start
// another (TOML's "\r\n" escapes make them easy to write): refused.
absl::Status ApplyHeader(const std::string& name, const TomlValue& v,
                         RegistryHost* h) {
  auto add = [&](const std::string& value) -> absl::Status {
    for (const std::string* s : {&name, &value}) {
      if (s->find_first_of(std::string("\r\n\0", 3)) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("header ", absl::CEscape(name),
                         ": a line break or NUL in its name or value"));
      }
    }
    h->headers.emplace_back(name, value);
    return absl::OkStatus();
  };
  if (v.type == TomlValue::Type::kString) return add(v.str);
  if (v.type == TomlValue::Type::kArray) {
    for (const TomlValue& e : v.array) {
      if (e.type != TomlValue::Type::kString) {
        return absl::InvalidArgumentError(
            absl::StrCat("header ", name, " must be a string or strings"));
      }
      RETURN_IF_ERROR(add(e.str));
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("header ", name, " must be a string or strings"));
}

absl::Status ApplyCapabilities(const TomlValue& v, RegistryHost* h) {
  if (v.type != TomlValue::Type::kArray) {
    return absl::InvalidArgumentError("capabilities must be an array");
  }
  h->can_pull = h->can_resolve = h->can_push = false;
  for (const TomlValue& e : v.array) {
    // As containerd: any case; an unknown one is an error, not a host that
    // silently can do nothing.
    const std::string c = absl::AsciiStrToLower(e.str);
    if (c == "pull") {
      h->can_pull = true;
    } else if (c == "resolve") {
      h->can_resolve = true;
    } else if (c == "push") {
      h->can_push = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown capability \"", e.str, "\" (known: pull, resolve, push)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TomlDocument> ParseToml(absl::string_view text) {
  return TomlParser(text).Parse();
}

absl::StatusOr<std::vector<RegistryHost>> LoadRegistryHosts(
    absl::string_view registry, absl::string_view api_host,
    const RegistryHostDefaults& defaults) {
  RegistryHost origin;
  origin.scheme = defaults.plain_http ? "http" : "https";
  origin.host = std::string(api_host);
  origin.tls.verify = !defaults.skip_verify;
  origin.tls.ca_files = defaults.ca_files;

  std::vector<RegistryHost> mirrors;
  std::string dir;
  if (!defaults.hosts_dir.empty()) {
    std::vector<std::string> cands;
    if (const size_t colon = registry.rfind(':');
        colon != absl::string_view::npos && colon > 0) {
      cands.push_back(absl::StrCat(defaults.hosts_dir, "/",
                                   registry.substr(0, colon), "_",
                                   registry.substr(colon + 1), "_"));
    }
    cands.push_back(absl::StrCat(defaults.hosts_dir, "/", registry));
    cands.push_back(absl::StrCat(defaults.hosts_dir, "/_default"));
    for (const std::string& cand : cands) {
      if (IsDir(cand)) {
        dir = cand;
        break;
      }
    }
  }
  if (dir.empty()) return std::vector<RegistryHost>{origin};

  const std::string file = dir + "/hosts.toml";
  bool exists = false;
  ASSIGN_OR_RETURN(std::string text, ReadFile(file, &exists));
  if (!exists) {
    // Docker's certs.d: *.crt files are CAs of the origin; X.cert with
    // X.key a client certificate (the first by name).
    if (DIR* d = opendir(dir.c_str())) {
      std::vector<std::string> crts, certs;
      while (struct dirent* e = readdir(d)) {
        if (absl::EndsWith(e->d_name, ".crt")) {
          crts.push_back(absl::StrCat(dir, "/", e->d_name));
        } else if (absl::EndsWith(e->d_name, ".cert")) {
          certs.push_back(absl::StrCat(dir, "/", e->d_name));
        }
      }
      closedir(d);
      std::sort(crts.begin(), crts.end());
      origin.tls.ca_files.insert(origin.tls.ca_files.end(), crts.begin(),
                                 crts.end());
      std::sort(certs.begin(), certs.end());
      for (const std::string& c : certs) {
        const std::string key = c.substr(0, c.size() - 5) + ".key";
        if (access(key.c_str(), R_OK) != 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(c, ": a client certificate without its key ", key));
        }
        origin.tls.client_cert = c;
        origin.tls.client_key = key;
        break;
      }
    }
    return std::vector<RegistryHost>{origin};
  }
  absl::StatusOr<TomlDocument> doc = ParseToml(text);
  auto err = [&](const absl::Status& st) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", st.message()));
  };
  if (!doc.ok()) return err(doc.status());

  // Mirrors in the order of their tables.
  std::vector<std::string> order;
  for (const auto& t : doc->tables) {
    if (t.size() >= 2 && t[0] == "host" &&
        std::find(order.begin(), order.end(), t[1]) == order.end()) {
      order.push_back(t[1]);
    }
  }
  for (const auto& [path, v] : doc->keys) {
    if (path.size() >= 3 && path[0] == "host" &&
        std::find(order.begin(), order.end(), path[1]) == order.end()) {
      order.push_back(path[1]);
    }
  }
  for (const std::string& url : order) {
    RegistryHost m;
    m.mirror = true;
    m.tls.ca_files = defaults.ca_files;
    bool override_path = false;
    for (const auto& [path, v] : doc->keys) {
      if (path.size() == 3 && path[0] == "host" && path[1] == url &&
          path[2] == "override_path") {
        override_path = v.boolean;
      }
    }
    absl::Status st = ParseHostUrl(url, &m, override_path);
    if (!st.ok()) return err(st);
    for (const auto& [path, v] : doc->keys) {
      if (path.size() == 4 && path[0] == "host" && path[1] == url &&
          path[2] == "header") {
        st = ApplyHeader(path[3], v, &m);
        if (!st.ok()) return err(st);
        continue;
      }
      if (path.size() != 3 || path[0] != "host" || path[1] != url) continue;
      const std::string& k = path[2];
      if (k == "capabilities") {
        st = ApplyCapabilities(v, &m);
      } else if (k == "ca") {
        st = ApplyCa(v, dir, &m);
      } else if (k == "client") {
        st = ApplyClient(v, dir, &m);
      } else if (k == "skip_verify") {
        m.tls.verify = !v.boolean;
      }
      if (!st.ok()) return err(st);
    }
    // The same host as the origin is not a mirror (no ?ns=).
    m.mirror = m.host != api_host && m.host != registry;
    mirrors.push_back(std::move(m));
  }
  // override_path applies to `server` too, wherever it is in the file.
  bool server_override_path = false;
  for (const auto& [path, v] : doc->keys) {
    if (path.size() == 1 && path[0] == "override_path") {
      server_override_path = v.boolean;
    }
  }
  for (const auto& [path, v] : doc->keys) {
    if (path.size() == 2 && path[0] == "header") {
      absl::Status st = ApplyHeader(path[1], v, &origin);
      if (!st.ok()) return err(st);
      continue;
    }
    if (path.size() != 1) continue;
    absl::Status st;
    if (path[0] == "server") {
      if (v.type != TomlValue::Type::kString) {
        return err(absl::InvalidArgumentError("server must be a string"));
      }
      st = ParseHostUrl(v.str, &origin, server_override_path);
      if (st.ok() && defaults.plain_http) origin.scheme = "http";
    } else if (path[0] == "ca") {
      st = ApplyCa(v, dir, &origin);
    } else if (path[0] == "client") {
      st = ApplyClient(v, dir, &origin);
    } else if (path[0] == "skip_verify") {
      origin.tls.verify = !v.boolean && !defaults.skip_verify;
    } else if (path[0] == "capabilities") {
      st = ApplyCapabilities(v, &origin);
    }
    if (!st.ok()) return err(st);
  }
  // A `server` elsewhere than the registry (a pull-through cache named as
  // the only host) is a mirror in all but its place: its own credentials,
  // and ?ns= naming the registry meant (containerd's isProxy).
  origin.mirror = origin.host != api_host && origin.host != registry;
  mirrors.push_back(std::move(origin));
  return mirrors;
}

}  // namespace lazypull
