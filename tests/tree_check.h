// Checking directory trees that present a golden layer (an extracted
// directory, a lazypull mount, an overlay of mounts), and mounting layers
// from a test.
//
// - LoadExpectedLayer() reads shared/testdata/estargz/<case>/expected.json
//   (README.md there) and derives the overlay form a reader presents:
//   `.../.wh.X` becomes a character device 0:0 at `.../X` (unless the layer
//   also has a real X), `.../.wh..wh..opq` disappears and marks its
//   directory opaque.
// - WalkTree() snapshots a tree with lstat/readlink/llistxattr.
// - CompareTreeWithExpected() checks a tree against the overlay form:
//   every path present must be expected and vice versa, on every field.
// - CompareTrees() checks two trees against each other on every field.
// - MountLayer()/UnmountLayer() run `lazypull mount`/`unmount`; a
//   MountJanitor lazily detaches whatever a test left mounted.
//
// Mismatches are reported with ADD_FAILURE (non-fatal), each naming the
// label, the path and the field.
//
// Thread-safety: none of this is meant to be shared between threads, except
// Sha256Of() and ReadWholeFile(), which are pure.
#ifndef LAZYPULL_TESTS_TREE_CHECK_H_
#define LAZYPULL_TESTS_TREE_CHECK_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull::testing {

// Names of the opaque-directory xattrs.
inline constexpr char kTrustedOpaqueXattr[] = "trusted.overlay.opaque";
inline constexpr char kUserOpaqueXattr[] = "user.overlay.opaque";

struct ExpectedChunk {
  uint64_t offset = 0, size = 0;
  std::string digest;  // sha256:<hex> of the chunk's bytes
};

// One entry of expected.json (raw), or of its overlay form.
struct ExpectedEntry {
  std::string path;
  std::string type;  // dir, reg, symlink, hardlink, char, block, fifo
  uint64_t mode = 0, uid = 0, gid = 0, size = 0;
  std::optional<std::string> sha256, link;
  std::map<std::string, std::string> xattrs;  // decoded values
  uint64_t dev_major = 0, dev_minor = 0, nlink = 0;
  std::optional<int64_t> mtime;
  bool implicit = false;
  std::vector<ExpectedChunk> chunks;
  // Overlay form only: a char 0:0 made from the `.wh.X` entry `source`.
  bool whiteout = false;
  std::string source;
  // Overlay form only: the directory held `.wh..wh..opq`.
  bool opaque = false;
};

struct ExpectedFailure {
  std::string stage;  // "open" or "read"
  std::string path;   // stage "read": the file whose chunk fails
  uint64_t chunk_offset = 0, chunk_size = 0;
};

struct ExpectedLayer {
  std::string case_name;
  std::string blob;  // absolute path of the layer blob
  uint64_t blob_size = 0;
  std::string toc_digest;  // the trusted digest a reader is given
  std::optional<std::string> actual_toc_digest;
  std::optional<ExpectedFailure> failure;
  std::map<std::string, ExpectedEntry> raw;      // expected.json, by path
  std::map<std::string, ExpectedEntry> overlay;  // the overlay form, by path

  // The digest the blob's TOC really has: actual_toc_digest if present,
  // else toc_digest.
  const std::string& ValidTocDigest() const {
    return actual_toc_digest ? *actual_toc_digest : toc_digest;
  }
  // Paths of the overlay form whose mtime a reader chooses (implicit
  // directories have none in the layer; whiteouts have no attributes).
  std::set<std::string> UnspecifiedMtimePaths() const;
};

// Loads estargz/<case_name>/expected.json from TestdataDir(). Reports
// problems with ADD_FAILURE and returns nullopt.
std::optional<ExpectedLayer> LoadExpectedLayer(const std::string& case_name);

// What a tree holds at one path.
struct TreeNode {
  struct stat st;
  std::string link;                           // symlinks
  std::map<std::string, std::string> xattrs;  // all but security.selinux
};
// By path relative to the root; the root itself is "".
using Tree = std::map<std::string, TreeNode>;

// Walks the tree below `root` (not following symlinks).
Tree WalkTree(const std::string& root);

struct ExpectedCompareOptions {
  // Set to "y" on every opaque directory (and on no other one, unless the
  // layer itself carries them).
  std::vector<std::string> opaque_xattrs = {kTrustedOpaqueXattr};
  // Regular files whose contents are not read.
  std::set<std::string> skip_content;
};

// Compares the tree at `root` with `layer`'s overlay form.
void CompareTreeWithExpected(const std::string& root,
                             const ExpectedLayer& layer,
                             const ExpectedCompareOptions& options = {});

struct TreeCompareOptions {
  std::string label;                    // prefixes every failure
  std::set<std::string> skip_mtime;     // paths whose mtimes may differ
  std::set<std::string> skip_content;   // regular files not read
  std::set<std::string> ignore_xattrs;  // xattr names not compared
  std::set<std::string> ignore_paths;   // paths left out of both trees
  // overlayfs reports its own link count for merged directories.
  bool skip_dir_nlink = false;
};

// Compares trees `a` and `b` on every field: type, mode, uid, gid, size,
// content sha256, link target, xattrs, rdev, nlink, mtime and which paths
// share an inode (hardlinks).
void CompareTrees(const std::string& a, const std::string& b,
                  const TreeCompareOptions& options = {});

