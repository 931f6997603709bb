#include "core/layer_writer.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/decompressor.h"
#include "core/layer_reader.h"
#include "core/layer_verifier.h"
#include "core/memory_blob_source.h"
#include "core/testing/tar_builder.h"
#include "core/testing/test_layer.h"
#include "core/toc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using ::lazypull::testing::TarBuilder;
using ::lazypull::testing::TarDialect;
using ::lazypull::testing::TarSpec;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Deterministic content: half pseudo-random bytes, half text.
std::string Content(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    if ((i / 4096) % 2 == 0) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      s[i] = static_cast<char>(x);
    } else {
      s[i] = "lorem ipsum dolor sit amet\n"[i % 27];
    }
  }
  return s;
}

struct Input {
  std::string tar;
  std::map<std::string, std::string> files;  // normalized path -> content
  std::vector<std::string> names;            // tar names in order
};

// Every entry type and the cases around chunk boundaries.
Input MakeInput(uint64_t chunk, TarDialect dialect = TarDialect::kPax) {
  Input in;
  TarBuilder b(dialect);
  auto add = [&](const TarSpec& s) {
    b.Add(s);
    in.names.push_back(s.name);
    if (s.typeflag == '0') {
      std::string p = s.name;
      if (p.rfind("./", 0) == 0) p = p.substr(2);
      in.files[p] = s.content;
    }
  };
  auto file = [&](std::string name, std::string content) {
    TarSpec s;
    s.name = std::move(name);
    s.content = std::move(content);
    add(s);
  };
  auto dir = [&](std::string name) {
    TarSpec s;
    s.name = std::move(name);
    s.typeflag = '5';
    s.mode = 0755;
    add(s);
  };
  dir("app/");
  dir("app/bin/");
  TarSpec tool;
  tool.name = "app/bin/tool";
  tool.content = Content(3000, 1);
  tool.mode = 04755;
  tool.uid = 1000;
  tool.gid = 1000;
  tool.uname = "alice";
  tool.gname = "alice";
  add(tool);
  file("app/empty", "");
  TarSpec hard;
  hard.name = "app/bin/tool.hard";
  hard.typeflag = '1';
  hard.link = "app/bin/tool";
  add(hard);
  TarSpec sym;
  sym.name = "app/link";
  sym.typeflag = '2';
  sym.link = "bin/tool";
  sym.mode = 0777;
  add(sym);
  dir("data/");
  file("data/exact", Content(chunk, 2));
  file("data/plus1", Content(chunk + 1, 3));
  file("data/multi", Content(chunk * 2 + chunk / 2 + 7, 4));
  file("data/small", "small\n");
  TarSpec dev;
  dev.name = "dev/null";
  dev.typeflag = '3';
  dev.mode = 0666;
  dev.dev_major = 1;
  dev.dev_minor = 3;
  add(dev);
  dev.name = "dev/sda";
  dev.typeflag = '4';
  dev.dev_major = 8;
  dev.dev_minor = 0;
  add(dev);
  TarSpec fifo;
  fifo.name = "run/fifo";
  fifo.typeflag = '6';
  add(fifo);
  TarSpec x;
  x.name = "data/xattr";
  x.content = "with xattrs";
  x.xattrs = {{"user.b", "2"},
              {"security.capability", std::string("\0\xff", 2)}};
  if (dialect == TarDialect::kPax) add(x);
  TarSpec big;
  big.name = "home/" + std::string(120, 'l') + "/big-ids.txt";
  big.content = "ids";
  big.uid = 4000000000;
  big.gid = 3000000;
  big.uname = "hi";
  big.pax_mtime = dialect == TarDialect::kPax ? "1622548800.6" : "";
  add(big);
  file("./dotted/f", "dot");
  file("odd/a&b<c>.txt", "odd");
  in.tar = b.Finish();
  return in;
}

struct Written {
  LayerWriteResult result;
  std::string blob;
};

Written Write(absl::string_view tar, LayerWriterOptions o) {
  StringBlobSink sink;
  absl::StatusOr<LayerWriteResult> r = WriteLayer(tar, o, &sink);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  EXPECT_EQ(r->blob_size, sink.out.size());
  return {*std::move(r), std::move(sink.out)};
}

