"""DeepZoom tiles rendered on request from a saved assignment and its tile database: a mosaic
can be looked at without writing its pyramid first, and, with --recursive, below its own
deepest level every tile's area turns into a mosaic of that tile (`mosaicdb.recursive`).

Geometry: the mosaic is cols x rows cells of T px; with recursion depth D and sub-mosaics of
g cells across, the served image is g^D times wider, so its DZI levels up to the mosaic's own
top level are exactly the mosaic's levels (served from a stored pyramid when one was given)
and each further level doubles the cells until they are drawn as sub-mosaics. A level tile is
drawn from the cells it covers only (`render.region.draw`), never from a whole level.

Encoded tiles are kept in an LRU bounded in bytes or in tiles (`--cache`), one rendering per
tile even under concurrent requests; where a level tile is exactly one whole cell and no
colour transfer applies, it is cached by tile id (a 65536^2 mosaic of 2,000 tiles has 2,000
distinct full-size level tiles, not 65,536). Renders run at most RENDER_SLOTS at a time.
"""
from __future__ import annotations

import re
import threading
from fractions import Fraction

from ..errors import UsageError
from ..render.cells import OnceLRU
from ..render.layout import TILE, dzi_levels
from ..render.region import Node, draw
from ..units import parse_bytes
from .tilesource import TileSource, encode_jpeg

DEFAULT_CACHE = "256M"
RENDER_SLOTS = 4          # level tiles drawn at once: each holds at most a few MB of pixels


def parse_cache(text) -> tuple[int, bool]:
    """--cache as (budget, counted in tiles?): '256M', '1G' (bytes) or '5000t' / '5000 tiles'.

    >>> parse_cache("256M"), parse_cache("5000 tiles"), parse_cache("64t")
    ((268435456, False), (5000, True), (64, True))
    """
    m = re.fullmatch(r"\s*(\d+)\s*(t|tiles?)\s*", str(text).lower())
    if m:
        return int(m.group(1)), True
    try:
        return parse_bytes(text, "--cache"), False
    except UsageError:
        raise UsageError(f"--cache: {text!r} is not a size; use bytes (e.g. 256M, 1G) or tiles (e.g. 5000t)") from None


class RenderedSource(TileSource):
    """DZI tiles of `node` (a mosaic of T px cells) drawn on demand; `subs` (a SubMosaics) adds
    `subs.opts.depth` levels of recursion below; `stored` serves the mosaic's own levels."""
    kind = "rendered"

    def __init__(self, path, node: Node, tile_px: int, *, cache: str = DEFAULT_CACHE, subs=None,
                 stored: TileSource | None = None):
        self.node, self.T, self.subs, self.stored = node, int(tile_px), subs, stored
        self.grid = subs.opts.grid if subs is not None else 1
        self.zoom = subs.opts.zoom if subs is not None else 1
        self.base_w, self.base_h = node.cols * self.T, node.rows * self.T
        super().__init__(path, self.base_w * self.zoom, self.base_h * self.zoom)
        self.base_top = dzi_levels(self.base_w, self.base_h)
        budget, in_tiles = parse_cache(cache)
        self.cache = OnceLRU(budget, (lambda b: 1) if in_tiles else len)
        self._slots = threading.BoundedSemaphore(RENDER_SLOTS)
        self.reuse = node.cells.opts.color == "none"
        self._ones = None               # the mosaic at 1 px per cell (cols x rows px), made once
        self._ones_lock = threading.Lock()

    def ones(self):
        """The mosaic at 1 px per cell: every level with cells below a pixel is averaged from it
        (at most 2048 x 2048 px for the largest grid), so those levels never touch the tiles again."""
        with self._ones_lock:
            if self._ones is None:
                self._ones = self.node.cells.region(0, self.node.rows, 0, self.node.cols, 1)
            return self._ones

    def cell_px(self, level: int) -> Fraction:
        """Pixels of one of the mosaic's own cells at DZI level `level` (a fraction on coarse levels)."""
        return Fraction(self.T * self.zoom, 2 ** (self.max_level - level))

    def _tile(self, level, col, row):
        if self.stored is not None and level <= self.base_top:
            return self.stored.tile(level, col, row)   # the same geometry: levels 0..base_top
        c = self.cell_px(level)
        x0, y0, x1, y1 = self.tile_box(level, col, row)
        if self.reuse and c == TILE and c <= self.T:   # one whole cell: the same bytes wherever that tile is
            r, c0 = y0 // TILE, x0 // TILE
            key = ("tile", self.node.tile_id(r, c0), self.node.cells.turn(r, c0))   # a turned tile: other bytes
            return self.cache.get_or_make(key, lambda: self._render(level, col, row))
        return self.cache.get_or_make((level, col, row), lambda: self._render(level, col, row))

    def _render(self, level: int, col: int, row: int) -> bytes:
        children = self.subs.child if self.subs is not None else None
        c = self.cell_px(level)
        ones = self.ones() if c < 1 else None
        with self._slots:
            pix = draw(self.node, self.tile_box(level, col, row), c, self.T, children, self.grid, ones)
            return encode_jpeg(pix)

    def depth_at(self, level: int) -> int:
        """How many times the mosaic's cells are subdivided on this level (0 up to its own top)."""
        c, d = self.cell_px(level), 0
        while c > self.T and d < (self.subs.opts.depth if self.subs else 0):
            c, d = c / self.grid, d + 1
        return d

    def close(self) -> None:
        if self.subs is not None:  # its matches read the database the caller closes next
            self.subs.close()
        if self.stored is not None:
            self.stored.close()