// "sha256:<hex>" of `data`.
std::string Sha256Of(std::string_view data);

// The whole content of `path`, or the errno of the first failing
// open/read.
struct FileContent {
  std::string data;
  int error = 0;
};
FileContent ReadWholeFile(const std::string& path);

// "base64:..." of a binary value, for messages.
std::string Printable(const std::string& value);

// The names in directory `path` (without "." and ".."); ADD_FAILURE if it
// cannot be read.
std::set<std::string> ListDir(const std::string& path);

// A gtest parameter name for a case name ("corrupt-chunk" ->
// "corrupt_chunk").
std::string CaseParamName(const ::testing::TestParamInfo<std::string>& info);

// ---- Mounts ----

// How many mounts sit at exactly `path` (from /proc/self/mountinfo).
int MountCount(const std::string& path);
// The file system type of the topmost mount at `path`, or "" if none.
std::string MountType(const std::string& path);

// Whether process `pid` has exited (gone, or a zombie not yet reaped).
bool ProcessGone(pid_t pid);
// Waits up to `timeout` for ProcessGone(pid).
bool WaitProcessGone(pid_t pid, std::chrono::milliseconds timeout);

// Why FUSE mounts cannot be tested here, or "" if they can (root and
// /dev/fuse are needed). The first call also moves this test process into a
// private mount namespace (the mounts it and its children make are seen by
// no one else): a mount namespace created elsewhere meanwhile (a container,
// a build sandbox) would otherwise hold a copy of a test's mount, which
// keeps that mount's server running after the test unmounts it. Call it
// before starting threads.
std::string FuseUnavailableReason();

// Skips the current gtest loudly when FuseUnavailableReason() says so.
#define LAZYPULL_SKIP_WITHOUT_FUSE()                                         \
  do {                                                                       \
    std::string lazypull_why = ::lazypull::testing::FuseUnavailableReason(); \
    if (!lazypull_why.empty()) GTEST_SKIP() << "SKIPPED: " << lazypull_why;  \
  } while (0)

// Remembers mountpoints and serving processes; DetachAll() lazily unmounts
// (umount2 MNT_DETACH) whatever is still mounted at them, newest first, and
// ends serving processes that are still alive.
class MountJanitor {
 public:
  MountJanitor() = default;
  MountJanitor(const MountJanitor&) = delete;
  MountJanitor& operator=(const MountJanitor&) = delete;
  ~MountJanitor() { DetachAll(); }

  void Track(const std::string& mountpoint);
  void TrackProcess(pid_t pid);
  // Returns how many mounts were still there.
  int DetachAll();

 private:
  std::vector<std::string> mountpoints_;
  std::vector<pid_t> pids_;
};

struct LayerMount {
  std::string mountpoint, cache_dir, log_file;
  pid_t pid = -1;  // the serving process, from "(pid N)"
  RunResult result;
  bool ok() const { return result.exit_code == 0; }
  // The serving process's log, for failure messages.
  std::string Log() const;
};

// Runs `lazypull mount --blob BLOB TRUST_ARGS MOUNTPOINT --cache-dir DIR
// --log-file LOG`. An empty `mountpoint` / `cache_dir` gets a fresh
// directory under $TEST_TMPDIR. The mountpoint (and the serving process)
// are tracked by `janitor`.
LayerMount MountLayer(MountJanitor* janitor, const std::string& blob,
                      const std::vector<std::string>& trust_args,
                      std::string mountpoint = "", std::string cache_dir = "");

// `tar` (bytes) converted by `lazypull convert --format FORMAT --chunk-size
// 64K` into a fresh directory: the layer's path and its TOC digest (empty
// after an ADD_FAILURE if convert failed).
struct ConvertedLayer {
  std::string blob, toc_digest;
};
ConvertedLayer ConvertTar(const std::string& tar, const std::string& format);

// Mounts `layer.blob` with --toc-digest ValidTocDigest().
LayerMount MountExpected(MountJanitor* janitor, const ExpectedLayer& layer);

// The state file MOUNTPOINT/.stargz-snapshotter/<digest>.json.
struct LayerState {
  bool ok = false;  // found, and every key has the right JSON type
  std::set<std::string> keys;
  std::string error, digest;
  uint64_t size = 0, fetched_size = 0;
  double fetched_percent = 0;
};
// Reads and parses the state file; ADD_FAILURE (and ok = false) if it is
// missing or malformed.
LayerState ReadLayerState(const std::string& mountpoint,
                          const std::string& digest);

// The pids of the `lazypull __fuse-watchdog SERVER ...` processes guarding
// serving process `server`'s page pushes.
std::vector<pid_t> WatchdogsOf(pid_t server);

// Runs `lazypull unmount MOUNTPOINT [--force]`.
RunResult UnmountLayer(const std::string& mountpoint, bool force = false);

// Runs `lazypull extract BLOB SANDBOX/root EXTRA_ARGS...` with SANDBOX a
// fresh directory under $TEST_TMPDIR.
struct Extraction {
  std::string sandbox, root;
  RunResult result;
  bool ok() const { return result.exit_code == 0; }
};
Extraction ExtractLayer(const std::string& blob,
                        const std::vector<std::string>& extra_args);

}  // namespace lazypull::testing

#endif  // LAZYPULL_TESTS_TREE_CHECK_H_
