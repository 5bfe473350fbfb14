"""Any pixel box of a mosaic drawn at any cell size, from the cells it covers only.

A DeepZoom tile on demand, at any level: the cells under the box are drawn by `CellRenderer` at
a whole number of pixels (the cell size rounded up; 1 px is a tile's mean colour), and when the
cell size is not whole they are area-averaged onto the box's pixel grid with exact overlap
weights (cumulative sums per axis), so no level is ever drawn whole. A cell larger than the
leaf size can be drawn as another mosaic (`children`): the recursive mosaics of `mosaic serve
--recursive`, where every tile's area is a mosaic of that tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from .cells import CellRenderer


@dataclass(frozen=True)
class Node:
    """One mosaic to draw: its cells' renderer (which holds the assignment)."""
    cells: CellRenderer

    @property
    def rows(self) -> int:
        return self.cells.saved.rows

    @property
    def cols(self) -> int:
        return self.cells.saved.cols

    def tile_id(self, row: int, col: int) -> int:
        return int(self.cells.saved.tile_ids[row, col])


Children = Callable[[Node, int, int], Node]   # (node, row, col) -> the mosaic drawn in that cell


def covered(p0: int, p1: int, c: Fraction, n: int) -> tuple[int, int]:
    """Cells [k0, k1) of n, at c px each, that pixels [p0, p1) touch."""
    return min(n, math.floor(p0 / c)), min(n, math.ceil(p1 / c))


def spans(p0: int, p1: int, c: Fraction, k0: int, t: int, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    """Where output pixels p0..p1 (cells of c px) fall in a row of cells drawn at t px starting
    with cell k0: (lo, hi) in source pixels, clipped to the n_src that exist (an edge pixel of
    a level may reach past the image: it averages the part inside)."""
    p = np.arange(p0, p1 + 1, dtype=np.float64)
    edges = (p / float(c) - k0) * t
    edges = np.clip(edges, 0.0, float(n_src))
    return edges[:-1], edges[1:]


def axis_average(a: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int) -> np.ndarray:
    """Exact area averages of `a` along `axis` over source intervals [lo, hi) (fractional), from
    its cumulative sum: a pixel cut by an interval's end counts by the part inside."""
    a = np.moveaxis(a, axis, 0).astype(np.float64)
    n = a.shape[0]
    cs = np.concatenate([np.zeros((1,) + a.shape[1:]), np.cumsum(a, axis=0)])

    def integral(x):
        i = np.minimum(np.floor(x).astype(np.int64), n - 1)
        frac = (x - i).reshape((-1,) + (1,) * (a.ndim - 1))
        return cs[i] + frac * a[i]

    width = np.maximum(hi - lo, 1e-9).reshape((-1,) + (1,) * (a.ndim - 1))
    return np.moveaxis((integral(hi) - integral(lo)) / width, 0, axis)


def leaf_pixels(node: Node, box: tuple[int, int, int, int], c: Fraction, ones: np.ndarray | None = None) -> np.ndarray:
    """Pixels [y0, y1) x [x0, x1) of `node` drawn with cells of c px (c may be a fraction).
    `ones`: the whole node drawn at 1 px per cell, to take cells smaller than a pixel from."""
    x0, y0, x1, y1 = box
    t = max(1, math.ceil(c))
    r0, r1 = covered(y0, y1, c, node.rows)
    c0, c1 = covered(x0, x1, c, node.cols)
    reg = ones[r0:r1, c0:c1] if ones is not None and t == 1 else node.cells.region(r0, r1, c0, c1, t)
    if t == c:
        return reg[y0 - r0 * t:y1 - r0 * t, x0 - c0 * t:x1 - c0 * t]
    out = axis_average(reg, *spans(y0, y1, c, r0, t, reg.shape[0]), axis=0)
    out = axis_average(out, *spans(x0, x1, c, c0, t, reg.shape[1]), axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw(node: Node, box: tuple[int, int, int, int], c: Fraction, leaf_px: int,
         children: Children | None = None, grid: int = 1, ones: np.ndarray | None = None) -> np.ndarray:
    """Pixels of `box` of `node` at c px per cell. With `children`, a cell larger than `leaf_px`
    is drawn as its child mosaic (grid x grid cells, of c / grid px each), recursively. `ones`:
    `node` at 1 px per cell (see leaf_pixels)."""
    if children is None or c <= leaf_px:
        return leaf_pixels(node, box, c, ones)
    x0, y0, x1, y1 = box
    c = int(c)   # above the leaf size cells are whole pixels (leaf_px * 2^i)
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    r0, r1 = covered(y0, y1, c, node.rows)
    k0, k1 = covered(x0, x1, c, node.cols)
    for r in range(r0, r1):
        for k in range(k0, k1):
            cx0, cy0 = k * c, r * c
            sub = (max(x0, cx0) - cx0, max(y0, cy0) - cy0, min(x1, cx0 + c) - cx0, min(y1, cy0 + c) - cy0)
            pix = draw(children(node, r, k), sub, Fraction(c, grid), leaf_px, children, grid)
            out[cy0 + sub[1] - y0:cy0 + sub[3] - y0, cx0 + sub[0] - x0:cx0 + sub[2] - x0] = pix
    return out
