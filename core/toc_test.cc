#include "core/toc.h"

#include <time.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using ::testing::HasSubstr;

// ParseToc needs readable slack after the JSON: give it a padded copy.
absl::StatusOr<Toc> Parse(absl::string_view json,
                          const TocLimits& limits = {}) {
  std::string buf = PaddedTocBuffer(json);
  return ParseToc(buf, limits);
}

// A TOC whose only entry is `entry` (a JSON object's body).
std::string OneEntry(absl::string_view entry) {
  return absl::StrCat(R"({"version":1,"entries":[{)", entry, "}]}");
}

absl::Status ParseOne(absl::string_view entry) {
  return Parse(OneEntry(entry)).status();
}

const char kDigestA[] =
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const char kDigestB[] =
    "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

// ---- Valid TOCs -------------------------------------------------------------

TEST(TocTest, EveryKeyOfARegularFile) {
  const std::string json = absl::StrCat(R"({
	"version": 1,
	"entries": [
		{
			"name": "./usr/bin/tool",
			"type": "reg",
			"size": 123456,
			"modtime": "2021-06-01T12:00:00Z",
			"mode": 33261,
			"uid": 4000000000,
			"gid": 100,
			"userName": "alice",
			"groupName": "users",
			"xattrs": {"user.bin": "AP8BAg==", "user.empty": ""},
			"digest": ")",
                                        kDigestA, R"(",
			"offset": 4096,
			"innerOffset": 512,
			"chunkOffset": 0,
			"chunkSize": 65536,
			"chunkDigest": ")",
                                        kDigestB, R"(",
			"NumLink": 3,
			"somethingNew": {"nested": [1, 2, 3]}
		}
	]
})");
  absl::StatusOr<Toc> toc = Parse(json);
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_EQ(toc->version, 1);
  ASSERT_EQ(toc->entries.size(), 1u);
  const TocEntry& e = toc->entries[0];
  EXPECT_EQ(e.name, "./usr/bin/tool");  // raw: LayerIndex normalizes
  EXPECT_EQ(e.type, EntryType::kReg);
  EXPECT_EQ(e.size, 123456u);
  EXPECT_TRUE(e.has_modtime);
  EXPECT_EQ(e.mtime_sec, 1622548800);
  EXPECT_EQ(e.mtime_nsec, 0u);
  EXPECT_EQ(e.mode, 0755u);  // S_IFREG (0100000) dropped
  EXPECT_EQ(e.uid, 4000000000u);
  EXPECT_EQ(e.gid, 100u);
  EXPECT_EQ(e.uname, "alice");
  EXPECT_EQ(e.gname, "users");
  ASSERT_EQ(e.xattrs.size(), 2u);
  EXPECT_EQ(e.xattrs[0].first, "user.bin");
  EXPECT_EQ(e.xattrs[0].second, std::string("\x00\xff\x01\x02", 4));
  EXPECT_EQ(e.xattrs[1].first, "user.empty");
  EXPECT_EQ(e.xattrs[1].second, "");
  ASSERT_TRUE(e.digest.has_value());
  EXPECT_EQ(e.digest->ToString(), kDigestA);
  EXPECT_EQ(e.offset, 4096u);
  EXPECT_EQ(e.inner_offset, 512u);
  EXPECT_EQ(e.chunk_offset, 0u);
  EXPECT_EQ(e.chunk_size, 65536u);
  ASSERT_TRUE(e.chunk_digest.has_value());
  EXPECT_EQ(e.chunk_digest->ToString(), kDigestB);
  EXPECT_FALSE(e.zeros);
  EXPECT_EQ(e.end_offset, 0u);
}

