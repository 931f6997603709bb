#include "core/buffer_pool.h"

#include <bit>
#include <utility>

namespace lazypull {

std::shared_ptr<BufferPool> BufferPool::Create(size_t max_idle_bytes) {
  return std::shared_ptr<BufferPool>(new BufferPool(max_idle_bytes));
}

BufferPool& BufferPool::Default() {
  // Never destroyed (buffers may be given back during exit), and reachable
  // from this static, so leak checkers do not count it.
  static std::shared_ptr<BufferPool>* const pool =
      new std::shared_ptr<BufferPool>(Create(16 << 20));
  return **pool;
}

std::shared_ptr<std::string> BufferPool::Get(size_t n) {
  if (n < kMinPooled) return std::make_shared<std::string>(n, '\0');
  // Capacities are powers of two: class k holds buffers of 2^k bytes, and a
  // request takes one of the smallest class that fits, or the next (at
  // most twice what it needs).
  const int k = std::bit_width(n - 1);
  std::unique_ptr<std::string> s;
  {
    absl::MutexLock l(&mu_);
    ++stats_.gets;
    for (int c = k; c <= k + 1 && c < 64 && !s; ++c) {
      if (!idle_[c].empty()) {
        s = std::move(idle_[c].back());
        idle_[c].pop_back();
        stats_.idle_bytes -= s->capacity();
        ++stats_.reused;
      }
    }
  }
  if (!s) {
    s = std::make_unique<std::string>();
    s->reserve(size_t{1} << k);
  }
  s->resize(n);  // within the capacity: fills only bytes never used before
  std::weak_ptr<BufferPool> pool = weak_from_this();
  return std::shared_ptr<std::string>(s.release(), [pool](std::string* p) {
    if (auto alive = pool.lock()) {
      alive->GiveBack(p);
    } else {
      delete p;
    }
  });
}

void BufferPool::GiveBack(std::string* s) {
  std::unique_ptr<std::string> owned(s);
  const size_t cap = owned->capacity();
  const int c = std::bit_width(cap) - 1;
  absl::MutexLock l(&mu_);
  if (cap < kMinPooled || stats_.idle_bytes + cap > max_idle_bytes_) {
    return;  // freed as `owned` goes (after the lock: still cheap)
  }
  stats_.idle_bytes += cap;
  idle_[c].push_back(std::move(owned));
}

BufferPool::Stats BufferPool::stats() const {
  absl::MutexLock l(&mu_);
  return stats_;
}

}  // namespace lazypull
