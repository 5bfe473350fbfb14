"""`mosaic demo`: the whole pipeline, offline, on photographs that scikit-image ships."""
from __future__ import annotations

import click

from mosaicdb.demo import run_demo

from .common import echo, echo_json, info, json_option, quiet_option, warn_all, OutPath


@click.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=OutPath(file_okay=False),
              help="Folder for the demo's database, tiles, target and mosaic.")
@click.option("--tiles", "n_tiles", default=3000, show_default=True, help="How many tiles to cut for the pool.")
@click.option("--grid", default="96", show_default=True, help="Cells across the long side.")
@click.option("--tile-px", default=32, show_default=True, help="Pixels per tile in the output.")
@quiet_option
@json_option
def demo_cmd(out_dir, n_tiles, grid, tile_px, quiet, as_json):
    """Build a demo tile database and a photomosaic, offline, from photos scikit-image ships.

    Tiles are random crops of eleven photographs; the target is the astronaut portrait.
    Rerunning reuses the database.

    Example:

    \b
        mosaic demo --out demo-out
    """
    info(quiet or as_json, f"Cutting {n_tiles} tiles from scikit-image's sample photographs...")
    d = run_demo(out_dir, n_tiles, grid, tile_px, progress=not quiet and not as_json)
    r, m = d.result, d.result.metrics
    warn_all(r.warnings)
    if as_json:
        echo_json({"mosaic": str(r.output), "metrics": str(r.metrics_path), "assignment": str(r.assignment),
                   "db": str(d.db_path), "ingest": d.ingest_summary, "cells": m["cells"], "psnr64": m["psnr64"],
                   "ssim64": m["ssim64"], "repeats": m["repeats"]})
        return
    info(quiet, f"Ingest: {d.ingest_summary}")
    echo(f"Mosaic:     {r.output} ({m['cells']} cells, {tile_px} px tiles)")
    echo(f"Metrics:    {r.metrics_path} (PSNR@64 {m['psnr64']:.2f} dB, SSIM@64 {m['ssim64']:.3f}, "
               f"{m['repeats']['distinct_tiles']} distinct tiles, nearest repeat "
               f"{m['repeats']['min_repeat_distance']} cells apart)")
    echo(f"Assignment: {r.assignment} (re-render: mosaic render {r.assignment} --tile-px 64 --out big.png)")
    echo(f"Database:   {d.db_path} (mosaic db stats {d.db_path})")