std::unique_ptr<LayerReader> Open(const Written& w) {
  LayerOpenOptions o;
  o.toc_digest = w.result.toc_digest;
  if (w.result.toc_compressed_digest != Digest()) {
    o.toc_compressed_digest = w.result.toc_compressed_digest;
  }
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      LayerReader::Open(std::make_shared<MemoryBlobSource>(w.blob), o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

std::string ReadFile(const LayerReader& r, uint32_t inode) {
  std::string out;
  const LayerIndex& idx = r.index();
  for (const Chunk& c : idx.FileChunks(inode)) {
    std::string buf(c.size, '\0');
    uint32_t ci = static_cast<uint32_t>(&c - idx.chunks().data());
    absl::Status s = r.ReadChunk(ci, absl::MakeSpan(buf));
    EXPECT_TRUE(s.ok()) << s;
    out += buf;
  }
  return out;
}

std::string Decompress(Compression c, absl::string_view blob) {
  std::unique_ptr<StreamDecompressor> d = StreamDecompressor::New(c);
  std::string out;
  std::string buf(1 << 16, '\0');
  while (!blob.empty()) {
    absl::StatusOr<StreamDecompressor::Result> r =
        d->Decompress(blob, absl::MakeSpan(buf));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || (r->consumed == 0 && r->produced == 0 && !r->frame_end)) {
      break;
    }
    blob.remove_prefix(r->consumed);
    out.append(buf.data(), r->produced);
  }
  return out;
}

std::string TocJson(const Written& w, Compression c) {
  absl::string_view blob = w.blob;
  absl::string_view comp =
      blob.substr(w.result.toc_offset, w.result.toc_compressed_size);
  if (c == Compression::kGzip) {
    absl::StatusOr<std::string> j = ReadGzipTocMember(comp, 1 << 30);
    EXPECT_TRUE(j.ok()) << j.status();
    return j.ok() ? *j : "";
  }
  std::string out(w.result.toc_uncompressed_size, '\0');
  EXPECT_TRUE(DecompressRange(c, comp, 0, absl::MakeSpan(out)).ok());
  return out;
}

// Runs a shell pipeline; returns its stdout, or "ERROR" if it failed.
std::string Shell(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "ERROR";
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  return pclose(p) == 0 ? out : "ERROR";
}

std::string TempPath(const std::string& name) {
  const char* d = getenv("TEST_TMPDIR");
  return absl::StrCat(d != nullptr ? d : "/tmp", "/", name);
}

class LayerWriterRoundTrip : public ::testing::TestWithParam<
                                 std::tuple<Compression, uint64_t, uint64_t>> {
};

TEST_P(LayerWriterRoundTrip, ReadsBackVerifiesAndIsDeterministic) {
  const auto [comp, chunk, min_chunk] = GetParam();
  const Input in = MakeInput(chunk);
  LayerWriterOptions o;
  o.compression = comp;
  o.chunk_size = chunk;
  o.min_chunk_size = min_chunk;
  o.threads = 1;
  Written w = Write(in.tar, o);
  ASSERT_FALSE(w.blob.empty());
  std::unique_ptr<LayerReader> r = Open(w);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->compression(), comp);
  const LayerIndex& idx = r->index();
  EXPECT_TRUE(idx.has_no_prefetch_landmark());
  EXPECT_FALSE(idx.prefetch_landmark_offset().has_value());

  absl::StatusOr<VerifyResult> v = VerifyLayer(*r);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->diff_id, w.result.diff_id);
  EXPECT_EQ(v->uncompressed_size, w.result.uncompressed_size);
  EXPECT_EQ(v->blob_digest, w.result.blob_digest);
  EXPECT_EQ(Sha256::Of(w.blob), w.result.blob_digest);

  // Every file's bytes, through the lazy read path.
  for (const auto& [path, content] : in.files) {
    std::optional<uint32_t> ino = idx.Resolve(path);
    ASSERT_TRUE(ino.has_value()) << path;
    EXPECT_EQ(idx.inode(*ino).size, content.size()) << path;
    EXPECT_TRUE(ReadFile(*r, *ino) == content) << path;
    EXPECT_EQ(idx.inode(*ino).digest, Sha256::Of(content)) << path;
  }
  // Chunking at the boundaries.
  EXPECT_EQ(idx.FileChunks(*idx.Resolve("data/exact")).size(), 1u);
  auto plus1 = idx.FileChunks(*idx.Resolve("data/plus1"));
  ASSERT_EQ(plus1.size(), 2u);
  EXPECT_EQ(plus1[1].size, 1u);
  EXPECT_EQ(idx.FileChunks(*idx.Resolve("data/multi")).size(), 3u);
  EXPECT_TRUE(idx.FileChunks(*idx.Resolve("app/empty")).empty());
  // Members shared (innerOffset) exactly when min_chunk_size asks.
  size_t inner = 0;
  for (const Chunk& c : idx.chunks()) inner += c.inner_offset != 0;
  if (min_chunk == 0) {
    EXPECT_EQ(inner, 0u);
  } else {
    EXPECT_GT(inner, 0u);
  }

  // The other entry types.
  const Inode& tool = idx.inode(*idx.Resolve("app/bin/tool"));
  EXPECT_EQ(tool.mode, 04755u);
  EXPECT_EQ(tool.uid, 1000u);
  EXPECT_EQ(idx.name(tool.uname), "alice");
  EXPECT_EQ(tool.nlink, 2u);
  EXPECT_EQ(*idx.Resolve("app/bin/tool.hard"), *idx.Resolve("app/bin/tool"));
  EXPECT_EQ(idx.inode(*idx.Resolve("app/link")).symlink, "bin/tool");
  const Inode& null = idx.inode(*idx.Resolve("dev/null"));
  EXPECT_EQ(null.type, EntryType::kChar);
  EXPECT_EQ(null.dev_major, 1u);
  EXPECT_EQ(null.dev_minor, 3u);
  EXPECT_TRUE(idx.inode(*idx.Resolve("dev")).implicit);
  EXPECT_EQ(idx.inode(*idx.Resolve("dev/sda")).type, EntryType::kBlock);
  EXPECT_EQ(idx.inode(*idx.Resolve("run/fifo")).type, EntryType::kFifo);
  uint32_t xi = *idx.Resolve("data/xattr");
  EXPECT_THAT(idx.Xattrs(xi),
              ::testing::ElementsAre(
                  std::pair<std::string, std::string>("security.capability",
                                                      std::string("\0\xff", 2)),
                  std::pair<std::string, std::string>("user.b", "2")));
  const Inode& big =
      idx.inode(*idx.Resolve("home/" + std::string(120, 'l') + "/big-ids.txt"));
  EXPECT_EQ(big.uid, 4000000000u);
  EXPECT_EQ(big.gid, 3000000u);
  // The fraction kept (the reference rounds to 1622548801): a lazy mount
  // shows what the tar header, and so a full pull, gives.
  EXPECT_EQ(big.mtime_sec, 1622548800);
  EXPECT_EQ(big.mtime_nsec, 600000000u);

  // Same bytes whatever the thread count.
  for (int threads : {2, 4}) {
    o.threads = threads;
    EXPECT_TRUE(Write(in.tar, o).blob == w.blob) << threads << " threads";
  }
  // Re-converting the layer (its old TOC and landmark dropped) reproduces it.
  std::string again = Decompress(comp, w.blob);
  EXPECT_EQ(again.size(), w.result.uncompressed_size);
  EXPECT_EQ(Sha256::Of(again), w.result.diff_id);
  EXPECT_TRUE(Write(again, o).blob == w.blob);

  // The system tools read it as a plain compressed tar.
  std::string path = TempPath(absl::StrCat("rt-", static_cast<int>(comp), "-",
                                           chunk, "-", min_chunk, ".blob"));
  {
    std::ofstream f(path, std::ios::binary);
    f << w.blob;
  }
  std::string tool_cmd = comp == Compression::kGzip ? "gzip" : "zstd -q";
  std::string listing =
      Shell(absl::StrCat(tool_cmd, " -dc ", path, " | tar -tf -"));
  std::vector<std::string> want = {".no.prefetch.landmark"};
  want.insert(want.end(), in.names.begin(), in.names.end());
  if (comp == Compression::kGzip) want.push_back("stargz.index.json");
  std::vector<std::string> listed =
      absl::StrSplit(listing, '\n', absl::SkipEmpty());
  EXPECT_THAT(listed, ElementsAreArray(want));
  // And the stream is exactly what the DiffID says.
  EXPECT_EQ(Shell(absl::StrCat(tool_cmd, " -dc ", path, " | sha256sum")),
            absl::StrCat(w.result.diff_id.Hex(), "  -\n"));
  unlink(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    FormatsAndChunkSizes, LayerWriterRoundTrip,
    ::testing::Combine(::testing::Values(Compression::kGzip,
                                         Compression::kZstd),
                       ::testing::Values(uint64_t{1000}, uint64_t{4096},
                                         uint64_t{65536}, uint64_t{4} << 20),
                       // Min chunk size: off, and over a 1000-byte chunk
                       // (a file's chunks share members too).
                       ::testing::Values(uint64_t{0}, uint64_t{5000})));

