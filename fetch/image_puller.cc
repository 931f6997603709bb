#include "fetch/image_puller.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "core/decompressor.h"
#include "core/errno_status.h"
#include "core/layer_writer.h"
#include "core/node_writer.h"
#include "core/status_macros.h"
#include "core/tar_reader.h"
#include "core/tar_unpacker.h"
#include "fetch/oci_layout.h"
#include "fetch/rootfs_builder.h"

namespace lazypull {
namespace {

// The uncompressed tar stream of a layer blob, hashed for its DiffID.
class LayerTarStream : public ByteStream {
 public:
  LayerTarStream(ByteStream* blob, const std::atomic<bool>* cancel)
      : blob_(blob), cancel_(cancel), out_(256 << 10) {}

  absl::StatusOr<absl::string_view> Read(size_t n) override {
    if (cancel_->load()) return absl::CancelledError("pull cancelled");
    if (out_pos_ == out_len_) {
      out_pos_ = out_len_ = 0;
      RETURN_IF_ERROR(Refill());
      if (out_len_ == 0) return absl::string_view();
    }
    size_t k = std::min(n, out_len_ - out_pos_);
    absl::string_view v(out_src_ + out_pos_, k);
    out_pos_ += k;
    return v;
  }

  uint64_t uncompressed_bytes() const { return produced_; }
  Digest diff_id() { return diff_hash_.Finish(); }
  const char* format() const {
    return mode_ == Mode::kGzip   ? "gzip"
           : mode_ == Mode::kZstd ? "zstd"
                                  : "tar";
  }

 private:
  enum class Mode { kUnknown, kRaw, kGzip, kZstd };

  absl::Status NextInput() {
    ASSIGN_OR_RETURN(in_, blob_->Read(1 << 20));
    if (in_.empty()) in_eof_ = true;
    return absl::OkStatus();
  }

  absl::Status Sniff() {
    // Up to 4 bytes decide; copy them so a short first read is fine.
    while (head_.size() < 4) {
      RETURN_IF_ERROR(NextInput());
      if (in_eof_) break;
      size_t k = std::min<size_t>(4 - head_.size(), in_.size());
      head_.append(in_.data(), k);
      in_.remove_prefix(k);
    }
    const auto* b = reinterpret_cast<const uint8_t*>(head_.data());
    uint32_t le = head_.size() >= 4 ? (b[0] | b[1] << 8 | b[2] << 16 |
                                       static_cast<uint32_t>(b[3]) << 24)
                                    : 0;
    if (head_.size() >= 2 && b[0] == 0x1f && b[1] == 0x8b) {
      mode_ = Mode::kGzip;
    } else if (le == 0xFD2FB528u || (le & 0xFFFFFFF0u) == 0x184D2A50u) {
      mode_ = Mode::kZstd;  // a frame, or a skippable frame first
    } else {
      mode_ = Mode::kRaw;
    }
    if (mode_ != Mode::kRaw) {
      dec_ = StreamDecompressor::New(mode_ == Mode::kGzip ? Compression::kGzip
                                                          : Compression::kZstd);
    }
    pending_head_ = true;
    return absl::OkStatus();
  }

  // The next input bytes: the sniffed head first, then the blob.
  absl::StatusOr<absl::string_view> Input() {
    if (pending_head_) {
      if (head_pos_ < head_.size()) {
        return absl::string_view(head_).substr(head_pos_);
      }
      pending_head_ = false;
    }
    if (in_.empty() && !in_eof_) RETURN_IF_ERROR(NextInput());
    return in_;
  }
  void Consume(size_t k) {
    if (pending_head_) {
      head_pos_ += k;
    } else {
      in_.remove_prefix(k);
    }
  }

