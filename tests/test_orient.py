"""Tile orientations (`--orient`, issue 12): features turn as a permutation, the matcher finds
tiles in any allowed turn through the one index, the assignment records each cell's turn (read
as untrusted input), and every renderer draws it; with no turn, nothing changes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from clirun import invoke_cli
from hypothesis import given, settings, strategies as st
from PIL import Image

from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.errors import UsageError
from mosaicdb.feature_kinds import KINDS, LabGrid, Pyramid
from mosaicdb.match.grid import cell_data, make_grid
from mosaicdb.match.matcher import match
from mosaicdb.match.options import MatchOptions
from mosaicdb.match.oriented import best_orientations, merge_distinct
from mosaicdb.orient import ORIENTS, orient_each, orient_pixels
from mosaicdb.render.cells import CellRenderer, PixelCache
from mosaicdb.render.options import RenderOptions
from test_pyramid import random_assignment
from test_render_cells import MODES, ref_blend_cells, ref_tile, ref_transfer

# orientation codes as numpy's own flips and turns: the reference for orient_pixels
NUMPY_TURNS = {0: lambda a: a, 1: np.fliplr, 2: np.flipud, 3: lambda a: np.rot90(a, 2),
               4: lambda a: a.transpose(1, 0, 2), 5: lambda a: np.rot90(a, -1), 6: lambda a: np.rot90(a, 1),
               7: lambda a: np.rot90(a, 2).transpose(1, 0, 2)}


@pytest.mark.parametrize("o", range(8))
def test_codes_are_the_eight_turns(o):
    a = np.random.default_rng(o).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(orient_pixels(a, o), NUMPY_TURNS[o](a))
    batch = np.stack([a, a[::-1]])
    np.testing.assert_array_equal(orient_each(batch, np.array([o, 0])), np.stack([NUMPY_TURNS[o](a), a[::-1]]))
    assert len({tuple(orient_pixels(np.arange(4).reshape(2, 2, 1), c).ravel()) for c in range(8)}) == 8


SPECS = [*KINDS.values(), Pyramid("rgb", ((1, 2.0), (2, 1.0), (4, 0.5), (8, 1.0), (16, 1.0))), LabGrid(8, 2.0)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.dim}")
@pytest.mark.parametrize("o", range(8))
def test_features_of_turned_pixels_are_a_permutation(spec, o):
    """The test that catches a wrong permutation: features(turned pixels) == features[:, perm]."""
    rng = np.random.default_rng(o)
    blocks = rng.integers(0, 256, (40, spec.samples, spec.samples, 3), dtype=np.uint8)
    f = spec(blocks)
    turned = spec(np.ascontiguousarray(orient_pixels(blocks, o)))
    perm = spec.orient_permutation(o)
    assert sorted(perm.tolist()) == list(range(spec.dim))
    np.testing.assert_allclose(turned, f[:, perm], rtol=0, atol=1e-4 * max(1.0, float(np.abs(f).max())))
    if o:  # and it is not the identity: a turn does change the vector of random pixels
        assert np.abs(turned - f).max() > 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 2 ** 32 - 1))
def test_merge_keeps_the_nearest_distinct_tiles(n_rows, width, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, 6, (n_rows, width))
    dist = rng.integers(0, 5, (n_rows, width)).astype(np.float32)
    k = int(rng.integers(1, width + 1))
    d, i = merge_distinct(dist, ids, k)
    for r in range(n_rows):
        best = {}
        for t, x in zip(ids[r].tolist(), dist[r].tolist()):
            if t >= 0:
                best[t] = min(best.get(t, np.inf), x)
        want = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))[:k]
        got = [(int(t), float(x)) for t, x in zip(i[r], d[r]) if t >= 0]
        assert got == want
        assert (i[r, len(want):] == -1).all() and np.isinf(d[r, len(want):]).all()


# ---- matching --------------------------------------------------------------------------------
S = 16   # a cell's samples and the tiles' size: the tile's 16 px thumbnail is its own pixels


def _turned_pool(tmp_path, n_cells: int, seed: int):
    """Target cells of random structured pixels, and a database holding each cell only as a
    turned copy (cell i stored turned by inverse(code_i), so code_i turns it back), plus
    distractors. Returns (db, target image, codes, the cell's tile id)."""
    from conftest import synthetic_image
    rng = np.random.default_rng(seed)
    cells = np.stack([synthetic_image(rng, S, S, kind) for kind in rng.choice(["blocks", "disc", "gradient"], n_cells)])
    cells = np.stack([c if len(np.unique(c.reshape(-1, 3), axis=0)) > 1 else c ^ np.eye(S, dtype=np.uint8)[..., None]
                      for c in cells])
    codes = rng.integers(0, 8, n_cells)
    inverse = {o: next(p for p in range(8) if np.array_equal(orient_pixels(orient_pixels(np.arange(4).reshape(2, 2, 1), p), o),
                                                              np.arange(4).reshape(2, 2, 1))) for o in range(8)}
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i, (c, o) in enumerate(zip(cells, codes)):
        Image.fromarray(np.ascontiguousarray(orient_pixels(c, inverse[int(o)]))).save(folder / f"c{i:03d}.png")
    for j in range(30):
        Image.fromarray(synthetic_image(rng, S, S, "noise")).save(folder / f"z{j:03d}.png")
    db = TileDB.create(tmp_path / "turned.db")
    db.ingest([folder], workers=1)
    names = {r["source"].rsplit("/", 1)[-1]: r["id"] for r in db.tiles(db.ids())}
    tid = np.array([names[f"c{i:03d}.png"] for i in range(n_cells)])
    return db, cells, codes, tid


def _target(cells, rows, cols) -> np.ndarray:
    return cells.reshape(rows, cols, S, S, 3).swapaxes(1, 2).reshape(rows * S, cols * S, 3)


def test_matcher_finds_turned_copies_with_their_turn(tmp_path):
    rows, cols = 4, 6
    db, cells, codes, tid = _turned_pool(tmp_path, rows * cols, seed=5)
    try:
        grid = make_grid(cols * S, rows * S, f"{cols}x{rows}")
        data = cell_data(_target(cells, rows, cols), grid, db.feature_spec)
        res = match(db, data, grid, MatchOptions(grid=f"{cols}x{rows}", min_distance=0, orient="all"))
        a = res.assignment
        np.testing.assert_array_equal(a.tile_ids.ravel(), tid)
        np.testing.assert_array_equal(a.orient.ravel(), codes)
        # the turned tile is the cell's pixels (to the few levels the stored thumbnail differs by)
        thumbs = np.asarray(db.thumbs(S)[a.tile_ids.ravel()])
        turned = orient_each(thumbs, a.orient.ravel()).astype(int)
        assert np.abs(turned - cells).mean() < 4
        assert np.abs(thumbs.astype(int) - cells)[codes != 0].mean() > 20
        # mirror only: cells whose copy needs a quarter/half turn cannot be matched exactly
        mirror = match(db, data, grid, MatchOptions(grid=f"{cols}x{rows}", min_distance=0, orient="mirror")).assignment
        assert set(np.unique(mirror.orient)) <= {0, 1}
        exact = np.isin(codes, (0, 1))
        np.testing.assert_array_equal(mirror.tile_ids.ravel()[exact], tid[exact])
        none = match(db, data, grid, MatchOptions(grid=f"{cols}x{rows}", min_distance=0)).assignment
        assert none.orient is None
        assert none.cost.ravel()[codes != 0].min() > 1.0   # without turns those cells are far
        # repeat control counts a tile however it is turned: the unique solver sees distinct tiles
        uniq = match(db, data, grid, MatchOptions(grid=f"{cols}x{rows}", unique=True, orient="all")).assignment
        np.testing.assert_array_equal(uniq.tile_ids.ravel(), tid)
        np.testing.assert_array_equal(uniq.orient.ravel(), codes)
    finally:
        db.close()


def test_repeat_control_counts_a_tile_in_any_turn(synthetic_db):
    """With every turn allowed, --min-distance and --max-uses still hold per tile id."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (12 * S, 12 * S, 3), dtype=np.uint8)
    grid = make_grid(12 * S, 12 * S, "12x12")
    data = cell_data(img, grid, synthetic_db.feature_spec)
    a = match(synthetic_db, data, grid, MatchOptions(grid="12x12", min_distance=2, max_uses=3, orient="all")).assignment
    ids = a.tile_ids
    assert np.unique(ids, return_counts=True)[1].max() <= 3
    for r in range(12):
        for c in range(12):
            win = ids[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3]
            assert (win == ids[r, c]).sum() == 1
    # each cell's turn is its tile's best, and the cost is that turn's exact distance
    turn, sq = best_orientations(synthetic_db.features(), data.features, ids, synthetic_db.feature_spec, range(8))
    np.testing.assert_array_equal(a.orient.ravel(), turn)
    np.testing.assert_allclose(a.cost.ravel(), np.sqrt(sq / synthetic_db.feature_spec.cost_divisor), rtol=1e-5)


def test_orient_none_matches_as_before(synthetic_db):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (10 * S, 10 * S, 3), dtype=np.uint8)
    grid = make_grid(10 * S, 10 * S, "10x10")
    data = cell_data(img, grid, synthetic_db.feature_spec)
    a = match(synthetic_db, data, grid, MatchOptions(grid="10x10")).assignment
    b = match(synthetic_db, data, grid, MatchOptions(grid="10x10", orient="none")).assignment
    np.testing.assert_array_equal(a.tile_ids, b.tile_ids)
    assert b.orient is None
    turned = match(synthetic_db, data, grid, MatchOptions(grid="10x10", orient="all")).assignment
    assert turned.orient.any() and turned.cost.sum() < a.cost.sum()


def test_options_validate_orient():
    with pytest.raises(UsageError, match="--orient.*all.*mirror.*none"):
        MatchOptions(orient="sideways")
    assert "orient" not in MatchOptions().to_json()      # files as before
    assert MatchOptions(orient="mirror").to_json()["orient"] == "mirror"
    assert MatchOptions.from_json(MatchOptions(orient="all").to_json()).orient == "all"
    assert ORIENTS["all"] == tuple(range(8))


# ---- the saved assignment --------------------------------------------------------------------
def _with_turns(saved, seed: int):
    turn = np.random.default_rng(seed).integers(0, 8, (saved.rows, saved.cols)).astype(np.uint8)
    return asg.SavedAssignment(saved.meta, saved.tile_ids, saved.cost, saved.target_mean, saved.target_std, turn)


def test_saved_orient_round_trips_and_old_files_load(synthetic_db, tmp_path):
    saved = _with_turns(random_assignment(synthetic_db, 5, 4, seed=1), 1)
    asg.save(tmp_path / "m.png", saved)
    back = asg.load(tmp_path / "m.png")
    np.testing.assert_array_equal(back.orient, saved.orient)
    plain = random_assignment(synthetic_db, 5, 4, seed=1)   # no turns: no array, as before
    asg.save(tmp_path / "p.png", plain)
    import zipfile
    assert zipfile.ZipFile(tmp_path / "p.mosaic.npz").namelist() == [
        "tile_ids.npy", "cost.npy", "target_mean.npy", "target_std.npy"]
    assert asg.load(tmp_path / "p.png").orient is None
    zeros = asg.SavedAssignment(plain.meta, plain.tile_ids, plain.cost, plain.target_mean, plain.target_std,
                                np.zeros((4, 5), np.uint8))
    asg.save(tmp_path / "z.png", zeros)
    assert (tmp_path / "z.mosaic.npz").read_bytes() == (tmp_path / "p.mosaic.npz").read_bytes()


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 5), 8, np.uint8), "codes above 7"),
    (np.ones((4, 5), np.int64), "orient is int64"),
    (np.ones((4, 5), np.float32), "orient is float32"),
    (np.ones((5, 4), np.uint8), r"shape \(5, 4\)"),
    (np.ones((4, 5, 1), np.uint8), "shape"),
])
def test_damaged_orient_is_refused(synthetic_db, tmp_path, bad, message):
    saved = random_assignment(synthetic_db, 5, 4, seed=1)
    asg.save(tmp_path / "m.png", saved)
    npz = tmp_path / "m.mosaic.npz"
    np.savez_compressed(npz, tile_ids=saved.tile_ids, cost=saved.cost, target_mean=saved.target_mean,
                        target_std=saved.target_std, orient=bad)
    with pytest.raises(UsageError, match=f"damaged.*{message}"):
        asg.load(tmp_path / "m.png")


# ---- rendering -------------------------------------------------------------------------------
def ref_paint_turned(db, saved, rows, cols, t, color, strength, target):
    """The per-cell reference: each cell's tile turned, then the pre-issue-18 per-tile transfer."""
    tiles = np.stack([np.ascontiguousarray(orient_pixels(ref_tile(db, int(saved.tile_ids[r, c]), t),
                                                         int(saved.orient[r, c]))) for r in rows for c in cols])
    mu = np.stack([saved.target_mean[r, c] for r in rows for c in cols])
    sd = np.stack([saved.target_std[r, c] for r in rows for c in cols])
    cells = ref_blend_cells(saved, target, rows, cols, t) if color == "blend" else None
    out = ref_transfer(tiles, mu, sd, color, strength, cells)
    return out.reshape(len(rows), len(cols), t, t, 3).swapaxes(1, 2).reshape(len(rows) * t, len(cols) * t, 3)


@pytest.fixture(scope="module")
def turned9(synthetic_db):
    return _with_turns(random_assignment(synthetic_db, 11, 9, seed=18), 4)


@pytest.mark.parametrize("t", [1, 3, 8, 16, 64, 80])
@pytest.mark.parametrize("color", MODES)
def test_turned_render_equals_per_cell_reference(synthetic_db, turned9, color, t):
    target = np.random.default_rng(3).integers(0, 256, (9 * 8, 11 * 8, 3), dtype=np.uint8)
    opts = RenderOptions(tile_px=t, color=color, color_strength=0.7)
    cr = CellRenderer(synthetic_db, turned9, opts, target=target, cache=PixelCache(synthetic_db, (t,)))
    np.testing.assert_array_equal(cr.region(0, 9, 0, 11, t),
                                  ref_paint_turned(synthetic_db, turned9, range(9), range(11), t, color, 0.7, target))
    rr, cc = np.array([1, 0, 1, 8, 7]), np.array([3, 2, 10, 9])
    np.testing.assert_array_equal(cr.paint(rr, cc, t),
                                  ref_paint_turned(synthetic_db, turned9, rr, cc, t, color, 0.7, target))


def test_unturned_assignment_renders_byte_identically(synthetic_db, tmp_path):
    from mosaicdb.render.output import render_saved
    plain = random_assignment(synthetic_db, 6, 5, seed=7)
    zeros = asg.SavedAssignment(plain.meta, plain.tile_ids, plain.cost, plain.target_mean, plain.target_std,
                                np.zeros((5, 6), np.uint8))
    for name, s in (("a", plain), ("b", zeros)):
        render_saved(synthetic_db, s, tmp_path / f"{name}.tif", RenderOptions(tile_px=64))
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


@pytest.mark.slow
def test_pyramid_reuses_encoded_tiles_per_turn(synthetic_db, tmp_path):
    """One tile in four turns at one TIFF tile per cell: the reused bytes must be per (tile,
    turn), and every level equals the in-memory render of the same turned assignment."""
    import tifffile
    from mosaicdb.render.output import render_saved
    from mosaicdb.render.rows import render_array
    tid = int(synthetic_db.ids()[5])
    meta = random_assignment(synthetic_db, 2, 2, seed=0).meta
    turn = np.array([[0, 1], [5, 0]], np.uint8)
    saved = asg.SavedAssignment(meta, np.full((2, 2), tid, np.int64), np.zeros((2, 2), np.float32),
                                np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32), turn)
    render_saved(synthetic_db, saved, tmp_path / "m.tif", RenderOptions(tile_px=256, codec="deflate"))
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        level0 = tif.pages[0].asarray()
    want = render_array(synthetic_db, saved, RenderOptions(tile_px=256))
    np.testing.assert_array_equal(level0, want)
    tile = want[:256, :256]
    np.testing.assert_array_equal(want[:256, 256:], tile[:, ::-1])
    np.testing.assert_array_equal(want[256:, :256], np.rot90(tile, -1))
    np.testing.assert_array_equal(want[256:, 256:], tile)


