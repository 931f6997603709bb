#include "fetch/http_blob_source.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/buffer_pool.h"
#include "core/log.h"
#include "core/status_macros.h"
#include "core/thread_priority.h"

namespace lazypull {

// One GET in flight: its body lands in `buf` (the blob's bytes from `lo`),
// the first `received` of them so far.
struct HttpBlobSource::Request {
  uint64_t lo = 0;
  absl::Mutex mu;
  // Set (under mu) once the answer's headers are in, before `received`
  // grows, and never changed: a fresh buffer costs page faults (here, the
  // hypervisor backing its memory: 4-5 ms per MiB), which delay the
  // response, not the request.
  std::shared_ptr<std::string> buf;
  uint64_t received ABSL_GUARDED_BY(mu) = 0;
  // Set once the pieces it serves are done (after their `done`).
  bool finished ABSL_GUARDED_BY(mu) = false;
  // A Warm() request, and (guarded by the source's mu_) whether it let the
  // next one start: once what it has left takes about 1.5 round trips.
  bool warm = false;
  bool handed_off = false;
  // The read the warm gate waits for (set under the source's mu_ before it
  // is sent).
  bool gates_warm = false;
};

// One range some reader waits for.
struct HttpBlobSource::Piece {
  uint64_t first = 0;
  uint64_t len = 0;
  ReadPriority priority = ReadPriority::kOnDemand;
  uint64_t seq = 0;  // arrival order, for FIFO within a class
  // Set when done: the request's bytes and where this piece starts in them.
  std::shared_ptr<const std::string> data;
  uint64_t data_offset = 0;
  absl::Status status;
  bool done = false;
  // (These two are the source's, under its mu_.)
  bool warm = false;    // fetched ahead by Warm(), with no reader yet
  bool joined = false;  // a read waits for it
  // Its request, once dispatched: readers take bytes as they land.
  std::shared_ptr<Request> request;
  // Warm: the disjoint blob ranges [lo, hi) readers have copied out, by lo,
  // and how many bytes they cover (a byte read twice counts once).
  std::map<uint64_t, uint64_t> consumed;
  uint64_t consumed_bytes = 0;

  uint64_t end() const { return first + len; }
};

namespace {

int Rank(ReadPriority p) { return static_cast<int>(p); }

// Adds [lo, hi) to `ranges` (disjoint [first, second) ranges keyed by
// first), merging what it touches; returns how many bytes it newly covers.
uint64_t AddRange(std::map<uint64_t, uint64_t>& ranges, uint64_t lo,
                  uint64_t hi) {
  uint64_t covered_before = 0;
  auto it = ranges.upper_bound(lo);
  if (it != ranges.begin() && std::prev(it)->second >= lo) --it;
  while (it != ranges.end() && it->first <= hi) {
    lo = std::min(lo, it->first);
    hi = std::max(hi, it->second);
    covered_before += it->second - it->first;
    it = ranges.erase(it);
  }
  ranges[lo] = hi;
  return hi - lo - covered_before;
}

// HTTP/2 stream weights by class: where the server honours them, an
// on-demand response's frames go before background ones already queued at
// the server (the client-side caps are what we rely on; this is a bonus).
int StreamWeight(ReadPriority p) {
  switch (p) {
    case ReadPriority::kOnDemand:
      return 256;
    case ReadPriority::kPrefetch:
      return 32;
    case ReadPriority::kBackground:
      return 1;
  }
  return 0;
}

const char* PriorityName(ReadPriority p) {
  switch (p) {
    case ReadPriority::kOnDemand:
      return "on-demand";
    case ReadPriority::kPrefetch:
      return "prefetch";
    case ReadPriority::kBackground:
      return "background";
  }
  return "?";
}

}  // namespace

HttpBlobSource::HttpBlobSource(
    std::shared_ptr<RegistryClient> client, Descriptor blob,
    const HttpBlobSourceOptions& options,
    std::shared_ptr<RegistryClient> background_client)
    : client_(std::move(client)),
      background_client_(background_client != nullptr
                             ? std::move(background_client)
                             : client_),
      blob_(std::move(blob)),
      options_([&] {
        HttpBlobSourceOptions o = options;
        o.max_concurrent_requests = std::max(1, o.max_concurrent_requests);
        o.reserved_on_demand =
            std::clamp(o.reserved_on_demand, 0, o.max_concurrent_requests - 1);
        o.max_request_size = std::max<uint64_t>(4096, o.max_request_size);
        return o;
      }()),
      budget_(options_.background_budget != nullptr
                  ? options_.background_budget
                  : std::make_shared<BackgroundBudget>(BackgroundBudgetOptions{
                        .fixed_bytes = options_.max_background_bytes})) {
  // Budget freed elsewhere on the link: re-check what may be sent.
  budget_listener_ = budget_->AddListener([this] { absl::MutexLock l(&mu_); });
}

void HttpBlobSource::AddWorkerIfNeeded() {
  // Started as pieces queue up, not all at once: a thread costs about a
  // millisecond to start here, and the first read of a mount (its tail
  // read) should not wait behind max_concurrent_requests of them.
  if (stop_ || static_cast<size_t>(idle_workers_) >= queued_.size() ||
      workers_.size() >=
          static_cast<size_t>(options_.max_concurrent_requests)) {
    return;
  }
  AddWorker();
}

void HttpBlobSource::AddWorker() {
  workers_.emplace_back([this] { WorkerLoop(); });
  ++idle_workers_;  // counted as idle from the start: it looks for work first
}

void HttpBlobSource::StartWorkers() {
  absl::MutexLock l(&mu_);
  while (!stop_ && workers_.size() <
                       static_cast<size_t>(options_.max_concurrent_requests)) {
    AddWorker();
  }
}

HttpBlobSource::~HttpBlobSource() {
  budget_->RemoveListener(budget_listener_);
  std::vector<std::thread> workers;
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
    workers.swap(workers_);
  }
  for (std::thread& t : workers) t.join();
  absl::MutexLock l(&mu_);
  for (auto& p : queued_) {
    p->status = absl::CancelledError("blob source destroyed");
    p->done = true;
  }
  queued_.clear();
  absl::MutexLock hl(&hash_mu_);
  if (spill_fd_ >= 0) close(spill_fd_);
  spill_fd_ = -1;
}

