// `lazypull convert`: a tar (plain, gzip or zstd) or an existing eStargz /
// zstd:chunked layer in, an eStargz or zstd:chunked layer out
// (core/layer_writer.h does the work).
#include <cerrno>
#include <fstream>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "core/compressor.h"
#include "core/errno_status.h"
#include "core/json_writer.h"
#include "core/layer_file_converter.h"
#include "core/layer_writer.h"
#include "core/status_macros.h"

namespace lazypull::cli {
namespace {

const CommandSpec kSpec = {
    "convert",
    "IN OUT [--format estargz|zstd:chunked] [--chunk-size N] "
    "[--min-chunk-size N] [--level N] "
    "[--prioritize FILE] [--threads N]",
    "Convert a tar, tar.gz, tar.zst, eStargz or zstd:chunked layer into a "
    "lazily-pullable eStargz or zstd:chunked layer.",
    "IN's kind is detected from its first bytes. An eStargz or zstd:chunked\n"
    "input is decompressed whole and its old TOC and landmarks dropped, so a\n"
    "layer can be re-optimized. The output is byte-identical for the same\n"
    "input and options, whatever --threads is. Prints one JSON object:\n"
    "toc_digest, diff_id, uncompressed_size, blob_digest, blob_size and the\n"
    "annotations the layer's manifest descriptor needs.",
    {"IN", "OUT"},
    LayerWriterFlags(),
};

absl::StatusOr<uint64_t> ParseSize(const std::string& flag,
                                   absl::string_view s) {
  uint64_t mult = 1;
  if (!s.empty()) {
    char last = s.back();
    if (last == 'K' || last == 'k') mult = 1 << 10;
    if (last == 'M' || last == 'm') mult = 1 << 20;
    if (last == 'G' || last == 'g') mult = 1 << 30;
    if (mult != 1) s.remove_suffix(1);
  }
  uint64_t v;
  if (!absl::SimpleAtoi(s, &v) || v > (uint64_t{1} << 40)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": \"", s, "\" is not a size"));
  }
  return v * mult;
}

absl::StatusOr<std::vector<std::string>> ReadPrioritized(
    const std::string& path) {
  std::ifstream f(path);
  if (!f) return ErrnoToStatus(errno ? errno : ENOENT, "open " + path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    absl::string_view l = absl::StripSuffix(line, "\r");
    if (!l.empty()) out.emplace_back(l);
  }
  if (f.bad()) return ErrnoToStatus(EIO, "read " + path);
  return out;
}

}  // namespace

std::vector<FlagSpec> LayerWriterFlags() {
  return {
      {"format", "FORMAT", "estargz (default) or zstd:chunked"},
      {"chunk-size", "N",
       "largest chunk of a file in bytes (suffix K/M/G allowed; default "
       "1M, tuned: bench/TUNING.md; the reference's is 4M)"},
      {"min-chunk-size", "N",
       "let small files share a member until it holds N uncompressed "
       "bytes (suffix K/M/G; default 0: a member per file and chunk). "
       "Smaller blobs; needs readers that know innerOffset (lazypull, "
       "stargz-snapshotter v0.13+; not containers/storage)"},
      {"level", "N",
       "gzip 1-9 (1 fastest, 9 smallest; default 6), zstd 1-19 (default "
       "10, Podman's)"},
      {"prioritize", "FILE",
       "paths accessed first, one per line in access order; they go before "
       ".prefetch.landmark (gzip: compressed at level 9 or more, their "
       "first 64 MiB, as every cold start waits for them)"},
      {"threads", "N", "compression threads (default: one per core)"},
  };
}

absl::StatusOr<LayerWriterOptions> LayerWriterOptionsFromArgs(
    const ParsedArgs& args) {
  LayerWriterOptions o;
  std::string format = args.GetOr("format", "estargz");
  if (format == "estargz") {
    o.compression = Compression::kGzip;
  } else if (format == "zstd:chunked") {
    o.compression = Compression::kZstd;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--format: \"", format, "\" is not estargz or zstd:chunked"));
  }
  if (auto s = args.Get("chunk-size")) {
    ASSIGN_OR_RETURN(o.chunk_size, ParseSize("chunk-size", *s));
  }
  if (auto s = args.Get("min-chunk-size")) {
    ASSIGN_OR_RETURN(o.min_chunk_size, ParseSize("min-chunk-size", *s));
  }
  if (auto s = args.Get("level")) {
    if (!absl::SimpleAtoi(*s, &o.level) || o.level < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--level: \"", *s, "\" is not a level"));
    }
    absl::Status st = ResolveCompressionLevel(o.compression, o.level).status();
    if (!st.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("--level: ", st.message()));
  }
  o.threads = 0;
  if (auto s = args.Get("threads")) {
    if (!absl::SimpleAtoi(*s, &o.threads) || o.threads < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--threads: \"", *s, "\" is not a thread count"));
    }
  }
  if (auto s = args.Get("prioritize")) {
    ASSIGN_OR_RETURN(o.prioritized_files, ReadPrioritized(*s));
  }
  return o;
}

int ConvertMain(int argc, char** argv) {
  int code;
  std::optional<ParsedArgs> args = ParseOrExit(kSpec, argc, argv, &code);
  if (!args) return code;
  absl::StatusOr<LayerWriterOptions> options =
      LayerWriterOptionsFromArgs(*args);
  if (!options.ok()) {
    return UsageError(kSpec, options.status());
  }
  absl::StatusOr<LayerWriteResult> r =
      ConvertLayerFile(args->positionals[0], args->positionals[1], *options);
  if (!r.ok()) return Fail("convert", r.status());
  for (const std::string& p : r->missing_prioritized) {
    std::cerr << "lazypull convert: warning: prioritized file \"" << p
              << "\" is not in the input; skipped\n";
  }
  JsonWriter w(1);
  w.BeginObject();
  w.Key("toc_digest").String(r->toc_digest.ToString());
  w.Key("diff_id").String(r->diff_id.ToString());
  w.Key("uncompressed_size").Uint(r->uncompressed_size);
  w.Key("blob_digest").String(r->blob_digest.ToString());
  w.Key("blob_size").Uint(r->blob_size);
  w.Key("annotations").BeginObject();
  for (const auto& [k, v] : r->annotations) w.Key(k).String(v);
  w.EndObject();
  w.EndObject();
  std::cout << w.str() << "\n";
  return 0;
}

}  // namespace lazypull::cli