# ---- the command line ------------------------------------------------------------------------
def test_cli_make_orient(synthetic_db, tmp_path):
    from conftest import synthetic_image
    target = tmp_path / "t.png"
    Image.fromarray(synthetic_image(np.random.default_rng(0), 160, 120, "blocks")).save(target)
    out = tmp_path / "m.png"
    invoke_cli("make", "--db", synthetic_db.path, target, "--out", out, "--grid", "10", "--orient", "all",
               "--min-distance", "0", "-q", code=0)
    saved = asg.load(out)
    assert json.loads((tmp_path / "m.mosaic.json").read_text())["match"]["orient"] == "all"
    assert saved.orient is not None and saved.orient.max() <= 7
    counts = json.loads((tmp_path / "m.metrics.json").read_text())["orientations"]
    assert counts == np.bincount(saved.orient.ravel(), minlength=8).tolist()
    # `mosaic render` of the saved assignment draws the same turned tiles as make did
    invoke_cli("render", tmp_path / "m.mosaic.json", "--out", tmp_path / "r.png", "-q", code=0)
    made = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r.png").convert("RGB")), made)
    unturned = asg.SavedAssignment(saved.meta, saved.tile_ids, saved.cost, saved.target_mean, saved.target_std)
    from mosaicdb.render.rows import render_array
    assert (render_array(synthetic_db, unturned, RenderOptions()) != made).any()
    res = invoke_cli("make", "--db", synthetic_db.path, target, "--out", out, "--orient", "sideways", code=2)
    assert "--orient" in res.output and "mirror" in res.output
    res = invoke_cli("make", "--db", synthetic_db.path, target, "--out", tmp_path / "r.png", "--grid", "4",
                     "--orient", "mirror", "--recursive", "1", "--recursive-grid", "4", code=2)
    assert "--recursive" in res.output and "--orient" in res.output
    assert "--orient" in invoke_cli("make", "--help", code=0).output


