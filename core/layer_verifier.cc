#include "core/layer_verifier.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/decompressor.h"
#include "core/layer_index.h"
#include "core/status_macros.h"
#include "core/tar_path.h"
#include "core/tar_reader.h"
#include "core/toc.h"

namespace lazypull {
namespace {

// Hashes chunk and file contents as the uncompressed stream goes by.
class ChunkTracker {
 public:
  explicit ChunkTracker(const LayerReader& r) : r_(r), idx_(r.index()) {
    const auto& cs = idx_.chunks();
    for (uint32_t i = 0; i < cs.size(); ++i) {
      if (cs[i].zeros) {
        zeros_.push_back(i);
      } else {
        order_.push_back(i);
      }
    }
    std::stable_sort(order_.begin(), order_.end(), [&](uint32_t a, uint32_t b) {
      return std::tie(cs[a].blob_offset, cs[a].inner_offset) <
             std::tie(cs[b].blob_offset, cs[b].inner_offset);
    });
    next_in_file_.assign(idx_.inodes().size(), 0);
    file_hashers_.resize(idx_.inodes().size());
  }

  // A member/frame starts at compressed offset `comp`, stream position `pos`.
  absl::Status MemberStart(uint64_t comp, uint64_t pos) {
    const auto& cs = idx_.chunks();
    while (next_ < order_.size() && cs[order_[next_]].blob_offset <= comp) {
      uint32_t ci = order_[next_];
      if (cs[ci].blob_offset < comp) return NotAMember(ci);
      active_.push_back(
          {ci, pos + cs[ci].inner_offset, 0, std::make_unique<Sha256>()});
      ++next_;
    }
    return absl::OkStatus();
  }

  // Bytes [pos, pos + data.size()) of the stream.
  absl::Status Feed(uint64_t pos, absl::string_view data) {
    const auto& cs = idx_.chunks();
    for (size_t a = 0; a < active_.size();) {
      Active& act = active_[a];
      const Chunk& c = cs[act.chunk];
      uint64_t lo = std::max(pos, act.start + act.done);
      uint64_t hi = std::min(pos + data.size(), act.start + c.size);
      if (lo < hi) {
        absl::string_view piece = data.substr(lo - pos, hi - lo);
        act.hasher->Update(piece);
        FeedFile(act.chunk, piece);
        act.done = hi - act.start;
      }
      if (act.done == c.size) {
        RETURN_IF_ERROR(FinishChunk(act.chunk, act.hasher->Finish()));
        RETURN_IF_ERROR(ZerosAfter(c.inode));
        active_.erase(active_.begin() + static_cast<ptrdiff_t>(a));
      } else {
        ++a;
      }
    }
    return absl::OkStatus();
  }

  // Before the stream: the zeros chunks that begin files (zstd:chunked
  // writes a zero run of a file as a "zeros" chunk with no bytes in the
  // blob), so that the file's data chunks after them are taken in order.
  absl::Status Start() {
    for (uint32_t ci : zeros_) {
      const Inode& f = idx_.inode(idx_.chunks()[ci].inode);
      if (ci == f.first_chunk)
        RETURN_IF_ERROR(ZerosAfter(idx_.chunks()[ci].inode));
    }
    return absl::OkStatus();
  }

  absl::Status Finish() {
    if (!active_.empty()) {
      return absl::DataLossError(
          absl::StrCat(r_.DescribeChunk(active_.front().chunk),
                       ": the blob's data ends before the chunk does"));
    }
    if (next_ < order_.size()) return NotAMember(order_[next_]);
    // Zeros chunks no data chunk came before (out of file order).
    for (uint32_t ci : zeros_) {
      const Inode& f = idx_.inode(idx_.chunks()[ci].inode);
      if (ci - f.first_chunk < next_in_file_[idx_.chunks()[ci].inode]) continue;
      RETURN_IF_ERROR(FinishChunk(ci, HashZeros(ci)));
    }
    return absl::OkStatus();
  }

