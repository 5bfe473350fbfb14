"""Pyramid levels rendered straight from the assignment, block by block.

Level k is the mosaic at cell size T/2^k. While that is a whole number of pixels (>= 4), the
level is rendered directly from thumbnails/originals, one block of 256 x BLOCK_W pixels at a
time, so no level is ever held whole and memory does not depend on the output size. Colour
transfer happens inside `CellRenderer`, per block, from per-tile statistics: nothing is kept per
cell, so memory does not depend on the number of cells either. The remaining small levels
(cells under 4 px or fractional: at most a few pixels per cell) are area-resampled in RAM from
one small render of the whole grid at `small_px` per cell (12 bytes per cell for tile sizes that
are powers of two, a third of what the assignment itself holds per cell).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import RenderError
from .cells import CellRenderer, OnceLRU, PixelCache
from .spill import SpillFile
from .layout import TILE
from .options import RenderOptions

BLOCK_W = 16 * TILE     # pixels per render task: memory per task is fixed, whatever the width
DIRECT_MIN_PX = 4
SMALL_MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class Level:
    index: int
    width: int
    height: int
    cell_px: int | None   # rendered directly at this many px per cell; None: resampled in RAM

    @property
    def tiles_across(self) -> int:
        return -(-self.width // TILE)

    @property
    def tiles_down(self) -> int:
        return -(-self.height // TILE)

    @property
    def n_tiles(self) -> int:
        return self.tiles_across * self.tiles_down


def plan_levels(cols: int, rows: int, tile_px: int, stop: int = TILE) -> tuple[list[Level], int]:
    """Levels from full size down to the first whose long side is <= stop, and the px per
    cell of the small in-RAM render the non-direct levels are resampled from (0 if none)."""
    W, H = cols * tile_px, rows * tile_px
    levels, k = [], 0
    while True:
        w, h = max(1, -(-W // 2 ** k)), max(1, -(-H // 2 ** k))
        t = tile_px / 2 ** k
        direct = t == int(t) and t >= DIRECT_MIN_PX
        levels.append(Level(k, w, h, int(t) if direct else None))
        if max(w, h) <= stop:
            break
        k += 1
    small = [lv for lv in levels if lv.cell_px is None]
    small_px = 0
    if small:
        need = max(small[0].width / cols, 1.0)
        small_px = 2 ** math.ceil(math.log2(need))
        if cols * rows * small_px ** 2 > SMALL_MAX_PIXELS:
            raise RenderError(f"--tile-px {tile_px} halves to a fraction of a pixel at level {small[0].index}; "
                              f"use a tile size divisible by a larger power of two (e.g. {2 ** max(2, round(math.log2(tile_px)))})")
    return levels, small_px


class PyramidRenderer:
    """Yields every level's tiles in row-major order, as pixels or encoded bytes."""

    def __init__(self, db, saved, opts: RenderOptions, *, stop: int = TILE, target=None):
        self.saved, self.T = saved, opts.px
        self.levels, self.small_px = plan_levels(saved.cols, saved.rows, self.T, stop)
        big = tuple(lv.cell_px for lv in self.levels if lv.cell_px and lv.cell_px > max(db.thumb_sizes))
        self.cells = CellRenderer(db, saved, opts, target, PixelCache(db, big, opts.cache_bytes, SpillFile()))
        self.reuse = opts.color == "none"
        self.bytes_cache = OnceLRU(128 << 20, len)  # encoded tiles by (tile id, orientation)
        self.workers = opts.resolved_workers()
        self._small = None
        self._resampled: tuple[int, np.ndarray] | None = None   # (level index, pixels): one at a time

    @property
    def total_tiles(self) -> int:
        return sum(lv.n_tiles for lv in self.levels)

    def _small_level(self, lv: Level) -> np.ndarray:
        """A resampled level, made once from the small render (3 * small_px^2 bytes per cell) and
        kept until the next level asks: every task of the level slices the same array."""
        if self._small is None:
            s = self.saved
            self._small = self.cells.region(0, s.rows, 0, s.cols, self.small_px)
        if self._small.shape[1] == lv.width and self._small.shape[0] == lv.height:
            return self._small
        if self._resampled is None or self._resampled[0] != lv.index:
            self._resampled = (lv.index, cv2.resize(self._small, (lv.width, lv.height), interpolation=cv2.INTER_AREA))
        return self._resampled[1]

    def level_array(self, lv: Level) -> np.ndarray:
        """A whole level in memory: for the small levels, and for tests' reference renders."""
        if lv.cell_px is None:
            return self._small_level(lv)
        return self.cells.region(0, self.saved.rows, 0, self.saved.cols, lv.cell_px)

    def block(self, lv: Level, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) of a directly rendered level."""
        t = lv.cell_px
        r0, r1 = y0 // t, -(-y1 // t)
        c0, c1 = x0 // t, -(-x1 // t)
        reg = self.cells.region(r0, r1, c0, c1, t)
        return reg[y0 - r0 * t:y1 - r0 * t, x0 - c0 * t:x1 - c0 * t]

    def _task(self, lv: Level, ty: int, tx0: int, tx1: int, encode, pad: bool):
        """Encoded tiles (ty, tx0..tx1) of a level: one render task."""
        y0, y1 = ty * TILE, min(lv.height, (ty + 1) * TILE)
        x0, x1 = tx0 * TILE, min(lv.width, tx1 * TILE)
        if self.reuse and lv.cell_px == TILE:
            out = []
            for tx in range(tx0, tx1):
                key = (int(self.saved.tile_ids[ty, tx]), self.cells.turn(ty, tx))
                out.append(self.bytes_cache.get_or_make(
                    key, lambda ty=ty, tx=tx: encode(self.cells.cell_tile(ty, tx, TILE))))
            return out
        if lv.cell_px is None:
            pix = self._small_level(lv)[y0:y1, x0:x1]
        else:
            pix = self.block(lv, y0, x0, y1, x1)
        out = []
        for tx in range(tx0, tx1):
            a = pix[:, (tx - tx0) * TILE:(tx - tx0 + 1) * TILE]
            if pad and a.shape[:2] != (TILE, TILE):
                full = np.zeros((TILE, TILE, 3), np.uint8)
                full[:a.shape[0], :a.shape[1]] = a
                a = full
            out.append(encode(np.ascontiguousarray(a)))
        return out

    def encoded_tiles(self, lv: Level, encode, pad: bool = True, on_tile=None):
        """Yield the level's tiles, row-major, encoded by `encode(pixels) -> bytes`, rendered in
        worker threads with a bounded number of tasks in flight."""
        step = BLOCK_W // TILE
        tasks = [(ty, tx, min(tx + step, lv.tiles_across)) for ty in range(lv.tiles_down)
                 for tx in range(0, lv.tiles_across, step)]
        if lv.cell_px is None:
            self._small_level(lv)  # once, before threads share it
        with ThreadPoolExecutor(self.workers) as ex:
            pending = []
            it = iter(tasks)
            try:
                for t in it:
                    pending.append(ex.submit(self._task, lv, *t, encode, pad))
                    if len(pending) > 2 * self.workers:
                        for b in pending.pop(0).result():
                            yield b
                            if on_tile:
                                on_tile()
                for f in pending:
                    for b in f.result():
                        yield b
                        if on_tile:
                            on_tile()
            finally:
                for f in pending:
                    f.cancel()
