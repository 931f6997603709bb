// Micro-benchmark: parsing a large TOC and building its LayerIndex.
//
// The TOC is synthetic but shaped like the reference writer's output
// (json.MarshalIndent with tab indentation, Go's omitempty field order): a
// `.no.prefetch.landmark` first, then ~100,000 entries of a distro-like tree
// (package directories with subdirectories, regular files of log-uniform
// sizes, empty files, symlinks, hardlinks, and a few large files split into
// 4 MiB chunks with `chunk` entries), realistic names, modtimes and digests.
// It is generated once, in memory, before timing.
//
//   bazel build -c opt //core:toc_benchmark
//   bazel-bin/core/toc_benchmark --benchmark_min_time=1
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "benchmark/benchmark.h"
#include "core/layer_index.h"
#include "core/toc.h"

namespace lazypull {
namespace {

constexpr size_t kTargetEntries = 100'000;
constexpr uint64_t kChunkSize = uint64_t{4} << 20;

class TocGenerator {
 public:
  std::string Generate() {
    json_ = "{\n\t\"version\": 1,\n\t\"entries\": [\n";
    Reg(".no.prefetch.landmark", 1, /*with_owner=*/false);
    const char* kBases[] = {"usr/lib/python3/dist-packages/",
                            "usr/share/doc/",
                            "usr/lib/x86_64-linux-gnu/",
                            "usr/share/locale/",
                            "usr/include/",
                            "usr/share/",
                            "opt/app/node_modules/",
                            "var/lib/"};
    for (const char* d :
         {"usr/", "usr/lib/", "usr/lib/python3/",
          "usr/lib/python3/dist-packages/", "usr/share/", "usr/share/doc/",
          "usr/lib/x86_64-linux-gnu/", "usr/share/locale/", "usr/include/",
          "opt/", "opt/app/", "opt/app/node_modules/", "var/", "var/lib/"}) {
      Dir(d);
    }
    while (!Full()) {
      std::string pkg =
          absl::StrCat(kBases[rng_() % 8], Word(), "-", Word(),
                       rng_() % 3 ? "" : absl::StrCat(rng_() % 10));
      Dir(pkg + "/");
      std::vector<std::string> dirs = {pkg + "/"};
      for (int s = static_cast<int>(rng_() % 4); s > 0 && !Full(); --s) {
        dirs.push_back(absl::StrCat(dirs[rng_() % dirs.size()], Word(), "/"));
        Dir(dirs.back());
      }
      for (int f = 5 + static_cast<int>(rng_() % 30); f > 0 && !Full(); --f) {
        std::string name = absl::StrCat(dirs[rng_() % dirs.size()], Word(), "_",
                                        Word(), Ext());
        if (!used_.insert(name).second) continue;  // keep names unique
        uint32_t kind = rng_() % 1000;
        if (kind < 50) {
          Symlink(name);
        } else if (kind < 55 && !files_.empty()) {
          Hardlink(name, files_[rng_() % files_.size()]);
        } else if (kind < 80) {
          Reg(name, 0, true);
        } else if (kind < 85 && entries_ + 20 < kTargetEntries) {
          Reg(name, (uint64_t{8} << 20) + rng_() % (uint64_t{56} << 20), true);
        } else {
          // log-uniform from 64 bytes to 2 MiB
          double e = 6 + (rng_() % 1000) / 1000.0 * 15;
          Reg(name, static_cast<uint64_t>(std::exp2(e)), true);
        }
      }
    }
    json_ += "\n\t]\n}";
    return std::move(json_);
  }
  size_t entries() const { return entries_; }
  uint64_t data_end() const { return offset_; }

 private:
  bool Full() const { return entries_ >= kTargetEntries; }

