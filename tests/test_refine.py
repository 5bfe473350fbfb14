"""Regret order and local refinement: every constraint stays exact, the total cost never rises,
the result is a function of the seed, and a converged result has no improving move left."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mosaicdb.errors import MatchError, UsageError
from mosaicdb.match.options import MatchOptions
from mosaicdb.match.refine import refine, total_cost
from test_assign import Pool, Repeat, check_valid, greedy_case, greedy_guaranteed, options_rejected, run


def objective(pool: Pool, tile_ids: np.ndarray, penalty: float) -> float:
    """The refinement objective recomputed from scratch: true distances + penalty * sum u(u-1)/2."""
    return total_cost(tile_ids, pool.true_cost(tile_ids), penalty)


def improving_reassignments(a, pool: Pool, k: int, opts: MatchOptions) -> list:
    """Single-cell moves to a free candidate that would lower the objective (plain Python)."""
    ids, dist = pool.candidates(k)
    t = a.tile_ids
    rows, cols = t.shape
    uses = {int(v): int(c) for v, c in zip(*np.unique(t, return_counts=True))}
    found = []
    for cell in range(rows * cols):
        r, c = divmod(cell, cols)
        cur = int(t[r, c])
        R = opts.min_distance
        window = t[max(r - R, 0):r + R + 1, max(c - R, 0):c + R + 1]
        for cand, d in zip(ids[cell], dist[cell]):
            cand = int(cand)
            if cand < 0 or cand == cur:
                continue
            if opts.max_uses and uses.get(cand, 0) >= opts.max_uses:
                continue
            if R and (window == cand).any():
                continue
            gain = a.cost[r, c] - d - opts.usage_penalty * (uses.get(cand, 0) - (uses[cur] - 1))
            if gain > 1e-5:
                found.append((cell, cand, float(gain)))
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(greedy_case)
def test_regret_and_refinement_keep_every_constraint(case):
    """Default greedy (regret order + refinement): no tile within the radius, uses <= cap, costs
    are the true distances, the same seed gives the same mosaic, refinement never raised the
    objective, and when it converged no single reassignment would lower it."""
    rows, cols, k = case["rows"], case["cols"], case["k"]
    pool = Pool(rows * cols, case["n_tiles"], case["seed"], spread=case["spread"])
    opts = Repeat(min_distance=case["min_distance"], max_uses=case["max_uses"],
                  usage_penalty=case["usage_penalty"], seed=case["seed"] % 1000, refine_passes=50, refine_seconds=60)
    if options_rejected(rows, cols, pool.n_tiles, opts):
        return
    try:
        a = run(rows, cols, pool, k, opts)
    except MatchError:
        event("stuck")
        assert not greedy_guaranteed(rows, cols, pool.n_tiles, opts)
        return
    check_valid(a, rows, cols, pool, opts)
    st_ = a.stats["refine"]
    assert a.stats["order"] == "regret"
    assert st_["total_cost_after"] <= st_["total_cost_before"] + 1e-6
    np.testing.assert_allclose(st_["total_cost_after"], objective(pool, a.tile_ids, opts.usage_penalty), rtol=1e-5)
    event(f"moves: {'yes' if st_['reassigned'] + st_['swapped'] else 'no'}")
    if st_["stopped"] == "converged":
        assert improving_reassignments(a, pool, k, opts) == []
    again = run(rows, cols, pool, k, opts)
    np.testing.assert_array_equal(again.tile_ids, a.tile_ids)
    np.testing.assert_array_equal(again.cost, a.cost)


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(2, 14), cols=st.integers(2, 14), radius=st.integers(0, 3), cap=st.integers(0, 5),
       penalty=st.sampled_from([0.0, 0.1, 1.0]), n_tiles=st.integers(40, 200), seed=st.integers(0, 10_000))
def test_refine_from_any_valid_start_never_raises_cost_or_breaks_a_constraint(rows, cols, radius, cap, penalty,
                                                                              n_tiles, seed):
    """Refinement alone, from a random-order greedy start: constraints hold after it, the
    objective does not rise, and every cell's cost is the true distance of its tile."""
    pool = Pool(rows * cols, n_tiles, seed, spread=0.3)
    opts = Repeat(min_distance=radius, max_uses=cap, usage_penalty=penalty, seed=seed, order="random",
                  refine_passes=0)
    if options_rejected(rows, cols, pool.n_tiles, opts) or not greedy_guaranteed(rows, cols, n_tiles, opts):
        return
    a = run(rows, cols, pool, 8, opts)
    before = objective(pool, a.tile_ids, penalty)
    ids, dist = pool.candidates(8)
    stats = refine(a.tile_ids, a.cost, ids, dist, Repeat(min_distance=radius, max_uses=cap, usage_penalty=penalty,
                                                           seed=seed, refine_passes=20))
    check_valid(a, rows, cols, pool, opts)
    after = objective(pool, a.tile_ids, penalty)
    assert after <= before + 1e-6
    np.testing.assert_allclose([stats["total_cost_before"], stats["total_cost_after"]], [before, after], rtol=1e-5)
    event("improved" if after < before - 1e-9 else "unchanged")


