// CachedLayer: the read path for one layer's file contents.
//
//   Read(file, off) -> the chunks that cover it -> ChunkCache hit: copy out
//   -> miss: one fill per compressed member ("flight"): read the extent from
//      the BlobSource, decompress once, verify every chunk the member holds
//      against its digest, insert them into the cache, hand the bytes to
//      every waiting reader.
//
// Several small files sharing one gzip member (innerOffset) cost one read
// and one inflate. Concurrent misses on the same member wait for the single
// fill in flight; misses on different members proceed in parallel (no lock is
// held while fetching or decompressing). A read that waited for a fill made
// for prefetch, background fetch or read-ahead, and saw it fail, tries once
// itself before it fails. Sequential readers trigger
// read-ahead of the next chunks of their file on background threads, and
// (with dir_prefetch_bytes) a miss prefetches its directory there. Nothing
// unverified is ever returned or cached: a mismatch fails that read with
// DataLoss naming the file and offset, and is logged by the caller.
//
// Thread-safety: all public methods may be called concurrently.
#ifndef LAZYPULL_CORE_CACHED_LAYER_H_
#define LAZYPULL_CORE_CACHED_LAYER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/chunk_cache.h"
#include "core/layer_reader.h"

namespace lazypull {

struct CachedLayerOptions {
  // Chunks fetched ahead of a sequential reader (0 disables read-ahead).
  int readahead_chunks = 4;
  // Background threads doing read-ahead (and later prefetch).
  int background_threads = 2;
  // Memory that fills in progress may hold at once (compressed extents and
  // decoded chunks; default 12 MiB): a fill that would pass it waits for
  // others to finish. One fill always proceeds, whatever its size, and
  // on-demand fills never wait (they count, so the others wait for them).
  // 0 = no cap. Bounds the serving process's peak RSS under many cold readers.
  uint64_t max_fill_bytes = 8 << 20;
  // A fill that holds more than this (a chunk of tens of MiB or more: a
  // layer written with a huge --chunk-size) runs only while no other such
  // fill does, on-demand ones included: five concurrent first reads of
  // 1 GiB chunks held 8.4 GB. 0 = no limit.
  uint64_t huge_fill_bytes = uint64_t{64} << 20;
  // Directory prefetch: when an on-demand read misses the cache (the first
  // read of a file, most often), the other regular files of that file's
  // directory (its direct children; for a hardlink, the directory of the
  // inode's first name) are fetched too, at prefetch priority, in spans of
  // `dir_prefetch_span` bytes merged across gaps of at most
  // `dir_prefetch_gap` (every member inside a span is fetched, so files of
  // other directories lying in a gap come along), if the spans' blob bytes,
  // gaps included, are at most `dir_prefetch_bytes`. Files bigger than that
  // are left out; a directory holding more than twice that is refused
  // without looking further. Each directory is considered once, at its
  // first miss. A program reads the files of a few directories (a language
  // runtime's modules, a package's files): one round of spans instead of a
  // round trip per file. 0 = off.
  uint64_t dir_prefetch_bytes = 0;
  uint64_t dir_prefetch_span = 1 << 20;
  uint64_t dir_prefetch_gap = 64 << 10;
  // A blocked reader that reaches a member a background stream claimed
  // ahead of its bytes (FillStream) waits this long for the stream, then
  // fetches the member itself: a stream that stalls (its server, its
  // low-priority threads) must not hold a program up.
  absl::Duration claim_wait = absl::Milliseconds(50);
};

struct CachedLayerStats {
  uint64_t cache_hits = 0;       // chunk reads served by the cache
  uint64_t fills = 0;            // member fills (source reads + inflates)
  uint64_t on_demand_fills = 0;  // of which for a blocked reader (misses)
  uint64_t dir_prefetches = 0;   // directories prefetched after a miss
  uint64_t joined_fills = 0;     // reads that waited for another's fill
  // When the last on-demand fill got its bytes (steady clock, ns; 0 = never).
  int64_t last_on_demand_fill_ns = 0;
  uint64_t fetched_bytes = 0;  // compressed bytes read from the source
  uint64_t verify_failures = 0;
};

class CachedLayer {
 public:
  CachedLayer(std::shared_ptr<const LayerReader> reader,
              std::shared_ptr<ChunkCache> cache,
              const CachedLayerOptions& options = {});
  ~CachedLayer();
  CachedLayer(const CachedLayer&) = delete;
  CachedLayer& operator=(const CachedLayer&) = delete;

