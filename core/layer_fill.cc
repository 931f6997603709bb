#include "core/layer_fill.h"

#include <algorithm>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/log.h"
#include "core/thread_priority.h"

namespace lazypull {

void RateLimiter::Take(uint64_t bytes, const std::atomic<bool>* stop) {
  if (rate_ == 0) return;
  absl::Time at;
  {
    absl::MutexLock l(&mu_);
    const absl::Time now = absl::Now();
    if (next_ < now) next_ = now;
    at = next_;
    next_ +=
        absl::Seconds(static_cast<double>(bytes) / static_cast<double>(rate_));
  }
  while (!stop->load() && absl::Now() < at) {
    absl::SleepFor(std::min(at - absl::Now(), absl::Milliseconds(50)));
  }
}

void FillChunks(CachedLayer* layer, const std::vector<uint32_t>& chunks,
                ReadPriority priority, int threads, uint64_t span_size,
                uint64_t gap, int nice, RateLimiter* limiter,
                const std::atomic<bool>* stop, std::atomic<uint64_t>* errors,
                const std::function<bool(uint64_t)>* hand_over,
                const char* what) {
  const std::vector<CachedLayer::Span> spans =
      layer->PlanSpans(chunks, span_size, gap);
  std::atomic<size_t> next{0};
  auto work = [&] {
    if (nice > 0) {
      absl::Status st = LowerThisThreadPriority(nice);
      if (!st.ok()) LogWarning(what, ": ", st.message());
    }
    while (!stop->load()) {
      size_t i = next.fetch_add(1);
      if (i >= spans.size()) return;
      if (hand_over != nullptr && (*hand_over)(spans[i].begin)) {
        next.store(spans.size());  // (the others stop too)
        return;
      }
      if (limiter != nullptr) {
        limiter->Take(spans[i].end - spans[i].begin, stop);
        if (stop->load()) return;
      }
      absl::Status st = layer->FillSpan(spans[i], priority);
      if (!st.ok() && errors->fetch_add(1) < 3) {
        LogWarning("fetching ", layer->reader().source().Describe(), ": ",
                   st.message());
      }
    }
  };
  std::vector<std::thread> ts;
  for (int t = 1; t < threads; ++t) ts.emplace_back(work);
  work();
  for (auto& t : ts) t.join();
}

void FillAdaptive(CachedLayer* layer, const std::vector<uint32_t>& chunks,
                  const AdaptiveFill& how, const std::string& name,
                  const std::atomic<bool>* stop,
                  std::atomic<uint64_t>* errors) {
  bool seen_fast = false, handed_over = false;
  std::mutex fast_mu;
  const std::function<bool(uint64_t)> hand_over = [&](uint64_t begin) {
    std::lock_guard<std::mutex> l(fast_mu);
    if (!seen_fast && how.stream_rate != UINT64_MAX &&
        (how.stream_rate == 0 ||
         (how.link_rate &&
          how.link_rate() >= static_cast<double>(how.stream_rate)))) {
      seen_fast = true;
    }
    // (Per span: a thread holding a span below `streams_from` fills it even
    // after another one handed over.)
    const bool now = seen_fast && begin >= how.streams_from;
    if (now) handed_over = true;
    return now;
  };
  // Spans, until the link proves fast (if it does). With retry_spans, what
  // fails here is counted only if the last pass below fails it again.
  std::atomic<uint64_t> retried{0};
  FillChunks(layer, chunks, how.priority, how.span_threads, how.span_size,
             how.gap, how.nice, how.limiter, stop,
             how.retry_spans ? &retried : errors, &hand_over, how.what);
  if (!stop->load() && handed_over) {  // (FillChunks joined its threads)
    if (how.nice > 0) {
      absl::Status st = LowerThisThreadPriority(how.nice);
      if (!st.ok()) LogWarning(how.what, ": ", st.message());
    }
    if (how.streams != nullptr) how.streams->acquire();
    for (int restarts = 0; !stop->load(); ++restarts) {
      const std::vector<CachedLayer::Span> spans =
          layer->PlanSpans(chunks, how.span_size, how.gap);
      if (spans.empty()) break;
      // The first stream from the hashed prefix if what lies before its
      // first span is at most an eighth of the rest. (Not a new one: what
      // lies before it was taken by the reads it gave way to, and would be
      // fetched again.)
      uint64_t from = spans.front().begin;
      const uint64_t hashed = how.hashed_prefix ? how.hashed_prefix() : from;
      if (restarts == 0 && hashed < from &&
          (from - hashed) * 8 <= spans.back().end - from) {
        from = hashed;
      }
      // Streams of about 20 s at the measured rate, at least 64 MiB (a
      // broken one costs what it had left to bring again).
      const double measured = how.link_rate ? how.link_rate() : 0;
      const double rate = how.rate_cap != 0
                              ? std::min<double>(measured, how.rate_cap)
                              : measured;
      const uint64_t max_stream =
          std::max<uint64_t>(64 << 20, static_cast<uint64_t>(rate * 20));
      LogInfo(name, ": ", how.what, " streams the rest (",
              spans.back().end - from, " blob bytes; link measured at ",
              static_cast<uint64_t>(measured / 1e3), " kB/s)");
      bool gave_way = false;
      absl::Status st = layer->FillStream(
          spans, how.priority, how.stream_threads, how.stream_gap, max_stream,
          from,
          [&](const CachedLayer::Span& span) {
            if (how.limiter != nullptr) {
              how.limiter->Take(span.end - span.begin, stop);
            }
            return stop->load() ? absl::CancelledError("stopped")
                                : absl::OkStatus();
          },
          &gave_way, how.stream_give_way,
          // (A rate-limited stream would hold a reader to its pace.)
          /*claim_ahead=*/how.rate_cap == 0);
      // A stream that gave way to reads running ahead of it starts again
      // past what they took (a reader going the same way, as a program
      // reading an optimized image's prefetch range does, keeps its bytes
      // in one request), a few times; then spans, which skip them.
      if (gave_way && restarts < how.stream_restarts) {
        LogInfo(name, ": ", how.what, ": ", st.message(),
                "; a new stream from the first member still missing");
        continue;
      }
      if (gave_way) {
        LogInfo(name, ": ", how.what, ": ", st.message(),
                "; the rest goes in spans");
      } else if (!st.ok() && !stop->load()) {
        LogWarning(name, ": ", how.what, ": ", st.message(),
                   "; the rest goes in spans");
      }
      break;
    }
    if (how.streams != nullptr) how.streams->release();
  }
  // What is left: what a stream did not bring (and, with retry_spans, spans
  // that failed).
  if (handed_over || how.retry_spans) {
    FillChunks(layer, chunks, how.priority, how.span_threads, how.span_size,
               how.gap, how.nice, how.limiter, stop, errors, nullptr, how.what);
  }
}

}  // namespace lazypull
