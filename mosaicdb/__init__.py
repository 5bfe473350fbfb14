"""mosaicdb: a retrieval-based photomosaic engine with a vector index.

The Python API in a few lines (see README, "Python API"):

    from mosaicdb import TileDB, Maker, MatchOptions, RenderOptions
    with TileDB.create("tiles.db") as db:
        db.ingest(["photos/"])
        result = Maker(db, MatchOptions(grid="64"), RenderOptions(tile_px=16)).make("target.jpg", "mosaic.png")
"""
from ._version import __version__

__all__ = ["TileDB", "Maker", "MatchOptions", "RenderOptions", "__version__"]


def __getattr__(name):
    # Each loads part of the stack (TileDB: numpy, sqlite, the store; Maker and the options: the
    # matching and rendering stack): only when asked for, so `import mosaicdb` stays light and
    # `python -m mosaicdb` reaches its Ctrl-C handling before anything heavy is imported.
    if name == "TileDB":
        from .store import TileDB
        return TileDB
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