  const LayerReader& reader() const { return *reader_; }
  const LayerIndex& index() const { return reader_->index(); }

  // Reads up to out.size() bytes of regular file `inode` at `offset`.
  // Returns the number of bytes read: short only at end of file.
  absl::StatusOr<size_t> Read(uint32_t inode, uint64_t offset,
                              absl::Span<char> out,
                              ReadPriority priority = ReadPriority::kOnDemand);

  // A piece of a file's bytes in a cache file, for zero-copy replies.
  struct FilePiece {
    std::shared_ptr<CachedFile> file;
    uint64_t offset;  // in the cache file
    size_t len;
  };
  // If every chunk covering [offset, offset + len) of `inode` is in a cache
  // file, returns the pieces (clipped at end of file; empty past it);
  // otherwise nullopt and the caller uses Read(). Counts as cache hits.
  std::optional<std::vector<FilePiece>> Locate(uint32_t inode, uint64_t offset,
                                               size_t len);

  // Copies [offset, offset + out.size()) of regular file `inode` from the
  // cache alone (writes it still has queued included): true if every chunk
  // covering it was there, false (`out` unspecified) if one was not. Never
  // fetches; not counted in this layer's hits (the cache keeps its own
  // counts, and drops a chunk it finds unreadable, as for any read).
  // InvalidArgument if the range is not inside a regular file.
  absl::StatusOr<bool> ReadCached(uint32_t inode, uint64_t offset,
                                  absl::Span<char> out);

  // Makes sure chunk `chunk` is cached (fetching and verifying it if not).
  absl::Status Fill(uint32_t chunk, ReadPriority priority);

  // Queues background fills of `chunks` (read-ahead / prefetch).
  void FillAsync(std::vector<uint32_t> chunks, ReadPriority priority);

  // Bulk fetching (prefetch, background fetch): a span of the blob read with
  // one ReadAt, every member wholly inside it decoded, verified and cached.
  struct Span {
    uint64_t begin = 0;  // blob offsets, [begin, end)
    uint64_t end = 0;
    // Cached members leaving a hole wider than this split the span's
    // fetch in two (the hole is not fetched again).
    uint64_t gap = 0;
  };
  // The members holding `chunks` that are not cached yet, in blob order,
  // merged into spans of at most `max_span` bytes (a bigger member is a span
  // of its own) when at most `max_gap` bytes apart (the gap is fetched and
  // dropped).
  std::vector<Span> PlanSpans(const std::vector<uint32_t>& chunks,
                              uint64_t max_span, uint64_t max_gap) const;
  // Fills the span's members that are still missing, one read per run of
  // them (members an on-demand fill is busy with are left to it). The first
  // error (source, or a member that failed verification: never cached) is
  // returned after every other member was tried.
  absl::Status FillSpan(const Span& span, ReadPriority priority);

  // Bulk fetching as one ordered read (prefetch and background fetch on a
  // fast link, core/layer_fill.h): the blob from the
  // first span (PlanSpans' output, in blob order) to the last is read
  // through the source's OpenStream, one stream per stretch of spans no
  // more than `stream_gap` bytes apart and `max_stream` bytes long (the
  // bytes between spans are read and dropped). Each span is filled as FillSpan
  // does (its missing members claimed before their bytes are read, so a reader
  // of one waits for the stream rather than fetching it again), from the
  // stream, each member decoded, verified and cached on one of `threads` worker
  // threads (started here: they take the caller's nice value) as soon as its
  // bytes are in. A stream cannot skip what reads running ahead of it fetched
  // meanwhile (members cached or in flight since this call): once such bytes
  // pass `give_way_bytes` and a sixteenth of what it read, it gives way
  // (Aborted, and
  // *gave_way set if given: spans, or a new stream past them, do better
  // while a program outruns it; other errors may be Aborted too).
  // `before_span` is called on the calling thread before each span is read, and
  // before the stream that brings it is opened (a rate limit, a stop: a non-OK
  // status ends the fill and is returned). The first stream starts at `from` if
  // that is below the first span (those bytes are read and dropped: a caller
  // keeping the source's reads in blob order, for a whole-blob hash). Returns
  // the first error of a stream (it stops there; spans not filled stay missing,
  // for FillSpan to take up) or else of a span, after every span read was
  // decoded. With `claim_ahead`, the members of the span after the one being
  // read are claimed too (ClaimAhead): a reader of one waits for the stream
  // (not for a stream that `before_span` may hold back, a rate limit: then
  // pass false).
  absl::Status FillStream(
      const std::vector<Span>& spans, ReadPriority priority, int threads,
      uint64_t stream_gap, uint64_t max_stream, uint64_t from,
      const std::function<absl::Status(const Span&)>& before_span,
      bool* gave_way = nullptr, uint64_t give_way_bytes = kStreamGiveWayBytes,
      bool claim_ahead = true);
  // (8 MiB: at 1 MiB a stream on a 1 Gbit/s link gave way, and left the
  // rest of a layer to 1 MiB spans, in about a tenth of the runs of a
  // program reading the whole image just ahead of it; bench/TUNING.md,
  // session 12.)
  static constexpr uint64_t kStreamGiveWayBytes = 8 << 20;

