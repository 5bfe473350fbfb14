"""`mosaic print`: print-ready flat TIFF(s) of a saved assignment."""
from __future__ import annotations

import click

from mosaicdb.jobs import PrintJob
from mosaicdb.printing.tiffstrips import COMPRESSIONS, DEFAULT_COMPRESSION
from mosaicdb.units import human_bytes, parse_bytes

from .common import echo, echo_json, given_db, info, json_option, quiet_option, saved_db_option, warn_all, OutPath
from .make import render_options


def print_options(f):
    """The options that shape a print, shared by `mosaic print` and `mosaic plan --print`."""
    f = click.option("--buffer", default="256M", show_default=True,
                     help="Memory for rendered rows in flight (the print's size does not change it).")(f)
    f = click.option("--proof", is_flag=True, help="Also write NAME.proof.jpg: the whole print at <= 8,000 px, seams drawn.")(f)
    f = click.option("--overlap", default="0", show_default=True, help="Shared strip between neighbouring panels, e.g. 2cm.")(f)
    f = click.option("--panels", "panel_grid", default=None, help="Exactly COLSxROWS panels, e.g. 3x2.")(f)
    f = click.option("--panel-width", default=None,
                     help="Widest panel (overlap included), e.g. 60cm or 48in: as many panels as needed.")(f)
    f = click.option("--bleed", default="0", show_default=True,
                     help="Mosaic content beyond the trim on every side, e.g. 10mm.")(f)
    f = click.option("--icc", default=None, type=click.Path(dir_okay=False),
                     help="RGB output ICC profile: pixels are converted from sRGB into it and it is embedded [default: sRGB].")(f)
    f = click.option("--compression", type=click.Choice(list(COMPRESSIONS)), default=DEFAULT_COMPRESSION,
                     show_default=True, help="Strip compression, with the horizontal predictor: deflate (Adobe "
                     "Deflate, fastest and smallest), lzw (for a RIP that reads nothing else) or none; never JPEG.")(f)
    return f


def print_fields(size, dpi, compression, icc, bleed, panel_width, panel_grid, overlap, proof, buffer) -> dict:
    """The PrintOptions fields given on the command line."""
    return dict(size=size, dpi=dpi, compression=compression, icc=icc, bleed=bleed, panel_width=panel_width,
                panels=panel_grid, overlap=overlap, proof=proof, buffer_bytes=parse_bytes(buffer, "--buffer"))


@click.command("print")
@click.argument("assignment", type=click.Path())
@click.option("--size", required=True, help="Physical size: 120x80cm (width x height) or one side, 120cm (the long side); mm, cm, m or in.")
@click.option("--dpi", type=float, default=300, show_default=True, help="Print resolution.")
@click.option("--out", "-o", required=True, type=OutPath(), help="NAME.tif, or a folder (files are named after the assignment).")
@saved_db_option
@print_options
@render_options
@click.option("--workers", type=int, default=None, help="Render/encode threads [default: CPU count].")
@click.option("--cache", default=None, help="Memory for tiles resized from their originals (cells larger than the biggest thumbnail); "
              "the rest are kept in a temporary file in $TMPDIR [default: 16M].")
@quiet_option
@json_option
def print_cmd(assignment, size, dpi, out, db_path, compression, icc, bleed, panel_width, panel_grid, overlap, proof,
              buffer, color, color_strength, quality, workers, cache, quiet, as_json):
    """Write print-ready TIFF(s) of a saved ASSIGNMENT for a print shop.

    One flat 8-bit RGB TIFF in strips (Deflate by default), with an embedded ICC profile and the
    resolution tags set, at the size asked: cells get a whole number of pixels and the dpi in
    the file is adjusted so the print lands exactly on --size. --bleed adds real mosaic
    (the edge cells reflected) beyond the trim; --panel-width/--panels split the print into
    NAME_r01_c01.tif ... with --overlap, plus NAME.panels.json and NAME.layout.png. A file over
    4 GB is BigTIFF (you are warned). Memory stays flat whatever the size.

    Example:

    \b
        mosaic print mosaic.mosaic.json --size 120x80cm --dpi 150 --bleed 10mm --out print.tif
        mosaic print mosaic.mosaic.json --size 5.5m --dpi 300 --panel-width 1.2m --overlap 2cm --proof --out panels/
    """
    render = dict(color=color, color_strength=color_strength, quality=quality, workers=workers,
                  cache_bytes=None if cache is None else parse_bytes(cache))
    with PrintJob.open(assignment, out, **given_db(), render=render,
                       **print_fields(size, dpi, compression, icc, bleed, panel_width, panel_grid, overlap, proof,
                                      buffer)) as job:
        warn_all(job.plan.warnings)
        m = job.write(progress=not quiet and not as_json)
    warn_all(m["warnings"][len(job.plan.warnings):])
    if as_json:
        echo_json(m)
        return
    g = job.plan.geometry
    info(quiet, f"{m['size_mm'][0] / 10:.1f} x {m['size_mm'][1] / 10:.1f} cm ({g.width:,} x {g.height:,} px, "
                f"{g.cell_px} px per cell, {g.dpi:.2f} dpi) in {len(m['panels'])} file(s), "
                f"{human_bytes(m['bytes'])}, {m['seconds']:.1f} s")
    folder = job.plan.outputs.folder
    for p in m["panels"]:
        echo(str(folder / p["name"]))
    for k in ("proof", "layout"):
        if k in m:
            echo(str(folder / m[k]["name"]))
    echo(str(job.plan.outputs.manifest))
