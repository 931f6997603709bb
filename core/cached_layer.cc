#include "core/cached_layer.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/buffer_pool.h"
#include "core/decompressor.h"
#include "core/status_macros.h"
#include "core/thread_priority.h"

namespace lazypull {

struct CachedLayer::Flight {
  explicit Flight(ReadPriority p, const void* o = nullptr)
      : priority(p), owner(o) {}
  // Whom the fill is for: a reader that joined a fill made for prefetch,
  // background fetch or read-ahead, and saw it fail, tries once itself.
  const ReadPriority priority;
  // The stream that claimed it ahead of its bytes (ClaimAhead), or null.
  const void* const owner;
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
  if (options_.dir_prefetch_bytes > 0) {
    dir_done_ =
        std::vector<std::atomic<bool>>(reader_->index().inodes().size());
  }
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

void CachedLayer::Observe(
    const absl::flat_hash_map<uint32_t, ChunkData>& filled) {
  absl::ReaderMutexLock l(&observer_mu_);
  if (!observer_) return;
  for (const auto& [ci, data] : filled) observer_(ci, data);
}

bool CachedLayer::FetchedHere(uint32_t chunk) const {
  return group_fetched_[group_of_[chunk]].load(std::memory_order_relaxed);
}

void CachedLayer::SetFillObserver(FillObserver observer) {
  absl::MutexLock l(&observer_mu_);  // (waits for calls under reader locks)
  observer_ = std::move(observer);
}

CachedLayerStats CachedLayer::stats() const {
  CachedLayerStats s;
  s.cache_hits = hits_.load();
  s.fills = fills_.load();
  s.on_demand_fills = on_demand_fills_.load();
  s.last_on_demand_fill_ns = last_on_demand_fill_ns_.load();
  s.fetched_bytes = fetched_.load();
  s.verify_failures = failures_.load();
  s.dir_prefetches = dir_prefetches_.load();
  s.joined_fills = joined_fills_.load();
  return s;
}

bool CachedLayer::IsHugeFill(uint64_t bytes) const {
  return options_.huge_fill_bytes != 0 && bytes > options_.huge_fill_bytes;
}

uint64_t CachedLayer::AcquireFillBytes(uint64_t want, ReadPriority priority) {
  const uint64_t cap = options_.max_fill_bytes;
  if (cap == 0 && !IsHugeFill(want)) return 0;
  absl::MutexLock l(&budget_mu_);
  if (IsHugeFill(want)) {
    // One at a time, on-demand ones included (the small fills go on
    // beside it); the others also wait, as before, for the budget to be
    // all theirs.
    auto alone = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(budget_mu_) {
      return !huge_fill_ && (priority == ReadPriority::kOnDemand || cap == 0 ||
                             budget_used_ == 0);
    };
    budget_mu_.Await(absl::Condition(&alone));
    huge_fill_ = true;
    budget_used_ += want;
    return want;
  }
  if (priority == ReadPriority::kOnDemand) {
    // A process is blocked on it: never behind prefetch or background fills
    // (whose budget is held while their bytes cross the network). Counted,
    // so that they wait for it.
    budget_used_ += want;
    return want;
  }
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
  if (IsHugeFill(got)) huge_fill_ = false;
}

uint64_t CachedLayer::GroupFillBytes(uint32_t group) const {
  const auto& cs = reader_->index().chunks();
  const std::vector<uint32_t>& members = groups_[group];
  uint64_t want = 0;
  if (!cs[members.front()].zeros) {
    want += cs[members.front()].blob_end - cs[members.front()].blob_offset;
  }
  for (uint32_t ci : members) {
    want += cs[ci].size * (members.size() > 1 ? 2 : 1);
  }
  return want;
}

absl::Status CachedLayer::DecodeGroup(
    uint32_t group, absl::string_view extent,
    absl::flat_hash_map<uint32_t, ChunkData>* out,
    absl::flat_hash_map<uint32_t, absl::Status>* errors) {
  const auto& cs = reader_->index().chunks();
  const std::vector<uint32_t>& members = groups_[group];
  const Chunk& first = cs[members.front()];
  if (first.zeros) {
    for (uint32_t ci : members) {
      std::string z(cs[ci].size, '\0');
      RETURN_IF_ERROR(reader_->VerifyChunk(ci, z));
      (*out)[ci] = std::make_shared<const std::string>(std::move(z));
    }
    return absl::OkStatus();
  }
  if (members.size() == 1) {
    std::shared_ptr<std::string> buf = BufferPool::Default().Get(first.size);
    RETURN_IF_ERROR(
        reader_->DecodeChunk(members.front(), extent, absl::MakeSpan(*buf)));
    (*out)[members.front()] = std::move(buf);
    return absl::OkStatus();
  }
  // Members are sorted by innerOffset; decode the prefix once.
  uint64_t need = 0;
  for (uint32_t ci : members) {
    need = std::max(need, cs[ci].inner_offset + cs[ci].size);
  }
  std::shared_ptr<std::string> plain = BufferPool::Default().Get(need);
  absl::Status st = DecompressRange(reader_->compression(), extent, 0,
                                    absl::MakeSpan(*plain));
  if (!st.ok()) {
    return absl::DataLossError(absl::StrCat(
        reader_->DescribeChunk(members.front()), ": ", st.message()));
  }
  for (uint32_t ci : members) {
    std::shared_ptr<std::string> piece = BufferPool::Default().Get(cs[ci].size);
    memcpy(piece->data(), plain->data() + cs[ci].inner_offset, cs[ci].size);
    absl::Status v = reader_->VerifyChunk(ci, *piece);
    if (v.ok()) {
      (*out)[ci] = std::move(piece);
    } else {
      failures_.fetch_add(1);
      (*errors)[ci] = std::move(v);
    }
  }
  return absl::OkStatus();
}

void CachedLayer::RunFill(uint32_t group, Flight* flight,
                          ReadPriority priority) {
  const auto& cs = reader_->index().chunks();
  const std::vector<uint32_t>& members = groups_[group];
  const uint64_t held = AcquireFillBytes(GroupFillBytes(group), priority);
  absl::flat_hash_map<uint32_t, ChunkData> out;
  absl::flat_hash_map<uint32_t, absl::Status> errors;
  absl::Status st;
  const Chunk& first = cs[members.front()];
  std::shared_ptr<std::string> extent_buf;
  absl::string_view extent;
  if (!first.zeros) {
    // One read of the member's extent, one pass of the decompressor.
    extent_buf = BufferPool::Default().Get(first.blob_end - first.blob_offset);
    extent = *extent_buf;
    st = reader_->source().ReadAt(first.blob_offset,
                                  absl::MakeSpan(*extent_buf), priority);
    fills_.fetch_add(1);
    if (priority == ReadPriority::kOnDemand) {
      on_demand_fills_.fetch_add(1);
      last_on_demand_fill_ns_.store(
          std::chrono::duration_cast<std::chrono::nanoseconds>(
              std::chrono::steady_clock::now().time_since_epoch())
              .count());
    }
    fetched_.fetch_add(extent.size());
    if (st.ok() && !group_fetched_[group].exchange(true)) {
      fetched_blob_bytes_.fetch_add(extent.size());
    }
    if (!st.ok()) {
      st = absl::Status(
          st.code(), absl::StrCat(reader_->DescribeChunk(members.front()), ": ",
                                  st.message()));
    }
  }
  if (st.ok()) st = DecodeGroup(group, extent, &out, &errors);
  if (!st.ok()) {
    failures_.fetch_add(st.code() == absl::StatusCode::kDataLoss ? 1 : 0);
    out.clear();
  }
  for (const auto& [ci, data] : out) {
    absl::Status ins = cache_->InsertShared(cs[ci].digest, data);
    (void)ins;  // a cache that cannot store still serves this read
  }
  // (A read-ahead's or a prefetch's: an on-demand reader replies itself.)
  if (priority != ReadPriority::kOnDemand) Observe(out);
  ReleaseFillBytes(held);
  absl::MutexLock l(&flight->mu);
  flight->status = st;
  flight->data = std::move(out);
  flight->errors = std::move(errors);
  flight->done = true;
}

void CachedLayer::ForEachMemberIn(
    const Span& span,
    const std::function<void(uint32_t group, const Chunk& first)>& f) const {
  const auto& cs = reader_->index().chunks();
  for (size_t g = FirstGroupAt(span.begin); g < groups_.size(); ++g) {
    const Chunk& c = cs[groups_[g].front()];
    if (c.zeros || c.blob_offset >= span.end) break;
    if (c.blob_end <= span.end) f(static_cast<uint32_t>(g), c);
  }
}

bool CachedLayer::InFlightForOther(uint32_t group, const void* owner) {
  absl::MutexLock l(&mu_);
  auto it = flights_.find(group);
  return it != flights_.end() &&
         (owner == nullptr || it->second->owner != owner);
}

uint64_t CachedLayer::TakenBytesIn(const Span& span, const void* owner) {
  uint64_t n = 0;
  ForEachMemberIn(span, [&](uint32_t g, const Chunk& c) {
    if (GroupCached(g) || InFlightForOther(g, owner)) {
      n += c.blob_end - c.blob_offset;
    }
  });
  return n;
}

void CachedLayer::ClaimAhead(
    const Span& span, ReadPriority priority, const void* owner,
    std::vector<std::pair<uint32_t, std::shared_ptr<Flight>>>* claims) {
  ForEachMemberIn(span, [&](uint32_t g, const Chunk&) {
    if (GroupCached(g)) return;
    absl::MutexLock l(&mu_);
    auto [it, inserted] = flights_.try_emplace(g);
    if (!inserted) return;
    it->second = std::make_shared<Flight>(priority, owner);
    claims->emplace_back(g, it->second);
  });
}

void CachedLayer::ReleaseClaims(
    std::vector<std::pair<uint32_t, std::shared_ptr<Flight>>>* claims) {
  for (auto& [g, flight] : *claims) {
    {
      absl::MutexLock l(&flight->mu);
      if (flight->done) continue;  // taken up by FillSpanWith
      flight->status =
          absl::UnavailableError("the stream that claimed it ended first");
      flight->done = true;
    }
    EndFlight(g, flight.get());
  }
  claims->clear();
}

size_t CachedLayer::FirstGroupAt(uint64_t offset) const {
  // (groups_ is in blob order for the non-zeros ones, which come first.)
  const auto& cs = reader_->index().chunks();
  size_t lo = 0, hi = groups_.size();
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const Chunk& c = cs[groups_[mid].front()];
    if (!c.zeros && c.blob_offset < offset) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

bool CachedLayer::GroupCached(uint32_t group) const {
  const auto& cs = reader_->index().chunks();
  for (uint32_t ci : groups_[group]) {
    if (!cs[ci].zeros && !cache_->Contains(cs[ci].digest)) return false;
  }
  return true;
}

std::vector<CachedLayer::Span> CachedLayer::PlanSpans(
    const std::vector<uint32_t>& chunks, uint64_t max_span,
    uint64_t max_gap) const {
  const auto& cs = reader_->index().chunks();
  std::vector<uint32_t> gs;
  std::vector<bool> seen(groups_.size());
  for (uint32_t ci : chunks) {
    const uint32_t g = group_of_[ci];
    if (seen[g] || cs[groups_[g].front()].zeros) continue;
    seen[g] = true;
    if (!GroupCached(g)) gs.push_back(g);
  }
  auto begin_of = [&](uint32_t g) {
    return cs[groups_[g].front()].blob_offset;
  };
  auto end_of = [&](uint32_t g) { return cs[groups_[g].front()].blob_end; };
  std::sort(gs.begin(), gs.end(),
            [&](uint32_t a, uint32_t b) { return begin_of(a) < begin_of(b); });
  std::vector<Span> spans;
  for (uint32_t g : gs) {
    if (!spans.empty()) {
      Span& last = spans.back();
      if (begin_of(g) >= last.end && begin_of(g) - last.end <= max_gap &&
          end_of(g) - last.begin <= max_span) {
        last.end = end_of(g);
        continue;
      }
    }
    spans.push_back({begin_of(g), end_of(g), max_gap});
  }
  return spans;
}

absl::Status CachedLayer::FillSpan(const Span& span, ReadPriority priority) {
  return FillSpanWith(
      span, priority,
      [&](uint64_t begin, absl::Span<char> dst,
          const std::function<void(size_t)>& landed) {
        return reader_->source().ReadAtStreaming(begin, dst, priority, landed);
      },
      nullptr);
}

absl::Status CachedLayer::FillSpanWith(const Span& span, ReadPriority priority,
                                       const SpanReader& read,
                                       const AsyncRunner& async,
                                       const void* owner) {
  const auto& cs = reader_->index().chunks();
  // The members still missing, in runs: members cached since the span was
  // planned (by on-demand reads) are not fetched again, unless the hole
  // they leave is within the span's gap.
  struct Run {
    uint64_t begin, end;
    std::vector<uint32_t> groups;
    uint64_t decoded_max = 0;
  };
  std::vector<Run> runs;
  ForEachMemberIn(span, [&](uint32_t g, const Chunk& c) {
    // In flight for another fill (an on-demand one, say): fetching it again
    // here would only duplicate its bytes on the link. (Members this fill
    // claimed ahead are its own.)
    if (GroupCached(g) || InFlightForOther(g, owner)) return;
    if (runs.empty() || c.blob_offset - runs.back().end > span.gap) {
      runs.push_back({c.blob_offset, c.blob_end, {}, 0});
    }
    Run& r = runs.back();
    r.end = c.blob_end;
    r.groups.push_back(g);
    r.decoded_max = std::max(r.decoded_max,
                             GroupFillBytes(g) - (c.blob_end - c.blob_offset));
  });
  absl::Status first_error;
  for (const Run& run : runs) {
    const uint64_t held =
        AcquireFillBytes(run.end - run.begin + run.decoded_max, priority);
    // The run's members become this fill's flights: an on-demand read or a
    // read-ahead of one of them waits for this fetch instead of fetching it
    // again (members claimed by another fill meanwhile are left to it).
    std::vector<std::pair<uint32_t, std::shared_ptr<Flight>>> claimed;
    {
      absl::MutexLock l(&mu_);
      for (const uint32_t g : run.groups) {
        if (auto it = flights_.find(g); it != flights_.end()) {
          if (owner != nullptr && it->second->owner == owner) {
            claimed.emplace_back(g, it->second);  // claimed ahead: ours
          }
          continue;
        }
        auto f = std::make_shared<Flight>(priority);
        flights_[g] = f;
        claimed.emplace_back(g, std::move(f));
      }
    }
    if (claimed.empty()) {
      ReleaseFillBytes(held);
      continue;
    }
    // Only from the first to the last member claimed here: those at the
    // ends claimed by another fill meanwhile (a read-ahead, typically) come
    // with its bytes, not again with these.
    const uint64_t begin =
        cs[groups_[claimed.front().first].front()].blob_offset;
    const uint64_t end = cs[groups_[claimed.back().first].front()].blob_end;
    const size_t n = end - begin;
    // Not zero-filled: the source overwrites every byte (or fails).
    std::shared_ptr<std::string> buf = BufferPool::Default().Get(n);
    const absl::string_view bytes(*buf);
    // Decodes run on `async` if given; the run waits for them at its end.
    absl::Mutex done_mu;
    size_t decoded = 0;
    // Decodes, verifies and caches claimed member `i` from its bytes (or
    // fails it with `st`), and lets its waiters go.
    auto finish = [&](size_t i, absl::Status st) {
      auto& [g, flight] = claimed[i];
      const Chunk& c = cs[groups_[g].front()];
      absl::flat_hash_map<uint32_t, ChunkData> out;
      absl::flat_hash_map<uint32_t, absl::Status> errors;
      if (st.ok()) {
        if (!group_fetched_[g].exchange(true)) {
          fetched_blob_bytes_.fetch_add(c.blob_end - c.blob_offset);
        }
        st = DecodeGroup(
            g, bytes.substr(c.blob_offset - begin, c.blob_end - c.blob_offset),
            &out, &errors);
        if (!st.ok()) {
          failures_.fetch_add(st.code() == absl::StatusCode::kDataLoss ? 1 : 0);
          out.clear();
        }
        for (const auto& [ci, data] : out) {
          (void)cache_->InsertShared(cs[ci].digest, data);
        }
        Observe(out);
        absl::MutexLock l(&done_mu);
        if (!st.ok() && first_error.ok()) first_error = st;
        if (!errors.empty() && first_error.ok()) {
          first_error = errors.begin()->second;
        }
      }
      {
        absl::MutexLock l(&flight->mu);
        flight->status = st;
        flight->data = std::move(out);
        flight->errors = std::move(errors);
        flight->done = true;
      }
      EndFlight(g, flight.get());
      absl::MutexLock l(&done_mu);
      ++decoded;
    };
    // Members whose bytes are all in are decoded while the rest arrive, so
    // a reader waiting for one of them (a process starting while its
    // prefetch streams in) is not held up by the whole run.
    size_t finished = 0;
    auto member_end = [&](size_t i) {
      return cs[groups_[claimed[i].first].front()].blob_end - begin;
    };
    auto landed = [&](size_t have) {
      while (finished < claimed.size() && member_end(finished) <= have) {
        const size_t i = finished++;
        if (async) {
          async([&finish, i] { finish(i, absl::OkStatus()); });
        } else {
          finish(i, absl::OkStatus());
        }
      }
    };
    absl::Status st = read(begin, absl::MakeSpan(*buf), landed);
    fills_.fetch_add(1);
    if (!st.ok()) {
      st = absl::Status(st.code(),
                        absl::StrCat(reader_->source().Describe(), " bytes [",
                                     begin, ", ", end, "): ", st.message()));
      absl::MutexLock l(&done_mu);
      if (first_error.ok()) first_error = st;
    } else {
      fetched_.fetch_add(n);
    }
    while (finished < claimed.size()) finish(finished++, st);
    {
      absl::MutexLock l(&done_mu);
      auto all = [&] { return decoded == claimed.size(); };
      done_mu.Await(absl::Condition(&all));
    }
    ReleaseFillBytes(held);
  }
  return first_error;
}

absl::Status CachedLayer::FillStream(
    const std::vector<Span>& spans, ReadPriority priority, int threads,
    uint64_t stream_gap, uint64_t max_stream, uint64_t from,
    const std::function<absl::Status(const Span&)>& before_span, bool* gave_way,
    uint64_t give_way_bytes, bool claim_ahead) {
  if (gave_way != nullptr) *gave_way = false;
  // The decoding threads: each member is decoded as soon as its bytes are
  // in, while the stream goes on.
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::function<void()>> tasks;
  bool closed = false;
  std::vector<std::thread> workers;
  for (int t = 0; t < std::max(threads, 1); ++t) {
    workers.emplace_back([&] {
      NameThisThread("lp-decode");
      std::unique_lock<std::mutex> l(m);
      for (;;) {
        cv.wait(l, [&] { return closed || !tasks.empty(); });
        if (tasks.empty()) return;
        std::function<void()> task = std::move(tasks.front());
        tasks.pop_front();
        l.unlock();
        task();
        l.lock();
      }
    });
  }
  const AsyncRunner async = [&](std::function<void()> task) {
    {
      std::lock_guard<std::mutex> l(m);
      tasks.push_back(std::move(task));
    }
    cv.notify_one();
  };
  // Bytes of members taken by others since this call (reads running ahead
  // of the stream), which it brings again, against all it read.
  std::vector<uint64_t> taken_before(spans.size());
  for (size_t i = 0; i < spans.size(); ++i) {
    taken_before[i] = TakenBytesIn(spans[i]);
  }
  uint64_t again = 0, streamed = 0;
  absl::Status span_error;
  // The members of the span being read and of the next one that this stream
  // claimed ahead (ClaimAhead); `owner` tells its flights from others'.
  std::vector<std::pair<uint32_t, std::shared_ptr<Flight>>> claims_cur,
      claims_next;
  const void* const owner = &claims_cur;
  absl::Status stream_error = [&]() -> absl::Status {
    std::string scratch;
    std::unique_ptr<BlobStream> stream;
    uint64_t pos = 0, stretch_end = 0;
    absl::Status broken;
    // FillSpanWith's reads, from the stream: what lies before `at` (bytes
    // between spans, members others hold) is read and dropped, and the rest
    // lands in pieces, each member decoded once its bytes are in.
    auto read = [&](uint64_t at, absl::Span<char> dst,
                    const std::function<void(size_t)>& landed) {
      absl::Status st = [&]() -> absl::Status {
        while (pos < at) {
          scratch.resize(std::min<uint64_t>(at - pos, kStreamPiece));
          RETURN_IF_ERROR(stream->Read(absl::MakeSpan(scratch)));
          pos += scratch.size();
        }
        for (size_t done = 0; done < dst.size();) {
          const size_t k = std::min<size_t>(dst.size() - done, kStreamPiece);
          RETURN_IF_ERROR(stream->Read(dst.subspan(done, k)));
          done += k;
          pos += k;
          landed(done);
        }
        return absl::OkStatus();
      }();
      if (!st.ok()) broken = st;
      return st;
    };
    for (size_t i = 0; i < spans.size(); ++i) {
      const Span& span = spans[i];
      RETURN_IF_ERROR(before_span(span));
      // (Fewer than before if a member in flight then failed since.)
      const uint64_t taken = TakenBytesIn(span, owner);
      again += taken > taken_before[i] ? taken - taken_before[i] : 0;
      if (again > give_way_bytes && again > streamed / 16) {
        if (gave_way != nullptr) *gave_way = true;
        return absl::AbortedError(absl::StrCat(
            "reads ran ahead of the stream: ", again, " of the ", streamed,
            " bytes it read were fetched by them already"));
      }
      if (stream == nullptr || span.begin >= stretch_end) {
        // A new stretch: the spans from here on no more than `stream_gap`
        // apart, up to `max_stream` bytes.
        const uint64_t begin = i == 0 ? std::min(from, span.begin) : span.begin;
        size_t j = i + 1;
        while (j < spans.size() && spans[j].begin >= spans[j - 1].end &&
               spans[j].begin - spans[j - 1].end <= stream_gap &&
               spans[j].end - begin <= max_stream) {
          ++j;
        }
        stretch_end = spans[j - 1].end;
        stream.reset();  // (bytes of the last one left unread: cancelled)
        ASSIGN_OR_RETURN(stream, reader_->source().OpenStream(
                                     begin, stretch_end - begin, priority));
        pos = begin;
      }
      streamed += span.end - span.begin;
      if (claim_ahead && i + 1 < spans.size() &&
          spans[i + 1].end <= stretch_end) {
        ClaimAhead(spans[i + 1], priority, owner, &claims_next);
      }
      absl::Status st = FillSpanWith(span, priority, read, async, owner);
      ReleaseClaims(&claims_cur);  // (any it did not take up)
      std::swap(claims_cur, claims_next);
      RETURN_IF_ERROR(broken);
      if (!st.ok() && span_error.ok()) span_error = st;
    }
    return absl::OkStatus();
  }();
  {
    std::lock_guard<std::mutex> l(m);
    closed = true;
  }
  cv.notify_all();
  for (auto& w : workers) w.join();
  ReleaseClaims(&claims_cur);
  ReleaseClaims(&claims_next);
  return stream_error.ok() ? span_error : stream_error;
}

absl::StatusOr<CachedLayer::ChunkData> CachedLayer::GetChunk(
    uint32_t chunk, ReadPriority priority) {
  const Chunk& c = reader_->index().chunks()[chunk];
  const uint32_t group = group_of_[chunk];
  std::shared_ptr<Flight> failed;  // the fill this reader saw fail, if any
  for (bool retried = false;; retried = true) {
    // (Contains first: a chunk-sized buffer is only worth touching for a
    // hit. On a retry, another reader may have filled it meanwhile.)
    if (!c.zeros && cache_->Contains(c.digest)) {
      std::shared_ptr<std::string> buf = BufferPool::Default().Get(c.size);
      ASSIGN_OR_RETURN(bool hit,
                       cache_->Read(c.digest, c.size, 0, absl::MakeSpan(*buf)));
      if (hit) {
        hits_.fetch_add(1);
        return buf;
      }
    }
    std::shared_ptr<Flight> flight;
    bool leader = false;
    {
      absl::MutexLock l(&mu_);
      auto it = flights_.find(group);
      // A retry joins only a fill made for a blocked reader (the failed one
      // may not have left flights_ yet; another prefetch may have come);
      // else it leads one of its own, in the failed one's place.
      if (it != flights_.end() &&
          (failed == nullptr ||
           (it->second != failed &&
            it->second->priority == ReadPriority::kOnDemand))) {
        flight = it->second;
        joined_fills_.fetch_add(1);
      } else {
        flight = std::make_shared<Flight>(priority);
        flights_[group] = flight;
        leader = true;
      }
    }
    if (leader) {
      RunFill(group, flight.get(), priority);
      EndFlight(group, flight.get());
    }
    absl::MutexLock l(&flight->mu);
    if (!leader && flight->owner != nullptr &&
        priority == ReadPriority::kOnDemand && failed == nullptr &&
        !flight->mu.AwaitWithTimeout(absl::Condition(&flight->done),
                                     options_.claim_wait)) {
      // A stream's claim that is taking too long: fetch it here, in the
      // claim's place (the stream then leaves the member to this fill).
      failed = std::move(flight);
      continue;
    }
    flight->mu.Await(absl::Condition(&flight->done));
    absl::Status st = flight->status;
    if (auto e = flight->errors.find(chunk);
        st.ok() && e != flight->errors.end()) {
      st = e->second;
    }
    if (st.ok()) {
      auto it = flight->data.find(chunk);
      if (it == flight->data.end()) {
        return absl::InternalError("chunk missing from its member's fill");
      }
      return it->second;
    }
    // A blocked reader does not inherit the failure of a fetch made for
    // someone else (a prefetch or background span, a read-ahead): it tries
    // once itself, at its own priority.
    if (leader || retried || priority != ReadPriority::kOnDemand ||
        flight->priority == ReadPriority::kOnDemand) {
      return st;
    }
    failed = std::move(flight);
  }
}

void CachedLayer::EndFlight(uint32_t group, const Flight* flight) {
  absl::MutexLock l(&mu_);
  auto it = flights_.find(group);
  if (it != flights_.end() && it->second.get() == flight) flights_.erase(it);
}

absl::Status CachedLayer::Fill(uint32_t chunk, ReadPriority priority) {
  const Chunk& c = reader_->index().chunks()[chunk];
  if (c.zeros || cache_->Contains(c.digest)) return absl::OkStatus();
  return GetChunk(chunk, priority).status();
}

template <typename Fn>
absl::StatusOr<bool> CachedLayer::ForEachPiece(uint32_t inode, uint64_t offset,
                                               uint64_t end, Fn fn) const {
  const LayerIndex& idx = reader_->index();
  const auto& cs = idx.chunks();
  uint64_t pos = offset;
  for (uint32_t ci = idx.ChunkAt(inode, offset); pos < end; ++ci) {
    const Chunk& c = cs[ci];
    const uint64_t len = std::min(end, c.file_offset + c.size) - pos;
    ASSIGN_OR_RETURN(bool go_on, fn(ci, c, pos, pos - c.file_offset, len));
    if (!go_on) return false;
    pos += len;
  }
  return true;
}

absl::Status CachedLayer::VerifyZerosOnce(uint32_t chunk) {
  {
    absl::MutexLock l(&mu_);
    if (zeros_verified_.contains(chunk)) return absl::OkStatus();
  }
  RETURN_IF_ERROR(reader_->VerifyZerosChunk(chunk));
  absl::MutexLock l(&mu_);
  zeros_verified_.insert(chunk);
  return absl::OkStatus();
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
  bool missed = false;
  RETURN_IF_ERROR(
      ForEachPiece(
          inode, offset, end,
          [&](uint32_t ci, const Chunk& c, uint64_t pos, uint64_t in_chunk,
              uint64_t len) -> absl::StatusOr<bool> {
            char* dst = out.data() + (pos - offset);
            if (c.zeros) {
              // (Never filled nor cached: a TOC may declare any size.)
              if (c.has_digest) RETURN_IF_ERROR(VerifyZerosOnce(ci));
              std::memset(dst, 0, len);
              return true;
            }
            ASSIGN_OR_RETURN(bool hit, cache_->Read(c.digest, c.size, in_chunk,
                                                    absl::MakeSpan(dst, len)));
            if (hit) {
              hits_.fetch_add(1);
            } else {
              ASSIGN_OR_RETURN(ChunkData data, GetChunk(ci, priority));
              std::memcpy(dst, data->data() + in_chunk, len);
              missed = true;
            }
            return true;
          })
          .status());
  // (The chunk after the last one read.)
  const uint32_t ci = idx.ChunkAt(inode, end - 1) + 1;
  if (missed && priority == ReadPriority::kOnDemand && !dir_done_.empty()) {
    PrefetchDirectoryOf(inode);
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
  absl::StatusOr<bool> all = ForEachPiece(
      inode, offset, end,
      [&](uint32_t, const Chunk& c, uint64_t, uint64_t in_chunk,
          uint64_t piece_len) -> absl::StatusOr<bool> {
        if (c.zeros) return false;
        std::shared_ptr<CachedFile> f = cache_->OpenChunk(c.digest, c.size);
        if (f == nullptr) return false;
        const uint64_t at = f->offset() + in_chunk;
        pieces.push_back(
            FilePiece{std::move(f), at, static_cast<size_t>(piece_len)});
        return true;
      });
  if (!all.ok() || !*all) return std::nullopt;
  hits_.fetch_add(pieces.size());
  return pieces;
}

absl::StatusOr<bool> CachedLayer::ReadCached(uint32_t inode, uint64_t offset,
                                             absl::Span<char> out) {
  const Inode& n = reader_->index().inode(inode);
  if (n.type != EntryType::kReg || offset > n.size ||
      out.size() > n.size - offset) {
    return absl::InvalidArgumentError("ReadCached: not inside a regular file");
  }
  return ForEachPiece(
      inode, offset, offset + out.size(),
      [&](uint32_t, const Chunk& c, uint64_t pos, uint64_t in_chunk,
          uint64_t len) -> absl::StatusOr<bool> {
        char* dst = out.data() + (pos - offset);
        if (c.zeros) {
          std::memset(dst, 0, len);
          return true;
        }
        return cache_->Read(c.digest, c.size, in_chunk,
                            absl::MakeSpan(dst, len));
      });
}

void CachedLayer::FillAsync(std::vector<uint32_t> chunks,
                            ReadPriority priority) {
  {
    std::lock_guard<std::mutex> l(bg_mu_);
    for (uint32_t c : chunks) {
      bg_queue_.push_back(BackgroundJob{c, priority, std::nullopt});
    }
  }
  bg_cv_.notify_all();
}

void CachedLayer::PrefetchDirectoryOf(uint32_t inode) {
  const LayerIndex& idx = reader_->index();
  const uint32_t dirent = idx.inode(inode).dirent;
  if (dirent == LayerIndex::kNoDirent) return;
  const uint32_t dir = idx.dirents()[dirent].parent;
  if (dir_done_[dir].exchange(true)) return;
  // The other files, each no bigger than the cap; first a cheap bound (no
  // cache lookups: a huge directory is refused at the cost of one pass).
  const auto& cs = idx.chunks();
  std::vector<uint32_t> chunks;
  uint64_t extent = 0;
  for (uint32_t d : idx.Children(dir)) {
    const uint32_t i = idx.dirents()[d].inode;
    const Inode& n = idx.inode(i);
    if (i == inode || n.type != EntryType::kReg) continue;
    uint64_t file_extent = 0;
    for (uint32_t k = 0; k < n.num_chunks; ++k) {
      const Chunk& c = cs[n.first_chunk + k];
      if (!c.zeros) file_extent += c.blob_end - c.blob_offset;
    }
    if (file_extent > options_.dir_prefetch_bytes) continue;
    extent += file_extent;
    for (uint32_t k = 0; k < n.num_chunks; ++k) {
      chunks.push_back(n.first_chunk + k);
    }
  }
  if (chunks.empty() || extent > 2 * options_.dir_prefetch_bytes) return;
  // (PlanSpans leaves out what is cached already.)
  std::vector<Span> spans =
      PlanSpans(chunks, options_.dir_prefetch_span, options_.dir_prefetch_gap);
  uint64_t bytes = 0;
  for (const Span& sp : spans) bytes += sp.end - sp.begin;
  if (spans.empty() || bytes > options_.dir_prefetch_bytes) return;
  dir_prefetches_.fetch_add(1);
  {
    std::lock_guard<std::mutex> l(bg_mu_);
    for (const Span& sp : spans) {
      bg_queue_.push_back(BackgroundJob{0, ReadPriority::kPrefetch, sp});
    }
  }
  bg_cv_.notify_all();
}

void CachedLayer::BackgroundLoop() {
  NameThisThread("lp-layer-bg");
  while (true) {
    BackgroundJob job;
    {
      std::unique_lock<std::mutex> l(bg_mu_);
      bg_cv_.wait(l, [&] { return bg_stop_ || !bg_queue_.empty(); });
      if (bg_stop_) return;
      job = bg_queue_.front();
      bg_queue_.pop_front();
    }
    // Errors surface to the on-demand reader that needs the chunk.
    if (job.span) {
      (void)FillSpan(*job.span, job.priority);
    } else {
      (void)Fill(job.chunk, job.priority);
    }
  }
}

}  // namespace lazypull
