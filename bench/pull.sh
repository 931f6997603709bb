#!/usr/bin/env bash
# `lazypull pull` of a few-hundred-MB image through the project's link proxy,
# against the link's own transfer time for the same bytes and against
# `skopeo copy` + `tar -x` of the same image (issue 6). As root.
#   bench/pull.sh [INPUT_MB] [PROFILE...]     profiles: rtt,bw e.g. 20ms,100mbit
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT_MB=${1:-300}
[ $# -gt 0 ] && shift
PROFILES=("$@")
[ ${#PROFILES[@]} -gt 0 ] || PROFILES=(20ms,100mbit 2ms,1gbit)
W=$(mktemp -d /tmp/lazypull-pullbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

bazel build -c opt //:lazypull //proxy:lazypull-proxy >/dev/null 2>&1
BIN=$PWD/bazel-bin/cli/lazypull
PROXY=$PWD/bazel-bin/proxy/lazypull-proxy

echo "== image: three gzip layers from ${INPUT_MB} MB of this machine's /usr"
find /usr -xdev -type f -printf '%s %p\n' 2>/dev/null | sort -k2 |
  awk -v lim=$((INPUT_MB << 20)) '{s+=$1; if (s>lim) exit; print $2}' >"$W/list" || true
split -n l/3 -d "$W/list" "$W/part."
source bench/oci_layout.sh
layers="" diffs=""
for part in "$W"/part.*; do
  tar -cf "$W/l.tar" -C / -T "$part" 2>/dev/null
  diffs="$diffs${diffs:+,}\"sha256:$(sha256sum "$W/l.tar" | cut -d' ' -f1)\""
  gzip -6 -c "$W/l.tar" >"$W/l.tgz"
  read -r dig size < <(oci_add_blob "$W/oci" "$W/l.tgz")
  layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$dig\",\"size\":$size}"
done
rm -f "$W/l.tar"
oci_write_image "$W/oci" bench "$diffs" "$layers"
BYTES=$(du -cb "$W"/oci/blobs/sha256/* | tail -1 | cut -f1)
echo "image: $BYTES bytes of blobs"

echo "== registry on 127.0.0.1"
registry_start "$W"; PIDS+=("$REGISTRY_PID"); REG_PORT=$REGISTRY_PORT
skopeo copy --dest-tls-verify=false "oci:$W/oci:bench" "docker://127.0.0.1:$REG_PORT/bench:latest" >/dev/null

for prof in "${PROFILES[@]}"; do
  rtt=${prof%,*}; bw=${prof#*,}
  "$PROXY" --upstream "127.0.0.1:$REG_PORT" --rtt "$rtt" --bw "$bw" >"$W/proxy.out" & PIDS+=($!)
  for _ in $(seq 50); do grep -q listening "$W/proxy.out" && break; sleep 0.1; done
  PORT=$(sed -n 's/^listening 127.0.0.1:\([0-9]*\).*/\1/p' "$W/proxy.out")
  BPS=$(echo "$bw" | sed 's/gbit/*1000000000/;s/mbit/*1000000/;s/kbit/*1000/' | bc)
  LINK=$(echo "$BYTES * 8 / $BPS" | bc -l)
  echo "== profile rtt=$rtt bw=$bw: the link moves these bytes in $(printf %.2f "$LINK") s"
  for run in 1 2; do
    rm -rf "$W/rootfs" "$W/skopeo" "$W/rootfs2"
    sync; echo 3 >/proc/sys/vm/drop_caches
    T0=$(date +%s.%N)
    "$BIN" pull --plain-http "127.0.0.1:$PORT/bench:latest" "$W/rootfs" >"$W/pull.out"
    T1=$(date +%s.%N)
    T2=$(date +%s.%N)
    skopeo copy --src-tls-verify=false "docker://127.0.0.1:$PORT/bench:latest" "dir:$W/skopeo" >/dev/null
    mkdir -p "$W/rootfs2"
    for l in $(ls -S "$W/skopeo" | grep -v -e manifest -e version); do
      tar -xzf "$W/skopeo/$l" -C "$W/rootfs2" 2>/dev/null || true
    done
    T3=$(date +%s.%N)
    printf 'run %s: lazypull pull %.2f s (%.2fx the link time)   skopeo copy + tar -x %.2f s\n' \
      "$run" "$(echo "$T1-$T0" | bc -l)" "$(echo "($T1-$T0)/$LINK" | bc -l)" "$(echo "$T3-$T2" | bc -l)"
  done
  kill "${PIDS[-1]}"; unset 'PIDS[-1]'
done
