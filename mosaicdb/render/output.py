"""Output dispatch: the file suffix picks the writer; sizes, disk space and limits are checked
before any work; everything is written under a temporary name and renamed at the end."""
from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import AtomicFiles, check_free_space, free_bytes
from ..errors import RenderError, UsageError
from ..progress import progress_bar
from .codecs import get_codec
from .layout import TILE, dzi_files_dir
from .options import RenderOptions
from .pyramid import PyramidRenderer, plan_levels
from .raster import FORMATS as RASTER, check_raster, suffix_choice, write_raster

KINDS = {**{s: "raster" for s in RASTER}, ".tif": "tiff", ".tiff": "tiff", ".dzi": "dzi"}
TIFF_MAX_SIDE = 2 ** 32 - 1
PNG_BYTES_PER_PX = 1.5


def output_kind(path) -> str:
    return suffix_choice(path, KINDS, "output type")


@dataclass
class Plan:
    kind: str
    width: int
    height: int
    cols: int
    rows: int
    tile_px: int
    levels: list = field(default_factory=list)   # [(width, height, cell_px or None)]
    tiles: int = 0
    pixels: int = 0
    est_bytes: int = 0
    est_seconds: float = 0.0
    free_bytes: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _encode_rate(codec, workers: int) -> float:
    """Pixels per second this machine encodes with `codec` (a quick measurement on mosaic-like
    tiles), times the worker count."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    tile = np.kron(base, np.ones((16, 16, 1), np.uint8))  # blocky, like a mosaic
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.1:
        codec.encode(tile)
        n += 1
    return n * TILE * TILE / (time.perf_counter() - t0) * max(1, workers)


def plan_output(path, cols: int, rows: int, ropts: RenderOptions) -> Plan:
    """What writing `path` at ropts.px per cell would produce; raises before any work if impossible."""
    path = Path(path)
    kind = output_kind(path)
    T = ropts.px
    W, H = cols * T, rows * T
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--out {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {path}: folder {parent} is not writable")
    check_replaceable(path)
    if kind == "dzi":
        check_replaceable_dzi_folder(path)
    plan = Plan(kind, W, H, cols, rows, T, free_bytes=free_bytes(parent))
    workers = ropts.resolved_workers()
    if kind == "raster":
        check_raster(path, W, H)
        plan.pixels = W * H
        plan.levels = [(W, H, T)]
        fmt = RASTER[path.suffix.lower()]
        plan.est_bytes = int(plan.pixels * (PNG_BYTES_PER_PX if fmt == "PNG" else 0.35))
        plan.est_seconds = plan.pixels / (40e6 if fmt == "PNG" else 120e6)
        return plan
    if max(W, H) > TIFF_MAX_SIDE:
        raise RenderError(f"--out {path}: {W}x{H} px is beyond the TIFF limit of {TIFF_MAX_SIDE} px a side")
    levels, _ = plan_levels(cols, rows, T, stop=TILE if kind == "tiff" else 1)
    codec = get_codec(ropts.codec, ropts.quality)
    plan.levels = [(lv.width, lv.height, lv.cell_px) for lv in levels]
    plan.tiles = sum(lv.n_tiles for lv in levels)
    plan.pixels = sum(lv.width * lv.height for lv in levels)
    plan.est_bytes = int(plan.pixels * codec.bytes_per_px) + 64 * plan.tiles
    plan.est_seconds = plan.pixels / _encode_rate(codec, workers) * 3.0
    return plan


def check_replaceable(path: Path) -> None:
    """An output may replace a regular file (or a symlink, which is replaced, not followed),
    never a folder, device or pipe."""
    if path.is_symlink() or not path.exists():
        return
    if not path.is_file():
        raise UsageError(f"--out {path} exists and is not a regular file: choose another name")


def check_replaceable_dzi_folder(dzi_path: Path) -> None:
    """NAME_files/ is replaced whole: only when it is a DeepZoom folder written before (NAME.dzi
    beside it, nothing in it but numbered level folders), never someone's own folder."""
    files = dzi_files_dir(dzi_path)
    if not (files.exists() or files.is_symlink()):
        return
    ours = (files.is_dir() and not files.is_symlink() and dzi_path.is_file()
            and all(p.is_dir() and not p.is_symlink() and p.name.isdigit() for p in files.iterdir()))
    if not ours:
        raise UsageError(f"--out {dzi_path} would replace {files}, which is not a DeepZoom folder written by "
                         "mosaic: move it or choose another name")