  absl::Status Refill() {
    if (mode_ == Mode::kUnknown) RETURN_IF_ERROR(Sniff());
    while (true) {
      ASSIGN_OR_RETURN(absl::string_view in, Input());
      if (in.empty()) {
        if (member_open_) {
          return absl::DataLossError(absl::StrCat(
              "the ", format(), " stream ends inside a member, after ",
              produced_, " uncompressed bytes"));
        }
        return absl::OkStatus();  // the end
      }
      if (mode_ == Mode::kRaw) {
        out_src_ = in.data();
        out_len_ = in.size();
        Consume(in.size());
      } else {
        ASSIGN_OR_RETURN(StreamDecompressor::Result r,
                         dec_->Decompress(in, absl::MakeSpan(out_)));
        Consume(r.consumed);
        if (r.frame_end) {
          member_open_ = false;
        } else if (r.consumed > 0 || r.produced > 0) {
          member_open_ = true;
        }
        out_src_ = out_.data();
        out_len_ = r.produced;
        if (r.consumed == 0 && r.produced == 0 && !r.frame_end) {
          return absl::DataLossError(
              absl::StrCat("the ", format(), " stream makes no progress after ",
                           produced_, " uncompressed bytes"));
        }
      }
      if (out_len_ > 0) {
        diff_hash_.Update(out_src_, out_len_);
        produced_ += out_len_;
        return absl::OkStatus();
      }
    }
  }

  ByteStream* blob_;
  const std::atomic<bool>* cancel_;
  Mode mode_ = Mode::kUnknown;
  std::unique_ptr<StreamDecompressor> dec_;
  std::string head_;
  size_t head_pos_ = 0;
  bool pending_head_ = false;
  absl::string_view in_;
  bool in_eof_ = false;
  bool member_open_ = false;
  std::vector<char> out_;
  const char* out_src_ = nullptr;
  size_t out_len_ = 0, out_pos_ = 0;
  uint64_t produced_ = 0;
  Sha256 diff_hash_;
};

// `in`, ending with Cancelled once `cancel` is set.
class CancellableStream : public ByteStream {
 public:
  CancellableStream(ByteStream* in, const std::atomic<bool>* cancel)
      : in_(in), cancel_(cancel) {}
  absl::StatusOr<absl::string_view> Read(size_t n) override {
    if (cancel_->load()) return absl::CancelledError("pull cancelled");
    return in_->Read(n);
  }

