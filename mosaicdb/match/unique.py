"""--unique: every cell a different tile, near the least total cost, at 65,536 cells.

Why not one exact matching on the candidate graph: the k nearest tiles of neighbouring cells
overlap so much (10,880 cells of a photo share ~10,500 distinct tiles among their 32 nearest)
that the graph has no one-to-one assignment, and widening every cell's list until it has one
costs minutes and gigabytes.

What happens instead (kernels in mosaicdb.match.auction):
1. Relaxation: an auction with eps-scaling on the candidate graph, where each cell may also take
   an "outside" option priced at its k-th candidate's distance (every tile beyond its list is
   at least that far). Its prices give a lower bound on any one-to-one assignment (LP duality),
   much tighter than the free nearest-neighbour cost; cells that took the outside option are
   open.
2. Completion: open cells take their nearest *unused* tiles (`widen(cells, k, exclude=used)`),
   cheapest pairs first, in chunks with the used set refreshed between them; leftovers ask
   again. Always ends with every cell placed (tiles >= cells). The nearest tiles shown join
   the graph as arcs.
3. Improvement: every cell is shown its nearest unused tiles, the outside option is withdrawn,
   and the auction resumes from its prices on the grown graph, which holds the completed
   assignment: cells that can now do better bid again, and the tiles they leave are offered
   back. The round has a bid budget: a price war past it (or a higher total) restores the
   assignment from before it. (A second round gained 0.04 % at 10,880 cells and 0.01 % at
   43,520 for a third more time: IMPROVE_ROUNDS is 1.)

Memory: the arcs, about cells x (k + FETCH x the times a cell asked for unused tiles).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..errors import MatchError
from . import auction as au

log = logging.getLogger(__name__)

# Unused tiles per cell and request (completion doubles it when a round places under a tenth).
FETCH = 32
# Improvement rounds, and the gain (fraction of the total) below which no other follows.
IMPROVE_ROUNDS, MIN_GAIN = 1, 0.002
# Completion: open cells per search (the used set is refreshed between searches) and unused
# tiles shown to each. Deep lists let a chunk of similar cells, which all want the same few
# unused tiles, place most of its cells at once.
COMPLETE_CHUNK, COMPLETE_K = 1024, 128
# The nearest of those that join the graph as arcs (alternatives for the auction).
COMPLETE_ARCS = 32
# eps-scaling: the first eps is this fraction of the mean k-th candidate distance, each phase
# divides it by EPS_STEP, the last is EPS_FINAL of it (cells x eps: 0.1 % of a typical total).
EPS_FIRST, EPS_STEP, EPS_FINAL = 0.25, 6.0, 1e-3
# Bids per cell one forward auction may spend before it counts as a price war (relaxation then
# leaves the unsettled cells open, improvement restores its starting point), and reverse moves
# per cell before the tiles still waiting simply drop to price 0.
BID_BUDGET, MOVE_BUDGET = 256, 4
# Forward/reverse passes that restore eps-slackness after a reverse auction cut short.
SETTLE_PASSES = 8
# Candidates per widen call: bounds memory when thousands of cells ask at once.
WIDEN_BUDGET = 1 << 21


@dataclass
class UniqueResult:
    tile: np.ndarray        # (n,) int64
    cost: np.ndarray        # (n,) float32
    report: dict


def solve_unique(cand_ids: np.ndarray, cand_dist: np.ndarray, n_tiles: int, widen, *,
                 seed: int = 0, progress: bool = False) -> UniqueResult:
    """One different tile per cell (rows of `cand_ids`, sorted nearest first, -1 padded).

    `widen(cells, k, exclude)` returns the k nearest tiles of `cells` that are not in `exclude`
    (sorted ids), as (ids, distances) of shape (len(cells), k), -1/inf padded."""
    t0 = time.perf_counter()
    n = cand_ids.shape[0]
    s = _State.from_candidates(cand_ids, cand_dist, n_tiles)
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    steps = []
    with _bar(progress, n) as bar:
        s.scale(order)
        s.choice[s.choice == au.FREE] = au.OPEN  # left by a price war: complete them
        lower = s.lower_bounds()
        n_open = int((s.choice == au.OPEN).sum())
        bar.update(s.settled())
        t1 = time.perf_counter()
        s.outside[:] = s.big
        completed, searches = s.complete(widen, order)
        bar.update(n - bar.n)
        t2 = time.perf_counter()
        steps.append(("completion", s.total()))
        # Every cell gets unused tiles as arcs before the auction resumes: a cell evicted from
        # its tile must have somewhere to go, or the bidding turns into a price war.
        # (Nothing to show when the lists hold the whole pool or every tile is in use: then
        # one round resumes the auction on the arcs it has.)
        bar.set_postfix_str("improving")
        more = n < n_tiles and cand_ids.shape[1] < n_tiles
        for r in range(IMPROVE_ROUNDS if more else 1):
            before = s.total()
            if more:
                s.show_unused(np.arange(n, dtype=np.int64), widen)
            steps.append((f"round {r + 1}", s.attempt(s.resume)))
            if steps[-1][1] is None or steps[-1][1] > (1 - MIN_GAIN) * before:
                break  # another round would find little more
        t3 = time.perf_counter()
    tile, cost = s.result()
    first_k = (cand_ids == tile[:, None]).any(axis=1)
    total = float(cost.astype(np.float64).sum())
    bound = max(lower.values())
    report = {
        "algorithm": "auction: relaxation, nearest-unused completion, improvement",
        "total_cost": round(total, 4),
        "lower_bound": round(bound, 4),
        "lower_bounds": {key: round(v, 4) for key, v in lower.items()},
        "gap_to_bound": round(total / bound - 1, 6) if bound > 0 else None,
        "fallback_cells": int(n - first_k.sum()),
        "open_after_relaxation": n_open,
        "completed_cells": completed,
        "completion_searches": searches,
        "total_cost_per_step": [[name, None if c is None else round(c, 4)] for name, c in steps],
        "arcs": int(s.tile.size), "bids": int(s.bids), "eps_final": s.eps_final,
        "seconds": {"relaxation": round(t1 - t0, 3), "completion": round(t2 - t1, 3),
                    "improvement": round(t3 - t2, 3)},
    }
    return UniqueResult(tile, cost.astype(np.float32), report)


class _State:
    """The graph (CSR), prices, owners and choices of one unique assignment."""

    def __init__(self, indptr, tile, cost, prefix, bound, id_space):
        n = indptr.size - 1
        self.indptr, self.tile, self.cost = indptr, tile, cost
        self.prefix, self.bound = prefix, bound
        self.price = np.zeros(id_space, np.float64)
        self.owner = np.full(id_space, -1, np.int64)
        self.choice = np.full(n, au.FREE, np.int64)
        self.paid = np.zeros(n, np.float64)
        self.queue = np.empty(max(n, 1), np.int64)
        finite = cost[np.isfinite(cost)]
        self.big = 1e3 * (float(finite.max()) + 1.0) if finite.size else 1e3
        self.outside = np.where(np.isfinite(bound), bound, self.big)
        known = bound[np.isfinite(bound)]
        self.typical = max(float(known.mean()) if known.size else 1.0, 1e-6)
        self.eps_final = EPS_FINAL * self.typical
        self.free_nn = 0.0
        self.bids = 0
        self.budget = BID_BUDGET * max(n, 1)
        self.move_budget = MOVE_BUDGET * max(n, 1)

    @classmethod
    def from_candidates(cls, cand_ids, cand_dist, n_tiles):
        n, k = cand_ids.shape
        valid = (cand_ids >= 0) & np.isfinite(cand_dist)
        prefix = valid.sum(axis=1).astype(np.int64)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(prefix, out=indptr[1:])
        tile = cand_ids[valid].astype(np.int64)
        cost = cand_dist[valid].astype(np.float64)
        last = np.zeros(n)
        has = prefix > 0
        last[has] = cost[indptr[1:][has] - 1]
        # A full row's last distance bounds every tile it does not list. Beyond a short row,
        # or a row as long as the pool, nothing is known (or there is nothing).
        bound = np.where((prefix == k) & (k < n_tiles), last, np.inf)
        s = cls(indptr, tile, cost, prefix, bound, int(tile.max()) + 1 if tile.size else 1)
        s.n_tiles = n_tiles
        s.free_nn = float(cost[indptr[:-1][has]].sum())
        return s

    # -- auction ----------------------------------------------------------------------------
    def eps_schedule(self) -> list[float]:
        eps, out = EPS_FIRST * self.typical, []
        while eps > self.eps_final:
            out.append(eps)
            eps /= EPS_STEP
        return out + [self.eps_final]

    def scale(self, order: np.ndarray) -> bool:
        """eps-scaling: each phase frees every cell and keeps the prices. False on a price war
        (cells left FREE)."""
        for eps in self.eps_schedule():
            self.owner[:] = -1
            self.choice[:] = au.FREE
            self.queue[:order.size] = order
            if not self._forward(order.size, eps) or not self._settle(eps):
                return False
        return True

    def resume(self) -> bool:
        """Continue at the final eps after arcs were added: every cell that can now do better
        than its tile by 2 eps bids again; the tiles they leave are offered back."""
        nq = au.requeue_slack(self.indptr, self.tile, self.cost, self.outside, self.price,
                              self.owner, self.choice, self.eps_final, self.queue)
        log.debug("unique: %d cells bid again", nq)
        return self._forward(nq, self.eps_final) and self._settle(self.eps_final)

    def attempt(self, step) -> float | None:
        """Run an auction step; keep it if it completes within the budget and does not cost
        more, else restore the assignment from before. Returns the total cost kept."""
        before = (self.choice.copy(), self.owner.copy(), self.price.copy(), self.paid.copy())
        old = self.total()
        if step() and (self.choice >= 0).all():
            new = self.total()
            if new <= old:
                return new
            log.debug("unique: step raised the cost from %.1f to %.1f, undone", old, new)
        else:
            log.debug("unique: price war past the bid budget, step undone")
        self.choice, self.owner, self.price, self.paid = before
        return None

    def _forward(self, n_queue: int, eps: float) -> bool:
        t0 = time.perf_counter()
        b = au.run_auction(self.indptr, self.tile, self.cost, self.outside, self.price, self.owner,
                           self.choice, self.paid, self.queue, n_queue, eps, self.budget)
        self.bids += b
        log.debug("unique: forward eps %.3g, %d cells, %d bids, %.2f s", eps, n_queue, b, time.perf_counter() - t0)
        return b < self.budget

    def _settle(self, eps: float) -> bool:
        """Reverse auction until every unheld tile has price 0. A reverse auction cut short by
        its move budget drops the waiting tiles' prices to 0, which can leave cells more than eps
        from their best option (no longer eps-optimal): those bid again, and the reverse runs
        again, for a few passes. False on a price war."""
        for _ in range(SETTLE_PASSES):
            if self._reverse(eps):
                return True
            nq = au.requeue_slack(self.indptr, self.tile, self.cost, self.outside, self.price,
                                  self.owner, self.choice, eps, self.queue)
            if nq == 0:
                return True
            if not self._forward(nq, eps):
                return False
        self._reverse(eps)
        return True

    def _reverse(self, eps: float) -> bool:
        t0 = time.perf_counter()
        rptr, rcell, rarc = au.reverse_arcs(self.indptr, self.tile, self.price.size)
        m = au.run_reverse(rptr, rcell, rarc, self.cost, self.outside, self.price, self.owner,
                           self.choice, self.paid, eps, self.move_budget)
        self.bids += m
        log.debug("unique: reverse eps %.3g, %d moves, %.2f s", eps, m, time.perf_counter() - t0)
        return m < self.move_budget

    def settled(self) -> int:
        return int((self.choice >= 0).sum())

    # -- new arcs ---------------------------------------------------------------------------
    def show_unused(self, cells: np.ndarray, widen) -> None:
        """Add each cell's FETCH nearest unused tiles as arcs."""
        used = self.used()
        for chunk in _chunks(cells, FETCH):
            ids, dist = _call_widen(widen, chunk, FETCH, used)
            self._add(chunk, ids, dist)

    def used(self) -> np.ndarray:
        return np.flatnonzero(self.owner >= 0).astype(np.int64)

    def _grow(self, top: int) -> None:
        if top > self.price.size:
            extra = top - self.price.size
            self.price = np.concatenate([self.price, np.zeros(extra)])
            self.owner = np.concatenate([self.owner, np.full(extra, -1, np.int64)])

    def _add(self, cells, ids, dist) -> None:
        self._grow(int(ids.max()) + 1 if ids.size else 0)
        self.indptr, self.tile, self.cost = au.add_arcs(self.indptr, self.tile, self.cost, cells,
                                                        ids, dist.astype(np.float64))

    def complete(self, widen, order: np.ndarray) -> tuple[int, int]:
        """Open cells take unused tiles, cheapest pairs first, in chunks of COMPLETE_CHUNK
        cells in seeded order, each shown its COMPLETE_K nearest unused tiles with the used
        set refreshed between chunks. Leftovers ask again in the next round, twice as deep
        when a round placed under a tenth of them. Always ends: tiles >= cells, and a chunk
        places at least its cheapest pair. Returns (cells completed, searches)."""
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        pending = np.flatnonzero(self.choice < 0)
        pending = pending[np.argsort(rank[pending])]
        n_open, k, searches = int(pending.size), COMPLETE_K, 0
        while pending.size:
            left = []
            for chunk in _chunks(pending, k, COMPLETE_CHUNK):
                ids, dist = _call_widen(widen, chunk, k, self.used())
                searches += 1
                self._grow(int(ids.max()) + 1 if ids.size else 0)  # before any kernel sees the ids
                self._add(chunk, ids[:, :COMPLETE_ARCS], dist[:, :COMPLETE_ARCS])
                placed = np.full(self.choice.size, -1, np.int64)
                placed_cost = np.zeros(self.choice.size)
                n_placed = au.greedy_pairs(np.repeat(chunk, ids.shape[1]), ids.ravel(),
                                           dist.ravel().astype(np.float64), self.choice >= 0,
                                           self.owner >= 0, placed, placed_cost)
                if n_placed == 0:
                    raise MatchError(f"no unused tile found for {chunk.size} cells although the pool "
                                     f"is large enough: check the tile index (mosaic db check)")
                got = chunk[placed[chunk] >= 0]
                self._adopt(got, placed[got], placed_cost[got])
                left.append(chunk[placed[chunk] < 0])
            done = pending.size
            pending = np.concatenate(left)
            log.debug("unique: completion round, %d open, %d left, k %d", done, pending.size, k)
            # Deeper only when similar cells crowd the same few unused tiles: deep searches
            # cost far more than another round at the same depth.
            if pending.size > 0.9 * done:
                k = min(2 * k, max(FETCH, self.n_tiles))
        return n_open, searches

    def _adopt(self, cells, tiles, costs) -> None:
        """Placed cells own their tile and join the auction with their pair as an arc."""
        self._add(cells, tiles[:, None], costs[:, None])
        self.choice[cells] = tiles
        self.owner[tiles] = cells
        self.price[tiles] = 0.0
        self.paid[cells] = costs

    # -- results ----------------------------------------------------------------------------
    def total(self) -> float:
        return float(np.nansum(self.result()[1]))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.choice.copy(), au.chosen_cost(self.indptr, self.tile, self.cost, self.choice)

    def lower_bounds(self) -> dict:
        """Free nearest-neighbour cost, and the dual bound from the current prices (also with
        the prices of unheld tiles zeroed: any prices >= 0 give a valid bound)."""
        out = {"free_nearest": self.free_nn}
        if np.isfinite(self.bound).all():
            zeroed = np.where(self.owner >= 0, self.price, 0.0)
            out["dual"] = max(au.dual_bound(self.indptr, self.tile, self.cost, self.prefix, self.bound, p)
                              for p in (self.price, zeroed))
        return out


def _chunks(cells: np.ndarray, k: int, cap: int | None = None):
    step = max(1, WIDEN_BUDGET // max(k, 1))
    if cap:
        step = min(step, cap)
    for start in range(0, cells.size, step):
        yield cells[start:start + step]


def _call_widen(widen, cells: np.ndarray, k: int, exclude: np.ndarray):
    ids, dist = widen(cells, k, exclude)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    dist = np.ascontiguousarray(dist, dtype=np.float32)
    if ids.ndim != 2 or ids.shape[0] != cells.size or dist.shape != ids.shape:
        raise ValueError(f"widen returned {ids.shape} ids and {dist.shape} distances for {cells.size} cells")
    return ids, dist


def _bar(enabled: bool, total: int):
    from ..progress import progress_bar
    return progress_bar(enabled, total, "unique", unit="cell", leave=False)
