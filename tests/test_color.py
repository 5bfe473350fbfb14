from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mosaicdb.color import COLOR_MODES, transfer
from mosaicdb.errors import UsageError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KODAK = DATA / "targets" / "kodak"


def _textured_tiles(n, t, seed=0):
    """Mid-range tiles with real texture (std about 20 levels) so no transfer below clips."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(90, 160, size=(n, 1, 1, 3))
    yy, xx = np.mgrid[0:t, 0:t] / (t - 1)
    ramp = (yy + xx - 1.0)[None, :, :, None] * rng.uniform(20, 40, size=(n, 1, 1, 3))
    noise = rng.normal(0, 8, size=(n, t, t, 3))
    return np.clip(np.rint(base + ramp + noise), 0, 255).astype(np.uint8)


def _stats(tiles):
    f = tiles.astype(np.float64)
    return f.mean(axis=(1, 2)), f.std(axis=(1, 2))


def _targets(n, seed=1):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(100, 150, size=(n, 3)).astype(np.float32)
    sd = rng.uniform(5, 15, size=(n, 3)).astype(np.float32)
    return mu, sd


def test_modes_constant():
    assert COLOR_MODES == ("none", "mean", "meanstd", "blend")


@pytest.mark.parametrize("mode", ["mean", "meanstd"])
def test_full_strength_moves_mean_to_target(mode):
    tiles = _textured_tiles(40, 16)
    mu, sd = _targets(40)
    out = transfer(tiles, mu, sd, mode, 1.0)
    assert out.dtype == np.uint8 and out.shape == tiles.shape
    got_mu, _ = _stats(out)
    assert np.abs(got_mu - mu).max() < 1.5


def test_meanstd_matches_std():
    tiles = _textured_tiles(40, 16)
    mu, sd = _targets(40)
    _, got_sd = _stats(transfer(tiles, mu, sd, "meanstd", 1.0))
    # rounding to integers adds about 1/sqrt(12) levels of noise in quadrature
    assert np.abs(got_sd - sd).max() < 0.5


def test_mean_keeps_texture():
    tiles = _textured_tiles(20, 16)
    mu, sd = _targets(20)
    out = transfer(tiles, mu, sd, "mean", 1.0)
    diff = out.astype(np.int16) - tiles.astype(np.int16)
    # a pure shift: every pixel of a channel moves by the same amount (up to rounding)
    spread = diff.max(axis=(1, 2)) - diff.min(axis=(1, 2))
    assert spread.max() <= 1


def test_half_strength_goes_half_way():
    tiles = _textured_tiles(30, 16)
    mu, sd = _targets(30)
    before, _ = _stats(tiles)
    after, _ = _stats(transfer(tiles, mu, sd, "mean", 0.5))
    assert np.abs(after - (before + 0.5 * (mu - before))).max() < 1.0


@pytest.mark.parametrize("mode", COLOR_MODES)
def test_strength_zero_is_identity(mode):
    tiles = _textured_tiles(10, 8)
    mu, sd = _targets(10)
    cells = _textured_tiles(10, 8, seed=5)
    out = transfer(tiles, mu, sd, mode, 0.0, target_cells=cells)
    np.testing.assert_array_equal(out, tiles)


def test_none_returns_input():
    tiles = _textured_tiles(5, 8)
    mu, sd = _targets(5)
    assert transfer(tiles, mu, sd, "none", 1.0) is tiles


def test_blend_full_strength_equals_cells():
    tiles = _textured_tiles(10, 8)
    cells = _textured_tiles(10, 8, seed=9)
    mu, sd = _stats(cells)
    np.testing.assert_array_equal(transfer(tiles, mu, sd, "blend", 1.0, target_cells=cells), cells)


def test_blend_half():
    tiles = np.full((2, 4, 4, 3), 100, np.uint8)
    cells = np.full((2, 4, 4, 3), 200, np.uint8)
    mu, sd = _stats(cells)
    out = transfer(tiles, mu, sd, "blend", 0.5, target_cells=cells)
    assert (out == 150).all()


def test_blend_needs_cells():
    tiles = _textured_tiles(3, 8)
    mu, sd = _targets(3)
    with pytest.raises(UsageError, match="blend"):
        transfer(tiles, mu, sd, "blend", 0.5)


def test_unknown_mode_lists_allowed():
    tiles = _textured_tiles(3, 8)
    mu, sd = _targets(3)
    with pytest.raises(UsageError) as e:
        transfer(tiles, mu, sd, "hist", 0.5)
    for mode in COLOR_MODES:
        assert mode in str(e.value)
    assert "hist" in str(e.value)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "strong", None])
def test_bad_strength(bad):
    tiles = _textured_tiles(3, 8)
    mu, sd = _targets(3)
    with pytest.raises(UsageError, match="--color-strength"):
        transfer(tiles, mu, sd, "mean", bad)


def test_shape_mismatch():
    tiles = _textured_tiles(3, 8)
    mu, sd = _targets(4)
    with pytest.raises(ValueError, match="target_mean"):
        transfer(tiles, mu, sd, "mean", 1.0)


def test_flat_tile_meanstd_becomes_flat_target_colour():
    # A flat tile has no texture to stretch; it must take the target mean, not blow up.
    tiles = np.full((1, 8, 8, 3), 77, np.uint8)
    out = transfer(tiles, np.array([[120, 130, 140]], np.float32), np.array([[10, 10, 10]], np.float32),
                   "meanstd", 1.0)
    assert (out == np.array([120, 130, 140], np.uint8)).all()


def test_clipping_saturates_not_wraps():
    tiles = np.full((1, 4, 4, 3), 250, np.uint8)
    tiles[0, 0, 0] = 10
    out = transfer(tiles, np.array([[300.0, 300, 300]], np.float32), np.ones((1, 3), np.float32),
                   "mean", 1.0)
    assert out.max() == 255 and out[0, 0, 0].min() > 10


def test_chunked_matches_single_pass(monkeypatch):
    import mosaicdb.color as color
    tiles = _textured_tiles(37, 8)
    mu, sd = _targets(37)
    whole = transfer(tiles, mu, sd, "meanstd", 0.7)
    monkeypatch.setattr(color, "_CHUNK_VALUES", 5 * tiles[0].size)
    np.testing.assert_array_equal(transfer(tiles, mu, sd, "meanstd", 0.7), whole)


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["mean", "meanstd", "blend"]), s=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1))
def test_output_between_tile_and_full_transfer(mode, s, seed):
    """Any strength lands (per pixel, before rounding) between the tile and the full transfer."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
    cells = rng.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
    mu, sd = _stats(cells)
    full = transfer(tiles, mu, sd, mode, 1.0, target_cells=cells).astype(np.int16)
    out = transfer(tiles, mu, sd, mode, s, target_cells=cells).astype(np.int16)
    lo = np.minimum(tiles, full) - 1
    hi = np.maximum(tiles, full) + 1
    assert ((out >= lo) & (out <= hi)).all()


