"""Per-cell colour transfer: pull each placed tile's colours toward the target region it covers.

Modes (all per RGB channel, 0-255 scale, strength s in [0, 1]):

- ``none``: tiles unchanged.
- ``mean``: shift the tile's mean toward the cell's mean, ``tile + s * (mu_cell - mu_tile)``
  (the mean-shift used by the "SDXL recursive mosaic" write-ups).
- ``meanstd``: AdaIN-style, as in the "Generative Photomosaic" paper:
  ``full = (tile - mu_tile) / max(sd_tile, eps) * sd_cell + mu_cell``, ``(1 - s) * tile + s * full``.
- ``blend``: classic tint, ``(1 - s) * tile + s * cell`` with the target region itself.

``mean`` and ``meanstd`` are affine in each pixel value: one lookup table per cell and channel,
``clip(rint(a * v + b))``, depends only on the tile's statistics and the cell's. `recolor_grid`
applies them in place to cells already laid out in an image, so the renderer keeps nothing per
cell: a mean shift is a saturating add of whole levels (two vectorised passes), anything else a
per-cell table (big cells) or the same arithmetic on every value (small cells).
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import UsageError, choice

# A tile whose std is below one grey level is flat up to quantisation; dividing by less would
# stretch that quantisation noise into full target contrast.
_STD_EPS = 1.0

# Working memory per step: `recolor_grid` and `transfer` go through their cells in slices of
# about this many values, so temporaries stay bounded however many cells there are.
_CHUNK_VALUES = 1 << 20

# Cells with fewer values than a lookup table (3 x 256) are recoloured by computing the table's
# formula on each value instead: building a table per cell would cost more than the cell.
_LUT_MIN_VALUES = 3 * 256

# A shift b whose fractional part is this close to one half may round differently from v + rint(b)
# for some v (float addition can land on the half): such cells take the exact table instead.
_TIE_MARGIN = 1e-6

# Big cells are shifted a band of pixel rows at a time, adding a band this size of their values.
_BAND_BYTES = 256 << 10

_V = np.arange(256, dtype=np.float64)


def tile_stats(tiles) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile, per-channel mean and (population) std of uint8 (n, t, t, 3): (n, 3) float64 each."""
    stats = [cv2.meanStdDev(t) for t in tiles]
    mu = np.array([m.ravel() for m, _ in stats], dtype=np.float64).reshape(-1, 3)
    sd = np.array([d.ravel() for _, d in stats], dtype=np.float64).reshape(-1, 3)
    return mu, sd


def _mean(mu_tile, sd_tile, mu, sd, s):
    return np.ones_like(mu_tile), s * (mu - mu_tile)


def _meanstd(mu_tile, sd_tile, mu, sd, s):
    # (1-s)*v + s*((v - mu_t)/sd_t*sd + mu) is affine in v: a*v + b
    g = sd / np.maximum(sd_tile, _STD_EPS)
    return (1.0 - s) + s * g, s * (mu - mu_tile * g)


_AFFINE = {"mean": _mean, "meanstd": _meanstd}
_TRANSFERS = {"none": None, "mean": _mean, "meanstd": _meanstd, "blend": "blend"}
COLOR_MODES = tuple(_TRANSFERS)  # ("none", "mean", "meanstd", "blend")


def strength_value(strength) -> float:
    """--color-strength as a float in [0, 1], or UsageError."""
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise UsageError(f"--color-strength must be a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= s <= 1.0:  # also rejects NaN
        raise UsageError(f"--color-strength must be in [0, 1], got {strength!r}")
    return s


def affine_params(mode: str, strength: float, mu_tile, sd_tile, mu_cell, sd_cell) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), float64 of the cells' shape (..., 3): each cell's channel maps v to
    clip(rint(a * v + b)). mu/sd_tile: the placed tiles' statistics at the size drawn (`tile_stats`);
    mu/sd_cell: the target cells' (float32 as saved, widened here)."""
    fn = _AFFINE[mode]
    return fn(np.asarray(mu_tile, np.float64), np.asarray(sd_tile, np.float64),
              np.asarray(mu_cell, np.float32).astype(np.float64),
              np.asarray(sd_cell, np.float32).astype(np.float64), float(strength))


