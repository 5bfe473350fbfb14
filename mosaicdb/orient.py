"""Tile orientations: the 8 ways a square tile can be turned (flips and quarter turns).

Orientation code o (0-7) is applied to a tile's pixels as: transpose when bit 2 is set, then
flip upside down when bit 1 is, then mirror left-right when bit 0 is. So 0 is the tile as
stored, 1 its mirror image, 3 a half turn, 5 a quarter turn clockwise, 6 counter-clockwise.
`--orient` chooses which codes the matcher may use (`ORIENTS`); the saved assignment records
each cell's code and every renderer applies it to the tile's pixels.

A feature that is a grid of block means turns with the pixels: the blocks are permuted
(`block_permutation`), so a tile's features in any orientation are a permutation of the
stored ones and the index need not hold more than one vector a tile.
"""
from __future__ import annotations

import numpy as np

from .errors import choice

ORIENTS = {"none": (0,), "mirror": (0, 1), "all": tuple(range(8))}
DEFAULT_ORIENT = "none"
NAMES = ("as stored", "mirrored left-right", "flipped upside down", "turned half a turn",
         "transposed (mirrored about the main diagonal)", "turned a quarter turn clockwise",
         "turned a quarter turn counter-clockwise", "mirrored about the other diagonal")


def codes(orient: str) -> tuple[int, ...]:
    """The orientation codes an `--orient` value allows (an unknown value lists the choices)."""
    return choice("--orient", orient, ORIENTS)


def orient_pixels(a: np.ndarray, o: int) -> np.ndarray:
    """`a` (..., t, t, C) turned by orientation `o`: a view (no copy) of the last three axes."""
    if o & 4:
        a = np.swapaxes(a, -3, -2)
    if o & 2:
        a = a[..., ::-1, :, :]
    if o & 1:
        a = a[..., :, ::-1, :]
    return a


def orient_each(a: np.ndarray, o: np.ndarray) -> np.ndarray:
    """(n, t, t, C) tiles, tile i turned by o[i]: a new array (one vectorised copy per code)."""
    o = np.asarray(o).ravel()
    if not o.any():
        return a
    out = np.empty_like(a)
    for code in np.unique(o).tolist():
        sel = o == code
        out[sel] = orient_pixels(a[sel], code)
    return out


def block_permutation(p: int, o: int, channels: int = 3) -> np.ndarray:
    """Indices `perm` into the row-major (p, p, channels) values of a p x p grid of block means
    such that the grid of the turned pixels is `grid.ravel()[perm]`: turning the pixels turns
    the grid of their block means the same way."""
    idx = np.arange(p * p * channels).reshape(p, p, channels)
    return np.ascontiguousarray(orient_pixels(idx, o)).ravel()


def describe(o: int) -> str:
    return NAMES[int(o)]
