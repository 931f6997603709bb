// The normalized entries of a layer as JSON, in the schema of the test data's
// expected.json (`path`, `type`, `mode`, `uid`, `gid`, `uname`, `gname`,
// `size`, `sha256`, `link`, `xattrs` (base64), `dev_major`, `dev_minor`,
// `nlink`, `mtime`, `implicit`, `chunks`), sorted by path in byte order.
// Whiteouts are raw; landmarks and the TOC are not entries.
//
// Thread-safety: pure functions over an immutable index.
#ifndef LAZYPULL_CORE_LAYER_JSON_H_
#define LAZYPULL_CORE_LAYER_JSON_H_

#include "core/json_writer.h"
#include "core/layer_index.h"

namespace lazypull {

// Writes the array of entries (the value of an "entries" key).
void WriteEntriesJson(const LayerIndex& index, JsonWriter& w);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LAYER_JSON_H_
