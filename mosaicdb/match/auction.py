"""numba kernels of the unique assignment: a forward auction on a sparse cell -> tile graph.

Arcs live in CSR form (`indptr`, `tile`, `cost`, one segment per cell). Every cell also has an
`outside` option: the price of the tiles it has not been shown yet. The auction is Bertsekas's
forward auction for minimum cost, Gauss-Seidel (one bidder at a time, FIFO): an unassigned cell
takes the tile j minimising cost + price[j], raising price[j] by the margin over its second
choice plus eps, and evicts the previous owner; a cell whose best choice is the outside option
stays open. With eps-complementary slackness the result is within cells * eps of the optimum
of the graph (plus the prices left on tiles nobody holds, which the caller zeroes).

State arrays: price (float64) and owner (int64, -1 = free) per tile id; choice (int64) per cell:
a tile id, FREE (-1, waiting to bid) or OPEN (-2, prefers the outside option).
"""
from __future__ import annotations

import numba
import numpy as np

FREE = -1
OPEN = -2


@numba.njit(cache=True, nogil=True)
def ring_push(queue, head, count, n, value):
    """Append `value` to the ring buffer queue[:n] holding `count` items from `head`; returns the new count."""
    tail = head + count
    if tail >= n:
        tail -= n
    queue[tail] = value
    return count + 1


@numba.njit(cache=True, nogil=True)
def run_auction(indptr, tile, cost, outside, price, owner, choice, paid, queue, n_queue, eps, max_bids):
    """Let the first `n_queue` cells of `queue` (all with choice FREE) bid until none is FREE,
    or until `max_bids` bids (a price war; then some cells are left FREE). `paid[i]` becomes the
    cost of the arc cell i won. `queue` must have room for every cell (a ring buffer).
    Returns the bids made."""
    n = choice.shape[0]
    head = 0
    count = n_queue
    bids = 0
    while count > 0 and bids < max_bids:
        i = queue[head]
        head += 1
        if head == n:
            head = 0
        count -= 1
        best = np.inf
        second = np.inf
        j1 = -1
        c1 = 0.0
        for a in range(indptr[i], indptr[i + 1]):
            t = tile[a]
            v = cost[a] + price[t]
            if v < best:
                if t != j1:
                    second = best
                best = v
                j1 = t
                c1 = cost[a]
            elif v < second and t != j1:
                second = v
        # A tile as good as the outside option wins the tie: no search for nothing better.
        if j1 < 0 or best > outside[i]:
            choice[i] = OPEN
            continue
        if outside[i] < second:
            second = outside[i]
        # `second` is finite: the outside option is.
        price[j1] += (second - best) + eps
        prev = owner[j1]
        owner[j1] = i
        choice[i] = j1
        paid[i] = c1
        bids += 1
        if prev >= 0:
            choice[prev] = FREE
            count = ring_push(queue, head, count, n, prev)
    return bids


@numba.njit(cache=True, nogil=True)
def reverse_arcs(indptr, tile, n_tiles):
    """The graph seen from the tiles: (rptr, cell, arc) with the arcs of tile j at rptr[j]:rptr[j+1]."""
    rptr = np.zeros(n_tiles + 1, np.int64)
    for a in range(tile.shape[0]):
        rptr[tile[a] + 1] += 1
    for j in range(n_tiles):
        rptr[j + 1] += rptr[j]
    fill = rptr[:-1].copy()
    cell = np.empty(tile.shape[0], np.int64)
    arc = np.empty(tile.shape[0], np.int64)
    for i in range(indptr.shape[0] - 1):
        for a in range(indptr[i], indptr[i + 1]):
            j = tile[a]
            cell[fill[j]] = i
            arc[fill[j]] = a
            fill[j] += 1
    return rptr, cell, arc


@numba.njit(cache=True, nogil=True)
def run_reverse(rptr, rcell, rarc, cost, outside, price, owner, choice, paid, eps, max_moves):
    """Reverse auction for the tiles nobody holds that still carry a price (left by an earlier
    eps phase or by a cell that moved): each offers itself to the cell that gains most from it,
    at the price that leaves every other cell within eps, or drops to price 0 when no cell
    gains eps. The tile a cell leaves takes its turn next. Afterwards every unheld tile has
    price 0, which makes the forward auction's eps-slackness an optimality certificate.
    After `max_moves` the tiles still waiting just drop to price 0. Returns the moves made."""
    n_tiles = price.shape[0]
    queue = np.empty(n_tiles, np.int64)
    count = 0
    for j in range(n_tiles):
        if owner[j] < 0 and price[j] > 0.0:
            queue[count] = j
            count += 1
    head = 0
    moves = 0
    while count > 0:
        j = queue[head]
        if moves >= max_moves:
            price[j] = 0.0
            head += 1
            if head == n_tiles:
                head = 0
            count -= 1
            continue
        head += 1
        if head == n_tiles:
            head = 0
        count -= 1
        best = 0.0
        second = 0.0
        who = -1
        cj = 0.0
        for r in range(rptr[j], rptr[j + 1]):
            i = rcell[r]
            c = choice[i]
            if c == j:
                continue
            if c >= 0:
                value = paid[i] + price[c]
            elif c == OPEN:
                value = outside[i]
            else:
                continue
            gain = value - cost[rarc[r]]
            if gain > best:
                second = best
                best = gain
                who = i
                cj = cost[rarc[r]]
            elif gain > second:
                second = gain
        if who < 0 or best < eps:
            price[j] = 0.0
            continue
        price[j] = max(0.0, second - eps)
        old = choice[who]
        owner[j] = who
        choice[who] = j
        paid[who] = cj
        moves += 1
        if old >= 0:
            owner[old] = -1
            if price[old] > 0.0:
                count = ring_push(queue, head, count, n_tiles, old)
    return moves


