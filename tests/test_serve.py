"""`mosaic serve` (issue 5): DZI tiles from every kind of output, the cell API, originals,
route safety and concurrency, against a real server on a loopback port."""
from __future__ import annotations

import http.client
import io
import json
import math
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from clirun import invoke_cli
from PIL import Image

from conftest import synthetic_image, write_synthetic
from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.errors import MissingDependency, UsageError
from mosaicdb.make import Maker, render_saved
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions
from mosaicdb.serve import Viewer, host_warning, make_server, serve_in_thread
from mosaicdb.serve.assets import find_openseadragon

COLS, ROWS, TILE_PX = 13, 9, 64          # 832 x 576 px: full, edge and corner tiles at every level
W, H = COLS * TILE_PX, ROWS * TILE_PX
GEN_CELL = (4, 6)                        # (row, col) holding a generated tile
BMP_CELL = (0, 0)                        # holds a tile whose original is a BMP
FILE_CELL = (1, 1)                       # holds a PNG file tile
GENERATED = {"prompt": "a ripe red apple on slate", "seed": 4242, "model": "tiny-test-sdxl", "steps": 4}
TRAVERSALS = ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%2E%2E/%2E%2E/etc/passwd",
              "/mosaic_files/../../x", "/mosaic_files/../../../etc/passwd", "/%252e%252e/%252e%252e/etc/passwd",
              "/mosaic_files/..%2f..%2fetc%2fpasswd", "/mosaic_files/%2e%2e/0_0.jpeg", "/static/../../setup.py",
              "/osd/../../package.json", "/osd/..%2f..%2fpackage.json", "/osd/images/../../openseadragon.js",
              "//etc/passwd", "/mosaic_files/10/..\\..\\x", "/tile/..%2fcatalog.sqlite/original",
              "/%c0%ae%c0%ae/etc/passwd", "/.%2e/.%2e/etc/passwd", "/..;/etc/passwd"]


def has_osd() -> bool:
    try:
        find_openseadragon()
        return True
    except MissingDependency:
        return False


pytestmark = pytest.mark.skipif(not has_osd(), reason="OpenSeadragon is not installed: run `npm ci` (or `make`)")


# ---- fixtures --------------------------------------------------------------------------------------
def hand_assignment(db, ids, known: dict, seed=0) -> asg.SavedAssignment:
    """A 13 x 9 assignment of random tiles with the generated and BMP tiles at known cells."""
    rng = np.random.default_rng(seed)
    tile_ids = rng.choice(ids, size=(ROWS, COLS)).astype(np.int64)
    for cell, tid in known.items():
        tile_ids[cell] = tid
    cost = rng.uniform(1, 40, (ROWS, COLS)).astype(np.float32)
    meta = {"db": str(db.path.resolve()), "db_version": db.version,
            "target": {"path": "/nonexistent.png", "sha256": "0" * 64, "size": [COLS * 8, ROWS * 8]},
            "grid": {"cols": COLS, "rows": ROWS, "crop": [0, 0, COLS * 8, ROWS * 8]},
            "render": {"tile_px": TILE_PX, "color": "none"}}
    zeros = np.zeros((ROWS, COLS, 3), np.float32)
    return asg.SavedAssignment(meta, tile_ids, cost, zeros, zeros)


