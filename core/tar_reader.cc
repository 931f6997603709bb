#include "core/tar_reader.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

constexpr size_t kBlock = 512;

absl::string_view Field(const char* block, size_t off, size_t len) {
  absl::string_view f(block + off, len);
  size_t nul = f.find('\0');
  return nul == absl::string_view::npos ? f : f.substr(0, nul);
}

bool AllZero(const char* block) {
  for (size_t i = 0; i < kBlock; ++i) {
    if (block[i] != 0) return false;
  }
  return true;
}

// Signed variant for modification times (base-256 may be negative).
bool ParseTarTime(absl::string_view f, int64_t* out) {
  if (!f.empty() && static_cast<uint8_t>(f[0]) == 0xff) {
    // Negative base-256: two's complement over the whole field.
    if (f.size() > 9) {
      for (size_t i = 1; i + 8 < f.size(); ++i) {
        if (static_cast<uint8_t>(f[i]) != 0xff) return false;
      }
    }
    uint64_t v = ~uint64_t{0};
    for (size_t i = f.size() > 8 ? f.size() - 8 : 1; i < f.size(); ++i) {
      v = v << 8 | static_cast<uint8_t>(f[i]);
    }
    *out = static_cast<int64_t>(v);
    return *out < 0;
  }
  uint64_t v;
  if (!ParseTarNumber(f, &v)) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

// PAX "mtime": decimal seconds with an optional sign and fraction.
bool ParsePaxTime(absl::string_view s, int64_t* sec, uint32_t* nsec) {
  bool neg = absl::ConsumePrefix(&s, "-");
  absl::string_view whole = s, frac;
  if (size_t dot = s.find('.'); dot != absl::string_view::npos) {
    whole = s.substr(0, dot);
    frac = s.substr(dot + 1);
  }
  uint64_t w;
  if (whole.empty() || !absl::SimpleAtoi(whole, &w) || w > (uint64_t{1} << 62))
    return false;
  uint32_t ns = 0;
  for (size_t i = 0; i < frac.size(); ++i) {
    if (!absl::ascii_isdigit(frac[i])) return false;
    if (i < 9) ns = ns * 10 + static_cast<uint32_t>(frac[i] - '0');
  }
  for (size_t i = frac.size(); i < 9; ++i) ns *= 10;
  int64_t s64 = static_cast<int64_t>(w);
  if (neg) {
    s64 = -s64;
    if (ns > 0) {
      s64 -= 1;
      ns = 1'000'000'000 - ns;
    }
  }
  *sec = s64;
  *nsec = ns;
  return true;
}

bool ParsePaxUint(absl::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(c)) return false;
  }
  return absl::SimpleAtoi(s, out);
}

void SetXattr(std::vector<std::pair<std::string, std::string>>* xattrs,
              std::string name, std::string value) {
  for (auto& kv : *xattrs) {
    if (kv.first == name) {
      kv.second = std::move(value);
      return;
    }
  }
  xattrs->emplace_back(std::move(name), std::move(value));
}

// The records of one PAX extended header, later ones overriding earlier.
struct PaxRecords {
  std::map<std::string, std::string> values;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

absl::Status ParsePax(absl::string_view data, uint64_t offset,
                      PaxRecords* out) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("PAX header at tar offset ", offset, ": ", why));
  };
  while (!data.empty()) {
    // Trailing NULs pad some writers' records.
    if (data[0] == '\0') break;
    size_t sp = data.find(' ');
    if (sp == absl::string_view::npos || sp == 0 || sp > 20) {
      return bad("record without a length");
    }
    uint64_t len;
    if (!ParsePaxUint(data.substr(0, sp), &len) || len <= sp + 1 ||
        len > data.size()) {
      return bad("record length out of range");
    }
    absl::string_view rec = data.substr(sp + 1, len - sp - 1);
    data.remove_prefix(len);
    if (rec.empty() || rec.back() != '\n')
      return bad("record not ended by \\n");
    rec.remove_suffix(1);
    size_t eq = rec.find('=');
    if (eq == absl::string_view::npos || eq == 0)
      return bad("record without key");
    absl::string_view key = rec.substr(0, eq);
    absl::string_view value = rec.substr(eq + 1);
    if (absl::StartsWith(key, "GNU.sparse.")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tar entry at offset ", offset,
          " is a GNU sparse file (PAX GNU.sparse.*), which is not supported"));
    }
    if (absl::StartsWith(key, "SCHILY.xattr.")) {
      SetXattr(&out->xattrs, std::string(key.substr(13)), std::string(value));
    } else {
      // LIBARCHIVE.xattr.* among them: Go's archive/tar, containerd's and
      // containers/storage's unpack and the eStargz writer read xattrs from
      // SCHILY.xattr.* only (libarchive writes both).
      out->values[std::string(key)] = std::string(value);
    }
  }
  return absl::OkStatus();
}

