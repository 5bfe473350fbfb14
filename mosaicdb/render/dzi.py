"""DeepZoom (DZI) output: NAME.dzi (XML) and NAME_files/<level>/<col>_<row>.<ext>, written
straight from the pyramid renderer; level 0 is 1 x 1 px, the top level is full size."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import imagecodecs

from .codecs import png_encode
from .pyramid import TILE, PyramidRenderer

DZI_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n'
           '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" TileSize="{tile}" Overlap="0" Format="{fmt}">\n'
           '  <Size Width="{w}" Height="{h}"/>\n</Image>\n')


def dzi_files_dir(dzi_path: Path) -> Path:
    return dzi_path.with_name(dzi_path.stem + "_files")


def write_dzi(pyr: PyramidRenderer, dzi_path: Path, codec, quality: int, on_tile=None) -> None:
    """Render into a temporary folder, then swap it in; the .dzi is written last (atomically)."""
    dzi_path = Path(dzi_path)
    final = dzi_files_dir(dzi_path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    ext = codec.dzi_ext
    if ext == "jpeg":
        def enc(a):
            return imagecodecs.jpeg8_encode(a, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))
    else:
        enc = png_encode
    top = len(pyr.levels) - 1
    try:
        for lv in pyr.levels:
            d = tmp / str(top - lv.index)
            d.mkdir(parents=True)
            tiles = pyr.encoded_tiles(lv, enc, pad=False, on_tile=on_tile)
            for ty in range(lv.tiles_down):
                for tx in range(lv.tiles_across):
                    (d / f"{tx}_{ty}.{ext}").write_bytes(next(tiles))
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        lv0 = pyr.levels[0]
        xml = DZI_XML.format(tile=TILE, fmt=ext, w=lv0.width, h=lv0.height)
        part = dzi_path.with_name(f".{dzi_path.name}.{os.getpid()}.tmp")
        part.write_text(xml)
        os.replace(part, dzi_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
