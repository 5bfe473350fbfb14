"""The print canvas (trim + bleed) rendered in horizontal bands from `CellRenderer`.

A band is whole rows of cells when they fit its byte budget, so each cell is drawn once;
otherwise a slice of one cell row (its cells are then drawn once per slice: `plan` says so).
Within a band, cells are drawn a bounded number of columns at a time, so the working set
depends on the budgets, never on the print's size."""
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

    def band(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """Canvas pixels [y0, y1) x [x0, x1): (y1 - y0, x1 - x0, 3) uint8 (a view when the band
        is whole cell rows), in the output profile."""
        g, t = self.g, self.g.cell_px
        off = g.offset
        x1 = g.width if x1 is None else x1
        Y0, Y1 = y0 + off, y1 + off
        R0, R1 = Y0 // t, -(-Y1 // t)
        X0, X1 = x0 + off, x1 + off
        Cs, Ce = X0 // t, -(-X1 // t)
        if (R1 - R0) * (Ce - Cs) * t * t <= 2 * (y1 - y0) * (x1 - x0):
            # the band's whole cells are not much more than the band (always, but at the canvas'
            # edges, when bands are whole cell rows): painted in one piece and returned as a view
            # instead of painted in chunks and copied; its strips are encoded straight from it
            block = self.cells.paint(self.rmap[R0:R1], self.cmap[Cs:Ce], t)
            out = block[Y0 - R0 * t:Y1 - R0 * t, X0 - Cs * t:X1 - Cs * t]
            return self.convert(out) if self.convert else out
        step = max(1, CHUNK_BYTES // ((R1 - R0) * t * t * 3))
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for C0 in range(Cs, Ce, step):
            C1 = min(Ce, C0 + step)
            img = self.cell_block(R0, R1, C0, C1)
            xa, xb = max(X0, C0 * t), min(X1, C1 * t)
            out[:, xa - X0:xb - X0] = img[Y0 - R0 * t:Y1 - R0 * t, xa - C0 * t:xb - C0 * t]
        return self.convert(out) if self.convert else out
