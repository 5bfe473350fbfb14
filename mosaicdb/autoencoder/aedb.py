"""Where decoded tiles live: their own tile database, never the user's photo pool.

A mosaic of 128 cells decodes ~10,000 new tiles. They go into the *decoded-tile database*
(`--ae-db`, by default `MODEL-NAME.tiles.db` beside the output), created with the pool's
settings (features, background; thumbnails only up to the model's tile size) so costs are
comparable. The pool given with `--db` is only read. Every mosaic made with the same model
into the same folder shares that database; identical tiles (same pixels, e.g. flat sky cells)
are stored once, and a tile's provenance names the first cell that made it. With `--hybrid`,
retrieved tiles that win their cell are copied into it with their original bytes (origin
"retrieved", provenance naming the pool and tile id), so the saved assignment refers to one
database and `render`, `print` and `serve` work on it unchanged.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from ..errors import DatabaseError, UsageError
from ..store import TileDB
from ..store import catalog

ORIGIN_DECODED = "autoencoder"
ORIGIN_COPIED = "retrieved"


def default_path(out: Path, model_path: Path) -> Path:
    """MODEL-NAME.tiles.db in the folder of `out` (or in `out` itself when it is a folder)."""
    out = Path(out)
    folder = out if not out.suffix else out.parent
    return folder / f"{Path(model_path).name}.tiles.db"


def open_or_create(path: Path, pool, tile_px: int) -> TileDB:
    """The decoded-tile database at `path`, created like `pool` when it does not exist yet, with
    thumbnails only up to the decoded tiles' size `tile_px`: larger ones would be upsampled
    copies (12 KB a tile at 64 px), and a render above that size upsamples the original."""
    path = Path(path)
    if path.resolve() == Path(pool.path).resolve():
        raise UsageError(f"--ae-db {path} is the pool given with --db: decoded tiles are kept apart from your "
                         "photos; name another folder")
    if (path / "catalog.sqlite").exists():
        return TileDB.open(path)
    sizes = tuple(s for s in pool.thumb_sizes if s <= tile_px) or (min(pool.thumb_sizes),)
    spec = pool.feature_spec  # the pool's feature kind: the hybrid compares both by it
    lab_grid = {"feature_grid": spec.grid, "mean_weight": spec.mean_weight} if spec.kind == "lab-grid" else {}
    return TileDB.create(path, thumb_sizes=sizes, features=spec.kind, **lab_grid,
                         background=tuple(pool.decode_options.background), max_pixels=pool.decode_options.max_pixels)


def png_bytes(tile: np.ndarray) -> bytes:
    """Lossless PNG of one uint8 RGB tile: the same pixels always give the same bytes."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(tile[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


def digest(data: bytes) -> str:
    """The content hash tile databases key tiles by (SHA-256, hex)."""
    return hashlib.sha256(data).hexdigest()


def ids_of(db: TileDB, hashes: list[str]) -> np.ndarray:
    """Tile ids of content hashes (all must be in `db`)."""
    found = catalog.existing_hashes(db.con, sorted(set(hashes)))
    missing = [h for h in hashes if h not in found]
    if missing:
        raise RuntimeError(f"{len(missing)} tiles just ingested are not in {db.path} (e.g. {missing[0][:12]})")
    return np.array([found[h] for h in hashes], dtype=np.int64)


def copy_items(pool, ids, hashes: dict):
    """(bytes, source, provenance) of pool tiles, for `TileDB.add_images`: their original bytes.
    `hashes` receives pool id -> content hash (the tile's key in the decoded-tile database)."""
    for t in pool.tiles(ids):
        data = pool.original_bytes(t)  # a regular file inside its root, bounded, with its hash
        hashes[t["id"]] = digest(data)
        prov = {"copied_from": {"db": str(Path(pool.path).resolve()), "id": t["id"], "source": t["source"],
                                "origin": t["origin"], "provenance": t["provenance"]}}
        yield data, t["source"], prov
