#!/usr/bin/env bash
# Builds and runs the footer + TOC libFuzzer target (tests/fuzz/toc_fuzzer.cc)
# for a bounded time. Outside Bazel: Bazel's auto-configured toolchain is gcc,
# and libFuzzer needs clang 14 (clang-14 + libclang-rt-14-dev).
#
# Usage: tests/fuzz/run_fuzzer.sh [SECONDS]
#   SECONDS                 fuzzing time (default $LAZYPULL_FUZZ_SECONDS or 60)
#   LAZYPULL_TESTDATA       shared test data (default ../shared/testdata beside
#                           the checkout); its blobs and their TOC JSON seed the
#                           corpus, with a few built-in seeds added always
#   LAZYPULL_FUZZ_MAX_SEED  largest test-data blob used whole as a seed (default
#                           262144: the ~2 MB blobs would cut the executions
#                           per second ~8x; their TOC JSON is seeded anyway, and
#                           the built-in seeds are small valid blobs of all
#                           four footer dialects)
#   LAZYPULL_FUZZ_DIR       work dir (default: a fresh mktemp -d, removed on
#                           success unless LAZYPULL_FUZZ_KEEP=1)
#   CLANGXX                 compiler (default clang++-14)
#   LAZYPULL_FUZZ_ARGS      extra libFuzzer flags
#
# Exit status: 0 when the run ended without a finding; non-zero on a build
# failure or on any crash, sanitizer report, leak, timeout or OOM (the
# reproducer is kept under the work dir's artifacts/ and its path printed).
set -euo pipefail

SECONDS_BUDGET="${1:-${LAZYPULL_FUZZ_SECONDS:-60}}"
if ! [[ "$SECONDS_BUDGET" =~ ^[0-9]+$ ]] || [[ "$SECONDS_BUDGET" -lt 1 ]]; then
  echo "run_fuzzer.sh: duration must be a positive number of seconds, got '$SECONDS_BUDGET'" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLANGXX="${CLANGXX:-clang++-14}"
TESTDATA="${LAZYPULL_TESTDATA:-$REPO/../shared/testdata}"

if ! command -v "$CLANGXX" >/dev/null; then
  echo "run_fuzzer.sh: $CLANGXX not found (apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 2
fi

if [[ -n "${LAZYPULL_FUZZ_DIR:-}" ]]; then
  WORK="$LAZYPULL_FUZZ_DIR"
  mkdir -p "$WORK"
  KEEP=1
else
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/lazypull-fuzz.XXXXXX")"
  KEEP="${LAZYPULL_FUZZ_KEEP:-0}"
fi
mkdir -p "$WORK/seeds" "$WORK/regress" "$WORK/corpus" "$WORK/artifacts"

# ---- build ------------------------------------------------------------------
SRCS=(footer toc layer_index decompressor isal_inflater zstd_decompressor
      layer_reader digest memory_blob_source buffer_pool tar_path)
SRC_PATHS=()
for s in "${SRCS[@]}"; do SRC_PATHS+=("$REPO/core/$s.cc"); done
# The abseil libraries of //bazel:absl.
ABSL_LIBS=(-labsl_status -labsl_statusor -labsl_strings
           -labsl_str_format_internal -labsl_synchronization -labsl_time
           -labsl_base -labsl_raw_logging_internal -labsl_throw_delegate
           -labsl_hash -labsl_raw_hash_set -labsl_cord -labsl_int128)
BIN="$WORK/toc_fuzzer"
echo "== building $BIN with $CLANGXX (ASan + UBSan + libFuzzer)"
build_start=$(date +%s)
"$CLANGXX" -std=c++20 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$REPO" \
  "$REPO/tests/fuzz/toc_fuzzer.cc" "${SRC_PATHS[@]}" \
  -lisal -lzstd -lcrypto -lsimdjson "${ABSL_LIBS[@]}" -pthread \
  -o "$BIN"
echo "   built in $(( $(date +%s) - build_start )) s"

# ---- seed corpus ------------------------------------------------------------
echo "== seeding corpus from ${TESTDATA} (if present) and built-in seeds"
python3 - "$TESTDATA" "$WORK/seeds" "${LAZYPULL_FUZZ_MAX_SEED:-262144}" <<'PY'
import gzip, io, json, os, struct, subprocess, sys, tarfile, hashlib

testdata, out, max_seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = 0

def put(name, data):
    global n
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    n += 1

def zstd(data):
    return subprocess.run(["zstd", "-3", "-q", "-c"], input=data,
                          stdout=subprocess.PIPE, check=True).stdout

def unzstd(data):
    return subprocess.run(["zstd", "-d", "-q", "-c"], input=data,
                          stdout=subprocess.PIPE, check=True).stdout

