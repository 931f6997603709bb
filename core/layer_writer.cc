#include "core/layer_writer.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/compressor.h"
#include "core/dir_tar.h"
#include "core/footer.h"
#include "core/layer_index.h"
#include "core/status_macros.h"
#include "core/tar_path.h"
#include "core/tar_reader.h"
#include "core/toc.h"
#include "core/utf8.h"

namespace lazypull {
namespace {

constexpr size_t kBlock = 512;
// Members are handed to workers in jobs of about this many uncompressed
// bytes, so that small files do not cost one hand-off each.
constexpr uint64_t kJobBytes = 1 << 20;
constexpr size_t kJobMaxMembers = 4096;
constexpr uint64_t kMaxChunkSize = uint64_t{1} << 30;
// A reader inflates a member's prefix up to the file it wants: members of
// shared small files stay well below that.
constexpr uint64_t kMaxMinChunkSize = uint64_t{64} << 20;

const char kZeros[2 * kBlock] = {};
const char kLandmarkContents[1] = {0x0f};

// ---------------------------------------------------------------------------
// Formatting as Go does it.

// A JSON string as Go's encoding/json writes it (HTML-safe escaping,
// invalid UTF-8 replaced by U+FFFD, U+2028/2029 escaped).
void AppendGoJsonString(absl::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  size_t start = 0;
  auto flush = [&](size_t i) { out->append(s.data() + start, i - start); };
  for (size_t i = 0; i < s.size();) {
    uint8_t b = static_cast<uint8_t>(s[i]);
    if (b < 0x80) {
      if (b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' &&
          b != '&') {
        ++i;
        continue;
      }
      flush(i);
      switch (b) {
        case '"':
        case '\\':
          out->push_back('\\');
          out->push_back(static_cast<char>(b));
          break;
        case '\n':
          out->append("\\n");
          break;
        case '\r':
          out->append("\\r");
          break;
        case '\t':
          out->append("\\t");
          break;
        default:
          out->append("\\u00");
          out->push_back(kHex[b >> 4]);
          out->push_back(kHex[b & 15]);
      }
      start = ++i;
      continue;
    }
    uint32_t cp = 0;
    size_t n = Utf8SequenceLength(s, i, &cp);
    if (n == 0) {
      flush(i);
      out->append("\\ufffd");
      start = ++i;
      continue;
    }
    if (cp == 0x2028 || cp == 0x2029) {
      flush(i);
      out->append(cp == 0x2028 ? "\\u2028" : "\\u2029");
      i += n;
      start = i;
      continue;
    }
    i += n;
  }
  flush(s.size());
  out->push_back('"');
}

// RFC 3339 in UTC, with the fraction of a second when there is one (Go's
// time.RFC3339Nano: trailing zeros dropped). The reference's writer rounds
// to the second; keeping the fraction makes a lazy mount show the mtime the
// layer's own tar header carries (and a full pull extracts): a program that
// compares mtimes (Python's pyc check, make) sees the same file either way.
// Readers parse the fraction (RFC 3339; Go's time.Parse, this reader).
std::string FormatRfc3339(int64_t sec, uint32_t nsec) {
  int64_t days = sec / 86400, rem = sec % 86400;
  if (rem < 0) {
    rem += 86400;
    --days;
  }
  // Howard Hinnant's civil_from_days.
  int64_t z = days + 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t y = yoe + era * 400;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  int64_t d = doy - (153 * mp + 2) / 5 + 1;
  int64_t m = mp < 10 ? mp + 3 : mp - 9;
  if (m <= 2) ++y;
  char buf[64];
  snprintf(buf, sizeof(buf), "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld",
           static_cast<long long>(y), static_cast<long long>(m),
           static_cast<long long>(d), static_cast<long long>(rem / 3600),
           static_cast<long long>(rem / 60 % 60),
           static_cast<long long>(rem % 60));
  std::string out = buf;
  if (nsec > 0) {
    char frac[16];
    snprintf(frac, sizeof(frac), ".%09u", nsec);
    std::string f = frac;
    while (f.back() == '0') f.pop_back();
    out += f;
  }
  out += 'Z';
  return out;
}

// A USTAR header as Go's archive/tar writes it for the landmarks and the
// TOC: mode, ids and mtime 0, type '0'.
std::string GoUstarHeader(absl::string_view name, uint64_t size) {
  std::string h(kBlock, '\0');
  std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 100));
  std::memcpy(h.data() + 100, "0000000", 7);
  std::memcpy(h.data() + 108, "0000000", 7);
  std::memcpy(h.data() + 116, "0000000", 7);
  snprintf(h.data() + 124, 12, "%011llo",
           static_cast<unsigned long long>(size));
  std::memcpy(h.data() + 136, "00000000000", 11);
  h[156] = '0';
  std::memcpy(h.data() + 257,
              "ustar\0"
              "00",
              8);
  std::memcpy(h.data() + 329, "0000000", 7);
  std::memcpy(h.data() + 337, "0000000", 7);
  std::memset(h.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (char c : h) sum += static_cast<uint8_t>(c);
  snprintf(h.data() + 148, 8, "%06o", sum);  // "%06o\0" then the ' ' stays
  h[155] = ' ';
  return h;
}

void PutLe32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutLe64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

// formats.md §1.1.
std::string GzipFooter(uint64_t toc_offset) {
  std::string f("\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x1a\x00SG\x16\x00",
                16);
  char hex[17];
  snprintf(hex, sizeof(hex), "%016llx",
           static_cast<unsigned long long>(toc_offset));
  absl::StrAppend(&f, hex, "STARGZ");
  f.append("\x01\x00\x00\xff\xff", 5);
  f.append(8, '\0');
  return f;
}

constexpr uint32_t kSkippableMagic = 0x184D2A50;

// ---------------------------------------------------------------------------
// The plan.

struct Item {
  TarHeader h;
  absl::string_view payload;
  std::string clean;
  uint32_t first_chunk = 0;
  uint32_t num_chunks = 0;
  Digest file_digest;  // filled by the worker of chunk 0 (or from chunk 0)
};

// The tar header of `h` under another name, or as a hardlink to another
// target: a fresh encoding (the raw blocks read name the old path).
absl::Status Reencode(TarHeader* h) {
  TarEntryFields f;
  f.name = h->name;
  f.link = h->link_name;
  f.typeflag = h->typeflag;
  f.mode = static_cast<uint32_t>(h->mode & 07777);
  f.uid = h->uid;
  f.gid = h->gid;
  f.size = h->size;
  f.mtime = h->mtime_sec;
  f.dev_major = h->dev_major;
  f.dev_minor = h->dev_minor;
  f.xattrs = h->xattrs;
  std::sort(f.xattrs.begin(), f.xattrs.end());
  ASSIGN_OR_RETURN(h->raw, EncodeTarHeader(f));
  // (What the new header holds, so that the TOC says the same.)
  h->mtime_nsec = 0;
  h->uname.clear();
  h->gname.clear();
  return absl::OkStatus();
}

// Makes hardlink `link` a copy of `src` (type, attributes, content) under
// the link's name.
absl::Status CopyEntryInto(const Item& src, Item* link) {
  TarHeader h = src.h;
  h.name = link->h.name;
  RETURN_IF_ERROR(Reencode(&h));
  link->h = std::move(h);
  link->payload = src.payload;
  return absl::OkStatus();
}

// Points hardlink `link` at `target` (a tar name).
absl::Status Relink(const std::string& target, Item* link) {
  link->h.link_name = target;
  return Reencode(&link->h);
}

struct ChunkPlan {
  uint32_t item = 0;
  uint64_t file_offset = 0;
  absl::string_view data;
  uint32_t member = 0;
  uint64_t inner_offset = 0;  // uncompressed offset of `data` in its member
};

// How much of the prioritized files is compressed at prioritized_level.
constexpr uint64_t kMaxPrioritizedLevelBytes = 64 << 20;

struct MemberPlan {
  size_t first_piece = 0;
  size_t num_pieces = 0;
  uint64_t size = 0;  // uncompressed
  // The chunks whose payload this member holds (consecutive; several only
  // with min_chunk_size).
  size_t first_chunk = 0;
  size_t num_chunks = 0;
};

struct JobPlan {
  size_t first_member = 0;
  size_t num_members = 0;
};

struct JobResult {
  std::string data;
  std::vector<uint64_t> member_sizes;
};

// A name as readers see it in the TOC: its JSON (AppendGoJsonString) has
// invalid UTF-8 replaced by U+FFFD.
std::string AsTocName(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t n =
        static_cast<uint8_t>(s[i]) < 0x80 ? 1 : Utf8SequenceLength(s, i, &cp);
    if (n == 0) {
      out.append("\xEF\xBF\xBD");
      ++i;
    } else {
      out.append(s.data() + i, n);
      i += n;
    }
  }
  return out;
}