absl::string_view TypeName(char t) {
  switch (t) {
    case 'S':
      return "GNU sparse file";
    case 'M':
      return "GNU multi-volume continuation";
    case 'V':
      return "GNU volume label";
    case 'D':
      return "GNU dump directory";
    case 'N':
      return "GNU old long name";
    default:
      return "unknown type";
  }
}

}  // namespace

absl::StatusOr<uint64_t> ByteStream::Skip(uint64_t n) {
  uint64_t done = 0;
  while (done < n) {
    ASSIGN_OR_RETURN(
        absl::string_view v,
        Read(static_cast<size_t>(std::min<uint64_t>(n - done, 1 << 20))));
    if (v.empty()) break;
    done += v.size();
  }
  return done;
}

absl::StatusOr<absl::string_view> MemoryByteStream::Read(size_t n) {
  n = std::min(n, data_.size() - pos_);
  absl::string_view v = data_.substr(pos_, n);
  pos_ += n;
  return v;
}

absl::StatusOr<uint64_t> MemoryByteStream::Skip(uint64_t n) {
  uint64_t k = std::min<uint64_t>(n, data_.size() - pos_);
  pos_ += static_cast<size_t>(k);
  return k;
}

bool ParseTarNumber(absl::string_view f, uint64_t* out) {
  if (!f.empty() && (static_cast<uint8_t>(f[0]) & 0x80)) {
    if (static_cast<uint8_t>(f[0]) != 0x80) return false;  // negative
    uint64_t v = 0;
    for (size_t i = 1; i < f.size(); ++i) {
      if (v >> 55) return false;  // would pass 2^63
      v = v << 8 | static_cast<uint8_t>(f[i]);
    }
    *out = v;
    return true;
  }
  size_t i = 0;
  while (i < f.size() && (f[i] == ' ' || f[i] == '\0')) ++i;
  uint64_t v = 0;
  for (; i < f.size(); ++i) {
    char c = f[i];
    if (c == ' ' || c == '\0') break;
    if (c < '0' || c > '7') return false;
    if (v >> 60) return false;
    v = v * 8 + static_cast<uint64_t>(c - '0');
  }
  for (; i < f.size(); ++i) {
    if (f[i] != ' ' && f[i] != '\0') return false;
  }
  *out = v;  // an all-blank field reads as 0, as GNU tar and Go do
  return true;
}

bool TarChecksumOk(absl::string_view block) {
  uint64_t want;
  if (block.size() != kBlock || !ParseTarNumber(block.substr(148, 8), &want)) {
    return false;
  }
  uint64_t usum = 0;
  int64_t ssum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    char c = (i >= 148 && i < 156) ? ' ' : block[i];
    usum += static_cast<uint8_t>(c);
    ssum += static_cast<signed char>(c);
  }
  return want == usum || static_cast<int64_t>(want) == ssum;
}

absl::Status TarReader::ReadBlock(const char** block, bool* eof) {
  ASSIGN_OR_RETURN(absl::string_view v, in_->Read(kBlock));
  if (v.size() == kBlock) {
    *block = v.data();
    *eof = false;
    pos_ += kBlock;
    return absl::OkStatus();
  }
  if (v.empty()) {
    *eof = true;
    return absl::OkStatus();
  }
  // A short read may be a ByteStream returning less than asked: gather.
  static thread_local char buf[kBlock];
  size_t got = v.size();
  std::memcpy(buf, v.data(), got);
  while (got < kBlock) {
    ASSIGN_OR_RETURN(absl::string_view w, in_->Read(kBlock - got));
    if (w.empty()) {
      return absl::DataLossError(absl::StrCat(
          "tar stream ends inside a header block at offset ", pos_));
    }
    std::memcpy(buf + got, w.data(), w.size());
    got += w.size();
  }
  *block = buf;
  *eof = false;
  pos_ += kBlock;
  return absl::OkStatus();
}

