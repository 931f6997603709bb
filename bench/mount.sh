#!/usr/bin/env bash
# Lazy image mount through the link proxy (issue 7): mount-ready time, time
# to first byte of a cold file, and on-demand read latency with the link idle,
# saturated by a plain download of the blob (the floor on a busy link), and
# busy with background fetch. As root.
# Registry over TLS (HTTP/2, as in production). The background-fetch case
# runs once per entry of $BG_BYTES (default "auto 4M"): "CAP[:GAIN][@FLAGS]",
# CAP for --background-bytes, GAIN for --background-gain, FLAGS more mount
# flags separated by commas ("auto@--background-nice=0"), so the ratios come
# from one run. More cases and probes, off unless set:
#   RANGES=N       also: the link busy with 1 MiB range GETs from curl, N at a
#                  time (a request pattern like background fetch's)
#   PROBE=1        with each case, curl's time to first byte of 30 4 KiB
#                  ranges, run alongside the reads (the server's and link's
#                  share; it adds load of its own)
#   SERVER_NICE=N  renice the registry and the proxy (e.g. -10)
#   SPLIT_CPUS=1   the registry and the proxy on the last CPU, everything
#                  else (lazypull, the readers, curl) on the others: a server
#                  with cores of its own, as a remote registry has
#   WORKROOT=DIR   where the work dir goes (default /tmp; /dev/shm: no disk)
#   LOGS=DIR       keep each mount's log;  LAT_TRACE=1: every read's latency
#   bench/mount.sh [INPUT_MB] [PROFILE...]    profiles: rtt,bw (20ms,100mbit)
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT_MB=${1:-600}
[ $# -gt 0 ] && shift
PROFILES=("$@")
[ ${#PROFILES[@]} -gt 0 ] || PROFILES=(20ms,100mbit 2ms,1gbit)
W=$(mktemp -d "${WORKROOT:-/tmp}"/lazypull-mountbench.XXXXXX)
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
BLOB_DIGEST=sha256:$(sha256sum "$W/layer.esgz" | cut -d' ' -f1)
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
# Median and p90 time to first byte of 40 sequential 4 KiB range requests
# from curl on one connection of its own (PROBE=1): the server's and the
# link's share of an on-demand read's latency, without lazypull's.
probe_ttfb() {
  [ -n "${PROBE:-}" ] || return 0
  for i in $(seq 1 30); do
    curl -s --http2 --cacert "$REGISTRY_CA" -o /dev/null -r $((i * 4999999))-$((i * 4999999 + 4095)) \
      -w '%{time_starttransfer} %{time_pretransfer}\n' \
      "https://${REF%%/*}/v2/bench/blobs/$BLOB_DIGEST" || true
  done | awk '{print ($1 - $2) * 1000}' | sort -n |
    awk '{a[NR]=$1} END {printf "  curl probe, 4 KiB ranges: ttfb p50=%.1fms p90=%.1fms\n", a[int(NR/2)+1], a[int(NR*0.9)]}'
}
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
if "LAT_TRACE" in __import__("os").environ:
    print(" ".join("%.0f" % x for x in lat), file=sys.stderr)
lat.sort()
print("p50=%.0fms p90=%.0fms" % (lat[len(lat) // 2], lat[int(len(lat) * 0.9) - 1]))
PY
}

for prof in "${PROFILES[@]}"; do
  rtt=${prof%,*}; bw=${prof#*,}
  "$PROXY" --upstream "127.0.0.1:$REGISTRY_PORT" --rtt "$rtt" --bw "$bw" >"$W/proxy.out" 2>/dev/null & PIDS+=($!)
  for _ in $(seq 50); do grep -q listening "$W/proxy.out" && break; sleep 0.1; done
  # SERVER_NICE=N (e.g. -10): the registry and the proxy get the CPU before
  # lazypull, as a registry on a machine of its own would.
  if [ -n "${SERVER_NICE:-}" ]; then
    for p in "$REGISTRY_PID" "${PIDS[-1]}"; do
      renice -n "$SERVER_NICE" -p $(ls /proc/"$p"/task) >/dev/null
    done
  fi
  if [ -n "${SPLIT_CPUS:-}" ]; then
    last=$(( $(nproc) - 1 ))
    for p in "$REGISTRY_PID" "${PIDS[-1]}"; do taskset -a -pc "$last" "$p" >/dev/null; done
    taskset -pc 0-$((last - 1)) $$ >/dev/null
  fi
  # The CA is given by IP: the proxy forwards TLS untouched.
  REF="$(sed -n 's/^listening \(127.0.0.1:[0-9]*\).*/\1/p' "$W/proxy.out")/bench:latest"
  echo "== rtt=$rtt bw=$bw"
  for run in 1 2 3; do
    rm -rf "$W/cache"
    t0=$(now)
    "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch --dir-prefetch 0 >/dev/null
    t1=$(now)
    head -c 1 "$W/mnt$FIRST" >/dev/null
    t2=$(now)
    echo "run $run: mount ready $(ms "$t0" "$t1") ms, first byte of a cold file $(ms "$t1" "$t2") ms"
    "$BIN" unmount "$W/mnt" >/dev/null
  done
  rm -rf "$W/cache"
  "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch --dir-prefetch 0 >/dev/null
  probe_ttfb >"$W/probe.out" & PROBE_PID=$!
  echo "on-demand 4 KiB reads of 80 cold files, link idle: $(sample_latency)"
  wait "$PROBE_PID"; cat "$W/probe.out"
  "$BIN" unmount "$W/mnt" >/dev/null
  [ -n "${LOGS:-}" ] && cp "$W/cache/lazypull.log" "$LOGS/idle.log"
  # The floor on a busy link: the same reads, background fetch off, while
  # one plain download of the whole blob (curl, a TCP connection of its own)
  # keeps the link saturated. What a read pays here, any transfer that fills
  # the link makes it pay: the router's queue and the shared rate.
  rm -rf "$W/cache"
  "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch --dir-prefetch 0 >/dev/null
  curl -s --http2 -w 'bulk download: %{speed_download} B/s\n' --cacert "$REGISTRY_CA" -o /dev/null \
    "https://${REF%%/*}/v2/bench/blobs/$BLOB_DIGEST" & BULK=$!
  sleep 1
  probe_ttfb >"$W/probe.out" & PROBE_PID=$!
  echo "the same, background fetch off, link saturated by one download of the blob: $(sample_latency)"
  wait "$PROBE_PID"; cat "$W/probe.out"
  kill "$BULK" 2>/dev/null || true; wait "$BULK" 2>/dev/null || true
  "$BIN" unmount "$W/mnt" >/dev/null
  if [ -n "${RANGES:-}" ]; then
    rm -rf "$W/cache"
    "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" --no-background-fetch --dir-prefetch 0 >/dev/null
    : >"$W/ranges.cfg"
    for i in $(seq 0 190); do
      printf 'next\nurl = "https://%s/v2/bench/blobs/%s"\nrange = %d-%d\noutput = /dev/null\n' \
        "${REF%%/*}" "$BLOB_DIGEST" $((i << 20)) $(( ((i + 1) << 20) - 1 )) >>"$W/ranges.cfg"
    done
    sed -i 1d "$W/ranges.cfg"
    curl -s --no-progress-meter --http2 -Z --parallel-max "$RANGES" --cacert "$REGISTRY_CA" -K "$W/ranges.cfg" & BULK=$!
    sleep 1
    echo "the same, link busy with 1 MiB range requests, $RANGES at a time: $(sample_latency)"
    kill "$BULK" 2>/dev/null || true; wait "$BULK" 2>/dev/null || true
    "$BIN" unmount "$W/mnt" >/dev/null
  fi
  for bg in "${BG[@]}"; do
    rm -rf "$W/cache"
    # "CAP[:GAIN][@FLAG=V,...]": e.g. "auto", "4M", "auto:1.5",
    # "auto@--background-nice=0".
    spec=${bg%%@*}
    flags=(--background-bytes "${spec%%:*}")
    [ "$spec" != "${spec#*:}" ] && flags+=(--background-gain "${spec#*:}")
    [ "$bg" != "$spec" ] && IFS=, read -ra extra <<<"${bg#*@}" && flags+=("${extra[@]}")
    "${MOUNT[@]}" "$REF" "$W/mnt" --cache-dir "$W/cache" "${flags[@]}" >/dev/null
    sleep 1  # background fetch under way, saturating the link
    probe_ttfb >"$W/probe.out" & PROBE_PID=$!
    echo "the same, background fetch on (--background-bytes $bg): $(sample_latency)"
    wait "$PROBE_PID"; cat "$W/probe.out"
    "$BIN" unmount "$W/mnt" >/dev/null
    grep -o "link at unmount: .*" "$W/cache/lazypull.log" | tail -1 || true
    [ -n "${LOGS:-}" ] && cp "$W/cache/lazypull.log" "$LOGS/bg-$bg.log"
  done
  kill "${PIDS[-1]}"; unset 'PIDS[-1]'
done
