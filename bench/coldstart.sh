#!/usr/bin/env bash
# The cold-start benchmark (issue 8): how soon a container is ready when its image is mounted lazily,
# against a full pull, over emulated links. As root, on Debian 12.
#
#   sudo bench/coldstart.sh                      # full sweep: 4 variants x 3 workloads x 3 profiles x 3 runs
#   sudo bench/coldstart.sh --profile 20ms-100mbit --workload python --variant estargz,estargz-opt
#   sudo bench/coldstart.sh --smoke --out /tmp/cs # tiny image, one profile, one run (the test runs this)
#
# Image: a Debian 12 root filesystem (`debootstrap --variant=minbase --include=python3 bookworm`, cached in
# --cache-dir) as one layer in four variants: plain gzip, eStargz, eStargz optimized for the workload
# (`lazypull optimize`; while that command is missing, `lazypull convert --prioritize` with the files an
# strace of the workload on a local copy opened, said loudly), zstd:chunked. They are pushed to
# docker-registry on 127.0.0.1 over TLS (a throwaway self-signed certificate) and read through
# lazypull-proxy's emulated link. Each run: a fresh cache directory, the page cache dropped, the proxy's
# counters reset; `lazypull mount IMAGE MNT` (or `lazypull pull IMAGE DIR`), then the workload with
# chroot until it prints "ready". Results: OUT/runs.csv (one row per run), OUT/floor.csv (the physical
# floor's inputs), OUT/summary.md and OUT/chart.svg (bench/coldstart.py report).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3 # Debian's, whatever pyenv or PATH say
TOOL=$HERE/coldstart.py

usage() {
  cat <<'EOF'
usage: bench/coldstart.sh [options]
  --profile NAME[,NAME]   20ms-100mbit, 2ms-1gbit, 80ms-50mbit (default: all three)
  --workload NAME[,NAME]  python, shell, heavy (default: all three)
  --variant NAME[,NAME]   gzip, estargz, estargz-opt, zstd-chunked (default: all four); also
                          estargz-shared: eStargz whose small files share members
                          (convert --min-chunk-size 64K)
  --runs N                runs per cell (default 3)
  --no-baseline           skip the full pull (lazypull pull + run) and skopeo copy + tar -x
  --no-probe              skip the one run per lazy variant and workload without background fetch
  --smoke                 tiny image from this machine's files, profile 2ms-1gbit, workloads shell and
                          heavy, one run: a couple of minutes at most
  --out DIR               results directory (default bench/results/<date>)
  --cache-dir DIR         where the debootstrap root filesystem is kept (default /var/cache/lazypull-bench)
  --lazypull PATH         lazypull binary (default: bazel build -c opt //cli:lazypull, copied)
  --proxy PATH            lazypull-proxy binary (default: bazel build -c opt //proxy:lazypull-proxy, copied)
  --keep                  keep the work directory
  --perf DIR              record each lazy mount's CPU profile while its workload runs (perf record
                          -e cpu-clock -g: this VM has no hardware counters) into DIR/PROFILE-WORKLOAD-VARIANT-MODE-RUN.data
  --perf-system DIR       the whole machine's CPU while each lazy workload runs and during each full pull
                          (perf record -a into DIR/PROFILE-WORKLOAD-VARIANT-MODE-RUN.sys.data; `perf report
                          --sort comm` splits it by thread: registry, proxy, workload, lazypull's named
                          threads), and the busy CPU seconds from /proc/stat in DIR/cpu.tsv
  --sweep FILE            tuning: each line "LABEL<TAB>lazypull mount flags" is run as its own mode for
                          every lazy variant (bench/tune.sh uses it); without it, mode "lazy" = defaults
  --convert-flags 'FLAGS' extra flags for lazypull convert/optimize when making the variants (e.g.
                          --chunk-size 1M)
  --include PKGS          packages debootstrap adds to minbase (default python3: a 259 MB tar, 120 MB
                          blob); "reference" = python3,python3-pip,python3-numpy,git: a 470 MB tar,
                          215 MB blob, whose full pull (17 s at 20 ms / 100 Mbit/s) is the reference's
                          (issue 8: 398 MB Debian+python3, 156 MB blob, ~17 s)
EOF
}

PROFILES=(20ms-100mbit 2ms-1gbit 80ms-50mbit)
WORKLOADS=(python shell heavy)
VARIANTS=(gzip estargz estargz-opt zstd-chunked)
KNOWN_VARIANTS=("${VARIANTS[@]}" estargz-shared)
RUNS=3 SMOKE=0 BASELINE=1 PROBE=1 KEEP=0 PERF_DIR="" SYS_DIR="" OUT="" LAZYPULL="" PROXY="" SWEEP="" CONVERT_FLAGS="" INCLUDE=python3
CACHE=/var/cache/lazypull-bench
ARGS="$*"
pick() { # pick ALLOWED_ARRAY_NAME CSV -> the chosen names, checked
  local -n allowed=$1
  local out=() n
  for n in ${2//,/ }; do
    [[ " ${allowed[*]} " == *" $n "* ]] || { echo "unknown name '$n' (one of: ${allowed[*]})" >&2; exit 2; }
    out+=("$n")
  done
  echo "${out[*]}"
}
SEL_P="" SEL_W="" SEL_V=""
while [ $# -gt 0 ]; do
  case $1 in
    --profile) SEL_P=$(pick PROFILES "$2"); shift ;;
    --workload) SEL_W=$(pick WORKLOADS "$2"); shift ;;
    --variant) SEL_V=$(pick KNOWN_VARIANTS "$2"); shift ;;
    --runs) RUNS=$2; shift ;;
    --no-baseline) BASELINE=0 ;;
    --no-probe) PROBE=0 ;;
    --smoke) SMOKE=1 ;;
    --out) OUT=$2; shift ;;
    --cache-dir) CACHE=$2; shift ;;
    --lazypull) LAZYPULL=$2; shift ;;
    --proxy) PROXY=$2; shift ;;
    --keep) KEEP=1 ;;
    --perf) PERF_DIR=$(realpath -m "$2"); mkdir -p "$PERF_DIR"; shift ;;
    --perf-system) SYS_DIR=$(realpath -m "$2"); mkdir -p "$SYS_DIR"; shift ;;
    --sweep) SWEEP=$2; shift ;;
    --convert-flags) CONVERT_FLAGS=$2; shift ;;
    --include) INCLUDE=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then
  PROFILES=(2ms-1gbit) WORKLOADS=(shell heavy) RUNS=1
  [ -n "$SEL_W" ] && [[ " $SEL_W " == *" python "* ]] && { echo "--smoke has no python workload" >&2; exit 2; }
