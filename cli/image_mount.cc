#include "cli/image_mount.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <semaphore>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/mount_record.h"
#include "cli/network_flags.h"
#include "cli/quiet_wait.h"
#include "cli/signal_watcher.h"
#include "core/cached_layer.h"
#include "core/disk_chunk_cache.h"
#include "core/errno_status.h"
#include "core/footer.h"
#include "core/layer_fill.h"
#include "core/layer_reader.h"
#include "core/layer_writer.h"
#include "core/log.h"
#include "core/lower_layers.h"
#include "core/node_writer.h"
#include "core/status_macros.h"
#include "core/thread_priority.h"
#include "core/toc.h"
#include "fetch/auth.h"
#include "fetch/background_budget.h"
#include "fetch/curl_http.h"
#include "fetch/http_blob_source.h"
#include "fetch/image_puller.h"
#include "fetch/reference.h"
#include "fetch/registry.h"
#include "fuse/fuse_server.h"
#include "fuse/layer_mount.h"
#include "fuse/mount_table.h"
#include "fuse/mount_watch.h"

namespace lazypull::cli {
namespace {

// The speculative tail read: most TOCs of small and medium layers fit.
constexpr uint64_t kTailReadSize = 512 << 10;
// A manifest-position larger than this is not trusted for the tail read.
constexpr uint64_t kMaxPositionTail = 64 << 20;
constexpr int kDefaultWaitPrefetchSeconds = 60;
// Fill threads per layer: enough outstanding reads that the blob source can
// coalesce neighbours; its caps keep background work out of the way. Two
// background spans at a time keep the link busy and leave more of it, and
// of the CPU, to on-demand reads than four (bench/TUNING.md, session 9).
constexpr int kPrefetchThreads = 8;
constexpr int kBackgroundThreads = 2;
// Layers whose footer and TOC are read and indexed at once at mount.
constexpr size_t kLayerOpeners = 4;
// Prefetch / background spans: one range request each.
constexpr uint64_t kSpanSize = 1 << 20;
// Background fetch goes from spans to streams once the link has been seen
// this fast: a span then lasts less than a server's per-request cost
// (bench/RESULTS.md, "Background fetch as one stream per layer").
constexpr uint64_t kStreamRate = 24 << 20;
// Background fetch yields the CPU to on-demand reads and to the workload
// (bench/RESULTS.md, "On-demand reads under background fetch: the saturated
// link's floor, and the fast link"; bench/TUNING.md, session 9).
constexpr int kBackgroundNice = 19;
// Directory prefetch after a miss, when the directory's missing files are at
// most this much of the blob (CachedLayerOptions::dir_prefetch_bytes), with
// background fetch off.
constexpr uint64_t kDirPrefetchBytes = 4 << 20;

struct LayerMount {
  size_t index = 0;
  Descriptor desc;
  std::string dir;
  bool lazy = false;
  std::unique_ptr<ServedLayer> served;
  std::shared_ptr<HttpBlobSource> source;
  std::thread fetch_thread;
};

// The fetch knobs of an image mount (every one a flag; defaults in the
// structs they fill).
struct FetchTuning {
  CurlHttpOptions http;
  HttpBlobSourceOptions source;
  CachedLayerOptions layer;
  int prefetch_streams = kPrefetchThreads;
  int background_streams = kBackgroundThreads;
  uint64_t background_rate = 0;  // bytes/s of background fetch, 0 = no cap
  // Nice value of background fetch's threads: its fills and its HTTP
  // engine's event loop (0 = as the rest of the process).
  int background_nice = kBackgroundNice;
  // --background-http1.1: the background engine offers HTTP/1.1 only.
  bool background_http1 = false;
  // Prefetch and background fetch go in spans of this many blob bytes (the
  // prefetch split).
  uint64_t span_size = kSpanSize;
  // Background fetch goes in spans of one request each, as prefetch does,
  // until the link has been measured at `stream_rate` bytes/s; then it
  // reads each stretch of a layer still missing as one request
  // (CachedLayer::FillStream), `background_streams` layers at a time
  // (0: streams from the start; UINT64_MAX: never).
  uint64_t stream_rate = kStreamRate;
  // The same for the prefetch range, past what Warm() fetched ahead: a big
  // prefetch range (an optimized image that reads most of itself) on a fast
  // link goes in one request instead of one per span.
  uint64_t prefetch_stream_rate = kStreamRate;
  // Times the prefetch's stream, after giving way to reads running ahead of
  // it, is opened again past them (AdaptiveFill::stream_restarts). A
  // program reading the prefetch range reads the way the stream goes; one
  // that overtakes background fetch's stream goes elsewhere next, and a
  // stream dropped costs the bytes already on their way, so background
  // fetch goes to spans at once (bench/TUNING.md, session 11).
  int prefetch_stream_restarts = AdaptiveFill().stream_restarts;
  int background_stream_restarts = 0;
  // A stream (prefetch's or background fetch's) gives way once reads that
  // ran ahead of it fetched this many bytes it brings again.
  uint64_t stream_give_way = CachedLayer::kStreamGiveWayBytes;
  // When background fetch starts after the prefetch.
  QuietOptions quiet;
  // ...except on a link already measured at `stream_rate` by then (its
  // mount's TOC read tells): there it starts at once, since the link has
  // room for it beside a starting program's reads (2 ms / 1 Gbit/s: heavy
  // 6%, python 10% sooner; bench/TUNING.md, session 21). Off when
  // --background-after-misses is given.
  bool fast_link_starts_at_once = true;
};

absl::Status ParseCount(const ParsedArgs& args, const char* flag, int lo,
                        int hi, int* out) {
  auto v = args.Get(flag);
  if (!v) return absl::OkStatus();
  int n;
  if (!absl::SimpleAtoi(*v, &n) || n < lo || n > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " takes a number from ", lo, " to ", hi,
                     ", not \"", *v, "\""));
  }
  *out = n;
  return absl::OkStatus();
}

absl::Status ParseBytes(const ParsedArgs& args, const char* flag,
                        uint64_t* out) {
  auto v = args.Get(flag);
  if (!v) return absl::OkStatus();
  absl::StatusOr<uint64_t> n = ParseByteSize(*v);
  if (!n.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": ", n.status().message()));
  }
  *out = *n;
  return absl::OkStatus();
}

// BYTES (per second) or "off" (UINT64_MAX).
absl::Status ParseRate(const ParsedArgs& args, const char* flag,
                       uint64_t* out) {
  if (auto v = args.Get(flag); v && *v == "off") {
    *out = UINT64_MAX;
    return absl::OkStatus();
  }
  return ParseBytes(args, flag, out);
}

