// Fault rules for the fault proxy (proxy/fault_proxy.h): which requests get
// which fault, as C++ values (tests) or parsed from a rule file (the
// lazypull-proxy binary's --faults and its control port's POST /rules).
//
// A rule matches on method and request target, counts the requests it
// matches, and fires on chosen occurrences of them. Rules are tried in order
// and every rule counts every request it matches; the first rule that fires
// decides the request's fault, later ones do not fire for it.
//
// Rule file: one rule per line; '#' starts a comment. Fields:
//
//   METHOD  TARGET  WHEN  ACTION  [OPTION...]
//
//   METHOD  GET, HEAD, ... or * for any.
//   TARGET  a substring of the request target (path and query), * for any,
//           or ~REGEX (POSIX extended, searched anywhere in the target).
//   WHEN    every | nth=K (only the K-th match, from 1) | first=N
//   ACTION  status=CODE             answer CODE without asking upstream;
//                                   401 carries WWW-Authenticate, 429 and 503
//                                   carry Retry-After
//           refuse-multirange=CODE  answer CODE (400, 416 or 501) to requests
//                                   whose Range lists several ranges (has a
//                                   comma); other requests do not match
//           drop-after=K            forward; close the client connection after
//                                   K bytes of response body (K=-1: before the
//                                   response head)
//           full-200                forward without Range: a 200 with the whole
//                                   body where a 206 was asked for
//           shift-content-range=N   forward; Content-Range's first and last
//                                   byte positions moved by N (may be < 0)
//           flip-byte=K             forward; response body byte K XOR 0xff
//           slow=BYTES_PER_SECOND   forward; the body paced at that rate
//           redirect=DURATION       307 to the built-in blob-storage server
//                                   (signed URL valid for DURATION, e.g. 30s
//                                   or 500ms; 403 after)
//   OPTION  retry-after=SECONDS|none (default 1; none: no Retry-After
//           header), reset (drop-after closes with RST instead of FIN),
//           name=NAME (counter name; default: the line)
//
// Example:
//   GET /blobs/ nth=2 status=503 retry-after=2
//   GET ~^/v2/.+/blobs/sha256: first=3 drop-after=1000 reset
//   * * every slow=65536
//
// Thread-safety: FaultRule is a value type; a FaultRuleSet is used by one
// thread at a time (the fault proxy holds it under its mutex).
#ifndef LAZYPULL_PROXY_FAULT_RULES_H_
#define LAZYPULL_PROXY_FAULT_RULES_H_

#include <regex.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace lazypull::proxy {

enum class FaultAction {
  kStatus,
  kRefuseMultiRange,
  kDropAfter,
  kFullInsteadOfRange,
  kShiftContentRange,
  kFlipByte,
  kSlowBody,
  kRedirect,
};

enum class Occurrence { kEvery, kNth, kFirstN };

struct FaultRule {
  // Match. Empty strings match anything.
  std::string method;
  std::string target_contains;
  std::string target_regex;  // POSIX extended
  Occurrence when = Occurrence::kEvery;
  int64_t n = 0;  // K for kNth, N for kFirstN

  // Action and its parameters (only the action's own are read).
  FaultAction action = FaultAction::kStatus;
  int status = 503;               // kStatus, kRefuseMultiRange
  int retry_after_seconds = 1;    // kStatus with 429 or 503; < 0: none
  std::string www_authenticate;   // kStatus 401; "" = a Bearer challenge
                                  // naming the proxy, "none" = no header
  int64_t drop_after = 0;         // kDropAfter; < 0: before the head
  bool reset = false;             // kDropAfter: RST instead of FIN
  int64_t shift = 0;              // kShiftContentRange
  int64_t flip_offset = 0;        // kFlipByte
  uint64_t bytes_per_second = 0;  // kSlowBody
  absl::Duration expiry = absl::Seconds(60);  // kRedirect

  // Counter name; "" = "rule N" (in the fault proxy's counters).
  std::string name;
};

// Parses a rule file (format above). Errors name the line.
absl::StatusOr<std::vector<FaultRule>> ParseFaultRules(absl::string_view text);

// Rules with their occurrence counters and compiled regexes.
class FaultRuleSet {
 public:
  struct RuleCounts {
    std::string name;
    uint64_t matched = 0;  // requests that matched method and target
    uint64_t fired = 0;    // of which got the fault
  };

  // Compiles the regexes; an invalid one is an error naming the rule.
  static absl::StatusOr<std::unique_ptr<FaultRuleSet>> Create(
      std::vector<FaultRule> rules);
  ~FaultRuleSet();
  FaultRuleSet(const FaultRuleSet&) = delete;
  FaultRuleSet& operator=(const FaultRuleSet&) = delete;

  // Counts the request against every rule; returns the rule that fires
  // (valid until the set is destroyed), or nullptr. `range` is the Range
  // header's value, or nullptr.
  const FaultRule* Match(absl::string_view method, absl::string_view target,
                         const std::string* range);
  std::vector<RuleCounts> counts() const { return counts_; }
  // Zeroes the counters, so occurrences count afresh.
  void ResetCounts();

 private:
  FaultRuleSet() = default;

  std::vector<FaultRule> rules_;
  std::vector<std::unique_ptr<regex_t>> regexes_;  // nullptr: no regex
  std::vector<RuleCounts> counts_;
};

}  // namespace lazypull::proxy

#endif  // LAZYPULL_PROXY_FAULT_RULES_H_
