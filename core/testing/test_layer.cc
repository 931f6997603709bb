#include "core/testing/test_layer.h"

#include <zlib.h>
#include <zstd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "absl/strings/str_format.h"
#include "core/json_writer.h"

namespace lazypull::testing {

std::string RandomBytes(size_t n, int seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}
namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "test_layer: %s\n", what);
  std::abort();
}

void PutLe32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

void PutLe64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

// Writes `v` as zero-padded octal filling `width - 1` digits plus a NUL.
void PutOctal(char* field, size_t width, uint64_t v) {
  std::string s = absl::StrFormat("%0*o", static_cast<int>(width - 1), v);
  if (s.size() > width - 1) Die("tar number too large for its field");
  std::memcpy(field, s.data(), s.size());
  field[width - 1] = '\0';
}

// The 10-byte gzip header with FEXTRA, MTIME 0, OS 255, then XLEN.
std::string GzipFooterStart(uint16_t xlen) {
  std::string f("\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff", 10);
  f.push_back(static_cast<char>(xlen & 0xff));
  f.push_back(static_cast<char>(xlen >> 8));
  return f;
}

// Empty stored final block, CRC32 0, ISIZE 0.
void GzipFooterEnd(std::string* f) {
  f->append("\x01\x00\x00\xff\xff", 5);
  f->append(8, '\0');
}

}  // namespace

