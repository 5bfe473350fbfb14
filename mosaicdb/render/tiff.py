"""Pyramidal BigTIFF, tiled 256 x 256, every level rendered from the assignment.

Default layout: reduced levels as separate pages with SubFileType 1 (OpenSlide, libvips read
the pyramid); `ome=True`: reduced levels as SubIFDs of the first page (Bio-Formats/QuPath).
Tiles reach tifffile already encoded, so its own buffering holds bytes, not pixels.

Reproducible: every page embeds the fixed sRGB profile (`mosaicdb.srgb`); nothing in the file
depends on the time or on other libraries' versions (no DateTime tag; Software, and with OME
the Creator, is "mosaicdb VERSION"; the OME UUID is derived from the assignment instead of
drawn at random), so the same assignment and options give the same bytes.
"""
from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import tifffile

from .._version import __version__
from ..srgb import srgb_icc
from .pyramid import TILE, PyramidRenderer

BUFFERSIZE = 16 << 20
SOFTWARE = f"mosaicdb {__version__}"   # no date, no library versions: same input, same bytes


def content_uuid(pyr: PyramidRenderer, codec) -> str:
    """A UUID that names what the file holds (OME wants one): the same for the same assignment,
    cell size, levels and codec, where tifffile would draw a new one at random."""
    h = hashlib.sha256(pyr.saved.tile_ids.tobytes())
    h.update(repr((pyr.saved.tile_ids.shape, pyr.T, [(lv.width, lv.height) for lv in pyr.levels],
                   codec.name, sorted(codec.tiff.items()))).encode())
    return str(uuid.UUID(bytes=h.digest()[:16], version=5))


def write_pyramid_tiff(pyr: PyramidRenderer, tmp_path: Path, codec, *, ome: bool = False,
                       dpi: float | None = None, on_tile=None) -> None:
    levels = pyr.levels
    with tifffile.TiffWriter(tmp_path, bigtiff=True, ome=ome) as tw:
        for lv in levels:
            kw = dict(shape=(lv.height, lv.width, 3), dtype="uint8", tile=(TILE, TILE), buffersize=BUFFERSIZE,
                      iccprofile=srgb_icc(), software=SOFTWARE, datetime=None, **codec.tiff)
            if dpi:
                kw.update(resolution=(dpi / 2 ** lv.index, dpi / 2 ** lv.index), resolutionunit="INCH")
            if ome:
                kw["metadata"] = ({"axes": "YXS", "Creator": SOFTWARE, "UUID": content_uuid(pyr, codec)}
                                  if lv.index == 0 else None)
                if lv.index == 0 and len(levels) > 1:
                    kw["subifds"] = len(levels) - 1
            else:
                kw["metadata"] = None
                if lv.index == 0:
                    kw["description"] = "mosaicdb photomosaic"
            if lv.index > 0:
                kw["subfiletype"] = 1
            tw.write(pyr.encoded_tiles(lv, codec.encode, pad=True, on_tile=on_tile), **kw)
