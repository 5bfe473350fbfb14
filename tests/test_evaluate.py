import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from mosaicdb.errors import UsageError
from mosaicdb.evaluate import (PSNR_CAP, _closest_repeat, _groups, evaluate, gaussian_pyramid, psnr_at,
                               psnr_per_cell, pyramid_mse, repeat_stats, resize_short, ssim_at)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KODAK = DATA / "targets" / "kodak"


def _scene(h=192, w=288, seed=0):
    """A smooth synthetic photo stand-in: gradients, a disc and some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 200 + 30, yy / h * 180 + 40, (xx + yy) / (h + w) * 150 + 60], axis=-1)
    disc = (yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2 < (min(h, w) * 0.25) ** 2
    img[disc] = [220, 60, 50]
    img += rng.normal(0, 4, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _noisy(img, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def _cell_mosaic(target, rows, cols, t):
    """The ideal flat-tile mosaic: each cell's mean colour, blown up to t x t tiles."""
    cells = cv2.resize(target, (cols, rows), interpolation=cv2.INTER_AREA)
    return np.repeat(np.repeat(cells, t, axis=0), t, axis=1)


def _brute_min_distance(grid):
    """Every pair of cells compared (O(n^2) memory too; fine for the small grids used here)."""
    ids = grid.ravel()
    rr, cc = np.divmod(np.arange(ids.size), grid.shape[1])
    d = np.maximum(np.abs(rr[:, None] - rr[None, :]), np.abs(cc[:, None] - cc[None, :]))
    same = (ids[:, None] == ids[None, :]) & (d > 0)
    return int(d[same].min()) if same.any() else None


def _check_closest(grid):
    """repeat_stats, and the search started from the tightest valid bounds, against brute force.

    Starting just above the answer reaches the edge of every search window, where an
    off-by-one would go unnoticed under the usual, looser pigeonhole bound.
    """
    expect = _brute_min_distance(grid)
    assert repeat_stats(grid)["min_repeat_distance"] == expect
    if expect is not None:
        grid = np.ascontiguousarray(grid, dtype=np.int64)
        groups = _groups(grid)
        for limit in (expect + 1, expect + 2, max(grid.shape)):
            assert _closest_repeat(grid, *groups, limit=limit) == expect, limit


# --- resizing -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape,expect", [((192, 288), (64, 96)), ((288, 192), (96, 64)),
                                          ((100, 100), (64, 64)), ((40, 60), (64, 96))])
def test_resize_short(shape, expect):
    img = _scene(*shape)
    out = resize_short(img, 64)
    assert out.shape == (*expect, 3) and out.dtype == np.uint8


def test_resize_short_is_area_average():
    img = np.zeros((128, 256, 3), np.uint8)
    img[::2, ::2] = 200  # a quarter of the pixels lit: area averaging gives 50 everywhere
    out = resize_short(img, 64)
    assert (out == 50).all()


def test_rejects_non_rgb():
    with pytest.raises(ValueError):
        resize_short(np.zeros((10, 10), np.uint8), 4)
    with pytest.raises(ValueError):
        psnr_at(np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 3), np.uint8))


def test_wrong_orientation_is_refused():
    with pytest.raises(UsageError, match="shape"):
        psnr_at(_scene(192, 288), _scene(288, 192))


# --- fidelity -----------------------------------------------------------------------------

def test_identical_images():
    img = _scene()
    assert psnr_at(img, img) == PSNR_CAP
    assert ssim_at(img, img) == pytest.approx(1.0)
    assert psnr_per_cell(img, img, 12, 18) == PSNR_CAP
    assert all(v == 0.0 for v in pyramid_mse(img, img).values())


def test_identical_content_at_mosaic_scale():
    # A mosaic that is the target blown up 8x (nearest) reads as the target at 64 px.
    img = _scene()
    big = np.repeat(np.repeat(img, 8, axis=0), 8, axis=1)
    assert psnr_at(img, big) == PSNR_CAP
    assert ssim_at(img, big) == pytest.approx(1.0)


