"""The target's grid: --grid parsing, the crop policy, and cell features that are the tiles'
own features (so a target built from tiles finds those tiles again through the index)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mosaicdb.errors import UsageError
from mosaicdb.feature_kinds import LabGrid
from mosaicdb.features import cell_blocks, lab_features, samples_per_side
from mosaicdb.make import Maker
from mosaicdb.match.grid import MAX_CELLS, cell_data, load_target, make_grid, parse_grid
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions

S = samples_per_side(4)  # 16: samples per cell side for the default feature grid


# ---- parse_grid ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expect", [
    ("128", (128, None)), ("1", (1, None)), (" 64 ", (64, None)), (7, (7, None)),
    ("128x96", (128, 96)), ("128X96", (128, 96)), ("128×96", (128, 96)), ("64 x 48", (64, 48)),
    ("1x1", (1, 1)),
])
def test_parse_grid_forms(spec, expect):
    assert parse_grid(spec) == expect


@pytest.mark.parametrize("spec", ["", "0", "0x5", "5x0", "-3", "1.5", "abc", "12x", "x12", "12x34x5",
                                  "12,34", "12*34", "twelve"])
def test_parse_grid_errors_say_what_it_takes(spec):
    with pytest.raises(UsageError, match=r"--grid takes N .* or COLSxROWS") as e:
        parse_grid(spec)
    assert "\n" not in str(e.value)


# ---- make_grid: the crop policy ------------------------------------------------------------------
@pytest.mark.parametrize("w, h, spec, cols, rows, crop", [
    # Kodak landscape: 3 px cells, 170 whole rows, 2 px cropped from the short side (1 each end)
    (768, 512, "256", 256, 170, (0, 1, 768, 511)),
    (512, 768, "256", 170, 256, (1, 0, 511, 768)),           # portrait: N runs down the long side
    (768, 512, "64", 64, 42, (0, 4, 768, 508)),              # 12 px cells, 8 px cropped
    (512, 512, "8", 8, 8, (0, 0, 512, 512)),                 # nothing to crop
    (768, 512, "100x100", 100, 100, (128, 0, 640, 512)),     # centre square of a landscape
    (512, 768, "100x100", 100, 100, (0, 128, 512, 640)),     # and of a portrait
    (768, 512, "64x16", 64, 16, (0, 160, 768, 352)),         # wider than the target: crop height
    (768, 512, "16x64", 16, 64, (320, 0, 448, 512)),         # taller: crop width
    (768, 512, "3x2", 3, 2, (0, 0, 768, 512)),               # same aspect: nothing cropped
])
def test_make_grid_examples(w, h, spec, cols, rows, crop):
    g = make_grid(w, h, spec)
    assert (g.cols, g.rows, g.crop) == (cols, rows, crop)
    assert g.cells == cols * rows


@settings(max_examples=300, deadline=None)
@given(w=st.integers(1, 6000), h=st.integers(1, 6000), n=st.integers(1, 700))
def test_n_across_the_long_side_crops_less_than_a_cell(w, h, n):
    g = make_grid(w, h, str(n))
    long_, short = max(w, h), min(w, h)
    left, top, right, bottom = g.crop
    cw, ch = right - left, bottom - top
    assert 0 <= left and 0 <= top and right <= w and bottom <= h
    assert (left, top) == ((w - cw) // 2, (h - ch) // 2), "centred"
    landscape = w >= h
    assert (g.cols if landscape else g.rows) == n
    n_short = g.rows if landscape else g.cols
    crop_long, crop_short = (cw, ch) if landscape else (ch, cw)
    assert crop_long == long_, "the long side is never cropped"
    cell = long_ / n
    assert n_short >= 1
    if cell <= short:
        # square cells, as many whole ones as fit: less than one cell (plus rounding) is cut
        assert short - crop_short < cell + 0.5
        assert abs(crop_short - n_short * cell) <= 0.5 + 1e-9
        assert n_short == int(short / cell + 1e-6)
    else:
        # cells larger than the short side: one row (or column) of the whole short side
        assert (n_short, crop_short) == (1, short)


@settings(max_examples=300, deadline=None)
@given(w=st.integers(1, 6000), h=st.integers(1, 6000), cols=st.integers(1, 500), rows=st.integers(1, 500))
def test_cols_x_rows_centre_crops_to_the_grid_aspect(w, h, cols, rows):
    g = make_grid(w, h, f"{cols}x{rows}")
    left, top, right, bottom = g.crop
    cw, ch = right - left, bottom - top
    assert (g.cols, g.rows) == (cols, rows)
    assert 1 <= cw <= w and 1 <= ch <= h
    assert cw == w or ch == h, "one side is kept whole"
    assert (left, top) == ((w - cw) // 2, (h - ch) // 2)
    # the crop has the grid's aspect up to rounding to whole pixels (and at least one pixel)
    full_height = ch == h and (abs(cw - h * cols / rows) <= 0.5 + 1e-9 or (cw == 1 and h * cols / rows < 1))
    full_width = cw == w and (abs(ch - w * rows / cols) <= 0.5 + 1e-9 or (ch == 1 and w * rows / cols < 1))
    assert full_height or full_width
    assert (cw < w) + (ch < h) <= 1


def test_max_cells():
    side = int(MAX_CELLS ** 0.5)
    assert make_grid(4 * side, 4 * side, f"{side}x{side}").cells == MAX_CELLS
    for spec in (f"{side + 1}x{side}", str(side + 1), "5000x1000", "99999999"):
        with pytest.raises(UsageError, match="limit is") as e:
            make_grid(4 * side, 4 * side, spec)
        assert spec.split("x")[0] in str(e.value)


# ---- cell features are tile features ----------------------------------------------------------
def test_cell_features_are_lab_features_of_the_cell_blocks():
    rng = np.random.default_rng(3)
    rows, cols = 5, 7
    img = rng.integers(0, 256, (rows * S, cols * S, 3), dtype=np.uint8)
    g = make_grid(cols * S, rows * S, f"{cols}x{rows}")
    cd = cell_data(img, g, LabGrid(4, 1.0))
    blocks = cell_blocks(img, rows, cols)
    np.testing.assert_array_equal(cd.features, lab_features(blocks, 4, 1.0))
    np.testing.assert_allclose(cd.mean, blocks.reshape(rows, cols, -1, 3).mean(axis=2), rtol=1e-5)
    np.testing.assert_allclose(cd.std, blocks.reshape(rows, cols, -1, 3).std(axis=2), rtol=1e-4)
    # the mean weight and feature grid are passed through, not hard-wired
    assert not np.allclose(cell_data(img, g, LabGrid(4, 2.0)).features, cd.features)
    assert cell_data(img, g, LabGrid(2, 1.0)).features.shape == (rows * cols, 3 + 3 * 2 * 2)


def test_cell_colour_statistics_of_flat_and_two_tone_cells():
    """Flat cells: their colour and no spread; half-and-half cells: the mean and the std of two
    values (|a - b| / 2), per channel."""
    img = np.zeros((2 * S, 3 * S, 3), np.uint8)
    img[:S, :S] = (0, 0, 0)
    img[:S, S:2 * S] = (255, 255, 255)
    img[:S, 2 * S:] = (200, 17, 90)
    img[S:, :] = (10, 100, 250)
    img[S:, : S // 2] = (250, 100, 10)  # left half of the first cell of the second row
    cd = cell_data(img, make_grid(3 * S, 2 * S, "3x2"), LabGrid(4, 1.0))
    np.testing.assert_allclose(cd.mean[0], [[0, 0, 0], [255, 255, 255], [200, 17, 90]], atol=1e-3)
    np.testing.assert_allclose(cd.mean[1], [[130, 100, 130], [10, 100, 250], [10, 100, 250]], atol=1e-3)
    assert cd.std[0].max() < 0.05 and cd.std[1, 1:].max() < 0.05
    np.testing.assert_allclose(cd.std[1, 0], [120, 0, 120], atol=0.05)
    assert cd.mean.dtype == cd.std.dtype == np.float32


def _tile_layout(db, rows, cols, seed):
    """Distinct random live tile ids in a (rows, cols) layout."""
    rng = np.random.default_rng(seed)
    return rng.choice(db.ids(), size=rows * cols, replace=False).reshape(rows, cols)


def _target_of_tiles(db, layout, px, pad_before, pad_after, portrait):
    """The tiles' px thumbnails side by side, cell-aligned, with noise borders of the given
    widths added to the short side (the part the crop policy removes)."""
    rows, cols = layout.shape
    t = np.asarray(db.thumbs(px)[layout.ravel()]).reshape(rows, cols, px, px, 3)
    img = t.swapaxes(1, 2).reshape(rows * px, cols * px, 3)
    rng = np.random.default_rng(0)
    axis = 1 if portrait else 0
    shape = list(img.shape)
    shape[axis] = pad_before
    before = rng.integers(0, 256, shape, dtype=np.uint8)
    shape[axis] = pad_after
    after = rng.integers(0, 256, shape, dtype=np.uint8)
    return np.concatenate([before, img, after], axis=axis)


@pytest.mark.parametrize("portrait", [False, True])
def test_target_made_of_tiles_finds_those_tiles(synthetic_db, tmp_path, portrait):
    """Exact round trip: tiles' 16 px thumbnails laid out as a target, cell-aligned inside a
    border the crop removes, give cell features equal to the stored tile features, so every
    cell's nearest tile through the index, and the whole `Maker` pipeline, is that tile."""
    db = synthetic_db
    long_n, short_n = 8, 6
    layout = _tile_layout(db, *((long_n, short_n) if portrait else (short_n, long_n)), seed=1)
    rows, cols = layout.shape
    # 7 + 8 px of border: 15 < 16, so the N-form grid keeps exactly the tile rows, centred
    img = _target_of_tiles(db, layout, S, 7, 8, portrait)
    path = tmp_path / "target.png"
    Image.fromarray(img).save(path)

    target = load_target(path)
    g = make_grid(*target.size, str(long_n))
    assert (g.cols, g.rows) == (cols, rows)
    assert g.crop == ((7, 0, 7 + cols * S, rows * S) if portrait else (0, 7, cols * S, 7 + rows * S))
    cd = cell_data(target.image, g, db.feature_spec)
    np.testing.assert_array_equal(cd.features, np.asarray(db.features()[layout.ravel()]))
    d, ids = db.search(cd.features, 1)
    np.testing.assert_array_equal(ids[:, 0], layout.ravel())
    assert float(d.max()) < 1e-6

    maker = Maker(db, MatchOptions(grid=str(long_n), min_distance=0), RenderOptions(tile_px=S))
    r = maker.make(path, tmp_path / "m.png")
    saved = np.load(tmp_path / "m.mosaic.npz")
    np.testing.assert_array_equal(saved["tile_ids"], layout)
    assert float(saved["cost"].max()) < 1e-3
    # rendered at the thumbnails' own size, the mosaic is the cropped target itself
    out = np.asarray(Image.open(r.output))
    l, t, rr, b = g.crop
    np.testing.assert_array_equal(out, target.image[t:b, l:rr])
    assert r.metrics["psnr64"] == 100.0 and r.metrics["repeats"]["distinct_tiles"] == rows * cols


