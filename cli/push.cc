// `lazypull push SRC IMAGE_REF`: an OCI layout image or a root filesystem
// directory, its layers written as eStargz or zstd:chunked, pushed to a
// registry (fetch/image_converter.h does the work).
#include <sys/stat.h>

#include <iostream>
#include <map>
#include <memory>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/image_convert.h"
#include "cli/network_flags.h"
#include "fetch/auth.h"
#include "fetch/curl_http.h"
#include "fetch/image_converter.h"
#include "fetch/image_store.h"
#include "fetch/registry.h"

namespace lazypull::cli {
namespace {

CommandSpec Spec() {
  CommandSpec s = {
      "push",
      "SRC IMAGE_REF [--format estargz|zstd:chunked] [--prioritize FILE] "
      "[--chunk-size N] [--min-chunk-size N] [--level N] [--threads N] ...",
      "Push an OCI layout image or a directory to a registry as eStargz or "
      "zstd:chunked.",
      "SRC is an OCI image layout, oci:DIR[:TAG] (as skopeo spells it), or a\n"
      "root filesystem directory, pushed as a one-layer image: a sorted,\n"
      "deterministic tar of it (owners, modes, xattrs, devices, hardlinks;\n"
      "symlinks never followed; sockets skipped) with a config of\n"
      "--platform (default: this machine's). IMAGE_REF is\n"
      "[docker://]registry[:port]/repo[:tag|@digest] (an oci:DIR[:TAG]\n"
      "works too). Every layer is rewritten as `lazypull convert` does; the\n"
      "config gets the new diff_ids, descriptors the TOC digest annotations.\n"
      "--prioritize FILE (paths in access order, one per line) is applied\n"
      "to every layer: each layer puts the listed files it holds before\n"
      ".prefetch.landmark (those it lacks are skipped). For an OCI layout of\n"
      "several platforms, --platform keeps only that one (default: all).\n"
      "Blobs the registry already has are not uploaded again. Progress goes\n"
      "to stderr; a JSON summary (digests per layer, TOC digests, the\n"
      "image's digest) to stdout.",
      {"SRC", "IMAGE_REF"},
      LayerWriterFlags(),
  };
  for (FlagSpec& f : NetworkFlags()) {
    if (f.name == "platform") {
      f.help =
          "a directory's platform (default: this machine's); for an OCI "
          "layout, the only platform pushed (default: all)";
    }
    s.flags.push_back(f);
  }
  return s;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

int PushMain(int argc, char** argv) {
  int code;
  const CommandSpec spec = Spec();
  std::optional<ParsedArgs> args = ParseOrExit(spec, argc, argv, &code);
  if (!args) return code;
  auto usage = [&](const absl::Status& st) { return UsageError(spec, st); };
  const std::string& src_text = args->positionals[0];
  std::optional<ImageLocation> src_layout;
  if (absl::StartsWith(src_text, "oci:")) {
    absl::StatusOr<ImageLocation> l = ImageLocation::Parse(src_text);
    if (!l.ok()) return usage(l.status());
    src_layout = *l;
  } else if (!IsDirectory(src_text)) {
    return usage(absl::InvalidArgumentError(absl::StrCat(
        "SRC \"", src_text,
        "\" is neither oci:DIR[:TAG] nor a directory (to convert an image "
        "from a registry, use `lazypull image convert`)")));
  }
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
  o.layer.prioritized_files.clear();
  const std::vector<std::string> prioritized = lo->prioritized_files;
  if (!prioritized.empty()) {
    o.prioritized_files = [&prioritized](const Platform&, size_t) {
      return prioritized;
    };
  }
  o.progress = StderrProgress("push");

  std::unique_ptr<ImageReader> reader;
  if (src_layout) {
    if (args->Has("platform")) o.only_platform = ro.platform;
    absl::StatusOr<std::unique_ptr<ImageReader>> r =
        OpenImageReader(*src_layout, ro);
    if (!r.ok()) return Fail("push", r.status());
    reader = std::move(*r);
  } else {
    RootfsImageOptions rio;
    rio.platform = ro.platform;
    rio.warn = [](const std::string& w) {
      std::cerr << "lazypull push: warning: " << w << "\n";
    };
    std::cerr << "lazypull push: making the layer tar of " << src_text << "\n";
    absl::StatusOr<std::unique_ptr<ImageReader>> r =
        OpenRootfsImageReader(src_text, rio);
    if (!r.ok()) return Fail("push", r.status());
    reader = std::move(*r);
  }
  absl::StatusOr<std::unique_ptr<ImageWriter>> writer =
      OpenImageWriter(*dst, ro);
  if (!writer.ok()) return Fail("push", writer.status());
  absl::StatusOr<ImageConvertReport> r =
      ConvertImage(reader.get(), writer->get(), o);
  if (!r.ok()) return Fail("push", r.status());

  // A listed path no layer holds is most likely a typo.
  if (!prioritized.empty()) {
    std::map<std::string, size_t> missing;
    size_t layers = 0;
    for (const ConvertedManifest& m : r->manifests) {
      for (const ConvertedLayer& l : m.layers) {
        if (!l.converted) continue;
        ++layers;
        for (const std::string& p : l.missing_prioritized) ++missing[p];
      }
    }
    for (const auto& [p, n] : missing) {
      if (n == layers) {
        std::cerr << "lazypull push: warning: prioritized file \"" << p
                  << "\" is in no layer; skipped\n";
      }
    }
  }
  std::cout << ConvertReportJson(*r, dst->String()) << "\n";
  return 0;
}

}  // namespace lazypull::cli
