// `lazypull optimize` (and `image convert --workload`): runs a workload on a
// lazily mounted copy of an image, records from inside the FUSE filesystem
// the files it opens, in order, and rewrites the layers with those files
// before `.prefetch.landmark` (formats.md §1.3).
//
//   1. stage: the source converted to eStargz (fast gzip level) in a
//      scratch OCI layout (one read of the source, whatever it is);
//   2. record: each staged layer of this machine's platform served by a
//      LayerFs whose open hook records (layer, file) in one global order,
//      stacked as a writable overlayfs (upper dir on a tmpfs, thrown away),
//      the workload run in it by cli/workload.h until it exits or `period`
//      ends;
//   3. rewrite: the staged image converted again to DST with, for this
//      machine's platform, each layer's recorded files prioritized (other
//      platforms converted without, saying so).
// For `layer:FILE` sources the same on one layer file, written to a
// `layer:FILE` destination.
//
// Thread-safety: one call per process at a time (it mounts and forks).
#ifndef LAZYPULL_CLI_OPTIMIZE_H_
#define LAZYPULL_CLI_OPTIMIZE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cli/flags.h"
#include "cli/signal_watcher.h"
#include "fetch/image_converter.h"
#include "fetch/image_store.h"

namespace lazypull::cli {

struct OptimizeOptions {
  std::string workload;  // REQUIRED: run with /bin/sh -c in the image
  absl::Duration period = absl::Seconds(10);
  // Format, chunk size, level, threads, platforms kept, progress.
  ImageConvertOptions convert;
  // Scratch space (default $TMPDIR or /tmp); removed at the end.
  std::string work_dir;
  // If set, the recorded paths are also written here, one per line,
  // "<layer index>\t<path>" in access order, the path C-escaped
  // (absl::Utf8SafeCEscape: a tab or newline in a name cannot split a line).
  std::string record_file;
  // If set (the commands set it: see TerminationCleanup), a termination
  // signal while the scratch dir exists kills the workload, detaches every
  // mount under the scratch dir, removes it and exits the process with
  // 128 + the signal.
  SignalWatcher* signals = nullptr;
};

// Takes SIGINT, SIGTERM and SIGHUP for a command that runs a workload (call
// first thing, before any thread starts): one arriving ends the process with
// 128 + the signal, after the clean-up OptimizeOptions::signals describes
// while an optimization runs.
std::unique_ptr<SignalWatcher> TerminationCleanup();

// What the workload did and what was recorded.
struct OptimizeReport {
  ImageConvertReport image;                        // empty for layer:FILE
  std::vector<std::vector<std::string>> recorded;  // per layer, in order
  bool timed_out = false;
  int exit_code = -1;
  int signal = 0;
  absl::Duration run_time;
};

absl::StatusOr<OptimizeReport> OptimizeImage(ImageReader* source,
                                             ImageWriter* destination,
                                             const OptimizeOptions& options);

absl::StatusOr<OptimizeReport> OptimizeLayerFile(
    const std::string& in_path, const std::string& out_path,
    const OptimizeOptions& options);

// --workload, --period, --record.
std::vector<FlagSpec> WorkloadFlags();
// Fills workload, period and record_file from those flags.
absl::Status WorkloadOptionsFromArgs(const ParsedArgs& args,
                                     OptimizeOptions* o);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_OPTIMIZE_H_
