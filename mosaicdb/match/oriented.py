"""Searching tiles in every orientation a cell may take (`--orient`), with one vector a tile.

A feature kind's vector turns with the tile as a permutation of its entries (feature_kinds:
`orient_permutation`), so the distance from a cell q to tile f turned by o is
|q - f[perm_o]| = |q[inv_o] - f| with inv_o the inverse permutation: each orientation is one
search of the existing index with the cell's permuted vector (the turns of a small grid stacked
into one call). The results are merged into the
k nearest *distinct* tiles of each cell, each at its best orientation's distance, so the
assignment (greedy, regret, refinement, --unique) sees ordinary candidate lists, and repeat
control counts a tile however it is turned. Once tiles are placed, `best_orientations` gives
each cell the exact best turn of its tile from the full stored vectors.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]   # queries -> (squared L2, ids)

_CHUNK = 8192   # cells per step of best_orientations: bounds the gathered feature rows
# Query rows per search call: the turns of a small grid go in one call (FAISS is faster per query
# on big batches, and a widening search builds its index of unused tiles once), a big grid's one
# turn at a time (65,536 cells x 8 turns x 255 floats would be 535 MB).
_STACK_ROWS = 32768


def query_permutations(spec, codes) -> list[np.ndarray]:
    """For each orientation code, the permutation that turns a cell's vector instead of the
    tile's (the inverse of the feature's own)."""
    return [np.argsort(spec.orient_permutation(o)) for o in codes]


def turns_are_none(inverse_perms, queries: np.ndarray) -> bool:
    """Whether the only orientation is the tiles as stored: `search` then sees the queries themselves."""
    return len(inverse_perms) == 1 and np.array_equal(inverse_perms[0], np.arange(queries.shape[1]))


def oriented_search(search: Search, queries: np.ndarray, k: int, inverse_perms) -> tuple[np.ndarray, np.ndarray]:
    """`search` run once per orientation on the permuted queries, merged into each row's k
    nearest distinct tiles (ascending squared distance, -1 / inf padded)."""
    if turns_are_none(inverse_perms, queries):
        return search(queries)
    n = len(queries)
    per_call = max(1, _STACK_ROWS // max(n, 1))
    dists, ids = [], []
    for s in range(0, len(inverse_perms), per_call):
        group = inverse_perms[s:s + per_call]
        d, i = search(np.concatenate([queries[:, inv] for inv in group]).astype(np.float32, copy=False))
        dists += [d[j * n:(j + 1) * n] for j in range(len(group))]
        ids += [i[j * n:(j + 1) * n] for j in range(len(group))]
    return merge_distinct(np.concatenate(dists, 1), np.concatenate(ids, 1), k)


def merge_distinct(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k nearest distinct ids of (dist, ids), each at its smallest distance;
    equal distances by ascending id, so the result does not depend on the search order."""
    dist = np.where(ids < 0, np.inf, np.asarray(dist, np.float32))
    by_id = np.lexsort((dist, ids), axis=1)
    ids = np.take_along_axis(ids, by_id, 1)
    dist = np.take_along_axis(dist, by_id, 1)
    dup = np.zeros(ids.shape, bool)
    dup[:, 1:] = ids[:, 1:] == ids[:, :-1]   # a later (farther) copy of the same tile
    dist[dup] = np.inf
    ids = np.where(dup, -1, ids)
    keep = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, keep, 1), np.take_along_axis(ids, keep, 1)


def best_orientations(feats, queries: np.ndarray, tile_ids: np.ndarray, spec, codes) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's best orientation (from `codes`) of its tile, and that squared distance, from
    the full stored vectors: (orient uint8 (n,), squared distance float32 (n,)). Ties take the
    lowest code (the tile as stored before any turn)."""
    tile_ids = np.asarray(tile_ids, np.int64).ravel()
    perms = [spec.orient_permutation(o) for o in codes]
    best = np.empty(len(tile_ids), np.uint8)
    best_d = np.empty(len(tile_ids), np.float32)
    for s in range(0, len(tile_ids), _CHUNK):
        q = np.asarray(queries[s:s + _CHUNK], np.float32)
        f = np.asarray(feats[tile_ids[s:s + _CHUNK]], np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # a damaged row: inf, and matched again without it
            d = np.stack([np.square(q - f[:, perm]).sum(1) for perm in perms], 1)
        j = np.argmin(d, 1)
        best[s:s + _CHUNK] = np.asarray(codes, np.uint8)[j]
        best_d[s:s + _CHUNK] = d[np.arange(len(j)), j]
    return best, best_d
