#include "core/layer_index.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace lazypull {

class LayerIndexBuilder {
 public:
  explicit LayerIndexBuilder(LayerIndex* idx) : idx_(*idx) {}

  absl::Status Run(const Toc& toc, uint64_t data_end);

 private:
  struct PendingLink {
    uint32_t dirent;
    std::string target;
    size_t entry;
    bool replaced = false;  // a later entry of the same name took its place
  };

  uint32_t Intern(const std::string& s) {
    if (s.empty()) return 0;
    auto [it, inserted] =
        name_ids_.try_emplace(s, static_cast<uint32_t>(idx_.names_.size()));
    if (inserted) idx_.names_.push_back(s);
    return it->second;
  }
  uint32_t NewInode(EntryType type) {
    idx_.inodes_.emplace_back();
    idx_.inodes_.back().type = type;
    return static_cast<uint32_t>(idx_.inodes_.size() - 1);
  }
  // Returns the directory inode at `path`, creating implicit ones. Iterative:
  // a hostile name may have millions of components.
  absl::StatusOr<uint32_t> EnsureDir(absl::string_view path);
  // The dirent called `name` in directory inode `dir`, if any.
  std::optional<uint32_t> FindChild(uint32_t dir, absl::string_view name) {
    auto it = child_dirent_.find(ChildKey(dir, name));
    if (it == child_dirent_.end()) return std::nullopt;
    return it->second;
  }
  void AddChild(uint32_t dir, absl::string_view name, uint32_t dirent) {
    child_dirent_.emplace(std::string(ChildKey(dir, name)), dirent);
  }
  // The dirent at a normalized, non-empty path, if any.
  std::optional<uint32_t> FindPath(absl::string_view path);
  absl::string_view ChildKey(uint32_t dir, absl::string_view name) {
    key_buf_.assign(reinterpret_cast<const char*>(&dir), sizeof(dir));
    key_buf_.append(name.data(), name.size());
    return key_buf_;
  }
  absl::Status AddEntry(const TocEntry& e, size_t index);
  // Appends the chunk that TOC entry `e` (a `reg` or `chunk`) describes.
  void AddChunk(const TocEntry& e, uint32_t inode);
  void SetAttrs(uint32_t ino, const TocEntry& e, size_t index);
  absl::Status FinishFile(size_t entry_index);
  absl::Status ResolveLinks();
  absl::Status ComputeExtents(uint64_t data_end);
  void BuildChildren();

  LayerIndex& idx_;
  absl::flat_hash_map<std::string, uint32_t> name_ids_;
  // (parent directory inode, name) -> dirent. Keyed per component, not by
  // full path, so memory stays linear in the TOC size for deep trees.
  absl::flat_hash_map<std::string, uint32_t> child_dirent_;
  std::string key_buf_;
  // EnsureDir's answers for the paths it was asked about (not for every
  // prefix: each key is part of some entry's name, so this stays linear too).
  // A directory never changes inode or type, so answers never go stale.
  absl::flat_hash_map<std::string, uint32_t> dir_cache_;
  // id -> interned name: writers omit a repeated name, readers back-fill.
  absl::flat_hash_map<uint32_t, uint32_t> uid_names_;
  absl::flat_hash_map<uint32_t, uint32_t> gid_names_;
  std::vector<PendingLink> links_;
  // dirent -> index in links_ of its current (not replaced) hardlink entry.
  absl::flat_hash_map<uint32_t, size_t> live_link_;
  // The regular file whose chunks are being collected, or UINT32_MAX.
  uint32_t open_file_ = UINT32_MAX;
  uint32_t open_file_dirent_ = 0;      // for error messages
  std::vector<uint64_t> end_offsets_;  // parallel to chunks_: endOffset or 0
  std::vector<size_t> xattr_src_;      // per inode: TOC entry index or npos
  const Toc* toc_ = nullptr;
};

