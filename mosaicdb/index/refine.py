"""Exact squared distances from queries to the full stored vectors of their candidates, and the
re-rank of candidate lists by them.

Shared by the index (the IVF-PQ kind refines its shortlist with them) and the matcher (which
re-ranks the candidates of a PCA index the same way). The vectors are read by tile id from an
array whose row is the tile id, typically the database's memory-mapped features, so no copy of
them is kept in RAM.
"""
from __future__ import annotations

import numba
import numpy as np


# float32 with fastmath lets numba vectorise the sum: 3x faster than float64 (the gather of
# candidate rows is the cost), relative error ~1e-7 of a distance. No 'nnan'/'ninf' flags: the
# sum of a tile whose features are not finite must be seen as such.
_FAST = {"reassoc", "contract", "arcp", "nsz"}


@numba.njit(fastmath=_FAST, cache=True, inline="always")
def _sq(q, f):
    """The squared distance; inf for a tile whose stored features are NaN or infinite (written
    into features.f32 after its index was built: the index still returns it), so that it is
    never a near tile, as no search of an index built on such rows returns it."""
    s = np.float32(0.0)
    for c in range(q.shape[0]):
        x = q[c] - f[c]
        s += x * x
    return s if s < np.inf else np.float32(np.inf)


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def _exact_sq(feats, queries, ids, out):
    n, k = ids.shape
    rows = feats.shape[0]
    for i in numba.prange(n):
        q = queries[i]
        for j in range(k):
            t = ids[i, j]
            if t < 0:
                continue  # no candidate: keep the index's filler distance
            if t >= rows:
                out[i, j] = np.inf  # an id past the rows (a damaged index file): never a near tile
                continue
            out[i, j] = _sq(q, feats[t])


def exact_distances(feats: np.ndarray, queries: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Squared distances from each query to the full vectors of its candidates `ids` (rows of
    `feats`, row = tile id); entries of -1 keep their value in `dist`, ids past the last row
    get inf."""
    out = np.array(dist, dtype=np.float32, copy=True)
    if ids.size:
        _exact_sq(np.asarray(feats), np.ascontiguousarray(queries, dtype=np.float32),
                  np.ascontiguousarray(ids, dtype=np.int64), out)
    return out


# The same sums, fused with a stable sort of each row: one parallel pass instead of a kernel
# plus numpy's argsort and gathers (bench_match, 65,536 cells: the re-ranks took 0.43 s, 0.25 s
# of it in the kernel).
@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def _rerank_rows(feats, queries, ids, dist, keep, out_d, out_i):
    n, k = ids.shape
    rows = feats.shape[0]
    for i in numba.prange(n):
        q = queries[i]
        e = np.empty(k, np.float32)
        for j in range(k):
            t = ids[i, j]
            if t < 0 or t >= rows:
                e[j] = np.inf  # no candidate, or an id past the rows (a damaged index): last
                continue
            e[j] = _sq(q, feats[t])
        order = np.argsort(e, kind="mergesort")  # stable: ties keep the index's order
        for j in range(keep):
            o = order[j]
            t = ids[i, o]
            out_i[i, j] = t
            out_d[i, j] = dist[i, o] if t < 0 else e[o]  # a missing candidate keeps its filler


def rerank(feats: np.ndarray, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray,
           keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The `keep` candidates of each row nearest by exact distance, ascending (ties by the
    index's order, so the result is deterministic), with those distances. Missing candidates
    (-1) go last with their distance from `dist`; ids past the last row get inf."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, k = ids.shape
    keep = min(int(keep), k)
    out_d = np.empty((n, keep), np.float32)
    out_i = np.empty((n, keep), np.int64)
    if n and keep:
        _rerank_rows(np.asarray(feats), np.ascontiguousarray(queries, dtype=np.float32), ids,
                     np.ascontiguousarray(dist, dtype=np.float32), keep, out_d, out_i)
    return out_d, out_i