  // The stream failed to decompress at compressed offset `comp`: blame the
  // chunk being read, or the chunk whose extent holds `comp`.
  absl::Status CorruptAt(uint64_t comp, const absl::Status& cause) const {
    const auto& cs = idx_.chunks();
    std::string where =
        absl::StrCat("the compressed stream near blob offset ", comp);
    if (!active_.empty()) {
      where = r_.DescribeChunk(active_.front().chunk);
    } else {
      for (uint32_t ci : order_) {
        if (cs[ci].blob_offset <= comp && comp < cs[ci].blob_end) {
          where = r_.DescribeChunk(ci);
          break;
        }
      }
    }
    return absl::DataLossError(
        absl::StrCat(where, " is corrupt: ", cause.message()));
  }

  uint64_t chunks_verified() const { return chunks_verified_; }
  uint64_t files_verified() const { return files_verified_; }

 private:
  struct Active {
    uint32_t chunk;
    uint64_t start;  // stream position of the chunk's first byte
    uint64_t done;
    std::unique_ptr<Sha256> hasher;
  };

  // The file's next chunks, while they are zeros chunks: verified and fed
  // to the file's digest in place, so that the whole-file digest covers
  // files whose zero runs sit between data chunks.
  absl::Status ZerosAfter(uint32_t inode) {
    const Inode& f = idx_.inode(inode);
    while (next_in_file_[inode] < f.num_chunks) {
      const uint32_t ci = f.first_chunk + next_in_file_[inode];
      if (!idx_.chunks()[ci].zeros) break;
      RETURN_IF_ERROR(FinishChunk(ci, HashZeros(ci)));
    }
    return absl::OkStatus();
  }

  // sha256 of a zeros chunk's bytes, fed to its file's digest too; a piece
  // at a time (a hostile TOC may declare a huge one).
  Digest HashZeros(uint32_t ci) {
    static const std::string kZeros(1 << 20, '\0');
    Sha256 h;
    for (uint64_t left = idx_.chunks()[ci].size; left > 0;) {
      absl::string_view piece(kZeros.data(),
                              std::min<uint64_t>(left, kZeros.size()));
      h.Update(piece);
      FeedFile(ci, piece);
      left -= piece.size();
    }
    return h.Finish();
  }

  absl::Status NotAMember(uint32_t ci) {
    return absl::DataLossError(absl::StrCat(
        r_.DescribeChunk(ci), ": blob offset ", idx_.chunks()[ci].blob_offset,
        " is not the start of a ",
        r_.compression() == Compression::kGzip ? "gzip member" : "zstd frame"));
  }

  // File digests of multi-chunk files are computed when their chunks come by
  // in file order (as every writer lays them out).
  void FeedFile(uint32_t ci, absl::string_view piece) {
    const Chunk& c = idx_.chunks()[ci];
    const Inode& f = idx_.inode(c.inode);
    if (f.num_chunks < 2 || !f.digest) return;
    if (ci - f.first_chunk != next_in_file_[c.inode]) return;
    auto& h = file_hashers_[c.inode];
    if (h == nullptr) h = std::make_unique<Sha256>();
    h->Update(piece);
  }

  absl::Status FinishChunk(uint32_t ci, const Digest& got) {
    const Chunk& c = idx_.chunks()[ci];
    if (c.has_digest && got != c.digest) {
      return absl::DataLossError(
          absl::StrCat(r_.DescribeChunk(ci), " does not match its digest: got ",
                       got.ToString(), ", want ", c.digest.ToString()));
    }
    ++chunks_verified_;
    const Inode& f = idx_.inode(c.inode);
    uint32_t k = ci - f.first_chunk;
    if (k != next_in_file_[c.inode]) return absl::OkStatus();
    next_in_file_[c.inode]++;
    if (next_in_file_[c.inode] != f.num_chunks) return absl::OkStatus();
    if (f.digest) {
      Digest file = f.num_chunks == 1 ? got : file_hashers_[c.inode]->Finish();
      if (file != *f.digest) {
        return absl::DataLossError(
            absl::StrCat("file \"", idx_.Path(f.dirent),
                         "\" does not match its digest: got ", file.ToString(),
                         ", want ", f.digest->ToString()));
      }
    }
    file_hashers_[c.inode].reset();
    ++files_verified_;
    return absl::OkStatus();
  }

