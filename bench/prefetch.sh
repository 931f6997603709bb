#!/usr/bin/env bash
# Prefetch throughput of a lazy image mount (issue 7): one eStargz layer of
# many small files, every file prioritized, so `mount --wait-prefetch` returns
# once the whole layer is fetched, inflated, verified and cached. Compared:
# 1 vs N parallel streams, HTTP/2 (one connection) vs HTTP/1.1 pools, and the
# link's own transfer time for the blob. Registry over TLS behind the link
# proxy. As root.
#   bench/prefetch.sh [FILES] [PROFILE...]    profiles: rtt,bw (20ms,100mbit)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-6000}
[ $# -gt 0 ] && shift
PROFILES=("$@")
[ ${#PROFILES[@]} -gt 0 ] || PROFILES=(20ms,100mbit 2ms,1gbit)
W=$(mktemp -d /tmp/lazypull-prefetchbench.XXXXXX)
PIDS=()
BIN=$PWD/bazel-bin/cli/lazypull
cleanup() {
  "$BIN" unmount "$W/mnt" >/dev/null 2>&1 || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
bazel build //cli:lazypull //proxy:lazypull-proxy >/dev/null 2>&1 || { echo "build failed" >&2; exit 1; }
PROXY=$PWD/bazel-bin/proxy/lazypull-proxy
source bench/oci_layout.sh

(find /usr/share /usr/lib/python3 -xdev -type f 2>/dev/null | sort | head -"$FILES" |
  sed 's|^/||' >"$W/list") || true  # head closes the pipe early
tar -cf "$W/in.tar" -C / -T "$W/list" 2>/dev/null || true
"$BIN" convert "$W/in.tar" "$W/layer.esgz" --prioritize "$W/list" >"$W/convert.json"
BLOB=$(stat -c %s "$W/layer.esgz")
echo "== image: $(wc -l <"$W/list") files, blob $BLOB bytes, all prioritized"
oci_layer_from_convert "$W/convert.json" "$W/layer.esgz" "$W/oci" bench
registry_start_tls "$W"; PIDS+=("$REGISTRY_PID")
skopeo copy --quiet --dest-cert-dir "$W" --dest-tls-verify=false \
  "oci:$W/oci:bench" "docker://127.0.0.1:$REGISTRY_PORT/bench:latest"
mkdir -p "$W/mnt"
now() { date +%s.%N; }

for prof in "${PROFILES[@]}"; do
  rtt=${prof%,*}; bw=${prof#*,}
  "$PROXY" --upstream "127.0.0.1:$REGISTRY_PORT" --rtt "$rtt" --bw "$bw" >"$W/proxy.out" 2>/dev/null & PIDS+=($!)
  for _ in $(seq 50); do grep -q listening "$W/proxy.out" && break; sleep 0.1; done
  ADDR=$(sed -n 's/^listening \(127.0.0.1:[0-9]*\).*/\1/p' "$W/proxy.out")
  bits=$(echo "$bw" | sed 's/gbit/*1000000000/; s/mbit/*1000000/; s/kbit/*1000/' | bc)
  link=$(echo "$BLOB * 8 / $bits" | bc -l)
  printf '== rtt=%s bw=%s: the blob alone takes %.2f s on this link\n' "$rtt" "$bw" "$link"
  printf '%-8s %-8s %8s %10s %10s\n' proto streams seconds MB/s of-link
  for proto in h2 h1; do
    extra=()
    [ "$proto" = h1 ] && extra=(--http1.1)
    for streams in 1 4 8; do
      rm -rf "$W/cache"
      t0=$(now)
      # The CA is given by IP: the proxy forwards TLS untouched.
      "$BIN" mount "$ADDR/bench:latest" "$W/mnt" --ca-file "$REGISTRY_CA" \
        --cache-dir "$W/cache" --no-background-fetch --wait-prefetch=300 \
        --prefetch-streams "$streams" "${extra[@]}" >/dev/null
      t1=$(now)
      "$BIN" unmount "$W/mnt" >/dev/null
      s=$(echo "$t1 - $t0" | bc -l)
      printf '%-8s %-8s %8.2f %10.1f %9.0f%%\n' "$proto" "$streams" "$s" \
        "$(echo "$BLOB / $s / 1000000" | bc -l)" "$(echo "$link / $s * 100" | bc -l)"
    done
  done
  kill "${PIDS[-1]}" 2>/dev/null || true
done