std::string HttpBlobSource::Describe() const {
  return absl::StrCat("blob ", blob_.digest.ToString(), " of ",
                      client_->reference().String());
}

HttpBlobSourceStats HttpBlobSource::stats() const {
  absl::MutexLock l(&mu_);
  return stats_;
}

bool HttpBlobSource::Eligible(const Piece& p) const {
  if (p.priority == ReadPriority::kOnDemand) {
    return requests_in_flight_ < options_.max_concurrent_requests;
  }
  // Warm requests one after another, so that they arrive in blob order (the
  // order the prefetched files are read in): the next goes out when the
  // one streaming in has about 1.5 round trips left, so the link does not
  // idle.
  if (p.warm && (warm_gate_ != WarmGate::kOpen || warm_streaming_ > 0 ||
                 warm_in_flight_ >= kWarmStreams)) {
    return false;
  }
  if (non_urgent_in_flight_ >=
      options_.max_concurrent_requests - options_.reserved_on_demand) {
    return false;
  }
  if (p.priority == ReadPriority::kBackground) {
    return budget_->CanStart(p.len);
  }
  return true;
}

uint64_t HttpBlobSource::MaxRequest(ReadPriority prio) const {
  if (prio != ReadPriority::kBackground) return options_.max_request_size;
  return std::min(options_.max_request_size, budget_->PieceBytes());
}

bool HttpBlobSource::HasWork() const {
  if (stop_) return true;
  for (const auto& p : queued_) {
    if (Eligible(*p)) return true;
  }
  return false;
}

absl::Status HttpBlobSource::ReadAt(uint64_t offset, absl::Span<char> dst,
                                    ReadPriority priority) {
  return ReadAtStreaming(offset, dst, priority, nullptr);
}