absl::StatusOr<uint32_t> LayerIndexBuilder::EnsureDir(absl::string_view path) {
  if (path.empty()) return LayerIndex::kRoot;
  if (auto it = dir_cache_.find(path); it != dir_cache_.end()) {
    return it->second;
  }
  uint32_t dir = LayerIndex::kRoot;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == absl::string_view::npos) slash = path.size();
    absl::string_view name = path.substr(pos, slash - pos);
    pos = slash + 1;
    if (std::optional<uint32_t> found = FindChild(dir, name)) {
      const Dirent& d = idx_.dirents_[*found];
      if (d.hardlink || idx_.inodes_[d.inode].type != EntryType::kDir) {
        return absl::InvalidArgumentError(
            absl::StrCat("\"", path.substr(0, slash),
                         "\" is used as a directory but is not one"));
      }
      dir = d.inode;
      continue;
    }
    uint32_t ino = NewInode(EntryType::kDir);
    xattr_src_.push_back(SIZE_MAX);
    Inode& n = idx_.inodes_[ino];
    n.implicit = true;
    n.mode = 0755;
    Dirent d;
    d.name = std::string(name);
    d.parent = dir;
    d.inode = ino;
    idx_.dirents_.push_back(std::move(d));
    uint32_t di = static_cast<uint32_t>(idx_.dirents_.size() - 1);
    n.dirent = di;
    AddChild(dir, name, di);
    dir = ino;
  }
  dir_cache_.emplace(std::string(path), dir);
  return dir;
}

std::optional<uint32_t> LayerIndexBuilder::FindPath(absl::string_view path) {
  uint32_t dir = LayerIndex::kRoot;
  size_t pos = 0;
  for (;;) {
    size_t slash = path.find('/', pos);
    if (slash == absl::string_view::npos) slash = path.size();
    std::optional<uint32_t> d = FindChild(dir, path.substr(pos, slash - pos));
    if (!d || slash == path.size()) return d;
    const Dirent& x = idx_.dirents_[*d];
    if (x.hardlink || idx_.inodes_[x.inode].type != EntryType::kDir) {
      return std::nullopt;
    }
    dir = x.inode;
    pos = slash + 1;
  }
}

void LayerIndexBuilder::SetAttrs(uint32_t ino, const TocEntry& e,
                                 size_t index) {
  Inode& n = idx_.inodes_[ino];
  n.implicit = false;
  n.mode = e.mode;
  n.uid = e.uid;
  n.gid = e.gid;
  // Writers omit a name when the id->name mapping repeats: back-fill.
  if (!e.uname.empty()) uid_names_[e.uid] = Intern(e.uname);
  if (!e.gname.empty()) gid_names_[e.gid] = Intern(e.gname);
  auto u = uid_names_.find(e.uid);
  n.uname = u == uid_names_.end() ? 0 : u->second;
  auto g = gid_names_.find(e.gid);
  n.gname = g == gid_names_.end() ? 0 : g->second;
  n.has_mtime = e.has_modtime;
  n.mtime_sec = e.mtime_sec;
  n.mtime_nsec = e.mtime_nsec;
  n.dev_major = e.dev_major;
  n.dev_minor = e.dev_minor;
  xattr_src_[ino] = e.xattrs.empty() ? SIZE_MAX : index;
}

