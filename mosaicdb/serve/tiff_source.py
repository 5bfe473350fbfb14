"""DZI tiles straight from a tiled pyramidal TIFF (as `mosaic make --out X.tif` writes it).

Where a DZI level has the size of a TIFF level, and a tile is a whole 256 x 256 interior
tile stored as a complete JPEG stream, its bytes are read with one `os.pread` and sent as they
are (no decoding, no re-encoding, thread-safe without locks). Edge tiles (stored zero-padded),
other codecs, and the DZI levels below the smallest TIFF level are decoded and re-encoded.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import tifffile

from ..errors import UsageError
from ..render.layout import TILE
from .tilesource import NotFound, TileSource, encode_jpeg

JPEG = 7
YCBCR = 6
REGION_MAX_PIXELS = 16_000_000   # decoded per request for a level the TIFF lacks
DECODE_SLOTS = 2                 # requests decoding such regions at once: memory stays bounded


@dataclass
class TiffLevel:
    width: int
    height: int
    offsets: np.ndarray      # (tiles_down * tiles_across,) int64, row-major
    counts: np.ndarray
    decode: Callable         # tifffile's decoder for this level's segments
    passthrough: bool        # tiles are complete baseline JPEG streams a browser can show

    @property
    def tiles_across(self) -> int:
        return -(-self.width // TILE)


def _read_levels(tif: tifffile.TiffFile, path: Path) -> list[TiffLevel]:
    levels = []
    for series_level in tif.series[0].levels:
        p = series_level.keyframe
        if not p.is_tiled or (p.tilewidth, p.tilelength) != (TILE, TILE):
            raise UsageError(f"{path} is not tiled 256 x 256; serve a pyramidal TIFF written by `mosaic make` "
                             f"(or re-render it: mosaic render {path} --out x.tif)")
        if p.dtype != np.uint8 or p.samplesperpixel != 3 or p.planarconfig != 1 or p.imagedepth != 1:
            raise UsageError(f"{path}: only 8-bit RGB TIFFs are served (this one is {p.dtype}, "
                             f"{p.samplesperpixel} samples)")
        decode = p.decode  # built here, once, before threads share it
        passthrough = (p.compression == JPEG and p.photometric == YCBCR and p.jpegtables is None)
        levels.append(TiffLevel(p.imagewidth, p.imagelength, np.asarray(p.dataoffsets, np.int64),
                                np.asarray(p.databytecounts, np.int64), decode, passthrough))
    return levels


class TiffSource(TileSource):
    kind = "tiff"

    def __init__(self, path: Path):
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        try:
            self._tif = tifffile.TiffFile(path)
            levels = _read_levels(self._tif, Path(path))
        except (tifffile.TiffFileError, ValueError, IndexError, KeyError) as e:
            raise UsageError(f"{path} is not a readable TIFF ({e})") from None
        super().__init__(path, levels[0].width, levels[0].height)
        self.levels = sorted(levels, key=lambda lv: -lv.width)
        self._fd = os.open(path, os.O_RDONLY)
        # DZI level -> TIFF level of exactly its size
        self.match = {}
        for lv in self.levels:
            dz = self.max_level - round(math.log2(self.width / lv.width)) if lv.width else -1
            if 0 <= dz <= self.max_level and self.level_size(dz) == (lv.width, lv.height):
                self.match[dz] = lv

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()

    def stored_bytes(self, lv: TiffLevel, tx: int, ty: int) -> bytes:
        i = ty * lv.tiles_across + tx
        n = int(lv.counts[i])
        if n == 0:
            return b""
        data = os.pread(self._fd, n, int(lv.offsets[i]))
        if len(data) != n:
            raise NotFound(f"{self.path.name} is truncated")
        return data

    def stored_pixels(self, lv: TiffLevel, tx: int, ty: int) -> np.ndarray:
        """One stored tile, decoded: (256, 256, 3), zero-padded at the edges as stored."""
        data = self.stored_bytes(lv, tx, ty)
        if not data:
            return np.zeros((TILE, TILE, 3), np.uint8)
        seg = lv.decode(data, ty * lv.tiles_across + tx, jpegtables=None)[0]
        return seg.reshape(TILE, TILE, 3)

    def region(self, lv: TiffLevel, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) of a TIFF level, from the stored tiles covering them."""
        out = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // TILE, -(-y1 // TILE)):
            for tx in range(x0 // TILE, -(-x1 // TILE)):
                t = self.stored_pixels(lv, tx, ty)
                ax0, ay0 = max(x0, tx * TILE), max(y0, ty * TILE)
                ax1, ay1 = min(x1, (tx + 1) * TILE), min(y1, (ty + 1) * TILE)
                out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = t[ay0 - ty * TILE:ay1 - ty * TILE,
                                                               ax0 - tx * TILE:ax1 - tx * TILE]
        return out

    def is_passthrough(self, level: int, col: int, row: int) -> bool:
        """Is this DZI tile a stored TIFF tile, sent as it is?"""
        lv = self.match.get(level)
        x0, y0, x1, y1 = self.tile_box(level, col, row)
        return lv is not None and lv.passthrough and x1 - x0 == TILE and y1 - y0 == TILE

    def _tile(self, level, col, row):
        x0, y0, x1, y1 = self.tile_box(level, col, row)
        lv = self.match.get(level)
        if lv is not None:
            if self.is_passthrough(level, col, row):
                data = self.stored_bytes(lv, col, row)
                if data:
                    return data
            return encode_jpeg(self.stored_pixels(lv, col, row)[:y1 - y0, :x1 - x0])
        return encode_jpeg(self._resampled(level, x0, y0, x1, y1))

    def _resampled(self, level, x0, y0, x1, y1) -> np.ndarray:
        """A tile of a level the TIFF lacks: the covering region of the next larger TIFF level,
        area-resampled (for mosaic's TIFFs that level is at most 256 px, one stored tile)."""
        w, h = self.level_size(level)
        src = min((lv for lv in self.levels if lv.width >= w and lv.height >= h), key=lambda lv: lv.width)
        fx, fy = src.width / w, src.height / h
        sx0, sy0 = int(x0 * fx), int(y0 * fy)
        sx1, sy1 = min(src.width, math.ceil(x1 * fx)), min(src.height, math.ceil(y1 * fy))
        if (sx1 - sx0) * (sy1 - sy0) > REGION_MAX_PIXELS:
            raise NotFound(f"level {level} is too far below the TIFF's levels to be made on demand; "
                           "write the TIFF with `mosaic make`/`mosaic render`, which stores every level")
        with self._decode_slots:
            reg = self.region(src, sx0, sy0, sx1, sy1)
            return cv2.resize(reg, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
