// LayerIndex: the normalized, validated file tree of one layer, built from its
// parsed TOC (formats.md §1.2–§1.3).
//
// What it does with the raw entries:
//  - names are normalized (clean "/"+name, leading "/" stripped, root = "");
//    a name or hardlink target that climbs above the root rejects the layer;
//  - implicit parent directories are synthesized (mode 0755, owner 0);
//  - `chunk` entries are bound to the closest preceding regular file, their
//    sizes filled in, and checked to tile the file exactly (no gap, overlap or
//    disorder); each chunk gets its compressed extent [blob_offset, blob_end)
//    (next distinct payload offset, or `endOffset`, or the TOC's start);
//  - hardlinks resolve to their target's inode (missing targets, loops and
//    links to directories are errors); link counts are POSIX (dirs: 2 +
//    subdirectories; others: 1 + hardlinks);
//  - omitted user/group names are back-filled per id in TOC order;
//  - `.prefetch.landmark` / `.no.prefetch.landmark` are recorded and left out
//    of the tree. Whiteouts stay raw: presenting them is the consumer's job.
//
// Inode 0 is the root. Inode numbers are dense, stable for a given TOC, and
// independent of any FUSE numbering (which adds 1).
//
// Thread-safety: immutable after Build(); any number of threads may read it.
#ifndef LAZYPULL_CORE_LAYER_INDEX_H_
#define LAZYPULL_CORE_LAYER_INDEX_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/digest.h"
#include "core/tar_path.h"  // NormalizeTarPath, for the index's users
#include "core/toc.h"

namespace lazypull {

// One verified unit of file content.
struct Chunk {
  uint64_t file_offset = 0;   // offset of the chunk in its file
  uint64_t size = 0;          // uncompressed length (> 0)
  uint64_t blob_offset = 0;   // compressed offset of its gzip member / frame
  uint64_t blob_end = 0;      // end of its compressed extent (exclusive)
  uint64_t inner_offset = 0;  // bytes to skip after inflating from blob_offset
  Digest digest;              // sha256 of the chunk's bytes
  bool has_digest = false;    // false only for "zeros" chunks without digest
  bool zeros = false;         // containers/storage run of zeros: no data
  uint32_t inode = 0;         // the file it belongs to
};

struct Inode {
  EntryType type = EntryType::kDir;  // never kHardlink or kChunk
  bool implicit = false;
  bool has_mtime = false;
  uint32_t mode = 0;  // permission + setuid/setgid/sticky
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t uname = 0;  // index into names(); 0 is ""
  uint32_t gname = 0;
  uint64_t size = 0;  // regular files
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  uint32_t dev_major = 0;
  uint32_t dev_minor = 0;
  uint32_t nlink = 1;
  std::optional<Digest> digest;  // regular files: the whole-file digest
  std::string symlink;           // symlink target, verbatim
  uint32_t first_chunk = 0;      // regular files: chunks()[first, first+n)
  uint32_t num_chunks = 0;
  uint32_t first_xattr = 0;  // xattrs()[first, first+n)
  uint32_t num_xattrs = 0;
  uint32_t first_child = 0;  // directories: children()[first, first+n)
  uint32_t num_children = 0;
  uint32_t dirent = 0;  // the entry that defined it (root: kNoDirent)
};

// A name in a directory. A hardlink is a second Dirent to an existing inode.
struct Dirent {
  std::string name;
  uint32_t parent = 0;  // directory inode
  uint32_t inode = 0;
  bool hardlink = false;
};

class LayerIndex {
 public:
  static constexpr uint32_t kRoot = 0;
  static constexpr uint32_t kNoDirent = UINT32_MAX;

  // Builds the tree. `data_end` is where the payload region ends (the TOC's
  // start in the blob); every chunk must lie before it.
  static absl::StatusOr<LayerIndex> Build(const Toc& toc, uint64_t data_end);

  const std::vector<Inode>& inodes() const { return inodes_; }
  const Inode& inode(uint32_t i) const { return inodes_[i]; }
  const std::vector<Dirent>& dirents() const { return dirents_; }
  // Chunks of every file, in TOC (= blob) order within each file; files in
  // TOC order.
  const std::vector<Chunk>& chunks() const { return chunks_; }
  absl::Span<const Chunk> FileChunks(uint32_t inode) const {
    const Inode& n = inodes_[inode];
    return absl::MakeConstSpan(chunks_).subspan(n.first_chunk, n.num_chunks);
  }
  // Dirent indices of a directory's children, sorted by name (byte order).
  absl::Span<const uint32_t> Children(uint32_t dir) const {
    const Inode& n = inodes_[dir];
    return absl::MakeConstSpan(children_).subspan(n.first_child,
                                                  n.num_children);
  }
  absl::Span<const std::pair<std::string, std::string>> Xattrs(
      uint32_t inode) const {
    const Inode& n = inodes_[inode];
    return absl::MakeConstSpan(xattrs_).subspan(n.first_xattr, n.num_xattrs);
  }
  const std::string& name(uint32_t id) const { return names_[id]; }

  // The child dirent of `dir` called `name`, if any.
  std::optional<uint32_t> Lookup(uint32_t dir, absl::string_view name) const;
  // Normalized full path of a dirent ("" for kNoDirent, the root).
  std::string Path(uint32_t dirent) const;
  // Inode at a normalized path, if any.
  std::optional<uint32_t> Resolve(absl::string_view path) const;

  // Index into chunks() of the chunk of `inode` holding byte `offset`.
  // REQUIRES: offset < inode(inode).size.
  uint32_t ChunkAt(uint32_t inode, uint64_t offset) const;

  // Offset of `.prefetch.landmark` (the prefetch range is [0, offset)).
  std::optional<uint64_t> prefetch_landmark_offset() const {
    return prefetch_landmark_;
  }
  bool has_no_prefetch_landmark() const { return no_prefetch_landmark_; }
  // Regular files before the prefetch landmark, in TOC order.
  const std::vector<uint32_t>& prioritized_files() const {
    return prioritized_;
  }
  uint64_t toc_entry_count() const { return toc_entry_count_; }
  uint64_t total_file_bytes() const { return total_file_bytes_; }

 private:
  friend class LayerIndexBuilder;
  std::vector<Inode> inodes_;
  std::vector<Dirent> dirents_;
  std::vector<uint32_t> children_;
  std::vector<Chunk> chunks_;
  std::vector<std::pair<std::string, std::string>> xattrs_;
  std::vector<std::string> names_;
  std::vector<uint32_t> prioritized_;
  std::optional<uint64_t> prefetch_landmark_;
  bool no_prefetch_landmark_ = false;
  uint64_t toc_entry_count_ = 0;
  uint64_t total_file_bytes_ = 0;
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LAYER_INDEX_H_
