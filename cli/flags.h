// A small command-line parser for lazypull's subcommands.
//
// Each subcommand declares its flags (name, whether it takes a value, help)
// and its positional arguments; Parse() accepts `--flag value`,
// `--flag=value`, boolean `--flag`, `--` to end flags, and `-h`/`--help`.
// Errors say what was wrong and show the usage.
//
// Thread-safety: single-threaded use at start-up.
#ifndef LAZYPULL_CLI_FLAGS_H_
#define LAZYPULL_CLI_FLAGS_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lazypull::cli {

struct FlagSpec {
  std::string name;  // without dashes
  // Value placeholder ("DIGEST"); empty for booleans; in brackets
  // ("[SECONDS]") for an optional value, given only as --name=value (Get
  // returns "" when absent).
  std::string value;
  std::string help;
};

struct CommandSpec {
  std::string name;                      // "inspect"
  std::string args;                      // "LAYER [--json]" positional synopsis
  std::string summary;                   // one line
  std::string details;                   // paragraphs shown by --help
  std::vector<std::string> positionals;  // names of required positionals
  std::vector<FlagSpec> flags;
};

class ParsedArgs {
 public:
  bool help = false;
  std::vector<std::string> positionals;

  bool Has(const std::string& flag) const { return values_.count(flag) > 0; }
  std::optional<std::string> Get(const std::string& flag) const;
  std::string GetOr(const std::string& flag, const std::string& def) const;
  // Replaces the value of a flag that was given (no-op otherwise).
  void Replace(const std::string& flag, std::string value) {
    auto it = values_.find(flag);
    if (it != values_.end()) it->second = std::move(value);
  }

 private:
  friend absl::StatusOr<ParsedArgs> Parse(const CommandSpec&, int, char**);
  std::map<std::string, std::string> values_;
};

// Parses argv[1..argc) (argv[0] is the subcommand name).
absl::StatusOr<ParsedArgs> Parse(const CommandSpec& spec, int argc,
                                 char** argv);

// Usage text for `lazypull <spec.name> --help`.
std::string Usage(const CommandSpec& spec);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_FLAGS_H_
