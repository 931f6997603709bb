#include "core/cached_layer.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/decompressor.h"
#include "core/status_macros.h"

namespace lazypull {

struct CachedLayer::Flight {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status status ABSL_GUARDED_BY(mu);
  // Decoded chunks of the group, by chunk index; a chunk that failed its
  // own verification has an entry in `errors` instead (its neighbours in
  // the member are still served).
  absl::flat_hash_map<uint32_t, ChunkData> data ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<uint32_t, absl::Status> errors ABSL_GUARDED_BY(mu);
};

CachedLayer::CachedLayer(std::shared_ptr<const LayerReader> reader,
                         std::shared_ptr<ChunkCache> cache,
                         const CachedLayerOptions& options)
    : reader_(std::move(reader)), cache_(std::move(cache)), options_(options) {
  const auto& cs = reader_->index().chunks();
  std::vector<uint32_t> order(cs.size());
  for (uint32_t i = 0; i < cs.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return std::tie(cs[a].zeros, cs[a].blob_offset, cs[a].inner_offset) <
           std::tie(cs[b].zeros, cs[b].blob_offset, cs[b].inner_offset);
  });
  group_of_.assign(cs.size(), 0);
  for (uint32_t ci : order) {
    const bool same =
        !groups_.empty() && !cs[ci].zeros &&
        !cs[groups_.back().front()].zeros &&
        cs[groups_.back().front()].blob_offset == cs[ci].blob_offset;
    if (!same) groups_.emplace_back();
    groups_.back().push_back(ci);
    group_of_[ci] = static_cast<uint32_t>(groups_.size() - 1);
  }
  group_fetched_ = std::vector<std::atomic<bool>>(groups_.size());
  for (int i = 0; i < options_.background_threads; ++i) {
    bg_threads_.emplace_back([this] { BackgroundLoop(); });
  }
}

CachedLayer::~CachedLayer() {
  {
    std::lock_guard<std::mutex> l(bg_mu_);
    bg_stop_ = true;
  }
  bg_cv_.notify_all();
  for (auto& t : bg_threads_) t.join();
}

CachedLayerStats CachedLayer::stats() const {
  CachedLayerStats s;
  s.cache_hits = hits_.load();
  s.fills = fills_.load();
  s.fetched_bytes = fetched_.load();
  s.verify_failures = failures_.load();
  return s;
}

uint64_t CachedLayer::AcquireFillBytes(uint64_t want) {
  const uint64_t cap = options_.max_fill_bytes;
  if (cap == 0) return 0;
  absl::MutexLock l(&budget_mu_);
  auto fits = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(budget_mu_) {
    return budget_used_ == 0 || budget_used_ + want <= cap;
  };
  budget_mu_.Await(absl::Condition(&fits));
  budget_used_ += want;
  return want;
}

void CachedLayer::ReleaseFillBytes(uint64_t got) {
  if (got == 0) return;
  absl::MutexLock l(&budget_mu_);
  budget_used_ -= got;
}

