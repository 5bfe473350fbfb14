"""One feature function for tiles and target cells: CIE Lab mean plus a g x g grid of Lab means.

Both tiles (from their square crop, area-resampled to S x S) and target cells (the target
area-resampled so every cell covers S x S samples) go through `lab_features`, so a tile
and a cell with the same pixels get the same vector. S = `samples_per_side(g)`.
"""
from __future__ import annotations

import numpy as np

# sRGB (D65) -> XYZ, then normalised by the D65 white so Lab uses X/Xn etc. directly.
_RGB2XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375],
     [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]], dtype=np.float64)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_M = (_RGB2XYZ / _WHITE[:, None]).T.astype(np.float32)  # row-vector form: xyz = rgb_lin @ _M

def _srgb_to_linear_lut() -> np.ndarray:
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)

_LIN = _srgb_to_linear_lut()
_EPS = 216 / 24389
_KAPPA = 24389 / 27


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 CIE Lab (..., 3), D65 white, L in [0, 100]."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise TypeError(f"rgb_to_lab needs uint8 RGB, got {rgb.dtype}")
    xyz = _LIN[rgb] @ _M
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16.0) / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float CIE Lab (..., 3) -> uint8 sRGB (..., 3), clipped to the gamut."""
    lab = np.asarray(lab, dtype=np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f ** 3 > _EPS, f ** 3, (116.0 * f - 16.0) / _KAPPA)
    lin = xyz @ np.linalg.inv(_M)
    lin = np.clip(lin, 0.0, 1.0)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    return np.clip(np.rint(srgb * 255.0), 0, 255).astype(np.uint8)


# No feature of any kind comes near this (sRGB or Lab levels, times a --mean-weight of at most
# 1000); rows within it have finite squared distances in float32, rows beyond it (damage: a
# value written as 1e38 overflowed a distance to inf, an assignment's cost with it) are treated
# as not finite.
FEATURE_LIMIT = 1e12


def bad_feature_rows(rows: np.ndarray) -> np.ndarray:
    """Which rows (n, d) hold a value that is NaN, infinite or beyond FEATURE_LIMIT: a damaged
    row, which matching leaves out and `db check` reports.

    >>> bad_feature_rows(np.array([[1.0, -2.0], [np.nan, 0.0], [0.0, 1e38], [-np.inf, 0.0]]))
    array([False,  True,  True,  True])
    """
    rows = np.asarray(rows)
    return ~(np.abs(rows) <= FEATURE_LIMIT).all(axis=tuple(range(1, rows.ndim)))


def samples_per_side(grid: int) -> int:
    """Pixels per side of the square each tile/cell is resampled to before features (4 per grid cell)."""
    return 4 * grid


def feature_dim(grid: int) -> int:
    return 3 + 3 * grid * grid


def block_means(x: np.ndarray, p: int) -> np.ndarray:
    """(N, S, S, C) samples, p dividing S, as (N, p, p, C) float32 means of their p x p blocks."""
    n, s = x.shape[0], x.shape[1]
    q = s // p
    return x.reshape(n, p, q, p, q, x.shape[3]).mean(axis=(2, 4), dtype=np.float32)


def lab_features(blocks: np.ndarray, grid: int = 4, mean_weight: float = 1.0) -> np.ndarray:
    """Features of square RGB blocks.

    blocks: uint8 (N, S, S, 3) with S divisible by `grid`.
    Returns float32 (N, 3 + 3*grid^2): [mean Lab * mean_weight * grid, grid of Lab means (row-major)].
    The mean is scaled by `grid` so that at mean_weight=1 it weighs as much as the whole grid.
    """
    blocks = np.asarray(blocks)
    if blocks.ndim != 4 or blocks.shape[3] != 3 or blocks.shape[1] != blocks.shape[2]:
        raise ValueError(f"lab_features needs (N, S, S, 3) blocks, got {blocks.shape}")
    n, s = blocks.shape[0], blocks.shape[1]
    if s % grid:
        raise ValueError(f"block size {s} is not divisible by the feature grid {grid}")
    lab = rgb_to_lab(blocks)
    cells = block_means(lab, grid)  # (N, g, g, 3)
    mean = cells.mean(axis=(1, 2))
    out = np.empty((n, feature_dim(grid)), dtype=np.float32)
    out[:, :3] = mean * (mean_weight * grid)
    out[:, 3:] = cells.reshape(n, -1)
    return out


def cell_blocks(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Split an (rows*S, cols*S, 3) image into (rows*cols, S, S, 3) blocks, row-major."""
    h, w = image.shape[:2]
    s = h // rows
    if h != rows * s or w != cols * s:
        raise ValueError(f"image {w}x{h} is not a {cols}x{rows} grid of square blocks")
    return image.reshape(rows, s, cols, s, 3).swapaxes(1, 2).reshape(rows * cols, s, s, 3)
