#!/usr/bin/env python3
"""Build a tile pool from the shared real data: cut the CIFAR-10 sheets into PNG files in a
folder, then ingest them (and the Noto emoji zip, as it is) into a tile database.

    python scripts/prepare_pool.py pool.db                      # all 50,000 CIFAR tiles + 3,926 emoji
    python scripts/prepare_pool.py pool.db --cifar 5000 --no-emoji --tiles-dir /tmp/cifar

Rerunning is cheap: tiles already cut are not written again and the ingest adds nothing new.
The shared data folder is ../shared/data beside the repository, or --data / $MOSAICDB_SHARED_DATA.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHEET_TILES, SHEETS = 10_000, 5


def shared_data(given: str | None) -> Path:
    d = Path(given or os.environ.get("MOSAICDB_SHARED_DATA") or REPO.parent / "shared" / "data")
    if not (d / "tiles").is_dir():
        sys.exit(f"prepare_pool: no shared data in {d} (give --data or $MOSAICDB_SHARED_DATA)")
    return d


def sheet_tiles(path: Path) -> np.ndarray:
    """A 3200x3200 sheet -> (10000, 32, 32, 3): tile i at row i // 100, column i % 100."""
    a = np.asarray(Image.open(path).convert("RGB"))
    return a.reshape(100, 32, 100, 32, 3).swapaxes(1, 2).reshape(-1, 32, 32, 3)


def cut_cifar(data: Path, n: int, folder: Path) -> int:
    """The first n CIFAR tiles as folder/c00000.png ...; returns how many were written now."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for k in range(SHEETS):
        first = k * SHEET_TILES
        if first >= n:
            break
        todo = [i for i in range(first, min(n, first + SHEET_TILES)) if not (folder / f"c{i:05d}.png").exists()]
        if not todo:
            continue
        tiles = sheet_tiles(data / "tiles" / f"cifar10_train_{k + 1}.png")
        for i in todo:
            tmp = folder / f".c{i:05d}.png.tmp"
            Image.fromarray(tiles[i - first]).save(tmp, "PNG", compress_level=1)
            tmp.rename(folder / f"c{i:05d}.png")  # a killed run never leaves half a file
            written += 1
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="tile database folder (created if missing)")
    ap.add_argument("--data", help="shared data folder [default: ../shared/data beside the repo]")
    ap.add_argument("--cifar", type=int, default=SHEETS * SHEET_TILES, help="CIFAR-10 tiles to use (0-50000)")
    ap.add_argument("--emoji", action=argparse.BooleanOptionalAction, default=True, help="also the 3,926 emoji")
    ap.add_argument("--tiles-dir", type=Path, default=None, help="where to cut the CIFAR tiles [default: DB.tiles/]")
    ap.add_argument("--workers", type=int, default=None, help="ingest processes [default: CPU count]")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not 0 <= args.cifar <= SHEETS * SHEET_TILES:
        ap.error(f"--cifar must be between 0 and {SHEETS * SHEET_TILES}")
    data = shared_data(args.data)
    from mosaicdb import TileDB

    sources = []
    if args.cifar:
        folder = args.tiles_dir or Path(str(args.db).rstrip("/") + ".tiles") / "cifar"
        n = cut_cifar(data, args.cifar, folder)
        if not args.quiet:
            print(f"CIFAR-10: {args.cifar} tiles in {folder} ({n} cut now)", file=sys.stderr)
        sources.append(str(folder))
    if args.emoji:
        sources.append(str(data / "tiles" / "noto_emoji_136x128.zip"))
    if not sources:
        ap.error("nothing to ingest: give --cifar N or --emoji")
    with TileDB.open_or_create(args.db) as db:
        report = db.ingest(sources, workers=args.workers, progress=not args.quiet)
        print(f"{args.db}: {report.summary()}; {len(db)} tiles in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