void CachedLayer::RunFill(uint32_t group, Flight* flight,
                          ReadPriority priority) {
  const auto& cs = reader_->index().chunks();
  const std::vector<uint32_t>& members = groups_[group];
  // What this fill will hold at its peak: the extent, the decoded prefix of
  // a shared member and the chunks.
  uint64_t want = 0;
  if (!cs[members.front()].zeros) {
    want += cs[members.front()].blob_end - cs[members.front()].blob_offset;
  }
  for (uint32_t ci : members) {
    want += cs[ci].size * (members.size() > 1 ? 2 : 1);
  }
  const uint64_t held = AcquireFillBytes(want);
  absl::flat_hash_map<uint32_t, ChunkData> out;
  absl::flat_hash_map<uint32_t, absl::Status> errors;
  absl::Status st;
  const Chunk& first = cs[members.front()];
  if (first.zeros) {
    for (uint32_t ci : members) {
      std::string z(cs[ci].size, '\0');
      st = reader_->VerifyChunk(ci, z);
      if (!st.ok()) break;
      out[ci] = std::make_shared<const std::string>(std::move(z));
    }
  } else {
    // One read of the member's extent, one pass of the decompressor.
    std::string extent(first.blob_end - first.blob_offset, '\0');
    st = reader_->source().ReadAt(first.blob_offset, absl::MakeSpan(extent),
                                  priority);
    fills_.fetch_add(1);
    fetched_.fetch_add(extent.size());
    if (st.ok() && !group_fetched_[group].exchange(true)) {
      fetched_blob_bytes_.fetch_add(extent.size());
    }
    if (!st.ok()) {
      st = absl::Status(
          st.code(), absl::StrCat(reader_->DescribeChunk(members.front()), ": ",
                                  st.message()));
    }
    if (st.ok() && members.size() == 1) {
      auto buf = std::make_shared<std::string>(first.size, '\0');
      st = reader_->DecodeChunk(members.front(), extent, absl::MakeSpan(*buf));
      if (st.ok()) out[members.front()] = std::move(buf);
    } else if (st.ok()) {
      // Members are sorted by innerOffset; decode the prefix once.
      uint64_t need = 0;
      for (uint32_t ci : members) {
        need = std::max(need, cs[ci].inner_offset + cs[ci].size);
      }
      std::string plain(need, '\0');
      st = DecompressRange(reader_->compression(), extent, 0,
                           absl::MakeSpan(plain));
      if (!st.ok()) {
        st = absl::DataLossError(absl::StrCat(
            reader_->DescribeChunk(members.front()), ": ", st.message()));
      }
      for (size_t k = 0; st.ok() && k < members.size(); ++k) {
        uint32_t ci = members[k];
        std::string piece = plain.substr(cs[ci].inner_offset, cs[ci].size);
        absl::Status v = reader_->VerifyChunk(ci, piece);
        if (v.ok()) {
          out[ci] = std::make_shared<const std::string>(std::move(piece));
        } else {
          failures_.fetch_add(1);
          errors[ci] = std::move(v);
        }
      }
    }
  }
  if (!st.ok()) {
    failures_.fetch_add(st.code() == absl::StatusCode::kDataLoss ? 1 : 0);
    out.clear();
  }
  for (const auto& [ci, data] : out) {
    absl::Status ins = cache_->InsertShared(cs[ci].digest, data);
    (void)ins;  // a cache that cannot store still serves this read
  }
  ReleaseFillBytes(held);
  absl::MutexLock l(&flight->mu);
  flight->status = st;
  flight->data = std::move(out);
  flight->errors = std::move(errors);
  flight->done = true;
}

absl::StatusOr<CachedLayer::ChunkData> CachedLayer::GetChunk(
    uint32_t chunk, ReadPriority priority) {
  const Chunk& c = reader_->index().chunks()[chunk];
  // (Contains first: a chunk-sized buffer is only worth touching for a hit.)
  if (!c.zeros && cache_->Contains(c.digest)) {
    auto buf = std::make_shared<std::string>(c.size, '\0');
    ASSIGN_OR_RETURN(bool hit,
                     cache_->Read(c.digest, c.size, 0, absl::MakeSpan(*buf)));
    if (hit) {
      hits_.fetch_add(1);
      return buf;
    }
  }
  const uint32_t group = group_of_[chunk];
  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    absl::MutexLock l(&mu_);
    auto it = flights_.find(group);
    if (it != flights_.end()) {
      flight = it->second;
    } else {
      flight = std::make_shared<Flight>();
      flights_[group] = flight;
      leader = true;
    }
  }
  if (leader) {
    RunFill(group, flight.get(), priority);
    absl::MutexLock l(&mu_);
    flights_.erase(group);
  }
  absl::MutexLock l(&flight->mu);
  flight->mu.Await(absl::Condition(&flight->done));
  if (!flight->status.ok()) return flight->status;
  if (auto e = flight->errors.find(chunk); e != flight->errors.end()) {
    return e->second;
  }
  auto it = flight->data.find(chunk);
  if (it == flight->data.end()) {
    return absl::InternalError("chunk missing from its member's fill");
  }
  return it->second;
}

absl::Status CachedLayer::Fill(uint32_t chunk, ReadPriority priority) {
  const Chunk& c = reader_->index().chunks()[chunk];
  if (c.zeros || cache_->Contains(c.digest)) return absl::OkStatus();
  return GetChunk(chunk, priority).status();
}