def test_noisier_mosaic_scores_worse():
    img = _scene()
    # noise at the mosaic's own (larger) scale, so the down-sampling has to average it
    big = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    mild, strong = _noisy(big, 40, seed=2), _noisy(big, 120, seed=3)
    assert psnr_at(img, mild) > psnr_at(img, strong)
    assert ssim_at(img, mild) > ssim_at(img, strong)
    pm, ps = pyramid_mse(img, mild), pyramid_mse(img, strong)
    assert list(pm) == [1, 2, 3, 4]
    assert all(pm[k] < ps[k] for k in pm)
    # coarser levels average the noise away
    assert ps[4] < ps[1]


def test_psnr_per_cell_of_cell_mean_mosaic_is_high():
    img = _scene()
    rows, cols = 12, 18
    mosaic = _cell_mosaic(img, rows, cols, 16)
    assert psnr_per_cell(img, mosaic, rows, cols) > 50
    # ... and it only measures cell colours: at 64 px the flat tiles are visibly blockier
    assert psnr_at(img, mosaic) < 40
    shuffled = _cell_mosaic(img[::-1], rows, cols, 16)
    assert psnr_per_cell(img, shuffled, rows, cols) < 25


def test_mosaic_slightly_off_aspect():
    # A whole number of cells rarely matches the target's aspect exactly.
    img = _scene(192, 288)
    mosaic = cv2.resize(img, (288 * 4, 200 * 4), interpolation=cv2.INTER_LINEAR)
    assert psnr_at(img, mosaic) > 25
    assert psnr_per_cell(img, mosaic, 12, 18) > 30


@pytest.mark.parametrize("shape", [(12, 2000), (3000, 12), (1, 700)])
def test_cells_stretched_to_squares_are_compared_stretched(shape):
    """A target thinner than one cell still gets a row (column) of cells, which the match
    stretched to squares: its mosaic is scored against the target stretched the same way."""
    h, w = shape
    img = _scene(max(h, 64), max(w, 64))[:h, :w]
    rows, cols = (1, 64) if w > h else (64, 1)
    mosaic = cv2.resize(img, (cols * 16, rows * 16), interpolation=cv2.INTER_LINEAR)
    m = evaluate(img, mosaic, rows, cols)
    assert m["psnr64"] > 35 and m["psnr_cell"] > 35 and m["pyramid_mse"]["1"] < 1e-3
    flipped = evaluate(img[::-1, ::-1], mosaic, rows, cols)  # still a different picture
    assert flipped["psnr64"] < m["psnr64"] - 5
    with pytest.raises(UsageError, match="does not have the target's shape"):
        evaluate(img, mosaic, cols, rows)   # the grid the other way round is refused as before


def test_small_mosaic_is_enlarged():
    img = _scene(192, 288)
    small = cv2.resize(img, (144, 96), interpolation=cv2.INTER_AREA)
    assert psnr_at(img, small) > 30
    assert pyramid_mse(img, small)[4] < 1e-3


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 3), (3, 1), (7, 2), (5, 9), (64, 1), (97, 130), (256, 384)])
@pytest.mark.parametrize("channels", [1, 3])
def test_gaussian_pyramid_equals_skimage(shape, channels):
    """The OpenCV pyramid gives skimage's levels: same sizes, same values to float32 rounding,
    including odd sizes, one-pixel sides and where skimage stops early."""
    from skimage.transform import pyramid_gaussian
    img = np.random.default_rng(sum(shape)).random(shape + (channels,), np.float32)
    ref = list(pyramid_gaussian(img, max_layer=5, downscale=2, channel_axis=-1))
    ours = list(gaussian_pyramid(img, 5))
    assert [a.shape for a in ours] == [a.shape for a in ref]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


def test_pyramid_mse_of_a_photo_equals_skimage(shared_data):
    """pyramid_mse on a real photograph against a blurred copy: skimage's levels give the same
    figures (what the benchmarks reported before the OpenCV pyramid)."""
    from skimage.transform import pyramid_gaussian
    img = cv2.cvtColor(cv2.imread(str(shared_data / "targets" / "kodak" / "kodim05.png")), cv2.COLOR_BGR2RGB)
    other = cv2.GaussianBlur(img, (9, 9), 3)
    ours = pyramid_mse(img, other)
    t, m = (x.astype(np.float32) / 255.0 for x in (img, other))
    ref = [float(np.mean((a - b) ** 2, dtype=np.float64)) for a, b in
           zip(pyramid_gaussian(t, max_layer=4, downscale=2, channel_axis=-1),
               pyramid_gaussian(m, max_layer=4, downscale=2, channel_axis=-1))]
    for level in (1, 2, 3, 4):
        assert ours[level] == pytest.approx(ref[level], rel=1e-5)


