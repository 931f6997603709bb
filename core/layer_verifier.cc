#include "core/layer_verifier.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/decompressor.h"
#include "core/status_macros.h"

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

}  // namespace

absl::StatusOr<VerifyResult> VerifyLayer(const LayerReader& reader,
                                         const VerifyOptions& options) {
  BlobSource& src = reader.source();
  const uint64_t size = src.size();
  std::unique_ptr<StreamDecompressor> d =
      StreamDecompressor::New(reader.compression());
  ChunkTracker tracker(reader);
  RETURN_IF_ERROR(tracker.Start());
  Sha256 diff_hash;
  Sha256 blob_hash;
  std::string in(std::max<uint64_t>(options.read_size, 64 << 10), '\0');
  std::string out(1 << 20, '\0');
  uint64_t comp = 0;  // compressed offset of in[in_pos]
  uint64_t pos = 0;   // uncompressed stream position
  size_t in_pos = 0, in_len = 0;
  bool at_member_start = true;
  // Empty files and zero-entry layers: nothing to stream but the TOC.
  while (true) {
    if (in_pos == in_len) {
      if (comp == size) break;
      in_len = static_cast<size_t>(std::min<uint64_t>(in.size(), size - comp));
      RETURN_IF_ERROR(src.ReadAt(comp, absl::MakeSpan(in.data(), in_len),
                                 ReadPriority::kBackground));
      blob_hash.Update(in.data(), in_len);
      in_pos = 0;
    }
    if (at_member_start) {
      RETURN_IF_ERROR(tracker.MemberStart(comp, pos));
      at_member_start = false;
    }
    absl::StatusOr<StreamDecompressor::Result> r =
        d->Decompress(absl::string_view(in.data() + in_pos, in_len - in_pos),
                      absl::MakeSpan(out));
    if (!r.ok()) return tracker.CorruptAt(comp, r.status());
    in_pos += r->consumed;
    comp += r->consumed;
    if (r->produced > 0) {
      absl::string_view data(out.data(), r->produced);
      diff_hash.Update(data);
      RETURN_IF_ERROR(tracker.Feed(pos, data));
      pos += r->produced;
    }
    if (r->frame_end) at_member_start = true;
  }
  if (!at_member_start) {
    return absl::DataLossError(
        "the blob ends in the middle of a gzip member / zstd frame");
  }
  RETURN_IF_ERROR(tracker.Finish());
  VerifyResult res;
  res.diff_id = diff_hash.Finish();
  res.uncompressed_size = pos;
  res.chunks_verified = tracker.chunks_verified();
  res.files_verified = tracker.files_verified();
  res.blob_digest = blob_hash.Finish();
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
