"""Dithering (`--dither`): every constraint stays exact, the objective J never rises and is what
a from-scratch computation gives, a converged result (every candidate priced exactly) has no
improving move left, the result is a function of the seed, on a flat target between two tiles
it mixes them, and its views are the maps mosaicdb.evaluate measures through."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mosaicdb.errors import MatchError, UsageError
from mosaicdb.feature_kinds import LabGrid, Pyramid
from mosaicdb.features import rgb_to_lab
from mosaicdb.match.assign import assign
from mosaicdb.match import dither as dither_mod
from mosaicdb.match.dither import objective
from mosaicdb.match.options import DEFAULT_DITHER, MatchOptions
from mosaicdb.match.views import canvas, views
from test_assign import Pool, Repeat, check_valid, greedy_guaranteed, options_rejected


def grid_views(rows, cols, p=2, px=6):
    """The views of a rows x cols grid over a target of px pixels a cell."""
    return views(rows, cols, p, rows * px, cols * px)


class Colours:
    """Random 2 x 2 pixels for a Pool's tiles (by id) and cells."""

    def __init__(self, pool: Pool, seed: int, scale: float = 40.0):
        rng = np.random.default_rng(seed + 1)
        self.pool = pool
        self.tiles = (rng.random((pool.n_tiles, 2, 2, 3)) * scale).astype(np.float32)
        self.cells = (rng.random((pool.cells.shape[0], 2, 2, 3)) * scale).astype(np.float32)

    def tile_sub(self, ids):
        return self.tiles[np.searchsorted(self.pool.ids, np.asarray(ids))]

    def j(self, tile_ids, cost, rows, cols, weight):
        return objective(self.tile_sub(tile_ids.ravel()), self.cells, rows, cols, grid_views(rows, cols), weight)


def run(rows, cols, pool, colours, k, opts):
    ids, dist = pool.candidates(k)
    return assign(rows, cols, ids, dist, pool.n_tiles, opts, pool.widen,
                  dither_input=(colours.tile_sub, colours.cells, grid_views(rows, cols)))


def improving_moves(a, pool, colours, k, opts) -> list:
    """Single-cell moves to a free candidate that lower J, each J computed from scratch."""
    ids, dist = pool.candidates(k)
    rows, cols = a.tile_ids.shape
    base = colours.j(a.tile_ids, a.cost, rows, cols, opts.dither)
    uses = {int(v): int(c) for v, c in zip(*np.unique(a.tile_ids, return_counts=True))}
    found = []
    for cell in range(rows * cols):
        r, c = divmod(cell, cols)
        cur = int(a.tile_ids[r, c])
        R = opts.min_distance
        window = a.tile_ids[max(r - R, 0):r + R + 1, max(c - R, 0):c + R + 1]
        for cand, d in zip(ids[cell], dist[cell]):
            cand = int(cand)
            if cand < 0 or cand == cur or (R and (window == cand).any()):
                continue
            if opts.max_uses and uses.get(cand, 0) >= opts.max_uses:
                continue
            if opts.usage_penalty and uses.get(cand, 0) > uses[cur] - 1:
                continue
            t2, c2 = a.tile_ids.copy(), a.cost.copy()
            t2[r, c], c2[r, c] = cand, d
            gain = base - colours.j(t2, c2, rows, cols, opts.dither)
            if gain > 1e-3 * max(1.0, base) * 1e-3:
                found.append((cell, cand, gain))
    return found


