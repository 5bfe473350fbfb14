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
    not ids, so exact ties and duplicate vectors count as found)."""
    return float((found_d <= exact_d * (1 + 1e-5) + 1e-6).mean())


# make's default -k: an index behind a PCA is tuned on the first of this many candidates once
# they are re-ranked by the full vectors, as the matcher uses it
TUNE_SHORTLIST = 32
SHIFTED_QUERIES = "tiles' thumbnails shifted by up to 3/32 of their side and lightly blurred"
MIDPOINT_QUERIES = "midpoints of random pairs of pool vectors"


def shifted_queries(thumbs: np.ndarray, ids: np.ndarray, spec, m: int, rng) -> np.ndarray:
    """Tuning queries made from the pool alone that behave like target cells: the features of m
    random tiles' thumbnails (`thumbs`: (rows, s, s, 3), row = tile id) shifted by up to 3/32 of
    their side in x and y (cropped), blurred (sigma 0.6/32 of the side) and area-resampled to
    the feature's sample size (`spec`, a feature_kinds spec).

    Near-copies of tiles, like a photograph's cells near their best tile. Measured on 50,000
    CIFAR tiles and on the 1M pool (benchmarks/bench_tuner_queries.py), their recall@1 per
    nprobe was within 0.005-0.04 of real photograph cells' (Kodak + wikimedia, 3 grid sizes),
    where midpoints of pool vectors were 0.02-0.18 below it (a doubling of nprobe too many)."""
    import cv2
    size = int(thumbs.shape[1])
    s = spec.samples
    pick = np.sort(rng.choice(ids, min(m, len(ids)), replace=False))
    shifts = rng.integers(-3, 4, size=(len(pick), 2)) * size // 32
    sigma = 0.6 * size / 32
    blocks = np.empty((len(pick), s, s, 3), np.uint8)
    for j, t in enumerate(pick):
        img = np.asarray(thumbs[t])
        dx, dy = shifts[j]
        crop = np.ascontiguousarray(img[max(0, dy):size + min(0, dy), max(0, dx):size + min(0, dx)])
        crop = cv2.GaussianBlur(crop, (0, 0), sigma)
        blocks[j] = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(spec(blocks), dtype=np.float32)