  // Prefetch, background and read-ahead fills (FillSpan, FillStream,
  // FillAsync) hand every chunk they verified and cached to `observer`, on
  // the decoding thread, once the cache has been given it (on-demand fills
  // do not: their reader replies with the bytes). The observer must be quick
  // (it runs on fill threads, concurrently). One at a time; setting another (or
  // nullptr) returns only once no call of the previous one is running.
  using FillObserver = std::function<void(
      uint32_t chunk, const std::shared_ptr<const std::string>& bytes)>;
  void SetFillObserver(FillObserver observer);
  // Whether this object fetched chunk `chunk`'s member from the source (as
  // opposed to finding it cached, or not having it).
  bool FetchedHere(uint32_t chunk) const;

  CachedLayerStats stats() const;
  // Distinct compressed bytes fetched from the source so far.
  uint64_t fetched_blob_bytes() const { return fetched_blob_bytes_.load(); }

 private:
  // Calls fn(chunk index, chunk, file position, offset in the chunk,
  // length) for the pieces of [offset, end) of `inode`, one per chunk, in
  // order, while fn returns true; returns false if fn stopped it.
  template <typename Fn>
  absl::StatusOr<bool> ForEachPiece(uint32_t inode, uint64_t offset,
                                    uint64_t end, Fn fn) const;
  struct Flight;
  using ChunkData = std::shared_ptr<const std::string>;

  // Returns chunk `chunk`'s verified bytes, from the cache or a fill.
  absl::StatusOr<ChunkData> GetChunk(uint32_t chunk, ReadPriority priority);
  // Fetches and decodes member group `group`; fills `flight`.
  void RunFill(uint32_t group, Flight* flight, ReadPriority priority);
  // Takes `flight` out of flights_ if it is still the group's (a reader
  // retrying after it failed may have put a new one there).
  void EndFlight(uint32_t group, const Flight* flight);
  // Decodes and verifies group `group` from its compressed `extent`: the
  // verified chunks into *out, chunks failing their own digest into
  // *errors; an error for the whole member is returned.
  absl::Status DecodeGroup(uint32_t group, absl::string_view extent,
                           absl::flat_hash_map<uint32_t, ChunkData>* out,
                           absl::flat_hash_map<uint32_t, absl::Status>* errors);
  // Memory a fill of `group` holds at its peak.
  uint64_t GroupFillBytes(uint32_t group) const;
  bool GroupCached(uint32_t group) const;
  // Calls `f` for each member (group) wholly inside `span`, in blob order,
  // with the group's first chunk.
  void ForEachMemberIn(
      const Span& span,
      const std::function<void(uint32_t group, const Chunk& first)>& f) const;
  // Whether `group` is in flight for a fill other than `owner`'s (any fill,
  // for a null owner).
  bool InFlightForOther(uint32_t group, const void* owner);
  // Blob bytes of the members wholly inside `span` that are cached or in
  // flight (but for flights `owner` claimed: see ClaimAhead).
  uint64_t TakenBytesIn(const Span& span, const void* owner = nullptr);
  // A stream's claim on the members of the span after the one it reads:
  // their flights, owned by `owner` (the stream), so that a reader reaching
  // one of them while the stream is still on the span before waits for the
  // stream's bytes instead of fetching them again (a program walking the
  // tree in the layer's order keeps reaching the stream's front). Members
  // cached or in flight already are left alone. FillSpanWith with the same
  // owner takes these flights up; ReleaseClaims ends those it did not (a
  // waiting reader then fetches for itself).
  void ClaimAhead(
      const Span& span, ReadPriority priority, const void* owner,
      std::vector<std::pair<uint32_t, std::shared_ptr<Flight>>>* claims);
  void ReleaseClaims(
      std::vector<std::pair<uint32_t, std::shared_ptr<Flight>>>* claims);
  // FillSpan's work, its runs' bytes read by `read` (ReadAtStreaming's
  // contract: `landed(n)` as each longer prefix is in), each member's
  // decode run by `async` if given (else on the calling thread); returns
  // once every member is done.
  using SpanReader =
      std::function<absl::Status(uint64_t begin, absl::Span<char> dst,
                                 const std::function<void(size_t)>& landed)>;
  using AsyncRunner = std::function<void(std::function<void()>)>;
  // `owner`: flights ClaimAhead made for it are this fill's to take up.
  absl::Status FillSpanWith(const Span& span, ReadPriority priority,
                            const SpanReader& read, const AsyncRunner& async,
                            const void* owner = nullptr);
  // FillStream reads its streams in pieces of this size.
  static constexpr size_t kStreamPiece = 128 << 10;
  // The first group (in blob order) whose member starts at or after
  // `offset`.
  size_t FirstGroupAt(uint64_t offset) const;
  // After a miss reading `inode`: queues its directory's prefetch (see
  // dir_prefetch_bytes) unless that directory was done already.
  void PrefetchDirectoryOf(uint32_t inode);
  void BackgroundLoop();

