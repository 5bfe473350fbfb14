"""Frozen per-stage options, validated once where a run starts and saved beside its output."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UsageError, choice
from .match.grid import parse_grid

from .color import COLOR_MODES


@dataclass(frozen=True)
class MatchOptions:
    grid: str = "64"
    k: int = 32
    min_distance: int | None = None   # None: DEFAULT_MIN_DISTANCE, lowered for tiny pools
    max_uses: int = 0
    usage_penalty: float = 0.0
    unique: bool = False
    seed: int = 0
    device: str = "auto"
    order: str = "regret"         # greedy visiting order: regret | random
    refine_passes: int = 4        # local-improvement sweeps after the greedy pass (0: off)
    refine_seconds: float = 10.0  # ... and no new chunk of cells after this long

    def validate(self) -> None:
        parse_grid(self.grid)
        if self.k < 1 or self.k > 4096:
            raise UsageError(f"-k/--candidates must be between 1 and 4096, got {self.k}")
        choice("device", self.device, {"auto": 0, "cpu": 0, "cuda": 0})
        from .match.assign import ORDERS
        from .match.refine import RefineOptions
        choice("--order", self.order, {o: o for o in ORDERS})
        RefineOptions(self.refine_passes, self.refine_seconds).validate()

    def to_json(self) -> dict:
        return asdict(self)


DEFAULT_MIN_DISTANCE = 2


@dataclass(frozen=True)
class RenderOptions:
    tile_px: int = 32
    color: str = "none"
    color_strength: float = 0.5
    quality: int = 90
    codec: str = "jpeg"              # tile compression of TIFF/DZI outputs
    ome: bool = False                # TIFF: reduced levels as SubIFDs (Bio-Formats/QuPath)
    dpi: float | None = None         # written as resolution tags
    workers: int = 0                 # render/encode threads; 0: CPU count
    cache_bytes: int = 512 << 20     # decoded-original cache for tiles above the largest thumbnail

    def resolved_workers(self) -> int:
        import os
        return self.workers or os.cpu_count() or 1

    def validate(self) -> None:
        if not 1 <= self.tile_px <= 4096:
            raise UsageError(f"--tile-px must be between 1 and 4096, got {self.tile_px}")
        choice("--color mode", self.color, {m: m for m in COLOR_MODES})
        if not 0.0 <= self.color_strength <= 1.0:
            raise UsageError(f"--color-strength must be between 0 and 1, got {self.color_strength}")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be between 1 and 100, got {self.quality}")
        from .render.codecs import get_codec
        get_codec(self.codec, self.quality)
        if self.dpi is not None and not 1 <= self.dpi <= 10000:
            raise UsageError(f"--dpi must be between 1 and 10000, got {self.dpi}")
        if self.workers < 0 or self.cache_bytes < 0:
            raise UsageError("--workers and --cache must not be negative")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PrintSpec:
    grid: str
    tile_px: int
    dpi: float        # effective dpi, so cells x tile_px lands on the requested physical size
    size_in: tuple    # (long or width, None or height) in inches as requested


def resolve_print_size(print_size: str, dpi: float | None, grid: str | None, tile_px: int | None,
                       default_tile_px: int = 256) -> PrintSpec:
    """--print-size (+ --dpi, default 300) fixes the output's pixels; --grid or --tile-px (not
    both) then fixes the other. Without either, tiles are 256 px (one TIFF tile per cell)."""
    from .match.grid import parse_grid
    from .units import parse_print_size
    a, b = parse_print_size(print_size)
    dpi = float(dpi or 300)
    if grid and tile_px:
        raise UsageError("--print-size with --dpi fixes the output's pixels: give --grid or --tile-px, not both")
    if b is None:
        long_px = a * dpi
        if grid:
            n, rows = parse_grid(grid)
            if rows is not None:
                raise UsageError("with a one-sided --print-size, --grid is N (cells across the long side)")
            tile_px = max(1, round(long_px / n))
        else:
            tile_px = tile_px or default_tile_px
            n = max(1, round(long_px / tile_px))
        return PrintSpec(str(n), int(tile_px), n * tile_px / a, (a, None))
    w_px, h_px = a * dpi, b * dpi
    if grid:
        n, rows = parse_grid(grid)
        tile_px = max(1, round(max(w_px, h_px) / max(n, rows or 0)))
    tile_px = tile_px or default_tile_px
    cols, rows = max(1, round(w_px / tile_px)), max(1, round(h_px / tile_px))
    return PrintSpec(f"{cols}x{rows}", int(tile_px), cols * tile_px / a, (a, b))


def print_for_grid(print_size: str, dpi: float | None, cols: int, rows: int) -> tuple[int, float]:
    """(tile px, effective dpi) that put an existing COLS x ROWS grid at --print-size: the
    long side of the request sets the long side of the grid."""
    from .units import parse_print_size
    a, b = parse_print_size(print_size)
    long_in = max(a, b or 0.0)
    dpi = float(dpi or 300)
    n = max(cols, rows)
    tile_px = max(1, round(long_in * dpi / n))
    return tile_px, n * tile_px / long_in
