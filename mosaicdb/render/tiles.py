"""Tile pixels at a given size: from the thumbnail arrays when one is large enough (no decode),
otherwise from the originals, decoded once and kept in a bounded LRU cache."""
from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

from ..store.decode import square_resize


def box_reduce(tiles: np.ndarray, px: int) -> np.ndarray:
    """(n, s, s, 3) -> (n, px, px, 3) by area averaging; exact box filter when px divides s."""
    n, s = tiles.shape[0], tiles.shape[1]
    if s == px:
        return np.ascontiguousarray(tiles)
    if s % px == 0:
        f = s // px
        return tiles.reshape(n, px, f, px, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    return np.stack([cv2.resize(np.ascontiguousarray(t), (px, px), interpolation=cv2.INTER_AREA) for t in tiles])


class TileSource:
    def __init__(self, db, px: int, cache_bytes: int = 256 << 20):
        self.db = db
        self.px = px
        fits = [s for s in db.thumb_sizes if s >= px]
        self.thumb_size = fits[0] if fits else None
        self._thumbs = db.thumbs(self.thumb_size) if self.thumb_size else None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_max = max(1, cache_bytes // (3 * px * px))
        self.decoded = 0

    @property
    def from_originals(self) -> bool:
        return self._thumbs is None

    def get(self, ids: np.ndarray) -> np.ndarray:
        """(n, px, px, 3) uint8 for tile ids (n,)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._thumbs is not None:
            return box_reduce(np.asarray(self._thumbs[ids]), self.px)
        out = np.empty((len(ids), self.px, self.px, 3), np.uint8)
        for j, t in enumerate(ids.tolist()):
            out[j] = self._original(t)
        return out

    def _original(self, tile_id: int) -> np.ndarray:
        hit = self._cache.get(tile_id)
        if hit is not None:
            self._cache.move_to_end(tile_id)
            return hit
        pix = np.asarray(square_resize(self.db.load_original(tile_id), self.px))
        self.decoded += 1
        self._cache[tile_id] = pix
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return pix
