"""Recursive mosaics: every tile, zoomed into, is itself a mosaic of that tile from the same pool.

options.py (depth, sub-mosaic grid) -> submosaic.py (a tile's sub-assignment: matched once,
cached in memory and in DB/recursive/, checked like any untrusted assignment when read back) ->
flatten.py (all depths as one ordinary assignment, for `mosaic make --recursive`). The viewer
draws them on demand through `render.region.draw` (`serve/rendered.py`). Only the options are
imported here: the rest pulls in the matcher (numba, FAISS), which plain serving never needs.
"""
from .options import MAX_DEPTH, MAX_STATIC_PX, RecursiveOptions

__all__ = ["RecursiveOptions", "MAX_DEPTH", "MAX_STATIC_PX"]
