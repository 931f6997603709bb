#!/usr/bin/env bash
# Tuning sweep of lazypull's fetch knobs on the cold-start harness: one knob
# moved at a time from the defaults, every point run on the same images
# (bench/coldstart.sh --sweep), plus the converter's chunk size (its own
# images). Writes OUT/sweep.md (medians per workload, geometric mean, ratio
# to the defaults; the defaults run a second time, last, as "default-again":
# how far the two land apart is the sweep's noise band) for bench/TUNING.md. As root; ~20 min with one run per
# cell, ~50 min with --runs 3 (the default is 2).
#   bench/tune.sh [--runs N] [--profile P] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=2 PROFILE=20ms-100mbit OUT=bench/results/tune-$(date +%Y-%m-%d-%H%M%S)
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=$2; shift ;;
    --profile) PROFILE=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: bench/tune.sh [--runs N] [--profile P] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
cat >"$OUT/sweep.tsv" <<'TSV'
default	
span-256K	--span-size 256K
span-4M	--span-size 4M
prefetch-streams-2	--prefetch-streams 2
prefetch-streams-16	--prefetch-streams 16
background-streams-1	--background-streams 1
background-streams-4	--background-streams 4
background-streams-8	--background-streams 8
background-nice-0	--background-nice 0
background-bytes-1M	--background-bytes 1M
background-bytes-16M	--background-bytes 16M
background-gain-1.25	--background-gain 1.25
no-early-prefetch	--no-early-prefetch
after-misses-16	--background-after-misses 16
quiet-100ms	--background-quiet-ms 100
max-request-size-1M	--max-request-size 1M
coalesce-gap-0	--coalesce-gap 0
coalesce-gap-1M	--coalesce-gap 1M
readahead-0	--readahead-chunks 0
readahead-16	--readahead-chunks 16
max-requests-4	--max-requests 4
max-requests-16	--max-requests 16
http1.1	--http1.1
background-http1.1	--background-http1.1
max-request-size-16M	--max-request-size 16M
stream-from-start	--background-stream-rate 0
stream-never	--background-stream-rate off
prefetch-stream-from-start	--prefetch-stream-rate 0
prefetch-stream-never	--prefetch-stream-rate off
prefetch-restarts-0	--prefetch-stream-restarts 0
background-restarts-16	--background-stream-restarts 16
stream-give-way-1M	--stream-give-way 1M
cache-one-file-per-chunk	--cache-pack-max 0
no-push-pages	--no-push-pages
default-again	
TSV
common=(--profile "$PROFILE" --workload python,shell,heavy --variant estargz,estargz-opt
  --runs "$RUNS" --no-baseline --no-probe)
bash bench/coldstart.sh "${common[@]}" --sweep "$OUT/sweep.tsv" --out "$OUT/knobs"
printf 'default\t\n' >"$OUT/default.tsv"
# The converter's default is 1 MiB (the "default" point above): its neighbours.
for cs in 256K 4M; do
  bash bench/coldstart.sh "${common[@]}" --sweep "$OUT/default.tsv" \
    --convert-flags "--chunk-size $cs" --out "$OUT/chunk-$cs"
done
python3 bench/tune.py "$OUT" | tee "$OUT/sweep.md"
