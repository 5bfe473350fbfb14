"""DeepZoom tile sources for the viewer: one DZI geometry, several ways to get pixels.

DZI levels: 0 is 1 x 1 px, the top level (`max_level`) is full size, level L is the full image
divided by 2^(max_level - L), rounded up; tiles are 256 px with no overlap, edge tiles cropped.
`sources.open_source` picks the source from the file: a pyramidal TIFF (tiff_source.py), a DZI folder
written by `mosaic make`, or a PNG/JPEG/WebP held in memory (small outputs).
"""
from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from ..errors import MosaicError, UsageError
from ..io import UnsafeFile, read_regular_file
from ..render.codecs import jpeg_encode
from ..render.layout import DZI_NAMESPACE, TILE, dzi_files_dir, dzi_level_size, dzi_levels, dzi_xml, tiles_across

JPEG_QUALITY = 90
IMAGE_MAX_PIXELS = 100_000_000   # a PNG/JPEG mosaic is decoded whole; beyond this, render a .tif
TILE_MAX_BYTES = 16 << 20        # a 256 px DZI tile is far smaller
CONTENT_TYPES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class RequestError(MosaicError):
    """A request the server answers with an HTTP error status (never a traceback)."""
    status = 400


class BadRequest(RequestError):
    """A request with bad coordinates or parameters: HTTP 400."""
    status = 400


class NotFound(RequestError):
    """No such route, level, tile or cell: HTTP 404."""
    status = 404


def encode_jpeg(a: np.ndarray) -> bytes:
    return jpeg_encode(a, JPEG_QUALITY)


def parse_int(text: str, what: str) -> int:
    """A plain decimal integer from a URL part: no signs, spaces or huge values."""
    if not re.fullmatch(r"[0-9]{1,9}", text or ""):
        raise BadRequest(f"{what} must be a non-negative integer, got {text[:20]!r}")
    return int(text)


class TileSource(ABC):
    """Geometry and validation shared by every source; subclasses implement `_tile`."""
    kind = "abstract"
    format = "jpeg"

    def __init__(self, path: Path, width: int, height: int):
        self.path, self.width, self.height = Path(path), int(width), int(height)
        self.max_level = dzi_levels(self.width, self.height)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def level_size(self, level: int) -> tuple[int, int]:
        return dzi_level_size(self.width, self.height, self.max_level, level)

    def dzi_xml(self) -> str:
        return dzi_xml(self.width, self.height, self.format)

    def check(self, level: int, col: int, row: int, ext: str) -> None:
        if ext != self.format and not (ext == "jpg" and self.format == "jpeg"):
            raise NotFound(f"tiles of this mosaic are .{self.format}")
        if not 0 <= level <= self.max_level:
            raise BadRequest(f"level {level} is out of range 0..{self.max_level}")
        w, h = self.level_size(level)
        if not (0 <= col < tiles_across(w) and 0 <= row < tiles_across(h)):
            raise BadRequest(f"tile {col}_{row} is outside level {level} ({tiles_across(w)} x {tiles_across(h)} tiles)")

    def tile(self, level: int, col: int, row: int, ext: str = "jpeg") -> bytes:
        """Encoded bytes of one DZI tile; BadRequest for coordinates outside the pyramid."""
        self.check(level, col, row, ext)
        return self._tile(level, col, row)

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a tile in its level's pixels, cropped at the edges."""
        w, h = self.level_size(level)
        return col * TILE, row * TILE, min(w, (col + 1) * TILE), min(h, (row + 1) * TILE)

    @abstractmethod
    def _tile(self, level: int, col: int, row: int) -> bytes:
        """Encoded bytes of one (already checked) tile: each source says where they come from."""

    def close(self) -> None:
        pass


class ImageSource(TileSource):
    """A PNG/JPEG/WebP mosaic decoded into memory; levels are made once, on first use."""
    kind = "image"

    def __init__(self, path: Path):
        import warnings

        from PIL import Image
        hint = (f"too large to serve from memory: render a pyramid with `mosaic render {path} "
                f"--out {Path(path).with_suffix('.tif')}` and serve that")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit, below
                with Image.open(path) as im:
                    if im.width * im.height > IMAGE_MAX_PIXELS:
                        raise UsageError(f"{path} is {im.width}x{im.height} px, {hint}")
                    self.full = np.asarray(im.convert("RGB"))
        except Image.DecompressionBombError:
            raise UsageError(f"{path} is {hint}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise UsageError(f"cannot read {path} ({e})") from None
        super().__init__(path, self.full.shape[1], self.full.shape[0])
        self._levels: dict[int, np.ndarray] = {self.max_level: self.full}
        self._lock = threading.Lock()

    def level_array(self, level: int) -> np.ndarray:
        with self._lock:
            if level not in self._levels:
                w, h = self.level_size(level)
                self._levels[level] = cv2.resize(self.full, (w, h), interpolation=cv2.INTER_AREA)
            return self._levels[level]

    def _tile(self, level, col, row):
        x0, y0, x1, y1 = self.tile_box(level, col, row)
        return encode_jpeg(self.level_array(level)[y0:y1, x0:x1])


class DziFolderSource(TileSource):
    """A DZI written by `mosaic make --out X.dzi`: its tiles are files; only paths built from
    validated integers are ever opened."""
    kind = "dzi"

    def __init__(self, path: Path):
        import xml.etree.ElementTree as ET
        try:
            root = ET.fromstring(read_regular_file(path, 1 << 20).decode("utf-8"))
            ns = {"d": DZI_NAMESPACE}
            size = root.find("d:Size", ns)
            w, h = int(size.get("Width")), int(size.get("Height"))
            tile, overlap, fmt = int(root.get("TileSize")), int(root.get("Overlap")), root.get("Format")
        except (ET.ParseError, AttributeError, TypeError, ValueError, UnsafeFile, OSError) as e:
            raise UsageError(f"{path} is not a DZI description ({e})") from None
        if tile != TILE or overlap != 0 or fmt not in ("jpeg", "png"):
            raise UsageError(f"{path}: only DZIs written by mosaic (TileSize {TILE}, Overlap 0, jpeg/png) are served")
        self.files = dzi_files_dir(path)
        if not self.files.is_dir():
            raise UsageError(f"{path}: its tile folder {self.files} is missing")
        super().__init__(path, w, h)
        self.format = fmt

    def _tile(self, level, col, row):
        p = self.files / str(level) / f"{col}_{row}.{self.format}"
        try:  # a regular file inside the folder only: never a link out of it, a pipe or a device
            return read_regular_file(p, TILE_MAX_BYTES, root=self.files)
        except (OSError, UnsafeFile):
            raise NotFound(f"tile {level}/{col}_{row} is missing from {self.files.name}") from None
