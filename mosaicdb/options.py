"""Frozen per-stage options, validated once where a run starts and saved beside its output."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import UsageError, choice
from .match.grid import parse_grid

COLOR_MODES = ("none", "mean", "meanstd", "blend")
RASTER_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


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

    def validate(self) -> None:
        parse_grid(self.grid)
        if self.k < 1 or self.k > 4096:
            raise UsageError(f"-k/--candidates must be between 1 and 4096, got {self.k}")
        choice("device", self.device, {"auto": 0, "cpu": 0, "cuda": 0})

    def to_json(self) -> dict:
        return asdict(self)


DEFAULT_MIN_DISTANCE = 2


@dataclass(frozen=True)
class RenderOptions:
    tile_px: int = 32
    color: str = "none"
    color_strength: float = 0.5
    quality: int = 90
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not 1 <= self.tile_px <= 4096:
            raise UsageError(f"--tile-px must be between 1 and 4096, got {self.tile_px}")
        choice("--color mode", self.color, {m: m for m in COLOR_MODES})
        if not 0.0 <= self.color_strength <= 1.0:
            raise UsageError(f"--color-strength must be between 0 and 1, got {self.color_strength}")
        if not 1 <= self.quality <= 100:
            raise UsageError(f"--quality must be between 1 and 100, got {self.quality}")

    def to_json(self) -> dict:
        return asdict(self)
