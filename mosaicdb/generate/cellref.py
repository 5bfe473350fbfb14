"""The reference side of a generated-cell run: the target and its grid, each cell's RGB patch
(P_k, at tile size, for guidance; at b*8 px, to encode the block B_k for AdaIN), and the link
to the `generate scene` run that made the target, whose initial noise becomes the ∫-noise field.

Patches are cut per batch of cells, so nothing the size of the output canvas is ever held.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import UsageError
from ..match.grid import Grid, Target, load_target, make_grid
from .cellopts import CellGeometry

SCENE_JSON_MAX_BYTES = 1 << 20


def load_reference(path, grid_spec: str) -> tuple[Target, Grid]:
    """The target (a missing one is a one-line UsageError) and its grid of square cells."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"target {p} does not exist")
    if p.is_dir():
        raise UsageError(f"target {p} is a folder: give one image file")
    target = load_target(p)
    return target, make_grid(*target.size, grid_spec)


def cell_box(grid: Grid, row: int, col: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a cell in target pixels (at least one pixel each way)."""
    l, t, r, b = grid.crop
    cw, ch = (r - l) / grid.cols, (b - t) / grid.rows
    x0, y0 = l + round(col * cw), t + round(row * ch)
    x1, y1 = l + round((col + 1) * cw), t + round((row + 1) * ch)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def cell_patches(image: np.ndarray, grid: Grid, cells, px: int) -> np.ndarray:
    """uint8 (len(cells), px, px, 3): each cell's region of the target resampled to px x px
    (area-averaged when shrinking, bicubic when enlarging)."""
    out = np.empty((len(cells), px, px, 3), np.uint8)
    for i, (r, c) in enumerate(cells):
        x0, y0, x1, y1 = cell_box(grid, r, c)
        region = np.ascontiguousarray(image[y0:y1, x0:x1])
        interp = cv2.INTER_AREA if px <= min(region.shape[:2]) else cv2.INTER_CUBIC
        out[i] = cv2.resize(region, (px, px), interpolation=interp)
    return out


def to_tensor(torch, patches: np.ndarray):
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0


# ---- the scene a target came from -------------------------------------------------------------
@dataclass(frozen=True)
class SceneLink:
    """A target made by `mosaic generate scene`: its initial noise, cropped to the grid and
    sum-pooled by `pool`, is the ∫-noise field."""
    provenance: str        # the scene's OUT.json
    seed: int
    latent_w: int          # the scene's latent size
    latent_h: int
    dtype: str
    crop: tuple            # (left, top, right, bottom) of the grid in scene latent px
    pool: int              # scene latent px per field px

    def to_json(self) -> dict:
        return asdict(self)


def scene_provenance(target: Target) -> dict | None:
    """The provenance `generate scene` wrote beside the target (TARGET.json), when it describes
    this very image; None otherwise."""
    p = Path(target.path + ".json")
    try:
        if not p.is_file() or p.stat().st_size > SCENE_JSON_MAX_BYTES:
            return None
        prov = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(prov, dict) or prov.get("generator") != "mosaicdb.generate" or prov.get("kind") != "scene":
        return None
    if prov.get("sha256") is not None and prov["sha256"] != target.sha256:
        return None          # the image was edited or replaced since the scene was made
    if [prov.get("width"), prov.get("height")] != list(target.size):
        return None
    prov["_path"] = str(p)
    return prov


def link_scene(prov: dict, grid: Grid, geom: CellGeometry) -> SceneLink:
    """How the scene's latent noise maps onto the grid's field (rows*b x cols*b). The grid must
    cut the scene's latent into whole blocks of b * pool latent px: otherwise a UsageError
    names the grids that fit (a grid finer than the scene's latent cannot reuse it)."""
    f = int((prov.get("pipeline") or {}).get("vae_scale", geom.factor))
    lw, lh = int(prov["width"]) // f, int(prov["height"]) // f
    l, t, r, b = grid.crop
    span_w, span_h = (r - l) / f, (b - t) / f
    cell_lat = span_w / grid.cols
    pool = cell_lat / geom.block
    ok = (l % f == 0 and t % f == 0 and span_w.is_integer() and span_h.is_integer()
          and pool >= 1 and pool.is_integer() and (span_h / grid.rows) == cell_lat)
    if not ok:
        fits = [n for n in range(1, max(lw, lh) + 1) if max(lw, lh) % (n * geom.block) == 0]
        raise UsageError(f"--grid {grid.cols}x{grid.rows} does not fit the latent of scene {prov['_path']} "
                         f"({lw}x{lh} latent px, blocks of {geom.block}): the grid would be too fine for the "
                         f"latent size or cut it unevenly; grids that fit: {', '.join(map(str, fits[:8]))}; or pass "
                         "--no-scene-noise to draw a fresh field")
    return SceneLink(provenance=prov["_path"], seed=int(prov["seed"]), latent_w=lw, latent_h=lh,
                     dtype=str((prov.get("pipeline") or {}).get("dtype", "fp32")),
                     crop=(l // f, t // f, r // f, b // f), pool=int(pool))


def noise_field(torch, grid: Grid, geom: CellGeometry, seed: int, link: SceneLink | None):
    """The global field X: (1, 4, rows*b, cols*b), the scene's own noise when linked."""
    from .noise import global_field, scene_noise, sum_pool
    if link is None:
        return global_field(torch, seed, grid.rows * geom.block, grid.cols * geom.block)
    full = scene_noise(torch, link.seed, link.latent_h, link.latent_w, link.dtype)
    l, t, r, b = link.crop
    return sum_pool(torch, full[:, :, t:b, l:r], link.pool)


def field_blocks(torch, field, geom: CellGeometry, cells):
    """X_k for each cell: (len(cells), 4, b, b)."""
    b = geom.block
    return torch.cat([field[:, :, r * b:(r + 1) * b, c * b:(c + 1) * b] for r, c in cells])
