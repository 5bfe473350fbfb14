"""Print benchmark (issues 7 and 17): from one assignment of a real pool (>= 2,000 tiles of 512 px,
random crops of the photographs in shared/data/targets, ingested through the normal path;
a 128 x 128 grid):

  A. a 2 m x 2 m print at 150 dpi (11,776 px a side), one flat TIFF;
  B. a 5.5 m print at 300 dpi (65,024 px a side) in 1.2 m panels with 2 cm overlap.

Baseline, measured in the same run on the same load: the print code as it was when issue 17's
goal was set (`git archive --baseline-ref` of this repository, default 65be53e: LZW strips, the
copying pipeline), run with its own defaults. Each case runs `--repeat` times in this order:
baseline, this tree with its defaults ("new"), this tree with --compression lzw ("new_lzw": the
pipeline's share of the gain, without the codec's); every run is its own process (its peak RSS
is its own) and reports wall and CPU seconds (user + system, all threads) and its stages:
render_cpu and encode_cpu (CPU seconds summed over the worker threads), write and wait (wall
seconds of the writing thread). The fastest run of each is compared: `speedup` = baseline wall
/ new wall (goal: >= 1.8x for A on 2 cores), `cpu_ratio` the same in CPU seconds (other jobs on
the machine inflate wall times, hardly CPU seconds). The new files' pixels are compared with the
baseline's (`pixels_equal`), and the disk's raw write speed is measured for the floor.

    python benchmarks/bench_print.py --only A --tiles 500     # the issue-17 figure (~3 min)
    python benchmarks/bench_print.py                           # both cases (B writes ~4-7 GB a run)
    python benchmarks/bench_print.py --quick                   # A at a quarter of the size, once
    python benchmarks/bench_print.py --scale 0.1 --tiles 300   # both cases, ~1/100 of the pixels
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, default_out, loadavg, mb, write_results  # noqa: E402

GRID = 128
HERE = Path(__file__).resolve().parents[1]
BASELINE_REF = "65be53e"   # main when issue 17's print goal was set: LZW, strips copied on the main thread

# One print in a fresh process, run with PYTHONPATH set to the code tree under test; only API
# that both trees share.
CHILD = r"""
import json, os, sys, time
db_path, assignment, out, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.printing import PrintOptions, write_print
from mosaicdb.render.options import RenderOptions
import mosaicdb
saved = asg.load(assignment)
render = RenderOptions(workers=opts.pop("workers"))
t0, c0 = time.perf_counter(), os.times()
with TileDB.open(db_path, readonly=True) as db:
    m = write_print(db, saved, PrintOptions(**opts, render=render), out, "bench")
wall, c1 = time.perf_counter() - t0, os.times()
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
print(json.dumps({"code": os.path.dirname(os.path.dirname(mosaicdb.__file__)),
                  "wall_seconds": round(wall, 3), "cpu_seconds": round(c1.user + c1.system - c0.user - c0.system, 3),
                  "stage_seconds": m["stage_seconds"], "compression": m["compression"], "bytes": m["bytes"],
                  "size_px": m["size_px"], "cell_px": m["cell_px"], "dpi": m["dpi"],
                  "files": [(p["name"], p["size_px"], p["bytes"], p["bigtiff"]) for p in m["panels"]],
                  "raw_bytes": sum(p["size_px"][0] * p["size_px"][1] * 3 for p in m["panels"]),
                  "warnings": m["warnings"], "peak_rss_mb": round(hwm, 1)}))
"""


def export_ref(ref: str, dest: Path) -> Path:
    """`git archive` of `ref` of this repository unpacked into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(HERE), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_print(code: Path, db: Path, assignment: str, out: Path, opts: dict) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(db), assignment, str(out), json.dumps(opts)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)}, cwd=code, check=False)
    if p.returncode:
        raise SystemExit(f"print with the code in {code} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if Path(r["code"]).resolve() != code.resolve():
        raise SystemExit(f"the print imported mosaicdb from {r['code']}, not from {code}")
    return r


def disk_write_speed(folder: Path, n_bytes: int, chunk: int = 16 << 20) -> dict:
    """MB/s of writing n_bytes of incompressible data and fsync'ing it, in `folder`."""
    buf = np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8).tobytes()
    p = folder / "disk_speed.bin"
    t0 = time.perf_counter()
    with open(p, "wb") as f:
        left = n_bytes
        while left > 0:
            f.write(buf[:min(chunk, left)])
            left -= chunk
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    p.unlink()
    return {"bytes": n_bytes, "seconds": round(dt, 3), "mb_per_s": round(n_bytes / dt / 1e6, 1)}


def same_pixels(a: Path, b: Path, files: list) -> bool | None:
    """Whether every file of the print in folder `a` decodes to the same pixels as in `b`
    (None: skipped, a file is over 2 GB raw)."""
    import tifffile
    if any(w * h * 3 > 2 << 30 for _, (w, h), _, _ in files):
        return None
    for name, *_ in files:
        if not np.array_equal(tifffile.imread(a / name), tifffile.imread(b / name)):
            return False
    return True


