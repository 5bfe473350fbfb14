"""Hybrid mosaics (`mosaic make ... --generate-worst N`): retrieval for every cell, then a
generated tile, guided to its own cell, for the cells the pool serves worst (the N largest
distances, and/or every cell above a distance). The metrics report which cells were generated
and the fidelity before and after.

`Maker` calls `Hybrid.apply` between matching and rendering; everything else about the
generation (plan, engine, ingest with provenance, resume) is `cells.py` and `cellrun.py`'s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..errors import UsageError
from .cellopts import CellOptions
from .pipeline import PipelineOptions


@dataclass(frozen=True)
class HybridOptions:
    pipeline: PipelineOptions
    cells: CellOptions          # its grid is replaced by the mosaic's own
    worst: int = 0              # the N cells with the largest retrieval distance
    above: float | None = None  # and/or every cell whose distance is above this (RMS Lab)

    def __post_init__(self) -> None:
        if self.worst < 0:
            raise UsageError(f"--generate-worst must be >= 0, got {self.worst}")
        if self.above is not None and self.above < 0:
            raise UsageError(f"--generate-above must be >= 0 (an RMS Lab distance), got {self.above}")
        if not self.worst and self.above is None:
            raise UsageError("say which cells to generate: --generate-worst N and/or --generate-above DISTANCE")


def select_cells(cost: np.ndarray, worst: int, above: float | None) -> list[tuple[int, int]]:
    """Cells to generate, worst first: the `worst` largest costs, plus all above `above`."""
    flat = cost.ravel()
    order = np.argsort(-flat, kind="stable")
    pick = set(order[:min(worst, flat.size)].tolist())
    if above is not None:
        pick.update(np.flatnonzero(flat > above).tolist())
    cols = cost.shape[1]
    return [(int(i) // cols, int(i) % cols) for i in order if int(i) in pick]


def _fidelity(m: dict) -> dict:
    return {k: m[k] for k in ("psnr64", "ssim64", "psnr_cell", "pyramid_mse", "mean_cell_distance")}


class Hybrid:
    """Checked once (model folder, scheduler, options) before any database or model is opened;
    the pipeline is loaded on first use and shared by every target of the run."""

    def __init__(self, opts: HybridOptions):
        from .cells import model_prediction
        from .pipeline import resolve_pipeline
        from .schedulers import check_prediction, resolve_scheduler
        self.opts = opts
        rp = resolve_pipeline(opts.pipeline)
        resolve_scheduler(opts.cells.scheduler, rp.scheduler)
        check_prediction(model_prediction(rp))
        self._pipe = None

    def apply(self, db, saved, target, grid, cell_features, ropts, progress: bool = False):
        """(the assignment with generated tiles in the selected cells, the report for the metrics)."""
        from ..assignment import SavedAssignment
        from ..render.fidelity import metrics_for
        from .cellrun import cell_costs, generate_into
        from .cells import plan_cells
        t0 = time.perf_counter()
        cells = select_cells(saved.cost, self.opts.worst, self.opts.above)
        report = {"cells": [list(c) for c in cells], "selected_by": {"worst": self.opts.worst, "above": self.opts.above},
                  "fidelity_before": _fidelity(metrics_for(db, saved, target.image, ropts))}
        if not cells:
            report.update(tile_ids=[], fidelity_after=report["fidelity_before"], seconds={"total": 0.0})
            return saved, report
        spec = saved.meta.grid
        opts = replace(self.opts.cells, grid=f"{spec.cols}x{spec.rows}")
        plan = plan_cells(target.path, self.opts.pipeline, opts, grid=grid, target=target)
        seconds = {}
        ids, gen = generate_into(db, plan, cells, progress=progress, pipe=self._pipe, seconds=seconds)
        if gen is not None:
            self._pipe = gen.loop.pipe
        rows, cols = np.array([c[0] for c in cells]), np.array([c[1] for c in cells])
        tile_ids = saved.tile_ids.copy()
        tile_ids[rows, cols] = [ids[c] for c in cells]
        cost = saved.cost.copy()
        cost[rows, cols] = cell_costs(db, tile_ids[rows, cols][None], cell_features[rows * grid.cols + cols])[0]
        meta = replace(saved.meta, extra={**saved.meta.extra, "generated_cells": {
            "run": plan.run, "cells": report["cells"],
            "provenance": {k: v for k, v in plan.common_provenance().items() if k != "pipeline"}}})
        orient = None if saved.orient is None else saved.orient.copy()
        if orient is not None:
            orient[rows, cols] = 0   # a tile generated for its cell is drawn as made
        new = SavedAssignment(meta, tile_ids, cost, saved.target_mean, saved.target_std, orient)
        seconds["total"] = time.perf_counter() - t0
        report.update(run=plan.run, tile_ids=[int(ids[c]) for c in cells],
                      distance_before=[round(float(saved.cost[c]), 3) for c in cells],
                      distance_after=[round(float(cost[c]), 3) for c in cells],
                      fidelity_after=_fidelity(metrics_for(db, new, target.image, ropts)),
                      seconds={k: round(v, 3) for k, v in seconds.items()})
        return new, report
