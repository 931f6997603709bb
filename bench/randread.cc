// randread: 4 KiB random-read latency over the regular files of a tree.
//
//   randread ROOT COUNT [SEED]   -> "p50_us=.. p99_us=.. reads=.."
// Each read opens a random file (of those >= 4 KiB), preads 4 KiB at a
// random 4 KiB-aligned offset, closes it; the time of the pread is recorded.
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {
std::vector<std::pair<std::string, off_t>>* g_files;

int Visit(const char* path, const struct stat* st, int type, FTW*) {
  if (type == FTW_F && S_ISREG(st->st_mode) && st->st_size >= 4096 &&
      std::string(path).find("/.stargz-snapshotter/") == std::string::npos) {
    g_files->emplace_back(path, st->st_size);
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: randread ROOT COUNT [SEED]\n");
    return 2;
  }
  std::vector<std::pair<std::string, off_t>> files;
  g_files = &files;
  nftw(argv[1], Visit, 64, FTW_PHYS);
  if (files.empty()) {
    fprintf(stderr, "randread: no file of 4 KiB or more under %s\n", argv[1]);
    return 1;
  }
  std::sort(files.begin(), files.end());
  const int count = atoi(argv[2]);
  std::mt19937_64 rng(argc > 3 ? atoll(argv[3]) : 1);
  std::vector<double> us;
  char buf[4096];
  for (int i = 0; i < count; ++i) {
    const auto& [path, size] = files[rng() % files.size()];
    off_t off = static_cast<off_t>(rng() % (size / 4096)) * 4096;
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) continue;
    auto t0 = std::chrono::steady_clock::now();
    ssize_t n = pread(fd, buf, sizeof(buf), off);
    auto t1 = std::chrono::steady_clock::now();
    close(fd);
    if (n < 0) {
      perror("pread");
      return 1;
    }
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) {
    return us[std::min(us.size() - 1, static_cast<size_t>(p * us.size()))];
  };
  printf("p50_us=%.1f p99_us=%.1f reads=%zu files=%zu\n", pct(0.5), pct(0.99),
         us.size(), files.size());
  return 0;
}