def affine_luts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The tables themselves: uint8 (n, 3, 256) for (n, 3) a and b."""
    return np.clip(np.rint(a[:, :, None] * _V + b[:, :, None]), 0, 255).astype(np.uint8)


def _exact_shifts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cells (mask over a's leading shape) whose table is exactly clip(v + rint(b)): a == 1 and
    no channel's b within _TIE_MARGIN of a half level."""
    frac = np.abs(b - np.floor(b) - 0.5)
    return ((a == 1.0) & (frac > _TIE_MARGIN)).all(axis=-1)


def cell_grid_view(img: np.ndarray, t: int) -> np.ndarray:
    """(nr, t, nc, t, 3) view of an (nr*t, nc*t, 3) image, whatever its row stride: writes through
    it land in `img` (splitting axes never needs a copy; copy=False would raise if it did)."""
    return img.reshape((img.shape[0] // t, t, img.shape[1] // t, t, 3), copy=False)


def _into(result: np.ndarray, dst: np.ndarray) -> None:
    """OpenCV writes into `dst` when it can use its memory as is; if it made a new array instead,
    copy that in, so in-place calls never silently go nowhere."""
    if result is not dst:
        dst[...] = result


def _repeat_cells(k: np.ndarray, t: int) -> np.ndarray:
    """(nr, nc, 3) per-cell values as an (nr*t, nc*t, 3) image, each cell a flat t x t block."""
    return np.repeat(np.repeat(k, t, axis=1), t, axis=0)


def _shift_cells(img: np.ndarray, t: int, k: np.ndarray) -> None:
    """img += k per cell, saturating at 0 and 255, in place (k: (nr, nc, 3) whole levels)."""
    up = np.clip(k, 0, 255).astype(np.uint8)
    down = np.clip(-k, 0, 255).astype(np.uint8)
    # one of the two is 0 for each channel, so saturating add-then-subtract is clip(v + k)
    band = _BAND_BYTES // max(1, img.nbytes // max(1, img.shape[0]))
    if band >= t:   # small cells: one image of the per-cell values for all of img
        if up.any():
            _into(cv2.add(img, _repeat_cells(up, t), dst=img), img)
        if down.any():
            _into(cv2.subtract(img, _repeat_cells(down, t), dst=img), img)
        return
    # big cells: every pixel row of a cell row adds the same values, so a band of a few rows of
    # them (kept in cache) serves the whole cell row instead of an image the size of img
    for r in range(k.shape[0]):
        for values, op in ((up[r], cv2.add), (down[r], cv2.subtract)):
            if not values.any():
                continue
            rows = np.broadcast_to(np.repeat(values, t, axis=0), (band, img.shape[1], 3)).copy()
            for y in range(r * t, (r + 1) * t, band):
                seg = img[y:min(y + band, (r + 1) * t)]
                _into(op(seg, rows[:len(seg)], dst=seg), seg)


def _affine_values(img: np.ndarray, t: int, a: np.ndarray, b: np.ndarray, cells) -> None:
    """The table formula on every value of the chosen cells, in place: for cells smaller than
    their table."""
    rr, cc = cells
    v = cell_grid_view(img, t)
    f = v[rr, :, cc].astype(np.float64)           # (k, t, t, 3)
    f *= a[rr, cc][:, None, None, :]
    f += b[rr, cc][:, None, None, :]
    np.rint(f, out=f)
    np.clip(f, 0, 255, out=f)
    v[rr, :, cc] = f


def _affine_tables(img: np.ndarray, t: int, a: np.ndarray, b: np.ndarray, cells) -> None:
    """Cell by cell through its own lookup table (cv2.LUT), in place."""
    rr, cc = cells
    luts = affine_luts(a[rr, cc], b[rr, cc])
    for lut, r, c in zip(luts, rr.tolist(), cc.tolist()):
        view = img[r * t:(r + 1) * t, c * t:(c + 1) * t]
        _into(cv2.LUT(view, np.ascontiguousarray(lut.T[:, None, :]), dst=view), view)


def recolor_grid(img: np.ndarray, t: int, a: np.ndarray, b: np.ndarray) -> None:
    """Apply per-cell affine tables in place to `img`, uint8 (nr*t, nc*t, 3) holding nr x nc cells of
    t px, with (a, b) of shape (nr, nc, 3) from `affine_params`. Every pixel ends up exactly
    clip(rint(a * v + b)) of its cell; the working memory is a few slices of `img`."""
    nr, nc = a.shape[:2]
    if img.shape != (nr * t, nc * t, 3) or img.dtype != np.uint8:
        raise ValueError(f"img must be uint8 ({nr * t}, {nc * t}, 3) for {nr} x {nc} cells of {t} px, "
                         f"got {img.dtype} {img.shape}")
    cell_values = 3 * t * t
    step = max(1, _CHUNK_VALUES // max(1, cell_values * nc))
    for r0 in range(0, nr, step):
        r1 = min(nr, r0 + step)
        part, pa, pb = img[r0 * t:r1 * t], a[r0:r1], b[r0:r1]
        shift = _exact_shifts(pa, pb)
        if shift.any():
            _shift_cells(part, t, np.where(shift[..., None], np.rint(pb), 0.0).astype(np.int32))
        rest = np.nonzero(~shift)
        if len(rest[0]):
            (_affine_values if cell_values < _LUT_MIN_VALUES else _affine_tables)(part, t, pa, pb, rest)


def blend_grid(img: np.ndarray, target: np.ndarray, strength: float) -> None:
    """`img` := (1 - s) * img + s * target in place (the `blend` mode on cells laid out alike)."""
    s = strength_value(strength)
    _into(cv2.addWeighted(img, 1.0 - s, target, s, 0.0, dst=img), img)


def transfer(tiles: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray,
             mode: str, strength: float, target_cells: np.ndarray | None = None) -> np.ndarray:
    """Recolour the tiles placed in N cells toward their target regions.

    tiles: uint8 (N, t, t, 3). target_mean, target_std: (N, 3) per-cell RGB mean and std of
    the target region (0-255). target_cells: uint8 (N, t, t, 3), the target region resampled to
    the tile size; only "blend" needs it. Returns uint8 (N, t, t, 3); "none" and strength 0
    return `tiles` itself.
    """
    fn = choice("color mode", mode, _TRANSFERS)
    s = strength_value(strength)
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[3] != 3:
        raise ValueError(f"tiles must be uint8 (N, t, t, 3), got {tiles.dtype} {tiles.shape}")
    if fn is None or s == 0.0:
        return tiles
    n, t = tiles.shape[0], tiles.shape[1]
    if tiles.shape[2] != t:
        raise ValueError(f"tiles must be square, got {tiles.shape}")
    mu = np.asarray(target_mean, dtype=np.float32)
    sd = np.asarray(target_std, dtype=np.float32)
    for name, arr in (("target_mean", mu), ("target_std", sd)):
        if arr.shape != (n, 3):
            raise ValueError(f"{name} must be ({n}, 3) to match the tiles, got {arr.shape}")
    # N cells of t px stacked vertically are an (N*t, t, 3) image of N x 1 cells
    out = np.ascontiguousarray(tiles).copy()
    img = out.reshape(n * t, t, 3)
    if fn == "blend":
        if target_cells is None:
            raise UsageError("color mode 'blend' needs the target cells resampled to the tile size")
        target_cells = np.asarray(target_cells)
        if target_cells.shape != tiles.shape:
            raise ValueError(f"target_cells must have the tiles' shape {tiles.shape}, got {target_cells.shape}")
        blend_grid(img, np.ascontiguousarray(target_cells).reshape(n * t, t, 3), s)
        return out
    step = max(1, _CHUNK_VALUES // max(1, 3 * t * t))
    for i in range(0, n, step):
        sl = slice(i, i + step)
        mu_t, sd_t = tile_stats(tiles[sl])
        a, b = affine_params(mode, s, mu_t, sd_t, mu[sl], sd[sl])
        recolor_grid(img[i * t:(i + len(a)) * t], t, a[:, None], b[:, None])
    return out
