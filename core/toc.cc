#include "core/toc.h"

#include <simdjson.h>

#include <cstring>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace lazypull {
namespace {

static_assert(kTocParsePadding >= simdjson::SIMDJSON_PADDING);

using simdjson::dom::element;
using simdjson::dom::object;

absl::string_view View(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

absl::Status EntryError(size_t index, absl::string_view key,
                        absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("TOC entry ", index, ": \"", key, "\" ", what));
}

bool ParseType(absl::string_view s, EntryType* t) {
  static constexpr std::pair<absl::string_view, EntryType> kTypes[] = {
      {"reg", EntryType::kReg},           {"dir", EntryType::kDir},
      {"chunk", EntryType::kChunk},       {"symlink", EntryType::kSymlink},
      {"hardlink", EntryType::kHardlink}, {"char", EntryType::kChar},
      {"block", EntryType::kBlock},       {"fifo", EntryType::kFifo},
  };
  for (const auto& [name, type] : kTypes) {
    if (s == name) {
      *t = type;
      return true;
    }
  }
  return false;
}

absl::Status GetU64(const element& v, size_t index, absl::string_view key,
                    uint64_t max, uint64_t* out) {
  uint64_t x;
  if (v.get_uint64().get(x) != simdjson::SUCCESS) {
    return EntryError(index, key, "is not a non-negative integer");
  }
  if (x > max) {
    return EntryError(index, key,
                      absl::StrCat("is ", x, ", above the limit of ", max));
  }
  *out = x;
  return absl::OkStatus();
}

absl::Status GetString(const element& v, size_t index, absl::string_view key,
                       absl::string_view* out) {
  std::string_view s;
  if (v.get_string().get(s) != simdjson::SUCCESS) {
    return EntryError(index, key, "is not a string");
  }
  *out = View(s);
  return absl::OkStatus();
}

absl::Status GetDigest(const element& v, size_t index, absl::string_view key,
                       std::optional<Digest>* out) {
  absl::string_view s;
  if (absl::Status st = GetString(v, index, key, &s); !st.ok()) return st;
  if (s.empty()) return absl::OkStatus();
  absl::StatusOr<Digest> d = Digest::Parse(s);
  if (!d.ok()) return EntryError(index, key, d.status().message());
  *out = *d;
  return absl::OkStatus();
}

absl::Status ParseEntry(const object& obj, size_t index,
                        const TocLimits& limits, TocEntry* e) {
  bool has_type = false;
  constexpr uint64_t kU32 = UINT32_MAX;
  constexpr uint64_t kOff = uint64_t{1} << 62;
  for (auto field : obj) {
    absl::string_view key = View(field.key);
    const element& v = field.value;
    if (v.is_null()) continue;  // Go omits zero values; null means absent
    absl::Status st;
    absl::string_view s;
    uint64_t u = 0;
    switch (key.size() > 0 ? key[0] : 0) {
      case 'n':
        if (key == "name") {
          st = GetString(v, index, key, &s);
          e->name.assign(s.data(), s.size());
        }
        break;
      case 't':
        if (key == "type") {
          st = GetString(v, index, key, &s);
          if (st.ok() && !ParseType(s, &e->type)) {
            st = EntryError(index, key,
                            absl::StrCat("has unknown type \"", s, "\""));
          }
          has_type = true;
        }
        break;
      case 's':
        if (key == "size") {
          st = GetU64(v, index, key, limits.max_file_size, &e->size);
        }
        break;
      case 'm':
        if (key == "modtime") {
          st = GetString(v, index, key, &s);
          if (st.ok() && !s.empty()) {
            if (!ParseRfc3339(s, &e->mtime_sec, &e->mtime_nsec)) {
              st = EntryError(
                  index, key,
                  absl::StrCat("is not RFC 3339: \"", s.substr(0, 64), "\""));
            }
            e->has_modtime = true;
          }
        } else if (key == "mode") {
          st = GetU64(v, index, key, kU32, &u);
          e->mode = static_cast<uint32_t>(u) & 07777;
        }
        break;
      case 'l':
        if (key == "linkName") {
          st = GetString(v, index, key, &s);
          e->link_name.assign(s.data(), s.size());
        }
        break;
      case 'u':
        if (key == "uid") {
          st = GetU64(v, index, key, kU32, &u);
          e->uid = static_cast<uint32_t>(u);
        } else if (key == "userName") {
          st = GetString(v, index, key, &s);
          e->uname.assign(s.data(), s.size());
        }
        break;
      case 'g':
        if (key == "gid") {
          st = GetU64(v, index, key, kU32, &u);
          e->gid = static_cast<uint32_t>(u);
        } else if (key == "groupName") {
          st = GetString(v, index, key, &s);
          e->gname.assign(s.data(), s.size());
        }
        break;
      case 'd':
        if (key == "devMajor") {
          st = GetU64(v, index, key, kU32, &u);
          e->dev_major = static_cast<uint32_t>(u);
        } else if (key == "devMinor") {
          st = GetU64(v, index, key, kU32, &u);
          e->dev_minor = static_cast<uint32_t>(u);
        } else if (key == "digest") {
          st = GetDigest(v, index, key, &e->digest);
        }
        break;
      case 'x':
        if (key == "xattrs") {
          object xo;
          if (v.get_object().get(xo) != simdjson::SUCCESS) {
            st = EntryError(index, key, "is not an object");
            break;
          }
          for (auto x : xo) {
            std::string_view b64;
            if (x.value.get_string().get(b64) != simdjson::SUCCESS) {
              st = EntryError(index, key, "has a non-string value");
              break;
            }
            std::string raw;
            if (!Base64Decode(View(b64), &raw)) {
              st = EntryError(index, key,
                              absl::StrCat("value of \"", View(x.key),
                                           "\" is not standard base64"));
              break;
            }
            e->xattrs.emplace_back(std::string(x.key), std::move(raw));
          }
        }
        break;
      case 'o':
        if (key == "offset") st = GetU64(v, index, key, kOff, &e->offset);
        break;
      case 'e':
        if (key == "endOffset") {
          st = GetU64(v, index, key, kOff, &e->end_offset);
        }
        break;
      case 'i':
        if (key == "innerOffset") {
          st = GetU64(v, index, key, kOff, &e->inner_offset);
        }
        break;
      case 'c':
        if (key == "chunkOffset") {
          st = GetU64(v, index, key, limits.max_file_size, &e->chunk_offset);
        } else if (key == "chunkSize") {
          st = GetU64(v, index, key, limits.max_file_size, &e->chunk_size);
        } else if (key == "chunkDigest") {
          st = GetDigest(v, index, key, &e->chunk_digest);
        } else if (key == "chunkType") {
          st = GetString(v, index, key, &s);
          if (st.ok()) {
            if (s == "zeros") {
              e->zeros = true;
            } else if (!s.empty()) {
              st = EntryError(
                  index, key,
                  absl::StrCat("has unknown chunk type \"", s, "\""));
            }
          }
        }
        break;
      default:
        break;  // NumLink, accesstime, changetime, ...: ignored
    }
    if (!st.ok()) return st;
  }
  if (!has_type) return EntryError(index, "type", "is missing");
  return absl::OkStatus();
}

}  // namespace

