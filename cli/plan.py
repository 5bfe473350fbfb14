"""`mosaic plan`: what a render request will produce, without rendering."""
from __future__ import annotations

from pathlib import Path

import click
from PIL import Image

from mosaicdb import assignment as asg
from mosaicdb.errors import UsageError
from mosaicdb.match.grid import make_grid, parse_grid
from mosaicdb.options import RenderOptions, print_for_grid
from mosaicdb.render.output import plan_output
from mosaicdb.units import human_bytes, parse_bytes

from .common import echo_json, json_option
from .make import output_options, print_geometry


@click.command("plan")
@click.argument("source", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(), help="The output you intend to write (its type matters).")
@click.option("--grid", default=None, help="Cells across the long side (N) or COLSxROWS.")
@click.option("--tile-px", type=int, default=None, help="Pixels per tile side.")
@click.option("--quality", default=90, show_default=True, help="JPEG quality.")
@output_options
@json_option
def plan_cmd(source, out, grid, tile_px, quality, codec, ome, dpi, print_size, workers, cache, as_json):
    """Show what rendering would produce: pixels, cells, levels, bytes, time, disk space.

    SOURCE is a target image (its aspect sets the rows) or a saved assignment
    (OUT.mosaic.json); without one, give --grid COLSxROWS.

    Example:

        mosaic plan photo.jpg --out print.tif --print-size 120cm --dpi 300 --grid 256
    """
    saved = None
    if source and source.endswith((".mosaic.json", ".mosaic.npz")):
        saved = asg.load(source)
        grid = grid or f"{saved.cols}x{saved.rows}"
        if print_size:
            tile_px, dpi = print_for_grid(print_size, dpi, saved.cols, saved.rows)
            print_size = None
        tile_px = tile_px or saved.meta.get("render", {}).get("tile_px")
    grid, tile_px, dpi = print_geometry(grid, tile_px, dpi, print_size)
    if source and saved is None:
        with Image.open(source) as im:
            w, h = im.size
        g = make_grid(w, h, grid)
        cols, rows = g.cols, g.rows
    else:
        cols, rows = parse_grid(grid)
        if rows is None:
            raise UsageError("without a target image, --grid must be COLSxROWS (e.g. 256x170)")
    ropts = RenderOptions(tile_px=tile_px, quality=quality, codec=codec, ome=ome, dpi=dpi, workers=workers,
                          cache_bytes=parse_bytes(cache))
    ropts.validate()
    p = plan_output(Path(out), cols, rows, ropts)
    d = p.to_json()
    d["dpi"] = dpi
    if dpi:
        d["print_size_cm"] = [round(p.width / dpi * 2.54, 2), round(p.height / dpi * 2.54, 2)]
    d["fits_on_disk"] = p.est_bytes * 1.2 <= p.free_bytes
    if as_json:
        echo_json(d)
        return
    click.echo(f"{out}: {p.kind}, {p.width:,} x {p.height:,} px ({p.width * p.height / 1e9:.2f} GP), "
               f"{cols} x {rows} = {cols * rows:,} cells of {p.tile_px} px")
    if dpi:
        click.echo(f"  print: {d['print_size_cm'][0]} x {d['print_size_cm'][1]} cm at {dpi:.1f} dpi")
    if p.kind != "raster":
        click.echo(f"  levels: {len(p.levels)} ({', '.join(f'{w}x{h}' for w, h, _ in p.levels[:4])}"
                   f"{', ...' if len(p.levels) > 4 else ''}), {p.tiles:,} tiles of 256 px")
    click.echo(f"  estimate: ~{human_bytes(p.est_bytes)}, ~{p.est_seconds:.0f} s on {ropts.resolved_workers()} "
               f"thread(s); {human_bytes(p.free_bytes)} free")
    if not d["fits_on_disk"]:
        click.echo("  warning: not enough free disk space for this output", err=True)