TEST(LayerWriterTest, GnuInput) {
  const Input in = MakeInput(4096, TarDialect::kGnu);
  LayerWriterOptions o;
  o.chunk_size = 4096;
  Written w = Write(in.tar, o);
  std::unique_ptr<LayerReader> r = Open(w);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(VerifyLayer(*r).ok());
  for (const auto& [path, content] : in.files) {
    std::optional<uint32_t> ino = r->index().Resolve(path);
    ASSERT_TRUE(ino.has_value()) << path;
    EXPECT_TRUE(ReadFile(*r, *ino) == content) << path;
  }
}

// What the eStargz reference (Go's archive/tar under it) writes, and what
// verify must take as it is: a hardlink naming another hardlink ("usr" ->
// "k" -> "data": the TOC keeps the names), a time with a fraction (the
// reference's TOC rounds it to the nearest second, its tar stream keeps the
// fraction) and a LIBARCHIVE.xattr.* record (not an xattr to Go: neither to
// the TOC nor to containerd's unpack).
TEST(LayerWriterTest, WhatTheReferenceWritesVerifies) {
  TarBuilder b;
  b.File("data", "bytes");
  b.Hardlink("k", "data");
  b.Hardlink("usr", "k");
  TarSpec f;
  f.name = "f";
  f.content = "x";
  f.pax_mtime = "1600000000.6";
  f.pax_records = {{"LIBARCHIVE.xattr.user.foo", "YmFy"}};
  b.Add(f);
  LayerWriterOptions o;
  Written w = Write(b.Finish(), o);
  std::unique_ptr<LayerReader> r = Open(w);
  ASSERT_NE(r, nullptr);
  absl::StatusOr<VerifyResult> v = VerifyLayer(*r);
  ASSERT_TRUE(v.ok()) << v.status();
  const LayerIndex& idx = r->index();
  EXPECT_EQ(idx.Resolve("usr"), idx.Resolve("data"));
  EXPECT_TRUE(idx.Xattrs(*idx.Resolve("f")).empty());

  // The TOC as the reference writes it: whole seconds, rounded.
  const std::string json = TocJson(w, Compression::kGzip);
  auto verify_with = [&](absl::string_view from, absl::string_view to) {
    std::string edited = json;
    const size_t at = edited.find(std::string(from));
    EXPECT_NE(at, std::string::npos) << from << " in " << json;
    if (at == std::string::npos) return absl::UnknownError("no such text");
    edited.replace(at, from.size(), std::string(to));
    absl::StatusOr<std::unique_ptr<LayerReader>> e = LayerReader::Open(
        std::make_shared<MemoryBlobSource>(testing::AssembleEstargz(
            absl::string_view(w.blob).substr(0, w.result.toc_offset), edited)),
        {});
    if (!e.ok()) return e.status();
    return VerifyLayer(**e).status();
  };
  const std::string ours = "2020-09-13T12:26:40.6Z";
  EXPECT_TRUE(verify_with(ours, "2020-09-13T12:26:41Z").ok());
  EXPECT_TRUE(verify_with(ours, "2020-09-13T12:26:40Z").ok());
  absl::Status s = verify_with(ours, "2020-09-13T12:26:42Z");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("(mtime)"));
  // A TOC linking "usr" to another file than the tar's chain is refused.
  s = verify_with("\"linkName\": \"k\"", "\"linkName\": \"f\"");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("hardlink target"));
}