def check_space(path, plan: Plan) -> None:
    check_free_space(path, plan.est_bytes, f"--out {path}", free=plan.free_bytes)


def write_output(db, saved, path, ropts: RenderOptions, target=None, progress: bool = False,
                 group: AtomicFiles | None = None) -> dict:
    """Render `saved` to `path` (type from the suffix) at `ropts.px` per cell. Returns what was
    written. Everything goes under temporary names: renamed into place here, or, with `group`,
    when the caller commits the group (so an output and its sidecar files appear together)."""
    if group is None:
        with AtomicFiles() as own:
            written = write_output(db, saved, path, ropts, target, progress, own)
            own.commit(order=[Path(path)])
        return written
    from .cells import check_tiles_present
    path = Path(path)
    plan = plan_output(path, saved.cols, saved.rows, ropts)
    check_space(path, plan)
    check_tiles_present(db, saved.tile_ids)
    t0 = time.perf_counter()
    if plan.kind == "raster":
        from .rows import iter_rows
        bar = progress_bar(progress, plan.height, f"render {path.name}", unit="px rows", leave=False)
        with bar:
            write_raster(group.temp(path), iter_rows(db, saved, ropts, target), plan.width, plan.height,
                         ropts.quality, on_band=bar.update)
        return {"kind": "raster", "path": str(path), "bytes": group.temp(path).stat().st_size,
                "seconds": time.perf_counter() - t0}
    codec = get_codec(ropts.codec, ropts.quality)
    pyr = PyramidRenderer(db, saved, ropts, stop=TILE if plan.kind == "tiff" else 1, target=target)
    bar = progress_bar(progress, pyr.total_tiles, f"render {path.name}", unit="tile", smoothing=0.05)
    with bar, closing(pyr.cells.cache):
        if plan.kind == "tiff":
            from .tiff import write_pyramid_tiff
            write_pyramid_tiff(pyr, group.temp(path), codec, ome=ropts.ome, dpi=ropts.dpi, on_tile=bar.update)
            size = group.temp(path).stat().st_size
        else:
            from .dzi import write_dzi
            write_dzi(pyr, path, codec, group, on_tile=bar.update)
            files = group.temp(dzi_files_dir(path))
            size = group.temp(path).stat().st_size + sum(f.stat().st_size for f in files.rglob("*") if f.is_file())
    return {"kind": plan.kind, "path": str(path), "bytes": size, "seconds": time.perf_counter() - t0,
            "levels": plan.levels, "tiles": plan.tiles, "original_decodes": pyr.cells.cache.decodes,
            "original_cache_bytes": pyr.cells.cache.nbytes, "spill_bytes": pyr.cells.cache.spill.nbytes,
            "reused_tile_bytes": pyr.bytes_cache.hits}


def render_saved(db, saved, out, ropts: RenderOptions, progress: bool = False) -> dict:
    """Re-render a saved assignment (no matching) to `out`; returns what was written. A print
    size in `ropts` is fitted to the assignment's grid. Lives here, not in `make`, so re-rendering
    never loads the matching stack (numba, scipy: ~150 MB of a render's peak memory)."""
    ropts, warnings = ropts.for_grid(saved.cols, saved.rows)
    written = write_output(db, saved, Path(out), ropts, None, progress)
    written["warnings"] = warnings
    return written
