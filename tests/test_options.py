"""Options flow once: validated when made (before any target is decoded), merged with saved ones
in one place, one print-size rule for every command, and the CLI's exit codes."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from clirun import invoke_cli
from mosaicdb import assignment as asg
from mosaicdb.errors import UsageError
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions
from mosaicdb.render.printsize import fit_cells, parse_print_size
from test_pyramid import random_assignment


@pytest.fixture
def target(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "t.png"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(p)
    return p


@pytest.mark.parametrize("args, option", [
    (["--min-distance", "-1"], "--min-distance"),
    (["--max-uses", "-3"], "--max-uses"),
    (["--usage-penalty", "nan"], "--usage-penalty"),
    (["--usage-penalty", "inf"], "--usage-penalty"),
    (["-k", "0"], "--candidates"),
    (["--seed", "-5"], "--seed"),
    (["--grid", "abc"], "--grid"),
    (["--tile-px", "0"], "--tile-px"),
    (["--color-strength", "1.5"], "--color-strength"),
    (["--color-strength", "nan"], "--color-strength"),
    (["--quality", "0"], "--quality"),
    (["--dpi", "inf", "--print-size", "1m"], "--dpi"),
    (["--print-size", "3 parsecs"], "--print-size"),
    (["--cache", "lots"], "--cache"),
    (["--unique", "--max-uses", "2"], "--max-uses"),
])
def test_bad_options_fail_before_the_target_is_read(synthetic_db, target, tmp_path, monkeypatch, args, option):
    import mosaicdb.make as make
    import mosaicdb.store.db as store

    def must_not_run(*a, **k):
        raise AssertionError("options must be refused before this")

    monkeypatch.setattr(make, "load_target", must_not_run)
    monkeypatch.setattr(store.TileDB, "open", must_not_run)
    t0 = time.perf_counter()
    res = invoke_cli("make", "--db", synthetic_db.path, target, "--out", tmp_path / "m.png", *args, code=2)
    assert time.perf_counter() - t0 < 0.2
    assert option in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.png").exists()


def test_print_size_is_one_rule_everywhere(synthetic_db, tmp_path):
    """120x80cm on a 100x100 grid: the largest square inside is 80x80 cm for render --print-size,
    plan and print alike (render used to say 120x120)."""
    saved = random_assignment(synthetic_db, 100, 100)
    out = tmp_path / "m.png"
    asg.save(out, saved)
    j = asg.sidecar_paths(out)[0]
    t, dpi, warnings = fit_cells(100, 100, parse_print_size("120x80cm"), 10)
    assert (t, round(100 * t / dpi * 2.54, 6)) == (3, 80.0) and any("inside the requested" in w for w in warnings)
    plan = json.loads(invoke_cli("plan", j, "--out", tmp_path / "x.tif", "--print-size", "120x80cm", "--dpi", "10",
                                 "--json", code=0).stdout)
    assert plan["print_size_cm"] == [80.0, 80.0] and plan["tile_px"] == 3
    res = invoke_cli("render", j, "--out", tmp_path / "r.tif", "--print-size", "120x80cm", "--dpi", "10",
                     "-q", "--json", code=0)
    assert json.loads(res.stdout)["warnings"] and "inside the requested" in res.stderr
    import tifffile
    with tifffile.TiffFile(tmp_path / "r.tif") as tf:
        p = tf.pages[0]
        x = p.tags["XResolution"].value
        assert p.imagewidth == 300 and round(p.imagewidth / (x[0] / x[1]) * 2.54, 3) == 80.0
    pplan = json.loads(invoke_cli("plan", j, "--print", "--size", "120x80cm", "--dpi", "10", "--out",
                                  tmp_path / "p.tif", "--json", code=0).stdout)
    assert pplan["geometry"]["cell_px"] == 3 and pplan["geometry"]["trim_mm"] == [800.0, 800.0]


def test_plan_applies_exif_rotation_like_make(synthetic_db, tmp_path):
    """An orientation-6 JPEG stored 160x120 is a 120x160 portrait: plan and make agree on 12x16."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    img.save(p, exif=exif.tobytes())
    plan = json.loads(invoke_cli("plan", p, "--out", tmp_path / "x.png", "--grid", "16", "--tile-px", "4",
                                 "--json", code=0).stdout)
    assert (plan["cols"], plan["rows"]) == (12, 16)
    invoke_cli("make", "--db", synthetic_db.path, p, "--out", tmp_path / "m.png", "--grid", "16", "--tile-px", "4",
               "-q", code=0)
    saved = asg.load(tmp_path / "m.png")
    assert (saved.cols, saved.rows) == (12, 16)


def test_saved_options_merge_in_one_place(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 6, 4)
    saved.meta = asg.AssignmentMeta.from_json({**saved.meta.to_json(),
                                               "render": RenderOptions(tile_px=8, color="meanstd",
                                                                       color_strength=0.8).to_json()})
    out = tmp_path / "m.png"
    asg.save(out, saved)
    j = asg.sidecar_paths(out)[0]
    r = RenderOptions.from_saved(saved.meta.render, color_strength=0.3)
    assert (r.tile_px, r.color, r.color_strength) == (8, "meanstd", 0.3)  # only what was given changes
    plan = json.loads(invoke_cli("plan", j, "--print", "--size", "5cm", "--dpi", "50", "--out", tmp_path / "p.tif",
                                 "--json", code=0).stdout)
    assert plan["files"]  # planned with the saved colour settings, not a forced strength
    with pytest.raises(UsageError, match="saved render options are invalid"):
        RenderOptions.from_saved({"tile_px": 0}, source="x.mosaic.json")


def test_options_are_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        MatchOptions("64")  # positional: refused
    opts = RenderOptions(color="mean")
    with pytest.raises(AttributeError):
        opts.color = "none"


# ---- exit codes --------------------------------------------------------------------------------
def test_exit_codes(synthetic_db, target, tmp_path, monkeypatch):
    assert invoke_cli("make", "--db", synthetic_db.path, target, "--out", tmp_path / "a.png", "--grid", "x").exit_code == 2
    assert invoke_cli("db", "stats", tmp_path / "nowhere.db").exit_code == 1           # runtime: nothing there
    assert invoke_cli("make", "--db", synthetic_db.path, target).exit_code == 2         # click: --out missing
    import mosaicdb.make as make
    monkeypatch.setattr(make, "cell_data", lambda *a, **k: 1 / 0)
    with pytest.raises(pytest.fail.Exception, match="internal error"):  # invoke_cli refuses bugs
        invoke_cli("make", "--db", synthetic_db.path, target, "--out", tmp_path / "b.png", "-q")
    from click.testing import CliRunner

    from mosaicdb_cli.main import cli
    res = CliRunner().invoke(cli, ["make", "--db", str(synthetic_db.path), str(target), "--out",
                                   str(tmp_path / "c.png"), "-q"])
    assert res.exit_code == 70 and "ZeroDivisionError" in res.output and "please report" in res.output

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(make, "cell_data", interrupted)
    res = CliRunner().invoke(cli, ["make", "--db", str(synthetic_db.path), str(target), "--out",
                                   str(tmp_path / "d.png"), "-q"])
    assert res.exit_code == 130 and "Interrupted" in res.output
    assert not [p for p in tmp_path.glob("?.png") if p.name != "t.png"] and not list(tmp_path.glob(".*tmp*"))