std::vector<std::string> TocNames(const std::string& json) {
  absl::StatusOr<Toc> toc = ParseToc(PaddedTocBuffer(json));
  EXPECT_TRUE(toc.ok()) << toc.status();
  std::vector<std::string> names;
  if (!toc.ok()) return names;
  for (const TocEntry& e : toc->entries) {
    if (e.type != EntryType::kChunk) names.push_back(e.name);
  }
  return names;
}

TEST(LayerWriterTest, PrioritizedFilesComeFirst) {
  const Input in = MakeInput(4096);
  for (Compression comp : {Compression::kGzip, Compression::kZstd}) {
    LayerWriterOptions o;
    o.compression = comp;
    o.chunk_size = 4096;
    o.prioritized_files = {"data/plus1", "/app/bin/tool.hard", "./dev/null",
                           "not/there"};
    Written w = Write(in.tar, o);
    EXPECT_THAT(w.result.missing_prioritized, ElementsAreArray({"not/there"}));
    std::vector<std::string> names = TocNames(TocJson(w, comp));
    std::vector<std::string> head(names.begin(), names.begin() + 8);
    EXPECT_THAT(
        head, ElementsAreArray({"data/", "data/plus1", "app/", "app/bin/",
                                "app/bin/tool", "app/bin/tool.hard", "dev/null",
                                ".prefetch.landmark"}));
    EXPECT_EQ(names.size(), in.names.size() + 1);

    std::unique_ptr<LayerReader> r = Open(w);
    ASSERT_NE(r, nullptr);
    ASSERT_TRUE(VerifyLayer(*r).ok());
    const LayerIndex& idx = r->index();
    ASSERT_TRUE(idx.prefetch_landmark_offset().has_value());
    EXPECT_EQ(idx.prefetch_landmark_offset(),
              w.result.prefetch_landmark_offset);
    EXPECT_FALSE(idx.has_no_prefetch_landmark());
    // The descriptor's hint says the same.
    std::map<std::string, std::string> a(w.result.annotations.begin(),
                                         w.result.annotations.end());
    EXPECT_EQ(a[kPrefetchSizeAnnotation],
              absl::StrCat(*idx.prefetch_landmark_offset()));
    // The text scan of the verified TOC (the early-prefetch hint) agrees
    // with the index; the hook sees the TOC before it is parsed.
    std::optional<uint64_t> scanned;
    LayerOpenOptions ho;
    ho.toc_digest = w.result.toc_digest;
    ho.on_toc = [&](absl::string_view json) {
      scanned = ScanPrefetchLandmark(json);
    };
    ASSERT_TRUE(
        LayerReader::Open(std::make_shared<MemoryBlobSource>(w.blob), ho).ok());
    EXPECT_EQ(scanned, idx.prefetch_landmark_offset());
    std::vector<std::string> prio;
    for (uint32_t ino : idx.prioritized_files()) {
      prio.push_back(idx.Path(idx.inode(ino).dirent));
    }
    EXPECT_THAT(prio, ElementsAreArray({"data/plus1", "app/bin/tool"}));
    // Everything prioritized lies before the landmark in the blob.
    for (const Chunk& c : idx.FileChunks(*idx.Resolve("data/plus1"))) {
      EXPECT_LT(c.blob_offset, *idx.prefetch_landmark_offset());
    }
    for (const auto& [path, content] : in.files) {
      EXPECT_TRUE(ReadFile(*r, *idx.Resolve(path)) == content) << path;
    }
    // Deterministic with prioritization too.
    o.threads = 3;
    EXPECT_TRUE(Write(in.tar, o).blob == w.blob);
  }
}

