"""`mosaic make` end to end, through `Maker` and through the CLI: outputs and sidecars,
re-rendering, colour transfer, repeat options, seeds, many targets, bad input, `mosaic eval`,
a real Kodak-vs-CIFAR-10 run and the offline demo."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from clirun import invoke_cli
from PIL import Image

from conftest import synthetic_image
from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.evaluate import evaluate, repeat_stats
from mosaicdb.index.faiss_index import VectorIndex
from mosaicdb.make import Maker
from mosaicdb.match.grid import load_target
from mosaicdb.match.options import DEFAULT_DITHER, MatchOptions
from mosaicdb.render.options import RenderOptions
from mosaicdb.render.rows import render_array

TILE_PX = 8
GRID = "16"              # on the 120 x 90 target: 16 x 12 cells of 7.5 px, nothing cropped
COLS, ROWS = 16, 12


def mosaic(*args):
    return invoke_cli(*args)


def ok(res):
    assert res.exit_code == 0, f"exit {res.exit_code}: {res.output}"
    return res


def fails(res, *words):
    """A one-line error on stderr naming the problem, non-zero exit, no traceback."""
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert res.stdout == ""
    return lines[0]


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def write_target(path: Path, w: int = 120, h: int = 90, seed: int = 0) -> Path:
    """A target with large structure: colour blocks with a disc on top."""
    rng = np.random.default_rng(seed)
    blocks = synthetic_image(rng, w, h, "blocks").astype(np.float32)
    disc = synthetic_image(rng, w, h, "disc").astype(np.float32)
    Image.fromarray(((blocks + disc) / 2).astype(np.uint8)).save(path)
    return path


def cell_means(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    t = img.shape[0] // rows
    return img.reshape(rows, t, cols, t, 3).astype(np.float64).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def made(synthetic_db, tmp_path_factory):
    """One `mosaic make` run through the CLI (PNG, 8 px tiles, seed 3), shared read-only."""
    d = tmp_path_factory.mktemp("made")
    target = write_target(d / "target.png")
    out_dir = d / "out"
    out_dir.mkdir()
    out = out_dir / "m.png"
    res = ok(mosaic("make", "--db", synthetic_db.path, target, "--out", out, "--grid", GRID,
                    "--tile-px", TILE_PX, "--seed", 3, "-q"))
    return {"db": synthetic_db, "target": target, "out": out, "dir": out_dir, "res": res}


# ---- outputs and what is saved -------------------------------------------------------------------
def test_make_writes_image_assignment_and_metrics(made):
    out = made["out"]
    assert files(made["dir"]) == ["m.metrics.json", "m.mosaic.json", "m.mosaic.npz", "m.png"]
    assert made["res"].stdout.strip() == str(out)
    img = np.asarray(Image.open(out))
    assert img.shape == (ROWS * TILE_PX, COLS * TILE_PX, 3)

    m = json.loads((made["dir"] / "m.metrics.json").read_text())
    assert 8 < m["psnr64"] < 60 and 0 < m["ssim64"] <= 1 and 8 < m["psnr_cell"] < 80
    assert set(m["pyramid_mse"]) == {"1", "2", "3", "4"}
    assert all(0 < v < 0.2 for v in m["pyramid_mse"].values())
    rep = m["repeats"]
    assert rep["cells"] == m["cells"] == ROWS * COLS
    assert 1 < rep["distinct_tiles"] <= ROWS * COLS and rep["max_uses"] >= 1
    assert rep["min_repeat_distance"] is None or rep["min_repeat_distance"] > 2  # default --min-distance 2
    assert {"load_target", "cell_features", "search", "assign", "render", "evaluate", "total"} <= set(m["seconds"])
    assert m["output"]["path"] == str(out) and m["output"]["bytes"] == out.stat().st_size

    # the metrics are those of the written pixels (eval renders at 8 px per cell too)
    saved = asg.load(out)
    target = load_target(made["target"]).image
    ref = evaluate(target, img, ROWS, COLS, saved.tile_ids)
    for k in ("psnr64", "ssim64", "psnr_cell"):
        assert m[k] == pytest.approx(ref[k], abs=1e-9)
    assert m["pyramid_mse"] == pytest.approx(ref["pyramid_mse"], abs=1e-12)
    assert rep == ref["repeats"]


def test_saved_assignment_holds_the_resolved_options(made):
    out, db = made["out"], made["db"]
    meta = json.loads((made["dir"] / "m.mosaic.json").read_text())
    assert meta["format_version"] == asg.FORMAT_VERSION
    assert meta["grid"] == {"cols": COLS, "rows": ROWS, "crop": [0, 0, 120, 90], "spec": GRID}
    m = meta["match"]
    assert m == {"grid": GRID, "k": 32, "seed": 3, "min_distance": 2, "max_uses": 0, "usage_penalty": 0.0,
                 "order": "regret", "refine_passes": 4, "refine_seconds": 10.0,
                 "unique": False, "device": "auto", "dither": DEFAULT_DITHER}  # as applied: the defaults made concrete
    assert meta["render"]["tile_px"] == TILE_PX and meta["render"]["color"] == "none"
    assert meta["db"] == str(Path(db.path).resolve()) and meta["db_version"] == db.version
    t = meta["target"]
    assert t["path"] == str(made["target"].resolve()) and t["size"] == [120, 90]
    assert t["sha256"] == hashlib.sha256(made["target"].read_bytes()).hexdigest()
    assert meta["output"] == str(out.resolve())

    saved = asg.load(made["dir"] / "m.mosaic.npz")
    assert saved.tile_ids.shape == (ROWS, COLS) and saved.tile_ids.dtype == np.int64
    assert np.isin(saved.tile_ids, db.ids()).all()
    assert saved.cost.shape == (ROWS, COLS) and saved.cost.dtype == np.float32 and (saved.cost >= 0).all()
    assert saved.target_mean.shape == saved.target_std.shape == (ROWS, COLS, 3)
    # the saved target statistics are the target's: its cells area-reduced to one pixel each
    target = load_target(made["target"]).image
    one_px = cv2.resize(target, (COLS, ROWS), interpolation=cv2.INTER_AREA).astype(np.float64)
    assert np.abs(saved.target_mean - one_px).max() < 2.5
    assert (saved.target_std >= 0).all() and saved.target_std.max() > 5  # some cells span edges


def test_tiny_pool_lowers_the_default_min_distance_and_says_so(new_db, synthetic_tiles, tmp_path):
    """9 tiles: the default distance 2 (5 x 5 windows) cannot hold; 1 can, whatever the cell
    order (a 3 x 3 window blocks at most 8 tiles), so the default drops to 1 and every seed works."""
    db = new_db()
    db.ingest(sorted(synthetic_tiles.glob("*.png"))[:9], workers=1)
    assert len(db) == 9
    db.close()
    target = write_target(tmp_path / "t.png")
    for seed in range(6):
        res = ok(mosaic("make", "--db", db.path, target, "--out", tmp_path / f"m{seed}.png", "--grid", "12",
                        "--tile-px", 2, "--seed", seed, "-q"))
        assert "warning: the database has only 9 tiles: --min-distance lowered from 2 to 1" in res.stderr
        saved = asg.load(tmp_path / f"m{seed}.png")
        assert saved.meta.match["min_distance"] == 1
        assert any("lowered from 2 to 1" in w for w in json.loads(asg.metrics_path(tmp_path / f"m{seed}.png")
                                                                   .read_text())["warnings"])
        assert repeat_stats(saved.tile_ids)["min_repeat_distance"] >= 2
    # an explicit distance is kept as asked (and holds here)
    ok(mosaic("make", "--db", db.path, target, "--out", tmp_path / "e.png", "--grid", "12", "--tile-px", 2,
              "--min-distance", 0, "-q"))
    assert asg.load(tmp_path / "e.png").meta.match["min_distance"] == 0


# ---- re-rendering ------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["m.mosaic.json", "m.mosaic.npz", "m.png"])
def test_render_reproduces_the_make_output_exactly(made, tmp_path, source):
    out = tmp_path / "again.png"
    res = ok(mosaic("render", made["dir"] / source, "--out", out, "-q"))
    assert res.stdout.strip() == str(out)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(made["out"])))


@pytest.mark.parametrize("tile_px, name", [(16, "big.png"), (3, "odd.png"), (80, "orig.png"), (12, "small.jpg")])
def test_render_at_another_tile_size(made, tmp_path, tile_px, name):
    """16 px from thumbnails, 3 px by area reduction, 80 px from the originals (beyond the
    64 px thumbnails), and a JPEG."""
    out = tmp_path / name
    ok(mosaic("render", made["dir"] / "m.mosaic.json", "--tile-px", tile_px, "--out", out, "-q"))
    with Image.open(out) as im:
        assert im.size == (COLS * tile_px, ROWS * tile_px)
        img = np.asarray(im.convert("RGB"))
    # the same tiles in the same places: cell means agree with the 8 px make output
    ref = cell_means(np.asarray(Image.open(made["out"])), ROWS, COLS)
    assert np.abs(cell_means(img, ROWS, COLS) - ref).mean() < 4


@pytest.mark.parametrize("color", ["mean", "meanstd", "blend"])
def test_render_reproduces_colour_transfer(made, tmp_path, color):
    out = tmp_path / "m.png"
    ok(mosaic("make", "--db", made["db"].path, made["target"], "--out", out, "--grid", GRID,
              "--tile-px", TILE_PX, "--seed", 3, "--color", color, "--color-strength", 0.7, "-q"))
    saved = asg.load(out)
    assert (saved.meta.render["color"], saved.meta.render["color_strength"]) == (color, 0.7)
    ok(mosaic("render", tmp_path / "m.mosaic.json", "--out", tmp_path / "again.png", "-q"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(out)))
    # --color none on re-render gives back the plain tiles: the make output without transfer
    ok(mosaic("render", tmp_path / "m.mosaic.json", "--out", tmp_path / "plain.png", "--color", "none", "-q"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(made["out"])))


def test_render_after_tiles_were_removed(new_db, synthetic_tiles, tmp_path):
    db = new_db()
    db.ingest(sorted(synthetic_tiles.glob("*.png"))[:40], workers=1)
    target = write_target(tmp_path / "t.png")
    ok(mosaic("make", "--db", db.path, target, "--out", tmp_path / "m.png", "--grid", "8", "--tile-px", 4, "-q"))
    used = asg.load(tmp_path / "m.png").tile_ids
    assert db.remove(np.unique(used)[:3]) == 3
    before = files(tmp_path)
    line = fails(mosaic("render", tmp_path / "m.mosaic.json", "--out", tmp_path / "r.png", "-q"),
                 "3 tiles of this assignment are no longer in", "mosaic make")
    assert str(db.path) in line
    assert files(tmp_path) == before


# ---- colour transfer ---------------------------------------------------------------------------
def test_colour_modes_change_pixels_and_mean_moves_cells_to_the_target(made, tmp_path):
    db, target = made["db"], made["target"]
    runs = {}
    for color, strength in [("none", 0.5), ("mean", 0.5), ("mean", 1.0), ("meanstd", 0.5), ("blend", 0.5)]:
        maker = Maker(db, MatchOptions(grid=GRID, seed=3), RenderOptions(tile_px=TILE_PX, color=color,
                                                                          color_strength=strength))
        r = maker.make(target, tmp_path / f"{color}{strength}.png")
        runs[color, strength] = (asg.load(r.output), np.asarray(Image.open(r.output)), r.metrics)
    plain_ids = runs["none", 0.5][0].tile_ids
    plain = runs["none", 0.5][1]
    np.testing.assert_array_equal(plain, np.asarray(Image.open(made["out"])))
    for key, (saved, img, _) in runs.items():
        np.testing.assert_array_equal(saved.tile_ids, plain_ids)  # colour never changes the matching
        if key[0] != "none":
            assert np.abs(img.astype(int) - plain).mean() > 2, key

    goal = runs["none", 0.5][0].target_mean
    err = {k: np.abs(cell_means(v[1], ROWS, COLS) - goal).mean() for k, v in runs.items()}
    # a mean shift of strength s closes a fraction s of the gap (up to clipping at 0 and 255)
    assert err["none", 0.5] > 8
    assert err["mean", 0.5] == pytest.approx(0.5 * err["none", 0.5], rel=0.15)
    assert err["mean", 1.0] < 0.15 * err["none", 0.5]
    assert err["meanstd", 0.5] < 0.7 * err["none", 0.5] and err["blend", 0.5] < 0.7 * err["none", 0.5]
    # and the mosaic reads more like the target
    assert runs["mean", 1.0][2]["psnr_cell"] > runs["none", 0.5][2]["psnr_cell"] + 3


# ---- repeat control ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repeat_target(tmp_path_factory):
    return write_target(tmp_path_factory.mktemp("rep") / "t.png", seed=5)


def make_ids(db, target, out, *opts) -> tuple[np.ndarray, dict]:
    ok(mosaic("make", "--db", db.path, target, "--out", out, "--grid", "20", "--tile-px", 2, "-q", *opts))
    saved = asg.load(out)
    return saved.tile_ids, saved.meta.match


def test_unconstrained_matching_repeats_a_lot(synthetic_db, repeat_target, tmp_path):
    """The reference for the constraints below: without them, tiles repeat often and adjacent."""
    ids, res = make_ids(synthetic_db, repeat_target, tmp_path / "m.png", "--min-distance", 0)
    assert res["min_distance"] == 0
    s = repeat_stats(ids)
    assert s["cells"] == 300 and s["max_uses"] >= 8 and s["min_repeat_distance"] == 1


@pytest.mark.parametrize("opts, min_dist, max_uses", [
    (["--min-distance", 3], 3, 0),
    (["--min-distance", 0, "--max-uses", 2], 0, 2),
    (["--min-distance", 2, "--max-uses", 3], 2, 3),
    (["--min-distance", 0, "--max-uses", 1], 0, 1),   # 300 tiles, 300 cells: every tile once
    (["--min-distance", 1, "--usage-penalty", 4], 1, 0),
])
def test_repeat_options_hold_in_the_saved_assignment(synthetic_db, repeat_target, tmp_path, opts, min_dist, max_uses):
    ids, res = make_ids(synthetic_db, repeat_target, tmp_path / "m.png", *opts)
    assert (res["min_distance"], res["max_uses"]) == (min_dist, max_uses)
    s = repeat_stats(ids)
    assert s["min_repeat_distance"] is None or s["min_repeat_distance"] > min_dist
    if max_uses:
        assert s["max_uses"] <= max_uses
    assert np.isin(ids, synthetic_db.ids()).all()


def test_usage_penalty_spreads_tiles(synthetic_db, repeat_target, tmp_path):
    free, _ = make_ids(synthetic_db, repeat_target, tmp_path / "a.png", "--min-distance", 0)
    spread, res = make_ids(synthetic_db, repeat_target, tmp_path / "b.png", "--min-distance", 0,
                           "--usage-penalty", 5)
    assert res["usage_penalty"] == 5.0
    a, b = repeat_stats(free), repeat_stats(spread)
    assert b["max_uses"] < a["max_uses"] and b["distinct_tiles"] > a["distinct_tiles"]


def test_unique_uses_every_tile_at_most_once(synthetic_db, repeat_target, tmp_path):
    # 300 cells from exactly 300 tiles: only a perfect matching will do
    ids, res = make_ids(synthetic_db, repeat_target, tmp_path / "m.png", "--unique")
    assert res["unique"] and res["min_distance"] == 0
    assert np.unique(ids).size == ids.size == len(synthetic_db) == 300


def test_unique_with_too_few_tiles(synthetic_db, repeat_target, tmp_path):
    fails(mosaic("make", "--db", synthetic_db.path, repeat_target, "--out", tmp_path / "m.png",
                 "--grid", "30", "--unique", "-q"),
          "--unique needs at least 660 tiles, the database has 300", "coarser --grid")
    assert files(tmp_path) == []


def test_widening_through_an_ivf_index(new_db, synthetic_tiles, repeat_target, tmp_path):
    """An IVF index probing 1 of 7 lists returns a few dozen tiles a cell; --max-uses 2 on 300
    cells from 300 tiles uses most of them up, so many cells widen: every cell still gets a tile
    within the constraints, about as close as with exact (flat) search."""
    from mosaicdb.index import IndexOptions
    from mosaicdb.match.matcher import _wide_ivf_search
    db = new_db()
    db.ingest([synthetic_tiles], workers=1, update_index=False)
    db.build_index(IndexOptions(kind="ivf", nlist=8, nprobe=1))
    index = db.ensure_index()
    assert index.infos["kind"] == "ivf" and index.infos["params"]["nprobe"] == 1
    rng = np.random.default_rng(0)
    feats = np.asarray(db.features()[db.ids()])
    q = feats[rng.choice(len(feats), 40)] + rng.normal(0, 3, (40, feats.shape[1])).astype(np.float32)
    exclude = np.sort(rng.choice(db.ids(), 150, replace=False))
    d, i = _wide_ivf_search(index, q, 100, exclude)
    assert (i >= 0).all() and not np.isin(i, exclude).any()
    ed, ei = db.search(q, 100, exact=True, exclude=exclude)
    np.testing.assert_array_equal(i, ei)  # full rows forced probing every list: exact
    np.testing.assert_allclose(d, ed, rtol=1e-4, atol=1e-3)
    import faiss
    assert faiss.extract_index_ivf(index.index).nprobe == 1  # widening left the tuned nprobe alone

    maker = Maker(db, MatchOptions(grid="20", min_distance=1, max_uses=2), RenderOptions(tile_px=2))
    r = maker.make(repeat_target, tmp_path / "ivf.png")
    saved = asg.load(r.output)
    s = repeat_stats(saved.tile_ids)
    assert s["max_uses"] <= 2 and (s["min_repeat_distance"] or 9) > 1
    assert saved.meta.widened_cells > 30
    flat = Maker(with_flat_index(db), MatchOptions(grid="20", min_distance=1, max_uses=2),
                 RenderOptions(tile_px=2)).make(repeat_target, tmp_path / "flat.png")
    assert saved.cost.mean() <= 1.1 * asg.load(flat.output).cost.mean()


def with_flat_index(db):
    """The same tiles with an exact (flat) index."""
    from mosaicdb.index import IndexOptions
    db.build_index(IndexOptions(kind="flat"))
    return db


# ---- seeds -------------------------------------------------------------------------------------
def test_same_seed_same_mosaic_other_seed_other_mosaic(synthetic_db, repeat_target, tmp_path):
    def run(seed, name):
        r = Maker(synthetic_db, MatchOptions(grid="20", seed=seed), RenderOptions(tile_px=4)).make(
            repeat_target, tmp_path / name)
        return asg.load(r.output).tile_ids, r.output.read_bytes()

    a, a_png = run(7, "a.png")
    b, b_png = run(7, "b.png")
    c, _ = run(8, "c.png")
    np.testing.assert_array_equal(a, b)
    assert a_png == b_png
    assert (a != c).sum() > 10


# ---- many targets ------------------------------------------------------------------------------
def test_several_targets_and_folders_load_the_database_once(synthetic_db, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_target(a / "t1.png", seed=1)
    Image.open(write_target(a / "t2.png", seed=2)).convert("RGB").save(a / "t3.jpg", quality=90)
    (a / "t2.png").unlink()
    (a / "notes.txt").write_text("not an image")
    (a / "sub").mkdir()
    write_target(a / "sub" / "deep.png")  # folders are not searched recursively
    write_target(b / "t1.png", seed=4, w=90, h=120)  # same stem as a/t1.png, portrait

    opens, loads = [], []
    orig_open, orig_load = TileDB.open.__func__, VectorIndex.load.__func__
    monkeypatch.setattr(TileDB, "open", classmethod(lambda cls, *x, **k: (opens.append(x), orig_open(cls, *x, **k))[1]))
    monkeypatch.setattr(VectorIndex, "load", classmethod(lambda cls, *x, **k: (loads.append(x), orig_load(cls, *x, **k))[1]))

    out = tmp_path / "out" / "nested"
    res = ok(mosaic("make", "--db", synthetic_db.path, a, b / "t1.png", "--out", out, "--format", "png",
                    "--grid", 8, "--tile-px", 4, "-q"))
    assert len(opens) == 1 and len(loads) == 1
    assert res.stdout.split() == [str(out / "t1.png"), str(out / "t3.png"), str(out / "t1-2.png")]
    assert files(out) == sorted(f"{s}{ext}" for s in ("t1", "t3", "t1-2")
                                for ext in (".png", ".mosaic.json", ".mosaic.npz", ".metrics.json"))
    for stem, src, size in [("t1", a / "t1.png", (32, 24)), ("t3", a / "t3.jpg", (32, 24)),
                            ("t1-2", b / "t1.png", (24, 32))]:
        assert asg.load(out / f"{stem}.png").meta.target.path == str(src.resolve())
        assert Image.open(out / f"{stem}.png").size == size


def test_one_target_and_a_folder_out(synthetic_db, tmp_path):
    t = write_target(tmp_path / "photo.png")
    res = ok(mosaic("make", "--db", synthetic_db.path, t, "--out", tmp_path / "o", "--grid", 8, "--tile-px", 4, "-q"))
    assert res.stdout.strip() == str(tmp_path / "o" / "photo.jpg")
    assert Image.open(tmp_path / "o" / "photo.jpg").format == "JPEG"


def test_json_summary(synthetic_db, tmp_path):
    t = write_target(tmp_path / "photo.png")
    res = ok(mosaic("make", "--db", synthetic_db.path, t, "--out", tmp_path / "m.webp", "--grid", 8,
                    "--tile-px", 4, "--json", "-q"))
    (r,) = json.loads(res.stdout)
    assert r["output"] == str(tmp_path / "m.webp") and r["metrics"] == str(tmp_path / "m.metrics.json")
    assert r["psnr64"] == json.loads((tmp_path / "m.metrics.json").read_text())["psnr64"]


# ---- bad input -----------------------------------------------------------------------------------
BAD = {
    "unreadable target": (["{bad}", "--out", "{o}/m.png"], ["target", "bad.png", "not an image"]),
    "missing target": (["{o}/nope.png", "--out", "{o}/m.png"], ["nope.png does not exist"]),
    "folder without images": (["{empty}", "--out", "{o}/m.png"], ["no target images found"]),
    "unknown output suffix": (["{t}", "--out", "{o}/m.gif"], ["unknown output type .gif", ".png"]),
    "no output suffix for a file": (["{t}", "--out", "{o}/m.txt"], ["unknown output type .txt"]),
    "out folder missing": (["{t}", "--out", "{o}/missing/m.png"], ["folder", "missing does not exist"]),
    "several targets, one file": (["{t}", "{t2}", "--out", "{o}/m.png"], ["several targets need a folder"]),
    "unique with max-uses": (["{t}", "--out", "{o}/m.png", "--unique", "--max-uses", "2"],
                             ["--unique", "drop --max-uses"]),
    "unique with min-distance": (["{t}", "--out", "{o}/m.png", "--unique", "--min-distance", "2"],
                                 ["drop --min-distance"]),
    "grid word": (["{t}", "--out", "{o}/m.png", "--grid", "fine"], ["--grid takes N", "'fine'"]),
    "grid zero": (["{t}", "--out", "{o}/m.png", "--grid", "0"], ["--grid takes N"]),
    "grid half": (["{t}", "--out", "{o}/m.png", "--grid", "10x"], ["--grid takes N"]),
    "grid huge": (["{t}", "--out", "{o}/m.png", "--grid", "5000x5000"], ["25,000,000 cells", "limit"]),
    "tile px zero": (["{t}", "--out", "{o}/m.png", "--tile-px", "0"], ["--tile-px"]),
    "strength": (["{t}", "--out", "{o}/m.png", "--color-strength", "2"], ["--color-strength"]),
    "k zero": (["{t}", "--out", "{o}/m.png", "-k", "0"], ["-k/--candidates"]),
    "negative min-distance": (["{t}", "--out", "{o}/m.png", "--min-distance", "-1"], ["--min-distance"]),
    "max-uses too low": (["{t}", "--out", "{o}/m.png", "--grid", "40", "--max-uses", "1"],
                         ["--max-uses 1 with 300 tiles", "--max-uses 4"]),
    "min-distance too far": (["{t}", "--out", "{o}/m.png", "--grid", "40", "--min-distance", "20"],
                             ["--min-distance 20 needs at least 441", "lower --min-distance"]),
    "codec for a jpeg": (["{t}", "--out", "{o}/m.jpg", "--codec", "zstd"], ["--codec zstd applies to .tif", "m.jpg"]),
    "ome for a png": (["{t}", "--out", "{o}/m.png", "--ome"], ["--ome applies to .tif"]),
    "jpeg too large": (["{t}", "--out", "{o}/m.jpg", "--grid", "40", "--tile-px", "2000"],
                       ["beyond JPEG's limit", ".png"]),
    "empty database": (["--db", "{edb}", "{t}", "--out", "{o}/m.png"], ["has no tiles", "mosaic db ingest"]),
    "empty database, folder out": (["--db", "{edb}", "{t}", "{t}", "--out", "{o}/new"], ["has no tiles"]),
    "no database": (["--db", "{o}/nodb", "{t}", "--out", "{o}/m.png"], ["does not exist", "mosaic db init"]),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    (d / "empty").mkdir()
    (d / "empty" / "readme.txt").write_text("no images here")
    TileDB.create(d / "edb").close()
    t = write_target(d / "t.png")
    shutil.copy(t, d / "t2.png")
    return {"bad": d / "bad.png", "empty": d / "empty", "edb": d / "edb", "t": t, "t2": d / "t2.png"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_one_line_error_and_writes_nothing(synthetic_db, bad_inputs, tmp_path, case):
    args, words = BAD[case]
    o = tmp_path / "o"
    o.mkdir()
    fmt = {**{k: str(v) for k, v in bad_inputs.items()}, "o": str(o)}
    args = [a.format(**fmt) for a in args]
    if "--db" not in args:
        args = ["--db", str(synthetic_db.path), *args]
    res = mosaic("make", *args, "-q")
    fails(res, *words)
    assert files(o) == []
    if case in ("jpeg too large", "max-uses too low", "min-distance too far", "codec for a jpeg", "ome for a png"):  # options that ask the impossible
        assert res.exit_code == 2, res.output


def test_bad_assignment_files(made, tmp_path):
    fails(mosaic("render", tmp_path / "x.mosaic.json", "--out", tmp_path / "r.png"), "no saved assignment")
    os.mkfifo(tmp_path / "f.mosaic.json")  # there, but not a file: not "missing"
    (tmp_path / "f.mosaic.npz").write_bytes(b"")
    fails(mosaic("render", tmp_path / "f.mosaic.json", "--out", tmp_path / "r.png"), "is not a regular file")
    shutil.copy(made["dir"] / "m.mosaic.json", tmp_path / "d.mosaic.json")
    (tmp_path / "d.mosaic.npz").write_bytes(b"PK\x03\x04 truncated")
    fails(mosaic("render", tmp_path / "d.mosaic.json", "--out", tmp_path / "r.png"), "is damaged", "mosaic make")
    fails(mosaic("render", made["dir"] / "m.mosaic.json", "--out", tmp_path / "r.png", "--tile-px", 0), "--tile-px")
    assert not (tmp_path / "r.png").exists()


# ---- mosaic eval ---------------------------------------------------------------------------------
def test_eval_with_the_saved_assignment(made):
    metrics = json.loads((made["dir"] / "m.metrics.json").read_text())
    m = json.loads(ok(mosaic("eval", made["target"], made["out"], "--json")).stdout)
    for k in ("psnr64", "ssim64", "psnr_cell"):
        assert m[k] == pytest.approx(metrics[k], abs=1e-9)
    assert m["pyramid_mse"] == pytest.approx(metrics["pyramid_mse"], abs=1e-12)
    assert m["repeats"] == metrics["repeats"]
    text = ok(mosaic("eval", made["target"], made["out"])).stdout.splitlines()
    assert text[0] == f"PSNR@64 {m['psnr64']:.2f} dB, SSIM@64 {m['ssim64']:.3f}, PSNR per cell {m['psnr_cell']:.2f} dB"
    assert text[1].startswith("pyramid MSE: L1 ") and " L4 " in text[1]
    assert text[2] == "repeats: " + json.dumps(m["repeats"])


@pytest.mark.parametrize("w,h", [(600, 5), (5, 600)])
def test_thin_target_is_scored_by_make_and_eval(synthetic_db, tmp_path, w, h):
    """A target thinner than a cell gets one row (column) of cells stretched to squares; the
    mosaic is scored against the target stretched alike, by make and by eval."""
    target = write_target(tmp_path / "thin.png", w, h)
    out = tmp_path / "m.png"
    ok(mosaic("make", "--db", synthetic_db.path, target, "--out", out, "--grid", 24, "--tile-px", 8, "-q"))
    made_m = json.loads((tmp_path / "m.metrics.json").read_text())
    assert made_m["psnr64"] is not None and not made_m["warnings"], made_m.get("evaluation_error")
    m = json.loads(ok(mosaic("eval", target, out, "--json")).stdout)
    assert m["psnr64"] == pytest.approx(made_m["psnr64"], abs=1e-9)


def test_eval_warns_when_the_target_is_not_the_one_the_mosaic_was_made_from(made, tmp_path):
    other = write_target(tmp_path / "other.png", seed=9)
    res = mosaic("eval", other, made["out"], "--json")
    assert res.exit_code == 0 and "is not the file this mosaic was made from" in res.stderr
    assert json.loads(res.stdout)["warnings"]
    same = mosaic("eval", made["target"], made["out"])
    assert same.exit_code == 0 and "warning" not in same.stderr


def test_eval_without_the_saved_assignment(made, tmp_path):
    lone = tmp_path / "lone.png"
    shutil.copy(made["out"], lone)
    with_sidecar = json.loads(ok(mosaic("eval", made["target"], made["out"], "--json")).stdout)
    m = json.loads(ok(mosaic("eval", made["target"], lone, "--json")).stdout)
    assert m["psnr_cell"] is None and m["repeats"] is None
    assert m["psnr64"] == pytest.approx(with_sidecar["psnr64"], abs=1e-9)  # nothing was cropped
    assert m["pyramid_mse"] == pytest.approx(with_sidecar["pyramid_mse"], abs=1e-12)
    text = ok(mosaic("eval", made["target"], lone)).stdout
    assert text.startswith("PSNR@64 ") and "per cell" not in text and "repeats" not in text
    # with the grid given, the per-cell PSNR is back
    g = json.loads(ok(mosaic("eval", made["target"], lone, "--grid", f"{COLS}x{ROWS}", "--json")).stdout)
    assert g["psnr_cell"] == pytest.approx(with_sidecar["psnr_cell"], abs=1e-9) and g["repeats"] is None
    # a grid that does not divide the image into square cells is refused (100000x100000 also
    # asked for a 30 GB resize), not scored
    for wrong in (f"{COLS + 1}x{ROWS}", f"{ROWS}x{COLS}", "1x1", "100000x100000"):
        res = mosaic("eval", made["target"], lone, "--grid", wrong)
        fails(res, f"--grid {wrong} does not fit")
        assert res.exit_code == 2
    fails(mosaic("eval", made["target"], lone, "--grid", "16"), "COLSxROWS")
    fails(mosaic("eval", made["target"], made["dir"] / "m.mosaic.json"), "not an image")


# ---- real data ---------------------------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.slow
def test_kodak_against_cifar_beats_random_tiles(cifar_folder, shared_data, tmp_path):
    """The issue's end-to-end run: a Kodak photo from 2,000 real CIFAR-10 tiles, all through
    the CLI. Its PSNR@64 must clearly beat the same grid filled with random tiles of the same
    pool, rendered and scored by the same functions. (Measured: 20.6 dB vs 11.8-12.0 dB over
    five random seeds on kodim23; margins of 7-13 dB on ten Kodak photos.)"""
    target = shared_data / "targets" / "kodak" / "kodim23.png"
    dbp = tmp_path / "cifar.db"
    ok(mosaic("db", "init", dbp))
    ok(mosaic("db", "ingest", dbp, cifar_folder, "-q"))
    out = tmp_path / "kodim23.png"
    ok(mosaic("make", "--db", dbp, target, "--out", out, "--grid", 64, "--tile-px", 16, "-q"))
    m = json.loads((tmp_path / "kodim23.metrics.json").read_text())
    saved = asg.load(out)
    assert (saved.cols, saved.rows) == (64, 42) and m["cells"] == 64 * 42
    assert m["repeats"]["min_repeat_distance"] > 2

    img = load_target(target).image
    left, top, right, bottom = saved.meta.grid.crop
    with TileDB.open(dbp, readonly=True) as db:
        assert len(db) == 2000
        rng = np.random.default_rng(0)
        random_ids = rng.choice(db.ids(), size=saved.tile_ids.shape)
        rand = asg.SavedAssignment(saved.meta, random_ids, saved.cost, saved.target_mean, saved.target_std)
        ours = evaluate(img[top:bottom, left:right], render_array(db, saved, RenderOptions(tile_px=16)), saved.rows, saved.cols)
        base = evaluate(img[top:bottom, left:right], render_array(db, rand, RenderOptions(tile_px=16)), rand.rows, rand.cols)
    assert ours["psnr64"] == pytest.approx(m["psnr64"], abs=1e-9)
    assert ours["psnr64"] > base["psnr64"] + 5.0, (ours["psnr64"], base["psnr64"])
    assert ours["psnr_cell"] > base["psnr_cell"] + 5.0
    assert all(ours["pyramid_mse"][k] < 0.5 * base["pyramid_mse"][k] for k in ours["pyramid_mse"])


@pytest.mark.slow
def test_demo_runs_offline_and_says_where_things_are(tmp_path):
    out = tmp_path / "demo"
    res = ok(mosaic("demo", "--out", out, "--tiles", 400, "--grid", 32, "-q"))
    lines = dict(line.split(":", 1) for line in res.stdout.splitlines())
    mosaic_path = out / "mosaic.jpg"
    assert str(mosaic_path) in lines["Mosaic"] and "1024 cells" in lines["Mosaic"]
    assert str(out / "mosaic.metrics.json") in lines["Metrics"]
    assert str(out / "mosaic.mosaic.json") in lines["Assignment"]
    assert str(out / "tiles.db") in lines["Database"]
    with Image.open(mosaic_path) as im:
        assert im.size == (32 * 32, 32 * 32)
    m = json.loads((out / "mosaic.metrics.json").read_text())
    assert m["psnr64"] > 15 and m["repeats"]["min_repeat_distance"] > 3
    with TileDB.open(out / "tiles.db", readonly=True) as db:
        assert len(db) == 400