  std::string Word() {
    static const char* kSyl[] = {"lib", "py",  "core", "net", "util", "ssl",
                                 "x",   "gtk", "io",   "fmt", "data", "mo",
                                 "zen", "tar", "gz",   "img", "ui",   "re"};
    std::string w;
    for (int n = 1 + static_cast<int>(rng_() % 3); n > 0; --n) {
      w += kSyl[rng_() % 18];
    }
    return w;
  }
  std::string Ext() {
    static const char* kExt[] = {".py", ".so.1.2.0", ".h",   ".txt", ".json",
                                 ".mo", ".gz",       ".pyc", ".js",  ""};
    return kExt[rng_() % 10];
  }
  std::string Digest() {
    return absl::StrFormat("\"sha256:%016x%016x%016x%016x\"", rng_(), rng_(),
                           rng_(), rng_());
  }
  std::string ModTime() {
    uint64_t t = ++clock_;
    return absl::StrFormat("\"2023-%02d-%02dT%02d:%02d:%02dZ\"",
                           1 + t / 86400 % 12, 1 + t / 3600 % 28, t / 60 % 24,
                           t % 60, (t * 7) % 60);
  }
  static std::string Q(absl::string_view s) {
    return absl::StrCat("\"", s, "\"");
  }

  void Entry(const std::vector<std::pair<const char*, std::string>>& fields) {
    if (entries_++ > 0) json_ += ",\n";
    json_ += "\t\t{\n";
    for (size_t i = 0; i < fields.size(); ++i) {
      absl::StrAppend(&json_, "\t\t\t\"", fields[i].first,
                      "\": ", fields[i].second,
                      i + 1 < fields.size() ? ",\n" : "\n");
    }
    json_ += "\t\t}";
  }
  void Owner(std::vector<std::pair<const char*, std::string>>* f) {
    if (rng_() % 10 == 0) {
      f->push_back({"uid", "1000"});
      f->push_back({"gid", "1000"});
      if (!named_user_) f->push_back({"userName", Q("app")});
      if (!named_user_) f->push_back({"groupName", Q("app")});
      named_user_ = true;
    } else if (!named_root_) {
      f->push_back({"userName", Q("root")});
      f->push_back({"groupName", Q("root")});
      named_root_ = true;
    }
  }
  void Dir(const std::string& name) {
    std::vector<std::pair<const char*, std::string>> f = {
        {"name", Q(name)},
        {"type", Q("dir")},
        {"modtime", ModTime()},
        {"mode", "493"}};
    Owner(&f);
    Entry(f);
  }
  void Symlink(const std::string& name) {
    Entry({{"name", Q(name)},
           {"type", Q("symlink")},
           {"modtime", ModTime()},
           {"linkName", Q(absl::StrCat("../", Word(), "/", Word(), ".so.1"))},
           {"mode", "511"}});
  }
  void Hardlink(const std::string& name, const std::string& target) {
    Entry({{"name", Q(name)},
           {"type", Q("hardlink")},
           {"modtime", ModTime()},
           {"linkName", Q(target)},
           {"mode", "420"}});
  }
  void Reg(const std::string& name, uint64_t size, bool with_owner) {
    std::vector<std::pair<const char*, std::string>> f = {{"name", Q(name)},
                                                          {"type", Q("reg")}};
    if (size > 0) f.push_back({"size", absl::StrCat(size)});
    if (with_owner) {
      f.push_back({"modtime", ModTime()});
      f.push_back({"mode", rng_() % 5 ? "420" : "493"});
      Owner(&f);
    }
    if (size == 0) {
      f.push_back({"digest", Q("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4"
                               "649b934ca495991b7852b855")});
      Entry(f);
      files_.push_back(name);
      return;
    }
    offset_ += 512;  // the tar header, in the previous member
    f.push_back({"offset", absl::StrCat(offset_)});
    f.push_back({"digest", Digest()});
    if (size > kChunkSize) f.push_back({"chunkSize", absl::StrCat(kChunkSize)});
    f.push_back({"chunkDigest", Digest()});
    Entry(f);
    files_.push_back(name);
    offset_ += std::min(size, kChunkSize) * 4 / 10 + 20;
    for (uint64_t off = kChunkSize; off < size; off += kChunkSize) {
      std::vector<std::pair<const char*, std::string>> c = {
          {"name", Q(name)},
          {"type", Q("chunk")},
          {"offset", absl::StrCat(offset_)},
          {"chunkOffset", absl::StrCat(off)}};
      if (size - off >= kChunkSize) {
        c.push_back({"chunkSize", absl::StrCat(kChunkSize)});
      }
      c.push_back({"chunkDigest", Digest()});
      Entry(c);
      offset_ += std::min(size - off, kChunkSize) * 4 / 10 + 20;
    }
  }