absl::string_view EntryTypeName(EntryType t) {
  switch (t) {
    case EntryType::kDir:
      return "dir";
    case EntryType::kReg:
      return "reg";
    case EntryType::kSymlink:
      return "symlink";
    case EntryType::kHardlink:
      return "hardlink";
    case EntryType::kChar:
      return "char";
    case EntryType::kBlock:
      return "block";
    case EntryType::kFifo:
      return "fifo";
    case EntryType::kChunk:
      return "chunk";
  }
  return "unknown";
}

std::string PaddedTocBuffer(absl::string_view json) {
  std::string buf;
  buf.reserve(json.size() + kTocParsePadding);
  buf.append(json.data(), json.size());
  buf.append(kTocParsePadding, '\0');
  buf.resize(json.size());
  return buf;
}

absl::StatusOr<Toc> ParseToc(absl::string_view json, const TocLimits& limits) {
  // A parser per thread keeps its buffers between (small) TOCs; after a big
  // one they are released, so a mounted layer does not keep a parse tape
  // several times the TOC's size for its whole life.
  thread_local simdjson::dom::parser parser;
  struct Release {
    size_t size;
    ~Release() {
      if (size > (size_t{1} << 20)) parser = simdjson::dom::parser();
    }
  } release{json.size()};
  element doc;
  if (auto err = parser.parse(json.data(), json.size(), false).get(doc);
      err != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("TOC is not valid JSON: ", simdjson::error_message(err)));
  }
  object root;
  if (doc.get_object().get(root) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("TOC is not a JSON object");
  }
  Toc toc;
  uint64_t version = 0;
  element v;
  if (root["version"].get(v) != simdjson::SUCCESS ||
      v.get_uint64().get(version) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("TOC has no integer \"version\"");
  }
  if (version != 1 && version != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TOC version ", version, " is not supported (expected 1 or 2)"));
  }
  toc.version = static_cast<int>(version);
  element entries;
  if (root["entries"].get(entries) != simdjson::SUCCESS || entries.is_null()) {
    return toc;  // {"version":1,"entries":null}: an empty layer
  }
  simdjson::dom::array arr;
  if (entries.get_array().get(arr) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("TOC \"entries\" is not an array");
  }
  size_t n = arr.size();
  if (n > limits.max_entries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TOC has ", n, " entries, above the limit of ", limits.max_entries));
  }
  toc.entries.resize(n);
  size_t i = 0;
  for (element item : arr) {
    object obj;
    if (item.get_object().get(obj) != simdjson::SUCCESS) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC entry ", i, " is not an object"));
    }
    if (absl::Status st = ParseEntry(obj, i, limits, &toc.entries[i]);
        !st.ok()) {
      return st;
    }
    ++i;
  }
  return toc;
}

