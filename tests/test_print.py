"""Print-ready output (issue 7): flat strip TIFFs with ICC and resolution, bleed, panels,
manifest, layout and proof, bad input refused before any work, flat memory."""
from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from clirun import invoke_cli
from PIL import Image, ImageCms

from mosaicdb import assignment as asg
from mosaicdb.errors import RenderError, UsageError
from mosaicdb.printing import PrintOptions, plan_print, write_print
from mosaicdb.printing import tiffstrips
from mosaicdb.printing.geometry import PANEL_MAX_BYTES, PANEL_MAX_SIDE, Geometry, cuts, make_geometry, plan_panels
from mosaicdb.printing.icc import srgb_bytes
from mosaicdb.render.options import RenderOptions
from mosaicdb.render.rows import render_array
from test_pyramid import random_assignment

RENDER_FIELDS = ("color", "color_strength", "quality", "workers", "cache_bytes")


def P(**kw) -> PrintOptions:
    """PrintOptions with the render fields (colour, threads, cache) given alongside."""
    render = {k: kw.pop(k) for k in RENDER_FIELDS if k in kw}
    return PrintOptions(**kw, render=RenderOptions(**render))

COMPRESSION_CODE = {"none": 1, "lzw": 5, "deflate": 8}


def reference_canvas(db, saved, g: Geometry, color: str = "none", strength: float = 0.5) -> np.ndarray:
    """The whole print in memory: the mosaic rendered at the print's cell size, its cells
    reflected across each edge for the bleed, cropped to the bleed box."""
    t = g.cell_px
    full = render_array(db, saved, RenderOptions(tile_px=t, color=color, color_strength=strength))
    cells = full.reshape(g.rows, t, g.cols, t, 3).swapaxes(1, 2)
    ext = cells[g.row_map()][:, g.col_map()]
    img = ext.swapaxes(1, 2).reshape(ext.shape[0] * t, ext.shape[1] * t, 3)
    o = g.offset
    return img[o:o + g.height, o:o + g.width]


def read_tiff(path) -> tuple[np.ndarray, tifffile.TiffPage, bool, int]:
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        return page.asarray(), page, tf.is_bigtiff, len(tf.pages)


