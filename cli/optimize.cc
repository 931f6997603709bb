#include "cli/optimize.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cli/commands.h"
#include "cli/image_convert.h"
#include "cli/network_flags.h"
#include "cli/workload.h"
#include "core/cached_layer.h"
#include "core/disk_chunk_cache.h"
#include "core/errno_status.h"
#include "core/file_blob_source.h"
#include "core/json_writer.h"
#include "core/layer_file_converter.h"
#include "core/layer_reader.h"
#include "core/layer_writer.h"
#include "core/log.h"
#include "core/node_writer.h"
#include "core/status_macros.h"
#include "fetch/auth.h"
#include "fetch/curl_http.h"
#include "fuse/layer_mount.h"
#include "fuse/mount_table.h"

namespace lazypull::cli {
namespace {

constexpr char kStageTag[] = "stage";

// A private scratch directory, removed (with whatever is mounted in it
// detached first by its users) when it goes.
class ScratchDir {
 public:
  static absl::StatusOr<std::unique_ptr<ScratchDir>> Create(
      const std::string& parent) {
    std::string base = parent;
    if (base.empty()) {
      const char* t = getenv("TMPDIR");
      base = t != nullptr && *t ? t : "/tmp";
    }
    std::string tmpl = base + "/lazypull-optimize-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      return ErrnoToStatus(errno, "creating a scratch dir in " + base);
    }
    return std::unique_ptr<ScratchDir>(new ScratchDir(tmpl));
  }
  ~ScratchDir() {
    size_t slash = path_.find_last_of('/');
    std::string parent = slash == 0 ? "/" : path_.substr(0, slash);
    ScopedFd pfd(open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!pfd.valid()) return;
    absl::Status st = RemoveTreeAt(pfd.get(), path_.substr(slash + 1), path_);
    if (!st.ok()) LogWarning("removing ", path_, ": ", st.message());
  }
  const std::string& path() const { return path_; }

