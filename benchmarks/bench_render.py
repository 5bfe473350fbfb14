"""Gigapixel render benchmark: a real pool of >= 2,000 tiles of 512 px (random crops of the
photographs in shared/data/targets, ingested through the normal path), a 256 x 256 grid of
256 px tiles -> a 65536^2 pyramidal JPEG BigTIFF, and the same at 128 x 128 (32768^2).

Baseline measured in the same run (the floor): JPEG-encoding the same number of pixels (all
levels) with the same encoder, settings and thread count, on 256 px tiles cut from the pool.
Each render runs in its own process so its peak RSS is its own.

    python benchmarks/bench_render.py            # full run (~several minutes)
    python benchmarks/bench_render.py --sizes 8192 16384 --tiles 500   # quick
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, data_dir, default_out, loadavg, run_isolated, vm_hwm_mb, write_results  # noqa: E402

TILE_SRC_PX = 512


def make_pool(data: Path, folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image
    photos = sorted((data / "targets").rglob("*.png"))
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = imgs[i % len(imgs)]
        h, w = a.shape[:2]
        side = int(rng.uniform(0.3, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        p = folder / f"crop_{i:05d}.jpg"
        Image.fromarray(a[y:y + side, x:x + side]).resize((TILE_SRC_PX, TILE_SRC_PX), Image.LANCZOS).save(p, quality=92)
        out.append(p)
    return out


def pool_database(data: Path, work: Path, n: int):
    """The real 512 px pool written under `work` and ingested through the normal path:
    (pool files, database path, seconds to cut the pool, seconds to ingest, ingest report)."""
    from mosaicdb import TileDB
    with Timer() as tp:
        pool = make_pool(data, work / "pool", n)
    dbp = work / "tiles.db"
    if not (dbp / "catalog.sqlite").exists():
        TileDB.create(dbp)
    with TileDB.open(dbp) as db, Timer() as ti:
        rep = db.ingest([work / "pool"])
    return pool, dbp, tp.seconds, ti.seconds, rep


def build_assignments(db_path: Path, target: Path, work: Path, grids: list[int]) -> dict:
    from mosaicdb import TileDB
    from mosaicdb import assignment as asg
    from mosaicdb.match.grid import cell_data, load_target, make_grid
    from mosaicdb.match.matcher import match
    from mosaicdb.match.options import MatchOptions
    out = {}
    with TileDB.open(db_path) as db:
        t = load_target(target)
        for g in grids:
            grid = make_grid(*t.size, f"{g}x{g}")
            cells = cell_data(t.image, grid, db.feature_spec)
            res = match(db, cells, grid, MatchOptions(grid=f"{g}x{g}", min_distance=3))
            meta = {"db": str(db_path), "db_version": db.version,
                    "target": {"path": t.path, "sha256": t.sha256, "size": list(t.size)},
                    "grid": {"cols": grid.cols, "rows": grid.rows, "crop": list(grid.crop)}, "render": {}}
            saved = asg.SavedAssignment(meta, res.assignment.tile_ids, res.assignment.cost, cells.mean, cells.std)
            p = work / f"grid{g}.tif"
            asg.save(p, saved)
            out[g] = str(p.with_name(p.name.replace(".tif", ".mosaic.json")))
    return out


def render_one(db_path: str, assignment: str, out: str, tile_px: int, quality: int, workers: int) -> dict:
    from mosaicdb import TileDB
    from mosaicdb import assignment as asg
    from mosaicdb.make import render_saved
    from mosaicdb.render.options import RenderOptions
    saved = asg.load(assignment)
    t0 = time.perf_counter()
    with TileDB.open(db_path, readonly=True) as db:
        w = render_saved(db, saved, out, RenderOptions(tile_px=tile_px, quality=quality, workers=workers))
    wall = time.perf_counter() - t0
    return {"wall_seconds": round(wall, 2), "bytes": w["bytes"], "levels": w["levels"], "tiles": w["tiles"],
            "original_decodes": w["original_decodes"], "reused_tile_bytes": w["reused_tile_bytes"],
            "peak_rss_mb": vm_hwm_mb()}


def encode_floor(pool: list[Path], pixels: int, quality: int, workers: int) -> dict:
    """Seconds to JPEG-encode `pixels` pixels as 256 px tiles cut from the pool, same encoder."""
    import imagecodecs
    from PIL import Image
    tiles = []
    for p in pool[:64]:
        a = np.asarray(Image.open(p).convert("RGB"))
        tiles += [np.ascontiguousarray(a[y:y + 256, x:x + 256]) for y in (0, 256) for x in (0, 256)]
    n = -(-pixels // (256 * 256))

    def enc(i):
        return len(imagecodecs.jpeg8_encode(tiles[i % len(tiles)], level=quality, colorspace="RGB",
                                            outcolorspace="YCBCR", subsampling=(2, 2)))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        total = sum(ex.map(enc, range(n), chunksize=256))
    return {"seconds": round(time.perf_counter() - t0, 2), "tiles": n, "bytes": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32768, 65536], help="output sides (256 px tiles)")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    ap.add_argument("--out", default=str(default_out("bench_render")))
    a = ap.parse_args()
    data = data_dir(a.data)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_render_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pool, dbp, pool_s, ingest_s, rep = pool_database(data, work, a.tiles)
        grids = [s // a.tile_px for s in a.sizes]
        target = data / "targets" / "kodak" / "kodim23.png"
        assignments = build_assignments(dbp, target, work, grids)
        runs = []
        for size, g in zip(a.sizes, grids):
            out = work / f"render_{size}.tif"
            r = run_isolated(render_one, str(dbp), assignments[g], str(out), a.tile_px, a.quality, a.workers)
            pixels = sum(w * h for w, h, _ in r["levels"])
            floor = encode_floor(pool, pixels, a.quality, a.workers)
            r.update(size=size, grid=g, pixels_all_levels=pixels, floor=floor,
                     ratio_to_floor=round(r["wall_seconds"] / max(floor["seconds"], 1e-9), 2),
                     )
            runs.append(r)
            print(f"{size}^2: {r['wall_seconds']} s (floor {floor['seconds']} s, ratio {r['ratio_to_floor']}), "
                  f"peak RSS {r['peak_rss_mb']} MB, {r['bytes'] / 1e9:.2f} GB", flush=True)
            out.unlink(missing_ok=True)
        rss = [r["peak_rss_mb"] for r in runs]
        results = {"tiles": len(pool), "tile_source_px": TILE_SRC_PX, "tile_px": a.tile_px, "quality": a.quality,
                   "workers": a.workers, "ingest": {"seconds": round(ingest_s, 2), "summary": rep.summary()},
                   "pool_seconds": round(pool_s, 2), "runs": runs,
                   "rss_spread": round(max(rss) / min(rss) - 1, 3) if rss else None,
                   "goals": {"ratio_to_floor_max": 6, "peak_rss_mb_max": 1000, "rss_spread_max": 0.2},
                   "loadavg": loadavg()}
        print(f"wrote {write_results(Path(a.out), 'bench_render', results)}")
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