TEST(LayerWriterTest, TocMatchesTheReferenceEncoding) {
  TarBuilder b;
  TarSpec s;
  s.name = "odd/a&b<c>.txt";
  s.content = "x";
  s.uid = 5;
  s.uname = "u";
  b.Add(s);
  s.name = "odd/second";
  b.Add(s);  // same uid -> name: omitted
  s.name = "odd/third";
  s.uname = "renamed";
  b.Add(s);  // changed mapping: written again
  TarSpec e;
  e.name = "empty";
  e.mtime = 0;
  b.Add(e);
  LayerWriterOptions o;
  o.chunk_size = 1;
  Written w = Write(b.Finish(), o);
  std::string json = TocJson(w, Compression::kGzip);
  EXPECT_THAT(json,
              HasSubstr("\"name\": \"odd/a\\u0026b\\u003cc\\u003e.txt\""));
  EXPECT_TRUE(absl::StartsWith(
      json, "{\n\t\"version\": 1,\n\t\"entries\": [\n\t\t{\n\t\t\t\"name\""));
  EXPECT_TRUE(absl::EndsWith(json, "\"\n\t\t}\n\t]\n}"));
  // The landmark entry, exactly as the reference writes it.
  EXPECT_THAT(json, HasSubstr(absl::StrCat(
                        "\t\t{\n\t\t\t\"name\": \".no.prefetch.landmark\",\n"
                        "\t\t\t\"type\": \"reg\",\n\t\t\t\"size\": 1,\n"
                        "\t\t\t\"offset\": ")));
  size_t n_user = 0;
  for (size_t p = json.find("\"userName\""); p != std::string::npos;
       p = json.find("\"userName\"", p + 1)) {
    ++n_user;
  }
  EXPECT_EQ(n_user, 2u);
  // Empty file: digest of nothing, no offset, no chunkDigest; mtime 0 omitted.
  size_t at = json.find("\"name\": \"empty\"");
  ASSERT_NE(at, std::string::npos);
  std::string empty_entry = json.substr(at, json.find('}', at) - at);
  EXPECT_THAT(empty_entry, HasSubstr("\"digest\": \"sha256:e3b0c442"));
  EXPECT_THAT(empty_entry, ::testing::Not(HasSubstr("offset")));
  EXPECT_THAT(empty_entry, ::testing::Not(HasSubstr("modtime")));
  EXPECT_THAT(empty_entry, ::testing::Not(HasSubstr("chunkDigest")));
  // chunk size 1: every chunk is full and carries chunkSize.
  EXPECT_THAT(json, HasSubstr("\"chunkSize\": 1,"));
  // Annotations.
  // (No prefetch-size: nothing is prioritized. The TOC offset is the
  // footer's, where the TOC's gzip member starts.)
  EXPECT_THAT(w.result.annotations,
              ElementsAreArray({std::pair<std::string, std::string>(
                                    "containerd.io/snapshot/stargz/toc.digest",
                                    w.result.toc_digest.ToString()),
                                std::pair<std::string, std::string>(
                                    "io.containers.estargz.uncompressed-size",
                                    absl::StrCat(w.result.uncompressed_size)),
                                std::pair<std::string, std::string>(
                                    "io.lazypull.toc-offset",
                                    absl::StrCat(w.result.toc_offset))}));
  EXPECT_EQ(w.blob.substr(w.result.toc_offset, 2), "\x1f\x8b");
  EXPECT_EQ(w.result.toc_offset + w.result.toc_compressed_size + 51,
            w.blob.size());
}

