"""The tile layout every pyramid output and the viewer share: 256 px tiles, no overlap, and the
DeepZoom geometry (level 0 is 1 x 1 px, the top level full size, level L the full image divided
by 2^(top - L), rounded up).

>>> dzi_levels(1000, 600)
10
>>> dzi_level_size(1000, 600, 10, 9)
(500, 300)
>>> dzi_level_size(1000, 600, 10, 0)
(1, 1)
"""
from __future__ import annotations

import math
from pathlib import Path

TILE = 256

_DZI_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" TileSize="{tile}" Overlap="0" Format="{fmt}">\n'
            '  <Size Width="{w}" Height="{h}"/>\n</Image>\n')
DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"


def dzi_xml(width: int, height: int, fmt: str) -> str:
    """The .dzi description of a width x height image in TILE px tiles of format `fmt`."""
    return _DZI_XML.format(tile=TILE, fmt=fmt, w=width, h=height)


def dzi_files_dir(dzi_path) -> Path:
    """NAME_files/ beside NAME.dzi: where the level folders go."""
    dzi_path = Path(dzi_path)
    return dzi_path.with_name(dzi_path.stem + "_files")


def dzi_levels(width: int, height: int) -> int:
    """Index of the full-size (top) DZI level."""
    return math.ceil(math.log2(max(width, height, 1)))


def dzi_level_size(width: int, height: int, top: int, level: int) -> tuple[int, int]:
    """Pixels of DZI level `level` of a width x height image whose top level is `top`."""
    s = 2 ** (top - level)
    return max(1, -(-width // s)), max(1, -(-height // s))


def tiles_across(pixels: int) -> int:
    return -(-pixels // TILE)
