#include "proxy/fault_rules.h"

#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "proxy/signed_url.h"

namespace lazypull::proxy {
namespace {

TEST(FaultRulesTest, ParsesEveryAction) {
  absl::StatusOr<std::vector<FaultRule>> rules = ParseFaultRules(R"(
# comment line
GET  /blobs/  nth=2    status=503 retry-after=7   # trailing comment
*    *        every    slow=65536
HEAD ~^/v2/.+/manifests/  first=3  drop-after=100 reset name=drops
GET  *  every  refuse-multirange=416
GET  *  every  full-200
GET  *  every  shift-content-range=-5
GET  *  every  flip-byte=10
GET  *  every  redirect=500ms
GET  *  every  drop-after=-1
GET  *  every  status=429 retry-after=none
)");
  ASSERT_TRUE(rules.ok()) << rules.status();
  ASSERT_EQ(rules->size(), 10u);
  const std::vector<FaultRule>& r = *rules;
  EXPECT_EQ(r[0].method, "GET");
  EXPECT_EQ(r[0].target_contains, "/blobs/");
  EXPECT_EQ(r[0].when, Occurrence::kNth);
  EXPECT_EQ(r[0].n, 2);
  EXPECT_EQ(r[0].action, FaultAction::kStatus);
  EXPECT_EQ(r[0].status, 503);
  EXPECT_EQ(r[0].retry_after_seconds, 7);
  EXPECT_EQ(r[0].name, "GET  /blobs/  nth=2    status=503 retry-after=7");
  EXPECT_EQ(r[1].method, "");
  EXPECT_EQ(r[1].action, FaultAction::kSlowBody);
  EXPECT_EQ(r[1].bytes_per_second, 65536u);
  EXPECT_EQ(r[2].target_regex, "^/v2/.+/manifests/");
  EXPECT_EQ(r[2].when, Occurrence::kFirstN);
  EXPECT_EQ(r[2].drop_after, 100);
  EXPECT_TRUE(r[2].reset);
  EXPECT_EQ(r[2].name, "drops");
  EXPECT_EQ(r[3].action, FaultAction::kRefuseMultiRange);
  EXPECT_EQ(r[3].status, 416);
  EXPECT_EQ(r[4].action, FaultAction::kFullInsteadOfRange);
  EXPECT_EQ(r[5].shift, -5);
  EXPECT_EQ(r[6].flip_offset, 10);
  EXPECT_EQ(r[7].expiry, absl::Milliseconds(500));
  EXPECT_EQ(r[8].drop_after, -1);
  EXPECT_EQ(r[9].retry_after_seconds, -1);
}

TEST(FaultRulesTest, ErrorsNameTheLine) {
  for (const char* bad : {
           "GET /x every",                      // no action
           "GET /x sometimes status=500",       // bad WHEN
           "GET /x nth=0 status=500",           // K < 1
           "GET /x every status=99",            // bad status
           "GET /x every status=500 full-200",  // two actions
           "GET /x every teleport=1",           // unknown
       }) {
    absl::StatusOr<std::vector<FaultRule>> r =
        ParseFaultRules(std::string("\n") + bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("line 2"), std::string::npos)
        << r.status();
  }
}

TEST(FaultRuleSetTest, OccurrencesAndPrecedence) {
  std::vector<FaultRule> rules = *ParseFaultRules(
      "GET /blobs/ nth=2 status=500\n"
      "GET /blobs/ first=3 status=404\n"
      "* ~manifests/latest$ every status=401\n");
  absl::StatusOr<std::unique_ptr<FaultRuleSet>> set =
      FaultRuleSet::Create(std::move(rules));
  ASSERT_TRUE(set.ok()) << set.status();
  FaultRuleSet& s = **set;
  auto status_of = [&](const char* method, const char* target) {
    const FaultRule* r = s.Match(method, target, nullptr);
    return r == nullptr ? 0 : r->status;
  };
  EXPECT_EQ(status_of("GET", "/v2/a/blobs/1"), 404);  // rule 2's 1st
  EXPECT_EQ(status_of("GET", "/v2/a/blobs/1"), 500);  // rule 1's 2nd wins
  EXPECT_EQ(status_of("GET", "/v2/a/blobs/1"), 404);  // rule 2's 3rd
  EXPECT_EQ(status_of("GET", "/v2/a/blobs/1"), 0);
  EXPECT_EQ(status_of("HEAD", "/v2/a/blobs/1"), 0);
  EXPECT_EQ(status_of("HEAD", "/v2/a/manifests/latest"), 401);
  EXPECT_EQ(status_of("GET", "/v2/a/manifests/latest?x"), 0);
  std::vector<FaultRuleSet::RuleCounts> c = s.counts();
  EXPECT_EQ(c[0].matched, 4u);
  EXPECT_EQ(c[0].fired, 1u);
  EXPECT_EQ(c[1].matched, 4u);
  EXPECT_EQ(c[1].fired, 2u);  // its 2nd occurrence lost to rule 1
  EXPECT_EQ(c[2].fired, 1u);
  s.ResetCounts();
  EXPECT_EQ(status_of("GET", "/v2/a/blobs/1"), 404);
}

TEST(FaultRuleSetTest, MultiRangeRuleMatchesOnlyRangeLists) {
  auto set = FaultRuleSet::Create(
      *ParseFaultRules("GET * every refuse-multirange=501\n"));
  ASSERT_TRUE(set.ok());
  std::string one = "bytes=0-9", two = "bytes=0-9,20-29";
  EXPECT_EQ((*set)->Match("GET", "/b", nullptr), nullptr);
  EXPECT_EQ((*set)->Match("GET", "/b", &one), nullptr);
  ASSERT_NE((*set)->Match("GET", "/b", &two), nullptr);
  EXPECT_EQ((*set)->counts()[0].matched, 1u);
}

TEST(FaultRuleSetTest, BadRegexIsAnError) {
  FaultRule r;
  r.target_regex = "([";
  std::vector<FaultRule> rules = {r};
  EXPECT_FALSE(FaultRuleSet::Create(std::move(rules)).ok());
}

TEST(UrlSignerTest, SignVerifyTamperExpire) {
  UrlSigner signer;
  absl::Time now = absl::Now();
  std::string url = signer.Sign("/v2/a/blobs/sha256:1", now + absl::Seconds(1));
  std::string path;
  ASSERT_TRUE(signer.Verify(url, now, &path).ok()) << url;
  EXPECT_EQ(path, "/v2/a/blobs/sha256:1");
  EXPECT_FALSE(signer.Verify(url, now + absl::Seconds(2), &path).ok());
  std::string other = url;
  other.replace(other.find("sha256:1"), 8, "sha256:2");
  EXPECT_FALSE(signer.Verify(other, now, &path).ok());
  std::string later = url;
  size_t e = later.find("expires=") + 8;
  later[e] = later[e] == '9' ? '8' : '9';
  EXPECT_FALSE(signer.Verify(later, now, &path).ok());
  EXPECT_FALSE(signer.Verify("/v2/a/blobs/sha256:1", now, &path).ok());
  EXPECT_FALSE(UrlSigner().Verify(url, now, &path).ok());  // another key
}

}  // namespace
}  // namespace lazypull::proxy
