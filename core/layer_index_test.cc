#include "core/layer_index.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"
#include "core/toc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kDataEnd = 1 << 20;

TocEntry Dir(absl::string_view name, uint32_t mode = 0755) {
  TocEntry e;
  e.name = std::string(name);
  e.type = EntryType::kDir;
  e.mode = mode;
  return e;
}

// A regular file whose first chunk is at `offset`; chunk_size 0 = absent.
TocEntry Reg(absl::string_view name, uint64_t size, uint64_t offset = 0,
             uint64_t chunk_size = 0) {
  TocEntry e;
  e.name = std::string(name);
  e.type = EntryType::kReg;
  e.mode = 0644;
  e.size = size;
  e.offset = size > 0 ? offset : 0;
  e.chunk_size = chunk_size;
  e.digest = Sha256::Of(absl::StrCat("file ", name));
  if (size > 0) e.chunk_digest = Sha256::Of(absl::StrCat("chunk0 ", name));
  return e;
}

TocEntry ChunkEntry(uint64_t offset, uint64_t chunk_offset,
                    uint64_t chunk_size = 0) {
  TocEntry e;
  e.name = "not-trusted";
  e.type = EntryType::kChunk;
  e.offset = offset;
  e.chunk_offset = chunk_offset;
  e.chunk_size = chunk_size;
  e.chunk_digest = Sha256::Of(absl::StrCat("chunk ", chunk_offset));
  return e;
}

TocEntry Link(EntryType type, absl::string_view name,
              absl::string_view target) {
  TocEntry e;
  e.name = std::string(name);
  e.type = type;
  e.link_name = std::string(target);
  e.mode = 0777;
  return e;
}

TocEntry Hardlink(absl::string_view name, absl::string_view target) {
  return Link(EntryType::kHardlink, name, target);
}

TocEntry Symlink(absl::string_view name, absl::string_view target) {
  return Link(EntryType::kSymlink, name, target);
}

absl::StatusOr<LayerIndex> Build(std::vector<TocEntry> entries,
                                 uint64_t data_end = kDataEnd) {
  Toc toc;
  toc.entries = std::move(entries);
  return LayerIndex::Build(toc, data_end);
}

// Names of a directory's children, in listing order.
std::vector<std::string> Names(const LayerIndex& idx, uint32_t dir) {
  std::vector<std::string> out;
  for (uint32_t d : idx.Children(dir)) out.push_back(idx.dirents()[d].name);
  return out;
}

uint32_t MustResolve(const LayerIndex& idx, absl::string_view path) {
  std::optional<uint32_t> ino = idx.Resolve(path);
  EXPECT_TRUE(ino.has_value()) << path;
  return ino.value_or(0);
}

void ExpectInvalid(const absl::StatusOr<LayerIndex>& idx,
                   absl::string_view substr) {
  ASSERT_FALSE(idx.ok()) << "expected an error mentioning \"" << substr << "\"";
  EXPECT_EQ(idx.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(idx.status().message()),
              HasSubstr(std::string(substr)));
}

// ---- NormalizeTarPath -------------------------------------------------------

TEST(NormalizeTarPathTest, Cleans) {
  const std::pair<const char*, const char*> cases[] = {
      {"", ""},           {".", ""},
      {"./", ""},         {"/", ""},
      {"//", ""},         {"a", "a"},
      {"./a", "a"},       {"/a", "a"},
      {"a/", "a"},        {"./a/b/", "a/b"},
      {"a//b", "a/b"},    {"a/./b", "a/b"},
      {"a/../b", "b"},    {"a/b/..", "a"},
      {"a/b/../..", ""},  {"/./a/.//b", "a/b"},
      {"...", "..."},     {"..a/b", "..a/b"},
      {"a/..b", "a/..b"}, {".wh..wh..opq", ".wh..wh..opq"},
  };
  for (const auto& [in, want] : cases) {
    absl::StatusOr<std::string> got = NormalizeTarPath(in);
    ASSERT_TRUE(got.ok()) << in << ": " << got.status();
    EXPECT_EQ(*got, want) << in;
  }
}

TEST(NormalizeTarPathTest, RejectsEscapesAndNul) {
  for (absl::string_view in :
       {"..", "../", "../x", "/..", "/../x", "./../x", "a/../../x",
        "a/b/../../..", "../../etc/passwd", "/abs/../../x"}) {
    absl::StatusOr<std::string> got = NormalizeTarPath(in);
    EXPECT_FALSE(got.ok()) << in;
    if (!got.ok()) {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(got.status().message()),
                  HasSubstr("climbs above"));
    }
  }
  EXPECT_FALSE(NormalizeTarPath(absl::string_view("a\0b", 3)).ok());
}

// A component longer than NAME_MAX can be neither looked up nor extracted
// (over 1024 bytes, the kernel refuses the whole FUSE directory listing).
TEST(NormalizeTarPathTest, RejectsComponentsLongerThanNameMax) {
  const std::string ok(255, 'n'), long_name(256, 'n');
  EXPECT_TRUE(NormalizeTarPath("d/" + ok + "/f").ok());
  for (const std::string& in :
       {long_name, "./d/" + long_name, "d/" + long_name + "/f",
        "d//" + long_name + "/../f", std::string(2000, 'x') + "/"}) {
    absl::StatusOr<std::string> got = NormalizeTarPath(in);
    EXPECT_FALSE(got.ok()) << in.size();
    if (!got.ok()) {
      EXPECT_THAT(std::string(got.status().message()),
                  HasSubstr("longer than 255 bytes"));
    }
  }
  ExpectInvalid(Build({Reg("d/" + long_name, 1, 0)}), "longer than 255");
}