absl::Status HttpBlobSource::ReadAtStreaming(
    uint64_t offset, absl::Span<char> dst, ReadPriority priority,
    const std::function<void(size_t)>& progress) {
  const uint64_t n = dst.size();
  if (offset > size() || n > size() - offset) {
    return absl::OutOfRangeError(
        absl::StrCat(Describe(), ": read of ", n, " bytes at ", offset,
                     " is past the end (", size(), " bytes)"));
  }
  if (n == 0) return absl::OkStatus();
  // Each sub-range [o, o + len) of the read and the piece serving it.
  struct Part {
    std::shared_ptr<Piece> piece;
    uint64_t o, len;
  };
  std::vector<Part> mine;
  {
    absl::MutexLock l(&mu_);
    for (uint64_t o = offset; o < offset + n;) {
      uint64_t len = PieceLen(o, offset + n, priority);
      // A piece holding byte o serves as much of the range as it holds;
      // else a new one runs up to where the next begins: no byte is
      // fetched twice, however the pieces are cut.
      // (An on-demand read does not join a request that would take longer
      // to get to its bytes than one of its own: a read far into a long
      // warm request asks for them too, up to that request's end.)
      uint64_t own_end = o + len;
      std::shared_ptr<Piece> found = FindHolding(o, priority, &own_end);
      if (found) {
        found->joined = true;
        len = std::min(len, found->end() - o);
        ++stats_.shared;
        if (found->warm) ++stats_.warm_hits;
      } else {
        len = NextPieceStart(o, own_end) - o;
        found = std::make_shared<Piece>();
        found->joined = true;
        found->first = o;
        found->len = len;
        found->priority = priority;
        found->seq = next_seq_++;
        queued_.push_back(found);
        AddWorkerIfNeeded();
      }
      mine.push_back({std::move(found), o, len});
      o += len;
    }
  }
  absl::Status st;
  for (const Part& part : mine) {
    const Piece& p = *part.piece;
    // Bytes of the part copied out while its request was still running.
    uint64_t early = 0;
    std::shared_ptr<Request> req;
    bool warm;  // (Piece::warm is the source's: read under its lock)
    {
      absl::MutexLock l(&mu_);
      auto dispatched = [&p] { return p.done || p.request != nullptr; };
      mu_.Await(absl::Condition(&dispatched));
      if (!p.done) req = p.request;
      warm = p.warm;
    }
    while (req != nullptr && st.ok()) {
      // Wait for more of the part, or for the request's end.
      uint64_t have;
      bool finished;
      {
        absl::MutexLock l(&req->mu);
        auto more = [&] {
          return req->finished || req->lo + req->received > part.o + early;
        };
        req->mu.Await(absl::Condition(&more));
        have = std::min(req->lo + req->received, part.o + part.len) - part.o;
        finished = req->finished;
      }
      if (finished) break;  // the rest from the done piece, below
      std::memcpy(dst.data() + (part.o - offset) + early,
                  req->buf->data() + (part.o + early - req->lo), have - early);
      early = have;
      if (early == part.len) break;
      if (progress) progress(part.o - offset + early);
    }
    if (early == part.len && st.ok()) {
      // Every byte of the part is in while its request still runs: the
      // first bytes of a 206 under a checked Content-Range (what happens to
      // the rest of the body cannot change them).
      if (warm && priority == ReadPriority::kPrefetch) {
        ConsumeWarm(part.piece, part.o, part.len);
      }
    } else {
      {
        absl::MutexLock l(&mu_);
        mu_.Await(absl::Condition(&part.piece->done));
      }
      if (!p.status.ok()) {
        if (st.ok()) st = p.status;
      } else if (st.ok()) {
        std::memcpy(dst.data() + (part.o - offset) + early,
                    p.data->data() + p.data_offset + (part.o - p.first) + early,
                    part.len - early);
        // Only prefetch-priority reads (the prefetch's spans and
        // read-ahead) use up a warm piece: the prefetch reads every byte of
        // it, and an on-demand read of some bytes first would let it go
        // before that. Spans and read-ahead may overlap: ranges, not
        // counts, say when.
        if (warm && priority == ReadPriority::kPrefetch) {
          ConsumeWarm(part.piece, part.o, part.len);
        }
      }
    }
    if (st.ok() && progress && &part != &mine.back()) {
      progress(part.o + part.len - offset);
    }
  }
  return st;
}

bool HttpBlobSource::FarAheadOfItsBytes(const Piece& p, uint64_t o) const {
  if (p.done || p.request == nullptr) return false;
  const double rtt = absl::ToDoubleSeconds(budget_->min_rtt());
  const double rate = budget_->bandwidth();
  if (!std::isfinite(rtt) || rtt <= 0 || rate <= 0) return false;
  uint64_t frontier;
  {
    absl::MutexLock l(&p.request->mu);
    frontier = p.request->lo + p.request->received;
  }
  return o > frontier && static_cast<double>(o - frontier) > 2 * rtt * rate;
}

uint64_t HttpBlobSource::PieceLen(uint64_t o, uint64_t end,
                                  ReadPriority priority) const {
  const uint64_t max = MaxRequest(priority);
  uint64_t len = std::min(max, end - o);
  if (priority == ReadPriority::kPrefetch && kWarmGrid <= max) {
    // Never across the grid Warm() fetches in, so that warm pieces cover
    // these.
    len = std::min(len, kWarmGrid - o % kWarmGrid);
  }
  return len;
}

std::shared_ptr<HttpBlobSource::Piece> HttpBlobSource::FindHolding(
    uint64_t o, ReadPriority priority, uint64_t* skipped_end) {
  auto holds = [&](const std::shared_ptr<Piece>& p) {
    return p->first <= o && o < p->end();
  };
  std::shared_ptr<Piece> found;
  for (const auto& p : queued_) {
    if (holds(p)) {
      if (Rank(priority) < Rank(p->priority)) p->priority = priority;
      found = p;
      break;
    }
  }
  for (size_t i = 0; !found && i < in_flight_.size(); ++i) {
    if (!holds(in_flight_[i])) continue;
    if (priority == ReadPriority::kOnDemand &&
        FarAheadOfItsBytes(*in_flight_[i], o)) {
      // Too far ahead of its bytes to wait for: another piece (one such a
      // read asked for itself) may serve, else the caller asks itself.
      if (skipped_end != nullptr) {
        *skipped_end = std::min(*skipped_end, in_flight_[i]->end());
      }
      continue;
    }
    found = in_flight_[i];
  }
  for (size_t i = 0; !found && i < warm_.size(); ++i) {
    if (holds(warm_[i])) found = warm_[i];
  }
  return found;
}

uint64_t HttpBlobSource::NextPieceStart(uint64_t o, uint64_t limit) const {
  uint64_t next = limit;
  auto consider = [&](const std::shared_ptr<Piece>& p) {
    if (p->first > o && p->first < next) next = p->first;
  };
  for (const auto& p : queued_) consider(p);
  for (const auto& p : in_flight_) consider(p);
  for (const auto& p : warm_) consider(p);
  return next;
}