 private:
  explicit ScratchDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

// Ends the process with 128 + the signal `signals` took.
std::function<void()> ExitOnSignal(SignalWatcher* signals) {
  return [signals] {
    LogError("interrupted by signal ", signals->signal());
    _exit(128 + signals->signal());
  };
}

// While it lives, a signal `signals` takes kills the workload (its process
// group, once started), detaches every mount under `scratch` (deepest
// first), removes it and ends the process (ExitOnSignal).
class ScratchOnSignal {
 public:
  ScratchOnSignal(SignalWatcher* signals, std::string scratch)
      : signals_(signals), scratch_(std::move(scratch)) {
    if (signals_ == nullptr) return;
    signals_->OnSignal([this] {
      const pid_t group = workload_group.load();
      if (group > 0) kill(-group, SIGKILL);
      const std::string under = scratch_ + "/";
      std::vector<MountEntry> mounts = ReadMountTable();
      for (auto it = mounts.rbegin(); it != mounts.rend(); ++it) {
        if (it->mount_point.rfind(under, 0) == 0) {
          umount2(it->mount_point.c_str(), MNT_DETACH);
        }
      }
      const size_t slash = scratch_.find_last_of('/');
      ScopedFd parent(open(slash == 0 ? "/" : scratch_.substr(0, slash).c_str(),
                           O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (parent.valid()) {
        (void)RemoveTreeAt(parent.get(), scratch_.substr(slash + 1), scratch_);
      }
      ExitOnSignal(signals_)();
    });
  }
  ~ScratchOnSignal() {
    if (signals_ != nullptr) signals_->OnSignal(ExitOnSignal(signals_));
  }
  ScratchOnSignal(const ScratchOnSignal&) = delete;
  ScratchOnSignal& operator=(const ScratchOnSignal&) = delete;

  // The running workload's process group (RunWorkload sets it).
  std::atomic<pid_t> workload_group{0};

 private:
  SignalWatcher* const signals_;
  const std::string scratch_;
};

// The files opened on each layer, first opens only, while `on`.
class AccessRecorder {
 public:
  explicit AccessRecorder(size_t layers) : order_(layers), seen_(layers) {}
  void Record(size_t layer, uint32_t inode) {
    if (!on_.load(std::memory_order_acquire)) return;
    absl::MutexLock l(&mu_);
    std::vector<bool>& s = seen_[layer];
    if (s.size() <= inode) s.resize(inode + 1);
    if (s[inode]) return;
    s[inode] = true;
    order_[layer].push_back(inode);
  }
  void Start() { on_.store(true, std::memory_order_release); }
  void Stop() { on_.store(false, std::memory_order_release); }
  std::vector<uint32_t> Order(size_t layer) {
    absl::MutexLock l(&mu_);
    return order_[layer];
  }

 private:
  std::atomic<bool> on_{false};
  absl::Mutex mu_;
  std::vector<std::vector<uint32_t>> order_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<bool>> seen_ ABSL_GUARDED_BY(mu_);
};

struct StagedLayer {
  std::string blob_path;
  Digest toc_digest;
};

// Serves `layers` (bottom first) as a writable overlay under `scratch`, runs
// the workload in it and returns the files each layer had opened.
absl::Status RecordWorkload(const std::vector<StagedLayer>& layers,
                            const ImageConfig& config, const OptimizeOptions& o,
                            const std::string& scratch,
                            std::atomic<pid_t>* workload_group,
                            OptimizeReport* report) {
  const size_t n = layers.size();
  ASSIGN_OR_RETURN(std::unique_ptr<DiskChunkCache> cache_u,
                   DiskChunkCache::Open(scratch + "/cache"));
  std::shared_ptr<DiskChunkCache> cache = std::move(cache_u);
  const std::string rw = scratch + "/rw", root = scratch + "/root";
  for (const std::string& d : {rw, root, scratch + "/layers"}) {
    if (mkdir(d.c_str(), 0755) != 0) {
      return ErrnoToStatus(errno, "mkdir " + d);
    }
  }
  if (mount("tmpfs", rw.c_str(), "tmpfs", 0, "mode=755") != 0) {
    return ErrnoToStatus(errno, "mounting a tmpfs at " + rw);
  }
  bool root_mounted = false;
  AccessRecorder recorder(n);
  std::vector<std::unique_ptr<ServedLayer>> served;
  std::vector<std::shared_ptr<const LayerReader>> readers;
  auto teardown = [&] {
    recorder.Stop();
    if (root_mounted && umount2(root.c_str(), 0) != 0) {
      umount2(root.c_str(), MNT_DETACH);
    }
    for (auto it = served.rbegin(); it != served.rend(); ++it) it->reset();
    served.clear();
    umount2(rw.c_str(), MNT_DETACH);
  };
  absl::Status st = [&]() -> absl::Status {
    for (const std::string& d : {rw + "/upper", rw + "/work"}) {
      if (mkdir(d.c_str(), 0755) != 0) {
        return ErrnoToStatus(errno, "mkdir " + d);
      }
    }
    std::vector<std::string> dirs;
    for (size_t i = 0; i < n; ++i) {
      ASSIGN_OR_RETURN(std::unique_ptr<FileBlobSource> src,
                       FileBlobSource::Open(layers[i].blob_path));
      LayerOpenOptions lo;
      lo.toc_digest = layers[i].toc_digest;
      ASSIGN_OR_RETURN(std::unique_ptr<LayerReader> reader,
                       LayerReader::Open(std::move(src), lo));
      readers.push_back(std::move(reader));
      LayerFsOptions fo;
      fo.state_name = layers[i].toc_digest.ToString();
      fo.state_digest = fo.state_name;
      fo.user_overlay_xattrs = false;
      fo.on_open = [&recorder, i](uint32_t inode) {
        recorder.Record(i, inode);
      };
      std::string dir = absl::StrCat(scratch, "/layers/", i);
      if (mkdir(dir.c_str(), 0755) != 0) {
        return ErrnoToStatus(errno, "mkdir " + dir);
      }
      ASSIGN_OR_RETURN(
          std::unique_ptr<ServedLayer> s,
          ServedLayer::Start(
              dir, std::make_shared<CachedLayer>(readers.back(), cache), fo,
              FuseServerOptions{}));
      served.push_back(std::move(s));
      dirs.push_back(dir);
    }
    RETURN_IF_ERROR(MountLayerStack(dirs, root, rw + "/upper", rw + "/work"));
    root_mounted = true;

    WorkloadSpec ws;
    ws.rootfs = root;
    ws.command = o.workload;
    ws.env = config.env;
    ws.working_dir = config.working_dir;
    ws.user = config.user;
    ws.period = o.period;
    ws.on_start = [&recorder] { recorder.Start(); };
    ws.running_group = workload_group;
    ws.open_file_soft_limit = OriginalOpenFileSoftLimit();
    LogInfo("optimize: running `", o.workload, "` for up to ",
            absl::FormatDuration(o.period));
    ASSIGN_OR_RETURN(WorkloadResult r, RunWorkload(ws));
    recorder.Stop();
    report->timed_out = r.timed_out;
    report->exit_code = r.exit_code;
    report->signal = r.signal;
    report->run_time = r.elapsed;
    report->recorded.assign(n, {});
    for (size_t i = 0; i < n; ++i) {
      const LayerIndex& index = readers[i]->index();
      for (uint32_t inode : recorder.Order(i)) {
        report->recorded[i].push_back(index.Path(index.inode(inode).dirent));
      }
    }
    return absl::OkStatus();
  }();
  teardown();
  return st;
}

absl::Status WriteRecord(const OptimizeOptions& o,
                         const OptimizeReport& report) {
  if (o.record_file.empty()) return absl::OkStatus();
  std::ofstream f(o.record_file, std::ios::trunc);
  for (size_t i = 0; i < report.recorded.size(); ++i) {
    for (const std::string& p : report.recorded[i]) {
      f << i << "\t" << absl::Utf8SafeCEscape(p) << "\n";
    }
  }
  f.close();
  if (!f) return ErrnoToStatus(errno ? errno : EIO, "write " + o.record_file);
  return absl::OkStatus();
}

void Progress(const OptimizeOptions& o, const std::string& line) {
  if (o.convert.progress) o.convert.progress(line);
}

std::string Describe(const OptimizeReport& r) {
  size_t files = 0;
  for (const auto& l : r.recorded) files += l.size();
  std::string how = r.timed_out ? "was stopped when the period ended"
                    : r.signal
                        ? absl::StrCat("was killed by signal ", r.signal)
                        : absl::StrCat("exited with status ", r.exit_code);
  return absl::StrCat(
      "the workload ", how, " after ",
      absl::FormatDuration(absl::Trunc(r.run_time, absl::Milliseconds(1))),
      "; ", files, " file(s) recorded");
}

// The staging conversion: eStargz at the fastest level, nothing prioritized.
ImageConvertOptions StageOptions(const OptimizeOptions& o,
                                 const std::string& scratch) {
  ImageConvertOptions so = o.convert;
  so.layer.compression = Compression::kGzip;
  so.layer.level = 1;
  so.prioritized_files = nullptr;
  so.temp_dir = scratch;
  if (o.convert.progress) {
    so.progress = [&o](const std::string& line) {
      o.convert.progress("stage: " + line);
    };
  }
  return so;
}

}  // namespace

std::vector<FlagSpec> WorkloadFlags() {
  return {
      {"workload", "'CMD ...'",
       "the command whose file accesses are recorded, run with /bin/sh -c "
       "in the image (its Env, WorkingDir and User; /proc, a minimal /dev "
       "and a tmpfs /tmp provided)"},
      {"period", "SECONDS",
       "record for this long after the start, or until the workload exits "
       "(default 10)"},
      {"record", "FILE",
       "also write the recorded files, \"LAYER<TAB>PATH\" per line in "
       "access order (PATH C-escaped)"},
  };
}

absl::Status WorkloadOptionsFromArgs(const ParsedArgs& args,
                                     OptimizeOptions* o) {
  auto w = args.Get("workload");
  if (!w || w->empty()) {
    return absl::InvalidArgumentError("--workload 'CMD ...' is required");
  }
  o->workload = *w;
  if (auto p = args.Get("period")) {
    double s;
    if (!absl::SimpleAtod(*p, &s) || !(s > 0) || s > 86400) {
      return absl::InvalidArgumentError(
          absl::StrCat("--period: \"", *p, "\" is not a number of seconds"));
    }
    o->period = absl::Seconds(s);
  }
  o->record_file = args.GetOr("record", "");
  return absl::OkStatus();
}

absl::StatusOr<OptimizeReport> OptimizeImage(ImageReader* source,
                                             ImageWriter* destination,
                                             const OptimizeOptions& o) {
  ASSIGN_OR_RETURN(std::unique_ptr<ScratchDir> scratch,
                   ScratchDir::Create(o.work_dir));
  ScratchOnSignal cleanup(o.signals, scratch->path());
  ImageLocation stage;
  stage.kind = ImageLocation::Kind::kOciLayout;
  stage.dir = scratch->path() + "/stage";
  stage.tag = kStageTag;
  const RegistryOptions no_registry;

  // 1. Stage.
  ImageConvertReport staged;
  {
    ASSIGN_OR_RETURN(std::unique_ptr<ImageWriter> w,
                     OpenImageWriter(stage, no_registry));
    ASSIGN_OR_RETURN(staged, ConvertImage(source, w.get(),
                                          StageOptions(o, scratch->path())));
  }
  const Platform host = Platform::Host();
  const ConvertedManifest* run_on = nullptr;
  for (const ConvertedManifest& m : staged.manifests) {
    if (host.Matches(m.platform)) {
      run_on = &m;
      break;
    }
  }
  if (run_on == nullptr && staged.manifests.size() == 1) {
    run_on = &staged.manifests[0];
  }
  if (run_on == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(source->Describe(), " has no manifest for ", host.String(),
                     " to run the workload on"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ImageReader> stage_reader,
                   OpenImageReader(stage, no_registry));
  ASSIGN_OR_RETURN(FetchedManifest fm, stage_reader->Manifest(run_on->to));
  ASSIGN_OR_RETURN(ImageManifest manifest, ParseImageManifest(fm.bytes));
  ASSIGN_OR_RETURN(std::string config_json,
                   stage_reader->Blob(manifest.config));
  ASSIGN_OR_RETURN(ImageConfig config, ParseImageConfig(config_json));
  std::vector<StagedLayer> layers;
  for (const ConvertedLayer& l : run_on->layers) {
    if (l.to.annotations.count(kTocDigestAnnotation) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", l.from.digest.ToString(), " of ", source->Describe(),
          " is not a tar layer; optimize cannot run the workload on it"));
    }
    layers.push_back(
        {absl::StrCat(stage.dir, "/blobs/sha256/", l.to.digest.Hex()),
         l.toc_digest});
  }

