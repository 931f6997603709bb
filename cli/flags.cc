#include "cli/flags.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lazypull::cli {

std::optional<std::string> ParsedArgs::Get(const std::string& flag) const {
  auto it = values_.find(flag);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string ParsedArgs::GetOr(const std::string& flag,
                              const std::string& def) const {
  auto v = Get(flag);
  return v ? *v : def;
}

absl::StatusOr<ParsedArgs> Parse(const CommandSpec& spec, int argc,
                                 char** argv) {
  ParsedArgs out;
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (flags_done || a.size() < 2 || a[0] != '-') {
      out.positionals.push_back(a);
      continue;
    }
    if (a == "--") {
      flags_done = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      out.help = true;
      continue;
    }
    if (a == "-o") a = "--o";  // mount(8)-style -o OPTIONS
    if (!absl::StartsWith(a, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option ", a, " (options are spelled --name)"));
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* f = nullptr;
    for (const FlagSpec& s : spec.flags) {
      if (s.name == name) f = &s;
    }
    if (f == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option --", name, " for '", spec.name, "'"));
    }
    if (!f->value.empty() && f->value[0] == '[') {
      // An optional value ("[SECONDS]"): only as --name=value.
      out.values_[name] = value.value_or("");
      continue;
    }
    if (f->value.empty()) {
      if (value) {
        return absl::InvalidArgumentError(
            absl::StrCat("option --", name, " takes no value"));
      }
      out.values_[name] = "true";
      continue;
    }
    if (!value) {
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(
            absl::StrCat("option --", name, " needs a value (", f->value, ")"));
      }
      value = argv[++i];
    }
    out.values_[name] = *value;
  }
  if (!out.help && out.positionals.size() != spec.positionals.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", spec.name, "' takes ", spec.positionals.size(),
                     " argument(s), got ", out.positionals.size()));
  }
  return out;
}

std::string Usage(const CommandSpec& spec) {
  std::string s = absl::StrCat("usage: lazypull ", spec.name, " ", spec.args,
                               "\n\n", spec.summary, "\n");
  if (!spec.details.empty()) absl::StrAppend(&s, "\n", spec.details, "\n");
  if (!spec.flags.empty()) absl::StrAppend(&s, "\noptions:\n");
  for (const FlagSpec& f : spec.flags) {
    std::string left = absl::StrCat("  --", f.name);
    if (!f.value.empty()) absl::StrAppend(&left, " ", f.value);
    if (left.size() < 30) left.resize(30, ' ');
    absl::StrAppend(&s, left, " ", f.help, "\n");
  }
  absl::StrAppend(&s, "  --help                       show this help\n");
  return s;
}

}  // namespace lazypull::cli
