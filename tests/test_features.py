"""Features: CIE Lab conversion, and one feature function for tiles and target cells."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.color
from PIL import Image

from conftest import synthetic_image
from mosaicdb.features import (cell_blocks, feature_dim, lab_features, lab_to_rgb, rgb_to_lab,
                               samples_per_side)
from mosaicdb.feature_kinds import LabGrid
from mosaicdb.store.decode import make_thumbnails, tile_features

GRIDS = [2, 4, 8]


def test_rgb_to_lab_matches_skimage():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20000, 3), dtype=np.uint8)
    rgb[:8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 1, 1], [10, 10, 10], [128, 128, 128]]
    ours = rgb_to_lab(rgb)
    ref = skimage.color.rgb2lab(rgb[None].astype(np.float64) / 255.0)[0]
    assert ours.dtype == np.float32 and ours.shape == rgb.shape
    assert np.abs(ours - ref).max() < 0.01
    np.testing.assert_allclose(rgb_to_lab(np.array([255, 255, 255], np.uint8)), [100, 0, 0], atol=1e-3)
    np.testing.assert_allclose(rgb_to_lab(np.array([0, 0, 0], np.uint8)), [0, 0, 0], atol=1e-3)
    # any leading shape
    img = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_lab(img).reshape(-1, 3), rgb_to_lab(img.reshape(-1, 3)))


def test_rgb_to_lab_wants_uint8():
    with pytest.raises(TypeError, match="uint8"):
        rgb_to_lab(np.zeros((2, 3), np.float32))


def test_lab_round_trip_is_exact():
    # every 3rd level of each channel (about 600k colours) plus the extremes
    levels = np.unique(np.r_[np.arange(0, 256, 3), 255]).astype(np.uint8)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    back = lab_to_rgb(rgb_to_lab(rgb))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, rgb)


def test_lab_to_rgb_matches_skimage_and_clips():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 1, (5000, 3))  # in-gamut colours between the 8-bit levels
    lab = skimage.color.rgb2lab(rgb[None])[0]
    ours = lab_to_rgb(lab).astype(int)
    assert np.abs(ours - np.rint(rgb * 255)).max() <= 1
    np.testing.assert_allclose(ours, np.rint(skimage.color.lab2rgb(lab[None])[0] * 255), atol=1)
    out_of_gamut = lab_to_rgb(np.array([[50.0, 120.0, -120.0], [150.0, 0, 0], [-20.0, 0, 0]]))
    assert out_of_gamut.dtype == np.uint8
    np.testing.assert_array_equal(out_of_gamut[1], [255, 255, 255])
    np.testing.assert_array_equal(out_of_gamut[2], [0, 0, 0])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("mean_weight", [1.0, 0.5, 2.0])
def test_uniform_block_feature_is_its_lab(grid, mean_weight):
    s = samples_per_side(grid)
    colours = np.array([[200, 30, 90], [0, 0, 0], [255, 255, 255], [17, 160, 240]], np.uint8)
    blocks = np.broadcast_to(colours[:, None, None, :], (len(colours), s, s, 3))
    f = lab_features(blocks, grid, mean_weight)
    assert f.shape == (4, feature_dim(grid)) == (4, 3 + 3 * grid * grid) and f.dtype == np.float32
    lab = rgb_to_lab(colours)
    np.testing.assert_allclose(f[:, :3], lab * grid * mean_weight, atol=1e-3)
    np.testing.assert_allclose(f[:, 3:].reshape(4, grid * grid, 3), np.repeat(lab[:, None], grid * grid, 1), atol=1e-3)


@pytest.mark.parametrize("grid", GRIDS)
def test_grid_part_is_row_major_cell_means(grid):
    s = samples_per_side(grid)
    q = s // grid
    rng = np.random.default_rng(grid)
    block = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    f = lab_features(block[None], grid)[0]
    lab = rgb_to_lab(block).astype(np.float64)
    for r in range(grid):
        for c in range(grid):
            want = lab[r * q:(r + 1) * q, c * q:(c + 1) * q].mean(axis=(0, 1))
            np.testing.assert_allclose(f[3 + 3 * (r * grid + c):3 + 3 * (r * grid + c + 1)], want, atol=1e-3)
    np.testing.assert_allclose(f[:3], lab.mean(axis=(0, 1)) * grid, atol=1e-2)


def test_lab_features_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        lab_features(np.zeros((1, 10, 10, 3), np.uint8), 4)
    with pytest.raises(ValueError, match=r"\(N, S, S, 3\)"):
        lab_features(np.zeros((1, 16, 8, 3), np.uint8), 4)
    with pytest.raises(ValueError):
        cell_blocks(np.zeros((30, 32, 3), np.uint8), 2, 2)


@pytest.mark.parametrize("grid", GRIDS)
def test_tile_features_equal_target_cell_features(grid, tmp_path, new_db):
    """A tile and a target cell holding the same pixels get the same vector: through the
    database (ingest -> thumbnails -> features) and through cell_blocks + lab_features."""
    s = samples_per_side(grid)
    rows, cols = 3, 4
    rng = np.random.default_rng(100 + grid)
    cells = [synthetic_image(rng, s, s) for _ in range(rows * cols)]
    for i, c in enumerate(cells):
        Image.fromarray(c).save(tmp_path / f"cell{i:02d}.png")
    # thumbnails up to exactly s: the s-px thumbnail of an s x s image is its own pixels
    db = new_db(thumb_sizes=(s // 2, s), features="lab-grid", feature_grid=grid, mean_weight=0.7)
    rep = db.ingest(sorted(tmp_path.glob("cell*.png")), workers=1, update_index=False)
    assert rep.added == rows * cols
    tile_f = np.asarray(db.features()[db.ids()])

    target = np.concatenate([np.concatenate(cells[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    assert target.shape == (rows * s, cols * s, 3)
    blocks = cell_blocks(target, rows, cols)
    np.testing.assert_array_equal(blocks, np.stack(cells))
    cell_f = lab_features(blocks, grid, 0.7)
    np.testing.assert_array_equal(tile_f, cell_f)


@pytest.mark.parametrize("grid", GRIDS)
def test_resampled_tile_close_to_area_resampled_cell(grid):
    """A 64 px tile (thumbnails 8..64) vs the same pixels as a target cell area-resampled to
    S x S: equal up to 8-bit rounding of the two resamplers."""
    s = samples_per_side(grid)
    sizes = (8, 16, 32, 64)
    rng = np.random.default_rng(7 + grid)
    imgs = [synthetic_image(rng, 64, 64) for _ in range(20)]
    thumbs = [make_thumbnails(Image.fromarray(im), sizes) for im in imgs]
    tile_f = tile_features([np.stack([t[k] for t in thumbs]) for k in range(len(sizes))], sizes, LabGrid(grid, 1.0))
    cell_f = lab_features(np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA) for im in imgs]), grid, 1.0)
    assert np.abs(tile_f - cell_f).max() < 1.0
