"""Pixels of any rectangle of cells at any cell size, with colour transfer: the one place
that turns an assignment into pixels. Row bands, pyramid levels and DZI tiles all come from
`CellRenderer.cells`, so every output agrees with every other at the same cell size."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from ..color import transfer
from ..errors import RenderError
from ..io import read_input
from ..match.grid import MAX_TARGET_BYTES, Grid, load_target, resample_cells
from ..store.decode import square_resize
from .options import RenderOptions
from .tiles import box_reduce

BLEND_MAX_BYTES = 64 << 20  # the target resampled for blending stays below this


def check_tiles_present(db, tile_ids: np.ndarray) -> None:
    gone = np.setdiff1d(np.unique(tile_ids), db.ids())
    if len(gone):
        raise RenderError(f"{len(gone)} tiles of this assignment are no longer in {db.path} (e.g. id {gone[0]}): "
                          "run `mosaic make` again")


def load_blend_target(saved) -> np.ndarray:
    t = saved.meta.target
    if t is None:
        raise RenderError("--color blend needs the target image, and this assignment records none: "
                          "use another --color")
    p = Path(t.path)
    if not p.is_file():
        raise RenderError(f"--color blend needs the target {p}, which is missing: restore it or use another --color")
    if hashlib.sha256(read_input(p, MAX_TARGET_BYTES, f"target {p}")).hexdigest() != t.sha256:
        raise RenderError(f"target {p} changed since matching: --color blend would tint with the wrong picture")
    return load_target(p).image


class OnceLRU:
    """A thread-safe LRU bounded in bytes whose values are made once per key, even when several
    threads ask for the same missing key at the same time (the others wait for the first)."""

    def __init__(self, budget: int, sizeof):
        self.budget, self.sizeof = budget, sizeof
        self._lru: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict = {}
        self.made = 0
        self.hits = 0

    def get_or_make(self, key, make):
        while True:
            with self._lock:
                if key in self._lru:
                    self._lru.move_to_end(key)
                    self.hits += 1
                    return self._lru[key]
                ev = self._inflight.get(key)
                if ev is None:
                    ev = self._inflight[key] = threading.Event()
                    break
            ev.wait()
        try:
            value = make()
            with self._lock:
                self.made += 1
                self._lru[key] = value
                self._bytes += self.sizeof(value)
                while self._bytes > self.budget and len(self._lru) > 1:
                    _, old = self._lru.popitem(last=False)
                    self._bytes -= self.sizeof(old)
            return value
        finally:
            with self._lock:
                del self._inflight[key]
            ev.set()


class PixelCache:
    """Tile pixels for sizes above the largest thumbnail: each original is decoded once and every
    size the render needs is made from that decode (each straight from the original, so a tile
    looks the same whichever level asked first), kept in a byte-bounded LRU."""

    def __init__(self, db, sizes: tuple[int, ...], budget: int = 512 << 20):
        self.db = db
        self.sizes = tuple(sorted(set(sizes), reverse=True))
        self._lru = OnceLRU(budget, lambda d: sum(a.nbytes for a in d.values()))

    @property
    def decodes(self) -> int:
        return self._lru.made

    def get(self, tile_id: int, size: int) -> np.ndarray:
        sizes = self.sizes if size in self.sizes else (size,)

        def make():
            img = self.db.load_original(tile_id)
            return {s: np.asarray(square_resize(img, s)) for s in sizes}

        return self._lru.get_or_make((tile_id, sizes), make)[size]


class CellRenderer:
    """Draws any rectangle of an assignment's cells at any cell size, with the colour transfer
    of `opts` (`RenderOptions.color`, `.color_strength`). `target`: the target image, needed by
    --color blend (else read from the path the assignment records)."""

    def __init__(self, db, saved, opts: RenderOptions, target=None, cache: PixelCache | None = None):
        self.db, self.saved, self.opts = db, saved, opts
        self.max_thumb = max(db.thumb_sizes)
        self.cache = cache or PixelCache(db, ())
        self._thumbs = {}
        self._blend_src = None
        if opts.color == "blend":
            img = target if target is not None else load_blend_target(saved)
            g = saved.meta.grid
            grid = Grid(g.cols, g.rows, tuple(g.crop))
            q = int(max(1, min(64, (BLEND_MAX_BYTES / (3 * grid.cells)) ** 0.5)))
            self._blend_q = q
            self._blend_src = resample_cells(img, grid, q).reshape(grid.rows, q, grid.cols, q, 3).swapaxes(1, 2)

    def _thumb(self, size: int):
        if size not in self._thumbs:
            self._thumbs[size] = self.db.thumbs(size)
        return self._thumbs[size]

    def tiles(self, ids: np.ndarray, t: int) -> np.ndarray:
        """(n, t, t, 3) pixels of tile ids at size t, before colour transfer."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if t <= self.max_thumb:
            s = min(s for s in self.db.thumb_sizes if s >= t)
            uniq, inv = np.unique(ids, return_inverse=True)
            self.db.check_rows(f"thumbs_{s}", uniq)  # never draw a damaged row (black) as a tile
            return box_reduce(np.asarray(self._thumb(s)[uniq]), t)[inv]
        out = np.empty((len(ids), t, t, 3), np.uint8)
        for j, i in enumerate(ids.tolist()):
            out[j] = self.cache.get(i, t)
        return out

    def _blend_cells(self, r0, r1, c0, c1, t) -> np.ndarray:
        src = self._blend_src[r0:r1, c0:c1].reshape(-1, self._blend_q, self._blend_q, 3)
        if self._blend_q == t:
            return src.copy()
        interp = cv2.INTER_AREA if t < self._blend_q else cv2.INTER_LINEAR
        return np.stack([cv2.resize(np.ascontiguousarray(c), (t, t), interpolation=interp) for c in src])

    def cells(self, r0: int, r1: int, c0: int, c1: int, t: int) -> np.ndarray:
        """Cells [r0, r1) x [c0, c1) at t px each: (r1-r0, c1-c0, t, t, 3) uint8, colour applied."""
        ids = self.saved.tile_ids[r0:r1, c0:c1]
        tiles = self.tiles(ids, t)
        if self.opts.color != "none":
            mu = self.saved.target_mean[r0:r1, c0:c1].reshape(-1, 3)
            sd = self.saved.target_std[r0:r1, c0:c1].reshape(-1, 3)
            blend = self._blend_cells(r0, r1, c0, c1, t) if self.opts.color == "blend" else None
            tiles = transfer(tiles, mu, sd, self.opts.color, self.opts.color_strength, blend)
        return tiles.reshape(r1 - r0, c1 - c0, t, t, 3)

    def region(self, r0: int, r1: int, c0: int, c1: int, t: int) -> np.ndarray:
        """The same cells composed into one ((r1-r0)*t, (c1-c0)*t, 3) image."""
        c = self.cells(r0, r1, c0, c1, t)
        nr, nc = c.shape[:2]
        return c.swapaxes(1, 2).reshape(nr * t, nc * t, 3)