std::string GzipMember(absl::string_view data, int level) {
  z_stream zs;
  std::memset(&zs, 0, sizeof(zs));
  if (deflateInit2(&zs, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    Die("deflateInit2 failed");
  }
  std::string out(deflateBound(&zs, data.size()), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END) Die("deflate failed");
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

std::string ZstdFrame(absl::string_view data, int level) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  size_t n =
      ZSTD_compress(out.data(), out.size(), data.data(), data.size(), level);
  if (ZSTD_isError(n)) Die("ZSTD_compress failed");
  out.resize(n);
  return out;
}

std::string Compress(Compression c, absl::string_view data) {
  return c == Compression::kZstd ? ZstdFrame(data) : GzipMember(data);
}

std::string SkippableFrame(absl::string_view payload) {
  std::string f("\x50\x2a\x4d\x18", 4);
  PutLe32(&f, static_cast<uint32_t>(payload.size()));
  f.append(payload.data(), payload.size());
  return f;
}

std::string TarHeader(absl::string_view name, char typeflag, uint64_t size,
                      uint32_t mode, absl::string_view linkname) {
  if (name.size() > 100 || linkname.size() > 100) Die("tar name too long");
  char h[512];
  std::memset(h, 0, sizeof(h));
  std::memcpy(h, name.data(), name.size());
  PutOctal(h + 100, 8, mode);
  PutOctal(h + 108, 8, 0);  // uid
  PutOctal(h + 116, 8, 0);  // gid
  PutOctal(h + 124, 12, size);
  PutOctal(h + 136, 12, 1622548800);  // 2021-06-01T12:00:00Z
  h[156] = typeflag;
  std::memcpy(h + 157, linkname.data(), linkname.size());
  std::memcpy(h + 257,
              "ustar\0"
              "00",
              8);
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  std::string chk = absl::StrFormat("%06o", sum);
  std::memcpy(h + 148, chk.data(), 6);
  h[154] = '\0';
  h[155] = ' ';
  return std::string(h, sizeof(h));
}

std::string TarPadding(uint64_t size) {
  return std::string((512 - size % 512) % 512, '\0');
}

std::string EstargzFooter(uint64_t toc_offset) {
  std::string f = GzipFooterStart(26);
  f.append("SG", 2);
  f.append("\x16\x00", 2);
  f += absl::StrFormat("%016xSTARGZ", toc_offset);
  GzipFooterEnd(&f);
  return f;
}

std::string LegacyStargzFooter(uint64_t toc_offset) {
  std::string f = GzipFooterStart(22);
  f += absl::StrFormat("%016xSTARGZ", toc_offset);
  GzipFooterEnd(&f);
  return f;
}

std::string ExternalTocFooter() {
  std::string f = GzipFooterStart(21);
  f.append("SG", 2);
  f.append("\x11\x00", 2);
  f.append("STARGZEXTERNALTOC");
  GzipFooterEnd(&f);
  return f;
}

std::string ZstdChunkedFooter(uint64_t toc_offset, uint64_t toc_compressed,
                              uint64_t toc_uncompressed,
                              uint64_t manifest_type) {
  std::string p;
  PutLe64(&p, toc_offset);
  PutLe64(&p, toc_compressed);
  PutLe64(&p, toc_uncompressed);
  PutLe64(&p, manifest_type);
  p.append("GnUlInUx");
  return SkippableFrame(p);
}

std::string ZstdStorageFooter(uint64_t toc_offset, uint64_t toc_compressed,
                              uint64_t toc_uncompressed,
                              uint64_t manifest_type) {
  std::string p;
  PutLe64(&p, toc_offset);
  PutLe64(&p, toc_compressed);
  PutLe64(&p, toc_uncompressed);
  PutLe64(&p, manifest_type);
  PutLe64(&p, 0);  // tar-split offset
  PutLe64(&p, 0);  // tar-split compressed length
  PutLe64(&p, 0);  // tar-split uncompressed length
  p.append("GNUlInUx");
  return SkippableFrame(p);
}

std::string EstargzTocMember(absl::string_view toc_json) {
  std::string tar = TarHeader("stargz.index.json", '0', toc_json.size());
  tar.append(toc_json.data(), toc_json.size());
  tar += TarPadding(toc_json.size());
  tar.append(1024, '\0');
  return GzipMember(tar);
}

std::string AssembleEstargz(absl::string_view payload,
                            absl::string_view toc_json) {
  std::string blob(payload.data(), payload.size());
  blob += EstargzTocMember(toc_json);
  blob += EstargzFooter(payload.size());
  return blob;
}

std::string AssembleZstdChunked(absl::string_view payload,
                                absl::string_view toc_json) {
  std::string blob(payload.data(), payload.size());
  std::string toc = ZstdFrame(toc_json);
  const uint64_t toc_offset = payload.size() + 8;
  blob += SkippableFrame(toc);
  blob += ZstdChunkedFooter(toc_offset, toc.size(), toc_json.size());
  return blob;
}

std::string Assemble(Compression c, absl::string_view payload,
                     absl::string_view toc_json) {
  return c == Compression::kZstd ? AssembleZstdChunked(payload, toc_json)
                                 : AssembleEstargz(payload, toc_json);
}

TestLayer& TestLayer::Add(TestEntry e) {
  entries_.push_back(std::move(e));
  return *this;
}

TestLayer& TestLayer::AddDir(absl::string_view name, uint32_t mode) {
  TestEntry e;
  e.name = std::string(name);
  e.type = EntryType::kDir;
  e.mode = mode;
  return Add(std::move(e));
}

TestLayer& TestLayer::AddFile(absl::string_view name, absl::string_view content,
                              uint64_t chunk_size, uint32_t mode) {
  TestEntry e;
  e.name = std::string(name);
  e.type = EntryType::kReg;
  e.content = std::string(content);
  e.chunk_size = chunk_size;
  e.mode = mode;
  return Add(std::move(e));
}

TestLayer& TestLayer::AddSymlink(absl::string_view name,
                                 absl::string_view target) {
  TestEntry e;
  e.name = std::string(name);
  e.type = EntryType::kSymlink;
  e.link = std::string(target);
  e.mode = 0777;
  return Add(std::move(e));
}

TestLayer& TestLayer::AddHardlink(absl::string_view name,
                                  absl::string_view target) {
  TestEntry e;
  e.name = std::string(name);
  e.type = EntryType::kHardlink;
  e.link = std::string(target);
  return Add(std::move(e));
}

TestBlob TestLayer::Build() const {
  TestBlob out;
  out.compression = c_;
  std::string& blob = out.payload;
  std::string pending;  // uncompressed bytes not yet in a member/frame
  auto flush = [&] {
    if (pending.empty()) return;
    blob += Compress(c_, pending);
    out.uncompressed += pending;
    pending.clear();
  };
  JsonWriter w(1);
  w.BeginObject().Key("version").Int(1).Key("entries").BeginArray();
  for (const TestEntry& e : entries_) {
    char typeflag = '0';
    switch (e.type) {
      case EntryType::kDir:
        typeflag = '5';
        break;
      case EntryType::kSymlink:
        typeflag = '2';
        break;
      case EntryType::kHardlink:
        typeflag = '1';
        break;
      case EntryType::kChar:
        typeflag = '3';
        break;
      case EntryType::kBlock:
        typeflag = '4';
        break;
      case EntryType::kFifo:
        typeflag = '6';
        break;
      default:
        break;
    }
    pending += TarHeader(e.name, typeflag,
                         e.type == EntryType::kReg ? e.content.size() : 0,
                         e.mode, e.link);
    w.BeginObject();
    w.Key("name").String(e.name);
    w.Key("type").String(EntryTypeName(e.type));
    w.Key("mode").Uint(e.mode);
    w.Key("modtime").String("2021-06-01T12:00:00Z");
    if (!e.link.empty()) w.Key("linkName").String(e.link);
    if (e.type != EntryType::kReg) {
      w.EndObject();
      continue;
    }
    const uint64_t size = e.content.size();
    w.Key("size").Uint(size);
    w.Key("digest").String(Sha256::Of(e.content).ToString());
    if (size == 0) {
      w.EndObject();
      continue;
    }
    flush();
    const uint64_t step = e.chunk_size == 0 ? size : e.chunk_size;
    for (uint64_t off = 0; off < size; off += step) {
      absl::string_view piece = absl::string_view(e.content).substr(off, step);
      TestChunk c;
      c.name = e.name;
      c.file_offset = off;
      c.size = piece.size();
      c.blob_offset = blob.size();
      blob += Compress(c_, piece);
      out.uncompressed.append(piece.data(), piece.size());
      c.blob_end = blob.size();
      c.digest = Sha256::Of(piece);
      if (off > 0) {
        w.BeginObject();
        w.Key("name").String(e.name);
        w.Key("type").String("chunk");
      }
      w.Key("offset").Uint(c.blob_offset);
      w.Key("chunkOffset").Uint(off);
      if (off + step < size) w.Key("chunkSize").Uint(piece.size());
      w.Key("chunkDigest").String(c.digest.ToString());
      w.EndObject();
      out.chunks.push_back(std::move(c));
    }
    pending += TarPadding(size);
  }
  flush();
  w.EndArray().EndObject();
  out.toc_json = w.Release();
  out.toc_digest = Sha256::Of(out.toc_json);
  out.blob = Assemble(c_, out.payload, out.toc_json);
  if (c_ == Compression::kGzip) {
    // The TOC member's content is part of the gzip stream.
    std::string tar = TarHeader("stargz.index.json", '0', out.toc_json.size());
    tar += out.toc_json;
    tar += TarPadding(out.toc_json.size());
    tar.append(1024, '\0');
    out.uncompressed += tar;
  }
  out.diff_id = Sha256::Of(out.uncompressed);
  return out;
}

}  // namespace lazypull::testing
