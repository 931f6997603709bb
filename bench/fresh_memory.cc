// What first touching fresh memory costs on this machine (bench/RESULTS.md,
// "Prefetch bytes used as they land"): a memset of a fresh 4 MiB anonymous
// mapping, the same after MADV_POPULATE_WRITE, and a memset of a huge page
// reused from the previous round. On the project's VMs the hypervisor backs
// guest memory on first touch, which makes fresh buffers cost 4-5 ms per MiB.
//
//   bazel run -c opt //bench:fresh_memory
#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace {

double Ms(std::chrono::steady_clock::time_point from) {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - from)
      .count();
}

char* Map(size_t n) {
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
}

}  // namespace

int main() {
  constexpr size_t kSize = 4 << 20, kHuge = 2 << 20;
  for (int round = 0; round < 3; ++round) {
    char* a = Map(kSize);
    char* b = Map(kSize);
    char* h = Map(kSize + kHuge);
    if (a == nullptr || b == nullptr || h == nullptr) {
      std::perror("mmap");
      return 1;
    }
    auto t = std::chrono::steady_clock::now();
    std::memset(a, 1, kSize);
    const double fault_ms = Ms(t);
    t = std::chrono::steady_clock::now();
    const int rc = madvise(b, kSize, MADV_POPULATE_WRITE);
    const double populate_ms = Ms(t);
    t = std::chrono::steady_clock::now();
    std::memset(b, 1, kSize);
    const double after_populate_ms = Ms(t);
    char* aligned = reinterpret_cast<char*>(
        (reinterpret_cast<uintptr_t>(h) + kHuge - 1) & ~(kHuge - 1));
    madvise(aligned, kSize, MADV_HUGEPAGE);
    t = std::chrono::steady_clock::now();
    std::memset(aligned, 1, kSize);
    const double huge_ms = Ms(t);
    std::printf(
        "round %d: memset of fresh 4 MiB %.2f ms; MADV_POPULATE_WRITE %.2f ms "
        "(%s) then memset %.2f ms; with MADV_HUGEPAGE %.2f ms\n",
        round, fault_ms, populate_ms, rc == 0 ? "ok" : "unsupported",
        after_populate_ms, huge_ms);
    munmap(a, kSize);
    munmap(b, kSize);
    munmap(h, kSize + kHuge);
  }
  return 0;
}
