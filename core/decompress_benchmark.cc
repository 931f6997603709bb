// Micro-benchmarks of decompression on real data: gzip inflate with ISA-L
// (core's DecompressRange and StreamDecompressor) against zlib's inflate on
// the same gzip members, and zstd (core's paths, and plain
// ZSTD_decompressDCtx as the floor) on level-3 frames of the same pieces.
//
// The members are built at start-up from a real file tree: a tar-like
// concatenation (512-byte header + content padded to 512) of the regular
// files under $LAZYPULL_BENCH_TREE (default /usr, in sorted path order) up to
// $LAZYPULL_BENCH_BYTES (default 256 MiB), cut into 4 MiB pieces, each
// compressed as one gzip member with zlib level 9 (what estargz.Build writes
// by default) and as one zstd frame at level 3. Throughput is bytes of
// uncompressed output per second; one iteration decompresses one 4 MiB
// piece, cycling through all of them.
//
//   bazel build -c opt //core:decompress_benchmark
//   bazel-bin/core/decompress_benchmark --benchmark_min_time=2
#include <zlib.h>
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

std::string GzipLevel9(absl::string_view in) {
  z_stream z{};
  if (deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    std::abort();
  }
  std::string out(deflateBound(&z, in.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(z.total_out);
  deflateEnd(&z);
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
  std::vector<std::string> members;  // one gzip member / zstd frame per piece
  std::vector<size_t> sizes;         // uncompressed size of each piece
  uint64_t raw_bytes = 0;
  uint64_t compressed_bytes = 0;
};

const Corpus& GetCorpus(Compression codec) {
  static const Corpus* corpora[2] = {nullptr, nullptr};
  const Corpus*& corpus = corpora[static_cast<int>(codec)];
  if (corpus != nullptr) return *corpus;
  corpus = [codec] {
    const char* tree = std::getenv("LAZYPULL_BENCH_TREE");
    std::string root = tree != nullptr && *tree != '\0' ? tree : "/usr";
    uint64_t cap = EnvBytes("LAZYPULL_BENCH_BYTES", uint64_t{256} << 20);
    std::string raw = TarLikeTree(root, cap);
    auto* c = new Corpus();
    size_t n = (raw.size() + kPieceSize - 1) / kPieceSize;
    c->members.resize(n);
    c->sizes.resize(n);
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i = next++; i < n; i = next++) {
        absl::string_view piece =
            absl::string_view(raw).substr(i * kPieceSize, kPieceSize);
        c->sizes[i] = piece.size();
        c->members[i] =
            codec == Compression::kGzip ? GzipLevel9(piece) : ZstdLevel3(piece);
      }
    };
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency());
         ++t) {
      threads.emplace_back(work);
    }
    for (std::thread& t : threads) t.join();
    c->raw_bytes = raw.size();
    for (const std::string& m : c->members) c->compressed_bytes += m.size();
    // Sanity: the first piece round-trips exactly.
    if (n > 0) {
      std::string out(c->sizes[0], '\0');
      if (!DecompressRange(codec, c->members[0], 0, absl::MakeSpan(out)).ok() ||
          out != absl::string_view(raw).substr(0, c->sizes[0])) {
        std::fprintf(stderr, "round trip failed\n");
        std::abort();
      }
    }
    std::fprintf(stderr,
                 "corpus: %s, %llu bytes in %zu pieces of 4 MiB, %s: "
                 "%llu bytes (%.1f%%)\n",
                 root.c_str(), static_cast<unsigned long long>(c->raw_bytes), n,
                 codec == Compression::kGzip ? "gzip -9" : "zstd -3",
                 static_cast<unsigned long long>(c->compressed_bytes),
                 c->raw_bytes ? 100.0 * c->compressed_bytes / c->raw_bytes : 0);
    return c;
  }();
  return *corpus;
}

void SetCounters(benchmark::State& state, const Corpus& c, uint64_t bytes) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["ratio_pct"] =
      c.raw_bytes ? 100.0 * c.compressed_bytes / c.raw_bytes : 0;
  state.counters["corpus_MB"] = c.raw_bytes / 1e6;
}

// state.range(0): 0 = gzip (ISA-L), 1 = zstd.
Compression Codec(const benchmark::State& state) {
  return state.range(0) == 0 ? Compression::kGzip : Compression::kZstd;
}

void BM_DecompressRange(benchmark::State& state) {
  const Corpus& c = GetCorpus(Codec(state));
  if (c.members.empty()) return state.SkipWithError("empty corpus");
  std::vector<char> out(kPieceSize);
  size_t i = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    absl::Status st = DecompressRange(Codec(state), c.members[i], 0,
                                      absl::MakeSpan(out.data(), c.sizes[i]));
    if (!st.ok()) return state.SkipWithError(std::string(st.message()).c_str());
    benchmark::DoNotOptimize(out.data());
    bytes += c.sizes[i];
    i = (i + 1) % c.members.size();
  }
  SetCounters(state, c, bytes);
}
BENCHMARK(BM_DecompressRange)->Arg(0)->Arg(1)->UseRealTime();

void BM_StreamDecompressor(benchmark::State& state) {
  const Corpus& c = GetCorpus(Codec(state));
  if (c.members.empty()) return state.SkipWithError("empty corpus");
  std::unique_ptr<StreamDecompressor> d = StreamDecompressor::New(Codec(state));
  std::vector<char> out(kPieceSize);
  size_t i = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    d->Reset();
    absl::string_view in = c.members[i];
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
    i = (i + 1) % c.members.size();
  }
  SetCounters(state, c, bytes);
}
BENCHMARK(BM_StreamDecompressor)->Arg(0)->Arg(1)->UseRealTime();

void BM_ZlibInflate(benchmark::State& state) {
  const Corpus& c = GetCorpus(Compression::kGzip);
  if (c.members.empty()) return state.SkipWithError("empty corpus");
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
    return state.SkipWithError("inflateInit2");
  }
  std::vector<char> out(kPieceSize);
  size_t i = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    inflateReset(&z);
    const std::string& m = c.members[i];
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(m.data()));
    z.avail_in = static_cast<uInt>(m.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    if (inflate(&z, Z_FINISH) != Z_STREAM_END || z.total_out != c.sizes[i]) {
      inflateEnd(&z);
      return state.SkipWithError("zlib inflate failed");
    }
    benchmark::DoNotOptimize(out.data());
    bytes += c.sizes[i];
    i = (i + 1) % c.members.size();
  }
  inflateEnd(&z);
  SetCounters(state, c, bytes);
}
BENCHMARK(BM_ZlibInflate)->UseRealTime();

void BM_ZstdDecompressDCtx(benchmark::State& state) {
  const Corpus& c = GetCorpus(Compression::kZstd);
  if (c.members.empty()) return state.SkipWithError("empty corpus");
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  std::vector<char> out(kPieceSize);
  size_t i = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    size_t n = ZSTD_decompressDCtx(dctx, out.data(), out.size(),
                                   c.members[i].data(), c.members[i].size());
    if (ZSTD_isError(n) || n != c.sizes[i]) {
      ZSTD_freeDCtx(dctx);
      return state.SkipWithError("ZSTD_decompressDCtx failed");
    }
    benchmark::DoNotOptimize(out.data());
    bytes += n;
    i = (i + 1) % c.members.size();
  }
  ZSTD_freeDCtx(dctx);
  SetCounters(state, c, bytes);
}
BENCHMARK(BM_ZstdDecompressDCtx)->UseRealTime();

}  // namespace
}  // namespace lazypull
