"""`generate_cells`: a generated tile for every cell of a target, ingested into a tile database
with full provenance, and the result saved as an ordinary assignment (so `mosaic render`, `.tif`
pyramids, `mosaic print` and `mosaic serve` work on it), rendered, and scored.

Resumable: each batch is committed to the database as soon as it is made, and a rerun with the
same options skips the cells whose tiles are already there (found by the run id in their
provenance). The run record is `DB/generated/cells-<run>.json`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import assignment as asg
from ..errors import DatabaseError, UsageError
from ..render.options import RenderOptions
from .cellopts import CellOptions
from .cells import CellGenerator, CellPlan, CellTile, plan_cells
from .pipeline import PipelineOptions
from .worker import encode_png

STATE_DIR = "generated"
DEFAULT_MAX_TILE_PX = 256


@dataclass
class CellRunReport:
    """What `generate_cells` did: the run, where the tiles and outputs went, how many cells were
    generated now or found done, seconds per stage and the mosaic's metrics."""
    run: str = ""
    db: str = ""
    output: str = ""
    assignment: str = ""
    metrics_path: str = ""
    record: str = ""
    cells: int = 0
    generated: int = 0
    already_done: int = 0
    seconds: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def seconds_per_tile(self) -> float | None:
        return self.seconds.get("generate", 0.0) / self.generated if self.generated else None

    def summary(self) -> str:
        """One line for the terminal."""
        m = self.metrics
        spt = f", {self.seconds_per_tile:.2f} s/tile" if self.generated else ""
        return (f"{self.generated} tiles generated, {self.already_done} already done (run {self.run}) for "
                f"{self.cells} cells{spt}; PSNR@64 {m.get('psnr64', float('nan')):.2f} dB, "
                f"SSIM@64 {m.get('ssim64', float('nan')):.3f}; {self.seconds.get('total', 0):.1f} s")

    def to_json(self) -> dict:
        """The report as JSON-ready values."""
        return dict(asdict(self), seconds_per_tile=self.seconds_per_tile)


# ---- the database side -------------------------------------------------------------------------
def record_path(db, run: str) -> Path:
    return Path(db.path) / STATE_DIR / f"cells-{run}.json"


def read_record(db, run: str) -> dict:
    try:
        doc = json.loads(record_path(db, run).read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}   # no record, or a damaged one: the database alone says what is done


