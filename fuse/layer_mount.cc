#include "fuse/layer_mount.h"

#include <errno.h>
#include <sys/mount.h>
#include <sys/xattr.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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
  std::string opts = absl::StrCat("lowerdir=", absl::StrJoin(top_first, ":"));
  if (!upper.empty()) {
    absl::StrAppend(&opts, ",upperdir=", upper, ",workdir=", work);
  }
  if (mount("overlay", mountpoint.c_str(), "overlay",
            upper.empty() ? MS_RDONLY : 0, opts.c_str()) != 0) {
    return ErrnoToStatus(errno,
                         absl::StrCat("mounting the overlay of ", lowers.size(),
                                      " layer(s) at ", mountpoint));
  }
  return absl::OkStatus();
}

}  // namespace lazypull
