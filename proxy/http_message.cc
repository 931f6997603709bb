#include "proxy/http_message.h"

#include <errno.h>
#include <sys/socket.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"
#include "fetch/http.h"

namespace lazypull::proxy {
namespace {

// Splits a head into its start line and field lines; rejects obsolete line
// folding and fields without a colon.
absl::Status ParseFields(absl::string_view text, std::string* start_line,
                         HttpHeaders* headers) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  bool first = true;
  for (absl::string_view line : lines) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (first) {
      *start_line = std::string(line);
      first = false;
      continue;
    }
    if (line.empty()) continue;
    if (line.front() == ' ' || line.front() == '\t') {
      return absl::InvalidArgumentError("obsolete header line folding");
    }
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad header line \"", line, "\""));
    }
    headers->Add(line.substr(0, colon),
                 absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  if (start_line->empty()) return absl::InvalidArgumentError("empty head");
  return absl::OkStatus();
}

}  // namespace

const std::string* HttpHeaders::Get(absl::string_view name) const {
  for (const auto& [n, v] : fields_) {
    if (absl::EqualsIgnoreCase(n, name)) return &v;
  }
  return nullptr;
}

void HttpHeaders::Add(absl::string_view name, absl::string_view value) {
  fields_.emplace_back(std::string(name), std::string(value));
}

void HttpHeaders::Set(absl::string_view name, absl::string_view value) {
  for (auto it = fields_.begin(); it != fields_.end(); ++it) {
    if (absl::EqualsIgnoreCase(it->first, name)) {
      it->second = std::string(value);
      // Drop any later duplicates.
      fields_.erase(std::remove_if(it + 1, fields_.end(),
                                   [&](const auto& f) {
                                     return absl::EqualsIgnoreCase(f.first,
                                                                   name);
                                   }),
                    fields_.end());
      return;
    }
  }
  Add(name, value);
}

void HttpHeaders::Remove(absl::string_view name) {
  fields_.erase(std::remove_if(fields_.begin(), fields_.end(),
                               [&](const auto& f) {
                                 return absl::EqualsIgnoreCase(f.first, name);
                               }),
                fields_.end());
}

bool HttpHeaders::HasToken(absl::string_view name,
                           absl::string_view token) const {
  for (const auto& [n, v] : fields_) {
    if (!absl::EqualsIgnoreCase(n, name)) continue;
    for (absl::string_view t : absl::StrSplit(v, ',')) {
      if (absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(t), token)) {
        return true;
      }
    }
  }
  return false;
}

void HttpHeaders::AppendTo(std::string* out) const {
  for (const auto& [n, v] : fields_) absl::StrAppend(out, n, ": ", v, "\r\n");
}

absl::string_view RequestHead::path() const {
  absl::string_view t(target);
  return t.substr(0, t.find('?'));
}

std::string RequestHead::Serialize() const {
  std::string out = absl::StrCat(method, " ", target, " ", version, "\r\n");
  headers.AppendTo(&out);
  out += "\r\n";
  return out;
}

std::string ResponseHead::Serialize() const {
  std::string out = absl::StrCat(version, " ", status, " ", reason, "\r\n");
  headers.AppendTo(&out);
  out += "\r\n";
  return out;
}

absl::StatusOr<RequestHead> ParseRequestHead(absl::string_view text) {
  RequestHead head;
  std::string line;
  absl::Status st = ParseFields(text, &line, &head.headers);
  if (!st.ok()) return st;
  std::vector<std::string> parts = absl::StrSplit(line, ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty() ||
      !absl::StartsWith(parts[2], "HTTP/1.")) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad request line \"", line, "\""));
  }
  head.method = parts[0];
  head.target = parts[1];
  head.version = parts[2];
  return head;
}

absl::StatusOr<ResponseHead> ParseResponseHead(absl::string_view text) {
  ResponseHead head;
  std::string line;
  absl::Status st = ParseFields(text, &line, &head.headers);
  if (!st.ok()) return st;
  std::vector<absl::string_view> parts =
      absl::StrSplit(line, absl::MaxSplits(' ', 2));
  if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/1.") ||
      !absl::SimpleAtoi(parts[1], &head.status) || head.status < 100 ||
      head.status > 999) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad status line \"", line, "\""));
  }
  head.version = std::string(parts[0]);
  head.reason = parts.size() == 3 ? std::string(parts[2]) : "";
  return head;
}

const char* ReasonPhrase(int status) {
  const char* r = HttpReasonPhrase(status);
  return *r ? r : "Status";
}

