// `lazypull mount` and `lazypull unmount`.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "cli/commands.h"
#include "cli/image_mount.h"
#include "cli/mount_record.h"
#include "core/cached_layer.h"
#include "core/digest.h"
#include "core/disk_chunk_cache.h"
#include "core/errno_status.h"
#include "core/file_blob_source.h"
#include "core/log.h"
#include "core/node_writer.h"
#include "core/status_macros.h"
#include "fuse/fuse_server.h"
#include "fuse/layer_fs.h"
#include "fuse/mount_table.h"

namespace lazypull::cli {
namespace {

const CommandSpec kMountSpec = {
    "mount",
    "--blob PATH (--toc-digest sha256:... | --insecure-skip-toc-verify) "
    "MOUNTPOINT [--cache-dir DIR] [--foreground] [-o allow_other]\n"
    "   or: lazypull mount IMAGE_REF MOUNTPOINT [--ca-file FILE] "
    "[--wait-prefetch[=SECONDS]] [--no-background-fetch] [--layer N] ...",
    "Mount one layer, or a whole image from a registry, as a read-only "
    "filesystem at once; bytes are fetched, verified and cached only when "
    "read.",
    "The mount is ready when the command returns (the serving process stays\n"
    "in the background unless --foreground). `lazypull unmount MOUNTPOINT`\n"
    "ends it; so do SIGINT/SIGTERM to the serving process.\n\n"
    "With --blob: the TOC must match --toc-digest: without it the mount is\n"
    "refused unless --insecure-skip-toc-verify is given. The file\n"
    "/.stargz-snapshotter/<toc digest>.json (reachable by name only) reports\n"
    "{error, digest, size, fetchedSize, fetchedPercent}.\n\n"
    "With IMAGE_REF: every eStargz / zstd:chunked layer whose descriptor\n"
    "carries a trust anchor (containerd.io/snapshot/stargz/toc.digest, or the\n"
    "zstd:chunked manifest-checksum) is mounted lazily over HTTP range\n"
    "requests (its own FUSE mount under CACHE_DIR/mounts/<pid>/<n>, state\n"
    "file /.stargz-snapshotter/<blob digest>.json); any other layer, and one\n"
    "whose registry answers range requests with the whole blob, is pulled\n"
    "in full, with a line saying why. A layer whose TOC does not match\n"
    "its anchor fails the mount. MOUNTPOINT is a read-only overlayfs of the\n"
    "layers (a bind mount for one layer, or with --layer N). Each layer's\n"
    "prioritized files (before its prefetch landmark) are fetched at once,\n"
    "then the rest in the background (unless --no-background-fetch).\n"
    "Network flags are those of `lazypull pull`.\n\n"
    "Default cache dir: /var/lib/lazypull as root, $XDG_CACHE_HOME/lazypull\n"
    "otherwise.",
    {"MOUNTPOINT"},
    {
        {"blob", "PATH", "the layer blob (eStargz or zstd:chunked) to serve"},
        {"toc-digest", "DIGEST",
         "the trusted TOC digest (toc.digest annotation)"},
        {"insecure-skip-toc-verify", "", "mount without a trusted TOC digest"},
        {"cache-dir", "DIR", "where verified chunks are cached"},
        {"cache-size", "BYTES", "cache budget (e.g. 10G); LRU eviction beyond"},
        {"cache-pack-max", "BYTES",
         "chunks up to this size are appended to shared pack files, a few "
         "inodes per layer (default 4M; 0 = one file per chunk)"},
        {"no-push-pages", "",
         "do not push verified bytes into the kernel's page cache of files "
         "it knows (every read then comes to the FUSE server); pushes are "
         "on by default, guarded by a watchdog process that aborts the "
         "mount's FUSE connection if the server dies without unmounting"},
        {"push-pages", "", "push pages (the default)"},
        {"foreground", "", "serve in this process; do not daemonize"},
        {"log-file", "FILE", "daemon log (default: CACHE_DIR/lazypull.log)"},
        {"o", "OPTIONS",
         "mount options; only allow_other is accepted (other users may "
         "read the mount, the kernel checking each file's permissions; "
         "without root, needs user_allow_other in /etc/fuse.conf; an "
         "image mount as root always allows them)"},
    },
};

// The spec for this command line: with --blob one positional (MOUNTPOINT),
// otherwise IMAGE_REF MOUNTPOINT and the image-mount flags.
CommandSpec MountSpecFor(int argc, char** argv) {
  CommandSpec s = kMountSpec;
  bool blob = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") break;
    if (a == "--blob" || a.rfind("--blob=", 0) == 0) blob = true;
  }
  if (!blob) {
    s.positionals = {"IMAGE_REF", "MOUNTPOINT"};
    for (FlagSpec& f : ImageMountFlags()) s.flags.push_back(std::move(f));
  }
  return s;
}

const CommandSpec kUnmountSpec = {
    "unmount",
    "MOUNTPOINT [--force]",
    "Unmount a lazypull mount and end its serving process.",
    "A busy mount (a process has files open or its working directory there)\n"
    "is refused with EBUSY unless --force, which detaches it lazily.",
    {"MOUNTPOINT"},
    {{"force", "", "detach even if busy (lazy unmount)"}},
};

// The mountpoint as the mount table will name it: its parent resolved, its
// last component too unless something is mounted there already (a dead or
// hung mount must not be touched; a symlink to a directory is followed, as
// mount(2) follows it).
std::string MountpointPath(const std::string& arg) {
  const std::string p = PathWithoutTouchingIt(arg);
  if (TopMountAt(p).has_value()) return p;
  char buf[PATH_MAX];
  if (realpath(arg.c_str(), buf) != nullptr) return buf;
  return p;
}

// A path made absolute against the current directory (the serving process
// leaves it for "/", which must not keep the caller's directory busy).
std::string Absolute(const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) return p;
  return absl::StrCat(cwd, "/", p);
}