// Orders the items as estargz.Build's sortEntries does.
class Sorter {
 public:
  explicit Sorter(std::vector<Item>* items) : items_(*items) {
    for (uint32_t i = 0; i < items_.size(); ++i) {
      in_[items_[i].clean] = i;
    }
  }

  // Moves a listed path (and its parents, and a hardlink's target) to the
  // output. False if the path itself is in neither set.
  bool MoveListed(absl::string_view name) {
    std::string clean = CleanEntryName(name);
    if (!clean.empty() && !in_.contains(clean) && !out_.contains(clean)) {
      return false;
    }
    Move(std::move(clean));
    return true;
  }

  std::vector<uint32_t>& out_order() { return out_order_; }
  // Items not moved, in tar order.
  std::vector<uint32_t> Rest() const {
    std::vector<uint32_t> rest;
    for (uint32_t i = 0; i < items_.size(); ++i) {
      auto it = in_.find(items_[i].clean);
      if (it != in_.end() && it->second == i) rest.push_back(i);
    }
    return rest;
  }

 private:
  // Moves `clean` after its parents and, for a hardlink, its target (and
  // theirs). Parents without an entry of their own are implicit: skipped
  // (the reference gives up on the whole file there). Iterative, and over
  // views of the names (a parent is a prefix of its child's name): a
  // hostile path thousands of directories deep costs neither the stack nor
  // a copy of every prefix.
  void Move(std::string clean) {
    std::deque<std::string> names;  // owns what the views point into
    names.push_back(std::move(clean));
    absl::flat_hash_set<absl::string_view> visited;  // hardlink loops
    struct Frame {
      absl::string_view path;
      int stage;  // 0: parent next, 1: link target next, 2: emit
    };
    std::vector<Frame> stack = {{names.back(), 0}};
    while (!stack.empty()) {
      const Frame f = stack.back();
      if (f.stage == 0) {
        if (!visited.insert(f.path).second) {
          stack.pop_back();
          continue;
        }
        stack.back().stage = 1;
        if (!f.path.empty()) {
          const size_t slash = f.path.rfind('/');
          stack.push_back({slash == absl::string_view::npos
                               ? absl::string_view()
                               : f.path.substr(0, slash),
                           0});
        }
        continue;
      }
      auto it = in_.find(f.path);
      if (f.stage == 1) {
        stack.back().stage = 2;
        if (!f.path.empty() && it != in_.end() &&
            items_[it->second].h.type == TarType::kHardlink) {
          names.push_back(CleanEntryName(items_[it->second].h.link_name));
          stack.push_back({names.back(), 0});
        }
        continue;
      }
      if (it != in_.end()) {
        out_order_.push_back(it->second);
        out_.insert(std::string(f.path));
        in_.erase(it);
      }
      stack.pop_back();
    }
  }

