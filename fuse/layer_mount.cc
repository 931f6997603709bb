#include "fuse/layer_mount.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/status_macros.h"

namespace lazypull {

absl::StatusOr<std::unique_ptr<ServedLayer>> ServedLayer::Start(
    const std::string& dir, std::shared_ptr<CachedLayer> layer,
    const LayerFsOptions& fs_options, FuseServerOptions server_options) {
  std::unique_ptr<ServedLayer> s(new ServedLayer());
  s->dir_ = dir;
  s->layer_ = std::move(layer);
  s->fs_ = std::make_unique<LayerFs>(s->layer_, fs_options);
  server_options.install_signal_handlers = false;
  ASSIGN_OR_RETURN(s->server_, FuseServer::Mount(dir, LayerFs::Ops(),
                                                 s->fs_.get(), server_options));
  FuseServer* server = s->server_.get();
  LayerFs* fs = s->fs_.get();
  // Pushes start before the loop can end (an unmount from outside), and
  // stop however it ends, before the descriptor is closed.
  fs->StartPushing(server->session());
  s->thread_ = std::thread([server, fs, dir] {
    absl::Status st = server->Run([fs, server] {
      fs->StopPushing([server] { server->AbortConnection(); });
    });
    if (!st.ok()) LogWarning("serving ", dir, ": ", st.message());
  });
  return s;
}

void ServedLayer::Stop() {
  // (While the session serves; should its loop have ended meanwhile and a
  // push hang on a page a queued read holds, the abort frees it.)
  if (fs_ != nullptr) {
    FuseServer* server = server_.get();
    fs_->StopPushing([server] { server->AbortConnection(); });
  }
  if (thread_.joinable()) {
    // Unmounting ends the session: Run() returns.
    if (umount2(dir_.c_str(), 0) != 0) umount2(dir_.c_str(), MNT_DETACH);
    thread_.join();
  }
  server_.reset();
}

ServedLayer::~ServedLayer() { Stop(); }

namespace {

// A path as overlayfs's options take it: they are split at ',' and
// lowerdir's list at ':', and a backslash escapes either (or itself).
std::string OverlayPath(absl::string_view path) {
  std::string out;
  out.reserve(path.size());
  for (char c : path) {
    if (c == '\\' || c == ':' || c == ',') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// `path` past its first `skip` bytes (0: the whole path), without the
// slashes that may follow them ("/a//b" past "/a/" is "b", not "/b").
absl::string_view Below(absl::string_view path, size_t skip) {
  if (skip == 0) return path;
  path.remove_prefix(skip);
  while (!path.empty() && path.front() == '/') path.remove_prefix(1);
  return path;
}

// overlayfs's options for `top_first` lowers (and `upper`, `work` unless
// empty), each path taken after its first `skip` bytes.
std::string OverlayOptions(const std::vector<std::string>& top_first,
                           const std::string& upper, const std::string& work,
                           size_t skip) {
  std::string opts = "lowerdir=";
  for (size_t i = 0; i < top_first.size(); ++i) {
    if (i != 0) opts.push_back(':');
    opts += OverlayPath(Below(top_first[i], skip));
  }
  if (!upper.empty()) {
    absl::StrAppend(&opts, ",upperdir=", OverlayPath(Below(upper, skip)),
                    ",workdir=", OverlayPath(Below(work, skip)));
  }
  return opts;
}

// The longest directory every one of `paths` (absolute) is beneath, with
// its trailing '/' ("/" at least).
std::string CommonDirectory(const std::vector<std::string>& paths) {
  std::string common = paths.front();
  for (const std::string& p : paths) {
    size_t n = 0;
    // (Short of each path's last byte: no path is the directory itself.)
    while (n < common.size() && n + 1 < p.size() && common[n] == p[n]) ++n;
    common.resize(n);
  }
  // Back to a whole component that is a directory of every path (a common
  // prefix "/a/b" of "/a/b" and "/a/bc" is not one).
  const size_t slash = common.rfind('/');
  common.resize(slash == std::string::npos ? 0 : slash + 1);
  return common.empty() ? "/" : common;
}

}  // namespace

absl::Status MountLayerStack(const std::vector<std::string>& all_lowers,
                             const std::string& mountpoint,
                             const std::string& upper,
                             const std::string& work) {
  if (all_lowers.empty()) {
    return absl::InvalidArgumentError("no layers to mount");
  }
  // overlayfs ignores the opaque mark on a lower layer's root: a layer whose
  // root is opaque (its tar has "./.wh..wh..opq") hides every layer below
  // it only if those are left out.
  // (Only while two layers remain: a single one would be bind-mounted, its
  // whiteouts shown as devices.)
  std::vector<std::string> lowers = all_lowers;
  for (size_t i = lowers.size() - 1; i-- > 1;) {
    char v = 0;
    if (getxattr(lowers[i].c_str(), "trusted.overlay.opaque", &v, 1) == 1 &&
        v == 'y') {
      lowers.erase(lowers.begin(), lowers.begin() + static_cast<long>(i));
      break;
    }
  }
  if (upper.empty() && lowers.size() == 1) {
    const std::string& src = lowers[0];
    if (mount(src.c_str(), mountpoint.c_str(), nullptr, MS_BIND, nullptr) !=
        0) {
      return ErrnoToStatus(
          errno, absl::StrCat("bind-mounting ", src, " at ", mountpoint));
    }
    if (mount(nullptr, mountpoint.c_str(), nullptr,
              MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
      absl::Status st = ErrnoToStatus(
          errno, absl::StrCat("remounting ", mountpoint, " read-only"));
      umount2(mountpoint.c_str(), MNT_DETACH);
      return st;
    }
    return absl::OkStatus();
  }
  // overlayfs lists lower dirs top first.
  std::vector<std::string> top_first(lowers.rbegin(), lowers.rend());
  const unsigned long flags = upper.empty() ? MS_RDONLY : 0;
  const std::string what = absl::StrCat(
      "mounting the overlay of ", lowers.size(), " layer(s) at ", mountpoint);
  // mount(2) takes one page of options. When they are longer (many layers,
  // long paths), the paths are given relative to the directory they share,
  // from a thread of this process whose working directory it is (overlayfs
  // resolves them at mount time; containerd mounts such stacks the same
  // way). The mount's source is then that directory, so that the table
  // still says where its layers are.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::string opts = OverlayOptions(top_first, upper, work, 0);
  if (opts.size() < page) {
    if (mount("overlay", mountpoint.c_str(), "overlay", flags, opts.c_str()) !=
        0) {
      return ErrnoToStatus(errno, what);
    }
    return absl::OkStatus();
  }
  std::vector<std::string> all = top_first;
  if (!upper.empty()) {
    all.push_back(upper);
    all.push_back(work);
  }
  for (const std::string& p : all) {
    if (p.empty() || p[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": layer path \"", p, "\" is not absolute"));
    }
  }
  const std::string base = CommonDirectory(all);
  opts = OverlayOptions(top_first, upper, work, base.size());
  if (opts.size() >= page) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": overlayfs's options take ", opts.size(),
                     " bytes even with the layers' paths relative to ", base,
                     ", more than the ", page, " a mount takes"));
  }
  std::string target = mountpoint;
  if (target.empty() || target[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == nullptr) return ErrnoToStatus(errno, what);
    target = absl::StrCat(cwd, "/", mountpoint);
  }
  int err = 0;
  std::thread t([&] {
    // (Only this thread's working directory changes.)
    if (unshare(CLONE_FS) != 0 || chdir(base.c_str()) != 0 ||
        mount(base.c_str(), target.c_str(), "overlay", flags, opts.c_str()) !=
            0) {
      err = errno;
    }
  });
  t.join();
  if (err != 0) {
    return ErrnoToStatus(
        err, absl::StrCat(what, " (layer paths relative to ", base, ")"));
  }
  return absl::OkStatus();
}

}  // namespace lazypull
