"""`mosaic make`, `mosaic render`, `mosaic eval`: the main job and its companions."""
from __future__ import annotations

import json
from pathlib import Path

import click

from mosaicdb.color import COLOR_MODES
from mosaicdb.errors import MosaicError, UsageError
from mosaicdb.jobs import render_file
from mosaicdb.match.options import MatchOptions
from mosaicdb.orient import DEFAULT_ORIENT, ORIENTS
from mosaicdb.render.codecs import CODECS
from mosaicdb.recursive import RecursiveOptions
from mosaicdb.recursive.options import DEFAULT_GRID
from mosaicdb.render.options import RenderOptions
from mosaicdb.units import human_bytes, parse_bytes

from . import generate as _generate  # noqa: F401  (first: cells.py builds on generate's options, which import it back)
from .autoencoder import auto_options, autoencoder_make_options, autoencoder_summary, split_autoencoder_options
from .cells import hybrid_from_cli, hybrid_options
from .common import echo, db_option, echo_json, given_db, info, json_option, quiet_option, saved_db_option, warn_all, OutPath


def output_options(f):
    """Pyramid/print options shared by make, render and plan (None: the default, or as saved)."""
    f = click.option("--cache", default=None, help="Memory for tiles resized from their originals (cells larger than "
                                                   "the biggest thumbnail); the rest are kept in a temporary file "
                                                   "in $TMPDIR [default: 16M].")(f)
    f = click.option("--workers", type=int, default=None, help="Render/encode threads [default: CPU count].")(f)
    f = click.option("--print-size", default=None,
                     help="Physical size, e.g. 120cm (long side), 48in or 120x80cm: with --dpi fixes the pixels.")(f)
    f = click.option("--dpi", type=float, default=None, help="Print resolution [with --print-size: default 300].")(f)
    f = click.option("--ome", is_flag=True, default=None,
                     help="TIFF: reduced levels as SubIFDs (Bio-Formats/QuPath) instead of pages.")(f)
    f = click.option("--codec", type=click.Choice(sorted(CODECS)), default=None,
                     help="Tile compression of .tif/.dzi outputs [default: jpeg].")(f)
    return f


def render_options(f):
    f = click.option("--quality", type=int, default=None, help="JPEG/WebP quality, 1-100 [default: 90].")(f)
    f = click.option("--color-strength", default=None, type=float,
                     help="How far colour transfer goes, 0 (none) to 1 (full) [make default: 0.5; "
                          "render default: as saved].")(f)
    f = click.option("--color", "color", type=click.Choice(COLOR_MODES), default=None,
                     help="Per-cell colour transfer: mean shift, mean+std (AdaIN), or blend with the target "
                          "[make default: none; render default: as saved].")(f)
    return f


def check_tiff_only(codec, ome, outs) -> None:
    """--codec and --ome shape .tif/.dzi outputs only: given for another, they would be ignored."""
    for o in outs:
        suffix = Path(o).suffix.lower()
        if codec and suffix not in (".tif", ".tiff", ".dzi"):
            raise UsageError(f"--codec {codec} applies to .tif and .dzi outputs, not to {Path(o).name}: drop it "
                             "(JPEG, PNG and WebP outputs have their own encoding; --quality for JPEG/WebP)")
        if ome and suffix not in (".tif", ".tiff"):
            raise UsageError(f"--ome applies to .tif outputs, not to {Path(o).name}: drop it")


def render_fields(tile_px, color, color_strength, quality, codec, ome, dpi, print_size, workers, cache) -> dict:
    """The RenderOptions fields given on the command line (None where not given)."""
    return dict(tile_px=tile_px, color=color, color_strength=color_strength, quality=quality, codec=codec,
                ome=ome or None, dpi=dpi, print_size=print_size, workers=workers,
                cache_bytes=None if cache is None else parse_bytes(cache))


@click.command("make")
@db_option
@click.argument("targets", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", required=True, type=OutPath(), help="Output image (.jpg/.png/.webp/.tif/.dzi), "
                                                                   "or a folder for several targets.")
@click.option("--format", "fmt", type=click.Choice(["jpg", "png", "webp", "tif", "dzi"]), default="jpg",
              show_default=True, help="Output type when --out is a folder.")
@click.option("--grid", default=None, help="Cells across the long side (N) or COLSxROWS [default: 64].")
@click.option("-k", "--candidates", "k", default=32, show_default=True,
              help="Nearest tiles considered per cell (widened when all are excluded).")
