"""render/region.py: any box of a mosaic at any cell size, from the cells it covers only, equals
the same box cut from the whole mosaic drawn and area-averaged (exact references)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mosaicdb.render.region import Node, axis_average, leaf_pixels, spans


class FakeCells:
    """A CellRenderer stand-in: cell (r, c) at t px is a seeded random block (so a wrong cell,
    offset or scale shows)."""

    def __init__(self, rows, cols, seed=0):
        self.saved = type("S", (), {"rows": rows, "cols": cols, "tile_ids": np.arange(rows * cols).reshape(rows, cols)})()
        self.base = np.random.default_rng(seed).integers(0, 256, (rows, cols, 3)).astype(np.uint8)
        self.calls = []

    def region(self, r0, r1, c0, c1, t):
        self.calls.append((r1 - r0) * (c1 - c0) * t * t)
        return np.repeat(np.repeat(self.base[r0:r1, c0:c1], t, 0), t, 1)


def exact(full: np.ndarray, k: int) -> np.ndarray:
    """Mean of k x k blocks of `full`, the last row/column of blocks partial."""
    h, w = -(-full.shape[0] // k), -(-full.shape[1] // k)
    pad = np.full((h * k, w * k, 3), np.nan)
    pad[:full.shape[0], :full.shape[1]] = full
    return np.rint(np.nanmean(pad.reshape(h, k, w, k, 3), axis=(1, 3))).astype(np.uint8)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), shift=st.integers(0, 5), data=st.data())
def test_cells_below_a_pixel_average_exactly(rows, cols, shift, data):
    k = 2 ** shift                            # c = 1/k px per cell
    node = Node(FakeCells(rows, cols))
    ref = exact(node.cells.base, k)
    h, w = ref.shape[:2]
    x0 = data.draw(st.integers(0, w - 1))
    y0 = data.draw(st.integers(0, h - 1))
    x1, y1 = data.draw(st.integers(x0 + 1, w)), data.draw(st.integers(y0 + 1, h))
    out = leaf_pixels(node, (x0, y0, x1, y1), Fraction(1, k))
    assert np.abs(out.astype(int) - ref[y0:y1, x0:x1]).max() <= 1
    ones = node.cells.region(0, rows, 0, cols, 1)
    assert np.array_equal(leaf_pixels(node, (x0, y0, x1, y1), Fraction(1, k), ones), out)


@pytest.mark.parametrize("t", [1, 2, 3, 8])
def test_whole_pixel_cells_are_cut_from_the_cells_they_cover(t):
    cells = FakeCells(7, 9, seed=t)
    node = Node(cells)
    full = cells.region(0, 7, 0, 9, t)
    cells.calls.clear()
    for box in [(0, 0, 5, 5), (t + 1, t - 1, 3 * t + 2, 5 * t), (9 * t - 3, 7 * t - 2, 9 * t, 7 * t)]:
        x0, y0, x1, y1 = box
        assert np.array_equal(leaf_pixels(node, box, Fraction(t)), full[y0:y1, x0:x1])
    assert max(cells.calls) <= (5 + 2 * t) ** 2 * 4   # only the covered cells were drawn


def test_fractional_cells_above_a_pixel_are_area_averages():
    """c = 3/2: cells drawn at 2 px, each output pixel the overlap-weighted mean."""
    a = np.arange(4 * 3, dtype=float).reshape(4, 1, 3).repeat(1, 1)
    lo, hi = spans(0, 3, Fraction(3, 2), 0, 2, 4)    # 2 cells at 2 px -> 3 output pixels
    assert np.allclose(lo, [0, 4 / 3, 8 / 3]) and np.allclose(hi, [4 / 3, 8 / 3, 4])
    out = axis_average(a, lo, hi, axis=0)
    assert np.allclose(out[1, 0], (a[1, 0] * (2 - 4 / 3) + a[2, 0] * (8 / 3 - 2)) / (4 / 3))