TEST(LayerWriterTest, ZstdAnnotationsAndFooter) {
  const Input in = MakeInput(65536);
  LayerWriterOptions o;
  o.compression = Compression::kZstd;
  o.chunk_size = 65536;
  o.level = 19;
  Written w = Write(in.tar, o);
  const LayerWriteResult& r = w.result;
  std::map<std::string, std::string> a(r.annotations.begin(),
                                       r.annotations.end());
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(a["io.containers.zstd-chunked.manifest-position"],
            absl::StrCat(r.toc_offset, ":", r.toc_compressed_size, ":",
                         r.toc_uncompressed_size, ":1"));
  EXPECT_EQ(a["io.containers.zstd-chunked.manifest-checksum"],
            Sha256::Of(absl::string_view(w.blob).substr(r.toc_offset,
                                                        r.toc_compressed_size))
                .ToString());
  EXPECT_EQ(a.count("io.github.containers.zstd-chunked.manifest-checksum"), 0u);
  absl::string_view tail = absl::string_view(w.blob).substr(w.blob.size() - 48);
  EXPECT_EQ(tail.substr(0, 8),
            absl::string_view("\x50\x2a\x4d\x18\x28\0\0\0", 8));
  EXPECT_EQ(tail.substr(40), "GnUlInUx");
  EXPECT_EQ(r.toc_offset + r.toc_compressed_size + 48, w.blob.size());
  EXPECT_NE(Open(w), nullptr);
}

TEST(LayerWriterTest, Levels) {
  const Input in = MakeInput(65536);
  size_t sizes[10] = {};
  for (int level = 1; level <= 9; ++level) {
    LayerWriterOptions o;
    o.level = level;
    Written w = Write(in.tar, o);
    sizes[level] = w.blob.size();
    std::unique_ptr<LayerReader> r = Open(w);
    ASSERT_NE(r, nullptr);
    EXPECT_TRUE(VerifyLayer(*r).ok()) << level;
  }
  EXPECT_GT(sizes[1], sizes[9]);
  EXPECT_GE(sizes[6], sizes[9]);
}

// Prioritized files are compressed harder (gzip: level 9 unless said
// otherwise): the prefetch range is smaller; the rest keeps the level, and
// the output stays the same whatever the threads.
TEST(LayerWriterTest, PrioritizedFilesAtAHigherLevel) {
  std::mt19937 rng(7);
  const char* words[] = {"lazy",    "pull",   "chunk",    "member", "landmark",
                         "inflate", "verify", "registry", "layer",  "toc"};
  auto text = [&](size_t n) {
    std::string t;
    while (t.size() < n) {
      t += words[rng() % 10];
      t += (rng() % 7 == 0) ? '\n' : ' ';
    }
    return t;
  };
  TarBuilder b;
  b.Dir("app/");
  for (int i = 0; i < 8; ++i) {
    b.File(absl::StrCat("app/hot", i), text(100000));
    b.File(absl::StrCat("app/cold", i), text(100000));
  }
  const std::string tar = b.Finish();
  LayerWriterOptions o;
  for (int i = 0; i < 8; ++i) {
    o.prioritized_files.push_back(absl::StrCat("app/hot", i));
  }
  Written hard = Write(tar, o);  // default: 9 for the prioritized files
  o.prioritized_level = 6;       // the layer's level
  Written same = Write(tar, o);
  ASSERT_TRUE(hard.result.prefetch_landmark_offset.has_value());
  ASSERT_TRUE(same.result.prefetch_landmark_offset.has_value());
  EXPECT_LT(*hard.result.prefetch_landmark_offset,
            *same.result.prefetch_landmark_offset);
  // What follows the landmark is compressed the same way in both.
  EXPECT_EQ(hard.result.toc_offset - *hard.result.prefetch_landmark_offset,
            same.result.toc_offset - *same.result.prefetch_landmark_offset);
  for (const Written* w : {&hard, &same}) {
    std::unique_ptr<LayerReader> r = Open(*w);
    ASSERT_NE(r, nullptr);
    EXPECT_TRUE(VerifyLayer(*r).ok());
  }
  o.prioritized_level = 0;
  o.threads = 4;
  EXPECT_TRUE(Write(tar, o).blob == hard.blob);
}

