"""`mosaic print` options: one frozen dataclass, parsed and validated once, before any work."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..color import COLOR_MODES
from ..errors import UsageError, choice
from ..units import parse_length, parse_print_size
from .geometry import parse_panel_grid
from .tiffstrips import COMPRESSIONS


@dataclass(frozen=True)
class PrintOptions:
    size: str                        # "120x80cm" (width x height) or "120cm" (the long side)
    dpi: float = 300.0
    compression: str = "lzw"         # none | lzw | deflate (never JPEG)
    icc: str | None = None           # an RGB output profile; None: sRGB
    bleed: str = "0"                 # mosaic content beyond the trim on every side
    panel_width: str | None = None   # widest panel, overlap included
    panels: str | None = None        # exactly COLSxROWS panels
    overlap: str = "0"               # shared between neighbouring panels
    proof: bool = False              # JPEG proof, <= 8,000 px, seams drawn
    quality: int = 90                # of the proof
    color: str = "none"
    color_strength: float = 0.5
    workers: int = 0                 # render/encode threads; 0: CPU count
    cache_bytes: int = 512 << 20     # decoded originals (cells larger than the biggest thumbnail)
    buffer_bytes: int = 256 << 20    # rendered rows in flight

    def resolved_workers(self) -> int:
        import os
        return self.workers or os.cpu_count() or 1

    def parsed(self) -> dict:
        """Validate everything that needs no database; return the lengths in inches."""
        choice("--compression", self.compression, COMPRESSIONS)
        choice("--color mode", self.color, {m: m for m in COLOR_MODES})
        if not (1 <= float(self.dpi) <= 10_000):
            raise UsageError(f"--dpi must be between 1 and 10000, got {self.dpi:g}")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be between 1 and 100, got {self.quality}")
        if not 0.0 <= self.color_strength <= 1.0:
            raise UsageError(f"--color-strength must be between 0 and 1, got {self.color_strength}")
        if self.workers < 0 or self.cache_bytes < 0 or self.buffer_bytes <= 0:
            raise UsageError("--workers and --cache must not be negative, --buffer must be positive")
        if self.panel_width and self.panels:
            raise UsageError("give --panel-width or --panels, not both")
        size = parse_print_size(self.size, "--size")
        bleed = parse_length(self.bleed, "--bleed", allow_zero=True)
        overlap = parse_length(self.overlap, "--overlap", allow_zero=True)
        if overlap and not (self.panel_width or self.panels):
            raise UsageError("--overlap is for panels: add --panel-width or --panels")
        return {"size_in": size, "bleed_in": bleed, "overlap_in": overlap,
                "panel_width_in": parse_length(self.panel_width, "--panel-width") if self.panel_width else None,
                "panel_grid": parse_panel_grid(self.panels) if self.panels else None}

    def to_json(self) -> dict:
        return asdict(self)