def test_pyramid_levels_and_limits():
    img = _scene(32, 48)
    out = pyramid_mse(img, _noisy(img, 30), levels=(0, 2, 5))
    assert list(out) == [0, 2, 5] and out[0] > out[5]
    with pytest.raises(UsageError, match="pyramid level"):
        pyramid_mse(img, img, levels=(1, 9))
    with pytest.raises(UsageError):
        pyramid_mse(img, img, levels=(-1,))


def test_bad_grid():
    img = _scene()
    with pytest.raises(UsageError):
        psnr_per_cell(img, img, 0, 5)


def test_evaluate_json():
    img = _scene()
    rows, cols = 12, 18
    mosaic = _noisy(_cell_mosaic(img, rows, cols, 8), 10)
    ids = np.arange(rows * cols).reshape(rows, cols) % 50
    out = evaluate(img, mosaic, rows, cols, tile_ids=ids)
    assert set(out) == {"psnr64", "ssim64", "psnr_cell", "pyramid_mse", "repeats"}
    assert set(out["pyramid_mse"]) == {"1", "2", "3", "4"}
    assert out["repeats"]["distinct_tiles"] == 50
    back = json.loads(json.dumps(out, allow_nan=False))
    assert back == out
    assert out["psnr64"] == psnr_at(img, mosaic)
    assert out["ssim64"] == ssim_at(img, mosaic)
    assert out["psnr_cell"] == psnr_per_cell(img, mosaic, rows, cols)
    assert evaluate(img, img, rows, cols)["repeats"] is None
    assert json.dumps(evaluate(img, img, rows, cols), allow_nan=False)
    with pytest.raises(ValueError, match="tile_ids"):
        evaluate(img, mosaic, rows, cols, tile_ids=ids.T)


# --- repeats ------------------------------------------------------------------------------

def test_repeat_stats_basic():
    ids = np.array([[0, 1, 2],
                    [3, 4, 0]])
    assert repeat_stats(ids) == {"cells": 6, "distinct_tiles": 5, "max_uses": 2,
                                 "mean_uses": 1.2, "min_repeat_distance": 2}


def test_repeat_stats_no_repeat_and_empty():
    s = repeat_stats(np.arange(12).reshape(3, 4))
    assert s["min_repeat_distance"] is None and s["max_uses"] == 1 and s["mean_uses"] == 1.0
    assert repeat_stats(np.zeros((0, 4), np.int64))["cells"] == 0


def test_repeat_stats_types():
    s = repeat_stats(np.array([[5, 5]], dtype=np.uint16))
    assert s["min_repeat_distance"] == 1
    assert all(type(v) in (int, float) for v in s.values())
    with pytest.raises(ValueError):
        repeat_stats(np.zeros((2, 2), np.float32))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9).flatmap(
    lambda r: st.integers(1, 9).flatmap(
        lambda c: st.integers(1, r * c + 1).flatmap(
            lambda k: arrays(np.int64, (r, c), elements=st.integers(-2, k - 3))))))
def test_repeat_stats_matches_brute_force(grid):
    s = repeat_stats(grid)
    values, counts = np.unique(grid, return_counts=True)
    assert s["cells"] == grid.size
    assert s["distinct_tiles"] == len(values)
    assert s["max_uses"] == counts.max()
    assert s["mean_uses"] == pytest.approx(grid.size / len(values))
    _check_closest(grid)


@settings(max_examples=60, deadline=None)
@given(r=st.integers(2, 40), c=st.integers(2, 40), p=st.integers(1, 12), q=st.integers(1, 12),
       shift=st.integers(0, 11))
