"""`mosaic make`, `mosaic render`, `mosaic eval`: the main job and its companions."""
from __future__ import annotations

import json
from pathlib import Path

import click

from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.color import COLOR_MODES
from mosaicdb.errors import UsageError
from mosaicdb.make import Maker, expand_targets, output_paths, render_saved
from mosaicdb.options import MatchOptions, RenderOptions, print_for_grid, resolve_print_size
from mosaicdb.units import human_bytes, parse_bytes

from .common import echo_json, info, json_option, quiet_option


def output_options(f):
    """Pyramid/print options shared by make, render and plan."""
    f = click.option("--cache", default="512M", show_default=True,
                     help="Memory for decoded originals (tiles larger than the biggest thumbnail).")(f)
    f = click.option("--workers", default=0, help="Render/encode threads [default: CPU count].")(f)
    f = click.option("--print-size", default=None,
                     help="Physical size, e.g. 120cm (long side), 48in or 120x80cm: with --dpi fixes the pixels.")(f)
    f = click.option("--dpi", type=float, default=None, help="Print resolution [with --print-size: default 300].")(f)
    f = click.option("--ome", is_flag=True, help="TIFF: reduced levels as SubIFDs (Bio-Formats/QuPath) instead of pages.")(f)
    f = click.option("--codec", type=click.Choice(["jpeg", "deflate", "zstd", "none"]), default="jpeg",
                     show_default=True, help="Tile compression of .tif/.dzi outputs.")(f)
    return f


def render_options(f):
    f = click.option("--quality", default=90, show_default=True, help="JPEG/WebP quality (1-100).")(f)
    f = click.option("--color-strength", default=None, type=float,
                     help="How far colour transfer goes, 0 (none) to 1 (full) [make default: 0.5; "
                          "render default: as saved].")(f)
    f = click.option("--color", "color", type=click.Choice(COLOR_MODES), default=None,
                     help="Per-cell colour transfer: mean shift, mean+std (AdaIN), or blend with the target "
                          "[make default: none; render default: as saved].")(f)
    return f


def print_geometry(grid, tile_px, dpi, print_size):
    """Grid, tile px and dpi from --print-size/--dpi, or the plain defaults."""
    if print_size:
        spec = resolve_print_size(print_size, dpi, grid, tile_px)
        return spec.grid, spec.tile_px, spec.dpi
    return (grid if grid is not None else "64"), (tile_px if tile_px is not None else 32), dpi


