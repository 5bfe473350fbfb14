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
from .print_cmd import assignment_name, build_options, print_options


@click.command("plan")
@click.argument("source", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(), help="The output you intend to write (its type matters).")
@click.option("--grid", default=None, help="Cells across the long side (N) or COLSxROWS.")
@click.option("--tile-px", type=int, default=None, help="Pixels per tile side.")
@click.option("--quality", default=90, show_default=True, help="JPEG quality.")
@output_options
@click.option("--print", "for_print", is_flag=True,
              help="Plan a `mosaic print` request (SOURCE: a saved assignment); the print options below imply it.")
@click.option("--size", default=None, help="--print: physical size, 120x80cm or 120cm (long side) [default: --print-size].")
@print_options
@click.option("--db", "db_path", type=click.Path(file_okay=False), default=None,
              help="--print: tile database [default: the one saved in the assignment].")
@json_option
def plan_cmd(source, out, grid, tile_px, quality, codec, ome, dpi, print_size, workers, cache, for_print, size,
             compression, icc, bleed, panel_width, panel_grid, overlap, proof, buffer, db_path, as_json):
    """Show what rendering would produce: pixels, cells, levels, bytes, time, disk space.

    SOURCE is a target image (its aspect sets the rows) or a saved assignment
    (OUT.mosaic.json); without one, give --grid COLSxROWS.

    With --print (or any print option), what `mosaic print` would write: pixels and
    physical size of each panel, estimated file sizes (from a small sample rendered and
    encoded), the tiles' own ppi at print size, and the warnings.

    Example:

        mosaic plan photo.jpg --out print.tif --print-size 120cm --dpi 300 --grid 256

        mosaic plan mosaic.mosaic.json --print --size 5.5m --dpi 300 --panel-width 1.2m --overlap 2cm --out panels/
    """
    if for_print or size or icc or panel_width or panel_grid or proof or bleed != "0" or overlap != "0" \
            or compression != "lzw":
        return plan_print_request(source, out, size or print_size, dpi, compression, icc, bleed, panel_width,
                                  panel_grid, overlap, proof, quality, workers, cache, buffer, db_path, as_json)
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


def plan_print_request(source, out, size, dpi, compression, icc, bleed, panel_width, panel_grid, overlap, proof,
                       quality, workers, cache, buffer, db_path, as_json):
    from mosaicdb import TileDB
    from mosaicdb.printing import plan_print
    if not source or not source.endswith((".mosaic.json", ".mosaic.npz")):
        raise UsageError("a print plan needs a saved assignment (OUT.mosaic.json) as SOURCE")
    if not size:
        raise UsageError("a print plan needs --size (e.g. 120x80cm or 120cm)")
    saved = asg.load(source)
    opts = build_options(saved, size, dpi or 300, compression, icc, bleed, panel_width, panel_grid, overlap, proof,
                         quality, None, 0.5, workers, cache, buffer)
    opts.parsed()
    with TileDB.open(db_path or saved.meta["db"], readonly=True) as db:
        plan = plan_print(db, saved, opts, out, assignment_name(source))
    d = plan.to_json()
    if as_json:
        echo_json(d)
        return
    g, t = plan.geometry, plan.tiles
    click.echo(f"print: {g.mm(g.trim_w) / 10:.1f} x {g.mm(g.trim_h) / 10:.1f} cm trim"
               + (f" + {g.mm(g.bleed_px):.1f} mm bleed" if g.bleed_px else "")
               + f", {g.width:,} x {g.height:,} px at {g.dpi:.2f} dpi ({g.requested_dpi:g} asked), "
               f"{g.cols} x {g.rows} cells of {g.cell_px} px")
    click.echo(f"  tiles at print size: median {t['median_ppi']:.0f} ppi, lowest {t['min_ppi']:.0f} ppi "
               f"({t['upsampled_tiles']} of {t['distinct_tiles']} tiles upsampled)")
    click.echo(f"  {len(d['files'])} file(s), {opts.compression}, profile {plan.profile.name}:")
    for f in d["files"]:
        click.echo(f"    {f['name']}: {f['size_px'][0]:,} x {f['size_px'][1]:,} px, "
                   f"{f['size_mm'][0] / 10:.1f} x {f['size_mm'][1] / 10:.1f} cm, ~{human_bytes(f['est_bytes'])}"
                   + (" (BigTIFF)" if f["est_bigtiff"] else ""))
    for k in ("layout", "proof", "manifest"):
        if d[k]:
            click.echo(f"    {Path(d[k]).name}")
    click.echo(f"  estimate: ~{human_bytes(d['est_total_bytes'])}, ~{d['est_seconds']:.0f} s; "
               f"{human_bytes(d['free_bytes'])} free")
    if not d["fits_on_disk"]:
        click.echo("  warning: not enough free disk space for this print", err=True)
    for w in plan.warnings:
        click.echo(f"  warning: {w}", err=True)
