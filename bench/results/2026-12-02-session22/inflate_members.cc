#include <isa-l/igzip_lib.h>
#include <libdeflate.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>
namespace fs = std::filesystem;
struct M {
  std::string z;
  size_t n;
};
int main() {
  std::vector<M> ms;
  size_t total = 0, ztotal = 0;
  auto* c = libdeflate_alloc_compressor(6);
  for (auto& e : fs::recursive_directory_iterator(
           "/var/cache/lazypull-bench/rootfs",
           fs::directory_options::skip_permission_denied)) {
    if (!e.is_regular_file() || e.is_symlink()) continue;
    std::ifstream f(e.path(), std::ios::binary);
    std::string d((std::istreambuf_iterator<char>(f)), {});
    for (size_t off = 0; off < d.size() || (off == 0 && d.empty());
         off += 4 << 20) {
      size_t n = std::min(d.size() - off, (size_t)4 << 20);
      std::string z(libdeflate_gzip_compress_bound(c, n), 0);
      z.resize(
          libdeflate_gzip_compress(c, d.data() + off, n, z.data(), z.size()));
      ms.push_back({z, n});
      total += n;
      ztotal += z.size();
      if (d.empty()) break;
    }
  }
  printf("%zu members, %zu -> %zu bytes\n", ms.size(), total, ztotal);
  std::string out(4 << 20, 0);
  auto t = [&](const char* name, auto fn) {
    for (int rep = 0; rep < 3; ++rep) {
      auto s = std::chrono::steady_clock::now();
      for (auto& m : ms) fn(m);
      double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - s)
              .count();
      printf("%-20s %.3f s  %.0f MB/s\n", name, dt, total / dt / 1e6);
    }
  };
  inflate_state st;
  t("isal stateful", [&](M& m) {
    isal_inflate_init(&st);
    st.crc_flag = ISAL_GZIP;
    st.next_in = (uint8_t*)m.z.data();
    st.avail_in = m.z.size();
    st.next_out = (uint8_t*)out.data();
    st.avail_out = m.n;
    if (isal_inflate(&st) != 0 || st.block_state != ISAL_BLOCK_FINISH) abort();
  });
  t("isal stateful nocrc", [&](M& m) {
    isal_inflate_init(&st);
    st.crc_flag = ISAL_DEFLATE;
    st.next_in = (uint8_t*)m.z.data() + 10;
    st.avail_in = m.z.size() - 18;
    st.next_out = (uint8_t*)out.data();
    st.avail_out = m.n;
    if (isal_inflate(&st) != 0 || st.block_state != ISAL_BLOCK_FINISH) abort();
  });
  t("isal stateless", [&](M& m) {
    isal_inflate_init(&st);
    st.crc_flag = ISAL_GZIP;
    st.next_in = (uint8_t*)m.z.data();
    st.avail_in = m.z.size();
    st.next_out = (uint8_t*)out.data();
    st.avail_out = m.n;
    if (isal_inflate_stateless(&st) != 0) abort();
  });
  auto* d = libdeflate_alloc_decompressor();
  t("libdeflate", [&](M& m) {
    size_t in_used, out_n;
    if (libdeflate_gzip_decompress_ex(d, m.z.data(), m.z.size(), out.data(),
                                      m.n, &in_used, &out_n) != 0)
      abort();
  });
}