def improving_trades(a, pool, colours, k, opts) -> list:
    """Trades the pass promises to find once converged: a cell and the one cell within
    --min-distance holding its candidate t trade tiles (t not used up under --max-uses; that cell
    has ours among its candidates, no other copy of ours is near it), J falls, and so would it if
    our cell alone took t (the other cell's side is found from it). Each J from scratch."""
    ids, dist = pool.candidates(k)
    rows, cols = a.tile_ids.shape
    R = opts.min_distance
    if not R:
        return []
    t0, c0 = a.tile_ids, a.cost
    base = colours.j(t0, c0, rows, cols, opts.dither)
    found = []
    for cell in range(rows * cols):
        r, c = divmod(cell, cols)
        cur = int(t0[r, c])
        for cand, d in zip(ids[cell], dist[cell]):
            cand = int(cand)
            if cand < 0 or cand == cur:
                continue
            win = [(rr, cc) for rr in range(max(r - R, 0), min(r + R + 1, rows))
                   for cc in range(max(c - R, 0), min(c + R + 1, cols)) if t0[rr, cc] == cand]
            if len(win) != 1 or (opts.max_uses and (t0 == cand).sum() >= opts.max_uses):
                continue
            ry, cy = win[0]
            y = ry * cols + cy
            row = list(ids[y])
            if cur not in row:
                continue
            near = [(rr, cc) for rr in range(max(ry - R, 0), min(ry + R + 1, rows))
                    for cc in range(max(cy - R, 0), min(cy + R + 1, cols)) if t0[rr, cc] == cur and (rr, cc) != (r, c)]
            if near:
                continue
            solo_t, solo_c = t0.copy(), c0.copy()
            solo_t[r, c], solo_c[r, c] = cand, d
            if colours.j(solo_t, solo_c, rows, cols, opts.dither) >= base - 1e-6 * max(1.0, base):
                continue
            tr_t, tr_c = solo_t.copy(), solo_c.copy()
            tr_t[ry, cy], tr_c[ry, cy] = cur, dist[y][row.index(cur)]
            gain = base - colours.j(tr_t, tr_c, rows, cols, opts.dither)
            if gain > 1e-6 * max(1.0, base):
                found.append((cell, y, cand, gain))
    return found


