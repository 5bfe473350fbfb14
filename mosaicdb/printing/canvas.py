"""The print canvas (trim + bleed) rendered in horizontal bands from `CellRenderer`.

A band is whole rows of cells when they fit its byte budget, so each cell is drawn once;
otherwise a slice of one cell row (its cells are then drawn once per slice: `plan` says so).
A band of whole cell rows is painted in one piece and handed on as a view (its strips are
encoded straight from it); a slice of a cell row is drawn a bounded number of columns at a time.
Either way the working set depends on the budgets, never on the print's size."""
from __future__ import annotations

import numpy as np

from ..render.cells import CellRenderer, PixelCache
from ..render.spill import SpillFile
from ..render.options import RenderOptions
from .geometry import Geometry

CHUNK_BYTES = 8 << 20   # cells drawn per step inside a band


def band_edges(g: Geometry, band_bytes: int, width: int | None = None) -> list[tuple[int, int]]:
    """[y0, y1) canvas row ranges, top to bottom, for bands `width` px wide (default: the
    canvas): groups of whole cell rows when one fits in band_bytes, else slices of each."""
    t, off, H = g.cell_px, g.offset, g.height
    per_cell_row = t * (width or g.width) * 3
    first, last = off // t, -(-(off + H) // t)   # extended cell rows the canvas touches
    if per_cell_row <= band_bytes:
        m = band_bytes // per_cell_row
        cuts = [R * t for R in range(first, last + m, m)]
    else:
        sub = -(-t // -(-per_cell_row // band_bytes))
        cuts = [R * t + j for R in range(first, last + 1) for j in range(0, t, sub)]
    inner = sorted({min(max(c - off, 0), H) for c in cuts} | {0, H})
    return list(zip(inner[:-1], inner[1:]))


def stripes(g: Geometry, layout, band_bytes: int) -> list[tuple[int, int, list[int]]]:
    """(x0, x1, panel indices) of each pass over the canvas: one pass feeding every panel when a
    full-width cell row fits the band budget, else one pass per column of panels, so wide prints
    in panels never need a full-width row of cells in memory."""
    everything = [(0, g.width, list(range(len(layout.panels))))]
    if layout.cols == 1 or g.cell_px * g.width * 3 <= band_bytes:
        return everything
    out = []
    for c in range(1, layout.cols + 1):
        idx = [i for i, p in enumerate(layout.panels) if p.col == c]
        out.append((layout.panels[idx[0]].x0, layout.panels[idx[0]].x1, idx))
    return out


def redraws(g: Geometry, band_bytes: int, width: int | None = None) -> int:
    """How many times each cell is drawn with this band budget (1 when a cell row fits)."""
    t, per_cell_row = g.cell_px, g.cell_px * (width or g.width) * 3
    if per_cell_row <= band_bytes:
        return 1
    return -(-t // -(-t // -(-per_cell_row // band_bytes)))


class PrintCanvas:
    def __init__(self, db, saved, g: Geometry, opts: RenderOptions, *, target=None, convert=None):
        self.g = g
        big = (g.cell_px,) if g.cell_px > max(db.thumb_sizes) else ()
        self.cells = CellRenderer(db, saved, opts, target, PixelCache(db, big, opts.cache_bytes, SpillFile()))
        self.rmap, self.cmap = g.row_map(), g.col_map()
        self.convert = convert

    def cell_block(self, R0: int, R1: int, C0: int, C1: int) -> np.ndarray:
        """Extended-grid cells [R0, R1) x [C0, C1) composed into one image."""
        return self.cells.paint(self.rmap[R0:R1], self.cmap[C0:C1], self.g.cell_px)

    def _cells(self, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int]:
        """Extended-grid cell rows [R0, R1) and columns [C0, C1) under canvas [y0, y1) x [x0, x1)."""
        t, off = self.g.cell_px, self.g.offset
        return (y0 + off) // t, -(-(y1 + off) // t), (x0 + off) // t, -(-(x1 + off) // t)

    def band(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """Canvas pixels [y0, y1) x [x0, x1): (y1 - y0, x1 - x0, 3) uint8 (a view when the band
        is whole cell rows), in the output profile."""
        x1 = self.g.width if x1 is None else x1
        R0, R1, C0, C1 = self._cells(y0, y1, x0, x1)
        # a band of whole cell rows has at most twice its pixels in whole cells (more only when it
        # is a slice of a cell row, or cut by the bleed): it is painted in one piece and returned
        # as a view, and its strips are encoded straight from it; else a bounded number of cell
        # columns at a time, copied into the band
        whole = (R1 - R0) * (C1 - C0) * self.g.cell_px ** 2 <= 2 * (y1 - y0) * (x1 - x0)
        out = (self.band_in_one_piece if whole else self.band_in_chunks)(y0, y1, x0, x1)
        return self.convert(out) if self.convert else out

    def band_in_one_piece(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Canvas pixels [y0, y1) x [x0, x1) as a view of all the cells under them, painted at once."""
        t, off = self.g.cell_px, self.g.offset
        R0, R1, C0, C1 = self._cells(y0, y1, x0, x1)
        block = self.cell_block(R0, R1, C0, C1)
        return block[y0 + off - R0 * t:y1 + off - R0 * t, x0 + off - C0 * t:x1 + off - C0 * t]

    def band_in_chunks(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Canvas pixels [y0, y1) x [x0, x1), painted CHUNK_BYTES of cells at a time."""
        t, off = self.g.cell_px, self.g.offset
        R0, R1, Cs, Ce = self._cells(y0, y1, x0, x1)
        Y0, Y1, X0, X1 = y0 + off, y1 + off, x0 + off, x1 + off
        step = max(1, CHUNK_BYTES // ((R1 - R0) * t * t * 3))
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for C0 in range(Cs, Ce, step):
            C1 = min(Ce, C0 + step)
            img = self.cell_block(R0, R1, C0, C1)
            xa, xb = max(X0, C0 * t), min(X1, C1 * t)
            out[:, xa - X0:xb - X0] = img[Y0 - R0 * t:Y1 - R0 * t, xa - C0 * t:xb - C0 * t]
        return out
