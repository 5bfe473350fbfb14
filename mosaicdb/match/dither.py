"""Dithering (`--dither W`): tiles chosen so that the mosaic reads as its target from afar.

Each cell's own cost says how close its tile is, scale by scale. Seen from a distance, though,
neighbouring cells blur together, and a cell that is a little too red next to one a little too
green reads right. This pass, after refinement, takes that into account: its objective is

    J = sum over cells of cost^2  +  W * (1/4) * || B * (M - T) ||^2

where M and T are the mosaic's and the target's colours at 2 x 2 per cell (a grid of 2*rows x
2*cols, from the feature vectors: `FeatureSpec.sub_means`), B a [1 2 1]/4 x [1 2 1]/4 blur on that
grid (zero outside it), and cost the cell's candidate distance (RMS, so cost^2 is its mean squared
difference, averaged over the channels; the blurred term sums them, so for an error the same
everywhere it is 3x as large: W = 1/3 weighs the two alike, the default 0.5 the blurred one
1.5x). The blur spans about a cell: at 64 cells
across a photograph, PSNR at 64 px (1.5 px a cell) and the coarse pyramid levels see it.

Each cell in turn (the refinement's seeded block order) makes the move that lowers J most, if any:
a reassignment to a free candidate, or, when a candidate (not used up under --max-uses) is blocked
by the one copy of it within --min-distance, a trade of tiles with that cell (which must have ours among its candidates, with
no other copy of ours near it; a trade is looked at when our cell's side alone would lower J, the
other side's cell finds the rest). Every move is checked against --min-distance and --max-uses
first, and none raises the usage-penalty term (a trade keeps every tile's uses; with a penalty, a
reassignment goes only to a tile used fewer times than the one it leaves), so no constraint can
break and J never rises. Passes repeat until one changes nothing, within the
refinement's pass and time budget. The gain of a move is exact: the blurred error's gradient
(B^T B applied to M - T) is kept up to date in a 5 x 5 window of sub-cells around each change.

Measured (bench_quality, README "Dithering"): at 64 cells across, +0.5-0.8 dB PSNR at 64 px and
the coarse pyramid levels 16-46 % lower, at +5-7 % in pyramid level 1 (detail inside the tiles);
at 128 cells better on every figure; at 32 cells, whose tiles a 64 px view still resolves, a
little worse. On by default at MatchOptions' DEFAULT_DITHER (greedy modes without turns).
"""
from __future__ import annotations

import time

import numba
import numpy as np

from ..features import bad_feature_rows
from .refine import _copies, _lookup, run_passes, visit_order

_EPS = 1e-6
# Tiles whose colours are read at a time: their full feature rows pass through memory (65,536
# rows of 255 floats: 67 MB), whatever the pool (up to every tile of it among the candidates).
_SUB_CHUNK = 65536
_B = np.array([1.0, 2.0, 1.0]) / 4.0


def _kernel() -> np.ndarray:
    """B^T B for the separable [1 2 1]/4 blur: a 5 x 5 kernel."""
    b = np.convolve(_B, _B)
    return np.outer(b, b)


def blurred_error(tile_sub: np.ndarray, cell_sub: np.ndarray, rows: int, cols: int) -> float:
    """(1/4) || B * (M - T) ||^2 for per-cell 2 x 2 colours (rows*cols, 2, 2, 3): the dithering
    term, computed from scratch (the pass keeps it incrementally)."""
    e = (np.asarray(tile_sub, np.float64) - np.asarray(cell_sub, np.float64))
    e = e.reshape(rows, cols, 2, 2, 3).transpose(0, 2, 1, 3, 4).reshape(2 * rows, 2 * cols, 3)
    # the full blur of the zero-padded field: it reaches one sub-cell past each edge
    p = np.pad(e, ((2, 2), (2, 2), (0, 0)))
    v = _B[0] * p[:-2] + _B[1] * p[1:-1] + _B[2] * p[2:]
    h = _B[0] * v[:, :-2] + _B[1] * v[:, 1:-1] + _B[2] * v[:, 2:]
    return float(np.sum(h * h) / 4.0)


