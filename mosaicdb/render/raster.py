"""PNG/JPEG/WebP writers. PNG streams row bands through zlib (memory flat at any size);
JPEG and WebP encoders need the whole picture, so they are capped (use PNG or TIFF beyond)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import RenderError, UsageError

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MAX_SIDE = {"PNG": 2 ** 31 - 1, "JPEG": 65500, "WEBP": 16383}
IN_MEMORY_MAX_PIXELS = 400_000_000  # 1.2 GB of RGB: past this, write PNG (streamed) or TIFF


def suffix_choice(path, table: dict, what: str):
    """table[suffix of path]; an unknown suffix raises UsageError listing the known ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in table:
        raise UsageError(f"--out {path}: unknown {what} {suffix or '(none)'}; use one of "
                         f"{', '.join(sorted(table))}")
    return table[suffix]


def raster_format(path) -> str:
    return suffix_choice(path, FORMATS, "image type")


def check_raster(path, width: int, height: int) -> str:
    fmt = raster_format(path)
    if max(width, height) > MAX_SIDE[fmt]:
        raise UsageError(f"--out {path}: {width}x{height} px is beyond {fmt}'s limit of {MAX_SIDE[fmt]} px a side; "
                          "use a smaller --tile-px or grid, or a .png output")
    if fmt != "PNG" and width * height > IN_MEMORY_MAX_PIXELS:
        raise UsageError(f"--out {path}: {width}x{height} px is too large for {fmt}, whose encoder needs the whole "
                          "picture in memory; use a .png output (streamed) or a smaller --tile-px")
    return fmt


def _chunk(f, tag: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def write_png_stream(f, bands, width: int, height: int, level: int = 6, on_band=None) -> None:
    """Write an 8-bit RGB PNG from an iterator of (h, width, 3) bands, using the Sub filter."""
    f.write(b"\x89PNG\r\n\x1a\n")
    _chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    z = zlib.compressobj(level)
    pending = bytearray()
    written = 0
    for band in bands:
        h = band.shape[0]
        flat = band.reshape(h, width * 3)
        lines = np.empty((h, width * 3 + 1), np.uint8)
        lines[:, 0] = 1  # Sub filter: each byte minus the byte of the pixel to its left
        lines[:, 1:4] = flat[:, :3]
        np.subtract(flat[:, 3:], flat[:, :-3], out=lines[:, 4:])
        pending += z.compress(lines.tobytes())
        written += h
        if len(pending) >= 1 << 20:
            _chunk(f, b"IDAT", bytes(pending))
            pending.clear()
        if on_band:
            on_band(h)
    if written != height:
        raise RenderError(f"internal: rendered {written} rows, expected {height}")
    pending += z.flush()
    _chunk(f, b"IDAT", bytes(pending))
    _chunk(f, b"IEND", b"")


def write_raster(path, bands, width: int, height: int, quality: int = 90, on_band=None) -> None:
    """Write bands to `path` (format from the suffix; the caller makes it atomic)."""
    fmt = check_raster(path, width, height)
    if fmt == "PNG":
        with open(path, "wb") as f:
            write_png_stream(f, bands, width, height, on_band=on_band)
        return
    canvas = np.empty((height, width, 3), np.uint8)
    y = 0
    for band in bands:
        canvas[y:y + band.shape[0]] = band
        y += band.shape[0]
        if on_band:
            on_band(band.shape[0])
    kw = {"quality": quality}
    if fmt == "JPEG":
        kw.update(subsampling=0 if quality >= 90 else 2, optimize=False)
    Image.fromarray(canvas).save(path, format=fmt, **kw)
