"""mosaicdb: a retrieval-based photomosaic engine with a vector index.

The Python API in a few lines (see README, "Python API"):

    from mosaicdb import TileDB, Maker, MatchOptions, RenderOptions
    with TileDB.create("tiles.db") as db:
        db.ingest(["photos/"])
        result = Maker(db, MatchOptions(grid="64"), RenderOptions(tile_px=16)).make("target.jpg", "mosaic.png")
"""
from ._version import __version__
from .store import TileDB

__all__ = ["TileDB", "Maker", "MatchOptions", "RenderOptions", "__version__"]


def __getattr__(name):
    # Maker and the options load the matching and rendering stack: only when asked for, so
    # `import mosaicdb` (and the CLI's start) stays light.
    if name == "Maker":
        from .make import Maker
        return Maker
    if name == "MatchOptions":
        from .match.options import MatchOptions
        return MatchOptions
    if name == "RenderOptions":
        from .render.options import RenderOptions
        return RenderOptions
    raise AttributeError(f"module 'mosaicdb' has no attribute {name!r}")
