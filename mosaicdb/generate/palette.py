"""The palette a tile pool should cover: k-means in CIE Lab on downsampled targets, or colours
spread evenly over the sRGB gamut. Each palette colour is exact uint8 sRGB (its Lab follows
from it), so a colour has one identity (`hex`) across runs, resumes and machines."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..features import lab_to_rgb, rgb_to_lab
from .colours import nearest_names

ANALYSIS_SIDE = 128   # targets are box-downsampled so their long side is at most this before k-means
MAX_PALETTE = 4096


@dataclass(frozen=True)
class Palette:
    """The colours a generated pool should cover: (n, 3) uint8 sRGB, each colour's share of the
    targets' pixels, and where they came from."""
    rgb: np.ndarray       # (n, 3) uint8
    weights: np.ndarray   # (n,) share of target pixels (uniform for a spread palette)
    source: str           # "kmeans:<files>" or "spread"

    def __len__(self) -> int:
        return len(self.rgb)

    @property
    def lab(self) -> np.ndarray:
        return rgb_to_lab(self.rgb)

    @property
    def hex(self) -> list[str]:
        return ["#%02x%02x%02x" % tuple(int(v) for v in c) for c in self.rgb]

    @property
    def names(self) -> list[str]:
        return nearest_names(self.rgb)

    def colour(self, i: int) -> dict:
        """JSON-able description of colour i (what provenance records)."""
        return {"index": int(i), "hex": self.hex[i], "rgb": [int(v) for v in self.rgb[i]],
                "lab": [round(float(v), 3) for v in self.lab[i]], "name": self.names[i]}

    def to_json(self) -> dict:
        """The palette as JSON: source and, per colour, hex, RGB, Lab, name and weight."""
        return {"source": self.source, "colours": [dict(self.colour(i), weight=round(float(w), 5))
                                                   for i, w in enumerate(self.weights)]}


def _check_size(k: int) -> None:
    if not 1 <= k <= MAX_PALETTE:
        raise UsageError(f"--palette-size must be between 1 and {MAX_PALETTE}, got {k}")


def kmeans_lab(lab: np.ndarray, k: int, *, seed: int = 0, iters: int = 50, tol: float = 1e-3):
    """Lloyd's k-means with k-means++ seeding on (n, 3) Lab points.

    Returns (centres (k', 3) float64, counts (k',)), k' = min(k, distinct points), sorted by
    count (largest cluster first), so equal inputs and seed give equal output."""
    x = np.asarray(lab, dtype=np.float64).reshape(-1, 3)
    distinct = np.unique(np.round(x, 4), axis=0)
    k = min(int(k), len(distinct))
    if k < 1:
        raise UsageError("k-means needs at least one colour")
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp(x, k, rng)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        d = _sq_dist(x, centres)
        labels = d.argmin(axis=1)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros((k, 3))
        np.add.at(sums, labels, x)
        new = centres.copy()
        nz = counts > 0
        new[nz] = sums[nz] / counts[nz, None]
        if not nz.all():
            # an empty cluster restarts at the point worst served by the others
            far = np.argsort(d[np.arange(len(x)), labels])[::-1]
            new[~nz] = x[far[: int((~nz).sum())]]
        shift = np.sqrt(((new - centres) ** 2).sum(axis=1)).max()
        centres = new
        if shift < tol:
            break
    labels = _sq_dist(x, centres).argmin(axis=1)
    counts = np.bincount(labels, minlength=k)
    order = np.lexsort((centres[:, 2], centres[:, 1], centres[:, 0], -counts))
    return centres[order], counts[order]


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]


def _kmeans_pp(x: np.ndarray, k: int, rng) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    d = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d.sum()
        i = rng.choice(len(x), p=d / total) if total > 0 else rng.integers(len(x))
        centres.append(x[i])
        d = np.minimum(d, ((x - x[i]) ** 2).sum(axis=1))
    return np.array(centres)


def downsample(rgb: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """Box-downsample (h, w, 3) uint8 so the long side is at most `side` (never upsampled)."""
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img.thumbnail((side, side), Image.Resampling.BOX)
    return np.asarray(img)


def palette_from_images(images, k: int = 64, *, seed: int = 0, source: str = "kmeans") -> Palette:
    """k-means palette of the pixels of uint8 RGB images (each downsampled first)."""
    _check_size(k)
    labs = [rgb_to_lab(downsample(np.asarray(im, dtype=np.uint8))).reshape(-1, 3) for im in images]
    if not labs:
        raise UsageError("--palette-from needs at least one target image")
    centres, counts = kmeans_lab(np.concatenate(labs), k, seed=seed)
    return _dedupe(lab_to_rgb(centres), counts / counts.sum(), source)


def palette_from_targets(paths, k: int = 64, *, seed: int = 0) -> Palette:
    """k-means palette of target image files (decoded like tiles: EXIF, ICC, alpha)."""
    from ..store.decode import open_image
    images = []
    for p in paths:
        from ..io import read_input
        data = read_input(p, 2 << 30, f"--palette-from {p}")
        images.append(np.asarray(open_image(data)[0]))
    return palette_from_images(images, k, seed=seed, source="kmeans:" + ",".join(Path(p).name for p in paths))


def spread_palette(n: int = 64) -> Palette:
    """n colours spread over the sRGB gamut: greedy farthest-point sampling in Lab over a
    17^3 grid of sRGB colours, starting from mid grey. Deterministic; a prefix of the n+1 list."""
    _check_size(n)
    g = np.linspace(0, 255, 17).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = rgb_to_lab(grid).astype(np.float64)
    first = int(((grid.astype(int) - 128) ** 2).sum(axis=1).argmin())
    chosen = [first]
    d = ((lab - lab[first]) ** 2).sum(axis=1)
    for _ in range(1, min(n, len(grid))):
        i = int(d.argmax())
        chosen.append(i)
        d = np.minimum(d, ((lab - lab[i]) ** 2).sum(axis=1))
    return Palette(grid[chosen], np.full(len(chosen), 1.0 / len(chosen)), "spread")


def _dedupe(rgb: np.ndarray, weights: np.ndarray, source: str) -> Palette:
    """Centres that quantise to the same sRGB colour become one (their weights add up)."""
    keys, first, inverse = np.unique(rgb, axis=0, return_index=True, return_inverse=True)
    w = np.bincount(inverse.ravel(), weights=weights)
    order = np.argsort(first)  # keep the original (largest-first) order
    return Palette(rgb[first[order]], w[order], source)


def from_json(doc: dict) -> Palette:
    cols = doc["colours"]
    return Palette(np.array([c["rgb"] for c in cols], dtype=np.uint8),
                   np.array([c.get("weight", 1.0 / len(cols)) for c in cols]), doc.get("source", "json"))
