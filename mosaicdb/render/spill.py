"""Resized tiles parked on disk, so a render's memory does not depend on its cell size.

A render needs each placed tile at one or more cell sizes. Decoding and resizing an original costs
milliseconds; reading the resized pixels back costs microseconds. Keeping them all in memory made a
render's peak RSS grow with the cell size (2,000 tiles at 256 px are 390 MB), so `PixelCache`
keeps only a small in-memory LRU (`--cache`) and parks every resized tile here: an unlinked
temporary file (in `tempfile.gettempdir()`, i.e. $TMPDIR), written once per (tile, size) and read
back with `pread`. The kernel's page cache holds what is hot, outside the process's memory and
given back under pressure; nothing is left behind, even when the process is killed.

The file is bounded (`budget`, and a quarter of the free space where it lives); once full, or on
any write error, tiles are simply decoded again, as they would be without it."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading

import numpy as np

log = logging.getLogger(__name__)

SPILL_MAX_BYTES = 8 << 30      # at most this much disk, whatever the free space
FREE_SHARE = 4                 # and at most 1/FREE_SHARE of the free space where the file lives


class SpillFile:
    """A write-once store of uint8 arrays by key, in an unlinked temporary file. Thread-safe."""

    def __init__(self, budget: int = SPILL_MAX_BYTES, folder: str | None = None):
        self.folder = folder or tempfile.gettempdir()
        self.budget = budget
        self._file = None
        self._index: dict = {}          # key -> (offset, shape)
        self._end = 0
        self._lock = threading.Lock()
        self._disabled = budget <= 0
        self.reads = self.writes = 0

    @property
    def nbytes(self) -> int:
        """Bytes written to the file so far."""
        return self._end

    def _fd(self) -> int | None:
        if self._file is None and not self._disabled:
            try:
                self.budget = min(self.budget, shutil.disk_usage(self.folder).free // FREE_SHARE)
                self._file = tempfile.TemporaryFile(dir=self.folder)
            except OSError as e:
                self._give_up(f"cannot make a temporary file in {self.folder} ({e.strerror or e})")
        return None if self._file is None else self._file.fileno()

    def _give_up(self, why: str) -> None:
        if not self._disabled:
            log.warning("resized tiles will be decoded again instead of kept on disk: %s", why)
        self._disabled = True

    def get(self, key) -> np.ndarray | None:
        """The array stored under `key`, or None."""
        with self._lock:
            entry = self._index.get(key)
            fd = None if entry is None else self._fd()
        if entry is None or fd is None:
            return None
        offset, shape = entry
        out = np.empty(shape, np.uint8)
        try:
            got = os.preadv(fd, [out], offset)
        except OSError as e:
            self._give_up(f"reading {self.folder} failed ({e.strerror or e})")
            return None
        if got != out.nbytes:
            return None
        self.reads += 1
        return out

    def put(self, key, arr: np.ndarray) -> None:
        """Store `arr` (uint8) under `key` unless it is there already or the file is full."""
        arr = np.ascontiguousarray(arr, np.uint8)
        with self._lock:
            fd = self._fd()
            if fd is None or key in self._index or self._end + arr.nbytes > self.budget:
                return
            offset = self._end
            self._end += arr.nbytes
        try:
            done = os.pwrite(fd, memoryview(arr).cast("B"), offset)
        except OSError as e:
            self._give_up(f"writing to {self.folder} failed ({e.strerror or e})")
            return
        if done != arr.nbytes:
            self._give_up(f"short write to {self.folder}")
            return
        with self._lock:
            self._index[key] = (offset, arr.shape)
            self.writes += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._disabled = True
            self._index.clear()
