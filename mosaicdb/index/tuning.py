"""Choosing IVF lists and measuring recall: shared by the index kinds (faiss_index, ivfpq)."""
from __future__ import annotations

import math

import numpy as np


def default_nlist(n: int) -> int:
    want = 4 * math.sqrt(max(n, 1))
    return int(min(16384, max(64, 2 ** round(math.log2(want)))))


def midpoint_queries(vectors: np.ndarray, m: int, rng) -> np.ndarray:
    """Queries for tuning nprobe: midpoints of random pairs of pool vectors. They lie inside the
    data's distribution but on no pool vector, like target cells. (Pool vectors themselves, or
    leave-one-out, are found trivially when the pool holds near-duplicates; on CIFAR features
    and on a 10x-replicated pool, midpoint recall tracks held-out-tile recall within 0.01.)"""
    pairs = rng.integers(0, len(vectors), size=(min(m, len(vectors)), 2))
    return np.ascontiguousarray(0.5 * (vectors[pairs[:, 0]] + vectors[pairs[:, 1]]), dtype=np.float32)


def recall_at_1(found_d: np.ndarray, exact_d: np.ndarray) -> float:
    """Share of queries whose first result is as near as the exact nearest vector (distances,
    not ids, so exact ties and duplicate vectors count as found). In float64: FAISS reports an
    unfound neighbour (a query or pool holding NaN) as float32's largest value."""
    return float((found_d <= np.asarray(exact_d, np.float64) * (1 + 1e-5) + 1e-6).mean())