def objective(cost: np.ndarray, tile_sub: np.ndarray, cell_sub: np.ndarray, rows: int, cols: int,
              weight: float) -> float:
    """J: the sum of the cells' squared costs plus `weight` times the blurred error."""
    c = np.asarray(cost, np.float64).reshape(-1)
    return float(np.sum(c * c)) + float(weight) * blurred_error(tile_sub, cell_sub, rows, cols)


@numba.njit(cache=True, nogil=True)
def _spread(grad, y, x, kk, v0, v1, v2):
    """grad += kk centred on sub-cell (y, x), times the colour change (v0, v1, v2) there (kk is
    symmetric: this is also how a change at (y, x) reaches every gradient it enters)."""
    h2, w2 = grad.shape[0], grad.shape[1]
    for dy in range(-2, 3):
        yy = y + dy
        if yy < 0 or yy >= h2:
            continue
        for dx in range(-2, 3):
            xx = x + dx
            if 0 <= xx < w2:
                k = kk[dy + 2, dx + 2]
                grad[yy, xx, 0] += k * v0
                grad[yy, xx, 1] += k * v1
                grad[yy, xx, 2] += k * v2


@numba.njit(cache=True, nogil=True)
def _gradient(err, kk):
    """B^T B applied to the error field (zero outside it)."""
    g = np.zeros_like(err)
    for y in range(err.shape[0]):
        for x in range(err.shape[1]):
            _spread(g, y, x, kk, err[y, x, 0], err[y, x, 1], err[y, x, 2])
    return g


@numba.njit(cache=True, nogil=True)
def _change(sub, st, sa, grad, y0, x0, c0, c1, c2):
    """For the 2 x 2 colours of tile slot `sa` replaced by those of `st` in the block at sub-cell
    (y0, x0): (<grad, d>, d^T (B^T B) d), where B^T B couples a sub-cell with itself (c0), its side
    neighbours (c1) and its diagonal one (c2) inside the block."""
    lin = 0.0
    quad = 0.0
    for ch in range(3):
        d00 = np.float64(sub[st, 0, 0, ch]) - np.float64(sub[sa, 0, 0, ch])
        d01 = np.float64(sub[st, 0, 1, ch]) - np.float64(sub[sa, 0, 1, ch])
        d10 = np.float64(sub[st, 1, 0, ch]) - np.float64(sub[sa, 1, 0, ch])
        d11 = np.float64(sub[st, 1, 1, ch]) - np.float64(sub[sa, 1, 1, ch])
        lin += (grad[y0, x0, ch] * d00 + grad[y0, x0 + 1, ch] * d01
                + grad[y0 + 1, x0, ch] * d10 + grad[y0 + 1, x0 + 1, ch] * d11)
        quad += (c0 * (d00 * d00 + d01 * d01 + d10 * d10 + d11 * d11)
                 + 2.0 * c1 * (d00 * d01 + d10 * d11 + d00 * d10 + d01 * d11)
                 + 2.0 * c2 * (d00 * d11 + d01 * d10))
    return lin, quad


@numba.njit(cache=True, nogil=True)
def _cross(sub, st, sa, kk, dy, dx):
    """d^T (B^T B) d' between a block and another (dy, dx) sub-cells away, where d is the change
    from slot sa to st and d' its opposite (the two cells trade tiles): 0 beyond the blur's reach."""
    out = 0.0
    for p in range(2):
        for q in range(2):
            for p2 in range(2):
                for q2 in range(2):
                    ey, ex = dy + p2 - p, dx + q2 - q
                    if -2 <= ey <= 2 and -2 <= ex <= 2:
                        k = kk[ey + 2, ex + 2]
                        for ch in range(3):
                            dpq = np.float64(sub[st, p, q, ch]) - np.float64(sub[sa, p, q, ch])
                            d2 = np.float64(sub[st, p2, q2, ch]) - np.float64(sub[sa, p2, q2, ch])
                            out -= k * dpq * d2
    return out