  std::mt19937_64 rng_{20240601};
  std::string json_;
  size_t entries_ = 0;
  uint64_t offset_ = 0;
  uint64_t clock_ = 0;
  bool named_root_ = false;
  bool named_user_ = false;
  std::vector<std::string> files_;
  absl::flat_hash_set<std::string> used_;
};

struct TestToc {
  std::string json;  // padded for ParseToc
  size_t entries = 0;
  uint64_t data_end = 0;
};

const TestToc& GetToc() {
  static const TestToc* toc = [] {
    TocGenerator g;
    std::string json = g.Generate();
    auto* t = new TestToc{PaddedTocBuffer(json), g.entries(), g.data_end()};
    absl::StatusOr<Toc> parsed = ParseToc(t->json);
    if (!parsed.ok()) {
      std::fprintf(stderr, "synthetic TOC does not parse: %s\n",
                   std::string(parsed.status().message()).c_str());
      std::abort();
    }
    absl::StatusOr<LayerIndex> idx = LayerIndex::Build(*parsed, t->data_end);
    if (!idx.ok()) {
      std::fprintf(stderr, "synthetic TOC does not index: %s\n",
                   std::string(idx.status().message()).c_str());
      std::abort();
    }
    std::fprintf(stderr,
                 "synthetic TOC: %zu entries, %zu JSON bytes; index: %zu "
                 "inodes, %zu dirents, %zu chunks\n",
                 t->entries, t->json.size(), idx->inodes().size(),
                 idx->dirents().size(), idx->chunks().size());
    return t;
  }();
  return *toc;
}

void SetCounters(benchmark::State& state) {
  const TestToc& t = GetToc();
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(t.entries));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(t.json.size()));
  state.counters["entries"] = static_cast<double>(t.entries);
}

void BM_ParseToc(benchmark::State& state) {
  const TestToc& t = GetToc();
  for (auto _ : state) {
    absl::StatusOr<Toc> toc = ParseToc(t.json);
    if (!toc.ok()) return state.SkipWithError("ParseToc failed");
    benchmark::DoNotOptimize(toc->entries.data());
  }
  SetCounters(state);
}
BENCHMARK(BM_ParseToc)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_BuildIndex(benchmark::State& state) {
  const TestToc& t = GetToc();
  absl::StatusOr<Toc> toc = ParseToc(t.json);
  if (!toc.ok()) return state.SkipWithError("ParseToc failed");
  for (auto _ : state) {
    absl::StatusOr<LayerIndex> idx = LayerIndex::Build(*toc, t.data_end);
    if (!idx.ok()) return state.SkipWithError("Build failed");
    benchmark::DoNotOptimize(idx->inodes().data());
  }
  SetCounters(state);
}
BENCHMARK(BM_BuildIndex)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ParseTocAndBuildIndex(benchmark::State& state) {
  const TestToc& t = GetToc();
  for (auto _ : state) {
    absl::StatusOr<Toc> toc = ParseToc(t.json);
    if (!toc.ok()) return state.SkipWithError("ParseToc failed");
    absl::StatusOr<LayerIndex> idx = LayerIndex::Build(*toc, t.data_end);
    if (!idx.ok()) return state.SkipWithError("Build failed");
    benchmark::DoNotOptimize(idx->inodes().data());
  }
  SetCounters(state);
}
BENCHMARK(BM_ParseTocAndBuildIndex)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace lazypull
