"""Render an assignment one row of cells at a time, so memory never holds the canvas."""
from __future__ import annotations

import numpy as np

from .cells import CellRenderer


def iter_rows(db, saved, px: int, color: str = "none", strength: float = 0.5, target: np.ndarray | None = None):
    """Yield (px, cols*px, 3) uint8 bands, one per row of cells, top to bottom."""
    cr = CellRenderer(db, saved, color, strength, target)
    for r in range(saved.rows):
        yield cr.region(r, r + 1, 0, saved.cols, px)


def render_array(db, saved, px: int, color: str = "none", strength: float = 0.5, target=None) -> np.ndarray:
    """The whole mosaic in memory at px per cell: only for small renders (evaluation, tests)."""
    cr = CellRenderer(db, saved, color, strength, target)
    return cr.region(0, saved.rows, 0, saved.cols, px)