TEST(TocTest, EveryEntryType) {
  absl::StatusOr<Toc> toc = Parse(R"({"version":1,"entries":[
    {"name":"d/","type":"dir","mode":16877},
    {"name":"d/f","type":"reg","size":0},
    {"name":"d/s","type":"symlink","linkName":"../abs/../x"},
    {"name":"d/h","type":"hardlink","linkName":"d/f"},
    {"name":"d/c","type":"char","devMajor":259,"devMinor":1048575},
    {"name":"d/b","type":"block","devMajor":8,"devMinor":17},
    {"name":"d/p","type":"fifo"},
    {"name":"d/f","type":"chunk","chunkOffset":10,"chunkSize":5}
  ]})");
  ASSERT_TRUE(toc.ok()) << toc.status();
  const std::vector<EntryType> want = {
      EntryType::kDir,      EntryType::kReg,  EntryType::kSymlink,
      EntryType::kHardlink, EntryType::kChar, EntryType::kBlock,
      EntryType::kFifo,     EntryType::kChunk};
  ASSERT_EQ(toc->entries.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(toc->entries[i].type, want[i]) << i;
    EntryType round_trip;
    // EntryTypeName gives back the TOC spelling.
    std::string name(EntryTypeName(want[i]));
    absl::StatusOr<Toc> one =
        Parse(OneEntry(absl::StrCat(R"("name":"x","type":")", name, "\"")));
    ASSERT_TRUE(one.ok()) << name;
    round_trip = one->entries[0].type;
    EXPECT_EQ(round_trip, want[i]);
  }
  EXPECT_EQ(toc->entries[0].mode, 0755u);               // S_IFDIR dropped
  EXPECT_EQ(toc->entries[2].link_name, "../abs/../x");  // verbatim
  EXPECT_EQ(toc->entries[3].link_name, "d/f");
  EXPECT_EQ(toc->entries[4].dev_major, 259u);
  EXPECT_EQ(toc->entries[4].dev_minor, 1048575u);
  EXPECT_EQ(toc->entries[5].dev_major, 8u);
  EXPECT_EQ(toc->entries[7].chunk_offset, 10u);
  EXPECT_EQ(toc->entries[7].chunk_size, 5u);
  EXPECT_FALSE(toc->entries[6].has_modtime);
}

TEST(TocTest, SpecialModeBitsAreKept) {
  absl::StatusOr<Toc> toc = Parse(R"({"version":1,"entries":[
    {"name":"a","type":"reg","mode":2541},
    {"name":"b","type":"dir","mode":17407},
    {"name":"c","type":"reg","mode":4294967295}
  ]})");
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_EQ(toc->entries[0].mode, 04755u);
  EXPECT_EQ(toc->entries[1].mode, 01777u);  // 041777: sticky dir
  EXPECT_EQ(toc->entries[2].mode, 07777u);
}

TEST(TocTest, ContainersStorageKeys) {
  absl::StatusOr<Toc> toc =
      Parse(absl::StrCat(R"({
    "version": 2,
    "tarSplitDigest": "sha256:aa",
    "entries": [
      {"type":"reg","name":"z","size":8192,"modtime":"2023-01-02T03:04:05.123456789+02:00",
       "accesstime":"2023-01-02T03:04:05Z","changetime":"2023-01-02T03:04:05Z",
       "digest":")",
                         kDigestA, R"(","offset":100,"endOffset":200,
       "chunkSize":4096,"chunkDigest":")",
                         kDigestB, R"("},
      {"type":"chunk","name":"z","offset":0,"chunkOffset":4096,"chunkSize":4096,
       "chunkType":"zeros","chunkDigest":")",
                         kDigestB, R"("},
      {"type":"reg","name":"one","size":3,"digest":")",
                         kDigestA,
                         R"(","offset":200,"endOffset":250,"chunkType":""}
    ]})"));
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_EQ(toc->version, 2);
  ASSERT_EQ(toc->entries.size(), 3u);
  const TocEntry& z = toc->entries[0];
  EXPECT_TRUE(z.has_modtime);
  // 2023-01-02T01:04:05Z
  EXPECT_EQ(z.mtime_sec, 1672621445);
  EXPECT_EQ(z.mtime_nsec, 123456789u);
  EXPECT_EQ(z.end_offset, 200u);
  EXPECT_FALSE(z.zeros);
  EXPECT_TRUE(toc->entries[1].zeros);
  EXPECT_EQ(toc->entries[2].end_offset, 250u);
  EXPECT_FALSE(toc->entries[2].zeros);
  EXPECT_FALSE(toc->entries[2].chunk_digest.has_value());
}