void HttpBlobSource::Warm(uint64_t offset, uint64_t len, bool after_next_read) {
  absl::MutexLock l(&mu_);
  if (!warm_open_ || offset >= size()) return;
  if (after_next_read) {
    warm_gate_ = WarmGate::kForRead;
    warm_gate_request_ = nullptr;
  }
  const uint64_t end = offset + std::min(len, size() - offset);
  for (uint64_t o = offset; o < end;) {
    if (std::shared_ptr<Piece> held = FindHolding(o, ReadPriority::kPrefetch)) {
      o = held->end();  // on its way or here already
      continue;
    }
    const uint64_t n =
        NextPieceStart(o, o + PieceLen(o, end, ReadPriority::kPrefetch)) - o;
    if (warm_bytes_ + n > options_.max_warm_bytes) break;
    auto p = std::make_shared<Piece>();
    p->first = o;
    p->len = n;
    p->priority = ReadPriority::kPrefetch;
    p->seq = next_seq_++;
    p->warm = true;
    queued_.push_back(std::move(p));
    warm_bytes_ += n;
    o += n;
  }
  // One worker at most for them: warm requests go one at a time (and the
  // read a mount makes next should not wait behind thread starts).
  AddWorkerIfNeeded();
}

void HttpBlobSource::OpenWarmGate(const Request* request,
                                  const absl::Status& status) {
  if (warm_gate_ != WarmGate::kForHeaders || warm_gate_request_ != request) {
    return;
  }
  warm_gate_ = WarmGate::kOpen;
  warm_gate_request_ = nullptr;
  if (!status.ok()) {
    // The read they waited for failed (the blob is missing, the registry
    // refuses us): fetch nothing more ahead of readers.
    warm_open_ = false;
    DropQueuedWarm();
    AddWorkerIfNeeded();  // (for pieces a read waits for)
  }
}

void HttpBlobSource::DropQueuedWarm() {
  for (auto it = queued_.begin(); it != queued_.end();) {
    Piece& p = **it;
    if (!p.warm) {
      ++it;
      continue;
    }
    warm_bytes_ -= p.len;
    p.warm = false;
    if (p.joined) {
      ++it;  // a read waits for it: fetched as an ordinary piece
    } else {
      it = queued_.erase(it);
    }
  }
}

void HttpBlobSource::ConsumeWarm(const std::shared_ptr<Piece>& p, uint64_t from,
                                 uint64_t n) {
  absl::MutexLock l(&mu_);
  p->consumed_bytes += AddRange(p->consumed, from, from + n);
  if (p->consumed_bytes < p->len) return;
  // Every byte was read at least once: let it go.
  auto w = std::find(warm_.begin(), warm_.end(), p);
  if (w == warm_.end()) return;
  warm_.erase(w);
  warm_bytes_ -= p->len;
}

void HttpBlobSource::DropWarm() {
  absl::MutexLock l(&mu_);
  warm_open_ = false;
  warm_gate_ = WarmGate::kOpen;
  warm_gate_request_ = nullptr;
  DropQueuedWarm();
  for (const auto& p : warm_) warm_bytes_ -= p->len;
  warm_.clear();
}

