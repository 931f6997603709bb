// DirectoryTar: a deterministic tar stream of a root-filesystem directory,
// the single layer of `lazypull push DIR`.
//
// Walk: depth first from `root`, each directory's names sorted bytewise, so a
// parent always comes before its children; the root itself is the first
// entry, "./". Symlinks are never followed (lstat/readlink/O_NOFOLLOW): a
// symlink pointing outside the tree is stored as a symlink.
//
// Entries: regular files, directories ("name/"), symlinks, hardlinks (every
// further name of a non-directory whose (st_dev, st_ino) was already written
// becomes a type '1' entry naming the first one), character and block
// devices, fifos. Sockets cannot be stored in a tar: they are skipped and
// reported through DirTarOptions::warn. Fields: mode (permission bits with
// setuid/setgid/sticky), uid, gid, mtime (whole seconds), size; uname and
// gname are left empty (the host's names mean nothing inside an image).
// Extended attributes in the user.*, trusted.* and security.* namespaces
// are stored as far as they can be read (security.selinux is not: it is the
// host's label, not the image's), as "SCHILY.xattr.<name>" PAX records.
//
// Encoding, as Go's archive/tar writes it (what Docker and BuildKit layers
// are made with): a USTAR header when every field fits (a name longer than
// 100 bytes split into prefix/name when it can be); otherwise a PAX 'x'
// header named "<dir>/PaxHeaders.0/<file>" carrying, sorted by key, the
// records that do not fit ("path", "linkpath", "size", "uid", "gid",
// "mtime", "SCHILY.xattr.*"), followed by the USTAR header with those
// fields truncated or zeroed. Names that are not ASCII also go into "path".
// The stream ends with two zero blocks. The same tree gives the same bytes.
//
// Errors: the errno of the failing call, naming the path. A regular file
// that shrinks while it is read is an error (its header already promised its
// size); one that grows is cut at the size it had when opened.
//
// Thread-safety: a pure function of the tree; safe from any thread.
#ifndef LAZYPULL_CORE_DIR_TAR_H_
#define LAZYPULL_CORE_DIR_TAR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazypull {

struct DirTarOptions {
  // Called for every entry that is skipped (sockets) with a message naming
  // it. Optional.
  std::function<void(const std::string&)> warn;
};

struct DirTarStats {
  uint64_t entries = 0;              // tar entries written
  uint64_t bytes = 0;                // length of the stream
  uint64_t file_bytes = 0;           // payload bytes of regular files
  int64_t newest_mtime = 0;          // latest mtime of an entry (s), or 0
  std::vector<std::string> skipped;  // paths skipped (relative to the root)
};

// One entry's header fields, as this writer encodes them.
struct TarEntryFields {
  std::string name;  // directories end with '/'
  std::string link;
  char typeflag = '0';
  uint32_t mode = 0;
  uint64_t uid = 0, gid = 0, size = 0;
  int64_t mtime = 0;
  uint64_t dev_major = 0, dev_minor = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;  // sorted
};

// The header blocks of an entry: USTAR, with a PAX header first when a
// field does not fit (long or non-ASCII names, big numbers, xattrs), as
// Go's archive/tar writes them.
absl::StatusOr<std::string> EncodeTarHeader(const TarEntryFields& e);

// Receives the stream front to back; a non-OK return stops the walk.
using TarWriteFn = std::function<absl::Status(absl::string_view)>;

// Writes the tar of the tree below `root` to `write`.
absl::StatusOr<DirTarStats> WriteDirectoryTar(const std::string& root,
                                              const DirTarOptions& options,
                                              const TarWriteFn& write);

// The same, into a string (tests, small trees).
absl::StatusOr<std::string> DirectoryTar(const std::string& root,
                                         const DirTarOptions& options = {});

}  // namespace lazypull

#endif  // LAZYPULL_CORE_DIR_TAR_H_
