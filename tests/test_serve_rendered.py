"""`mosaic serve MOSAIC.mosaic.json` (issue 15): DeepZoom tiles rendered on request from an
assignment (no image), a bounded tile cache, and `--recursive`: below the mosaic's deepest
level every tile's area is a mosaic of that tile, matched lazily once, cached on disk and
checked like any untrusted assignment when read back."""
from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_image, write_synthetic
from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.errors import UsageError
from mosaicdb.make import Maker
from mosaicdb.match.options import MatchOptions
from mosaicdb.recursive import RecursiveOptions
from mosaicdb.recursive.submosaic import SubMosaics, cache_key
from mosaicdb.render.cells import CellRenderer
from mosaicdb.render.options import RenderOptions
from mosaicdb.render.region import Node, draw
from mosaicdb.serve.rendered import parse_cache
from test_serve import Served, assert_level_tiles, block_error, decode_jpeg, exact_level, pytestmark  # noqa: F401 (mark)

COLS, ROWS, T, G = 6, 4, 64, 4


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 60-tile database with its index and a 6 x 4 mosaic made by `Maker` (PNG + assignment)."""
    root = tmp_path_factory.mktemp("rendered")
    write_synthetic(root / "tiles", 60, seed=21)
    with TileDB.create(root / "tiles.db") as db:
        db.ingest([root / "tiles"], workers=1)
        db.ensure_index()
    target = root / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(5), 240, 160, "disc")).save(target)
    out = root / "m.png"
    with TileDB.open(root / "tiles.db") as db:
        Maker(db, MatchOptions(grid=f"{COLS}x{ROWS}", min_distance=1), RenderOptions(tile_px=T, workers=1)).make(target, out)
    return {"root": root, "db": root / "tiles.db", "png": out, "json": root / "m.mosaic.json",
            "saved": asg.load(out)}


def fresh_cache(made):
    shutil.rmtree(made["db"] / "recursive", ignore_errors=True)


def levels(w, h):
    top = int(np.ceil(np.log2(max(w, h))))
    return top, {lv: (-(-w // 2 ** (top - lv)), -(-h // 2 ** (top - lv))) for lv in range(top + 1)}


# ---- on demand, no recursion -------------------------------------------------------------------
def test_assignment_is_served_like_its_image(made):
    s = Served(made["json"])
    try:
        full = np.asarray(Image.open(made["png"]).convert("RGB"))
        top, lv = levels(COLS * T, ROWS * T)
        assert s.viewer.source.kind == "rendered" and s.viewer.source.max_level == top
        for level, (w, h) in lv.items():
            assert_level_tiles(s, level, w, h, exact_level(full, 2 ** (top - level)), 4)
        assert json.loads(s.get("/api/info")[2])["cols"] == COLS
        assert s.get(f"/mosaic_files/{top + 1}/0_0.jpeg")[0] == 400   # no recursion: nothing below
    finally:
        s.close()


def test_tile_cache_is_bounded_and_renders_each_tile_once(made):
    s = Served(made["json"], cache="3t")
    try:
        cache = s.viewer.source.cache
        urls = [f"/mosaic_files/9/{c}_{r}.jpeg" for r in range(1) for c in range(2)] * 8
        with ThreadPoolExecutor(16) as ex:
            bodies = list(ex.map(lambda u: s.get(u)[2], urls))
        assert cache.made == 2 and len({b for b in bodies}) == 2    # 16 requests, 2 renders
        for level in range(0, 10):
            assert s.get(f"/mosaic_files/{level}/0_0.jpeg")[0] == 200
        assert len(cache._lru) <= 3
    finally:
        s.close()


def test_whole_cell_tiles_are_encoded_once_per_tile_id(made):
    """At 256 px per cell a level tile is one cell: the same tile anywhere is the same bytes."""
    s = Served(made["json"], tile_px=256)
    try:
        ids = made["saved"].tile_ids
        bodies = {(r, c): s.get(f"/mosaic_files/{s.viewer.source.max_level}/{c}_{r}.jpeg")[2]
                  for r in range(ROWS) for c in range(COLS)}
        assert s.viewer.source.cache.made == len(np.unique(ids))
        for (r, c), b in bodies.items():
            same = [(r2, c2) for (r2, c2) in bodies if ids[r2, c2] == ids[r, c]]
            assert all(bodies[k] == b for k in same)
        ref = CellRenderer(s.viewer.db, made["saved"], RenderOptions(tile_px=256)).region(0, 1, 0, 1, 256)
        assert block_error(decode_jpeg(bodies[(0, 0)]), ref) < 4
    finally:
        s.close()


@pytest.mark.parametrize("text, want", [("256M", (256 << 20, False)), ("1G", (1 << 30, False)),
                                        ("5000t", (5000, True)), ("12 tiles", (12, True))])
def test_cache_sizes(text, want):
    assert parse_cache(text) == want


@pytest.mark.parametrize("kw, match", [({"cache": "lots"}, "--cache"), ({"recursive": 9}, "--recursive"),
                                       ({"recursive": 1, "recursive_grid": 48}, "power of two"),
                                       ({"recursive": -1}, "--recursive")])
def test_bad_options_are_one_line_errors(made, kw, match):
    with pytest.raises(UsageError, match=match):
        Served(made["json"], **kw)


# ---- recursion ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rec(made):
    fresh_cache(made)
    s = Served(made["json"], recursive=2, recursive_grid=G)
    yield s
    s.close()


def test_recursive_geometry_and_levels(rec, made):
    src = rec.viewer.source
    assert (src.width, src.height) == (COLS * T * G ** 2, ROWS * T * G ** 2)
    assert src.max_level == src.base_top + 4   # log2(4^2) levels below the mosaic's own
    assert src.depth_at(src.base_top) == 0 and src.depth_at(src.base_top + 1) == 1
    assert src.depth_at(src.max_level) == 2
    info = json.loads(rec.get("/api/info")[2])
    assert info["recursive"] == {"depth": 2, "grid": G, "tile_px": T} and info["width"] == src.width


def sub_render(db, saved, t):
    return CellRenderer(db, saved, RenderOptions(tile_px=T)).region(0, saved.rows, 0, saved.cols, t)


def test_a_zoomed_tile_is_its_own_sub_mosaic(rec, made):
    """One level below the mosaic's own, cell (0, 0) is drawn as its tile's 4 x 4 sub-mosaic at
    32 px per sub-cell: the pixels of that sub-assignment, rendered independently."""
    src, db = rec.viewer.source, rec.viewer.db
    level = src.base_top + 1
    status, _, data = rec.get(f"/mosaic_files/{level}/0_0.jpeg")
    px = decode_jpeg(data)
    tid = int(made["saved"].tile_ids[0, 0])
    sub = src.subs.node(tid).cells.saved
    assert sub.rows == sub.cols == G and tid not in sub.tile_ids     # the tile itself is never used
    ref = sub_render(db, sub, 2 * T // G)
    assert status == 200 and block_error(px[:2 * T, :2 * T], ref) < 4
    # and the neighbouring cell is its own tile's sub-mosaic
    tid2 = int(made["saved"].tile_ids[0, 1])
    ref2 = sub_render(db, src.subs.node(tid2).cells.saved, 2 * T // G)
    assert block_error(px[:2 * T, 2 * T:4 * T], ref2) < 4
    # the deepest level: a sub-sub-mosaic's cells at T px each (cell (0,0) -> sub-cell (0,0))
    tid_a = int(sub.tile_ids[0, 0])
    subsub = src.subs.node(tid_a).cells.saved
    deep = decode_jpeg(rec.get(f"/mosaic_files/{src.max_level}/0_0.jpeg")[2])
    assert block_error(deep, sub_render(db, subsub, T)[:256, :256]) < 4


def test_sub_mosaic_is_the_tile_matched_with_the_same_options(rec, made):
    from mosaicdb.match.grid import cell_data, make_grid
    from mosaicdb.match.matcher import match
    src, db = rec.viewer.source, rec.viewer.db
    tid = int(made["saved"].tile_ids[1, 2])
    sub = src.subs.node(tid).cells.saved
    img = np.asarray(db.load_original(tid))
    g = make_grid(img.shape[1], img.shape[0], f"{G}x{G}")
    res = match(db, cell_data(img, g, db.feature_spec), g,
                MatchOptions(grid=f"{G}x{G}", min_distance=1), exclude=[tid])
    assert np.array_equal(sub.tile_ids, res.assignment.tile_ids)
    assert sub.meta.match["min_distance"] == 1 and sub.meta.extra["recursive"]["tile_id"] == tid


def test_one_computation_per_tile_under_concurrent_requests(made):
    fresh_cache(made)
    s = Served(made["json"], recursive=1, recursive_grid=G)
    try:
        subs = s.viewer.source.subs
        level = s.viewer.source.base_top + 1
        # 4 level tiles each covering cells (0..1, 0..1): 16 requests for the same 4 sub-mosaics
        urls = [f"/mosaic_files/{level}/0_0.jpeg"] * 8 + [f"/mosaic_files/{level}/0_0.jpeg?x={i}" for i in range(8)]
        with ThreadPoolExecutor(16) as ex:
            statuses = list(ex.map(lambda u: s.get(u)[0], urls))
        assert statuses == [200] * 16
        distinct = len(np.unique(made["saved"].tile_ids[:2, :2]))
        assert subs.computed == distinct and subs.loaded == 0
        barrier = threading.Barrier(8)
        first = set(made["saved"].tile_ids[:2, :2].ravel().tolist())
        tid = next(int(t) for t in made["saved"].tile_ids.ravel() if int(t) not in first)

        def ask(_):
            barrier.wait()
            return subs.node(tid)

        with ThreadPoolExecutor(8) as ex:
            nodes = list(ex.map(ask, range(8)))
        assert all(n is nodes[0] for n in nodes) and subs.computed == distinct + 1
    finally:
        s.close()


def test_sub_mosaics_are_cached_on_disk_and_checked_when_read(made):
    fresh_cache(made)
    tid = int(made["saved"].tile_ids[2, 2])
    with Served(made["json"], recursive=1, recursive_grid=G) as s:
        first = s.viewer.source.subs.node(tid).cells.saved
    files = sorted((made["db"] / "recursive").glob(f"{tid}-*.mosaic.json"))
    assert len(files) == 1
    with Served(made["json"], recursive=1, recursive_grid=G) as s:   # a new server: read, not matched
        subs = s.viewer.source.subs
        again = subs.node(tid).cells.saved
        assert subs.loaded == 1 and subs.computed == 0 and np.array_equal(again.tile_ids, first.tile_ids)
    npz = files[0].with_name(files[0].name.replace(".json", ".npz"))
    meta = json.loads(files[0].read_text())
    tampered = [("the tile itself", lambda: asg.save(files[0].with_name(files[0].name[:-len(".mosaic.json")]),
                                                     asg.SavedAssignment(first.meta, np.full_like(first.tile_ids, tid),
                                                                         first.cost, first.target_mean, first.target_std))),
                ("another key", lambda: files[0].write_text(json.dumps(
                    {**meta, "extra": {"recursive": {"tile_id": tid, "key": "0" * 32}}}))),
                ("garbage", lambda: npz.write_bytes(b"PK\x03\x04 not a zip")),
                ("a foreign tile", lambda: asg.save(files[0].with_name(files[0].name[:-len(".mosaic.json")]),
                                                    asg.SavedAssignment(first.meta, np.full_like(first.tile_ids, 10 ** 6),
                                                                        first.cost, first.target_mean, first.target_std)))]
    for what, tamper in tampered:
        tamper()
        with Served(made["json"], recursive=1, recursive_grid=G) as s:
            subs = s.viewer.source.subs
            got = subs.node(tid).cells.saved
            assert subs.computed == 1 and subs.loaded == 0, what
            assert np.array_equal(got.tile_ids, first.tile_ids), what
        assert asg.load(files[0]).tile_ids.tolist() == first.tile_ids.tolist(), what   # replaced


def test_a_linked_cache_folder_is_not_used(made, tmp_path):
    fresh_cache(made)
    (made["db"] / "recursive").symlink_to(tmp_path)
    try:
        with Served(made["json"], recursive=1, recursive_grid=G) as s:
            subs = s.viewer.source.subs
            subs.node(int(made["saved"].tile_ids[0, 0]))
            assert subs.computed == 1 and not subs.disk
        assert list(tmp_path.iterdir()) == []
    finally:
        (made["db"] / "recursive").unlink()


def test_key_changes_with_options_and_pool(made):
    with TileDB.open(made["db"], readonly=True) as db:
        tile = db.tiles([0])[0]
        a = cache_key(db, tile, MatchOptions(grid="4x4", min_distance=1), 4)
        assert a != cache_key(db, tile, MatchOptions(grid="4x4", min_distance=2), 4)
        assert a != cache_key(db, tile, MatchOptions(grid="8x8", min_distance=1), 8)
        assert a != cache_key(db, {**tile, "id": 1}, MatchOptions(grid="4x4", min_distance=1), 4)
        assert a == cache_key(db, tile, MatchOptions(grid="4x4", min_distance=1), 4)


@pytest.mark.parametrize("path, status", [
    ("/mosaic_files/{max1}/0_0.jpeg", 400), ("/mosaic_files/{maxl}/999999_0.jpeg", 400),
    ("/mosaic_files/{maxl}/0_999999.jpeg", 400), ("/mosaic_files/999999999/0_0.jpeg", 400),
    ("/api/cell/0/0/0/0/0/0/0/0", 404), ("/api/cell/0/0/4/0", 400), ("/api/cell/0/0/0/99", 400),
    ("/api/cell/0/0/0/0/0/4", 400), ("/api/cell/0/0/0", 404), ("/api/cell/0/0/x/1", 400)])
def test_bad_recursive_requests(rec, path, status):
    src = rec.viewer.source
    path = path.format(maxl=src.max_level, max1=src.max_level + 1)
    got, _, body = rec.get(path)
    assert got == status, (path, got, body)
    assert b"Traceback" not in body and body


def test_the_path_of_a_sub_tile_and_its_original(rec, made):
    src = rec.viewer.source
    tid = int(made["saved"].tile_ids[1, 1])
    sub = src.subs.node(tid).cells.saved
    d = json.loads(rec.get("/api/cell/1/1/2/3")[2])
    sid = int(sub.tile_ids[2, 3])
    assert d["depth"] == 1 and d["tile_id"] == sid and (d["row"], d["col"]) == (2, 3)
    assert [p["tile_id"] for p in d["path"]] == [tid, sid]
    assert d["distance"] == pytest.approx(float(sub.cost[2, 3]), abs=1e-3) and d["source"]
    assert rec.get(d["original_url"])[0] == 200
    d2 = json.loads(rec.get("/api/cell/1/1/2/3/0/0")[2])
    assert d2["depth"] == 2 and d2["path"][1]["tile_id"] == sid
    assert d2["tile_id"] == int(src.subs.node(sid).cells.saved.tile_ids[0, 0])
    with TileDB.open(made["db"], readonly=True) as db:
        never = sorted(set(db.ids().tolist()) - src.subs._allowed - rec.viewer.api.allowed)
    if never:
        assert rec.get(f"/tile/{never[0]}/original")[0] == 404


def test_memory_per_tile_is_bounded_at_any_depth(rec, monkeypatch):
    """No request draws more than a few tiles' worth of pixels, whatever its level."""
    src = rec.viewer.source
    biggest = []
    real = CellRenderer.region

    def spy(self, r0, r1, c0, c1, t):
        biggest.append((r1 - r0) * (c1 - c0) * t * t)
        return real(self, r0, r1, c0, c1, t)

    monkeypatch.setattr(CellRenderer, "region", spy)
    src.cache._lru.clear()
    rng = np.random.default_rng(0)
    for level in range(src.max_level + 1):
        w, h = src.level_size(level)
        for _ in range(3):
            col, row = int(rng.integers(0, -(-w // 256))), int(rng.integers(0, -(-h // 256)))
            assert rec.get(f"/mosaic_files/{level}/{col}_{row}.jpeg?r={rng.random()}")[0] == 200
    assert biggest and max(biggest) <= 4 * (256 + 2 * T) ** 2


def test_draw_composes_children_exactly(made):
    """render.region.draw on a recursive cell = the child's own render at the sub-cell size."""
    with TileDB.open(made["db"], readonly=True) as db:
        saved = made["saved"]
        subs = SubMosaics(db, saved, RenderOptions(tile_px=T), RecursiveOptions(depth=1, grid=G), disk=False)
        node = Node(CellRenderer(db, saved, RenderOptions(tile_px=T)))
        c = 4 * T                                   # a cell 4x its leaf size: sub-cells of T px
        out = draw(node, (c - 50, 0, c + 70, 90), Fraction(c), T, subs.child, G)
        left = sub_render(db, subs.node(int(saved.tile_ids[0, 0])).cells.saved, T)
        right = sub_render(db, subs.node(int(saved.tile_ids[0, 1])).cells.saved, T)
        assert np.array_equal(out[:, :50], left[:90, c - 50:]) and np.array_equal(out[:, 50:], right[:90, :70])
        subs.close()


def test_closing_sub_mosaics_waits_for_the_matches_that_read_the_database(made, monkeypatch):
    """The warm-up (and any sub-mosaic being matched) searches the database on another thread:
    closing the database under it could crash sqlite, so close() waits for them."""
    import threading
    import time

    from mosaicdb.recursive import submosaic
    real_match, ended = submosaic.match, threading.Event()

    def slow_match(*a, **kw):
        time.sleep(0.5)
        try:
            return real_match(*a, **kw)
        finally:
            ended.set()

    monkeypatch.setattr(submosaic, "match", slow_match)
    with TileDB.open(made["db"], readonly=True) as db:
        subs = SubMosaics(db, made["saved"], RenderOptions(tile_px=T), RecursiveOptions(depth=1, grid=G), disk=False)
        subs.close()
        assert ended.is_set()


def test_a_stored_tiff_keeps_its_levels_under_recursion(made, tmp_path):
    from mosaicdb.make import render_saved
    out = tmp_path / "m.tif"
    with TileDB.open(made["db"], readonly=True) as db:
        render_saved(db, made["saved"], out, RenderOptions(tile_px=T, workers=1))
    asg.save(out, made["saved"])
    with Served(out, recursive=1, recursive_grid=G) as s:
        src = s.viewer.source
        assert src.stored is not None and src.stored.kind == "tiff"
        top = src.base_top
        assert s.get(f"/mosaic_files/{top}/0_0.jpeg")[2] == src.stored.tile(top, 0, 0)
        assert src.cache.made == 0
        assert s.get(f"/mosaic_files/{top + 1}/0_0.jpeg")[0] == 200 and src.cache.made == 1


def test_unique_sub_mosaics_need_enough_tiles(made, tmp_path):
    saved = made["saved"]
    meta = asg.AssignmentMeta(**{**saved.meta.__dict__, "match": {**saved.meta.match, "unique": True, "min_distance": 0,
                                                                          "dither": 0.0}})
    out = tmp_path / "u.png"
    out.write_bytes(made["png"].read_bytes())
    asg.save(out, asg.SavedAssignment(meta, saved.tile_ids, saved.cost, saved.target_mean, saved.target_std))
    with pytest.raises(UsageError, match="recursive-grid"):
        Served(tmp_path / "u.mosaic.json", recursive=1, recursive_grid=16)


# ---- the command line ------------------------------------------------------------------------------
def test_cli_serves_an_assignment_recursively(made):
    import http.client
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "mosaicdb", "serve", str(made["json"]), "--port", "0", "--no-open",
                          "--json", "--recursive", "1", "--recursive-grid", str(G), "--cache", "50t"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        info = json.loads(line)
        assert (info["width"], info["height"]) == (COLS * T * G, ROWS * T * G)
        port = int(info["url"].rsplit(":", 1)[1].split("/")[0])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/api/cell/0/0/1/1")
        r = c.getresponse()
        d = json.loads(r.read())
        assert r.status == 200 and d["depth"] == 1 and len(d["path"]) == 2
    finally:
        p.terminate()
        p.wait(10)


@pytest.mark.parametrize("args, words", [(["--recursive", "9"], "--recursive"), (["--cache", "lots"], "--cache"),
                                         (["--recursive", "1", "--recursive-grid", "5"], "power of two")])
def test_cli_bad_options_exit_2_in_one_line(made, args, words):
    from clirun import invoke_cli
    res = invoke_cli("serve", str(made["json"]), "--no-open", *args, code=2)
    assert words in res.output and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_turned_tiles_are_served_turned(made, tmp_path):
    """--orient: a whole-cell level tile is cached per (tile, turn), drawn turned, and the
    cell panel says how the tile is turned; recursion below a turned mosaic is refused."""
    from mosaicdb.orient import orient_pixels
    saved = made["saved"]
    tid = int(saved.tile_ids[0, 0])
    ids = saved.tile_ids.copy()
    ids[0, :4] = tid
    turn = np.zeros(ids.shape, np.uint8)
    turn[0, 1], turn[0, 2], turn[0, 3] = 1, 5, 1
    out = tmp_path / "turned.png"
    asg.save(out, asg.SavedAssignment(saved.meta, ids, saved.cost, saved.target_mean, saved.target_std, turn))
    s = Served(tmp_path / "turned.mosaic.json", tile_px=256)
    try:
        top = s.viewer.source.max_level
        px = [decode_jpeg(s.get(f"/mosaic_files/{top}/{c}_0.jpeg")[2]) for c in range(4)]
        plain = CellRenderer(s.viewer.db, saved, RenderOptions(tile_px=256)).region(0, 1, 0, 1, 256)
        for c, o in enumerate((0, 1, 5, 1)):
            assert block_error(px[c], np.ascontiguousarray(orient_pixels(plain, o))) < 4, c
        assert block_error(px[0], px[1]) > 4
        assert s.viewer.source.cache.made == 3     # (tile, 0), (tile, 1), (tile, 5)
        cell = json.loads(s.get("/api/cell/0/2")[2])
        assert cell["orientation"] == {"code": 5, "name": "turned a quarter turn clockwise"}
        assert "orientation" not in json.loads(s.get("/api/cell/0/0")[2])
    finally:
        s.close()
    meta = json.loads((tmp_path / "turned.mosaic.json").read_text())
    meta["match"].update(orient="all", dither=0.0)  # (as `make --orient all` saves it)
    (tmp_path / "turned.mosaic.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="--orient all.*--recursive"):
        Served(tmp_path / "turned.mosaic.json", recursive=1)