TEST(TocTest, EmptyTocs) {
  // What estargz.NewWriter writes for a tar with no entries.
  absl::StatusOr<Toc> toc =
      Parse("{\n\t\"version\": 1,\n\t\"entries\": null\n}");
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_TRUE(toc->entries.empty());
  toc = Parse(R"({"version":1,"entries":[]})");
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_TRUE(toc->entries.empty());
  toc = Parse(R"({"version":1})");
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_TRUE(toc->entries.empty());
}

TEST(TocTest, NullValuesMeanAbsent) {
  absl::StatusOr<Toc> toc = Parse(OneEntry(
      R"("name":"f","type":"reg","size":null,"digest":null,"xattrs":null,"modtime":null,"uid":null)"));
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_EQ(toc->entries[0].size, 0u);
  EXPECT_FALSE(toc->entries[0].digest.has_value());
  EXPECT_FALSE(toc->entries[0].has_modtime);
  // Empty strings for the optional strings are absent too.
  toc = Parse(OneEntry(R"("name":"f","type":"reg","digest":"","modtime":"")"));
  ASSERT_TRUE(toc.ok()) << toc.status();
  EXPECT_FALSE(toc->entries[0].digest.has_value());
  EXPECT_FALSE(toc->entries[0].has_modtime);
}

// ---- Malformed TOCs ---------------------------------------------------------

