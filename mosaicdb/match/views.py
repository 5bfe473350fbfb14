"""The two views of a mosaic that dithering (dither.py) compares with its target's.

A mosaic is judged by how it reads seen close and seen whole: mosaicdb.evaluate reports the
Gaussian-pyramid MSE of the mosaic brought to the target's size (level 1 is the target at half
size) and PSNR/SSIM with both at 64 px on the short side. Dithering lowers those same errors,
computed on a canvas of `p` px per cell (the tiles' and the cells' feature levels at p x p, in
sRGB), through two linear maps of the canvas, each separable (a matrix per axis):

- ``close``: the canvas resampled to the target's size, then pyramid levels down to the first
  one below full size where a cell spans at most 16 px (level 1 on a photograph of up to 16 px a
  cell), as `evaluate.gaussian_pyramid` makes them;
- ``whole``: the canvas area-resampled to 64 px on the short side (`evaluate.resize_short`).

The maps are built by passing an identity through the same OpenCV calls (row by row, so one
axis at a time), so they are those calls' own weights, borders included.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..evaluate import _resize, pyr_down, short_side_size

WHOLE_SHORT = 64        # px on the short side of the "whole" view (PSNR/SSIM@64)
CLOSE_MAX_CELL = 16.0   # the close view's first level with a cell at most this many px
MAX_VIEW_PIXELS = 1 << 22  # and a view (a canvas) of at most this many pixels: 100 MB of float64 RGB
_BATCH = 512            # identity rows per OpenCV call


@dataclass(frozen=True)
class View:
    """One view: out = Ay @ canvas @ Ax.T (per channel), kept as bands: cell row r's pixels reach
    output rows wy[r, 0]:wy[r, 1], with weights by[r, :h, :] (h = the window's height; the rest is
    zero), and the same for columns. `steps_y`/`steps_x`: the OpenCV calls the bands were made
    from, to apply the view to a whole canvas."""
    name: str
    shape: tuple      # (H, W) of the view
    by: np.ndarray    # (rows, max h, p) float32
    bx: np.ndarray    # (cols, max w, p) float32
    wy: np.ndarray    # (rows, 2) int64
    wx: np.ndarray    # (cols, 2) int64
    steps_y: tuple = ()
    steps_x: tuple = ()

    @property
    def size(self) -> int:
        """Numbers in the view (H * W * 3): its MSE is the sum of squares over this."""
        return self.shape[0] * self.shape[1] * 3

    def apply(self, canvas: np.ndarray) -> np.ndarray:
        """The view of a (rows * p, cols * p, 3) canvas, (H, W, 3) float64."""
        c = np.asarray(canvas, np.float64)
        out = np.empty((*self.shape, 3))
        for ch in range(3):  # each axis as the rows of a 2-D array: the bands' own calls
            x = np.ascontiguousarray(c[..., ch], np.float32)
            for step in self.steps_x:
                x = step(x)
            x = np.ascontiguousarray(x.T)
            for step in self.steps_y:
                x = step(x)
            out[..., ch] = x.T
        return out

    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """The dense (H, rows * p) and (W, cols * p) matrices of the bands (for tests)."""
        return _dense(self.by, self.wy, self.shape[0]), _dense(self.bx, self.wx, self.shape[1])


def _dense(b: np.ndarray, w: np.ndarray, n_out: int) -> np.ndarray:
    n, _, p = b.shape
    a = np.zeros((n_out, n * p), np.float32)
    for i in range(n):
        a[w[i, 0]:w[i, 1], i * p:(i + 1) * p] = b[i, :w[i, 1] - w[i, 0]]
    return a


def _resize_axis(x: np.ndarray, n: int) -> np.ndarray:
    """Each row of x (batch, m) resampled to n samples as evaluate resamples (its height kept, so
    area-averaging exactly when the row shrinks)."""
    return _resize(x, x.shape[0], n)


def _pyr_down_axis(x: np.ndarray) -> np.ndarray:
    """One level of evaluate.gaussian_pyramid along the rows of x (batch, m)."""
    return pyr_down(x, rows_too=False)


def _bands(n_cells: int, p: int, steps) -> tuple[np.ndarray, np.ndarray, int]:
    """(bands (n_cells, max width, p), windows (n_cells, 2), outputs) of a chain of 1-D linear
    steps on n_cells * p samples, from an identity's rows, a few cells at a time."""
    n_in = n_cells * p
    per = max(1, _BATCH // p)
    wins = np.zeros((n_cells, 2), np.int64)
    parts = []
    n_out = 0
    for c0 in range(0, n_cells, per):
        c1 = min(n_cells, c0 + per)
        x = np.zeros(((c1 - c0) * p, n_in), np.float32)
        x[np.arange(x.shape[0]), c0 * p + np.arange(x.shape[0])] = 1.0
        for step in steps:
            x = step(x)
        n_out = x.shape[1]
        for c in range(c0, c1):
            rows = x[(c - c0) * p:(c - c0 + 1) * p]   # (p, n_out): each input sample's weights
            nz = np.flatnonzero(np.any(rows != 0, axis=0))
            lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
            wins[c] = lo, hi
            parts.append(np.ascontiguousarray(rows[:, lo:hi].T))
    width = max(1, max(q.shape[0] for q in parts))
    bands = np.zeros((n_cells, width, p), np.float32)
    for c, q in enumerate(parts):
        bands[c, :q.shape[0]] = q
    return bands, wins, n_out


def close_level(crop_w: int, cols: int, cells: int = 0) -> int:
    """The pyramid level of the close view: 1, or the first below it with a cell at most
    CLOSE_MAX_CELL px wide and the view at most MAX_VIEW_PIXELS (for `cells` cells)."""
    level = 1
    while (crop_w / cols / 2 ** level > CLOSE_MAX_CELL
           or cells * (crop_w / cols / 2 ** level) ** 2 > MAX_VIEW_PIXELS and crop_w / cols / 2 ** level > 1):
        level += 1
    return level


@functools.lru_cache(maxsize=8)
def views(rows: int, cols: int, p: int, crop_h: int, crop_w: int) -> tuple[View, View]:
    """The close and whole views of a rows x cols mosaic of a crop_w x crop_h target, on a canvas
    of p px per cell (kept for the last few grids: a batch's targets often share one)."""
    level = close_level(crop_w, cols, rows * cols)

    def close(full):
        return (lambda x: _resize_axis(x, full),) + (_pyr_down_axis,) * level

    wh, ww = short_side_size(crop_h, crop_w, WHOLE_SHORT)
    out = []
    for name, sy, sx in (("close", close(crop_h), close(crop_w)),
                         ("whole", (lambda x: _resize_axis(x, wh),), (lambda x: _resize_axis(x, ww),))):
        by, wy, h = _bands(rows, p, sy)
        bx, wx, w = _bands(cols, p, sx)
        out.append(View(name, (h, w), by, bx, wy, wx, sy, sx))
    return out[0], out[1]


def canvas(px: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows * cols, p, p, 3) per-cell pixels -> the (rows * p, cols * p, 3) canvas."""
    p = px.shape[1]
    return np.ascontiguousarray(np.asarray(px).reshape(rows, cols, p, p, 3).transpose(0, 2, 1, 3, 4)
                                .reshape(rows * p, cols * p, 3))


def canvas_px(rows: int, cols: int, crop_w: int) -> int:
    """Canvas px per cell: the close view's cell size rounded up to 2, 4 or 8 (what a tile's
    features hold at most), and no more than keeps the canvas within MAX_VIEW_PIXELS."""
    cell = crop_w / cols / 2 ** close_level(crop_w, cols, rows * cols)
    for p in (2, 4):
        if cell <= p or rows * cols * (2 * p) ** 2 > MAX_VIEW_PIXELS:
            return p
    return 8
