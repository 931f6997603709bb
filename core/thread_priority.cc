#include "core/thread_priority.h"

#include <errno.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace lazypull {
namespace {

id_t ThisThreadId() { return static_cast<id_t>(syscall(SYS_gettid)); }

}  // namespace

int ThisThreadNice() {
  errno = 0;
  return getpriority(PRIO_PROCESS, ThisThreadId());
}

absl::Status LowerThisThreadPriority(int nice) {
  nice = std::min(nice, 19);
  if (nice <= ThisThreadNice()) return absl::OkStatus();
  if (setpriority(PRIO_PROCESS, ThisThreadId(), nice) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("setpriority(", nice, ")"));
  }
  return absl::OkStatus();
}

}  // namespace lazypull
