"""Accept or reject generated tiles: too flat, too chaotic, or too far from the palette colour.

Every tile is first area-resampled to 64 x 64 (smaller tiles are kept at their own size), so
thresholds mean the same at any resolution.
Two standard deviations, in CIE Lab units (the same units as the palette distance):
  std     RMS distance of the pixels from the tile's mean colour: ~0 for a flat tile
  detail  RMS of the finest band (each pixel minus its 2 x 2 block mean): noise and grain,
          large for a chaotic tile, small for a smooth photograph even when its std is large
and the palette distance, CIE76 delta E between the tile's mean and the palette colour.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UsageError
from ..features import rgb_to_lab

ANALYSIS = 64


@dataclass(frozen=True)
class FilterOptions:
    """Which generated tiles are kept (in Lab units, on a 64 px copy): not flatter than
    `min_std`, not more varied than `max_std`, fine detail (noise) at most `max_detail`, mean
    colour within `max_delta_e` of its palette colour."""
    min_std: float = 6.0        # below: "flat"
    max_std: float = 60.0       # above: "chaotic"
    max_detail: float = 18.0    # above: "chaotic"
    max_delta_e: float = 30.0   # above: "off-colour"

    def __post_init__(self) -> None:
        for name in ("min_std", "max_std", "max_detail", "max_delta_e"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.min_std >= self.max_std:
            raise UsageError(f"--min-std ({self.min_std}) must be below --max-std ({self.max_std})")

    def to_json(self) -> dict:
        """The options as JSON (in the run record)."""
        return asdict(self)


def _analysis_lab(img: np.ndarray) -> np.ndarray:
    """Lab of the image area-resampled to 64 x 64, or to its own even short side when smaller
    (upsampling would invent a flat fine band)."""
    from PIL import Image
    img = np.asarray(img, dtype=np.uint8)
    side = min(ANALYSIS, min(img.shape[:2]) // 2 * 2)
    if side < 2:
        raise UsageError(f"tile of {img.shape[1]}x{img.shape[0]} px is too small to judge")
    if img.shape[:2] != (side, side):
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((side, side), Image.Resampling.BOX))
    return rgb_to_lab(img)


def tile_stats(images) -> dict:
    """Mean Lab (n, 3), std (n,) and detail (n,) of uint8 RGB images of any size."""
    n = len(images)
    mean, std, detail = np.zeros((n, 3)), np.zeros(n), np.zeros(n)
    for i, im in enumerate(images):
        lab = _analysis_lab(im)
        m = lab.reshape(-1, 3).mean(axis=0)
        h = lab.shape[0] // 2
        fine = lab.reshape(h, 2, h, 2, 3) - lab.reshape(h, 2, h, 2, 3).mean(axis=(1, 3), keepdims=True)
        mean[i] = m
        std[i] = np.sqrt(((lab - m) ** 2).sum(-1).mean())
        detail[i] = np.sqrt((fine ** 2).sum(-1).mean())
    return {"mean_lab": mean, "std": std, "detail": detail}


def delta_e(lab_a: np.ndarray, lab_b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference, row by row (broadcasts)."""
    return np.sqrt(((np.asarray(lab_a, np.float64) - np.asarray(lab_b, np.float64)) ** 2).sum(-1))


def judge(stats: dict, target_lab, opts: FilterOptions) -> list[str]:
    """Per tile: "" when accepted, else the reason ("flat", "chaotic" or "off-colour").
    `target_lab` is the palette colour of each tile, (n, 3) or one (3,) for all."""
    de = delta_e(stats["mean_lab"], target_lab)
    out = []
    for s, d, e in zip(stats["std"], stats["detail"], de):
        if s < opts.min_std:
            out.append("flat")
        elif s > opts.max_std or d > opts.max_detail:
            out.append("chaotic")
        elif e > opts.max_delta_e:
            out.append("off-colour")
        else:
            out.append("")
    return out


def describe(stats: dict, i: int, target_lab) -> dict:
    """JSON-able measurements of tile i (recorded in its provenance)."""
    return {"mean_lab": [round(float(v), 3) for v in stats["mean_lab"][i]],
            "std": round(float(stats["std"][i]), 3), "detail": round(float(stats["detail"][i]), 3),
            "delta_e": round(float(delta_e(stats["mean_lab"][i], target_lab)), 3)}
