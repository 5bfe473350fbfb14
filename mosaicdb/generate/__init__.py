"""Generated tile pools: SDXL-family pipelines (diffusers) conditioned on a colour palette,
filtered, and ingested with provenance; run locally or on Ray. torch, diffusers and ray are
imported only when a pipeline or executor is built (extras `gen` and `ray`).

Stages: palette (`palette.py`, `colours.py`) -> prompts (`prompts.py`) -> generation
(`pipeline.py`, `worker.py`, run by `executors.py`) -> filters (`filters.py`) -> ingest
(`run.py`, through `TileDB.add_images`). `scene.py` makes targets and regenerates from
provenance; `tiny.py` builds an offline test pipeline.

Generated cells (a tile made for each cell of a target, GP): options (`cellopts.py`) -> plan
and engine (`cells.py`: reference blocks, ∫-noise from `noise.py`) -> our denoising loop
(`cellloop.py`, with `schedulers.py` for x̂0 and `guidance.py` for AdaIN and guidance) ->
ingest, assignment, render (`cellrun.py`); the hybrid `make --generate-worst` is `hybrid.py`.
"""
from .cellopts import CellOptions
from .cellrun import CellRunReport, generate_cells
from .filters import FilterOptions
from .palette import Palette, palette_from_images, palette_from_targets, spread_palette
from .pipeline import PipelineOptions, ResolvedPipeline, resolve_pipeline
from .run import TileRunOptions, TileRunReport, generate_tiles
from .scene import SceneOptions, generate_scene, provenance_of, regenerate
from .tiny import save_tiny_pipeline

__all__ = ["CellOptions", "CellRunReport", "generate_cells", "FilterOptions", "Palette", "palette_from_images", "palette_from_targets", "spread_palette",
           "PipelineOptions", "ResolvedPipeline", "resolve_pipeline", "TileRunOptions", "TileRunReport",
           "generate_tiles", "SceneOptions", "generate_scene", "provenance_of", "regenerate", "save_tiny_pipeline"]
