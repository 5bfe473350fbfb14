"""Render options: one frozen dataclass, validated when it is made, passed whole from the CLI
to the pixel loop (`CellRenderer`), and saved with every assignment so `render`, `print` and
`plan` start from what `make` used (`from_saved`)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace

from ..color import COLOR_MODES
from ..errors import UsageError, check_int, check_number, choice
from .codecs import CODECS
from .printsize import MAX_CELL_PX, fit_cells, grid_for_print, parse_print_size

DEFAULT_TILE_PX = 32
PRINT_TILE_PX = 256       # with --print-size and no grid: one TIFF tile per cell
DEFAULT_PRINT_DPI = 300.0


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """How an assignment becomes pixels.

    tile_px: pixels per cell side; None: 32, or what --print-size implies.
    color: per-cell colour transfer, one of `color.COLOR_MODES`; color_strength in [0, 1].
    quality: JPEG/WebP quality (1-100); codec: tile compression of .tif/.dzi outputs.
    ome: TIFF reduced levels as SubIFDs instead of pages.
    dpi: resolution written to the file; print_size: a physical size ("120cm", "120x80cm")
        that, with dpi (default 300), fixes the pixels per cell for a given grid (`for_grid`).
    workers: render/encode threads (0: CPU count); cache_bytes: memory for tiles resized
        from their originals (the rest go to a spill file on disk, `render.spill`).
    """
    tile_px: int | None = None
    color: str = "none"
    color_strength: float = 0.5
    quality: int = 90
    codec: str = "jpeg"
    ome: bool = False
    dpi: float | None = None
    print_size: str | None = None
    workers: int = 0
    cache_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        if self.tile_px is not None:
            check_int("--tile-px", self.tile_px, 1, MAX_CELL_PX)
        choice("--color mode", self.color, {m: m for m in COLOR_MODES})
        check_number("--color-strength", self.color_strength, 0.0, 1.0)
        check_int("--quality", self.quality, 1, 100)
        choice("--codec", self.codec, CODECS)
        if self.dpi is not None:
            check_number("--dpi", self.dpi, 1, 10_000)
        if self.print_size is not None:
            parse_print_size(self.print_size)
            if self.tile_px is not None and self.dpi is not None:
                raise UsageError("--print-size, --tile-px and --dpi together fix the pixels three ways: "
                                 "give two of them")
        check_int("--workers", self.workers, 0, 1024)
        check_int("--cache", self.cache_bytes, 0)

    def resolved_workers(self) -> int:
        """Threads to render and encode with: `workers`, or the CPU count."""
        return self.workers or os.cpu_count() or 1

    @property
    def px(self) -> int:
        """Pixels per cell (the default when no size was asked for)."""
        return self.tile_px if self.tile_px is not None else DEFAULT_TILE_PX

    # ---- print size ----------------------------------------------------------------------------
    def grid_for_print(self) -> str | None:
        """The grid a --print-size implies when no grid is given (None without a print size)."""
        if self.print_size is None:
            return None
        return grid_for_print(parse_print_size(self.print_size), self.dpi or DEFAULT_PRINT_DPI,
                              self.tile_px or PRINT_TILE_PX)

    def for_grid(self, cols: int, rows: int) -> tuple["RenderOptions", list[str]]:
        """These options for a cols x rows grid: with a print size, the pixels per cell and the
        effective dpi that put the grid at that size (the print size is then spent)."""
        if self.print_size is None:
            return replace(self, tile_px=self.px), []
        t, dpi, warnings = fit_cells(cols, rows, parse_print_size(self.print_size), self.dpi or DEFAULT_PRINT_DPI,
                                     cell_px=self.tile_px)
        return replace(self, tile_px=t, dpi=dpi, print_size=None), warnings

    # ---- saved with an assignment -------------------------------------------------------------
    def to_json(self) -> dict:
        """The options as JSON (saved in the assignment)."""
        return asdict(self)

    @classmethod
    def from_saved(cls, saved: dict | None, *, source: str = "the assignment", **overrides) -> "RenderOptions":
        """Options saved with an assignment (its meta["render"]), with every override that is not
        None taking their place. A print size or dpi override replaces the saved cell size."""
        names = {f.name for f in fields(cls)}
        bad = set(overrides) - names
        if bad:
            raise TypeError(f"unknown render options {sorted(bad)}")
        base = {k: v for k, v in (saved or {}).items() if k in names}
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("print_size"):   # a new size: the saved cell size and dpi give way
            base.pop("tile_px", None)
            base.pop("dpi", None)
        try:
            cls(**base)
        except (UsageError, TypeError) as e:
            raise UsageError(f"{source}: its saved render options are invalid ({e}); make it again") from None
        return cls(**{**base, **given})
