"""Dithering (`--dither W`): tiles chosen so that the mosaic reads as its target, close and whole.

Each cell's own cost says how close its tile is, scale by scale. But a mosaic is seen as one
picture: at arm's length neighbouring tiles run together at their borders, from across the room
whole cells blend, and a cell a little too red next to one a little too green reads right. This
pass, after refinement, chooses tiles for the errors of the mosaic seen both ways: its objective is

    J = MSE(C(M) - C(T)) + W * MSE(V(M) - V(T))

where M and T are the mosaic and the target on a canvas of p px per cell (the tiles' and the
cells' feature levels at p x p, in sRGB levels), and C and V the two views of views.py, the
linear maps that mosaicdb.evaluate measures through: C the target-sized mosaic's Gaussian
pyramid at level 1 (half the target's size: detail inside the tiles and across their borders),
V the mosaic at 64 px on its short side (the whole picture). Each MSE is the mean over its view's
numbers, so W = 1 weighs the two alike; the default 0.3 (MatchOptions) weighs the close view more.

Each cell in turn (the refinement's seeded block order) makes the move that lowers J most, if any:
a reassignment to a free candidate, or, when a candidate (not used up under --max-uses) is blocked
by the one copy of it within --min-distance, a trade of tiles with that cell (which must have ours
among its candidates, with no other copy of ours near it; a trade is looked at when our cell's side
alone would lower J, the other side's cell finds the rest). Every move is checked against
--min-distance and --max-uses first, and none raises the usage-penalty term (a trade keeps every
tile's uses; with a penalty, a reassignment goes only to a tile used fewer times than the one it
leaves), so no constraint can break and J never rises. Passes repeat until one changes nothing,
at most _PASSES of them, within the refinement's pass and time budget. A cell's candidates are ranked by an estimate of
their gain (the linear part exact, through the views' gradient at the cell; the quadratic part
exact where the cell's maps are those of the grid's middle cell), and the best _EXACT of those the
estimate says gain are priced exactly; only an exact gain is taken: each view's error
(C(M) - C(T), V(M) - V(T)) is kept, and a cell's tile reaches only a window of it. After the
first pass a cell is looked at again only when a move near it changed its windows.

Measured: README, Benchmarks, Quality ("Dithering").
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numba
import numpy as np

from ..features import bad_feature_rows
from .refine import _copies, _lookup, run_passes, visit_order
from .views import canvas

_EPS = 1e-9
# Tiles whose pixels are read at a time: their feature rows pass through memory.
_SUB_CHUNK = 65536
# Candidates a cell prices exactly: the best by the estimate
_EXACT = 4
# Candidates a cell looks at (its nearest by cost)
_K = 32
# Passes at most (within the refinement's): a third and a fourth looked at 2x the cells again
# for +0.00-0.03 dB (bench_quality, 33 photographs at 64 cells).
_PASSES = 2
# Tests set this: every cell looked at in every pass, every candidate priced exactly (so that a
# converged result has no improving move left), not only those the estimate ranks first.
_EXHAUSTIVE = False


def view_errors(tile_px: np.ndarray, cell_px: np.ndarray, rows: int, cols: int, views_) -> list:
    """Each view of the mosaic less the same view of the target, for per-cell pixels
    (rows*cols, p, p, 3) of the tiles placed and of the cells."""
    d = canvas(np.asarray(tile_px, np.float64) - np.asarray(cell_px, np.float64), rows, cols)
    return [np.ascontiguousarray(v.apply(d)) for v in views_]


def _j(errs, views_, weight: float) -> float:
    close, whole = views_
    return float(np.sum(errs[0] ** 2) / close.size + weight * np.sum(errs[1] ** 2) / whole.size)


def objective(tile_px: np.ndarray, cell_px: np.ndarray, rows: int, cols: int, views_, weight: float) -> float:
    """J for per-cell pixels (rows*cols, p, p, 3) of the tiles placed and of the cells, computed
    from scratch (the pass keeps it incrementally)."""
    return _j(view_errors(tile_px, cell_px, rows, cols, views_), views_, weight)


@numba.njit(cache=True, nogil=True)
def _patch(px, s, by, bx, r, c, h, w, out, tmp):
    """out[:h, :w] = by[r, :h] @ px[s] @ bx[c, :w].T, per channel: what tile slot s at cell
    (r, c) adds to a view's window there."""
    p = px.shape[1]
    for i in range(p):
        for b in range(w):
            for ch in range(3):
                acc = 0.0
                for j in range(p):
                    acc += np.float64(bx[c, b, j]) * px[s, i, j, ch]
                tmp[i, b, ch] = acc
    for a in range(h):
        for b in range(w):
            for ch in range(3):
                acc = 0.0
                for i in range(p):
                    acc += np.float64(by[r, a, i]) * tmp[i, b, ch]
                out[a, b, ch] = acc


