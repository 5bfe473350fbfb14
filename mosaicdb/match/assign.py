"""Give every cell of a rows x cols grid one tile, from its nearest-neighbour candidates.

Greedy mode gives each cell the cheapest feasible candidate, cost = distance + usage_penalty
* uses, visiting the cells in regret order (regret.py; or a seeded random order with
--order random). A candidate is feasible while it is under --max-uses and not already placed
within Chebyshev distance --min-distance. Cells whose candidates are all infeasible are
retried, in a seeded random order, with wider candidate lists from a `widen` callback. A local
improvement pass (refine.py) then reassigns and swaps tiles where that lowers the total cost.
Unique mode hands over to mosaicdb.match.unique (an auction on the candidates and on each
cell's nearest unused tiles).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

from ..errors import MatchError
from .dither import dither
from .options import MatchOptions
from .refine import refine
from .regret import regret_pass
from .unique import solve_unique

Widen = Callable[[np.ndarray, int, np.ndarray], tuple[np.ndarray, np.ndarray]]
# widen(cells, k, exclude) -> the k nearest tiles of those cells that are not in `exclude`
# (sorted tile ids used up by --max-uses): without it, late cells would have to search
# thousands deep past exhausted tiles.

# How many candidate entries a single widen call may return. This bounds memory when a few
# stubborn cells need hundreds of thousands of candidates each.
_WIDEN_BUDGET = 1 << 22
# Cells widened per search when --max-uses is on: the tiles the search leaves out (used up) are
# those of its start, and a chunk of C similar cells uses up about C / max_uses more of them as it
# is placed, which its cells then find gone (and are widened again). 256 per use keeps that within
# a few times the candidates a widening brings (64). Measured on 6 photographs at 65,536 cells
# against 50,000 tiles: --max-uses 8 at 2,048 (not 1,024) cost -0.01 to +0.04 % more, ~10 % less time
# on bench_match; --max-uses 16 at 4,096: +0.00 to +0.09 %; --max-uses 2 at 4,096 (not 1,024)
# +0.4 to +1.6 % and slower, at 512 no better than at 1,024.
def fresh_chunk(max_uses: int) -> int:
    return min(4096, max(1024, 256 * int(max_uses)))


@dataclass
class Assignment:
    tile_ids: np.ndarray   # (rows, cols) int64, every entry a valid tile id
    cost: np.ndarray       # (rows, cols) float32 candidate distance of the chosen tile (no penalty)
    widened_cells: int     # cells whose tile came from beyond their first k candidates
    stats: dict = field(default_factory=dict)    # greedy mode: order, refinement, total cost
    report: dict = field(default_factory=dict)   # unique mode: total cost, lower bound, stages
    orient: np.ndarray | None = None             # (rows, cols) uint8 turn of each tile (mosaicdb.orient); None: all 0


def assign(rows: int, cols: int, cand_ids: np.ndarray, cand_dist: np.ndarray,
           n_tiles: int, opts: MatchOptions, widen: Widen, progress: bool = False, dither_input=None) -> Assignment:
    """Assign a tile to every cell.

    `cand_ids`/`cand_dist` are (rows*cols, k), row-major cells, each row sorted by ascending
    distance (greedy mode stops scanning a row early, so unsorted rows give valid but worse
    picks), -1 ids where there is no candidate. `widen(cells, k)` returns the k nearest
    tiles of the given flat cell indices in the same form. `opts.min_distance` must be
    resolved (`MatchOptions.resolved`). Raises MatchError when the options cannot be met.
    `dither_input`: (tile_px(ids), cell_px, views), the tiles' and cells' pixels at p x p and the
    grid's views (views.views), when `opts.dither` is on (dither.py).
    """
    n_cells = rows * cols
    if opts.min_distance is None:
        raise ValueError("assign() needs resolved options: call MatchOptions.resolved() first")
    opts.check_pool(rows, cols, n_tiles)
    cand_ids = np.ascontiguousarray(cand_ids, dtype=np.int64)
    cand_dist = np.ascontiguousarray(cand_dist, dtype=np.float32)
    if cand_ids.ndim != 2 or cand_ids.shape[0] != n_cells or cand_dist.shape != cand_ids.shape:
        raise ValueError(f"candidates must be ({n_cells}, k) ids and distances, got "
                         f"{cand_ids.shape} and {cand_dist.shape}")
    if n_cells == 0:
        return Assignment(np.empty((rows, cols), np.int64), np.empty((rows, cols), np.float32), 0)
    if opts.unique:
        u = solve_unique(cand_ids, cand_dist, n_tiles, widen, seed=opts.seed, progress=progress)
        return Assignment(u.tile.reshape(rows, cols), u.cost.reshape(rows, cols),
                          u.report["fallback_cells"], report=u.report)
    a = _assign_greedy(rows, cols, cand_ids, cand_dist, n_tiles, opts, widen)
    a.stats.update(order=opts.order, refine=refine(a.tile_ids, a.cost, cand_ids, cand_dist, opts))
    if opts.dither:
        if dither_input is None:
            raise ValueError("dithering needs the tiles' and the cells' pixels and the views (dither_input)")
        a.stats["dither"] = dither(a.tile_ids, a.cost, cand_ids, cand_dist, *dither_input, opts)
    return a


# ---------------------------------------------------------------------------------------------
# Greedy mode


@numba.njit(cache=True, nogil=True)
def _greedy_pass(cells, src, ids, dist, grid, uses, cost, radius, max_uses, penalty, failed):
    """Place cells[i] using candidate row src[i]; write the unplaceable i to `failed`, return their count."""
    rows, cols = grid.shape
    k = ids.shape[1]
    n_failed = 0
    for i in range(cells.shape[0]):
        cell = cells[i]
        row = src[i]
        r = cell // cols
        c = cell - r * cols
        r0 = max(r - radius, 0)
        r1 = min(r + radius + 1, rows)
        c0 = max(c - radius, 0)
        c1 = min(c + radius + 1, cols)
        best = -1
        best_cost = np.inf
        best_dist = np.float32(0.0)
        for j in range(k):
            t = ids[row, j]
            if t < 0:
                continue
            d = dist[row, j]
            # Rows are sorted and the penalty only adds, so nothing later can beat the best.
            if d > best_cost:
                break
            if max_uses > 0 and uses[t] >= max_uses:
                continue
            total = np.float64(d) + penalty * uses[t]
            # Cost first: the window scan is the expensive part, so only do it for a winner.
            if total > best_cost or (total == best_cost and t >= best):
                continue
            if radius > 0:
                clash = False
                for rr in range(r0, r1):
                    for cc in range(c0, c1):
                        if grid[rr, cc] == t:
                            clash = True
                            break
                    if clash:
                        break
                if clash:
                    continue
            best = t
            best_cost = total
            best_dist = d
        if best < 0:
            failed[n_failed] = i
            n_failed += 1
        else:
            grid[r, c] = best
            uses[best] += 1
            cost[cell] = best_dist
    return n_failed


def _assign_greedy(rows, cols, cand_ids, cand_dist, n_tiles, opts, widen) -> Assignment:
    n_cells = rows * cols
    radius, max_uses, penalty = int(opts.min_distance), int(opts.max_uses), float(opts.usage_penalty)
    grid = np.full((rows, cols), -1, dtype=np.int64)
    cost = np.zeros(n_cells, dtype=np.float32)
    uses = np.zeros(_id_space(cand_ids), dtype=np.int64)
    # Random order spreads the constraint pressure instead of starving the last rows; it is
    # also the tie-break of regret order, and the order in which failed cells are widened.
    order = np.random.default_rng(opts.seed).permutation(n_cells).astype(np.int64)
    failed = np.empty(n_cells, dtype=np.int64)
    if opts.order == "regret" and (radius or max_uses or penalty):
        rank = np.empty(n_cells, np.int64)
        rank[order] = np.arange(n_cells)
        n_failed = regret_pass(cand_ids, cand_dist, grid, uses, cost, rank, radius, max_uses, penalty, failed)
        pending = failed[:n_failed][np.argsort(rank[failed[:n_failed]])]
    else:  # without constraints every cell simply gets its nearest tile, in any order
        n_failed = _greedy_pass(order, order, cand_ids, cand_dist, grid, uses, cost,
                                radius, max_uses, penalty, failed)
        pending = order[failed[:n_failed]]
    widened = int(pending.size)

    k = cand_ids.shape[1]
    first = True
    while pending.size:
        if k >= n_tiles:
            raise MatchError(_stuck_message(int(pending.size), n_tiles, opts))
        k = min(widened_k(k, radius, first), n_tiles)
        first = False
        still = []
        # With --max-uses, small chunks keep the excluded (used-up) set fresh between searches.
        for chunk in _chunks(pending, k, fresh_chunk(max_uses) if max_uses else None):
            exhausted = np.flatnonzero(uses >= max_uses) if max_uses else np.empty(0, np.int64)
            ids, dist = _call_widen(widen, chunk, k, exhausted)
            if ids.size and ids.max() >= uses.size:
                uses = np.concatenate([uses, np.zeros(int(ids.max()) + 1 - uses.size, np.int64)])
            src = np.arange(chunk.size, dtype=np.int64)
            nf = _greedy_pass(chunk, src, ids, dist, grid, uses, cost,
                              radius, max_uses, penalty, failed)
            still.append(chunk[failed[:nf]])
        pending = np.concatenate(still)

    return Assignment(grid, cost.reshape(rows, cols), widened)


def widened_k(k: int, radius: int, first: bool) -> int:
    """Candidates asked for when cells are widened. The first time: the used-up tiles are left
    out of the search, and at most (2r+1)^2 - 1 neighbours hold a tile, so that many + 1
    candidates nearly always hold a free one: 2k or the window, whichever is more (measured
    on 65,536 cells, -k 32, --min-distance 3: the same mosaic to 0.01 % of the cost as 4k,
    with half the candidates to re-rank). After that, 4x per round."""
    return max(2 * k, (2 * radius + 1) ** 2) if first else max(k, 1) * 4


def _stuck_message(n_stuck: int, n_tiles: int, opts: MatchOptions) -> str:
    fixes = []
    if opts.min_distance:
        fixes.append(f"lower --min-distance (now {opts.min_distance})")
    if opts.max_uses:
        fixes.append(f"raise --max-uses (now {opts.max_uses})")
    if not fixes:
        fixes.append("check the tile index (it returned no usable candidates)")
    msg = (f"{n_stuck} cells have no usable tile even among all {n_tiles} tiles: "
           + " or ".join(fixes))
    window = (2 * opts.min_distance + 1) ** 2
    if opts.min_distance and n_tiles < window:
        # A solution may exist, but placement only guarantees one from this many tiles up.
        msg += f" (--min-distance {opts.min_distance} is reliable from {window} tiles up)"
    return msg


# ---------------------------------------------------------------------------------------------
# Helpers


def _id_space(ids: np.ndarray) -> int:
    return int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 1


def _chunks(cells: np.ndarray, k: int, cap: int | None = None):
    step = max(1, _WIDEN_BUDGET // max(k, 1))
    if cap:
        step = min(step, cap)
    for start in range(0, cells.size, step):
        yield cells[start:start + step]


def _call_widen(widen: Widen, cells: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, dist = widen(cells, k, exclude.astype(np.int64))
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    dist = np.ascontiguousarray(dist, dtype=np.float32)
    if ids.ndim != 2 or ids.shape[0] != cells.size or dist.shape != ids.shape:
        raise ValueError(f"widen returned {ids.shape} ids and {dist.shape} distances "
                         f"for {cells.size} cells")
    return ids, dist