TEST(TocTest, GarbageIsNotAToc) {
  for (absl::string_view json :
       {"", " ", "not json", "{", "}", "{\"version\":1,", "[]", "null", "42",
        "\"string\"", "{\"version\":1,\"entries\":[}",
        "{\"version\":1} trailing", "\xff\xfe{}",
        "{\"version\":1,\"entries\":[{\"name\":\"\xc3\x28\",\"type\":\"reg\"}]"
        "}"}) {
    SCOPED_TRACE(absl::CHexEscape(json));
    absl::StatusOr<Toc> toc = Parse(json);
    EXPECT_FALSE(toc.ok());
    if (!toc.ok()) {
      EXPECT_EQ(toc.status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(TocTest, VersionMustBeOneOrTwo) {
  for (absl::string_view json :
       {R"({"entries":[]})", R"({"version":0,"entries":[]})",
        R"({"version":3,"entries":[]})", R"({"version":-1,"entries":[]})",
        R"({"version":"1","entries":[]})", R"({"version":1.5,"entries":[]})",
        R"({"version":null,"entries":[]})"}) {
    SCOPED_TRACE(json);
    EXPECT_EQ(Parse(json).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(Parse(R"({"version":2,"entries":[]})").ok());
}

TEST(TocTest, EntriesMustBeAnArrayOfObjects) {
  for (absl::string_view json :
       {R"({"version":1,"entries":{}})", R"({"version":1,"entries":"x"})",
        R"({"version":1,"entries":1})", R"({"version":1,"entries":[1]})",
        R"({"version":1,"entries":[null]})",
        R"({"version":1,"entries":["reg"]})", R"({"version":1,"entries":[[]]})",
        R"({"version":1,"entries":[{"name":"a","type":"reg"},7]})"}) {
    SCOPED_TRACE(json);
    EXPECT_EQ(Parse(json).status().code(), absl::StatusCode::kInvalidArgument);
  }
  absl::Status s =
      Parse(R"({"version":1,"entries":[{"name":"a","type":"reg"},7]})")
          .status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("entry 1"));
}

TEST(TocTest, TypeIsRequiredAndKnown) {
  absl::Status s = ParseOne(R"("name":"a")");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("type"));
  s = ParseOne(R"("name":"a","type":null)");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  for (absl::string_view type :
       {"socket", "", "REG", "regular", "dir ", "whiteout"}) {
    SCOPED_TRACE(type);
    s = ParseOne(absl::StrCat(R"("name":"a","type":")", type, "\""));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("unknown type"));
  }
  s = ParseOne(R"("name":"a","type":"chunk","chunkType":"data")");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("chunkType"));
}

TEST(TocTest, WrongTypesForKeys) {
  struct Case {
    const char* body;
    const char* key;
  };
  const Case cases[] = {
      {R"("name":5,"type":"reg")", "name"},
      {R"("name":["a"],"type":"reg")", "name"},
      {R"("name":"a","type":1)", "type"},
      {R"("name":"a","type":"reg","size":"5")", "size"},
      {R"("name":"a","type":"reg","size":true)", "size"},
      {R"("name":"a","type":"reg","size":1.5)", "size"},
      {R"("name":"a","type":"reg","modtime":1622548800)", "modtime"},
      {R"("name":"a","type":"reg","mode":"0644")", "mode"},
      {R"("name":"a","type":"symlink","linkName":{})", "linkName"},
      {R"("name":"a","type":"reg","uid":"0")", "uid"},
      {R"("name":"a","type":"reg","gid":[0])", "gid"},
      {R"("name":"a","type":"reg","userName":0)", "userName"},
      {R"("name":"a","type":"reg","groupName":false)", "groupName"},
      {R"("name":"a","type":"char","devMajor":"1")", "devMajor"},
      {R"("name":"a","type":"char","devMinor":1.0)", "devMinor"},
      {R"("name":"a","type":"reg","xattrs":[])", "xattrs"},
      {R"("name":"a","type":"reg","xattrs":"x")", "xattrs"},
      {R"("name":"a","type":"reg","xattrs":{"user.a":5})", "xattrs"},
      {R"("name":"a","type":"reg","digest":5)", "digest"},
      {R"("name":"a","type":"reg","offset":"0")", "offset"},
      {R"("name":"a","type":"reg","endOffset":{})", "endOffset"},
      {R"("name":"a","type":"reg","innerOffset":"1")", "innerOffset"},
      {R"("name":"a","type":"reg","chunkOffset":[])", "chunkOffset"},
      {R"("name":"a","type":"reg","chunkSize":"4096")", "chunkSize"},
      {R"("name":"a","type":"reg","chunkDigest":1)", "chunkDigest"},
      {R"("name":"a","type":"reg","chunkType":0)", "chunkType"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    absl::Status s = ParseOne(c.body);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()),
                HasSubstr(absl::StrCat("\"", c.key, "\"")));
    EXPECT_THAT(std::string(s.message()), HasSubstr("entry 0"));
  }
}

TEST(TocTest, NegativeAndAbsurdNumbers) {
  for (absl::string_view body : {
           R"("name":"a","type":"reg","size":-1)",
           R"("name":"a","type":"reg","size":1e300)",
           R"("name":"a","type":"reg","size":18446744073709551615)",
           R"("name":"a","type":"reg","size":18446744073709551616)",
           R"("name":"a","type":"reg","size":1125899906842625)",
           R"("name":"a","type":"reg","uid":-1)",
           R"("name":"a","type":"reg","uid":4294967296)",
           R"("name":"a","type":"reg","gid":99999999999)",
           R"("name":"a","type":"reg","mode":-420)",
           R"("name":"a","type":"reg","mode":4294967296)",
           R"("name":"a","type":"char","devMajor":4294967296)",
           R"("name":"a","type":"char","devMinor":-1)",
           R"("name":"a","type":"reg","offset":-1)",
           R"("name":"a","type":"reg","offset":9223372036854775807)",
           R"("name":"a","type":"reg","endOffset":18446744073709551615)",
           R"("name":"a","type":"reg","innerOffset":-512)",
           R"("name":"a","type":"reg","chunkOffset":-1)",
           R"("name":"a","type":"reg","chunkSize":-4096)",
           R"("name":"a","type":"reg","chunkSize":1152921504606846976)",
       }) {
    SCOPED_TRACE(body);
    EXPECT_EQ(ParseOne(body).code(), absl::StatusCode::kInvalidArgument);
  }
  // The largest accepted values.
  EXPECT_TRUE(ParseOne(R"("name":"a","type":"reg","size":1125899906842624,)"
                       R"("uid":4294967295,"offset":4611686018427387904)")
                  .ok());
}

