"""Resampling tile pixel blocks."""
from __future__ import annotations

import cv2
import numpy as np


def box_reduce(tiles: np.ndarray, px: int) -> np.ndarray:
    """(n, s, s, 3) -> (n, px, px, 3) by area averaging; exact box filter when px divides s."""
    n, s = tiles.shape[0], tiles.shape[1]
    if s == px:
        return np.ascontiguousarray(tiles)
    if s % px == 0:
        f = s // px
        return tiles.reshape(n, px, f, px, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    return np.stack([cv2.resize(np.ascontiguousarray(t), (px, px), interpolation=cv2.INTER_AREA) for t in tiles])
