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

#include <memory>
#include <string>

#include "core/cached_layer.h"
#include "core/layer_reader.h"
#include "core/memory_blob_source.h"
#include "core/memory_chunk_cache.h"
#include "core/testing/test_layer.h"
#include "gtest/gtest.h"
#include "tests/in_process_mount.h"
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
  fo.push_pages = true;  // (the pusher must stop with the abort too)
  auto mount = InProcessMount::Start(layer, fo);
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string dir = (*mount)->dir();
  const std::string file = dir + "/hello";
  EXPECT_EQ(ReadWholeFile(file).data, "hello, world\n");
  ASSERT_TRUE((*mount)->server().AbortConnection());
  struct stat st;
  EXPECT_NE(stat((dir + "/other").c_str(), &st), 0);
  const int err = errno;
  EXPECT_EQ(err, ENOTCONN);
  // (Not aborted: an unmount ends the loop, so the test fails, not hangs.)
  if (err != ENOTCONN) umount2(dir.c_str(), MNT_DETACH);
  (void)(*mount)->Join();
  EXPECT_TRUE((*mount)->stopped_pushing());
  // (Run unmounted it: the directory is a plain one again.)
  EXPECT_EQ(stat(dir.c_str(), &st), 0) << strerror(errno);
}

}  // namespace
}  // namespace lazypull::testing
