"""`mosaic make --recursive DEPTH` (issue 15): every tile replaced by its own sub-mosaic in one
static output, the same picture the viewer draws at its deepest level; refused beyond 65536 px."""
from __future__ import annotations

import numpy as np
import pytest
from clirun import invoke_cli
from PIL import Image

from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.recursive import RecursiveOptions
from mosaicdb.recursive.submosaic import SubMosaics
from mosaicdb.render.options import RenderOptions
from test_serve import Served, block_error, decode_jpeg, pytestmark  # noqa: F401 (mark)
from test_serve_rendered import made  # noqa: F401 (fixture)

T, G = 16, 4


@pytest.fixture(scope="module")
def static(made, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("makerec")
    common = ["make", "--db", str(made["db"]), str(made["root"] / "target.png"), "--grid", "6x4", "--tile-px", str(T),
              "--min-distance", "1", "-q"]
    invoke_cli(*common, "--out", str(out / "base.png"))
    invoke_cli(*common, "--out", str(out / "rec.png"), "--recursive", "1", "--recursive-grid", str(G))
    return out


def test_every_cell_is_its_tiles_sub_mosaic(made, static):  # noqa: F811
    base, flat = asg.load(static / "base.png"), asg.load(static / "rec.png")
    assert (flat.cols, flat.rows) == (6 * G, 4 * G)
    assert flat.meta.extra["recursive"] == {"depth": 1, "grid": G, "cells": [6, 4], "sub_mosaics": len(np.unique(base.tile_ids))}
    assert Image.open(static / "rec.png").size == (6 * G * T, 4 * G * T)
    with TileDB.open(made["db"], readonly=True) as db:
        subs = SubMosaics(db, base, RenderOptions(tile_px=T), RecursiveOptions(depth=1, grid=G))
        for r in range(4):
            for c in range(6):
                sub = subs.node(int(base.tile_ids[r, c])).cells.saved
                block = flat.tile_ids[r * G:(r + 1) * G, c * G:(c + 1) * G]
                assert np.array_equal(block, sub.tile_ids) and base.tile_ids[r, c] not in block
                assert np.array_equal(flat.target_mean[r * G:(r + 1) * G, c * G:(c + 1) * G], sub.target_mean)
        assert subs.loaded > 0 and subs.computed == 0   # made by `make`, read back from DB/recursive/
        assert flat.meta.tiles_digest == db.tiles_digest(flat.tile_ids)
        subs.close()


def test_the_static_output_is_the_viewers_deepest_level(static):
    png = np.asarray(Image.open(static / "rec.png").convert("RGB"))
    with Served(static / "base.mosaic.json", recursive=1, recursive_grid=G) as s:
        src = s.viewer.source
        assert (src.width, src.height) == (png.shape[1], png.shape[0])
        for col, row in [(0, 0), (1, 0)]:   # 384 x 256 px: two level tiles
            px = decode_jpeg(s.get(f"/mosaic_files/{src.max_level}/{col}_{row}.jpeg")[2])
            assert block_error(px, png[row * 256:(row + 1) * 256, col * 256:(col + 1) * 256]) < 4


def test_too_large_is_refused_before_any_work(made, tmp_path):  # noqa: F811
    out = tmp_path / "huge.tif"
    res = invoke_cli("make", "--db", str(made["db"]), str(made["root"] / "target.png"), "--grid", "64", "--tile-px",
                     "32", "--recursive", "1", "--recursive-grid", "64", "--out", str(out), code=2)
    line = res.output.strip()
    assert "131,072" in line and "65,536" in line and "mosaic serve" in line and "Traceback" not in line
    assert not list(tmp_path.iterdir())
    res = invoke_cli("make", "--db", str(made["db"]), str(made["root"] / "target.png"), "--recursive", "1",
                     "--recursive-grid", "6", "--out", str(out), code=2)
    assert "power of two" in res.output
