"""Benchmark: ingest of the 50,000 CIFAR-10 tiles as individual PNG files (not a test).

Untimed setup: the 5 CIFAR sheets of ../shared/data are unpacked to 50,000 32x32 PNG files in a
temporary folder. Then, each phase in a fresh process (so its peak RSS is its own):

  baseline   read + decode every file with Pillow in one process (open, convert RGB, asarray):
             the raw decode speed that ingest is compared with
  ingest     TileDB.create + ingest(folder, workers=default, update_index=False)
  index      TileDB.build_index() with default options (kind auto)
  rerun      the same ingest again: must add nothing and be fast

Reported: tiles/s (goal >= 2,000/s on 2 cores), ratio to the decode baseline, index build
seconds, rerun seconds, peak RSS, database size on disk by component. When ingest is below the
goal (or with --profile) a slice is profiled with cProfile at workers=1.

    python benchmarks/bench_ingest.py                 # all 50,000 tiles
    python benchmarks/bench_ingest.py --limit 5000    # quick run
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "bench_ingest"
GOAL_TILES_PER_S = 2000


# ---- phases (each run in a fresh process via common.run_isolated) ----------------------------
def phase_decode_baseline(paths: list[str]) -> dict:
    import numpy as np
    from PIL import Image
    c0, la0 = common.cpu_seconds(), common.loadavg()
    t0 = time.perf_counter()
    checksum = 0
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        checksum += int(a[0, 0, 0])
    sec = time.perf_counter() - t0
    cpu = common.cpu_since(c0)
    return {"seconds": sec, "tiles": len(paths), "tiles_per_s": len(paths) / sec,
            "cpu_seconds": cpu, "tiles_per_cpu_s": len(paths) / max(cpu["total"], 1e-9),
            "checksum": checksum, "peak_rss": common.peak_rss_mb(),
            "loadavg_before": la0, "loadavg_after": common.loadavg()}


def phase_ingest(db_path: str, folder: str, workers: int | None, create: bool) -> dict:
    from mosaicdb import TileDB
    c0, la0 = common.cpu_seconds(), common.loadavg()
    t0 = time.perf_counter()
    db = TileDB.create(db_path) if create else TileDB.open(db_path)
    t1 = time.perf_counter()
    rep = db.ingest([folder], workers=workers, update_index=False)
    t2 = time.perf_counter()
    n = len(db)
    db.close()
    cpu = common.cpu_since(c0)
    return {"seconds": t2 - t0, "cpu_seconds": cpu, "tiles_per_cpu_s": rep.added / max(cpu["total"], 1e-9),
            "loadavg_before": la0, "loadavg_after": common.loadavg(), "create_or_open_seconds": t1 - t0, "ingest_seconds": t2 - t1,
            "added": rep.added, "duplicates": rep.duplicates, "unchanged": rep.unchanged,
            "skipped": rep.skipped, "tiles_in_db": n,
            "workers": workers if workers is not None else os.cpu_count(),
            "peak_rss": common.peak_rss_mb()}


def phase_index(db_path: str) -> dict:
    from mosaicdb import TileDB
    c0, la0 = common.cpu_seconds(), common.loadavg()
    t0 = time.perf_counter()
    with TileDB.open(db_path) as db:
        infos = db.build_index()
    sec = time.perf_counter() - t0
    cpu = common.cpu_since(c0)
    keep = ("kind", "params", "ntotal", "build_seconds", "recall_at_1", "recall_sample", "tuning")
    return {"seconds": sec, "cpu_seconds": cpu, "infos": {k: infos.get(k) for k in keep},
            "peak_rss": common.peak_rss_mb(), "loadavg_before": la0, "loadavg_after": common.loadavg()}


_STAGES = [  # (label, module file suffix, function name): cumulative time of these in the profile;
    # stages the code under test does not call are left out of the results
    ("enumerate + stat sources", "store/ingest.py", "enumerate_sources"),
    ("read file bytes", "store/ingest.py", "_read"),
    ("decode (open_image)", "store/decode.py", "open_image"),
    ("  of which Image.open (header)", "PIL/Image.py", "open"),
    ("  of which load (PNG inflate)", "PIL/ImageFile.py", "load"),
    ("  of which ImageOps.exif_transpose", "PIL/ImageOps.py", "exif_transpose"),
    ("  of which _to_rgb", "store/decode.py", "_to_rgb"),
    ("thumbnails (make_thumbnails)", "store/decode.py", "make_thumbnails"),
    ("  of which center_square (crop)", "store/decode.py", "center_square"),
    ("  of which PIL resize", "PIL/Image.py", "resize"),
    ("  of which PIL reduce", "PIL/Image.py", "reduce"),
    ("  of which cv2.resize", "~", "<resize>"),
    ("  of which np.asarray(PIL image)", "PIL/Image.py", "__array_interface__"),
    ("sha256", "~", "<built-in method _hashlib.openssl_sha256>"),
    ("write original blob (_write_blob)", "store/ingest.py", "_write_blob"),
    ("features (tile_features)", "store/decode.py", "tile_features"),
    ("np.stack thumbs", "numpy/_core/shape_base.py", "stack"),
    ("commit chunk (arrays + sqlite)", "store/db.py", "_commit_chunk"),
    ("  of which RowArray.write", "store/arrays.py", "write"),
    ("  of which sqlite executemany", "~", "<method 'executemany' of 'sqlite3.Connection' objects>"),
    ("  of which existing_hashes", "store/catalog.py", "existing_hashes"),
    ("known_sources lookup", "store/catalog.py", "known_sources"),
]


def phase_profile(db_path: str, folder: str, n: int, top: int = 25) -> dict:
    """Ingest `folder` (a slice of n tiles) with workers=1: once plainly, once under cProfile."""
    from mosaicdb import TileDB
    plain = Path(db_path + "_plain")
    c0, la0 = common.cpu_seconds(), common.loadavg()
    t0 = time.perf_counter()
    with TileDB.create(plain) as db:
        db.ingest([folder], workers=1, update_index=False)
    plain_s = time.perf_counter() - t0
    plain_cpu = common.cpu_since(c0)
    shutil.rmtree(plain, ignore_errors=True)

    prof = cProfile.Profile(time.process_time)  # CPU time: wall time is inflated by other load
    t0 = time.perf_counter()
    prof.enable()
    with TileDB.create(db_path) as db:
        db.ingest([folder], workers=1, update_index=False)
    prof.disable()
    prof_s = time.perf_counter() - t0
    st = pstats.Stats(prof)
    total = st.total_tt
    stages = []
    for label, file_suffix, func in _STAGES:
        ct = sum(v[3] for (f, _l, fn), v in st.stats.items() if fn == func and f.endswith(file_suffix))
        calls = sum(v[1] for (f, _l, fn), v in st.stats.items() if fn == func and f.endswith(file_suffix))
        if calls == 0:
            continue
        stages.append({"stage": label, "cum_cpu_seconds": round(ct, 3), "share": round(ct / total, 3),
                       "calls": calls, "us_per_tile": round(1e6 * ct / n, 1)})
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    by_tottime = []
    for (f, line, fn), (cc, nc, tt, ct, _callers) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        by_tottime.append({"function": f"{Path(f).name}:{line}({fn})" if f != "~" else fn, "calls": nc,
                           "tottime_cpu_s": round(tt, 3), "cumtime_cpu_s": round(ct, 3)})
    return {"tiles": n, "workers": 1, "plain_seconds": plain_s, "plain_tiles_per_s": n / plain_s,
            "plain_cpu_seconds": plain_cpu, "plain_tiles_per_cpu_s": n / max(plain_cpu["total"], 1e-9),
            "loadavg_before": la0,
            "profiled_seconds": prof_s, "profile_timer": "time.process_time (CPU seconds of the process)",
            "profile_total_cpu_seconds": total, "stages_cumulative": stages,
            "top_by_tottime": by_tottime, "pstats_text": buf.getvalue().splitlines()[:top + 12]}


# ---- driver ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="shared data folder [default: ../shared/data next to the repo]")
    ap.add_argument("--out", type=Path, default=common.default_out(NAME), help="JSON result file")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N tiles (quick run)")
    ap.add_argument("--workers", type=int, default=None, help="ingest workers [default: TileDB default = CPU count]")
    ap.add_argument("--profile", action="store_true", help="profile a slice even if the goal is met")
    ap.add_argument("--profile-n", type=int, default=5000, help="tiles in the profiled slice [5000]")
    ap.add_argument("--tmp", default=None, help="folder for the temporary PNG files and database")
    ap.add_argument("--keep-db", type=Path, default=None,
                    help="also copy the finished database (with index) here, e.g. for bench_index.py --db")
    args = ap.parse_args(argv)
    data = common.data_dir(args.data)

    work = Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=args.tmp))
    try:
        tiles_dir, db_path = work / "tiles", work / "db"
        t0 = time.perf_counter()
        paths = common.unpack_cifar(data, tiles_dir, args.limit)
        unpack_s = time.perf_counter() - t0
        n = len(paths)
        png = common.disk_usage(tiles_dir)
        print(f"unpacked {n} PNG tiles in {unpack_s:.1f} s (not timed; {common.mb(png['bytes'])} MB)", flush=True)

        base = common.run_isolated(phase_decode_baseline, paths)
        print(f"baseline  Pillow read+decode, 1 process: {base['tiles_per_s']:,.0f} tiles/s "
              f"({base['tiles_per_cpu_s']:,.0f} per CPU-s)", flush=True)

        ing = common.run_isolated(phase_ingest, str(db_path), str(tiles_dir), args.workers, True)
        ing["tiles_per_s"] = ing["added"] / ing["seconds"]
        print(f"ingest    {ing['added']} added in {ing['seconds']:.1f} s: {ing['tiles_per_s']:,.0f} tiles/s "
              f"(workers {ing['workers']}; {ing['tiles_per_cpu_s']:,.0f} per CPU-s; load {ing['loadavg_before']}), peak RSS parent {ing['peak_rss']['self_mb']} MB, "
              f"worker {ing['peak_rss']['largest_child_mb']} MB", flush=True)
        size_before_index = _db_sizes(db_path)

        idx = common.run_isolated(phase_index, str(db_path))
        print(f"index     {idx['infos']['kind']} {idx['infos']['params']} in {idx['seconds']:.1f} s "
              f"(recall@1 {idx['infos']['recall_at_1']:.3f})", flush=True)

        rerun = common.run_isolated(phase_ingest, str(db_path), str(tiles_dir), args.workers, False)
        print(f"rerun     {rerun['added']} added, {rerun['unchanged']} unchanged in {rerun['seconds']:.2f} s", flush=True)

        sizes = _db_sizes(db_path)
        total = sum(v["allocated_bytes"] for v in sizes.values())
        print("db size   " + ", ".join(f"{k} {common.mb(v['allocated_bytes'])} MB" for k, v in sizes.items())
              + f" (total {common.mb(total)} MB allocated)", flush=True)

        profile = None
        below = ing["tiles_per_s"] < GOAL_TILES_PER_S
        if below or args.profile:
            k = min(args.profile_n, n)
            slice_dir = work / "slice"
            slice_dir.mkdir()
            for p in paths[:k]:
                q = slice_dir / Path(p).parent.name / Path(p).name
                q.parent.mkdir(exist_ok=True)
                os.link(p, q)
            profile = common.run_isolated(phase_profile, str(work / "db_profile"), str(slice_dir), k)
            print(f"profile   workers=1 on {k} tiles: {profile['plain_tiles_per_s']:,.0f} tiles/s unprofiled; "
                  "cumulative CPU time by stage (profiled):", flush=True)
            for s in profile["stages_cumulative"]:
                print(f"            {s['stage']:<38} {s['us_per_tile']:>8.1f} us/tile  {100 * s['share']:5.1f} %")

        if args.keep_db:
            if args.keep_db.exists():
                print(f"--keep-db: {args.keep_db} exists, not overwritten", file=sys.stderr)
            else:
                shutil.copytree(db_path, args.keep_db)

        results = {
            "tiles": n, "limit": args.limit,
            "setup": {"unpack_seconds_untimed": round(unpack_s, 2), "png_files": png,
                      "note": "32x32 RGB PNG files written by Pillow (default zlib level 6) in a temp folder; "
                              "files are in the page cache for every phase (warm reads)"},
            "goal_tiles_per_s": GOAL_TILES_PER_S,
            "baseline_decode": {**base, "what": "one process: read bytes, PIL.Image.open(BytesIO).convert('RGB'), np.asarray"},
            "ingest": ing,
            "ingest_vs_decode_ratio": ing["tiles_per_s"] / base["tiles_per_s"],
            "ingest_vs_decode_ratio_per_cpu_s": ing["tiles_per_cpu_s"] / base["tiles_per_cpu_s"],
            "note_on_noise": "wall times depend on other load on the machine (see loadavg_*); "
                             "tiles_per_cpu_s (user+sys of the phase's processes) is less sensitive to it",
            "meets_goal": not below,
            "index_build": idx,
            "rerun": rerun,
            "db_size_before_index": size_before_index,
            "db_size": sizes,
            "db_size_total_allocated_bytes": total,
            "profile": profile,
        }
        out = common.write_results(args.out, NAME, results)
        print(f"ingest/decode ratio {results['ingest_vs_decode_ratio']:.2f}; goal {'met' if not below else 'MISSED'}"
              f" ({ing['tiles_per_s']:,.0f} vs {GOAL_TILES_PER_S:,} tiles/s); wrote {out}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _db_sizes(db_path: Path) -> dict:
    db_path = Path(db_path)
    comp = {"catalog": [db_path / n for n in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm")],
            "originals": [db_path / "originals"], "features": [db_path / "features.f32"],
            "thumbnails": sorted(db_path.glob("thumbs_*.u8")), "index": [db_path / "index"]}
    out = {}
    for name, parts in comp.items():
        us = [common.disk_usage(p) for p in parts]
        out[name] = {k: sum(u[k] for u in us) for k in ("bytes", "allocated_bytes", "files")}
    return out


if __name__ == "__main__":
    sys.exit(main())
