// lazypull: one binary, one subcommand per job.
#include <cstring>
#include <iostream>

#include "absl/synchronization/mutex.h"
#include "cli/commands.h"
#include "fuse/connection_watchdog.h"

namespace {

struct Command {
  const char* name;
  int (*main)(int, char**);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"inspect", lazypull::cli::InspectMain,
     "show a layer's format, TOC digest and entries"},
    {"verify", lazypull::cli::VerifyMain,
     "check every chunk, file and the DiffID of a layer"},
    {"extract", lazypull::cli::ExtractMain,
     "verified extraction of a layer into an overlay-ready directory"},
    {"convert", lazypull::cli::ConvertMain,
     "turn a tar or layer into an eStargz / zstd:chunked layer"},
    {"mount", lazypull::cli::MountMain,
     "mount a layer lazily as a read-only filesystem"},
    {"unmount", lazypull::cli::UnmountMain,
     "unmount a lazypull mount and end its serving process"},
    {"cache", lazypull::cli::CacheMain,
     "show, prune or verify the shared chunk cache"},
    {"pull", lazypull::cli::PullMain,
     "pull an image from a registry and unpack its root filesystem"},
    {"push", lazypull::cli::PushMain,
     "push an OCI layout or a directory to a registry as eStargz"},
    {"image", lazypull::cli::ImageMain,
     "image convert: rewrite an image's layers as eStargz / zstd:chunked"},
    {"optimize", lazypull::cli::OptimizeMain,
     "record a workload's file accesses and prioritize them in the image"},
};

void PrintUsage(std::ostream& os) {
  os << "usage: lazypull COMMAND [ARGS...]\n\n"
        "lazypull starts containers before their images finish downloading:\n"
        "it reads eStargz and zstd:chunked layers lazily, verifying every "
        "chunk.\n\ncommands:\n";
  for (const Command& c : kCommands) {
    os << "  " << c.name;
    for (size_t i = std::strlen(c.name); i < 10; ++i) os << ' ';
    os << c.summary << "\n";
  }
  os << "\nRun 'lazypull COMMAND --help' for a command's options.\n";
}

}  // namespace

int main(int argc, char** argv) {
#ifdef NDEBUG
  // Debian builds abseil without NDEBUG, so every absl::Mutex acquisition
  // feeds a lock-order graph (GraphCycles, ~1% of a busy mount's CPU). Tests
  // and debug builds keep the check; optimized builds do not pay for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  lazypull::cli::RaiseOpenFileLimit();
  if (argc < 2) {
    PrintUsage(std::cerr);
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    PrintUsage(std::cout);
    return 0;
  }
  for (const Command& c : kCommands) {
    if (cmd == c.name) return c.main(argc - 1, argv + 1);
  }
  // Internal: the helper a mount with page pushes starts.
  if (cmd == "__fuse-watchdog") {
    return lazypull::ConnectionWatchdogMain(argc - 1, argv + 1);
  }
  std::cerr << "lazypull: unknown command '" << cmd << "'\n\n";
  PrintUsage(std::cerr);
  return 2;
}
