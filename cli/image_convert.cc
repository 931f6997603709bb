// `lazypull image convert SRC DST`: an image (registry or OCI layout) with
// its layers rewritten as eStargz or zstd:chunked, written to another
// location (fetch/image_converter.h does the work).
#include "cli/image_convert.h"

#include <unistd.h>

#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/network_flags.h"
#include "cli/optimize.h"
#include "core/json_writer.h"
#include "fetch/auth.h"
#include "fetch/curl_http.h"
#include "fetch/reference.h"
#include "fetch/registry.h"

namespace lazypull::cli {
namespace {

CommandSpec ConvertSpec() {
  CommandSpec s = {
      "image convert",
      "SRC DST [--format estargz|zstd:chunked] [--platform OS/ARCH] "
      "[--chunk-size N] [--min-chunk-size N] [--level N] [--threads N] ...",
      "Convert an image's layers to eStargz or zstd:chunked and write it to "
      "DST.",
      "SRC and DST are image references\n"
      "([docker://]registry[:port]/repo[:tag|@digest]) or OCI layouts\n"
      "(oci:DIR[:TAG], as skopeo spells them; DST's directory is created as\n"
      "needed). Every layer (gzip, zstd, plain tar, or eStargz /\n"
      "zstd:chunked again) is decompressed and rewritten with `lazypull\n"
      "convert`'s writer; its descriptor gets the TOC digest and\n"
      "uncompressed-size annotations, the config its new diff_ids (no other\n"
      "field changes), manifests and indexes keep their own fields.\n"
      "zstd:chunked turns Docker media types into OCI ones. Without\n"
      "--platform every platform of an index is converted; with it, only\n"
      "that one is kept. Blobs DST already has are not sent again, and\n"
      "between two repositories of one registry unchanged blobs are\n"
      "mounted. Progress goes to stderr; a JSON summary to stdout.\n\n"
      "With --workload, this machine's platform is optimized as `lazypull\n"
      "optimize` does (the workload's file accesses recorded and put before\n"
      ".prefetch.landmark); the other platforms are converted without\n"
      "optimization, saying so. That needs root.",
      {"SRC", "DST"},
      {},
  };
  for (FlagSpec& f : LayerWriterFlags()) {
    // One list of paths cannot name files of every layer of every platform:
    // prioritizing is `optimize`'s job (or `push --prioritize`).
    if (f.name != "prioritize") s.flags.push_back(f);
  }
  for (FlagSpec& f : NetworkFlags()) {
    if (f.name == "platform") {
      f.help =
          "keep only this platform of a multi-platform image (default: all)";
    }
    s.flags.push_back(f);
  }
  // With --workload, `optimize`'s recording for this machine's platform.
  for (FlagSpec& f : WorkloadFlags()) s.flags.push_back(f);
  return s;
}

int ImageConvertMain(int argc, char** argv) {
  // (Before any thread: a signal during --workload cleans up its mounts.)
  const std::unique_ptr<SignalWatcher> signals = TerminationCleanup();
  int code;
  const CommandSpec spec = ConvertSpec();
  std::optional<ParsedArgs> args = ParseOrExit(spec, argc, argv, &code);
  if (!args) return code;
  auto usage = [&](const absl::Status& st) { return UsageError(spec, st); };
  absl::StatusOr<ImageLocation> src =
      ImageLocation::Parse(args->positionals[0]);
  if (!src.ok()) return usage(src.status());
  absl::StatusOr<ImageLocation> dst =
      ImageLocation::Parse(args->positionals[1]);
  if (!dst.ok()) return usage(dst.status());
  absl::StatusOr<LayerWriterOptions> lo = LayerWriterOptionsFromArgs(*args);
  if (!lo.ok()) return usage(lo.status());

  absl::StatusOr<std::unique_ptr<RegistrySession>> session =
      OpenRegistrySession(*args);
  if (!session.ok()) return UsageErrorOrFail(spec, session.status());
  const RegistryOptions& ro = (*session)->options;
  ImageConvertOptions o;
  o.layer = *lo;
  if (args->Has("platform")) o.only_platform = ro.platform;
  o.progress = StderrProgress("image convert");
  o.mount_from_repository = MountSourceRepository(*src, *dst);

  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      OpenImageReader(*src, ro);
  if (!reader.ok()) return Fail("image convert", reader.status());
  absl::StatusOr<std::unique_ptr<ImageWriter>> writer =
      OpenImageWriter(*dst, ro);
  if (!writer.ok()) return Fail("image convert", writer.status());
  if (args->Has("workload")) {
    OptimizeOptions oo;
    oo.convert = o;
    oo.signals = signals.get();
    if (absl::Status st = WorkloadOptionsFromArgs(*args, &oo); !st.ok()) {
      return usage(st);
    }
    if (geteuid() != 0) {
      return Fail("image convert",
                  absl::PermissionDeniedError(
                      "--workload mounts FUSE and overlayfs and runs the "
                      "workload in namespaces: run it as root"));
    }
    absl::StatusOr<OptimizeReport> r =
        OptimizeImage(reader->get(), writer->get(), oo);
    if (!r.ok()) return Fail("image convert", r.status());
    std::cout << ConvertReportJson(r->image, dst->String()) << "\n";
    return 0;
  }
  absl::StatusOr<ImageConvertReport> r =
      ConvertImage(reader->get(), writer->get(), o);
  if (!r.ok()) return Fail("image convert", r.status());
  std::cout << ConvertReportJson(*r, dst->String()) << "\n";
  return 0;
}

}  // namespace

std::string ConvertReportJson(const ImageConvertReport& r,
                              const std::string& destination) {
  JsonWriter w(1);
  WriteConvertReport(r, destination, &w);
  return w.Release();
}

void WriteConvertReport(const ImageConvertReport& r,
                        const std::string& destination, JsonWriter* out) {
  JsonWriter& w = *out;
  w.BeginObject();
  w.Key("destination").String(destination);
  w.Key("digest").String(r.root.digest.ToString());
  w.Key("media_type").String(r.root.media_type);
  w.Key("uploaded").Uint(r.blobs_uploaded);
  w.Key("skipped").Uint(r.blobs_skipped);
  w.Key("manifests").BeginArray();
  for (const ConvertedManifest& m : r.manifests) {
    w.BeginObject();
    w.Key("platform").String(m.platform.String());
    w.Key("from").String(m.from.digest.ToString());
    w.Key("digest").String(m.to.digest.ToString());
    w.Key("layers").BeginArray();
    for (const ConvertedLayer& l : m.layers) {
      w.BeginObject();
      w.Key("from").String(l.from.digest.ToString());
      w.Key("digest").String(l.to.digest.ToString());
      w.Key("media_type").String(l.to.media_type);
      w.Key("size").Int(l.to.size);
      if (l.converted) w.Key("toc_digest").String(l.toc_digest.ToString());
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
}

std::function<void(const std::string&)> StderrProgress(const std::string& cmd) {
  return [cmd](const std::string& line) {
    std::cerr << "lazypull " << cmd << ": " << line << "\n";
  };
}

std::string MountSourceRepository(const ImageLocation& src,
                                  const ImageLocation& dst) {
  if (src.kind != ImageLocation::Kind::kRegistry ||
      dst.kind != ImageLocation::Kind::kRegistry) {
    return "";
  }
  absl::StatusOr<ImageReference> s = ImageReference::Parse(src.reference);
  absl::StatusOr<ImageReference> d = ImageReference::Parse(dst.reference);
  if (!s.ok() || !d.ok() || s->ApiHost() != d->ApiHost() ||
      s->repository == d->repository) {
    return "";
  }
  return s->repository;
}

int ImageMain(int argc, char** argv) {
  const std::string usage =
      "usage: lazypull image SUBCOMMAND [ARGS...]\n\n"
      "subcommands:\n"
      "  convert   convert an image's layers to eStargz / zstd:chunked\n\n"
      "Run 'lazypull image SUBCOMMAND --help' for its options.\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  const std::string sub = argv[1];
  if (sub == "-h" || sub == "--help" || sub == "help") {
    std::cout << usage;
    return 0;
  }
  if (sub == "convert") return ImageConvertMain(argc - 1, argv + 1);
  std::cerr << "lazypull image: unknown subcommand '" << sub << "'\n\n"
            << usage;
  return 2;
}

}  // namespace lazypull::cli
