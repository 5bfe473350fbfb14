"""`mosaic serve`: the zoomable viewer of a mosaic, on a local HTTP server."""
from __future__ import annotations

import json
import webbrowser

import click

from mosaicdb.recursive.options import DEFAULT_GRID, MAX_DEPTH
from mosaicdb.serve import Viewer, host_warning, make_server
from mosaicdb.serve.rendered import DEFAULT_CACHE

from .common import echo, given_db, json_option, saved_db_option


@click.command("serve")
@click.argument("mosaic", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the mosaic and its tiles' originals.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--allow-host", "allow_hosts", multiple=True,
              help="Another Host name to answer to (e.g. the name a proxy or other machines use); repeatable.")
@saved_db_option
@click.option("--no-open", is_flag=True, help="Do not open a browser tab.")
@click.option("--osd-dir", type=click.Path(file_okay=False), default=None, envvar="MOSAICDB_OPENSEADRAGON",
              show_envvar=True, help="OpenSeadragon's build folder [default: the copy installed with mosaicdb, "
                                     "else node_modules/ of a mosaicdb checkout].")
@click.option("--cache", default=DEFAULT_CACHE, show_default=True,
              help="Rendered tiles kept in memory: a size (256M, 1G) or a number of tiles (5000t).")
@click.option("--recursive", "depth", default=0, show_default=True, type=int,
              help=f"Below the mosaic's deepest level, every tile turns into a mosaic of itself, this many "
                   f"times over (0-{MAX_DEPTH}); sub-mosaics are matched on first view and cached in DB/recursive/.")
@click.option("--recursive-grid", default=DEFAULT_GRID, show_default=True, type=int,
              help="Cells across each sub-mosaic (a power of two).")
@click.option("--tile-px", type=int, default=None,
              help="Pixels per cell when serving an assignment [default: as it was saved].")
@json_option
def serve_cmd(mosaic, host, port, allow_hosts, db_path, no_open, osd_dir, cache, depth, recursive_grid, tile_px,
              as_json):
    """Serve MOSAIC (.tif, .dzi, .png/.jpg or .mosaic.json) as a zoomable page; click a tile for its origin.

    Reads the assignment saved beside MOSAIC (MOSAIC.mosaic.json/.npz) and its tile database;
    tiles of a pyramidal TIFF are sent straight from the file. Given the assignment itself, no
    image is needed: every tile is rendered on request (and kept, up to --cache). Stop with
    Ctrl-C. With --json, the first line on stdout is the server's address and the mosaic's
    size, as JSON.

    Example:

    \b
        mosaic serve print.tif
        mosaic serve mosaic.mosaic.json --recursive 2 --cache 512M
        mosaic serve mosaic.jpg --port 0 --no-open
    """
    warning = host_warning(host)
    if warning:
        echo(f"warning: {warning}", err=True)
    viewer = Viewer(mosaic, **given_db(), osd_dir=osd_dir, cache=cache, recursive=depth,
                    recursive_grid=recursive_grid, tile_px=tile_px)
    try:
        httpd = make_server(viewer, host, port, allow_hosts=allow_hosts)
        if as_json:
            echo(json.dumps({"url": httpd.url, "mosaic": mosaic, "width": viewer.source.width,
                                   "height": viewer.source.height, "cols": viewer.api.saved.cols,
                                   "rows": viewer.api.saved.rows}))
        else:
            echo(f"Serving {mosaic} ({viewer.source.width}x{viewer.source.height} px, "
                       f"{viewer.api.saved.cols}x{viewer.api.saved.rows} cells) at {httpd.url}  (Ctrl-C to stop)")
        if not no_open:
            webbrowser.open(httpd.url)
        try:
            httpd.serve_forever()  # Ctrl-C: the root group prints "Interrupted." and exits 130
        finally:
            httpd.server_close()
    finally:
        viewer.close()
