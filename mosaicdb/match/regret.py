"""Greedy placement in regret order: the cell with the most to lose goes first.

A cell's regret is the cost of its second-best feasible candidate minus that of its best: a
cell whose best tile is far ahead of the rest (or whose only feasible tile is the best)
suffers most if a neighbour takes that tile, so it is placed first. Regrets change as tiles
are placed, so they are kept up to date: when a tile goes into a cell, the free cells within
--min-distance that counted on it are re-ranked at once, and every cell is re-checked when it
reaches the top of the queue (which catches --max-uses and --usage-penalty changes, which can
touch any cell), and goes back into the queue if its regret dropped. Ties follow a seeded
random rank, so the order (and the mosaic) is a function of the seed.

Feasibility is exactly that of the random-order greedy pass (assign._greedy_pass): under
--max-uses, not within --min-distance of another copy, cost = distance + penalty * uses.
"""
from __future__ import annotations

import numba
import numpy as np

_INF = np.inf


@numba.njit(cache=True, nogil=True)
def _clash(grid, r, c, radius, t):
    """Whether tile t is placed within Chebyshev distance `radius` of (r, c)."""
    rows, cols = grid.shape
    for rr in range(max(r - radius, 0), min(r + radius + 1, rows)):
        for cc in range(max(c - radius, 0), min(c + radius + 1, cols)):
            if grid[rr, cc] == t:
                return True
    return False


@numba.njit(cache=True, nogil=True)
def best_two(cell, row, ids, dist, grid, uses, radius, max_uses, penalty):
    """(best tile, its distance, best total cost, second-best total cost, second-best tile)
    among the feasible candidates of a cell; tiles -1 and costs inf where there are none."""
    cols = grid.shape[1]
    r = cell // cols
    c = cell - r * cols
    best, best_d, runner = -1, np.float32(0.0), -1
    c1, c2 = _INF, _INF
    for j in range(ids.shape[1]):
        t = ids[row, j]
        if t < 0:
            continue
        d = dist[row, j]
        if d > c2:  # rows are sorted and the penalty only adds
            break
        if max_uses > 0 and uses[t] >= max_uses:
            continue
        total = np.float64(d) + penalty * uses[t]
        if total >= c2:
            continue
        if radius > 0 and _clash(grid, r, c, radius, t):
            continue
        if total < c1 or (total == c1 and t < best):
            c2, runner = c1, best
            c1, best, best_d = total, t, d
        else:
            c2, runner = total, t
    return best, best_d, c1, c2, runner


@numba.njit(cache=True, nogil=True)
def _higher(ka, ra, kb, rb):
    return ka > kb or (ka == kb and ra < rb)


@numba.njit(cache=True, nogil=True)
def _push(hk, hr, hc, hv, n, key, rank, cell, ver):
    i = n
    hk[i], hr[i], hc[i], hv[i] = key, rank, cell, ver
    while i > 0:
        p = (i - 1) // 2
        if not _higher(hk[i], hr[i], hk[p], hr[p]):
            break
        hk[i], hk[p] = hk[p], hk[i]
        hr[i], hr[p] = hr[p], hr[i]
        hc[i], hc[p] = hc[p], hc[i]
        hv[i], hv[p] = hv[p], hv[i]
        i = p
    return n + 1


@numba.njit(cache=True, nogil=True)
def _pop(hk, hr, hc, hv, n):
    """Remove the top entry (returned by the caller reading index 0 first); new size."""
    n -= 1
    hk[0], hr[0], hc[0], hv[0] = hk[n], hr[n], hc[n], hv[n]
    i = 0
    while True:
        a, b, m = 2 * i + 1, 2 * i + 2, i
        if a < n and _higher(hk[a], hr[a], hk[m], hr[m]):
            m = a
        if b < n and _higher(hk[b], hr[b], hk[m], hr[m]):
            m = b
        if m == i:
            return n
        hk[i], hk[m] = hk[m], hk[i]
        hr[i], hr[m] = hr[m], hr[i]
        hc[i], hc[m] = hc[m], hc[i]
        hv[i], hv[m] = hv[m], hv[i]
        i = m


@numba.njit(cache=True, nogil=True)
def _regret(c1, c2):
    return c2 - c1 if c2 < _INF else 1e300  # a single feasible candidate: place it first


@numba.njit(cache=True, nogil=True)
def regret_pass(ids, dist, grid, uses, cost, rank, radius, max_uses, penalty, failed):
    """Place every cell (row i of ids/dist is cell i) in regret order; cells without a
    feasible candidate are written to `failed`. Returns how many failed."""
    rows, cols = grid.shape
    n = rows * cols
    cap = 4 * n + 16  # every cell is pushed once, plus once per re-rank
    hk = np.empty(cap, np.float64)
    hr = np.empty(cap, np.int64)
    hc = np.empty(cap, np.int64)
    hv = np.empty(cap, np.int64)
    ver = np.zeros(n, np.int64)
    # the two tiles each free cell was last ranked by: placing either nearby changes its regret
    first = np.full(n, -1, np.int64)
    second = np.full(n, -1, np.int64)
    size = 0
    for cell in range(n):
        t, d, c1, c2, t2 = best_two(cell, cell, ids, dist, grid, uses, radius, max_uses, penalty)
        first[cell], second[cell] = t, t2
        size = _push(hk, hr, hc, hv, size, _regret(c1, c2), rank[cell], cell, 0)
    n_failed = 0
    while size > 0:
        key, cell, v = hk[0], hc[0], hv[0]
        size = _pop(hk, hr, hc, hv, size)
        if v != ver[cell]:
            continue  # superseded by a re-rank
        t, d, c1, c2, t2 = best_two(cell, cell, ids, dist, grid, uses, radius, max_uses, penalty)
        if t < 0:
            failed[n_failed] = cell
            n_failed += 1
            ver[cell] = -1
            continue
        k = _regret(c1, c2)
        if k < key and size > 0 and size + 1 < cap and _higher(hk[0], hr[0], k, rank[cell]):
            ver[cell] += 1  # it lost its place: back in the queue with today's regret
            first[cell], second[cell] = t, t2
            size = _push(hk, hr, hc, hv, size, k, rank[cell], cell, ver[cell])
            continue
        r = cell // cols
        c = cell - r * cols
        grid[r, c] = t
        uses[t] += 1
        cost[cell] = d
        ver[cell] = -1
        if radius == 0:
            continue
        # free neighbours that were counting on t lose it now: re-rank them at once
        for rr in range(max(r - radius, 0), min(r + radius + 1, rows)):
            for cc in range(max(c - radius, 0), min(c + radius + 1, cols)):
                other = rr * cols + cc
                if ver[other] < 0 or (first[other] != t and second[other] != t) or size + 1 >= cap:
                    continue
                u1, _, e1, e2, u2 = best_two(other, other, ids, dist, grid, uses, radius, max_uses, penalty)
                ver[other] += 1
                first[other], second[other] = u1, u2
                size = _push(hk, hr, hc, hv, size, _regret(e1, e2), rank[other], other, ver[other])
    return n_failed