dither_case = st.fixed_dictionaries({
    "rows": st.integers(1, 10), "cols": st.integers(1, 10), "k": st.integers(1, 8),
    "n_tiles": st.integers(4, 120), "seed": st.integers(0, 10_000),
    "min_distance": st.integers(0, 3), "max_uses": st.sampled_from([0, 0, 1, 2, 5]),
    "usage_penalty": st.sampled_from([0.0, 0.0, 0.05]), "weight": st.sampled_from([0.25, 1.0, 4.0, 100.0]),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dither_case, st.booleans())
def test_dithering_keeps_every_constraint_and_never_raises_its_objective(case, exhaustive):
    """As it runs (candidates ranked by an estimate, the best few priced exactly, cells looked at
    again only when something near them changed) and exhaustively (every cell, every candidate
    priced exactly: then a converged result has no improving move left)."""
    saved = dither_mod._EXHAUSTIVE
    dither_mod._EXHAUSTIVE = exhaustive
    try:
        _check_dithering(case, exhaustive)
    finally:
        dither_mod._EXHAUSTIVE = saved


def _check_dithering(case, exhaustive):
    rows, cols, k = case["rows"], case["cols"], case["k"]
    pool = Pool(rows * cols, case["n_tiles"], case["seed"], spread=0.5)
    colours = Colours(pool, case["seed"])
    opts = Repeat(min_distance=case["min_distance"], max_uses=case["max_uses"], usage_penalty=case["usage_penalty"],
                  seed=case["seed"] % 1000, refine_passes=50, refine_seconds=60, dither=case["weight"])
    if options_rejected(rows, cols, pool.n_tiles, opts):
        return
    try:
        a = run(rows, cols, pool, colours, k, opts)
    except MatchError:
        assert not greedy_guaranteed(rows, cols, pool.n_tiles, opts)
        return
    check_valid(a, rows, cols, pool, opts)  # constraints, and each cost the true distance of its tile
    d = a.stats["dither"]
    assert d["weight"] == case["weight"]
    assert d["objective_after"] <= d["objective_before"] + 1e-6 * max(1.0, d["objective_before"])
    np.testing.assert_allclose(d["objective_after"], colours.j(a.tile_ids, a.cost, rows, cols, opts.dither),
                               rtol=1e-6)
    if opts.usage_penalty:  # moves never raise the usage term (the refinement's result is the start)
        start = run(rows, cols, pool, colours, k, Repeat(**{**opts.to_json(), "dither": 0.0}))

        def usage(t):
            u = np.unique(t, return_counts=True)[1]
            return int((u * (u - 1)).sum())
        assert usage(a.tile_ids) <= usage(start.tile_ids)
    event(f"moves: {'yes' if d['moves'] else 'no'}, trades: {'yes' if d['swapped'] else 'no'}")
    if d["stopped"] == "converged" and exhaustive:
        assert improving_moves(a, pool, colours, k, opts) == []
        assert improving_trades(a, pool, colours, k, opts) == []
    again = run(rows, cols, pool, colours, k, opts)
    np.testing.assert_array_equal(again.tile_ids, a.tile_ids)
    np.testing.assert_array_equal(again.cost, a.cost)


def test_a_flat_target_between_two_tiles_is_dithered():
    """A flat grey of 128 and tiles of 120 and 136 only: each cell's own cost is 8 either way,
    so without dithering every cell takes the same tile and the mosaic reads 8 levels off; with
    it the two mix, and seen whole (64 px for 96 rows of cells) the error falls by over 80 %."""
    rows, cols = 96, 128
    ids = np.tile(np.array([[3, 7]], np.int64), (rows * cols, 1))
    dist = np.full((rows * cols, 2), 8.0, np.float32)
    subs = {3: np.full((2, 2, 3), 120.0, np.float32), 7: np.full((2, 2, 3), 136.0, np.float32)}

    def tile_sub(t):
        return np.stack([subs[int(x)] for x in np.asarray(t)])

    cells = np.full((rows * cols, 2, 2, 3), 128.0, np.float32)
    v = grid_views(rows, cols)
    out = {}
    for w in (0.0, DEFAULT_DITHER):
        opts = Repeat(dither=w)
        a = assign(rows, cols, ids, dist, 2, opts, None, dither_input=(tile_sub, cells, v))
        whole = v[1].apply(canvas(tile_sub(a.tile_ids.ravel()) - cells, rows, cols))
        out[w] = float(np.mean(whole ** 2))
        np.testing.assert_array_equal(a.cost, 8.0)
    assert out[0.0] > 60 and out[DEFAULT_DITHER] < 0.2 * out[0.0]


def test_assign_dithers_only_with_resolved_options_and_colours():
    """The default (None) means "resolve me": assign() leaves it alone, like an unresolved radius;
    a weight without the colours it needs is a programming error."""
    pool = Pool(8 * 9, 60, 5)
    colours = Colours(pool, 5)
    ids, dist = pool.candidates(6)
    a = run(8, 9, pool, colours, 6, Repeat(min_distance=1))
    b = assign(8, 9, ids, dist, pool.n_tiles, Repeat(min_distance=1, dither=0.0), pool.widen)
    assert "dither" not in a.stats and "dither" not in b.stats
    np.testing.assert_array_equal(a.tile_ids, b.tile_ids)
    with pytest.raises(ValueError, match="dither_input"):
        assign(8, 9, ids, dist, pool.n_tiles, Repeat(min_distance=1, dither=0.5), pool.widen)


def test_refine_passes_zero_turns_dithering_off_and_refuses_an_explicit_weight():
    """--refine-passes 0 (the matching before issue 12) resolves the default to 0; an explicit
    weight with it would do nothing, so it is refused; the pass itself, given no passes, moves
    nothing."""
    from types import SimpleNamespace

    from mosaicdb.match.dither import dither
    assert MatchOptions(refine_passes=0).resolved(6, 6, 100)[0].dither == 0.0
    with pytest.raises(UsageError, match="--refine-passes 0"):
        MatchOptions(dither=1.0, refine_passes=0)
    pool = Pool(6 * 6, 40, 2)
    colours = Colours(pool, 2)
    a = run(6, 6, pool, colours, 6, Repeat())
    ids, dist = pool.candidates(6)
    before = a.tile_ids.copy()
    opts = SimpleNamespace(dither=1.0, refine_passes=0, refine_seconds=10.0, seed=0, min_distance=0, max_uses=0,
                           usage_penalty=0.0)
    st_ = dither(a.tile_ids, a.cost, ids, dist, colours.tile_sub, colours.cells, grid_views(6, 6), opts)
    assert st_["moves"] == 0 and st_["stopped"] == "off"
    np.testing.assert_array_equal(a.tile_ids, before)


@pytest.mark.parametrize("rows,cols,p,h,w", [(42, 64, 8, 504, 768), (9, 7, 4, 200, 150), (5, 6, 2, 30, 36),
                                              (64, 64, 2, 512, 512)])
def test_views_are_the_maps_evaluate_measures_through(rows, cols, p, h, w):
    """The close view of a canvas is the Gaussian-pyramid level of it brought to the target's
    size (evaluate.pyramid_mse), the whole view it at 64 px on the short side (evaluate.psnr_at);
    the bands are those maps' weights: the matrices they make give the same views."""
    import cv2

    from mosaicdb.evaluate import _resize, gaussian_pyramid
    from mosaicdb.evaluate import short_side_size
    from mosaicdb.match.views import WHOLE_SHORT, close_level
    close, whole = views(rows, cols, p, h, w)
    img = np.random.default_rng(rows).random((rows * p, cols * p, 3)).astype(np.float32)
    level = close_level(w, cols, rows * cols)
    want = list(gaussian_pyramid(_resize(img, h, w), level))[level]
    np.testing.assert_allclose(close.apply(img), want, atol=1e-5)
    wh, ww = short_side_size(h, w, WHOLE_SHORT)
    np.testing.assert_allclose(whole.apply(img), _resize(img, wh, ww), atol=1e-5)
    if wh <= rows * p and ww <= cols * p:
        np.testing.assert_allclose(whole.apply(img), cv2.resize(img, (ww, wh), interpolation=cv2.INTER_AREA),
                                   atol=1e-5)
    for v in (close, whole):
        ay, ax = v.matrices()
        dense = np.einsum("ay,yxc,bx->abc", ay.astype(np.float64), img, ax.astype(np.float64), optimize=True)
        np.testing.assert_allclose(dense, v.apply(img), atol=1e-5)


def test_the_close_view_and_the_canvas_stay_within_their_bounds():
    """Level 1 while a cell spans at most 16 px there, coarser beyond; the canvas is the close
    view's cell size rounded up to 2, 4 or 8 px; neither grows past MAX_VIEW_PIXELS."""
    from mosaicdb.match.views import MAX_VIEW_PIXELS, canvas_px, close_level
    assert close_level(768, 64, 64 * 42) == 1 and canvas_px(42, 64, 768) == 8        # 6 px a cell
    assert close_level(768, 128, 128 * 85) == 1 and canvas_px(85, 128, 768) == 4      # 3 px
    assert close_level(512, 256, 256 * 256) == 1 and canvas_px(256, 256, 512) == 2    # 1 px
    assert close_level(1560, 32, 32 * 16) == 2 and canvas_px(16, 32, 1560) == 8       # 48 px -> 12 px
    for rows, cols, w in ((2048, 2048, 65536), (1024, 1024, 30000), (300, 400, 20000)):
        level, p = close_level(w, cols, rows * cols), canvas_px(rows, cols, w)
        assert rows * cols * (w / cols / 2 ** level) ** 2 <= MAX_VIEW_PIXELS or w / cols / 2 ** level <= 1
        assert rows * cols * p * p <= MAX_VIEW_PIXELS or p == 2


# ---- options and features --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 101.0, "x"])
def test_bad_dither_weights_are_usage_errors(bad):
    with pytest.raises(UsageError, match="--dither"):
        MatchOptions(dither=bad)


def test_dither_is_refused_with_unique_and_with_turns():
    with pytest.raises(UsageError, match="--unique"):
        MatchOptions(dither=0.5, unique=True)
    with pytest.raises(UsageError, match="--orient all"):
        MatchOptions(dither=0.5, orient="all")


def test_the_default_weight_resolves_by_mode():
    def resolved(**kw):
        return MatchOptions(**kw).resolved(8, 8, 1000)[0].dither
    assert MatchOptions().dither is None
    assert resolved() == DEFAULT_DITHER == 0.3
    assert resolved(min_distance=3, max_uses=4) == DEFAULT_DITHER
    assert resolved(unique=True) == 0.0 and resolved(orient="all") == 0.0 and resolved(orient="mirror") == 0.0
    assert resolved(dither=0) == 0.0 and resolved(dither=2.5) == 2.5


def test_dither_is_saved_once_resolved():
    """Unresolved options leave it out (as before); resolved ones say it, and a saved 0 stays 0."""
    assert "dither" not in MatchOptions().to_json()
    for w in (0.0, 0.5):
        on = MatchOptions(dither=w)
        assert on.to_json()["dither"] == w and MatchOptions.from_json(on.to_json()) == on
    applied = MatchOptions().resolved(8, 8, 1000)[0]
    assert MatchOptions.from_json(applied.to_json()).dither == DEFAULT_DITHER


def _quadrant_means(blocks):
    n, s = blocks.shape[:2]
    return blocks.reshape(n, 2, s // 2, 2, s // 2, 3).astype(np.float64).mean(axis=(2, 4))


@pytest.mark.parametrize("spec", [Pyramid(), Pyramid("rgb", ((1, 1.0), (4, 2.0), (8, 1.0)), 16, 0),
                                  Pyramid("lab", ((1, 1.0), (2, 3.0), (4, 1.0)), 16, 0), LabGrid(4, 2.0)])
def test_sub_means_are_the_quadrant_colours(spec):
    blocks = np.random.default_rng(1).integers(0, 256, (5, spec.samples, spec.samples, 3), dtype=np.uint8)
    want = _quadrant_means(blocks if getattr(spec, "space", "lab") == "rgb" else rgb_to_lab(blocks))
    np.testing.assert_allclose(spec.sub_means(spec(blocks)), want, atol=1e-3)


def test_sub_means_are_none_without_an_even_level():
    assert LabGrid(3).sub_means(np.zeros((2, 30), np.float32)) is None
    assert Pyramid("rgb", ((1, 1.0),), 16, 0).sub_means(np.zeros((2, 3), np.float32)) is None
    assert LabGrid(4).sub_columns(8) is None and Pyramid("rgb", ((1, 1.0), (4, 1.0)), 16, 0).sub_columns(8) is None


@pytest.mark.parametrize("p", [4, 8])
@pytest.mark.parametrize("spec", [Pyramid(), Pyramid("rgb", ((1, 1.0), (8, 2.0)), 16, 0), LabGrid(8)])
def test_sub_means_at_finer_levels_are_the_block_colours(spec, p):
    from mosaicdb.features import block_means
    blocks = np.random.default_rng(p).integers(0, 256, (4, spec.samples, spec.samples, 3), dtype=np.uint8)
    src = blocks if getattr(spec, "space", "lab") == "rgb" else rgb_to_lab(blocks)
    want = block_means(src.astype(np.float32), p)
    np.testing.assert_allclose(spec.sub_means(spec(blocks), p=p), want, atol=1e-3)
    v = spec(blocks)
    np.testing.assert_array_equal(spec.sub_means(v[:, spec.sub_columns(p)], columns=True, p=p), spec.sub_means(v, p=p))


# ---- end to end --------------------------------------------------------------------------------------
def test_make_with_dither_reports_it_and_the_cli_checks_it(synthetic_db, tmp_path):
    from PIL import Image

    from clirun import invoke_cli
    from conftest import synthetic_image
    target = tmp_path / "t.png"
    Image.fromarray(synthetic_image(np.random.default_rng(5), 160, 120, "blocks")).save(target)

    def make(out, *args):
        return invoke_cli("make", "--db", synthetic_db.path, target, "-q", "--grid", "20", "--out", out, *args)

    res = make(tmp_path / "d.png", "--min-distance", "2")  # on by default
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "d.metrics.json").read_text())["assignment"]
    assert m["dither"]["weight"] == DEFAULT_DITHER
    assert m["dither"]["objective_after"] <= m["dither"]["objective_before"]
    assert m["dither"]["moves"] > 0
    assert json.loads((tmp_path / "d.mosaic.json").read_text())["match"]["dither"] == DEFAULT_DITHER
    res = make(tmp_path / "off.png", "--min-distance", "2", "--dither", "0")
    assert res.exit_code == 0, res.output
    assert "dither" not in json.loads((tmp_path / "off.metrics.json").read_text())["assignment"]
    assert json.loads((tmp_path / "off.mosaic.json").read_text())["match"]["dither"] == 0
    tiles = np.load(tmp_path / "d.mosaic.npz")["tile_ids"]
    assert tiles.shape == (15, 20) and np.isin(tiles, synthetic_db.ids()).all()
    for r in range(15):  # --min-distance 2 held
        for c in range(20):
            w = tiles[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3]
            assert (w == tiles[r, c]).sum() == 1
    for args, word in ((("--dither", "-1"), "--dither"), (("--dither", "nan"), "--dither"),
                       (("--dither", "1", "--unique"), "--unique"), (("--dither", "1", "--orient", "all"), "--orient")):
        res = make(tmp_path / "bad.png", *args)
        assert res.exit_code == 2 and word in res.output, res.output
        assert not (tmp_path / "bad.png").exists()


