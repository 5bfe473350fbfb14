"""The ivf16 index kind (what auto builds past flat_max): half-float IVF lists behind a PCA to at
most 32 dims, re-ranked exactly."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from mosaicdb import TileDB
from mosaicdb.index import IndexOptions, VectorIndex, build_index
from mosaicdb.index.faiss_index import IVF16_PCA_DIMS
from mosaicdb.index.refine import rerank
from mosaicdb.match.rerank import index_is_approximate

D, PCA = 64, 48


def pool(n, seed=0):
    """Clustered vectors whose variance falls off with the dimension, like pyramid features."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(20, 0.05, D).astype(np.float32)
    centres = rng.normal(0, 1, (50, D)).astype(np.float32) * scale
    return (centres[rng.integers(0, 50, n)] + rng.normal(0, 0.3, (n, D)) * scale).astype(np.float32)


def brute(vectors, ids, q, k):
    d = ((q[:, None, :].astype(np.float64) - vectors[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


def matched(vi, vectors_by_id, q, k):
    """What the matcher gets: k from the index, re-ranked by the full vectors (row = tile id)."""
    assert index_is_approximate(vi)
    d, i = vi.search(q, k, device="cpu")
    return rerank(vectors_by_id, q, d, i, k)


@pytest.mark.parametrize("n, pca_dims", [(400, PCA), (400, 0)])
def test_shortlist_covering_the_pool_is_exact(n, pca_dims):
    """With every list probed and k = the pool, the re-ranked candidates are exact search."""
    v = pool(n)
    ids = np.arange(n)
    vi = build_index(v, ids, IndexOptions(kind="ivf16", nlist=8, nprobe=8), pca_dims=pca_dims)
    infos = vi.infos
    assert infos["kind"] == "ivf16"
    assert infos["pca_dims"] == (IVF16_PCA_DIMS if pca_dims else 0) and infos["features_pca_dims"] == pca_dims
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(vi.index)), faiss.IndexIVFScalarQuantizer)
    q = pool(50, seed=1)
    d, i = matched(vi, v, q, n)
    ed, ei = brute(v, ids, q, n)
    np.testing.assert_array_equal(i[:, :10], ei[:, :10])
    np.testing.assert_allclose(d, ed, rtol=1e-4)


def test_recall_and_tuning_on_a_seeded_pool():
    n = 20_000
    v = pool(n, seed=2)
    ids = np.arange(n) * 2 + 5  # tile ids are not rows
    by_id = np.zeros((ids.max() + 1, D), np.float32)
    by_id[ids] = v
    vi = build_index(v, ids, IndexOptions(kind="ivf16", nlist=128, target_recall=0.99), pca_dims=PCA)
    infos = vi.infos
    nprobe = infos["params"]["nprobe"]
    assert infos["recall_at_1"] >= 0.99 and infos["tuning"][-1]["nprobe"] == nprobe
    if len(infos["tuning"]) > 1:  # the smallest nprobe that reaches the aim
        assert infos["tuning"][-2]["recall_at_1"] < 0.99
    q = pool(1000, seed=3)
    _d, i = matched(vi, by_id, q, 32)
    _ed, ei = brute(v, ids, q, 1)
    assert (i[:, 0] == ei[:, 0]).mean() >= 0.95


def test_saved_and_loaded(tmp_path):
    v = pool(3000, seed=4)
    ids = np.arange(3000)
    vi = build_index(v, ids, IndexOptions(kind="ivf16", nlist=32), pca_dims=PCA)
    vi.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix")
    assert loaded.infos == json.loads(json.dumps(vi.infos)) and loaded.infos["kind"] == "ivf16"
    assert faiss.extract_index_ivf(loaded.index).nprobe == vi.infos["params"]["nprobe"]
    q = pool(200, seed=5)
    for a, b in zip(loaded.search(q, 8), vi.search(q, 8)):
        np.testing.assert_array_equal(a, b)
    # infos that say ivf16 over an IVF-Flat file (or the reverse) are not trusted: rebuilt
    infos = json.loads((tmp_path / "ix" / "index_infos.json").read_text())
    (tmp_path / "ix" / "index_infos.json").write_text(json.dumps({**infos, "kind": "ivf"}))
    assert VectorIndex.load(tmp_path / "ix") is None


def test_database_builds_it_and_keeps_it(cifar_ingest, synthetic_tiles, tmp_path, run_cli):
    shutil.copytree(cifar_ingest[0], tmp_path / "c.db")
    with TileDB.open(tmp_path / "c.db") as db:
        infos = db.build_index(IndexOptions(kind="ivf16", nlist=16))
        assert infos["kind"] == "ivf16" and infos["pca_dims"] == IVF16_PCA_DIMS
        assert infos["features_pca_dims"] == 48
        built_at = infos["built_at"]
        db.ingest([synthetic_tiles], workers=1)  # updated in place: not taken for outdated
        idx = db.load_index()
        assert idx.infos["built_at"] == built_at and idx.ntotal == len(db)
        assert db.check().ok
    res = run_cli("db", "index", str(tmp_path / "c.db"), "--kind", "ivf16", "--nlist", "16", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kind"] == "ivf16"
    assert run_cli("db", "check", str(tmp_path / "c.db")).exit_code == 0


def test_auto_builds_ivf16_and_ivf_is_kept_when_asked_for(cifar_ingest, synthetic_tiles, tmp_path):
    """auto builds ivf16 at IVF16_PCA_DIMS past flat_max; --kind ivf still builds float32 lists
    at the features' PCA; an update keeps whichever kind was saved."""
    shutil.copytree(cifar_ingest[0], tmp_path / "c.db")
    with TileDB.open(tmp_path / "c.db") as db:
        infos = db.build_index(IndexOptions(flat_max=1000))
        assert infos["kind"] == "ivf16" and infos["pca_dims"] == IVF16_PCA_DIMS == 32
        assert infos["features_pca_dims"] == 48
        infos = db.build_index(IndexOptions(kind="ivf", flat_max=1000))
        assert infos["kind"] == "ivf" and infos["pca_dims"] == 48
        db.ingest([synthetic_tiles], workers=1)
        idx = db.load_index()
        assert idx.infos["kind"] == "ivf" and idx.infos["built_at"] == infos["built_at"]
