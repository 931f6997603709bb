#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/file_blob_source.h"
#include "core/log.h"
#include "core/status_macros.h"

namespace lazypull::cli {

std::optional<ParsedArgs> ParseOrExit(const CommandSpec& spec, int argc,
                                      char** argv, int* exit_code) {
  absl::StatusOr<ParsedArgs> args = Parse(spec, argc, argv);
  if (!args.ok()) {
    *exit_code = UsageError(spec, args.status());
    return std::nullopt;
  }
  if (args->help) {
    std::cout << Usage(spec);
    *exit_code = 0;
    return std::nullopt;
  }
  return *std::move(args);
}

absl::StatusOr<std::unique_ptr<LayerReader>> OpenLocalLayer(
    const std::string& path, const std::optional<std::string>& toc_digest) {
  LayerOpenOptions opts;
  if (toc_digest) {
    absl::StatusOr<Digest> d = Digest::Parse(*toc_digest);
    if (!d.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--toc-digest: ", d.status().message()));
    }
    opts.toc_digest = *d;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<FileBlobSource> src,
                   FileBlobSource::Open(path));
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      LayerReader::Open(std::move(src), opts);
  if (!r.ok()) {
    return absl::Status(r.status().code(),
                        absl::StrCat(path, ": ", r.status().message()));
  }
  return r;
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& text) {
  size_t i = 0;
  uint64_t v = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    if (v > (UINT64_MAX - 9) / 10) break;
    v = v * 10 + static_cast<uint64_t>(text[i++] - '0');
  }
  std::string unit = text.substr(i);
  int shift = -1;
  if (unit.empty() || unit == "B") shift = 0;
  if (unit == "k" || unit == "K" || unit == "KiB" || unit == "KB") shift = 10;
  if (unit == "M" || unit == "MiB" || unit == "MB") shift = 20;
  if (unit == "G" || unit == "GiB" || unit == "GB") shift = 30;
  if (unit == "T" || unit == "TiB" || unit == "TB") shift = 40;
  if (i == 0 || shift < 0 || (shift > 0 && v > (UINT64_MAX >> shift))) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text,
                     "\" is not a size (use bytes, or a number with K, M, G "
                     "or T)"));
  }
  return v << shift;
}

absl::StatusOr<DiskChunkCacheOptions> CacheOptionsFromArgs(
    const ParsedArgs& args) {
  DiskChunkCacheOptions o;
  if (auto size = args.Get("cache-size")) {
    ASSIGN_OR_RETURN(o.capacity, ParseByteSize(*size));
  }
  if (auto pack = args.Get("cache-pack-max")) {
    absl::StatusOr<uint64_t> v = ParseByteSize(*pack);
    if (!v.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cache-pack-max: ", v.status().message()));
    }
    o.pack_max_chunk = *v;
  }
  return o;
}

std::string DefaultCacheDir() {
  if (geteuid() == 0) return "/var/lib/lazypull";
  if (const char* x = getenv("XDG_CACHE_HOME"); x && *x) {
    return absl::StrCat(x, "/lazypull");
  }
  const char* home = getenv("HOME");
  return absl::StrCat(home ? home : "/tmp", "/.cache/lazypull");
}

std::unique_ptr<ConnectionWatchdog> GuardPushes(
    bool pushing, const std::vector<long>& connections,
    const std::function<void()>& stop_pushing) {
  if (!pushing) return nullptr;
  absl::StatusOr<std::unique_ptr<ConnectionWatchdog>> w =
      ConnectionWatchdog::Start(connections);
  if (!w.ok()) {
    stop_pushing();
    LogWarning("page pushes off: their watchdog did not start (",
               w.status().message(),
               "), and a server killed mid-push could leave its readers hung");
    return nullptr;
  }
  return *std::move(w);
}

namespace {
// 0 until RaiseOpenFileLimit ran.
std::atomic<uint64_t> original_soft_limit{0};
}  // namespace

uint64_t OriginalOpenFileSoftLimit() {
  uint64_t v = original_soft_limit.load();
  if (v != 0) return v;
  struct rlimit rl;
  return getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
}

void RaiseOpenFileLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  uint64_t unset = 0;
  original_soft_limit.compare_exchange_strong(unset, rl.rlim_cur);
  if (rl.rlim_cur >= rl.rlim_max) return;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    LogWarning("could not raise the open-file limit to ", rl.rlim_max);
  }
}

int Fail(const std::string& cmd, const absl::Status& status) {
  // (A message may carry a registry's text: no terminal control from it.)
  std::cerr << "lazypull " << cmd << ": "
            << WithoutControls(status.message(), "\t\n") << "\n";
  return 1;
}

int UsageError(const CommandSpec& spec, const absl::Status& status) {
  std::cerr << "lazypull " << spec.name << ": " << status.message() << "\n\n"
            << Usage(spec);
  return 2;
}

int UsageErrorOrFail(const CommandSpec& spec, const absl::Status& status) {
  return status.code() == absl::StatusCode::kInvalidArgument
             ? UsageError(spec, status)
             : Fail(spec.name, status);
}

}  // namespace lazypull::cli