@numba.njit(cache=True, nogil=True)
def _gain(err, new, old, y0, y1, x0, x1):
    """The change in the sum of squares of err over the window when `old` there becomes `new`."""
    g = 0.0
    for a in range(y1 - y0):
        for b in range(x1 - x0):
            for ch in range(3):
                d = new[a, b, ch] - old[a, b, ch]
                g += d * (2.0 * err[y0 + a, x0 + b, ch] + d)
    return g


@numba.njit(cache=True, nogil=True)
def _add(err, new, old, y0, y1, x0, x1):
    for a in range(y1 - y0):
        for b in range(x1 - x0):
            for ch in range(3):
                err[y0 + a, x0 + b, ch] += new[a, b, ch] - old[a, b, ch]


@numba.njit(cache=True, nogil=True)
def _old(px, sa, x, cols, by1, bx1, wy1, wx1, by2, bx2, wy2, wx2, o1, o2, tmp):
    """Cell x's tile (slot sa)'s contributions to its windows of the two views, into o1 and o2."""
    r = x // cols
    c = x - r * cols
    _patch(px, sa, by1, bx1, r, c, wy1[r, 1] - wy1[r, 0], wx1[c, 1] - wx1[c, 0], o1, tmp)
    _patch(px, sa, by2, bx2, r, c, wy2[r, 1] - wy2[r, 0], wx2[c, 1] - wx2[c, 0], o2, tmp)


@numba.njit(cache=True, nogil=True)
def _move_gain(px, st, x, cols, e1, by1, bx1, wy1, wx1, s1, e2, by2, bx2, wy2, wx2, s2,
               n1, o1, n2, o2, tmp):
    """The change in J when cell x's tile, whose contributions are o1/o2 (_old), becomes slot
    st (whose contributions are left in n1/n2)."""
    r = x // cols
    c = x - r * cols
    y0, y1, x0, x1 = wy1[r, 0], wy1[r, 1], wx1[c, 0], wx1[c, 1]
    _patch(px, st, by1, bx1, r, c, y1 - y0, x1 - x0, n1, tmp)
    g = s1 * _gain(e1, n1, o1, y0, y1, x0, x1)
    y0, y1, x0, x1 = wy2[r, 0], wy2[r, 1], wx2[c, 0], wx2[c, 1]
    _patch(px, st, by2, bx2, r, c, y1 - y0, x1 - x0, n2, tmp)
    return g + s2 * _gain(e2, n2, o2, y0, y1, x0, x1)


@numba.njit(cache=True, nogil=True)
def _apply_move(x, cols, e1, wy1, wx1, e2, wy2, wx2, n1, o1, n2, o2):
    """Cell x's change (old contributions o1/o2, new n1/n2) into the two views' errors."""
    r = x // cols
    c = x - r * cols
    _add(e1, n1, o1, wy1[r, 0], wy1[r, 1], wx1[c, 0], wx1[c, 1])
    _add(e2, n2, o2, wy2[r, 0], wy2[r, 1], wx2[c, 0], wx2[c, 1])


