"""Pixels of any rectangle of cells at any cell size, with colour transfer: the one place
that turns an assignment into pixels. Row bands, pyramid levels, DZI tiles and prints all come
from `CellRenderer.paint`, so every output agrees with every other at the same cell size.

Memory does not depend on how many cells are drawn: a request is painted a slice of cell rows
at a time (about CHUNK_BYTES), tiles are laid out first and recoloured in place
(`color.recolor_grid`), and nothing is kept per cell. What is kept is per *tile*, bounded:
tiles resized from their originals (`PixelCache`: a small --cache LRU in memory, the rest in
an unlinked spill file on disk) and each tile's colour statistics at each size drawn
(`StatsCache`)."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from ..color import affine_params, blend_grid, cell_grid_view, recolor_grid, strength_value, tile_stats
from ..errors import RenderError
from ..io import read_input
from ..match.grid import MAX_TARGET_BYTES, Grid, load_target, resample_cells
from ..orient import orient_each, orient_pixels
from ..store.decode import square_resize
from .options import RenderOptions
from .spill import SpillFile
from .tiles import box_reduce

BLEND_MAX_BYTES = 64 << 20  # the target resampled for blending stays below this
CHUNK_BYTES = 4 << 20       # painted per step (a slice of cell rows), whatever the request
CELL_OVERHEAD = 256         # bytes of bookkeeping per cell in a step: ids, statistics, parameters
STATS_ENTRIES = 1 << 15     # (tile, size) colour statistics kept: ~10 MB at most


def check_tiles_present(db, tile_ids: np.ndarray) -> None:
    gone = db.missing(tile_ids)
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

    @property
    def nbytes(self) -> int:
        """Bytes held now (by `sizeof`)."""
        return self._bytes

    def _evict(self) -> None:
        while self._bytes > self.budget and len(self._lru) > 1:
            _, old = self._lru.popitem(last=False)
            self._bytes -= self.sizeof(old)

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
                self._evict()
            return value
        finally:
            with self._lock:
                del self._inflight[key]
            ev.set()

    def offer(self, key, value) -> None:
        """Keep `value` under `key` if nothing is there yet (a by-product of making another key)."""
        with self._lock:
            if key in self._lru or key in self._inflight:
                return
            self._lru[key] = value
            self._bytes += self.sizeof(value)
            self._evict()


class PixelCache:
    """Tile pixels for sizes above the largest thumbnail. An original is decoded once and every size
    the render needs is made from that decode (each straight from the original, so a tile looks
    the same whichever level asked first). The resized tiles are kept in a small byte-bounded LRU
    (`budget`, --cache) in front of a `SpillFile` on disk, so memory does not grow with the cell
    size and an original is decoded again only when the spill file is full or unusable."""

    def __init__(self, db, sizes: tuple[int, ...], budget: int = 16 << 20, spill: SpillFile | None = None):
        self.db = db
        self.sizes = tuple(sorted(set(sizes), reverse=True))
        self._lru = OnceLRU(budget, lambda a: a.nbytes)
        self.spill = spill if spill is not None else SpillFile(0)
        self._count = threading.Lock()
        self.decodes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held in memory now."""
        return self._lru.nbytes

    def get(self, tile_id: int, size: int) -> np.ndarray:
        def make():
            kept = self.spill.get((tile_id, size))
            if kept is not None:
                return kept
            img = self.db.load_original(tile_id)
            with self._count:
                self.decodes += 1
            made = {s: np.asarray(square_resize(img, s)) for s in (self.sizes if size in self.sizes else (size,))}
            for s, a in made.items():
                self.spill.put((tile_id, s), a)
                if s != size:
                    self._lru.offer((tile_id, s), a)
            return made[size]

        return self._lru.get_or_make((tile_id, size), make)

    def close(self) -> None:
        """Drop the spill file (it is unlinked already: this only frees the disk sooner)."""
        self.spill.close()


