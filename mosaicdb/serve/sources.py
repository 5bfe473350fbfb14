"""Which tile source serves a mosaic file, chosen by its suffix."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .tiff_source import TiffSource
from .tilesource import DziFolderSource, ImageSource, TileSource


def open_source(path) -> TileSource:
    """The tile source for a mosaic output, chosen by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist (expected a mosaic: .tif, .dzi, .png, .jpg or .webp)")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return TiffSource(path)
    if suffix == ".dzi":
        return DziFolderSource(path)
    if suffix in (".png", ".jpg", ".jpeg", ".webp"):
        return ImageSource(path)
    raise UsageError(f"{path}: cannot serve {suffix or 'a file without suffix'}; use a mosaic written as "
                     ".tif, .dzi, .png, .jpg or .webp")