absl::Status TarReader::ReadExtension(uint64_t size, std::string* out,
                                      std::string* raw) {
  if (size > options_.max_extension_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tar extension header at offset ", pos_ - kBlock, " claims ", size,
        " bytes (limit ", options_.max_extension_size, ")"));
  }
  uint64_t padded = (size + kBlock - 1) / kBlock * kBlock;
  out->clear();
  std::string data;
  while (data.size() < padded) {
    ASSIGN_OR_RETURN(absl::string_view v,
                     in_->Read(static_cast<size_t>(padded - data.size())));
    if (v.empty()) {
      return absl::DataLossError(absl::StrCat(
          "tar stream ends inside an extension header at offset ", pos_));
    }
    data.append(v.data(), v.size());
  }
  pos_ += padded;
  raw->append(data);
  out->assign(data, 0, static_cast<size_t>(size));
  return absl::OkStatus();
}

absl::Status TarReader::SkipRest() {
  if (data_left_ > 0) {
    ASSIGN_OR_RETURN(uint64_t k, in_->Skip(data_left_));
    pos_ += k;
    if (k < data_left_) {
      return absl::DataLossError(
          absl::StrCat("tar stream ends inside the payload of \"",
                       current_name_, "\" (", data_left_ - k, " bytes short)"));
    }
    data_left_ = 0;
  }
  if (padding_left_ > 0) {
    ASSIGN_OR_RETURN(uint64_t k, in_->Skip(padding_left_));
    pos_ += k;
    // A stream that ends right after the last payload, without padding, is
    // read as ended.
    if (k < padding_left_) done_ = true;
    padding_left_ = 0;
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::string_view> TarReader::ReadData(size_t n) {
  if (data_left_ == 0 || n == 0) return absl::string_view();
  ASSIGN_OR_RETURN(
      absl::string_view v,
      in_->Read(static_cast<size_t>(std::min<uint64_t>(n, data_left_))));
  if (v.empty()) {
    return absl::DataLossError(
        absl::StrCat("tar stream ends inside the payload of \"", current_name_,
                     "\" (", data_left_, " bytes short)"));
  }
  data_left_ -= v.size();
  pos_ += v.size();
  return v;
}

absl::StatusOr<bool> TarReader::Next(TarHeader* h) {
  if (done_) return false;
  RETURN_IF_ERROR(SkipRest());
  if (done_) return false;

  std::string raw;
  uint64_t header_offset = pos_;
  bool have_long_name = false, have_long_link = false;
  std::string long_name, long_link;
  PaxRecords pax;
  for (;;) {
    const char* b;
    bool eof;
    uint64_t block_offset = pos_;
    RETURN_IF_ERROR(ReadBlock(&b, &eof));
    if (eof || AllZero(b)) {
      if (!raw.empty()) {
        return absl::DataLossError(
            absl::StrCat("tar stream ends after an extension header at offset ",
                         header_offset, " without the entry it describes"));
      }
      done_ = true;
      return false;
    }
    absl::string_view block(b, kBlock);
    if (!TarChecksumOk(block)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tar header at offset ", block_offset,
          " has a bad checksum (not a tar stream, or a corrupt one)"));
    }
    char t = b[156];
    uint64_t size;
    if (!ParseTarNumber(block.substr(124, 12), &size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tar header at offset ", block_offset, " has a malformed size"));
    }
    if (t == 'L' || t == 'K' || t == 'x' || t == 'g') {
      std::string ext_raw(block);
      std::string data;
      RETURN_IF_ERROR(ReadExtension(size, &data, &ext_raw));
      if (t == 'g') {
        // Global records are not applied; their blocks are dropped.
        if (raw.empty()) header_offset = pos_;
        continue;
      }
      if (raw.size() + ext_raw.size() > options_.max_extensions_per_entry) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tar extension headers from offset ", header_offset, " exceed ",
            options_.max_extensions_per_entry,
            " bytes before their entry (a hostile or corrupt stream)"));
      }
      raw.append(ext_raw);
      if (t == 'L' || t == 'K') {
        size_t nul = data.find('\0');
        if (nul != std::string::npos) data.resize(nul);
        (t == 'L' ? long_name : long_link) = std::move(data);
        (t == 'L' ? have_long_name : have_long_link) = true;
      } else {
        RETURN_IF_ERROR(ParsePax(data, block_offset, &pax));
      }
      continue;
    }

    TarHeader out;
    absl::string_view magic(b + 257, 6);
    bool posix = magic == absl::string_view("ustar\0", 6);
    bool gnu = magic == "ustar " && b[263] == ' ';
    out.name = std::string(Field(b, 0, 100));
    if (posix) {
      absl::string_view prefix = Field(b, 345, 155);
      if (!prefix.empty()) {
        out.name = absl::StrCat(prefix, "/", out.name);
      }
    }
    out.link_name = std::string(Field(b, 157, 100));
    if (have_long_name) out.name = long_name;
    if (have_long_link) out.link_name = long_link;
    uint64_t mode;
    int64_t mtime;
    if (!ParseTarNumber(block.substr(100, 8), &mode) ||
        !ParseTarNumber(block.substr(108, 8), &out.uid) ||
        !ParseTarNumber(block.substr(116, 8), &out.gid) ||
        !ParseTarTime(block.substr(136, 12), &mtime)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tar header at offset ", block_offset, " (\"", out.name,
                       "\") has a malformed number field"));
    }
    out.mode = static_cast<int64_t>(mode);
    out.mtime_sec = mtime;
    if (posix || gnu) {
      out.uname = std::string(Field(b, 265, 32));
      out.gname = std::string(Field(b, 297, 32));
    }
    out.typeflag = t;
    switch (t) {
      case '0':
      case '7':
        out.type = TarType::kReg;
        break;
      case '\0':
        out.type =
            absl::EndsWith(out.name, "/") ? TarType::kDir : TarType::kReg;
        break;
      case '1':
        out.type = TarType::kHardlink;
        break;
      case '2':
        out.type = TarType::kSymlink;
        break;
      case '3':
        out.type = TarType::kChar;
        break;
      case '4':
        out.type = TarType::kBlock;
        break;
      case '5':
        out.type = TarType::kDir;
        break;
      case '6':
        out.type = TarType::kFifo;
        break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "tar entry \"", out.name, "\" at offset ", block_offset,
            " has type '", absl::CEscape(absl::string_view(&t, 1)), "' (",
            TypeName(t), "), which is not supported"));
    }
    if ((out.type == TarType::kChar || out.type == TarType::kBlock) &&
        (posix || gnu)) {
      if (!ParseTarNumber(block.substr(329, 8), &out.dev_major) ||
          !ParseTarNumber(block.substr(337, 8), &out.dev_minor)) {
        return absl::InvalidArgumentError(
            absl::StrCat("tar header at offset ", block_offset, " (\"",
                         out.name, "\") has a malformed device number"));
      }
    }
    // PAX records override the header's fields.
    bool bad_pax = false;
    for (const auto& [key, value] : pax.values) {
      if (key == "path") {
        out.name = value;
      } else if (key == "linkpath") {
        out.link_name = value;
      } else if (key == "size") {
        bad_pax |= !ParsePaxUint(value, &size);
      } else if (key == "uid") {
        bad_pax |= !ParsePaxUint(value, &out.uid);
      } else if (key == "gid") {
        bad_pax |= !ParsePaxUint(value, &out.gid);
      } else if (key == "uname") {
        out.uname = value;
      } else if (key == "gname") {
        out.gname = value;
      } else if (key == "mtime") {
        bad_pax |= !ParsePaxTime(value, &out.mtime_sec, &out.mtime_nsec);
      } else if (key == "SCHILY.devmajor") {
        bad_pax |= !ParsePaxUint(value, &out.dev_major);
      } else if (key == "SCHILY.devminor") {
        bad_pax |= !ParsePaxUint(value, &out.dev_minor);
      }
      if (bad_pax) {
        return absl::InvalidArgumentError(
            absl::StrCat("PAX record \"", key, "\" of tar entry \"", out.name,
                         "\" has a malformed value \"",
                         absl::CEscape(value.substr(0, 64)), "\""));
      }
    }
    out.xattrs = std::move(pax.xattrs);
    if (out.name.empty() || out.name.find('\0') != std::string::npos ||
        out.link_name.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("tar entry at offset ", block_offset,
                       " has an empty name or a name holding a NUL byte"));
    }
    bool header_only = out.type != TarType::kReg;
    if (header_only && size != 0) {
      // Go's archive/tar and the eStargz reference read no payload here
      // while the header claims one: refuse rather than guess.
      return absl::InvalidArgumentError(absl::StrCat(
          "tar entry \"", out.name, "\" at offset ", block_offset,
          " is not a regular file but claims a payload of ", size, " bytes"));
    }
    if (size > options_.max_entry_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tar entry \"", out.name, "\" at offset ", block_offset, " claims ",
          size, " bytes (limit ", options_.max_entry_size, ")"));
    }
    out.size = size;
    raw.append(block.data(), block.size());
    out.raw = std::move(raw);
    out.header_offset = header_offset;
    out.data_offset = pos_;
    data_left_ = size;
    padding_left_ = (kBlock - size % kBlock) % kBlock;
    current_name_ = out.name;
    *h = std::move(out);
    return true;
  }
}

}  // namespace lazypull