def test_refinement_finds_a_swap_the_greedy_missed():
    """Two cells, two tiles, min-distance 1 (they must differ): greedy gives cell 0 its best
    tile; the swap costs 0.1 + 0.1 instead of 0.0 + 1.0."""
    ids = np.array([[5, 7], [5, 7]], np.int64)
    dist = np.array([[0.0, 0.1], [0.1, 1.0]], np.float32)
    tile = np.array([[5, 7]], np.int64)
    cost = np.array([[0.0, 1.0]], np.float32)
    stats = refine(tile, cost, ids, dist, Repeat(min_distance=1))
    np.testing.assert_array_equal(tile, [[7, 5]])
    np.testing.assert_allclose(cost, [[0.1, 0.1]])
    assert stats["swapped"] == 1 and stats["reassigned"] == 0
    assert stats["total_cost_before"] == pytest.approx(1.0) and stats["total_cost_after"] == pytest.approx(0.2)


def test_refinement_swaps_past_a_max_uses_cap():
    """Tile 1 is used up (--max-uses 1) by a cell that barely prefers it; the cell that needs it
    gets it by a swap, never by a third use."""
    ids = np.array([[1, 2], [1, 2]], np.int64)
    dist = np.array([[0.0, 5.0], [0.4, 0.5]], np.float32)
    tile = np.array([[2, 1]], np.int64)  # cell 0 has the bad one
    cost = np.array([[5.0, 0.4]], np.float32)
    stats = refine(tile, cost, ids, dist, Repeat(max_uses=1))
    np.testing.assert_array_equal(tile, [[1, 2]])
    assert stats["swapped"] == 1


def test_refinement_budget():
    pool = Pool(40 * 40, 300, 3)
    opts = dict(min_distance=3, seed=1, order="random")
    a = run(40, 40, pool, 16, Repeat(**opts, refine_passes=0))
    assert a.stats["refine"]["stopped"] == "off" and a.stats["refine"]["passes"] == 0
    b = run(40, 40, pool, 16, Repeat(**opts, refine_passes=3, refine_seconds=0))
    assert b.stats["refine"]["stopped"] == "seconds" and b.stats["refine"]["cells_visited"] == 0
    np.testing.assert_array_equal(a.tile_ids, b.tile_ids)
    c = run(40, 40, pool, 16, Repeat(**opts, refine_passes=1, refine_seconds=60))
    assert c.stats["refine"]["passes"] == 1 and c.stats["refine"]["cells_visited"] == 1600
    assert c.stats["refine"]["total_cost_after"] < a.stats["refine"]["total_cost_after"]
    for bad, words in (({"refine_passes": -1}, "--refine-passes"), ({"refine_seconds": float("nan")}, "--refine-seconds"),
                       ({"order": "best"}, "unknown --order 'best'.*random, regret")):
        with pytest.raises(UsageError, match=words):
            MatchOptions(**bad)


@pytest.mark.parametrize("radius, cap, penalty", [(1, 0, 0.0), (2, 0, 0.0), (3, 0, 0.0), (0, 2, 0.0), (2, 3, 0.0)])
def test_regret_order_costs_less_than_random_order(radius, cap, penalty):
    """Over 12 seeded instances where the constraint bites (few tiles near the cells), the
    regret order's greedy total cost is lower than the random order's on average."""
    gains = []
    for seed in range(12):
        pool = Pool(24 * 24, 400, seed, spread=0.15)
        costs = {}
        for order in ("random", "regret"):
            opts = Repeat(min_distance=radius, max_uses=cap, usage_penalty=penalty, seed=seed, order=order,
                          refine_passes=0)
            a = run(24, 24, pool, 16, opts)
            check_valid(a, 24, 24, pool, opts)
            costs[order] = objective(pool, a.tile_ids, penalty)
        gains.append(costs["random"] - costs["regret"])
    assert np.mean(gains) > 0, gains


def test_free_repeats_are_the_nearest_tiles():
    """Without constraints every cell gets its first candidate, whatever the order."""
    pool = Pool(30 * 20, 100, 4)
    a = run(20, 30, pool, 8, Repeat(seed=2))
    np.testing.assert_array_equal(a.tile_ids.ravel(), pool.candidates(1)[0][:, 0])
    assert a.stats["refine"]["reassigned"] == a.stats["refine"]["swapped"] == 0


