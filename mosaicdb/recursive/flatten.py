"""A recursive mosaic as one ordinary assignment (`mosaic make --recursive`): every cell of
depth d replaced by its tile's grid x grid sub-mosaic, down to `depth`, so the existing writers
(TIFF pyramid, DZI, PNG, all streaming) draw it with cells of the leaf size."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import assignment as asg
from ..errors import UsageError
from ..match.grid import MAX_CELLS
from ..progress import progress_bar
from .options import MAX_STATIC_PX, RecursiveOptions

ARRAYS = ("tile_ids", "cost", "target_mean", "target_std")


def check_static_size(cols: int, rows: int, tile_px: int, opts: RecursiveOptions) -> None:
    """Refuse, before any work, a recursive mosaic too large for one file (or one assignment)."""
    w, h = cols * opts.zoom * tile_px, rows * opts.zoom * tile_px
    if max(w, h) > MAX_STATIC_PX:
        raise UsageError(f"--recursive {opts.depth} with --recursive-grid {opts.grid} makes a {w:,}x{h:,} px mosaic "
                         f"({cols * opts.zoom}x{rows * opts.zoom} cells of {tile_px} px), more than "
                         f"{MAX_STATIC_PX:,} px across: lower --recursive, --recursive-grid, --grid or --tile-px, or "
                         "zoom into it without a file: mosaic serve OUT.mosaic.json --recursive "
                         f"{opts.depth} --recursive-grid {opts.grid}")
    if cols * rows * opts.zoom ** 2 > MAX_CELLS:
        raise UsageError(f"--recursive {opts.depth} makes {cols * rows * opts.zoom ** 2:,} cells, more than the "
                         f"{MAX_CELLS:,} an assignment holds: lower --recursive, --recursive-grid or --grid")


def flatten(subs, saved: asg.SavedAssignment, progress: bool = False) -> asg.SavedAssignment:
    """`saved` with every cell replaced by its tile's sub-mosaic, `subs.opts.depth` times over
    (`subs`: a SubMosaics for this database and options)."""
    g, arrays = subs.opts.grid, {k: getattr(saved, k) for k in ARRAYS}
    n_subs = 0
    for depth in range(subs.opts.depth):
        ids = arrays["tile_ids"]
        rows, cols = ids.shape
        uniq, inv = np.unique(ids, return_inverse=True)
        nodes = []
        with progress_bar(progress, total=len(uniq), desc=f"sub-mosaics, depth {depth + 1}", unit="tile") as bar:
            for t in uniq.tolist():
                nodes.append(subs.node(t).cells.saved)
                bar.update(1)
        n_subs += len(nodes)
        for k in ARRAYS:
            stack = np.stack([getattr(n, k) for n in nodes])[inv.reshape(-1)]   # (rows*cols, g, g, ...)
            tail = stack.shape[3:]
            arrays[k] = stack.reshape(rows, cols, g, g, *tail).swapaxes(1, 2).reshape(rows * g, cols * g, *tail)
    rows, cols = arrays["tile_ids"].shape
    m = saved.meta
    meta = replace(m, grid=asg.GridInfo(cols, rows, m.grid.crop, m.grid.spec), tiles_digest=None,
                   extra={**m.extra, "recursive": {"depth": subs.opts.depth, "grid": g,
                                                   "cells": [m.grid.cols, m.grid.rows], "sub_mosaics": n_subs}})
    return asg.SavedAssignment(meta, **arrays)
