"""The nprobe tuner's queries and measure (index/tuning.py, faiss_index._FirstAsMatched)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from mosaicdb import TileDB  # noqa: E402
from mosaicdb.feature_kinds import KINDS  # noqa: E402
from mosaicdb.index import IndexOptions, build_index  # noqa: E402
from mosaicdb.index.refine import rerank  # noqa: E402
from mosaicdb.index.tuning import (MIDPOINT_QUERIES, SHIFTED_QUERIES, TUNE_SHORTLIST,  # noqa: E402
                                   recall_at_1, shifted_queries)

SPEC = KINDS["rgb-pyramid"]
N = 6000


@pytest.fixture(scope="module")
def pool(cifar_tiles):
    """Real CIFAR tiles (32 px thumbnails, row = tile id) and their rgb-pyramid features."""
    thumbs = cifar_tiles[:N]
    blocks = thumbs.reshape(N, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    return thumbs, SPEC(np.rint(blocks).astype(np.uint8))


def test_shifted_queries_are_seeded_near_copies(pool):
    thumbs, feats = pool
    ids = np.arange(N)
    q = shifted_queries(thumbs, ids, SPEC, 300, np.random.default_rng(4))
    again = shifted_queries(thumbs, ids, SPEC, 300, np.random.default_rng(4))
    other = shifted_queries(thumbs, ids, SPEC, 300, np.random.default_rng(5))
    assert q.shape == (300, SPEC.dim) and q.dtype == np.float32
    np.testing.assert_array_equal(q, again)
    assert not np.array_equal(q, other)
    src = np.sort(np.random.default_rng(4).choice(ids, 300, replace=False))  # the tiles they came from
    d_src = ((q - feats[src]) ** 2).sum(1)
    d_all = ((q[:, None, :] - feats[None, ::20, :]) ** 2).sum(-1)
    assert (d_src > 0).all()  # never the tile itself
    # near their tile: closer to it than to 99 % of the pool for most queries
    assert (d_src[:, None] < d_all).mean(axis=1).mean() > 0.97


def test_shifted_queries_from_larger_thumbnails_and_small_pools(pool):
    thumbs, _ = pool
    big = np.repeat(np.repeat(thumbs[:50], 2, axis=1), 2, axis=2)  # 64 px thumbnails
    q = shifted_queries(big, np.arange(50), SPEC, 200, np.random.default_rng(0))
    assert q.shape == (50, SPEC.dim)  # no more queries than tiles


def first_after_rerank(vi, vectors, q, k):
    d, i = vi.search(q, k, device="cpu")
    return rerank(vectors, q, d, i, 1)[0][:, 0]


def test_tuner_reaches_its_aim_on_shifted_queries(pool):
    """The chosen nprobe is the smallest whose recall@1 (after the exact re-rank, as make
    searches) reaches the aim on the tuning queries, and fresh queries of the same kind reach
    about the same."""
    thumbs, feats = pool
    ids = np.arange(N)
    aim = 0.99
    q = shifted_queries(thumbs, ids, SPEC, 1000, np.random.default_rng(1))
    vi = build_index(feats, ids, IndexOptions(kind="ivf", nlist=64, target_recall=aim), pca_dims=24, queries=q)
    infos = vi.infos
    assert infos["recall_queries"] == SHIFTED_QUERIES and str(TUNE_SHORTLIST) in infos["recall_against"]
    nprobe = infos["params"]["nprobe"]
    assert infos["recall_at_1"] >= aim and infos["tuning"][-1]["nprobe"] == nprobe
    if len(infos["tuning"]) > 1:
        assert infos["tuning"][-2]["recall_at_1"] < aim
    # the same measure, recomputed here: exact PCA-space shortlist re-ranked, against the index's
    pca = faiss.downcast_VectorTransform(vi.index.chain.at(0))
    flat = faiss.IndexFlatL2(24)
    flat.add(pca.apply(feats))
    ed, ei = flat.search(pca.apply(q), TUNE_SHORTLIST)
    exact = rerank(feats, q, ed, ei, 1)[0][:, 0]
    assert recall_at_1(first_after_rerank(vi, feats, q, TUNE_SHORTLIST), exact) == pytest.approx(infos["recall_at_1"])
    fresh = shifted_queries(thumbs, ids, SPEC, 1000, np.random.default_rng(2))
    ed, ei = flat.search(pca.apply(fresh), TUNE_SHORTLIST)
    got = recall_at_1(first_after_rerank(vi, feats, fresh, TUNE_SHORTLIST), rerank(feats, fresh, ed, ei, 1)[0][:, 0])
    assert got >= aim - 0.015, got


def test_tuner_without_queries_uses_midpoints(pool):
    _, feats = pool
    vi = build_index(feats, np.arange(N) * 2 + 1, IndexOptions(kind="ivf", nlist=64), pca_dims=24)
    assert vi.infos["recall_queries"] == MIDPOINT_QUERIES and vi.infos["recall_at_1"] >= 0.99


@pytest.mark.parametrize("pca_dims", [0, 24])
def test_exact_index_measures_full_recall(pool, pca_dims):
    """An index that probes every list finds what exact search finds: recall 1 under the measure
    with and without a PCA (tile ids that are not row positions)."""
    thumbs, feats = pool
    ids = np.arange(N) * 3 + 7
    q = shifted_queries(thumbs, np.arange(N), SPEC, 500, np.random.default_rng(3))
    vi = build_index(feats, ids, IndexOptions(kind="ivf", nlist=16, nprobe=16), pca_dims=pca_dims, queries=q)
    assert vi.infos["recall_at_1"] == 1.0


def test_database_tunes_on_its_thumbnails(cifar_ingest, tmp_path):
    shutil.copytree(cifar_ingest[0], tmp_path / "c.db")
    with TileDB.open(tmp_path / "c.db") as db:
        infos = db.build_index(IndexOptions(kind="ivf", nlist=16))
        on_disk = json.loads((db.index_dir / "index_infos.json").read_text())
    assert infos["recall_queries"] == on_disk["recall_queries"] == SHIFTED_QUERIES
    assert infos["recall_at_1"] >= 0.99 or infos["params"]["nprobe"] == 16
