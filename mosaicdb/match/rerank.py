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

from ..index.refine import exact_distances, rerank  # noqa: F401  (the kernels live with the index)

RERANK_FACTOR = 1  # candidates searched per candidate kept, when the index is approximate


def index_is_approximate(index) -> bool:
    """Whether the index's distances differ from the full vectors' (a PCA in front of it, or
    half-float vectors (ivf16), and no refine step of its own: the IVF-PQ kind returns exact
    distances already)."""
    reduced = int(index.infos.get("pca_dims", 0) or 0) > 0 or index.infos.get("kind") == "ivf16"
    return reduced and not index.refines
