"""Render an assignment one row of cells at a time, so memory never holds the canvas."""
from __future__ import annotations

import numpy as np

from .cells import CellRenderer
from .options import RenderOptions


def iter_rows(db, saved, opts: RenderOptions, target: np.ndarray | None = None):
    """Yield (px, cols*px, 3) uint8 bands, one per row of cells, top to bottom (px = opts.px)."""
    cr = CellRenderer(db, saved, opts, target)
    for r in range(saved.rows):
        yield cr.region(r, r + 1, 0, saved.cols, opts.px)


def render_array(db, saved, opts: RenderOptions, target=None) -> np.ndarray:
    """The whole mosaic in memory at opts.px per cell: only for small renders (evaluation, tests)."""
    return CellRenderer(db, saved, opts, target).region(0, saved.rows, 0, saved.cols, opts.px)