def check_print_file(path, g: Geometry, compression: str, icc: bytes = None) -> np.ndarray:
    """Everything a RIP relies on, read back with tifffile; returns the pixels."""
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 1, "one image, no pyramid or extra pages"
        p = tf.pages[0]
        assert not p.is_tiled and p.rowsperstrip >= 1 and len(p.dataoffsets) == -(-p.imagelength // p.rowsperstrip)
        assert p.dtype == np.uint8 and p.samplesperpixel == 3 and p.photometric == 2 and not p.extrasamples
        assert p.compression == COMPRESSION_CODE[compression]
        assert p.predictor == (1 if compression == "none" else 2)
        assert p.tags[34675].value == (icc or srgb_bytes())
        for tag in ("XResolution", "YResolution"):
            num, den = p.tags[tag].value
            assert abs(num / den - g.dpi) < 1e-4 * g.dpi
        assert p.tags["ResolutionUnit"].value == 2
        assert "ImageDescription" not in p.tags
        assert tf.is_bigtiff is False
        return p.asarray()


@pytest.fixture(scope="module")
def saved12(synthetic_db):
    return random_assignment(synthetic_db, 14, 10, seed=7)


# ---- the flat print ----------------------------------------------------------------------------
@pytest.mark.parametrize("compression,color,size", [("lzw", "none", "20cm"), ("deflate", "meanstd", "20cm"),
                                                    ("none", "mean", "9cm")])
def test_flat_tiff_reads_back_exactly(synthetic_db, saved12, tmp_path, compression, color, size):
    opts = P(size=size, dpi=120, compression=compression, color=color, workers=2, buffer_bytes=1 << 20)
    m = write_print(synthetic_db, saved12, opts, tmp_path / "p.tif")
    g, _ = make_geometry(14, 10, (float(size[:-2]) / 2.54, None), 120, 0)
    assert (m["cell_px"], m["size_px"]) == (g.cell_px, [g.width, g.height])
    # 20 cm: 67.5 px per cell -> 67 or 68 (from originals); 9 cm: 30 px (from thumbnails)
    assert abs(g.cols * g.cell_px / g.dpi * 2.54 - float(size[:-2])) < 1e-6  # lands on the size exactly
    got = check_print_file(tmp_path / "p.tif", g, compression)
    np.testing.assert_array_equal(got, reference_canvas(synthetic_db, saved12, g, color))
    if compression == "lzw":  # libtiff (through Pillow) reads it the same
        with Image.open(tmp_path / "p.tif") as im:
            np.testing.assert_array_equal(np.asarray(im), got)
            assert im.info["icc_profile"] == srgb_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.print.json", "p.tif"]
    man = json.loads((tmp_path / "p.print.json").read_text())
    assert man["panels"][0]["name"] == "p.tif" and man["dpi"] == pytest.approx(g.dpi)


def test_bleed_is_reflected_mosaic_content(synthetic_db, saved12, tmp_path):
    # 20 cm over 14 cells at 100 dpi: 56 px cells (99.6 dpi); 2 cm bleed = 78 px: more than a cell
    opts = P(size="20cm", dpi=100, bleed="2cm", color="mean", workers=2)
    m = write_print(synthetic_db, saved12, opts, tmp_path / "b.tif")
    g, _ = make_geometry(14, 10, (20 / 2.54, None), 100, 2 / 2.54)
    t, b = g.cell_px, g.bleed_px
    assert (t, b, g.bleed_cells) == (56, 78, 2)
    got = check_print_file(tmp_path / "b.tif", g, tiffstrips.DEFAULT_COMPRESSION)
    assert got.shape == (10 * t + 2 * b, 14 * t + 2 * b, 3)
    assert m["trim_box_px"] == [b, b, b + 14 * t, b + 10 * t] and m["bleed_box_px"] == [0, 0, got.shape[1], got.shape[0]]
    assert m["bleed"]["px"] == b and abs(m["bleed"]["mm"] - 20) < 0.2
    full = render_array(synthetic_db, saved12, RenderOptions(tile_px=t, color="mean"))
    np.testing.assert_array_equal(got[b:-b, b:-b], full)  # the trim box is the mosaic itself
    # explicit reflection, independent of the implementation's index maps: the cell left of
    # column 0 is column 1, the one before it column 2 (drawn upright, full size, same colour)
    rows = slice(b, b + 10 * t)
    np.testing.assert_array_equal(got[rows, b - t:b], full[:, t:2 * t])
    np.testing.assert_array_equal(got[rows, :b - t], full[:, 3 * t - (b - t):3 * t])
    np.testing.assert_array_equal(got[b + 10 * t:b + 11 * t, b:b + 14 * t], full[8 * t:9 * t])   # below: row 8
    np.testing.assert_array_equal(got[:b - t, :b - t], full[3 * t - (b - t):3 * t, 3 * t - (b - t):3 * t])  # corner
    strip = got[:, :b].reshape(-1, 3)
    assert strip.std(axis=0).min() > 10 and (strip == 255).all(axis=1).mean() < 0.05  # not white, not flat
    np.testing.assert_array_equal(got, reference_canvas(synthetic_db, saved12, g, "mean"))


# ---- panels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", [{"panels": "3x2", "overlap": "1cm"}, {"panel_width": "9cm", "overlap": "15mm"}])
def test_panels_tile_the_print_exactly(synthetic_db, saved12, tmp_path, how):
    base = dict(size="24cm", dpi=80, bleed="5mm", workers=2)
    (tmp_path / "whole").mkdir()
    whole = write_print(synthetic_db, saved12, P(**base), tmp_path / "whole" / "w.tif")
    W, H = whole["size_px"]
    ref = tifffile.imread(tmp_path / "whole" / "w.tif")
    m = write_print(synthetic_db, saved12, P(**base, **how, proof=True), tmp_path / "out", "mos")
    folder = tmp_path / "out"
    names = [p["name"] for p in m["panels"]]
    assert sorted(names) == sorted(p.name for p in folder.glob("mos_r*_c*.tif"))
    assert all(n == f"mos_r{p['row']:02d}_c{p['col']:02d}.tif" for n, p in zip(names, m["panels"]))
    cols, rows = m["panel_grid"]["cols"], m["panel_grid"]["rows"]
    assert len(names) == cols * rows > 1 and m["size_px"] == [W, H]
    ov = m["overlap"]["px"]
    assert ov == round((10 if "panels" in how else 15) / 25.4 * m["dpi"])
    canvas = np.zeros((H, W, 3), np.uint8)
    covered = np.zeros((H, W), np.int32)
    g, _ = make_geometry(14, 10, (24 / 2.54, None), 80, 5 / 25.4)
    for p in m["panels"]:
        x0, y0, x1, y1 = p["box_px"]
        px = check_print_file(folder / p["name"], g, tiffstrips.DEFAULT_COMPRESSION)
        assert px.shape == (y1 - y0, x1 - x0, 3) and p["size_px"] == [x1 - x0, y1 - y0]
        assert max(px.shape[:2]) <= PANEL_MAX_SIDE and p["bytes"] < 2 ** 32 and not p["bigtiff"]
        assert p["size_mm"][0] == pytest.approx((x1 - x0) / m["dpi"] * 25.4, abs=0.01)
        np.testing.assert_array_equal(px, ref[y0:y1, x0:x1])  # every panel is its part of the print
        # reassemble minus the overlaps: each panel gives all but its right/bottom overlap
        xe = x1 - (ov if p["col"] < cols else 0)
        ye = y1 - (ov if p["row"] < rows else 0)
        canvas[y0:ye, x0:xe] = px[:ye - y0, :xe - x0]
        covered[y0:ye, x0:xe] += 1
        assert p["overlap_px"]["right"] == (ov if p["col"] < cols else 0)
    assert (covered == 1).all()
    np.testing.assert_array_equal(canvas, ref)
    if "panel_width" in how:
        assert max(p["size_mm"][0] for p in m["panels"]) <= 90.0
    # neighbours share exactly `ov` px
    row1 = [p for p in m["panels"] if p["row"] == 1]
    assert all(a["box_px"][2] - b["box_px"][0] == ov for a, b in zip(row1, row1[1:]))
    # layout and proof
    with Image.open(folder / "mos.layout.png") as im:
        assert max(im.size) <= 1200 and im.size[0] > 100
    with Image.open(folder / "mos.proof.jpg") as im:
        assert max(im.size) <= 8000 and abs(im.size[0] / im.size[1] - W / H) < 0.02
        proof = np.asarray(im.convert("RGB")).astype(int)
    s = m["proof"]["scale"]
    seam_x = round(row1[1]["box_px"][0] * s)  # the left edge of panel c02, drawn in red
    col = proof[proof.shape[0] // 3:2 * proof.shape[0] // 3, seam_x]
    assert (col[:, 0] - col[:, 1:].max(axis=1)).mean() > 80
    assert not list(folder.glob(".*tmp*"))


def test_panel_geometry_at_full_scale():
    """The benchmark's 5.5 m at 300 dpi in 1.2 m panels, and a tall print that needs rows: no
    rendering, just the boxes."""
    g, _ = make_geometry(128, 128, (5.5 / 0.0254, None), 300, 0)
    lay = plan_panels(g, panel_width_in=1.2 / 0.0254, overlap_in=2 / 2.54)
    assert lay.cols == 5 and lay.rows == 1
    ws = [p.width for p in lay.panels]
    assert max(ws) <= 1.2 / 0.0254 * g.dpi and max(ws) - min(ws) <= 1
    assert all(p.width * p.height * 3 <= PANEL_MAX_BYTES and p.height <= PANEL_MAX_SIDE for p in lay.panels)
    tall, _ = make_geometry(10, 40, (8 / 0.0254, None), 300, 0)   # 94,488 px tall
    lay = plan_panels(tall, panel_width_in=1.0 / 0.0254, overlap_in=1 / 2.54)
    assert lay.rows == 2 and all(p.height <= PANEL_MAX_SIDE for p in lay.panels) and lay.note
    for total, n, ov in [(1000, 3, 0), (1001, 7, 13), (64961, 5, 236), (10, 10, 0)]:
        r = cuts(total, n, ov)
        assert r[0][0] == 0 and r[-1][1] == total
        assert all(b[0] > a[0] and a[1] - b[0] == ov for a, b in zip(r, r[1:]))
    with pytest.raises(UsageError, match="65,500"):
        plan_panels(tall, grid=(1, 1))


def test_bigtiff_beyond_the_classic_limit(synthetic_db, saved12, tmp_path, monkeypatch):
    monkeypatch.setattr(tiffstrips, "CLASSIC_MAX", 50_000)
    m = write_print(synthetic_db, saved12, P(size="12cm", dpi=100, workers=1), tmp_path / "big.tif")
    arr, page, big, n = read_tiff(tmp_path / "big.tif")
    assert big and n == 1 and not page.is_tiled and m["panels"][0]["bigtiff"]
    assert any("BigTIFF" in w and "print shop" in w for w in m["warnings"])
    g, _ = make_geometry(14, 10, (12 / 2.54, None), 100, 0)
    np.testing.assert_array_equal(arr, reference_canvas(synthetic_db, saved12, g))


def test_upsampling_is_reported(synthetic_db, saved12, tmp_path):
    # synthetic originals are 8-160 px: 14 cells over 1 m at 100 dpi need 281 px each
    big = plan_print(synthetic_db, saved12, P(size="1m", dpi=100), tmp_path / "x.tif", sample=False)
    t = big.tiles
    assert t["cell_px"] == 281 and t["upsampled_tiles"] == t["distinct_tiles"] and t["max_upsampling"] > 10
    w = [w for w in big.warnings if "upsampled" in w]
    assert w and "281 px" in w[0] and "x" in w[0]
    small = plan_print(synthetic_db, saved12, P(size="3cm", dpi=100), tmp_path / "x.tif", sample=False)
    assert small.tiles["cell_px"] == 8 and small.tiles["upsampled_tiles"] == 0
    assert not any("upsampled" in w for w in small.warnings)
    assert list(tmp_path.iterdir()) == []


# ---- colour profiles ---------------------------------------------------------------------------
def _s15(x):
    return struct.pack(">i", round(x * 65536))


def rgb_profile(gamma: float, name: str, space: bytes = b"RGB ") -> bytes:
    """A minimal ICC v2 matrix/TRC profile with sRGB's primaries and a pure gamma curve."""
    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)
    curv = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    a = name.encode() + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(a)) + a + b"\0" * 78
    tags = [(b"desc", desc), (b"cprt", b"text\0\0\0\0none\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv)]
    off = 128 + 4 + 12 * len(tags)
    table = data = b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", off + len(data), len(body))
        data += body
    hdr = (struct.pack(">I", off + len(data)) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ "
           + b"\0" * 12 + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(hdr) == 128
    return hdr + struct.pack(">I", len(tags)) + table + data


def test_icc_profile_is_embedded_and_pixels_converted(synthetic_db, saved12, tmp_path):
    lin = tmp_path / "linear.icc"
    lin.write_bytes(rgb_profile(1.0, "linear test RGB"))
    out = tmp_path / "o"
    out.mkdir()
    m = write_print(synthetic_db, saved12, P(size="10cm", dpi=100, icc=str(lin), workers=2), out / "l.tif")
    g, _ = make_geometry(14, 10, (10 / 2.54, None), 100, 0)
    got = check_print_file(out / "l.tif", g, tiffstrips.DEFAULT_COMPRESSION, icc=lin.read_bytes())
    assert m["profile"]["name"] == "linear test RGB" and m["profile"]["source"] == str(lin)
    ref = reference_canvas(synthetic_db, saved12, g)
    tr = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(srgb_bytes())), ImageCms.ImageCmsProfile(str(lin)),
                                 "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                 flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)
    np.testing.assert_array_equal(got, np.asarray(ImageCms.applyTransform(Image.fromarray(ref), tr)))
    assert got.mean() < ref.mean() - 20  # linear values of sRGB midtones are darker
    same = tmp_path / "srgb.icc"
    same.write_bytes(srgb_bytes())
    write_print(synthetic_db, saved12, P(size="10cm", dpi=100, icc=str(same)), out / "s.tif")
    np.testing.assert_array_equal(check_print_file(out / "s.tif", g, tiffstrips.DEFAULT_COMPRESSION), ref)


# ---- bad input ---------------------------------------------------------------------------------
@pytest.fixture
def saved_file(synthetic_db, saved12, tmp_path):
    p = tmp_path / "m.tif"
    asg.save(p, saved12)
    return str(asg.sidecar_paths(p)[0])


def test_bad_input_is_one_line_before_any_work(saved_file, tmp_path):
    (tmp_path / "not.icc").write_bytes(b"hello, I am not a profile" * 20)
    (tmp_path / "lab.icc").write_bytes(rgb_profile(1.0, "lab", space=b"Lab "))
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        (["--size", "100m", "--dpi", "10000"], "4096 px"),                    # beyond what is drawn/allowed
        (["--size", "5mm", "--dpi", "50"], "less than a pixel per cell"),
        (["--size", "20cm", "--dpi", "0"], "--dpi"),
        (["--size", "20parsec"], "not a length"),
        (["--size", "20cm", "--bleed", "3furlongs"], "--bleed"),
        (["--size", "50cm", "--panel-width", "2cm", "--overlap", "2cm"], "wider than --overlap"),
        (["--size", "50cm", "--panel-width", "3cm", "--overlap", "2cm"], "twice"),
        (["--size", "50cm", "--panels", "3x2", "--panel-width", "20cm"], "not both"),
        (["--size", "50cm", "--panels", "3by2"], "COLSxROWS"),
        (["--size", "20cm", "--overlap", "1cm"], "for panels"),
        (["--size", "20cm", "--icc", str(tmp_path / "not.icc")], "not an ICC profile"),
        (["--size", "20cm", "--icc", str(tmp_path / "lab.icc")], "RGB"),
        (["--size", "20cm", "--icc", str(tmp_path / "missing.icc")], "cannot read"),
        (["--size", "20cm", "--compression", "jpeg"], "jpeg"),
        (["--size", "10cm", "--bleed", "20cm"], "usually 3 mm"),              # a bleed past the print
    ]
    for args, msg in cases:
        r = invoke_cli(*["print", saved_file, "--out", str(out), "-q", *args])
        assert r.exit_code != 0, (args, r.output)
        assert msg in r.output, (args, r.output)
        lines = r.output.strip().splitlines()
        assert "Traceback" not in r.output and sum(ln.startswith("Error:") for ln in lines) == 1, r.output
        assert lines[-1].startswith("Error:"), r.output  # click's usage errors add a Usage line above
    r = invoke_cli(*["print", saved_file, "--size", "10cm", "--out", str(tmp_path / "x.jpg")])
    assert r.exit_code != 0 and ".tif/.tiff file or a folder" in r.output
    r = invoke_cli(*["print", saved_file, "--size", "10cm", "--out", str(tmp_path / "no" / "x.tif")])
    assert r.exit_code != 0 and "does not exist" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_geometry_beyond_tiff_limits():
    with pytest.raises(UsageError, match="TIFF allows"):
        make_geometry(2_000_000, 10, (11_000 / 0.0254, None), 10_000, 0)


def test_not_enough_disk_and_failures_leave_nothing(synthetic_db, saved12, tmp_path, monkeypatch):
    import shutil as sh
    from mosaicdb import io
    from mosaicdb.printing.canvas import PrintCanvas
    real = sh.disk_usage
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(RenderError, match="free"):
        write_print(synthetic_db, saved12, P(size="10cm", dpi=100), tmp_path / "d")
    monkeypatch.setattr(io.shutil, "disk_usage", real)
    calls = []
    orig = PrintCanvas.band

    def failing(self, *a):
        calls.append(a)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return orig(self, *a)

    monkeypatch.setattr(PrintCanvas, "band", failing)
    opts = P(size="20cm", dpi=100, panels="2x1", overlap="1cm", buffer_bytes=200_000, workers=1)
    with pytest.raises(KeyboardInterrupt):
        write_print(synthetic_db, saved12, opts, tmp_path / "k")
    assert len(calls) > 3 and list(tmp_path.iterdir()) == []


# ---- CLI and plan ------------------------------------------------------------------------------
def test_cli_print_and_plan_agree(saved_file, tmp_path):
    args = ["--size", "30x20cm", "--dpi", "90", "--panel-width", "12cm", "--overlap", "1cm", "--bleed", "3mm"]
    r = invoke_cli(*["plan", saved_file, "--print", *args, "--out", str(tmp_path / "pp"), "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert not (tmp_path / "pp").exists()
    r = invoke_cli(*["print", saved_file, *args, "--out", str(tmp_path / "pp"), "-q"])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "pp" / "m.panels.json").read_text())
    assert [f["name"] for f in plan["files"]] == [p["name"] for p in man["panels"]]
    assert [f["size_px"] for f in plan["files"]] == [p["size_px"] for p in man["panels"]]
    assert [f["box_px"] for f in plan["files"]] == [p["box_px"] for p in man["panels"]]
    assert 0.5 < plan["est_total_bytes"] / man["bytes"] < 2.0
    assert plan["tiles"]["median_ppi"] > 0 and plan["geometry"]["dpi"] == pytest.approx(man["dpi"])
    assert r.output.strip().splitlines()[-1].endswith("m.panels.json")
    r = invoke_cli(*["plan", saved_file, *args, "--out", str(tmp_path / "pp")])
    assert r.exit_code == 0 and "m_r01_c01.tif" in r.output and "ppi" in r.output


# ---- memory ------------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from mosaicdb import TileDB
    from mosaicdb.assignment import SavedAssignment
    from mosaicdb.printing import PrintOptions, write_print
    from mosaicdb.render.options import RenderOptions
    n, out = int(sys.argv[1]), sys.argv[2]
    with TileDB.open({db!r}, readonly=True) as db:
        rng = np.random.default_rng(1)
        ids = rng.choice(db.ids(), size=(n, n)).astype(np.int64)
        meta = {{"db": str(db.path), "grid": {{"cols": n, "rows": n, "crop": [0, 0, n, n]}}, "render": {{}}}}
        saved = SavedAssignment(meta, ids, np.zeros((n, n), np.float32), np.zeros((n, n, 3), np.float32),
                                np.zeros((n, n, 3), np.float32))
        opts = PrintOptions(size=f"{{n * 48 / 100}}in", dpi=100, compression="none", buffer_bytes=8 << 20,
                            render=RenderOptions(workers=2, cache_bytes=16 << 20))
        m = write_print(db, saved, opts, out)
    try:  # VmHWM: Linux carries ru_maxrss over from the (large) parent across fork+exec
        peak = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"rss_kb": peak, "px": m["size_px"]}}))
