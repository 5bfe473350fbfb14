"""`mosaic print` options: one frozen dataclass, validated when it is made, before any work."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import UsageError, check_int, check_number, choice
from ..render.options import RenderOptions
from ..units import parse_length, parse_print_size
from .geometry import parse_panel_grid
from .tiffstrips import COMPRESSIONS, DEFAULT_COMPRESSION


@dataclass(frozen=True, kw_only=True)
class PrintOptions:
    """What a print looks like on paper and on disk.

    size: "120x80cm" (width x height) or "120cm" (the long side); dpi: the print resolution.
    compression: strip compression, with the horizontal predictor (deflate | lzw | none; never
        JPEG); icc: an RGB output profile to convert into and embed (None: sRGB).
    bleed: mosaic beyond the trim on every side; panel_width / panels: split into panels
        (widest panel, or exactly COLSxROWS) sharing `overlap`; proof: a JPEG proof too.
    buffer_bytes: rendered rows in flight.
    render: colour transfer, the proof's JPEG quality, render threads and original cache
        (`RenderOptions.from_saved` starts from what `make` used); its tile_px is not used:
        the print's geometry sets the pixels per cell.
    """
    size: str
    dpi: float = 300.0
    compression: str = DEFAULT_COMPRESSION
    icc: str | None = None
    bleed: str = "0"
    panel_width: str | None = None
    panels: str | None = None
    overlap: str = "0"
    proof: bool = False
    buffer_bytes: int = 256 << 20
    render: RenderOptions = field(default_factory=RenderOptions)

    def __post_init__(self) -> None:
        choice("--compression", self.compression, COMPRESSIONS)
        check_number("--dpi", self.dpi, 1, 10_000)
        check_int("--buffer", self.buffer_bytes, 1)
        if self.panel_width and self.panels:
            raise UsageError("give --panel-width or --panels, not both")
        if self.overlap_in and not (self.panel_width or self.panels):
            raise UsageError("--overlap is for panels: add --panel-width or --panels")
        self.size_in, self.bleed_in, self.panel_width_in, self.panel_grid  # noqa: B018 - parse them all now

    @property
    def size_in(self) -> tuple[float, float | None]:
        return parse_print_size(self.size, "--size")

    @property
    def bleed_in(self) -> float:
        return parse_length(self.bleed, "--bleed", allow_zero=True)

    @property
    def overlap_in(self) -> float:
        return parse_length(self.overlap, "--overlap", allow_zero=True)

    @property
    def panel_width_in(self) -> float | None:
        return parse_length(self.panel_width, "--panel-width") if self.panel_width else None

    @property
    def panel_grid(self) -> tuple[int, int] | None:
        return parse_panel_grid(self.panels) if self.panels else None

    def resolved_workers(self) -> int:
        """Threads to render and encode with (those of the render options)."""
        return self.render.resolved_workers()

    def to_json(self) -> dict:
        """The options as JSON (written into the print's manifest)."""
        return asdict(self)