absl::StatusOr<size_t> CachedLayer::Read(uint32_t inode, uint64_t offset,
                                         absl::Span<char> out,
                                         ReadPriority priority) {
  const LayerIndex& idx = reader_->index();
  const Inode& n = idx.inode(inode);
  if (n.type != EntryType::kReg) {
    return absl::InvalidArgumentError("not a regular file");
  }
  if (offset >= n.size || out.empty()) return 0;
  const uint64_t end = std::min<uint64_t>(n.size, offset + out.size());
  const auto& cs = idx.chunks();
  uint32_t ci = idx.ChunkAt(inode, offset);
  uint64_t pos = offset;
  while (pos < end) {
    const Chunk& c = cs[ci];
    const uint64_t in_chunk = pos - c.file_offset;
    const uint64_t len = std::min(end, c.file_offset + c.size) - pos;
    char* dst = out.data() + (pos - offset);
    bool hit = false;
    if (!c.zeros) {
      ASSIGN_OR_RETURN(hit, cache_->Read(c.digest, c.size, in_chunk,
                                         absl::MakeSpan(dst, len)));
    }
    if (hit) {
      hits_.fetch_add(1);
    } else {
      ASSIGN_OR_RETURN(ChunkData data, GetChunk(ci, priority));
      std::memcpy(dst, data->data() + in_chunk, len);
    }
    pos += len;
    ++ci;
  }
  // Sequential reader: fetch the next chunks of this file ahead of it.
  if (options_.readahead_chunks > 0) {
    bool sequential;
    {
      absl::MutexLock l(&mu_);
      auto it = last_end_.find(inode);
      sequential =
          offset == 0 || (it != last_end_.end() && it->second == offset);
      last_end_[inode] = end;
    }
    if (sequential && end < n.size) {
      std::vector<uint32_t> ahead;
      const uint32_t last = n.first_chunk + n.num_chunks;
      for (uint32_t k = ci;
           k < last &&
           ahead.size() < static_cast<size_t>(options_.readahead_chunks);
           ++k) {
        if (!cs[k].zeros && !cache_->Contains(cs[k].digest)) ahead.push_back(k);
      }
      if (!ahead.empty()) FillAsync(std::move(ahead), ReadPriority::kPrefetch);
    }
  }
  return static_cast<size_t>(end - offset);
}

std::optional<std::vector<CachedLayer::FilePiece>> CachedLayer::Locate(
    uint32_t inode, uint64_t offset, size_t len) {
  const LayerIndex& idx = reader_->index();
  const Inode& n = idx.inode(inode);
  std::vector<FilePiece> pieces;
  if (n.type != EntryType::kReg) return std::nullopt;
  if (offset >= n.size || len == 0) return pieces;
  const uint64_t end = std::min<uint64_t>(n.size, offset + len);
  const auto& cs = idx.chunks();
  uint64_t pos = offset;
  for (uint32_t ci = idx.ChunkAt(inode, offset); pos < end; ++ci) {
    const Chunk& c = cs[ci];
    if (c.zeros) return std::nullopt;
    std::shared_ptr<CachedFile> f = cache_->OpenChunk(c.digest, c.size);
    if (f == nullptr) return std::nullopt;
    const uint64_t piece_end = std::min(end, c.file_offset + c.size);
    pieces.push_back(FilePiece{std::move(f), pos - c.file_offset,
                               static_cast<size_t>(piece_end - pos)});
    pos = piece_end;
  }
  hits_.fetch_add(pieces.size());
  return pieces;
}

void CachedLayer::FillAsync(std::vector<uint32_t> chunks,
                            ReadPriority priority) {
  {
    std::lock_guard<std::mutex> l(bg_mu_);
    for (uint32_t c : chunks) bg_queue_.emplace_back(c, priority);
  }
  bg_cv_.notify_all();
}

void CachedLayer::BackgroundLoop() {
  while (true) {
    std::pair<uint32_t, ReadPriority> job;
    {
      std::unique_lock<std::mutex> l(bg_mu_);
      bg_cv_.wait(l, [&] { return bg_stop_ || !bg_queue_.empty(); });
      if (bg_stop_) return;
      job = bg_queue_.front();
      bg_queue_.pop_front();
    }
    // Errors surface to the on-demand reader that needs the chunk.
    (void)Fill(job.first, job.second);
  }
}

}  // namespace lazypull