// Many small files: with a min chunk size they share members, each TOC
// entry saying where its payload starts (innerOffset, encoded right after
// offset as the reference's struct orders it); landmarks still start one.
TEST(LayerWriterTest, MinChunkSizeSharesMembersAmongSmallFiles) {
  TarBuilder b;
  std::map<std::string, std::string> files;
  for (int i = 0; i < 120; ++i) {
    TarSpec s;
    s.name = absl::StrCat("etc/f", i);
    s.content = absl::StrCat("config ", i, " ", Content(200 + 13 * i, i));
    files[s.name] = s.content;
    b.Add(s);
  }
  TarSpec big;
  big.name = "usr/big";
  big.content = Content(300000, 9);
  files[big.name] = big.content;
  b.Add(big);
  const std::string tar = b.Finish();
  for (Compression comp : {Compression::kGzip, Compression::kZstd}) {
    SCOPED_TRACE(static_cast<int>(comp));
    LayerWriterOptions o;
    o.compression = comp;
    o.chunk_size = 64 << 10;
    o.prioritized_files = {"etc/f7", "etc/f3"};
    const Written apart = Write(tar, o);
    o.min_chunk_size = 16 << 10;
    const Written shared = Write(tar, o);
    ASSERT_FALSE(shared.blob.empty());
    EXPECT_LT(shared.blob.size(), apart.blob.size());

    std::unique_ptr<LayerReader> r = Open(shared);
    ASSERT_NE(r, nullptr);
    const LayerIndex& idx = r->index();
    absl::flat_hash_set<uint64_t> starts;
    for (const Chunk& c : idx.chunks()) starts.insert(c.blob_offset);
    // 125 chunks (120 files, 5 of the big one) in few members: ~180 KB of
    // small files and their headers in 16 KiB groups (~12), the big file's
    // 64 KiB chunks (5), the landmark's member.
    EXPECT_LT(starts.size(), 25u);
    EXPECT_GT(starts.size(), 12u);
    for (const auto& [path, content] : files) {
      std::optional<uint32_t> ino = idx.Resolve(path);
      ASSERT_TRUE(ino.has_value()) << path;
      EXPECT_TRUE(ReadFile(*r, *ino) == content) << path;
    }
    absl::StatusOr<VerifyResult> v = VerifyLayer(*r);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->diff_id, shared.result.diff_id);
    // The landmark starts a member: the prefetch range ends at it and holds
    // exactly the prioritized files.
    ASSERT_TRUE(shared.result.prefetch_landmark_offset.has_value());
    EXPECT_TRUE(starts.contains(*shared.result.prefetch_landmark_offset));
    for (const char* p : {"etc/f7", "etc/f3"}) {
      const Chunk& c = idx.chunks()[idx.inode(*idx.Resolve(p)).first_chunk];
      EXPECT_LT(c.blob_offset, *shared.result.prefetch_landmark_offset) << p;
    }
    const Chunk& after =
        idx.chunks()[idx.inode(*idx.Resolve("etc/f0")).first_chunk];
    EXPECT_GE(after.blob_offset, *shared.result.prefetch_landmark_offset);

    const std::string json = TocJson(shared, comp);
    size_t inner_keys = 0, first_member = 0;
    for (size_t at = json.find("\"innerOffset\": "); at != std::string::npos;
         at = json.find("\"innerOffset\": ", at + 1)) {
      ++inner_keys;
      // Right after the entry's offset (absent only when it is 0: the
      // blob's first member, omitted as Go's omitempty does).
      const size_t line = json.rfind('\n', json.rfind('\n', at) - 1) + 1;
      const size_t entry = json.rfind('{', at);
      if (json.substr(entry, at - entry).find("\"offset\": ") ==
          std::string::npos) {
        ++first_member;
        continue;
      }
      EXPECT_TRUE(absl::StartsWith(
          absl::StripLeadingAsciiWhitespace(json.substr(line, at - line)),
          "\"offset\": "))
          << json.substr(line, at - line + 20);
    }
    EXPECT_LE(first_member, 2u) << "only the first prioritized files";
    EXPECT_EQ(json.find("\"offset\": 0,"), std::string::npos);
    EXPECT_GT(inner_keys, 100u);
    EXPECT_THAT(TocJson(apart, comp), ::testing::Not(HasSubstr("innerOffset")));
  }
}

absl::Status WriteError(absl::string_view tar, LayerWriterOptions o = {}) {
  StringBlobSink sink;
  return WriteLayer(tar, o, &sink).status();
}

