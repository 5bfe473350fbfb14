"""mosaicdb: a retrieval-based photomosaic engine with a vector index."""
from .store import TileDB  # noqa: F401

__version__ = "0.1.0"