def toc_json(blob):
    """The TOC JSON of a gzip or zstd:chunked blob, or None."""
    tail = blob[-72:]
    if tail.endswith(b"GnUlInUx") or tail.endswith(b"GNUlInUx"):
        p = len(blob) - (40 if tail.endswith(b"GnUlInUx") else 64)
        off, clen, _ = struct.unpack_from("<QQQ", blob, p)
        return unzstd(blob[off:off + clen])
    i = tail.rfind(b"STARGZ")
    if i < 16:
        return None
    off = int(tail[i - 16:i], 16)
    tar = gzip.decompress(blob[off:])  # the footer is an empty member
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return t.extractfile("stargz.index.json").read()

if os.path.isdir(testdata):
    for root, _, files in sorted(os.walk(testdata)):
        for fn in sorted(files):
            if not (fn.endswith(".esgz") or fn.endswith(".zstdchunked")):
                continue
            case = os.path.basename(root)
            blob = open(os.path.join(root, fn), "rb").read()
            if len(blob) <= max_seed:
                put(f"blob-{case}", blob)
            try:
                j = toc_json(blob)
            except Exception:
                j = None  # broken cases (truncated, bad footer) have none
            if j:
                put(f"toc-{case}.json", j)
else:
    print(f"   note: {testdata} not found; built-in seeds only")

# ---- built-in seeds: small valid layers of each dialect --------------------
def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()

def tar_header(name, size, typ=b"0"):
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000644\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % 1622548800
    h[148:156] = b"        "
    h[156:157] = typ
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)

def pad(b):
    return b + b"\0" * (-len(b) % 512)

a = b"hello, lazy world\n" * 3
b1, b2 = b"B" * 700, b"b" * 300  # file "b" in two chunks
files = [("dir/a", [a]), ("b", [b1, b2])]

def entries(offsets):
    e = [{"name": "dir/", "type": "dir", "mode": 493,
          "modtime": "2021-06-01T12:00:00Z"}]
    for (name, parts), offs in zip(files, offsets):
        whole = b"".join(parts)
        pos = 0
        for k, (p, o) in enumerate(zip(parts, offs)):
            x = {"name": name, "offset": o, "chunkDigest": digest(p)}
            if k == 0:
                x.update(type="reg", size=len(whole), mode=420, uid=1000,
                         gid=1000, userName="u", groupName="g",
                         modtime="2021-06-01T12:01:00.5+02:00",
                         digest=digest(whole))
            else:
                x.update(type="chunk", chunkOffset=pos)
            if len(parts) > 1:
                x["chunkSize"] = len(p)
            e.append(x)
            pos += len(p)
    e.append({"name": "link", "type": "symlink", "linkName": "dir/a"})
    e.append({"name": "hard", "type": "hardlink", "linkName": "dir/a"})
    e.append({"name": "dir/dev", "type": "char", "devMajor": 1,
              "devMinor": 3, "xattrs": {"user.k": "dmFsdWU="}})
    return e

def dumps(e, version=1):
    return json.dumps({"version": version, "entries": e}, indent="\t").encode()

def estargz(legacy=False):
    blob, offsets = b"", []
    for name, parts in files:
        blob += gzip.compress(tar_header(name, sum(map(len, parts))), 9)
        offs = []
        for k, p in enumerate(parts):
            offs.append(len(blob))
            last = k == len(parts) - 1
            blob += gzip.compress(pad(p) if last else p, 9)
        offsets.append(offs)
    toc = dumps(entries(offsets))
    toc_off = len(blob)
    blob += gzip.compress(tar_header("stargz.index.json", len(toc)) + pad(toc)
                          + b"\0" * 1024, 9)
    head = b"\x1f\x8b\x08\x04\0\0\0\0\0\xff"
    tail = b"\x01\x00\x00\xff\xff" + b"\0" * 8
    if legacy:
        footer = head + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_off + tail
    else:
        footer = (head + struct.pack("<H", 26) + b"SG" + struct.pack("<H", 22)
                  + b"%016xSTARGZ" % toc_off + tail)
    return blob + footer, toc

def zstdchunked(storage=False):
    skip = b"\x50\x2a\x4d\x18"
    blob, offsets = b"", []
    for name, parts in files:
        blob += zstd(tar_header(name, sum(map(len, parts))))
        offs = []
        for k, p in enumerate(parts):
            offs.append(len(blob))
            blob += zstd(pad(p) if k == len(parts) - 1 else p)
        offsets.append(offs)
    toc = dumps(entries(offsets), 2 if storage else 1)
    ctoc = zstd(toc)
    blob += skip + struct.pack("<I", len(ctoc))
    toc_off = len(blob)
    blob += ctoc
    if storage:
        payload = struct.pack("<QQQQQQQ", toc_off, len(ctoc), len(toc), 1,
                              0, 0, 0) + b"GNUlInUx"
    else:
        payload = struct.pack("<QQQQ", toc_off, len(ctoc), len(toc), 1) + b"GnUlInUx"
    return blob + skip + struct.pack("<I", len(payload)) + payload, toc

for name, fn in [("estargz", lambda: estargz()),
                 ("legacy", lambda: estargz(True)),
                 ("zstdchunked", lambda: zstdchunked()),
                 ("zstdchunked-storage", lambda: zstdchunked(True))]:
    blob, toc = fn()
    put(f"builtin-blob-{name}", blob)
    put(f"builtin-toc-{name}.json", toc)