absl::StatusOr<FetchTuning> FetchTuningFromArgs(const ParsedArgs& args) {
  FetchTuning t;
  RETURN_IF_ERROR(ParseCount(args, "max-requests", 1, 256,
                             &t.source.max_concurrent_requests));
  RETURN_IF_ERROR(ParseCount(args, "reserved-on-demand", 0, 255,
                             &t.source.reserved_on_demand));
  if (t.source.reserved_on_demand >= t.source.max_concurrent_requests) {
    return absl::InvalidArgumentError(
        "--reserved-on-demand must be below --max-requests");
  }
  // One budget of background bytes for the whole link (every layer).
  BackgroundBudgetOptions budget;
  if (auto v = args.Get("background-bytes"); v && *v != "auto") {
    RETURN_IF_ERROR(ParseBytes(args, "background-bytes", &budget.fixed_bytes));
    if (budget.fixed_bytes == 0) {
      return absl::InvalidArgumentError(
          "--background-bytes takes a size or \"auto\", not 0");
    }
  }
  if (auto v = args.Get("background-gain")) {
    if (!absl::SimpleAtod(*v, &budget.gain) || !(budget.gain >= 1.0) ||
        budget.gain > 16) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--background-gain takes a number from 1 to 16, not \"", *v, "\""));
    }
  }
  t.source.background_budget = std::make_shared<BackgroundBudget>(budget);
  RETURN_IF_ERROR(ParseBytes(args, "coalesce-gap", &t.source.coalesce_gap));
  RETURN_IF_ERROR(
      ParseBytes(args, "max-request-size", &t.source.max_request_size));
  if (t.source.max_request_size < 4096) {
    return absl::InvalidArgumentError("--max-request-size must be >= 4K");
  }
  RETURN_IF_ERROR(
      ParseCount(args, "readahead-chunks", 0, 1024, &t.layer.readahead_chunks));
  RETURN_IF_ERROR(
      ParseCount(args, "prefetch-streams", 1, 256, &t.prefetch_streams));
  RETURN_IF_ERROR(
      ParseCount(args, "background-streams", 1, 256, &t.background_streams));
  RETURN_IF_ERROR(ParseBytes(args, "background-rate", &t.background_rate));
  RETURN_IF_ERROR(
      ParseCount(args, "background-nice", 0, 19, &t.background_nice));
  int after_misses = static_cast<int>(t.quiet.busy_misses);
  RETURN_IF_ERROR(
      ParseCount(args, "background-after-misses", 0, 1 << 20, &after_misses));
  t.quiet.busy_misses = static_cast<uint64_t>(after_misses);
  t.fast_link_starts_at_once = !args.Has("background-after-misses");
  int quiet_ms = static_cast<int>(absl::ToInt64Milliseconds(t.quiet.quiet));
  RETURN_IF_ERROR(
      ParseCount(args, "background-quiet-ms", 0, 600000, &quiet_ms));
  t.quiet.quiet = absl::Milliseconds(quiet_ms);
  RETURN_IF_ERROR(ParseBytes(args, "span-size", &t.span_size));
  if (t.span_size < 4096) {
    return absl::InvalidArgumentError("--span-size must be >= 4K");
  }
  // Background fetch brings a directory's files soon anyway, and measured
  // no faster with it (bench/RESULTS.md): on by default only without it.
  t.layer.dir_prefetch_bytes =
      args.Has("no-background-fetch") ? kDirPrefetchBytes : 0;
  RETURN_IF_ERROR(
      ParseBytes(args, "dir-prefetch", &t.layer.dir_prefetch_bytes));
  t.layer.dir_prefetch_span = t.span_size;
  t.layer.dir_prefetch_gap = t.source.coalesce_gap;
  RETURN_IF_ERROR(ParseCount(args, "max-connections-per-host", 1, 1024,
                             &t.http.max_connections_per_host));
  RETURN_IF_ERROR(ParseCount(args, "max-streams-per-connection", 1, 1000,
                             &t.http.max_streams_per_connection));
  ApplyHttpFlags(args, &t.http);
  t.background_http1 = args.Has("background-http1.1");
  RETURN_IF_ERROR(ParseRate(args, "background-stream-rate", &t.stream_rate));
  RETURN_IF_ERROR(
      ParseRate(args, "prefetch-stream-rate", &t.prefetch_stream_rate));
  RETURN_IF_ERROR(ParseCount(args, "prefetch-stream-restarts", 0, 1000,
                             &t.prefetch_stream_restarts));
  RETURN_IF_ERROR(ParseCount(args, "background-stream-restarts", 0, 1000,
                             &t.background_stream_restarts));
  RETURN_IF_ERROR(ParseBytes(args, "stream-give-way", &t.stream_give_way));
  return t;
}

// The misses of every lazy layer of the image, for WaitForQuiet.
MissSample ImageMisses(const std::vector<std::unique_ptr<LayerMount>>& layers) {
  MissSample s;
  int64_t last_ns = 0;
  for (const auto& m : layers) {
    if (!m->lazy) continue;
    const CachedLayerStats st = m->served->layer().stats();
    s.misses += st.on_demand_fills;
    last_ns = std::max(last_ns, st.last_on_demand_fill_ns);
  }
  s.last =
      std::chrono::steady_clock::time_point(std::chrono::nanoseconds(last_ns));
  return s;
}

// What a layer's fetching cost on the link against what it brought: range
// bytes received, distinct blob bytes, on-demand fills, shared reads.
std::string FetchedSummary(const CachedLayer& layer,
                           const HttpBlobSource& source) {
  const HttpBlobSourceStats ss = source.stats();
  return absl::StrCat(ss.bytes, " range bytes received for ",
                      layer.fetched_blob_bytes(), " distinct blob bytes, ",
                      layer.stats().on_demand_fills, " on-demand fills, ",
                      ss.shared, " reads shared a request");
}

std::string LayerName(const LayerMount& m, size_t n) {
  return absl::StrCat("layer ", m.index, "/", n, " (", m.desc.digest.ToString(),
                      ")");
}

const std::string* Annotation(const Descriptor& d, const char* key) {
  auto it = d.annotations.find(key);
  return it == d.annotations.end() ? nullptr : &it->second;
}

