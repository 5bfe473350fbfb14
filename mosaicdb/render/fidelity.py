"""How faithful an assignment is, as rendered: it is drawn small (at most 16 px a cell and 64 MP
in all) through the one render path, with its colour transfer, and scored by `evaluate`."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..evaluate import evaluate
from .options import RenderOptions
from .rows import render_array

EVAL_MAX_PIXELS = 64_000_000


def eval_px(cells: int, tile_px: int) -> int:
    """Pixels per cell for the evaluation render: <= 16 and <= 64 MP in all."""
    return int(max(1, min(16, tile_px, int((EVAL_MAX_PIXELS / max(cells, 1)) ** 0.5))))


def metrics_for(db, saved, target_img: np.ndarray, render: RenderOptions) -> dict:
    """Fidelity and repeat metrics of an assignment as rendered with `render`'s colour settings."""
    px = eval_px(saved.rows * saved.cols, render.px)
    mosaic = render_array(db, saved, replace(render, tile_px=px), target_img)
    l, t, r, b = saved.meta.grid.crop
    m = evaluate(target_img[t:b, l:r], mosaic, saved.rows, saved.cols, saved.tile_ids)
    m["eval_px_per_cell"] = px
    m["mean_cell_distance"] = float(saved.cost.mean())
    return m
