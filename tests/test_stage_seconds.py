"""Where the time goes, as reported to benchmarks (issue 17): a print's render/encode/write
split and matching's widening searches."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mosaicdb.match.grid import CellData, make_grid
from mosaicdb.match.matcher import match
from mosaicdb.match.options import MatchOptions
from mosaicdb.printing import PrintOptions, write_print
from mosaicdb.printing import tiffstrips
from mosaicdb.render.options import RenderOptions
from test_pyramid import random_assignment


@pytest.mark.parametrize("workers", [1, 2])
def test_print_reports_render_encode_and_write_seconds(synthetic_db, tmp_path, monkeypatch, workers):
    encoded = []
    real = tiffstrips.encode_strip

    def counting(rows, compression):
        encoded.append(rows.shape[0])
        return real(rows, compression)

    monkeypatch.setattr(tiffstrips, "encode_strip", counting)
    saved = random_assignment(synthetic_db, 14, 10, seed=7)
    opts = PrintOptions(size="20cm", dpi=120, compression="lzw", render=RenderOptions(workers=workers))
    m = write_print(synthetic_db, saved, opts, tmp_path / "p.tif")
    s = m["stage_seconds"]
    assert set(s) == {"render_cpu", "encode_cpu", "write", "wait", "workers"} and s["workers"] == workers
    assert s["render_cpu"] > 0 and s["encode_cpu"] > 0 and s["write"] > 0 and s["wait"] >= 0
    assert sum(encoded) == m["size_px"][1]          # every row encoded once, through the timed path
    assert "stage_seconds" not in json.loads((tmp_path / "p.print.json").read_text())  # the file stays reproducible


def test_matching_reports_its_widening_searches(synthetic_db):
    """A pool too small for the repeat radius forces widening: its searches are counted and
    timed inside `assign`; without pressure there are none."""
    rng = np.random.default_rng(0)
    grid = make_grid(160, 160, "20x20")
    feats = np.repeat(rng.normal(50, 5, (1, synthetic_db.dim)).astype(np.float32), grid.cells, axis=0)
    cells = CellData(feats, np.zeros((20, 20, 3), np.float32), np.zeros((20, 20, 3), np.float32))
    pressed = match(synthetic_db, cells, grid, MatchOptions(grid="20x20", k=4, min_distance=2))
    free = match(synthetic_db, cells, grid, MatchOptions(grid="20x20", k=4, min_distance=0))
    assert pressed.assignment.widened_cells > 0 and pressed.seconds["widen_calls"] > 0
    assert 0 < pressed.seconds["widen_search"] <= pressed.seconds["assign"]
    assert free.seconds["widen_calls"] == 0 and free.seconds["widen_search"] == 0