void HttpBlobSource::WorkerLoop() {
  NameThisThread("lp-source");
  while (true) {
    std::vector<std::shared_ptr<Piece>> batch;
    auto request = std::make_shared<Request>();
    uint64_t lo = 0, hi = 0;
    ReadPriority prio = ReadPriority::kOnDemand;
    {
      absl::MutexLock l(&mu_);
      mu_.Await(absl::Condition(this, &HttpBlobSource::HasWork));
      --idle_workers_;
      if (stop_) return;
      // The most urgent eligible piece, first come first served.
      size_t best = queued_.size();
      for (size_t i = 0; i < queued_.size(); ++i) {
        const Piece& p = *queued_[i];
        if (!Eligible(p)) continue;
        if (best == queued_.size() ||
            Rank(p.priority) < Rank(queued_[best]->priority) ||
            (p.priority == queued_[best]->priority &&
             p.seq < queued_[best]->seq)) {
          best = i;
        }
      }
      if (best == queued_.size()) {
        // HasWork saw a background piece fit the link's budget, which
        // another source of the link (whose mutex this is not) has taken
        // since: wait again.
        ++idle_workers_;
        continue;
      }
      std::shared_ptr<Piece> head = queued_[best];
      // A background piece takes its room in the link's budget here, in one
      // step with the check: between HasWork's check and now, another
      // source of the link may have taken the room it saw.
      if (head->priority == ReadPriority::kBackground &&
          !budget_->TryStart(head->len)) {
        ++idle_workers_;
        continue;
      }
      queued_.erase(queued_.begin() + best);
      prio = head->priority;
      lo = head->first;
      hi = head->end();
      batch.push_back(head);
      const uint64_t request_max = std::max(MaxRequest(prio), hi - lo);
      // Coalesce near queued pieces of the same or a more urgent class.
      for (bool grew = true; grew;) {
        grew = false;
        for (size_t i = 0; i < queued_.size(); ++i) {
          const Piece& q = *queued_[i];
          if (Rank(q.priority) > Rank(prio)) continue;
          // Warm pieces ride together (one long request streams the
          // prefetch range in blob order; readers take their bytes as they
          // land), never with reads: a read's request must stay short.
          if (head->warm != q.warm) continue;
          if (q.first > hi + options_.coalesce_gap ||
              q.end() + options_.coalesce_gap < lo) {
            continue;
          }
          const uint64_t nlo = std::min(lo, q.first);
          const uint64_t nhi = std::max(hi, q.end());
          if (nhi - nlo > request_max) continue;
          lo = nlo;
          hi = nhi;
          batch.push_back(queued_[i]);
          queued_.erase(queued_.begin() + i);
          ++stats_.coalesced;
          grew = true;
          break;
        }
      }
      request->lo = lo;
      for (const auto& p : batch) {
        p->request = request;
        in_flight_.push_back(p);
      }
      ++requests_in_flight_;
      if (prio != ReadPriority::kOnDemand) ++non_urgent_in_flight_;
      // (What coalescing added to an admitted background piece.)
      if (prio == ReadPriority::kBackground)
        budget_->Start(hi - lo - head->len);
      if (prio == ReadPriority::kOnDemand && warm_gate_ == WarmGate::kForRead) {
        warm_gate_ = WarmGate::kForHeaders;
        warm_gate_request_ = request.get();
        request->gates_warm = true;
      }
      if (head->warm) {
        ++warm_in_flight_;
        ++warm_streaming_;
        request->warm = true;
      }
      ++stats_.requests;
      ++stats_.requests_by_priority[Rank(prio)];
      stats_.max_concurrent = std::max<uint64_t>(
          stats_.max_concurrent, static_cast<uint64_t>(requests_in_flight_));
    }

    const std::shared_ptr<std::string>& buf = request->buf;
    absl::Status st = Fetch(lo, hi - 1, prio, *request);
    if (!st.ok()) {
      st = Restated(
          st, absl::StrCat(Describe(), ": ", PriorityName(prio), " read of [",
                           lo, ", ", hi, "): ", st.message()));
    }

    absl::MutexLock l(&mu_);
    ++idle_workers_;  // back to waiting
    --requests_in_flight_;
    OpenWarmGate(request.get(), st);  // (ended without headers)
    if (request->warm) {
      --warm_in_flight_;
      if (!request->handed_off) --warm_streaming_;
      request->handed_off = true;
    }
    if (prio != ReadPriority::kOnDemand) --non_urgent_in_flight_;
    if (st.ok()) {
      stats_.bytes += buf->size();
    } else {
      ++stats_.failures;
    }
    for (const auto& p : batch) {
      p->status = st;
      p->data = buf;
      p->data_offset = p->first - lo;
      p->done = true;
      in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), p));
      if (p->warm) {
        // Kept for the reads it was fetched ahead of, until DropWarm()
        // (unless they read all of it while it arrived).
        if (st.ok() && warm_open_ && p->consumed_bytes < p->len) {
          warm_.push_back(p);
        } else {
          warm_bytes_ -= p->len;
        }
      }
    }
    // After the pieces' `done`: a reader seeing `finished` finds them done.
    absl::MutexLock rl(&request->mu);
    request->finished = true;
  }
}

void HttpBlobSource::ExtendHash(uint64_t first, absl::string_view data) {
  absl::MutexLock l(&hash_mu_);
  const uint64_t end = first + data.size();
  if (end <= hashed_) return;
  if (first > hashed_) {
    // Ahead of the prefix: kept until the prefix reaches it.
    if (first - hashed_ <= options_.hash_window_bytes &&
        hash_pending_bytes_ + data.size() <= options_.hash_window_bytes &&
        !hash_pending_.contains(first)) {
      hash_pending_[first] = std::string(data.data(), data.size());
      hash_pending_bytes_ += data.size();
    } else {
      Spill(first, data);
    }
    return;
  }
  data.remove_prefix(hashed_ - first);
  hash_.Update(data);
  hashed_ = end;
  CatchUp();
}

void HttpBlobSource::HashLanded(uint64_t first, absl::string_view landed) {
  absl::MutexLock l(&hash_mu_);
  const uint64_t end = first + landed.size();
  if (first > hashed_ || end <= hashed_) return;
  hash_.Update(landed.substr(hashed_ - first));
  hashed_ = end;
  CatchUp();
}

