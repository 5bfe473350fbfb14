"""The unique assignment as it was before issue 19 (mosaicdb/match/assign.py at ac04aae), kept
here only as bench_unique's baseline: an exact min-cost matching (scipy's LAPJVsp,
`min_weight_full_bipartite_matching`) on every cell's k nearest tiles, every cell widened x4
until the graph has a one-to-one assignment. Exact on its final graph, so at 10,880 cells it is
the optimum the new algorithm is compared with; it fails or runs for minutes as cells approach
the pool size.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

_EDGE_OFFSET = 1.0          # scipy drops explicit zeros: shift every edge (the optimum is unchanged)
_MAX_UNIQUE_EDGES = 1 << 26  # past this, the baseline gave up with an error
_WIDEN_BUDGET = 1 << 22


class BaselineGaveUp(Exception):
    pass


def assign_unique_baseline(cand_ids: np.ndarray, cand_dist: np.ndarray, n_tiles: int, widen):
    """(tile ids, costs, final k) of the exact matching, or BaselineGaveUp like the old code."""
    n_cells, k = cand_ids.shape
    ids, dist = cand_ids, cand_dist
    while True:
        match = _min_cost_matching(ids, dist)
        if match is not None:
            return match[0], match[1], k
        if k >= n_tiles:
            raise BaselineGaveUp(f"no one-to-one assignment among all {n_tiles} tiles")
        k = min(max(k, 1) * 4, n_tiles)
        if n_cells * k > _MAX_UNIQUE_EDGES:
            raise BaselineGaveUp(f"no one-to-one assignment among the nearest tiles; widening to {k} "
                                 f"candidates per cell is too large")
        cells = np.arange(n_cells, dtype=np.int64)
        step = max(1, _WIDEN_BUDGET // k)
        parts = [widen(cells[s:s + step], k, np.empty(0, np.int64)) for s in range(0, n_cells, step)]
        ids = np.concatenate([np.asarray(p[0], np.int64) for p in parts])
        dist = np.concatenate([np.asarray(p[1], np.float32) for p in parts])


def _min_cost_matching(ids: np.ndarray, dist: np.ndarray):
    """Min-cost matching of every row (cell) to a distinct tile; None when there is none."""
    n, k = ids.shape
    cell = np.repeat(np.arange(n, dtype=np.int64), k)
    ids, dist = ids.ravel(), dist.ravel()
    keep = (ids >= 0) & np.isfinite(dist)
    cell, ids, dist = cell[keep], ids[keep], dist[keep]
    tiles, col = np.unique(ids, return_inverse=True)
    if tiles.size < n:
        return None
    n_cols = tiles.size
    key = cell * n_cols + col.ravel()
    order = np.lexsort((dist, key))
    key, dist = key[order], dist[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, dist = key[first], dist[first]
    per_row = np.bincount(key // n_cols, minlength=n)
    if (per_row == 0).any():
        return None
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_row, out=indptr[1:])
    graph = csr_matrix((dist.astype(np.float64) + _EDGE_OFFSET, key % n_cols, indptr), shape=(n, n_cols))
    try:
        row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    except ValueError:
        return None
    tile = np.empty(n, dtype=np.int64)
    tile[row_ind] = tiles[col_ind]
    cost = np.empty(n, dtype=np.float32)
    cost[row_ind] = dist[np.searchsorted(key, row_ind.astype(np.int64) * n_cols + col_ind)]
    return tile, cost
