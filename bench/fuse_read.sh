#!/usr/bin/env bash
# Read-path benchmarks through real mounts (issues 4 and 5), one run, ratios
# measured side by side:
#  - cold read throughput (inflate + verify bound) over a whole layer;
#  - 4 KiB random-read latency p50/p99, cold (empty cache) and warm;
#  - peak RSS of the serving process;
#  - warm sequential read of a big file on a fresh mount over a warm cache
#    (engine cache files in the page cache, the FUSE file's own page cache
#    cold), splice replies vs copy replies, against the trivial in-memory FUSE
#    filesystem (bench/memfs) serving a file of the same size: the ceiling.
# Usage: bench/fuse_read.sh [INPUT_MB] [BIG_MB]   (as root)
#        WARM_ONLY=1 bench/fuse_read.sh ...         only the warm sequential part
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT_MB=${1:-300}
BIG_MB=${2:-256}
W=$(mktemp -d /tmp/lazypull-bench.XXXXXX)
MNT=$W/mnt
mkdir -p "$MNT"
cleanup() { umount -l "$MNT" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

bazel build -c opt //:lazypull //bench:memfs //bench:randread >/dev/null 2>&1
BIN=$PWD/bazel-bin/cli/lazypull
MEMFS=$PWD/bazel-bin/bench/memfs
RANDREAD=$PWD/bazel-bin/bench/randread

echo "== input: ${INPUT_MB} MB of this machine's /usr plus a ${BIG_MB} MB file"
find /usr -xdev -type f -printf '%s %p\n' 2>/dev/null | sort -k2 |
  awk -v lim=$((INPUT_MB << 20)) '{s+=$1; if (s>lim) exit; print $2}' >"$W/list" || true
mkdir -p "$W/big"
xargs -a "$W/list" cat 2>/dev/null | head -c $((BIG_MB << 20)) >"$W/big/big.bin" || true
tar -cf "$W/in.tar" -C / -T "$W/list" -C "$W" big 2>/dev/null
"$BIN" convert "$W/in.tar" "$W/layer.esgz" >"$W/convert.json"
TOC=$(sed -n 's/.*"toc_digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' "$W/convert.json")
ls -l "$W/in.tar" "$W/layer.esgz" | awk '{print $5, $9}'

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mnt() { "$BIN" mount --blob "$W/layer.esgz" --toc-digest "$TOC" "$MNT" --cache-dir "$1" >/dev/null; }
umnt() { "$BIN" unmount "$MNT" >/dev/null; }
pid_of() { pgrep -f "lazypull mount --blob $W/layer.esgz" | head -1; }

if [ -z "${WARM_ONLY:-}" ]; then
echo "== cold read of every file (empty cache, page cache dropped)"
drop; mnt "$W/cache"
BYTES=$(find "$MNT" -type f -not -path '*/.stargz-snapshotter/*' -printf '%s\n' | awk '{s+=$1} END {print s}')
T0=$(date +%s.%N)
find "$MNT" -type f -not -path '*/.stargz-snapshotter/*' -print0 | xargs -0 -P4 -n64 cat >/dev/null
T1=$(date +%s.%N)
echo "cold_read_MBps=$(echo "$BYTES / 1048576 / ($T1 - $T0)" | bc -l | xargs printf %.0f) bytes=$BYTES seconds=$(echo "$T1 - $T0" | bc -l | xargs printf %.2f)"
echo "peak_rss_MB=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/"$(pid_of)"/status) entries=$(wc -l <"$W/list")"
umnt

echo "== 4 KiB random reads"
drop; mnt "$W/cache-rand"
echo "cold: $("$RANDREAD" "$MNT" 2000 7)"
umnt; mnt "$W/cache-rand"
echo "warm: $("$RANDREAD" "$MNT" 2000 7)"
umnt

fi  # WARM_ONLY
echo "== warm sequential read of big.bin (${BIG_MB} MB), fresh mount, warm cache"
mnt "$W/cache"; cat "$MNT/big/big.bin" >/dev/null; umnt   # cache warm
mkdir -p "$W/memmnt"
memfs_up() {
  "$MEMFS" "$W/memmnt" "$BIG_MB" & MEMPID=$!
  for _ in $(seq 100); do mountpoint -q "$W/memmnt" && return; sleep 0.05; done
}
memfs_down() { umount "$W/memmnt"; wait "$MEMPID" 2>/dev/null || true; }
for round in 1 2 3; do
  for mode in splice splice-move copy memfs; do
    if [ $mode = memfs ]; then
      memfs_up; F="$W/memmnt/data"
    else
      if [ $mode = splice ]; then unset LAZYPULL_REPLY; else export LAZYPULL_REPLY=$mode; fi
      mnt "$W/cache"; F="$MNT/big/big.bin"
    fi
    R=$(dd if="$F" of=/dev/null bs=1M 2>&1 | awk '/copied/ {print $(NF-1), $NF}')
    echo "round $round $mode: $R"
    if [ $mode = memfs ]; then memfs_down; else umnt; fi
  done
done
unset LAZYPULL_REPLY
