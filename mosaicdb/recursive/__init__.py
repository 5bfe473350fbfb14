"""Recursive mosaics: every tile, zoomed into, is itself a mosaic of that tile from the same pool.

options.py (depth, sub-mosaic grid) -> submosaic.py (a tile's sub-assignment: matched once,
cached in memory and in DB/recursive/, checked like any untrusted assignment when read back) ->
flatten.py (all depths as one ordinary assignment, for `mosaic make --recursive`). The viewer
draws them on demand through `render.region.draw` (`serve/rendered.py`).
"""
from .options import MAX_DEPTH, MAX_STATIC_PX, RecursiveOptions
from .submosaic import SubMosaics, cache_key, sub_match_options

__all__ = ["RecursiveOptions", "SubMosaics", "MAX_DEPTH", "MAX_STATIC_PX", "cache_key", "sub_match_options"]