  const std::shared_ptr<const LayerReader> reader_;
  const std::shared_ptr<ChunkCache> cache_;
  const CachedLayerOptions options_;

  // Chunks grouped by compressed member: group_of_[chunk] indexes groups_,
  // each a list of chunk indices sharing one blob_offset.
  std::vector<uint32_t> group_of_;
  std::vector<std::vector<uint32_t>> groups_;
  std::vector<std::atomic<bool>> group_fetched_;

  absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<Flight>> flights_
      ABSL_GUARDED_BY(mu_);
  // Per-file end of the last read, for sequential detection.
  absl::flat_hash_map<uint32_t, uint64_t> last_end_ ABSL_GUARDED_BY(mu_);
  // Zeros chunks whose digest was checked (once: a read of one is a memset).
  absl::flat_hash_set<uint32_t> zeros_verified_ ABSL_GUARDED_BY(mu_);

  // Background work: a chunk's fill, or a span's (directory prefetch).
  struct BackgroundJob {
    uint32_t chunk = 0;
    ReadPriority priority = ReadPriority::kPrefetch;
    std::optional<Span> span;
  };
  std::mutex bg_mu_;
  std::condition_variable bg_cv_;
  std::deque<BackgroundJob> bg_queue_;
  bool bg_stop_ = false;
  std::vector<std::thread> bg_threads_;

  std::atomic<uint64_t> hits_{0}, fills_{0}, fetched_{0}, failures_{0};
  std::atomic<uint64_t> on_demand_fills_{0};
  std::atomic<int64_t> last_on_demand_fill_ns_{0};
  std::atomic<uint64_t> fetched_blob_bytes_{0};
  // Per inode: a directory whose prefetch was considered.
  std::vector<std::atomic<bool>> dir_done_;
  std::atomic<uint64_t> dir_prefetches_{0};
  std::atomic<uint64_t> joined_fills_{0};

  // LayerReader::VerifyZerosChunk, once per chunk.
  absl::Status VerifyZerosOnce(uint32_t chunk);

  // Hands `filled` to the observer, if any.
  void Observe(const absl::flat_hash_map<uint32_t, ChunkData>& filled);
  absl::Mutex observer_mu_;
  FillObserver observer_ ABSL_GUARDED_BY(observer_mu_);

  // Fill memory in use (see max_fill_bytes).
  absl::Mutex budget_mu_;
  uint64_t budget_used_ ABSL_GUARDED_BY(budget_mu_) = 0;
  bool huge_fill_ ABSL_GUARDED_BY(budget_mu_) = false;  // one in flight
  uint64_t AcquireFillBytes(uint64_t want, ReadPriority priority);
  bool IsHugeFill(uint64_t bytes) const;
  void ReleaseFillBytes(uint64_t got);
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_CACHED_LAYER_H_
