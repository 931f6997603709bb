// What `lazypull push` and `lazypull image convert` share: the JSON summary
// of a conversion, the progress printer, and when a registry-to-registry
// copy can mount blobs across repositories.
//
// Thread-safety: pure helpers, single-threaded use at start-up.
#ifndef LAZYPULL_CLI_IMAGE_CONVERT_H_
#define LAZYPULL_CLI_IMAGE_CONVERT_H_

#include <functional>
#include <string>

#include "core/json_writer.h"
#include "fetch/image_converter.h"
#include "fetch/image_store.h"

namespace lazypull::cli {

// {"destination", "digest", "media_type", "uploaded", "skipped",
//  "manifests": [{"platform", "from", "digest", "layers": [{"from",
//  "digest", "media_type", "size", "toc_digest" (converted layers only)}]}]}
std::string ConvertReportJson(const ImageConvertReport& r,
                              const std::string& destination);
// The same object written as the next value of `w`.
void WriteConvertReport(const ImageConvertReport& r,
                        const std::string& destination, JsonWriter* w);

// Progress lines on stderr, "lazypull <cmd>: <line>".
std::function<void(const std::string&)> StderrProgress(const std::string& cmd);

// The source repository when both locations are on the same registry (a
// cross-repository mount is possible), else "".
std::string MountSourceRepository(const ImageLocation& src,
                                  const ImageLocation& dst);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_IMAGE_CONVERT_H_