absl::Status LayerIndexBuilder::FinishFile(size_t entry_index) {
  if (open_file_ == UINT32_MAX) return absl::OkStatus();
  Inode& f = idx_.inodes_[open_file_];
  auto chunks = absl::MakeSpan(idx_.chunks_).subspan(f.first_chunk);
  f.num_chunks = static_cast<uint32_t>(chunks.size());
  auto fail = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("TOC entry ", entry_index, " (file \"",
                     idx_.Path(open_file_dirent_), "\"): ", what));
  };
  if (chunks.empty() || chunks[0].file_offset != 0) {
    return fail("its first chunk does not start at offset 0");
  }
  // Legacy stargz (CRFS) gives chunks no digests, only the file its
  // `digest`: a file of several chunks is one chunk here, its extent from
  // the first chunk's member through the last one's (the file's data is
  // contiguous in the tar stream the members make), checked against that
  // digest - read whole, never served unverified.
  const bool whole_file =
      chunks.size() > 1 && f.digest.has_value() &&
      std::none_of(chunks.begin(), chunks.end(),
                   [](const Chunk& c) { return c.has_digest || c.zeros; });
  if (whole_file) {
    if (f.size <= chunks.back().file_offset) {
      return fail(absl::StrCat("its last chunk starts at ",
                               chunks.back().file_offset, ", past its size ",
                               f.size));
    }
    for (size_t k = 1; k < chunks.size(); ++k) {
      if (chunks[k].file_offset <= chunks[k - 1].file_offset ||
          chunks[k].blob_offset <= chunks[k - 1].blob_offset) {
        return fail(absl::StrCat("chunks are out of order at offset ",
                                 chunks[k].file_offset));
      }
    }
    idx_.chunks_.resize(f.first_chunk + 1);
    end_offsets_[f.first_chunk] = end_offsets_.back();
    end_offsets_.resize(f.first_chunk + 1);
    Chunk& c = idx_.chunks_[f.first_chunk];
    c.size = f.size;
    c.digest = *f.digest;
    c.has_digest = true;
    f.num_chunks = 1;
    open_file_ = UINT32_MAX;
    return absl::OkStatus();
  }
  for (size_t k = 0; k < chunks.size(); ++k) {
    Chunk& c = chunks[k];
    uint64_t end = k + 1 < chunks.size() ? chunks[k + 1].file_offset : f.size;
    if (end <= c.file_offset) {
      return fail(absl::StrCat("chunks are out of order or overlap at offset ",
                               c.file_offset));
    }
    if (c.size == 0) {
      c.size = end - c.file_offset;
    } else if (c.file_offset + c.size != end) {
      return fail(absl::StrCat("chunk at offset ", c.file_offset, " of size ",
                               c.size, " does not end where the next begins (",
                               end, ")"));
    }
    if (!c.has_digest && !c.zeros) {
      if (chunks.size() == 1 && f.digest.has_value()) {
        c.digest = *f.digest;  // containers/storage: one chunk, only `digest`
        c.has_digest = true;
      } else {
        return fail(absl::StrCat("chunk at offset ", c.file_offset,
                                 " has no chunkDigest"));
      }
    }
  }
  open_file_ = UINT32_MAX;
  return absl::OkStatus();
}

void LayerIndexBuilder::AddChunk(const TocEntry& e, uint32_t inode) {
  Chunk c;
  c.file_offset = e.chunk_offset;
  c.size = e.chunk_size;
  c.blob_offset = e.offset;
  c.inner_offset = e.inner_offset;
  c.zeros = e.zeros;
  if (e.chunk_digest) {
    c.digest = *e.chunk_digest;
    c.has_digest = true;
  }
  c.inode = inode;
  idx_.chunks_.push_back(c);
  end_offsets_.push_back(e.end_offset);
}

