"""The main job: targets -> cells -> matches -> rendered mosaic + assignment + metrics.

`Maker` opens the database's index once and then makes any number of mosaics; `render_saved`
redraws a saved assignment; `evaluate_files` scores an image file against its target.
"""
from __future__ import annotations

import json
import os
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import assignment as asg
from .errors import ImageError, MatchError, MosaicError, UsageError
from .evaluate import evaluate
from .io import AtomicFiles, check_regular_file, read_regular_file, refuse_inside, refuse_overwriting_input
from .match.grid import Grid, cell_data, load_target, make_grid
from .match.matcher import check_dither, match
from .match.options import DEFAULT_GRID, MatchOptions
from .render.fidelity import eval_px, metrics_for  # noqa: F401 (re-exported)
from .render.options import RenderOptions
from .render.output import check_space, output_kind, plan_output, render_saved, write_output  # noqa: F401 (render_saved: API)
from .render.raster import IN_MEMORY_MAX_PIXELS
from .render.rows import render_array
from .store.db import TileDB

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")


@dataclass
class MakeResult:
    """What one `Maker.make` wrote, with its metrics, warnings and per-stage seconds.
    `image` holds the mosaic's pixels when `make` was asked for no output file."""
    target: str
    output: Path | None
    assignment: Path | None
    metrics_path: Path | None
    metrics: dict
    warnings: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    saved: asg.SavedAssignment | None = None
    image: np.ndarray | None = None


def check_batch(targets: list[Path], outs: list[Path]) -> None:
    """No output of a batch (nor its assignment or metrics) may replace any target of it, and
    every one must be free to write (not a folder, not another output's sidecar): checked for all
    before the first runs, so that one target's blocked name does not stop a batch midway."""
    from .render.output import check_replaceable_dzi_folder, output_kind
    for o in outs:
        refuse_overwriting_input([o, *asg.sidecar_paths(o), asg.metrics_path(o)], targets)
        asg.check_sidecars_free(o)
        if output_kind(o) == "dzi":
            check_replaceable_dzi_folder(o)


def make_batch(maker: "Maker", targets: list[Path], outs: list[Path]):
    """Yield (target, MakeResult or the MosaicError it failed with) for each target: a target
    that cannot be read or matched does not stop the others (a damaged database does)."""
    check_batch(targets, outs)
    for t, o in zip(targets, outs):
        try:
            yield t, maker.make(t, o)
        except (ImageError, MatchError) as e:
            if len(targets) == 1:
                raise
            yield t, e


def expand_targets(paths) -> list[Path]:
    """Files as given; folders contribute their image files (sorted, not recursive), except the
    mosaics made there before (an earlier run with --out in that folder), which a folder would
    otherwise turn into targets. A file reached twice is made once."""
    out, seen = [], set()

    def add(f: Path) -> None:
        key = f.resolve()
        if key in seen:
            log.warning("%s is given more than once: it is made once", f)
            return
        seen.add(key)
        out.append(f)

    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for f in images:
                if not f.is_file():
                    if not f.is_dir():  # a FIFO, a device, a dangling link: named, not read
                        log.warning("skipped %s: not a regular file", f)
                elif _made_by_us(f):
                    log.warning("skipped %s: a mosaic made earlier (give it by name to use it as a target)", f)
                else:
                    add(f)
        elif p.exists():
            add(p)
        else:
            raise UsageError(f"target {p} does not exist")
    if not out:
        raise UsageError(f"no target images found in {', '.join(map(str, paths))}")
    return out


def _made_by_us(image: Path) -> bool:
    """Whether `image` is a mosaic whose assignment (OUT.mosaic.json beside it) names it as its
    output. Read as untrusted: a small regular file, anything odd means no."""
    try:
        saved = json.loads(read_regular_file(asg.sidecar_paths(image)[0], 1 << 20))
        recorded = saved.get("output") if isinstance(saved, dict) else None
        return isinstance(recorded, str) and "\0" not in recorded and asg.same_output(recorded, image)
    except (OSError, ValueError, RecursionError, MosaicError):
        return False


