#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/file_blob_source.h"
#include "core/status_macros.h"

namespace lazypull::cli {

std::optional<ParsedArgs> ParseOrExit(const CommandSpec& spec, int argc,
                                      char** argv, int* exit_code) {
  absl::StatusOr<ParsedArgs> args = Parse(spec, argc, argv);
  if (!args.ok()) {
    std::cerr << "lazypull " << spec.name << ": " << args.status().message()
              << "\n\n"
              << Usage(spec);
    *exit_code = 2;
    return std::nullopt;
  }
  if (args->help) {
    std::cout << Usage(spec);
    *exit_code = 0;
    return std::nullopt;
  }
  return *std::move(args);
}

absl::StatusOr<std::unique_ptr<LayerReader>> OpenLocalLayer(
    const std::string& path, const std::optional<std::string>& toc_digest) {
  LayerOpenOptions opts;
  if (toc_digest) {
    absl::StatusOr<Digest> d = Digest::Parse(*toc_digest);
    if (!d.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--toc-digest: ", d.status().message()));
    }
    opts.toc_digest = *d;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<FileBlobSource> src,
                   FileBlobSource::Open(path));
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      LayerReader::Open(std::move(src), opts);
  if (!r.ok()) {
    return absl::Status(r.status().code(),
                        absl::StrCat(path, ": ", r.status().message()));
  }
  return r;
}

int Fail(const std::string& cmd, const absl::Status& status) {
  std::cerr << "lazypull " << cmd << ": " << status.message() << "\n";
  return 1;
}

}  // namespace lazypull::cli
