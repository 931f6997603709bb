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
mkdir -p "$W/oci/blobs/sha256"
layers="" diffs=""
for part in "$W"/part.*; do
  tar -cf "$W/l.tar" -C / -T "$part" 2>/dev/null
  diff=$(sha256sum "$W/l.tar" | cut -d' ' -f1)
  gzip -6 -c "$W/l.tar" >"$W/l.tgz"
  dig=$(sha256sum "$W/l.tgz" | cut -d' ' -f1)
  size=$(stat -c %s "$W/l.tgz")
  mv "$W/l.tgz" "$W/oci/blobs/sha256/$dig"
  layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$dig\",\"size\":$size}"
  diffs="$diffs${diffs:+,}\"sha256:$diff\""
done
rm -f "$W/l.tar"
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diffs" >"$W/config.json"
cdig=$(sha256sum "$W/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$W/config.json")
mv "$W/config.json" "$W/oci/blobs/sha256/$cdig"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$cdig" "$csize" "$layers" >"$W/m.json"
mdig=$(sha256sum "$W/m.json" | cut -d' ' -f1); msize=$(stat -c %s "$W/m.json")
mv "$W/m.json" "$W/oci/blobs/sha256/$mdig"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$mdig" "$msize" >"$W/oci/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$W/oci/oci-layout"
BYTES=$(du -cb "$W"/oci/blobs/sha256/* | tail -1 | cut -f1)
echo "image: $BYTES bytes of blobs"

echo "== registry on 127.0.0.1"
REG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$W/reg.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: 127.0.0.1:$REG_PORT}
YML
docker-registry serve "$W/reg.yml" >"$W/reg.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && break; sleep 0.1; done
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
