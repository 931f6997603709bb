#!/bin/bash
# usage: bench/rss14k.sh LABEL  (run in a dir holding t14k.esgz and conv.json from `lazypull convert t14k.tar t14k.esgz > conv.json`)
set -e
B=${LAZYPULL:-$(dirname "$0")/../bazel-bin/cli/lazypull}
TOC=$(python3 -c 'import json;print(json.load(open("conv.json"))["toc_digest"])')
mkdir -p mnt; rm -rf cache; mkdir cache
$B mount --blob t14k.esgz --toc-digest $TOC mnt --cache-dir cache
PID=$(pgrep -f 'blob t14k.esgz' | head -1)
echo "$1 mounted: $(grep -E 'VmRSS|VmHWM' /proc/$PID/status | tr -s ' \n' ' ')"
sync; echo 3 > /proc/sys/vm/drop_caches
start=$(date +%s.%N)
find mnt -type f -print0 | xargs -0 -P4 -n64 cat >/dev/null
end=$(date +%s.%N)
echo "$1 after read: $(grep -E 'VmRSS|VmHWM' /proc/$PID/status | tr -s ' \n' ' ') time $(echo "$end - $start" | bc)"
$B unmount mnt