namespace {

// Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's algorithm).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

bool Digits(absl::string_view s, size_t pos, size_t n, int* out) {
  if (pos + n > s.size()) return false;
  int v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

}  // namespace

bool ParseRfc3339(absl::string_view s, int64_t* sec, uint32_t* nsec) {
  int year, mon, day, hour, min, second;
  if (!Digits(s, 0, 4, &year) || s.size() < 20 || s[4] != '-' ||
      !Digits(s, 5, 2, &mon) || s[7] != '-' || !Digits(s, 8, 2, &day) ||
      (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      !Digits(s, 11, 2, &hour) || s[13] != ':' || !Digits(s, 14, 2, &min) ||
      s[16] != ':' || !Digits(s, 17, 2, &second)) {
    return false;
  }
  if (mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 ||
      second > 60) {
    return false;
  }
  size_t pos = 19;
  uint32_t frac = 0;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    size_t digits = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
      if (digits < 9) frac = frac * 10 + static_cast<uint32_t>(s[pos] - '0');
      ++digits;
      ++pos;
    }
    if (digits == 0) return false;
    for (size_t i = digits; i < 9; ++i) frac *= 10;
  }
  int64_t offset = 0;
  if (pos >= s.size()) return false;
  if (s[pos] == 'Z' || s[pos] == 'z') {
    ++pos;
  } else if (s[pos] == '+' || s[pos] == '-') {
    int oh, om;
    if (!Digits(s, pos + 1, 2, &oh) || pos + 3 >= s.size() ||
        s[pos + 3] != ':' || !Digits(s, pos + 4, 2, &om)) {
      return false;
    }
    offset = (oh * 3600 + om * 60) * (s[pos] == '-' ? -1 : 1);
    pos += 6;
  } else {
    return false;
  }
  if (pos != s.size()) return false;
  *sec = DaysFromCivil(year, static_cast<unsigned>(mon),
                       static_cast<unsigned>(day)) *
             86400 +
         hour * 3600 + min * 60 + second - offset;
  *nsec = frac;
  return true;
}

