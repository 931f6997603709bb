#!/usr/bin/env bash
# The cold-start benchmark's smoke mode, run by the test command so the harness cannot rot: a tiny image
# from this machine's files, one profile, one run of each cell; then the CSVs, the summary and the chart
# are checked for the expected rows and sane numbers. Needs root (mounts, chroot): tagged no-sandbox.
set -euo pipefail
RUNFILES=${TEST_SRCDIR:-$0.runfiles}/lazypull
OUT=${TEST_TMPDIR:-$(mktemp -d)}/coldstart
if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED: the cold-start smoke test needs root (FUSE mounts, chroot)"
  exit 0
fi
bash "$RUNFILES/bench/coldstart.sh" --smoke --out "$OUT" \
  --lazypull "$RUNFILES/cli/lazypull" --proxy "$RUNFILES/proxy/lazypull-proxy"

/usr/bin/python3 - "$OUT" <<'EOF'
import csv, os, sys, xml.etree.ElementTree as ET

out = sys.argv[1]
runs = list(csv.DictReader(open(os.path.join(out, "runs.csv"))))
floor = {(r["variant"], r["workload"]): r for r in csv.DictReader(open(os.path.join(out, "floor.csv")))}
errors = []

def check(cond, what):
    if not cond:
        errors.append(what)

def rows(**kw):
    return [r for r in runs if all(r[k] == v for k, v in kw.items())]

def f(r, k):
    return float(r[k])

for r in runs:
    check(r["ok"] == "1", "run failed: %s" % r)
for wl in ("shell", "heavy"):
    check(len(rows(workload=wl, variant="local")) == 1, "%s: one local run" % wl)
    pull = rows(profile="2ms-1gbit", workload=wl, variant="pull", mode="pull")
    check(len(pull) == 1, "%s: one full pull" % wl)
    for v in ("gzip", "estargz", "estargz-opt", "zstd-chunked"):
        lazy = rows(profile="2ms-1gbit", workload=wl, variant=v, mode="lazy")
        check(len(lazy) == 1, "%s %s: one lazy run, got %d" % (wl, v, len(lazy)))
        check((v, wl) in floor, "%s %s: a floor row" % (v, wl))
        for r in lazy:
            check(0 < f(r, "mount_s") < 60 and 0 < f(r, "run_s") < 60, "%s %s: times %s" % (wl, v, r))
            check(abs(f(r, "mount_s") + f(r, "run_s") - f(r, "total_s")) < 0.01, "%s %s: mount + run" % (wl, v))
            check(int(r["bytes_down"]) > 0 and int(r["requests"]) >= 2, "%s %s: traffic %s" % (wl, v, r))
            check(0 < f(r, "cpu_s") < 60 and 1000 < int(r["peak_rss_kb"]) < 4000000, "%s %s: cpu/rss %s" % (wl, v, r))
        if v != "gzip":
            nobg = rows(workload=wl, variant=v, mode="nobg")
            check(len(nobg) == 1, "%s %s: one run without background fetch" % (wl, v))
            fl = floor.get((v, wl))
            for r in nobg:
                # The workload alone must fetch about the chunks of the files it read (coalescing may add
                # a little), never the whole blob for the small workload.
                fetched, chunks = int(r["fetched_bytes"]), int(fl["chunk_bytes"])
                check(0.5 * chunks <= fetched <= 1.5 * chunks + 2e6,
                      "%s %s: fetched %d for %d bytes of chunks" % (wl, v, fetched, chunks))
for v in ("estargz", "estargz-opt", "zstd-chunked"):
    s, h = floor[(v, "shell")], floor[(v, "heavy")]
    check(int(s["chunk_bytes"]) < int(h["chunk_bytes"]), "%s: the shell workload reads less than heavy" % v)
    check(int(s["chunk_bytes"]) < int(floor[("gzip", "shell")]["floor_bytes"]) / 2,
          "%s: the shell workload's chunks are a small part of the image" % v)
    nobg = rows(workload="shell", variant=v, mode="nobg")
    pull = rows(workload="shell", variant="pull")
    if nobg and pull:
        check(int(nobg[0]["bytes_down"]) < int(pull[0]["bytes_down"]),
              "%s: the shell workload moves fewer bytes lazily than the full pull" % v)
check(len(rows(variant="skopeo")) == 1, "one skopeo run")
summary = open(os.path.join(out, "summary.md")).read()
for needle in ("rtt=2ms, bw=1000Mbit", "eStargz optimized", "zstd:chunked", "×floor", "skopeo"):
    check(needle in summary, "summary.md mentions %s" % needle)
svg = ET.parse(os.path.join(out, "chart.svg")).getroot()
check(svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) >= 10,
      "chart.svg has bars")
if errors:
    print("\n".join("FAIL: " + e for e in errors))
    sys.exit(1)
print("cold-start smoke: %d runs, %d floor rows, all checks passed" % (len(runs), len(floor)))
EOF
