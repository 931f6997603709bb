// `lazypull cache du|prune|verify`: the operator's view of the chunk cache.
#include <sys/stat.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/disk_chunk_cache.h"

namespace lazypull::cli {
namespace {

const CommandSpec kSpec = {
    "cache",
    "du|prune|verify [--cache-dir DIR] [--to BYTES]",
    "Inspect and maintain the shared chunk cache.",
    "du      chunks and bytes stored (in pack files / in files of their own)\n"
    "prune   evict least-recently-used chunks down to --to BYTES (default 0)\n"
    "verify  re-hash every chunk; remove those that do not match their name\n"
    "Safe while mounts use the cache: they refetch what is removed.",
    {"ACTION"},
    {
        {"cache-dir", "DIR", "the cache directory (as given to mount)"},
        {"to", "BYTES", "prune: bytes to keep (e.g. 10G)"},
    },
};

}  // namespace

int CacheMain(int argc, char** argv) {
  int code;
  std::optional<ParsedArgs> args = ParseOrExit(kSpec, argc, argv, &code);
  if (!args) return code;
  const std::string action = args->positionals[0];
  if (action != "du" && action != "prune" && action != "verify") {
    std::cerr << "lazypull cache: unknown action '" << action
              << "' (du, prune or verify)\n\n"
              << Usage(kSpec);
    return 2;
  }
  const std::string dir =
      args->GetOr("cache-dir", DefaultCacheDir()) + "/cache";
  // Inspecting a cache never makes one: a --cache-dir holding none is an
  // error (a mistyped path would otherwise report an empty cache and
  // succeed); the default directory not made yet is an empty cache.
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    if (args->Has("cache-dir")) {
      return Fail("cache", absl::NotFoundError(absl::StrCat(
                               "no cache at ", dir, " (check --cache-dir)")));
    }
    std::cout << "no cache yet at " << dir << ": 0 chunks, 0 bytes\n";
    return 0;
  }
  absl::StatusOr<std::unique_ptr<DiskChunkCache>> cache =
      DiskChunkCache::Open(dir);
  if (!cache.ok()) return Fail("cache", cache.status());
  if (action == "prune") {
    uint64_t to = 0;
    if (auto t = args->Get("to")) {
      absl::StatusOr<uint64_t> v = ParseByteSize(*t);
      if (!v.ok()) return Fail("cache", v.status());
      to = *v;
    }
    absl::Status st = (*cache)->Prune(to);
    if (!st.ok()) return Fail("cache", st);
    std::cout << "pruned: " << (*cache)->counters().evictions
              << " chunks removed\n";
  } else if (action == "verify") {
    absl::StatusOr<CacheVerifyReport> rep = (*cache)->VerifyAll();
    if (!rep.ok()) return Fail("cache", rep.status());
    std::cout << "verified " << rep->checked << " chunks, removed "
              << rep->removed << " corrupt";
    if (rep->gone > 0) {
      std::cout << " (and " << rep->gone
                << " more with their packs or evicted meanwhile)";
    }
    std::cout << "\n";
    if (rep->removed > 0) return 1;
  }
  CacheUsage u = (*cache)->Usage();
  std::cout << dir << ": " << u.chunks << " chunks, " << u.bytes << " bytes ("
            << u.packed_chunks << " in " << u.packs << " pack files, "
            << u.chunks - u.packed_chunks << " in files of their own)\n";
  return 0;
}

}  // namespace lazypull::cli