  std::vector<Item>& items_;
  absl::flat_hash_map<std::string, uint32_t> in_;
  absl::flat_hash_set<std::string> out_;
  std::vector<uint32_t> out_order_;
};

absl::string_view TocType(TarType t) {
  switch (t) {
    case TarType::kReg:
      return "reg";
    case TarType::kHardlink:
      return "hardlink";
    case TarType::kSymlink:
      return "symlink";
    case TarType::kChar:
      return "char";
    case TarType::kBlock:
      return "block";
    case TarType::kDir:
      return "dir";
    case TarType::kFifo:
      return "fifo";
  }
  return "reg";
}

// Builds the TOC JSON (Go's MarshalIndent layout of the reference TOCEntry).
class TocJson {
 public:
  TocJson() { out_ = "{\n\t\"version\": 1,\n\t\"entries\": ["; }

  void Begin() {
    out_.append(entries_ == 0 ? "\n\t\t{" : ",\n\t\t{");
    ++entries_;
    first_field_ = true;
  }
  void End() { out_.append("\n\t\t}"); }
  void Key(absl::string_view k) {
    out_.append(first_field_ ? "\n\t\t\t\"" : ",\n\t\t\t\"");
    first_field_ = false;
    out_.append(k.data(), k.size());
    out_.append("\": ");
  }
  void Str(absl::string_view k, absl::string_view v) {
    Key(k);
    AppendGoJsonString(v, &out_);
  }
  void Num(absl::string_view k, uint64_t v) {
    Key(k);
    absl::StrAppend(&out_, v);
  }
  void SNum(absl::string_view k, int64_t v) {
    Key(k);
    absl::StrAppend(&out_, v);
  }
  void Xattrs(std::vector<std::pair<std::string, std::string>> x) {
    std::sort(x.begin(), x.end());
    Key("xattrs");
    out_.append("{");
    for (size_t i = 0; i < x.size(); ++i) {
      out_.append(i == 0 ? "\n\t\t\t\t" : ",\n\t\t\t\t");
      AppendGoJsonString(x[i].first, &out_);
      out_.append(": \"");
      out_.append(Base64Encode(x[i].second));
      out_.append("\"");
    }
    out_.append("\n\t\t\t}");
  }
  std::string Finish() {
    if (entries_ == 0) {
      out_.resize(out_.size() - 1);
      out_.append("null\n}");
    } else {
      out_.append("\n\t]\n}");
    }
    return std::move(out_);
  }
  uint64_t entries() const { return entries_; }

 private:
  std::string out_;
  uint64_t entries_ = 0;
  bool first_field_ = true;
};

