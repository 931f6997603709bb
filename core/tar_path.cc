#include "core/tar_path.h"

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lazypull {

namespace {

// NAME_MAX of every Linux filesystem: a longer component can be neither
// extracted nor looked up (and the kernel refuses a whole FUSE directory
// listing holding one over 1024 bytes).
constexpr size_t kNameMax = 255;

// PATH_MAX less its NUL: no longer path can be created or opened by name on
// Linux (containerd's unpack fails on one), and no longer symlink target can
// be written or read back.
constexpr size_t kPathMax = 4095;

absl::Status NameTooLong(absl::string_view name) {
  return absl::InvalidArgumentError(
      absl::StrCat("a component of name \"", NameForMessage(name),
                   "\" is longer than ", kNameMax, " bytes"));
}

absl::StatusOr<std::string> Normalize(absl::string_view name) {
  if (name.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("a name holds a NUL byte");
  }
  // Fast path for the common spellings ("./a/b", "/a/b", "a/b/"): strip the
  // prefixes and a trailing slash, then accept the rest as is when no
  // component is empty, "." or "..".
  {
    absl::string_view n = name;
    while (!n.empty() &&
           (n[0] == '/' || (n.size() >= 2 && n[0] == '.' && n[1] == '/'))) {
      n.remove_prefix(n[0] == '/' ? 1 : 2);
    }
    if (n == ".") n = absl::string_view();
    while (!n.empty() && n.back() == '/') n.remove_suffix(1);
    bool clean = true;
    size_t start = 0;
    for (size_t i = 0; i <= n.size() && clean; ++i) {
      if (i == n.size() || n[i] == '/') {
        const size_t len = i - start;
        if (len > kNameMax) return NameTooLong(name);
        if (len == 0 && !n.empty()) clean = false;
        if (len == 1 && n[start] == '.') clean = false;
        if (len == 2 && n[start] == '.' && n[start + 1] == '.') clean = false;
        start = i + 1;
      }
    }
    if (clean) return std::string(n);
  }
  std::vector<absl::string_view> parts;
  size_t pos = 0;
  while (pos <= name.size()) {
    size_t slash = name.find('/', pos);
    if (slash == absl::string_view::npos) slash = name.size();
    absl::string_view part = name.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part.size() > kNameMax) return NameTooLong(name);
    if (part == "..") {
      if (parts.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("name \"", NameForMessage(name),
                         "\" climbs above the layer's root"));
      }
      parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (absl::string_view p : parts) {
    if (!out.empty()) out.push_back('/');
    out.append(p.data(), p.size());
  }
  return out;
}

absl::Status TooLong(absl::string_view what, absl::string_view s) {
  return absl::InvalidArgumentError(
      absl::StrCat(what, " \"", NameForMessage(s), "\" is ", s.size(),
                   " bytes long: longer than ", kPathMax, " (PATH_MAX)"));
}

}  // namespace

std::string NameForMessage(absl::string_view name) {
  constexpr size_t kShown = 300;
  if (name.size() <= kShown) return std::string(name);
  return absl::StrCat(name.substr(0, kShown), "...");
}

absl::StatusOr<std::string> NormalizeTarPath(absl::string_view name) {
  absl::StatusOr<std::string> out = Normalize(name);
  if (out.ok() && out->size() > kPathMax) return TooLong("name", *out);
  return out;
}

absl::Status CheckSymlinkTarget(absl::string_view target) {
  if (target.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("a symlink target holds a NUL byte");
  }
  if (target.size() > kPathMax) return TooLong("symlink target", target);
  return absl::OkStatus();
}

}  // namespace lazypull
