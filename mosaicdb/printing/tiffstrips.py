"""A flat, single-image, 8-bit RGB TIFF written strip by strip, for print shops' RIPs.

Strips are encoded as rows arrive (in worker threads when a pool is given) and written in
order, so memory holds the strips in flight, never the image. The file starts with 16 reserved
bytes and its IFD goes at the end (as libtiff does): whether it is classic TIFF or BigTIFF is
decided when it is closed, from its actual size, so classic TIFF is used whenever the
compressed file fits under 4 GB and no pixel is ever rendered twice to find out.

Tags written: size, BitsPerSample 8,8,8, Compression (1 none, 5 LZW, 8 Deflate), RGB,
strip offsets/counts, RowsPerStrip, X/YResolution + ResolutionUnit (inch), PlanarConfig 1,
Predictor 2 (horizontal, with LZW/Deflate), Software, and the ICC profile (34675). No
ImageDescription, no extra pages, no alpha.
"""
from __future__ import annotations

import os
import struct
import time
from collections import deque
from fractions import Fraction
from pathlib import Path

import imagecodecs
import numpy as np
from isal import isal_zlib

from ..errors import UsageError, choice

CLASSIC_MAX = 2 ** 32 - 1   # bytes a classic TIFF can address
MAX_SIDE = 2 ** 32 - 1      # ImageWidth/ImageLength are LONG
HEADER = 16          # reserved at the start: room for either header
STRIP_BYTES = 256 << 10
# raw bytes of strips per encoding task: ISA-L encodes a strip in well under a millisecond, so one
# task per strip would spend a good part of it in the pool's and the GIL's hand-offs
BATCH_BYTES = 2 << 20

DEFLATE_LEVEL = 1


def deflate_encode(data: np.ndarray) -> bytes:
    """Adobe Deflate (TIFF compression 8: a zlib stream) by Intel's ISA-L at level 1. On a mosaic
    print with the horizontal predictor it runs 4.9x as fast as LZW and 2.4x libdeflate's
    fastest level, into 38% fewer bytes than LZW; zlib level 6 (libtiff's default) saves 1%
    more at an eighteenth of the speed (benchmarks/bench_print_codecs.py)."""
    return isal_zlib.compress(data, DEFLATE_LEVEL)


# name -> (TIFF Compression value, uses the horizontal predictor, encoder of predicted bytes)
COMPRESSIONS = {
    "deflate": (8, True, deflate_encode),
    "lzw": (5, True, imagecodecs.lzw_encode),
    "none": (1, False, None),
}
DEFAULT_COMPRESSION = "deflate"

_SHORT, _LONG, _RATIONAL, _ASCII, _UNDEFINED, _LONG8 = 3, 4, 5, 2, 7, 16
_TYPE_SIZE = {_SHORT: 2, _LONG: 4, _RATIONAL: 8, _ASCII: 1, _UNDEFINED: 1, _LONG8: 8}


def compression_spec(name: str):
    return choice("--compression", name, COMPRESSIONS)