// Copies regular file `target` of the topmost of `lowers` (layer dirs,
// bottom first) holding it to `path` under `root`.
absl::Status CopyFromLower(int root, const std::string& path,
                           const std::string& target,
                           const std::vector<std::string>& lowers) {
  ASSIGN_OR_RETURN(LowerEntry e, FindInLowers(lowers, target));
  if (!S_ISREG(e.st.st_mode)) {
    return absl::FailedPreconditionError("the target is not a regular file");
  }
  ScopedFd src(openat(e.parent.get(), e.name.c_str(),
                      O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!src.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", target));
  struct stat st;
  if (fstat(src.get(), &st) != 0) return ErrnoToStatus(errno, "fstat");
  std::vector<std::string> parts = absl::StrSplit(path, '/');
  const std::string name = parts.back();
  parts.pop_back();
  ASSIGN_OR_RETURN(ScopedFd parent, OpenDirBeneath(root, parts, true));
  // Keep the directory's times as the layer set them.
  struct stat pst;
  const bool have_times = fstat(parent.get(), &pst) == 0;
  ScopedFd dst(openat(parent.get(), name.c_str(),
                      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                      st.st_mode & 07777));
  if (!dst.valid()) return ErrnoToStatus(errno, absl::StrCat("create ", path));
  std::string buf(1 << 20, '\0');
  while (true) {
    ssize_t n = read(src.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, absl::StrCat("read ", target));
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(dst.get(), buf.data() + off, n - off);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return ErrnoToStatus(errno, absl::StrCat("write ", path));
      off += w;
    }
  }
  if (geteuid() == 0) (void)!fchown(dst.get(), st.st_uid, st.st_gid);
  fchmod(dst.get(), st.st_mode & 07777);
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  futimens(dst.get(), ts);
  if (have_times) {
    struct timespec pts[2] = {pst.st_atim, pst.st_mtim};
    futimens(parent.get(), pts);
  }
  return absl::OkStatus();
}

// What a layer's whiteouts and opaque directories hide of the layers below.
class LayerHides {
 public:
  explicit LayerHides(const UnpackedLayer& unpacked)
      : whiteouts_(unpacked.whiteouts.begin(), unpacked.whiteouts.end()),
        opaque_(unpacked.opaque_dirs.begin(), unpacked.opaque_dirs.end()) {}

  // Whether the layer hides `path` (relative, "" for the root) of the
  // layers below: a whiteout of it or of a directory above it, or an
  // opaque directory above it. (Applying the layer, containerd's unpack
  // removes such a lower entry before the layer's own entries go in.)
  bool Hides(const std::string& path) const {
    if (path.empty()) return false;
    if (opaque_.contains("")) return true;
    for (size_t at = path.find('/'); at != std::string::npos;
         at = path.find('/', at + 1)) {
      const std::string up = path.substr(0, at);
      if (whiteouts_.contains(up) || opaque_.contains(up)) return true;
    }
    return whiteouts_.contains(path);
  }

 private:
  absl::flat_hash_set<std::string> whiteouts_, opaque_;
};

// Gives each directory under `fd` (path `rel`, "" for the layer's root)
// that `unpacked` made implicitly the attributes of the same directory in
// the layers below, as applying the layer onto them would leave them
// (containerd's unpack, `pull`): the overlay shows the topmost layer's.
// A directory the layer hides in the layers below (`hides`) keeps what it
// has. Children first; changing attributes leaves the parents' times alone.
absl::Status KeepLowerAttrs(int fd, const std::string& rel,
                            const UnpackedLayer& unpacked,
                            const LayerHides& hides,
                            const std::vector<std::string>& lowers) {
  std::vector<std::string> subdirs;
  {
    const int dup_fd = dup(fd);
    if (dup_fd < 0) return ErrnoToStatus(errno, "dup");
    DIR* d = fdopendir(dup_fd);
    if (d == nullptr) {
      close(dup_fd);
      return ErrnoToStatus(errno, absl::StrCat("opendir ", rel));
    }
    while (struct dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      struct stat st;
      if (e->d_type == DT_DIR ||
          (e->d_type == DT_UNKNOWN &&
           fstatat(fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
           S_ISDIR(st.st_mode))) {
        subdirs.push_back(n);
      }
    }
    closedir(d);
  }
  for (const std::string& n : subdirs) {
    ScopedFd sub(
        openat(fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", n));
    RETURN_IF_ERROR(KeepLowerAttrs(sub.get(),
                                   rel.empty() ? n : absl::StrCat(rel, "/", n),
                                   unpacked, hides, lowers));
  }
  if (unpacked.explicit_dirs.count(rel) != 0 || hides.Hides(rel)) {
    return absl::OkStatus();
  }
  absl::StatusOr<LowerEntry> lower = FindInLowers(lowers, rel);
  if (!lower.ok() || !S_ISDIR(lower->st.st_mode)) return absl::OkStatus();
  const struct stat& st = lower->st;
  if (geteuid() == 0 && fchown(fd, st.st_uid, st.st_gid) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("chown ", rel));
  }
  if (fchmod(fd, st.st_mode & 07777) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("chmod ", rel));
  }
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  if (futimens(fd, ts) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("utimens ", rel));
  }
  return absl::OkStatus();
}

// Turns UnpackTar's whiteouts into the overlayfs form: `.wh.X` -> a 0:0
// character device X (none where no lower layer has X: it would hide
// nothing, and a directory no lower layer has lists it), `.wh..wh..opq` ->
// trusted.overlay.opaque=y; copies in files that hardlinks name in lower
// layers; gives implied directories the lower layers' attributes.
absl::Status MakeOverlayLower(const std::string& dir,
                              const UnpackedLayer& unpacked,
                              const std::vector<std::string>& lowers) {
  ScopedFd root(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", dir));
  for (const std::string& w : unpacked.whiteouts) {
    if (!FindInLowers(lowers, w).ok()) continue;  // nothing to hide
    std::vector<std::string> parts = absl::StrSplit(w, '/');
    std::string name = parts.back();
    parts.pop_back();
    ASSIGN_OR_RETURN(ScopedFd parent,
                     OpenDirBeneath(root.get(), parts, /*create=*/true));
    struct stat st;
    if (fstatat(parent.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      // The layer has its own X: it hides the lower one anyway, but a
      // directory must not merge with it (whiteouts apply to the lower
      // layers only, OCI image-spec): opaque.
      if (S_ISDIR(st.st_mode)) {
        ScopedFd x(openat(parent.get(), name.c_str(),
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!x.valid() ||
            fsetxattr(x.get(), "trusted.overlay.opaque", "y", 1, 0) != 0) {
          return ErrnoToStatus(
              errno,
              absl::StrCat("marking ", w, "'s directory opaque in ", dir));
        }
      }
      continue;
    }
    // Keep the directory's mtime as the layer set it: adding the whiteout
    // device must not show as a change.
    struct stat pst;
    const bool have_times = fstat(parent.get(), &pst) == 0;
    if (mknodat(parent.get(), name.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0) {
      return ErrnoToStatus(errno,
                           absl::StrCat("making whiteout ", w, " in ", dir));
    }
    if (have_times) {
      struct timespec ts[2] = {pst.st_atim, pst.st_mtim};
      futimens(parent.get(), ts);
    }
  }
  for (const std::string& o : unpacked.opaque_dirs) {
    std::vector<std::string> parts;
    if (!o.empty()) parts = absl::StrSplit(o, '/');
    ASSIGN_OR_RETURN(ScopedFd d,
                     OpenDirBeneath(root.get(), parts, /*create=*/true));
    if (fsetxattr(d.get(), "trusted.overlay.opaque", "y", 1, 0) != 0) {
      return ErrnoToStatus(errno,
                           absl::StrCat("marking ", o, " opaque in ", dir));
    }
  }
  // Hardlinks to files of lower layers cannot be links across layer
  // directories: the file is copied in (content, mode, owner, times), as a
  // copy-up would.
  const LayerHides hides(unpacked);
  for (const auto& [path, target] : unpacked.lower_hardlinks) {
    absl::Status st =
        hides.Hides(target)
            ? absl::NotFoundError("this layer's whiteouts hide the target")
            : CopyFromLower(root.get(), path, target, lowers);
    if (!st.ok()) {
      LogWarning(dir, ": hardlink ", path, " -> ", target,
                 " (a file of a lower layer) is not shown: ", st.message());
    } else {
      LogInfo(dir, ": hardlink ", path, " -> ", target,
              " to a lower layer made a copy");
    }
  }
  return KeepLowerAttrs(root.get(), "", unpacked, hides, lowers);
}

// FillAdaptive's settings common to prefetch and background fetch: spans
// as `tuning` says, the link's rate as measured for `source`, its hashed
// prefix.
AdaptiveFill LinkFill(const HttpBlobSource& source, const FetchTuning& tuning) {
  AdaptiveFill how;
  how.span_size = tuning.span_size;
  how.gap = tuning.source.coalesce_gap;
  const BackgroundBudget* link = tuning.source.background_budget.get();
  how.link_rate = [link] { return link->bandwidth(); };
  how.hashed_prefix = [src = &source] { return src->hashed_prefix(); };
  how.stream_give_way = tuning.stream_give_way;
  return how;
}

absl::Status RemoveDir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  std::string parent = slash == 0 ? "/" : path.substr(0, slash);
  ScopedFd pfd(open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!pfd.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", parent));
  return RemoveTreeAt(pfd.get(), path.substr(slash + 1), path);
}

// Runtime dirs of image mounts whose process is gone: detach what is left
// and remove them.
void CleanStaleRunDirs(const std::string& mounts_dir) {
  DIR* d = opendir(mounts_dir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> stale;
  while (struct dirent* e = readdir(d)) {
    int pid;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid <= 0) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;
    stale.push_back(absl::StrCat(mounts_dir, "/", e->d_name));
  }
  closedir(d);
  if (stale.empty()) return;
  // Every mount left beneath them (a layer's dead FUSE mount answers
  // ENOTCONN; `--layer N` leaves RUN/N alone), the most recent first.
  const std::vector<MountEntry> table = ReadMountTable();
  for (const std::string& s : stale) {
    for (auto it = table.rbegin(); it != table.rend(); ++it) {
      if (absl::StartsWith(it->mount_point, s + "/")) {
        umount2(it->mount_point.c_str(), MNT_DETACH);
      }
    }
    LogInfo("removing the runtime dir of a dead mount process: ", s);
    (void)RemoveDir(s);
  }
}

}  // namespace

bool AllowOthers(const ParsedArgs& args) {
  return geteuid() == 0 || args.GetOr("o", "") == "allow_other";
}

std::vector<FlagSpec> ImageMountFlags() {
  std::vector<FlagSpec> f = NetworkFlags();
  f.push_back({"layer", "N",
               "mount only layer N (0 = bottom), bind-mounted read-only"});
  f.push_back({"wait-prefetch", "[SECONDS]",
               absl::StrCat("return only once every layer's prefetch range "
                            "is fetched, or after SECONDS (default ",
                            kDefaultWaitPrefetchSeconds, ")")});
  f.push_back({"no-background-fetch", "",
               "fetch only what is read and prefetched, not the rest of each "
               "layer"});
  // The fetch knobs (bench/TUNING.md says how the defaults were chosen).
  f.push_back({"max-requests", "N",
               "range requests in flight per layer (default 8; over HTTP/2 "
               "they share one connection)"});
  f.push_back({"reserved-on-demand", "N",
               "request slots only on-demand reads may use (default 1)"});
  f.push_back({"background-bytes", "BYTES|auto",
               "background bytes in flight on the link, all layers together "
               "(default auto: twice the measured bandwidth-delay product, "
               "at least 4M; background fetch has a connection of its own)"});
  f.push_back({"no-early-prefetch", "",
               "start the prefetch only once the layer is mounted, not as "
               "soon as its TOC is verified"});
  f.push_back({"background-gain", "G",
               "with --background-bytes auto: the cap is G times the "
               "measured bandwidth-delay product (default 2; what it may "
               "queue at the link is about G - 1 of it)"});
  f.push_back(
      {"background-quiet-ms", "MS",
       absl::StrCat("background fetch starts once no read has missed "
                    "the cache for MS milliseconds (default ",
                    absl::ToInt64Milliseconds(QuietOptions().quiet), ")...")});
  f.push_back({"background-after-misses", "N",
               absl::StrCat("...or once N reads have missed it since the "
                            "prefetch (default ",
                            QuietOptions().busy_misses,
                            "; 0 = at once). Without this flag, background "
                            "fetch starts at once on a link already measured "
                            "at the background stream rate")});
  f.push_back({"background-nice", "N",
               absl::StrCat("nice value (0-19) of background fetch's threads, "
                            "so that reads a program waits for and the program "
                            "itself get the CPU first (default ",
                            kBackgroundNice, "; 0 = off)")});
  f.push_back({"background-rate", "BYTES",
               "cap background fetching at BYTES per second per layer "
               "(default: no cap)"});
  f.push_back({"coalesce-gap", "BYTES",
               "queued ranges this close are fetched by one request "
               "(default 64K)"});
  f.push_back({"max-request-size", "BYTES",
               "largest range request; larger reads are split (default 4M)"});
  f.push_back({"span-size", "BYTES",
               "prefetch and background fetch go in spans of this many blob "
               "bytes, one request each (the prefetch split; default 1M)"});
  f.push_back({"dir-prefetch", "BYTES",
               "when a read misses, fetch the other files of its directory "
               "too if that is at most BYTES of the blob (default: 4M with "
               "--no-background-fetch, else 0 = off)"});
  f.push_back({"readahead-chunks", "N",
               "chunks read ahead of a sequential reader (default 4)"});
  f.push_back({"prefetch-streams", "N",
               absl::StrCat("parallel fills of the prefetch range per layer "
                            "(default ",
                            kPrefetchThreads, ")")});
  f.push_back({"background-streams", "N",
               absl::StrCat("background fetch: layers read at once, and "
                            "threads decoding each one's bytes (with "
                            "spans: spans in flight per layer; "
                            "default ",
                            kBackgroundThreads, ")")});
  f.push_back({"background-stream-rate", "BYTES|off",
               "background fetch goes in spans of --span-size, one request "
               "each, until the link is measured at BYTES per second; then "
               "each stretch of a layer still missing is one request, read "
               "in order (default 24M; 0 = from the start; off = never)"});
  f.push_back({"prefetch-stream-rate", "BYTES|off",
               "the same for the prefetch range past what is fetched while "
               "the TOC is indexed (default 24M; 0 = at once; off = never)"});
  f.push_back({"prefetch-stream-restarts", "N",
               absl::StrCat("times the prefetch's stream, once reads ran "
                            "ahead of it, starts again past them before the "
                            "rest goes in spans (default ",
                            AdaptiveFill().stream_restarts, ")")});
  f.push_back({"stream-give-way", "BYTES",
               absl::StrCat("a stream gives way (to spans, or to a new stream "
                            "past them) once reads running ahead of it have "
                            "fetched BYTES it brings again, and a sixteenth of "
                            "what it read (default ",
                            CachedLayer::kStreamGiveWayBytes >> 20, "M)")});
  f.push_back({"background-stream-restarts", "N",
               "the same for background fetch's stream (default 0: "
               "bench/TUNING.md, session 12)"});
  f.push_back({"max-connections-per-host", "N",
               "connections to one registry host at once (default 6)"});
  f.push_back({"max-streams-per-connection", "N",
               "HTTP/2 streams one connection carries at once; more open "
               "another connection (default 100)"});
  f.push_back({"background-http1.1", "",
               "background fetch's own connections speak HTTP/1.1 (one per "
               "request in flight): less CPU for the registry and this "
               "process on a fast link, more handshakes and slow starts on a "
               "slow one (bench/TUNING.md, session 15)"});
  return f;
}

absl::Status CheckImageMountArgs(const ParsedArgs& args) {
  RETURN_IF_ERROR(ImageReference::Parse(args.positionals[0]).status());
  if (auto l = args.Get("layer")) {
    int n;
    if (!absl::SimpleAtoi(*l, &n) || n < 0) {
      return absl::InvalidArgumentError("--layer takes a layer number >= 0");
    }
  }
  if (auto w = args.Get("wait-prefetch"); w && !w->empty()) {
    int s;
    if (!absl::SimpleAtoi(*w, &s) || s < 0) {
      return absl::InvalidArgumentError(
          "--wait-prefetch=SECONDS takes a number of seconds");
    }
  }
  RETURN_IF_ERROR(FetchTuningFromArgs(args).status());
  RegistryOptions ro;
  return RegistryOptionsFromArgs(args, &ro);
}

absl::Status ServeImage(
    const ParsedArgs& args, const std::string& mountpoint,
    const std::string& pid_file,
    const std::function<void(const std::string& notes)>& ready) {
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  mallopt(M_ARENA_MAX, 2);
  // Termination signals are taken by a watcher thread with sigwait; every
  // thread started from here on inherits the mask.
  SignalWatcher signals(BlockTerminationSignals());

  ASSIGN_OR_RETURN(ImageReference ref,
                   ImageReference::Parse(args.positionals[0]));
  ASSIGN_OR_RETURN(const FetchTuning tuning, FetchTuningFromArgs(args));
  ASSIGN_OR_RETURN(std::unique_ptr<RegistrySession> session,
                   OpenRegistrySession(args, tuning.http));
  const RegistryOptions& ro = session->options;
  CurlHttpTransport* http = session->http.get();
  ASSIGN_OR_RETURN(std::unique_ptr<RegistryClient> client_u,
                   RegistryClient::Create(ref, ro));
  std::shared_ptr<RegistryClient> client = std::move(client_u);
  // Background fetch has an HTTP engine of its own: its requests travel on
  // their own connection(s), so on-demand responses never queue behind
  // background bytes buffered for a shared connection (HttpBlobSource).
  CurlHttpOptions bg_http_options = tuning.http;
  bg_http_options.thread_nice = tuning.background_nice;
  if (tuning.background_http1) bg_http_options.http2 = false;
  ASSIGN_OR_RETURN(std::unique_ptr<CurlHttpTransport> bg_http,
                   CurlHttpTransport::Create(bg_http_options));
  // A signal before the mount is ready ends the set-up's requests (a
  // runtime that gave up on this mount waited for its timeouts).
  std::atomic<bool> serving{false};
  signals.OnSignal([&] {
    if (serving.load()) return;  // then the main thread tears down
    http->CancelAll();
    bg_http->CancelAll();
  });
  struct ForgetSignalsAtExit {
    SignalWatcher* w;
    ~ForgetSignalsAtExit() { w->OnSignal(nullptr); }
  } forget_signals{&signals};
  std::shared_ptr<RegistryClient> bg_client;
  {
    RegistryOptions bro = ro;
    bro.http = bg_http.get();
    ASSIGN_OR_RETURN(std::unique_ptr<RegistryClient> c,
                     RegistryClient::Create(ref, bro));
    bg_client = std::move(c);
  }
  const absl::Time t_start = absl::Now();
  ASSIGN_OR_RETURN(ResolvedImage img, client->ResolveManifest());
  const absl::Time t_resolved = absl::Now();
  // The config's round trip overlaps the layers' (it is needed only for
  // layers pulled in full, and checked before the mount is ready).
  absl::StatusOr<ImageConfig> config = absl::UnknownError("not fetched");
  std::thread config_thread([&] { config = client->FetchConfig(img); });
  auto join_config = [&]() -> absl::Status {
    if (config_thread.joinable()) config_thread.join();
    return config.status();
  };
  struct JoinAtExit {
    std::thread* t;
    ~JoinAtExit() {
      if (t->joinable()) t->join();
    }
  } join_config_at_exit{&config_thread};
  // (An image of no layers mounts as an empty read-only root, as `pull`
  // makes an empty directory of it.)
  const size_t n = img.manifest.layers.size();
  std::optional<size_t> only;
  if (auto l = args.Get("layer")) {
    size_t k = 0;
    (void)absl::SimpleAtoi(*l, &k);
    if (k >= n) {
      return absl::InvalidArgumentError(
          n == 0 ? absl::StrCat("--layer ", k, ": the image has no layers")
                 : absl::StrCat("--layer ", k, ": the image has ", n,
                                " layers (0 to ", n - 1, ")"));
    }
    only = k;
  }

  const std::string cache_dir = args.GetOr("cache-dir", DefaultCacheDir());
  ASSIGN_OR_RETURN(DiskChunkCacheOptions co, CacheOptionsFromArgs(args));
  mkdir(cache_dir.c_str(), 0700);
  const std::string verified_dir = cache_dir + "/verified";
  const std::string mounts_dir = cache_dir + "/mounts";
  const std::string run_dir = absl::StrCat(mounts_dir, "/", getpid());
  // The chunk cache and this mount's run dir, made while the layers' tail
  // reads are in flight (a cache of many chunks takes a while to index).
  std::shared_ptr<DiskChunkCache> cache;
  bool run_dir_made = false;
  auto open_cache = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<DiskChunkCache> c,
                     DiskChunkCache::Open(cache_dir + "/cache", co));
    cache = std::move(c);
    mkdir(verified_dir.c_str(), 0700);
    mkdir(mounts_dir.c_str(), 0700);
    CleanStaleRunDirs(mounts_dir);
    if (mkdir(run_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoToStatus(errno, absl::StrCat("mkdir ", run_dir));
    }
    run_dir_made = true;
    return absl::OkStatus();
  };

  std::vector<std::unique_ptr<LayerMount>> layers;
  std::atomic<bool> stop{false};
  std::mutex pf_mu;
  std::condition_variable pf_cv;
  size_t pf_pending = 0;
  bool overlay_mounted = false;
  int overlay_id = -1;  // its id in the mount table (ids are reused)
  std::string overlay_fstype;
  std::optional<MountEntry> overlay_entry;

  // Page pushes (on unless --no-push-pages), guarded by a watchdog.
  const bool push_pages = !args.Has("no-push-pages");
  std::unique_ptr<ConnectionWatchdog> watchdog;

  // Undoes everything, in order: used on failure and at the end.
  auto teardown = [&] {
    stop.store(true);
    // Background requests end now: waiting out their retries against a
    // server gone silent held the exit for minutes. (On-demand reads keep
    // their transport: a busy mount detached lazily is still served.)
    bg_http->CancelAll();
    if (watchdog != nullptr) watchdog->Stop();  // (before any unmount)
    if (overlay_mounted) {
      // Only if what is mounted there now is still this server's: after
      // `unmount` took it away, a new mount may already sit there.
      std::optional<MountEntry> top = TopMountAt(mountpoint);
      if (top && top->id == overlay_id && top->fstype == overlay_fstype &&
          umount2(mountpoint.c_str(), 0) != 0 && errno != EINVAL) {
        umount2(mountpoint.c_str(), MNT_DETACH);
      }
      overlay_mounted = false;
    }
    for (auto& m : layers) {
      if (m->fetch_thread.joinable()) m->fetch_thread.join();
    }
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
      if ((*it)->lazy) {
        const CachedLayerStats ls = (*it)->served->layer().stats();
        LogInfo(LayerName(**it, n), " at unmount: ", ls.fills, " fills (",
                ls.on_demand_fills, " on demand), ", ls.cache_hits,
                " cache hits, ", ls.joined_fills,
                " reads that waited for another's fill, ", ls.dir_prefetches,
                " directories prefetched after a miss, ",
                (*it)->served->fs().pushed_bytes(),
                " bytes pushed into the page cache (",
                (*it)->served->fs().pushes_dropped(), " pushes dropped)");
      }
      (*it)->served.reset();
    }
    layers.clear();
    cache.reset();  // flushes queued writes
    if (run_dir_made) {
      absl::Status rm = RemoveDir(run_dir);
      if (!rm.ok()) LogWarning(rm.message());
    }
  };

  std::vector<std::string> notes;
  absl::Time t_layers;
  const bool early_prefetch = !args.Has("no-early-prefetch");
  absl::Status st = [&]() -> absl::Status {
    // 1. What each layer is, from its descriptor alone.
    struct Plan {
      std::unique_ptr<LayerMount> m;
      LayerOpenOptions lo;
      std::string why;  // why it is pulled in full; empty: lazy
      // The prefetch range's end from the descriptor (a hint).
      std::optional<uint64_t> prefetch_hint;
      // Where the range Warm()ed with the tail read ends (0: none).
      uint64_t warm_with_tail = 0;
      absl::StatusOr<std::unique_ptr<LayerReader>> reader =
          absl::UnknownError("not opened");
    };
    std::vector<Plan> plans;
    for (size_t i = 0; i < n; ++i) {
      if (only && i != *only) continue;
      Plan& plan = plans.emplace_back();
      plan.m = std::make_unique<LayerMount>();
      auto& m = plan.m;
      m->index = i;
      m->desc = img.manifest.layers[i];
      m->dir = absl::StrCat(run_dir, "/", i);
      const Descriptor& d = m->desc;
      LayerOpenOptions& lo = plan.lo;
      std::string& why = plan.why;
      if (const std::string* t = Annotation(d, kTocDigestAnnotation)) {
        absl::StatusOr<Digest> td = Digest::Parse(*t);
        if (!td.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat(LayerName(*m, n), ": bad ", kTocDigestAnnotation,
                           " annotation: ", td.status().message()));
        }
        lo.toc_digest = *td;
      }
      for (const char* key : kZstdChunkedChecksumAnnotations) {
        const std::string* c = Annotation(d, key);
        if (c == nullptr) continue;
        absl::StatusOr<Digest> cd = Digest::Parse(*c);
        if (!cd.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat(LayerName(*m, n), ": bad ", key,
                           " annotation: ", cd.status().message()));
        }
        lo.toc_compressed_digest = *cd;
        break;
      }
      if (!lo.toc_digest && !lo.toc_compressed_digest) {
        why = absl::StrCat(
            "its descriptor (", d.media_type,
            ") carries no TOC digest or zstd:chunked manifest checksum "
            "annotation: not an eStargz/zstd:chunked layer, or one with no "
            "trust anchor");
      }
      const uint64_t size = static_cast<uint64_t>(d.size);
      lo.tail_read_size = std::min<uint64_t>(size, kTailReadSize);
      // Where the TOC starts, when the descriptor says: the TOC and footer
      // in one read of just their bytes (a wrong hint costs a second read).
      std::optional<uint64_t> toc_at;
      for (const char* key : kZstdChunkedPositionAnnotations) {
        const std::string* p = Annotation(d, key);
        if (p == nullptr) continue;
        std::vector<std::string> f = absl::StrSplit(*p, ':');
        uint64_t off;
        if (f.size() >= 2 && absl::SimpleAtoi(f[0], &off)) {
          toc_at = off >= 8 ? off - 8 : 0;  // with the frame header
        }
        break;
      }
      if (const std::string* p = Annotation(d, kTocOffsetAnnotation);
          p != nullptr && !toc_at) {
        uint64_t off;
        if (absl::SimpleAtoi(*p, &off)) toc_at = off;
      }
      if (toc_at && *toc_at < size && size - *toc_at <= kMaxPositionTail) {
        lo.tail_read_size =
            std::min(size, std::max<uint64_t>(size - *toc_at, kFooterTailSize));
      }
      if (const std::string* p = Annotation(d, kPrefetchSizeAnnotation)) {
        uint64_t n;
        if (absl::SimpleAtoi(*p, &n) && n > 0) {
          plan.prefetch_hint = std::min(n, size);
        }
      }
    }

    // 2. The lazy layers' footers and TOCs (a tail read, then TOC
    // inflate, parse and index each), several layers at once.
    {
      std::vector<Plan*> lazy;
      for (Plan& p : plans) {
        if (!p.why.empty()) continue;
        HttpBlobSourceOptions bo = tuning.source;
        // Bytes read out of blob order wait there for the whole-blob hash
        // (an unnamed file: never left behind).
        bo.spill_dir = cache_dir;
        p.m->source =
            std::make_shared<HttpBlobSource>(client, p.m->desc, bo, bg_client);
        // The prefetch range [0, landmark) starts downloading as soon as the
        // TOC is verified, while it is parsed and indexed and the layer is
        // mounted (the reads of the prefetch then find those bytes).
        HttpBlobSource* source = p.m->source.get();
        if (early_prefetch) {
          // With the descriptor's hint, from the moment the tail read is
          // answered (the link goes on from the TOC's bytes to the prefetch
          // range's without idling for a round trip); the TOC has the last
          // word either way.
          const std::optional<uint64_t> hint = p.prefetch_hint;
          if (hint) p.warm_with_tail = *hint;
          p.lo.on_toc = [source, hint,
                         name = LayerName(*p.m, n)](absl::string_view json) {
            std::optional<uint64_t> landmark = ScanPrefetchLandmark(json);
            if (hint && landmark != hint) {
              LogWarning(name, ": the layer's ", kPrefetchSizeAnnotation,
                         " annotation says ", *hint,
                         " but its TOC puts the prefetch landmark at ",
                         landmark ? absl::StrCat(*landmark) : "none",
                         ": the TOC wins");
            }
            if (landmark && *landmark > 0) {
              source->Warm(0, *landmark);
              LogInfo(name, ": TOC verified; prefetch range [0, ", *landmark,
                      hint ? ") on its way since the tail read"
                           : ") on its way while the TOC is indexed");
            }
          };
        }
        lazy.push_back(&p);
      }
      std::atomic<size_t> next{0};
      std::vector<std::thread> openers;
      for (size_t k = 0; k < std::min<size_t>(lazy.size(), kLayerOpeners);
           ++k) {
        openers.emplace_back([&] {
          for (size_t j; (j = next.fetch_add(1)) < lazy.size();) {
            if (lazy[j]->warm_with_tail > 0) {
              lazy[j]->m->source->Warm(0, lazy[j]->warm_with_tail,
                                       /*after_next_read=*/true);
            }
            lazy[j]->reader =
                LayerReader::Open(lazy[j]->m->source, lazy[j]->lo);
          }
        });
      }
      const absl::Status cache_st = open_cache();
      for (std::thread& t : openers) t.join();
      RETURN_IF_ERROR(cache_st);
    }

    // 3. Bottom first: serve the lazy layers, pull the others.
    // layers[visible_from...] are those no opaque root above hides.
    size_t visible_from = 0;
    for (Plan& plan : plans) {
      bool root_opaque = false;
      auto& m = plan.m;
      const Descriptor& d = m->desc;
      std::string why = plan.why;
      if (why.empty() && IsRangeIgnored(plan.reader.status())) {
        // Not a bad layer: a server that cannot serve byte ranges (a
        // pull-through cache, a plain web server). Lazy pulling needs them.
        why = absl::StrCat("its registry does not serve byte ranges (",
                           plan.reader.status().message(), ")");
      }
      if (why.empty() && IsNoFooter(plan.reader.status())) {
        // An anchor annotation on a blob with no footer of any dialect (an
        // ordinary gzip or zstd layer whose annotations were copied over):
        // nothing lazy to verify against the anchor, and the full pull
        // checks the blob's own digest.
        why = absl::StrCat(
            "its descriptor carries a TOC anchor but its blob has no "
            "eStargz/zstd:chunked footer (",
            plan.reader.status().message(), ")");
      }
      if (why.empty() && IsExternalToc(plan.reader.status())) {
        // (ctr-remote's and nerdctl's --estargz-external-toc: the TOC is in
        // a separate image; the blob is an ordinary gzip tar stream.)
        why =
            "its eStargz TOC is kept in a separate image (an external-TOC "
            "footer), which lazypull does not read";
      }
      if (why.empty()) {
        absl::StatusOr<std::unique_ptr<LayerReader>>& reader = plan.reader;
        if (!reader.ok()) {
          return absl::Status(
              reader.status().code(),
              absl::StrCat(LayerName(*m, n), ": ", reader.status().message(),
                           "; refusing to mount ", ref.String()));
        }
        std::shared_ptr<const LayerReader> shared_reader = std::move(*reader);
        LayerFsOptions fo;
        fo.state_name = d.digest.ToString();
        fo.state_digest = fo.state_name;
        fo.user_overlay_xattrs = false;  // a root overlay uses trusted.*
        fo.stacked = true;
        // (A layer whose root is opaque has nothing below it.)
        root_opaque = shared_reader->index()
                          .Lookup(LayerIndex::kRoot, ".wh..wh..opq")
                          .has_value();
        if (!root_opaque) {
          for (size_t i = layers.size(); i-- > visible_from;) {
            fo.lower_dirs.push_back(layers[i]->dir);
          }
        }
        fo.push_pages = push_pages;
        if (mkdir(m->dir.c_str(), 0755) != 0) {
          return ErrnoToStatus(errno, absl::StrCat("mkdir ", m->dir));
        }
        FuseServerOptions so;
        so.allow_other = AllowOthers(args);
        ASSIGN_OR_RETURN(m->served, ServedLayer::Start(
                                        m->dir,
                                        std::make_shared<CachedLayer>(
                                            shared_reader, cache, tuning.layer),
                                        fo, so));
        m->lazy = true;
        LogInfo(LayerName(*m, n), ": lazy (",
                LayerFormatName(shared_reader->format()), ", TOC ",
                shared_reader->toc_digest().ToString(), ", ",
                shared_reader->index().chunks().size(), " chunks) at ", m->dir);
      } else {
        const std::string note =
            absl::StrCat(LayerName(*m, n), " is pulled in full: ", why);
        LogInfo(note);
        notes.push_back(note);
        RETURN_IF_ERROR(join_config());
        absl::StatusOr<UnpackedLayer> u =
            PullLayer(client.get(), d, config->diff_ids[m->index], m->dir,
                      geteuid() == 0);
        if (!u.ok()) {
          return absl::Status(
              u.status().code(),
              absl::StrCat(LayerName(*m, n), ": ", u.status().message()));
        }
        root_opaque = std::find(u->opaque_dirs.begin(), u->opaque_dirs.end(),
                                "") != u->opaque_dirs.end();
        std::vector<std::string> lowers;
        for (size_t i = visible_from; i < layers.size() && !root_opaque; ++i) {
          lowers.push_back(layers[i]->dir);
        }
        RETURN_IF_ERROR(MakeOverlayLower(m->dir, *u, lowers));
      }
      layers.push_back(std::move(m));
      // An opaque root (the layer's "./.wh..wh..opq") hides every layer
      // below: overlayfs ignores the mark on a lower layer's root, so they
      // are left out of the stack (one layer left is bind-mounted).
      if (root_opaque) visible_from = layers.size() - 1;
    }

    RETURN_IF_ERROR(join_config());
    t_layers = absl::Now();
    // Assemble MOUNTPOINT.
    std::vector<std::string> lowers;
    for (size_t i = visible_from; i < layers.size(); ++i) {
      lowers.push_back(layers[i]->dir);
    }
    if (lowers.empty()) {
      const std::string empty = run_dir + "/empty";
      if (mkdir(empty.c_str(), 0755) != 0) {
        return ErrnoToStatus(errno, absl::StrCat("mkdir ", empty));
      }
      lowers.push_back(empty);
    }
    // A killed server's mount there (answering ENOTCONN) is detached, not
    // stacked on: it would come back at the next unmount.
    DetachStaleMount(mountpoint);
    RETURN_IF_ERROR(MountLayerStack(lowers, mountpoint));
    overlay_mounted = true;
    if (std::optional<MountEntry> top = TopMountAt(mountpoint)) {
      overlay_id = top->id;
      overlay_fstype = top->fstype;
      overlay_entry = top;
    }
    return absl::OkStatus();
  }();
  if (!st.ok()) {
    teardown();
    if (const int sig = signals.signal(); sig != 0) {
      return absl::CancelledError(absl::StrCat(
          "signal ", sig, " while the mount was being set up: ", st.message()));
    }
    return st;
  }
  // The pushes' watchdog, from this thread (it lives as long as the
  // mounts), before prefetch and background fetch bring bytes to push.
  {
    std::vector<long> connections;
    for (const auto& m : layers) {
      if (m->lazy) connections.push_back(m->served->connection_id());
    }
    watchdog =
        GuardPushes(push_pages && !connections.empty(), connections, [&] {
          for (auto& m : layers) {
            if (m->lazy) m->served->StopPushing();
          }
        });
  }

  // Prefetch, then background fetch, per lazy layer.
  const bool background = !args.Has("no-background-fetch");
  std::counting_semaphore<256> bg_streams(tuning.background_streams);
  for (auto& m : layers) {
    if (!m->lazy) continue;
    ++pf_pending;
    CachedLayer* layer = &m->served->layer();
    ServedLayer* served = m->served.get();
    HttpBlobSource* source = m->source.get();
    std::string name = LayerName(*m, n);
    m->fetch_thread = std::thread([&, layer, served, source, name, background,
                                   early_prefetch] {
      NameThisThread("lp-fetch");
      const LayerIndex& idx = layer->index();
      std::vector<uint32_t> first;
      std::vector<bool> in_first(idx.chunks().size());
      for (uint32_t f : idx.prioritized_files()) {
        const Inode& node = idx.inode(f);
        for (uint32_t c = node.first_chunk;
             c < node.first_chunk + node.num_chunks; ++c) {
          first.push_back(c);
          in_first[c] = true;
        }
      }
      std::atomic<uint64_t> errors{0};
      if (!first.empty()) {
        // Spans, and on a fast link a stream past what Warm() fetched
        // ahead (those bytes are found by the spans' reads).
        AdaptiveFill how = LinkFill(*source, tuning);
        how.what = "prefetch";
        how.priority = ReadPriority::kPrefetch;
        how.span_threads = tuning.prefetch_streams;
        how.stream_threads = std::min<int>(
            tuning.prefetch_streams,
            std::max<int>(2, std::thread::hardware_concurrency()));
        how.stream_rate = tuning.prefetch_stream_rate;
        how.stream_restarts = tuning.prefetch_stream_restarts;
        how.streams_from = early_prefetch ? tuning.source.max_warm_bytes : 0;
        FillAdaptive(layer, first, how, name, &stop, &errors);
        LogInfo(
            name, ": prefetched ", first.size(), " chunks (",
            source->stats().warm_hits,
            " pieces fetched ahead while the TOC was indexed; ",
            FetchedSummary(*layer, *source), ")",
            errors.load() ? absl::StrCat(" (", errors.load(), " failed)") : "");
      }
      source->DropWarm();  // what the prefetch did not use
      {
        std::lock_guard<std::mutex> l(pf_mu);
        --pf_pending;
      }
      pf_cv.notify_all();
      if (!background || stop.load()) return;
      const double link_rate = tuning.source.background_budget->bandwidth();
      const bool fast = tuning.fast_link_starts_at_once &&
                        tuning.stream_rate != 0 &&
                        tuning.stream_rate != UINT64_MAX &&
                        link_rate >= static_cast<double>(tuning.stream_rate);
      std::string why;
      if (fast) {
        why = absl::StrCat("the link is fast: measured at ",
                           static_cast<uint64_t>(link_rate / 1e3), " kB/s");
      } else {
        why = QuietOutcomeName(WaitForQuiet([&] { return ImageMisses(layers); },
                                            stop, tuning.quiet));
      }
      if (stop.load()) return;
      LogInfo(name, ": background fetch starts (", why, ")");
      std::vector<uint32_t> rest;
      for (uint32_t c = 0; c < idx.chunks().size(); ++c) {
        if (!in_first[c]) rest.push_back(c);
      }
      RateLimiter limiter(tuning.background_rate);
      // (This thread stays at the background's nice value: what is left
      // for it, the whole-blob check, is background work too. The source's
      // request workers are all started first, at normal priority: a
      // thread started by a lowered one would stay lowered.)
      if (tuning.background_nice > 0) source->StartWorkers();
      AdaptiveFill how = LinkFill(*source, tuning);
      how.what = "background fetch";
      how.priority = ReadPriority::kBackground;
      how.span_threads = tuning.background_streams;
      how.stream_threads = tuning.background_streams;
      how.nice = tuning.background_nice;
      how.stream_rate = tuning.stream_rate;
      how.stream_restarts = tuning.background_stream_restarts;
      how.retry_spans = true;  // (the whole-blob check needs every chunk)
      how.rate_cap = tuning.background_rate;
      how.limiter = &limiter;
      how.streams = &bg_streams;
      FillAdaptive(layer, rest, how, name, &stop, &errors);
      if (stop.load()) return;
      const BackgroundBudget& budget = *tuning.source.background_budget;
      LogInfo(name, ": background fetch done (", layer->fetched_blob_bytes(),
              " of ", layer->reader().blob_size(), " blob bytes fetched; ",
              FetchedSummary(*layer, *source),
              errors.load() ? absl::StrCat(", ", errors.load(), " failed") : "",
              "; link: RTT ", absl::FormatDuration(budget.min_rtt()), ", ",
              static_cast<uint64_t>(budget.bandwidth() / 1e3),
              " kB/s, background cap ", budget.Cap(), " bytes)");
      if (errors.load() != 0) return;
      served->MarkComplete();
      // The layer is complete: check the whole blob's digest once (a marker
      // in the cache dir remembers it, so a warm cache costs no refetch).
      const std::string marker =
          absl::StrCat(verified_dir, "/", source->descriptor().digest.Hex());
      if (access(marker.c_str(), F_OK) == 0) return;
      uint64_t again = 0;
      absl::Status vs = source->VerifyWholeBlob(&again, &stop);
      if (!vs.ok()) {
        if (stop.load()) return;
        LogError(name, ": ", vs.message());
        served->ReportError(std::string(vs.message()));
        return;
      }
      std::ofstream(marker) << "verified\n";
      LogInfo(name, ": whole blob verified (", again,
              " bytes read again for it)");
    });
  }
  if (args.Has("wait-prefetch")) {
    int secs = kDefaultWaitPrefetchSeconds;
    if (auto w = args.Get("wait-prefetch"); w && !w->empty()) {
      (void)absl::SimpleAtoi(*w, &secs);
    }
    std::unique_lock<std::mutex> l(pf_mu);
    if (secs > 0 && !pf_cv.wait_for(l, std::chrono::seconds(secs),
                                    [&] { return pf_pending == 0; })) {
      const std::string note =
          absl::StrCat("prefetch not finished after ", secs,
                       " s; it goes on in the "
                       "background");
      LogWarning(note);
      notes.push_back(note);
    }
  }

  {
    MountRecord record;
    record.mountpoint = mountpoint;
    record.image_ref = ref.String();
    // Canonical, as the mount table names the layer mounts beneath it.
    char real[PATH_MAX];
    record.run_dir =
        realpath(run_dir.c_str(), real) != nullptr ? real : run_dir;
    WriteMountRecord(pid_file, record);
  }
  auto ms = [](absl::Duration d) { return absl::ToInt64Milliseconds(d); };
  LogInfo("mount ready in ", ms(absl::Now() - t_start), " ms: resolve ",
          ms(t_resolved - t_start), " ms, layers (footer, TOC, index, FUSE) ",
          ms(t_layers - t_resolved), " ms, assembly and prefetch wait ",
          ms(absl::Now() - t_layers), " ms");
  LogInfo("serving ", ref.String(), " (manifest ",
          img.manifest_digest.ToString(), ", ", layers.size(), " layer(s)) at ",
          mountpoint, ", cache ", cache_dir);
  serving.store(true);
  ready(absl::StrJoin(notes, "\n"));

  // MOUNTPOINT unmounted by hand (umount, umount -l), not by `lazypull
  // unmount`: the layers and this process end as on SIGTERM.
  std::unique_ptr<MountWatch> watch;
  if (overlay_entry) {
    watch = std::make_unique<MountWatch>(*overlay_entry, [&] {
      LogInfo(mountpoint,
              " was unmounted (not by lazypull unmount): ending its layers");
      kill(getpid(), SIGTERM);
    });
  }
  const int sig = signals.Wait();
  watch.reset();
  LogInfo("signal ", sig, ": unmounting ", mountpoint);
  {
    const BackgroundBudget& budget = *tuning.source.background_budget;
    LogInfo("link at unmount: RTT ", absl::FormatDuration(budget.min_rtt()),
            ", ", static_cast<uint64_t>(budget.bandwidth() / 1e3),
            " kB/s, background cap ", budget.Cap(), " bytes");
  }
  teardown();
  client.reset();
  bg_client.reset();
  const CurlHttpTransport::Stats hs = http->stats();
  const CurlHttpTransport::Stats bs = bg_http->stats();
  LogInfo("http: ", hs.requests + bs.requests, " requests, ",
          hs.attempts + bs.attempts, " attempts over ",
          hs.connections + bs.connections,
          " connection(s) (background: ", bs.requests, " requests over ",
          bs.connections, ")");
  session.reset();
  LogInfo("unmounted ", mountpoint);
  RemoveOwnMountRecord(pid_file);
  return absl::OkStatus();
}

}  // namespace lazypull::cli