TEST(TocTest, LimitsAreConfigurable) {
  TocLimits limits;
  limits.max_entries = 2;
  limits.max_file_size = 100;
  EXPECT_TRUE(Parse(R"({"version":1,"entries":[{"name":"a","type":"dir"},
      {"name":"b","type":"reg","size":100}]})",
                    limits)
                  .ok());
  absl::Status s = Parse(R"({"version":1,"entries":[{"name":"a","type":"dir"},
      {"name":"b","type":"dir"},{"name":"c","type":"dir"}]})",
                         limits)
                       .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("3 entries"));
  s = Parse(OneEntry(R"("name":"b","type":"reg","size":101)"), limits).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("limit"));
}

TEST(TocTest, BadBase64Xattrs) {
  for (absl::string_view value :
       {"abc", "a===", "ab=c", "ab!d", "AP8BAg=", "=AAA", "AA==AA==", "YWJj\\n",
        "Y W=", "YWJj====", "\xc3\xa9\xc3\xa9"}) {
    SCOPED_TRACE(absl::CHexEscape(value));
    absl::Status s = ParseOne(absl::StrCat(
        R"("name":"a","type":"reg","xattrs":{"user.x":")", value, "\"}"));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("base64"));
  }
}

TEST(TocTest, BadDigests) {
  for (absl::string_view d : {
           "sha256:xyz",
           "sha256:",
           "sha256",
           "md5:0123456789abcdef0123456789abcdef",
           "sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
           "abcdef",
           // 63 and 65 hex digits
           "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
           "abcde",
           "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
           "abcdef0",
           "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
           "abcdeg",
           " sha256:0123456789abcdef0123456789abcdef0123456789abcdef01234567"
           "89abcdef",
       }) {
    SCOPED_TRACE(d);
    for (const char* key : {"digest", "chunkDigest"}) {
      absl::Status s = ParseOne(
          absl::StrCat(R"("name":"a","type":"reg",")", key, R"(":")", d, "\""));
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << key;
      EXPECT_THAT(std::string(s.message()), HasSubstr(key));
    }
  }
}

TEST(TocTest, BadModtimes) {
  for (absl::string_view t : {"yesterday", "2021-06-01", "2021-06-01T12:00:00",
                              "2021-13-01T12:00:00Z", "2021-06-01T25:00:00Z",
                              "2021-06-01T12:00:00+0200"}) {
    SCOPED_TRACE(t);
    absl::Status s = ParseOne(
        absl::StrCat(R"("name":"a","type":"reg","modtime":")", t, "\""));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("modtime"));
  }
}

// ---- ParseRfc3339 -----------------------------------------------------------