def write_record(db, run: str, **fields) -> Path:
    """Merge `fields` into the run record (written to a temporary name, then renamed)."""
    path = record_path(db, run)
    doc = read_record(db, run)
    doc.update(fields, run=run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def cells_done(db, run: str) -> dict:
    """{(row, col): tile id} of the cells this run already has in `db`: tiles whose provenance
    names the run and cell, and cells whose tile had the very bytes of a stored tile (flat
    cells can give identical tiles; the database keeps one copy), kept in the run record."""
    rows = db.con.execute(
        "SELECT id, json_extract(provenance, '$.cell[0]'), json_extract(provenance, '$.cell[1]') FROM tiles "
        "WHERE origin = 'generated' AND json_extract(provenance, '$.run') = ?", (run,))
    out = {(int(r), int(c)): int(i) for i, r, c in rows}
    for key, sha in (read_record(db, run).get("duplicates") or {}).items():
        cell = tuple(int(v) for v in key.split(","))
        if cell not in out:
            found = db.find(hashes=[sha])
            if len(found):
                out[cell] = int(found[0])
    return out


def ingest_tiles(db, tiles: list[CellTile], common: dict) -> tuple[dict, dict]:
    """Add a batch of tiles (lossless PNG, provenance = common + the tile's own). Returns
    ({(row, col): tile id}, {"row,col": sha256} of the tiles whose bytes were already stored,
    which keep the stored tile's id)."""
    pngs = [encode_png(t.rgb) for t in tiles]
    items = ((png, f"generated:cells:{common['run']}:{t.row}:{t.col}", {**common, **t.provenance})
             for t, png in zip(tiles, pngs))
    db.add_images(items, origin="generated", progress=False, update_index=False)
    ids, dups = {}, {}
    have = {(int(r), int(c)): int(i) for i, r, c in db.con.execute(
        "SELECT id, json_extract(provenance, '$.cell[0]'), json_extract(provenance, '$.cell[1]') FROM tiles "
        "WHERE origin = 'generated' AND json_extract(provenance, '$.run') = ?", (common["run"],))}
    for t, png in zip(tiles, pngs):
        tid = have.get((t.row, t.col))
        if tid is None:
            sha = hashlib.sha256(png).hexdigest()
            found = db.find(hashes=[sha])
            if not len(found):
                raise DatabaseError(f"tile for cell ({t.row}, {t.col}) was not stored in {db.path}")
            tid, dups[f"{t.row},{t.col}"] = int(found[0]), sha
        ids[(t.row, t.col)] = tid
    return ids, dups


def cell_costs(db, tile_ids: np.ndarray, cell_features: np.ndarray) -> np.ndarray:
    """RMS Lab feature distance of each cell's tile to the cell (the unit `mosaic make` saves)."""
    f = np.asarray(db.features()[tile_ids.ravel()], dtype=np.float32)
    d = ((f - cell_features) ** 2).sum(axis=1) / float(db.dim)
    return np.sqrt(d).astype(np.float32).reshape(tile_ids.shape)


def _bar(enabled: bool, total: int, desc: str = "cells"):
    from ..progress import progress_bar
    return progress_bar(enabled, total, desc, unit="tile")


def generate_into(db, plan: CellPlan, cells, *, progress: bool = False, pipe=None,
                  seconds: dict | None = None) -> tuple[dict, CellGenerator | None]:
    """Make and ingest the tiles of `cells` not yet in `db` for this run; returns
    ({(row, col): tile id} for all of `cells`, the generator if one was loaded). `pipe`: an
    already loaded pipeline of the plan's model to use."""
    seconds = seconds if seconds is not None else {}
    done = cells_done(db, plan.run)
    todo = [c for c in cells if c not in done]
    ids = {c: done[c] for c in cells if c in done}
    if not todo:
        return ids, None
    generator = CellGenerator(plan, pipe=pipe)
    seconds["build"] = generator.build_seconds
    seconds["reference"] = generator.reference_seconds
    common = generator.plan.common_provenance()
    dups = dict(read_record(db, plan.run).get("duplicates") or {})
    bar = _bar(progress, len(todo))
    try:
        for i in range(0, len(todo), plan.opts.batch):
            part = todo[i:i + plan.opts.batch]
            t0 = time.perf_counter()
            tiles = generator.batch(part)
            t1 = time.perf_counter()
            new, new_dups = ingest_tiles(db, tiles, common)
            ids.update(new)
            if new_dups:
                dups.update(new_dups)
                write_record(db, plan.run, duplicates=dups)
            seconds["generate"] = seconds.get("generate", 0.0) + t1 - t0
            seconds["ingest"] = seconds.get("ingest", 0.0) + time.perf_counter() - t1
            bar.update(len(part))
    finally:
        bar.close()
    t0 = time.perf_counter()
    db.update_index()
    seconds["index"] = time.perf_counter() - t0
    return ids, generator


# ---- the whole run -------------------------------------------------------------------------------
def generate_cells(target, popts: PipelineOptions, opts: CellOptions, out, *, db_path=None,
                   render: RenderOptions | None = None, progress: bool = False, on_note=None) -> CellRunReport:
    """Generate a tile for every cell of `target`, ingest them into `db_path` (default: OUT's
    name + `.tiles.db` beside it, created if missing), save the assignment beside `out`,
    render `out`, and write its metrics. Everything that can be checked is checked before the
    model loads."""
    from ..io import AtomicFiles
    from ..render.fidelity import metrics_for
    from ..match.grid import cell_data
    from ..render.output import check_space, output_kind, plan_output, write_output
    from ..store import TileDB
    t_start = time.perf_counter()
    out = Path(out)
    output_kind(out)
    asg.check_sidecars_free(out)
    plan = plan_cells(target, popts, opts)
    ropts = render or RenderOptions(tile_px=min(plan.geom.size, DEFAULT_MAX_TILE_PX))
    check_space(out, plan_output(out, plan.grid.cols, plan.grid.rows, ropts))
    rep = CellRunReport(run=plan.run, cells=plan.grid.cells, notes=list(plan.pipeline.notes))
    if plan.scene is not None:
        rep.notes.append(f"the target came from `generate scene` ({plan.scene.provenance}): its initial noise "
                         "is the ∫-noise field")
    for n in rep.notes:
        if on_note:
            on_note(n)
    db_path = Path(db_path) if db_path else default_db_path(out)
    if not db_path.exists():
        TileDB.create(db_path).close()
    seconds = {"plan": time.perf_counter() - t_start}
    cells = [(r, c) for r in range(plan.grid.rows) for c in range(plan.grid.cols)]
    with TileDB.open(db_path) as db:
        rep.db = str(db.path)
        done = cells_done(db, plan.run)
        rep.already_done = sum(c in done for c in cells)
        ids, gen = generate_into(db, plan, cells, progress=progress, seconds=seconds)
        rep.generated = len(cells) - rep.already_done
        plan = gen.plan if gen is not None else plan
        t0 = time.perf_counter()
        tile_ids = np.array([ids[c] for c in cells], dtype=np.int64).reshape(plan.grid.rows, plan.grid.cols)
        cd = cell_data(plan.target.image, plan.grid, db.feature_spec)
        saved = asg.SavedAssignment(assignment_meta(db, plan, out, ropts, tile_ids), tile_ids,
                                    cell_costs(db, tile_ids, cd.features), cd.mean, cd.std)
        with AtomicFiles() as group:  # the mosaic, its assignment and metrics: all or nothing
            jpath, _ = asg.write_into(group, out, saved)
            written = write_output(db, saved, out, ropts, plan.target.image, progress, group=group)
            t1 = time.perf_counter()
            metrics = metrics_for(db, saved, plan.target.image, ropts)
            t2 = time.perf_counter()
            seconds.update(render=t1 - t0, evaluate=t2 - t1, total=t2 - t_start)
            rep.seconds = {k: round(v, 3) for k, v in seconds.items()}
            metrics.update(cells=plan.grid.cells, output={k: v for k, v in written.items() if k != "levels"},
                           generated={"run": plan.run, "tiles_generated": rep.generated,
                                      "already_done": rep.already_done, "seconds": rep.seconds,
                                      "seconds_per_tile": rep.seconds_per_tile})
            rep.metrics = metrics
            rep.output, rep.assignment = str(out), str(jpath)
            mpath = asg.metrics_path(out)
            group.temp(mpath).write_text(json.dumps(metrics, indent=2))
            group.commit(order=[jpath])
        rep.metrics_path = str(mpath)
        rep.record = str(write_record(db, plan.run, options=opts.to_json(), pipeline_options=asdict(popts),
                                      provenance=plan.common_provenance(), report=rep.to_json()))
    return rep


def default_db_path(out: Path) -> Path:
    base = out.with_suffix("") if out.suffix else out
    return base.with_name(base.name + ".tiles.db")


def assignment_meta(db, plan: CellPlan, out: Path, ropts: RenderOptions, tile_ids) -> asg.AssignmentMeta:
    """The saved assignment's record: no matching (`match` None), the generation in `extra`."""
    g = plan.grid
    return asg.AssignmentMeta(
        grid=asg.GridInfo(g.cols, g.rows, tuple(g.crop), plan.opts.grid),
        db=str(Path(db.path).resolve()), db_uuid=db.uuid, db_version=db.version,
        tiles_digest=db.tiles_digest(tile_ids),
        target=asg.TargetInfo(plan.target.path, plan.target.sha256, tuple(plan.target.size)),
        match=None, render=ropts.to_json(), output=asg.output_record(out), created=time.time(),
        extra={"generated": {k: v for k, v in plan.common_provenance().items() if k != "pipeline"}})


def check_target_unchanged(prov: dict) -> Path:
    """The target a cell tile was made for, still there and unchanged (for regenerating it)."""
    t = prov.get("target") or {}
    p = Path(t.get("path", ""))
    if not p.is_file():
        raise UsageError(f"the target this tile was made for ({p}) is missing: restore it to regenerate the tile")
    if hashlib.sha256(p.read_bytes()).hexdigest() != t.get("sha256"):
        raise UsageError(f"the target this tile was made for ({p}) has changed since: the tile cannot be regenerated")
    return p


def regenerate_cell(prov: dict, *, model: str | None = None, device: str | None = None, dtype: str | None = None,
                    exact_batch: bool = True) -> np.ndarray:
    """The pixels of a generated cell tile, from its provenance: the same target (checked by
    hash), options, model and seeds, replaying its batch (`exact_batch`) or the tile alone."""
    from .cellopts import CellGeometry
    from .cellref import SceneLink, load_reference
    from .pipeline import ResolvedPipeline
    from .pipeline import override_pipeline
    path = check_target_unchanged(prov)
    rp = override_pipeline(ResolvedPipeline.from_provenance(prov["pipeline"]), model, device, dtype)
    opts = CellOptions(**prov["options"])
    target, grid = load_reference(path, opts.grid)
    scene = prov.get("scene")
    link = SceneLink(**{**scene, "crop": tuple(scene["crop"])}) if scene else None
    plan = CellPlan(opts, rp, CellGeometry(**prov["geometry"]), target, grid, prov["scheduler"], prov["prediction"],
                    prov["negative"], link, prov["run"])
    members = [tuple(m) for m in prov["batch"]["members"]] if exact_batch else [tuple(prov["cell"])]
    position = prov["batch"]["position"] if exact_batch else 0
    return CellGenerator(plan).batch(members)[position].rgb