TEST(LayerWriterTest, Refusals) {
  TarBuilder ok;
  ok.File("a", "1");
  LayerWriterOptions o;
  o.chunk_size = 0;
  EXPECT_EQ(WriteError(ok.Finish(), o).code(),
            absl::StatusCode::kInvalidArgument);
  o.chunk_size = 4096;
  o.level = 10;
  EXPECT_EQ(WriteError(ok.Finish(), o).code(),
            absl::StatusCode::kInvalidArgument);
  o.compression = Compression::kZstd;
  o.level = 20;
  EXPECT_EQ(WriteError(ok.Finish(), o).code(),
            absl::StatusCode::kInvalidArgument);
  o.level = 0;
  o.min_chunk_size = (uint64_t{1} << 30) + 1;
  EXPECT_THAT(WriteError(ok.Finish(), o).message(),
              HasSubstr("min chunk size"));

  TarBuilder climb;
  climb.File("../../etc/passwd", "x");
  EXPECT_THAT(WriteError(climb.Finish()).message(), HasSubstr("climbs"));
  TarBuilder bad_link;
  bad_link.Hardlink("hl", "../../etc/passwd");
  EXPECT_THAT(WriteError(bad_link.Finish()).message(), HasSubstr("climbs"));
  TarBuilder missing;
  missing.Hardlink("hl", "nowhere");
  EXPECT_THAT(WriteError(missing.Finish()).message(),
              HasSubstr("would not be readable"));
  std::string garbage(2048, 'g');
  EXPECT_THAT(WriteError(garbage).message(), HasSubstr("checksum"));
  // A TOC readers would refuse (too many chunks: --chunk-size 1 on a few
  // MB reached 512 MiB) is refused when written, not when read.
  TarBuilder many;
  many.File("f", std::string(3000, 'x'));
  o = LayerWriterOptions();
  o.chunk_size = 1;
  o.max_toc_size = 64 << 10;
  EXPECT_THAT(WriteError(many.Finish(), o).message(),
              HasSubstr("use a larger --chunk-size"));

  class FailingSink : public BlobSink {
   public:
    absl::Status Write(absl::string_view) override {
      return absl::ResourceExhaustedError("disk full");
    }
  } failing;
  o = LayerWriterOptions();
  o.threads = 2;
  EXPECT_THAT(WriteLayer(MakeInput(4096).tar, o, &failing).status().message(),
              HasSubstr("disk full"));
}

TEST(LayerWriterTest, EmptyTarAndDuplicates) {
  LayerWriterOptions o;
  Written w = Write(std::string(1024, '\0'), o);
  std::unique_ptr<LayerReader> r = Open(w);
  ASSERT_NE(r, nullptr);
  EXPECT_TRUE(r->index().has_no_prefetch_landmark());
  EXPECT_EQ(r->index().toc_entry_count(), 1u);

  // A later entry with the same cleaned name replaces the earlier one.
  TarBuilder b;
  b.File("f", "old");
  b.File("g", "g");
  b.File("./f", "new");
  w = Write(b.Finish(), o);
  r = Open(w);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("f")), "new");
  EXPECT_EQ(r->index().toc_entry_count(), 3u);

  // `tar --append` of an updated file that hardlinks point to: they keep
  // the old content on extraction. The first link becomes a copy of the
  // old file, the second a link to that copy (they named the new entry,
  // ahead of it: a tar stream plain clients failed on).
  TarBuilder appended;
  appended.File("x", "old");
  appended.Hardlink("hl", "x");
  appended.Hardlink("hl2", "x");
  appended.File("x", "new content");
  w = Write(appended.Finish(), o);
  r = Open(w);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("x")), "new content");
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("hl")), "old");
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("hl2")), "old");
  EXPECT_EQ(r->index().inode(*r->index().Resolve("x")).nlink, 1u);
  EXPECT_EQ(r->index().inode(*r->index().Resolve("hl")).nlink, 2u);
  // A link replaced before its target is: the next link takes the copy.
  TarBuilder relinked;
  relinked.File("x", "x0");
  relinked.Hardlink("l", "x");
  relinked.Hardlink("m", "x");
  relinked.File("l", "l1");
  relinked.File("x", "x1");
  w = Write(relinked.Finish(), o);
  r = Open(w);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("x")), "x1");
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("l")), "l1");
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("m")), "x0");
  // The same file appended again unchanged: the earlier entry stands.
  TarBuilder same;
  same.File("x", "same");
  same.Hardlink("hl", "x");
  same.File("x", "same");
  w = Write(same.Finish(), o);
  r = Open(w);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(ReadFile(*r, *r->index().Resolve("hl")), "same");
  EXPECT_EQ(r->index().inode(*r->index().Resolve("x")).nlink, 2u);
}

}  // namespace
}  // namespace lazypull
