#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/layer_verifier.h"

namespace lazypull::cli {
namespace {

const CommandSpec kSpec = {
    "verify",
    "LAYER [--toc-digest sha256:...] [--diff-id sha256:...]",
    "Check a layer end to end: TOC digest, every chunk, every file, the TOC\n"
    "against the tar stream, DiffID.",
    "Exits 1 naming the first bad file, chunk and offset, or the entry\n"
    "whose TOC metadata differs from its tar header (what a lazy mount\n"
    "would show against what a full pull unpacks). The DiffID (sha256 of\n"
    "the uncompressed stream) is printed always and compared when given.",
    {"LAYER"},
    {
        {"toc-digest", "DIGEST",
         "expected TOC digest (the toc.digest annotation)"},
        {"diff-id", "DIGEST",
         "expected DiffID (the image config's diff_ids entry)"},
    },
};

}  // namespace

int VerifyMain(int argc, char** argv) {
  int code;
  std::optional<ParsedArgs> args = ParseOrExit(kSpec, argc, argv, &code);
  if (!args) return code;
  std::optional<Digest> want_diff;
  if (auto s = args->Get("diff-id")) {
    absl::StatusOr<Digest> d = Digest::Parse(*s);
    if (!d.ok()) {
      return Fail("verify", absl::InvalidArgumentError(absl::StrCat(
                                "--diff-id: ", d.status().message())));
    }
    want_diff = *d;
  }
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenLocalLayer(args->positionals[0], args->Get("toc-digest"));
  if (!r.ok()) return Fail("verify", r.status());
  absl::StatusOr<VerifyResult> v = VerifyLayer(**r);
  if (!v.ok()) return Fail("verify", v.status());
  std::cout << "toc digest:  " << (*r)->toc_digest().ToString()
            << (args->Has("toc-digest") ? " (matches)" : " (not checked)")
            << "\n"
            << "diff id:     " << v->diff_id.ToString() << "\n"
            << "blob digest: " << v->blob_digest.ToString() << "\n"
            << "verified:    " << v->chunks_verified << " chunks, "
            << v->files_verified << " files, " << v->uncompressed_size
            << " uncompressed bytes\n";
  if (want_diff && *want_diff != v->diff_id) {
    return Fail("verify", absl::DataLossError(absl::StrCat(
                              "DiffID mismatch: the layer decompresses to ",
                              v->diff_id.ToString(), " but ",
                              want_diff->ToString(), " was expected")));
  }
  std::cout << "OK\n";
  return 0;
}

}  // namespace lazypull::cli
