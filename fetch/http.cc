#include "fetch/http.h"

#include <time.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lazypull {

void HttpHeaders::Add(std::string name, std::string value) {
  absl::AsciiStrToLower(&name);
  entries_.emplace_back(std::move(name),
                        std::string(absl::StripAsciiWhitespace(value)));
}

std::optional<std::string> HttpHeaders::Get(absl::string_view name) const {
  for (const auto& [k, v] : entries_) {
    if (k == name) return v;
  }
  return std::nullopt;
}

std::vector<std::string> HttpHeaders::GetAll(absl::string_view name) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_) {
    if (k == name) out.push_back(v);
  }
  return out;
}

const char* HttpVersionName(HttpVersion v) {
  switch (v) {
    case HttpVersion::kHttp10:
      return "HTTP/1.0";
    case HttpVersion::kHttp11:
      return "HTTP/1.1";
    case HttpVersion::kHttp2:
      return "HTTP/2";
    default:
      return "HTTP/?";
  }
}

std::string HttpRequest::Describe() const {
  absl::string_view u = url;
  // Signed blob URLs carry their signature in the query: keep it out.
  if (size_t q = u.find('?'); q != absl::string_view::npos) {
    u = u.substr(0, q);
  }
  return absl::StrCat(method, " ", u);
}

absl::StatusOr<HttpResponse> HttpTransport::Stream(
    const HttpRequest& req,
    const std::function<absl::Status(absl::string_view)>& on_data) {
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> r = Open(req);
  if (!r.ok()) return r.status();
  while (true) {
    absl::StatusOr<absl::string_view> piece = (*r)->Read(1 << 20);
    if (!piece.ok()) return piece.status();
    if (piece->empty()) break;
    absl::Status st = on_data(*piece);
    if (!st.ok()) return st;
  }
  return (*r)->response();
}

absl::StatusOr<size_t> HttpBodyReader::ReadInto(
    absl::Span<char> dst, const std::function<void(size_t)>& progress) {
  size_t got = 0;
  while (got < dst.size()) {
    absl::StatusOr<absl::string_view> piece = Read(dst.size() - got);
    if (!piece.ok()) return piece.status();
    if (piece->empty()) break;
    std::memcpy(dst.data() + got, piece->data(), piece->size());
    got += piece->size();
    if (progress) progress(piece->size());
  }
  return got;
}

const char* HttpReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 412:
      return "Precondition Failed";
    case 416:
      return "Range Not Satisfiable";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "";
  }
}

namespace {

absl::StatusCode CodeForHttpStatus(int status) {
  switch (status) {
    case 400:
      return absl::StatusCode::kInvalidArgument;
    case 401:
      return absl::StatusCode::kUnauthenticated;
    case 403:
      return absl::StatusCode::kPermissionDenied;
    case 404:
      return absl::StatusCode::kNotFound;
    case 408:
      return absl::StatusCode::kDeadlineExceeded;
    case 409:
      return absl::StatusCode::kAborted;
    case 412:
      return absl::StatusCode::kFailedPrecondition;
    case 416:
      return absl::StatusCode::kOutOfRange;
    case 429:
      return absl::StatusCode::kResourceExhausted;
    case 501:
      return absl::StatusCode::kUnimplemented;
    default:
      break;
  }
  if (status >= 500) return absl::StatusCode::kUnavailable;
  if (status >= 400) return absl::StatusCode::kFailedPrecondition;
  return absl::StatusCode::kUnknown;  // 1xx or nonsense
}

}  // namespace

namespace {
constexpr absl::string_view kRangeIgnoredUrl =
    "type.lazypull.dev/range-ignored";
}  // namespace

absl::Status RangeIgnoredError(absl::string_view message) {
  absl::Status s = absl::FailedPreconditionError(message);
  s.SetPayload(kRangeIgnoredUrl, absl::Cord("1"));
  return s;
}

bool IsRangeIgnored(const absl::Status& s) {
  return s.GetPayload(kRangeIgnoredUrl).has_value();
}

absl::Status HttpStatusToStatus(int status, absl::string_view what,
                                absl::string_view detail) {
  if (status >= 200 && status < 400) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": HTTP ", status);
  if (const char* reason = HttpReasonPhrase(status); *reason) {
    absl::StrAppend(&msg, " ", reason);
  }
  if (!detail.empty()) absl::StrAppend(&msg, ": ", detail);
  return absl::Status(CodeForHttpStatus(status), msg);
}

bool IsRetryableHttpStatus(int status) {
  return status == 408 || status == 429 ||
         (status >= 500 && status != 501 && status != 505);
}

