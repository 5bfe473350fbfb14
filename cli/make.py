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
from mosaicdb.options import MatchOptions, RenderOptions

from .common import echo_json, info, json_option, quiet_option


def render_options(f):
    f = click.option("--quality", default=90, show_default=True, help="JPEG/WebP quality (1-100).")(f)
    f = click.option("--color-strength", default=0.5, show_default=True, type=float,
                     help="How far colour transfer goes, 0 (none) to 1 (full).")(f)
    f = click.option("--color", "color", type=click.Choice(COLOR_MODES), default=None,
                     help="Per-cell colour transfer: mean shift, mean+std (AdaIN), or blend with the target "
                          "[make default: none; render default: as saved].")(f)
    return f


@click.command("make")
@click.option("--db", "db_path", required=True, type=click.Path(file_okay=False), help="Tile database folder.")
@click.argument("targets", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(), help="Output image (.jpg/.png/.webp), or a folder for several targets.")
@click.option("--format", "fmt", type=click.Choice(["jpg", "png", "webp"]), default="jpg", show_default=True,
              help="Output type when --out is a folder.")
@click.option("--grid", default="64", show_default=True, help="Cells across the long side (N) or COLSxROWS.")
@click.option("-k", "--candidates", "k", default=32, show_default=True, help="Nearest tiles considered per cell (widened when all are excluded).")
@click.option("--min-distance", type=int, default=None, help="Never the same tile twice within this Chebyshev distance [default: 2, lowered for tiny pools].")
@click.option("--max-uses", type=int, default=0, help="Use no tile more than N times (0: no cap).")
@click.option("--usage-penalty", type=float, default=0.0, help="Cost added per earlier use of a tile (in Lab distance units).")
@click.option("--unique", is_flag=True, help="Each tile at most once (global min-cost matching).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the cell order; same seed, same mosaic.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where FAISS searches (cuda needs faiss-gpu and a GPU).")
@click.option("--tile-px", default=32, show_default=True, help="Pixels per tile side in the output.")
@render_options
@quiet_option
@json_option
def make_cmd(db_path, targets, out, fmt, grid, k, min_distance, max_uses, usage_penalty, unique, seed, device,
             tile_px, color, color_strength, quality, quiet, as_json):
    """Make photomosaics of TARGETS (images or folders) from the tiles in --db.

    Writes OUT, OUT's assignment (OUT.mosaic.json/.npz, for `mosaic render`) and its metrics
    (OUT.metrics.json). The database and index load once for all targets.

    Example:

        mosaic make --db tiles.db photo.jpg --out mosaic.jpg --grid 128 --min-distance 3 --color mean
    """
    mopts = MatchOptions(grid=grid, k=k, min_distance=min_distance, max_uses=max_uses, usage_penalty=usage_penalty,
                         unique=unique, seed=seed, device=device)
    ropts = RenderOptions(tile_px=tile_px, color=color or "none", color_strength=color_strength, quality=quality)
    paths = expand_targets(targets)
    outs = output_paths(paths, Path(out), "." + fmt)
    if len(outs) > 1 or not Path(out).suffix:
        Path(out).mkdir(parents=True, exist_ok=True)
    results = []
    with TileDB.open(db_path) as db:
        maker = Maker(db, mopts, ropts, progress=not quiet)
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
@quiet_option
def render_cmd(assignment, out, db_path, tile_px, color, color_strength, quality, quiet):
    """Render a saved ASSIGNMENT again (no matching), e.g. at another tile size.

    ASSIGNMENT is OUT.mosaic.json (or .npz, or the image it came with).

    Example:

        mosaic render mosaic.mosaic.json --tile-px 64 --out big.png
    """
    saved = asg.load(assignment)
    r0 = saved.meta.get("render", {})
    ropts = RenderOptions(tile_px=tile_px or r0.get("tile_px", 32), color=color or r0.get("color", "none"),
                          color_strength=color_strength if color else r0.get("color_strength", color_strength),
                          quality=quality)
    with TileDB.open(db_path or saved.meta["db"], readonly=True) as db:
        path = render_saved(db, saved, out, ropts, progress=not quiet)
    click.echo(str(path))


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
