"""`mosaic demo`: the whole pipeline, offline, on photographs that scikit-image ships."""
from __future__ import annotations

from pathlib import Path

import click

from mosaicdb import TileDB
from mosaicdb.demo import write_target, write_tile_sources
from mosaicdb.make import Maker
from mosaicdb.options import MatchOptions, RenderOptions

from .common import info, quiet_option


@click.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's database, tiles, target and mosaic.")
@click.option("--tiles", "n_tiles", default=3000, show_default=True, help="How many tiles to cut for the pool.")
@click.option("--grid", default="96", show_default=True, help="Cells across the long side.")
@click.option("--tile-px", default=32, show_default=True, help="Pixels per tile in the output.")
@quiet_option
def demo_cmd(out_dir, n_tiles, grid, tile_px, quiet):
    """Build a demo tile database and a photomosaic, offline, from photos scikit-image ships.

    Tiles are random crops of eleven photographs; the target is the astronaut portrait.
    Rerunning reuses the database.

    Example:

        mosaic demo --out demo-out
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info(quiet, f"Cutting {n_tiles} tiles from scikit-image's sample photographs...")
    src = out / "tile-sources"
    write_tile_sources(src, n_tiles)
    target = write_target(out / "target-astronaut.png")
    dbp = out / "tiles.db"
    db = TileDB.open(dbp) if (dbp / "catalog.sqlite").exists() else TileDB.create(dbp)
    with db:
        report = db.ingest([src], progress=not quiet)
        info(quiet, f"Ingest: {report.summary()}")
        maker = Maker(db, MatchOptions(grid=grid, min_distance=3, usage_penalty=0.5),
                      RenderOptions(tile_px=tile_px, color="mean", color_strength=0.4), progress=not quiet)
        r = maker.make(target, out / "mosaic.jpg")
    m = r.metrics
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"Mosaic:     {r.output} ({m['cells']} cells, {tile_px} px tiles)")
    click.echo(f"Metrics:    {r.metrics_path} (PSNR@64 {m['psnr64']:.2f} dB, SSIM@64 {m['ssim64']:.3f}, "
               f"{m['repeats']['distinct_tiles']} distinct tiles, nearest repeat {m['repeats']['min_repeat_distance']} cells apart)")
    click.echo(f"Assignment: {r.assignment} (re-render: mosaic render {r.assignment} --tile-px 64 --out big.png)")
    click.echo(f"Database:   {dbp} (mosaic db stats {dbp})")