@click.option("--min-distance", type=int, default=None,
              help="Never the same tile twice within this Chebyshev distance [default: 2, lowered for tiny pools].")
@click.option("--max-uses", type=int, default=0, help="Use no tile more than N times (0: no cap).")
@click.option("--usage-penalty", type=float, default=0.0,
              help="Cost added per earlier use of a tile (in the units of the database's feature cost: sRGB "
                   "levels for rgb-pyramid, Lab for lab-*).")
@click.option("--unique", is_flag=True, help="Each tile at most once, near the least total distance (needs tiles >= cells).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the cell order; same seed, same mosaic.")
@click.option("--order", type=click.Choice(["regret", "random"]), default="regret", show_default=True,
              help="Greedy visiting order: cells with most to lose first (regret), or random.")
@click.option("--refine-passes", type=int, default=4, show_default=True,
              help="Local-improvement sweeps after the greedy pass (reassign/swap tiles), and as many of "
                   "dithering after it (0: both off).")
@click.option("--refine-seconds", type=float, default=10.0, show_default=True,
              help="Time budget of the local improvement, and again of the dithering (a time-limited result "
                   "may vary by machine).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where FAISS searches (cuda needs faiss-gpu and a GPU).")
@click.option("--orient", type=click.Choice(sorted(ORIENTS)), default=DEFAULT_ORIENT, show_default=True,
              help="Turns a tile may take in its cell: none; mirror (or its left-right mirror image); all (the 8 flips "
                   "and quarter turns: photographs may show sideways or upside down). ~2x / ~8x the search.")
@click.option("--dither", type=float, default=None,
              help="After refinement, choose tiles for how the mosaic reads as a whole picture, seen close (the "
                   "target's size, halved) and seen whole (64 px), not cell by cell: the weight of the whole view "
                   "against the close one (0-100; 0: off). More reads closer from afar, less keeps more detail "
                   "inside the tiles. Needs features with 2x2 colours (rgb-pyramid, lab-pyramid, lab-grid at an even "
                   "grid) [default: 0.3; 0, and no other value, with --unique or --orient].")
@click.option("--tile-px", type=int, default=None, help="Pixels per tile side in the output [default: 32].")
@click.option("--recursive", "depth", type=int, default=0, show_default=True,
              help="Every tile becomes a mosaic of itself from the same pool, this many times over (refused beyond "
                   "65536 px; to zoom deeper use `mosaic serve OUT.mosaic.json --recursive N`).")
@click.option("--recursive-grid", type=int, default=DEFAULT_GRID, show_default=True,
              help="Cells across each sub-mosaic (a power of two).")
@render_options
@output_options
@hybrid_options
@autoencoder_make_options
@click.option("--executor", default="local", show_default=True,
              help="Where targets run: local (this machine), or ray (actors that each open the database once; extra `ray`).")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="Local: targets made at once, each worker process with the database opened once and its share of "
                   "the cores (100 targets on 2 cores: --jobs 2, ~1.3x faster).")
@click.option("--ray-address", default=None, help="Join this Ray cluster (e.g. auto or ray://head:10001) instead of "
                                                  "starting a local one; the database must be at the same path on every node.")
