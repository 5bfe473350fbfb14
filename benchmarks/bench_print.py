"""Print benchmark (issue 7): from one assignment of a real pool (>= 2,000 tiles of 512 px,
random crops of the photographs in shared/data/targets, ingested through the normal path;
a 128 x 128 grid):

  A. a 2 m x 2 m print at 150 dpi (11,811 px a side), one flat LZW TIFF;
  B. a 5.5 m print at 300 dpi (64,961 px a side) in 1.2 m panels with 2 cm overlap.

Each print runs in its own process (its peak RSS is its own). Baseline measured in the same
run: the raw write speed of the disk (incompressible bytes written and fsync'ed in the same
folder), so `write_floor_ratio` = wall time / time to merely write the print's bytes.

    python benchmarks/bench_print.py                       # full size (B writes ~5-10 GB)
    python benchmarks/bench_print.py --scale 0.1 --tiles 300   # quick check (~1/100 of the pixels)
    python benchmarks/bench_print.py --quick                   # case A at a quarter of the size

Each run reports its stages (issue 17): render_cpu and encode_cpu (CPU seconds summed over the
worker threads: strips are encoded on the same thread pool that renders bands), write and
wait (wall seconds of the writing thread), and the same case with --baseline-workers threads
(default 1) measured in the same run, for the speed-up from threads.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, default_out, loadavg, mb, peak_rss_mb, run_isolated, vm_hwm_mb, write_results  # noqa: E402

GRID = 128


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


def print_one(db_path: str, assignment: str, out: str, opts: dict) -> dict:
    from mosaicdb import TileDB
    from mosaicdb import assignment as asg
    from mosaicdb.printing import PrintOptions, write_print
    from mosaicdb.render.options import RenderOptions
    saved = asg.load(assignment)
    opts = dict(opts)
    render = RenderOptions(workers=opts.pop("workers", 0))
    t0 = time.perf_counter()
    with TileDB.open(db_path, readonly=True) as db:
        m = write_print(db, saved, PrintOptions(**opts, render=render), out, "bench")
    wall = time.perf_counter() - t0
    return {"wall_seconds": round(wall, 2), "stage_seconds": m["stage_seconds"], "bytes": m["bytes"], "size_px": m["size_px"], "cell_px": m["cell_px"],
            "dpi": m["dpi"], "files": [(p["name"], p["size_px"], p["bytes"], p["bigtiff"]) for p in m["panels"]],
            "raw_bytes": sum(p["size_px"][0] * p["size_px"][1] * 3 for p in m["panels"]),
            "warnings": m["warnings"], "peak_rss_mb": vm_hwm_mb(), "ru_maxrss": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every length (sizes, panel width) by this")
    ap.add_argument("--compression", default="lzw")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    ap.add_argument("--out", default=None, help="results JSON [default: results/bench_print.json, "
                                                "or bench_print_scale<S>.json when scaled]")
    ap.add_argument("--baseline-workers", type=int, default=1,
                    help="each case also runs with this many threads, in the same run, for the ratio (0: skip)")
    ap.add_argument("--only", default=None, help="run only this case (A or B)")
    ap.add_argument("--quick", action="store_true", help="--scale 0.25 --tiles 300 --only A")
    a = ap.parse_args()
    if a.quick:
        a.scale, a.tiles, a.only = 0.25, 300, "A"
    from bench_render import build_assignments, pool_database
    data = data_dir(a.data)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_print_"))
    work.mkdir(parents=True, exist_ok=True)
    s = a.scale
    load_start = loadavg()
    cases = [("A_2m_150dpi", {"size": f"{200 * s:g}cm", "dpi": 150}),
             ("B_5p5m_300dpi_panels", {"size": f"{550 * s:g}cm", "dpi": 300, "panel_width": f"{120 * s:g}cm",
                                       "overlap": f"{2 * s:g}cm"})]
    try:
        pool, dbp, pool_s, ingest_s, _ = pool_database(data, work, a.tiles)
        target = data / "targets" / "kodak" / "kodim23.png"
        assignment = build_assignments(dbp, target, work, [GRID])[GRID]
        runs = []
        for name, opts in cases:
            if a.only and not name.startswith(a.only):
                continue
            out = work / name
            base = None
            if a.baseline_workers:  # the same print with fewer threads, in this run and on this load
                bopts = {**opts, "compression": a.compression, "workers": a.baseline_workers}
                base = run_isolated(print_one, str(dbp), assignment, str(out), bopts)
                shutil.rmtree(out, ignore_errors=True)
                print(f"{name} with {a.baseline_workers} thread(s): {base['wall_seconds']} s, "
                      f"stages {base['stage_seconds']}", flush=True)
            opts = {**opts, "compression": a.compression, "workers": a.workers}
            r = run_isolated(print_one, str(dbp), assignment, str(out), opts)
            if base is not None:
                r["baseline"] = {"workers": a.baseline_workers, "wall_seconds": base["wall_seconds"],
                                 "stage_seconds": base["stage_seconds"],
                                 "speedup": round(base["wall_seconds"] / r["wall_seconds"], 2)}
            disk = disk_write_speed(work, max(64 << 20, min(r["bytes"], 2 << 30)))
            write_floor = r["bytes"] / (disk["mb_per_s"] * 1e6)
            r.update(case=name, options=opts, disk=disk,
                     mb=mb(r["bytes"]), mb_per_s_written=round(r["bytes"] / r["wall_seconds"] / 1e6, 1),
                     raw_mpx_per_s=round(r["raw_bytes"] / 3 / r["wall_seconds"] / 1e6, 1),
                     write_floor_seconds=round(write_floor, 2),
                     write_floor_ratio=round(r["wall_seconds"] / max(write_floor, 1e-9), 2))
            runs.append(r)
            print(f"{name}: {r['size_px'][0]:,} x {r['size_px'][1]:,} px in {len(r['files'])} file(s), "
                  f"{r['wall_seconds']} s, {r['mb']} MB ({r['mb_per_s_written']} MB/s; disk {disk['mb_per_s']} MB/s, "
                  f"ratio {r['write_floor_ratio']}), peak RSS {r['peak_rss_mb']} MB; stages {r['stage_seconds']}"
                  + (f"; {r['baseline']['speedup']}x the {a.baseline_workers}-thread run" if base else ""), flush=True)
            shutil.rmtree(out, ignore_errors=True)
        results = {"scale": s, "grid": GRID, "loadavg_start": load_start, "tiles": len(pool), "compression": a.compression, "workers": a.workers,
                   "pool_seconds": round(pool_s, 2), "ingest_seconds": round(ingest_s, 2), "runs": runs,
                   "loadavg": loadavg()}
        out = Path(a.out) if a.out else default_out("bench_print" if s == 1 else f"bench_print_scale{s:g}")
        print(f"wrote {write_results(out, 'bench_print', results)}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
