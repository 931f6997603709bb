#!/usr/bin/python3
"""Data side of the cold-start benchmark (bench/coldstart.sh); Debian's python3 only.

  coldstart.py trace ROOT STRACE_OUT      files a workload read, in first-access order
  coldstart.py oci-layer DIR TAG          layer blob, manifest and config sizes of a 1-layer image
  coldstart.py floor ...                  one floor.csv row: the bytes a cell must move at least
  coldstart.py report DIR                 DIR/runs.csv + DIR/floor.csv -> DIR/summary.md, DIR/chart.svg
"""

import argparse
import csv
import json
import math
import os
import re
import stat
import statistics
import struct
import subprocess
import sys

# Round trips every lazy start must wait for, one after the other, whatever the client does: the TCP
# handshake, the TLS 1.3 handshake, the manifest, the footer + TOC (one tail read: the position is known
# from the blob size, or from the zstd:chunked manifest-position annotation), then the first chunk. The
# config is needed too but can be fetched alongside the TOC; the /v2/ ping is optional (lazypull and
# containerd go straight to the manifest and handle a 401).
LAZY_RTTS = 5
# A full pull: TCP, TLS, manifest, then the blob (config alongside).
FULL_RTTS = 4

VARIANT_ORDER = ["pull", "gzip", "estargz", "estargz-shared", "estargz-opt", "zstd-chunked"]
VARIANT_LABEL = {
    "pull": "full pull (lazypull pull + run)",
    "gzip": "gzip via lazypull mount",
    "estargz": "eStargz",
    "estargz-shared": "eStargz, --min-chunk-size 64K",
    "estargz-opt": "eStargz optimized",
    "zstd-chunked": "zstd:chunked",
    "skopeo": "skopeo copy + tar -x",
    "local": "local copy, warm cache",
}
CHART_LABEL = {
    "pull": "full pull + run",
    "gzip": "gzip, mounted",
    "estargz": "eStargz",
    "estargz-shared": "eStargz, shared members",
    "estargz-opt": "eStargz optimized",
    "zstd-chunked": "zstd:chunked",
}
COLORS = {
    "pull": "#7f7f7f",
    "gzip": "#bcbd22",
    "estargz": "#1f77b4",
    "estargz-shared": "#17becf",
    "estargz-opt": "#2ca02c",
    "zstd-chunked": "#9467bd",
}


# ---------------------------------------------------------------- trace