// Whether the mount table's topmost mount at a mountpoint is one of
// lazypull's: a layer's FUSE mount (or a bind mount of one), or the overlay
// or bind mount an image mount made of its run directory's layers.
bool IsLazypullMount(const MountEntry& e, const std::optional<MountRecord>& r) {
  if (e.fstype == "fuse.lazypull") return true;
  if (!r) return false;
  const std::string run_marker = absl::StrCat("/mounts/", r->pid, "/");
  // (An overlay of layers too many for absolute paths names them relative
  // to its source: MountLayerStack.)
  return absl::StrContains(e.super_options, run_marker) ||
         absl::StrContains(e.source, run_marker) ||
         absl::StrContains(e.root + "/", run_marker);
}

// Detaches what a dead image server left under its run directory (its layer
// mounts answer ENOTCONN) and removes the directory.
void CleanUpAfterDeadServer(const MountRecord& r) {
  // (A process that has the pid now may be a server that got the same run
  // directory: leave it to the next mount's sweep of dead run dirs.)
  if (r.run_dir.empty() || kill(r.pid, 0) == 0) return;
  std::vector<MountEntry> t = ReadMountTable();
  for (auto it = t.rbegin(); it != t.rend(); ++it) {
    if (absl::StartsWith(it->mount_point, r.run_dir + "/")) {
      umount2(it->mount_point.c_str(), MNT_DETACH);
      rmdir(it->mount_point.c_str());
    }
  }
  rmdir(r.run_dir.c_str());
}