def output_paths(targets: list[Path], out: Path, fmt_suffix: str) -> list[Path]:
    """One target and an image path -> that path; otherwise `out` is a folder of STEM.SUFFIX."""
    if len(targets) == 1 and out.suffix:
        return [out]
    if out.suffix and not out.is_dir():
        raise UsageError(f"--out {out}: several targets need a folder for --out, not a file name")
    if not out.is_dir() and (out.exists() or out.is_symlink()):  # a file, /dev/null, a dangling link
        raise UsageError(f"--out {out} exists and is not a folder: give a folder for the outputs"
                         + ("" if len(targets) > 1 else ", or a file name with an image suffix (e.g. .jpg)"))
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
    """Makes mosaics from one tile database: the index is loaded once for every target.

    >>> from mosaicdb import TileDB                                      # doctest: +SKIP
    >>> with TileDB.open("tiles.db") as db:                              # doctest: +SKIP
    ...     maker = Maker(db, MatchOptions(grid="128", min_distance=3), RenderOptions(color="mean"))
    ...     result = maker.make("photo.jpg", "mosaic.jpg")
    ...     pixels = maker.make("photo.jpg").image                       # no file: the pixels

    Options are validated when they are made (before any target is decoded); with a print size
    in `render` and no grid in `match`, the grid follows from the size. `hybrid`
    (`generate.hybrid.Hybrid`) swaps generated tiles into the cells the pool serves worst.
    `recursive` (`recursive.RecursiveOptions`): every cell becomes its tile's sub-mosaic, that
    many times over, in one output whose cells are `tile_px` wide (refused beyond 65536 px).
    """

    def __init__(self, db, match_opts: MatchOptions | None = None, render_opts: RenderOptions | None = None,
                 progress: bool = False, hybrid=None, recursive=None):
        if not isinstance(db, TileDB):
            raise UsageError(f"Maker needs an open TileDB (TileDB.open(path)), got {type(db).__name__}")
        for what, value, cls in (("match_opts", match_opts, MatchOptions), ("render_opts", render_opts, RenderOptions)):
            if value is not None and not isinstance(value, cls):
                raise UsageError(f"Maker({what}=...) takes a {cls.__name__}, got {type(value).__name__}")
        self.db = db
        self.ropts = render_opts or RenderOptions()
        mopts = match_opts or MatchOptions()
        if mopts.grid is None:
            mopts = replace(mopts, grid=self.ropts.grid_for_print() or DEFAULT_GRID)
        self.mopts = mopts
        self.progress = progress
        self.hybrid = hybrid
        self.recursive = recursive if recursive is not None and recursive.depth else None
        check_dither(mopts, db.feature_spec)  # before any target: a failed batch leaves no empty folder
        if self.recursive and mopts.orient != "none":
            raise UsageError(f"--recursive with --orient {mopts.orient}: the sub-mosaics would have to be turned "
                             "with their tiles, which is not supported; drop one of them")
        db.ensure_index()

    def make(self, target_path, out=None) -> MakeResult:
        """Match `target_path` and write the mosaic to `out` (its suffix picks the format), with
        its assignment (OUT.mosaic.json/.npz) and metrics (OUT.metrics.json), all or nothing.
        Without `out`, nothing is written and the result holds the image (small mosaics only)."""
        t0 = time.perf_counter()
        if not isinstance(target_path, (str, os.PathLike)):
            raise UsageError(f"make() takes the target image's path, got {target_path!r}")
        if out is not None and not isinstance(out, (str, os.PathLike)):
            raise UsageError(f"make() takes the output's path as a str or Path, got {out!r}")
        out = Path(out) if out is not None else None
        if out is not None:
            output_kind(out)
            refuse_inside([out], self.db.path)
            refuse_overwriting_input([out, *asg.sidecar_paths(out), asg.metrics_path(out)], [target_path])
            asg.check_sidecars_free(out)
        target = load_target(target_path)
        grid = make_grid(*target.size, self.mopts.grid_spec)
        zoom = self.recursive.zoom if self.recursive else 1   # the output's cells are the leaves
        ropts, warnings = self.ropts.for_grid(grid.cols * zoom, grid.rows * zoom)
        if self.recursive:
            from .recursive.flatten import check_static_size
            check_static_size(grid.cols, grid.rows, ropts.px, self.recursive)
        if out is not None:
            check_space(out, plan_output(out, grid.cols * zoom, grid.rows * zoom, ropts))
        elif grid.cells * zoom ** 2 * ropts.px ** 2 > IN_MEMORY_MAX_PIXELS:
            raise UsageError(f"a {grid.cols}x{grid.rows} mosaic at {ropts.px} px per cell is too large to return "
                             "in memory: give an output file (out=...) or a smaller tile_px")
        if grid.cell_px < 1:
            warnings.append(f"--grid {self.mopts.grid} is finer than {Path(target_path).name} "
                            f"({target.size[0]}x{target.size[1]} px): the target is upsampled "
                            f"{1 / grid.cell_px:.2f}x; a coarser grid will read better")
        t1 = time.perf_counter()
        cells = cell_data(target.image, grid, self.db.feature_spec)
        t2 = time.perf_counter()
        res = match(self.db, cells, grid, self.mopts, progress=self.progress)
        warnings += res.warnings
        t3 = time.perf_counter()
        meta = asg.AssignmentMeta(
            grid=asg.GridInfo(grid.cols, grid.rows, grid.crop, self.mopts.grid_spec),
            db=str(Path(self.db.path).resolve()), db_uuid=self.db.uuid, db_version=self.db.version,
            target=asg.TargetInfo(target.path, target.sha256, target.size),
            match=res.options.to_json(), render=ropts.to_json(),
            output=asg.output_record(out) if out is not None else "",
            widened_cells=res.assignment.widened_cells, created=asg.created_time())
        saved = asg.SavedAssignment(meta, res.assignment.tile_ids, res.assignment.cost, cells.mean, cells.std,
                                    res.assignment.orient)
        generated = None
        if self.hybrid is not None:
            saved, generated = self.hybrid.apply(self.db, saved, target, grid, cells.features, ropts,
                                                 self.progress)
        if self.recursive:
            saved = self._flatten(saved, ropts)
        saved.meta = replace(saved.meta, tiles_digest=self.db.tiles_digest(saved.tile_ids))
        if out is None:
            image = render_array(self.db, saved, ropts, target.image)
            metrics = self._metrics(saved, target.image, ropts, warnings, generated)
            if res.assignment.stats:  # greedy: order, refinement (total cost before/after), dithering
                metrics["assignment"] = res.assignment.stats
            return MakeResult(str(target_path), None, None, None, metrics, warnings,
                              self._seconds(metrics, grid, res, t0, t1, t2, t3), saved, image)
        with AtomicFiles() as group:
            jpath, _ = asg.write_into(group, out, saved)
            written = write_output(self.db, saved, out, ropts, target.image, self.progress, group=group)
            t4 = time.perf_counter()
            metrics = self._metrics(saved, target.image, ropts, warnings, generated)
            if res.assignment.stats:  # greedy: order, refinement (total cost before/after), dithering
                metrics["assignment"] = res.assignment.stats
            metrics["output"] = {k: v for k, v in written.items() if k != "levels"}
            metrics["warnings"] = list(warnings)
            self._seconds(metrics, grid, res, t0, t1, t2, t3, t4)
            mpath = asg.metrics_path(out)
            group.temp(mpath).write_text(json.dumps(metrics, indent=2))
            group.commit(order=[jpath])
        return MakeResult(str(target_path), out, jpath, mpath, metrics, warnings, metrics["seconds"], saved)

    def _flatten(self, saved, ropts):
        from .recursive.flatten import flatten
        from .recursive.submosaic import SubMosaics
        subs = SubMosaics(self.db, saved, ropts, self.recursive)
        try:
            return flatten(subs, saved, self.progress)
        finally:
            subs.close()

    def _metrics(self, saved, image, ropts, warnings, generated=None) -> dict:
        """Metrics, or a record of why they could not be computed: the mosaic itself is fine."""
        try:
            m = metrics_for(self.db, saved, image, ropts)
        except MosaicError as e:
            warnings.append(f"evaluation skipped: {e}")
            m = {"psnr64": None, "ssim64": None, "repeats": None, "evaluation_error": str(e)}
        if generated is not None:  # --generate-worst: which cells, fidelity before/after
            m["generated"] = generated
        if saved.orient is not None:  # --orient: cells per orientation code 0-7
            m["orientations"] = np.bincount(saved.orient.ravel(), minlength=8).tolist()
        return m

    @staticmethod
    def _seconds(metrics, grid: Grid, res, t0, t1, t2, t3, t4=None) -> dict:
        now = time.perf_counter()
        seconds = {"load_target": t1 - t0, "cell_features": t2 - t1, **res.seconds, "match_total": t3 - t2}
        if t4 is not None:
            seconds.update(render=t4 - t3, evaluate=now - t4)
        else:
            seconds["render_and_evaluate"] = now - t3
        seconds["total"] = now - t0
        metrics["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
        metrics["cells"] = grid.cells
        if res.assignment.report:  # --unique: total cost, lower bound, cells beyond their candidates
            metrics["unique"] = res.assignment.report
        return metrics["seconds"]


def load_mosaic_image(path, min_width: int = 2048) -> np.ndarray:
    """A mosaic file as RGB pixels; for a pyramidal TIFF the smallest level at least
    `min_width` wide (metrics work at 64 px or one pixel per cell), never the gigapixel level."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        check_regular_file(p, f"mosaic {p}")
        try:
            with tifffile.TiffFile(p) as tf:
                levels = list(tf.series[0].levels) if tf.series else []
                pages = [lv for lv in levels] or list(tf.pages)
                pick = next((lv for lv in reversed(pages) if lv.shape[1] >= min_width), pages[0])
                a = pick.asarray()
        except PermissionError as e:
            raise UsageError(f"cannot read mosaic {p}: {e.strerror}") from None
        except (tifffile.TiffFileError, ValueError, OSError) as e:  # damaged, like any undecodable image
            raise ImageError(f"mosaic {p}: cannot decode ({e})") from None
        return np.ascontiguousarray(a[..., :3]).astype(np.uint8)
    if p.suffix.lower() == ".dzi":
        raise UsageError(f"{p}: eval reads image files (.tif/.png/.jpg/.webp), not DeepZoom folders")
    return load_target(p, "mosaic").image


def evaluate_files(target_path, mosaic_path, grid: str | None = None) -> dict:
    """Metrics of a mosaic image file against its target. With the mosaic's saved assignment
    (or --grid COLSxROWS) the per-cell PSNR and repeat statistics are included."""
    from .evaluate import psnr_at, pyramid_mse, ssim_at
    from .match.grid import parse_grid
    loaded = load_target(target_path)
    target = loaded.image
    mosaic = load_mosaic_image(mosaic_path)
    saved = None
    try:
        saved = asg.load(mosaic_path)
    except UsageError:
        pass
    if saved is not None and grid is None:
        l, t, r, b = saved.meta.grid.crop
        if saved.meta.target is not None and tuple(saved.meta.target.size) == (target.shape[1], target.shape[0]):
            target = target[t:b, l:r]
        m = evaluate(target, mosaic, saved.rows, saved.cols, saved.tile_ids)
        if saved.meta.target is not None and saved.meta.target.sha256 != loaded.sha256:
            m["warnings"] = [f"{target_path} is not the file this mosaic was made from ({saved.meta.target.path}, "
                             "by its saved assignment; its bytes differ, perhaps only its encoding): scored anyway"]
        return m
    if grid is not None:
        cols, rows = parse_grid(grid)
        if rows is None:
            raise UsageError("--grid for eval takes COLSxROWS, e.g. 128x85")
        mh, mw = mosaic.shape[:2]
        if mw % cols or mh % rows or mw // cols != mh // rows:
            # a mosaic is rows x cols square tiles of whole pixels: any other grid misreads it
            raise UsageError(f"--grid {cols}x{rows} does not fit {mosaic_path} ({mw}x{mh} px): a mosaic's grid "
                             "divides it into square cells of whole pixels (see its saved assignment)")
        return evaluate(target, mosaic, rows, cols)
    return {"psnr64": psnr_at(target, mosaic), "ssim64": ssim_at(target, mosaic), "psnr_cell": None,
            "pyramid_mse": {str(k): v for k, v in pyramid_mse(target, mosaic).items()}, "repeats": None}