@click.command("make")
@click.option("--db", "db_path", required=True, type=click.Path(file_okay=False), help="Tile database folder.")
@click.argument("targets", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (.jpg/.png/.webp), or a folder for several targets.")
@click.option("--format", "fmt", type=click.Choice(["jpg", "png", "webp", "tif", "dzi"]), default="jpg", show_default=True,
              help="Output type when --out is a folder.")
@click.option("--grid", default=None, help="Cells across the long side (N) or COLSxROWS [default: 64].")
@click.option("-k", "--candidates", "k", default=32, show_default=True, help="Nearest tiles considered per cell (widened when all are excluded).")
@click.option("--min-distance", type=int, default=None, help="Never the same tile twice within this Chebyshev distance [default: 2, lowered for tiny pools].")
@click.option("--max-uses", type=int, default=0, help="Use no tile more than N times (0: no cap).")
@click.option("--usage-penalty", type=float, default=0.0,
              help="Cost added per earlier use of a tile (in the units of the database's feature cost: sRGB "
                   "levels for rgb-pyramid, Lab for lab-*).")
@click.option("--unique", is_flag=True, help="Each tile at most once (global min-cost matching).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the cell order; same seed, same mosaic.")
@click.option("--order", type=click.Choice(["regret", "random"]), default="regret", show_default=True,
              help="Greedy visiting order: cells with most to lose first (regret), or random.")
@click.option("--refine-passes", type=int, default=4, show_default=True,
              help="Local-improvement sweeps after the greedy pass (reassign/swap tiles; 0: off).")
@click.option("--refine-seconds", type=float, default=10.0, show_default=True,
              help="Time budget of the local improvement (a time-limited result may vary by machine).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where FAISS searches (cuda needs faiss-gpu and a GPU).")
@click.option("--tile-px", type=int, default=None, help="Pixels per tile side in the output [default: 32].")
@render_options
@output_options
@quiet_option
@json_option
def make_cmd(db_path, targets, out, fmt, grid, k, min_distance, max_uses, usage_penalty, unique, seed, order,
             refine_passes, refine_seconds, device, tile_px, color, color_strength, quality, codec, ome, dpi, print_size, workers, cache, quiet, as_json):
    """Make photomosaics of TARGETS (images or folders) from the tiles in --db.

    Writes OUT, OUT's assignment (OUT.mosaic.json/.npz, for `mosaic render`) and its metrics
    (OUT.metrics.json). The database and index load once for all targets.

    A .tif OUT is a tiled pyramidal BigTIFF (any size, memory stays flat); .dzi a DeepZoom
    folder; .png streams; .jpg/.webp are for small outputs.

    Example:

        mosaic make --db tiles.db photo.jpg --out mosaic.jpg --grid 128 --min-distance 3 --color mean

        mosaic make --db tiles.db photo.jpg --out print.tif --print-size 120cm --dpi 300 --grid 256
    """
    grid, tile_px, dpi = print_geometry(grid, tile_px, dpi, print_size)
    mopts = MatchOptions(grid=grid, k=k, min_distance=min_distance, max_uses=max_uses, usage_penalty=usage_penalty,
                         unique=unique, seed=seed, device=device, order=order, refine_passes=refine_passes,
                         refine_seconds=refine_seconds)
    ropts = RenderOptions(tile_px=tile_px, color=color or "none",
                          color_strength=0.5 if color_strength is None else color_strength, quality=quality,
                          codec=codec, ome=ome, dpi=dpi, workers=workers, cache_bytes=parse_bytes(cache))
    ropts.validate()
    paths = expand_targets(targets)
    outs = output_paths(paths, Path(out), "." + fmt)
    results = []
    with TileDB.open(db_path) as db:
        maker = Maker(db, mopts, ropts, progress=not quiet)
        # only once the database and options passed: a failed run leaves no empty folder
        if len(outs) > 1 or not Path(out).suffix:
            Path(out).mkdir(parents=True, exist_ok=True)
        for t, o in zip(paths, outs):
            r = maker.make(t, o)
            for w in r.warnings:
                click.echo(f"warning: {w}", err=True)
            m = r.metrics
            results.append({"target": str(t), "output": str(r.output), "assignment": str(r.assignment),
                            "metrics": str(r.metrics_path), "psnr64": m["psnr64"], "ssim64": m["ssim64"],
                            "seconds": m["seconds"]})
            if not as_json:
                rep = m["repeats"]
                info(quiet, f"{t} -> {r.output}  ({m['cells']} cells, PSNR@64 {m['psnr64']:.2f} dB, "
                            f"SSIM@64 {m['ssim64']:.3f}, {rep['distinct_tiles']} distinct tiles, max uses "
                            f"{rep['max_uses']}; match {m['seconds']['match_total']:.2f} s, "
                            f"total {m['seconds']['total']:.2f} s)")
                click.echo(f"{r.output}")
    if as_json:
        echo_json(results)
    elif not quiet:
        click.echo(f"Metrics: {', '.join(r['metrics'] for r in results)}", err=True)


@click.command("render")
@click.argument("assignment", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (.jpg/.png/.webp).")
@click.option("--db", "db_path", type=click.Path(file_okay=False), default=None, help="Tile database [default: the one saved in the assignment].")
@click.option("--tile-px", type=int, default=None, help="Pixels per tile side [default: as saved].")
@render_options
@output_options
@quiet_option
def render_cmd(assignment, out, db_path, tile_px, color, color_strength, quality, codec, ome, dpi, print_size,
               workers, cache, quiet):
    """Render a saved ASSIGNMENT again (no matching), e.g. at another tile size.

    ASSIGNMENT is OUT.mosaic.json (or .npz, or the image it came with).

    Example:

        mosaic render mosaic.mosaic.json --tile-px 64 --out big.png

        mosaic render mosaic.mosaic.json --tile-px 256 --out print.tif --dpi 300
    """
    saved = asg.load(assignment)
    r0 = saved.meta.get("render", {})
    if print_size:
        tile_px, dpi = print_for_grid(print_size, dpi, saved.cols, saved.rows)
    ropts = RenderOptions(tile_px=tile_px if tile_px is not None else r0.get("tile_px", 32), color=color or r0.get("color", "none"),
                          color_strength=r0.get("color_strength", 0.5) if color_strength is None else color_strength,
                          quality=quality, codec=codec, ome=ome, dpi=dpi, workers=workers,
                          cache_bytes=parse_bytes(cache))
    with TileDB.open(db_path or saved.meta["db"], readonly=True) as db:
        written = render_saved(db, saved, out, ropts, progress=not quiet)
    info(quiet, f"{written['kind']}: {human_bytes(written['bytes'])} in {written['seconds']:.1f} s")
    click.echo(str(written["path"]))


@click.command("eval")
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.argument("mosaic", type=click.Path(exists=True, dir_okay=False))
@click.option("--grid", default=None, help="COLSxROWS of the mosaic [default: from MOSAIC's saved assignment].")
@json_option
def eval_cmd(target, mosaic, grid, as_json):
    """Score MOSAIC against TARGET: PSNR/SSIM at 64 px, PSNR per cell, pyramid MSE, repeats.

    Example:

        mosaic eval photo.jpg mosaic.jpg --json
    """
    from mosaicdb.make import evaluate_files
    m = evaluate_files(target, mosaic, grid)
    if as_json:
        echo_json(m)
        return
    click.echo(f"PSNR@64 {m['psnr64']:.2f} dB, SSIM@64 {m['ssim64']:.3f}" +
               (f", PSNR per cell {m['psnr_cell']:.2f} dB" if m.get("psnr_cell") is not None else ""))
    click.echo("pyramid MSE: " + ", ".join(f"L{k} {v:.5f}" for k, v in m["pyramid_mse"].items()))
    if m.get("repeats"):
        click.echo("repeats: " + json.dumps(m["repeats"]))