namespace {

constexpr char kB64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int B64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

bool Base64Decode(absl::string_view in, std::string* out) {
  out->clear();
  if (in.size() % 4 != 0) return false;
  out->reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      char c = in[i + j];
      if (c == '=' && i + 4 == in.size() && j >= 2) {
        v[j] = 0;
        ++pad;
      } else {
        if (pad > 0) return false;  // data after padding
        v[j] = B64Value(c);
        if (v[j] < 0) return false;
      }
    }
    uint32_t n =
        static_cast<uint32_t>(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
    out->push_back(static_cast<char>(n >> 16));
    if (pad < 2) out->push_back(static_cast<char>(n >> 8 & 0xff));
    if (pad < 1) out->push_back(static_cast<char>(n & 0xff));
  }
  return true;
}

std::string Base64Encode(absl::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    uint32_t n = static_cast<uint8_t>(in[i]) << 16 |
                 static_cast<uint8_t>(in[i + 1]) << 8 |
                 static_cast<uint8_t>(in[i + 2]);
    out.push_back(kB64[n >> 18]);
    out.push_back(kB64[n >> 12 & 63]);
    out.push_back(kB64[n >> 6 & 63]);
    out.push_back(kB64[n & 63]);
  }
  if (i < in.size()) {
    uint32_t n = static_cast<uint8_t>(in[i]) << 16;
    if (i + 1 < in.size()) n |= static_cast<uint8_t>(in[i + 1]) << 8;
    out.push_back(kB64[n >> 18]);
    out.push_back(kB64[n >> 12 & 63]);
    out.push_back(i + 1 < in.size() ? kB64[n >> 6 & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<uint64_t> ScanPrefetchLandmark(absl::string_view json) {
  // {"name":".prefetch.landmark","type":"reg","size":1,"offset":N,...}: the
  // entry object around the name, then its "offset" key.
  constexpr absl::string_view kName = "\".prefetch.landmark\"";
  for (size_t at = json.find(kName); at != absl::string_view::npos;
       at = json.find(kName, at + 1)) {
    // The value of a "name" key: `"name"`, optional blanks, `:`, blanks.
    size_t k = at;
    while (k > 0 &&
           absl::ascii_isspace(static_cast<unsigned char>(json[k - 1]))) {
      --k;
    }
    if (k == 0 || json[k - 1] != ':') continue;
    --k;
    while (k > 0 &&
           absl::ascii_isspace(static_cast<unsigned char>(json[k - 1]))) {
      --k;
    }
    if (k < 6 || json.substr(k - 6, 6) != "\"name\"") continue;
    const size_t open = json.rfind('{', k);
    const size_t close = json.find('}', at);
    if (open == absl::string_view::npos || close == absl::string_view::npos) {
      return std::nullopt;
    }
    const absl::string_view entry = json.substr(open, close - open);
    const size_t o = entry.find("\"offset\"");
    if (o == absl::string_view::npos) return std::nullopt;
    size_t v = o + 8;
    while (v < entry.size() &&
           (entry[v] == ':' ||
            absl::ascii_isspace(static_cast<unsigned char>(entry[v])))) {
      ++v;
    }
    size_t e = v;
    while (e < entry.size() &&
           absl::ascii_isdigit(static_cast<unsigned char>(entry[e]))) {
      ++e;
    }
    uint64_t offset;
    if (e == v || e - v > 19 ||
        !absl::SimpleAtoi(entry.substr(v, e - v), &offset)) {
      return std::nullopt;
    }
    return offset;
  }
  return std::nullopt;
}

bool IsOverlayPrivateXattr(absl::string_view name) {
  for (absl::string_view ns : {"trusted.overlay.", "user.overlay."}) {
    if (absl::StartsWith(name, ns)) return name.substr(ns.size()) != "opaque";
  }
  return false;
}

bool IsOverlayOpaqueXattr(absl::string_view name, absl::string_view value) {
  return (name == "trusted.overlay.opaque" || name == "user.overlay.opaque") &&
         value == "y";
}

}  // namespace lazypull
