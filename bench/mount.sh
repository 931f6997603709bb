#!/usr/bin/env bash
# Lazy image mount through the link proxy (issue 7): mount-ready time, time
# to first byte of a cold file, and on-demand read latency with the link idle
# vs saturated by background fetch. As root.
#   bench/mount.sh [INPUT_MB] [PROFILE...]    profiles: rtt,bw (20ms,100mbit)
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT_MB=${1:-200}
[ $# -gt 0 ] && shift
PROFILES=("$@")
[ ${#PROFILES[@]} -gt 0 ] || PROFILES=(20ms,100mbit 2ms,1gbit)
W=$(mktemp -d /tmp/lazypull-mountbench.XXXXXX)
PIDS=()
BIN=$PWD/bazel-bin/cli/lazypull
cleanup() {
  "$BIN" unmount "$W/mnt" >/dev/null 2>&1 || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
bazel build -c opt //:lazypull //proxy:lazypull-proxy >/dev/null 2>&1
PROXY=$PWD/bazel-bin/proxy/lazypull-proxy
source bench/oci_layout.sh

echo "== image: one eStargz layer from ${INPUT_MB} MB of this machine's /usr"
find /usr -xdev -type f -size +8k -printf '%s %p\n' 2>/dev/null | sort -k2 |
  awk -v lim=$((INPUT_MB << 20)) '{s+=$1; if (s>lim) exit; print $2}' >"$W/list" || true
tar -cf "$W/in.tar" -C / -T <(sed 's|^/||' "$W/list") 2>/dev/null
"$BIN" convert "$W/in.tar" "$W/layer.esgz" >"$W/convert.json"
mkdir -p "$W/mnt"
oci_layer_from_convert "$W/convert.json" "$W/layer.esgz" "$W/oci" bench
registry_start "$W"; PIDS+=("$REGISTRY_PID")
skopeo copy --quiet --dest-tls-verify=false "oci:$W/oci:bench" "docker://127.0.0.1:$REGISTRY_PORT/bench:latest"
"$BIN" inspect "$W/layer.esgz" | grep -E "blob size|toc:|toc entries"
# Files to read: one in the middle of the layer, and a sample for latency.
FIRST=$(sed -n "$(( $(wc -l <"$W/list") / 2 ))p" "$W/list")
shuf -n 40 --random-source=<(yes) "$W/list" >"$W/sample"

now() { date +%s.%N; }
ms() { echo "($2 - $1) * 1000" | bc -l | xargs printf %.0f; }
# Median of the per-file read latencies (ms) of the sample, read one by one.
sample_latency() {
  local t0 t1 out=()
  while read -r f; do
    t0=$(now); head -c 4096 "$W/mnt$f" >/dev/null; t1=$(now)
    out+=("$(ms "$t0" "$t1")")
  done <"$W/sample"
  printf '%s\n' "${out[@]}" | sort -n | awk '{a[NR]=$1} END {print "p50=" a[int(NR/2)+1] "ms p90=" a[int(NR*0.9)] "ms"}'
}

for prof in "${PROFILES[@]}"; do
  rtt=${prof%,*}; bw=${prof#*,}
  "$PROXY" --upstream "127.0.0.1:$REGISTRY_PORT" --rtt "$rtt" --bw "$bw" >"$W/proxy.out" 2>/dev/null & PIDS+=($!)
  for _ in $(seq 50); do grep -q listening "$W/proxy.out" && break; sleep 0.1; done
  REF="$(sed -n 's/^listening \(127.0.0.1:[0-9]*\).*/\1/p' "$W/proxy.out")/bench:latest"
  echo "== rtt=$rtt bw=$bw"
  for run in 1 2 3; do
    rm -rf "$W/cache"
    t0=$(now)
    "$BIN" mount --plain-http "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch >/dev/null
    t1=$(now)
    head -c 1 "$W/mnt$FIRST" >/dev/null
    t2=$(now)
    echo "run $run: mount ready $(ms "$t0" "$t1") ms, first byte of a cold file $(ms "$t1" "$t2") ms"
    "$BIN" unmount "$W/mnt" >/dev/null
  done
  rm -rf "$W/cache"
  "$BIN" mount --plain-http "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch >/dev/null
  echo "on-demand 4 KiB reads of 40 cold files, link idle:           $(sample_latency)"
  "$BIN" unmount "$W/mnt" >/dev/null
  rm -rf "$W/cache"
  "$BIN" mount --plain-http "$REF" "$W/mnt" --cache-dir "$W/cache" >/dev/null
  sleep 1  # background fetch under way, saturating the link
  echo "on-demand 4 KiB reads of 40 cold files, background fetch on: $(sample_latency)"
  "$BIN" unmount "$W/mnt" >/dev/null
  kill "${PIDS[-1]}"; unset 'PIDS[-1]'
done
