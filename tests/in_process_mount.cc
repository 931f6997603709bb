#include "tests/in_process_mount.h"

#include <sys/mount.h>

#include <utility>

#include "tests/tree_check.h"

namespace lazypull::testing {

absl::StatusOr<std::unique_ptr<InProcessMount>> InProcessMount::Start(
    std::shared_ptr<CachedLayer> layer, LayerFsOptions options) {
  if (options.state_name.empty()) options.state_name = "test";
  if (options.state_digest.empty()) options.state_digest = "sha256:test";
  std::unique_ptr<InProcessMount> m(new InProcessMount());
  m->fs_ = std::make_unique<LayerFs>(std::move(layer), options);
  m->dir_ = MakeTempDir("mnt");
  FuseServerOptions so;
  so.install_signal_handlers = false;
  absl::StatusOr<std::unique_ptr<FuseServer>> server =
      FuseServer::Mount(m->dir_, LayerFs::Ops(), m->fs_.get(), so);
  if (!server.ok()) return server.status();
  m->server_ = std::move(*server);
  m->fs_->StartPushing(m->server_->session());
  InProcessMount* self = m.get();
  m->loop_ = std::thread([self] {
    self->served_ = self->server_->Run([self] {
      self->fs_->StopPushing([self] { self->server_->AbortConnection(); });
      self->stopped_pushing_ = true;
    });
  });
  return m;
}

absl::Status InProcessMount::Join() {
  if (loop_.joinable()) loop_.join();
  return served_;
}

InProcessMount::~InProcessMount() {
  if (loop_.joinable()) {
    umount2(dir_.c_str(), MNT_DETACH);
    // (A detached mount lives on while a failed test still holds a file of
    // it open: the abort ends the loop either way.)
    server_->AbortConnection();
    loop_.join();
  }
  umount2(dir_.c_str(), MNT_DETACH);  // (in case the loop did not)
}

}  // namespace lazypull::testing
