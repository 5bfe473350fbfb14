"""Render an assignment one row of cells at a time, so memory never holds the canvas."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from ..color import transfer
from ..errors import RenderError
from ..match.grid import load_target
from .tiles import TileSource


def check_tiles_present(db, tile_ids: np.ndarray) -> None:
    want = np.unique(tile_ids)
    have = db.ids()
    gone = np.setdiff1d(want, have)
    if len(gone):
        raise RenderError(f"{len(gone)} tiles of this assignment are no longer in {db.path} (e.g. id {gone[0]}): "
                          "run `mosaic make` again")


def target_for_blend(saved) -> np.ndarray:
    t = saved.meta["target"]
    p = Path(t["path"])
    if not p.is_file():
        raise RenderError(f"--color blend needs the target {p}, which is missing: restore it or use another --color")
    if hashlib.sha256(p.read_bytes()).hexdigest() != t["sha256"]:
        raise RenderError(f"target {p} changed since matching: --color blend would tint with the wrong picture")
    return load_target(p).image


def band_target(image: np.ndarray, crop, rows: int, cols: int, r: int, px: int) -> np.ndarray:
    """Row r of the cropped target resampled to (px, cols*px), split into (cols, px, px, 3)."""
    l, t, rr, b = crop
    y0 = t + round(r * (b - t) / rows)
    y1 = max(y0 + 1, t + round((r + 1) * (b - t) / rows))
    band = cv2.resize(np.ascontiguousarray(image[y0:y1, l:rr]), (cols * px, px),
                      interpolation=cv2.INTER_AREA if px < (y1 - y0) else cv2.INTER_CUBIC)
    return band.reshape(px, cols, px, 3).swapaxes(0, 1)


def iter_rows(db, saved, px: int, color: str = "none", strength: float = 0.5, target: np.ndarray | None = None):
    """Yield (px, cols*px, 3) uint8 bands, one per row of cells, top to bottom."""
    src = TileSource(db, px)
    rows, cols = saved.rows, saved.cols
    crop = saved.meta["grid"]["crop"]
    if color == "blend" and target is None:
        target = target_for_blend(saved)
    for r in range(rows):
        tiles = src.get(saved.tile_ids[r])
        if color != "none":
            cells = band_target(target, crop, rows, cols, r, px) if color == "blend" else None
            tiles = transfer(tiles, saved.target_mean[r], saved.target_std[r], color, strength, cells)
        yield tiles.swapaxes(0, 1).reshape(px, cols * px, 3)


def render_array(db, saved, px: int, color: str = "none", strength: float = 0.5, target=None) -> np.ndarray:
    """The whole mosaic in memory: only for small renders (evaluation, tests)."""
    return np.concatenate(list(iter_rows(db, saved, px, color, strength, target)), axis=0)