@click.option("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance [default: all].")
@click.option("--actors", type=int, default=None, help="Ray actors [default: the cluster's CPUs, at most one per target].")
@click.option("--cpus-per-actor", type=int, default=1, show_default=True, help="Ray CPUs each actor reserves.")
@quiet_option
@json_option
def make_cmd(db_path, targets, out, fmt, grid, k, min_distance, max_uses, usage_penalty, unique, seed, order,
             refine_passes, refine_seconds, device, orient, dither, tile_px, depth, recursive_grid, color, color_strength, quality,
             codec, ome, dpi, print_size, workers, cache, executor, jobs, ray_address, ray_cpus, actors, cpus_per_actor,
             quiet, as_json, **generate_kw):
    """Make photomosaics of TARGETS (images or folders) from the tiles in --db.

    Writes OUT, OUT's assignment (OUT.mosaic.json/.npz, for `mosaic render`) and its metrics
    (OUT.metrics.json). The database and index load once for all targets.

    A .tif OUT is a tiled pyramidal BigTIFF (any size, memory stays flat); .dzi a DeepZoom
    folder; .png streams; .jpg/.webp are for small outputs.

    Example:

    \b
        mosaic make --db tiles.db photo.jpg --out mosaic.jpg --grid 128 --min-distance 3 --color mean
        mosaic make --db tiles.db photo.jpg --out print.tif --print-size 120cm --dpi 300 --grid 256
        mosaic make --db tiles.db photo.jpg --out rec.tif --grid 32 --tile-px 32 --recursive 1 --recursive-grid 16
        mosaic make --db tiles.db photo.jpg --out m.png --grid 16 --generate-worst 8 --generate-model ./sdxl-turbo --generate-prompt "a dog"
        mosaic make --db tiles.db photo.jpg --out m.jpg --grid 64 --autoencoder cifar-ae --hybrid
        mosaic make --db textures.db photo.jpg --out m.jpg --grid 64 --min-distance 0 --orient all
        mosaic make --db tiles.db photo.jpg --out m.jpg --grid 32 --dither 0
        mosaic make --db tiles.db photos/ --out mosaics/ --grid 128 --jobs 2
        mosaic make --db /shared/tiles.db /shared/photos/ --out /shared/mosaics --grid 128 --executor ray --ray-address auto
    """
    from mosaicdb.batch import BatchOptions, BatchRunner  # the matching stack: only for make
    from mosaicdb.make import expand_targets, output_paths
    ae_kw, generate_kw = split_autoencoder_options(generate_kw)
    auto = auto_options(**ae_kw)
    mopts = MatchOptions(grid=grid, k=k, min_distance=min_distance, max_uses=max_uses, usage_penalty=usage_penalty,
                         unique=unique, seed=seed, device=device, order=order, refine_passes=refine_passes,
                         refine_seconds=refine_seconds, orient=orient, dither=dither)
    given = render_fields(tile_px, color, color_strength, quality, codec, ome, dpi, print_size, workers, cache)
    ropts = RenderOptions(**{k: v for k, v in given.items() if v is not None})
    recursive = RecursiveOptions(depth=depth, grid=recursive_grid)
    paths = expand_targets(targets)
    outs = output_paths(paths, Path(out), "." + fmt)
    check_tiff_only(codec, ome, outs)
    if auto is not None and (generate_kw.get("generate_worst") or generate_kw.get("generate_above") is not None):
        raise UsageError("--generate-worst/--generate-above replace retrieved tiles; with --autoencoder every cell "
                         "is decoded (add --hybrid to mix in retrieved ones)")
    if auto is not None and recursive.depth:
        raise UsageError("--recursive matches every tile's sub-mosaic from the pool; with --autoencoder every cell is "
                         "decoded: drop one of them")
    bopts = BatchOptions(executor=executor, ray_address=ray_address, ray_cpus=ray_cpus, actors=actors,
                         cpus_per_actor=cpus_per_actor, jobs=jobs)
    bopts.check_generation(bool(generate_kw["generate_worst"]) or generate_kw["generate_above"] is not None)
    hybrid = hybrid_from_cli(generate_kw)
    maker, maker_option = None, None
    if auto is not None:
        def maker(db):
            from mosaicdb.autoencoder.make import AutoMaker
            return AutoMaker(db, mopts, ropts, auto, progress=not quiet)
        maker_option = "--autoencoder"
    elif recursive.depth:
        def maker(db):
            from mosaicdb.make import Maker
            return Maker(db, mopts, ropts, progress=not quiet, hybrid=hybrid, recursive=recursive)
        maker_option = "--recursive"
    results = []
    with BatchRunner(db_path, mopts, ropts, bopts, progress=not quiet, hybrid=hybrid, maker=maker,
                     maker_option=maker_option) as runner:
        made = runner.make(paths, outs)
        # only once the database, options and outputs passed: a failed run leaves no empty folder
        made_folder = (len(outs) > 1 or not Path(out).suffix) and not Path(out).exists()
        if len(outs) > 1 or not Path(out).suffix:
            Path(out).mkdir(parents=True, exist_ok=True)
        failed = []
        said = set()  # a warning about the database or the options, not the target: once a batch
        for t, r in made:
            if isinstance(r, MosaicError):
                failed.append(t)
                msg = str(r)  # most errors name the target already ("target X: ..."): not twice
                echo(f"error: {msg}" if str(t) in msg else f"error: {t}: {msg}", err=True)
                continue
            warn_all([w for w in r.warnings if w not in said])
            said.update(r.warnings)
            m = r.metrics
            results.append({"target": str(t), "output": str(r.output), "assignment": str(r.assignment),
                            "metrics": str(r.metrics_path), "psnr64": m["psnr64"], "ssim64": m["ssim64"],
                            "seconds": m["seconds"], **({"autoencoder": m["autoencoder"]} if "autoencoder" in m else {})})
            if "autoencoder" in m:
                info(quiet or as_json, autoencoder_summary(m["autoencoder"]))
            if "generated" in m:
                g = m["generated"]
                info(quiet, f"generated {len(g['cells'])} cells: PSNR@64 {g['fidelity_before']['psnr64']:.2f} -> "
                            f"{g['fidelity_after']['psnr64']:.2f} dB")
            if not as_json:
                info(quiet, _summary(t, r))
                echo(f"{r.output}")
    if as_json:
        echo_json(results)
    elif not quiet and results:
        echo(f"Metrics: {', '.join(r['metrics'] for r in results)}", err=True)
    if failed:
        if len(failed) == len(paths):
            if made_folder and not any(Path(out).iterdir()):
                Path(out).rmdir()  # nothing in it: as if the run had failed before it began
            raise click.ClickException(f"all {len(paths)} targets failed (see above); nothing was made")
        raise click.ClickException(f"{len(failed)} of {len(paths)} targets failed (see above); the others were made")


