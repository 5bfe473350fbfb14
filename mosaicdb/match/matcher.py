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


def _max_feasible_radius(rows: int, cols: int, n_tiles: int) -> int:
    """Largest R with min(rows, R+1) * min(cols, R+1) <= n_tiles (enough tiles to tile any window)."""
    r = 0
    while r < max(rows, cols) and min(rows, r + 2) * min(cols, r + 2) <= n_tiles:
        r += 1
    return r


def resolve_repeat(opts: MatchOptions, grid: Grid, n_tiles: int) -> tuple[RepeatOptions, list]:
    warnings = []
    r = opts.min_distance
    if r is None:
        r = 0 if opts.unique else DEFAULT_MIN_DISTANCE
        cap = _max_feasible_radius(grid.rows, grid.cols, n_tiles)
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

    def widen(which: np.ndarray, k2: int):
        q = cells.features[which]
        k2 = min(k2, n_tiles)
        if k2 <= _IVF_WIDEN_MAX and (index.infos["kind"] == "flat" or k2 < n_tiles):
            dd, ii = index.search(q, k2, device=opts.device)
        else:
            dd, ii = db.search(q, k2, exact=True)
        return ii, to_cost(dd)

    a = assign(grid.rows, grid.cols, ids, to_cost(d), n_tiles, rep, widen)
    t3 = time.perf_counter()
    return MatchResult(a, rep, warnings, {"index_load": t1 - t0, "search": t2 - t1, "assign": t3 - t2})
