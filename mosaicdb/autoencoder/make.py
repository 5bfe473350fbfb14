"""`mosaic make --autoencoder MODEL`: every cell gets a tile decoded from a code fitted to it.

target -> cells at the model's size (in bands of cell rows, so memory does not grow with the
grid) -> `Fitter` -> (with `hybrid`: per cell, the closer of the decoded tile and the tile the
usual matcher retrieves from the pool, both as they will be rendered) -> decoded tiles
ingested into the decoded-tile database with provenance (`aedb.py`) -> an ordinary saved
assignment on that database -> the same writers and metrics as `Maker`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from .. import assignment as asg
from ..color import transfer
from ..errors import UsageError
from ..io import AtomicFiles, refuse_inside, refuse_overwriting_input
from ..make import MakeResult
from ..match.grid import cell_data, load_target, make_grid, resample_cells
from ..match.options import DEFAULT_GRID, MatchOptions
from ..progress import progress_bar
from ..render.cells import CellRenderer
from ..render.fidelity import metrics_for
from ..render.options import RenderOptions
from ..render.output import check_space, output_kind, plan_output, write_output
from . import aedb
from .files import load_model
from .fit import SOURCES, Fitter
from .options import AutoOptions

BAND_BYTES = 64 << 20          # target cells at the model's size held at once
GENERATOR = "mosaicdb.autoencoder"


@dataclass
class _Run:
    """What one mosaic's fitting produced, cell by cell (row-major)."""
    cells: int
    decoded: np.ndarray                     # (cells,) bool: the decoded tile won the cell
    key: list                               # per cell: content hash (decoded) or pool tile id (retrieved)
    errors: dict = field(default_factory=dict)   # stage -> (cells,) float32 MSE of the decoded tile
    first_atlas: int = 0
    seconds: dict = field(default_factory=lambda: {"encode": 0.0, "atlas": 0.0, "refine": 0.0, "colour": 0.0,
                                                   "hybrid": 0.0, "png": 0.0})


