// memfs: the trivial in-memory FUSE filesystem that measures the FUSE
// ceiling on this machine. It serves one read-only file, /data, of SIZE bytes
// from memory, with the same low-level settings lazypull uses (1 MiB
// max_read / max_readahead, keep_cache, multi-threaded loop).
//
//   memfs MOUNTPOINT SIZE_MB      (foreground; unmount to stop)
#include <errno.h>
#include <fuse3/fuse_lowlevel.h>
#include <string.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace {

std::string* g_data;
constexpr fuse_ino_t kFile = 2;

void Stat(fuse_ino_t ino, struct stat* st) {
  memset(st, 0, sizeof(*st));
  st->st_ino = ino;
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
  } else {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = static_cast<off_t>(g_data->size());
  }
}

void Init(void*, fuse_conn_info* conn) {
  conn->max_readahead = 1 << 20;
  conn->max_read = 1 << 20;
}

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (parent != FUSE_ROOT_ID || strcmp(name, "data") != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e;
  memset(&e, 0, sizeof(e));
  e.ino = kFile;
  e.attr_timeout = e.entry_timeout = 86400;
  Stat(kFile, &e.attr);
  fuse_reply_entry(req, &e);
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  struct stat st;
  Stat(ino, &st);
  fuse_reply_attr(req, &st, 86400);
}

void Open(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void Read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info*) {
  size_t start = std::min(g_data->size(), static_cast<size_t>(off));
  size_t len = std::min(size, g_data->size() - start);
  fuse_reply_buf(req, g_data->data() + start, len);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: memfs MOUNTPOINT SIZE_MB\n");
    return 2;
  }
  std::string data(static_cast<size_t>(atol(argv[2])) << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31);
  g_data = &data;
  fuse_lowlevel_ops ops;
  memset(&ops, 0, sizeof(ops));
  ops.init = Init;
  ops.lookup = Lookup;
  ops.getattr = GetAttr;
  ops.open = Open;
  ops.read = Read;
  std::vector<std::string> a = {"memfs", "-o",
                                "ro,fsname=memfs,max_read=1048576"};
  std::vector<char*> av;
  for (auto& s : a) av.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(av.size()), av.data());
  fuse_session* se = fuse_session_new(&args, &ops, sizeof(ops), nullptr);
  if (se == nullptr || fuse_session_mount(se, argv[1]) != 0) return 1;
  fuse_set_signal_handlers(se);
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(cfg, 16);
  int rc = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);
  fuse_session_unmount(se);
  fuse_session_destroy(se);
  return rc < 0 ? 1 : 0;
}
