"""The built-in demo: real photographs shipped inside scikit-image (no download, nothing
copied into this repository). Tiles are random square crops of eleven of them; the target is
a twelfth (the astronaut portrait), which the pool never sees."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import MissingDependency

TILE_PHOTOS = ("chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
               "stereo_motorcycle", "camera", "moon", "coins", "brick", "grass", "gravel", "clock")
TARGET_PHOTO = "astronaut"


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError:
        raise MissingDependency("the demo needs scikit-image: pip install scikit-image") from None
    a = getattr(skimage.data, name)()
    if isinstance(a, tuple):
        a = a[0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3]).astype(np.uint8)


def write_tile_sources(folder, n_tiles: int = 3000, seed: int = 0) -> list[Path]:
    """Write n_tiles random square crops (side 24-50% of the photo's short side, some mirrored)
    as PNG files; the same seed writes the same files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = {name: _photo(name) for name in TILE_PHOTOS}
    names = list(photos)
    out = []
    for i in range(n_tiles):
        name = names[i % len(names)]
        img = photos[name]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.08, 0.5))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        p = folder / f"{name}_{i:05d}.png"
        if not p.exists():
            Image.fromarray(np.ascontiguousarray(crop)).resize((64, 64), Image.LANCZOS).save(p)
        out.append(p)
    return out


def write_target(path) -> Path:
    path = Path(path)
    if not path.exists():
        Image.fromarray(_photo(TARGET_PHOTO)).save(path)
    return path