""")


@pytest.mark.slow
def test_peak_memory_stays_flat_as_the_print_grows(synthetic_db, tmp_path):
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT.format(db=str(synthetic_db.path)))
    res = {}
    for n in (30, 120):  # 1,440^2 (6 MB) and 5,760^2 (100 MB) px at 48 px per cell
        p = subprocess.run([sys.executable, str(script), str(n), str(tmp_path / f"m{n}.tif")], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert p.returncode == 0, p.stderr
        res[n] = json.loads(p.stdout.strip().splitlines()[-1])
    assert res[120]["px"] == [5760, 5760]
    grew_mb = (res[120]["rss_kb"] - res[30]["rss_kb"]) / 1024
    assert grew_mb < 30, res   # the larger print holds 94 MB more pixels; none of them at once


def test_a_panel_width_under_one_cell_is_refused():
    g = Geometry(40, 30, 98, 100.0, 100.0, 0, (40 / 2.54, None))  # 98 px cells at 100 dpi: 24.9 mm
    with pytest.raises(UsageError, match="--panel-width 10 mm: panels would be .* narrower than one cell .* wider panel"):
        plan_panels(g, panel_width_in=1 / 2.54)
    assert plan_panels(g, panel_width_in=3 / 2.54).cols > 1   # 30 mm: more than a cell, fine


# ---- invariants of the panel boxes --------------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(cols=st.integers(1, 300), rows=st.integers(1, 300), t=st.integers(1, 400), bleed=st.integers(0, 300),
       pw_frac=st.floats(0.05, 1.5), ov=st.integers(0, 400))
def test_panels_cover_the_canvas_exactly(cols, rows, t, bleed, pw_frac, ov):
    g = Geometry(cols, rows, t, 300.0, 300.0, bleed, (1.0, None))
    pw_in = max(1, int(g.width * pw_frac)) / 300.0
    try:
        lay = plan_panels(g, panel_width_in=pw_in, overlap_in=ov / 300.0)
    except UsageError as e:
        assert "overlap" in str(e) or "65,500" in str(e) or "too small" in str(e) or "narrower than one cell" in str(e)
        return
    ov = lay.overlap_px
    assert all(p.x1 - p.x0 >= min(g.cell_px, g.width) for p in lay.panels)  # none narrower than a cell
    xs = sorted({(p.x0, p.x1) for p in lay.panels})
    ys = sorted({(p.y0, p.y1) for p in lay.panels})
    for spans, total in ((xs, g.width), (ys, g.height)):
        assert spans[0][0] == 0 and spans[-1][1] == total
        step_ov = ov if len(spans) > 1 else 0
        assert all(a[1] - b[0] == step_ov and b[0] > a[0] for a, b in zip(spans, spans[1:]))
        assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1
    assert max(p.width for p in lay.panels) <= math.floor(pw_in * g.dpi)  # never wider than asked
    assert all(max(p.width, p.height) <= PANEL_MAX_SIDE and p.width * p.height * 3 <= PANEL_MAX_BYTES
               for p in lay.panels)
    assert len(lay.panels) == lay.cols * lay.rows