@numba.njit(cache=True, nogil=True)
def requeue_slack(indptr, tile, cost, outside, price, owner, choice, eps, queue):
    """Free every cell whose tile is no longer within 2 eps of its best option (after new arcs
    or lowered prices), and the OPEN cells that now have a better tile; write them to `queue`
    and return how many."""
    n = choice.shape[0]
    nq = 0
    for i in range(n):
        c = choice[i]
        if c == FREE:
            queue[nq] = i
            nq += 1
            continue
        best = outside[i]
        mine = np.inf
        for a in range(indptr[i], indptr[i + 1]):
            t = tile[a]
            v = cost[a] + price[t]
            if v < best:
                best = v
            if t == c and v < mine:
                mine = v
        if c == OPEN:
            if best <= outside[i]:
                choice[i] = FREE
                queue[nq] = i
                nq += 1
        elif mine > best + 2.0 * eps:  # a bid leaves exactly eps: 2 eps keeps rounding out
            owner[c] = -1
            choice[i] = FREE
            queue[nq] = i
            nq += 1
    return nq


def add_arcs(indptr, tile, cost, cells, new_tile, new_cost):
    """A new CSR graph: the old one plus, for each cells[r], the row new_tile[r] (ids < 0
    skipped). A tile may then appear twice in a segment: every kernel here allows for that."""
    width = new_tile.shape[1]
    return add_pairs(indptr, tile, cost, np.repeat(np.asarray(cells, np.int64), width),
                     np.ascontiguousarray(new_tile).reshape(-1), np.ascontiguousarray(new_cost).reshape(-1))


@numba.njit(cache=True, nogil=True)
def chosen_cost(indptr, tile, cost, choice):
    """Cost of each cell's chosen tile (nan for cells without one)."""
    n = choice.shape[0]
    out = np.full(n, np.nan)
    for i in range(n):
        c = choice[i]
        if c < 0:
            continue
        for a in range(indptr[i], indptr[i + 1]):
            if tile[a] == c and not (out[i] <= cost[a]):
                out[i] = cost[a]
    return out


@numba.njit(cache=True, nogil=True)
def dual_bound(indptr, tile, cost, prefix, bound, price):
    """A lower bound on any one-to-one assignment's total cost (LP duality): with any prices
    p >= 0, sum_i min(bound_i, min over the cell's first prefix_i arcs of cost + p) - sum_j p_j.
    Valid when those arcs are the cell's nearest tiles and every other tile is at least
    bound_i away."""
    total = 0.0
    for i in range(indptr.shape[0] - 1):
        u = bound[i]
        for a in range(indptr[i], indptr[i] + prefix[i]):
            v = cost[a] + price[tile[a]]
            if v < u:
                u = v
        total += u
    for j in range(price.shape[0]):
        total -= price[j]
    return total


@numba.njit(cache=True, nogil=True)
def greedy_pairs(cell, tile, cost, cell_placed, taken, placed, placed_cost):
    """Cheapest pairs first: pair (cell[a], tile[a]) when neither is placed yet; placed[c] =
    tile, placed_cost[c] = its cost, and `taken` marks the tile. Returns how many were placed."""
    order = np.argsort(cost, kind="mergesort")
    count = 0
    for a in order:
        c = cell[a]
        t = tile[a]
        if c < 0 or t < 0:
            continue
        if c >= cell_placed.shape[0] or t >= taken.shape[0]:
            raise IndexError("greedy_pairs: a cell or tile id beyond its array")
        if cell_placed[c] or taken[t]:
            continue
        cell_placed[c] = True
        taken[t] = True
        placed[c] = t
        placed_cost[c] = cost[a]
        count += 1
    return count


@numba.njit(cache=True, nogil=True)
def add_pairs(indptr, tile, cost, new_cell, new_tile, new_cost):
    """A new CSR graph: the old one plus the arcs (new_cell[a], new_tile[a], new_cost[a]);
    pairs with a negative cell or tile are skipped."""
    n = indptr.shape[0] - 1
    extra = np.zeros(n, np.int64)
    for a in range(new_cell.shape[0]):
        if new_cell[a] >= 0 and new_tile[a] >= 0:
            extra[new_cell[a]] += 1
    out_ptr = np.empty(n + 1, np.int64)
    out_ptr[0] = 0
    for i in range(n):
        out_ptr[i + 1] = out_ptr[i] + (indptr[i + 1] - indptr[i]) + extra[i]
    out_tile = np.empty(out_ptr[n], tile.dtype)
    out_cost = np.empty(out_ptr[n], cost.dtype)
    fill = np.empty(n, np.int64)
    for i in range(n):
        s = out_ptr[i]
        for a in range(indptr[i], indptr[i + 1]):
            out_tile[s] = tile[a]
            out_cost[s] = cost[a]
            s += 1
        fill[i] = s
    for a in range(new_cell.shape[0]):
        i = new_cell[a]
        if i >= 0 and new_tile[a] >= 0:
            out_tile[fill[i]] = new_tile[a]
            out_cost[fill[i]] = new_cost[a]
            fill[i] += 1
    return out_ptr, out_tile, out_cost