namespace {

absl::StatusOr<BodyFraming> LengthOrChunked(const HttpHeaders& headers,
                                            bool* found) {
  BodyFraming f;
  *found = true;
  if (headers.Has("Transfer-Encoding")) {
    // RFC 9112 6.3: chunked must be the final coding; anything else is
    // close-delimited for a response and an error for a request.
    const std::string& te = *headers.Get("Transfer-Encoding");
    absl::string_view last = te;
    size_t comma = last.rfind(',');
    if (comma != absl::string_view::npos) last = last.substr(comma + 1);
    if (!absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(last), "chunked")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported Transfer-Encoding \"", te, "\""));
    }
    f.kind = BodyFraming::kChunked;
    return f;
  }
  if (const std::string* cl = headers.Get("Content-Length")) {
    if (!absl::SimpleAtoi(*cl, &f.length)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad Content-Length \"", *cl, "\""));
    }
    f.kind = f.length == 0 ? BodyFraming::kNone : BodyFraming::kLength;
    return f;
  }
  *found = false;
  return f;
}

}  // namespace

absl::StatusOr<BodyFraming> RequestFraming(const RequestHead& head) {
  bool found;
  return LengthOrChunked(head.headers, &found);
}

absl::StatusOr<BodyFraming> ResponseFraming(const ResponseHead& head,
                                            absl::string_view request_method) {
  if (request_method == "HEAD" || head.status < 200 || head.status == 204 ||
      head.status == 304) {
    return BodyFraming{};
  }
  bool found;
  absl::StatusOr<BodyFraming> f = LengthOrChunked(head.headers, &found);
  if (!f.ok()) {
    BodyFraming close;
    close.kind = BodyFraming::kUntilClose;
    return close;
  }
  if (!found) f->kind = BodyFraming::kUntilClose;
  return f;
}

bool WantsClose(absl::string_view version, const HttpHeaders& headers) {
  if (headers.HasToken("Connection", "close")) return true;
  return version == "HTTP/1.0" && !headers.HasToken("Connection", "keep-alive");
}

absl::StatusOr<bool> HttpReader::Fill() {
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  char tmp[16384];
  while (true) {
    ssize_t n = recv(fd_, tmp, sizeof(tmp), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "recv");
    }
    if (n == 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }
}

absl::StatusOr<std::string> HttpReader::ReadHead(size_t max_bytes) {
  // Skip empty lines before a request line (RFC 9112 2.2).
  while (true) {
    while (pos_ < buf_.size() && (buf_[pos_] == '\r' || buf_[pos_] == '\n')) {
      ++pos_;
    }
    if (pos_ < buf_.size()) break;
    absl::StatusOr<bool> more = Fill();
    if (!more.ok()) return more.status();
    if (!*more) return std::string();
  }
  size_t scan = 0;  // offset from pos_, as in ReadLine
  while (true) {
    // The head ends at a line end followed by an empty line (CRLF or LF).
    size_t i = pos_ + scan;
    for (; i < buf_.size(); ++i) {
      if (buf_[i] != '\n') continue;
      size_t j = i + 1;
      if (j < buf_.size() && buf_[j] == '\r') ++j;
      if (j >= buf_.size()) break;  // undecided until more bytes come
      if (buf_[j] == '\n') {
        std::string head = buf_.substr(pos_, j + 1 - pos_);
        pos_ = j + 1;
        return head;
      }
    }
    scan = i - pos_;
    if (buf_.size() - pos_ > max_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("message head over ", max_bytes, " bytes"));
    }
    absl::StatusOr<bool> more = Fill();
    if (!more.ok()) return more.status();
    if (!*more) {
      return absl::UnavailableError("connection closed in a message head");
    }
  }
}

absl::StatusOr<std::string> HttpReader::ReadLine(size_t max_bytes) {
  // Fill() may move the unread bytes to the front: keep offsets from pos_.
  size_t scanned = 0;
  while (true) {
    size_t end = buf_.find('\n', pos_ + scanned);
    if (end != std::string::npos) {
      std::string line = buf_.substr(pos_, end - pos_);
      pos_ = end + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      return line;
    }
    scanned = buf_.size() - pos_;
    if (buf_.size() - pos_ > max_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("line over ", max_bytes, " bytes"));
    }
    absl::StatusOr<bool> more = Fill();
    if (!more.ok()) return more.status();
    if (!*more) return absl::UnavailableError("connection closed in a line");
  }
}

absl::StatusOr<size_t> HttpReader::ReadSome(char* dst, size_t max) {
  if (pos_ == buf_.size()) {
    absl::StatusOr<bool> more = Fill();
    if (!more.ok()) return more.status();
    if (!*more) return 0;
  }
  size_t n = std::min(max, buf_.size() - pos_);
  buf_.copy(dst, n, pos_);
  pos_ += n;
  return n;
}

absl::Status HttpReader::ReadExactly(size_t n, std::string* out) {
  while (n > 0) {
    if (pos_ == buf_.size()) {
      absl::StatusOr<bool> more = Fill();
      if (!more.ok()) return more.status();
      if (!*more) return absl::UnavailableError("connection closed early");
    }
    size_t take = std::min(n, buf_.size() - pos_);
    out->append(buf_, pos_, take);
    pos_ += take;
    n -= take;
  }
  return absl::OkStatus();
}

}  // namespace lazypull::proxy