def summarise(name: str, runs: dict, disk: dict, pixels_equal) -> dict:
    best = {k: min(v, key=lambda r: r["wall_seconds"]) for k, v in runs.items()}
    cpu = {k: min(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    b, n = best["baseline"], best["new"]
    floor = n["bytes"] / (disk["mb_per_s"] * 1e6)
    out = {"case": name, "runs": runs, "best": best, "cpu_seconds_min": cpu,
           "speedup": round(b["wall_seconds"] / n["wall_seconds"], 2),
           "cpu_ratio": round(cpu["baseline"] / cpu["new"], 2),
           "bytes_ratio": round(n["bytes"] / b["bytes"], 3),
           "pixels_equal_baseline": pixels_equal, "disk": disk,
           "raw_mpx_per_s": {k: round(r["raw_bytes"] / 3 / r["wall_seconds"] / 1e6, 1) for k, r in best.items()},
           "write_floor_seconds": round(floor, 2), "write_floor_ratio": round(n["wall_seconds"] / max(floor, 1e-9), 2)}
    if "new_lzw" in best:
        out["speedup_lzw"] = round(b["wall_seconds"] / best["new_lzw"]["wall_seconds"], 2)
        out["cpu_ratio_lzw"] = round(cpu["baseline"] / cpu["new_lzw"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every length (sizes, panel width) by this")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant; the fastest is compared")
    ap.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the baseline code [default: %(default)s]")
    ap.add_argument("--baseline-src", default=None, help="a checkout of the baseline code (instead of --baseline-ref)")
    ap.add_argument("--no-lzw", action="store_true", help="skip the new_lzw variant")
    ap.add_argument("--work", default=None, help="scratch folder, kept (default: a temp dir, removed at the end)")
    ap.add_argument("--out", default=None, help="results JSON [default: results/bench_print.json, "
                                                "or bench_print_scale<S>.json when scaled]")
    ap.add_argument("--only", default=None, help="run only this case (A or B)")
    ap.add_argument("--quick", action="store_true", help="--scale 0.25 --tiles 300 --only A --repeat 1")
    a = ap.parse_args()
    if a.quick:
        a.scale, a.tiles, a.only, a.repeat = 0.25, 300, "A", 1
    from bench_render import build_assignments, pool_database
    data = data_dir(a.data)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_print_"))
    work.mkdir(parents=True, exist_ok=True)
    s = a.scale
    load = [loadavg()]
    cases = [("A_2m_150dpi", {"size": f"{200 * s:g}cm", "dpi": 150}),
             ("B_5p5m_300dpi_panels", {"size": f"{550 * s:g}cm", "dpi": 300, "panel_width": f"{120 * s:g}cm",
                                       "overlap": f"{2 * s:g}cm"})]
    try:
        if a.baseline_src:
            base_code = Path(a.baseline_src)
        else:
            base_code = export_ref(a.baseline_ref, work / f"baseline-{a.baseline_ref}")
        pool, dbp, pool_s, ingest_s, _ = pool_database(data, work, a.tiles)
        target = data / "targets" / "kodak" / "kodim23.png"
        assignment = build_assignments(dbp, target, work, [GRID])[GRID]
        variants = {"baseline": (base_code, {}), "new": (HERE, {})}
        if not a.no_lzw:
            variants["new_lzw"] = (HERE, {"compression": "lzw"})
        results = []
        for name, opts in cases:
            if a.only and not name.startswith(a.only):
                continue
            runs = {k: [] for k in variants}
            for _ in range(a.repeat):
                for v, (code, extra) in variants.items():
                    out = work / name / v
                    shutil.rmtree(out, ignore_errors=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    r = run_print(code, dbp, assignment, out, {**opts, **extra, "workers": a.workers})
                    r["loadavg"] = loadavg()
                    runs[v].append(r)
                    print(f"{name} {v}: {r['wall_seconds']} s wall, {r['cpu_seconds']} CPU-s, {r['compression']}, "
                          f"{mb(r['bytes'])} MB, peak RSS {r['peak_rss_mb']} MB; stages {r['stage_seconds']}; "
                          f"load {r['loadavg']}", flush=True)
            files = runs["new"][-1]["files"]
            equal = same_pixels(work / name / "baseline", work / name / "new", files)
            disk = disk_write_speed(work, max(64 << 20, min(runs["new"][-1]["bytes"], 2 << 30)))
            res = summarise(name, runs, disk, equal)
            res["options"] = opts
            results.append(res)
            shutil.rmtree(work / name, ignore_errors=True)
            print(f"{name}: {res['speedup']}x the baseline's throughput (wall), {res['cpu_ratio']}x in CPU seconds"
                  + (f"; LZW alone {res['speedup_lzw']}x / {res['cpu_ratio_lzw']}x" if "speedup_lzw" in res else "")
                  + f"; {res['bytes_ratio']}x the bytes; pixels equal: {equal}", flush=True)
            load.append(loadavg())
        doc = {"scale": s, "grid": GRID, "tiles": len(pool), "workers": a.workers, "repeat": a.repeat,
               "baseline": {"ref": None if a.baseline_src else a.baseline_ref, "code": str(base_code)},
               "pool_seconds": round(pool_s, 2), "ingest_seconds": round(ingest_s, 2), "cases": results,
               "goal": {"case": "A_2m_150dpi", "speedup_min": 1.8,
                        "met": next((r["speedup"] >= 1.8 for r in results if r["case"] == "A_2m_150dpi"), None)},
               "loadavg": load}
        out = Path(a.out) if a.out else default_out("bench_print" if s == 1 else f"bench_print_scale{s:g}")
        print(f"wrote {write_results(out, 'bench_print', doc)}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