put("builtin-toc-empty.json", b'{\n\t"version": 1,\n\t"entries": null\n}')
put("builtin-toc-min.json", b'{"version":2,"entries":[{"name":"./","type":"dir"},'
    b'{"name":"z","type":"reg","size":5,"chunkType":"zeros","endOffset":9}]}')
# Regression inputs for hostile shapes that once crashed or hung the index,
# run once before fuzzing (too slow to be worth mutating): a name 30,000
# components deep (stack overflow in a recursive EnsureDir) and a chain of
# 1,000 hardlinks (cubic link resolution: ~24 s, over -timeout).
out = os.path.join(os.path.dirname(out), "regress")
put("toc-deep-name.json", b'{"version":1,"entries":[{"name":"'
    + b"d/" * 30000 + b'f","type":"reg"}]}')
chain = [{"name": "f", "type": "reg"}] + [
    {"name": f"l{i}", "type": "hardlink",
     "linkName": f"l{i + 1}" if i + 1 < 1000 else "f"} for i in range(1000)]
put("toc-hardlink-chain.json", dumps(chain))
n -= 2
print(f"   {n} seed files")
PY

cat > "$WORK/toc.dict" <<'EOF'
"\"version\""
"\"entries\""
"\"name\""
"\"type\""
"\"size\""
"\"modtime\""
"\"mode\""
"\"linkName\""
"\"uid\""
"\"gid\""
"\"userName\""
"\"groupName\""
"\"devMajor\""
"\"devMinor\""
"\"digest\""
"\"xattrs\""
"\"offset\""
"\"endOffset\""
"\"innerOffset\""
"\"chunkOffset\""
"\"chunkSize\""
"\"chunkDigest\""
"\"chunkType\""
"\"zeros\""
"\"reg\""
"\"dir\""
"\"chunk\""
"\"symlink\""
"\"hardlink\""
"\"char\""
"\"block\""
"\"fifo\""
"\"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\""
"\"../\""
"\".prefetch.landmark\""
"\".no.prefetch.landmark\""
"STARGZ"
"GnUlInUx"
"GNUlInUx"
"\x1f\x8b\x08\x04"
"\x28\xb5\x2f\xfd"
"\x50\x2a\x4d\x18"
"stargz.index.json"
EOF

# ---- regression inputs ------------------------------------------------------
echo "== running the regression inputs once"
set +e
"$BIN" -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$WORK/artifacts/" \
  "$WORK"/regress/* >"$WORK/regress.log" 2>&1
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "== FAILURE: a regression input crashed or timed out. Log tail:" >&2
  tail -n 40 "$WORK/regress.log" >&2
  echo "== work dir kept: $WORK" >&2
  exit "$rc"
fi
echo "   $(find "$WORK/regress" -type f | wc -l) inputs OK"

# ---- run ----------------------------------------------------------------
# Keep the largest seed whole (libFuzzer would cut the golden 2 MB blobs to
# 1 MiB, losing their footers); at least libFuzzer's usual 4096.
MAX_LEN=$(find "$WORK/seeds" -type f -printf '%s\n' | sort -n | tail -1)
(( MAX_LEN >= 4096 )) || MAX_LEN=4096
echo "== fuzzing for ${SECONDS_BUDGET} s, -max_len=${MAX_LEN} (work dir $WORK)"
set +e
# shellcheck disable=SC2086
"$BIN" "$WORK/corpus" "$WORK/seeds" \
  -max_total_time="$SECONDS_BUDGET" -rss_limit_mb=2048 -timeout=10 \
  -max_len="$MAX_LEN" -dict="$WORK/toc.dict" -print_final_stats=1 \
  -artifact_prefix="$WORK/artifacts/" ${LAZYPULL_FUZZ_ARGS:-} \
  >"$WORK/fuzz.log" 2>&1
rc=$?
set -e

execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/fuzz.log" | grep -o '[0-9]*$' || true)
cov=$(grep -E '^#[0-9]+' "$WORK/fuzz.log" | tail -1 || true)
artifacts=$(ls -A "$WORK/artifacts")
echo "== result: exit ${rc}, ${execs:-?} executions in ${SECONDS_BUDGET} s"
echo "   last status: ${cov:-?}"
echo "   corpus: $(find "$WORK/corpus" -type f | wc -l) new inputs"
if [[ $rc -ne 0 || -n "$artifacts" ]]; then
  echo "== FAILURE: the fuzzer found a problem. Log tail:" >&2
  tail -n 60 "$WORK/fuzz.log" >&2
  echo "== reproducers in $WORK/artifacts/ (rerun: $BIN <file>):" >&2
  ls -l "$WORK/artifacts" >&2
  [[ $rc -ne 0 ]] || rc=1
  exit "$rc"
fi
if [[ "$KEEP" == 1 ]]; then
  echo "   kept $WORK"
else
  rm -rf "$WORK"
fi
echo "== OK: no crash"