  // 2. Record.
  OptimizeReport report;
  Progress(o, absl::StrCat("recording `", o.workload, "` on ",
                           run_on->platform.String(), " (", layers.size(),
                           " layer(s))"));
  RETURN_IF_ERROR(RecordWorkload(layers, config, o, scratch->path(),
                                 &cleanup.workload_group, &report));
  Progress(o, Describe(report));
  RETURN_IF_ERROR(WriteRecord(o, report));

  // 3. Rewrite.
  ImageConvertOptions fo = o.convert;
  fo.temp_dir = scratch->path();
  const Platform recorded_platform = run_on->platform;
  bool others = false;
  fo.prioritized_files = [&](const Platform& p,
                             size_t i) -> std::vector<std::string> {
    if (p.String() != recorded_platform.String()) {
      if (!others) {
        Progress(o, absl::StrCat(p.String(),
                                 ": converted without optimization (the "
                                 "workload ran on ",
                                 recorded_platform.String(), ")"));
      }
      others = true;
      return {};
    }
    return i < report.recorded.size() ? report.recorded[i]
                                      : std::vector<std::string>{};
  };
  ASSIGN_OR_RETURN(report.image,
                   ConvertImage(stage_reader.get(), destination, fo));
  return report;
}

absl::StatusOr<OptimizeReport> OptimizeLayerFile(const std::string& in_path,
                                                 const std::string& out_path,
                                                 const OptimizeOptions& o) {
  ASSIGN_OR_RETURN(std::unique_ptr<ScratchDir> scratch,
                   ScratchDir::Create(o.work_dir));
  ScratchOnSignal cleanup(o.signals, scratch->path());
  const std::string staged_path = scratch->path() + "/layer";
  LayerWriterOptions so = o.convert.layer;
  so.compression = Compression::kGzip;
  so.level = 1;
  so.prioritized_files.clear();
  ASSIGN_OR_RETURN(LayerWriteResult staged,
                   ConvertLayerFile(in_path, staged_path, so));
  OptimizeReport report;
  RETURN_IF_ERROR(RecordWorkload({{staged_path, staged.toc_digest}},
                                 ImageConfig{}, o, scratch->path(),
                                 &cleanup.workload_group, &report));
  Progress(o, Describe(report));
  RETURN_IF_ERROR(WriteRecord(o, report));
  LayerWriterOptions fo = o.convert.layer;
  fo.prioritized_files = report.recorded[0];
  RETURN_IF_ERROR(ConvertLayerFile(staged_path, out_path, fo).status());
  return report;
}

namespace {

CommandSpec OptimizeSpec() {
  CommandSpec s = {
      "optimize",
      "SRC DST --workload 'CMD ...' [--period SECONDS] [--format ...] ...",
      "Rewrite an image so that what a workload reads is fetched first.",
      "SRC and DST are image references (registry[:port]/repo[:tag]),\n"
      "OCI layouts (oci:DIR[:TAG], as skopeo spells them), or single layer\n"
      "files (layer:FILE; then both are). The image is converted to eStargz,\n"
      "mounted lazily through lazypull's own FUSE filesystem, and the\n"
      "workload run in it (a writable overlay that is thrown away; mount\n"
      "and pid namespaces of its own, pivot_root, Docker's default\n"
      "capabilities) with the image config's Env, WorkingDir and User; every\n"
      "file it opens is recorded, in order, from inside the filesystem,\n"
      "until it exits or --period ends. The layers are then written again\n"
      "with those files before .prefetch.landmark, and DST is pushed or\n"
      "written. Only this machine's platform is kept. Prints a JSON summary.",
      {"SRC", "DST"},
      WorkloadFlags(),
  };
  for (FlagSpec& f : LayerWriterFlags()) {
    if (f.name != "prioritize") s.flags.push_back(f);
  }
  for (FlagSpec& f : NetworkFlags()) {
    if (f.name != "platform") s.flags.push_back(f);
  }
  return s;
}

constexpr char kLayerPrefix[] = "layer:";

bool IsLayerLocation(const std::string& s) {
  return s.rfind(kLayerPrefix, 0) == 0;
}

}  // namespace

std::unique_ptr<SignalWatcher> TerminationCleanup() {
  auto w = std::make_unique<SignalWatcher>(BlockTerminationSignals());
  w->OnSignal(ExitOnSignal(w.get()));
  return w;
}

int OptimizeMain(int argc, char** argv) {
  const std::unique_ptr<SignalWatcher> signals = TerminationCleanup();
  int code;
  const CommandSpec spec = OptimizeSpec();
  std::optional<ParsedArgs> args = ParseOrExit(spec, argc, argv, &code);
  if (!args) return code;
  auto usage = [&](const absl::Status& st) { return UsageError(spec, st); };
  OptimizeOptions o;
  if (absl::Status st = WorkloadOptionsFromArgs(*args, &o); !st.ok()) {
    return usage(st);
  }
  o.signals = signals.get();
  absl::StatusOr<LayerWriterOptions> lo = LayerWriterOptionsFromArgs(*args);
  if (!lo.ok()) return usage(lo.status());
  o.convert.layer = *lo;
  o.convert.only_platform = Platform::Host();
  o.convert.progress = StderrProgress("optimize");
  const std::string& src = args->positionals[0];
  const std::string& dst = args->positionals[1];
  if (geteuid() != 0) {
    return Fail("optimize", absl::PermissionDeniedError(
                                "optimize mounts FUSE and overlayfs and runs "
                                "the workload in namespaces: run it as root"));
  }

  absl::StatusOr<OptimizeReport> r;
  if (IsLayerLocation(src) || IsLayerLocation(dst)) {
    if (!IsLayerLocation(src) || !IsLayerLocation(dst)) {
      return usage(absl::InvalidArgumentError(
          "layer:FILE goes with layer:FILE (SRC and DST both single layers)"));
    }
    r = OptimizeLayerFile(src.substr(strlen(kLayerPrefix)),
                          dst.substr(strlen(kLayerPrefix)), o);
  } else {
    absl::StatusOr<ImageLocation> sl = ImageLocation::Parse(src);
    if (!sl.ok()) return usage(sl.status());
    absl::StatusOr<ImageLocation> dl = ImageLocation::Parse(dst);
    if (!dl.ok()) return usage(dl.status());
    absl::StatusOr<std::unique_ptr<RegistrySession>> session =
        OpenRegistrySession(*args);
    if (!session.ok()) return UsageErrorOrFail(spec, session.status());
    const RegistryOptions& ro = (*session)->options;
    absl::StatusOr<std::unique_ptr<ImageReader>> reader =
        OpenImageReader(*sl, ro);
    if (!reader.ok()) return Fail("optimize", reader.status());
    absl::StatusOr<std::unique_ptr<ImageWriter>> writer =
        OpenImageWriter(*dl, ro);
    if (!writer.ok()) return Fail("optimize", writer.status());
    r = OptimizeImage(reader->get(), writer->get(), o);
  }
  if (!r.ok()) return Fail("optimize", r.status());

  JsonWriter w(1);
  w.BeginObject();
  w.Key("workload").BeginObject();
  w.Key("timed_out").Bool(r->timed_out);
  w.Key("exit_code").Int(r->exit_code);
  w.Key("signal").Int(r->signal);
  w.Key("seconds").Double(absl::ToDoubleSeconds(r->run_time));
  w.EndObject();
  w.Key("recorded").BeginArray();
  for (const auto& layer : r->recorded) w.Uint(layer.size());
  w.EndArray();
  if (!r->image.manifests.empty()) {
    w.Key("image");
    WriteConvertReport(r->image, dst, &w);
  }
  w.EndObject();
  std::cout << w.str() << "\n";
  return 0;
}

}  // namespace lazypull::cli
