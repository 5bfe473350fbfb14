"""Tile assignment: repeat constraints, widening, unique matching, validation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from mosaicdb.errors import MatchError, MosaicError, UsageError
from mosaicdb.match.assign import Assignment, assign
from mosaicdb.match.options import MatchOptions


def Repeat(**kw) -> MatchOptions:
    """Match options as `assign` takes them: min_distance resolved (0 unless given)."""
    return MatchOptions(**{"min_distance": 0, **kw})


class Pool:
    """Random cell and tile features with exact brute-force kNN, like a FAISS flat index.

    Tile ids are a sparse subset of a larger id space, as after tiles have been removed.
    """

    def __init__(self, n_cells: int, n_tiles: int, seed: int, dim: int = 3, spread: float = 1.0):
        rng = np.random.default_rng(seed)
        self.cells = (rng.random((n_cells, dim)) * spread).astype(np.float32)
        self.tiles = rng.random((n_tiles, dim)).astype(np.float32)
        self.ids = np.sort(rng.choice(3 * n_tiles + 5, size=n_tiles, replace=False)).astype(np.int64)
        diff = self.cells[:, None, :] - self.tiles[None, :, :]
        self.dist = np.sqrt((diff * diff).sum(-1)).astype(np.float32)  # (cells, tiles)
        self.widen_calls: list[tuple[int, int]] = []

    @property
    def n_tiles(self) -> int:
        return self.ids.size

    def knn(self, cells: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        d = self.dist[cells]
        if exclude is not None and len(exclude):
            d = d.copy()
            d[:, np.isin(self.ids, exclude)] = np.inf
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        ids = self.ids[order]
        dist = np.take_along_axis(d, order, axis=1)
        ids = np.where(np.isinf(dist), -1, ids)
        if k > self.n_tiles:  # pad like FAISS
            pad = k - self.n_tiles
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        return ids, dist.astype(np.float32)

    def candidates(self, k: int):
        return self.knn(np.arange(self.cells.shape[0]), k)

    def widen(self, cells: np.ndarray, k: int, exclude: np.ndarray):
        assert cells.dtype == np.int64 and cells.ndim == 1
        self.widen_calls.append((cells.size, k))
        return self.knn(cells, k, exclude)

    def true_cost(self, tile_ids: np.ndarray) -> np.ndarray:
        col = np.searchsorted(self.ids, tile_ids.ravel())
        return self.dist[np.arange(col.size), col]


def run(rows, cols, pool: Pool, k: int, opts: MatchOptions) -> Assignment:
    ids, dist = pool.candidates(k)
    return assign(rows, cols, ids, dist, pool.n_tiles, opts, pool.widen)


RANDOM_ORDER = {"order": "random", "refine_passes": 0}  # the reference's rule


def check_valid(a: Assignment, rows, cols, pool: Pool, opts: MatchOptions) -> None:
    t = a.tile_ids
    assert t.shape == (rows, cols) and t.dtype == np.int64
    assert a.cost.shape == (rows, cols) and a.cost.dtype == np.float32
    assert np.isin(t, pool.ids).all(), "every cell holds a live tile id"
    np.testing.assert_allclose(a.cost.ravel(), pool.true_cost(t), rtol=1e-6)
    if opts.max_uses:
        assert np.bincount(t.ravel()).max() <= opts.max_uses
    if opts.unique:
        assert np.unique(t).size == t.size
    assert min_repeat_distance(t) > opts.min_distance


def min_repeat_distance(t: np.ndarray) -> float:
    """Smallest Chebyshev distance between two cells holding the same tile (inf if none repeat)."""
    r, c = np.indices(t.shape)
    r, c, v = r.ravel(), c.ravel(), t.ravel()
    same = v[:, None] == v[None, :]
    np.fill_diagonal(same, False)
    if not same.any():
        return np.inf
    cheb = np.maximum(abs(r[:, None] - r[None, :]), abs(c[:, None] - c[None, :]))
    return cheb[same].min()


def reference_greedy(rows, cols, pool: Pool, k: int, opts: MatchOptions):
    """Plain-Python statement of the greedy rule, for small grids; None when it gets stuck."""
    n = rows * cols
    grid = -np.ones((rows, cols), dtype=np.int64)
    uses: dict[int, int] = {}
    pending = list(np.random.default_rng(opts.seed).permutation(n))
    ids, dist = pool.candidates(k)
    first_k = k
    rows_of = {cell: (ids[cell], dist[cell]) for cell in pending}
    while True:
        stuck = []
        for cell in pending:
            r, c = divmod(int(cell), cols)
            window = grid[max(r - opts.min_distance, 0):r + opts.min_distance + 1,
                          max(c - opts.min_distance, 0):c + opts.min_distance + 1]
            options = [(float(d) + opts.usage_penalty * uses.get(t, 0), t)
                       for t, d in zip(*rows_of[cell])
                       if t >= 0 and not (opts.max_uses and uses.get(t, 0) >= opts.max_uses)
                       and not (opts.min_distance and (window == t).any())]
            if not options:
                stuck.append(cell)
                continue
            _, t = min(options)
            grid[r, c] = t
            uses[t] = uses.get(t, 0) + 1
        if not stuck:
            return grid
        if k >= pool.n_tiles:
            return None
        # the widening schedule: 2k or the (2r+1)^2 window the first time, then 4x
        k = min(max(2 * k, (2 * opts.min_distance + 1) ** 2) if k == first_k else k * 4, pool.n_tiles)
        # widened searches skip tiles already used up by --max-uses (one chunk: grids here are small)
        exhausted = [t for t, u in uses.items() if opts.max_uses and u >= opts.max_uses]
        wid, wdist = pool.knn(np.array(stuck), k, np.array(exhausted, dtype=np.int64))
        rows_of = {cell: (wid[i], wdist[i]) for i, cell in enumerate(stuck)}
        pending = stuck


def greedy_guaranteed(rows, cols, n_tiles, opts: MatchOptions) -> bool:
    """True when no placement order can get stuck: fewer tiles are ever blocked than exist."""
    side = 2 * opts.min_distance + 1
    neighbours = min(rows, side) * min(cols, side) - 1
    exhausted = (rows * cols - 1) // opts.max_uses if opts.max_uses else 0
    return n_tiles > neighbours + exhausted


def options_rejected(rows, cols, n_tiles, opts: MatchOptions) -> bool:
    try:
        opts.check_pool(rows, cols, n_tiles)
    except MosaicError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Properties

greedy_case = st.fixed_dictionaries({
    "rows": st.integers(1, 12),
    "cols": st.integers(1, 12),
    "n_tiles": st.integers(1, 90),
    "k": st.integers(1, 8),
    "min_distance": st.integers(0, 3),
    "max_uses": st.integers(0, 4),
    "usage_penalty": st.sampled_from([0.0, 0.05, 0.5, 3.0]),
    "seed": st.integers(0, 2**32 - 1),
    "spread": st.sampled_from([1.0, 0.05]),  # 0.05: cells crowd onto few tiles, forcing widening
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(greedy_case)
def test_random_order_greedy_properties(case):
    """The random-order greedy pass without refinement is exactly the reference rule."""
    rows, cols = case["rows"], case["cols"]
    pool = Pool(rows * cols, case["n_tiles"], case["seed"], spread=case["spread"])
    opts = Repeat(min_distance=case["min_distance"], max_uses=case["max_uses"],
                  usage_penalty=case["usage_penalty"], seed=case["seed"] % 1000, **RANDOM_ORDER)
    if options_rejected(rows, cols, pool.n_tiles, opts):
        event("rejected by validate")
        with pytest.raises(MatchError):
            run(rows, cols, pool, case["k"], opts)
        return
    try:
        a = run(rows, cols, pool, case["k"], opts)
    except MatchError as e:
        # Greedy placement may get stuck on tight pools, but never when it provably can't.
        event("greedy stuck")
        assert not greedy_guaranteed(rows, cols, pool.n_tiles, opts), str(e)
        assert reference_greedy(rows, cols, pool, case["k"], opts) is None
        assert "--min-distance" in str(e) or "--max-uses" in str(e)
        return
    event("widened" if a.widened_cells else "placed from first k")
    check_valid(a, rows, cols, pool, opts)
    np.testing.assert_array_equal(a.tile_ids, reference_greedy(rows, cols, pool, case["k"], opts))
    first_k = pool.candidates(case["k"])[0]
    outside = ~(first_k == a.tile_ids.reshape(-1, 1)).any(axis=1)
    assert a.widened_cells == outside.sum()  # a retried cell's first k stay infeasible
    assert (a.widened_cells > 0) == bool(pool.widen_calls)

    again = run(rows, cols, pool, case["k"], opts)
    np.testing.assert_array_equal(again.tile_ids, a.tile_ids)
    np.testing.assert_array_equal(again.cost, a.cost)
    assert again.widened_cells == a.widened_cells


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 7), cols=st.integers(1, 7), extra=st.integers(0, 6),
       seed=st.integers(0, 2**32 - 1))
@example(rows=6, cols=6, extra=1, seed=6)  # a reverse auction cut short by its move budget
def test_unique_is_optimal(rows, cols, extra, seed):
    n = rows * cols
    pool = Pool(n, n + extra, seed)
    opts = Repeat(unique=True, max_uses=1)
    a = run(rows, cols, pool, pool.n_tiles, opts)
    check_valid(a, rows, cols, pool, opts)
    r, c = linear_sum_assignment(pool.dist.astype(np.float64))
    best = pool.dist[r, c].astype(np.float64).sum()
    # The auction is eps-optimal: within 2 eps per cell of the optimum (tests/test_unique.py).
    slack = 2 * n * a.report["eps_final"]
    assert best - 1e-6 <= a.cost.astype(np.float64).sum() <= best + slack + 1e-6
    assert a.widened_cells == 0


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 8), extra=st.integers(0, 4),
       k=st.integers(1, 4), spread=st.sampled_from([0.0, 0.05, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_unique_widens_until_matchable(rows, cols, extra, k, spread, seed):
    n = rows * cols
    pool = Pool(n, n + extra, seed, spread=spread)
    opts = Repeat(unique=True)
    a = run(rows, cols, pool, k, opts)
    check_valid(a, rows, cols, pool, opts)
    first_k = pool.candidates(k)[0]
    outside = ~(first_k == a.tile_ids.reshape(-1, 1)).any(axis=1)
    assert a.widened_cells == outside.sum()
    if spread == 0.0 and k < n:  # identical cells share the same k candidates: k cells fit
        assert pool.widen_calls and a.widened_cells >= n - k


# ---------------------------------------------------------------------------------------------
# Examples


def test_unique_counts_zero_distances_and_ignores_duplicate_candidates():
    # Summing the duplicate (cell 0, tile 4) edges or dropping its zero weight would both
    # make swapping the two cells look cheaper than the true optimum 0 + 0.2.
    ids = np.array([[4, 4, 9], [4, 9, -1]], dtype=np.int64)
    dist = np.array([[0.0, 0.0, 0.5], [0.1, 0.2, np.inf]], dtype=np.float32)
    a = assign(1, 2, ids, dist, 2, Repeat(unique=True), lambda c, k: None)
    assert a.tile_ids.tolist() == [[4, 9]]
    assert a.cost.ravel().tolist() == pytest.approx([0.0, 0.2])


def test_no_constraints_takes_nearest_tile():
    pool = Pool(100, 40, seed=3)
    ids, dist = pool.candidates(5)
    a = assign(10, 10, ids, dist, pool.n_tiles, Repeat(), pool.widen)
    np.testing.assert_array_equal(a.tile_ids.ravel(), ids[:, 0])
    np.testing.assert_array_equal(a.cost.ravel(), dist[:, 0])
    assert a.widened_cells == 0 and not pool.widen_calls


def test_identical_cells_force_widening():
    pool = Pool(36, 30, seed=4, spread=0.0)  # every cell has the same nearest tile
    opts = Repeat(min_distance=1)
    a = run(6, 6, pool, 1, opts)
    check_valid(a, 6, 6, pool, opts)
    assert a.widened_cells > 0
    assert pool.widen_calls[0] == (a.widened_cells, 9)   # the 3x3 window of --min-distance 1


@pytest.mark.parametrize("max_uses,chunk", [(2, 1024), (8, 2048), (16, 4096), (64, 4096)])
def test_cells_are_widened_in_chunks_sized_by_max_uses(max_uses, chunk):
    """With --max-uses the used-up tiles are left out as of each search's start: chunks grow with
    max_uses (a chunk uses up ~chunk / max_uses tiles as it is placed), 1,024 to 4,096 cells."""
    pool = Pool(4400, 4400 // max_uses * 2, seed=5, spread=0.0)  # every cell wants the same tiles
    opts = Repeat(max_uses=max_uses)
    a = run(44, 100, pool, 4, opts)
    check_valid(a, 44, 100, pool, opts)
    sizes = [n for n, _ in pool.widen_calls]
    assert a.widened_cells > chunk and max(sizes) == chunk, sizes


def test_widening_handles_padded_candidates_and_gapped_ids():
    pool = Pool(16, 20, seed=5)
    ids, dist = pool.candidates(3)
    ids[::2] = -1  # half the cells arrive with no candidate at all
    dist[::2] = np.inf
    opts = Repeat(max_uses=1)
    a = assign(4, 4, ids, dist, pool.n_tiles, opts, pool.widen)
    check_valid(a, 4, 4, pool, opts)
    assert a.widened_cells >= 8
    assert pool.ids.max() >= pool.n_tiles  # ids really have gaps


def test_ties_go_to_lower_id():
    ids = np.array([[7, 3, 5]] * 4, dtype=np.int64)
    dist = np.zeros((4, 3), dtype=np.float32)
    a = assign(2, 2, ids, dist, 8, Repeat(), lambda c, k: None)
    assert (a.tile_ids == 3).all()


def test_usage_penalty_spreads_tiles():
    pool = Pool(400, 60, seed=6, spread=0.1)  # crowded cells all prefer a handful of tiles
    plain = run(20, 20, pool, 16, Repeat())
    spread = run(20, 20, pool, 16, Repeat(usage_penalty=0.05))
    check_valid(spread, 20, 20, pool, Repeat())
    assert np.bincount(spread.tile_ids.ravel()).max() < np.bincount(plain.tile_ids.ravel()).max()
    assert np.unique(spread.tile_ids).size > np.unique(plain.tile_ids).size


def test_seed_changes_visit_order():
    pool = Pool(144, 40, seed=7, spread=0.1)
    a = run(12, 12, pool, 8, Repeat(min_distance=2, seed=1))
    b = run(12, 12, pool, 8, Repeat(min_distance=2, seed=2))
    assert not np.array_equal(a.tile_ids, b.tile_ids)


def test_minimum_pool_for_min_distance_is_enough_in_principle():
    # (R+1)^2 tiles tile the plane periodically, so validation must not reject them.
    Repeat(min_distance=3).check_pool(256, 256, 16)
    Repeat(min_distance=2).check_pool(1, 4, 3)


@pytest.mark.parametrize("kw, words", [
    (dict(min_distance=-1), "--min-distance"),
    (dict(max_uses=-2), "--max-uses"),
    (dict(usage_penalty=-0.5), "--usage-penalty"),
    (dict(usage_penalty=float("nan")), "--usage-penalty"),
    (dict(usage_penalty=float("inf")), "--usage-penalty"),
    (dict(unique=True, max_uses=2), "drop --max-uses"),
    (dict(unique=True, min_distance=1), "drop --min-distance"),
    (dict(unique=True, usage_penalty=1.0), "drop --usage-penalty"),
    (dict(k=0), "--candidates"),
    (dict(seed=-1), "--seed"),
    (dict(grid="12y"), "--grid"),
    (dict(device="tpu"), "--device"),
])
def test_bad_options_are_refused_when_made(kw, words):
    with pytest.raises(UsageError, match=words.replace("-", r"\-")):
        MatchOptions(**kw)


@pytest.mark.parametrize("opts, n_cells, n_tiles, shape, words", [
    (Repeat(unique=True), 12, 10, None, "--unique needs at least 12 tiles, the database has 10"),
    (Repeat(max_uses=2), 10, 3, None, "--max-uses 4"),
    (Repeat(min_distance=1), 9, 3, (3, 3), "--min-distance"),
    (Repeat(min_distance=3), 64, 15, (8, 8), "at least 16"),
    (Repeat(min_distance=3), 64, 3, None, "at least 4"),
])
def test_pool_check_rejects(opts, n_cells, n_tiles, shape, words):
    rows, cols = shape or (1, n_cells)
    with pytest.raises(MatchError, match=words.replace("-", r"\-")):
        opts.check_pool(rows, cols, n_tiles)


def test_assign_validates_first():
    pool = Pool(9, 8, seed=8)
    with pytest.raises(MatchError, match="--min-distance"):
        run(3, 3, pool, 4, Repeat(min_distance=2))
    assert not pool.widen_calls
    with pytest.raises(UsageError, match="--max-uses"):
        run(3, 3, pool, 4, Repeat(unique=True, max_uses=3))


def test_stuck_greedy_names_option_to_relax():
    # Passes validation (9 tiles fill a 3x3 block, 18 uses cover 16 cells) yet has no
    # solution, found by exhaustive search: a 4x4 grid with R=2 needs some tile 3 times.
    pool = Pool(16, 9, seed=9)
    opts = Repeat(min_distance=2, max_uses=2)
    opts.check_pool(4, 4, 9)
    with pytest.raises(MatchError, match="lower --min-distance .* or raise --max-uses"):
        run(4, 4, pool, 2, opts)
    assert pool.widen_calls[-1][1] == 9  # gave up only after considering every tile


def test_large_grid_runs():
    rng = np.random.default_rng(10)
    rows = cols = 256
    n_tiles, k = 5000, 32
    ids = np.empty((rows * cols, k), dtype=np.int64)
    dist = np.sort(rng.random((rows * cols, k), dtype=np.float32), axis=1)
    for i in range(k):  # distinct random ids per row, without a 65k x 5k distance matrix
        ids[:, i] = (rng.integers(0, n_tiles // k, rows * cols) * k + i)
    tiles = rng.random((n_tiles,), dtype=np.float32)

    def widen(cells, kk, exclude):
        kk = min(kk, n_tiles)
        return (np.tile(np.arange(kk, dtype=np.int64), (cells.size, 1)),
                np.tile(np.sort(tiles)[:kk], (cells.size, 1)))

    opts = Repeat(min_distance=3, max_uses=20, usage_penalty=0.01, seed=5)
    a = assign(rows, cols, ids, dist, n_tiles, opts, widen)
    assert (a.tile_ids >= 0).all()
    assert np.bincount(a.tile_ids.ravel()).max() <= 20
