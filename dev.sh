#!/usr/bin/env bash
# lazypull's two set-up commands (see README.md):
#   sudo ./dev.sh demo   install what is missing, build, run the demo
#   sudo ./dev.sh test   install what is missing, build, run every test
# Both work on a fresh Debian 12 machine, fully offline apart from apt.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD

# Debian 12 packages the build, the tests and the demo need.
PACKAGES=(
  bazel-bootstrap g++ clang-format clang-14 libclang-rt-14-dev
  libabsl-dev libssl-dev libisal-dev libzstd-dev zstd zlib1g-dev
  libdeflate-dev libsimdjson-dev liburing-dev libfuse3-dev fuse3
  libcurl4-openssl-dev libnghttp2-dev libgtest-dev libgmock-dev
  libbenchmark-dev docker-registry skopeo apache2-utils tar gzip
  ca-certificates python3 bc curl
  debootstrap strace time openssl
)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "all ${#PACKAGES[@]} Debian packages present"
    return
  fi
  log "installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"
}

testdata_dir() {
  if [ -n "${LAZYPULL_TESTDATA:-}" ] && [ -d "$LAZYPULL_TESTDATA" ]; then
    echo "$LAZYPULL_TESTDATA"
  elif [ -d "$ROOT/../shared/testdata" ]; then
    (cd "$ROOT/../shared/testdata" && pwd)
  fi
}

build() {
  log "building (bazel build //...)"
  bazel build //...
}

check_format() {
  log "checking clang-format (Google style)"
  local files
  files=$(git ls-files '*.cc' '*.h' 2>/dev/null || find core cli fetch fuse bench tests -name '*.cc' -o -name '*.h')
  # shellcheck disable=SC2086
  clang-format --style=file --dry-run --Werror $files
}

