"""Candidates from the index, then the repeat-controlled assignment of one tile per cell."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..options import DEFAULT_MIN_DISTANCE, MatchOptions
from .assign import Assignment, RepeatOptions, assign
from .grid import CellData, Grid

# Beyond this many candidates per cell, IVF lists run dry: widen with exact search instead.
_IVF_WIDEN_MAX = 1024


@dataclass
class MatchResult:
    assignment: Assignment
    repeat: RepeatOptions
    warnings: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def _max_safe_radius(rows: int, cols: int, n_tiles: int, max_uses: int = 0) -> int:
    """Largest R at which greedy placement can never get stuck: a cell's (2R+1)^2 window blocks
    at most window-1 tiles and --max-uses exhausts at most (cells-1)//N, and one tile must be left."""
    exhausted = (rows * cols - 1) // max_uses if max_uses else 0

    def safe(r):
        return min(rows, 2 * r + 1) * min(cols, 2 * r + 1) - 1 + exhausted < n_tiles

    r = 0
    while r < max(rows, cols) and safe(r + 1):
        r += 1
    return r


def resolve_repeat(opts: MatchOptions, grid: Grid, n_tiles: int) -> tuple[RepeatOptions, list]:
    warnings = []
    r = opts.min_distance
    if r is None:
        r = 0 if opts.unique else DEFAULT_MIN_DISTANCE
        cap = _max_safe_radius(grid.rows, grid.cols, n_tiles, opts.max_uses)
        if r > cap:
            warnings.append(f"the database has only {n_tiles} tiles: --min-distance lowered from {r} to {cap}")
            r = cap
    rep = RepeatOptions(min_distance=r, max_uses=opts.max_uses, usage_penalty=opts.usage_penalty,
                        unique=opts.unique, seed=opts.seed)
    rep.validate(grid.cells, n_tiles, rows=grid.rows, cols=grid.cols)
    return rep, warnings


def match(db, cells: CellData, grid: Grid, opts: MatchOptions) -> MatchResult:
    """Assign a tile of `db` to every cell of `grid`. Costs are RMS Lab distances per dimension."""
    n_tiles = len(db)
    rep, warnings = resolve_repeat(opts, grid, n_tiles)
    t0 = time.perf_counter()
    index = db.ensure_index()
    t1 = time.perf_counter()
    dim = float(db.dim)
    k = min(opts.k, n_tiles)

    def to_cost(d):
        return np.sqrt(np.maximum(d, 0.0) / dim).astype(np.float32)

    d, ids = index.search(cells.features, k, device=opts.device)
    t2 = time.perf_counter()

    def widen(which: np.ndarray, k2: int, exclude: np.ndarray):
        q = cells.features[which]
        avail = n_tiles - len(exclude)
        k2 = min(k2, n_tiles)
        if k2 <= _IVF_WIDEN_MAX and (index.infos["kind"] == "flat" or k2 < avail):
            dd, ii = index.search(q, k2, device=opts.device, exclude=exclude)
        else:
            dd, ii = db.search(q, k2, exact=True, exclude=exclude)
        return ii, to_cost(dd)

    a = assign(grid.rows, grid.cols, ids, to_cost(d), n_tiles, rep, widen)
    t3 = time.perf_counter()
    return MatchResult(a, rep, warnings, {"index_load": t1 - t0, "search": t2 - t1, "assign": t3 - t2})