def _summary(target, r) -> str:
    m = r.metrics
    s = m["seconds"]
    if m.get("psnr64") is None:
        return f"{target} -> {r.output}  ({m['cells']} cells; match {s['match_total']:.2f} s, total {s['total']:.2f} s)"
    rep = m["repeats"]
    return (f"{target} -> {r.output}  ({m['cells']} cells, PSNR@64 {m['psnr64']:.2f} dB, SSIM@64 {m['ssim64']:.3f}, "
            f"{rep['distinct_tiles']} distinct tiles, max uses {rep['max_uses']}; match {s['match_total']:.2f} s, "
            f"total {s['total']:.2f} s)")


@click.command("render")
@click.argument("assignment", type=click.Path())
@click.option("--out", "-o", required=True, type=OutPath(), help="Output image (.jpg/.png/.webp/.tif/.dzi).")
@saved_db_option
@click.option("--tile-px", type=int, default=None, help="Pixels per tile side [default: as saved].")
@render_options
@output_options
@quiet_option
@json_option
def render_cmd(assignment, out, db_path, tile_px, color, color_strength, quality, codec, ome, dpi, print_size,
               workers, cache, quiet, as_json):
    """Render a saved ASSIGNMENT again (no matching), e.g. at another tile size.

    ASSIGNMENT is OUT.mosaic.json (or .npz, or the image it came with). Options not given are
    as saved.

    Example:

    \b
        mosaic render mosaic.mosaic.json --tile-px 64 --out big.png
        mosaic render mosaic.mosaic.json --tile-px 256 --out print.tif --dpi 300
    """
    check_tiff_only(codec, ome, [Path(out)])
    given = render_fields(tile_px, color, color_strength, quality, codec, ome, dpi, print_size, workers, cache)
    written = render_file(assignment, out, **given_db(), progress=not quiet and not as_json, **given)
    warn_all(written["warnings"])
    if as_json:
        echo_json({k: v for k, v in written.items() if k != "levels"})
        return
    info(quiet, f"{written['kind']}: {human_bytes(written['bytes'])} in {written['seconds']:.1f} s")
    echo(str(written["path"]))


@click.command("eval")
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.argument("mosaic", type=click.Path(exists=True, dir_okay=False))
@click.option("--grid", default=None, help="COLSxROWS of the mosaic [default: from MOSAIC's saved assignment].")
@quiet_option
@json_option
def eval_cmd(target, mosaic, grid, quiet, as_json):
    """Score MOSAIC against TARGET: PSNR/SSIM at 64 px, PSNR per cell, pyramid MSE, repeats.

    Example:

    \b
        mosaic eval photo.jpg mosaic.jpg --json
    """
    from mosaicdb.make import evaluate_files
    m = evaluate_files(target, mosaic, grid)
    warn_all(m.get("warnings", []))  # (stderr: the JSON on stdout has them too)
    if as_json:
        echo_json(m)
        return
    echo(f"PSNR@64 {m['psnr64']:.2f} dB, SSIM@64 {m['ssim64']:.3f}" +
               (f", PSNR per cell {m['psnr_cell']:.2f} dB" if m.get("psnr_cell") is not None else ""))
    echo("pyramid MSE: " + ", ".join(f"L{k} {v:.5f}" for k, v in m["pyramid_mse"].items()))
    if m.get("repeats"):
        echo("repeats: " + json.dumps(m["repeats"]))
