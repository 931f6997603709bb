#!/usr/bin/env python3
"""Per-run timeline of lazy mounts from a kept cold-start work directory.

For each lazy run in OUT/runs.csv, reads that run's mount log (kept by
`bench/coldstart.sh --keep` under WORKDIR/logs/) and prints, from the mount's
own start (the "mount ready in N ms" line's time minus N, which excludes
process start before it):
  - when the mount was ready,
  - when the layer's prefetch range was all in ("prefetched" line),
  - how long after that the workload printed its ready line.
The workload's ready time is the run's start plus total_s, placed on the log's
clock through the mount-ready line (mount_s after the run's start).

  bench/coldstart.sh ... --keep --out OUT   # prints "work directory kept: W"
  python3 bench/timeline.py OUT W
"""
import csv
import datetime
import re
import sys


def stamp(line):
    return datetime.datetime.strptime(
        line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, work = sys.argv[1], sys.argv[2]
    with open(f"{out}/runs.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["mode"] == "lazy"]
    for r in rows:
        log = (f"{work}/logs/{r['profile']}-{r['workload']}-{r['variant']}"
               f"-lazy-{r['run']}.log")
        with open(log) as f:
            lines = f.read().splitlines()
        ready_line = next(l for l in lines if "mount ready in" in l)
        t_ready = stamp(ready_line)
        ready_s = int(re.search(r"mount ready in (\d+) ms",
                                ready_line).group(1)) / 1000
        start = t_ready - ready_s
        pf = [l for l in lines if "prefetched" in l]
        t_pf = stamp(pf[0]) if pf else float("nan")
        done = t_ready - float(r["mount_s"]) + float(r["total_s"])
        print(f"{r['workload']:6} run{r['run']} total {float(r['total_s']):.3f}"
              f" main->ready {ready_s:.3f} main->prefetched {t_pf - start:.3f}"
              f" prefetched->workload-ready {done - t_pf:.3f}")


if __name__ == "__main__":
    main()
