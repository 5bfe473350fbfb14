"""The main job: targets -> cells -> matches -> rendered mosaic + assignment + metrics.

`Maker` opens the database and its index once and then makes any number of mosaics.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import assignment as asg
from .errors import UsageError
from .evaluate import evaluate
from .match.grid import cell_data, load_target, make_grid
from .match.matcher import match
from .options import MatchOptions, RenderOptions
from .render.output import check_space, output_kind, plan_output, write_output
from .render.rows import render_array

EVAL_MAX_PIXELS = 64_000_000


@dataclass
class MakeResult:
    target: str
    output: Path
    assignment: Path
    metrics_path: Path
    metrics: dict
    warnings: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def eval_px(cells: int, tile_px: int) -> int:
    """Pixels per cell for the evaluation render: <= 16 and <= 64 MP in all."""
    return int(max(1, min(16, tile_px, int((EVAL_MAX_PIXELS / max(cells, 1)) ** 0.5))))


def metrics_for(db, saved: asg.SavedAssignment, target_img: np.ndarray, render: RenderOptions) -> dict:
    """Fidelity and repeat metrics of an assignment as rendered with `render`'s colour settings."""
    px = eval_px(saved.rows * saved.cols, render.tile_px)
    mosaic = render_array(db, saved, px, render.color, render.color_strength, target_img)
    l, t, r, b = saved.meta["grid"]["crop"]
    m = evaluate(target_img[t:b, l:r], mosaic, saved.rows, saved.cols, saved.tile_ids)
    m["eval_px_per_cell"] = px
    m["mean_cell_distance"] = float(saved.cost.mean())
    return m


def expand_targets(paths) -> list[Path]:
    """Files as given; folders contribute their image files (sorted, not recursive)."""
    from .render.raster import FORMATS
    exts = set(FORMATS) | {".tif", ".tiff", ".bmp", ".gif"}
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts))
        elif p.exists():
            out.append(p)
        else:
            raise UsageError(f"target {p} does not exist")
    if not out:
        raise UsageError(f"no target images found in {', '.join(map(str, paths))}")
    return out


def output_paths(targets: list[Path], out: Path, fmt_suffix: str) -> list[Path]:
    """One target and an image path -> that path; otherwise `out` is a folder of STEM.SUFFIX."""
    if len(targets) == 1 and out.suffix:
        return [out]
    if out.suffix and not out.is_dir():
        raise UsageError(f"--out {out}: several targets need a folder for --out, not a file name")
    names, paths = set(), []
    for t in targets:
        stem, n = t.stem, 1
        while stem in names:
            n += 1
            stem = f"{t.stem}-{n}"
        names.add(stem)
        paths.append(out / f"{stem}{fmt_suffix}")
    return paths


