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
  ca-certificates python3
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

run_demo() {
  local bin="$ROOT/bazel-bin/cli/lazypull" toc
  DEMO_WORK=$(mktemp -d /tmp/lazypull-demo.XXXXXX)
  local work=$DEMO_WORK
  trap 'umount -l "$DEMO_WORK/mnt" 2>/dev/null; rm -rf "$DEMO_WORK"' EXIT
  log "making a layer: a tar of a few of this machine's files (bash, coreutils, zoneinfo)"
  tar -C / -cf "$work/in.tar" usr/bin/bash usr/bin/ls usr/bin/cat usr/bin/sort \
    usr/lib/os-release usr/share/zoneinfo usr/share/common-licenses 2>/dev/null || true
  printf 'usr/bin/bash\nusr/lib/os-release\n' >"$work/prioritize.txt"
  log "lazypull convert in.tar layer.esgz --prioritize prioritize.txt"
  "$bin" convert "$work/in.tar" "$work/layer.esgz" --prioritize "$work/prioritize.txt" | tee "$work/convert.json"
  toc=$(sed -n 's/.*"toc_digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' "$work/convert.json" | head -1)
  log "lazypull inspect layer.esgz"
  "$bin" inspect "$work/layer.esgz"
  log "lazypull verify layer.esgz --toc-digest $toc"
  "$bin" verify "$work/layer.esgz" --toc-digest "$toc"
  log "lazypull extract layer.esgz rootfs"
  "$bin" extract "$work/layer.esgz" "$work/rootfs"
  du -sh "$work/rootfs"
  log "lazypull mount --blob layer.esgz: the layer is a filesystem at once, fetched as read"
  mkdir -p "$work/mnt"
  "$bin" mount --blob "$work/layer.esgz" --toc-digest "$toc" "$work/mnt" --cache-dir "$work/cache"
  cat "$work/mnt/.stargz-snapshotter/$toc.json"; echo
  head -3 "$work/mnt/usr/lib/os-release"
  "$work/mnt/usr/bin/bash" -c 'echo "bash from the lazy mount says hello"' 2>/dev/null ||
    echo "(could not run bash from the mount)"
  cat "$work/mnt/.stargz-snapshotter/$toc.json"; echo
  log "lazypull unmount"
  "$bin" unmount "$work/mnt"
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