@numba.njit(cache=True, nogil=True)
def _grad(err, by, bx, y0, y1, x0, x1, r, c, p, scale, g, tmp):
    """g += scale * A^T err[window]: the gradient of the view's sum of squares (halved) with
    respect to the pixels of cell (r, c)."""
    for a in range(y1 - y0):
        for j in range(p):
            for ch in range(3):
                acc = 0.0
                for b in range(x1 - x0):
                    acc += np.float64(bx[c, b, j]) * err[y0 + a, x0 + b, ch]
                tmp[a, j, ch] = acc
    for i in range(p):
        for j in range(p):
            for ch in range(3):
                for a in range(y1 - y0):
                    g[i, j, ch] += scale * np.float64(by[r, a, i]) * tmp[a, j, ch]


@numba.njit(cache=True, nogil=True)
def _keep_one(e, y0, y1, x0, x1, k, save):
    for a in range(y1 - y0):
        for b in range(x1 - x0):
            for ch in range(3):
                if save:
                    k[a, b, ch] = e[y0 + a, x0 + b, ch]
                else:
                    e[y0 + a, x0 + b, ch] = k[a, b, ch]


@numba.njit(cache=True, nogil=True)
def _keep(x, cols, e1, wy1, wx1, e2, wy2, wx2, k1, k2, save):
    """Copy cell x's windows of the two views' errors into k1/k2 (save), or back from them."""
    r = x // cols
    c = x - r * cols
    _keep_one(e1, wy1[r, 0], wy1[r, 1], wx1[c, 0], wx1[c, 1], k1, save)
    _keep_one(e2, wy2[r, 0], wy2[r, 1], wx2[c, 0], wx2[c, 1], k2, save)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot(a, b):
    """<a, b> (vectorised: the sum in any order)."""
    out = 0.0
    for k in range(a.size):
        out += a[k] * b[k]
    return out


@numba.njit(cache=True, nogil=True)
def _touch(dirty, r, c, reach, rows, cols):
    """Cells within `reach` of (r, c) (whose windows a change there enters, or whose moves its
    tile's new place can block or free) are looked at again."""
    for rr in range(max(r - reach, 0), min(r + reach + 1, rows)):
        for cc in range(max(c - reach, 0), min(c + reach + 1, cols)):
            dirty[rr * cols + cc] = True


