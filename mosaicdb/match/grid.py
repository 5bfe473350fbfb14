"""The target's grid of square cells, and each cell's features and colour statistics.

Crop policy: cells are square. `--grid N` puts N cells across the long side and as many
whole cells as fit across the short side; `--grid CxR` fixes both. Either way the target is
centre-cropped to the grid's aspect (by less than one cell with `N`), never stretched or padded.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError, UsageError
from ..io import read_input
from ..features import cell_blocks
from ..store.decode import DecodeOptions, open_image

MAX_CELLS = 1 << 22  # 2048 x 2048 cells
MAX_TARGET_BYTES = 2 << 30  # a target file is read whole: larger ones are not targets
# Cell features are computed in bands of whole cell rows of about this many samples: the float
# Lab working set of a band is ~50 MB, where the whole of a 256 x 256 grid would take ~1 GB.
BAND_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Grid:
    cols: int
    rows: int
    crop: tuple[int, int, int, int]  # left, top, right, bottom in target pixels

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def cell_px(self) -> float:
        """Target pixels per cell along its shorter side (cells are square but on a target
        thinner than one cell, or a grid like 1x3000 whose crop rounds to a pixel)."""
        return min((self.crop[2] - self.crop[0]) / self.cols, (self.crop[3] - self.crop[1]) / self.rows)


def parse_grid(spec: str) -> tuple[int, int | None]:
    """'128' -> (128, None); '128x96' -> (128, 96) as (cols, rows)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", str(spec))
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise UsageError(f"--grid takes N (cells across the long side) or COLSxROWS, e.g. 128 or 128x96; got {spec!r}")
    return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)


def make_grid(width: int, height: int, spec: str) -> Grid:
    a, b = parse_grid(spec)
    if b is None:
        long_, short = max(width, height), min(width, height)
        cell = long_ / a
        n_short = max(1, int(short / cell + 1e-6))
        short_px = min(short, max(1, round(n_short * cell)))
        cols, rows = (a, n_short) if width >= height else (n_short, a)
        cw, ch = (long_, short_px) if width >= height else (short_px, long_)
    else:
        cols, rows = a, b
        if width * rows >= height * cols:
            ch, cw = height, max(1, round(height * cols / rows))
        else:
            cw, ch = width, max(1, round(width * rows / cols))
    if cols * rows > MAX_CELLS:
        raise UsageError(f"--grid {spec} gives {cols}x{rows} = {cols * rows:,} cells; the limit is {MAX_CELLS:,}")
    left, top = (width - cw) // 2, (height - ch) // 2
    return Grid(cols, rows, (left, top, left + cw, top + ch))


@dataclass
class Target:
    path: str
    sha256: str
    image: np.ndarray  # full RGB uint8 (H, W, 3), EXIF/colour normalised

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def load_target(path, what: str = "target") -> Target:
    """An image file the user named, decoded; errors name it as `what` ("target", "mosaic"):
    unreadable, special or oversize files are usage errors, undecodable ones ImageError."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; give image files"
                         + (" (or the folder to `mosaic make`)" if what == "target" else ""))
    data = read_input(p, MAX_TARGET_BYTES, f"{what} {p}")
    try:
        img, _, _ = open_image(data, DecodeOptions(max_pixels=1_000_000_000, limit_is=" for a target or mosaic image"))
    except ImageError as e:
        raise ImageError(f"{what} {p}: {e}") from None
    return Target(str(p.resolve()), hashlib.sha256(data).hexdigest(), np.asarray(img))


def resample_cells(image: np.ndarray, grid: Grid, px: int) -> np.ndarray:
    """The cropped target resampled so every cell is px x px: (rows*px, cols*px, 3)."""
    l, t, r, b = grid.crop
    crop = image[t:b, l:r]
    size = (grid.cols * px, grid.rows * px)
    interp = cv2.INTER_AREA if size[0] <= crop.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), size, interpolation=interp)


@dataclass
class CellData:
    features: np.ndarray  # (cells, D) float32, row-major
    mean: np.ndarray      # (rows, cols, 3) float32 RGB mean
    std: np.ndarray       # (rows, cols, 3) float32 RGB std


def cell_data(image: np.ndarray, grid: Grid, spec) -> CellData:
    """Features (`spec`: the database's mosaicdb.feature_kinds spec, `db.feature_spec`) and
    colour statistics of every cell, from the target resampled to spec.samples px per cell."""
    s = spec.samples
    samples = resample_cells(image, grid, s)
    rows, cols = grid.rows, grid.cols
    feats = np.empty((rows * cols, spec.dim), np.float32)
    mean = np.empty((rows, cols, 3), np.float32)
    std = np.empty((rows, cols, 3), np.float32)
    band = max(1, BAND_SAMPLES // (cols * s * s))

    def one_band(r0: int) -> None:
        r1 = min(rows, r0 + band)
        part = samples[r0 * s:r1 * s]
        feats[r0 * cols:r1 * cols] = spec(cell_blocks(part, r1 - r0, cols))
        mean[r0:r1], std[r0:r1] = _cell_mean_std(part, r1 - r0, cols)

    starts = range(0, rows, band)
    if len(starts) == 1:
        one_band(0)
    else:  # numpy and OpenCV release the GIL: bands run side by side
        with ThreadPoolExecutor(min(len(starts), os.cpu_count() or 1)) as ex:
            list(ex.map(one_band, starts))
    return CellData(feats, mean, std)


def _cell_mean_std(samples: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell RGB mean and std (population) of the samples: (rows, cols, 3) float32 each."""
    mean = np.empty((rows, cols, 3), np.float32)
    std = np.empty((rows, cols, 3), np.float32)
    _mean_std_kernel()(np.ascontiguousarray(samples), rows, cols, mean, std)
    return mean, std


# One pass over the uint8 samples, sums in float64 (centred on 128): it replaced two OpenCV area
# resizes of a float32 copy of the samples and of its square (bench_match's 65,536 cells:
# 0.1-0.24 s single-threaded before).
@functools.cache
def _mean_std_kernel():
    """Compiled on first use: numba stays out of processes that only render (test_render_cells)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def _mean_std_cells(samples, rows, cols, mean, std):
        s = samples.shape[0] // rows
        inv = 1.0 / (s * s)
        total = np.empty(3, np.float64)
        squares = np.empty(3, np.float64)
        for r in range(rows):
            for c in range(cols):
                total[:] = 0.0
                squares[:] = 0.0
                for y in range(r * s, r * s + s):
                    for x in range(c * s, c * s + s):
                        for ch in range(3):
                            v = np.float64(samples[y, x, ch]) - 128.0
                            total[ch] += v
                            squares[ch] += v * v
                for ch in range(3):
                    m = total[ch] * inv
                    mean[r, c, ch] = m + 128.0
                    std[r, c, ch] = np.sqrt(max(squares[ch] * inv - m * m, 0.0))

    return _mean_std_cells
