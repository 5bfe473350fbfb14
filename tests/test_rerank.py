"""Candidates from an index with a PCA are ranked again by the exact cost (match/rerank.py)."""
from __future__ import annotations

import numpy as np
import pytest

import mosaicdb.match.matcher as matcher
from conftest import synthetic_image
from mosaicdb.match.grid import cell_data, make_grid
from mosaicdb.match.options import MatchOptions
from mosaicdb.match.rerank import exact_distances, rerank


@pytest.mark.parametrize("n,k,dim", [(1, 1, 3), (7, 5, 17), (40, 12, 255)])
def test_exact_distances_and_order_against_numpy(n, k, dim):
    rng = np.random.default_rng(n * 100 + k)
    feats = rng.normal(size=(60, dim)).astype(np.float32)
    q = rng.normal(size=(n, dim)).astype(np.float32)
    ids = rng.integers(0, 60, size=(n, k))
    ids[0, -1] = -1  # a missing candidate keeps the index's filler and goes last
    filler = np.full((n, k), 3.4e38, np.float32)
    ref = ((q[:, None, :].astype(np.float64) - feats[ids]) ** 2).sum(-1)
    got = exact_distances(feats, q, ids, filler)
    ok = ids >= 0
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-5)
    assert got[0, -1] == filler[0, -1]
    d, i = rerank(feats, q, filler, ids, k)
    assert (np.diff(d, axis=1) >= 0).all() and i[0, -1] == -1 and d[0, -1] == filler[0, -1]
    for r in range(n):  # the same candidates, by exact distance
        assert sorted(i[r].tolist()) == sorted(ids[r].tolist())
        np.testing.assert_allclose(d[r][i[r] >= 0], np.sort(ref[r][ids[r] >= 0]), rtol=1e-5)


def test_rerank_keeps_the_best_k():
    feats = np.arange(10, dtype=np.float32).reshape(10, 1)
    q = np.zeros((1, 1), np.float32)
    ids = np.array([[9, 3, 7, 1, 5]])
    d, i = rerank(feats, q, np.zeros((1, 5), np.float32), ids, 2)
    assert i.tolist() == [[1, 3]] and d.tolist() == [[1.0, 9.0]]


def test_rerank_ties_non_finite_rows_and_foreign_ids_as_numpy_orders_them():
    """Equal distances keep the index's order; a tile whose features are NaN and an id past the
    rows (a damaged index) go after every real candidate, missing ones (-1) too, as a stable
    numpy argsort of the exact distances puts them; keep > k keeps k."""
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(30, 8)).astype(np.float32)
    feats[4] = feats[3]       # two tiles at the same distance from every query
    feats[6] = np.nan         # non-finite features
    feats[7, 2] = np.inf
    q = rng.normal(size=(20, 8)).astype(np.float32)
    ids = rng.integers(0, 30, size=(20, 9))
    ids[:, :6] = [4, 6, 3, 40, -1, 7]  # 40: past the 30 rows
    filler = rng.random((20, 9)).astype(np.float32)
    exact = exact_distances(feats, q, ids, filler)
    exact[ids < 0] = np.inf
    order = np.argsort(exact, axis=1, kind="stable")
    want_i = np.take_along_axis(ids, order, 1)
    want_d = np.where(want_i < 0, np.take_along_axis(filler, order, 1), np.take_along_axis(exact, order, 1))
    d, i = rerank(feats, q, filler, ids, 12)
    assert d.shape == i.shape == (20, 9)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(d, want_d)
    pos = {t: np.flatnonzero(i[0] == t)[0] for t in (3, 4)}
    assert pos[4] < pos[3]  # the tie: 4 came first from the index
    assert set(i[0, -4:].tolist()) == {6, 40, -1, 7}  # NaN, past the rows, missing, inf: last
    # many ties in long rows (past any small-array special case of a sort): the index's order
    same = np.repeat(feats[:1], 200, axis=0)
    tied = np.stack([rng.permutation(200) for _ in range(5)])
    _d, i = rerank(same, q[:5], np.zeros((5, 200), np.float32), tied, 150)
    np.testing.assert_array_equal(i, tied[:, :150])


def exact_costs(db, cells, tile_ids):
    f = np.asarray(db.features())[tile_ids.ravel()]
    return np.sqrt(((cells.features - f) ** 2).sum(1) / db.feature_spec.cost_divisor)


def test_match_costs_are_the_exact_cost_through_a_pca_index(cifar_db, monkeypatch):
    """With the PCA in the index, every chosen tile's cost is its exact feature distance, and
    with free repeats a cell gets its exact nearest tile among the whole pool (but for the rare
    one the index's candidates miss)."""
    db = cifar_db
    assert db.ensure_index().infos["pca_dims"] > 0
    img = synthetic_image(np.random.default_rng(3), 24 * 16, 16 * 16, "gradient")
    grid = make_grid(img.shape[1], img.shape[0], "24x16")
    cells = cell_data(img, grid, db.feature_spec)
    res = matcher.match(db, cells, grid, MatchOptions(grid="24x16", min_distance=0, dither=0))
    t = res.assignment.tile_ids
    np.testing.assert_allclose(res.assignment.cost.ravel(), exact_costs(db, cells, t), rtol=1e-4, atol=1e-3)
    ids = db.ids()
    full = np.asarray(db.features())[ids]
    nearest = ids[np.argmin(((cells.features[:, None, :] - full[None]) ** 2).sum(-1), axis=1)]
    assert np.mean(nearest == t.ravel()) >= 0.97
    # without the rerank the costs are the PCA's: the check above would catch its loss
    monkeypatch.setattr(matcher, "index_is_approximate", lambda index: False)
    res2 = matcher.match(db, cells, grid, MatchOptions(grid="24x16", min_distance=0))
    assert not np.allclose(res2.assignment.cost.ravel(), exact_costs(db, cells, res2.assignment.tile_ids),
                           rtol=1e-4, atol=1e-3)


def test_widened_cells_get_exact_costs_too(cifar_db):
    """Cells that run out of candidates (k 2 under --min-distance 3) are widened through the
    index: their costs are exact as well, so costs from either search compare."""
    db = cifar_db
    img = synthetic_image(np.random.default_rng(4), 20 * 16, 12 * 16, "gradient")
    grid = make_grid(img.shape[1], img.shape[0], "20x12")
    cells = cell_data(img, grid, db.feature_spec)
    res = matcher.match(db, cells, grid, MatchOptions(grid="20x12", k=2, min_distance=3, refine_passes=0))
    assert res.assignment.widened_cells > 0
    np.testing.assert_allclose(res.assignment.cost.ravel(), exact_costs(db, cells, res.assignment.tile_ids),
                               rtol=1e-4, atol=1e-3)