def cell_bands(image: np.ndarray, grid, px: int, max_bytes: int = BAND_BYTES):
    """Yield (r0, r1, cells) with cells (n, px, px, 3) uint8, row-major, for bands of cell rows:
    the cropped target resampled to px per cell (one band: exactly `resample_cells`)."""
    l, t, r, b = grid.crop
    rows = max(1, max_bytes // (grid.cols * px * px * 3))
    step = (b - t) / grid.rows
    for r0 in range(0, grid.rows, rows):
        r1 = min(grid.rows, r0 + rows)
        if r0 == 0 and r1 == grid.rows:
            strip = resample_cells(image, grid, px)
        else:  # band edges rounded to whole target pixels
            y0, y1 = t + round(r0 * step), t + round(r1 * step)
            size = (grid.cols * px, (r1 - r0) * px)
            interp = cv2.INTER_AREA if size[0] <= r - l else cv2.INTER_CUBIC
            strip = cv2.resize(np.ascontiguousarray(image[y0:y1, l:r]), size, interpolation=interp)
        yield r0, r1, strip.reshape(r1 - r0, px, grid.cols, px, 3).swapaxes(1, 2).reshape(-1, px, px, 3)


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a.astype(np.float32) - b.astype(np.float32)
    return (d * d).mean(axis=(1, 2, 3))


class AutoMaker:
    """Like `make.Maker`, with tiles decoded per cell. The pool (`db`) is only read; it serves
    the hybrid's retrieval and the decoded-tile database's settings.

    >>> with TileDB.open("tiles.db") as db:                              # doctest: +SKIP
    ...     maker = AutoMaker(db, MatchOptions(grid="64"), RenderOptions(), AutoOptions(model="cifar-ae"))
    ...     result = maker.make("photo.jpg", "mosaic.jpg")
    """

    def __init__(self, db, match_opts: MatchOptions | None, render_opts: RenderOptions | None, auto: AutoOptions,
                 progress: bool = False):
        for what, value, cls in (("match_opts", match_opts, MatchOptions), ("render_opts", render_opts, RenderOptions),
                                 ("auto", auto, AutoOptions)):
            if value is not None and not isinstance(value, cls):
                raise UsageError(f"AutoMaker({what}=...) takes a {cls.__name__}, got {type(value).__name__}")
        self.ropts = render_opts or RenderOptions()
        mopts = match_opts or MatchOptions()
        if mopts.grid is None:
            mopts = replace(mopts, grid=self.ropts.grid_for_print() or DEFAULT_GRID)
        if mopts.orient != "none":
            raise UsageError(f"--orient {mopts.orient} turns retrieved tiles; --autoencoder decodes a tile for "
                             "each cell (its retrieved tiles are kept as stored): drop --orient")
        self.pool, self.mopts, self.auto, self.progress = db, mopts, auto, progress
        self.model = load_model(auto.model)
        self.fitter = Fitter(self.model, auto)
        self.notes = []
        if auto.hybrid:
            db.ensure_index()
        elif mopts.min_distance or mopts.max_uses or mopts.usage_penalty or mopts.unique:
            self.notes.append("--min-distance, --max-uses, --usage-penalty and --unique apply to retrieved tiles: "
                              "without --hybrid they have no effect")

    def make(self, target_path, out) -> MakeResult:
        """Fit a decoded tile to every cell of `target_path` and write the mosaic to `out`, with
        its assignment (on the decoded-tile database) and metrics, all or nothing. The decoded
        tiles themselves are kept in the decoded-tile database (content-addressed)."""
        t0 = time.perf_counter()
        if not isinstance(target_path, (str, os.PathLike)):
            raise UsageError(f"make() takes the target image's path, got {target_path!r}")
        if out is None:
            raise UsageError("an autoencoder mosaic needs an output file (out=...): its tiles go into a database "
                             "beside it")
        out = Path(out)
        output_kind(out)
        refuse_inside([out], self.pool.path)
        refuse_overwriting_input([out, *asg.sidecar_paths(out), asg.metrics_path(out)], [target_path])
        asg.check_sidecars_free(out)
        target = load_target(target_path)
        grid = make_grid(*target.size, self.mopts.grid_spec)
        ropts, warnings = self.ropts.for_grid(grid.cols, grid.rows)
        check_space(out, plan_output(out, grid.cols, grid.rows, ropts))
        warnings += self.notes
        ae_path = Path(self.auto.ae_db) if self.auto.ae_db else aedb.default_path(out, self.model.path)
        with aedb.open_or_create(ae_path, self.pool, self.model.arch.size) as ae:
            t1 = time.perf_counter()
            cells = cell_data(target.image, grid, ae.feature_spec)
            retrieved, match_meta = None, None
            if self.auto.hybrid:
                retrieved, match_meta, w = self._retrieve(target, grid, cells, ae)
                warnings += w
            t2 = time.perf_counter()
            run = _Run(grid.cells, np.ones(grid.cells, bool), [None] * grid.cells,
                       {k: np.empty(grid.cells, np.float32) for k in ("encoder", "first", "final")})
            items = self._decoded_items(target, grid, cells, retrieved, run, out, ropts)
            added = ae.add_images(items, origin=aedb.ORIGIN_DECODED, update_index=False)
            t3 = time.perf_counter()
            copy_ids = sorted({k for k, d in zip(run.key, run.decoded) if not d})
            pool_hash: dict = {}
            copied = ae.add_images(aedb.copy_items(self.pool, copy_ids, pool_hash), origin=aedb.ORIGIN_COPIED,
                                   update_index=False) if copy_ids else None
            hashes = [k if d else pool_hash[k] for k, d in zip(run.key, run.decoded)]
            tile_ids = aedb.ids_of(ae, hashes).reshape(grid.rows, grid.cols)
            feats = np.asarray(ae.features()[tile_ids.ravel()])
            cost = np.sqrt(((feats - cells.features) ** 2).sum(1) / ae.dim).reshape(grid.rows, grid.cols)
            t4 = time.perf_counter()
            summary = self._summary(run, ae, added, copied, t4 - t2)
            meta = asg.AssignmentMeta(
                grid=asg.GridInfo(grid.cols, grid.rows, grid.crop, self.mopts.grid_spec),
                db=str(Path(ae.path).resolve()), db_uuid=ae.uuid, db_version=ae.version,
                tiles_digest=ae.tiles_digest(tile_ids),
                target=asg.TargetInfo(target.path, target.sha256, target.size),
                match=match_meta, render=ropts.to_json(), output=asg.output_record(out), created=time.time(),
                extra={"autoencoder": {**self.model.describe(), "options": self.auto.to_json(),
                                       "pool": str(Path(self.pool.path).resolve()), **summary}})
            saved = asg.SavedAssignment(meta, tile_ids, cost.astype(np.float32), cells.mean, cells.std)
            with AtomicFiles() as group:
                jpath, _ = asg.write_into(group, out, saved)
                written = write_output(ae, saved, out, ropts, target.image, self.progress, group=group)
                t5 = time.perf_counter()
                metrics = metrics_for(ae, saved, target.image, ropts)
                t6 = time.perf_counter()
                seconds = {"load_target": t1 - t0, "cell_features": t2 - t1, "fit_and_ingest": t3 - t2,
                           "copy_and_costs": t4 - t3, "match_total": t4 - t1, "render": t5 - t4,
                           "evaluate": t6 - t5, "total": t6 - t0}
                metrics["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
                metrics["cells"] = grid.cells
                metrics["output"] = {k: v for k, v in written.items() if k != "levels"}
                metrics["warnings"] = list(warnings)
                metrics["autoencoder"] = summary
                mpath = asg.metrics_path(out)
                group.temp(mpath).write_text(json.dumps(metrics, indent=2))
                group.commit(order=[jpath])
        return MakeResult(str(target_path), out, jpath, mpath, metrics, warnings, metrics["seconds"], saved)

    def _retrieve(self, target, grid, cells, ae):
        """The pool's assignment for the grid (the usual matcher and repeat control)."""
        from ..match.matcher import match
        same = ae.feature_spec == self.pool.feature_spec
        pcells = cells if same else cell_data(target.image, grid, self.pool.feature_spec)
        res = match(self.pool, pcells, grid, self.mopts)
        return res.assignment.tile_ids, res.options.to_json(), res.warnings

    def _decoded_items(self, target, grid, cells, retrieved, run: _Run, out: Path, ropts: RenderOptions):
        """Fit band by band; yield (PNG, source name, provenance) of every decoded tile that
        wins its cell, for `TileDB.add_images`."""
        px = self.model.arch.size
        # tiles() only: no assignment yet, and no colour transfer (applied below to both)
        renderer = CellRenderer(self.pool, None, RenderOptions()) if retrieved is not None else None
        common = {"generator": GENERATOR, "kind": "decoded", "model": self.model.describe(),
                  "fit": {k: getattr(self.auto, k) for k in ("steps", "lr", "shortlist", "atlas_px", "color_fit")}}
        where = {"target": target.path, "target_sha256": target.sha256, "grid": f"{grid.cols}x{grid.rows}",
                 "output": asg.output_record(out)}
        bar = progress_bar(self.progress, total=grid.cells, desc="autoencoder", unit="cell")
        try:
            for r0, r1, px_cells in cell_bands(target.image, grid, px):
                fr = self.fitter.fit(px_cells)
                base = r0 * grid.cols
                sl = slice(base, base + len(px_cells))
                for k in run.errors:
                    run.errors[k][sl] = fr.errors[k]
                run.first_atlas += int((fr.first_source == SOURCES.index("atlas")).sum())
                for k, v in fr.seconds.items():
                    run.seconds[k] += v
                if retrieved is not None:
                    t = time.perf_counter()
                    ids = retrieved[r0:r1].ravel()
                    run.decoded[sl] = self._decoded_wins(ropts, fr.tiles, renderer.tiles(ids, px), px_cells,
                                                         cells.mean[r0:r1].reshape(-1, 3), cells.std[r0:r1].reshape(-1, 3))
                    for j in np.flatnonzero(~run.decoded[sl]):
                        run.key[base + j] = int(ids[j])
                    run.seconds["hybrid"] += time.perf_counter() - t
                for j in np.flatnonzero(run.decoded[sl]):
                    t = time.perf_counter()
                    data = aedb.png_bytes(fr.tiles[j])
                    h = aedb.digest(data)
                    run.seconds["png"] += time.perf_counter() - t
                    run.key[base + j] = h
                    row, col = divmod(base + int(j), grid.cols)
                    prov = dict(common, code=fr.codes[j].tolist(),
                                colour_fit={"gain": fr.gain[j].tolist(), "offset": fr.offset[j].tolist()}
                                if self.auto.color_fit else None,
                                cell={"row": row, "col": col, **where},
                                mse={k: float(fr.errors[k][j]) for k in ("encoder", "first", "final")},
                                first_guess=SOURCES[int(fr.first_source[j])])
                    yield data, f"autoencoder:{self.model.sha256[:16]}:{target.sha256[:12]}:{row},{col}", prov
                bar.update(len(px_cells))
        finally:
            bar.close()

    @staticmethod
    def _decoded_wins(ropts, decoded, retrieved, target_cells, mu, sd) -> np.ndarray:
        """Per cell: is the decoded tile at least as close to the cell as the retrieved one, both
        after the render's colour transfer?"""
        c, s = ropts.color, ropts.color_strength
        blend = target_cells if c == "blend" else None
        e_dec = _mse(transfer(decoded, mu, sd, c, s, blend), target_cells)
        e_ret = _mse(transfer(retrieved, mu, sd, c, s, blend), target_cells)
        return e_dec <= e_ret

    def _summary(self, run: _Run, ae, added, copied, seconds: float) -> dict:
        n_dec = int(run.decoded.sum())
        fit_s = sum(run.seconds[k] for k in ("encode", "atlas", "refine", "colour"))
        mean = {k: float(v.mean()) for k, v in run.errors.items()}
        return {
            "ae_db": str(Path(ae.path).resolve()), "cells": run.cells, "cells_decoded": n_dec,
            "cells_retrieved": run.cells - n_dec, "first_guess_atlas": run.first_atlas,
            "tiles_added": added.added, "tiles_shared": added.duplicates,
            "retrieved_copied": copied.added if copied else 0,
            "mse": mean, "fit_seconds": round(fit_s, 4),
            "fit_cells_per_s": round(run.cells / fit_s, 1) if fit_s > 0 else None,
            "stage_seconds": {k: round(v, 4) for k, v in run.seconds.items()},
            "seconds": round(seconds, 4),
        }