absl::Status LayerIndexBuilder::AddEntry(const TocEntry& e, size_t index) {
  if (e.type == EntryType::kChunk) {
    if (open_file_ == UINT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC entry ", index,
                       " is a chunk that follows no regular file with data"));
    }
    AddChunk(e, open_file_);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(FinishFile(index));

  absl::StatusOr<std::string> norm = NormalizeTarPath(e.name);
  if (!norm.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TOC entry ", index, ": ", norm.status().message()));
  }
  std::string path = *std::move(norm);
  if (path.empty()) {
    if (e.type != EntryType::kDir) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TOC entry ", index, " names the root but is not a directory"));
    }
    SetAttrs(LayerIndex::kRoot, e, index);
    return absl::OkStatus();
  }
  if (e.type == EntryType::kReg &&
      (path == kPrefetchLandmark || path == kNoPrefetchLandmark)) {
    if (path[1] == 'p') {
      idx_.prefetch_landmark_ = e.offset;
    } else {
      idx_.no_prefetch_landmark_ = true;
    }
    return absl::OkStatus();
  }

  size_t slash = path.rfind('/');
  absl::string_view parent_path =
      slash == std::string::npos ? absl::string_view()
                                 : absl::string_view(path).substr(0, slash);
  absl::StatusOr<uint32_t> parent = EnsureDir(parent_path);
  if (!parent.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TOC entry ", index, ": ", parent.status().message()));
  }

  absl::string_view leaf = slash == std::string::npos
                               ? absl::string_view(path)
                               : absl::string_view(path).substr(slash + 1);
  uint32_t dirent;
  if (std::optional<uint32_t> existing = FindChild(*parent, leaf)) {
    dirent = *existing;
    Dirent& d = idx_.dirents_[dirent];
    bool old_dir = !d.hardlink && idx_.inodes_[d.inode].type == EntryType::kDir;
    bool new_dir = e.type == EntryType::kDir;
    if (old_dir != new_dir) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC entry ", index, " (\"", path,
                       "\") conflicts with an earlier entry of another type"));
    }
    if (new_dir) {
      SetAttrs(d.inode, e, index);  // "late/" after "late/child.txt"
      return absl::OkStatus();
    }
    // A later non-directory entry replaces an earlier one, as tar does; a
    // replaced hardlink must not be resolved (nor counted) any more.
    if (d.hardlink) {
      auto live = live_link_.find(dirent);
      if (live != live_link_.end()) {
        links_[live->second].replaced = true;
        live_link_.erase(live);
      }
    }
  } else {
    Dirent d;
    d.name = std::string(leaf);
    d.parent = *parent;
    idx_.dirents_.push_back(std::move(d));
    dirent = static_cast<uint32_t>(idx_.dirents_.size() - 1);
    AddChild(*parent, leaf, dirent);
  }

  if (e.type == EntryType::kHardlink) {
    absl::StatusOr<std::string> target = NormalizeTarPath(e.link_name);
    if (!target.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC entry ", index, " (hardlink \"", path,
                       "\"): target ", target.status().message()));
    }
    idx_.dirents_[dirent].hardlink = true;
    idx_.dirents_[dirent].inode = UINT32_MAX;
    live_link_[dirent] = links_.size();
    links_.push_back({dirent, *std::move(target), index});
    return absl::OkStatus();
  }

  if (e.type == EntryType::kSymlink) {
    absl::Status st = CheckSymlinkTarget(e.link_name);
    if (!st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TOC entry ", index, " (symlink \"", path, "\"): ", st.message()));
    }
  }
  uint32_t ino = NewInode(e.type);
  xattr_src_.push_back(SIZE_MAX);
  idx_.dirents_[dirent].inode = ino;
  idx_.dirents_[dirent].hardlink = false;
  idx_.inodes_[ino].dirent = dirent;
  SetAttrs(ino, e, index);
  Inode& n = idx_.inodes_[ino];
  switch (e.type) {
    case EntryType::kSymlink:
      n.symlink = e.link_name;
      break;
    case EntryType::kReg:
      n.size = e.size;
      n.digest = e.digest;
      n.first_chunk = static_cast<uint32_t>(idx_.chunks_.size());
      idx_.total_file_bytes_ += e.size;
      if (!idx_.prefetch_landmark_.has_value() && e.size > 0) {
        idx_.prioritized_.push_back(ino);
      }
      if (e.size > 0) {
        open_file_ = ino;
        open_file_dirent_ = dirent;
        AddChunk(e, ino);
      }
      break;
    default:
      break;
  }
  return absl::OkStatus();
}

absl::Status LayerIndexBuilder::ResolveLinks() {
  // Targets may themselves be hardlinks; resolve with a bounded chase. Every
  // unresolved link met on the way gets the answer too, so a chain of n links
  // costs O(n), not O(n^3).
  std::vector<uint32_t> chain;
  for (const PendingLink& l : links_) {
    if (l.replaced) continue;
    const std::string* target = &l.target;
    uint32_t ino = UINT32_MAX;
    chain.clear();
    for (size_t hops = 0; hops <= links_.size(); ++hops) {
      std::optional<uint32_t> found =
          target->empty() ? std::nullopt : FindPath(*target);
      if (!found) {
        return absl::InvalidArgumentError(absl::StrCat(
            "TOC entry ", l.entry, ": hardlink \"", idx_.Path(l.dirent),
            "\" points to missing \"", l.target, "\""));
      }
      const Dirent& d = idx_.dirents_[*found];
      if (!d.hardlink || d.inode != UINT32_MAX) {
        ino = d.inode;
        break;
      }
      chain.push_back(*found);
      // An unresolved hardlink dirent always has a live link.
      target = &links_[live_link_.at(*found)].target;
    }
    if (ino == UINT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC entry ", l.entry, ": hardlink \"",
                       idx_.Path(l.dirent), "\" is part of a link loop"));
    }
    if (idx_.inodes_[ino].type == EntryType::kDir) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC entry ", l.entry, ": hardlink \"",
                       idx_.Path(l.dirent), "\" points to a directory"));
    }
    for (uint32_t c : chain) idx_.dirents_[c].inode = ino;
    idx_.dirents_[l.dirent].inode = ino;
    idx_.inodes_[ino].nlink++;
  }
  return absl::OkStatus();
}