def resolve_in_root(root, path, depth=0):
    """Resolves PATH (absolute, as seen inside ROOT) following symlinks within ROOT.

    Returns the resolved path relative to ROOT, or None when it does not exist."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done = []
    while parts:
        p = parts.pop(0)
        if p == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, p)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            if depth > 40:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            parts = [q for q in target.split("/") if q not in ("", ".")] + parts
            depth += 1
            continue
        done.append(p)
    return "/".join(done)


def elf_interpreter(host_path):
    """The PT_INTERP of a 64-bit little-endian ELF file, or None."""
    try:
        with open(host_path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                ptype, = struct.unpack_from("<I", table, i * phentsize)
                if ptype == 3:  # PT_INTERP
                    off, = struct.unpack_from("<Q", table, i * phentsize + 8)
                    size, = struct.unpack_from("<Q", table, i * phentsize + 32)
                    f.seek(off)
                    return f.read(size).rstrip(b"\0").decode()
    except OSError:
        return None
    return None


def script_interpreter(host_path):
    try:
        with open(host_path, "rb") as f:
            line = f.readline(256)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = line[2:].decode(errors="replace").split()
    return words[0] if words else None


def cmd_trace(args):
    """Regular files of ROOT a workload opened or executed, from `strace -f -y` output.

    Lines before the first successful chroot() are the chroot binary's own start-up (host files) and are
    skipped; afterwards opened files are named by strace's -y decoration (the path the kernel resolved,
    as the tracer sees it: ROOT/...), executed files by their argument resolved inside ROOT, plus their
    ELF or script interpreter (which the kernel reads without an open the trace would show)."""
    root = os.path.realpath(args.root)
    prefix = root + "/"
    seen, order = set(), []

    def add(rel):
        if rel is None or rel in seen:
            return
        try:
            st = os.lstat(os.path.join(root, rel))
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        seen.add(rel)
        order.append(rel)

    def add_exec(path):
        rel = resolve_in_root(root, path)
        if rel is None:
            return
        add(rel)
        host = os.path.join(root, rel)
        interp = elf_interpreter(host) or script_interpreter(host)
        if interp:
            add_exec(interp)

    inside = False
    open_ret = re.compile(r"= \d+<(.+)>\s*$")
    exec_arg = re.compile(r'execve\("((?:[^"\\]|\\.)*)"')
    with open(args.strace, errors="replace") as f:
        for line in f:
            if not inside:
                if re.search(r"\bchroot\(.*\) = 0", line):
                    inside = True
                continue
            if "execve" in line and "resumed" not in line:
                m = exec_arg.search(line)
                if m and ("= 0" in line or "<unfinished" in line):
                    add_exec(m.group(1))
                continue
            if "open" in line:
                m = open_ret.search(line)
                if m and m.group(1).startswith(prefix):
                    add(m.group(1)[len(prefix):])
    for rel in order:
        print(rel)


# ---------------------------------------------------------------- OCI layout


def read_blob(dir_, digest):
    return open(os.path.join(dir_, "blobs", *digest.split(":")), "rb").read()


def cmd_oci_layer(args):
    index = json.loads(open(os.path.join(args.dir, "index.json")).read())
    mdesc = None
    for d in index["manifests"]:
        if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == args.tag:
            mdesc = d
    if mdesc is None:
        if len(index["manifests"]) != 1:
            sys.exit("%s: no manifest tagged %s" % (args.dir, args.tag))
        mdesc = index["manifests"][0]
    manifest = json.loads(read_blob(args.dir, mdesc["digest"]))
    if len(manifest["layers"]) != 1:
        sys.exit("%s:%s: %d layers; the benchmark images have one" %
                 (args.dir, args.tag, len(manifest["layers"])))
    layer = manifest["layers"][0]
    print(os.path.join(args.dir, "blobs", *layer["digest"].split(":")), mdesc["size"],
          manifest["config"]["size"], layer["size"], layer["digest"], layer["mediaType"])


# ---------------------------------------------------------------- floor


def cmd_floor(args):
    """The compressed bytes a cell must move at least, as one floor.csv row.

    lazy: the compressed span of every chunk of every file the workload read (a chunk spans from its
    blob offset to the next chunk's; whole files, as the trace names files, not byte ranges), plus
    the TOC and footer, manifest and config. full: the whole blob, manifest and config."""
    files = [l.rstrip("\n") for l in open(args.trace) if l.strip()]
    meta = args.manifest_size + args.config_size
    if args.kind == "full":
        chunk_bytes, toc_bytes, rtts = args.blob_size, 0, FULL_RTTS
    else:
        info = json.loads(subprocess.run([args.lazypull, "inspect", "--json", args.layer],
                                         check=True, capture_output=True).stdout)
        entries = {e["path"]: e for e in info["entries"]}
        starts = sorted({c["blob_offset"] for e in info["entries"] for c in (e["chunks"] or [])})
        end_of = {s: (starts[i + 1] if i + 1 < len(starts) else info["toc_offset"])
                  for i, s in enumerate(starts)}
        wanted = set()
        for path in files:
            e = entries.get(path)
            hops = 0
            while e is not None and e["type"] == "hardlink" and hops < 8:
                e = entries.get((e["link"] or "").lstrip("/").removeprefix("./"))
                hops += 1
            if e is None:
                print("floor: %s not in the layer's TOC" % path, file=sys.stderr)
                continue
            for c in e["chunks"] or []:
                wanted.add(c["blob_offset"])
        chunk_bytes = sum(end_of[s] - s for s in wanted)
        toc_bytes = info["toc_compressed_size"] + info["footer_size"]
        rtts = LAZY_RTTS
    w = csv.writer(sys.stdout)
    w.writerow([args.variant, args.workload, args.kind, len(files), chunk_bytes, toc_bytes, meta,
                chunk_bytes + toc_bytes + meta, rtts])


# ---------------------------------------------------------------- report


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def p90(xs):
    """Nearest-rank 90th percentile (with 3 runs: the slowest)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def fnum(x, fmt="%.2f"):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt % x


def load(out):
    runs = list(csv.DictReader(open(os.path.join(out, "runs.csv"))))
    floor = {}
    fpath = os.path.join(out, "floor.csv")
    if os.path.exists(fpath):
        for r in csv.DictReader(open(fpath)):
            floor[(r["variant"], r["workload"])] = r
    return runs, floor


def num(r, k):
    try:
        return float(r[k])
    except (KeyError, ValueError, TypeError):
        return float("nan")


def profile_key(p):
    return (p["rtt_ms"], p["bw_mbit"])


def cmd_report(args):
    runs, floor = load(args.out)
    ok = [r for r in runs if r["ok"] == "1"]
    failed = [r for r in runs if r["ok"] != "1"]
    profiles = []
    for r in runs:
        if r["profile"] not in [p["name"] for p in profiles] and r["profile"] != "-":
            profiles.append({"name": r["profile"], "rtt_ms": float(r["rtt_ms"]),
                             "bw_mbit": float(r["bw_mbit"])})
    workloads = []
    for r in runs:
        if r["workload"] not in workloads and r["workload"] != "-":
            workloads.append(r["workload"])

    local = {w: median([num(r, "total_s") for r in ok if r["variant"] == "local" and r["workload"] == w])
             for w in workloads}

    def cell(profile, workload, variant, mode="lazy"):
        return [r for r in ok if r["profile"] == profile and r["workload"] == workload
                and r["variant"] == variant and r["mode"] == mode]

    def floor_s(p, workload, variant):
        f = floor.get((variant if variant != "pull" else "gzip", workload))
        if f is None or math.isnan(local.get(workload, float("nan"))):
            return float("nan")
        return (float(f["floor_bytes"]) * 8 / (p["bw_mbit"] * 1e6) + int(f["rtts"]) * p["rtt_ms"] / 1e3
                + local[workload])

    md = []
    md.append("# Cold-start benchmark: %s\n" % os.path.basename(os.path.normpath(args.out)))
    meta_path = os.path.join(args.out, "meta.txt")
    if os.path.exists(meta_path):
        md.append("```\n" + open(meta_path).read().strip() + "\n```\n")
    md.append(
        "Time to ready = `lazypull mount` (or `lazypull pull`) from its start until the workload, run with "
        "`chroot` in the result, prints its ready line; split into mount and run. Each run: fresh cache "
        "directory, page cache dropped, proxy counters reset. Medians over the runs, p90 by nearest rank. "
        "Bytes and connections are the link proxy's counters at the ready line (background fetch included); "
        "requests are docker-registry's access-log lines. CPU and peak RSS are the serving process's "
        "(utime+stime, VmHWM, read at the ready line) for mounts, `/usr/bin/time` for `lazypull pull`. "
        "**floor** = the compressed bytes of the chunks of every file the workload reads (from an strace of "
        "the workload on a local copy) + TOC + footer + manifest + config, over the bandwidth, + %d RTTs "
        "(TCP, TLS, manifest, footer+TOC, first chunk; a full pull: the whole blob and %d RTTs), + the "
        "workload's run time on a local extracted copy with a warm page cache. **×floor** and **×pull** "
        "are the median time to ready divided by the floor and by the full pull's median.\n"
        % (LAZY_RTTS, FULL_RTTS))
    md.append("Local run times (warm page cache): " + ", ".join(
        "%s %s s" % (w, fnum(local[w], "%.3f")) for w in workloads) + ".\n")

    summary_rows = []
    for p in profiles:
        md.append("## rtt=%gms, bw=%gMbit\n" % (p["rtt_ms"], p["bw_mbit"]))
        md.append("| workload | variant | ready median | p90 | mount | run | MB down | requests | conns "
                  "| CPU s | peak RSS MB | floor | ×floor | ×pull | runs |")
        md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w in workloads:
            pull_rows = cell(p["name"], w, "pull", "pull")
            pull_med = median([num(r, "total_s") for r in pull_rows])
            for v in VARIANT_ORDER:
                rows = pull_rows if v == "pull" else cell(p["name"], w, v)
                if not rows:
                    continue
                t = [num(r, "total_s") for r in rows]
                fl = floor_s(p, w, v)
                med = median(t)
                summary_rows.append((p, w, v, med, median([num(r, "mount_s") for r in rows]), fl))
                md.append("| %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
                    w, VARIANT_LABEL[v], fnum(med), fnum(p90(t)),
                    fnum(median([num(r, "mount_s") for r in rows])),
                    fnum(median([num(r, "run_s") for r in rows])),
                    fnum(median([num(r, "bytes_down") for r in rows]) / 1e6, "%.1f"),
                    fnum(median([num(r, "requests") for r in rows]), "%.0f"),
                    fnum(median([num(r, "connections") for r in rows]), "%.0f"),
                    fnum(median([num(r, "cpu_s") for r in rows])),
                    fnum(median([num(r, "peak_rss_kb") for r in rows]) / 1024, "%.1f"),
                    fnum(fl), fnum(med / fl if fl == fl else float("nan"), "%.2fx"),
                    fnum(med / pull_med if pull_med == pull_med else float("nan"), "%.3fx"),
                    len(rows)))
        sk = [r for r in ok if r["profile"] == p["name"] and r["variant"] == "skopeo"]
        if sk:
            md.append("\nNeutral check, `skopeo copy` + `tar -x` of the gzip image: %s s median "
                      "(%d run(s), %.1f MB down)." % (
                          fnum(median([num(r, "total_s") for r in sk])), len(sk),
                          median([num(r, "bytes_down") for r in sk]) / 1e6))
        md.append("")

    probes = [r for r in ok if r["mode"] == "nobg"]
    if probes:
        md.append("## Lazy mounts without background fetch (`--no-background-fetch`, one run each)\n")
        md.append("What the workload alone pulls: the layer's state-file `fetchedSize` after the run, "
                  "against the floor's chunk bytes (the chunks of the files the trace saw).\n")
        md.append("| profile | workload | variant | ready | mount | run | fetchedSize MB | floor chunks MB "
                  "| requests |")
        md.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in probes:
            f = floor.get((r["variant"], r["workload"]))
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["profile"], r["workload"], VARIANT_LABEL.get(r["variant"], r["variant"]),
                fnum(num(r, "total_s")), fnum(num(r, "mount_s")), fnum(num(r, "run_s")),
                fnum(num(r, "fetched_bytes") / 1e6, "%.2f"),
                fnum(float(f["chunk_bytes"]) / 1e6, "%.2f") if f else "–", fnum(num(r, "requests"), "%.0f")))
        md.append("")
    if floor:
        md.append("## Floor inputs\n")
        md.append("| variant | workload | files read | chunk bytes | TOC+footer | manifest+config | RTTs |")
        md.append("|---|---|---:|---:|---:|---:|---:|")
        for (v, w), f in sorted(floor.items()):
            md.append("| %s | %s | %s | %s | %s | %s | %s |" % (v, w, f["files"], f["chunk_bytes"],
                                                             f["toc_bytes"], f["meta_bytes"], f["rtts"]))
        md.append("")
    if failed:
        md.append("## Failed runs\n")
        for r in failed:
            md.append("- %s %s %s %s run %s: %s" % (r["profile"], r["workload"], r["variant"], r["mode"],
                                                    r["run"], r["note"]))
        md.append("")
    open(os.path.join(args.out, "summary.md"), "w").write("\n".join(md))
    open(os.path.join(args.out, "chart.svg"), "w").write(chart(profiles, workloads, summary_rows))


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_scale(x):
    """(top, step): a round axis maximum >= x with 3-6 round steps."""
    if not x or x != x or x <= 0:
        return 1.0, 0.25
    e = 10 ** math.floor(math.log10(x))
    for m in (0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10):
        step = m * e
        n = math.ceil(x / step - 1e-9)
        if n <= 6:
            return n * step, step
    return 10 * e, 2 * e


