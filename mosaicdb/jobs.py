"""Whole requests on a saved assignment, one function each, as the CLI asks for them: render it
again, plan an output, print it. Each merges the options given with the ones saved (`None`
means "as saved"), opens the tile database the assignment names (read-only) and does the work.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from . import assignment as asg
from .errors import UsageError
from .io import refuse_inside, refuse_non_files, refuse_overwriting_input
from .match.grid import make_grid, parse_grid
from .match.options import DEFAULT_GRID
from .render.options import RenderOptions
from .render.output import plan_output, render_saved
from .store import TileDB
from .store.db import open_for_assignment
from .store.decode import image_size

ASSIGNMENT_SUFFIXES = asg.ASSIGNMENT_SUFFIXES
is_assignment = asg.is_assignment


def open_db(saved: asg.SavedAssignment, db=None, fallback=None) -> TileDB:
    """The tile database of an assignment (read-only): `db` if given, else the one it names, else
    `fallback` if that one is gone; a different database than the one it was made from is
    refused (see open_for_assignment)."""
    return open_for_assignment(saved.meta.db, saved.meta.db_uuid, saved.tile_ids, db, fallback,
                               digest=saved.meta.tiles_digest)


def render_file(assignment, out, *, db=None, db_fallback=None, progress: bool = False, **render) -> dict:
    """Render a saved ASSIGNMENT to `out`; `render` holds RenderOptions fields (None: as saved).
    Returns what was written, with the warnings."""
    saved = asg.load(assignment)
    ropts = RenderOptions.from_saved(saved.meta.render, source=str(assignment), **render)
    refuse_overwriting_input([Path(out)], [assignment, *asg.sidecar_paths(assignment),
                                           *([saved.meta.output] if saved.meta.output else []),
                                           *([saved.meta.target.path] if saved.meta.target else [])])
    with open_db(saved, db, db_fallback) as d:
        refuse_inside([out], d.path)
        return render_saved(d, saved, out, ropts, progress)


def plan_file(source, out, *, grid: str | None = None, **render) -> dict:
    """What writing `out` would take, for a target image (its aspect, after EXIF rotation, sets
    the rows), a saved assignment, or no source with --grid COLSxROWS."""
    if source is not None and is_assignment(source):
        saved = asg.load(source)
        ropts = RenderOptions.from_saved(saved.meta.render, source=str(source), **render)
        cols, rows = (saved.cols, saved.rows) if grid is None else _fixed_grid(grid)
    else:
        ropts = RenderOptions(**{k: v for k, v in render.items() if v is not None})
        spec = grid or ropts.grid_for_print() or DEFAULT_GRID
        if source is not None:
            g = make_grid(*image_size(source), spec)
            cols, rows = g.cols, g.rows
        else:
            cols, rows = _fixed_grid(spec)
    ropts, warnings = ropts.for_grid(cols, rows)
    p = plan_output(Path(out), cols, rows, ropts)
    d = p.to_json()
    d["dpi"] = ropts.dpi
    if ropts.dpi:
        d["print_size_cm"] = [round(p.width / ropts.dpi * 2.54, 2), round(p.height / ropts.dpi * 2.54, 2)]
    d["fits_on_disk"] = p.est_bytes * 1.1 <= p.free_bytes
    d["workers"] = ropts.resolved_workers()
    d["warnings"] = warnings
    return d


def _fixed_grid(spec: str) -> tuple[int, int]:
    cols, rows = parse_grid(spec)
    if rows is None:
        raise UsageError("without a target image, --grid must be COLSxROWS (e.g. 256x170)")
    return cols, rows


def assignment_name(path) -> str:
    """'out/mosaic.mosaic.json' -> 'mosaic' (the name outputs in a folder are given)."""
    name = Path(path).name
    for end in ASSIGNMENT_SUFFIXES:
        if name.endswith(end):
            return name[: -len(end)]
    return Path(name).stem


@dataclass
class PrintJob:
    """A print request on a saved assignment, planned (every bad input refused, the warnings
    known) before anything is written; `write()` then writes it. Use as a context manager:
    it holds the tile database open."""
    assignment: str
    out: Path
    saved: asg.SavedAssignment
    db: TileDB
    options: object          # printing.PrintOptions
    plan: object             # printing.PrintPlan

    @classmethod
    def open(cls, assignment, out, *, db=None, db_fallback=None, render: dict | None = None,
             **print_options) -> "PrintJob":
        """Plan printing a saved `assignment` to `out` (nothing written yet: see `write`), with its
        database open. `print_options`: PrintOptions fields; `render`: RenderOptions fields (None:
        as saved); `db`/`db_fallback` as in `open_db`. Use it as a context manager."""
        from .printing import PrintOptions, plan_print
        if assignment is None or (not is_assignment(assignment) and not asg.sidecar_paths(assignment)[0].exists()):
            raise UsageError(f"{assignment or 'no source'}: a print needs a saved assignment (OUT.mosaic.json)")
        if not print_options.get("size"):
            raise UsageError("a print needs --size (e.g. 120x80cm, or 120cm for the long side)")
        saved = asg.load(assignment)
        ropts = RenderOptions.from_saved(saved.meta.render, source=str(assignment), **(render or {}))
        opts = PrintOptions(**{k: v for k, v in print_options.items() if v is not None},
                            render=replace(ropts, tile_px=None, print_size=None))
        d = open_db(saved, db, db_fallback)
        try:
            plan = plan_print(d, saved, opts, out, assignment_name(assignment))
            inputs = [assignment, *asg.sidecar_paths(assignment), *([saved.meta.output] if saved.meta.output else []),
                      *([saved.meta.target.path] if saved.meta.target else [])]
            refuse_overwriting_input(plan.outputs.all(), inputs)
            refuse_inside(plan.outputs.all(), d.path)
            refuse_non_files(plan.outputs.all())
        except BaseException:
            d.close()
            raise
        return cls(str(assignment), Path(out), saved, d, opts, plan)

    def write(self, progress: bool = False) -> dict:
        """Write the planned print; returns its manifest."""
        from .printing import write_print
        return write_print(self.db, self.saved, self.options, self.out, assignment_name(self.assignment),
                           progress=progress, plan=self.plan, assignment_path=self.assignment)

    def close(self) -> None:
        """Close the tile database."""
        self.db.close()

    def __enter__(self) -> "PrintJob":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