class StatsCache:
    """Each tile's per-channel mean and std at each size it is drawn, keyed (tile id, size), in an
    LRU bounded by entries. A mean shift needs them for every placed tile, and for a big tile they
    cost more than the shift itself; they are computed from the very pixels drawn (`tile_stats`),
    so a cached value is exactly what a fresh one would be."""

    def __init__(self, max_entries: int = STATS_ENTRIES):
        self.max_entries = max_entries
        self._lru: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0

    def get(self, ids: np.ndarray, tiles, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sd), (m, 3) float64 each, of the m distinct tile `ids` whose pixels are `tiles`
        (a sequence of (t, t, 3) arrays)."""
        out = np.empty((len(ids), 6))
        missing = []
        with self._lock:
            for j, i in enumerate(ids.tolist()):
                row = self._lru.get((i, t))
                if row is None:
                    missing.append(j)
                else:
                    self._lru.move_to_end((i, t))
                    out[j] = row
        if missing:
            mu, sd = tile_stats([tiles[j] for j in missing])
            out[missing, :3], out[missing, 3:] = mu, sd
            with self._lock:
                self.computed += len(missing)
                for j in missing:
                    self._lru[(int(ids[j]), t)] = out[j].copy()
                while len(self._lru) > self.max_entries:
                    self._lru.popitem(last=False)
        return out[:, :3], out[:, 3:]


class CellRenderer:
    """Draws any rectangle of an assignment's cells at any cell size, with the colour transfer
    of `opts` (`RenderOptions.color`, `.color_strength`). `target`: the target image, needed by
    --color blend (else read from the path the assignment records). Safe to share between
    threads: its caches are."""

    def __init__(self, db, saved, opts: RenderOptions, target=None, cache: PixelCache | None = None):
        self.db, self.saved, self.opts = db, saved, opts
        self.max_thumb = max(db.thumb_sizes)
        self.cache = cache or PixelCache(db, ())
        self.stats = StatsCache()
        self.strength = strength_value(opts.color_strength)
        self.recolor = opts.color if opts.color != "none" and self.strength > 0 else None
        self._thumbs = {}
        self._blend_src = None
        if self.recolor == "blend":
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

    def _distinct(self, uniq: np.ndarray, t: int):
        """Pixels of the distinct tile ids `uniq` at size t, before colour transfer: thumbnails
        box-reduced when one is big enough, as one (m, t, t, 3) array; else originals from the
        cache, as a list of its (t, t, 3) arrays (big tiles are not copied into a stack)."""
        if t <= self.max_thumb:
            s = min(s for s in self.db.thumb_sizes if s >= t)
            self.db.check_rows(f"thumbs_{s}", uniq)  # never draw a damaged row (black) as a tile
            return box_reduce(np.asarray(self._thumb(s)[uniq]), t)
        return [self.cache.get(i, t) for i in uniq.tolist()]

    def distinct_tiles(self, uniq: np.ndarray, t: int) -> np.ndarray:
        """(m, t, t, 3) pixels of the distinct tile ids `uniq` at size t, before colour transfer."""
        pix = self._distinct(uniq, t)
        return pix if isinstance(pix, np.ndarray) else np.stack(pix) if pix else np.empty((0, t, t, 3), np.uint8)

    def tiles(self, ids: np.ndarray, t: int) -> np.ndarray:
        """(n, t, t, 3) pixels of tile ids at size t, before colour transfer."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        uniq, inv = np.unique(ids, return_inverse=True)
        return self.distinct_tiles(uniq, t)[inv.ravel()]

    def _blend_image(self, rows: np.ndarray, cols: np.ndarray, t: int) -> np.ndarray:
        """The target under cells rows x cols, each cell resampled to t px, laid out like them."""
        q, src = self._blend_q, self._blend_src
        out = np.empty((len(rows) * t, len(cols) * t, 3), np.uint8)
        view = cell_grid_view(out, t)
        if q == t:
            view[...] = src[np.ix_(rows, cols)].swapaxes(1, 2)
            return out
        interp = cv2.INTER_AREA if t < q else cv2.INTER_LINEAR
        for i, r in enumerate(rows.tolist()):      # cell by cell: q may be far above t
            for j, c in enumerate(cols.tolist()):
                view[i, :, j] = cv2.resize(np.ascontiguousarray(src[r, c]), (t, t), interpolation=interp)
        return out

    def _paint_slice(self, rows: np.ndarray, cols: np.ndarray, t: int, img: np.ndarray) -> None:
        """Cells rows x cols at t px into img ((len(rows)*t, len(cols)*t, 3), any row stride: a
        view into the caller's image, written in place)."""
        cells = np.ix_(rows, cols)
        ids = self.saved.tile_ids[cells]
        uniq, inv = np.unique(ids, return_inverse=True)
        inv = inv.reshape(ids.shape)
        pix = self._distinct(uniq, t)
        drawn, at = pix, inv   # cell (r, c) draws drawn[at[r, c]]
        turn = None if self.saved.orient is None else self.saved.orient[cells]
        if turn is not None and turn.any():
            drawn, at = _turned(pix, inv, turn)
        cells_view = cell_grid_view(img, t)
        if isinstance(drawn, np.ndarray):
            cells_view[...] = drawn[at].swapaxes(1, 2)
        else:  # a few big tiles: each copied once, straight from the cache into place
            for (r, c), j in np.ndenumerate(at):
                cells_view[r, :, c] = drawn[j]
        if self.recolor == "blend":
            blend_grid(img, self._blend_image(rows, cols, t), self.strength)
        elif self.recolor is not None:   # a tile's colour statistics do not depend on its turn
            mu_t, sd_t = self.stats.get(uniq, pix, t)
            a, b = affine_params(self.recolor, self.strength, mu_t[inv], sd_t[inv],
                                 self.saved.target_mean[cells], self.saved.target_std[cells])
            recolor_grid(img, t, a, b)

    def cell_tile(self, row: int, col: int, t: int) -> np.ndarray:
        """(t, t, 3) pixels of cell (row, col)'s tile as drawn there (turned), before colour transfer."""
        a = self.tiles(np.array([self.saved.tile_ids[row, col]]), t)[0]
        return np.ascontiguousarray(orient_pixels(a, self.turn(row, col)))

    def turn(self, row: int, col: int) -> int:
        """Cell (row, col)'s orientation code (mosaicdb.orient; 0: as stored)."""
        return 0 if self.saved.orient is None else int(self.saved.orient[row, col])

    def paint(self, rows, cols, t: int, out: np.ndarray | None = None) -> np.ndarray:
        """The cells at rows x cols (index arrays into the assignment's grid, repeats allowed: a
        print's bleed reflects cells) at t px each, composed into one (len(rows)*t, len(cols)*t, 3)
        uint8 image (`out` if given), colour applied. Painted a slice of rows at a time, so the
        working memory beyond `out` is bounded by CHUNK_BYTES, not by the number of cells."""
        rows = np.asarray(rows, dtype=np.intp).ravel()
        cols = np.asarray(cols, dtype=np.intp).ravel()
        shape = (len(rows) * t, len(cols) * t, 3)
        if out is None:
            out = np.empty(shape, np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous uint8 {shape}, got {out.dtype} {out.shape}")
        per_cell = 3 * t * t + CELL_OVERHEAD
        col_step = max(1, min(len(cols), CHUNK_BYTES // per_cell))   # a row wider than the budget is cut
        row_step = max(1, CHUNK_BYTES // (per_cell * col_step))
        for i in range(0, len(rows), row_step):
            for j in range(0, len(cols), col_step):
                rs, cs = rows[i:i + row_step], cols[j:j + col_step]
                self._paint_slice(rs, cs, t, out[i * t:(i + len(rs)) * t, j * t:(j + len(cs)) * t])
        return out

    def region(self, r0: int, r1: int, c0: int, c1: int, t: int) -> np.ndarray:
        """Cells [r0, r1) x [c0, c1) composed into one ((r1-r0)*t, (c1-c0)*t, 3) image."""
        return self.paint(np.arange(r0, r1), np.arange(c0, c1), t)

    def cells(self, r0: int, r1: int, c0: int, c1: int, t: int) -> np.ndarray:
        """Cells [r0, r1) x [c0, c1) at t px each: (r1-r0, c1-c0, t, t, 3) uint8, colour applied."""
        img = self.region(r0, r1, c0, c1, t)
        return np.ascontiguousarray(img.reshape(r1 - r0, t, c1 - c0, t, 3).swapaxes(1, 2))


def _turned(pix, inv: np.ndarray, turn: np.ndarray):
    """The distinct (tile, orientation) pairs of a slice of cells: their pixels (an array, or a
    list of views for big tiles) and each cell's index into them."""
    keys, at = np.unique(inv.astype(np.int64) * 8 + turn, return_inverse=True)
    src, codes = keys // 8, keys % 8
    if isinstance(pix, np.ndarray):
        return orient_each(pix[src], codes), at.reshape(inv.shape)
    return [orient_pixels(pix[i], o) for i, o in zip(src.tolist(), codes.tolist())], at.reshape(inv.shape)