def chart(profiles, workloads, rows):
    """Grouped bars: one panel per workload, one group per profile, one bar per variant (median time to
    ready; the darker bottom part is the mount), a black tick at the cell's floor."""
    variants = [v for v in VARIANT_ORDER if any(r[2] == v for r in rows)]
    ph, left, top = 230, 60, 40
    bar_w, gap = 26, 30
    out = []
    height = top + len(workloads) * (ph + 60) + 40
    width = left + max(640, len(profiles) * (len(variants) * bar_w + gap) + 40) + 20
    out.append('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
               'font-size="11">' % (width, height))
    out.append('<rect width="100%" height="100%" fill="white"/>')
    out.append('<text x="%d" y="20" font-size="13" font-weight="bold">Time to ready, median s: mount (dark) '
               '+ run (light); black tick: the physical floor</text>' % left)
    lx = left
    for v in variants:
        out.append('<rect x="%d" y="26" width="10" height="10" fill="%s"/>' % (lx, COLORS[v]))
        out.append('<text x="%d" y="35">%s</text>' % (lx + 13, esc(CHART_LABEL[v])))
        lx += 13 + 6.2 * len(CHART_LABEL[v]) + 14
    for wi, w in enumerate(workloads):
        y0 = top + 20 + wi * (ph + 60)
        vals = [r for r in rows if r[1] == w]
        # 8% headroom for the value labels above the bars.
        ymax, step = nice_scale(1.08 * max([r[3] for r in vals] + [r[5] for r in vals if r[5] == r[5]] + [0]))
        out.append('<text x="%d" y="%d" font-size="13" font-weight="bold">workload: %s</text>'
                   % (left, y0 - 4, esc(w)))
        base = y0 + ph
        for k in range(int(round(ymax / step)) + 1):
            yv = step * k
            yy = base - ph * yv / ymax
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>'
                       % (left, width - 20, yy, yy))
            out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (left - 4, yy + 4, "%g" % round(yv, 6)))
        for pi, p in enumerate(profiles):
            gx = left + 20 + pi * (len(variants) * bar_w + gap)
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                       % (gx + len(variants) * bar_w / 2, base + 16,
                          esc("%gms, %gMbit" % (p["rtt_ms"], p["bw_mbit"]))))
            for vi, v in enumerate(variants):
                r = next((r for r in vals if r[0]["name"] == p["name"] and r[2] == v), None)
                if r is None:
                    continue
                x = gx + vi * bar_w
                h = ph * r[3] / ymax
                hm = ph * min(r[4], r[3]) / ymax if r[4] == r[4] else 0
                out.append('<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s" fill-opacity="0.55">'
                           '<title>%s %s %s: %.2f s</title></rect>'
                           % (x, base - h, bar_w - 3, h, COLORS[v], esc(w), esc(p["name"]), esc(v), r[3]))
                out.append('<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"/>'
                           % (x, base - hm, bar_w - 3, hm, COLORS[v]))
                out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9">%s</text>'
                           % (x + (bar_w - 3) / 2, base - h - 3,
                              ("%.1f" % r[3]) if r[3] >= 10 else ("%.2f" % r[3])))
                if r[5] == r[5]:
                    fy = base - ph * r[5] / ymax
                    out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="black" stroke-width="2"/>'
                               % (x - 1, x + bar_w - 2, fy, fy))
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black"/>' % (left, width - 20, base, base))
    out.append("</svg>\n")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace")
    t.add_argument("root")
    t.add_argument("strace")
    o = sub.add_parser("oci-layer")
    o.add_argument("dir")
    o.add_argument("tag")
    f = sub.add_parser("floor")
    f.add_argument("--variant", required=True)
    f.add_argument("--workload", required=True)
    f.add_argument("--kind", choices=["lazy", "full"], required=True)
    f.add_argument("--trace", required=True)
    f.add_argument("--layer", required=True)
    f.add_argument("--blob-size", type=int, required=True)
    f.add_argument("--manifest-size", type=int, required=True)
    f.add_argument("--config-size", type=int, required=True)
    f.add_argument("--lazypull", default="lazypull")
    r = sub.add_parser("report")
    r.add_argument("out")
    args = ap.parse_args()
    {"trace": cmd_trace, "oci-layer": cmd_oci_layer, "floor": cmd_floor, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