// Everything from opening the layer to serving it. `ready` is called once
// the mount exists (or with the error that prevented it).
absl::Status Serve(const ParsedArgs& args,
                   const std::function<void(const absl::Status&)>& ready) {
  // A serving process's memory is mostly short-lived chunk buffers (up to a
  // few MiB each, on many threads): give them back to the kernel at once
  // rather than letting glibc's per-thread arenas and its growing mmap
  // threshold keep them as peak RSS.
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  mallopt(M_ARENA_MAX, 2);
  const std::string mountpoint = MountpointPath(args.positionals[0]);
  std::optional<std::string> toc = args.Get("toc-digest");
  LayerOpenOptions lo;
  if (toc) {
    absl::StatusOr<Digest> d = Digest::Parse(*toc);
    if (!d.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--toc-digest: ", d.status().message()));
    }
    lo.toc_digest = *d;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<FileBlobSource> src,
                   FileBlobSource::Open(*args.Get("blob")));
  absl::StatusOr<std::unique_ptr<LayerReader>> reader =
      LayerReader::Open(std::move(src), lo);
  if (!reader.ok()) {
    return absl::Status(
        reader.status().code(),
        absl::StrCat(*args.Get("blob"), ": ", reader.status().message()));
  }
  const std::string cache_dir = args.GetOr("cache-dir", DefaultCacheDir());
  ASSIGN_OR_RETURN(DiskChunkCacheOptions co, CacheOptionsFromArgs(args));
  ASSIGN_OR_RETURN(std::unique_ptr<DiskChunkCache> cache,
                   DiskChunkCache::Open(cache_dir + "/cache", co));
  std::shared_ptr<const LayerReader> shared_reader = std::move(*reader);
  auto layer = std::make_shared<CachedLayer>(shared_reader, std::move(cache));
  LayerFsOptions fo;
  fo.push_pages = !args.Has("no-push-pages");
  fo.state_name = shared_reader->toc_digest().ToString();
  fo.state_digest = fo.state_name;
  // Opaque directories carry trusted.overlay.opaque for a root overlayfs;
  // user.overlay.opaque too only for a user's (rootless, userxattr) one: a
  // root overlay would show the user.* marker in the merged view, and a
  // copy-up would carry it into the upper layer.
  fo.user_overlay_xattrs = geteuid() != 0;
  // LAZYPULL_REPLY=copy|splice-move picks another reply path (benchmarks).
  if (const char* r = getenv("LAZYPULL_REPLY"); r != nullptr) {
    fo.splice_reads = std::string(r) != "copy";
    fo.splice_move = std::string(r) == "splice-move";
  }
  auto fs = std::make_unique<LayerFs>(layer, fo);
  malloc_trim(0);  // return what parsing the TOC used to the kernel
  FuseServerOptions so;
  // (Opt-in here: a bare layer's setuid files and device nodes are not a
  // container's root, whose runtime decides who sees it.)
  so.allow_other = args.GetOr("o", "") == "allow_other";
  ASSIGN_OR_RETURN(std::unique_ptr<FuseServer> server,
                   FuseServer::Mount(mountpoint, LayerFs::Ops(), fs.get(), so));
  const std::string pid_file = MountRecordPath(mountpoint);
  MountRecord record;
  record.mountpoint = mountpoint;
  WriteMountRecord(pid_file, record);
  LogInfo("serving ", *args.Get("blob"), " (TOC ", fo.state_name, ") at ",
          mountpoint, ", cache ", cache_dir);
  // Pushes only once their watchdog runs.
  std::unique_ptr<ConnectionWatchdog> watchdog =
      GuardPushes(fo.push_pages, {server->connection_id()}, [] {});
  if (watchdog != nullptr) fs->StartPushing(server->session());
  ready(absl::OkStatus());
  absl::Status st = server->Run([&] {
    fs->StopPushing([&] { server->AbortConnection(); });
    if (watchdog != nullptr) watchdog->Stop();  // (before the unmount)
  });
  LogInfo("at unmount: ", layer->stats().cache_hits, " cache hits, ",
          fs->pushed_bytes(), " bytes pushed into the page cache (",
          fs->pushes_dropped(), " pushes dropped)");
  server.reset();
  fs.reset();
  layer.reset();
  // The last reference to the cache: its destructor flushes queued writes.
  // Only then may `unmount` (waiting on this pid) return.
  LogInfo("unmounted ", mountpoint);
  RemoveOwnMountRecord(pid_file);
  return st;
}

}  // namespace

