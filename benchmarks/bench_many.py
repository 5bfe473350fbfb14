"""Benchmark (issue 17): many targets against a million tiles, the database and index loaded once.

Targets: the 24 Kodak and 9 Wikimedia photographs of shared/data, then crops of them (a
seeded random 40-90 % of each side, written as PNG under --work) up to --targets (100). Each
is made at --grid (128 cells across) with default options and written as JPEG, through
`mosaicdb.batch.BatchRunner` (what `mosaic make` runs), against the pool of
benchmarks/pool_1m.py (built first when missing; --db for another database).

The batch runs as `mosaic make --jobs N` does (--jobs, default the CPU count: worker processes
that each open the database once and take their share of the cores; --jobs 1 makes every
target in the benchmark's own process).

Reported: database open + index load seconds, total wall, per-target seconds (mean, median,
max), the per-stage sums from each target's metrics (target load, cell features, search,
widening, assignment, render, evaluation; summed over the workers, so with --jobs > 1 they add
up to more than the wall time), CPU seconds (the workers' included), peak memory (VmHWM of the
process, and with workers the peak of the summed RSS and PSS of the process tree: the memory-
mapped thumbnails and features pages count while resident, once per process in the RSS sum),
and the load average.
Baseline in the same run: one target made by a fresh process that opens the database and
loads the index for it alone (what a per-request script pays), against the batch's mean.
With --executor ray the batch runs on Ray actors (local instance, --ray-cpus).

Goal: 100 x 128-cell targets vs 1M tiles in <= 60 s total wall, peak RSS <= 4 GB.

    python benchmarks/bench_many.py                 # the 1M pool (built first if missing)
    python benchmarks/bench_many.py --quick         # 10 targets against the 20,000-tile pool
    python benchmarks/bench_many.py --db D --targets 24 --executor ray
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "bench_many"
GOAL_SECONDS = 60.0
GOAL_RSS_MB = 4096.0
STAGES = ("load_target", "cell_features", "search", "widen_search", "assign", "render", "evaluate")


def make_targets(data: Path, folder: Path, n: int, seed: int) -> list[Path]:
    """The shared photographs, then seeded crops of them, n in all (written once)."""
    from PIL import Image
    photos = sorted((data / "targets" / "kodak").glob("*.png")) + sorted((data / "targets" / "wikimedia_pd").glob("*"))
    folder.mkdir(parents=True, exist_ok=True)
    out = list(photos[:n])
    rng = np.random.default_rng(seed)
    i = 0
    while len(out) < n:
        src = photos[i % len(photos)]
        dest = folder / f"crop{i:03d}_{src.stem}.png"
        fw, fh, fx, fy = rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9), rng.uniform(), rng.uniform()
        if not dest.exists():
            with Image.open(src) as im:
                im = im.convert("RGB")
                w, h = max(64, int(im.width * fw)), max(64, int(im.height * fh))
                x, y = int((im.width - w) * fx), int((im.height - h) * fy)
                im.crop((x, y, x + w, y + h)).save(dest)
        out.append(dest)
        i += 1
    return out


def run_batch(db_path: str, targets: list[str], out_dir: str, grid: str, executor: str, ray_cpus: int | None,
              jobs: int = 1, dither: float | None = None) -> dict:
    """The batch from this (fresh) process: open, then every target; timings and peak memory.
    `dither`: MatchOptions.dither (None: the default)."""
    from mosaicdb.batch import BatchOptions, BatchRunner
    from mosaicdb.match.options import MatchOptions
    from mosaicdb.render.options import RenderOptions
    outs = [Path(out_dir) / f"{Path(t).stem}.jpg" for t in targets]
    c0, t0 = common.cpu_seconds(), time.perf_counter()
    bopts = BatchOptions(executor=executor, ray_cpus=ray_cpus if executor == "ray" else None,
                         jobs=jobs if executor == "local" else 1)
    per, stages, failed = [], {s: 0.0 for s in STAGES}, []
    with common.TreeMemory() as mem, BatchRunner(db_path, MatchOptions(grid=grid, dither=dither), RenderOptions(), bopts) as run:
        t_open = time.perf_counter() - t0
        for t, r in run.make([Path(t) for t in targets], outs):
            if isinstance(r, Exception):
                failed.append(f"{t}: {r}")
                continue
            s = r.seconds
            per.append(s["total"])
            for k in STAGES:
                stages[k] += s.get(k, 0.0)
    wall = time.perf_counter() - t0
    return {"open_and_index_load_seconds": round(t_open, 3), "wall_seconds": round(wall, 3),
            "batch_seconds": round(wall - t_open, 3), "targets_made": len(per), "failed": failed,
            "per_target_seconds": {"mean": round(statistics.fmean(per), 3), "median": round(statistics.median(per), 3),
                                   "max": round(max(per), 3)} if per else None,
            "stage_seconds_sum": {k: round(v, 3) for k, v in stages.items()},
            "cpu_seconds": common.cpu_since(c0), "peak_rss_mb": common.vm_hwm_mb(), "jobs": bopts.jobs,
            "process_tree_peak": mem.peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--db", default=None, help="the tile database [default: the 1M pool of pool_1m.py]")
    ap.add_argument("--pool", type=int, default=1_000_000, help="pool size from pool_1m.py when no --db")
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--grid", default="128")
    ap.add_argument("--executor", choices=["local", "ray"], default="local")
    ap.add_argument("--ray-cpus", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="local worker processes, as `mosaic make --jobs` [default: the CPU count]")
    ap.add_argument("--no-baseline", action="store_true", help="skip the single-target fresh-process baseline")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mosaicdb-bench-many"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10 targets against the 20,000-tile pool")
    ap.add_argument("--dither", type=float, default=None, help="--dither of the batch [default: make's default]")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.targets, args.pool = 10, 20_000
    data = common.data_dir(args.data)
    work = Path(args.work)
    load_start = common.loadavg()
    if args.db:
        db_path = Path(args.db)
    else:
        from pool_1m import ensure_pool
        db_path = ensure_pool(args.pool, data=data)
    from mosaicdb import TileDB
    with TileDB.open(db_path) as db:  # the index brought up to date outside the timings
        t0 = time.perf_counter()
        index = db.ensure_index()
        index_seconds = time.perf_counter() - t0
        tiles, infos = len(db), {k: index.infos.get(k) for k in ("kind", "params", "recall_at_1")}
    targets = [str(t) for t in make_targets(data, work / "targets", args.targets, args.seed)]
    out_dir = work / f"out-{args.executor}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.iterdir():
        f.unlink()
    print(f"{len(targets)} targets at grid {args.grid} against {tiles:,} tiles ({db_path}), {args.executor}", flush=True)
    batch = common.run_isolated(run_batch, str(db_path), targets, str(out_dir), args.grid, args.executor, args.ray_cpus,
                                args.jobs, args.dither)
    print(f"batch: {batch['wall_seconds']} s wall ({batch['open_and_index_load_seconds']} s open + index), "
          f"{batch['cpu_seconds']['total']:.1f} CPU-s, jobs {batch['jobs']}, per target {batch['per_target_seconds']}, "
          f"peak RSS {batch['peak_rss_mb']} MB, process tree {batch['process_tree_peak']}", flush=True)
    print(f"stage sums: {batch['stage_seconds_sum']}", flush=True)
    results = {"db": {"path": str(db_path), "tiles": tiles, "index": infos,
                      "index_update_seconds_untimed": round(index_seconds, 2)},
               "targets": len(targets), "grid": args.grid, "executor": args.executor, "output": "JPEG",
               "options": "defaults (MatchOptions(grid), RenderOptions())" + (f", dither {args.dither:g}" if args.dither is not None else ""),
               "batch": batch,
               "loadavg_start": load_start}
    if not args.no_baseline:
        one = work / "out-single"
        one.mkdir(exist_ok=True)
        for f in one.iterdir():
            f.unlink()
        single = common.run_isolated(run_batch, str(db_path), targets[:1], str(one), args.grid, "local", None)
        per_batch = batch["wall_seconds"] / max(1, batch["targets_made"])
        results["baseline_single_target_fresh_process"] = {
            **single, "ratio_to_batch_mean": round(single["wall_seconds"] / per_batch, 2)}
        print(f"baseline: one target in a fresh process {single['wall_seconds']} s "
              f"({single['open_and_index_load_seconds']} s open + index) = "
              f"{results['baseline_single_target_fresh_process']['ratio_to_batch_mean']}x the batch's mean", flush=True)
    tree_rss = batch["process_tree_peak"]["rss_sum_mb"]
    results["goals"] = {
        "total_wall_seconds": {"goal_max": GOAL_SECONDS, "measured": batch["wall_seconds"],
                               "met": batch["wall_seconds"] <= GOAL_SECONDS and tiles >= 1_000_000
                               and len(targets) >= 100},
        "peak_rss_mb": {"goal_max": GOAL_RSS_MB, "measured": max(batch["peak_rss_mb"], tree_rss),
                        "met": max(batch["peak_rss_mb"], tree_rss) <= GOAL_RSS_MB,
                        "note": "the larger of the process's VmHWM and the process tree's summed RSS"},
        "note": "goals apply to 100 targets against >= 1,000,000 tiles; other sizes are never 'met'"}
    results["loadavg_end"] = common.loadavg()
    out = Path(args.out) if args.out else common.default_out(NAME if not args.quick else NAME + "_quick")
    print(f"loadavg start {load_start}, end {results['loadavg_end']}; wrote {common.write_results(out, NAME, results)}")


if __name__ == "__main__":
    main()
