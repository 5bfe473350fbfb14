"""A diffusion tile made for each cell of a target (GP): planning and the tile engine.

`plan_cells` checks everything that can be checked without a model (options, target, grid,
model folder and its scheduler, geometry, the scene link) and fixes the run's identity.
`CellGenerator` loads the pipeline once, encodes every cell's reference block (AdaIN
statistics, and the `linear` decoder's fit), and turns lists of cells into tiles, batch by
batch: ∫-noise -> our denoising loop (`cellloop.py`) -> uint8 pixels and provenance. Every
tile's noise comes from its own seed and its cell's block of one global field, so a tile does
not depend on the batch it was made in or on which cells were made before (resumable runs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..match.grid import Grid, Target
from .cellopts import CellGeometry, CellOptions, check_cells, resolve_geometry
from .cellref import (SceneLink, cell_patches, field_blocks, link_scene, load_reference, noise_field,
                      scene_provenance, to_tensor)
from .pipeline import PipelineOptions, ResolvedPipeline, resolve_pipeline, to_uint8
from .prompts import DEFAULT_NEGATIVE
from .schedulers import check_prediction, resolve_scheduler, swap_scheduler
from .worker import derive_seed

log = logging.getLogger(__name__)
GENERATOR = "mosaicdb.generate"
ENCODE_BATCH = 32


@dataclass(frozen=True)
class CellPlan:
    opts: CellOptions
    pipeline: ResolvedPipeline
    geom: CellGeometry
    target: Target
    grid: Grid
    scheduler: str
    prediction: str
    negative: str
    scene: SceneLink | None
    run: str

    def tile_seed(self, row: int, col: int) -> int:
        return derive_seed(self.opts.seed, f"cell:{row}:{col}", 0)

    @property
    def field_seed(self) -> int:
        return derive_seed(self.opts.seed, "field", 0)

    def common_provenance(self) -> dict:
        rp, o = self.pipeline, self.opts
        return {"generator": GENERATOR, "kind": "cell", "run": self.run, "prompt": o.prompt, "negative": self.negative,
                "base_seed": o.seed, "model": rp.model, "steps": rp.steps, "guidance": rp.guidance,
                "width": self.geom.size, "height": self.geom.size, "scheduler": self.scheduler,
                "prediction": self.prediction, "guidance_weight": o.guidance_weight, "adain": o.adain,
                "noise": o.noise, "target": {"path": self.target.path, "sha256": self.target.sha256},
                "grid": {"cols": self.grid.cols, "rows": self.grid.rows, "crop": list(self.grid.crop),
                         "spec": o.grid},
                "geometry": self.geom.to_json(), "options": o.to_json(),
                "scene": None if self.scene is None else self.scene.to_json(),
                "lora": None if not rp.lora else {"path": rp.lora, "scale": rp.lora_scale, "sha256": rp.lora_sha256},
                "pipeline": rp.provenance()}


def model_prediction(rp: ResolvedPipeline) -> str:
    """The model scheduler's prediction type, from its config (no weights loaded)."""
    if rp.local:
        try:
            cfg = json.loads((Path(rp.source) / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"model folder {rp.source}: cannot read scheduler/scheduler_config.json ({e})") from None
    else:
        from . import deps
        cfg = dict(deps.diffusers().DDIMScheduler.load_config(rp.source, subfolder="scheduler",
                                                                 local_files_only=rp.offline))
    return str(cfg.get("prediction_type", "epsilon"))


def run_id(rp: ResolvedPipeline, opts: CellOptions, negative: str, geom: CellGeometry, target: Target,
           scheduler: str) -> str:
    """What makes two runs' tiles interchangeable (the batch size is left out: it changes no tile
    beyond the last bits of the arithmetic)."""
    key = {"model": rp.source, "turbo": rp.turbo, "steps": rp.steps, "guidance": rp.guidance, "lora": rp.lora,
           "lora_sha256": rp.lora_sha256, "lora_scale": rp.lora_scale, "dtype": rp.dtype, "negative": negative,
           "target": target.sha256, "geometry": geom.to_json(), "scheduler": scheduler,
           "options": {k: v for k, v in opts.to_json().items() if k != "batch"}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def plan_cells(target_path, popts: PipelineOptions, opts: CellOptions, *, grid: Grid | None = None,
               target: Target | None = None) -> CellPlan:
    """Validate everything before a model loads. `target`/`grid` may be passed in when the
    caller has them already (the hybrid)."""
    if target is None:
        target, grid = load_reference(target_path, opts.grid)
    check_cells(opts.grid, grid.cells)
    rp = resolve_pipeline(popts)
    scheduler = resolve_scheduler(opts.scheduler, rp.scheduler)
    prediction = check_prediction(model_prediction(rp))
    size = rp.check_size(opts.size or rp.native_size)
    geom = resolve_geometry(opts, size, rp.vae_scale)
    link = None
    if opts.noise == "integral" and opts.scene_noise:
        prov = scene_provenance(target)
        if prov is not None:
            link = link_scene(prov, grid, geom)
    negative = DEFAULT_NEGATIVE if opts.negative is None else opts.negative
    return CellPlan(opts, rp, geom, target, grid, scheduler, prediction, negative, link,
                    run_id(rp, opts, negative, geom, target, scheduler))


@dataclass
class CellTile:
    row: int
    col: int
    rgb: np.ndarray          # (H, W, 3) uint8
    provenance: dict


class CellGenerator:
    """The loaded pipeline and loop, the reference statistics and the noise field of one plan."""

    def __init__(self, plan: CellPlan, pipe=None):
        from . import deps
        from .cellloop import CellLoop
        from .guidance import LinearDecoder, TinyDecoder, VaeDecoder
        from .pipeline import Generator
        self.torch = torch = deps.torch()
        D = deps.diffusers()
        self.plan = plan
        t0 = time.perf_counter()
        rp = plan.pipeline
        if rp.threads == 0:
            plan = self.plan = replace(plan, pipeline=replace(rp, threads=int(torch.get_num_threads())))
        pipe = pipe if pipe is not None else Generator(plan.pipeline).pipe
        pipe.scheduler = swap_scheduler(D, pipe.scheduler, plan.scheduler)
        o, geom = plan.opts, plan.geom
        self.loop = CellLoop(pipe, o, geom, scheduler=plan.scheduler, prediction=plan.prediction,
                             steps=plan.pipeline.steps, cfg_scale=plan.pipeline.guidance)
        self.build_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.block_mean, self.block_std, normal = self._reference_blocks(o.guided and o.guidance_decoder == "linear")
        if o.guided:
            if o.guidance_decoder == "vae":
                self.loop.decoder = VaeDecoder(pipe.vae, geom.size)
            elif o.guidance_decoder == "tiny":
                self.loop.decoder = TinyDecoder.load(torch, D, o.tiny_decoder, self.loop.device, geom.size)
            else:
                self.loop.decoder = LinearDecoder.fit(torch, *normal, geom.factor)
        self.field = noise_field(torch, plan.grid, geom, plan.field_seed, plan.scene)
        self.reference_seconds = time.perf_counter() - t0

    def _reference_blocks(self, fit_linear: bool):
        """Per cell (rows, cols, 4): mean and std of its block's latent; with `fit_linear`, the
        normal equations of the latent -> RGB least squares over all blocks."""
        torch, plan, geom = self.torch, self.plan, self.plan.geom
        cells = [(r, c) for r in range(plan.grid.rows) for c in range(plan.grid.cols)]
        mean = np.empty((len(cells), 4), np.float64)
        std = np.empty((len(cells), 4), np.float64)
        xtx = xty = None
        from .guidance import LinearDecoder, channel_stats
        for i in range(0, len(cells), ENCODE_BATCH):
            part = cells[i:i + ENCODE_BATCH]
            patches = cell_patches(plan.target.image, plan.grid, part, geom.reference_px)
            lat = self.loop.encode_blocks(to_tensor(torch, patches))
            m, s = channel_stats(lat.double())
            mean[i:i + len(part)], std[i:i + len(part)] = m.cpu().numpy(), s.cpu().numpy()
            if fit_linear:
                small = cell_patches(plan.target.image, plan.grid, part, geom.block)
                a, b = LinearDecoder.normal_equations(torch, lat.cpu(), to_tensor(torch, small))
                xtx, xty = (a, b) if xtx is None else (xtx + a, xty + b)
        shape = (plan.grid.rows, plan.grid.cols, 4)
        return mean.reshape(shape), std.reshape(shape), (xtx, xty)

    def initial_noise(self, cells, generators):
        from .noise import independent_noise, integral_noise
        torch, geom = self.torch, self.plan.geom
        if self.plan.opts.noise == "independent":
            return independent_noise(torch, (4, geom.latent, geom.latent), generators)
        return integral_noise(torch, field_blocks(torch, self.field, geom, cells), geom.s, generators)

    def batch(self, cells) -> list[CellTile]:
        """Tiles for a list of (row, col) cells, generated together."""
        torch, plan = self.torch, self.plan
        t0 = time.perf_counter()
        gens = [torch.Generator("cpu").manual_seed(plan.tile_seed(r, c)) for r, c in cells]
        noise = self.initial_noise(cells, gens)
        rows, cols = [r for r, _ in cells], [c for _, c in cells]
        mean = torch.from_numpy(self.block_mean[rows, cols])
        std = torch.from_numpy(self.block_std[rows, cols])
        refs = to_tensor(torch, cell_patches(plan.target.image, plan.grid, cells, plan.geom.size))
        res = self.loop.run(noise, mean, std, refs, gens, plan.opts.prompt, plan.negative)
        pixels = to_uint8(res.images)
        per_tile = (time.perf_counter() - t0) / len(cells)
        if res.losses:
            log.debug("cells %s: guidance loss per step %s", cells,
                      [round(sum(step) / len(step), 5) for step in res.losses])
        log.info("%d cells in %.2f s/tile, loss of the output %.5f", len(cells), per_tile,
                 sum(res.final_loss) / len(cells))
        members = [[r, c] for r, c in cells]
        out = []
        for k, (r, c) in enumerate(cells):
            losses = [step[k] for step in res.losses] if res.losses else []
            out.append(CellTile(r, c, pixels[k], {
                "cell": [r, c], "seed": plan.tile_seed(r, c), "batch": {"members": members, "position": k},
                "block": {"mean": self.block_mean[r, c].round(5).tolist(), "std": self.block_std[r, c].round(5).tolist()},
                "guidance_loss": {"first_step": losses[0] if losses else None,
                                  "last_step": losses[-1] if losses else None,
                                  "per_step": [round(v, 6) for v in losses],
                                  "output": round(float(res.final_loss[k]), 6)},
                "seconds": round(per_tile, 4)}))
        return out