class Maker:
    def __init__(self, db, match_opts: MatchOptions, render_opts: RenderOptions, progress: bool = False):
        match_opts.validate()
        render_opts.validate()
        self.db, self.mopts, self.ropts, self.progress = db, match_opts, render_opts, progress
        db.ensure_index()

    def make(self, target_path, out) -> MakeResult:
        t0 = time.perf_counter()
        out = Path(out)
        output_kind(out)
        target = load_target(target_path)
        grid = make_grid(*target.size, self.mopts.grid)
        check_space(out, plan_output(out, grid.cols, grid.rows, self.ropts))
        warnings = []
        if grid.cell_px < 1:
            warnings.append(f"--grid {self.mopts.grid} is finer than {Path(target_path).name} "
                            f"({target.size[0]}x{target.size[1]} px): the target is upsampled "
                            f"{1 / grid.cell_px:.2f}x; a coarser grid will read better")
        t1 = time.perf_counter()
        cells = cell_data(target.image, grid, self.db.feature_spec)
        t2 = time.perf_counter()
        res = match(self.db, cells, grid, self.mopts)
        warnings += res.warnings
        t3 = time.perf_counter()
        meta = {
            "db": str(Path(self.db.path).resolve()), "db_version": self.db.version,
            "target": {"path": target.path, "sha256": target.sha256, "size": list(target.size)},
            "grid": {"cols": grid.cols, "rows": grid.rows, "crop": list(grid.crop), "spec": self.mopts.grid},
            "match": {**self.mopts.to_json(), "resolved": {
                "min_distance": res.repeat.min_distance, "max_uses": res.repeat.max_uses,
                "usage_penalty": res.repeat.usage_penalty, "unique": res.repeat.unique, "seed": res.repeat.seed}},
            "render": self.ropts.to_json(), "output": str(out.resolve()),
            "widened_cells": res.assignment.widened_cells, "created": time.time(),
        }
        saved = asg.SavedAssignment(meta, res.assignment.tile_ids, res.assignment.cost,
                                    cells.mean, cells.std)
        jpath, _ = asg.save(out, saved)
        written = write_output(self.db, saved, out, self.ropts, target.image, self.progress)
        t4 = time.perf_counter()
        metrics = metrics_for(self.db, saved, target.image, self.ropts)
        t5 = time.perf_counter()
        seconds = {"load_target": t1 - t0, "cell_features": t2 - t1, **res.seconds, "match_total": t3 - t2,
                   "render": t4 - t3, "evaluate": t5 - t4, "total": t5 - t0}
        metrics["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
        metrics["cells"] = grid.cells
        metrics["assignment"] = res.assignment.stats  # order; refinement moves, total cost before/after
        metrics["output"] = {k: v for k, v in written.items() if k != "levels"}
        mpath = asg.metrics_path(out)
        asg.write_atomic(mpath, lambda p: Path(p).write_text(json.dumps(metrics, indent=2)))
        return MakeResult(str(target_path), out, jpath, mpath, metrics, warnings, seconds)


def render_saved(db, saved: asg.SavedAssignment, out, ropts: RenderOptions, progress: bool = False) -> dict:
    """Re-render a saved assignment (no matching) to `out`."""
    ropts.validate()
    return write_output(db, saved, Path(out), ropts, None, progress)


def load_mosaic_image(path, min_width: int = 2048) -> np.ndarray:
    """A mosaic file as RGB pixels; for a pyramidal TIFF the smallest level at least
    `min_width` wide (metrics work at 64 px or one pixel per cell), never the gigapixel level."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        try:
            with tifffile.TiffFile(p) as tf:
                levels = list(tf.series[0].levels) if tf.series else []
                pages = [lv for lv in levels] or list(tf.pages)
                pick = next((lv for lv in reversed(pages) if lv.shape[1] >= min_width), pages[0])
                a = pick.asarray()
        except (tifffile.TiffFileError, ValueError, OSError) as e:
            raise UsageError(f"cannot read mosaic {p}: {e}") from None
        return np.ascontiguousarray(a[..., :3]).astype(np.uint8)
    if p.suffix.lower() == ".dzi":
        raise UsageError(f"{p}: eval reads image files (.tif/.png/.jpg/.webp), not DeepZoom folders")
    return load_target(p).image


def evaluate_files(target_path, mosaic_path, grid: str | None = None) -> dict:
    """Metrics of a mosaic image file against its target. With the mosaic's saved assignment
    (or --grid COLSxROWS) the per-cell PSNR and repeat statistics are included."""
    from .evaluate import psnr_at, pyramid_mse, ssim_at
    from .match.grid import parse_grid
    target = load_target(target_path).image
    mosaic = load_mosaic_image(mosaic_path)
    saved = None
    try:
        saved = asg.load(mosaic_path)
    except UsageError:
        pass
    if saved is not None and grid is None:
        l, t, r, b = saved.meta["grid"]["crop"]
        if tuple(saved.meta["target"]["size"]) == (target.shape[1], target.shape[0]):
            target = target[t:b, l:r]
        return evaluate(target, mosaic, saved.rows, saved.cols, saved.tile_ids)
    if grid is not None:
        cols, rows = parse_grid(grid)
        if rows is None:
            raise UsageError("--grid for eval takes COLSxROWS, e.g. 128x85")
        return evaluate(target, mosaic, rows, cols)
    return {"psnr64": psnr_at(target, mosaic), "ssim64": ssim_at(target, mosaic), "psnr_cell": None,
            "pyramid_mse": {str(k): v for k, v in pyramid_mse(target, mosaic).items()}, "repeats": None}
