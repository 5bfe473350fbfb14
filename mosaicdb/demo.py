"""The built-in demo: real photographs shipped inside scikit-image (no download, nothing
copied into this repository). Tiles are random square crops of eleven of them; the target is
a twelfth (the astronaut portrait), which the pool never sees."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import MissingDependency, UsageError, check_int

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


@dataclass
class DemoResult:
    """What `run_demo` made: the database, the ingest summary and the mosaic."""
    db_path: Path
    ingest_summary: str
    result: object   # make.MakeResult


def run_demo(out_dir, n_tiles: int = 3000, grid: str = "96", tile_px: int = 32,
             progress: bool = False) -> DemoResult:
    """The whole pipeline offline: cut `n_tiles` tiles from scikit-image's photographs into a
    tile database under `out_dir` (reused when it exists), then make a mosaic of the astronaut."""
    from .make import Maker
    from .match.options import MatchOptions
    from .render.options import RenderOptions
    from .store import TileDB
    mopts = MatchOptions(grid=grid, min_distance=3, usage_penalty=0.5)
    ropts = RenderOptions(tile_px=tile_px, color="mean", color_strength=0.4)
    check_int("--tiles", n_tiles, 1, 1_000_000)
    out = Path(out_dir)
    here = out.resolve()
    for up in (here, *here.parents):  # the demo writes its files (and its own tiles.db) into --out
        if TileDB.exists(up):
            where = "is a tile database" if up == here else f"is inside the tile database {up}"
            raise UsageError(f"--out {out} {where}: give a new folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    src = out / "tile-sources"
    write_tile_sources(src, n_tiles)
    target = write_target(out / "target-astronaut.png")
    dbp = out / "tiles.db"
    with TileDB.open_or_create(dbp) as db:
        report = db.ingest([src], progress=progress)
        result = Maker(db, mopts, ropts, progress=progress).make(target, out / "mosaic.jpg")
    return DemoResult(dbp, report.summary(), result)
