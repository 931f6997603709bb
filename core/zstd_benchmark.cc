// Micro-benchmark: zstd decompression (core's DecompressRange and
// StreamDecompressor, and plain ZSTD_decompressDCtx as the floor) of level-3
// frames.
//
// The frames are built at start-up from the same input as
// core/inflate_benchmark.cc: a tar-like concatenation (512-byte header +
// content padded to 512) of the regular files under $LAZYPULL_BENCH_TREE
// (default /usr, in sorted path order) up to $LAZYPULL_BENCH_BYTES (default
// 256 MiB), cut into 4 MiB pieces, each compressed as one zstd frame at level
// 3. Throughput is bytes of uncompressed output per second; one iteration
// decompresses one 4 MiB frame, cycling through all of them.
//
//   bazel build -c opt //core:zstd_benchmark
//   bazel-bin/core/zstd_benchmark --benchmark_min_time=2
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "benchmark/benchmark.h"
#include "core/decompressor.h"

namespace lazypull {
namespace {

constexpr size_t kPieceSize = size_t{4} << 20;

uint64_t EnvBytes(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return def;
  return std::strtoull(v, nullptr, 10);
}

// A tar-like stream of the regular files under `root`, at most `cap` bytes.
std::string TarLikeTree(const std::string& root, uint64_t cap) {
  namespace fs = std::filesystem;
  std::vector<fs::path> paths;
  std::error_code ec;
  for (fs::recursive_directory_iterator
           it(root, fs::directory_options::skip_permission_denied, ec),
       end;
       it != end; it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file(ec) && !it->is_symlink(ec)) {
      paths.push_back(it->path());
    }
  }
  std::sort(paths.begin(), paths.end());
  std::string out;
  out.reserve(cap);
  for (const fs::path& p : paths) {
    if (out.size() >= cap) break;
    std::ifstream f(p, std::ios::binary);
    if (!f) continue;
    std::string data((std::istreambuf_iterator<char>(f)),
                     std::istreambuf_iterator<char>());
    char hdr[512] = {};
    std::string name = p.string();
    std::memcpy(hdr, name.data(), std::min<size_t>(name.size(), 99));
    std::snprintf(hdr + 100, 8, "%07o", 0644);
    std::snprintf(hdr + 124, 12, "%011llo",
                  static_cast<unsigned long long>(data.size()));
    hdr[156] = '0';
    std::memcpy(hdr + 257, "ustar", 6);
    out.append(hdr, sizeof(hdr));
    out.append(data);
    out.append((512 - data.size() % 512) % 512, '\0');
  }
  if (out.size() > cap) out.resize(cap);
  return out;
}

std::string ZstdLevel3(absl::string_view in) {
  std::string out(ZSTD_compressBound(in.size()), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 3);
  if (ZSTD_isError(n)) std::abort();
  out.resize(n);
  return out;
}

struct Corpus {
  std::vector<std::string> frames;  // one zstd frame per piece
  std::vector<size_t> sizes;        // uncompressed size of each piece
  uint64_t raw_bytes = 0;
  uint64_t compressed_bytes = 0;
};

const Corpus& GetCorpus() {
  static const Corpus* corpus = [] {
    const char* tree = std::getenv("LAZYPULL_BENCH_TREE");
    std::string root = tree != nullptr && *tree != '\0' ? tree : "/usr";
    uint64_t cap = EnvBytes("LAZYPULL_BENCH_BYTES", uint64_t{256} << 20);
    std::string raw = TarLikeTree(root, cap);
    auto* c = new Corpus();
    size_t n = (raw.size() + kPieceSize - 1) / kPieceSize;
    c->frames.resize(n);
    c->sizes.resize(n);
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i = next++; i < n; i = next++) {
        absl::string_view piece =
            absl::string_view(raw).substr(i * kPieceSize, kPieceSize);
        c->sizes[i] = piece.size();
        c->frames[i] = ZstdLevel3(piece);
      }
    };
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency());
         ++t) {
      threads.emplace_back(work);
    }
    for (std::thread& t : threads) t.join();
    c->raw_bytes = raw.size();
    for (const std::string& f : c->frames) c->compressed_bytes += f.size();
    if (n > 0) {
      std::string out(c->sizes[0], '\0');
      if (!DecompressRange(Compression::kZstd, c->frames[0], 0,
                           absl::MakeSpan(out))
               .ok() ||
          out != absl::string_view(raw).substr(0, c->sizes[0])) {
        std::fprintf(stderr, "zstd round trip failed\n");
        std::abort();
      }
    }
    std::fprintf(stderr,
                 "corpus: %s, %llu bytes in %zu pieces of 4 MiB, zstd -3: "
                 "%llu bytes (%.1f%%)\n",
                 root.c_str(), static_cast<unsigned long long>(c->raw_bytes), n,
                 static_cast<unsigned long long>(c->compressed_bytes),
                 c->raw_bytes ? 100.0 * c->compressed_bytes / c->raw_bytes : 0);
    return c;
  }();
  return *corpus;
}