// No path or symlink target longer than PATH_MAX less its NUL can be created
// or read back; extraction and the mount refuse the same layers.
TEST(NormalizeTarPathTest, RejectsPathsAndTargetsLongerThanPathMax) {
  std::string at_max;
  while (at_max.size() + 2 <= 4095) at_max += "d/";
  at_max += std::string(4095 - at_max.size(), 'f');
  ASSERT_EQ(at_max.size(), 4095u);
  absl::StatusOr<std::string> got = NormalizeTarPath("./" + at_max);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, at_max);
  // Spelled longer, but clean it is short enough.
  EXPECT_TRUE(NormalizeTarPath("x/../" + at_max).ok());
  for (const std::string& in : {at_max + "f", "/" + at_max + "/g"}) {
    got = NormalizeTarPath(in);
    ASSERT_FALSE(got.ok()) << in.size();
    EXPECT_THAT(std::string(got.status().message()),
                HasSubstr("longer than 4095 (PATH_MAX)"));
    EXPECT_LT(got.status().message().size(), 500u);  // not the whole name
  }
  EXPECT_TRUE(CheckSymlinkTarget(at_max).ok());
  EXPECT_FALSE(CheckSymlinkTarget(at_max + "x").ok());
  EXPECT_FALSE(CheckSymlinkTarget(std::string("a\0b", 3)).ok());
  ExpectInvalid(Build({Reg(at_max + "f", 1, 0)}), "PATH_MAX");
  ExpectInvalid(Build({Symlink("s", at_max + "x")}), "PATH_MAX");
  ExpectInvalid(Build({Reg("f", 1, 0), Hardlink("h", at_max + "x")}),
                "PATH_MAX");
  EXPECT_TRUE(Build({Symlink("s", at_max)}).ok());
}

// ---- Names and the tree -----------------------------------------------------

TEST(LayerIndexTest, NamesAreNormalized) {
  absl::StatusOr<LayerIndex> idx = Build({
      Dir("./etc/"),
      Reg("/etc/passwd", 5, 100),
      Dir("usr/"),
      Dir("./usr/bin"),
      Reg("usr/bin/./tool", 3, 200),
      Symlink("./usr/bin/sh", "/bin/busybox"),
  });
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_THAT(Names(*idx, LayerIndex::kRoot), ElementsAre("etc", "usr"));
  uint32_t passwd = MustResolve(*idx, "etc/passwd");
  EXPECT_EQ(idx->inode(passwd).type, EntryType::kReg);
  EXPECT_EQ(idx->inode(passwd).size, 5u);
  EXPECT_EQ(idx->Path(idx->inode(passwd).dirent), "etc/passwd");
  uint32_t sh = MustResolve(*idx, "usr/bin/sh");
  EXPECT_EQ(idx->inode(sh).type, EntryType::kSymlink);
  EXPECT_EQ(idx->inode(sh).symlink, "/bin/busybox");  // verbatim
  EXPECT_THAT(Names(*idx, MustResolve(*idx, "usr/bin")),
              ElementsAre("sh", "tool"));
  EXPECT_EQ(idx->Resolve(""), LayerIndex::kRoot);
  EXPECT_FALSE(idx->Resolve("etc/passwd/x").has_value());
  EXPECT_FALSE(idx->Resolve("nope").has_value());
  EXPECT_EQ(idx->toc_entry_count(), 6u);
  EXPECT_EQ(idx->total_file_bytes(), 8u);
}

