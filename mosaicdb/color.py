"""Per-cell colour transfer: pull each placed tile's colours toward the target region it covers.

Modes (all per RGB channel, 0-255 scale, strength s in [0, 1]):

- ``none``: tiles unchanged.
- ``mean``: shift the tile's mean toward the cell's mean, ``tile + s * (mu_cell - mu_tile)``
  (the mean-shift used by the "SDXL recursive mosaic" write-ups).
- ``meanstd``: AdaIN-style, as in the "Generative Photomosaic" paper:
  ``full = (tile - mu_tile) / max(sd_tile, eps) * sd_cell + mu_cell``, ``(1 - s) * tile + s * full``.
- ``blend``: classic tint, ``(1 - s) * tile + s * cell`` with the target region itself.
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import UsageError, choice

# A tile whose std is below one grey level is flat up to quantisation; dividing by less would
# stretch that quantisation noise into full target contrast.
_STD_EPS = 1.0

# Tiles are processed in slices so the working set stays bounded however many cells there are.
_CHUNK_VALUES = 16 * 1024 * 1024


def _tile_stats(tiles):
    """Per-tile, per-channel mean and (population) std: (n, 3) float64 each."""
    stats = [cv2.meanStdDev(t) for t in tiles]
    mu = np.array([m.ravel() for m, _ in stats]).reshape(-1, 3)
    sd = np.array([d.ravel() for _, d in stats]).reshape(-1, 3)
    return mu, sd


def _apply_affine(tiles, a, b):
    """out = round(clip(a * v + b)) per tile and channel, as a 256-entry lookup table per tile:
    one table lookup per pixel instead of several float passes over every value."""
    v = np.arange(256, dtype=np.float64)
    luts = np.clip(np.rint(a[:, :, None] * v + b[:, :, None]), 0, 255).astype(np.uint8)  # (n, 3, 256)
    out = np.empty_like(tiles)
    for i, t in enumerate(tiles):
        out[i] = cv2.LUT(t, np.ascontiguousarray(luts[i].T[:, None, :]))
    return out


def _mean(tiles, mu, sd, cells, s):
    mu_tile, _ = _tile_stats(tiles)
    return _apply_affine(tiles, np.ones_like(mu_tile), s * (mu - mu_tile))


def _meanstd(tiles, mu, sd, cells, s):
    # (1-s)*v + s*((v - mu_t)/sd_t*sd + mu) is affine in v: a*v + b
    mu_tile, sd_tile = _tile_stats(tiles)
    g = sd / np.maximum(sd_tile, _STD_EPS)
    return _apply_affine(tiles, (1.0 - s) + s * g, s * (mu - mu_tile * g))


def _blend(tiles, mu, sd, cells, s):
    out = np.empty_like(tiles)
    for i, (t, c) in enumerate(zip(tiles, cells)):
        out[i] = cv2.addWeighted(t, 1.0 - s, c, s, 0.0)
    return out


_TRANSFERS = {"none": None, "mean": _mean, "meanstd": _meanstd, "blend": _blend}
COLOR_MODES = tuple(_TRANSFERS)  # ("none", "mean", "meanstd", "blend")


def _strength(strength) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise UsageError(f"--color-strength must be a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= s <= 1.0:  # also rejects NaN
        raise UsageError(f"--color-strength must be in [0, 1], got {strength!r}")
    return s


def transfer(tiles: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray,
             mode: str, strength: float, target_cells: np.ndarray | None = None) -> np.ndarray:
    """Recolour the tiles placed in N cells toward their target regions.

    tiles: uint8 (N, t, t, 3). target_mean, target_std: (N, 3) per-cell RGB mean and std of
    the target region (0-255). target_cells: uint8 (N, t, t, 3), the target region resampled to
    the tile size; only "blend" needs it. Returns uint8 (N, t, t, 3); "none" and strength 0
    return `tiles` itself.
    """
    fn = choice("color mode", mode, _TRANSFERS)
    s = _strength(strength)
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[3] != 3:
        raise ValueError(f"tiles must be uint8 (N, t, t, 3), got {tiles.dtype} {tiles.shape}")
    if fn is None or s == 0.0:
        return tiles
    n = tiles.shape[0]
    mu = np.asarray(target_mean, dtype=np.float32)
    sd = np.asarray(target_std, dtype=np.float32)
    for name, a in (("target_mean", mu), ("target_std", sd)):
        if a.shape != (n, 3):
            raise ValueError(f"{name} must be ({n}, 3) to match the tiles, got {a.shape}")
    if fn is _blend:
        if target_cells is None:
            raise UsageError("color mode 'blend' needs the target cells resampled to the tile size")
        target_cells = np.asarray(target_cells)
        if target_cells.shape != tiles.shape:
            raise ValueError(f"target_cells must have the tiles' shape {tiles.shape}, got {target_cells.shape}")

    out = np.empty_like(tiles)
    step = max(1, _CHUNK_VALUES // max(1, tiles[0].size))
    for i in range(0, n, step):
        sl = slice(i, i + step)
        cells = None if target_cells is None else target_cells[sl]
        out[sl] = fn(tiles[sl], mu[sl].astype(np.float64), sd[sl].astype(np.float64), cells, float(s))
    return out