@pytest.fixture(scope="session")  # session: xdist interleaves modules, which would rebuild it
def mosaics(tmp_path_factory):
    """A small database (file tiles, generated tiles, a BMP) and one assignment rendered as a
    JPEG TIFF, an OME TIFF, a zstd TIFF, a DZI folder and a PNG, each with its assignment."""
    root = tmp_path_factory.mktemp("serve")
    write_synthetic(root / "tiles", 40, seed=11)
    rng = np.random.default_rng(3)
    Image.fromarray(synthetic_image(rng, 90, 70, "disc")).save(root / "tiles" / "zz_bitmap.bmp")
    db = TileDB.create(root / "tiles.db")
    files = db.ingest([root / "tiles"], workers=1).new_ids
    gen = [(png_bytes(synthetic_image(rng, 64, 64, "gradient")), f"generated:test:{i}", dict(GENERATED, seed=4242 + i))
           for i in range(3)]
    rep = db.add_images(gen, origin="generated")
    gen_id = rep.new_ids[0]
    bmp_id = int(db.find(source_prefix=str(root / "tiles" / "zz_bitmap.bmp"))[0])
    png_id = next(t["id"] for t in db.tiles(files) if t["format"] == "PNG")
    saved = hand_assignment(db, db.ids(), {GEN_CELL: gen_id, BMP_CELL: bmp_id, FILE_CELL: png_id})
    outs = {}
    for name, file, kw in [("tiff", "m.tif", {}), ("ome", "m_ome.tif", {"ome": True}),
                           ("zstd", "m_zstd.tif", {"codec": "zstd"}), ("dzi", "m_dzi.dzi", {}),
                           ("png", "m_png.png", {})]:
        out = root / file
        render_saved(db, saved, out, RenderOptions(tile_px=TILE_PX, workers=2, **kw))
        asg.save(out, saved)
        outs[name] = out
    db.close()
    outs["assignment"] = root / "m.mosaic.json"   # no image: every tile rendered on request
    return {"root": root, "db": root / "tiles.db", "saved": saved, "gen_id": gen_id, "bmp_id": bmp_id, **outs}


def png_bytes(a) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


class Served:
    def __init__(self, path, **kw):
        self.viewer = Viewer(path, **kw)
        self.httpd = make_server(self.viewer, "127.0.0.1", 0)
        self.thread = serve_in_thread(self.httpd)
        self.port = self.httpd.server_address[1]

    def get(self, path, headers=None, method="GET"):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.viewer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture(scope="session")
def server(mosaics):
    s = Served(mosaics["tiff"])
    yield s
    s.close()


