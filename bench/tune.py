#!/usr/bin/env python3
"""Summarizes bench/tune.sh: per sweep point, the median time to ready of
each (variant, workload) cell, their geometric mean, and its ratio to the
defaults'. Usage: bench/tune.py OUT_DIR (prints markdown)."""
import csv
import glob
import math
import os
import statistics
import sys


def load(path, rename=None):
    cells = {}
    for r in csv.DictReader(open(path)):
        if r["ok"] != "1" or r["variant"] in ("local", "pull", "skopeo"):
            continue
        mode = rename or r["mode"]
        cells.setdefault(mode, {}).setdefault(
            (r["variant"], r["workload"]), []).append(float(r["total_s"]))
    return cells


def main():
    out = sys.argv[1]
    points = load(os.path.join(out, "knobs", "runs.csv"))
    for d in sorted(glob.glob(os.path.join(out, "chunk-*"))):
        points.update(load(os.path.join(d, "runs.csv"),
                           "chunk-size-" + d.rsplit("-", 1)[1]))
    keys = sorted({k for p in points.values() for k in p})
    base = points.get("default", {})

    def geo(p):
        vals = [statistics.median(p[k]) for k in keys if k in p]
        if len(vals) != len(keys):
            return float("nan")
        return math.exp(sum(math.log(v) for v in vals) / len(vals))

    g0 = geo(base)
    # "default-again" (tune.sh runs the defaults twice, as two points): how
    # far apart the same settings land, cell by cell, is the sweep's noise.
    # Two points' geometric means over n cells then differ by noise alone
    # with a standard deviation of sqrt(mean(d^2) / n), d the cells' log
    # ratios between the two runs of the defaults; the band is two of those.
    band = 0.0
    if "default-again" in points:
        again = points["default-again"]
        d = [math.log(statistics.median(again[k]) /
                      statistics.median(base[k]))
             for k in keys if k in again and k in base]
        if d:
            band = math.exp(2 * math.sqrt(sum(x * x for x in d) / len(d) /
                                          len(d))) - 1
    print("| point | " + " | ".join("%s %s" % k for k in keys) +
          " | geomean | vs default | |")
    print("|---|" + "---:|" * (len(keys) + 2) + "---|")
    ahead = []
    for name in sorted(points, key=lambda n: (n != "default", geo(points[n]))):
        p = points[name]
        row = ["%.2f" % statistics.median(p[k]) if k in p else "-"
               for k in keys]
        g = geo(p)
        mark = ""
        if name not in ("default", "default-again") and g / g0 < 1 - band:
            mark = "ahead beyond the noise band"
            ahead.append(name)
        print("| %s | %s | %.2f | %.3f | %s |" %
              (name, " | ".join(row), g, g / g0, mark))
    print()
    print("Noise band (two standard deviations of a geometric mean, from the "
          "defaults run twice): %.1f%%. Points ahead of the defaults by more: "
          "%s." % (100 * band, ", ".join(ahead) or "none"))


main()
