// ConvertLayerFile: a layer file in (tar, tar.gz, tar.zst, or an eStargz /
// zstd:chunked layer), an eStargz or zstd:chunked layer file out, through
// core/layer_writer.h. The input's kind is sniffed from its first bytes; a
// compressed input is decompressed whole into an unlinked temporary file
// ($TMPDIR or /tmp) and mapped, so memory stays flat whatever its size.
// `lazypull convert`, `push`, `image convert` and `optimize` all convert
// layers through here.
//
// On failure the output file is removed. Errors name the input path.
//
// Thread-safety: may be called concurrently for different files.
#ifndef LAZYPULL_CORE_LAYER_FILE_CONVERTER_H_
#define LAZYPULL_CORE_LAYER_FILE_CONVERTER_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/layer_writer.h"

namespace lazypull {

absl::StatusOr<LayerWriteResult> ConvertLayerFile(
    const std::string& in_path, const std::string& out_path,
    const LayerWriterOptions& options);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LAYER_FILE_CONVERTER_H_