TEST(Rfc3339Test, KnownValues) {
  struct Case {
    const char* text;
    int64_t sec;
    uint32_t nsec;
  };
  const Case cases[] = {
      {"1970-01-01T00:00:00Z", 0, 0},
      {"2021-06-01T12:00:00Z", 1622548800, 0},
      {"2021-06-01T12:00:00z", 1622548800, 0},
      {"2021-06-01t12:00:00Z", 1622548800, 0},
      {"2021-06-01 12:00:00Z", 1622548800, 0},
      {"2021-06-01T14:00:00+02:00", 1622548800, 0},
      {"2021-06-01T06:30:00-05:30", 1622548800, 0},
      {"2021-06-01T12:00:00+00:00", 1622548800, 0},
      {"2021-06-01T12:00:00.5Z", 1622548800, 500000000},
      {"2021-06-01T12:00:00.000000001Z", 1622548800, 1},
      {"2021-06-01T12:00:00.123456789123Z", 1622548800, 123456789},
      {"2023-01-02T03:04:05.123456789+02:00", 1672621445, 123456789},
      {"1969-12-31T23:59:59Z", -1, 0},
      {"0001-01-01T00:00:00Z", -62135596800, 0},
      {"2000-02-29T00:00:00Z", 951782400, 0},
      {"9999-12-31T23:59:59Z", 253402300799, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    int64_t sec = 42;
    uint32_t nsec = 42;
    ASSERT_TRUE(ParseRfc3339(c.text, &sec, &nsec));
    EXPECT_EQ(sec, c.sec);
    EXPECT_EQ(nsec, c.nsec);
  }
}

TEST(Rfc3339Test, Malformed) {
  for (absl::string_view t : {
           "",
           "2021",
           "2021-06-01",
           "2021-06-01T12:00:00",
           "2021-06-01T12:00Z",
           "2021-06-01T12:00:00.Z",
           "2021-06-01T12:00:00+02",
           "2021-06-01T12:00:00+0200",
           "2021-06-01T12:00:00+02:0",
           "2021-06-01T12:00:00Zjunk",
           "2021-06-01T12:00:00+02:00junk",
           "2021-00-01T12:00:00Z",
           "2021-13-01T12:00:00Z",
           "2021-06-00T12:00:00Z",
           "2021-06-32T12:00:00Z",
           "2021-06-01T24:00:00Z",
           "2021-06-01T12:60:00Z",
           "2021-06-01T12:00:61Z",
           "2021/06/01T12:00:00Z",
           "2021-06-01X12:00:00Z",
           "21-06-01T12:00:00Z",
           "+021-06-01T12:00:00Z",
           "2021-06-01T12:00:00 Z",
           "2021-0a-01T12:00:00Z",
       }) {
    SCOPED_TRACE(t);
    int64_t sec;
    uint32_t nsec;
    EXPECT_FALSE(ParseRfc3339(t, &sec, &nsec));
  }
}

// Formats Unix seconds as RFC 3339 with a zone offset (minutes east of UTC)
// using the C library, independently of the parser.
std::string Format(int64_t sec, uint32_t nsec, int offset_min) {
  time_t local = static_cast<time_t>(sec + offset_min * 60);
  struct tm tm;
  gmtime_r(&local, &tm);
  // Not strftime: glibc's %Y does not pad years below 1000.
  std::string out = absl::StrFormat(
      "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
      tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  if (nsec != 0) out += absl::StrFormat(".%09u", nsec);
  if (offset_min == 0) {
    out += "Z";
  } else {
    int a = offset_min < 0 ? -offset_min : offset_min;
    out += absl::StrFormat("%c%02d:%02d", offset_min < 0 ? '-' : '+', a / 60,
                           a % 60);
  }
  return out;
}

TEST(Rfc3339Test, RoundTrips) {
  uint64_t x = 0x9e3779b97f4a7c15;
  for (int i = 0; i < 2000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    // 0001-01-02 .. 9999-12-30
    const int64_t lo = -62135596800 + 86400, hi = 253402300799 - 86400;
    int64_t sec = lo + static_cast<int64_t>(x % static_cast<uint64_t>(hi - lo));
    uint32_t nsec = (i % 3 == 0) ? 0 : static_cast<uint32_t>(x % 1000000000);
    int offset = (i % 5 == 0) ? 0 : static_cast<int>(x % 1681) - 840;
    std::string text = Format(sec, nsec, offset);
    SCOPED_TRACE(text);
    int64_t got_sec;
    uint32_t got_nsec;
    ASSERT_TRUE(ParseRfc3339(text, &got_sec, &got_nsec));
    EXPECT_EQ(got_sec, sec);
    EXPECT_EQ(got_nsec, nsec);
  }
}

// ---- Base64 -----------------------------------------------------------------

TEST(Base64Test, Rfc4648Vectors) {
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(Base64Encode(plain), encoded);
    std::string out = "junk";
    ASSERT_TRUE(Base64Decode(encoded, &out)) << encoded;
    EXPECT_EQ(out, plain);
  }
  std::string out;
  ASSERT_TRUE(Base64Decode("+/+/", &out));
  EXPECT_EQ(out, "\xfb\xff\xbf");
}

TEST(Base64Test, RoundTripsEveryLengthAndByte) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (size_t len = 0; len <= all.size(); ++len) {
    for (size_t start : {size_t{0}, size_t{7}}) {
      std::string plain = (all + all).substr(start, len);
      std::string enc = Base64Encode(plain);
      EXPECT_EQ(enc.size(), (len + 2) / 3 * 4);
      std::string dec;
      ASSERT_TRUE(Base64Decode(enc, &dec)) << enc;
      EXPECT_EQ(dec, plain);
    }
  }
}

