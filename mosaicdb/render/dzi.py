"""DeepZoom (DZI) output: NAME.dzi (XML) and NAME_files/<level>/<col>_<row>.<ext>, written
straight from the pyramid renderer; level 0 is 1 x 1 px, the top level is full size."""
from __future__ import annotations

from pathlib import Path

from ..io import AtomicFiles
from .codecs import png_encode
from .layout import dzi_files_dir, dzi_xml
from .pyramid import PyramidRenderer


def write_dzi(pyr: PyramidRenderer, dzi_path: Path, codec, group: AtomicFiles, on_tile=None) -> None:
    """Render every level into the group's temporary NAME_files folder and write NAME.dzi
    beside it; both are renamed into place when the group commits (the .dzi last)."""
    dzi_path = Path(dzi_path)
    ext = codec.dzi_ext
    enc = codec.encode if ext == "jpeg" else png_encode
    top = len(pyr.levels) - 1
    tmp = group.temp(dzi_files_dir(dzi_path), folder=True)
    for lv in pyr.levels:
        d = tmp / str(top - lv.index)
        d.mkdir(parents=True)
        tiles = pyr.encoded_tiles(lv, enc, pad=False, on_tile=on_tile)
        for ty in range(lv.tiles_down):
            for tx in range(lv.tiles_across):
                (d / f"{tx}_{ty}.{ext}").write_bytes(next(tiles))
    lv0 = pyr.levels[0]
    group.temp(dzi_path).write_text(dzi_xml(lv0.width, lv0.height, ext))