TEST(LayerIndexTest, DotDotInNamesIsRejected) {
  ExpectInvalid(Build({Reg("../../etc/passwd", 1, 0)}), "climbs above");
  ExpectInvalid(Build({Reg("/abs/../../x", 1, 0)}), "climbs above");
  ExpectInvalid(Build({Dir("a/"), Symlink("a/../../s", "x")}), "climbs above");
  // `..` that stays inside the layer is fine.
  absl::StatusOr<LayerIndex> idx = Build({Reg("a/../b", 1, 0)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_TRUE(idx->Resolve("b").has_value());
  EXPECT_FALSE(idx->Resolve("a").has_value());
}

TEST(LayerIndexTest, DotDotInHardlinkTargetsIsRejected) {
  absl::StatusOr<LayerIndex> idx =
      Build({Reg("etc/passwd", 1, 0), Hardlink("hl", "../../etc/passwd")});
  ExpectInvalid(idx, "climbs above");
  EXPECT_THAT(std::string(idx.status().message()), HasSubstr("hl"));
  // Symlink targets are kept verbatim: they are never resolved by lazypull.
  idx = Build({Symlink("sl", "../../etc/passwd")});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->inode(MustResolve(*idx, "sl")).symlink, "../../etc/passwd");
}

TEST(LayerIndexTest, ImplicitDirectoriesAndLinkCounts) {
  absl::StatusOr<LayerIndex> idx = Build({
      Reg("a/b/c.txt", 4, 0),
      Dir("a/d/"),
      Reg("a/e", 1, 10),
      Reg("top", 1, 20),
  });
  ASSERT_TRUE(idx.ok()) << idx.status();
  const Inode& root = idx->inode(LayerIndex::kRoot);
  EXPECT_TRUE(root.implicit);
  EXPECT_EQ(root.mode, 0755u);
  EXPECT_EQ(root.dirent, LayerIndex::kNoDirent);
  EXPECT_EQ(root.nlink, 3u);  // 2 + "a"
  const Inode& a = idx->inode(MustResolve(*idx, "a"));
  EXPECT_TRUE(a.implicit);
  EXPECT_EQ(a.type, EntryType::kDir);
  EXPECT_EQ(a.mode, 0755u);
  EXPECT_EQ(a.uid, 0u);
  EXPECT_FALSE(a.has_mtime);
  EXPECT_EQ(a.nlink, 4u);  // 2 + "b" + "d"
  const Inode& b = idx->inode(MustResolve(*idx, "a/b"));
  EXPECT_TRUE(b.implicit);
  EXPECT_EQ(b.nlink, 2u);
  const Inode& d = idx->inode(MustResolve(*idx, "a/d"));
  EXPECT_FALSE(d.implicit);
  EXPECT_EQ(d.nlink, 2u);
  EXPECT_EQ(idx->inode(MustResolve(*idx, "a/b/c.txt")).nlink, 1u);
  EXPECT_THAT(Names(*idx, MustResolve(*idx, "a")), ElementsAre("b", "d", "e"));
}

TEST(LayerIndexTest, ExplicitRootEntry) {
  absl::StatusOr<LayerIndex> idx = Build({Dir("./", 0751), Dir("x/")});
  ASSERT_TRUE(idx.ok()) << idx.status();
  const Inode& root = idx->inode(LayerIndex::kRoot);
  EXPECT_FALSE(root.implicit);
  EXPECT_EQ(root.mode, 0751u);
  EXPECT_EQ(root.nlink, 3u);
  ExpectInvalid(Build({Reg("./", 1, 0)}), "root");
  ExpectInvalid(Build({Symlink("/", "x")}), "root");
}

TEST(LayerIndexTest, ChildrenAreSortedByBytes) {
  absl::StatusOr<LayerIndex> idx =
      Build({Dir("b"), Dir("B"), Dir("a"), Dir("\xc3\xa9"), Dir("_")});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_THAT(Names(*idx, LayerIndex::kRoot),
              ElementsAre("B", "_", "a", "b", "\xc3\xa9"));
  for (const char* n : {"B", "_", "a", "b", "\xc3\xa9"}) {
    std::optional<uint32_t> d = idx->Lookup(LayerIndex::kRoot, n);
    ASSERT_TRUE(d.has_value()) << n;
    EXPECT_EQ(idx->dirents()[*d].name, n);
  }
  EXPECT_FALSE(idx->Lookup(LayerIndex::kRoot, "c").has_value());
  EXPECT_FALSE(idx->Lookup(LayerIndex::kRoot, "").has_value());
}

TEST(LayerIndexTest, AFileUsedAsADirectoryIsRejected) {
  ExpectInvalid(Build({Reg("f", 1, 0), Reg("f/g", 1, 10)}), "not one");
  ExpectInvalid(Build({Symlink("s", "/etc"), Reg("s/passwd", 1, 10)}),
                "not one");
  ExpectInvalid(Build({Reg("f", 1, 0), Hardlink("h", "f"), Reg("h/x", 1, 10)}),
                "not one");
}

// ---- Hardlinks --------------------------------------------------------------

TEST(LayerIndexTest, HardlinksShareTheirTargetsInode) {
  absl::StatusOr<LayerIndex> idx = Build({
      Reg("bin/tool", 10, 0), Hardlink("bin/h1", "bin/tool"),
      Hardlink("./h2", "/bin/tool"),
      Hardlink("h3", "h2"),  // a link to a link resolves to the inode
      Reg("other", 1, 100), Symlink("sym", "other"),
      Hardlink("symhl", "sym"),  // links to symlinks are allowed
  });
  ASSERT_TRUE(idx.ok()) << idx.status();
  uint32_t tool = MustResolve(*idx, "bin/tool");
  EXPECT_EQ(MustResolve(*idx, "bin/h1"), tool);
  EXPECT_EQ(MustResolve(*idx, "h2"), tool);
  EXPECT_EQ(MustResolve(*idx, "h3"), tool);
  EXPECT_EQ(idx->inode(tool).nlink, 4u);
  EXPECT_EQ(idx->inode(MustResolve(*idx, "other")).nlink, 1u);
  EXPECT_EQ(idx->inode(MustResolve(*idx, "sym")).nlink, 2u);
  std::optional<uint32_t> d = idx->Lookup(LayerIndex::kRoot, "h2");
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(idx->dirents()[*d].hardlink);
  EXPECT_EQ(idx->Path(*d), "h2");
  EXPECT_FALSE(idx->dirents()[idx->inode(tool).dirent].hardlink);
  // Hardlinks are not directories: the root has one subdirectory, "bin".
  EXPECT_EQ(idx->inode(LayerIndex::kRoot).nlink, 3u);
}

TEST(LayerIndexTest, HardlinkBeforeItsTarget) {
  absl::StatusOr<LayerIndex> idx = Build({Hardlink("h", "f"), Reg("f", 1, 0)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(MustResolve(*idx, "h"), MustResolve(*idx, "f"));
  EXPECT_EQ(idx->inode(MustResolve(*idx, "f")).nlink, 2u);
}

TEST(LayerIndexTest, BadHardlinks) {
  ExpectInvalid(Build({Hardlink("h", "missing")}), "missing");
  ExpectInvalid(Build({Hardlink("h", "")}), "missing");
  ExpectInvalid(Build({Hardlink("h", "./")}), "missing");
  ExpectInvalid(Build({Hardlink("h", "h")}), "loop");
  ExpectInvalid(Build({Hardlink("h", "./h")}), "loop");
  ExpectInvalid(Build({Hardlink("a", "b"), Hardlink("b", "a")}), "loop");
  ExpectInvalid(
      Build({Hardlink("a", "b"), Hardlink("b", "c"), Hardlink("c", "a")}),
      "loop");
  ExpectInvalid(Build({Dir("d"), Hardlink("h", "d")}), "directory");
  ExpectInvalid(Build({Reg("d/f", 1, 0), Hardlink("h", "d")}), "directory");
  // A landmark is not in the tree, so it cannot be a target.
  TocEntry landmark = Reg(".prefetch.landmark", 1, 10);
  ExpectInvalid(Build({landmark, Hardlink("h", ".prefetch.landmark")}),
                "missing");
}

// A later entry replaces an earlier one of the same name, as tar does; a
// hardlink that was replaced must not still claim the name.
TEST(LayerIndexTest, ReplacedHardlinkDoesNotResurface) {
  absl::StatusOr<LayerIndex> idx = Build({
      Reg("f", 1, 0),
      Hardlink("h", "f"),
      Reg("h", 5, 100),
  });
  ASSERT_TRUE(idx.ok()) << idx.status();
  uint32_t h = MustResolve(*idx, "h");
  EXPECT_NE(h, MustResolve(*idx, "f"));
  EXPECT_EQ(idx->inode(h).size, 5u);
  EXPECT_EQ(idx->inode(MustResolve(*idx, "f")).nlink, 1u);
  EXPECT_EQ(idx->inode(h).nlink, 1u);
  // Replaced by another hardlink: only the last one counts.
  idx = Build({Reg("f", 1, 0), Reg("g", 2, 100), Hardlink("h", "f"),
               Hardlink("h", "g"), Hardlink("i", "h")});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(MustResolve(*idx, "h"), MustResolve(*idx, "g"));
  EXPECT_EQ(MustResolve(*idx, "i"), MustResolve(*idx, "g"));
  EXPECT_EQ(idx->inode(MustResolve(*idx, "f")).nlink, 1u);
  EXPECT_EQ(idx->inode(MustResolve(*idx, "g")).nlink, 3u);
  // A replaced link's target need not exist.
  idx = Build({Hardlink("h", "missing"), Reg("h", 1, 0)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->inode(MustResolve(*idx, "h")).nlink, 1u);
}

TEST(LayerIndexTest, LaterRegularFileReplacesEarlierOne) {
  absl::StatusOr<LayerIndex> idx = Build({Reg("f", 1, 0), Reg("f", 7, 100)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->inode(MustResolve(*idx, "f")).size, 7u);
  EXPECT_THAT(Names(*idx, LayerIndex::kRoot), ElementsAre("f"));
}

// ---- Duplicates, owners, attributes -----------------------------------------

TEST(LayerIndexTest, DirectoryAfterItsChildUpdatesAttributes) {
  TocEntry late = Dir("late/", 0700);
  late.uid = 5;
  late.gid = 6;
  late.has_modtime = true;
  late.mtime_sec = 1622548800;
  late.xattrs = {{"user.k", "v"}};
  absl::StatusOr<LayerIndex> idx = Build({Reg("late/child.txt", 3, 0), late});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_THAT(Names(*idx, LayerIndex::kRoot), ElementsAre("late"));
  uint32_t ino = MustResolve(*idx, "late");
  const Inode& n = idx->inode(ino);
  EXPECT_FALSE(n.implicit);
  EXPECT_EQ(n.mode, 0700u);
  EXPECT_EQ(n.uid, 5u);
  EXPECT_EQ(n.gid, 6u);
  EXPECT_TRUE(n.has_mtime);
  EXPECT_EQ(n.mtime_sec, 1622548800);
  ASSERT_EQ(idx->Xattrs(ino).size(), 1u);
  EXPECT_EQ(idx->Xattrs(ino)[0].first, "user.k");
  EXPECT_TRUE(idx->Resolve("late/child.txt").has_value());
  // A repeated directory entry updates too.
  idx = Build({Dir("d", 0755), Dir("./d/", 0700)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->inode(MustResolve(*idx, "d")).mode, 0700u);
  EXPECT_THAT(Names(*idx, LayerIndex::kRoot), ElementsAre("d"));
}

TEST(LayerIndexTest, DirectoryAndFileOfTheSameNameConflict) {
  ExpectInvalid(Build({Dir("x"), Reg("x", 1, 0)}), "conflicts");
  ExpectInvalid(Build({Reg("x", 1, 0), Dir("x")}), "conflicts");
  ExpectInvalid(Build({Reg("x/y", 1, 0), Symlink("x", "y")}), "conflicts");
}

TEST(LayerIndexTest, OwnerNamesAreBackFilledPerId) {
  std::vector<TocEntry> es;
  auto owned = [](absl::string_view name, uint32_t uid, absl::string_view un,
                  uint32_t gid, absl::string_view gn) {
    TocEntry e = Dir(name);
    e.uid = uid;
    e.gid = gid;
    e.uname = std::string(un);
    e.gname = std::string(gn);
    return e;
  };
  es.push_back(owned("a", 1000, "alice", 100, "users"));
  es.push_back(owned("b", 1000, "", 100, ""));  // both omitted
  es.push_back(owned("c", 0, "root", 6, "disk"));
  es.push_back(owned("d", 1000, "", 6, ""));     // gid 6 is "disk", not alice
  es.push_back(owned("e", 2000, "", 2000, ""));  // never named
  es.push_back(owned("f", 1000, "alice2", 100, ""));  // mapping changes
  es.push_back(owned("g", 1000, "", 100, ""));
  absl::StatusOr<LayerIndex> idx = Build(std::move(es));
  ASSERT_TRUE(idx.ok()) << idx.status();
  auto names = [&](absl::string_view path) {
    const Inode& n = idx->inode(MustResolve(*idx, path));
    return std::make_pair(idx->name(n.uname), idx->name(n.gname));
  };
  EXPECT_EQ(names("a"),
            std::make_pair(std::string("alice"), std::string("users")));
  EXPECT_EQ(names("b"),
            std::make_pair(std::string("alice"), std::string("users")));
  EXPECT_EQ(names("c"),
            std::make_pair(std::string("root"), std::string("disk")));
  EXPECT_EQ(names("d"),
            std::make_pair(std::string("alice"), std::string("disk")));
  EXPECT_EQ(names("e"), std::make_pair(std::string(""), std::string("")));
  EXPECT_EQ(names("f"),
            std::make_pair(std::string("alice2"), std::string("users")));
  EXPECT_EQ(names("g"),
            std::make_pair(std::string("alice2"), std::string("users")));
}

TEST(LayerIndexTest, DevicesTimesAndXattrs) {
  TocEntry c = Link(EntryType::kChar, "dev/null", "");
  c.dev_major = 1;
  c.dev_minor = 3;
  c.mode = 0666;
  TocEntry b = Link(EntryType::kBlock, "dev/sdb17", "");
  b.dev_major = 259;
  b.dev_minor = 1048575;
  TocEntry p = Link(EntryType::kFifo, "run/fifo", "");
  TocEntry f = Reg("f", 2, 0);
  f.has_modtime = true;
  f.mtime_sec = -5;
  f.mtime_nsec = 123;
  f.xattrs = {{"user.a", std::string("\0\xff", 2)}, {"security.b", ""}};
  f.mode = 06755;
  absl::StatusOr<LayerIndex> idx = Build({c, b, p, f});
  ASSERT_TRUE(idx.ok()) << idx.status();
  const Inode& cn = idx->inode(MustResolve(*idx, "dev/null"));
  EXPECT_EQ(cn.type, EntryType::kChar);
  EXPECT_EQ(cn.dev_major, 1u);
  EXPECT_EQ(cn.dev_minor, 3u);
  EXPECT_EQ(cn.mode, 0666u);
  const Inode& bn = idx->inode(MustResolve(*idx, "dev/sdb17"));
  EXPECT_EQ(bn.type, EntryType::kBlock);
  EXPECT_EQ(bn.dev_minor, 1048575u);
  EXPECT_EQ(idx->inode(MustResolve(*idx, "run/fifo")).type, EntryType::kFifo);
  uint32_t fi = MustResolve(*idx, "f");
  const Inode& fn = idx->inode(fi);
  EXPECT_TRUE(fn.has_mtime);
  EXPECT_EQ(fn.mtime_sec, -5);
  EXPECT_EQ(fn.mtime_nsec, 123u);
  EXPECT_EQ(fn.mode, 06755u);
  ASSERT_EQ(idx->Xattrs(fi).size(), 2u);
  EXPECT_EQ(idx->Xattrs(fi)[0].second, std::string("\0\xff", 2));
  EXPECT_TRUE(idx->Xattrs(MustResolve(*idx, "dev/null")).empty());
}

// ---- Chunks -----------------------------------------------------------------

TEST(LayerIndexTest, SingleChunkFilesGetTheirSizeFilledIn) {
  TocEntry e = Reg("f", 1000, 64);
  e.inner_offset = 512;
  absl::StatusOr<LayerIndex> idx = Build({e, Reg("empty", 0)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  uint32_t f = MustResolve(*idx, "f");
  ASSERT_EQ(idx->FileChunks(f).size(), 1u);
  const Chunk& c = idx->FileChunks(f)[0];
  EXPECT_EQ(c.file_offset, 0u);
  EXPECT_EQ(c.size, 1000u);
  EXPECT_EQ(c.blob_offset, 64u);
  EXPECT_EQ(c.inner_offset, 512u);
  EXPECT_EQ(c.inode, f);
  EXPECT_TRUE(c.has_digest);
  EXPECT_EQ(c.digest, *e.chunk_digest);
  EXPECT_TRUE(idx->FileChunks(MustResolve(*idx, "empty")).empty());
  EXPECT_EQ(idx->inode(MustResolve(*idx, "empty")).digest,
            Reg("empty", 0).digest);
}

TEST(LayerIndexTest, ChunkEntriesBindToThePrecedingFile) {
  absl::StatusOr<LayerIndex> idx = Build({
      Reg("a", 25, 100, 10), ChunkEntry(200, 10, 10),
      ChunkEntry(300, 20),  // short last chunk: size absent
      Reg("b", 20, 400, 10),
      ChunkEntry(500, 10, 10),  // full last chunk carries its size
  });
  ASSERT_TRUE(idx.ok()) << idx.status();
  uint32_t a = MustResolve(*idx, "a");
  absl::Span<const Chunk> ac = idx->FileChunks(a);
  ASSERT_EQ(ac.size(), 3u);
  EXPECT_EQ(ac[0].file_offset, 0u);
  EXPECT_EQ(ac[0].size, 10u);
  EXPECT_EQ(ac[1].file_offset, 10u);
  EXPECT_EQ(ac[1].size, 10u);
  EXPECT_EQ(ac[2].file_offset, 20u);
  EXPECT_EQ(ac[2].size, 5u);
  for (const Chunk& c : ac) EXPECT_EQ(c.inode, a);
  EXPECT_EQ(ac[1].digest, Sha256::Of("chunk 10"));
  uint32_t b = MustResolve(*idx, "b");
  ASSERT_EQ(idx->FileChunks(b).size(), 2u);
  EXPECT_EQ(idx->FileChunks(b)[1].size, 10u);
  // The chunk entries' own names are not in the tree.
  EXPECT_FALSE(idx->Resolve("not-trusted").has_value());
  EXPECT_EQ(idx->chunks().size(), 5u);
  // ChunkAt maps file offsets to chunks.
  EXPECT_EQ(idx->ChunkAt(a, 0), idx->inode(a).first_chunk);
  EXPECT_EQ(idx->ChunkAt(a, 9), idx->inode(a).first_chunk);
  EXPECT_EQ(idx->ChunkAt(a, 10), idx->inode(a).first_chunk + 1);
  EXPECT_EQ(idx->ChunkAt(a, 24), idx->inode(a).first_chunk + 2);
  EXPECT_EQ(idx->ChunkAt(b, 19), idx->inode(b).first_chunk + 1);
}

TEST(LayerIndexTest, BadChunkLists) {
  // Out of order.
  ExpectInvalid(Build({Reg("f", 30, 0, 10), ChunkEntry(200, 20, 10),
                       ChunkEntry(100, 10, 10)}),
                "f");
  // Duplicate offset.
  ExpectInvalid(Build({Reg("f", 20, 0, 10), ChunkEntry(100, 0, 10),
                       ChunkEntry(200, 10, 10)}),
                "out of order or overlap");
  // Overlap: first chunk claims 15 bytes, next starts at 10.
  ExpectInvalid(Build({Reg("f", 20, 0, 15), ChunkEntry(100, 10)}),
                "does not end where the next begins");
  // Gap.
  ExpectInvalid(Build({Reg("f", 20, 0, 5), ChunkEntry(100, 10)}),
                "does not end where the next begins");
  // Chunks that do not add up to the file size.
  ExpectInvalid(Build({Reg("f", 25, 0, 10), ChunkEntry(100, 10, 10)}),
                "does not end");
  ExpectInvalid(Build({Reg("f", 5, 0, 10)}), "does not end");
  // A chunk starting past the end of the file.
  ExpectInvalid(Build({Reg("f", 10, 0), ChunkEntry(100, 20)}), "f");
  // First chunk not at 0.
  TocEntry late_start = Reg("f", 10, 0);
  late_start.chunk_offset = 5;
  ExpectInvalid(Build({late_start}), "offset 0");
  // Missing chunk digest.
  TocEntry no_digest = ChunkEntry(100, 10);
  no_digest.chunk_digest.reset();
  ExpectInvalid(Build({Reg("f", 20, 0, 10), no_digest}), "chunkDigest");
  // The error names the file.
  ExpectInvalid(Build({Dir("d"), Reg("d/file", 20, 0, 5), ChunkEntry(100, 10)}),
                "d/file");
}

TEST(LayerIndexTest, ChunkWithNoFileIsRejected) {
  ExpectInvalid(Build({ChunkEntry(0, 0, 10)}), "follows no regular file");
  ExpectInvalid(Build({Dir("d"), ChunkEntry(0, 0, 10)}),
                "follows no regular file");
  // Any other entry closes the file: a chunk after it belongs to nothing.
  ExpectInvalid(Build({Reg("f", 10, 0), Dir("d"), ChunkEntry(100, 5)}),
                "follows no regular file");
  ExpectInvalid(Build({Reg("f", 10, 0), Reg("empty", 0), ChunkEntry(100, 5)}),
                "follows no regular file");
  ExpectInvalid(
      Build({Reg("f", 10, 0), Hardlink("h", "f"), ChunkEntry(100, 5)}),
      "follows no regular file");
  ExpectInvalid(Build({Reg("f", 10, 0), Reg(".prefetch.landmark", 1, 50),
                       ChunkEntry(100, 5)}),
                "follows no regular file");
}

TEST(LayerIndexTest, OneChunkFileWithOnlyAFileDigest) {
  // containers/storage writes only `digest` for a file stored as one chunk.
  TocEntry e = Reg("f", 10, 0);
  e.chunk_digest.reset();
  absl::StatusOr<LayerIndex> idx = Build({e});
  ASSERT_TRUE(idx.ok()) << idx.status();
  const Chunk& c = idx->chunks()[0];
  EXPECT_TRUE(c.has_digest);
  EXPECT_EQ(c.digest, *e.digest);
  // With no digest at all it is refused.
  e.digest.reset();
  ExpectInvalid(Build({e}), "chunkDigest");
  // Two chunks need chunk digests.
  TocEntry first = Reg("g", 20, 0, 10);
  first.chunk_digest.reset();
  ExpectInvalid(Build({first, ChunkEntry(100, 10)}), "chunkDigest");
}

// Legacy stargz (CRFS) writes no chunkDigest: a file of several chunks has
// only its `digest`. It is indexed as one chunk checked against that digest,
// its extent running from its first member to the next file's.
TEST(LayerIndexTest, ChunksWithOnlyAFileDigestAreOneChunk) {
  TocEntry first = Reg("big", 25, 100, 10);
  first.chunk_digest.reset();
  TocEntry second = ChunkEntry(200, 10, 10);
  second.chunk_digest.reset();
  TocEntry third = ChunkEntry(300, 20);
  third.chunk_digest.reset();
  TocEntry next = Reg("next", 5, 400);
  absl::StatusOr<LayerIndex> idx = Build({first, second, third, next});
  ASSERT_TRUE(idx.ok()) << idx.status();
  ASSERT_EQ(idx->chunks().size(), 2u);
  const Chunk& c = idx->chunks()[0];
  EXPECT_EQ(c.file_offset, 0u);
  EXPECT_EQ(c.size, 25u);
  EXPECT_EQ(c.blob_offset, 100u);
  EXPECT_EQ(c.blob_end, 400u);
  EXPECT_TRUE(c.has_digest);
  EXPECT_EQ(c.digest, *first.digest);
  const Inode& big = idx->inode(MustResolve(*idx, "big"));
  EXPECT_EQ(big.num_chunks, 1u);
  EXPECT_EQ(big.size, 25u);
  EXPECT_EQ(idx->chunks()[1].blob_offset, 400u);
  EXPECT_EQ(idx->chunks()[big.first_chunk + 1].inode,
            MustResolve(*idx, "next"));
  // Without the file's digest, or with chunks out of order, it is refused.
  TocEntry undigested = first;
  undigested.digest.reset();
  ExpectInvalid(Build({undigested, second, third}), "chunkDigest");
  TocEntry back = third;
  back.offset = 150;
  ExpectInvalid(Build({first, second, back}), "out of order");
}

TEST(LayerIndexTest, ExtentsEndAtTheNextDistinctOffset) {
  TocEntry shared = Reg("c", 5, 200);
  shared.inner_offset = 1024;
  absl::StatusOr<LayerIndex> idx = Build(
      {
          Reg("a", 20, 100, 10),
          ChunkEntry(150, 10),
          Reg("b", 5, 200),
          shared,           // shares b's member
          Reg("empty", 0),  // offset 0: not a payload
          Reg("d", 5, 300),
      },
      400);
  ASSERT_TRUE(idx.ok()) << idx.status();
  auto extent = [&](absl::string_view path, size_t k) {
    const Chunk& c = idx->FileChunks(MustResolve(*idx, path))[k];
    return std::make_pair(c.blob_offset, c.blob_end);
  };
  EXPECT_EQ(extent("a", 0), std::make_pair(uint64_t{100}, uint64_t{150}));
  EXPECT_EQ(extent("a", 1), std::make_pair(uint64_t{150}, uint64_t{200}));
  EXPECT_EQ(extent("b", 0), std::make_pair(uint64_t{200}, uint64_t{300}));
  EXPECT_EQ(extent("c", 0), std::make_pair(uint64_t{200}, uint64_t{300}));
  EXPECT_EQ(extent("d", 0), std::make_pair(uint64_t{300}, uint64_t{400}));
}

TEST(LayerIndexTest, ExtentsIgnoreTocOrder) {
  // Offsets need not increase in TOC order; extents follow blob order.
  absl::StatusOr<LayerIndex> idx =
      Build({Reg("late", 5, 300), Reg("early", 5, 100)}, 500);
  ASSERT_TRUE(idx.ok()) << idx.status();
  const Chunk& late = idx->FileChunks(MustResolve(*idx, "late"))[0];
  const Chunk& early = idx->FileChunks(MustResolve(*idx, "early"))[0];
  EXPECT_EQ(early.blob_end, 300u);
  EXPECT_EQ(late.blob_end, 500u);
}

TEST(LayerIndexTest, EndOffsetBoundsTheExtent) {
  TocEntry a = Reg("a", 5, 100);
  a.end_offset = 150;
  TocEntry b = Reg("b", 5, 200);
  b.end_offset = 400;  // == data_end: allowed
  absl::StatusOr<LayerIndex> idx = Build({a, b}, 400);
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->FileChunks(MustResolve(*idx, "a"))[0].blob_end, 150u);
  EXPECT_EQ(idx->FileChunks(MustResolve(*idx, "b"))[0].blob_end, 400u);
  for (uint64_t bad :
       {uint64_t{100}, uint64_t{50}, uint64_t{401}, ~uint64_t{0}}) {
    a.end_offset = bad;
    ExpectInvalid(Build({a, b}, 400), "endOffset");
  }
}

// containers/storage (Podman's zstd:chunked) gives a file's main entry the
// endOffset of the file's whole payload, past its own first chunk: the next
// chunk's start still ends the extent (it spanned the whole file, so the
// first read of a large file fetched all of it).
TEST(LayerIndexTest, EndOffsetNeverWidensTheExtent) {
  TocEntry f = Reg("f", 10, 100, 5);
  f.end_offset = 300;  // the whole file's end
  TocEntry second = ChunkEntry(200, 5, 5);
  second.end_offset = 300;
  absl::StatusOr<LayerIndex> idx = Build({f, second}, 400);
  ASSERT_TRUE(idx.ok()) << idx.status();
  const auto chunks = idx->FileChunks(MustResolve(*idx, "f"));
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].blob_end, 200u);
  EXPECT_EQ(chunks[1].blob_end, 300u);
}

TEST(LayerIndexTest, ChunkPastThePayloadRegionIsRejected) {
  ExpectInvalid(Build({Reg("f", 5, 400)}, 400), "past the payload region");
  ExpectInvalid(Build({Reg("f", 5, uint64_t{1} << 40)}, 400),
                "past the payload region");
  ExpectInvalid(Build({Reg("f", 10, 0, 5), ChunkEntry(1000, 5)}, 400),
                "past the payload region");
}

TEST(LayerIndexTest, ZerosChunksHaveNoExtent) {
  TocEntry zeros = ChunkEntry(150, 10);
  zeros.zeros = true;
  zeros.chunk_digest.reset();
  absl::StatusOr<LayerIndex> idx =
      Build({Reg("f", 30, 100, 10), zeros, ChunkEntry(200, 20)}, 400);
  // A zeros chunk without a digest is allowed only for zeros.
  ASSERT_TRUE(idx.ok()) << idx.status();
  absl::Span<const Chunk> cs = idx->FileChunks(MustResolve(*idx, "f"));
  ASSERT_EQ(cs.size(), 3u);
  EXPECT_TRUE(cs[1].zeros);
  EXPECT_FALSE(cs[1].has_digest);
  EXPECT_EQ(cs[1].size, 10u);
  // The zeros chunk's offset does not cut its neighbour's extent.
  EXPECT_EQ(cs[0].blob_end, 200u);
  EXPECT_EQ(cs[2].blob_end, 400u);
  // Nor is it checked against the payload region.
  zeros.offset = 1000;
  EXPECT_TRUE(
      Build({Reg("f", 30, 100, 10), zeros, ChunkEntry(200, 20)}, 400).ok());
}

// ---- Landmarks --------------------------------------------------------------

TEST(LayerIndexTest, PrefetchLandmarkIsRecordedAndHidden) {
  absl::StatusOr<LayerIndex> idx = Build({
      Dir("app/"),
      Reg("app/start", 10, 100),
      Reg("app/empty", 0),
      Reg("app/lib", 10, 200),
      Reg("./.prefetch.landmark", 1, 300),
      Reg("app/rest", 10, 400),
  });
  ASSERT_TRUE(idx.ok()) << idx.status();
  ASSERT_TRUE(idx->prefetch_landmark_offset().has_value());
  EXPECT_EQ(*idx->prefetch_landmark_offset(), 300u);
  EXPECT_FALSE(idx->has_no_prefetch_landmark());
  EXPECT_FALSE(idx->Resolve(".prefetch.landmark").has_value());
  EXPECT_THAT(Names(*idx, LayerIndex::kRoot), ElementsAre("app"));
  std::vector<std::string> prio;
  for (uint32_t ino : idx->prioritized_files()) {
    prio.push_back(idx->Path(idx->inode(ino).dirent));
  }
  EXPECT_THAT(prio, ElementsAre("app/start", "app/lib"));
  // The landmark's payload is not a file chunk.
  EXPECT_EQ(idx->chunks().size(), 3u);
  // The rest of the layer's extents are unaffected by it being hidden.
  EXPECT_EQ(idx->FileChunks(MustResolve(*idx, "app/rest"))[0].blob_offset,
            400u);
}

TEST(LayerIndexTest, NoPrefetchLandmarkIsRecordedAndHidden) {
  absl::StatusOr<LayerIndex> idx = Build({
      Reg(".no.prefetch.landmark", 1, 0),
      Reg("a", 10, 100),
      Reg("b", 10, 200),
  });
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_TRUE(idx->has_no_prefetch_landmark());
  EXPECT_FALSE(idx->prefetch_landmark_offset().has_value());
  EXPECT_FALSE(idx->Resolve(".no.prefetch.landmark").has_value());
  EXPECT_THAT(Names(*idx, LayerIndex::kRoot), ElementsAre("a", "b"));
  // Without a .prefetch.landmark nothing is prioritized.
  EXPECT_TRUE(idx->prioritized_files().empty());
}

TEST(LayerIndexTest, NoLandmarkMeansNothingPrioritized) {
  absl::StatusOr<LayerIndex> idx = Build({Reg("a", 10, 100)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_FALSE(idx->prefetch_landmark_offset().has_value());
  EXPECT_FALSE(idx->has_no_prefetch_landmark());
  EXPECT_TRUE(idx->prioritized_files().empty());
}

TEST(LayerIndexTest, LandmarkNamesInSubdirectoriesAreOrdinaryFiles) {
  absl::StatusOr<LayerIndex> idx = Build({Reg("d/.prefetch.landmark", 1, 100)});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_FALSE(idx->prefetch_landmark_offset().has_value());
  EXPECT_TRUE(idx->Resolve("d/.prefetch.landmark").has_value());
}

TEST(LayerIndexTest, EmptyToc) {
  absl::StatusOr<LayerIndex> idx = Build({});
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->inodes().size(), 1u);
  EXPECT_TRUE(idx->Children(LayerIndex::kRoot).empty());
  EXPECT_EQ(idx->inode(LayerIndex::kRoot).nlink, 2u);
  EXPECT_EQ(idx->Path(LayerIndex::kNoDirent), "");
  EXPECT_EQ(idx->toc_entry_count(), 0u);
}

}  // namespace
}  // namespace lazypull
