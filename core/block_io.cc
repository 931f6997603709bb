#include "core/block_io.h"

#include <errno.h>
#include <liburing.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"

namespace lazypull {
namespace {

absl::Status ShortIo(const IoOp& op, size_t done, bool write) {
  return absl::DataLossError(absl::StrCat(
      write ? "write" : "read", " of ", op.len, " bytes at offset ", op.offset,
      " stopped after ", done, " bytes (file too short)"));
}

class PosixIo final : public BlockIo {
 public:
  Kind kind() const override { return Kind::kPosix; }

  absl::Status ReadAll(absl::Span<const IoOp> ops) override {
    return Run(ops, false);
  }
  absl::Status WriteAll(absl::Span<const IoOp> ops) override {
    return Run(ops, true);
  }

 private:
  static absl::Status Run(absl::Span<const IoOp> ops, bool write) {
    for (const IoOp& op : ops) {
      size_t done = 0;
      while (done < op.len) {
        ssize_t n = write ? pwrite(op.fd, op.buf + done, op.len - done,
                                   static_cast<off_t>(op.offset + done))
                          : pread(op.fd, op.buf + done, op.len - done,
                                  static_cast<off_t>(op.offset + done));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) return ErrnoToStatus(errno, write ? "pwrite" : "pread");
        if (n == 0) return ShortIo(op, done, write);
        done += static_cast<size_t>(n);
      }
    }
    return absl::OkStatus();
  }
};

class UringIo final : public BlockIo {
 public:
  explicit UringIo(unsigned depth) : depth_(depth) {}
  ~UringIo() override { io_uring_queue_exit(&ring_); }

  absl::Status Init() {
    int rc = io_uring_queue_init(depth_, &ring_, 0);
    if (rc < 0) return ErrnoToStatus(-rc, "io_uring_queue_init");
    return absl::OkStatus();
  }

  Kind kind() const override { return Kind::kUring; }
  absl::Status ReadAll(absl::Span<const IoOp> ops) override {
    return Run(ops, false);
  }
  absl::Status WriteAll(absl::Span<const IoOp> ops) override {
    return Run(ops, true);
  }

 private:
  struct Pending {
    const IoOp* op;
    size_t done;
  };

  absl::Status Run(absl::Span<const IoOp> ops, bool write) {
    std::vector<Pending> todo;
    todo.reserve(ops.size());
    for (const IoOp& op : ops) {
      if (op.len > 0) todo.push_back({&op, 0});
    }
    std::vector<Pending> inflight(depth_);
    std::vector<bool> slot_used(depth_, false);
    size_t next = 0, active = 0;
    absl::Status first;
    // Requeued remainders (short transfers, -EAGAIN).
    std::vector<Pending> retry;
    while (next < todo.size() || !retry.empty() || active > 0) {
      // Prepare a batch up to the queue depth, then submit it once.
      unsigned prepared = 0;
      for (unsigned s = 0; s < depth_ && first.ok(); ++s) {
        if (slot_used[s]) continue;
        Pending p;
        if (!retry.empty()) {
          p = retry.back();
          retry.pop_back();
        } else if (next < todo.size()) {
          p = todo[next++];
        } else {
          break;
        }
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {
          retry.push_back(p);
          break;
        }
        const IoOp& op = *p.op;
        if (write) {
          io_uring_prep_write(sqe, op.fd, op.buf + p.done,
                              static_cast<unsigned>(op.len - p.done),
                              op.offset + p.done);
        } else {
          io_uring_prep_read(sqe, op.fd, op.buf + p.done,
                             static_cast<unsigned>(op.len - p.done),
                             op.offset + p.done);
        }
        io_uring_sqe_set_data64(sqe, s);
        inflight[s] = p;
        slot_used[s] = true;
        ++prepared;
        ++active;
      }
      if (active == 0) break;
      int rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        return ErrnoToStatus(-rc, "io_uring_submit_and_wait");
      }
      (void)prepared;
      // Reap every completion available, then advance once.
      unsigned head, seen = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        const unsigned s = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
        Pending p = inflight[s];
        slot_used[s] = false;
        --active;
        const int res = cqe->res;
        if (res == -EAGAIN || res == -EINTR) {
          retry.push_back(p);
        } else if (res < 0) {
          if (first.ok()) {
            first =
                ErrnoToStatus(-res, write ? "io_uring write" : "io_uring read");
          }
        } else if (res == 0 && p.done < p.op->len) {
          if (first.ok()) first = ShortIo(*p.op, p.done, write);
        } else {
          p.done += static_cast<size_t>(res);
          if (p.done < p.op->len) retry.push_back(p);  // short: requeue
        }
      }
      io_uring_cq_advance(&ring_, seen);
      if (!first.ok()) {
        retry.clear();
        next = todo.size();
      }
    }
    return first;
  }

  const unsigned depth_;
  io_uring ring_;
};

bool ProbeUring() {
  if (const char* e = getenv("LAZYPULL_NO_URING"); e && *e && *e != '0') {
    LogInfo(
        "io_uring disabled by LAZYPULL_NO_URING: cache I/O uses "
        "pread/pwrite");
    return false;
  }
  io_uring_probe* probe = io_uring_get_probe();
  if (probe == nullptr) {
    LogWarning(
        "io_uring is not available on this kernel (io_uring_setup "
        "failed or is disabled): cache I/O falls back to pread/pwrite");
    return false;
  }
  bool ok = io_uring_opcode_supported(probe, IORING_OP_READ) &&
            io_uring_opcode_supported(probe, IORING_OP_WRITE);
  io_uring_free_probe(probe);
  if (!ok) {
    LogWarning(
        "io_uring lacks IORING_OP_READ/WRITE here: cache I/O falls "
        "back to pread/pwrite");
  }
  return ok;
}

}  // namespace

bool BlockIo::UringAvailable() {
  static const bool available = ProbeUring();
  return available;
}

std::unique_ptr<BlockIo> BlockIo::NewPosix() {
  return std::make_unique<PosixIo>();
}

absl::Status BlockIo::NewUring(unsigned queue_depth,
                               std::unique_ptr<BlockIo>* out) {
  auto io = std::make_unique<UringIo>(queue_depth);
  if (absl::Status s = io->Init(); !s.ok()) return s;
  *out = std::move(io);
  return absl::OkStatus();
}

BlockIo& BlockIo::ForThisThread() {
  thread_local std::unique_ptr<BlockIo> io = [] {
    std::unique_ptr<BlockIo> u;
    if (UringAvailable()) {
      absl::Status s = NewUring(64, &u);
      if (s.ok()) return u;
      LogWarning("io_uring ring set-up failed (", s.message(),
                 "): this thread uses pread/pwrite");
    }
    return NewPosix();
  }();
  return *io;
}

}  // namespace lazypull
