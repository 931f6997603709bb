#include "core/testing/tar_builder.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace lazypull::testing {
namespace {

constexpr size_t kBlock = 512;

void Pad(std::string* s) {
  s->append((kBlock - s->size() % kBlock) % kBlock, '\0');
}

// Octal into a field of `len` bytes (len-1 digits + NUL); false if too big.
bool PutOctal(char* field, size_t len, uint64_t v) {
  const size_t digits = len - 1;
  if (digits == 0) return false;
  if (digits < 21 && (v >> (3 * digits)) != 0) return false;
  snprintf(field, len, "%0*llo", static_cast<int>(len - 1),
           static_cast<unsigned long long>(v));
  return true;
}

void PutBase256(char* field, size_t len, uint64_t v) {
  std::memset(field, 0, len);
  field[0] = static_cast<char>(0x80);
  for (size_t i = len - 1; i > 0 && v > 0; --i, v >>= 8) {
    field[i] = static_cast<char>(v & 0xff);
  }
}

void PutString(char* field, size_t len, absl::string_view s) {
  std::memcpy(field, s.data(), std::min(len, s.size()));
}

void Checksum(std::string* h) {
  std::memset(h->data() + 148, ' ', 8);
  unsigned sum = 0;
  for (char c : *h) sum += static_cast<uint8_t>(c);
  snprintf(h->data() + 148, 8, "%06o", sum);
  (*h)[155] = ' ';
}

}  // namespace

std::string PaxRecord(absl::string_view key, absl::string_view value) {
  size_t body = 1 + key.size() + 1 + value.size() + 1;  // " k=v\n"
  size_t len = body + 1;
  while (absl::StrCat(len).size() + body != len) {
    len = absl::StrCat(len).size() + body;
  }
  return absl::StrCat(len, " ", key, "=", value, "\n");
}

std::string TarBuilder::Header(absl::string_view name, char typeflag,
                               uint64_t size, uint32_t mode,
                               absl::string_view link, bool gnu) {
  std::string h(kBlock, '\0');
  PutString(h.data(), 100, name);
  PutOctal(h.data() + 100, 8, mode);
  PutOctal(h.data() + 108, 8, 0);
  PutOctal(h.data() + 116, 8, 0);
  if (!PutOctal(h.data() + 124, 12, size)) PutBase256(h.data() + 124, 12, size);
  PutOctal(h.data() + 136, 12, 1622548800);
  h[156] = typeflag;
  PutString(h.data() + 157, 100, link);
  if (gnu) {
    std::memcpy(h.data() + 257, "ustar  ", 8);
  } else {
    std::memcpy(h.data() + 257,
                "ustar\0"
                "00",
                8);
  }
  Checksum(&h);
  return h;
}

TarBuilder& TarBuilder::Add(const TarSpec& s) {
  const bool gnu = dialect_ == TarDialect::kGnu;
  uint64_t size =
      (s.typeflag == '0' || s.typeflag == '7') ? s.content.size() : 0;
  std::string pax;
  if (!gnu) {
    if (s.name.size() > 100) pax += PaxRecord("path", s.name);
    if (s.link.size() > 100) pax += PaxRecord("linkpath", s.link);
    if (s.uid > 07777777) pax += PaxRecord("uid", absl::StrCat(s.uid));
    if (s.gid > 07777777) pax += PaxRecord("gid", absl::StrCat(s.gid));
    if (!s.pax_mtime.empty()) pax += PaxRecord("mtime", s.pax_mtime);
    for (const auto& [k, v] : s.xattrs) {
      pax += PaxRecord(absl::StrCat("SCHILY.xattr.", k), v);
    }
    for (const auto& [k, v] : s.pax_records) pax += PaxRecord(k, v);
  } else {
    if (s.name.size() > 100) {
      out_ += Header("././@LongLink", 'L', s.name.size() + 1, 0, "", true);
      out_ += s.name;
      out_.push_back('\0');
      Pad(&out_);
    }
    if (s.link.size() > 100) {
      out_ += Header("././@LongLink", 'K', s.link.size() + 1, 0, "", true);
      out_ += s.link;
      out_.push_back('\0');
      Pad(&out_);
    }
  }
  if (!pax.empty()) {
    out_ += Header(absl::StrCat("PaxHeaders/", s.name.substr(0, 80)), 'x',
                   pax.size(), 0644);
    out_ += pax;
    Pad(&out_);
  }
  std::string h(kBlock, '\0');
  PutString(h.data(), 100, s.name);
  PutOctal(h.data() + 100, 8, s.mode);
  for (auto [off, v] :
       {std::pair<size_t, uint64_t>{108, s.uid}, {116, s.gid}}) {
    if (!PutOctal(h.data() + off, 8, v)) {
      if (gnu) {
        PutBase256(h.data() + off, 8, v);
      } else {
        PutOctal(h.data() + off, 8, 0);
      }
    }
  }
  PutOctal(h.data() + 124, 12, size);
  PutOctal(h.data() + 136, 12, static_cast<uint64_t>(s.mtime));
  h[156] = s.typeflag;
  PutString(h.data() + 157, 100, s.link);
  if (gnu) {
    std::memcpy(h.data() + 257, "ustar  ", 8);
  } else {
    std::memcpy(h.data() + 257,
                "ustar\0"
                "00",
                8);
  }
  PutString(h.data() + 265, 32, s.uname);
  PutString(h.data() + 297, 32, s.gname);
  if (s.typeflag == '3' || s.typeflag == '4') {
    PutOctal(h.data() + 329, 8, s.dev_major);
    PutOctal(h.data() + 337, 8, s.dev_minor);
  }
  Checksum(&h);
  out_ += h;
  if (size > 0) {
    out_ += s.content;
    Pad(&out_);
  }
  return *this;
}

TarBuilder& TarBuilder::File(absl::string_view name, absl::string_view content,
                             uint32_t mode) {
  TarSpec s;
  s.name = std::string(name);
  s.content = std::string(content);
  s.mode = mode;
  return Add(s);
}

TarBuilder& TarBuilder::Dir(absl::string_view name, uint32_t mode) {
  TarSpec s;
  s.name = std::string(name);
  s.typeflag = '5';
  s.mode = mode;
  return Add(s);
}

TarBuilder& TarBuilder::Symlink(absl::string_view name,
                                absl::string_view target) {
  TarSpec s;
  s.name = std::string(name);
  s.typeflag = '2';
  s.link = std::string(target);
  s.mode = 0777;
  return Add(s);
}

TarBuilder& TarBuilder::Hardlink(absl::string_view name,
                                 absl::string_view target) {
  TarSpec s;
  s.name = std::string(name);
  s.typeflag = '1';
  s.link = std::string(target);
  return Add(s);
}

TarBuilder& TarBuilder::Raw(absl::string_view bytes) {
  out_.append(bytes.data(), bytes.size());
  return *this;
}

std::string TarBuilder::Finish() const {
  return out_ + std::string(2 * kBlock, '\0');
}

}  // namespace lazypull::testing
