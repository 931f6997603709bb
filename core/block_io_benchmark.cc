// Cache file I/O: io_uring (batched, one submit per batch) vs pread/pwrite,
// on files in the page cache (the warm-cache case) and with O_DIRECT-free
// writes of new chunk files.
//
//   bazel run -c opt //core:block_io_benchmark
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/block_io.h"

namespace lazypull {
namespace {

constexpr int kFiles = 16;

struct Files {
  std::string dir;
  std::vector<int> fds;
  size_t size;
  explicit Files(size_t sz) : size(sz) {
    char tmpl[] = "/tmp/blockio-benchXXXXXX";
    dir = mkdtemp(tmpl);
    std::string data(sz, 'x');
    for (int i = 0; i < kFiles; ++i) {
      std::string p = dir + "/f" + std::to_string(i);
      int fd = open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
      if (write(fd, data.data(), data.size()) != static_cast<ssize_t>(sz)) {
        abort();
      }
      fds.push_back(fd);
    }
  }
  ~Files() {
    for (int fd : fds) close(fd);
    std::string cmd = "rm -rf '" + dir + "'";
    if (system(cmd.c_str()) != 0) abort();
  }
};

std::unique_ptr<BlockIo> Make(bool uring) {
  if (!uring) return BlockIo::NewPosix();
  std::unique_ptr<BlockIo> io;
  if (!BlockIo::NewUring(64, &io).ok()) return nullptr;
  return io;
}

// Reads `batch` pieces of `piece` bytes from different files in one call.
void BM_Read(benchmark::State& state) {
  const bool uring = state.range(0) != 0;
  const size_t piece = static_cast<size_t>(state.range(1));
  const int batch = static_cast<int>(state.range(2));
  Files files(4 << 20);
  std::unique_ptr<BlockIo> io = Make(uring);
  if (io == nullptr) {
    state.SkipWithError("io_uring unavailable");
    return;
  }
  std::vector<std::string> bufs(batch, std::string(piece, '\0'));
  std::vector<IoOp> ops(batch);
  size_t k = 0;
  for (auto _ : state) {
    for (int b = 0; b < batch; ++b) {
      ops[b] = IoOp{files.fds[(k + b) % kFiles],
                    ((k * 7 + b) * piece) % (files.size - piece),
                    bufs[b].data(), piece};
    }
    ++k;
    if (!io->ReadAll(ops).ok()) state.SkipWithError("read failed");
  }
  state.SetBytesProcessed(state.iterations() * batch * piece);
  state.SetLabel(uring ? "io_uring" : "pread");
}
BENCHMARK(BM_Read)->ArgsProduct({{0, 1}, {4096, 128 << 10, 1 << 20}, {1, 8}});

void BM_WriteChunk(benchmark::State& state) {
  const bool uring = state.range(0) != 0;
  const size_t size = static_cast<size_t>(state.range(1));
  Files files(size);
  std::unique_ptr<BlockIo> io = Make(uring);
  if (io == nullptr) {
    state.SkipWithError("io_uring unavailable");
    return;
  }
  std::string data(size, 'y');
  size_t k = 0;
  for (auto _ : state) {
    IoOp op{files.fds[k++ % kFiles], 0, data.data(), size};
    if (!io->WriteAll({&op, 1}).ok()) state.SkipWithError("write failed");
  }
  state.SetBytesProcessed(state.iterations() * size);
  state.SetLabel(uring ? "io_uring" : "pwrite");
}
BENCHMARK(BM_WriteChunk)->ArgsProduct({{0, 1}, {64 << 10, 4 << 20}});

}  // namespace
}  // namespace lazypull
