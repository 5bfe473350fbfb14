"""`mosaic plan`: what a render or print request will produce, without rendering."""
from __future__ import annotations

from pathlib import Path

import click

from mosaicdb.jobs import PrintJob, plan_file
from mosaicdb.printing.tiffstrips import DEFAULT_COMPRESSION
from mosaicdb.units import human_bytes

from .common import echo, echo_json, given_db, json_option, quiet_option, saved_db_option, warn_all, OutPath
from .make import output_options, render_fields
from .print_cmd import print_fields, print_options


@click.command("plan")
@click.argument("source", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=OutPath(), help="The output you intend to write (its type matters).")
@click.option("--grid", default=None, help="Cells across the long side (N) or COLSxROWS.")
@click.option("--tile-px", type=int, default=None, help="Pixels per tile side.")
@click.option("--quality", type=int, default=None, help="JPEG quality [default: 90, or as saved].")
@output_options
@click.option("--print", "for_print", is_flag=True,
              help="Plan a `mosaic print` request (SOURCE: a saved assignment); the print options below imply it.")
@click.option("--size", default=None, help="--print: physical size, 120x80cm or 120cm (long side) [default: --print-size].")
@print_options
@saved_db_option
@quiet_option
@json_option
def plan_cmd(source, out, grid, tile_px, quality, codec, ome, dpi, print_size, workers, cache, for_print, size,
             compression, icc, bleed, panel_width, panel_grid, overlap, proof, buffer, db_path, quiet, as_json):
    """Show what rendering would produce: pixels, cells, levels, bytes, time, disk space.

    SOURCE is a target image (its aspect sets the rows) or a saved assignment
    (OUT.mosaic.json); without one, give --grid COLSxROWS.

    With --print (or any print option), what `mosaic print` would write: pixels and
    physical size of each panel, estimated file sizes (from a small sample rendered and
    encoded), the tiles' own ppi at print size, and the warnings.

    Example:

    \b
        mosaic plan photo.jpg --out print.tif --print-size 120cm --dpi 300 --grid 256
        mosaic plan mosaic.mosaic.json --print --size 5.5m --dpi 300 --panel-width 1.2m --overlap 2cm --out panels/
    """
    if for_print or size or icc or panel_width or panel_grid or proof or bleed != "0" or overlap != "0" \
            or compression != DEFAULT_COMPRESSION:
        render = render_fields(None, None, None, quality, None, None, None, None, workers, cache)
        fields = print_fields(size or print_size, dpi or 300, compression, icc, bleed, panel_width, panel_grid,
                              overlap, proof, buffer)
        with PrintJob.open(source, out, **given_db(), render={k: render[k] for k in
                                                             ("quality", "workers", "cache_bytes")}, **fields) as job:
            _show_print_plan(job.plan, as_json)
        return
    d = plan_file(source, out, grid=grid, **render_fields(tile_px, None, None, quality, codec, ome, dpi, print_size,
                                                          workers, cache))
    if as_json:
        echo_json(d)
        return
    warn_all(d["warnings"])
    cols, rows = d["cols"], d["rows"]
    echo(f"{out}: {d['kind']}, {d['width']:,} x {d['height']:,} px ({d['width'] * d['height'] / 1e9:.2f} GP), "
               f"{cols} x {rows} = {cols * rows:,} cells of {d['tile_px']} px")
    if d["dpi"]:
        echo(f"  print: {d['print_size_cm'][0]} x {d['print_size_cm'][1]} cm at {d['dpi']:.1f} dpi")
    if d["kind"] != "raster":
        lv = d["levels"]
        echo(f"  levels: {len(lv)} ({', '.join(f'{w}x{h}' for w, h, _ in lv[:4])}"
                   f"{', ...' if len(lv) > 4 else ''}), {d['tiles']:,} tiles of 256 px")
    echo(f"  estimate: ~{human_bytes(d['est_bytes'])}, ~{d['est_seconds']:.0f} s on {d['workers']} "
               f"thread(s); {human_bytes(d['free_bytes'])} free")
    if not d["fits_on_disk"]:
        echo("  warning: not enough free disk space for this output", err=True)


def _show_print_plan(plan, as_json: bool) -> None:
    d = plan.to_json()
    if as_json:
        echo_json(d)
        return
    g, t = plan.geometry, plan.tiles
    echo(f"print: {g.mm(g.trim_w) / 10:.1f} x {g.mm(g.trim_h) / 10:.1f} cm trim"
               + (f" + {g.mm(g.bleed_px):.1f} mm bleed" if g.bleed_px else "")
               + f", {g.width:,} x {g.height:,} px at {g.dpi:.2f} dpi ({g.requested_dpi:g} asked), "
               f"{g.cols} x {g.rows} cells of {g.cell_px} px")
    echo(f"  tiles at print size: median {t['median_ppi']:.0f} ppi, lowest {t['min_ppi']:.0f} ppi "
               f"({t['upsampled_tiles']} of {t['distinct_tiles']} tiles upsampled)")
    echo(f"  {len(d['files'])} file(s), {plan.options.compression}, profile {plan.profile.name}:")
    for f in d["files"]:
        echo(f"    {f['name']}: {f['size_px'][0]:,} x {f['size_px'][1]:,} px, "
                   f"{f['size_mm'][0] / 10:.1f} x {f['size_mm'][1] / 10:.1f} cm, ~{human_bytes(f['est_bytes'])}"
                   + (" (BigTIFF)" if f["est_bigtiff"] else ""))
    for k in ("layout", "proof", "manifest"):
        if d[k]:
            echo(f"    {Path(d[k]).name}")
    echo(f"  estimate: ~{human_bytes(d['est_total_bytes'])}, ~{d['est_seconds']:.0f} s; "
               f"{human_bytes(d['free_bytes'])} free")
    if not d["fits_on_disk"]:
        echo("  warning: not enough free disk space for this print", err=True)
    for w in plan.warnings:
        echo(f"  warning: {w}", err=True)