def test_repeat_stats_lattices(r, c, p, q, shift):
    """Sheared lattices of repeats: known structure, exercises both search strategies."""
    yy, xx = np.mgrid[0:r, 0:c]
    grid = ((yy + shift * (xx // q)) % p) * 100 + xx % q
    _check_closest(grid)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("flip", [False, True])
def test_repeat_stats_diagonal_lattice(d, flip):
    """Copies of one tile only d apart along (1, -d): the pair sits at the window's far corner.

    The lattice {(r, c): c + d*r = 0 mod d^2 + d + 1} has no other vector as short as (1, -d).
    Small d sends the tile to the window search, larger d to the pairwise one.
    """
    yy, xx = np.mgrid[0:36, 0:48]
    grid = np.arange(36 * 48).reshape(36, 48) + 1
    grid[(xx + d * yy) % (d * d + d + 1) == 0] = 0
    if flip:
        grid = grid[:, ::-1]
    assert _brute_min_distance(grid) == d
    _check_closest(grid)


@settings(max_examples=150, deadline=None)
@given(r=st.integers(1, 32), c=st.integers(1, 32), density=st.floats(0.01, 0.9),
       seed=st.integers(0, 2**32 - 1))
def test_repeat_stats_heavy_tiles(r, c, density, seed):
    """One or two tiles scattered at random among unique ones: the heavy-tile window search."""
    rng = np.random.default_rng(seed)
    grid = np.arange(r * c).reshape(r, c) + 10
    grid[rng.random((r, c)) < density] = 0
    grid[rng.random((r, c)) < density / 3] = 1
    _check_closest(grid)


def test_repeat_stats_large_grid_runs():
    # 65,536 cells; a timing sanity run (no assert on the time, the machine may be busy)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    grids = {
        "one tile": np.zeros((256, 256), np.int64),
        "all distinct": np.arange(65536).reshape(256, 256),
        "random 2000": rng.integers(0, 2000, (256, 256)),
        "lattice 2": (yy % 2) * 2 + xx % 2,
        "lattice 45": (yy % 45) * 45 + xx % 45,
        "far pairs": np.arange(65536).reshape(256, 256) % (256 * 128),
    }
    expect = {"one tile": 1, "all distinct": None, "lattice 2": 2, "lattice 45": 45, "far pairs": 128}
    repeat_stats(np.zeros((2, 2), np.int64))  # compile / load the kernel outside the timing
    for name, grid in grids.items():
        t = time.perf_counter()
        s = repeat_stats(grid)
        print(f"repeat_stats {name}: {1000 * (time.perf_counter() - t):.1f} ms")
        if name in expect:
            assert s["min_repeat_distance"] == expect[name], name


@pytest.mark.shared
def test_kodak():
    if not KODAK.is_dir():
        pytest.skip(f"real images not found at {KODAK} (the shared data folder is absent)")
    from PIL import Image
    target = np.asarray(Image.open(KODAK / "kodim23.png").convert("RGB"))
    other = np.asarray(Image.open(KODAK / "kodim05.png").convert("RGB"))
    rows, cols, t = 32, 48, 16
    good = _cell_mosaic(target, rows, cols, t)
    bad = _cell_mosaic(other, rows, cols, t)
    g, b = evaluate(target, good, rows, cols), evaluate(target, bad, rows, cols)
    assert g["psnr_cell"] > 50 > 20 > b["psnr_cell"]
    assert g["psnr64"] > b["psnr64"] + 5
    assert g["ssim64"] > b["ssim64"]
    assert all(g["pyramid_mse"][k] < b["pyramid_mse"][k] for k in g["pyramid_mse"])
    # real-tile texture costs fidelity at 64 px but not per cell
    noisy = _noisy(good, 25)
    n = evaluate(target, noisy, rows, cols)
    assert g["psnr64"] > n["psnr64"] and n["psnr_cell"] > 35
    # portrait target against a landscape mosaic
    portrait = np.asarray(Image.open(KODAK / "kodim04.png").convert("RGB"))
    assert portrait.shape[0] > portrait.shape[1]
    with pytest.raises(UsageError):
        psnr_at(portrait, good)
    assert math.isfinite(json.loads(json.dumps(g))["psnr64"])
