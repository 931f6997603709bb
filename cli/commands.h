// Entry points of lazypull's subcommands, and the helpers they share.
//
// Each XxxMain(argc, argv) receives argv[0] = the subcommand's name and
// returns the process exit code: 0 success, 1 failure (a message on stderr
// says what was wrong and what to do), 2 usage error.
//
// Thread-safety: called once, from main().
#ifndef LAZYPULL_CLI_COMMANDS_H_
#define LAZYPULL_CLI_COMMANDS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/flags.h"
#include "core/disk_chunk_cache.h"
#include "core/layer_reader.h"
#include "core/layer_writer.h"
#include "fuse/connection_watchdog.h"

namespace lazypull::cli {

int InspectMain(int argc, char** argv);
int VerifyMain(int argc, char** argv);
int ExtractMain(int argc, char** argv);
int ConvertMain(int argc, char** argv);
int MountMain(int argc, char** argv);
int UnmountMain(int argc, char** argv);
int CacheMain(int argc, char** argv);
int PullMain(int argc, char** argv);
int PushMain(int argc, char** argv);
int ImageMain(int argc, char** argv);  // image convert
int OptimizeMain(int argc, char** argv);

// Parses argv against `spec`; on --help prints usage and returns 0 through
// *exit_code, on error prints it and returns 2. nullopt means "stop now".
std::optional<ParsedArgs> ParseOrExit(const CommandSpec& spec, int argc,
                                      char** argv, int* exit_code);

// Opens a local layer file, verifying `--toc-digest` when given.
absl::StatusOr<std::unique_ptr<LayerReader>> OpenLocalLayer(
    const std::string& path, const std::optional<std::string>& toc_digest);

// --format, --chunk-size, --level, --prioritize, --threads: how layers are
// written (convert, push, image convert, optimize), and their translation.
// --threads defaults to one per core.
std::vector<FlagSpec> LayerWriterFlags();
absl::StatusOr<LayerWriterOptions> LayerWriterOptionsFromArgs(
    const ParsedArgs& args);

// "10G", "512M", "64k", "1048576" -> bytes (powers of 1024).
absl::StatusOr<uint64_t> ParseByteSize(const std::string& text);

// --cache-size and --cache-pack-max (mount): the chunk cache's options.
absl::StatusOr<DiskChunkCacheOptions> CacheOptionsFromArgs(
    const ParsedArgs& args);

// /var/lib/lazypull as root, $XDG_CACHE_HOME/lazypull (or ~/.cache/lazypull)
// otherwise.
std::string DefaultCacheDir();

// Prints "lazypull <cmd>: <status message>" and returns 1.
int Fail(const std::string& cmd, const absl::Status& status);

// Raises this process's soft open-file limit to its hard limit, as Go
// programs (containerd) do: a mount server holds descriptors per layer and
// per FUSE thread (an image of a hundred layers passes 1024, the usual soft
// limit), and extraction walks a directory tree with descriptors per level
// (a tree 2048 levels deep, the most a 4095-byte path allows, needs twice
// that). Every command calls it first (main). A credential helper started
// from here inherits the raised limit, as containerd's do; a workload does
// not (OriginalOpenFileSoftLimit), as Go's os/exec restores it.
void RaiseOpenFileLimit();

// The soft open-file limit this process started with.
uint64_t OriginalOpenFileSoftLimit();

// When `pushing` (page pushes are on), starts the watchdog that aborts
// `connections` should this process die without unmounting them
// (fuse/connection_watchdog.h says why pushes need it). Call from the
// thread that lives as long as the mounts. If it cannot start, calls
// `stop_pushing` and logs why. Null when not pushing or it failed.
std::unique_ptr<ConnectionWatchdog> GuardPushes(
    bool pushing, const std::vector<long>& connections,
    const std::function<void()>& stop_pushing);

// A usage error: prints "lazypull <spec.name>: <status message>", a blank
// line and the command's usage, and returns 2.
int UsageError(const CommandSpec& spec, const absl::Status& status);

// InvalidArgument (a bad flag or argument) is a usage error; anything else
// fails the command (Fail).
int UsageErrorOrFail(const CommandSpec& spec, const absl::Status& status);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_COMMANDS_H_