@pytest.mark.slow
@pytest.mark.parametrize("color", ["none", "meanstd"])
def test_every_pyramid_level_is_turned(synthetic_db, tmp_path, color):
    import cv2
    import tifffile
    from mosaicdb.render.output import render_saved
    from mosaicdb.render.pyramid import plan_levels
    cols, rows, tile_px = 90, 50, 12   # levels at 12 and 6 px per cell, then resampled ones
    saved = _with_turns(random_assignment(synthetic_db, cols, rows, seed=3), 9)
    render_saved(synthetic_db, saved, tmp_path / "p.tif", RenderOptions(tile_px=tile_px, codec="deflate", color=color))
    levels, small_px = plan_levels(cols, rows, tile_px)
    assert len(levels) >= 3 and any(lv.cell_px is None for lv in levels)
    with tifffile.TiffFile(tmp_path / "p.tif") as tf:
        for lv, page in zip(levels, tf.pages):
            t = lv.cell_px or small_px
            ref = ref_paint_turned(synthetic_db, saved, range(rows), range(cols), t, color, 0.5, None)
            if lv.cell_px is None and ref.shape[:2] != (lv.height, lv.width):
                ref = cv2.resize(ref, (lv.width, lv.height), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(page.asarray(), ref, err_msg=f"level {lv.index}")


def test_print_with_bleed_is_turned(synthetic_db, tmp_path):
    import tifffile
    from mosaicdb.printing import PrintOptions, write_print
    from mosaicdb.printing.geometry import make_geometry
    saved = _with_turns(random_assignment(synthetic_db, 10, 7, seed=9), 2)
    opts = PrintOptions(size="10cm", dpi=100, bleed="6mm", compression="deflate", buffer_bytes=1 << 18,
                        render=RenderOptions(color="mean", workers=2))
    m = write_print(synthetic_db, saved, opts, tmp_path / "out", "mos")
    g, _ = make_geometry(10, 7, (10 / 2.54, None), 100, 6 / 25.4)
    ext = ref_paint_turned(synthetic_db, saved, g.row_map(), g.col_map(), g.cell_px, "mean", 0.5, None)
    canvas = ext[g.offset:g.offset + g.height, g.offset:g.offset + g.width]
    (p,) = m["panels"]
    x0, y0, x1, y1 = p["box_px"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / p["name"]), canvas[y0:y1, x0:x1])


def test_stacked_and_separate_searches_agree(synthetic_db, monkeypatch):
    """The turns searched in one stacked call or one call each give the same mosaic."""
    import mosaicdb.match.oriented as oriented
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (9 * S, 11 * S, 3), dtype=np.uint8)
    grid = make_grid(11 * S, 9 * S, "11x9")
    data = cell_data(img, grid, synthetic_db.feature_spec)
    opts = MatchOptions(grid="11x9", min_distance=1, max_uses=2, orient="all")
    a = match(synthetic_db, data, grid, opts).assignment
    monkeypatch.setattr(oriented, "_STACK_ROWS", 1)
    b = match(synthetic_db, data, grid, opts).assignment
    np.testing.assert_array_equal(a.tile_ids, b.tile_ids)
    np.testing.assert_array_equal(a.orient, b.orient)


def test_autoencoder_refuses_orient(synthetic_db, tmp_path):
    from mosaicdb.autoencoder.make import AutoMaker
    from mosaicdb.autoencoder.options import AutoOptions
    with pytest.raises(UsageError, match="--orient all.*--autoencoder"):
        AutoMaker(synthetic_db, MatchOptions(orient="all"), None, AutoOptions(model=str(tmp_path / "none")))