def rows_per_strip(width: int) -> int:
    """Rows of a ~256 KB strip (at least one)."""
    return max(1, STRIP_BYTES // (width * 3))


def timed_encode(strips: list, compression: str) -> tuple[list[bytes], float]:
    """`encode_strip` of each strip, and the CPU seconds they took in the thread that ran them
    (unlike wall time, not inflated by other load on the machine)."""
    t0 = time.thread_time()
    data = [encode_strip(rows, compression) for rows in strips]
    return data, time.thread_time() - t0


def encode_strip(rows: np.ndarray, compression: str) -> bytes:
    """One strip's bytes: raw, or horizontal-predicted then LZW/Deflate encoded."""
    _, predict, enc = compression_spec(compression)
    if enc is None:
        return rows.tobytes()   # C order, from any view
    d = np.empty(rows.shape, np.uint8)    # one pass straight from the (possibly strided) rows
    d[:, 0] = rows[:, 0]
    np.subtract(rows[:, 1:], rows[:, :-1], out=d[:, 1:])  # uint8 wraps: TIFF predictor 2
    return enc(d)


def rational(x: float) -> tuple[int, int]:
    f = Fraction(x).limit_denominator(100_000)
    while f.numerator >= 2 ** 32:
        f = Fraction(x).limit_denominator(max(1, f.denominator // 10))
    return f.numerator, f.denominator


class StripTiffWriter:
    """Write rows top to bottom with `add_rows`, then `close()`; `abort()` on failure."""

    def __init__(self, path, width: int, height: int, *, dpi: float, icc: bytes, compression: str = "lzw",
                 rowsperstrip: int | None = None, software: str = "mosaicdb", pool=None, max_pending: int = 8):
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise UsageError(f"{width}x{height} px is beyond what TIFF allows ({MAX_SIDE} px a side)")
        self.path = Path(path)
        self.width, self.height = width, height
        self.compression = compression
        self.code, self.predictor, _ = compression_spec(compression)
        self.rps = rowsperstrip or rows_per_strip(width)
        self.dpi, self.icc, self.software = dpi, icc, software
        self.pool, self.max_pending = pool, max(1, max_pending)
        self.batch = max(1, BATCH_BYTES // (self.rps * width * 3))   # strips per encoding task
        self._batch: list = []
        self._buf = np.empty((self.rps, width, 3), np.uint8)
        self._fill = 0
        self._rows_in = 0
        self._pending: deque = deque()
        self.encode_seconds = 0.0   # CPU seconds, summed over the threads that encoded
        self.write_seconds = 0.0    # writing strips and the directory, and the final fsync
        self.offsets: list[int] = []
        self.counts: list[int] = []
        self.bigtiff = None
        self._f = open(self.path, "wb")
        self._f.write(b"\0" * HEADER)
        self._pos = HEADER

    # ---- data -------------------------------------------------------------------------------
    def add_rows(self, rows: np.ndarray) -> None:
        """Append (n, width, 3) uint8 rows (any view). Whole strips inside `rows` are encoded
        straight from it, not copied: the caller must not change `rows` afterwards (the print
        renders a fresh array for every band)."""
        n = rows.shape[0]
        if rows.shape[1:] != (self.width, 3) or rows.dtype != np.uint8:
            raise ValueError(f"rows of {rows.dtype} {rows.shape[1:]} for a {self.width} px wide 8-bit RGB image")
        if self._rows_in + n > self.height:
            raise ValueError("more rows than the image has")
        self._rows_in += n
        i = 0
        while i < n:
            if self._fill == 0 and n - i >= self.rps:  # only strips that span two calls are copied
                self._submit(rows[i:i + self.rps])
                i += self.rps
                continue
            take = min(self.rps - self._fill, n - i)
            self._buf[self._fill:self._fill + take] = rows[i:i + take]
            self._fill += take
            i += take
            if self._fill == self.rps:
                self._submit(self._buf)
                self._buf = np.empty_like(self._buf)
                self._fill = 0

    def _submit(self, strip: np.ndarray) -> None:
        self._batch.append(strip)
        if len(self._batch) >= self.batch:
            self._submit_batch()

    def _submit_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self.pool is None:
            self._write(timed_encode(batch, self.compression))
            return
        self._pending.append(self.pool.submit(timed_encode, batch, self.compression))
        while len(self._pending) > self.max_pending:
            self._write(self._pending.popleft().result())

    def _write(self, encoded: tuple[list[bytes], float]) -> None:
        strips, self.encode_seconds = encoded[0], self.encode_seconds + encoded[1]
        t0 = time.perf_counter()
        for data in strips:
            self._f.write(data)
            self.offsets.append(self._pos)
            self.counts.append(len(data))
            self._pos += len(data)
            if self._pos & 1:  # keep every offset on a word boundary
                self._f.write(b"\0")
                self._pos += 1
        self.write_seconds += time.perf_counter() - t0

    # ---- directory ----------------------------------------------------------------------------
    def _entries(self, big: bool) -> list[tuple[int, int, int, bytes]]:
        """(tag, type, count, value bytes) sorted by tag."""
        off_type = _LONG8 if big else _LONG
        fmt = "<%d%s" % (len(self.offsets), "Q" if big else "I")
        xres = struct.pack("<II", *rational(self.dpi))
        sw = self.software.encode("ascii", "replace") + b"\0"
        e = [(256, _LONG, 1, struct.pack("<I", self.width)),
             (257, _LONG, 1, struct.pack("<I", self.height)),
             (258, _SHORT, 3, struct.pack("<3H", 8, 8, 8)),
             (259, _SHORT, 1, struct.pack("<H", self.code)),
             (262, _SHORT, 1, struct.pack("<H", 2)),
             (273, off_type, len(self.offsets), struct.pack(fmt, *self.offsets)),
             (274, _SHORT, 1, struct.pack("<H", 1)),
             (277, _SHORT, 1, struct.pack("<H", 3)),
             (278, _LONG, 1, struct.pack("<I", self.rps)),
             (279, off_type, len(self.counts), struct.pack(fmt, *self.counts)),
             (282, _RATIONAL, 1, xres),
             (283, _RATIONAL, 1, xres),
             (284, _SHORT, 1, struct.pack("<H", 1)),
             (296, _SHORT, 1, struct.pack("<H", 2)),
             (305, _ASCII, len(sw), sw)]
        if self.predictor:
            e.append((317, _SHORT, 1, struct.pack("<H", 2)))
        if self.icc:
            e.append((34675, _UNDEFINED, len(self.icc), bytes(self.icc)))
        return e

    def _layout(self, big: bool, start: int):
        """Out-of-line values from `start`, then the IFD: (value offsets, IFD offset, end)."""
        inline = 8 if big else 4
        pos, where = start, {}
        for tag, _, _, val in self._entries(big):
            if len(val) > inline:
                where[tag] = pos
                pos += len(val) + (len(val) & 1)
        n = len(self._entries(big))
        ifd = pos
        end = ifd + (8 + 20 * n + 8 if big else 2 + 12 * n + 4)
        return where, ifd, end

    def close(self) -> dict:
        """Flush the last strip and the pending encodes, write the directory and the header."""
        if self._rows_in != self.height:
            raise ValueError(f"{self._rows_in} of {self.height} rows were written")
        if self._fill:
            self._submit(self._buf[:self._fill].copy())
            self._fill = 0
        self._submit_batch()
        while self._pending:
            self._write(self._pending.popleft().result())
        _, _, classic_end = self._layout(False, self._pos)
        big = classic_end > CLASSIC_MAX
        where, ifd, end = self._layout(big, self._pos)
        inline = 8 if big else 4
        entries = self._entries(big)
        f = self._f
        for tag, _, _, val in entries:
            if tag in where:
                f.write(val + b"\0" * (len(val) & 1))
        out = [struct.pack("<Q" if big else "<H", len(entries))]
        for tag, typ, count, val in entries:
            field = struct.pack("<Q", where[tag]) if (big and tag in where) else \
                struct.pack("<I", where[tag]) if tag in where else val.ljust(inline, b"\0")
            out.append(struct.pack("<HHQ" if big else "<HHI", tag, typ, count) + field)
        out.append(b"\0" * (8 if big else 4))
        f.write(b"".join(out))
        assert f.tell() == end
        f.seek(0)
        f.write(b"II+\0" + struct.pack("<HHQ", 8, 0, ifd) if big else b"II*\0" + struct.pack("<I", ifd))
        t0 = time.perf_counter()
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self.write_seconds += time.perf_counter() - t0
        self.bigtiff = big
        return {"bytes": end, "bigtiff": big, "strips": len(self.offsets), "rowsperstrip": self.rps}

    def abort(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._batch.clear()
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)