int MountMain(int argc, char** argv) {
  int code;
  const CommandSpec spec = MountSpecFor(argc, argv);
  std::optional<ParsedArgs> args = ParseOrExit(spec, argc, argv, &code);
  if (!args) return code;
  const bool image = !args->Has("blob");
  // The mountpoint is the last positional either way.
  const std::string mountpoint_arg = args->positionals.back();
  if (image) {
    if (args->Has("toc-digest") || args->Has("insecure-skip-toc-verify")) {
      return Fail("mount", absl::InvalidArgumentError(
                               "--toc-digest and --insecure-skip-toc-verify "
                               "go with --blob; an image's layers are "
                               "anchored by their descriptors' annotations"));
    }
    if (absl::Status st = CheckImageMountArgs(*args); !st.ok()) {
      // A bad flag value: a usage error.
      std::cerr << "lazypull mount: " << st.message() << "\n";
      return 2;
    }
  } else if (!args->Has("toc-digest") &&
             !args->Has("insecure-skip-toc-verify")) {
    return Fail("mount",
                absl::InvalidArgumentError(
                    "refusing to mount without --toc-digest: nothing would "
                    "anchor the layer's contents. Pass the layer's "
                    "containerd.io/snapshot/stargz/toc.digest, or "
                    "--insecure-skip-toc-verify to trust the blob as is"));
  } else {
    // Bad flag values are usage errors, said here rather than by the
    // serving process (exit 1).
    absl::Status st = CacheOptionsFromArgs(*args).status();
    if (auto toc = args->Get("toc-digest"); st.ok() && toc) {
      st = Digest::Parse(*toc).status();
      if (!st.ok())
        st = absl::InvalidArgumentError(
            absl::StrCat("--toc-digest: ", st.message()));
    }
    if (!st.ok()) {
      std::cerr << "lazypull mount: " << st.message() << "\n";
      return 2;
    }
  }
  if (args->Has("o") && args->GetOr("o", "") != "allow_other") {
    return Fail("mount",
                absl::InvalidArgumentError("-o accepts only allow_other"));
  }
  // Paths made absolute: the serving process works from "/".
  for (const char* var :
       {"DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_CACHE_HOME",
        "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"}) {
    const char* v = getenv(var);
    if (v != nullptr && *v != '\0' && *v != '/') {
      setenv(var, Absolute(v).c_str(), 1);
    }
  }
  const std::string mp = MountpointPath(mountpoint_arg);
  args->positionals.back() = mp;
  for (const char* flag :
       {"blob", "cache-dir", "log-file", "ca-file", "hosts-dir"}) {
    if (auto v = args->Get(flag)) args->Replace(flag, Absolute(*v));
  }
  // One server per mountpoint: a second one stacked on the first would
  // share its record, and unmounting would orphan one of them.
  // (A server whose busy mount was detached lazily still runs, but the
  // mountpoint is free again.)
  std::optional<MountEntry> mounted = TopMountAt(mp);
  if (std::optional<MountRecord> r = ReadMountRecord(MountRecordPath(mp));
      r && ServerAlive(*r) && mounted && IsLazypullMount(*mounted, r)) {
    return Fail("mount", absl::AlreadyExistsError(absl::StrCat(
                             mp, " is already a lazypull mount (served by pid ",
                             r->pid, "): `lazypull unmount` it first")));
  }
  if (!mounted) {
    // (A mount there, dead or alive, is not touched: see MountpointPath.)
    struct stat st;
    if (stat(mp.c_str(), &st) != 0) {
      return Fail("mount", ErrnoToStatus(errno, "mountpoint " + mp));
    }
    if (!S_ISDIR(st.st_mode)) {
      return Fail("mount", absl::InvalidArgumentError(absl::StrCat(
                               "mountpoint ", mp, " is not a directory")));
    }
  }
  // Runs the server in this process; `ready` gets the user notes.
  auto serve = [&](const std::function<void(const std::string&)>& ready) {
    if (!image) {
      return Serve(*args, [&](const absl::Status&) { ready(""); });
    }
    return ServeImage(*args, mp, MountRecordPath(mp), ready);
  };
  if (args->Has("foreground")) {
    absl::Status st = serve([&](const std::string& notes) {
      if (!notes.empty()) std::cout << notes << "\n";
      std::cout << "mounted " << mp << std::endl;
    });
    return st.ok() ? 0 : Fail("mount", st);
  }
  // Daemonize: the child serves; the parent returns once it is mounted.
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return Fail("mount", ErrnoToStatus(errno, "pipe"));
  }
  pid_t pid = fork();
  if (pid < 0) return Fail("mount", ErrnoToStatus(errno, "fork"));
  if (pid > 0) {
    close(fds[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof(buf))) > 0) msg.append(buf, n);
    close(fds[0]);
    if (msg.rfind("OK", 0) == 0) {
      if (msg.size() > 3) std::cout << msg.substr(3) << "\n";
      std::cout << "mounted " << mp << " (pid " << pid << ")" << std::endl;
      // The mount is up and served by the child: this process has nothing
      // to tear down, and skipping exit-time destructors and library
      // teardown returns the command sooner.
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    std::cerr << "lazypull mount: "
              << (msg.empty() ? "the serving process died before the mount "
                                "was ready"
                              : msg)
              << "\n";
    return 1;
  }
  close(fds[0]);
  setsid();
  // Not the caller's directory: it would stay busy while this serves.
  if (chdir("/") != 0) LogWarning("chdir /: ", strerror(errno));
  // A caller that gives up (killed while the mount was being set up) closes
  // the pipe: the write below then fails with EPIPE instead of killing this
  // process between its mount and its clean-up.
  signal(SIGPIPE, SIG_IGN);
  const std::string cache_dir = args->GetOr("cache-dir", DefaultCacheDir());
  mkdir(cache_dir.c_str(), 0700);
  const std::string log_file =
      args->GetOr("log-file", absl::StrCat(cache_dir, "/lazypull.log"));
  int devnull = open("/dev/null", O_RDWR);
  int logfd =
      open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0600);
  if (logfd < 0) {
    // (Not served with the caller's stderr: a caller capturing the
    // command's output would wait for this server to end.)
    const std::string m(
        ErrnoToStatus(errno, absl::StrCat("log file ", log_file)).message());
    (void)!write(fds[1], m.data(), m.size());
    _exit(1);
  }
  dup2(devnull, 0);
  dup2(devnull, 1);
  dup2(logfd, 2);
  // Nothing of the caller's is held for the life of the mount (a pipe
  // capturing its output, descriptors a runtime leaves open): only the pipe
  // to the command, and what the server opens from here.
  const int told_fd = fcntl(fds[1], F_DUPFD_CLOEXEC, 3);
  if (told_fd >= 3) {
    if (told_fd > 3) close_range(3, told_fd - 1, 0);
    close_range(told_fd + 1, ~0U, 0);
    fds[1] = told_fd;
  }
  bool told = false;
  absl::Status st = serve([&](const std::string& notes) {
    const std::string m = notes.empty() ? "OK" : absl::StrCat("OK\n", notes);
    const ssize_t w = write(fds[1], m.data(), m.size());
    close(fds[1]);
    told = true;
    if (w < 0 && errno == EPIPE) {
      // Nobody was told the mount is up, and nobody will unmount it: the
      // command that started it is gone (a runtime's timeout killed it).
      LogWarning(
          "the mount command that started this server is gone; "
          "unmounting ",
          mp);
      kill(getpid(), SIGTERM);  // taken by the server's signal handling
    }
  });
  if (!told) {
    std::string m(st.message());
    ssize_t w = write(fds[1], m.data(), m.size());
    (void)w;
    close(fds[1]);
  }
  if (!st.ok()) LogError("mount: ", st.message());
  _exit(st.ok() ? 0 : 1);
}

