#include "core/thread_priority.h"

#include <errno.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace lazypull {
namespace {

id_t ThisThreadId() { return static_cast<id_t>(syscall(SYS_gettid)); }

}  // namespace

void NameThisThread(const char* name) {
  char buf[16];
  snprintf(buf, sizeof(buf), "%s", name);
  (void)pthread_setname_np(pthread_self(), buf);
}

int ThisThreadNice() {
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, ThisThreadId());
  return nice == -1 && errno != 0 ? 0 : nice;
}

absl::Status LowerThisThreadPriority(int nice) {
  nice = std::min(nice, 19);
  if (nice <= ThisThreadNice()) return absl::OkStatus();
  if (setpriority(PRIO_PROCESS, ThisThreadId(), nice) != 0) {
    const int err = errno;
    return ErrnoToStatus(err, absl::StrCat("setpriority(", nice, ")"));
  }
  return absl::OkStatus();
}

}  // namespace lazypull
