#include "proxy/fault_rules.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lazypull::proxy {
namespace {

absl::Status LineError(int line, absl::string_view text,
                       absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("fault rules line ", line, " \"", text, "\": ", why));
}

// Parses the action or option `token` ("key=value" or a flag) into `rule`.
// Returns false if the token is not known or its value is bad.
bool ApplyToken(absl::string_view token, bool* has_action, FaultRule* rule) {
  absl::string_view key = token, value;
  size_t eq = token.find('=');
  if (eq != absl::string_view::npos) {
    key = token.substr(0, eq);
    value = token.substr(eq + 1);
  }
  auto action = [&](FaultAction a) {
    rule->action = a;
    bool first = !*has_action;
    *has_action = true;
    return first;
  };
  if (key == "status" || key == "refuse-multirange") {
    if (!absl::SimpleAtoi(value, &rule->status) || rule->status < 100 ||
        rule->status > 599) {
      return false;
    }
    return action(key == "status" ? FaultAction::kStatus
                                  : FaultAction::kRefuseMultiRange);
  }
  if (key == "drop-after") {
    return absl::SimpleAtoi(value, &rule->drop_after) &&
           action(FaultAction::kDropAfter);
  }
  if (key == "full-200") {
    return value.empty() && action(FaultAction::kFullInsteadOfRange);
  }
  if (key == "shift-content-range") {
    return absl::SimpleAtoi(value, &rule->shift) &&
           action(FaultAction::kShiftContentRange);
  }
  if (key == "flip-byte") {
    return absl::SimpleAtoi(value, &rule->flip_offset) &&
           rule->flip_offset >= 0 && action(FaultAction::kFlipByte);
  }
  if (key == "slow") {
    return absl::SimpleAtoi(value, &rule->bytes_per_second) &&
           rule->bytes_per_second > 0 && action(FaultAction::kSlowBody);
  }
  if (key == "redirect") {
    return absl::ParseDuration(value, &rule->expiry) &&
           rule->expiry >= absl::ZeroDuration() &&
           action(FaultAction::kRedirect);
  }
  if (key == "retry-after") {
    if (value == "none") {
      rule->retry_after_seconds = -1;
      return true;
    }
    return absl::SimpleAtoi(value, &rule->retry_after_seconds) &&
           rule->retry_after_seconds >= 0;
  }
  if (key == "reset") {
    rule->reset = true;
    return value.empty();
  }
  if (key == "name") {
    rule->name = std::string(value);
    return !value.empty();
  }
  return false;
}

}  // namespace

absl::StatusOr<std::vector<FaultRule>> ParseFaultRules(absl::string_view text) {
  std::vector<FaultRule> rules;
  int line_no = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_no;
    absl::string_view line = raw.substr(0, raw.find('#'));
    std::vector<absl::string_view> tokens =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (tokens.empty()) continue;
    if (tokens.size() < 4) {
      return LineError(line_no, raw, "expected METHOD TARGET WHEN ACTION");
    }
    FaultRule rule;
    if (tokens[0] != "*") rule.method = std::string(tokens[0]);
    if (absl::StartsWith(tokens[1], "~")) {
      rule.target_regex = std::string(tokens[1].substr(1));
    } else if (tokens[1] != "*") {
      rule.target_contains = std::string(tokens[1]);
    }
    absl::string_view when = tokens[2];
    if (when == "every") {
      rule.when = Occurrence::kEvery;
    } else if (absl::ConsumePrefix(&when, "nth=")) {
      rule.when = Occurrence::kNth;
      if (!absl::SimpleAtoi(when, &rule.n) || rule.n < 1) {
        return LineError(line_no, raw, "nth=K needs K >= 1");
      }
    } else if (absl::ConsumePrefix(&when, "first=")) {
      rule.when = Occurrence::kFirstN;
      if (!absl::SimpleAtoi(when, &rule.n) || rule.n < 1) {
        return LineError(line_no, raw, "first=N needs N >= 1");
      }
    } else {
      return LineError(line_no, raw, "WHEN must be every, nth=K or first=N");
    }
    bool has_action = false;
    for (size_t i = 3; i < tokens.size(); ++i) {
      if (!ApplyToken(tokens[i], &has_action, &rule)) {
        return LineError(line_no, raw,
                         absl::StrCat("bad or repeated action or option \"",
                                      tokens[i], "\""));
      }
    }
    if (!has_action) return LineError(line_no, raw, "no action");
    if (rule.name.empty()) {
      rule.name = std::string(absl::StripAsciiWhitespace(line));
    }
    rules.push_back(std::move(rule));
  }
  return rules;
}

absl::StatusOr<std::unique_ptr<FaultRuleSet>> FaultRuleSet::Create(
    std::vector<FaultRule> rules) {
  std::unique_ptr<FaultRuleSet> set(new FaultRuleSet());
  for (size_t i = 0; i < rules.size(); ++i) {
    std::unique_ptr<regex_t> re;
    if (!rules[i].target_regex.empty()) {
      re = std::make_unique<regex_t>();
      int rc = regcomp(re.get(), rules[i].target_regex.c_str(),
                       REG_EXTENDED | REG_NOSUB);
      if (rc != 0) {
        char msg[256];
        regerror(rc, re.get(), msg, sizeof(msg));
        // The destructor frees only compiled regexes: do not keep this one.
        return absl::InvalidArgumentError(
            absl::StrCat("fault rule ", i + 1, ": bad regex \"",
                         rules[i].target_regex, "\": ", msg));
      }
    }
    set->regexes_.push_back(std::move(re));
    RuleCounts counts;
    counts.name =
        rules[i].name.empty() ? absl::StrCat("rule ", i + 1) : rules[i].name;
    set->counts_.push_back(std::move(counts));
  }
  set->rules_ = std::move(rules);
  return set;
}

FaultRuleSet::~FaultRuleSet() {
  for (auto& re : regexes_) {
    if (re != nullptr) regfree(re.get());
  }
}

const FaultRule* FaultRuleSet::Match(absl::string_view method,
                                     absl::string_view target,
                                     const std::string* range) {
  const FaultRule* fired = nullptr;
  const std::string target_str(target);
  for (size_t i = 0; i < rules_.size(); ++i) {
    const FaultRule& r = rules_[i];
    if (!r.method.empty() && r.method != method) continue;
    if (!r.target_contains.empty() &&
        !absl::StrContains(target, r.target_contains)) {
      continue;
    }
    if (regexes_[i] != nullptr &&
        regexec(regexes_[i].get(), target_str.c_str(), 0, nullptr, 0) != 0) {
      continue;
    }
    if (r.action == FaultAction::kRefuseMultiRange &&
        (range == nullptr || !absl::StrContains(*range, ','))) {
      continue;
    }
    uint64_t k = ++counts_[i].matched;
    bool fires = r.when == Occurrence::kEvery ||
                 (r.when == Occurrence::kNth && k == uint64_t(r.n)) ||
                 (r.when == Occurrence::kFirstN && k <= uint64_t(r.n));
    if (fires && fired == nullptr) {
      ++counts_[i].fired;
      fired = &r;
    }
  }
  return fired;
}

void FaultRuleSet::ResetCounts() {
  for (RuleCounts& c : counts_) {
    c.matched = 0;
    c.fired = 0;
  }
}

}  // namespace lazypull::proxy