@numba.njit(cache=True, nogil=True)
def _sweep(order, start, stop, flat, grid, cost, uses, ids, dist, slot, px, weight, radius, max_uses, penalty,
           moves, e1, by1, bx1, wy1, wx1, s1, e2, by2, bx2, wy2, wx2, s2, bufs, tmp, qt, qmaps, gtmp, top, dirty,
           reach, g, lin, est, flat_px, exhaustive, neg, qa, kmax):
    """Visit order[start:stop]; each cell makes its best J-lowering move: a reassignment to a free
    candidate, or a trade of tiles with the one cell within --min-distance that blocks a candidate
    (that cell must have our tile among its candidates, with no other copy of it near). Returns
    the moves made."""
    cols = grid.shape[1]
    n1, o1, n2, o2, m1, q1, m2, q2, k1, k2 = (bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], bufs[5], bufs[6],
                                              bufs[7], bufs[8], bufs[9])
    changed = 0
    for i in range(start, stop):
        x = order[i]
        r = x // cols
        c = x - r * cols
        a = flat[x]
        sa = slot[a]
        if not (dirty[x] or exhaustive):  # nothing near it changed since it was looked at
            continue
        dirty[x] = False
        moves[2] += 1
        # Rank the candidates by an estimate of their gain: J's change is 2 <G, d> + |A d|^2 for
        # d the change in the cell's pixels, G = A^T (the views' error); the first part is exact
        # here, the second exact where the cell's maps are those of the grid's middle cell (qt:
        # |A x|^2 of each tile there; qa = A^T A x of ours). The best few are then priced exactly.
        p = px.shape[1]
        g[:] = 0.0
        _grad(e1, by1, bx1, wy1[r, 0], wy1[r, 1], wx1[c, 0], wx1[c, 1], r, c, p, s1, g, gtmp)
        _grad(e2, by2, bx2, wy2[r, 0], wy2[r, 1], wx2[c, 0], wx2[c, 1], r, c, p, s2 * weight, g, gtmp)
        _qmul(px, sa, qmaps, qa)
        base = qt[sa]  # the terms of the estimate that do not depend on the candidate
        for ii in range(p):
            for jj in range(p):
                for ch in range(3):
                    base -= 2.0 * g[ii, jj, ch] * px[sa, ii, jj, ch]
        gf = g.reshape(-1)
        qf = qa.reshape(-1)
        for k in range(lin.size):
            lin[k] = np.float32(2.0 * (gf[k] - qf[k]))
        est[:] = np.inf
        for j in range(min(ids.shape[1], kmax)):
            t = ids[x, j]
            # (A used-up tile could still be traded for, but under --max-uses most candidates are:
            # looking at each for a trade took the old pass from 0.14 to 0.53 s on bench_match,
            # 65,536 cells, --max-uses 8, for the same PSNR. A tile whose stored features are not
            # finite is never placed.)
            if t < 0 or t == a or (max_uses > 0 and uses[t] >= max_uses) or not np.float64(dist[x, j]) < np.inf:
                continue
            st = slot[t]
            est[j] = base + qt[st] + _dot(lin, flat_px[st])
        # the best few by the estimate that could be placed: free, or held by one cell near (a
        # trade), and under a usage penalty used less than ours (looked at in that order: most
        # candidates' estimates say they cannot gain)
        n_neg = 0  # (where the estimate is exact, only those it says gain can)
        for j in range(ids.shape[1]):
            if est[j] < 0.0 or (exhaustive and est[j] < np.inf):
                neg[n_neg] = j
                n_neg += 1
        n_top = 0
        for jn in np.argsort(est[neg[:n_neg]]):
            if n_top == top.size:
                break
            j = neg[jn]
            t = ids[x, j]
            if radius > 0:
                n, y = _copies(grid, r, c, radius, t)
                if n >= 2 or (n == 1 and _lookup(ids, dist, y, a) < 0):
                    continue
                if n == 0 and penalty > 0.0 and uses[t] > uses[a] - 1:
                    continue
            elif penalty > 0.0 and uses[t] > uses[a] - 1:
                continue
            top[n_top] = j
            n_top += 1
        moves[3] += n_top
        if n_top == 0:
            continue
        best, best_j, best_y, best_dya, best_gain = -1, -1, -1, np.float32(0.0), -_EPS
        _old(px, sa, x, cols, by1, bx1, wy1, wx1, by2, bx2, wy2, wx2, o1, o2, tmp)
        for jt in range(n_top):
            j = top[jt]
            t = ids[x, j]
            st = slot[t]
            gain = _move_gain(px, st, x, cols, e1, by1, bx1, wy1, wx1, s1, e2, by2, bx2, wy2, wx2, s2 * weight,
                              n1, o1, n2, o2, tmp)
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
            na, at = _copies(grid, ry, cy, radius, a)
            if not (na == 0 or (na == 1 and at == x)):
                continue
            # y's side, with our side's change made (then the errors put back as they were)
            _keep(x, cols, e1, wy1, wx1, e2, wy2, wx2, k1, k2, True)
            _apply_move(x, cols, e1, wy1, wx1, e2, wy2, wx2, n1, o1, n2, o2)
            _old(px, st, y, cols, by1, bx1, wy1, wx1, by2, bx2, wy2, wx2, q1, q2, tmp)
            g_y = _move_gain(px, sa, y, cols, e1, by1, bx1, wy1, wx1, s1, e2, by2, bx2, wy2, wx2, s2 * weight,
                             m1, q1, m2, q2, tmp)
            _keep(x, cols, e1, wy1, wx1, e2, wy2, wx2, k1, k2, False)
            if gain + g_y < best_gain:
                best, best_j, best_y, best_dya, best_gain = t, j, y, dya, gain + g_y
        if best < 0:
            continue
        st = slot[best]
        _move_gain(px, st, x, cols, e1, by1, bx1, wy1, wx1, s1, e2, by2, bx2, wy2, wx2, s2 * weight,
                   n1, o1, n2, o2, tmp)
        _apply_move(x, cols, e1, wy1, wx1, e2, wy2, wx2, n1, o1, n2, o2)
        flat[x] = best
        cost[x] = dist[x, best_j]
        _touch(dirty, r, c, reach, grid.shape[0], cols)
        if best_y < 0:
            uses[a] -= 1
            uses[best] += 1
            moves[0] += 1
        else:
            _old(px, st, best_y, cols, by1, bx1, wy1, wx1, by2, bx2, wy2, wx2, o1, o2, tmp)
            _move_gain(px, sa, best_y, cols, e1, by1, bx1, wy1, wx1, s1, e2, by2, bx2, wy2, wx2,
                       s2 * weight, n1, o1, n2, o2, tmp)
            _apply_move(best_y, cols, e1, wy1, wx1, e2, wy2, wx2, n1, o1, n2, o2)
            flat[best_y] = a
            cost[best_y] = best_dya
            _touch(dirty, best_y // cols, best_y - (best_y // cols) * cols, reach, grid.shape[0], cols)
            moves[1] += 1
        changed += 1
    return changed


def _middle_maps(views_, weight: float, rows: int, cols: int) -> np.ndarray:
    """(4, p, p): Qy and Qx of the close view, then of the whole one, at the grid's middle cell
    (A^T A = Qy (x) Qx per channel, scaled as J weighs the view): the estimate's quadratic part."""
    out = []
    for v, sc in zip(views_, (1.0, weight)):
        by = v.by[rows // 2].astype(np.float64)
        bx = v.bx[cols // 2].astype(np.float64)
        out += [(sc / v.size) * (by.T @ by), bx.T @ bx]
    return np.stack(out)


@numba.njit(cache=True, nogil=True)
def _qmul(px, s, q, out):
    """out = Q x for tile slot s: sum over the views of Qy X Qx, channel by channel."""
    p = px.shape[1]
    out[:] = 0.0
    for v in range(2):
        qy, qx = q[2 * v], q[2 * v + 1]
        for ch in range(3):
            for k in range(p):        # (X Qx)[k, j], then Qy times it: 2 p^3, not p^4
                for j in range(p):
                    xk = 0.0
                    for m in range(p):
                        xk += np.float64(px[s, k, m, ch]) * qx[m, j]
                    for i in range(p):
                        out[i, j, ch] += qy[i, k] * xk


@numba.njit(cache=True, nogil=True)
def _quadratic(px, q):
    """x^T Q x of every tile (Q: _middle_maps)."""
    n, p = px.shape[0], px.shape[1]
    out = np.empty(n)
    buf = np.empty((p, p, 3))
    for s in range(n):
        _qmul(px, s, q, buf)
        acc = 0.0
        for i in range(p):
            for j in range(p):
                for ch in range(3):
                    acc += buf[i, j, ch] * px[s, i, j, ch]
        out[s] = acc
    return out


def _reach(views_) -> int:
    """How many cells away a cell's windows can meet another's, at most."""
    out = 1
    for v in views_:
        for w, n in ((v.wy, v.wy.shape[0]), (v.wx, v.wx.shape[0])):
            for i in range(n):
                j = i + 1
                while j < n and w[j, 0] < w[i, 1]:
                    j += 1
                out = max(out, j - i - 1)
    return out


def dither(tile_ids: np.ndarray, cost: np.ndarray, cand_ids: np.ndarray, cand_dist: np.ndarray,
           tile_px, cell_px: np.ndarray, views_, opts) -> dict:
    """Lower J (module docstring) by reassigning cells among their candidates. `tile_ids`/`cost`
    ((rows, cols)) change in place; `tile_px(ids)` gives tiles' pixels at p x p (len(ids), p, p, 3),
    `cell_px` the cells' (rows*cols, p, p, 3), both in sRGB; `views_` the (close, whole) views
    (views.views) of this grid at p. Returns what it did, with J before and after."""
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
    cell_px = np.ascontiguousarray(cell_px, dtype=np.float64)
    p = cell_px.shape[1]
    px = np.empty((known.size, p, p, 3), np.float32)  # (float32: 1M tiles at 8 x 8 is 768 MB)
    for i in range(0, known.size, _SUB_CHUNK):
        px[i:i + _SUB_CHUNK] = tile_px(known[i:i + _SUB_CHUNK])
    bad = bad_feature_rows(px.reshape(known.size, -1))  # features damaged after the index was built
    if bad.any():
        if bad[slot[flat]].any():  # placed by a search that still knew them: J is not defined (the
            # matcher then matches again without them)
            return {"weight": weight, "passes": 0, "moves": 0, "stopped": "non-finite features",
                    "objective_before": None, "objective_after": None,
                    "seconds": round(time.perf_counter() - t_start, 4)}
        px[bad] = 0.0
        cand_dist = np.where((cand_ids >= 0) & bad[slot[np.maximum(cand_ids, 0)]], np.inf, cand_dist)
    close, whole = views_
    errs = view_errors(px[slot[flat]], cell_px, rows, cols, views_)  # kept up to date by the pass
    before = _j(errs, views_, weight)
    stats = {"weight": weight, "passes": 0, "moves": 0, "stopped": "off", "objective_before": before,
             "objective_after": before, "canvas_px": int(p)}
    if opts.refine_passes == 0:
        stats["seconds"] = round(time.perf_counter() - t_start, 4)
        return stats
    h = max(int((v.wy[:, 1] - v.wy[:, 0]).max()) for v in views_)
    w = max(int((v.wx[:, 1] - v.wx[:, 0]).max()) for v in views_)
    bufs = np.zeros((10, h, w, 3), np.float64)
    tmp = np.zeros((p, w, 3), np.float64)
    gtmp = np.zeros((h, p, 3), np.float64)
    qmaps = _middle_maps(views_, weight, rows, cols)
    qt = _quadratic(px, qmaps)
    dirty = np.ones(rows * cols, np.bool_)
    reach = max(int(opts.min_distance), _reach(views_))
    uses = np.bincount(flat, minlength=slot.size).astype(np.int64)
    order = visit_order(rows, cols, opts.seed)
    moves = np.zeros(4, np.int64)  # reassignments, trades, cells visited, candidates priced exactly
    args = (flat, tile_ids, c, uses, np.ascontiguousarray(cand_ids, np.int64),
            np.ascontiguousarray(cand_dist, np.float32), slot, px, weight, int(opts.min_distance),
            int(opts.max_uses), float(opts.usage_penalty), moves,
            errs[0], close.by, close.bx, close.wy, close.wx, 1.0 / close.size,
            errs[1], whole.by, whole.bx, whole.wy, whole.wx, 1.0 / whole.size, bufs, tmp, qt, qmaps, gtmp,
            np.zeros(cand_ids.shape[1] if _EXHAUSTIVE else _EXACT, np.int64), dirty, reach, np.zeros((p, p, 3)),
            np.zeros(p * p * 3, np.float32), np.zeros(cand_ids.shape[1]), px.reshape(known.size, p * p * 3), _EXHAUSTIVE,
            np.zeros(cand_ids.shape[1], np.int64), np.zeros((p, p, 3)), cand_ids.shape[1] if _EXHAUSTIVE else _K)
    run_passes(_sweep, order, args, SimpleNamespace(refine_passes=min(int(opts.refine_passes), _PASSES),
                                                    refine_seconds=opts.refine_seconds), stats)
    stats["moves"], stats["swapped"] = int(moves[0] + moves[1]), int(moves[1])
    stats["visited"], stats["priced"] = int(moves[2]), int(moves[3])
    stats["objective_after"] = objective(px[slot[flat]], cell_px, rows, cols, views_, weight)
    stats["seconds"] = round(time.perf_counter() - t_start, 4)
    return stats