// Runs the compression jobs on `threads` workers and hands finished jobs to
// `consume` on the calling thread, in job order.
class JobPipeline {
 public:
  // Members run with two compressors: `level`, and `prioritized_level` for
  // the members the run callback says are prioritized.
  JobPipeline(size_t jobs, int threads, Compression c, int level,
              int prioritized_level)
      : jobs_(jobs),
        threads_(threads),
        compression_(c),
        level_(level),
        prioritized_level_(prioritized_level),
        results_(jobs),
        done_(jobs, false),
        window_(static_cast<size_t>(threads) * 4 + 4) {}

  template <typename Run, typename Consume>
  absl::Status Execute(Run run, Consume consume) {
    std::vector<std::thread> workers;
    for (int t = 0; t < threads_; ++t) {
      workers.emplace_back([this, &run] { Work(run); });
    }
    absl::Status status;
    for (size_t j = 0; j < jobs_ && status.ok(); ++j) {
      JobResult r;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return done_[j] || !error_.ok(); });
        if (!done_[j]) {
          status = error_;
          break;
        }
        r = std::move(results_[j]);
        consumed_ = j + 1;
      }
      cv_.notify_all();
      status = consume(j, r);
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!status.ok() && error_.ok()) error_ = status;
      abort_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers) t.join();
    return status;
  }

 private:
  template <typename Run>
  void Work(Run& run) {
    absl::StatusOr<std::unique_ptr<MemberCompressor>> c =
        MemberCompressor::New(compression_, level_);
    absl::StatusOr<std::unique_ptr<MemberCompressor>> cp =
        prioritized_level_ == level_
            ? absl::StatusOr<std::unique_ptr<MemberCompressor>>(nullptr)
            : MemberCompressor::New(compression_, prioritized_level_);
    for (;;) {
      size_t j;
      {
        std::unique_lock<std::mutex> l(mu_);
        if (!c.ok() || !cp.ok()) {
          if (error_.ok()) error_ = c.ok() ? cp.status() : c.status();
          cv_.notify_all();
          return;
        }
        cv_.wait(l, [&] {
          return abort_ || next_ >= jobs_ || next_ < consumed_ + window_;
        });
        if (abort_ || next_ >= jobs_) return;
        j = next_++;
      }
      JobResult r;
      absl::Status s = run(**c, *cp == nullptr ? **c : **cp, j, &r);
      {
        std::lock_guard<std::mutex> l(mu_);
        if (s.ok()) {
          results_[j] = std::move(r);
          done_[j] = true;
        } else if (error_.ok()) {
          error_ = s;
        }
      }
      cv_.notify_all();
    }
  }

  const size_t jobs_;
  const int threads_;
  const Compression compression_;
  const int level_;
  const int prioritized_level_;
  std::mutex mu_;
  std::condition_variable cv_;
  // All guarded by mu_.
  std::vector<JobResult> results_;
  std::vector<bool> done_;
  size_t next_ = 0;
  size_t consumed_ = 0;
  const size_t window_;
  bool abort_ = false;
  absl::Status error_;
};

}  // namespace