void HttpBlobSource::Spill(uint64_t first, absl::string_view data) {
  if (options_.spill_dir.empty() || spill_failed_) return;
  if (spill_fd_ < 0) {
    spill_fd_ =
        open(options_.spill_dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (spill_fd_ < 0) {
      // No O_TMPFILE here: a named file, unlinked at once.
      std::string path = options_.spill_dir + "/.blob-spill.XXXXXX";
      spill_fd_ = mkostemp(path.data(), O_CLOEXEC);
      if (spill_fd_ >= 0) unlink(path.c_str());
    }
    if (spill_fd_ < 0) {
      spill_failed_ = true;
      return;
    }
  }
  const uint64_t end = first + data.size();
  for (size_t done = 0; done < data.size();) {
    const ssize_t w = pwrite(spill_fd_, data.data() + done, data.size() - done,
                             static_cast<off_t>(first + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // disk full or the like: read again later instead
    done += static_cast<size_t>(w);
  }
  AddRange(spilled_, first, end);
}

void HttpBlobSource::CatchUp() {
  std::string buf;
  for (bool progress = true; progress;) {
    progress = false;
    while (!hash_pending_.empty()) {
      auto it = hash_pending_.begin();
      if (it->first > hashed_) break;
      const uint64_t e = it->first + it->second.size();
      if (e > hashed_) {
        hash_.Update(absl::string_view(it->second).substr(hashed_ - it->first));
        hashed_ = e;
        progress = true;
      }
      hash_pending_bytes_ -= it->second.size();
      hash_pending_.erase(it);
    }
    while (!spilled_.empty() && spilled_.begin()->first <= hashed_) {
      auto it = spilled_.begin();
      const uint64_t from = hashed_, to = it->second;
      bool ok = true;
      for (uint64_t at = from; ok && at < to;) {
        buf.resize(std::min<uint64_t>(to - at, 1 << 20));
        const ssize_t r =
            pread(spill_fd_, buf.data(), buf.size(), static_cast<off_t>(at));
        if (r < 0 && errno == EINTR) continue;
        if (r != static_cast<ssize_t>(buf.size())) {
          ok = false;  // unreadable: VerifyWholeBlob fetches it again
          break;
        }
        hash_.Update(buf);
        at += buf.size();
        hashed_ = at;
        progress = true;
      }
      if (to > from) {
        fallocate(spill_fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  static_cast<off_t>(it->first),
                  static_cast<off_t>(to - it->first));
      }
      spilled_.erase(it);
      if (!ok) break;
    }
  }
}

uint64_t HttpBlobSource::hashed_prefix() const {
  absl::MutexLock l(&hash_mu_);
  return hashed_;
}

absl::Status HttpBlobSource::VerifyWholeBlob(uint64_t* refetched,
                                             const std::atomic<bool>* stop) {
  uint64_t again = 0;
  std::string scratch;
  while (true) {
    if (stop != nullptr && stop->load()) {
      return absl::CancelledError("whole-blob check stopped");
    }
    uint64_t at, kept;
    {
      absl::MutexLock l(&hash_mu_);
      at = hashed_;
      // Up to the next range already kept for the hash, not into it.
      kept = size();
      if (auto it = hash_pending_.upper_bound(at); it != hash_pending_.end()) {
        kept = std::min(kept, it->first);
      }
      if (auto it = spilled_.upper_bound(at); it != spilled_.end()) {
        kept = std::min(kept, it->first);
      }
    }
    if (at >= size()) break;
    // One request at a time, in order (pieces of one read may finish out of
    // order).
    const uint64_t n =
        std::min<uint64_t>(kept - at, MaxRequest(ReadPriority::kBackground));
    scratch.resize(n);
    RETURN_IF_ERROR(ReadAt(at, absl::MakeSpan(scratch.data(), n),
                           ReadPriority::kBackground));
    if (hashed_prefix() <= at) {
      // Served by a request that began after the prefix's end: read the
      // prefix's next byte alone, which no other request can cover first.
      scratch.resize(1);
      RETURN_IF_ERROR(ReadAt(at, absl::MakeSpan(scratch.data(), 1),
                             ReadPriority::kBackground));
      if (hashed_prefix() <= at) {
        return absl::InternalError(absl::StrCat(
            Describe(), ": the blob hash makes no progress at ", at));
      }
    }
    again += n;
  }
  Digest got;
  {
    absl::MutexLock l(&hash_mu_);
    if (!whole_digest_) whole_digest_ = hash_.Finish();
    got = *whole_digest_;
  }
  if (got != blob_.digest) {
    // The running hash takes bytes as they land, before their chunks are
    // checked: an answer that failed its check (a bad edge, a flipped bit)
    // and was read again went into it. The blob is read once more, whole,
    // before it is called corrupt.
    LogWarning(Describe(), ": the bytes fetched hash to ", got.ToString(),
               ": reading the whole blob once more");
    Sha256 h;
    std::string piece;
    for (uint64_t at = 0; at < size();) {
      const uint64_t n = std::min<uint64_t>(size() - at, uint64_t{64} << 20);
      ASSIGN_OR_RETURN(std::unique_ptr<BlobStream> s,
                       OpenStream(at, n, ReadPriority::kBackground));
      for (uint64_t done = 0; done < n;) {
        if (stop != nullptr && stop->load()) {
          return absl::CancelledError("whole-blob check stopped");
        }
        piece.resize(std::min<uint64_t>(n - done, 1 << 20));
        RETURN_IF_ERROR(s->Read(absl::MakeSpan(piece)));
        h.Update(piece.data(), piece.size());
        done += piece.size();
      }
      at += n;
      again += n;
    }
    got = h.Finish();
    absl::MutexLock l(&hash_mu_);
    whole_digest_ = got;
  }
  if (refetched != nullptr) *refetched = again;
  if (got != blob_.digest) {
    return absl::DataLossError(
        absl::StrCat(Describe(), ": the whole blob hashes to ", got.ToString(),
                     ", not ", blob_.digest.ToString()));
  }
  return absl::OkStatus();
}

absl::Status HttpBlobSource::CheckRangeAnswer(const HttpResponse& resp,
                                              const std::string& source,
                                              uint64_t first,
                                              uint64_t last) const {
  if (resp.status != 206) {
    // OpenBlobRange returns 206 answers only; the transport refuses a 200.
    return absl::DataLossError(absl::StrCat(
        source, ": HTTP ", resp.status, " to a range request; refusing it"));
  }
  std::optional<std::string> cr_text = resp.headers.Get("content-range");
  if (!cr_text) {
    return absl::DataLossError(
        absl::StrCat(source, ": 206 answer without Content-Range"));
  }
  absl::StatusOr<ContentRange> cr = ParseContentRange(*cr_text);
  if (!cr.ok() || cr->first != first || cr->last != last ||
      (cr->total && *cr->total != size())) {
    return absl::DataLossError(
        absl::StrCat(source, ": asked for bytes ", first, "-", last, " of ",
                     size(), ", got Content-Range \"", *cr_text, "\""));
  }
  return absl::OkStatus();
}

// OpenStream's reader: the body of one range GET, read into the caller's
// buffers (the transport writes it there), hashed and counted as it lands.
class HttpBlobSource::BodyStream : public BlobStream {
 public:
  BodyStream(HttpBlobSource* source, std::unique_ptr<HttpBodyReader> body,
             std::string where, uint64_t offset, uint64_t len,
             ReadPriority priority)
      : source_(source),
        body_(std::move(body)),
        where_(std::move(where)),
        pos_(offset),
        end_(offset + len),
        priority_(priority) {}

  absl::Status Read(absl::Span<char> dst) override {
    if (!status_.ok()) return status_;
    if (dst.size() > end_ - pos_) {
      return absl::OutOfRangeError("read past the end of a blob stream");
    }
    size_t landed = 0;
    const auto on_landed = [&](size_t n) {
      source_->ExtendHash(pos_ + landed,
                          absl::string_view(dst.data() + landed, n));
      landed += n;
      {
        absl::MutexLock l(&source_->mu_);
        source_->stats_.bytes += n;
      }
      if (source_->budget_->Delivered(n)) source_->budget_->Notify();
    };
    absl::StatusOr<size_t> got = body_->ReadInto(dst, on_landed);
    if (!got.ok() && !asked_again_ && AskRegistryAgain(got.status())) {
      asked_again_ = true;
      const uint64_t at = pos_ + landed;
      absl::StatusOr<std::unique_ptr<HttpBodyReader>> again =
          source_->OpenRange(at, end_ - 1, priority_, /*reader_paced=*/true,
                             &where_);
      if (again.ok()) {
        body_ = *std::move(again);
        const size_t before = landed;
        absl::StatusOr<size_t> more =
            body_->ReadInto(dst.subspan(before), on_landed);
        got = more.ok() ? absl::StatusOr<size_t>(before + *more) : more;
      }
    }
    if (got.ok() && *got != dst.size()) {
      got = absl::DataLossError(
          absl::StrCat(where_, ": the answer to bytes up to ", end_ - 1,
                       " ends at byte ", pos_ + *got));
    }
    if (!got.ok()) {
      status_ = got.status();
      absl::MutexLock l(&source_->mu_);
      ++source_->stats_.failures;
      return status_;
    }
    pos_ += dst.size();
    return absl::OkStatus();
  }

 private:
  HttpBlobSource* const source_;
  std::unique_ptr<HttpBodyReader> body_;
  std::string where_;
  uint64_t pos_;
  const uint64_t end_;
  const ReadPriority priority_;
  bool asked_again_ = false;  // (once per stream)
  absl::Status status_;
};

absl::StatusOr<std::unique_ptr<BlobStream>> HttpBlobSource::OpenStream(
    uint64_t offset, uint64_t len, ReadPriority priority) {
  if (offset > size() || len > size() - offset) {
    return absl::OutOfRangeError(absl::StrCat(
        Describe(), ": bytes [", offset, ", +", len, ") are past its end"));
  }
  if (len == 0) return BlobSource::OpenStream(offset, len, priority);
  const uint64_t last = offset + len - 1;
  {
    absl::MutexLock l(&mu_);
    ++stats_.requests;
    ++stats_.requests_by_priority[Rank(priority)];
  }
  std::string where;
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> r =
      OpenRange(offset, last, priority, /*reader_paced=*/true, &where);
  if (!r.ok()) {
    absl::MutexLock l(&mu_);
    ++stats_.failures;
    return r.status();
  }
  return std::make_unique<BodyStream>(this, *std::move(r), std::move(where),
                                      offset, len, priority);
}

absl::StatusOr<std::unique_ptr<HttpBodyReader>> HttpBlobSource::OpenRange(
    uint64_t first, uint64_t last, ReadPriority priority, bool reader_paced,
    std::string* where) {
  const bool background = priority == ReadPriority::kBackground;
  const absl::Time sent = absl::Now();
  ASSIGN_OR_RETURN(std::unique_ptr<HttpBodyReader> r,
                   (background ? background_client_ : client_)
                       ->OpenBlobRange(blob_, first, last, where,
                                       StreamWeight(priority), reader_paced));
  budget_->OnHeaders(absl::Now() - sent);
  RETURN_IF_ERROR(CheckRangeAnswer(r->response(), *where, first, last));
  return r;
}

absl::Status HttpBlobSource::Fetch(uint64_t first, uint64_t last,
                                   ReadPriority prio, Request& request) {
  const uint64_t want = last - first + 1;
  const bool background = prio == ReadPriority::kBackground;
  const absl::Time sent = absl::Now();
  uint64_t charged = background ? want : 0;
  // Whatever happens, what is left of the request's charge is released.
  struct Done {
    BackgroundBudget* budget;
    const uint64_t* charged;
    ~Done() {
      if (*charged != 0 && budget->Release(*charged)) budget->Notify();
    }
  } done{budget_.get(), &charged};
  std::string source;
  ASSIGN_OR_RETURN(
      std::unique_ptr<HttpBodyReader> r,
      (background ? background_client_ : client_)
          ->OpenBlobRange(blob_, first, last, &source, StreamWeight(prio)));
  const absl::Time headers = absl::Now();
  budget_->OnHeaders(headers - sent);
  if (request.gates_warm) {
    absl::MutexLock l(&mu_);
    OpenWarmGate(&request, absl::OkStatus());
  }
  const double rtt = absl::ToDoubleSeconds(budget_->min_rtt());
  uint64_t landed = 0;
  bool handing_off = request.warm;  // a warm request not handed off yet
  RETURN_IF_ERROR(CheckRangeAnswer(r->response(), source, first, last));
  // The body goes straight into the request's buffer, accounted for as it
  // lands.
  std::shared_ptr<std::string> buf = BufferPool::Default().Get(want);
  {
    absl::MutexLock l(&request.mu);
    request.buf = buf;
  }
  std::string* out = buf.get();
  const auto on_landed = [&](size_t n) {
    landed += n;
    // In blob order, the bytes extend the running hash as they land;
    // then readers may take them. The last ones wait for the request's
    // end (`finished`): a read that takes a whole request finds it
    // hashed, counted and let go.
    HashLanded(first, absl::string_view(*out).substr(0, landed));
    if (landed < want) {
      absl::MutexLock l(&request.mu);
      request.received = landed;
    }
    // A warm request lets the next one go once its rest
    // takes about 1.5 round trips at its rate so far
    // (measured over one round trip at least).
    if (handing_off) {
      const double t = absl::ToDoubleSeconds(absl::Now() - headers);
      if (t >= rtt && static_cast<double>(want - landed) * t <=
                          1.5 * rtt * static_cast<double>(landed)) {
        handing_off = false;
        absl::MutexLock l(&mu_);
        if (!request.handed_off) {
          request.handed_off = true;
          --warm_streaming_;
          AddWorkerIfNeeded();  // (for the next one, if all are busy)
        }
      }
    }
    bool wake = budget_->Delivered(n);
    if (charged != 0) {
      const uint64_t m = std::min<uint64_t>(charged, n);
      charged -= m;
      wake = budget_->Release(m) || wake;
    }
    if (wake) budget_->Notify();
  };
  absl::StatusOr<size_t> read = r->ReadInto(absl::MakeSpan(*out), on_landed);
  if (!read.ok() && landed > 0 && landed < want &&
      AskRegistryAgain(read.status())) {
    // (Refused where the transport resumed it: see AskRegistryAgain.)
    const uint64_t before = landed;
    absl::StatusOr<std::unique_ptr<HttpBodyReader>> again =
        OpenRange(first + before, last, prio, /*reader_paced=*/false, &source);
    if (again.ok()) {
      r = *std::move(again);
      absl::StatusOr<size_t> more =
          r->ReadInto(absl::MakeSpan(*out).subspan(before), on_landed);
      read = more.ok() ? absl::StatusOr<size_t>(before + *more) : more;
    }
  }
  ASSIGN_OR_RETURN(const size_t got, read);
  if (got != want) {
    return absl::DataLossError(absl::StrCat(source, ": the answer to bytes ",
                                            first, "-", last, " has ", got,
                                            " bytes, not ", want));
  }
  ExtendHash(first, *out);  // (what arrived ahead of the hashed prefix)
  if (budget_->RequestDone(got, absl::Now() - sent)) budget_->Notify();
  // Done: every byte of the checked Content-Range is in. The end of the
  // stream is not waited for (docker-registry can send it tens of ms after
  // the last byte); the transport holds a 206 to its Content-Range, so bytes
  // beyond it fail the transfer and are never handed out.
  return absl::OkStatus();
}

}  // namespace lazypull
