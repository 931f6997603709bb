// BlockIo: batched positional file I/O for the chunk cache, over io_uring
// (liburing) with a pread/pwrite fallback.
//
// A batch of reads (or writes) is prepared, submitted with one system call
// and reaped together, capped at the ring's queue depth; short transfers and
// -EAGAIN are requeued for the remainder, never ignored; `res < 0` is
// -errno and becomes a Status through ErrnoToStatus.
//
// Ring ownership: one ring per thread (BlockIo::ForThisThread()), so a ring
// is only ever touched by the thread that owns it and no cross-thread hand-off
// adds latency to a FUSE read. The kernel's support is probed once at start-up
// (io_uring_setup, and the READ/WRITE opcodes); when it is missing or
// disabled, a log line says why and every thread uses the POSIX
// implementation instead.
//
// Thread-safety: a BlockIo object belongs to one thread. ForThisThread() is
// safe from any thread.
#ifndef LAZYPULL_CORE_BLOCK_IO_H_
#define LAZYPULL_CORE_BLOCK_IO_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace lazypull {

struct IoOp {
  int fd = -1;
  uint64_t offset = 0;
  char* buf = nullptr;  // reads fill it; writes take from it
  size_t len = 0;
};

class BlockIo {
 public:
  enum class Kind { kUring, kPosix };

  virtual ~BlockIo() = default;
  virtual Kind kind() const = 0;

  // Reads every op fully. A read past the end of a file is DataLoss.
  virtual absl::Status ReadAll(absl::Span<const IoOp> ops) = 0;
  // Writes every op fully.
  virtual absl::Status WriteAll(absl::Span<const IoOp> ops) = 0;

  // This thread's instance: io_uring when the kernel supports it (and
  // LAZYPULL_NO_URING is unset), POSIX otherwise.
  static BlockIo& ForThisThread();
  // Whether io_uring is in use (probed once per process).
  static bool UringAvailable();

  // Explicit constructors, for benchmarks and tests.
  static std::unique_ptr<BlockIo> NewPosix();
  // Fails with the reason when io_uring cannot be set up.
  static absl::Status NewUring(unsigned queue_depth,
                               std::unique_ptr<BlockIo>* out);
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_BLOCK_IO_H_