absl::Status LayerIndexBuilder::ComputeExtents(uint64_t data_end) {
  std::vector<uint64_t> starts;
  starts.reserve(idx_.chunks_.size());
  for (const Chunk& c : idx_.chunks_) {
    if (!c.zeros) starts.push_back(c.blob_offset);
  }
  std::sort(starts.begin(), starts.end());
  starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
  for (size_t i = 0; i < idx_.chunks_.size(); ++i) {
    Chunk& c = idx_.chunks_[i];
    if (c.zeros) continue;
    if (c.blob_offset >= data_end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a chunk of \"", idx_.Path(idx_.inodes_[c.inode].dirent),
          "\" at offset ", c.file_offset, " claims blob offset ", c.blob_offset,
          ", past the payload region (ends at ", data_end, ")"));
    }
    auto next = std::upper_bound(starts.begin(), starts.end(), c.blob_offset);
    c.blob_end = next == starts.end() ? data_end : *next;
    if (end_offsets_[i] != 0) {
      if (end_offsets_[i] <= c.blob_offset || end_offsets_[i] > data_end) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a chunk of \"", idx_.Path(idx_.inodes_[c.inode].dirent),
            "\" has endOffset ", end_offsets_[i], " outside (", c.blob_offset,
            ", ", data_end, "]"));
      }
      // Only ever narrower: containers/storage gives a file's first chunk
      // the endOffset of the whole file (its last chunk's end).
      c.blob_end = std::min(c.blob_end, end_offsets_[i]);
    }
  }
  return absl::OkStatus();
}

void LayerIndexBuilder::BuildChildren() {
  std::vector<uint32_t> count(idx_.inodes_.size(), 0);
  for (const Dirent& d : idx_.dirents_) count[d.parent]++;
  uint32_t pos = 0;
  for (size_t i = 0; i < idx_.inodes_.size(); ++i) {
    idx_.inodes_[i].first_child = pos;
    pos += count[i];
  }
  idx_.children_.assign(pos, 0);
  std::vector<uint32_t> fill(idx_.inodes_.size(), 0);
  for (uint32_t di = 0; di < idx_.dirents_.size(); ++di) {
    Inode& p = idx_.inodes_[idx_.dirents_[di].parent];
    idx_.children_[p.first_child + fill[idx_.dirents_[di].parent]++] = di;
  }
  for (size_t i = 0; i < idx_.inodes_.size(); ++i) {
    Inode& n = idx_.inodes_[i];
    n.num_children = count[i];
    auto begin = idx_.children_.begin() + n.first_child;
    std::sort(begin, begin + n.num_children, [&](uint32_t a, uint32_t b) {
      return idx_.dirents_[a].name < idx_.dirents_[b].name;
    });
    if (n.type == EntryType::kDir) {
      uint32_t subdirs = 0;
      for (uint32_t k = 0; k < n.num_children; ++k) {
        const Dirent& d = idx_.dirents_[idx_.children_[n.first_child + k]];
        if (idx_.inodes_[d.inode].type == EntryType::kDir) ++subdirs;
      }
      n.nlink = 2 + subdirs;
    }
  }
}

