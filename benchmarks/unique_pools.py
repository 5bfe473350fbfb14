"""Tile pools for bench_unique, built once through the library API and cached outside the repo.

  cifar50k   all 50,000 CIFAR-10 training tiles (the 5 sheets unpacked to PNG, then ingested)
  cifar72k   the same 50,000 plus 22,000 of them mirrored left-right (sheets 1 and 2 and the
             first 2,000 of sheet 3): a pool of >= 70,000 for 65,536 unique cells. A mirrored
             tile keeps its mean colour but not its 4x4 Lab grid, so it is a new neighbour,
             not a duplicate (and none is byte-identical: all 72,000 are ingested).

Both are deterministic: same sheets, same order, same database. `python unique_pools.py
--cache DIR` builds them (minutes; reruns reuse what is there).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("MOSAICDB_BENCH_CACHE", "/work/cache/mosaicdb-bench-unique"))
MIRRORED = 22_000
POOLS = {"cifar50k": 50_000, "cifar72k": 50_000 + MIRRORED}


def _mirror_sheet(args) -> int:
    from PIL import Image
    sheet_path, dest, sheet_no, count = args
    tiles = common.load_sheet(Path(sheet_path))[:count, :, ::-1]
    folder = Path(dest) / f"mirror{sheet_no}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tiles):
        Image.fromarray(t).save(folder / f"{i:05d}.png", format="PNG")
    return len(tiles)


def _mirror_jobs(data: Path, dest: Path) -> list:
    jobs, left = [], MIRRORED
    for k in range(1, common.CIFAR_SHEETS + 1):
        n = min(common.CIFAR_PER_SHEET, left)
        if n <= 0:
            break
        jobs.append((str(data / "tiles" / f"cifar10_train_{k}.png"), str(dest), k, n))
        left -= n
    return jobs


def _check(path: Path, want: int) -> bool:
    from mosaicdb import TileDB
    if not (path / "catalog.sqlite").exists():
        return False
    with TileDB.open(path) as db:
        if len(db) != want:
            raise SystemExit(f"{path} exists but holds {len(db)} tiles, not {want}: delete it and rerun")
        db.ensure_index()
    return True


def build_pools(data: Path, cache: Path, log=print) -> dict:
    """Paths of both pools under `cache`, building whatever is missing."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp
    from mosaicdb import TileDB
    cache.mkdir(parents=True, exist_ok=True)
    paths = {name: cache / f"{name}.db" for name in POOLS}
    if not _check(paths["cifar50k"], POOLS["cifar50k"]):
        t0 = time.perf_counter()
        pngs = cache / "cifar-png"
        common.unpack_cifar(data, pngs)
        with TileDB.create(paths["cifar50k"]) as db:
            db.ingest([pngs])
            db.ensure_index()
        shutil.rmtree(pngs, ignore_errors=True)
        log(f"built {paths['cifar50k']} in {time.perf_counter() - t0:.0f} s")
    if not _check(paths["cifar72k"], POOLS["cifar72k"]):
        t0 = time.perf_counter()
        tmp = cache / "cifar72k.db.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(paths["cifar50k"], tmp)
        pngs = cache / "mirror-png"
        jobs = _mirror_jobs(data, pngs)
        with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as ex:
            list(ex.map(_mirror_sheet, jobs))
        with TileDB.open(tmp) as db:
            rep = db.ingest([pngs])
            if len(db) != POOLS["cifar72k"]:
                raise SystemExit(f"mirrored pool holds {len(db)} tiles, expected {POOLS['cifar72k']}: "
                                 f"{rep.summary()}")
            db.ensure_index()
        shutil.rmtree(pngs, ignore_errors=True)
        os.replace(tmp, paths["cifar72k"])
        log(f"built {paths['cifar72k']} in {time.perf_counter() - t0:.0f} s")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the pools live [default: %(default)s]")
    args = ap.parse_args()
    for name, p in build_pools(common.data_dir(args.data), Path(args.cache)).items():
        print(name, p)


if __name__ == "__main__":
    main()