def test_a_database_without_2x2_colours_warns_by_default_and_refuses_when_asked(tmp_path, synthetic_tiles):
    """lab-grid at an odd grid holds no 2 x 2 colours: the default quietly goes without (and
    says so), an explicit --dither is a usage error naming the fix."""
    from mosaicdb import TileDB
    from mosaicdb.match.grid import cell_data, make_grid
    from mosaicdb.match.matcher import match
    with TileDB.create(tmp_path / "odd.db", features="lab-grid", feature_grid=3) as db:
        db.ingest([synthetic_tiles], workers=1)
        image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        g = make_grid(128, 96, "16")
        cells = cell_data(image, g, db.feature_spec)
        res = match(db, cells, g, MatchOptions(grid="16"))
        assert res.options.dither == 0.0 and "dither" not in res.assignment.stats
        assert any("no dithering" in w and "reindex" in w for w in res.warnings)
        with pytest.raises(UsageError, match="--dither needs colours at 2x2"):
            match(db, cells, g, MatchOptions(grid="16", dither=0.5))


def test_tile_colours_are_read_a_chunk_at_a_time(monkeypatch):
    """Memory stays bounded whatever the pool: the tiles' feature rows are read in chunks, and
    the result is the same."""
    from mosaicdb.match import dither as dither_mod
    pool = Pool(9 * 9, 80, 11, spread=0.5)
    colours = Colours(pool, 11)
    opts = Repeat(min_distance=1, dither=1.0)
    whole = run(9, 9, pool, colours, 8, opts)
    sizes = []

    def counting(ids):
        sizes.append(len(ids))
        return colours.tile_sub(ids)
    monkeypatch.setattr(dither_mod, "_SUB_CHUNK", 7)
    ids, dist = pool.candidates(8)
    chunked = assign(9, 9, ids, dist, pool.n_tiles, opts, pool.widen,
                     dither_input=(counting, colours.cells, grid_views(9, 9)))
    assert max(sizes) <= 7 and sum(sizes) == np.unique(np.concatenate([ids.ravel(), whole.tile_ids.ravel()])).size
    np.testing.assert_array_equal(chunked.tile_ids, whole.tile_ids)
    assert whole.stats["dither"]["moves"] > 0


