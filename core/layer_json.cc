#include "core/layer_json.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "core/digest.h"
#include "core/toc.h"

namespace lazypull {

void WriteEntriesJson(const LayerIndex& index, JsonWriter& w) {
  // (path, dirent) pairs; the root has no dirent.
  std::vector<std::pair<std::string, uint32_t>> rows;
  rows.reserve(index.dirents().size() + 1);
  rows.emplace_back("", LayerIndex::kNoDirent);
  for (uint32_t d = 0; d < index.dirents().size(); ++d) {
    rows.emplace_back(index.Path(d), d);
  }
  std::sort(rows.begin(), rows.end());
  static const Digest kEmptyDigest = Sha256::Of("");

  w.BeginArray();
  for (const auto& [path, d] : rows) {
    const bool hardlink =
        d != LayerIndex::kNoDirent && index.dirents()[d].hardlink;
    const uint32_t ino = d == LayerIndex::kNoDirent ? LayerIndex::kRoot
                                                    : index.dirents()[d].inode;
    const Inode& n = index.inode(ino);
    const bool reg = n.type == EntryType::kReg;
    w.BeginObject();
    w.Key("path").String(path);
    w.Key("type").String(
        EntryTypeName(hardlink ? EntryType::kHardlink : n.type));
    w.Key("mode").Uint(n.mode);
    w.Key("uid").Uint(n.uid);
    w.Key("gid").Uint(n.gid);
    w.Key("uname").String(index.name(n.uname));
    w.Key("gname").String(index.name(n.gname));
    w.Key("size").Uint(reg ? n.size : 0);
    w.Key("sha256");
    if (reg && n.digest) {
      w.String(n.digest->ToString());
    } else if (reg && n.size == 0) {
      w.String(kEmptyDigest.ToString());
    } else {
      w.Null();
    }
    w.Key("link");
    if (hardlink) {
      w.String(index.Path(n.dirent));
    } else if (n.type == EntryType::kSymlink) {
      w.String(n.symlink);
    } else {
      w.Null();
    }
    w.Key("xattrs").BeginObject();
    for (const auto& [k, v] : index.Xattrs(ino))
      w.Key(k).String(Base64Encode(v));
    w.EndObject();
    w.Key("dev_major").Uint(n.dev_major);
    w.Key("dev_minor").Uint(n.dev_minor);
    w.Key("nlink").Uint(n.nlink);
    w.Key("mtime");
    if (n.implicit) {
      w.Null();
    } else {
      w.Int(n.mtime_sec);
    }
    w.Key("implicit").Bool(n.implicit);
    w.Key("chunks");
    if (reg && !hardlink) {
      w.BeginArray();
      for (const Chunk& c : index.FileChunks(ino)) {
        w.BeginObject();
        w.Key("offset").Uint(c.file_offset);
        w.Key("size").Uint(c.size);
        w.Key("digest");
        if (c.has_digest) {
          w.String(c.digest.ToString());
        } else {
          w.Null();
        }
        w.Key("blob_offset").Uint(c.blob_offset);
        w.EndObject();
      }
      w.EndArray();
    } else {
      w.Null();
    }
    w.EndObject();
  }
  w.EndArray();
}

}  // namespace lazypull