@pytest.mark.shared
def test_kodak_crops_as_tiles():
    if not KODAK.is_dir():
        pytest.skip(f"real images not found at {KODAK} (the shared data folder is absent)")
    from PIL import Image
    t = 32
    src = np.asarray(Image.open(KODAK / "kodim23.png").convert("RGB"))
    tgt = np.asarray(Image.open(KODAK / "kodim05.png").convert("RGB"))
    # 48 crops from a 6 x 8 grid, on both images, so tiles and cells are unrelated real content
    def crops(img):
        h, w = img.shape[0] // t * t, img.shape[1] // t * t
        g = img[:h, :w].reshape(h // t, t, w // t, t, 3).swapaxes(1, 2)
        return g[::2, ::2][:6, :8].reshape(-1, t, t, 3)
    tiles, cells = crops(src), crops(tgt)
    mu, sd = _stats(cells)
    before, _ = _stats(tiles)
    for mode in ("mean", "meanstd"):
        out = transfer(tiles, mu, sd, mode, 1.0)
        after, after_sd = _stats(out)
        err = np.abs(after - mu)
        # Real crops saturate in places, so only the unclipped cells must hit the target exactly.
        clipped = ((out == 0) | (out == 255)).any(axis=(1, 2))
        assert (~clipped).sum() >= len(tiles) // 2
        assert err[~clipped].max() < 1.5
        assert err.mean() < 0.2 * np.abs(before - mu).mean()
        if mode == "meanstd":
            ok = ~clipped & (sd > 2)
            assert np.abs(after_sd - sd)[ok].max() < 1.0
    half = transfer(tiles, mu, sd, "blend", 0.5, target_cells=cells).astype(np.float64)
    np.testing.assert_allclose(half, (tiles.astype(np.float64) + cells) / 2, atol=0.51)