@pytest.mark.parametrize("spec", [Pyramid(), Pyramid("rgb", ((1, 1.0), (4, 2.0), (8, 1.0)), 16, 0), LabGrid(4, 2.0)])
def test_sub_means_from_their_columns_alone(spec):
    """The matcher reads only `sub_columns()` of each tile's row: the same colours."""
    v = spec(np.random.default_rng(2).integers(0, 256, (6, spec.samples, spec.samples, 3), dtype=np.uint8))
    np.testing.assert_array_equal(spec.sub_means(v[:, spec.sub_columns()], columns=True), spec.sub_means(v))
    assert LabGrid(3).sub_columns() is None and Pyramid("rgb", ((1, 1.0),), 16, 0).sub_columns() is None


def test_minus_zero_is_zero_and_huge_saved_integers_are_usage_errors():
    assert str(MatchOptions(dither=-0.0).to_json()["dither"]) == "0.0"
    with pytest.raises(UsageError, match="--dither must be a finite number, got an integer of 401 digits"):
        MatchOptions(dither=10 ** 400)


def test_an_explicit_dither_on_a_database_without_2x2_colours_fails_before_any_output(tmp_path, synthetic_tiles):
    """Refused when the maker is set up (before the first target), so a batch into a new folder
    leaves no folder behind; the default goes without."""
    from PIL import Image

    from clirun import invoke_cli
    from mosaicdb import TileDB
    with TileDB.create(tmp_path / "odd.db", features="lab-grid", feature_grid=3) as db:
        db.ingest([synthetic_tiles], workers=1)
    targets = tmp_path / "t"
    targets.mkdir()
    for i in range(2):
        Image.fromarray(np.full((60, 80, 3), 40 * i, np.uint8)).save(targets / f"{i}.png")
    for jobs in ("1", "2"):
        res = invoke_cli("make", "--db", tmp_path / "odd.db", targets, "--out", tmp_path / f"out{jobs}", "--grid", "8",
                         "-q", "--dither", "0.7", "--jobs", jobs)
        assert res.exit_code == 2 and "--dither needs colours at 2x2" in res.output, res.output
        assert not (tmp_path / f"out{jobs}").exists()
    res = invoke_cli("make", "--db", tmp_path / "odd.db", targets, "--out", tmp_path / "outd", "--grid", "8")
    assert res.exit_code == 0, res.output
    assert "no dithering" in res.output and len(list((tmp_path / "outd").glob("*.metrics.json"))) == 2