  const LayerReader& r_;
  const LayerIndex& idx_;
  std::vector<uint32_t> order_;
  std::vector<uint32_t> zeros_;
  size_t next_ = 0;
  std::deque<Active> active_;
  std::vector<uint32_t> next_in_file_;
  std::vector<std::unique_ptr<Sha256>> file_hashers_;
  uint64_t chunks_verified_ = 0;
  uint64_t files_verified_ = 0;
};

// What a full pull unpacks (the tar headers of the uncompressed stream)
// against what a lazy mount shows (the index, from the TOC): every entry of
// one must be in the other with the same type, mode, owner, size, link
// target, device numbers, xattrs and mtime (seconds). The TOC's own tar
// entry and the landmarks at the root are the writer's, not the layer's.
class TarTocCheck {
 public:
  explicit TarTocCheck(const LayerIndex& idx) : idx_(idx) {}

  absl::Status Header(const TarHeader& h) {
    ASSIGN_OR_RETURN(std::string path, NormalizeTarPath(h.name));
    if (path.empty()) return absl::OkStatus();  // the root's own entry
    if (h.type == TarType::kReg &&
        (path == kTocTarName || path == kPrefetchLandmark ||
         path == kNoPrefetchLandmark)) {
      return absl::OkStatus();
    }
    Seen& s = tar_[path];  // a later entry replaces an earlier one
    s.type = h.type;
    s.mode = static_cast<uint32_t>(h.mode) & 07777;
    s.uid = h.uid;
    s.gid = h.gid;
    s.size = h.size;
    s.link = h.link_name;
    s.dev_major = h.dev_major;
    s.dev_minor = h.dev_minor;
    s.mtime_sec = h.mtime_sec;
    s.mtime_nsec = h.mtime_nsec;
    s.xattrs.clear();
    for (const auto& kv : h.xattrs) {
      if (!IsOverlayPrivateXattr(kv.first)) s.xattrs.push_back(kv);
    }
    std::sort(s.xattrs.begin(), s.xattrs.end());
    return absl::OkStatus();
  }

