"""Fixed-row raw arrays on disk (features, thumbnails), memory-mapped and grown in place.

Rows beyond the catalog's `next_id` are scratch: an ingest writes them first and commits the
catalog after, so a kill at any moment leaves rows the catalog does not reference yet.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DatabaseError


class RowArray:
    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype):
        self.path = Path(path)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize

    def capacity(self) -> int:
        try:
            return os.path.getsize(self.path) // self.row_bytes
        except FileNotFoundError:
            return 0

    def ensure(self, rows: int) -> None:
        """Grow the file (sparse, zero-filled) to hold at least `rows` rows."""
        cap = self.capacity()
        if rows <= cap:
            return
        new = max(rows, 2 * cap, 1024)
        with open(self.path, "ab") as f:
            f.truncate(new * self.row_bytes)

    def write(self, start: int, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=self.dtype)
        self.ensure(start + len(data))
        with open(self.path, "r+b") as f:
            f.seek(start * self.row_bytes)
            f.write(data.tobytes())

    def read(self, rows: int, mode: str = "r") -> np.ndarray:
        """A memory map of the first `rows` rows (an empty array when rows == 0)."""
        if rows == 0:
            return np.zeros((0,) + self.row_shape, self.dtype)
        if self.capacity() < rows:
            raise DatabaseError(f"{self.path} holds {self.capacity()} rows, the catalog needs {rows}: the database "
                                f"is damaged; run `mosaic db repair {self.path.parent}`")
        return np.memmap(self.path, dtype=self.dtype, mode=mode, shape=(rows,) + self.row_shape)
