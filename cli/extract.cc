#include <unistd.h>

#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/extractor.h"

namespace lazypull::cli {
namespace {

const CommandSpec kSpec = {
    "extract",
    "LAYER DIR [--toc-digest sha256:...]",
    "Verified full extraction of a layer into DIR, overlay-ready.",
    "DIR must be empty or absent. Owners (as root), modes, xattrs, devices,\n"
    "fifos, hardlinks, symlinks and times are applied; whiteouts become\n"
    "overlayfs whiteouts (char 0:0) and opaque directories get\n"
    "trusted.overlay.opaque=y. Every byte is verified before it is written;\n"
    "a layer whose names climb above its root is refused.",
    {"LAYER", "DIR"},
    {
        {"toc-digest", "DIGEST",
         "refuse the layer unless its TOC has this digest"},
        {"no-same-owner", "", "do not apply owners (default when not root)"},
        {"threads", "N", "worker threads (default: number of CPUs)"},
    },
};

}  // namespace

int ExtractMain(int argc, char** argv) {
  int code;
  std::optional<ParsedArgs> args = ParseOrExit(kSpec, argc, argv, &code);
  if (!args) return code;
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenLocalLayer(args->positionals[0], args->Get("toc-digest"));
  if (!r.ok()) return Fail("extract", r.status());
  ExtractOptions opts;
  opts.same_owner = geteuid() == 0 && !args->Has("no-same-owner");
  opts.threads =
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (auto t = args->Get("threads")) {
    opts.threads = std::atoi(t->c_str());
    if (opts.threads < 1 || opts.threads > 256) {
      return Fail("extract", absl::InvalidArgumentError(
                                 "--threads must be between 1 and 256"));
    }
  }
  absl::Status st = ExtractLayer(**r, args->positionals[1], opts);
  if (!st.ok()) return Fail("extract", st);
  std::cout << "extracted " << (*r)->index().inodes().size() << " inodes into "
            << args->positionals[1] << "\n";
  return 0;
}

}  // namespace lazypull::cli