def test_sub_mosaics_of_a_database_reindexed_without_2x2_colours_go_without(tmp_path, synthetic_tiles):
    """A mosaic saves its (resolved) weight; serving it with --recursive over a database since
    reindexed to features without 2x2 colours matches the sub-mosaics without dithering instead
    of failing every deep tile."""
    import shutil

    from PIL import Image

    from clirun import invoke_cli
    from mosaicdb import TileDB
    from mosaicdb import assignment as asg
    from mosaicdb.recursive.submosaic import RecursiveOptions, SubMosaics
    from mosaicdb.render.options import RenderOptions
    with TileDB.create(tmp_path / "a.db") as db:
        db.ingest([synthetic_tiles], workers=1)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    res = invoke_cli("make", "--db", tmp_path / "a.db", tmp_path / "t.png", "--out", tmp_path / "m.png", "--grid", "6",
                     "-q", "--min-distance", "1")
    assert res.exit_code == 0, res.output
    saved = asg.load(tmp_path / "m.png")
    assert saved.meta.match["dither"] == DEFAULT_DITHER
    shutil.copytree(tmp_path / "a.db", tmp_path / "b.db")
    res = invoke_cli("db", "reindex", tmp_path / "b.db", "--features", "lab-grid", "--feature-grid", "3", "-q")
    assert res.exit_code == 0, res.output
    with TileDB.open(tmp_path / "b.db", readonly=True) as db:
        subs = SubMosaics(db, saved, RenderOptions(tile_px=4), RecursiveOptions(depth=1, grid=4), disk=False)
        assert subs.mopts.dither == 0.0
        node = subs.node(int(saved.tile_ids[0, 0]))
        assert node.cells.saved.tile_ids.shape == (4, 4)
        subs.close()