absl::Status LayerIndexBuilder::Run(const Toc& toc, uint64_t data_end) {
  toc_ = &toc;
  idx_.names_.push_back("");
  idx_.toc_entry_count_ = toc.entries.size();
  // Sized up front: growing these by doubling costs more than parsing here.
  const size_t n = toc.entries.size() + 1;
  idx_.inodes_.reserve(n);
  idx_.dirents_.reserve(n);
  idx_.chunks_.reserve(n);
  end_offsets_.reserve(n);
  xattr_src_.reserve(n);
  child_dirent_.reserve(n);
  dir_cache_.reserve(n / 4);
  uint32_t root = NewInode(EntryType::kDir);
  xattr_src_.push_back(SIZE_MAX);
  idx_.inodes_[root].implicit = true;
  idx_.inodes_[root].mode = 0755;
  idx_.inodes_[root].dirent = LayerIndex::kNoDirent;
  for (size_t i = 0; i < toc.entries.size(); ++i) {
    RETURN_IF_ERROR(AddEntry(toc.entries[i], i));
  }
  RETURN_IF_ERROR(FinishFile(toc.entries.size()));
  // Files are prioritized only by a .prefetch.landmark after them.
  if (!idx_.prefetch_landmark_.has_value()) idx_.prioritized_.clear();
  // Drop files replaced by a later entry of the same name from the chunk
  // list's owners: they stay reachable by inode number only.
  RETURN_IF_ERROR(ResolveLinks());
  RETURN_IF_ERROR(ComputeExtents(data_end));
  for (uint32_t i = 0; i < idx_.inodes_.size(); ++i) {
    if (xattr_src_[i] == SIZE_MAX) continue;
    const auto& xs = toc.entries[xattr_src_[i]].xattrs;
    idx_.inodes_[i].first_xattr = static_cast<uint32_t>(idx_.xattrs_.size());
    for (const auto& kv : xs) {
      if (!IsOverlayPrivateXattr(kv.first)) idx_.xattrs_.push_back(kv);
    }
    idx_.inodes_[i].num_xattrs = static_cast<uint32_t>(idx_.xattrs_.size()) -
                                 idx_.inodes_[i].first_xattr;
  }
  BuildChildren();
  return absl::OkStatus();
}

absl::StatusOr<LayerIndex> LayerIndex::Build(const Toc& toc,
                                             uint64_t data_end) {
  LayerIndex idx;
  LayerIndexBuilder b(&idx);
  RETURN_IF_ERROR(b.Run(toc, data_end));
  return idx;
}

std::optional<uint32_t> LayerIndex::Lookup(uint32_t dir,
                                           absl::string_view name) const {
  absl::Span<const uint32_t> kids = Children(dir);
  auto it = std::lower_bound(
      kids.begin(), kids.end(), name,
      [&](uint32_t d, absl::string_view n) { return dirents_[d].name < n; });
  if (it == kids.end() || dirents_[*it].name != name) return std::nullopt;
  return *it;
}

std::string LayerIndex::Path(uint32_t dirent) const {
  std::vector<const std::string*> parts;
  while (dirent != kNoDirent) {
    const Dirent& d = dirents_[dirent];
    parts.push_back(&d.name);
    dirent = inodes_[d.parent].dirent;
  }
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!out.empty()) out.push_back('/');
    out.append(**it);
  }
  return out;
}

std::optional<uint32_t> LayerIndex::Resolve(absl::string_view path) const {
  uint32_t ino = kRoot;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == absl::string_view::npos) slash = path.size();
    if (inodes_[ino].type != EntryType::kDir) return std::nullopt;
    std::optional<uint32_t> d = Lookup(ino, path.substr(pos, slash - pos));
    if (!d) return std::nullopt;
    ino = dirents_[*d].inode;
    pos = slash + 1;
  }
  return ino;
}

uint32_t LayerIndex::ChunkAt(uint32_t inode, uint64_t offset) const {
  absl::Span<const Chunk> cs = FileChunks(inode);
  auto it = std::upper_bound(
      cs.begin(), cs.end(), offset,
      [](uint64_t off, const Chunk& c) { return off < c.file_offset; });
  return inodes_[inode].first_chunk +
         static_cast<uint32_t>(it - cs.begin() - 1);
}

}  // namespace lazypull
