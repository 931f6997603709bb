#include "fetch/reference.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lazypull {
namespace {

bool IsLowerAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// One path component: alnum runs joined by '.', '_', '__' or '-'+.
bool ValidComponent(absl::string_view c) {
  if (c.empty() || !IsLowerAlnum(c.front()) || !IsLowerAlnum(c.back())) {
    return false;
  }
  for (size_t i = 0; i < c.size();) {
    if (IsLowerAlnum(c[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < c.size() && !IsLowerAlnum(c[j])) ++j;
    absl::string_view sep = c.substr(i, j - i);
    bool dashes = sep.find_first_not_of('-') == absl::string_view::npos;
    if (!(sep == "." || sep == "_" || sep == "__" || dashes)) return false;
    i = j;
  }
  return true;
}

bool ValidTag(absl::string_view t) {
  if (t.empty() || t.size() > 128) return false;
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    bool word = absl::ascii_isalnum(c) || c == '_';
    if (!word && (i == 0 || (c != '.' && c != '-'))) return false;
  }
  return true;
}

bool ValidHost(absl::string_view h) {
  if (h.empty()) return false;
  for (char c : h) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '-' && c != ':' &&
        c != '[' && c != ']') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<ImageReference> ImageReference::Parse(absl::string_view text) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("image reference \"", text, "\": ", why));
  };
  if (text.empty()) return bad("empty");
  if (absl::StrContains(text, "://")) {
    return bad("give a name like registry:port/repo:tag, not a URL");
  }
  ImageReference ref;
  absl::string_view rest = text;
  if (size_t at = rest.find('@'); at != absl::string_view::npos) {
    absl::StatusOr<Digest> d = Digest::Parse(rest.substr(at + 1));
    if (!d.ok()) return bad(d.status().message());
    ref.digest = *d;
    rest = rest.substr(0, at);
  }
  size_t slash = rest.find('/');
  absl::string_view first = rest.substr(0, slash);
  if (slash != absl::string_view::npos &&
      (absl::StrContains(first, ".") || absl::StrContains(first, ":") ||
       first == "localhost")) {
    if (!ValidHost(first)) return bad("malformed registry host");
    ref.registry = std::string(first);
    rest = rest.substr(slash + 1);
  } else {
    ref.registry = kDockerHubName;
  }
  if (ref.registry == "index.docker.io" || ref.registry == kDockerHubApiHost) {
    ref.registry = kDockerHubName;
  }
  // The tag follows the last ':' of the last path component.
  size_t last_slash = rest.rfind('/');
  size_t colon = rest.rfind(':');
  if (colon != absl::string_view::npos &&
      (last_slash == absl::string_view::npos || colon > last_slash)) {
    ref.tag = std::string(rest.substr(colon + 1));
    ref.tag_given = true;
    if (!ValidTag(ref.tag))
      return bad(absl::StrCat("invalid tag \"", ref.tag, "\""));
    rest = rest.substr(0, colon);
  } else {
    ref.tag = "latest";
  }
  if (rest.empty()) return bad("no repository name");
  if (rest.size() > 255)
    return bad("repository name longer than 255 characters");
  for (absl::string_view c : absl::StrSplit(rest, '/')) {
    if (!ValidComponent(c)) {
      return bad(absl::StrCat(
          "invalid repository component \"", c,
          "\" (lower-case letters, digits and . _ - separators only)"));
    }
  }
  ref.repository = std::string(rest);
  if (ref.registry == kDockerHubName && !absl::StrContains(rest, "/")) {
    ref.repository = absl::StrCat("library/", rest);
  }
  return ref;
}

std::string ImageReference::ApiHost() const {
  return registry == kDockerHubName ? kDockerHubApiHost : registry;
}

std::string ImageReference::ManifestSelector() const {
  return digest ? digest->ToString() : tag;
}

std::string ImageReference::String() const {
  std::string s = absl::StrCat(registry, "/", repository);
  if (tag_given || !digest) absl::StrAppend(&s, ":", tag);
  if (digest) absl::StrAppend(&s, "@", digest->ToString());
  return s;
}

}  // namespace lazypull