def test_an_empty_grid_is_left_alone():
    from types import SimpleNamespace

    from mosaicdb.match.dither import dither
    opts = SimpleNamespace(dither=0.5, refine_passes=4, refine_seconds=10.0, seed=0, min_distance=0, max_uses=0,
                           usage_penalty=0.0)
    st_ = dither(np.empty((0, 5), np.int64), np.empty((0, 5), np.float32), np.empty((0, 3), np.int64),
                 np.empty((0, 3), np.float32), lambda ids: np.zeros((len(ids), 2, 2, 3)), np.empty((0, 2, 2, 3)),
                 None, opts)
    assert st_["moves"] == 0 and st_["objective_after"] == 0.0


def test_two_cells_that_block_each_other_trade_tiles():
    """--min-distance 1 on two neighbouring cells and two tiles: neither can take the other's
    tile, so only a trade can help. The bright cell holds the dark tile and the dark cell the
    bright one (each a hair nearer by its own cost): dithering trades them."""
    ids = np.array([[3, 7], [7, 3]], np.int64)
    dist = np.array([[8.0, 8.1], [8.0, 8.1]], np.float32)
    subs = {3: np.full((2, 2, 3), 40.0, np.float32), 7: np.full((2, 2, 3), 200.0, np.float32)}

    def tile_sub(t):
        return np.stack([subs[int(x)] for x in np.asarray(t)])

    cells = np.stack([np.full((2, 2, 3), 200.0, np.float32), np.full((2, 2, 3), 40.0, np.float32)])
    base = assign(1, 2, ids, dist, 2, Repeat(min_distance=1, dither=0.0), None)
    assert base.tile_ids.tolist() == [[3, 7]]
    a = assign(1, 2, ids, dist, 2, Repeat(min_distance=1, dither=0.5), None,
               dither_input=(tile_sub, cells, grid_views(1, 2)))
    assert a.tile_ids.tolist() == [[7, 3]] and a.stats["dither"]["swapped"] == 1
    np.testing.assert_allclose(a.cost, [[8.1, 8.1]], rtol=1e-6)


