#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/json_writer.h"
#include "core/layer_json.h"

namespace lazypull::cli {
namespace {

const CommandSpec kSpec = {
    "inspect",
    "LAYER [--json] [--toc-digest sha256:...]",
    "Show a lazily-pullable layer's format, footer, TOC digest, entry and "
    "chunk counts and prefetch landmark.",
    "LAYER is an eStargz (51-byte footer), legacy stargz (47-byte footer) or\n"
    "zstd:chunked (40- or 64-byte footer) blob. inspect reads only the footer\n"
    "and the TOC; `lazypull verify` checks the contents.",
    {"LAYER"},
    {
        {"json", "", "print JSON, with every normalized entry"},
        {"toc-digest", "DIGEST",
         "refuse the layer unless its TOC has this digest"},
    },
};

}  // namespace

int InspectMain(int argc, char** argv) {
  int code;
  std::optional<ParsedArgs> args = ParseOrExit(kSpec, argc, argv, &code);
  if (!args) return code;
  absl::StatusOr<std::unique_ptr<LayerReader>> r =
      OpenLocalLayer(args->positionals[0], args->Get("toc-digest"));
  if (!r.ok()) return Fail("inspect", r.status());
  const LayerReader& layer = **r;
  const LayerIndex& idx = layer.index();
  uint64_t files = 0;
  for (const Inode& n : idx.inodes()) files += n.type == EntryType::kReg;

  if (args->Has("json")) {
    JsonWriter w(1);
    w.BeginObject();
    w.Key("format").String(LayerFormatName(layer.format()));
    w.Key("footer_size")
        .Uint(IsZstd(layer.footer().format) ? layer.footer().footer_size - 8
                                            : layer.footer().footer_size);
    w.Key("toc_digest").String(layer.toc_digest().ToString());
    w.Key("toc_offset").Uint(layer.footer().toc_offset);
    w.Key("toc_compressed_size").Uint(layer.footer().toc_compressed_size);
    w.Key("toc_uncompressed_size").Uint(layer.toc_size());
    w.Key("toc_entry_count").Uint(idx.toc_entry_count());
    w.Key("file_count").Uint(files);
    w.Key("chunk_count").Uint(idx.chunks().size());
    w.Key("prefetch_landmark_offset");
    if (idx.prefetch_landmark_offset()) {
      w.Uint(*idx.prefetch_landmark_offset());
    } else {
      w.Null();
    }
    w.Key("no_prefetch_landmark").Bool(idx.has_no_prefetch_landmark());
    w.Key("blob_size").Uint(layer.blob_size());
    w.Key("entries");
    WriteEntriesJson(idx, w);
    w.EndObject();
    std::cout << w.str() << "\n";
    return 0;
  }
  const Footer& f = layer.footer();
  std::string dialect =
      f.format == LayerFormat::kEstargz        ? "51-byte eStargz footer"
      : f.format == LayerFormat::kStargzLegacy ? "47-byte legacy stargz footer"
      : f.format == LayerFormat::kZstdChunked
          ? "40-byte zstd:chunked footer (stargz dialect)"
          : "64-byte zstd:chunked footer (containers/storage dialect)";
  std::cout << "format:           " << LayerFormatName(f.format) << " ("
            << dialect << ")\n"
            << "blob size:        " << layer.blob_size() << "\n"
            << "toc digest:       " << layer.toc_digest().ToString() << "\n"
            << "toc:              offset " << f.toc_offset << ", "
            << f.toc_compressed_size << " bytes compressed, "
            << layer.toc_size() << " bytes of JSON\n"
            << "toc entries:      " << idx.toc_entry_count() << "\n"
            << "regular files:    " << files << " (" << idx.total_file_bytes()
            << " bytes)\n"
            << "chunks:           " << idx.chunks().size() << "\n"
            << "prefetch:         ";
  if (idx.prefetch_landmark_offset()) {
    std::cout << "landmark at offset " << *idx.prefetch_landmark_offset()
              << " (" << idx.prioritized_files().size()
              << " prioritized files)\n";
  } else if (idx.has_no_prefetch_landmark()) {
    std::cout << "none (no-prefetch landmark)\n";
  } else {
    std::cout << "none (no landmark)\n";
  }
  return 0;
}

}  // namespace lazypull::cli
