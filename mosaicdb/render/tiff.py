"""Pyramidal BigTIFF, tiled 256 x 256, every level rendered from the assignment.

Default layout: reduced levels as separate pages with SubFileType 1 (OpenSlide, libvips read
the pyramid); `ome=True`: reduced levels as SubIFDs of the first page (Bio-Formats/QuPath).
Tiles reach tifffile already encoded, so its own buffering holds bytes, not pixels.
"""
from __future__ import annotations

from pathlib import Path

import tifffile

from .pyramid import TILE, PyramidRenderer

BUFFERSIZE = 16 << 20


def write_pyramid_tiff(pyr: PyramidRenderer, tmp_path: Path, codec, *, ome: bool = False,
                       dpi: float | None = None, on_tile=None) -> None:
    levels = pyr.levels
    with tifffile.TiffWriter(tmp_path, bigtiff=True, ome=ome) as tw:
        for lv in levels:
            kw = dict(shape=(lv.height, lv.width, 3), dtype="uint8", tile=(TILE, TILE), buffersize=BUFFERSIZE,
                      **codec.tiff)
            if dpi:
                kw.update(resolution=(dpi / 2 ** lv.index, dpi / 2 ** lv.index), resolutionunit="INCH")
            if ome:
                kw["metadata"] = {"axes": "YXS"} if lv.index == 0 else None
                if lv.index == 0 and len(levels) > 1:
                    kw["subifds"] = len(levels) - 1
            else:
                kw["metadata"] = None
                if lv.index == 0:
                    kw["description"] = "mosaicdb photomosaic"
            if lv.index > 0:
                kw["subfiletype"] = 1
            tw.write(pyr.encoded_tiles(lv, codec.encode, pad=True, on_tile=on_tile), **kw)
