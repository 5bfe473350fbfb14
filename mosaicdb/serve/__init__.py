"""`mosaic serve`: a local zoomable viewer of a mosaic that shows where every tile came from.

server.py (HTTP, routes) -> tilesource.py / tiff_source.py (DeepZoom tiles of a stored output),
rendered.py (tiles drawn on request from an assignment, recursive sub-mosaics below) and api.py
(cells, paths into sub-mosaics, originals); assets.py holds the page (static/) and OpenSeadragon
from npm.
"""
from .server import Viewer, host_warning, make_server, serve_in_thread
from .sources import open_source
from .tilesource import BadRequest, NotFound, RequestError

__all__ = ["Viewer", "make_server", "serve_in_thread", "host_warning", "open_source", "RequestError",
           "BadRequest", "NotFound"]