@numba.njit(cache=True, nogil=True)
def _apply(grad, sub, st, sa, kk, r, c):
    for p in range(2):
        for q in range(2):
            _spread(grad, 2 * r + p, 2 * c + q, kk,
                    np.float64(sub[st, p, q, 0]) - np.float64(sub[sa, p, q, 0]),
                    np.float64(sub[st, p, q, 1]) - np.float64(sub[sa, p, q, 1]),
                    np.float64(sub[st, p, q, 2]) - np.float64(sub[sa, p, q, 2]))


@numba.njit(cache=True, nogil=True)
def _sweep(order, start, stop, flat, grid, cost, uses, ids, dist, slot, sub, grad, kk, weight, radius,
           max_uses, penalty, moves):
    """Visit order[start:stop]; each cell makes its best J-lowering move: a reassignment to a free
    candidate, or a trade of tiles with the one cell within --min-distance that blocks a candidate
    (that cell must have our tile among its candidates, with no other copy of it near). Returns
    the moves made."""
    cols = grid.shape[1]
    c0, c1, c2 = kk[2, 2], kk[2, 3], kk[3, 3]
    changed = 0
    for i in range(start, stop):
        x = order[i]
        r = x // cols
        c = x - r * cols
        a = flat[x]
        sa = slot[a]
        cx = np.float64(cost[x])
        best, best_j, best_y, best_dya, best_gain = -1, -1, -1, np.float32(0.0), -_EPS
        for j in range(ids.shape[1]):
            t = ids[x, j]
            if t < 0 or t == a:
                continue
            # A used-up tile could still be traded for, but under --max-uses most candidates are:
            # looking at each for a trade took the pass from 0.14 to 0.53 s on bench_match
            # (65,536 cells, --max-uses 8), for the same PSNR.
            if max_uses > 0 and uses[t] >= max_uses:
                continue
            st = slot[t]
            dj = np.float64(dist[x, j])
            if not dj < np.inf:  # a tile whose stored features are not finite: never placed
                continue
            lin, quad = _change(sub, st, sa, grad, 2 * r, 2 * c, c0, c1, c2)
            gain = dj * dj - cx * cx + weight * (2.0 * lin + quad) * 0.25
            if gain >= best_gain:  # (a trade is looked for only when our side gains; the other side's
                continue           # cell finds the rest when it is visited)
            n, y = 0, -1
            if radius > 0:
                n, y = _copies(grid, r, c, radius, t)
            if n == 0:
                if penalty > 0.0 and uses[t] > uses[a] - 1:
                    continue
                best, best_j, best_y, best_gain = t, j, -1, gain
                continue
            if n >= 2:
                continue
            dya = _lookup(ids, dist, y, a)  # y would take our tile
            if dya < 0:
                continue
            ry = y // cols
            cy = y - ry * cols
            lin_y, quad_y = _change(sub, sa, st, grad, 2 * ry, 2 * cy, c0, c1, c2)
            cyy = np.float64(cost[y])
            cross = _cross(sub, st, sa, kk, 2 * (ry - r), 2 * (cy - c))
            g2 = (gain + np.float64(dya) * np.float64(dya) - cyy * cyy
                  + weight * (2.0 * lin_y + quad_y + 2.0 * cross) * 0.25)
            if g2 >= best_gain:
                continue
            na, at = _copies(grid, ry, cy, radius, a)
            if na == 0 or (na == 1 and at == x):
                best, best_j, best_y, best_dya, best_gain = t, j, y, dya, g2
        if best < 0:
            continue
        st = slot[best]
        _apply(grad, sub, st, sa, kk, r, c)
        flat[x] = best
        cost[x] = dist[x, best_j]
        if best_y < 0:
            uses[a] -= 1
            uses[best] += 1
            moves[0] += 1
        else:
            ry = best_y // cols
            _apply(grad, sub, sa, st, kk, ry, best_y - ry * cols)
            flat[best_y] = a
            cost[best_y] = best_dya
            moves[1] += 1
        changed += 1
    return changed


