// The fields of /proc/PID/stat, read without being misled by the command
// name (field 2, in parentheses, may hold spaces and parentheses).
//
// Thread-safety: a pure function of the file at the time of the call.
#ifndef LAZYPULL_CORE_PROCESS_STAT_H_
#define LAZYPULL_CORE_PROCESS_STAT_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace lazypull {

// Fields 3 on of /proc/PID/stat (so [0] is the state, e.g. "R", "Z", and
// [19] the start time in clock ticks since boot), or empty if the process
// is gone.
std::vector<std::string> ProcessStatFields(pid_t pid);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_PROCESS_STAT_H_
