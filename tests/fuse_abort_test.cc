// FuseServer::AbortConnection, on a real mount served in this process: the
// server finds its mount's connection (from /proc/self/mountinfo, without
// touching the mount) and aborting it fails what the mount is asked from then
// on (ENOTCONN) and ends the serving loop. A LayerFs's pushes stop with it:
// StopPushing is handed the abort for a pusher stuck on a page a queued read
// holds, after a signal ended the loop.
//
// Needs root and /dev/fuse (tag `no-sandbox`); skips loudly otherwise.
#include <errno.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "core/cached_layer.h"
#include "core/layer_reader.h"
#include "core/memory_blob_source.h"
#include "core/memory_chunk_cache.h"
#include "core/testing/test_layer.h"
#include "fuse/fuse_server.h"
#include "fuse/layer_fs.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

TEST(FuseAbortTest, AbortingTheConnectionEndsTheMountsService) {
  LAZYPULL_SKIP_WITHOUT_FUSE();
  TestLayer t;
  t.AddFile("hello", "hello, world\n");
  auto reader =
      LayerReader::Open(std::make_shared<MemoryBlobSource>(t.Build().blob), {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto layer = std::make_shared<CachedLayer>(
      std::move(*reader), std::make_shared<MemoryChunkCache>(0));
  LayerFsOptions fo;
  fo.state_name = "test";
  fo.state_digest = "sha256:test";
  LayerFs fs(layer, fo);
  const std::string dir = MakeTempDir("mnt");
  FuseServerOptions so;
  so.install_signal_handlers = false;
  auto server = FuseServer::Mount(dir, LayerFs::Ops(), &fs, so);
  ASSERT_TRUE(server.ok()) << server.status();
  fs.StartPushing((*server)->session());
  absl::Status served;
  bool stopped_pushing = false;
  std::thread loop([&] {
    served = (*server)->Run([&] {
      fs.StopPushing([&] { (*server)->AbortConnection(); });
      stopped_pushing = true;
    });
  });
  const std::string file = dir + "/hello";
  EXPECT_EQ(ReadWholeFile(file).data, "hello, world\n");
  ASSERT_TRUE((*server)->AbortConnection());
  struct stat st;
  EXPECT_NE(stat((dir + "/other").c_str(), &st), 0);
  const int err = errno;
  EXPECT_EQ(err, ENOTCONN);
  // (Not aborted: an unmount ends the loop, so the test fails, not hangs.)
  if (err != ENOTCONN) umount2(dir.c_str(), MNT_DETACH);
  loop.join();
  EXPECT_TRUE(stopped_pushing);
  // (Run unmounted it: the directory is a plain one again.)
  EXPECT_EQ(stat(dir.c_str(), &st), 0) << strerror(errno);
  umount2(dir.c_str(), MNT_DETACH);  // (in case it did not)
}

}  // namespace
}  // namespace lazypull::testing