def dither(tile_ids: np.ndarray, cost: np.ndarray, cand_ids: np.ndarray, cand_dist: np.ndarray,
           tile_sub, cell_sub: np.ndarray, opts) -> dict:
    """Lower J (module docstring) by reassigning cells among their candidates. `tile_ids`/`cost`
    ((rows, cols)) change in place; `tile_sub(ids)` gives tiles' 2 x 2 colours (len(ids), 2, 2, 3),
    `cell_sub` the cells' (rows*cols, 2, 2, 3). Returns what it did, with J before and after."""
    t_start = time.perf_counter()
    rows, cols = tile_ids.shape
    weight = float(opts.dither)
    flat = tile_ids.reshape(-1)
    c = cost.reshape(-1)
    if flat.size == 0:
        return {"weight": weight, "passes": 0, "moves": 0, "stopped": "off", "objective_before": 0.0,
                "objective_after": 0.0, "seconds": 0.0}
    seen = np.zeros(max(int(flat.max()), int(cand_ids.max())) + 1, bool)  # (a sort of them: 2-3x slower)
    seen[flat] = True
    seen[cand_ids[cand_ids >= 0]] = True
    known = np.flatnonzero(seen)
    slot = np.full(seen.size, -1, np.int64)
    slot[known] = np.arange(known.size)
    sub = np.empty((known.size, 2, 2, 3), np.float32)
    for i in range(0, known.size, _SUB_CHUNK):
        sub[i:i + _SUB_CHUNK] = tile_sub(known[i:i + _SUB_CHUNK])
    cell_sub = np.ascontiguousarray(cell_sub, dtype=np.float32).reshape(rows * cols, 2, 2, 3)
    bad = bad_feature_rows(sub)  # features damaged after the index was built
    if bad.any():
        if bad[slot[flat]].any():  # placed by a search that still knew them: J is not defined (the
            # matcher then matches again without them)
            return {"weight": weight, "passes": 0, "moves": 0, "stopped": "non-finite features",
                    "objective_before": None, "objective_after": None,
                    "seconds": round(time.perf_counter() - t_start, 4)}
        sub[bad] = 0.0
        cand_dist = np.where((cand_ids >= 0) & bad[slot[np.maximum(cand_ids, 0)]], np.inf, cand_dist)
    before = objective(c, sub[slot[flat]], cell_sub, rows, cols, weight)
    stats = {"weight": weight, "passes": 0, "moves": 0, "stopped": "off", "objective_before": before,
             "objective_after": before}
    if opts.refine_passes == 0:
        stats["seconds"] = round(time.perf_counter() - t_start, 4)
        return stats
    err = (sub[slot[flat]].astype(np.float64) - cell_sub).reshape(rows, cols, 2, 2, 3)
    err = np.ascontiguousarray(err.transpose(0, 2, 1, 3, 4).reshape(2 * rows, 2 * cols, 3))
    kk = _kernel()
    grad = _gradient(err, kk)
    uses = np.bincount(flat, minlength=slot.size).astype(np.int64)
    order = visit_order(rows, cols, opts.seed)
    moves = np.zeros(2, np.int64)  # reassignments, trades
    args = (flat, tile_ids, c, uses, np.ascontiguousarray(cand_ids, np.int64),
            np.ascontiguousarray(cand_dist, np.float32), slot, sub, grad, kk, weight, int(opts.min_distance),
            int(opts.max_uses), float(opts.usage_penalty), moves)
    run_passes(_sweep, order, args, opts, stats)
    stats["moves"], stats["swapped"] = int(moves[0] + moves[1]), int(moves[1])
    stats["objective_after"] = objective(c, sub[slot[flat]], cell_sub, rows, cols, weight)
    stats["seconds"] = round(time.perf_counter() - t_start, 4)
    return stats