int UnmountMain(int argc, char** argv) {
  int code;
  std::optional<ParsedArgs> args = ParseOrExit(kUnmountSpec, argc, argv, &code);
  if (!args) return code;
  // Nothing here touches the mount itself (no stat, no realpath of it): a
  // stopped or hung server would hang this command in the kernel.
  std::string mp = PathWithoutTouchingIt(args->positionals[0]);
  std::optional<MountEntry> top = TopMountAt(mp);
  if (!top) {
    // A symlink to the mountpoint, perhaps.
    char buf[PATH_MAX];
    if (realpath(args->positionals[0].c_str(), buf) != nullptr) {
      mp = buf;
      top = TopMountAt(mp);
    }
  }
  const bool force = args->Has("force");
  const std::string record_path = MountRecordPath(mp);
  // Read before unmounting: the server removes it on its way out.
  const std::optional<MountRecord> record = ReadMountRecord(record_path);
  // A record's pid may since have been reused by an unrelated process:
  // nothing is signalled unless the recorded server is the one running.
  const bool alive = record && ServerAlive(*record);
  const bool image = record && !record->image_ref.empty();
  auto forget_dead_server = [&] {
    if (!record || alive) return;
    CleanUpAfterDeadServer(*record);
    // Only that record: a new server may have written its own meanwhile.
    std::optional<MountRecord> now = ReadMountRecord(record_path);
    if (now && now->pid == record->pid &&
        now->start_ticks == record->start_ticks) {
      unlink(record_path.c_str());
    }
  };
  if (!top) {
    if (alive && image) {
      // The overlay went away (someone else unmounted it), its server
      // stayed: it ends (still serving a lazily detached overlay until
      // the last file there is closed).
      kill(record->pid, SIGTERM);
      std::cout << mp << " was not mounted; ended its serving process (pid "
                << record->pid << ")\n";
      return 0;
    }
    if (alive) {
      // A layer server finishing (a second unmount) or serving a mount
      // detached lazily: it ends by itself; a signal would cut off the
      // processes still using the detached mount.
      return Fail(
          "unmount",
          absl::InvalidArgumentError(absl::StrCat(
              mp, " is not a mount point (its serving process, pid ",
              record->pid, ", is finishing or serving a detached mount)")));
    }
    forget_dead_server();
    return Fail("unmount", absl::InvalidArgumentError(
                               absl::StrCat(mp, " is not a mount point")));
  }
  if (!IsLazypullMount(*top, record)) {
    return Fail("unmount",
                absl::FailedPreconditionError(absl::StrCat(
                    mp, " is a ", top->fstype,
                    " mount, not one of lazypull's: not unmounting it")));
  }
  // The FUSE connection's abort file, for a server that outlives the
  // unmount below (not for an image mount: its MOUNTPOINT is an overlay).
  ScopedFd abort_fd;
  if (alive && !image && top->fstype == "fuse.lazypull") {
    abort_fd = ScopedFd(OpenFuseAbortFile(top->minor));
  }
  // A busy mount detached lazily keeps its server until the last open file
  // there is closed: then there is nothing to wait for.
  bool detached_busy = false;
  int rc = umount2(mp.c_str(), 0);
  if (rc != 0 && errno == EBUSY && force) {
    rc = umount2(mp.c_str(), MNT_DETACH);
    detached_busy = rc == 0;
  }
  if (rc != 0 && errno == EPERM) {
    // Not root: fusermount3 unmounts FUSE mounts the user owns.
    auto fusermount = [&](bool lazy) {
      std::string cmd =
          absl::StrCat("fusermount3 -u ", lazy ? "-z " : "", "'",
                       absl::StrReplaceAll(mp, {{"'", "'\\''"}}), "'");
      return system(cmd.c_str()) == 0 ? 0 : -1;
    };
    rc = fusermount(false);
    if (rc != 0 && force) {
      rc = fusermount(true);
      detached_busy = rc == 0;
    }
    if (rc != 0) errno = EPERM;
  }
  if (rc != 0) {
    if (errno == EBUSY) {
      return Fail("unmount",
                  absl::UnavailableError(absl::StrCat(
                      mp,
                      " is busy (EBUSY): a process has files open or its "
                      "working directory there. Stop it, or pass --force "
                      "to detach the mount lazily")));
    }
    return Fail("unmount", ErrnoToStatus(errno, absl::StrCat("umount ", mp)));
  }
  // The overlay is gone: an image's server unmounts its layers and exits.
  // (With a busy overlay detached lazily it keeps serving until the last
  // file there is closed.)
  if (image && alive) kill(record->pid, SIGTERM);
  forget_dead_server();
  if (detached_busy) {
    std::cout << "detached " << mp
              << " (busy: its serving process exits once the last file open "
                 "there is closed)\n";
    return 0;
  }
  // Wait for the serving process to finish, so the caller may remount.
  if (alive) {
    auto serving = [&] { return ServerAlive(*record); };
    for (int i = 0; i < 40 && serving(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    // (Not for an image mount: its MOUNTPOINT is an overlay, not a FUSE
    // connection.)
    if (serving() && abort_fd.valid()) {
      // Still connected through another namespace's copy of the mount (e.g.
      // a sandbox created while it was mounted): abort the connection
      // (fusectl), which ends the server everywhere. (Through the file
      // opened before the unmount: once a connection is gone its number
      // may be a newer mount's, which a path opened now would abort.)
      const ssize_t w = write(abort_fd.get(), "1", 1);
      (void)w;
    }
    for (int i = 0; i < 600 && serving(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (serving()) {
      std::cout << "unmounted " << mp << "; its serving process (pid "
                << record->pid << ") is still shutting down\n";
      return 0;
    }
  }
  std::cout << "unmounted " << mp << "\n";
  return 0;
}

}  // namespace lazypull::cli