def test_larger_cells_are_resampled_to_the_feature_samples(synthetic_db):
    """Cells of 32 px (the 32 px thumbnails) are area-reduced to 16 x 16 samples: features
    equal the stored ones up to rounding, and the nearest tile is still the one laid there."""
    db = synthetic_db
    layout = _tile_layout(db, 4, 5, seed=2)
    img = _target_of_tiles(db, layout, 32, 0, 0, False)
    g = make_grid(img.shape[1], img.shape[0], "5")
    assert (g.cols, g.rows, g.cell_px) == (5, 4, 32.0)
    cd = cell_data(img, g, db.feature_spec)
    stored = np.asarray(db.features()[layout.ravel()])
    assert np.abs(cd.features - stored).max() < 1.0  # Lab units: rounding of the 2x box reduction
    _, ids = db.search(cd.features, 1)
    np.testing.assert_array_equal(ids[:, 0], layout.ravel())


def test_grid_finer_than_the_target_warns_and_upsamples(synthetic_db, tmp_path):
    """A 30 x 20 px target cut into 60 x 40 cells: a warning naming the fix, and cells whose
    colours come from the upsampled target (left half red, right half blue)."""
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :15] = (220, 30, 30)
    img[:, 15:] = (30, 30, 220)
    path = tmp_path / "tiny.png"
    Image.fromarray(img).save(path)
    g = make_grid(30, 20, "60")
    assert (g.cols, g.rows) == (60, 40) and g.cell_px == 0.5
    cd = cell_data(img, g, LabGrid(4, 1.0))
    assert cd.features.shape[0] == 60 * 40
    np.testing.assert_allclose(cd.mean[:, :26], np.broadcast_to([220, 30, 30], (40, 26, 3)), atol=2)
    np.testing.assert_allclose(cd.mean[:, 34:], np.broadcast_to([30, 30, 220], (40, 26, 3)), atol=2)

    maker = Maker(synthetic_db, MatchOptions(grid="60"), RenderOptions(tile_px=4))
    r = maker.make(path, tmp_path / "m.png")
    assert len(r.warnings) == 1
    w = r.warnings[0]
    assert "finer than tiny.png" in w and "30x20" in w and "upsampled 2.00x" in w and "coarser grid" in w
    # the same along the other side: a grid tall and one cell wide (the width alone said 20 px a cell)
    assert make_grid(30, 20, "1x60").cell_px == pytest.approx(1 / 3)
    assert Image.open(r.output).size == (240, 160)
    assert r.metrics["cells"] == 2400 and np.isfinite(r.metrics["psnr64"])
    # the tiles follow the target: redder on the left than on the right
    out = np.asarray(Image.open(r.output)).astype(float)
    left, right = out[:, :100].mean(axis=(0, 1)), out[:, 140:].mean(axis=(0, 1))
    assert left[0] - left[2] > 30 and right[2] - right[0] > 30


def test_grid_as_fine_as_the_target_does_not_warn(synthetic_db, tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "t.png")
    r = Maker(synthetic_db, MatchOptions(grid="30"), RenderOptions(tile_px=2)).make(tmp_path / "t.png",
                                                                                 tmp_path / "m.png")
    assert r.warnings == [] and r.metrics["cells"] == 600
