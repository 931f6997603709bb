// Thread priority: lowering the calling thread's CPU share, for work that
// must yield to work a process is blocked on.
//
// Background fetch (inflate, verify, cache writes, the transfers' TLS) can
// keep every core busy on a fast link; a read a program waits for, and the
// program itself, should not queue behind it for CPU. Linux keeps the nice
// value per thread (setpriority(2), "BUGS"), so a thread lowers its own
// priority without touching the rest of the process. Lowering needs no
// privilege; raising it back does (CAP_SYS_NICE or RLIMIT_NICE), so threads
// that are lowered stay lowered: give such work threads of its own. A new
// thread takes its creator's nice value: a lowered thread must not start
// threads that will do urgent work (start those beforehand).
//
// Thread-safety: acts on the calling thread only; safe from any thread.
#ifndef LAZYPULL_CORE_THREAD_PRIORITY_H_
#define LAZYPULL_CORE_THREAD_PRIORITY_H_

#include "absl/status/status.h"

namespace lazypull {

// Sets the calling thread's nice value to `nice` if that lowers its
// priority (a higher value than it has; at most 19). A value at or below
// the current one leaves the thread as it is and returns OK.
absl::Status LowerThisThreadPriority(int nice);

// The calling thread's nice value (0 if it cannot be read).
int ThisThreadNice();

// Names the calling thread (what `top -H`, `perf` and /proc/PID/task/*/comm
// show): the first 15 bytes of `name`. Best effort: a failure is ignored.
void NameThisThread(const char* name);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_THREAD_PRIORITY_H_