TEST(Base64Test, RejectsMalformed) {
  for (absl::string_view in :
       {"A", "AB", "ABC", "A===", "====", "AB=C", "AB==CD==", "ab!d", "ab-d",
        "ab_d", "YWJj\n", "YW Jj", "=YWJ"}) {
    std::string out;
    EXPECT_FALSE(Base64Decode(in, &out)) << absl::CHexEscape(in);
  }
}

}  // namespace
}  // namespace lazypull

namespace lazypull {
namespace {

TEST(ScanPrefetchLandmarkTest, FindsTheLandmarksOffset) {
  // As Go's encoding/json writes it (compact), and as an indented writer.
  EXPECT_EQ(ScanPrefetchLandmark(
                R"({"version":1,"entries":[{"name":"a","type":"reg","size":3,)"
                R"("offset":0},{"name":".prefetch.landmark","type":"reg",)"
                R"("size":1,"offset":8792752,"digest":"sha256:x"}]})"),
            std::optional<uint64_t>(8792752));
  EXPECT_EQ(ScanPrefetchLandmark("{\"entries\": [\n  {\n    \"name\" : "
                                 "\".prefetch.landmark\",\n    \"type\": "
                                 "\"reg\",\n    \"offset\" :  42\n  }\n]}"),
            std::optional<uint64_t>(42));
}

TEST(ScanPrefetchLandmarkTest, IgnoresLookAlikes) {
  // No landmark; the no-prefetch landmark; the name as a link target or in
  // another key; an entry without an offset; an absurd number.
  EXPECT_EQ(ScanPrefetchLandmark(R"({"entries":[{"name":"a","offset":5}]})"),
            std::nullopt);
  EXPECT_EQ(ScanPrefetchLandmark(
                R"({"entries":[{"name":".no.prefetch.landmark","offset":5}]})"),
            std::nullopt);
  EXPECT_EQ(
      ScanPrefetchLandmark(
          R"({"entries":[{"name":"l","linkName":".prefetch.landmark","offset":5}]})"),
      std::nullopt);
  EXPECT_EQ(ScanPrefetchLandmark(
                R"({"entries":[{"name":".prefetch.landmark","type":"reg"}]})"),
            std::nullopt);
  EXPECT_EQ(
      ScanPrefetchLandmark(
          R"({"entries":[{"name":".prefetch.landmark","offset":123456789012345678901}]})"),
      std::nullopt);
  EXPECT_EQ(ScanPrefetchLandmark(R"({"name":".prefetch.landmark")"),
            std::nullopt);
  EXPECT_EQ(ScanPrefetchLandmark(""), std::nullopt);
}

}  // namespace
}  // namespace lazypull
