"""Exact costs for the candidates an index returns.

An index over pyramid features searches them reduced by a PCA (index/faiss_index.py): its
distances leave out what the dropped components hold, and that is most of the fine detail
that decides between close candidates. So the candidates are ranked again by the exact
squared distance between the full stored vectors (`RERANK_FACTOR` times as many can be
searched as are kept; measured on CIFAR-10 10k and 8 photographs, 1x, 2x and 4x gave the
same fidelity figures to 0.01 in every repeat mode, so 1x it is): the cost the feature kind defines, which is what the fidelity metrics
measure (feature_kinds). The same exact distances are given to every later stage (greedy,
refinement, widening), so costs from different searches are always comparable.
"""
from __future__ import annotations

import numba
import numpy as np

RERANK_FACTOR = 1  # candidates searched per candidate kept, when the index is approximate


def index_is_approximate(index) -> bool:
    """Whether the index's distances differ from the full vectors' (a PCA in front of it)."""
    return int(index.infos.get("pca_dims", 0) or 0) > 0


# float32 with fastmath lets numba vectorise the sum: 3x faster than float64 (the gather of
# candidate rows is the cost), relative error ~1e-7 of a distance.
@numba.njit(parallel=True, fastmath=True, cache=True)
def _exact_sq(feats, queries, ids, out):
    n, k = ids.shape
    dim = queries.shape[1]
    for i in numba.prange(n):
        q = queries[i]
        for j in range(k):
            t = ids[i, j]
            if t < 0:
                continue  # no candidate: keep the index's filler distance
            f = feats[t]
            s = np.float32(0.0)
            for c in range(dim):
                x = q[c] - f[c]
                s += x * x
            out[i, j] = s


def exact_distances(feats: np.ndarray, queries: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Squared distances from each query to the full vectors of its candidates `ids` (rows of
    `feats`, row = tile id); entries of -1 keep their value in `dist`."""
    out = np.array(dist, dtype=np.float32, copy=True)
    if ids.size:
        _exact_sq(np.asarray(feats), np.ascontiguousarray(queries, dtype=np.float32),
                  np.ascontiguousarray(ids, dtype=np.int64), out)
    return out


def rerank(feats: np.ndarray, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray,
           keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The `keep` candidates of each row nearest by exact distance, ascending (ties by the
    index's order, so the result is deterministic), with those distances."""
    exact = exact_distances(feats, queries, ids, dist)
    exact[ids < 0] = np.inf  # missing candidates go last
    order = np.argsort(exact, axis=1, kind="stable")[:, :keep]
    d = np.take_along_axis(exact, order, axis=1)
    i = np.take_along_axis(ids, order, axis=1)
    missing = i < 0
    if missing.any():
        d[missing] = np.take_along_axis(dist, order, axis=1)[missing]
    return d, i