std::optional<absl::Duration> ParseRetryAfter(absl::string_view value,
                                              absl::Time now) {
  value = absl::StripAsciiWhitespace(value);
  if (value.empty()) return std::nullopt;
  uint64_t secs;
  if (absl::SimpleAtoi(value, &secs)) {
    return absl::Seconds(
        static_cast<int64_t>(std::min<uint64_t>(secs, 1 << 30)));
  }
  // IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT".
  struct tm tm;
  std::memset(&tm, 0, sizeof(tm));
  std::string s(value);
  const char* end = strptime(s.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  absl::Time at = absl::FromTimeT(timegm(&tm));
  return at > now ? at - now : absl::ZeroDuration();
}

std::optional<ByteRange> ParseRangeHeader(absl::string_view value) {
  value = absl::StripAsciiWhitespace(value);
  if (!absl::ConsumePrefix(&value, "bytes=")) return std::nullopt;
  if (value.find(',') != absl::string_view::npos) return std::nullopt;
  size_t dash = value.find('-');
  if (dash == absl::string_view::npos || dash == 0) return std::nullopt;
  ByteRange r;
  if (!absl::SimpleAtoi(value.substr(0, dash), &r.first)) return std::nullopt;
  absl::string_view last = value.substr(dash + 1);
  if (!last.empty()) {
    uint64_t l;
    if (!absl::SimpleAtoi(last, &l) || l < r.first) return std::nullopt;
    r.last = l;
  }
  return r;
}

absl::StatusOr<ContentRange> ParseContentRange(absl::string_view value) {
  absl::string_view v = absl::StripAsciiWhitespace(value);
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed Content-Range \"", value, "\""));
  };
  if (!absl::ConsumePrefix(&v, "bytes ")) return bad();
  size_t dash = v.find('-'), slash = v.find('/');
  if (dash == absl::string_view::npos || slash == absl::string_view::npos ||
      dash > slash) {
    return bad();
  }
  ContentRange cr;
  if (!absl::SimpleAtoi(v.substr(0, dash), &cr.first) ||
      !absl::SimpleAtoi(v.substr(dash + 1, slash - dash - 1), &cr.last) ||
      cr.last < cr.first) {
    return bad();
  }
  absl::string_view total = v.substr(slash + 1);
  if (total != "*") {
    uint64_t t;
    if (!absl::SimpleAtoi(total, &t) || t <= cr.last) return bad();
    cr.total = t;
  }
  return cr;
}

std::string UrlQueryEscape(absl::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' ||
        c == '~') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[static_cast<uint8_t>(c) >> 4]);
      out.push_back(kHex[static_cast<uint8_t>(c) & 15]);
    }
  }
  return out;
}

std::string UrlOrigin(absl::string_view url) {
  size_t scheme = url.find("://");
  if (scheme == absl::string_view::npos) return "";
  size_t path = url.find_first_of("/?#", scheme + 3);
  return std::string(url.substr(0, path));
}

std::string UrlHost(absl::string_view url) {
  size_t scheme = url.find("://");
  if (scheme == absl::string_view::npos) return "";
  absl::string_view rest = url.substr(scheme + 3);
  absl::string_view host = rest.substr(0, rest.find_first_of("/?#"));
  if (size_t at = host.rfind('@'); at != absl::string_view::npos) {
    host = host.substr(at + 1);  // userinfo is never part of the host
  }
  return std::string(host);
}

namespace {

// Whether `ref` starts with a scheme and "//" (RFC 3986: ALPHA *( ALPHA /
// DIGIT / "+" / "-" / "." ) ":"): an absolute URL. A "://" further on (in a
// query: "?next=https://...") does not make a reference absolute.
bool HasSchemeAndAuthority(absl::string_view ref) {
  if (ref.empty() || !absl::ascii_isalpha(ref[0])) return false;
  size_t i = 1;
  while (i < ref.size() && (absl::ascii_isalnum(ref[i]) || ref[i] == '+' ||
                            ref[i] == '-' || ref[i] == '.')) {
    ++i;
  }
  return absl::StartsWith(ref.substr(i), "://");
}

// RFC 3986 5.2.4: a path without its "." and ".." segments.
std::string RemoveDotSegments(absl::string_view path) {
  std::vector<absl::string_view> out;
  const bool trailing_dir = absl::EndsWith(path, "/.") ||
                            absl::EndsWith(path, "/..") || path == "." ||
                            path == "..";
  for (absl::string_view seg : absl::StrSplit(path, '/')) {
    if (seg == ".") continue;
    if (seg == "..") {
      if (out.size() > 1) out.pop_back();  // (out[0] is the "" before "/")
      continue;
    }
    out.push_back(seg);
  }
  std::string r = absl::StrJoin(out, "/");
  if (trailing_dir && !absl::EndsWith(r, "/")) r.push_back('/');
  return r.empty() ? "/" : r;
}

}  // namespace

std::string ResolveUrl(absl::string_view base, absl::string_view location) {
  location = absl::StripAsciiWhitespace(location);
  if (HasSchemeAndAuthority(location)) return std::string(location);
  if (absl::StartsWith(location, "//")) {
    return absl::StrCat(base.substr(0, base.find("://") + 1), location);
  }
  const std::string origin = UrlOrigin(base);
  const absl::string_view base_no_fragment = base.substr(0, base.find('#'));
  absl::string_view base_path = base_no_fragment.substr(origin.size());
  base_path = base_path.substr(0, base_path.find('?'));
  if (location.empty()) return std::string(base_no_fragment);
  // A query or a fragment alone replaces the base's (the path stays).
  if (location[0] == '?') {
    return absl::StrCat(origin, base_path.empty() ? "/" : base_path, location);
  }
  if (location[0] == '#') return absl::StrCat(base_no_fragment, location);
  const size_t tail = location.find_first_of("?#");
  const absl::string_view ref_path = location.substr(0, tail);
  const absl::string_view ref_tail =
      tail == absl::string_view::npos ? "" : location.substr(tail);
  std::string path;
  if (absl::StartsWith(ref_path, "/")) {
    path = std::string(ref_path);
  } else {
    // Relative to the base path's directory.
    const size_t slash = base_path.rfind('/');
    path = absl::StrCat(
        slash == absl::string_view::npos ? "/" : base_path.substr(0, slash + 1),
        ref_path);
  }
  return absl::StrCat(origin, RemoveDotSegments(path), ref_tail);
}

}  // namespace lazypull