def test_make_reports_total_cost_before_and_after_refinement(synthetic_db, tmp_path):
    """The metrics JSON of `mosaic make` says which order ran and what refinement did."""
    import json

    from PIL import Image

    from conftest import synthetic_image
    from mosaicdb.make import Maker
    from mosaicdb.render.options import RenderOptions
    target = tmp_path / "t.png"
    Image.fromarray(synthetic_image(np.random.default_rng(3), 160, 120, "blocks")).save(target)
    runs = {}
    for name, kw in (("default", {}), ("plain", {"order": "random", "refine_passes": 0})):
        # without dithering, which moves tiles after refinement (test_dither checks its own report)
        r = Maker(synthetic_db, MatchOptions(grid="20", min_distance=3, dither=0, **kw), RenderOptions(tile_px=4)).make(
            target, tmp_path / f"{name}.png")
        runs[name] = json.loads(r.metrics_path.read_text())["assignment"]
    d, p = runs["default"], runs["plain"]
    assert d["order"] == "regret" and p["order"] == "random"
    assert d["refine"]["stopped"] in ("converged", "passes") and p["refine"]["stopped"] == "off"
    assert d["refine"]["total_cost_after"] <= d["refine"]["total_cost_before"]
    assert p["refine"]["total_cost_after"] == p["refine"]["total_cost_before"]
    saved = json.loads((tmp_path / "default.mosaic.json").read_text())["match"]
    assert (saved["order"], saved["refine_passes"]) == ("regret", 4)
    tiles = np.load(tmp_path / "default.mosaic.npz")["cost"]
    np.testing.assert_allclose(float(tiles.sum()), d["refine"]["total_cost_after"], rtol=1e-4)


def test_make_cli_order_and_refinement_flags(synthetic_db, tmp_path):
    from PIL import Image

    from clirun import invoke_cli
    from conftest import synthetic_image
    target = tmp_path / "t.png"
    Image.fromarray(synthetic_image(np.random.default_rng(5), 90, 60, "gradient")).save(target)

    def run_cli(*args):
        return invoke_cli("make", "--db", synthetic_db.path, target, "-q", *args)

    res = run_cli("--out", tmp_path / "a.png", "--grid", "12", "--order", "random", "--refine-passes", "0")
    assert res.exit_code == 0, res.output
    import json
    m = json.loads((tmp_path / "a.mosaic.json").read_text())["match"]
    assert m["order"] == "random" and m["refine_passes"] == 0
    res = run_cli("--out", tmp_path / "b.png", "--refine-passes", "-1")
    assert res.exit_code == 2 and "--refine-passes" in res.output
    res = run_cli("--out", tmp_path / "b.png", "--order", "best")
    assert res.exit_code == 2 and "regret" in res.output
    res = run_cli("--out", tmp_path / "b.png", "--refine-seconds", "nan")
    assert res.exit_code == 2 and "--refine-seconds" in res.output
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("seed", range(6))  # both visiting orders of the two cells occur
@pytest.mark.parametrize("constraint", ["radius", "cap"])
def test_a_cell_that_found_no_move_wakes_when_its_tile_is_freed(seed, constraint):
    """Cell 1 wants tile 5, held by cell 0 (within --min-distance 1, or at --max-uses 1), and
    cannot swap for it; once cell 0 moves on to tile 6, cell 1 must get tile 5 whatever the
    order in which they were visited."""
    ids = np.array([[6, 5], [5, 7]], np.int64)
    dist = np.array([[0.1, 0.2], [0.1, 0.5]], np.float32)
    tile = np.array([[5, 7]], np.int64)
    cost = np.array([[0.2, 0.5]], np.float32)
    opts = Repeat(min_distance=1, seed=seed) if constraint == "radius" else Repeat(max_uses=1, seed=seed)
    stats = refine(tile, cost, ids, dist, opts)
    np.testing.assert_array_equal(tile, [[6, 5]])
    np.testing.assert_allclose(cost, [[0.1, 0.1]])
    assert stats["stopped"] == "converged" and stats["reassigned"] == 2


def test_cells_are_visited_a_block_at_a_time_in_a_seeded_order():
    """visit_order: every cell once; _BLOCK x _BLOCK blocks one after the other, row by row
    inside; the blocks' order drawn from the seed."""
    from mosaicdb.match.refine import _BLOCK, visit_order
    rows, cols = 2 * _BLOCK + 5, 3 * _BLOCK - 7
    order = visit_order(rows, cols, 1)
    np.testing.assert_array_equal(np.sort(order), np.arange(rows * cols))
    r, c = np.divmod(order, cols)
    block = (r // _BLOCK) * 3 + c // _BLOCK
    changes = np.flatnonzero(np.diff(block)) + 1
    assert len(changes) == 3 * 3 - 1  # each block in one run
    for run in np.split(np.arange(len(order)), changes):
        key = r[run] * cols + c[run]
        assert (np.diff(key) > 0).all()  # row by row inside the block
    firsts = [visit_order(rows, cols, s)[0] for s in range(8)]
    assert len(set(firsts)) > 1  # the blocks' order follows the seed
    np.testing.assert_array_equal(visit_order(rows, cols, 1), order)
    assert visit_order(0, 0, 1).size == 0 and visit_order(1, 1, 1).tolist() == [0]