std::string CleanEntryName(absl::string_view name) {
  std::vector<absl::string_view> parts;
  for (absl::string_view p : absl::StrSplit(name, '/')) {
    if (p.empty() || p == ".") continue;
    if (p == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(p);
  }
  return absl::StrJoin(parts, "/");
}

absl::StatusOr<LayerWriteResult> WriteLayer(absl::string_view tar,
                                            const LayerWriterOptions& options,
                                            BlobSink* sink) {
  const Compression comp = options.compression;
  ASSIGN_OR_RETURN(const int level,
                   ResolveCompressionLevel(comp, options.level));
  ASSIGN_OR_RETURN(const int prioritized_level,
                   ResolveCompressionLevel(comp, options.prioritized_level != 0
                                                     ? options.prioritized_level
                                                 : comp == Compression::kGzip
                                                     ? std::max(level, 9)
                                                     : level));
  if (options.chunk_size == 0 || options.chunk_size > kMaxChunkSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk size ", options.chunk_size, " is outside 1 B - 1 GiB"));
  }
  if (options.min_chunk_size > kMaxMinChunkSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min chunk size ", options.min_chunk_size, " is over 64 MiB"));
  }
  int threads = options.threads;
  if (threads <= 0) {
    threads =
        std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }
  threads = std::min(threads, 256);

  // 1. Parse the tar; drop old TOCs and landmarks; a later duplicate replaces
  //    an earlier entry.
  std::vector<Item> items;
  {
    MemoryByteStream stream(tar);
    TarReader reader(&stream);
    absl::flat_hash_map<std::string, size_t> by_name;
    // Hardlink target -> the links to it (indexes into `items`, in order).
    absl::flat_hash_map<std::string, std::vector<size_t>> linked_by;
    // TOC name -> the tar name it came from, where they differ.
    absl::flat_hash_map<std::string, std::string> replaced;
    std::vector<bool> dropped;
    for (;;) {
      Item it;
      ASSIGN_OR_RETURN(bool more, reader.Next(&it.h));
      if (!more) break;
      it.clean = CleanEntryName(it.h.name);
      if (it.clean == kTocTarName || it.clean == kPrefetchLandmark ||
          it.clean == kNoPrefetchLandmark) {
        continue;
      }
      absl::Status bad_name = NormalizeTarPath(it.h.name).status();
      if (bad_name.ok() && it.h.type == TarType::kHardlink) {
        bad_name = NormalizeTarPath(it.h.link_name).status();
      }
      if (bad_name.ok() && it.h.type == TarType::kSymlink) {
        bad_name = CheckSymlinkTarget(it.h.link_name);
      }
      if (!bad_name.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tar entry \"", NameForMessage(it.h.name),
            "\": ", bad_name.message(), " (readers refuse such layers)"));
      }
      // RFC 3339 (the TOC's modtime, as Go writes it) holds years 0-9999.
      constexpr int64_t kYear0 = -62167219200, kYear9999End = 253402300799;
      if (it.h.mtime_sec < kYear0 || it.h.mtime_sec > kYear9999End) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tar entry \"", it.h.name, "\" has mtime ", it.h.mtime_sec,
            " s, outside the years 0-9999 a TOC's modtime (RFC 3339) can "
            "hold"));
      }
      if (it.h.uid > UINT32_MAX || it.h.gid > UINT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat("tar entry \"", it.h.name, "\" has uid ", it.h.uid,
                         " / gid ", it.h.gid, ", beyond 32 bits"));
      }
      // Two names that differ only in invalid UTF-8 would be one name in
      // the TOC: one file would be lost without a word.
      if (std::string toc_name = AsTocName(it.clean); toc_name != it.clean) {
        auto [at, fresh] = replaced.try_emplace(toc_name, it.clean);
        if ((!fresh && at->second != it.clean) || by_name.contains(toc_name)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tar entry \"", absl::CHexEscape(it.clean),
              "\" has the same TOC name as another (\"",
              absl::CHexEscape(toc_name),
              "\": the TOC's JSON replaces invalid UTF-8), so a reader "
              "would see one of them only"));
        }
      } else if (replaced.contains(it.clean)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tar entry \"", absl::CHexEscape(it.clean),
            "\" has the same TOC name as \"",
            absl::CHexEscape(replaced[it.clean]),
            "\" (the TOC's JSON replaces invalid UTF-8), so a reader would "
            "see one of them only"));
      }
      it.payload = tar.substr(it.h.data_offset, it.h.size);
      auto [pos, fresh] = by_name.try_emplace(it.clean, items.size());
      if (!fresh) {
        // Hardlinks made to the entry this one replaces (as `tar --append`
        // writes an updated file) keep the old content on extraction. The
        // first becomes a copy of the old entry, the others links to it
        // (made to the new entry, they named it ahead of it: a tar stream
        // plain clients fail on, and the new content).
        if (auto l = linked_by.find(it.clean); l != linked_by.end()) {
          const Item& old = items[pos->second];
          if (old.h.type == it.h.type && old.h.mode == it.h.mode &&
              old.h.uid == it.h.uid && old.h.gid == it.h.gid &&
              old.h.mtime_sec == it.h.mtime_sec &&
              old.h.mtime_nsec == it.h.mtime_nsec &&
              old.h.link_name == it.h.link_name &&
              old.h.xattrs == it.h.xattrs && old.payload == it.payload) {
            continue;  // the same file again: the earlier one stands
          }
          // (Links since replaced themselves are gone.)
          std::vector<size_t> links;
          for (size_t k : l->second) {
            if (!dropped[k]) links.push_back(k);
          }
          linked_by.erase(l);
          if (!links.empty()) {
            Item& copy = items[links[0]];
            RETURN_IF_ERROR(CopyEntryInto(old, &copy));
            if (copy.h.type == TarType::kHardlink) {  // a link itself
              linked_by[CleanEntryName(copy.h.link_name)].push_back(links[0]);
            }
            for (size_t k = 1; k < links.size(); ++k) {
              RETURN_IF_ERROR(Relink(copy.h.name, &items[links[k]]));
              linked_by[copy.clean].push_back(links[k]);
            }
          }
        }
        dropped[pos->second] = true;
        pos->second = items.size();
      }
      if (it.h.type == TarType::kHardlink) {
        linked_by[CleanEntryName(it.h.link_name)].push_back(items.size());
      }
      items.push_back(std::move(it));
      dropped.push_back(false);
    }
    if (std::find(dropped.begin(), dropped.end(), true) != dropped.end()) {
      std::vector<Item> kept;
      kept.reserve(items.size());
      for (size_t i = 0; i < items.size(); ++i) {
        if (!dropped[i]) kept.push_back(std::move(items[i]));
      }
      items = std::move(kept);
    }
  }

  // 2. Order them, with the landmark.
  LayerWriteResult result;
  std::vector<uint32_t> order;
  {
    Sorter sorter(&items);
    for (const std::string& p : options.prioritized_files) {
      if (!sorter.MoveListed(p)) result.missing_prioritized.push_back(p);
    }
    order = std::move(sorter.out_order());
    std::vector<uint32_t> rest = sorter.Rest();
    Item landmark;
    landmark.h.name =
        std::string(options.prioritized_files.empty() ? kNoPrefetchLandmark
                                                      : kPrefetchLandmark);
    landmark.h.size = 1;
    landmark.h.raw = GoUstarHeader(landmark.h.name, 1);
    landmark.payload = absl::string_view(kLandmarkContents, 1);
    landmark.clean = landmark.h.name;
    order.push_back(static_cast<uint32_t>(items.size()));
    items.push_back(std::move(landmark));
    order.insert(order.end(), rest.begin(), rest.end());
  }
  const uint32_t landmark_item = static_cast<uint32_t>(items.size() - 1);

  // 3. The member plan. `items` no longer changes, so views into it hold.
  std::vector<absl::string_view> pieces;
  std::vector<MemberPlan> members;
  std::vector<ChunkPlan> chunks;
  {
    MemberPlan cur;
    auto add = [&](absl::string_view p) {
      if (p.empty()) return;
      pieces.push_back(p);
      ++cur.num_pieces;
      cur.size += p.size();
    };
    auto close = [&] {
      if (cur.num_pieces > 0) members.push_back(cur);
      cur = MemberPlan();
      cur.first_piece = pieces.size();
    };
    // A payload (or chunk) starts a member unless min_chunk_size asks to
    // fill the current one further; landmarks always start one (§1.3).
    auto close_before_payload = [&](bool landmark) {
      if (landmark || cur.size >= options.min_chunk_size) close();
    };
    for (uint32_t i : order) {
      Item& it = items[i];
      add(it.h.raw);
      if (it.h.type != TarType::kReg || it.h.size == 0) continue;
      it.first_chunk = static_cast<uint32_t>(chunks.size());
      for (uint64_t off = 0; off < it.h.size; off += options.chunk_size) {
        close_before_payload(i == landmark_item);
        uint64_t n = std::min(options.chunk_size, it.h.size - off);
        if (cur.num_chunks == 0) cur.first_chunk = chunks.size();
        ++cur.num_chunks;
        chunks.push_back({i, off, it.payload.substr(off, n),
                          static_cast<uint32_t>(members.size()), cur.size});
        add(chunks.back().data);
        ++it.num_chunks;
      }
      add(absl::string_view(kZeros, (kBlock - it.h.size % kBlock) % kBlock));
    }
    if (comp == Compression::kZstd) add(absl::string_view(kZeros, 2 * kBlock));
    close();
  }
  std::vector<JobPlan> jobs;
  {
    JobPlan cur;
    uint64_t bytes = 0;
    for (size_t m = 0; m < members.size(); ++m) {
      if (cur.num_members > 0 &&
          (bytes >= kJobBytes || cur.num_members >= kJobMaxMembers)) {
        jobs.push_back(cur);
        cur = JobPlan{m, 0};
        bytes = 0;
      }
      ++cur.num_members;
      bytes += members[m].size;
    }
    if (cur.num_members > 0) jobs.push_back(cur);
  }

  // 4. Compress in parallel, write in order.
  std::vector<Digest> chunk_digests(chunks.size());
  std::vector<uint64_t> member_offsets(members.size());
  Sha256 diff_hasher, blob_hasher;
  uint64_t out_pos = 0, raw_pos = 0;
  auto emit = [&](absl::string_view data) -> absl::Status {
    blob_hasher.Update(data);
    out_pos += data.size();
    return sink->Write(data);
  };
  // Members before the landmark's are the prioritized files'; the first
  // kMaxPrioritizedLevelBytes of them get prioritized_level (a "read
  // everything" profile would otherwise convert at a fraction of the speed).
  size_t first_rest_member = 0;
  if (!options.prioritized_files.empty()) {
    const size_t landmark_member =
        chunks[items[landmark_item].first_chunk].member;
    uint64_t bytes = 0;
    while (first_rest_member < landmark_member &&
           bytes < kMaxPrioritizedLevelBytes) {
      bytes += members[first_rest_member++].size;
    }
  }
  auto run = [&](MemberCompressor& c, MemberCompressor& prio, size_t j,
                 JobResult* r) -> absl::Status {
    const JobPlan& job = jobs[j];
    uint64_t job_bytes = 0;
    for (size_t m = job.first_member; m < job.first_member + job.num_members;
         ++m) {
      job_bytes += members[m].size;
    }
    r->data.reserve(static_cast<size_t>(job_bytes / 2 + 4096));
    r->member_sizes.reserve(job.num_members);
    for (size_t m = job.first_member; m < job.first_member + job.num_members;
         ++m) {
      const MemberPlan& mp = members[m];
      size_t before = r->data.size();
      RETURN_IF_ERROR((m < first_rest_member ? prio : c)
                          .Compress(absl::MakeConstSpan(pieces).subspan(
                                        mp.first_piece, mp.num_pieces),
                                    &r->data));
      r->member_sizes.push_back(r->data.size() - before);
      for (size_t ci = mp.first_chunk; ci < mp.first_chunk + mp.num_chunks;
           ++ci) {
        const ChunkPlan& cp = chunks[ci];
        chunk_digests[ci] = Sha256::Of(cp.data);
        Item& it = items[cp.item];
        if (cp.file_offset == 0 && it.num_chunks > 1) {
          it.file_digest = Sha256::Of(it.payload);
        }
      }
    }
    return absl::OkStatus();
  };
  auto consume = [&](size_t j, JobResult& r) -> absl::Status {
    const JobPlan& job = jobs[j];
    uint64_t at = out_pos;
    for (size_t k = 0; k < job.num_members; ++k) {
      const MemberPlan& mp = members[job.first_member + k];
      member_offsets[job.first_member + k] = at;
      at += r.member_sizes[k];
      for (size_t p = mp.first_piece; p < mp.first_piece + mp.num_pieces; ++p) {
        diff_hasher.Update(pieces[p]);
      }
      raw_pos += mp.size;
    }
    return emit(r.data);
  };
  {
    JobPipeline pipeline(jobs.size(), threads, comp, level, prioritized_level);
    RETURN_IF_ERROR(pipeline.Execute(run, consume));
  }

  // 5. The TOC.
  const Digest empty_digest = Sha256::Of("");
  TocJson toc;
  absl::flat_hash_map<uint64_t, std::string> last_uname, last_gname;
  auto name_if_changed = [](absl::flat_hash_map<uint64_t, std::string>& m,
                            uint64_t id, const std::string& name) {
    if (name.empty()) return false;
    auto [it, fresh] = m.try_emplace(id, name);
    if (!fresh && it->second == name) return false;
    it->second = name;
    return true;
  };
  for (uint32_t i : order) {
    Item& it = items[i];
    const TarHeader& h = it.h;
    toc.Begin();
    toc.Str("name", h.name);
    toc.Str("type", TocType(h.type));
    bool reg = h.type == TarType::kReg;
    if (reg && h.size > 0) toc.Num("size", h.size);
    if (h.mtime_sec != 0) {
      toc.Str("modtime", FormatRfc3339(h.mtime_sec, h.mtime_nsec));
    }
    if ((h.type == TarType::kHardlink || h.type == TarType::kSymlink) &&
        !h.link_name.empty()) {
      toc.Str("linkName", h.link_name);
    }
    if (h.mode != 0) toc.SNum("mode", h.mode);
    if (h.uid != 0) toc.Num("uid", h.uid);
    if (h.gid != 0) toc.Num("gid", h.gid);
    if (name_if_changed(last_uname, h.uid, h.uname))
      toc.Str("userName", h.uname);
    if (name_if_changed(last_gname, h.gid, h.gname)) {
      toc.Str("groupName", h.gname);
    }
    uint64_t offset = 0;
    if (it.num_chunks > 0) {
      const ChunkPlan& first = chunks[it.first_chunk];
      offset = member_offsets[first.member];
      // (0 only for a payload sharing the blob's first member: omitted, as
      // Go's omitempty does; readers take an absent offset as 0.)
      if (offset != 0) toc.Num("offset", offset);
      if (first.inner_offset != 0) toc.Num("innerOffset", first.inner_offset);
    }
    if (h.type == TarType::kChar || h.type == TarType::kBlock) {
      if (h.dev_major != 0) toc.Num("devMajor", h.dev_major);
      if (h.dev_minor != 0) toc.Num("devMinor", h.dev_minor);
    }
    if (!h.xattrs.empty()) toc.Xattrs(h.xattrs);
    if (reg) {
      if (it.num_chunks == 0) {
        it.file_digest = empty_digest;
      } else if (it.num_chunks == 1) {
        it.file_digest = chunk_digests[it.first_chunk];
      }
      toc.Str("digest", it.file_digest.ToString());
    }
    if (i == landmark_item && !options.prioritized_files.empty()) {
      result.prefetch_landmark_offset = offset;
    }
    for (uint32_t c = it.first_chunk; c < it.first_chunk + it.num_chunks; ++c) {
      const ChunkPlan& cp = chunks[c];
      if (c > it.first_chunk) {
        toc.End();
        toc.Begin();
        toc.Str("name", h.name);
        toc.Str("type", "chunk");
        toc.Num("offset", member_offsets[cp.member]);
        if (cp.inner_offset != 0) toc.Num("innerOffset", cp.inner_offset);
        toc.Num("chunkOffset", cp.file_offset);
      }
      if (cp.data.size() == options.chunk_size) {
        toc.Num("chunkSize", cp.data.size());
      }
      toc.Str("chunkDigest", chunk_digests[c].ToString());
    }
    toc.End();
  }
  result.toc_entry_count = toc.entries();
  const std::string json = toc.Finish();
  // Readers (this one's included) refuse a larger TOC: refuse to write it.
  if (const uint64_t limit =
          std::min(options.max_toc_size, FooterLimits{}.max_toc_size);
      json.size() > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat("the TOC would be ", json.size(), " bytes (",
                     toc.entries(), " entries), over the ", limit,
                     " bytes readers accept: use a larger --chunk-size"));
  }
  result.toc_digest = Sha256::Of(json);
  result.toc_uncompressed_size = json.size();

  // 6. Self-check: the TOC must index as a layer lazypull can read (this
  //    catches hardlinks to nothing, links to directories, ...).
  const uint64_t data_end = out_pos;
  {
    absl::StatusOr<Toc> parsed = ParseToc(PaddedTocBuffer(json));
    absl::Status st = parsed.status();
    if (st.ok()) st = LayerIndex::Build(*parsed, data_end).status();
    if (!st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the converted layer would not be readable: ", st.message()));
    }
  }

  // 7. TOC and footer.
  ASSIGN_OR_RETURN(std::unique_ptr<MemberCompressor> c,
                   MemberCompressor::New(comp, level));
  if (comp == Compression::kGzip) {
    std::string toc_tar = GoUstarHeader(kTocTarName, json.size());
    toc_tar.append(json);
    toc_tar.append((kBlock - json.size() % kBlock) % kBlock, '\0');
    toc_tar.append(2 * kBlock, '\0');
    diff_hasher.Update(toc_tar);
    raw_pos += toc_tar.size();
    std::string member;
    RETURN_IF_ERROR(c->Compress(absl::string_view(toc_tar), &member));
    result.toc_offset = out_pos;
    result.toc_compressed_size = member.size();
    RETURN_IF_ERROR(emit(member));
    RETURN_IF_ERROR(emit(GzipFooter(result.toc_offset)));
  } else {
    std::string frame;
    RETURN_IF_ERROR(c->Compress(absl::string_view(json), &frame));
    result.toc_compressed_digest = Sha256::Of(frame);
    std::string skippable;
    PutLe32(&skippable, kSkippableMagic);
    PutLe32(&skippable, static_cast<uint32_t>(frame.size()));
    result.toc_offset = out_pos + 8;
    result.toc_compressed_size = frame.size();
    RETURN_IF_ERROR(emit(skippable));
    RETURN_IF_ERROR(emit(frame));
    std::string footer;
    PutLe32(&footer, kSkippableMagic);
    PutLe32(&footer, 40);
    PutLe64(&footer, result.toc_offset);
    PutLe64(&footer, frame.size());
    PutLe64(&footer, json.size());
    PutLe64(&footer, 1);
    footer.append("GnUlInUx");
    RETURN_IF_ERROR(emit(footer));
  }
  result.diff_id = diff_hasher.Finish();
  result.uncompressed_size = raw_pos;
  result.blob_digest = blob_hasher.Finish();
  result.blob_size = out_pos;

  result.annotations = {
      {kTocDigestAnnotation, result.toc_digest.ToString()},
      {"io.containers.estargz.uncompressed-size",
       absl::StrCat(result.uncompressed_size)},
  };
  if (result.prefetch_landmark_offset) {
    result.annotations.push_back(
        {kPrefetchSizeAnnotation,
         absl::StrCat(*result.prefetch_landmark_offset)});
  }
  if (comp == Compression::kGzip) {
    result.annotations.push_back(
        {kTocOffsetAnnotation, absl::StrCat(result.toc_offset)});
  }
  if (comp == Compression::kZstd) {
    result.annotations.push_back(
        {kZstdChunkedChecksumAnnotations[1],  // old prefix, as the reference
         result.toc_compressed_digest.ToString()});
    result.annotations.push_back(
        {kZstdChunkedPositionAnnotations[1],
         absl::StrCat(result.toc_offset, ":", result.toc_compressed_size, ":",
                      result.toc_uncompressed_size, ":1")});
  }
  std::sort(result.annotations.begin(), result.annotations.end());
  return result;
}

bool HasLazyPullAnchor(const std::map<std::string, std::string>& annotations) {
  if (annotations.count(kTocDigestAnnotation) > 0) return true;
  for (const char* key : kZstdChunkedChecksumAnnotations) {
    if (annotations.count(key) > 0) return true;
  }
  return false;
}

}  // namespace lazypull