fi
[ -n "$SEL_P" ] && read -ra PROFILES <<<"$SEL_P"
[ -n "$SEL_W" ] && read -ra WORKLOADS <<<"$SEL_W"
[ -n "$SEL_V" ] && read -ra VARIANTS <<<"$SEL_V"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "--runs: a positive number" >&2; exit 2; }

# The workloads, each ending with the line "ready". Only what a minbase + python3 image has.
declare -A CMD=(
  [python]='python3 -c "import json, os, re, subprocess, urllib.request, email.message, http.client, sqlite3, asyncio, logging; print(\"ready\")"'
  [shell]='ls -l /usr/bin | sort -k 9 | wc -l; sha256sum /etc/os-release; head -c 16384 /usr/share/common-licenses/GPL-3 | wc -c; date -u; echo ready'
  [heavy]='find /usr /etc /var -type f -exec cat {} + > /dev/null; echo ready'
)
CHROOT_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONDONTWRITEBYTECODE=1)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
loud() { printf '\033[1;31m!!! %s\033[0m\n' "$*" >&2; }
die() { loud "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mounts, chroot, drop_caches)"
for t in skopeo docker-registry openssl strace curl /usr/bin/time gzip tar; do
  command -v "$t" >/dev/null || die "missing $t (sudo ./dev.sh test installs every package)"
done
[ "$SMOKE" = 1 ] || command -v debootstrap >/dev/null || die "missing debootstrap (apt-get install debootstrap)"

# One measuring run at a time on this machine: two would share the CPUs and drop each other's page
# cache. The smoke mode (a test, measuring nothing precise) does not wait.
if [ "$SMOKE" = 0 ]; then
  LOCK=/run/lock/lazypull-coldstart.lock
  [ -d /run/lock ] || LOCK=/tmp/lazypull-coldstart.lock
  # fd 9; the long-lived children (registry, proxy, lazypull's serving processes) get it closed (9>&-),
  # so that a leaked one cannot hold the lock.
  exec 9>"$LOCK"
  if ! flock -n 9; then
    log "another bench/coldstart.sh is measuring ($LOCK): waiting for it to finish"
    flock 9
  fi
fi
T_START=$EPOCHREALTIME
W=$(mktemp -d "${TMPDIR:-/tmp}/lazypull-coldstart.XXXXXX")
PIDS=()
REPORTED=0
cleanup() {
  set +e
  if [ "$REPORTED" = 0 ] && [ -n "${CSV:-}" ] && [ "$(wc -l <"$CSV" 2>/dev/null || echo 0)" -gt 1 ]; then
    echo "interrupted after $(sub "$EPOCHREALTIME" "$T_START" | xargs printf '%.0f') s: a partial report" >>"$OUT/meta.txt"
    "$PY" "$TOOL" report "$OUT" && loud "interrupted: partial report in $OUT/summary.md"
  fi
  if mountpoint -q "$W/mnt" 2>/dev/null; then
    "$LAZYPULL" unmount "$W/mnt" >/dev/null 2>&1 || "$LAZYPULL" unmount --force "$W/mnt" >/dev/null 2>&1
  fi
  if mountpoint -q "$W/cache" 2>/dev/null; then umount "$W/cache"; fi
  if mountpoint -q "$W/pullfs" 2>/dev/null; then umount "$W/pullfs"; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [ "$KEEP" = 1 ]; then note "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "$OUT" ]; then
  OUT=$ROOT/bench/results/$(date +%F)
  [ -e "$OUT" ] && OUT=$OUT-$(date +%H%M%S)
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---------------------------------------------------------------- binaries
mkdir -p "$W/bin"
if [ -z "$LAZYPULL" ] || [ -z "$PROXY" ]; then
  log "building lazypull and lazypull-proxy (bazel build -c opt)"
  (cd "$ROOT" && bazel build -c opt //cli:lazypull //proxy:lazypull-proxy >"$W/bazel.log" 2>&1 9>&-) ||
    { cat "$W/bazel.log" >&2; die "bazel build failed"; }
  BB=$(cd "$ROOT" && bazel info -c opt bazel-bin 2>/dev/null 9>&-)
  LAZYPULL=${LAZYPULL:-$BB/cli/lazypull} PROXY=${PROXY:-$BB/proxy/lazypull-proxy}
fi
# Copies: other people rebuilding the tree mid-sweep must not change the binary under measurement.
cp "$LAZYPULL" "$W/bin/lazypull" && cp "$PROXY" "$W/bin/lazypull-proxy"
LAZYPULL=$W/bin/lazypull PROXY=$W/bin/lazypull-proxy
source "$HERE/oci_layout.sh"

# ---------------------------------------------------------------- root filesystem
# smoke: bash, dash, a few coreutils and their libraries from this machine, a little bulk, a minimal /etc
# and /var; otherwise the cached debootstrap tree.
smoke_rootfs() {
  local r=$W/rootfs list=$W/smoke.list b p
  : >"$list"
  for b in bash dash sh ls sort wc sha256sum date cat find head env; do
    b=$(command -v "$b")
    # Each path with its directories resolved (bin -> usr/bin), then the file it points to.
    echo "$(readlink -f "$(dirname "$b")" | sed 's|^/||')/$(basename "$b")" >>"$list"
    readlink -f "$b" | sed 's|^/||' >>"$list"
    for p in $(ldd "$(readlink -f "$b")" 2>/dev/null | grep -o '/[^ ]*'); do
      echo "$(readlink -f "$(dirname "$p")" | sed 's|^/||')/$(basename "$p")" >>"$list"
      readlink -f "$p" | sed 's|^/||' >>"$list"
    done
  done
  for l in bin sbin lib lib64; do [ -L "/$l" ] && echo "$l" >>"$list"; done
  mkdir -p "$r"
  sort -u "$list" | tar -C / -cf - --no-recursion -T - 2>/dev/null | tar -C "$r" -xf -
  [ -d /usr/share/common-licenses ] && tar -C / -cf - usr/share/common-licenses | tar -C "$r" -xf -
  mkdir -p "$r/etc" "$r/var/lib/smoke" "$r/dev" "$r/tmp" "$r/root"
  cp /etc/os-release "$r/etc/os-release" 2>/dev/null || echo 'PRETTY_NAME="smoke"' >"$r/etc/os-release"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
  echo 'root:x:0:' >"$r/etc/group"
  head -c 3000000 /dev/urandom >"$r/var/lib/smoke/random.bin"
  seq 1 200000 >"$r/var/lib/smoke/numbers.txt"
  mknod -m 666 "$r/dev/null" c 1 3
  mknod -m 666 "$r/dev/zero" c 1 5
  mknod -m 666 "$r/dev/urandom" c 1 9
}

if [ "$SMOKE" = 1 ]; then
  log "image: smoke root filesystem from this machine's files"
  smoke_rootfs
  ROOTFS=$W/rootfs
  tar --sort=name --numeric-owner -C "$ROOTFS" -cf "$W/rootfs.tar" .
  ROOTFS_TAR=$W/rootfs.tar
else
  [ "$INCLUDE" = reference ] && INCLUDE=python3,python3-pip,python3-numpy,git
  mkdir -p "$CACHE"
  # The default image keeps the cache's old name; others get one per package list.
  suffix=""
  [ "$INCLUDE" = python3 ] || suffix=-$(echo "$INCLUDE" | tr ',' '+')
  ROOTFS=$CACHE/rootfs$suffix ROOTFS_TAR=$CACHE/rootfs$suffix.tar
  if [ ! -d "$ROOTFS" ]; then
    log "image: debootstrap --variant=minbase --include=$INCLUDE bookworm (cached in $CACHE; ~3 min)"
    rm -rf "$CACHE/rootfs.tmp" "$ROOTFS_TAR"
    debootstrap --variant=minbase --include="$INCLUDE" bookworm "$CACHE/rootfs.tmp" \
      http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
      die "debootstrap failed: see $CACHE/debootstrap.log"
    mv "$CACHE/rootfs.tmp" "$ROOTFS"
  else
    log "image: cached root filesystem $ROOTFS"
  fi
  if [ ! -f "$ROOTFS_TAR" ]; then
    tar --sort=name --numeric-owner -C "$ROOTFS" -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  fi
fi
note "$(du -sh --apparent-size "$ROOTFS" | cut -f1) in $(find "$ROOTFS" -xdev -type f | wc -l) files; tar $(stat -c %s "$ROOTFS_TAR") bytes"

# ---------------------------------------------------------------- workload traces (floor, optimize fallback)
log "tracing each workload on the local copy (strace): the files it reads"
for wl in "${WORKLOADS[@]}"; do
  strace -f -y -qq -e trace=open,openat,execve,chroot -e signal=none -o "$W/strace-$wl.txt" \
    "${CHROOT_ENV[@]}" chroot "$ROOTFS" /bin/sh -c "${CMD[$wl]}" >"$W/trace-$wl.out" 2>&1 || true
  grep -qx ready "$W/trace-$wl.out" || die "workload $wl failed on the local copy: $(tail -3 "$W/trace-$wl.out")"
  "$PY" "$TOOL" trace "$ROOTFS" "$W/strace-$wl.txt" >"$W/files-$wl.txt"
  note "$wl: $(wc -l <"$W/files-$wl.txt") files"
  rm -f "$W/strace-$wl.txt"
done

# ---------------------------------------------------------------- variants
has() { local x; for x in "${@:2}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
NEED=("${VARIANTS[@]}")
[ "$BASELINE" = 1 ] && ! has gzip "${NEED[@]}" && NEED+=(gzip)
declare -A TAGS=()          # variant[/workload] -> tag in the registry
declare -A LAYER_DIGEST=()  # tag -> layer blob digest (the state file's name)

oci_from_convert() { # JSON LAYER DIR MEDIA_TYPE: one-layer OCI image tagged "img"
  local json=$1 layer=$2 dir=$3 media=$4 desc diff
  desc=$("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); print(json.dumps({"mediaType": sys.argv[2], "digest": c["blob_digest"], "size": c["blob_size"], "annotations": c["annotations"]}))' "$json" "$media")
  diff=$("$PY" -c 'import json,sys; print("\"%s\"" % json.load(open(sys.argv[1]))["diff_id"])' "$json")
  mkdir -p "$dir"
  oci_add_blob "$dir" "$layer" >/dev/null
  oci_write_image "$dir" img "$diff" "$desc"
}

log "variants: ${NEED[*]}"
if has gzip "${NEED[@]}"; then
  gzip -n -6 -c "$ROOTFS_TAR" >"$W/gzip.layer"
  read -r dig size < <(oci_add_blob "$W/oci-gzip" "$W/gzip.layer")
  oci_write_image "$W/oci-gzip" img "\"sha256:$(sha256sum "$ROOTFS_TAR" | cut -d' ' -f1)\"" \
    "{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$dig\",\"size\":$size}"
  TAGS[gzip]=gzip
fi
if has estargz "${NEED[@]}" || has estargz-opt "${NEED[@]}"; then
  # shellcheck disable=SC2086 # CONVERT_FLAGS is a list of flags
  "$LAZYPULL" convert "$ROOTFS_TAR" "$W/estargz.layer" $CONVERT_FLAGS >"$W/estargz.json"
  oci_from_convert "$W/estargz.json" "$W/estargz.layer" "$W/oci-estargz" application/vnd.oci.image.layer.v1.tar+gzip
  TAGS[estargz]=estargz
fi
if has estargz-shared "${NEED[@]}"; then
  # shellcheck disable=SC2086
  "$LAZYPULL" convert "$ROOTFS_TAR" "$W/shared.layer" --min-chunk-size 64K $CONVERT_FLAGS >"$W/shared.json"
  oci_from_convert "$W/shared.json" "$W/shared.layer" "$W/oci-estargz-shared" application/vnd.oci.image.layer.v1.tar+gzip
  TAGS[estargz-shared]=estargz-shared
fi
if has zstd-chunked "${NEED[@]}"; then
  # shellcheck disable=SC2086
  "$LAZYPULL" convert "$ROOTFS_TAR" "$W/zstd.layer" --format zstd:chunked $CONVERT_FLAGS >"$W/zstd.json"
  oci_from_convert "$W/zstd.json" "$W/zstd.layer" "$W/oci-zstd-chunked" application/vnd.oci.image.layer.v1.tar+zstd
  TAGS[zstd-chunked]=zstd-chunked
fi
OPT_MODE=""
if has estargz-opt "${NEED[@]}"; then
  if "$LAZYPULL" optimize --help >/dev/null 2>&1; then OPT_MODE=optimize; else
    OPT_MODE=fallback
    loud "lazypull optimize is not there yet: the optimized variant is 'lazypull convert --prioritize'"
    loud "with the files an strace of the workload on a local copy opened, in first-access order"
  fi
  for wl in "${WORKLOADS[@]}"; do
    d=$W/oci-estargz-opt-$wl
    if [ "$OPT_MODE" = optimize ]; then
      # shellcheck disable=SC2086
      if "$LAZYPULL" optimize "oci:$W/oci-estargz:img" --workload "${CMD[$wl]}" --period 900 $CONVERT_FLAGS \
        --record "$W/optimize-$wl.record" "oci:$d:img" >"$W/optimize-$wl.log" 2>&1 &&
        read -r lp _ < <("$PY" "$TOOL" oci-layer "$d" img) &&
        "$LAZYPULL" inspect "$lp" | grep -q 'prioritized files'; then
        note "estargz-opt/$wl: lazypull optimize ($("$LAZYPULL" inspect "$lp" | sed -n 's/^prefetch: *//p');" \
          "it recorded $(wc -l <"$W/optimize-$wl.record") opens, the strace $(wc -l <"$W/files-$wl.txt") files)"
      else
        loud "lazypull optimize failed or prioritized nothing for $wl ($(tail -2 "$W/optimize-$wl.log" | tr '\n' ' ')):"
        loud "falling back to convert --prioritize for this workload"
        OPT_MODE=fallback-after-optimize-failed
        rm -rf "$d"
      fi
    fi
    if [ ! -d "$d" ]; then
      "$LAZYPULL" convert "$ROOTFS_TAR" "$W/opt-$wl.layer" --prioritize "$W/files-$wl.txt" >"$W/opt-$wl.json"
      note "estargz-opt/$wl: $("$LAZYPULL" inspect "$W/opt-$wl.layer" | sed -n 's/^prefetch: *//p')"
      oci_from_convert "$W/opt-$wl.json" "$W/opt-$wl.layer" "$d" application/vnd.oci.image.layer.v1.tar+gzip
    fi
    TAGS[estargz-opt/$wl]=estargz-opt-$wl
  done
fi

# ---------------------------------------------------------------- registry (TLS) and push
log "docker-registry on 127.0.0.1 over TLS, pushing ${#TAGS[@]} image(s)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$W/key.pem" \
  -out "$W/cert.pem" -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
mkdir -p "$W/certs" && cp "$W/cert.pem" "$W/certs/ca.crt"
REG_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$W/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $W/registry}}
http:
  addr: 127.0.0.1:$REG_PORT
  tls: {certificate: $W/cert.pem, key: $W/key.pem}
YML
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 9>&- &
PIDS+=($!)
for _ in $(seq 100); do
  curl -sf --cacert "$W/cert.pem" "https://127.0.0.1:$REG_PORT/v2/" >/dev/null && break
  sleep 0.1
done
curl -sf --cacert "$W/cert.pem" "https://127.0.0.1:$REG_PORT/v2/" >/dev/null || die "docker-registry did not start"
declare -A OCI_OF=()
for key in "${!TAGS[@]}"; do
  tag=${TAGS[$key]}
  dir=$W/oci-${tag}
  OCI_OF[$tag]=$dir
  skopeo copy --quiet --dest-cert-dir "$W/certs" "oci:$dir:img" "docker://127.0.0.1:$REG_PORT/bench:$tag"
  read -r _ _ _ lsize ldig _ < <("$PY" "$TOOL" oci-layer "$dir" img)
  LAYER_DIGEST[$tag]=$ldig
  note "bench:$tag  layer $lsize bytes"
done

# ---------------------------------------------------------------- floor inputs
log "floor: compressed bytes of the chunks each workload reads"
echo "variant,workload,kind,files,chunk_bytes,toc_bytes,meta_bytes,floor_bytes,rtts" >"$OUT/floor.csv"
for key in "${!TAGS[@]}"; do
  tag=${TAGS[$key]} v=${key%%/*}
  read -r lp msize csize lsize _ < <("$PY" "$TOOL" oci-layer "${OCI_OF[$tag]}" img)
  for wl in "${WORKLOADS[@]}"; do
    [[ "$key" == */* && "$key" != */$wl ]] && continue
    kind=lazy; [ "$v" = gzip ] && kind=full
    "$PY" "$TOOL" floor --variant "$v" --workload "$wl" --kind $kind --trace "$W/files-$wl.txt" \
      --layer "$lp" --blob-size "$lsize" --manifest-size "$msize" --config-size "$csize" \
      --lazypull "$LAZYPULL" >>"$OUT/floor.csv"
  done
done

{
  echo "date:      $(date -Is)"
  echo "command:   bench/coldstart.sh $ARGS"
  echo "machine:   $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "lazypull:  $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' + uncommitted changes'), binary sha256 $(sha256sum "$LAZYPULL" | cut -c1-16)"
  echo "image:     $([ "$SMOKE" = 1 ] && echo "smoke (this machine's files)" || echo "debootstrap --variant=minbase --include=$INCLUDE bookworm"), tar $(stat -c %s "$ROOTFS_TAR") bytes"
  for key in $(printf '%s\n' "${!TAGS[@]}" | sort); do
    tag=${TAGS[$key]}
    read -r _ _ _ lsize _ < <("$PY" "$TOOL" oci-layer "${OCI_OF[$tag]}" img)
    echo "           bench:$tag layer $lsize bytes"
  done
  [ -n "$OPT_MODE" ] && echo "optimized: $([ "$OPT_MODE" = optimize ] && echo 'lazypull optimize' || echo "convert --prioritize FILES-FROM-STRACE ($OPT_MODE: lazypull optimize unavailable or failed)")"
  echo "runs:      $RUNS per cell; profiles ${PROFILES[*]}; workloads ${WORKLOADS[*]}; variants ${VARIANTS[*]}"
} >"$OUT/meta.txt"

# ---------------------------------------------------------------- measuring
CSV=$OUT/runs.csv
echo "profile,rtt_ms,bw_mbit,workload,variant,mode,run,mount_s,run_s,total_s,bytes_down,bytes_up,connections,requests,cpu_s,peak_rss_kb,fetched_bytes,ok,note" >"$CSV"
TICK=$(getconf CLK_TCK)
sub() { echo "$1 - $2" | bc -l | xargs printf '%.4f'; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
REQ0=0
reset_counters() {
  curl -sf -X POST "http://$CTRL/reset" >/dev/null
  REQ0=$(wc -l <"$W/registry.log")
}
# Sets DOWN UP CONNS REQS: the link's counters and docker-registry's access-log lines since the reset.
read_counters() {
  local j
  j=$(curl -sf "http://$CTRL/counters")
  DOWN=$(sed -n 's/.*"bytes_down":\([0-9]*\).*/\1/p' <<<"$j")
  UP=$(sed -n 's/.*"bytes_up":\([0-9]*\).*/\1/p' <<<"$j")
  CONNS=$(sed -n 's/.*"connections_accepted":\([0-9]*\).*/\1/p' <<<"$j")
  REQS=$(tail -n +$((REQ0 + 1)) "$W/registry.log" | grep -cE '^[0-9.]+ - - \[[^]]*\] "[A-Z]+ /v2/' || true)
}
# run_workload DIR WORKLOAD: runs it with chroot; prints the time its ready line arrived (nothing if never).
run_workload() {
  { "${CHROOT_ENV[@]}" chroot "$1" /bin/sh -c "${CMD[$2]}" 2>>"$W/workload.err" || true; } |
    while IFS= read -r line; do [ "$line" = ready ] && echo "$EPOCHREALTIME"; done
}
row() { # fields in CSV order after profile,rtt,bw
  local IFS=,
  echo "$PROFILE,$RTT_MS,$BW_MBIT,$*" >>"$CSV"
}
N_DONE=0 N_TOTAL=0
progress() {
  N_DONE=$((N_DONE + 1))
  printf '[%d/%d %s] %s\n' "$N_DONE" "$N_TOTAL" "$(date +%T)" "$*" >&2
}

# measure_mount WORKLOAD VARIANT TAG MODE(lazy|nobg) RUN
measure_mount() {
  local wl=$1 v=$2 tag=$3 mode=$4 run=$5 extra=() out pid t0 t1 tr st rest sf cpu hwm fetched="" state
  [ "$mode" = nobg ] && extra=(--no-background-fetch)
  if [ -n "${SWEEP_FLAGS[$mode]+x}" ]; then read -ra extra <<<"${SWEEP_FLAGS[$mode]}"; fi
  if mountpoint -q "$W/cache"; then umount "$W/cache"; fi
  rm -rf "$W/cache"
  # CACHE_TMPFS=1 (a diagnostic): the mount's cache directory, and the full pull's destination
  # (measure_pull), on tmpfs: the filesystem out of the comparison (this VM's journal-less ext4
  # scans every inode deleted in the last minute to create one: runs that extract thousands of
  # files right after others deleted as many pay for it).
  if [ "${CACHE_TMPFS:-0}" = 1 ]; then mkdir -p "$W/cache" && mount -t tmpfs -o size=1g,mode=700 tmpfs "$W/cache"; fi
  mkdir -p "$W/mnt"
  drop_caches
  reset_counters
  t0=$EPOCHREALTIME
  if ! out=$("$LAZYPULL" mount --ca-file "$W/cert.pem" "$REF/bench:$tag" "$W/mnt" --cache-dir "$W/cache" \
    "${extra[@]}" 2>"$W/mount.err" 9>&-); then
    row "$wl,$v,$mode,$run,,,,,,,,,,,0,mount failed: $(tr '\n,' '  ' <"$W/mount.err" | cut -c1-200)"
    progress "$wl $v $mode run $run: MOUNT FAILED: $(head -c 300 "$W/mount.err")"
    return
  fi
  t1=$EPOCHREALTIME
  pid=$(sed -n 's/.*(pid \([0-9]*\)).*/\1/p' <<<"$out")
  if grep -q 'pulled in full' <<<"$out" && [ "$run" = 1 ]; then note "$v: $(grep 'pulled in full' <<<"$out" | cut -c1-160)"; fi
  local perf_pid=""
  if [ -n "$PERF_DIR" ] && [ -n "$pid" ]; then
    perf record -q -e cpu-clock -g -p "$pid" -o "$PERF_DIR/$PROFILE-$wl-$v-$mode-$run.data" \
      >"$PERF_DIR/$PROFILE-$wl-$v-$mode-$run.log" 2>&1 9>&- &
    perf_pid=$!
  fi
  sys_perf_start "$PROFILE-$wl-$v-$mode-$run"
  tr=$(run_workload "$W/mnt" "$wl")
  sys_perf_stop "$PROFILE-$wl-$v-$mode-$run"
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; fi
  read_counters
  cpu="" hwm=""
  if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
    st=$(<"/proc/$pid/stat")
    rest=${st##*) }
    read -ra sf <<<"$rest" # fields 3.. of /proc/PID/stat: utime and stime are 14 and 15
    cpu=$(echo "(${sf[11]} + ${sf[12]}) / $TICK" | bc -l | xargs printf '%.2f')
    hwm=$(sed -n 's/^VmHWM:\s*\([0-9]*\) kB/\1/p' "/proc/$pid/status")
  fi
  state="$W/mnt/.stargz-snapshotter/${LAYER_DIGEST[$tag]}.json"
  [ -r "$state" ] && fetched=$(sed -n 's/.*"fetchedSize":\([0-9]*\).*/\1/p' "$state")
  "$LAZYPULL" unmount "$W/mnt" >/dev/null 2>&1 || "$LAZYPULL" unmount --force "$W/mnt" >/dev/null 2>&1 || true
  mkdir -p "$W/logs" && cp "$W/cache/lazypull.log" "$W/logs/$PROFILE-$wl-$v-$mode-$run.log" 2>/dev/null || true
  if [ -z "$tr" ]; then
    row "$wl,$v,$mode,$run,$(sub "$t1" "$t0"),,,$DOWN,$UP,$CONNS,$REQS,$cpu,$hwm,$fetched,0,no ready line: $(tail -2 "$W/workload.err" | tr '\n,' '  ' | cut -c1-200)"
    progress "$wl $v $mode run $run: NO READY LINE ($(tail -2 "$W/workload.err" | tr '\n' ' '))"
    return
  fi
  row "$wl,$v,$mode,$run,$(sub "$t1" "$t0"),$(sub "$tr" "$t1"),$(sub "$tr" "$t0"),$DOWN,$UP,$CONNS,$REQS,$cpu,$hwm,$fetched,1,"
  progress "$(printf '%-6s %-13s %-4s run %d: ready %6.2f s (mount %.2f + run %.2f), %.1f MB down, %d requests, CPU %s s' \
    "$wl" "$v" "$mode" "$run" "$(sub "$tr" "$t0")" "$(sub "$t1" "$t0")" "$(sub "$tr" "$t1")" \
    "$(echo "$DOWN / 1000000" | bc -l)" "$REQS" "${cpu:-?}")"
}

# sys_perf_start NAME / sys_perf_stop NAME: with --perf-system, the machine's CPU in between (a
# system-wide profile and /proc/stat's busy time, a line of SYS_DIR/cpu.tsv).
SYS_PID="" SYS_STAT=""
sys_perf_start() {
  [ -n "$SYS_DIR" ] || return 0
  SYS_STAT=$(head -1 /proc/stat) SYS_T0=$EPOCHREALTIME
  perf record -q -a -e cpu-clock -o "$SYS_DIR/$1.sys.data" >"$SYS_DIR/$1.sys.log" 2>&1 9>&- &
  SYS_PID=$!
}
sys_perf_stop() {
  [ -n "$SYS_DIR" ] || return 0
  local now t1=$EPOCHREALTIME
  now=$(head -1 /proc/stat)
  kill -INT "$SYS_PID" 2>/dev/null || true
  wait "$SYS_PID" 2>/dev/null || true
  [ -s "$SYS_DIR/cpu.tsv" ] || printf 'run\twall_s\tbusy_s\tuser_s\tsystem_s\n' >"$SYS_DIR/cpu.tsv"
  # /proc/stat's cpu line: user nice system idle iowait irq softirq steal (in ticks)
  awk -v name="$1" -v wall="$(sub "$t1" "$SYS_T0")" -v tick="$TICK" '
    NR == 1 { for (i = 2; i <= 9; i++) a[i] = $i }
    NR == 2 { for (i = 2; i <= 9; i++) d[i] = $i - a[i]
              busy = d[2] + d[3] + d[4] + d[7] + d[8] + d[9]
              printf "%s\t%.3f\t%.2f\t%.2f\t%.2f\n", name, wall, busy / tick, (d[2] + d[3]) / tick, (d[4] + d[7] + d[8]) / tick }
  ' <(printf '%s\n%s\n' "$SYS_STAT" "$now") >>"$SYS_DIR/cpu.tsv"
}

# measure_pull WORKLOAD RUN: lazypull pull of the gzip image, then the workload in the result.
measure_pull() {
  local wl=$1 run=$2 t0 t1 tr u s m dest=$W/pulled
  if [ "${CACHE_TMPFS:-0}" = 1 ]; then
    mountpoint -q "$W/pullfs" || { mkdir -p "$W/pullfs" && mount -t tmpfs -o size=2g tmpfs "$W/pullfs"; }
    dest=$W/pullfs/pulled # (pull's work directory is a sibling of its destination: on the tmpfs too)
  fi
  rm -rf "$dest"
  drop_caches
  reset_counters
  sys_perf_start "$PROFILE-$wl-pull-$run"
  t0=$EPOCHREALTIME
  if ! /usr/bin/time -f '%U %S %M' -o "$W/time.out" "$LAZYPULL" pull --ca-file "$W/cert.pem" \
    "$REF/bench:gzip" "$dest" >"$W/pull.out" 2>&1; then
    sys_perf_stop "$PROFILE-$wl-pull-$run"
    row "$wl,pull,pull,$run,,,,,,,,,,,0,pull failed: $(tail -1 "$W/pull.out" | tr ',' ' ' | cut -c1-200)"
    progress "$wl pull run $run: PULL FAILED: $(tail -2 "$W/pull.out")"
    return
  fi
  t1=$EPOCHREALTIME
  tr=$(run_workload "$dest" "$wl")
  sys_perf_stop "$PROFILE-$wl-pull-$run"
  read_counters
  read -r u s m <"$W/time.out"
  rm -rf "$dest"
  if [ -z "$tr" ]; then
    row "$wl,pull,pull,$run,$(sub "$t1" "$t0"),,,$DOWN,$UP,$CONNS,$REQS,,,,0,no ready line"
    progress "$wl pull run $run: NO READY LINE"
    return
  fi
  row "$wl,pull,pull,$run,$(sub "$t1" "$t0"),$(sub "$tr" "$t1"),$(sub "$tr" "$t0"),$DOWN,$UP,$CONNS,$REQS,$(echo "$u + $s" | bc -l | xargs printf '%.2f'),$m,,1,"
  progress "$(printf '%-6s %-13s %-4s run %d: ready %6.2f s (pull %.2f + run %.2f), %.1f MB down' \
    "$wl" pull pull "$run" "$(sub "$tr" "$t0")" "$(sub "$t1" "$t0")" "$(sub "$tr" "$t1")" "$(echo "$DOWN / 1000000" | bc -l)")"
}

# measure_skopeo: skopeo copy + tar -x of the gzip image (the neutral check; no workload).
measure_skopeo() {
  local t0 t1 l
  rm -rf "$W/skopeo" "$W/skopeo-root"
  drop_caches
  reset_counters
  t0=$EPOCHREALTIME
  l=${LAYER_DIGEST[gzip]}
  if ! skopeo copy --quiet --src-cert-dir "$W/certs" "docker://$REF/bench:gzip" "dir:$W/skopeo" ||
    ! mkdir -p "$W/skopeo-root" || ! tar -xzf "$W/skopeo/${l#sha256:}" -C "$W/skopeo-root"; then
    row "-,skopeo,skopeo,1,,,,,,,,,,,0,skopeo copy or tar failed"
    progress "skopeo: FAILED"
    return
  fi
  t1=$EPOCHREALTIME
  read_counters
  rm -rf "$W/skopeo" "$W/skopeo-root"
  row "-,skopeo,skopeo,1,$(sub "$t1" "$t0"),0,$(sub "$t1" "$t0"),$DOWN,$UP,$CONNS,$REQS,,,,1,"
  progress "skopeo copy + tar -x: $(sub "$t1" "$t0") s, $(echo "$DOWN / 1000000" | bc -l | xargs printf %.1f) MB down"
}

# The modes each lazy variant runs in: "lazy" (defaults), or the sweep's.
declare -A SWEEP_FLAGS=()
SWEEP_MODES=(lazy)
if [ -n "$SWEEP" ]; then
  SWEEP_MODES=()
  while IFS=$'\t' read -r label flags; do
    [ -z "$label" ] || [ "${label:0:1}" = "#" ] && continue
    SWEEP_MODES+=("$label")
    SWEEP_FLAGS[$label]=$flags
  done <"$SWEEP"
  [ ${#SWEEP_MODES[@]} -gt 0 ] || die "--sweep $SWEEP lists no modes"
fi

lazy_variants=()
for v in "${VARIANTS[@]}"; do lazy_variants+=("$v"); done
per_profile=$((${#WORKLOADS[@]} * RUNS * (${#lazy_variants[@]} * ${#SWEEP_MODES[@]} + BASELINE) + BASELINE))
probes=0
for v in "${lazy_variants[@]}"; do [ "$v" != gzip ] && probes=$((probes + ${#WORKLOADS[@]})); done
[ "$PROBE" = 1 ] || probes=0
N_TOTAL=$((${#PROFILES[@]} * per_profile + probes + ${#WORKLOADS[@]} * RUNS))

log "local runs (the workload on the local copy, page cache warm)"
PROFILE=- RTT_MS='' BW_MBIT=''
for wl in "${WORKLOADS[@]}"; do
  run_workload "$ROOTFS" "$wl" >/dev/null # warm-up
  for run in $(seq "$RUNS"); do
    t0=$EPOCHREALTIME
    tr=$(run_workload "$ROOTFS" "$wl")
    [ -n "$tr" ] || die "workload $wl gave no ready line on the local copy"
    row "$wl,local,local,$run,0,$(sub "$tr" "$t0"),$(sub "$tr" "$t0"),,,,,,,,1,"
    progress "$wl local run $run: $(sub "$tr" "$t0") s"
  done
done

first_profile=1
for PROFILE in "${PROFILES[@]}"; do
  rtt=${PROFILE%-*} bw=${PROFILE#*-}
  RTT_MS=${rtt%ms}
  case $bw in *gbit) BW_MBIT=$((${bw%gbit} * 1000)) ;; *mbit) BW_MBIT=${bw%mbit} ;; esac
  log "profile rtt=$rtt bw=$bw"
  "$PROXY" --upstream "127.0.0.1:$REG_PORT" --rtt "$rtt" --bw "$bw" --control-port 0 >"$W/proxy.out" 2>"$W/proxy.log" 9>&- &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  for _ in $(seq 100); do grep -q '^control' "$W/proxy.out" && break; sleep 0.05; done
  REF=$(sed -n 's/^listening \(127.0.0.1:[0-9]*\)$/\1/p' "$W/proxy.out")
  CTRL=$(sed -n 's/^control \(127.0.0.1:[0-9]*\)$/\1/p' "$W/proxy.out")
  if [ -z "$REF" ] || [ -z "$CTRL" ]; then die "lazypull-proxy did not start: $(cat "$W/proxy.log")"; fi
  [ "$BASELINE" = 1 ] && measure_skopeo
  for wl in "${WORKLOADS[@]}"; do
    # Runs interleaved across variants, so that drift in the machine's load spreads over all of them.
    for run in $(seq "$RUNS"); do
      [ "$BASELINE" = 1 ] && measure_pull "$wl" "$run"
      for v in "${lazy_variants[@]}"; do
        tag=${TAGS[$v]:-${TAGS[$v/$wl]:-}}
        for mode in "${SWEEP_MODES[@]}"; do
          measure_mount "$wl" "$v" "$tag" "$mode" "$run"
        done
      done
    done
    if [ "$PROBE" = 1 ] && [ "$first_profile" = 1 ]; then
      for v in "${lazy_variants[@]}"; do
        [ "$v" = gzip ] && continue
        tag=${TAGS[$v]:-${TAGS[$v/$wl]:-}}
        measure_mount "$wl" "$v" "$tag" nobg 1
      done
    fi
  done
  kill "$PROXY_PID"
  wait "$PROXY_PID" 2>/dev/null || true
  unset 'PIDS[-1]'
  first_profile=0
done

log "report"
"$PY" "$TOOL" report "$OUT"
REPORTED=1
echo "duration:  $(sub "$EPOCHREALTIME" "$T_START" | xargs printf '%.0f') s" >>"$OUT/meta.txt"
note "$(grep -c ',1,$' "$CSV" || true) runs ok, $(grep -vc ',1,$' "$CSV" | xargs -I{} expr {} - 1) failed"
note "$OUT/runs.csv  $OUT/floor.csv  $OUT/summary.md  $OUT/chart.svg"
note "took $(sub "$EPOCHREALTIME" "$T_START" | xargs printf '%.0f') s"