# ---- DZI geometry and tiles -------------------------------------------------------------------------
def dzi_levels(w, h):
    top = math.ceil(math.log2(max(w, h)))
    return top, {lv: (-(-w // 2 ** (top - lv)), -(-h // 2 ** (top - lv))) for lv in range(top + 1)}


def decode_jpeg(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "not a complete JPEG stream"
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    return np.asarray(im.convert("RGB"))


def exact_level(full: np.ndarray, s: int) -> np.ndarray:
    """DZI level of scale 1/s: pixel (i, j) is the mean of full-size pixels [i*s, (i+1)*s) x
    [j*s, (j+1)*s) that exist (the last row and column of a level may be partial)."""
    h, w = -(-full.shape[0] // s), -(-full.shape[1] // s)
    pad = np.full((h * s, w * s, 3), np.nan)
    pad[:full.shape[0], :full.shape[1]] = full
    return np.rint(np.nanmean(pad.reshape(h, s, w, s, 3), axis=(1, 3))).astype(np.uint8)


def assert_level_tiles(s, level: int, w: int, h: int, ref: np.ndarray, tol: float) -> None:
    """Every 256 px tile the server `s` gives at `level` (w x h) is `ref`'s (JPEG-close)."""
    for row in range(-(-h // 256)):
        for col in range(-(-w // 256)):
            status, _, data = s.get(f"/mosaic_files/{level}/{col}_{row}.jpeg")
            px = decode_jpeg(data)
            exp = ref[row * 256:(row + 1) * 256, col * 256:(col + 1) * 256]
            assert status == 200 and px.shape == exp.shape and block_error(px, exp) < tol, (level, col, row)


def block_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of 16 x 16 block means (the whole tile's mean for tiny tiles):
    JPEG (stored, then served) loses the noise of noisy tiles, and its 2x2 chroma subsampling
    mixes the colours of neighbouring cells of a few pixels; positions and colours must agree."""
    h, w = a.shape[:2]
    size = (max(1, w // 16), max(1, h // 16))
    if min(w, h) < 32:
        return float(np.abs(a.mean((0, 1)) - b.mean((0, 1))).max())
    pa = cv2.resize(a.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    pb = cv2.resize(b.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return float(np.abs(pa - pb).mean())


@pytest.mark.parametrize("kind", ["tiff", "ome", "zstd", "dzi", "png", "assignment"])
def test_every_level_tile_is_a_jpeg_of_the_right_size_and_pixels(mosaics, kind):
    """Every DZI level (1 x 1 up to full size), every tile: a valid JPEG cropped at the edges,
    whose pixels match the mosaic resampled to that level."""
    s = Served(mosaics[kind])
    try:
        status, _, xml = s.get("/mosaic.dzi")
        assert status == 200
        root = ET.fromstring(xml)
        size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
        assert (int(size.get("Width")), int(size.get("Height"))) == (W, H)
        assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("256", "0", "jpeg")
        full = np.asarray(Image.open(mosaics["png"]).convert("RGB"))
        top, levels = dzi_levels(W, H)
        assert top == 10
        n = 0
        for lv, (w, h) in levels.items():
            if kind == "assignment":   # rendered from the cells: exact DZI geometry, edge pixels partial
                ref = exact_level(full, 2 ** (top - lv))
            else:                      # the stored sources' small levels are resized whole
                ref = full if (w, h) == (W, H) else cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)
            for row in range(-(-h // 256)):
                for col in range(-(-w // 256)):
                    status, headers, data = s.get(f"/mosaic_files/{lv}/{col}_{row}.jpeg")
                    assert status == 200 and headers["Content-Type"] == "image/jpeg", (lv, col, row, data[:80])
                    px = decode_jpeg(data)
                    exp = ref[row * 256:(row + 1) * 256, col * 256:(col + 1) * 256]
                    assert px.shape == exp.shape, (lv, col, row)
                    err = block_error(px, exp)
                    assert err < 6, (kind, lv, col, row, err)
                    n += 1
        assert n == 12 + 4 + 1 + 8
    finally:
        s.close()


def test_full_interior_tiles_are_passed_through_byte_for_byte(mosaics, server):
    """Where a DZI level is a TIFF level, whole interior tiles are the TIFF's stored bytes."""
    data = mosaics["tiff"].read_bytes()
    with tifffile.TiffFile(mosaics["tiff"]) as t:
        pages = [lv.keyframe for lv in t.series[0].levels]
        stored = {(p.imagewidth, p.imagelength): (p.dataoffsets, p.databytecounts) for p in pages}
    offsets, counts = stored[(W, H)]
    checked = 0
    for row in range(2):          # rows 0-1 and cols 0-2 are whole 256 x 256 tiles of 832 x 576
        for col in range(3):
            i = row * 4 + col
            want = data[offsets[i]:offsets[i] + counts[i]]
            status, _, got = server.get(f"/mosaic_files/10/{col}_{row}.jpeg")
            assert status == 200 and got == want, (col, row)
            checked += 1
    # an edge tile (stored zero-padded to 256) is cropped, so re-encoded: different bytes, right size
    status, _, edge = server.get("/mosaic_files/10/3_0.jpeg")
    i = 3
    assert edge != data[offsets[i]:offsets[i] + counts[i]]
    assert decode_jpeg(edge).shape == (256, W - 3 * 256, 3)
    assert checked == 6
    assert server.viewer.source.is_passthrough(10, 0, 0) and not server.viewer.source.is_passthrough(10, 3, 0)


def test_a_tiff_without_a_pyramid_gets_every_level_on_demand(mosaics, tmp_path):
    """A single-level tiled TIFF from elsewhere: all the smaller levels are resampled from it."""
    rng = np.random.default_rng(4)
    img = cv2.resize(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8), (600, 400), interpolation=cv2.INTER_NEAREST)
    out = tmp_path / "flat.tif"
    tifffile.imwrite(out, img, tile=(256, 256), compression="zlib", photometric="rgb")
    saved = mosaics["saved"]
    asg.save(out, asg.SavedAssignment(replace(saved.meta, grid=asg.GridInfo(6, 4, (0, 0, 6, 4))),
                                      saved.tile_ids[:4, :6].copy(), saved.cost[:4, :6].copy(),
                                      saved.target_mean[:4, :6].copy(), saved.target_std[:4, :6].copy()))
    s = Served(out, db=mosaics["db"])
    try:
        top, levels = dzi_levels(600, 400)
        for lv, (w, h) in levels.items():
            assert_level_tiles(s, lv, w, h, cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), 6)
        assert not s.viewer.source.is_passthrough(top, 0, 0)  # zlib tiles are re-encoded
    finally:
        s.close()
    tifffile.imwrite(out, img)  # strips, not tiles
    with pytest.raises(UsageError, match="not tiled"):
        Viewer(out, db=mosaics["db"])


def test_dzi_folder_tiles_are_its_files(mosaics):
    s = Served(mosaics["dzi"])
    try:
        files = mosaics["dzi"].with_name("m_dzi_files")
        for rel in ["10/0_0.jpeg", "10/3_2.jpeg", "9/1_1.jpeg", "0/0_0.jpeg"]:
            status, _, got = s.get("/mosaic_files/" + rel)
            assert status == 200 and got == (files / rel).read_bytes(), rel
    finally:
        s.close()


# ---- routes: safety -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_attempts_are_404(server, path):
    status, _, body = server.get(path)
    assert status == 404, (path, status, body[:100])
    assert b"root:" not in body and b"SQLite" not in body


@pytest.mark.parametrize("path", ["/nope", "/mosaic.dzi/x", "/mosaic_files", "/mosaic_files/", "/api", "/api/cell",
                                  "/api/cell/1", "/api/cell/1/2/3", "/tile/1", "/tile/1/thumb", "/static/",
                                  "/static/index.html", "/osd/", "/osd/images/", "/osd/openseadragon.js",
                                  "/favicon.ico", "/mosaic_files/10/0_0.png", "/m.tif", "/tiles.db/catalog.sqlite"])
def test_unknown_routes_and_listings_are_404(server, path):
    status, _, _ = server.get(path)
    assert status == 404, path


@pytest.mark.parametrize("path", ["/mosaic_files/11/0_0.jpeg", "/mosaic_files/99999/0_0.jpeg", "/mosaic_files/-1/0_0.jpeg",
                                  "/mosaic_files/10/4_0.jpeg", "/mosaic_files/10/0_3.jpeg", "/mosaic_files/9/2_0.jpeg",
                                  "/mosaic_files/0/0_1.jpeg", "/mosaic_files/x/0_0.jpeg", "/mosaic_files/10/a_b.jpeg",
                                  "/mosaic_files/10/0_0", "/mosaic_files/10/0-0.jpeg",
                                  "/mosaic_files/10/00000000000000000001_0.jpeg", "/api/cell/9/0", "/api/cell/0/13",
                                  "/api/cell/x/1", "/api/cell/-1/0", "/tile/abc/original", "/tile/-3/original"])
def test_bad_coordinates_are_400(server, path):
    status, _, body = server.get(path)
    assert status == 400, (path, status, body)
    assert body and b"Traceback" not in body


def test_only_loopback_host_names_are_answered(server):
    assert server.get("/mosaic.dzi", {"Host": "evil.example"})[0] == 403
    assert server.get("/mosaic.dzi", {"Host": "evil.example:%d" % server.port})[0] == 403
    for host in ("127.0.0.1:%d" % server.port, "localhost:%d" % server.port, "localhost"):
        assert server.get("/mosaic.dzi", {"Host": host})[0] == 200


def test_page_headers_and_head(server):
    status, headers, body = server.get("/")
    assert status == 200 and b"openseadragon.min.js" in body and b"viewer.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = server.get("/mosaic_files/10/0_0.jpeg", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    for url in ("/osd/openseadragon.min.js", "/osd/images/home_rest.png", "/static/viewer.js", "/static/viewer.css"):
        assert server.get(url)[0] == 200, url


def test_200_concurrent_tile_requests_all_succeed(server):
    top, levels = dzi_levels(W, H)
    urls = [f"/mosaic_files/{lv}/{c}_{r}.jpeg" for lv, (w, h) in levels.items()
            for r in range(-(-h // 256)) for c in range(-(-w // 256))]
    urls = [urls[i % len(urls)] for i in range(200)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(32) as ex:
        results = list(ex.map(lambda u: server.get(u)[::2], urls))
    assert [s for s, _ in results] == [200] * 200
    first = {}
    for u, (_, body) in zip(urls, results):
        assert first.setdefault(u, body) == body or decode_jpeg(body).shape == decode_jpeg(first[u]).shape
    assert time.perf_counter() - t0 < 30


# ---- cell API and originals -----------------------------------------------------------------------
def test_cell_api_names_the_assigned_tile(mosaics, server):
    saved = mosaics["saved"]
    db = TileDB.open(mosaics["db"], readonly=True)
    try:
        for row, col in [(0, 0), (2, 3), (8, 12), GEN_CELL]:
            status, _, body = server.get(f"/api/cell/{row}/{col}")
            d = json.loads(body)
            tid = int(saved.tile_ids[row, col])
            t = db.tiles([tid])[0]
            assert status == 200 and d["tile_id"] == tid and (d["row"], d["col"]) == (row, col)
            assert d["distance"] == pytest.approx(float(saved.cost[row, col]), abs=1e-3)
            assert (d["source"], d["origin"], d["width"], d["height"]) == (t["source"], t["origin"], t["width"], t["height"])
            assert d["original_url"] == f"/tile/{tid}/original"
    finally:
        db.close()
    d = json.loads(server.get("/api/cell/%d/%d" % GEN_CELL)[2])
    assert d["origin"] == "generated"
    assert d["generation"] == {"prompt": GENERATED["prompt"], "seed": 4242, "model": GENERATED["model"], "steps": 4}
    d = json.loads(server.get("/api/cell/%d/%d" % FILE_CELL)[2])
    assert d["origin"] == "file" and "generation" not in d and Path(d["source"]).is_file()
    assert d["provenance"] == {} and d["format"] == "PNG"
    info = json.loads(server.get("/api/info")[2])
    assert (info["cols"], info["rows"], info["width"], info["height"]) == (COLS, ROWS, W, H)


def test_originals_only_for_tiles_of_the_mosaic(mosaics, server):
    saved = mosaics["saved"]
    used = set(np.unique(saved.tile_ids).tolist())
    db = TileDB.open(mosaics["db"], readonly=True)
    try:
        unused = sorted(set(db.ids().tolist()) - used)
        assert unused, "the fixture should leave some tiles out of the mosaic"
        tid = int(saved.tile_ids[2, 3])
        status, headers, body = server.get(f"/tile/{tid}/original")
        # decoded and encoded again (never a file's bytes as stored): the original's pixels, as a PNG
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")),
                              np.asarray(db.load_original(tid)))
        # a BMP original is converted for the browser, pixels intact
        status, headers, body = server.get(f"/tile/{mosaics['bmp_id']}/original")
        assert status == 200 and headers["Content-Type"] == "image/png"
        bmp = np.asarray(Image.open(mosaics["root"] / "tiles" / "zz_bitmap.bmp").convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), bmp)
    finally:
        db.close()
    for other in (unused[0], unused[-1], 999999):
        assert server.get(f"/tile/{other}/original")[0] == 404, other


def test_maker_output_is_served_with_its_assignment(tmp_path, synthetic_db):
    """The real flow: `Maker` writes the TIFF and its assignment; the API reads them back."""
    target = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(8), 200, 120, "disc")).save(target)
    out = tmp_path / "made.tif"
    Maker(synthetic_db, MatchOptions(grid="10x6"), RenderOptions(tile_px=64, workers=2)).make(target, out)
    saved = asg.load(out)
    s = Served(out)
    try:
        for row, col in [(0, 0), (5, 9), (3, 4)]:
            d = json.loads(s.get(f"/api/cell/{row}/{col}")[2])
            assert d["tile_id"] == int(saved.tile_ids[row, col])
        assert decode_jpeg(s.get("/mosaic_files/10/2_1.jpeg")[2]).shape == (640 - 512, 384 - 256, 3)
    finally:
        s.close()


# ---- errors and the CLI ---------------------------------------------------------------------------
def test_mismatched_or_missing_pieces_fail_clearly(mosaics, tmp_path):
    with pytest.raises(UsageError, match="no saved assignment"):
        Image.new("RGB", (64, 64)).save(tmp_path / "lonely.png")
        Viewer(tmp_path / "lonely.png")
    with pytest.raises(MissingDependency, match="npm ci"):
        Viewer(mosaics["tiff"], osd_dir=tmp_path / "nowhere")
    moved = tmp_path / "copy.tif"
    moved.write_bytes(mosaics["tiff"].read_bytes())
    saved = mosaics["saved"]
    asg.save(moved, asg.SavedAssignment(replace(saved.meta, db=str(tmp_path / "gone.db")), saved.tile_ids,
                                        saved.cost, saved.target_mean, saved.target_std))
    with pytest.raises(Exception, match="--db"):
        Viewer(moved)
    v = Viewer(moved, db=mosaics["db"])
    v.close()
    wrong = tmp_path / "wrong.png"
    Image.new("RGB", (100, 64)).save(wrong)
    asg.save(wrong, saved)
    with pytest.raises(UsageError, match="not the 13x9 grid"):
        Viewer(wrong)


def test_busy_port_and_host_warning(mosaics):
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None and host_warning("::1") is None
    assert "anyone" in host_warning("0.0.0.0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        v = Viewer(mosaics["tiff"])
        try:
            with pytest.raises(UsageError, match="in use"):
                make_server(v, "127.0.0.1", taken.getsockname()[1])
        finally:
            v.close()


def test_cli_errors_are_one_line(tmp_path):
    res = invoke_cli(*["serve", str(tmp_path / "missing.tif"), "--no-open"])
    assert res.exit_code != 0 and "does not exist" in res.output and "Traceback" not in res.output


def test_cli_serves_until_stopped(mosaics):
    """`mosaic serve X --port 0 --no-open` prints its URL and answers there."""
    p = subprocess.Popen([sys.executable, "-m", "mosaicdb", "serve", str(mosaics["tiff"]), "--port", "0", "--no-open"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line, line + p.stderr.read() if p.poll() is not None else line
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/mosaic.dzi")
        r = c.getresponse()
        assert r.status == 200 and b'Width="832"' in r.read()
    finally:
        p.terminate()
        p.wait(10)


def test_ctrl_c_stops_the_server_with_a_browser_connection_still_open(mosaics):
    """A browser keeps its HTTP/1.1 connections open: Ctrl-C must not wait for them to time out
    (30 s) before `mosaic serve` exits."""
    import signal
    import time
    p = subprocess.Popen([sys.executable, "-m", "mosaicdb", "serve", str(mosaics["tiff"]), "--port", "0", "--no-open"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # a shell's background job (as CI may run us) inherits SIGINT ignored
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line, line + p.stderr.read() if p.poll() is not None else line
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)   # keep-alive, left open
        c.request("GET", "/mosaic.dzi")
        assert c.getresponse().read()
        time.sleep(0.2)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
        assert p.returncode == 130 and "Interrupted" in err, err
        assert time.monotonic() - t0 < 5
        c.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