void SetCounters(benchmark::State& state, uint64_t bytes) {
  const Corpus& c = GetCorpus();
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["ratio_pct"] =
      c.raw_bytes ? 100.0 * c.compressed_bytes / c.raw_bytes : 0;
  state.counters["corpus_MB"] = c.raw_bytes / 1e6;
}

void BM_ZstdDecompressRange(benchmark::State& state) {
  const Corpus& c = GetCorpus();
  if (c.frames.empty()) return state.SkipWithError("empty corpus");
  std::vector<char> out(kPieceSize);
  size_t i = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    absl::Status st = DecompressRange(Compression::kZstd, c.frames[i], 0,
                                      absl::MakeSpan(out.data(), c.sizes[i]));
    if (!st.ok()) return state.SkipWithError(std::string(st.message()).c_str());
    benchmark::DoNotOptimize(out.data());
    bytes += c.sizes[i];
    i = (i + 1) % c.frames.size();
  }
  SetCounters(state, bytes);
}
BENCHMARK(BM_ZstdDecompressRange)->UseRealTime();

void BM_ZstdStreamDecompressor(benchmark::State& state) {
  const Corpus& c = GetCorpus();
  if (c.frames.empty()) return state.SkipWithError("empty corpus");
  std::unique_ptr<StreamDecompressor> d =
      StreamDecompressor::New(Compression::kZstd);
  std::vector<char> out(kPieceSize);
  size_t i = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    d->Reset();
    absl::string_view in = c.frames[i];
    size_t filled = 0;
    for (;;) {
      absl::StatusOr<StreamDecompressor::Result> r =
          d->Decompress(in, absl::MakeSpan(out).subspan(filled));
      if (!r.ok()) {
        return state.SkipWithError(std::string(r.status().message()).c_str());
      }
      in.remove_prefix(r->consumed);
      filled += r->produced;
      if (r->frame_end) break;
      if (r->consumed == 0 && r->produced == 0) {
        return state.SkipWithError("no progress");
      }
    }
    if (filled != c.sizes[i]) return state.SkipWithError("wrong size");
    benchmark::DoNotOptimize(out.data());
    bytes += filled;
    i = (i + 1) % c.frames.size();
  }
  SetCounters(state, bytes);
}
BENCHMARK(BM_ZstdStreamDecompressor)->UseRealTime();

// The library alone, one-shot into a buffer of known size: the floor for the
// two above.
void BM_ZstdDecompressDCtx(benchmark::State& state) {
  const Corpus& c = GetCorpus();
  if (c.frames.empty()) return state.SkipWithError("empty corpus");
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  std::vector<char> out(kPieceSize);
  size_t i = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    size_t n = ZSTD_decompressDCtx(dctx, out.data(), out.size(),
                                   c.frames[i].data(), c.frames[i].size());
    if (ZSTD_isError(n) || n != c.sizes[i]) {
      ZSTD_freeDCtx(dctx);
      return state.SkipWithError("ZSTD_decompressDCtx failed");
    }
    benchmark::DoNotOptimize(out.data());
    bytes += n;
    i = (i + 1) % c.frames.size();
  }
  ZSTD_freeDCtx(dctx);
  SetCounters(state, bytes);
}
BENCHMARK(BM_ZstdDecompressDCtx)->UseRealTime();

}  // namespace
}  // namespace lazypull
