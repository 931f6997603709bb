#!/usr/bin/env bash
# Lazy image mount through the link proxy (issue 7): mount-ready time, time
# to first byte of a cold file, and on-demand read latency with the link idle
# vs saturated by background fetch. As root.
# Registry over TLS (HTTP/2, as in production). The background-fetch case
# runs once per value of $BG_BYTES (default "auto 4M": the adaptive cap
# against the old fixed 4 MiB; "auto:G" sets --background-gain G), so the
# ratios come from one run.
#   bench/mount.sh [INPUT_MB] [PROFILE...]    profiles: rtt,bw (20ms,100mbit)
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT_MB=${1:-600}
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
registry_start_tls "$W"; PIDS+=("$REGISTRY_PID")
skopeo copy --quiet --dest-cert-dir "$W" --dest-tls-verify=false \
  "oci:$W/oci:bench" "docker://127.0.0.1:$REGISTRY_PORT/bench:latest"
MOUNT=("$BIN" mount --ca-file "$REGISTRY_CA")
read -ra BG <<<"${BG_BYTES:-auto 4M}"
"$BIN" inspect "$W/layer.esgz" | grep -E "blob size|toc:|toc entries"
# Files to read: one in the middle of the layer, and a sample for latency.
FIRST=$(sed -n "$(( $(wc -l <"$W/list") / 2 ))p" "$W/list")
# The sample comes from the last half of the layer (blob order = list order),
# which background fetch, going from the start, reaches last: with a layer
# of a few hundred MB, every sampled read is a miss in every case.
tail -n $(( $(wc -l <"$W/list") / 2 )) "$W/list" | shuf -n 80 --random-source=<(yes) >"$W/sample"

now() { date +%s.%N; }
ms() { echo "($2 - $1) * 1000" | bc -l | xargs printf %.0f; }
# p50 and p90 of the per-file read latencies (open + 4 KiB read, timed
# inside one process: no process start-up in the figures) over the sample,
# read one by one.
sample_latency() {
  python3 - "$W/mnt" "$W/sample" <<'PY'
import sys, time
mnt, sample = sys.argv[1], sys.argv[2]
lat = []
for f in open(sample).read().split():
    t0 = time.monotonic()
    with open(mnt + f, "rb") as fh:
        fh.read(4096)
    lat.append((time.monotonic() - t0) * 1000)
lat.sort()
print("p50=%.0fms p90=%.0fms" % (lat[len(lat) // 2], lat[int(len(lat) * 0.9) - 1]))
PY
}

for prof in "${PROFILES[@]}"; do
  rtt=${prof%,*}; bw=${prof#*,}
  "$PROXY" --upstream "127.0.0.1:$REGISTRY_PORT" --rtt "$rtt" --bw "$bw" >"$W/proxy.out" 2>/dev/null & PIDS+=($!)
  for _ in $(seq 50); do grep -q listening "$W/proxy.out" && break; sleep 0.1; done
  # The CA is given by IP: the proxy forwards TLS untouched.
  REF="$(sed -n 's/^listening \(127.0.0.1:[0-9]*\).*/\1/p' "$W/proxy.out")/bench:latest"
  echo "== rtt=$rtt bw=$bw"
  for run in 1 2 3; do
    rm -rf "$W/cache"
    t0=$(now)
    "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch >/dev/null
    t1=$(now)
    head -c 1 "$W/mnt$FIRST" >/dev/null
    t2=$(now)
    echo "run $run: mount ready $(ms "$t0" "$t1") ms, first byte of a cold file $(ms "$t1" "$t2") ms"
    "$BIN" unmount "$W/mnt" >/dev/null
  done
  rm -rf "$W/cache"
  "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch >/dev/null
  echo "on-demand 4 KiB reads of 80 cold files, link idle: $(sample_latency)"
  "$BIN" unmount "$W/mnt" >/dev/null
  [ -n "${LOGS:-}" ] && cp "$W/cache/lazypull.log" "$LOGS/idle.log"
  for bg in "${BG[@]}"; do
    rm -rf "$W/cache"
    flags=(--background-bytes "${bg%%:*}")
    [ "$bg" != "${bg#*:}" ] && flags+=(--background-gain "${bg#*:}")
    "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" "${flags[@]}" >/dev/null
    sleep 1  # background fetch under way, saturating the link
    echo "the same, background fetch on (--background-bytes $bg): $(sample_latency)"
    "$BIN" unmount "$W/mnt" >/dev/null
    grep -o "link at unmount: .*" "$W/cache/lazypull.log" | tail -1 || true
    [ -n "${LOGS:-}" ] && cp "$W/cache/lazypull.log" "$LOGS/bg-$bg.log"
  done
  kill "${PIDS[-1]}"; unset 'PIDS[-1]'
done
