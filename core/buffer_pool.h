// BufferPool: large byte buffers recycled instead of given back to the
// kernel and faulted in again.
//
// The fill path allocates a buffer per range request, per span and per
// decoded chunk (hundreds of KiB to a few MiB each). Freed, glibc returns
// such buffers to the kernel (munmap or heap trimming), and the next one is
// faulted in page by page: on a fast link the page faults and the zero-fill
// of fresh buffers cost more CPU than inflating. The pool keeps freed
// buffers, up to a bound on the bytes it holds, and hands them out again.
//
// Contract:
//  - Get(n) returns a string of size n whose contents are unspecified (old
//    bytes of a recycled buffer, not zeros): the caller overwrites it all.
//    Sizes below kMinPooled are plain allocations.
//  - Dropping the last reference gives the buffer back; the pool keeps it if
//    it then holds no more than `max_idle_bytes` of capacity, else frees it.
//    A buffer may outlive its pool (it is then simply freed).
//  - The pool never holds more idle capacity than `max_idle_bytes`, so it
//    adds at most that to the process's memory.
//
// Thread-safety: Get, the deleters and the stats may run concurrently from
// any number of threads.
#ifndef LAZYPULL_CORE_BUFFER_POOL_H_
#define LAZYPULL_CORE_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace lazypull {

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  static constexpr size_t kMinPooled = 64 << 10;

  static std::shared_ptr<BufferPool> Create(size_t max_idle_bytes);
  // The process-wide pool of the fill path (16 MiB idle at most).
  static BufferPool& Default();

  // A buffer of exactly n bytes, contents unspecified (see above).
  std::shared_ptr<std::string> Get(size_t n);

  struct Stats {
    uint64_t gets = 0;        // pooled-size requests
    uint64_t reused = 0;      // of them, served by a kept buffer
    uint64_t idle_bytes = 0;  // capacity held now
  };
  Stats stats() const;

 private:
  explicit BufferPool(size_t max_idle_bytes)
      : max_idle_bytes_(max_idle_bytes) {}
  void GiveBack(std::string* s);

  const size_t max_idle_bytes_;
  mutable absl::Mutex mu_;
  // Idle buffers by capacity class (log2 of the capacity, rounded down).
  std::vector<std::unique_ptr<std::string>> idle_[64] ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_BUFFER_POOL_H_