 private:
  ByteStream* in_;
  const std::atomic<bool>* cancel_;
};

struct LayerJob {
  bool done = false;
  absl::Status status;
  // A blob listed again later: downloaded into the work dir (then done).
  bool blob_done = false;
  absl::Status blob_status;
  UnpackedLayer unpacked;
  std::string staged;
  uint64_t compressed = 0;
  uint64_t uncompressed = 0;
};

// Unpacks layer blob `blob` (descriptor `d`) into `staged` and checks its
// diff_id; sets job->unpacked and job->uncompressed.
absl::Status RunLayer(ByteStream* blob, const Descriptor& d,
                      const Digest& diff_id, const std::string& staged,
                      const PullOptions& opts, const std::atomic<bool>* cancel,
                      LayerJob* job) {
  if (mkdir(staged.c_str(), 0755) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", staged));
  }
  LayerTarStream tar_stream(blob, cancel);
  TarReader tar(&tar_stream);
  TarUnpackOptions uo;
  uo.same_owner = opts.same_owner;
  // An eStargz/zstd:chunked layer's TOC entry and landmarks are left out,
  // as a lazy mount of it leaves them out: the two give the same tree.
  uo.skip_lazy_metadata = HasLazyPullAnchor(d.annotations);
  ASSIGN_OR_RETURN(job->unpacked, UnpackTar(&tar, staged, uo));
  // The tar ended; read the rest (EOF padding) so that the whole blob is
  // hashed and the decompressor sees every member end.
  while (true) {
    ASSIGN_OR_RETURN(absl::string_view rest, tar_stream.Read(1 << 20));
    if (rest.empty()) break;
  }
  job->uncompressed = tar_stream.uncompressed_bytes();
  Digest got = tar_stream.diff_id();
  if (got != diff_id) {
    return absl::DataLossError(absl::StrCat(
        "its uncompressed content hashes to ", got.ToString(),
        " but the image config's diff_id is ", diff_id.ToString()));
  }
  return absl::OkStatus();
}

// Downloads, checks and unpacks one layer into `staged`.
absl::Status DownloadLayer(RegistryClient* client, const Descriptor& d,
                           const Digest& diff_id, const std::string& staged,
                           const PullOptions& opts,
                           const std::atomic<bool>* cancel, LayerJob* job) {
  ASSIGN_OR_RETURN(std::unique_ptr<BlobReader> blob, client->OpenBlob(d));
  RETURN_IF_ERROR(RunLayer(blob.get(), d, diff_id, staged, opts, cancel, job));
  job->compressed = blob->bytes_read();
  return absl::OkStatus();
}

std::string Dirname(const std::string& p) {
  size_t s = p.find_last_of('/');
  if (s == std::string::npos) return ".";
  if (s == 0) return "/";
  return p.substr(0, s);
}

std::string Basename(const std::string& p) {
  size_t s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

// The name prefix of a pull's work directory inside DIR (DIR a mount point)
// or, with DIR's name before it, beside DIR; the pull's pid follows.
constexpr absl::string_view kWorkSuffix = ".lazypull-pull.";

// Whether `name` is the work directory of a pull that is gone (killed: a
// signal skips the clean-up) given its prefix.
bool IsDeadWork(absl::string_view name, absl::string_view prefix) {
  int pid = 0;
  return absl::StartsWith(name, prefix) &&
         absl::SimpleAtoi(name.substr(prefix.size()), &pid) && pid > 0 &&
         kill(pid, 0) != 0 && errno == ESRCH;
}

// Whether the existing directory `dir` is the root of a mount (a rename
// into or out of it fails with EXDEV: another filesystem, or a bind mount
// of the same one). statx says so from Linux 5.8; before it, a device
// other than the parent's.
absl::StatusOr<bool> IsMountRoot(const std::string& dir) {
  struct statx sx;
  if (statx(AT_FDCWD, dir.c_str(), AT_SYMLINK_NOFOLLOW, STATX_INO, &sx) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", dir));
  }
  if (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) {
    return (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
  }
  struct stat here, up;
  if (stat(dir.c_str(), &here) != 0 || stat((dir + "/..").c_str(), &up) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", dir, " and its parent"));
  }
  return here.st_dev != up.st_dev || here.st_ino == up.st_ino;
}

// DIR is absent, or an empty directory but for the work directories of
// killed pulls into it.
absl::Status CheckTarget(const std::string& dir) {
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoToStatus(errno, absl::StrCat("stat ", dir));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " exists and is not a directory"));
  }
  ScopedFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", dir));
  DIR* d = fdopendir(dup(fd.get()));
  if (d == nullptr) return ErrnoToStatus(errno, absl::StrCat("read ", dir));
  bool empty = true;
  while (struct dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
        !IsDeadWork(e->d_name, kWorkSuffix))
      empty = false;
  }
  closedir(d);
  if (!empty) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir,
        " is not empty: pull writes an image's root filesystem into an "
        "empty or new directory"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<UnpackedLayer> PullLayer(RegistryClient* client,
                                        const Descriptor& d,
                                        const Digest& diff_id,
                                        const std::string& dir,
                                        bool same_owner) {
  PullOptions opts;
  opts.same_owner = same_owner;
  std::atomic<bool> cancel{false};
  LayerJob job;
  RETURN_IF_ERROR(DownloadLayer(client, d, diff_id, dir, opts, &cancel, &job));
  return std::move(job.unpacked);
}

absl::StatusOr<PullResult> PullImage(RegistryClient* client,
                                     const std::string& dir_in,
                                     const PullOptions& opts) {
  const absl::Time start = absl::Now();
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  RETURN_IF_ERROR(CheckTarget(dir));
  // The layers are staged and merged in a work directory on DIR's
  // filesystem, so that they go into place by rename(2): beside DIR, named
  // after it, or, when DIR is a mount point, inside it.
  bool in_dir = false;
  if (access(dir.c_str(), F_OK) == 0) {
    ASSIGN_OR_RETURN(in_dir, IsMountRoot(dir));
  }
  const std::string parent = in_dir ? dir : Dirname(dir);
  // A name too long to take the suffix within NAME_MAX (255) goes by its
  // hash instead.
  std::string stem = in_dir ? "" : Basename(dir);
  if (stem.size() > 200) stem = Sha256::Of(stem).Hex().substr(0, 16);
  const std::string stale_prefix =
      in_dir ? std::string(kWorkSuffix) : absl::StrCat(".", stem, kWorkSuffix);
  const std::string work = absl::StrCat(parent, "/", stale_prefix, getpid());
  ScopedFd parent_fd(open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!parent_fd.valid()) {
    return ErrnoToStatus(errno, absl::StrCat("open ", parent));
  }
  const std::string work_name = Basename(work);
  RETURN_IF_ERROR(RemoveTreeAt(parent_fd.get(), work_name, work));
  // Work directories of earlier pulls into DIR that were killed (a signal
  // skips the clean-up below) go too, once their process is gone.
  std::vector<std::string> stale;
  if (DIR* d = fdopendir(dup(parent_fd.get()))) {
    while (struct dirent* e = readdir(d)) {
      if (IsDeadWork(e->d_name, stale_prefix)) stale.emplace_back(e->d_name);
    }
    closedir(d);
  }
  for (const std::string& name : stale) {
    (void)RemoveTreeAt(parent_fd.get(), name, absl::StrCat(parent, "/", name));
  }
  if (mkdir(work.c_str(), 0700) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", work));
  }
  // Whatever happens below, the work directory goes.
  struct WorkCleanup {
    int parent;
    std::string name, display;
    ~WorkCleanup() { (void)RemoveTreeAt(parent, name, display); }
  } cleanup{parent_fd.get(), work_name, work};

  ScopedFd work_fd(
      open(work.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!work_fd.valid())
    return ErrnoToStatus(errno, absl::StrCat("open ", work));
  const std::string rootfs = work + "/rootfs";
  if (mkdir(rootfs.c_str(), 0755) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", rootfs));
  }

  ASSIGN_OR_RETURN(ResolvedImage img, client->Resolve());
  PullResult result;
  result.reference = client->reference().String();
  result.index_digest = img.index_digest;
  result.manifest_digest = img.manifest_digest;
  const size_t n = img.manifest.layers.size();
  result.layers = n;

  // A blob the manifest lists more than once is downloaded once, into an
  // OCI layout in the work dir, and unpacked from there each time.
  const std::vector<Descriptor>& layers = img.manifest.layers;
  std::vector<size_t> first(n);
  std::vector<bool> repeated(n, false);
  for (size_t i = 0; i < n; ++i) {
    first[i] = i;
    for (size_t k = 0; k < i; ++k) {
      if (layers[k].digest == layers[i].digest) {
        first[i] = k;
        repeated[k] = repeated[i] = true;
        break;
      }
    }
  }
  std::optional<OciImageLayout> blobs;
  if (std::find(repeated.begin(), repeated.end(), true) != repeated.end()) {
    ASSIGN_OR_RETURN(blobs, OciImageLayout::OpenOrCreate(work + "/blobs"));
  }

  std::vector<LayerJob> jobs(n);
  absl::Mutex mu;
  std::atomic<size_t> next{0};
  std::atomic<bool> cancel{false};
  auto run_repeated = [&](size_t i, LayerJob* job) -> absl::Status {
    const Descriptor& d = layers[i];
    if (first[i] == i) {
      absl::Status st = [&]() -> absl::Status {
        ASSIGN_OR_RETURN(std::unique_ptr<BlobReader> blob, client->OpenBlob(d));
        CancellableStream in(blob.get(), &cancel);
        RETURN_IF_ERROR(blobs->WriteBlobFrom(d, &in));
        job->compressed = blob->bytes_read();
        return absl::OkStatus();
      }();
      absl::MutexLock l(&mu);
      job->blob_status = st;
      job->blob_done = true;
      RETURN_IF_ERROR(st);
    } else {
      // The first occurrence was taken by a worker before this one.
      absl::MutexLock l(&mu);
      mu.Await(absl::Condition(&jobs[first[i]].blob_done));
      if (!jobs[first[i]].blob_status.ok()) {
        return absl::CancelledError(
            absl::StrCat("layer ", first[i] + 1, " (the same blob) failed"));
      }
    }
    ASSIGN_OR_RETURN(std::unique_ptr<ByteStream> blob, blobs->OpenBlob(d));
    return RunLayer(blob.get(), d, img.config.diff_ids[i], job->staged, opts,
                    &cancel, job);
  };
  auto worker = [&] {
    while (!cancel.load()) {
      size_t i = next.fetch_add(1);
      if (i >= n) return;
      LayerJob* job = &jobs[i];
      job->staged = absl::StrCat(work, "/layer-", i);
      absl::Status st =
          repeated[i] ? run_repeated(i, job)
                      : DownloadLayer(client, layers[i], img.config.diff_ids[i],
                                      job->staged, opts, &cancel, job);
      // A failed layer fails the pull: the others stop early.
      if (!st.ok()) cancel.store(true);
      absl::MutexLock l(&mu);
      job->status = st;
      job->done = true;
    }
  };
  std::vector<std::thread> threads;
  const size_t nthreads = std::min<size_t>(
      n, static_cast<size_t>(std::max(1, opts.parallel_layers)));
  for (size_t t = 0; t < nthreads; ++t) threads.emplace_back(worker);
  auto stop = [&] {
    cancel.store(true);
    for (auto& t : threads) t.join();
    threads.clear();
  };

  ApplyLayerOptions ao;
  ao.same_owner = opts.same_owner;
  for (size_t i = 0; i < n; ++i) {
    LayerJob* job = &jobs[i];
    {
      absl::MutexLock l(&mu);
      mu.Await(absl::Condition(&job->done));
    }
    absl::Status st = job->status;
    if (st.ok()) st = ApplyLayer(job->staged, job->unpacked, rootfs, ao);
    // What the layer staged goes either way (moved into the rootfs, or
    // discarded on failure).
    absl::Status rm =
        RemoveTreeAt(work_fd.get(), absl::StrCat("layer-", i), job->staged);
    if (st.ok()) st = rm;
    if (!st.ok()) {
      stop();
      // Report the layer that failed first, not one it cancelled.
      size_t bad = i;
      if (absl::IsCancelled(st)) {
        absl::MutexLock l(&mu);
        for (size_t k = 0; k < n; ++k) {
          if (jobs[k].done && !jobs[k].status.ok() &&
              !absl::IsCancelled(jobs[k].status)) {
            bad = k;
            st = jobs[k].status;
            break;
          }
        }
      }
      const Descriptor& d = layers[bad];
      return absl::Status(
          st.code(), absl::StrCat("layer ", bad + 1, "/", n, " (",
                                  d.digest.ToString(), "): ", st.message()));
    }
    result.compressed_bytes += job->compressed;
    result.uncompressed_bytes += job->uncompressed;
    result.entries += job->unpacked.entries;
  }
  stop();

  // Into place: one rename (DIR absent or an empty directory) ...
  if (in_dir || rename(rootfs.c_str(), dir.c_str()) != 0) {
    if (!in_dir && errno != EBUSY && errno != EXDEV) {
      return ErrnoToStatus(errno, absl::StrCat("rename ", rootfs, " to ", dir));
    }
    // ... or, for a mount point (the work directory inside it), entry by
    // entry plus the root's attributes.
    UnpackedLayer whole;
    whole.explicit_dirs.insert("");
    ApplyLayerOptions mo;
    mo.same_owner = opts.same_owner;
    RETURN_IF_ERROR(ApplyLayer(rootfs, whole, dir, mo));
  }
  result.elapsed = absl::Now() - start;
  return result;
}

}  // namespace lazypull