def test_an_out_of_range_weight_is_shown_as_given():
    with pytest.raises(UsageError, match=r"between 0 and 100, got 100\.0001$"):
        MatchOptions(dither=100.0001)


def test_tiles_whose_colours_are_not_finite_are_never_dithered_in():
    """Features damaged after the index was built: the index still offers such a tile, at a
    distance from its own copy (here the nearest of all), but its colours read NaN. Its NaN gain
    passed every `gain >= best` test: it was taken, and J turned NaN. Placed already, the pass
    leaves the grid alone (the matcher then matches again without it)."""
    from types import SimpleNamespace

    from mosaicdb.match.dither import dither
    rows, cols = 6, 8
    n = rows * cols
    ids = np.tile(np.array([[3, 7, 9]], np.int64), (n, 1))
    dist = np.tile(np.array([[8.0, 8.0, 1.0]], np.float32), (n, 1))
    subs = {3: np.full((2, 2, 3), 120.0, np.float32), 7: np.full((2, 2, 3), 136.0, np.float32),
            9: np.full((2, 2, 3), np.nan, np.float32)}

    def tile_sub(t):
        return np.stack([subs[int(x)] for x in np.asarray(t)])

    cells = np.full((n, 2, 2, 3), 128.0, np.float32)
    opts = SimpleNamespace(dither=0.5, refine_passes=4, refine_seconds=10.0, seed=0, min_distance=0, max_uses=0,
                           usage_penalty=0.0)
    tiles, cost = np.full((rows, cols), 3, np.int64), np.full((rows, cols), 8.0, np.float32)
    st_ = dither(tiles, cost, ids, dist, tile_sub, cells, grid_views(rows, cols), opts)
    assert st_["moves"] > 0 and not (tiles == 9).any() and np.isfinite(st_["objective_after"])
    assert np.isfinite(cost).all()
    tiles[0, 0], cost[0, 0] = 9, 1.0
    before = tiles.copy()
    st_ = dither(tiles, cost, ids, dist, tile_sub, cells, grid_views(rows, cols), opts)
    assert st_["stopped"] == "non-finite features" and st_["moves"] == 0
    np.testing.assert_array_equal(tiles, before)


def test_a_database_dithering_again_reads_its_colour_table_and_notices_a_changed_file(tmp_path, synthetic_tiles):
    """From the second target on, the colours come from one table of every tile (not the rows
    scattered over the memory map): the same mosaic; the table is dropped, not reused, once the
    features file changes (a reindex, an ingest, another process's repair)."""
    import shutil

    from mosaicdb import TileDB
    from mosaicdb.match import matcher
    from mosaicdb.match.grid import cell_data, make_grid
    with TileDB.create(tmp_path / "t.db") as db:
        db.ingest([synthetic_tiles], workers=1)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    g = make_grid(128, 96, "16")
    with TileDB.open(tmp_path / "t.db") as db:
        cells = cell_data(image, g, db.feature_spec)
        spec = db.feature_spec
        p = matcher._canvas_px(spec, g)
        cols = spec.sub_columns(p)
        cell_px = spec.sub_means(cells.features, p=p)
        runs = [matcher.match(db, cells, g, MatchOptions(grid="16", min_distance=1)) for _ in range(3)]
        table = db._dither_table[1]
        assert table is not None and np.array_equal(table, np.asarray(db.features()[:, cols]))
        for r in runs[1:]:
            np.testing.assert_array_equal(r.assignment.tile_ids, runs[0].assignment.tile_ids)
            assert r.assignment.stats["dither"]["moves"] == runs[0].assignment.stats["dither"]["moves"] > 0
        ids = db.ids()[:3]
        before = matcher._dither_input(db, spec, cell_px, g)[0](ids)
        np.testing.assert_array_equal(before, spec.sub_means(np.asarray(db.features()[ids, cols]), columns=True, p=p))
        f = db._features.read(db.next_id, mode="r+")   # as a repair by another process would
        f[ids, cols] += 10.0
        f.flush()
        del f
        after = matcher._dither_input(db, spec, cell_px, g)[0](ids)  # the changed rows, not the table's
        np.testing.assert_array_equal(after, spec.sub_means(np.asarray(db.features()[ids, cols]), columns=True, p=p))
        assert not np.array_equal(after, before)
    shutil.rmtree(tmp_path / "t.db")