  absl::Status Finish() {
    size_t compared = 0;
    std::vector<uint32_t> dirs = {LayerIndex::kRoot};
    while (!dirs.empty()) {
      const uint32_t dir = dirs.back();
      dirs.pop_back();
      for (uint32_t d : idx_.Children(dir)) {
        const Dirent& de = idx_.dirents()[d];
        const Inode& n = idx_.inode(de.inode);
        if (n.type == EntryType::kDir && !de.hardlink) dirs.push_back(de.inode);
        if (n.implicit) continue;
        const std::string path = idx_.Path(d);
        auto it = tar_.find(path);
        if (it == tar_.end()) {
          return Mismatch(path,
                          "the TOC lists it; the tar stream has no such "
                          "entry");
        }
        ++compared;
        RETURN_IF_ERROR(Compare(path, de, n, it->second));
      }
    }
    if (compared != tar_.size()) {
      for (const auto& [path, seen] : tar_) {
        const std::optional<uint32_t> ino = idx_.Resolve(path);
        if (!ino || idx_.inode(*ino).implicit) {
          return Mismatch(path, "the tar stream has it; the TOC does not");
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  struct Seen {
    TarType type = TarType::kReg;
    uint32_t mode = 0;
    uint64_t uid = 0, gid = 0, size = 0;
    std::string link;
    uint64_t dev_major = 0, dev_minor = 0;
    int64_t mtime_sec = 0;
    uint32_t mtime_nsec = 0;
    std::vector<std::pair<std::string, std::string>> xattrs;
  };

  static absl::Status Mismatch(const std::string& path,
                               absl::string_view what) {
    return absl::DataLossError(absl::StrCat(
        "\"", path, "\": the TOC does not match the layer's tar stream (", what,
        "): a lazy mount would show what a full pull does not"));
  }

  absl::Status Compare(const std::string& path, const Dirent& de,
                       const Inode& n, const Seen& t) const {
    if (de.hardlink) {
      if (t.type != TarType::kHardlink) return Mismatch(path, "type");
      // The same file, however the tar named it: a link to a link (Go's
      // archive/tar and GNU tar keep "b -> a", "c -> b").
      absl::StatusOr<std::string> target = NormalizeTarPath(t.link);
      const std::optional<uint32_t> ino =
          target.ok() ? idx_.Resolve(*target) : std::nullopt;
      if (!ino || *ino != de.inode) return Mismatch(path, "hardlink target");
      return absl::OkStatus();
    }
    if (t.type == TarType::kHardlink) return Mismatch(path, "type");
    static constexpr std::pair<EntryType, TarType> kTypes[] = {
        {EntryType::kDir, TarType::kDir},
        {EntryType::kReg, TarType::kReg},
        {EntryType::kSymlink, TarType::kSymlink},
        {EntryType::kChar, TarType::kChar},
        {EntryType::kBlock, TarType::kBlock},
        {EntryType::kFifo, TarType::kFifo}};
    bool same_type = false;
    for (const auto& [e, tt] : kTypes) same_type |= n.type == e && t.type == tt;
    if (!same_type) return Mismatch(path, "type");
    if (n.mode != t.mode) return Mismatch(path, "mode");
    if (n.uid != t.uid || n.gid != t.gid) return Mismatch(path, "owner");
    if (n.type == EntryType::kReg && n.size != t.size) {
      return Mismatch(path, "size");
    }
    if (n.type == EntryType::kSymlink && n.symlink != t.link) {
      return Mismatch(path, "symlink target");
    }
    if ((n.type == EntryType::kChar || n.type == EntryType::kBlock) &&
        (n.dev_major != t.dev_major || n.dev_minor != t.dev_minor)) {
      return Mismatch(path, "device numbers");
    }
    // The eStargz reference's TOC holds whole seconds, a tar time with a
    // fraction rounded to the nearest (its tar stream keeps the fraction).
    if (n.has_mtime && n.mtime_sec != t.mtime_sec &&
        !(t.mtime_nsec != 0 && n.mtime_sec == t.mtime_sec + 1)) {
      return Mismatch(path, "mtime");
    }
    auto xs = idx_.Xattrs(de.inode);
    std::vector<std::pair<std::string, std::string>> ours(xs.begin(), xs.end());
    std::sort(ours.begin(), ours.end());
    if (ours != t.xattrs) return Mismatch(path, "xattrs");
    return absl::OkStatus();
  }

  const LayerIndex& idx_;
  absl::flat_hash_map<std::string, Seen> tar_;
};

// The blob's uncompressed stream, decompressed as it is read, every byte
// going by the chunk tracker and the hashes once (TarReader pulls it).
class VerifyStream : public ByteStream {
 public:
  VerifyStream(const LayerReader& reader, const VerifyOptions& options,
               ChunkTracker* tracker)
      : src_(reader.source()),
        size_(src_.size()),
        d_(StreamDecompressor::New(reader.compression())),
        tracker_(tracker),
        in_(std::max<uint64_t>(options.read_size, 64 << 10), '\0'),
        out_(1 << 20, '\0') {}

  absl::StatusOr<absl::string_view> Read(size_t n) override {
    if (buf_.size() - buf_pos_ < n) {
      buf_.erase(0, buf_pos_);
      buf_pos_ = 0;
      while (buf_.size() < n) {
        ASSIGN_OR_RETURN(absl::string_view more, More());
        if (more.empty()) break;
        buf_.append(more.data(), more.size());
      }
    }
    const size_t k = std::min(n, buf_.size() - buf_pos_);
    absl::string_view v(buf_.data() + buf_pos_, k);
    buf_pos_ += k;
    return v;
  }

  absl::StatusOr<uint64_t> Skip(uint64_t n) override {
    uint64_t done = std::min<uint64_t>(n, buf_.size() - buf_pos_);
    buf_pos_ += done;
    while (done < n) {
      ASSIGN_OR_RETURN(absl::string_view more, More());
      if (more.empty()) break;
      const uint64_t k = std::min<uint64_t>(n - done, more.size());
      done += k;
      if (k < more.size()) {
        buf_.assign(more.data() + k, more.size() - k);
        buf_pos_ = 0;
      }
    }
    return done;
  }

  // Reads the stream to its end.
  absl::Status Drain() {
    buf_.clear();
    buf_pos_ = 0;
    while (true) {
      ASSIGN_OR_RETURN(absl::string_view more, More());
      if (more.empty()) break;
    }
    if (!at_member_start_) {
      return absl::DataLossError(
          "the blob ends in the middle of a gzip member / zstd frame");
    }
    return absl::OkStatus();
  }

  uint64_t position() const { return pos_; }
  Digest DiffId() { return diff_hash_.Finish(); }
  Digest BlobDigest() { return blob_hash_.Finish(); }

 private:
  // The next piece of the uncompressed stream (empty at its end).
  absl::StatusOr<absl::string_view> More() {
    while (true) {
      if (in_pos_ == in_len_) {
        if (comp_ == size_) return absl::string_view();
        in_len_ =
            static_cast<size_t>(std::min<uint64_t>(in_.size(), size_ - comp_));
        RETURN_IF_ERROR(src_.ReadAt(comp_, absl::MakeSpan(in_.data(), in_len_),
                                    ReadPriority::kBackground));
        blob_hash_.Update(in_.data(), in_len_);
        in_pos_ = 0;
      }
      if (at_member_start_) {
        RETURN_IF_ERROR(tracker_->MemberStart(comp_, pos_));
        at_member_start_ = false;
      }
      absl::StatusOr<StreamDecompressor::Result> r = d_->Decompress(
          absl::string_view(in_.data() + in_pos_, in_len_ - in_pos_),
          absl::MakeSpan(out_));
      if (!r.ok()) return tracker_->CorruptAt(comp_, r.status());
      in_pos_ += r->consumed;
      comp_ += r->consumed;
      if (r->frame_end) at_member_start_ = true;
      if (r->produced > 0) {
        absl::string_view data(out_.data(), r->produced);
        diff_hash_.Update(data);
        RETURN_IF_ERROR(tracker_->Feed(pos_, data));
        pos_ += r->produced;
        return data;
      }
    }
  }

  BlobSource& src_;
  const uint64_t size_;
  std::unique_ptr<StreamDecompressor> d_;
  ChunkTracker* tracker_;
  Sha256 diff_hash_, blob_hash_;
  std::string in_, out_;
  uint64_t comp_ = 0;  // compressed offset of in_[in_pos_]
  uint64_t pos_ = 0;   // uncompressed stream position
  size_t in_pos_ = 0, in_len_ = 0;
  bool at_member_start_ = true;
  std::string buf_;  // read ahead for Read
  size_t buf_pos_ = 0;
};

}  // namespace

absl::StatusOr<VerifyResult> VerifyLayer(const LayerReader& reader,
                                         const VerifyOptions& options) {
  ChunkTracker tracker(reader);
  RETURN_IF_ERROR(tracker.Start());
  VerifyStream stream(reader, options, &tracker);
  TarTocCheck toc_check(reader.index());
  if (options.check_tar) {
    TarReader tar(&stream);
    TarHeader h;
    while (true) {
      absl::StatusOr<bool> more = tar.Next(&h);
      if (!more.ok()) {
        return absl::DataLossError(absl::StrCat(
            "the layer's uncompressed stream is not a valid tar archive: ",
            more.status().message()));
      }
      if (!*more) break;
      RETURN_IF_ERROR(toc_check.Header(h));
    }
  }
  RETURN_IF_ERROR(stream.Drain());
  RETURN_IF_ERROR(tracker.Finish());
  if (options.check_tar) RETURN_IF_ERROR(toc_check.Finish());
  VerifyResult res;
  res.diff_id = stream.DiffId();
  res.uncompressed_size = stream.position();
  res.chunks_verified = tracker.chunks_verified();
  res.files_verified = tracker.files_verified();
  res.blob_digest = stream.BlobDigest();
  // Empty regular files carry a digest too: check it is sha256("").
  static const Digest kEmpty = Sha256::Of("");
  const LayerIndex& idx = reader.index();
  for (const Inode& n : idx.inodes()) {
    if (n.type == EntryType::kReg && n.size == 0) {
      if (n.digest && *n.digest != kEmpty) {
        return absl::DataLossError(
            absl::StrCat("empty file \"", idx.Path(n.dirent),
                         "\" carries a digest of non-empty content: ",
                         n.digest->ToString()));
      }
      ++res.files_verified;
    }
  }
  return res;
}

}  // namespace lazypull