demo_cleanup() {
  umount -l "$DEMO_WORK/mnt" 2>/dev/null || true
  "$ROOT/bazel-bin/cli/lazypull" unmount "$DEMO_WORK/mnt" >/dev/null 2>&1 || true
  [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null
  [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null
  rm -rf "$DEMO_WORK"
}

# The main job: an image in a local registry, started lazily.
run_demo() {
  local bin="$ROOT/bazel-bin/cli/lazypull" work files ref t0 t1 t2 t3 lazy
  DEMO_WORK=$(mktemp -d /tmp/lazypull-demo.XXXXXX)
  work=$DEMO_WORK
  trap demo_cleanup EXIT
  source "$ROOT/bench/oci_layout.sh"

  log "1. an image from this machine's files: bash, coreutils and their libraries, plus /usr/share as bulk"
  files="$work/files"
  : >"$files"
  for b in /usr/bin/bash /usr/bin/ls /usr/bin/cat /usr/bin/wc /usr/bin/head; do
    echo "${b#/}" >>"$files"
    for p in $(ldd "$b" | grep -o '/[^ ]*'); do
      echo "$(readlink -f "$(dirname "$p")" | sed 's|^/||')/$(basename "$p")" >>"$files"
      readlink -f "$p" | sed 's|^/||' >>"$files"
    done
  done
  sort -u "$files" -o "$work/prioritize.txt"
  for l in bin sbin lib lib64; do [ -L "/$l" ] && echo "$l" >>"$files"; done
  for d in usr/share/zoneinfo usr/share/doc usr/share/common-licenses usr/share/perl5; do
    [ -d "/$d" ] && echo "$d" >>"$files"
  done
  sort -u "$files" | tar -C / -cf "$work/rootfs.tar" --no-recursion -T - 2>/dev/null || true
  for d in usr/share/zoneinfo usr/share/doc usr/share/common-licenses usr/share/perl5; do
    [ -d "/$d" ] && tar -C / -rf "$work/rootfs.tar" "$d" 2>/dev/null
  done
  ls -l "$work/rootfs.tar" | awk '{printf "   rootfs tar: %.1f MB\n", $5/1e6}'

  log "2. lazypull convert: eStargz, bash and its libraries prioritized (fetched first)"
  "$bin" convert "$work/rootfs.tar" "$work/layer.esgz" --prioritize "$work/prioritize.txt" >"$work/convert.json"
  cat "$work/convert.json"
  "$bin" inspect "$work/layer.esgz"
  "$bin" verify "$work/layer.esgz" | tail -2

  log "3. push it to a local registry (docker-registry on 127.0.0.1, started by this demo)"
  oci_layer_from_convert "$work/convert.json" "$work/layer.esgz" "$work/oci" demo
  registry_start "$work"
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:demo" \
    "docker://127.0.0.1:$REGISTRY_PORT/demo:latest"
  # Reach it through the project's link emulator, as over a real network.
  "$ROOT/bazel-bin/proxy/lazypull-proxy" --upstream "127.0.0.1:$REGISTRY_PORT" \
    --rtt 20ms --bw 100mbit >"$work/proxy.out" 2>"$work/proxy.log" &
  PROXY_PID=$!
  for _ in $(seq 50); do grep -q listening "$work/proxy.out" && break; sleep 0.1; done
  ref="$(sed -n 's/^listening \(127.0.0.1:[0-9]*\).*/\1/p' "$work/proxy.out")/demo:latest"
  echo "   $ref (through an emulated link: 20 ms round trip, 100 Mbit/s)"

  log "4. lazypull mount $ref: the image's root filesystem, at once"
  mkdir -p "$work/mnt"
  t0=$(date +%s.%N)
  "$bin" mount --plain-http "$ref" "$work/mnt" --cache-dir "$work/cache" --no-background-fetch
  t1=$(date +%s.%N)
  echo "   mounted in $(echo "$t1 - $t0" | bc -l | xargs printf %.2f) s"
  log "5. run a program from it with chroot"
  chroot "$work/mnt" /usr/bin/bash -c 'echo "   hello from bash, lazily started from the registry"; echo "   /usr/bin holds $(ls /usr/bin | wc -l) programs"'
  t2=$(date +%s.%N)
  lazy=$(echo "$t2 - $t0" | bc -l | xargs printf %.2f)
  echo "   mount + run: $lazy s; what the layer's state file says was fetched:"
  # (The file is padded with spaces to a constant size: shown without them.)
  sed 's/ *$//' "$work"/mnt/.stargz-snapshotter/"$(sed -n 's/.*"blob_digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' "$work/convert.json")".json 2>/dev/null
  "$bin" unmount "$work/mnt"

  log "6. for comparison: lazypull pull (the conventional full pull) of the same image"
  t2=$(date +%s.%N)
  "$bin" pull --plain-http "$ref" "$work/pulled" | tail -2
  t3=$(date +%s.%N)
  echo "   full pull: $(echo "$t3 - $t2" | bc -l | xargs printf %.2f) s for $(stat -c %s "$work/layer.esgz") bytes;" \
       "lazy: mount + run $lazy s, fetching only what bash read"
}

run_tests() {
  local td args=() summary rc=0
  check_format || { log "FAILED: clang-format check"; rc=1; }
  td=$(testdata_dir)
  if [ -n "$td" ]; then
    log "golden layers: $td"
    args+=("--test_env=LAZYPULL_TESTDATA=$td")
  else
    log "WARNING: ../shared/testdata is absent: the golden-layer tests will be SKIPPED"
  fi
  log "running every test (bazel test //...)"
  bazel test //... "${args[@]}" --test_output=errors --test_summary=short 2>&1 | tee /tmp/lazypull-test.log || rc=1
  log "fuzzing the footer + TOC parser (bounded)"
  LAZYPULL_TESTDATA="$td" bash tests/fuzz/run_fuzzer.sh "${LAZYPULL_FUZZ_SECONDS:-60}" || rc=1
  summary=$(grep -Eo 'Executed [0-9]+ out of [0-9]+ tests?: .*' /tmp/lazypull-test.log | tail -1 || true)
  local total passed failed
  total=$(grep -Eo '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|SKIPPED)' /tmp/lazypull-test.log | wc -l)
  passed=$(grep -Ec '^//[^ ]+ +(\(cached\) )?PASSED' /tmp/lazypull-test.log || true)
  failed=$((total - passed))
  [ "$rc" = 0 ] || [ "$failed" -gt 0 ] || failed=1
  echo "bazel: ${summary:-no summary}"
  echo "lazypull: $passed passed, $failed failed"
  return "$rc"
}

case "${1:-}" in
  demo) install_packages; build; run_demo ;;
  test) install_packages; build; run_tests ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac
