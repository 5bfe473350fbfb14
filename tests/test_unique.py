"""--unique at scale (mosaicdb.match.unique, .auction, .unused): every tile at most once, the
exact optimum as reference, the lower bound, determinism, budgets, nearest-unused search."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from mosaicdb.errors import MatchError
from mosaicdb.match import auction as au
from mosaicdb.match import unique
from mosaicdb.match.assign import assign
from mosaicdb.match.options import MatchOptions
from mosaicdb.match.unique import solve_unique
from mosaicdb.match.unused import search_unused, use_exact


class Pool:
    """Cells and tiles as random points (optionally crowded: cells near a few centres, so
    their nearest tiles overlap, as in real photos); exact k-NN with exclusion like FAISS.
    Tile ids are a sparse subset of a larger id space, as after removals."""

    def __init__(self, n_cells: int, n_tiles: int, seed: int, dim: int = 4, crowd: int = 0):
        rng = np.random.default_rng(seed)
        self.tiles = rng.random((n_tiles, dim)).astype(np.float32)
        if crowd:
            centres = rng.random((crowd, dim))
            self.cells = (centres[rng.integers(0, crowd, n_cells)]
                          + 0.02 * rng.standard_normal((n_cells, dim))).astype(np.float32)
        else:
            self.cells = rng.random((n_cells, dim)).astype(np.float32)
        self.ids = np.sort(rng.choice(3 * n_tiles + 7, size=n_tiles, replace=False)).astype(np.int64)
        diff = self.cells[:, None, :] - self.tiles[None, :, :]
        self.dist = np.sqrt((diff * diff).sum(-1)).astype(np.float32)
        self.calls: list[tuple[int, int, int]] = []

    def knn(self, cells, k, exclude=None):
        d = self.dist[cells].astype(np.float64)
        if exclude is not None and len(exclude):
            d[:, np.isin(self.ids, exclude)] = np.inf
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        dist = np.take_along_axis(d, order, axis=1)
        ids = np.where(np.isinf(dist), -1, self.ids[order])
        pad = k - ids.shape[1]
        if pad > 0:
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        return ids, dist.astype(np.float32)

    def widen(self, cells, k, exclude):
        assert cells.dtype == np.int64 and exclude.dtype == np.int64
        assert np.all(np.diff(exclude) > 0), "exclude is sorted and unique"
        self.calls.append((cells.size, k, exclude.size))
        return self.knn(cells, k, exclude)

    def solve(self, k: int, seed: int = 0, **kw):
        ids, dist = self.knn(np.arange(len(self.cells)), k)
        return solve_unique(ids, dist, len(self.ids), self.widen, seed=seed, **kw), ids

    def optimum(self) -> float:
        r, c = linear_sum_assignment(self.dist.astype(np.float64))
        return float(self.dist[r, c].astype(np.float64).sum())

    def true_cost(self, tile_ids):
        return self.dist[np.arange(tile_ids.size), np.searchsorted(self.ids, tile_ids)]


def check(res, pool: Pool, first_k: np.ndarray) -> None:
    t = res.tile
    assert t.shape == (len(pool.cells),) and t.dtype == np.int64
    assert np.isin(t, pool.ids).all(), "every cell holds a live tile"
    assert np.unique(t).size == t.size, "no tile twice"
    np.testing.assert_allclose(res.cost, pool.true_cost(t), rtol=1e-6)
    rep = res.report
    assert rep["total_cost"] == pytest.approx(float(res.cost.astype(np.float64).sum()), rel=1e-6, abs=1e-4)
    assert rep["lower_bounds"]["free_nearest"] <= rep["total_cost"] + 1e-4
    assert rep["lower_bound"] <= rep["total_cost"] + 1e-4
    assert rep["fallback_cells"] == int((~(first_k == t[:, None]).any(axis=1)).sum())


# ---------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_cells=st.integers(1, 60), extra=st.sampled_from([0, 0, 1, 3, 20, 200]), k=st.integers(1, 12),
       crowd=st.sampled_from([0, 1, 3]), seed=st.integers(0, 2**32 - 1))
def test_every_tile_at_most_once(n_cells, extra, k, crowd, seed):
    """Tiny pools, tiles == cells exactly, one crowd of near-identical cells: always complete."""
    pool = Pool(n_cells, n_cells + extra, seed, crowd=crowd)
    res, first_k = pool.solve(k, seed=seed % 7)
    check(res, pool, first_k)
    # The optimum is a floor for every one-to-one assignment, and the bound is below it.
    best = pool.optimum()
    assert res.report["total_cost"] >= best - 1e-4
    assert res.report["lower_bound"] <= best + 1e-4


@pytest.mark.parametrize("n_cells, n_tiles, k, crowd", [
    (150, 400, 8, 0), (150, 400, 8, 4), (200, 220, 8, 0), (200, 220, 16, 3), (300, 300, 10, 0),
])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gap_to_exact_optimum(n_cells, n_tiles, k, crowd, seed):
    """Against scipy's exact assignment on the dense matrix: within 3 % of the optimum (the
    real-data benchmark holds 2 % at 10,880 cells), and the dual bound never above it."""
    pool = Pool(n_cells, n_tiles, seed, crowd=crowd)
    res, first_k = pool.solve(k, seed=seed)
    check(res, pool, first_k)
    best = pool.optimum()
    assert best - 1e-4 <= res.report["total_cost"] <= 1.03 * best
    assert res.report["lower_bounds"]["dual"] <= best + 1e-4


def test_full_lists_are_eps_optimal():
    """With every tile listed the auction alone decides: within 2 eps per cell of the optimum."""
    pool = Pool(40, 55, seed=4)
    res, _ = pool.solve(55)
    best = pool.optimum()
    assert best - 1e-6 <= res.report["total_cost"] <= best + 2 * 40 * res.report["eps_final"] + 1e-6
    assert not pool.calls, "nothing to widen when the lists hold the whole pool"


def test_dual_bound_beats_free_nearest_when_cells_crowd():
    pool = Pool(200, 400, seed=5, crowd=2)  # two crowds want the same few tiles
    res, _ = pool.solve(8)
    lb = res.report["lower_bounds"]
    assert lb["dual"] > 1.2 * lb["free_nearest"]
    assert res.report["lower_bound"] == pytest.approx(lb["dual"])


def test_same_seed_same_result():
    pool = Pool(300, 330, seed=6, crowd=3)
    a, _ = pool.solve(8, seed=11)
    b, _ = pool.solve(8, seed=11)
    np.testing.assert_array_equal(a.tile, b.tile)
    np.testing.assert_array_equal(a.cost, b.cost)
    assert {k: v for k, v in a.report.items() if k != "seconds"} == \
           {k: v for k, v in b.report.items() if k != "seconds"}


def test_through_assign_with_too_few_tiles():
    pool = Pool(12, 10, seed=7)
    ids, dist = pool.knn(np.arange(12), 4)
    with pytest.raises(MatchError, match="--unique needs at least 12 tiles, the database has 10"):
        assign(3, 4, ids, dist, 10, MatchOptions(unique=True, min_distance=0), pool.widen)
    assert not pool.calls


def test_through_assign_reports_and_reshapes():
    pool = Pool(48, 60, seed=8, crowd=2)
    ids, dist = pool.knn(np.arange(48), 4)
    a = assign(6, 8, ids, dist, 60, MatchOptions(unique=True, seed=3, min_distance=0), pool.widen)
    assert a.tile_ids.shape == (6, 8) and np.unique(a.tile_ids).size == 48
    assert a.widened_cells == a.report["fallback_cells"] > 0
    for key in ("total_cost", "lower_bound", "fallback_cells", "lower_bounds"):
        assert key in a.report


def test_price_war_budget_restores_the_completed_assignment(monkeypatch):
    """Improvement rounds that run out of bids are undone, never left half-done."""
    monkeypatch.setattr(unique, "BID_BUDGET", 0)  # every forward run "runs out" at once
    pool = Pool(120, 150, seed=9, crowd=3)
    res, first_k = pool.solve(6)
    check(res, pool, first_k)
    steps = dict(res.report["total_cost_per_step"])
    assert steps["round 1"] is None  # undone
    assert res.report["total_cost"] == pytest.approx(steps["completion"], rel=1e-9)
    # everything was open after a relaxation that could not bid, and completion placed it all
    assert res.report["open_after_relaxation"] == res.report["completed_cells"] == 120


def test_completion_goes_deeper_for_identical_cells(monkeypatch):
    """A crowd of identical cells all want the same unused tiles: rounds must still end."""
    monkeypatch.setattr(unique, "COMPLETE_K", 2)
    pool = Pool(64, 64, seed=10)
    pool.cells[:] = pool.cells[0]
    pool.dist[:] = pool.dist[0]
    res, first_k = pool.solve(2)
    check(res, pool, first_k)
    assert max(k for _, k, _ in pool.calls) > 2  # widened beyond the starting depth


def test_progress_bar(capsys, monkeypatch):
    import mosaicdb.progress
    monkeypatch.setattr(mosaicdb.progress, "progress_enabled", lambda requested, stream=None: requested)
    pool = Pool(80, 90, seed=11)  # (bars are drawn on terminals only: pretend this is one)
    pool.solve(4, progress=True)
    assert "unique" in capsys.readouterr().err
    pool.solve(4, progress=False)
    assert capsys.readouterr().err == ""


def test_widen_that_finds_nothing_is_an_error():
    pool = Pool(10, 20, seed=12)
    ids, dist = pool.knn(np.arange(10), 1)
    ids[:] = ids[0]  # every cell lists the same tile: nine must be completed

    def empty(cells, k, exclude):
        return np.full((cells.size, k), -1, np.int64), np.full((cells.size, k), np.inf, np.float32)

    with pytest.raises(MatchError, match="check the tile index"):
        solve_unique(ids, dist, 20, empty)


# ---------------------------------------------------------------------------------------------
# Kernels and the nearest-unused search


def test_forward_and_reverse_auction_are_eps_optimal_on_dense_problems():
    rng = np.random.default_rng(13)
    for n, m in ((30, 30), (30, 45), (1, 5)):
        c = rng.random((n, m))
        indptr = np.arange(0, n * m + 1, m, dtype=np.int64)
        tile = np.tile(np.arange(m, dtype=np.int64), n)
        cost = c.ravel().copy()
        price = np.zeros(m)
        owner = np.full(m, -1, np.int64)
        choice = np.full(n, au.FREE, np.int64)
        paid = np.zeros(n)
        outside = np.full(n, 1e6)
        eps = 1e-4
        for e in (0.1, 0.01, eps):  # scaling: every phase starts with all cells free
            owner[:] = -1
            choice[:] = au.FREE
            queue = np.arange(n, dtype=np.int64)
            au.run_auction(indptr, tile, cost, outside, price, owner, choice, paid, queue, n, e, 10**9)
            rptr, rcell, rarc = au.reverse_arcs(indptr, tile, m)
            au.run_reverse(rptr, rcell, rarc, cost, outside, price, owner, choice, paid, e, 10**9)
        assert (choice >= 0).all() and np.unique(choice).size == n
        assert (price[owner < 0] == 0).all(), "unheld tiles end at price 0"
        np.testing.assert_allclose(paid, c[np.arange(n), choice])
        r, cc = linear_sum_assignment(c)
        assert c[r, cc].sum() - 1e-9 <= paid.sum() <= c[r, cc].sum() + 2 * n * eps + 1e-9


def test_add_arcs_and_pairs_keep_old_arcs_first():
    indptr = np.array([0, 2, 3], np.int64)
    tile = np.array([5, 6, 7], np.int64)
    cost = np.array([0.5, 0.6, 0.7])
    p, t, c = au.add_arcs(indptr, tile, cost, np.array([1], np.int64),
                          np.array([[8, -1, 9]], np.int64), np.array([[0.8, 9.0, 0.9]]))
    assert p.tolist() == [0, 2, 5] and t.tolist() == [5, 6, 7, 8, 9]
    assert c.tolist() == [0.5, 0.6, 0.7, 0.8, 0.9]
    p, t, c = au.add_pairs(p, t, c, np.array([0, -1, 1], np.int64), np.array([4, 3, 2], np.int64),
                           np.array([0.4, 0.3, 0.2]))
    assert p.tolist() == [0, 3, 7] and t.tolist() == [5, 6, 4, 7, 8, 9, 2]


def test_greedy_pairs_takes_cheapest_first():
    placed = np.full(3, -1, np.int64)
    placed_cost = np.zeros(3)
    n = au.greedy_pairs(np.array([0, 1, 1, 2], np.int64), np.array([4, 4, 5, 5], np.int64),
                        np.array([0.3, 0.1, 0.2, 0.4]), np.zeros(3, bool), np.zeros(6, bool),
                        placed, placed_cost)
    assert n == 2 and placed.tolist() == [-1, 4, 5] and placed_cost.tolist() == [0, 0.1, 0.4]


@pytest.mark.parametrize("n_excluded", [0, 1, 150, 199, 200])
def test_search_unused_is_exact(n_excluded):
    rng = np.random.default_rng(14)
    feats = rng.random((260, 5)).astype(np.float32)  # rows = tile ids; 60 are holes
    live = np.sort(rng.choice(260, 200, replace=False)).astype(np.int64)
    exclude = np.sort(rng.choice(live, n_excluded, replace=False)).astype(np.int64)
    q = rng.random((7, 5)).astype(np.float32)
    d, ids = search_unused(feats, live, q, 10, exclude)
    keep = np.setdiff1d(live, exclude)
    full = ((q[:, None, :] - feats[keep][None]) ** 2).sum(-1)
    want = min(10, keep.size)
    if want:
        np.testing.assert_allclose(d[:, :want], np.sort(full, axis=1)[:, :want], rtol=1e-4, atol=1e-5)
        assert np.isin(ids[:, :want], keep).all()
    assert (ids[:, want:] == -1).all() and np.isinf(d[:, want:]).all()


def test_use_exact_only_when_few_unused_left():
    assert not use_exact(100_000, 0)
    assert not use_exact(100_000, 50_000)
    assert use_exact(100_000, 95_000)
    assert not use_exact(5_000, 0)  # nothing excluded: the index search is as good


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("n_excluded", [10, 3000])  # hash set below BITMAP_FROM, bitmap above
def test_index_search_never_returns_excluded_ids(kind, n_excluded):
    from mosaicdb.index import faiss_index as fi
    rng = np.random.default_rng(15)
    vecs = rng.random((4000, 8)).astype(np.float32)
    ids = np.sort(rng.choice(9000, 4000, replace=False)).astype(np.int64)  # gapped ids
    index = fi.build_index(vecs, ids, fi.IndexOptions(kind=kind, nlist=32 if kind == "ivf" else 0,
                                                      nprobe=32 if kind == "ivf" else 0))
    exclude = np.sort(rng.choice(ids, n_excluded, replace=False))
    q = rng.random((50, 8)).astype(np.float32)
    d, found = index.search(q, 20, exclude=exclude)
    assert not np.isin(found, exclude).any()
    keep = ~np.isin(ids, exclude)
    exact = np.sort(((q[:, None] - vecs[keep][None]) ** 2).sum(-1), axis=1)[:, :20]
    np.testing.assert_allclose(d, exact, rtol=1e-4, atol=1e-5)  # all lists probed: exact


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf16"])
def test_excluding_low_ids_keeps_every_higher_one(kind):
    """With more than BITMAP_FROM ids excluded, all below the ones searched for, the search is
    exact search over the rest and repeatable (the bitmap's length once went to FAISS in bits,
    not bytes: ids above the largest excluded one were dropped at random)."""
    from mosaicdb.index import faiss_index as fi
    rng = np.random.default_rng(16)
    vecs = rng.random((6000, 8)).astype(np.float32)
    ids = np.arange(6000, dtype=np.int64)
    index = fi.build_index(vecs, ids, fi.IndexOptions(kind=kind, nlist=16 if kind != "flat" else 0,
                                                      nprobe=16 if kind != "flat" else 0))
    exclude = np.arange(0, 2 * fi.BITMAP_FROM, dtype=np.int64)
    q = rng.random((200, 8)).astype(np.float32)
    d, found = index.search(q, 10, exclude=exclude)
    keep = ~np.isin(ids, exclude)
    ref = np.sort(ids[keep][np.argsort(((q[:, None] - vecs[keep][None]) ** 2).sum(-1), axis=1)[:, :10]], 1)
    assert (found >= 2 * fi.BITMAP_FROM).all()
    if kind == "ivf16":  # half-float distances: the 10th nearest may trade places with the 11th
        assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, ref)]) >= 9.9
    else:
        np.testing.assert_array_equal(np.sort(found, 1), ref)
    for _ in range(3):
        np.testing.assert_array_equal(index.search(q, 10, exclude=exclude)[1], found)


def test_exclusion_bitmap_is_sized_in_bytes():
    """FAISS reads an IDSelectorBitmap's `n` as bytes: the selector covers exactly the array."""
    from mosaicdb.index import faiss_index as fi
    exclude = np.arange(3, 3 * (fi.BITMAP_FROM + 10), 3, dtype=np.int64)  # over BITMAP_FROM: a bitmap
    sel, bits = fi.exclusion_selector(exclude)
    assert bits.size == (int(exclude.max()) + 8) // 8
    probe = np.arange(0, 64 * bits.size, dtype=np.int64)  # given bits for bytes, FAISS read past the array
    member = np.array([sel.is_member(int(i)) for i in probe])
    np.testing.assert_array_equal(member, ~np.isin(probe, exclude))


# ---------------------------------------------------------------------------------------------
# End to end: the metrics file


def test_make_writes_unique_metrics(synthetic_db, tmp_path):
    """`mosaic make --unique` (Maker) writes total cost, bound and fallback cells to its metrics."""
    import json

    from conftest import synthetic_image
    from PIL import Image

    from mosaicdb import assignment as asg
    from mosaicdb.make import Maker
    from mosaicdb.match.options import MatchOptions
    from mosaicdb.render.options import RenderOptions

    target = tmp_path / "t.png"
    Image.fromarray(synthetic_image(np.random.default_rng(16), 160, 120, "gradient")).save(target)
    maker = Maker(synthetic_db, MatchOptions(grid="16", k=8, unique=True, seed=2), RenderOptions(tile_px=2))
    r = maker.make(target, tmp_path / "m.png")
    m = json.loads(r.metrics_path.read_text())["unique"]
    saved = asg.load(tmp_path / "m.png")
    assert np.unique(saved.tile_ids).size == saved.tile_ids.size == 16 * 12
    assert m["total_cost"] == pytest.approx(float(saved.cost.astype(np.float64).sum()), rel=1e-5)
    assert m["lower_bounds"]["free_nearest"] <= m["lower_bound"] <= m["total_cost"]
    assert m["fallback_cells"] == saved.meta.widened_cells
    assert m["open_after_relaxation"] > 0  # a smooth gradient crowds the cells onto few tiles
