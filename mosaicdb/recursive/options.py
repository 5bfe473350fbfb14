"""Options of recursive mosaics: how deep, and how many cells across each sub-mosaic."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError, check_int

MAX_DEPTH = 4            # 65536 px * 64^4 = 2^40 px across: beyond what a browser's zoom can reach
DEFAULT_GRID = 64
MAX_GRID = 256
MAX_STATIC_PX = 65536    # `mosaic make --recursive`: what one output file may be across


@dataclass(frozen=True, kw_only=True)
class RecursiveOptions:
    """depth: how many times a tile turns into a mosaic of itself (0: never).
    grid: cells across a sub-mosaic: a power of two, so every zoom level of the mosaic is a
        DeepZoom level of the whole (its tile's area is grid x the tile's pixels)."""
    depth: int = 0
    grid: int = DEFAULT_GRID

    def __post_init__(self) -> None:
        check_int("--recursive", self.depth, 0, MAX_DEPTH)
        check_int("--recursive-grid", self.grid, 2, MAX_GRID)
        if self.grid & (self.grid - 1):
            raise UsageError(f"--recursive-grid must be a power of two (2, 4, ... {MAX_GRID}), got {self.grid}")

    @property
    def zoom(self) -> int:
        """How many times wider the deepest level is than the mosaic itself."""
        return self.grid ** self.depth
