"""Gigapixel outputs: pyramidal BigTIFF and DZI rendered level by level (issue 4)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import tifffile
from clirun import invoke_cli
from conftest import start_render_to_interrupt

from mosaicdb import assignment as asg
from mosaicdb.errors import RenderError, UsageError
from mosaicdb.make import render_saved
from mosaicdb.render.layout import TILE
from mosaicdb.render.options import RenderOptions
from mosaicdb.render.pyramid import plan_levels
from mosaicdb.render.rows import render_array


def random_assignment(db, cols: int, rows: int, seed: int = 0) -> asg.SavedAssignment:
    """A saved assignment of random tiles (rendering does not care how tiles were chosen)."""
    rng = np.random.default_rng(seed)
    ids = db.ids()
    tile_ids = rng.choice(ids, size=(rows, cols))
    mean = rng.uniform(30, 220, (rows, cols, 3)).astype(np.float32)
    std = rng.uniform(5, 40, (rows, cols, 3)).astype(np.float32)
    meta = {"db": str(db.path), "db_version": db.version,
            "target": {"path": "/nonexistent.png", "sha256": "0" * 64, "size": [cols * 8, rows * 8]},
            "grid": {"cols": cols, "rows": rows, "crop": [0, 0, cols * 8, rows * 8]}, "render": {}}
    return asg.SavedAssignment(meta, tile_ids.astype(np.int64), np.zeros((rows, cols), np.float32), mean, std)


def reference_level(db, saved, levels, small_px, lv, color="none"):
    """An independent whole-level render in memory: direct levels at their cell size, small
    levels area-resampled from a render at small_px per cell."""
    if lv.cell_px is not None:
        return render_array(db, saved, RenderOptions(tile_px=lv.cell_px, color=color))
    small = render_array(db, saved, RenderOptions(tile_px=small_px, color=color))
    if small.shape[:2] == (lv.height, lv.width):
        return small
    return cv2.resize(small, (lv.width, lv.height), interpolation=cv2.INTER_AREA)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """`img` encoded tile by tile (256 px, zero-padded) as the TIFF writer does, then decoded."""
    import imagecodecs
    out = np.empty_like(img)
    for y in range(0, img.shape[0], TILE):
        for x in range(0, img.shape[1], TILE):
            t = np.zeros((TILE, TILE, 3), np.uint8)
            part = img[y:y + TILE, x:x + TILE]
            t[:part.shape[0], :part.shape[1]] = part
            enc = imagecodecs.jpeg8_encode(t, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))
            out[y:y + TILE, x:x + TILE] = imagecodecs.jpeg8_decode(enc)[:part.shape[0], :part.shape[1]]
    return out


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.parametrize("size,codec,color", [
    (4096, "deflate", "none"), (4096, "jpeg", "mean"),
    pytest.param(8192, "zstd", "meanstd", marks=pytest.mark.slow),
    pytest.param(8192, "jpeg", "none", marks=pytest.mark.slow)])
def test_every_level_equals_in_memory_render(synthetic_db, tmp_path, size, codec, color):
    cols = rows = size // TILE
    saved = random_assignment(synthetic_db, cols, rows, seed=size)
    out = tmp_path / "p.tif"
    w = render_saved(synthetic_db, saved, out, RenderOptions(tile_px=TILE, codec=codec, color=color, quality=92))
    levels, small_px = plan_levels(cols, rows, TILE)
    assert w["levels"] == [(lv.width, lv.height, lv.cell_px) for lv in levels]
    with tifffile.TiffFile(out) as tf:
        assert tf.is_bigtiff
        pages = tf.pages
        assert len(pages) == len(levels)
        for lv, page in zip(levels, pages):
            assert page.shape == (lv.height, lv.width, 3)
            assert page.is_tiled and page.tilewidth == TILE and page.tilelength == TILE
            assert page.subfiletype == (0 if lv.index == 0 else 1)
            got = page.asarray()
            ref = reference_level(synthetic_db, saved, levels, small_px, lv, color)
            if codec == "jpeg":
                # JPEG tolerance: exactly what encoding the reference's own tiles gives, +-1 level
                rt = jpeg_roundtrip(ref, 92)
                assert np.abs(got.astype(int) - rt).max() <= 1, f"level {lv.index}"
            else:
                np.testing.assert_array_equal(got, ref, err_msg=f"level {lv.index}")
    assert levels[-1].width <= TILE and levels[-1].height <= TILE


def test_openslide_reads_all_levels(synthetic_db, tmp_path):
    openslide = pytest.importorskip("openslide", reason="openslide-python + openslide-bin not installed")
    saved = random_assignment(synthetic_db, 24, 16)
    out = tmp_path / "slide.tif"
    render_saved(synthetic_db, saved, out, RenderOptions(tile_px=TILE, codec="jpeg"))
    levels, _ = plan_levels(24, 16, TILE)
    s = openslide.OpenSlide(str(out))
    try:
        assert s.level_count == len(levels)
        assert list(s.level_dimensions) == [(lv.width, lv.height) for lv in levels]
        region = np.asarray(s.read_region((0, 0), 0, (512, 512)).convert("RGB"))
        ref = render_array(synthetic_db, saved, RenderOptions(tile_px=TILE))[:512, :512]
        assert psnr(region, ref) > 30
    finally:
        s.close()


def test_ome_writes_subifds(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 12, 8)
    out = tmp_path / "ome.tif"
    render_saved(synthetic_db, saved, out, RenderOptions(tile_px=TILE, ome=True, codec="deflate"))
    levels, _ = plan_levels(12, 8, TILE)
    with tifffile.TiffFile(out) as tf:
        assert tf.is_ome
        assert len(tf.pages) == 1  # reduced levels are SubIFDs, not pages
        series = tf.series[0]
        assert len(series.levels) == len(levels)
        assert [lvl.shape[:2] for lvl in series.levels] == [(lv.height, lv.width) for lv in levels]
        np.testing.assert_array_equal(series.levels[1].asarray(), render_array(synthetic_db, saved, RenderOptions(tile_px=TILE // 2)))


def test_tile_decoded_once_and_bytes_reused(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 32, 32, seed=3)
    w = render_saved(synthetic_db, saved, tmp_path / "r.tif", RenderOptions(tile_px=TILE, workers=2))
    distinct = len(np.unique(saved.tile_ids))
    assert w["original_decodes"] == distinct
    assert w["reused_tile_bytes"] == saved.tile_ids.size - distinct


def test_non_power_of_two_tile_px(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 24, 16)
    out = tmp_path / "odd.tif"
    render_saved(synthetic_db, saved, out, RenderOptions(tile_px=200, codec="deflate"))
    levels, small_px = plan_levels(24, 16, 200)
    assert [lv.cell_px for lv in levels][:4] == [200, 100, 50, 25] and levels[4].cell_px is None
    with tifffile.TiffFile(out) as tf:
        for lv, page in zip(levels, tf.pages):
            np.testing.assert_array_equal(page.asarray(), reference_level(synthetic_db, saved, levels, small_px, lv))


def test_impossible_tile_px_fails_before_work(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 1024, 1024)
    out = tmp_path / "bad.tif"
    with pytest.raises(RenderError, match="tile-px"):
        render_saved(synthetic_db, saved, out, RenderOptions(tile_px=255))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_dzi_is_valid_and_complete(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 9, 5)
    out = tmp_path / "zoom.dzi"
    render_saved(synthetic_db, saved, out, RenderOptions(tile_px=64, codec="deflate"))
    root = ET.parse(out).getroot()
    ns = "{http://schemas.microsoft.com/deepzoom/2008}"
    assert root.tag == f"{ns}Image" and root.get("TileSize") == "256" and root.get("Format") == "png"
    size = root.find(f"{ns}Size")
    W, H = int(size.get("Width")), int(size.get("Height"))
    assert (W, H) == (9 * 64, 5 * 64)
    files = tmp_path / "zoom_files"
    top = int(np.ceil(np.log2(max(W, H))))
    assert sorted(int(p.name) for p in files.iterdir()) == list(range(top + 1))
    for level in range(top + 1):
        w, h = -(-W // 2 ** (top - level)), -(-H // 2 ** (top - level))
        names = {p.name for p in (files / str(level)).iterdir()}
        expect = {f"{x}_{y}.png" for x in range(-(-w // 256)) for y in range(-(-h // 256))}
        assert names == expect, f"level {level}"
    from PIL import Image
    assert Image.open(files / "0" / "0_0.png").size == (1, 1)
    full = np.zeros((H, W, 3), np.uint8)
    for p in (files / str(top)).iterdir():
        x, y = (int(v) for v in p.stem.split("_"))
        a = np.asarray(Image.open(p).convert("RGB"))
        full[y * 256:y * 256 + a.shape[0], x * 256:x * 256 + a.shape[1]] = a
    np.testing.assert_array_equal(full, render_array(synthetic_db, saved, RenderOptions(tile_px=64)))


# measured 192-200 MB (issue 18: ~90 MB of imports, ~74 MB of decoded originals, the rest working set)
RENDER_RSS_BUDGET_MB = 280


def _peak_rss_of_render(db_path, assignment, out) -> float:
    code = (
        "import sys\n"
        "from mosaicdb import TileDB, assignment as asg\n"
        "from mosaicdb.render.output import render_saved\n"
        "from mosaicdb.render.options import RenderOptions\n"
        "saved = asg.load(sys.argv[2])\n"
        "with TileDB.open(sys.argv[1], readonly=True) as db:\n"
        "    render_saved(db, saved, sys.argv[3], RenderOptions(tile_px=256, color='mean', workers=2))\n"
        # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork+exec into ru_maxrss
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(db_path), str(assignment), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_flat_from_8192_to_16384(synthetic_db, tmp_path):
    rss = {}
    for size in (8192, 16384):
        n = size // TILE
        saved = random_assignment(synthetic_db, n, n, seed=n)
        p = tmp_path / f"m{size}.tif"
        asg.save(p, saved)
        rss[size] = _peak_rss_of_render(synthetic_db.path, asg.sidecar_paths(p)[0], p)
        assert p.stat().st_size > 0
        p.unlink()
    # an absolute budget (ratios of two noisy peaks flake): 4x the pixels of 8192^2 and 64^2 cells
    # render in well under the memory of one uncompressed 16384^2 level (805 MB)
    print(f"peak RSS: {rss}")
    assert max(rss.values()) < RENDER_RSS_BUDGET_MB, rss


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_render_leaves_no_file_under_final_name(synthetic_db, tmp_path, sig):
    n = 320  # 81920^2 canvas at 256 px: far too long to finish before the signal
    saved = random_assignment(synthetic_db, n, n, seed=5)
    out = tmp_path / "killed.tif"
    # a shell's background job (as CI may run us) inherits SIGINT ignored
    proc = start_render_to_interrupt(saved, out, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    if sig == signal.SIGINT:  # a clean interrupt also removes the temporary file
        assert not any(p.name.startswith(".killed.tif") for p in tmp_path.iterdir())
        assert "Traceback" not in err


def test_print_size_and_dpi_tags(synthetic_db, tmp_path):
    ropts = RenderOptions(print_size="20x10cm", tile_px=128)
    cols, rows = (int(v) for v in ropts.grid_for_print().split("x"))
    assert (cols, rows) == (18, 9)  # 20 cm at 300 dpi = 2362 px = 18.45 cells of 128 px
    saved = random_assignment(synthetic_db, cols, rows)
    out = tmp_path / "print.tif"
    w = render_saved(synthetic_db, saved, out, ropts)
    with tifffile.TiffFile(out) as tf:
        p = tf.pages[0]
        assert (p.imagewidth, p.imagelength) == (cols * 128, rows * 128)
        x = p.tags["XResolution"].value
        dpi = x[0] / x[1]
        assert p.tags["ResolutionUnit"].value == 2  # inch
        assert abs(cols * 128 / dpi * 2.54 - 20) < 0.01  # the physical width is what was asked
        assert "{" not in (p.description or "")  # no JSON in ImageDescription
    assert w["warnings"] == []
    with pytest.raises(UsageError, match="two of them"):
        RenderOptions(print_size="20cm", tile_px=128, dpi=300)
    with pytest.raises(UsageError, match="unit"):
        RenderOptions(print_size="20 parsecs")


def test_not_enough_disk_fails_before_work(synthetic_db, tmp_path, monkeypatch):
    import shutil as sh
    from mosaicdb import io
    real = sh.disk_usage
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    saved = random_assignment(synthetic_db, 16, 16)
    with pytest.raises(RenderError, match="free"):
        render_saved(synthetic_db, saved, tmp_path / "full.tif", RenderOptions(tile_px=256))
    assert list(tmp_path.iterdir()) == []


def test_cli_plan_and_bad_outputs(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 16, 12)
    out = tmp_path / "m.tif"
    asg.save(out, saved)
    j = str(asg.sidecar_paths(out)[0])
    r = invoke_cli(*["plan", j, "--out", str(tmp_path / "x.tif"), "--tile-px", "256", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["width"], d["height"], d["kind"]) == (16 * 256, 12 * 256, "tiff")
    assert d["tiles"] == sum(-(-w // 256) * -(-h // 256) for w, h, _ in d["levels"]) and d["est_bytes"] > 0
    assert not (tmp_path / "x.tif").exists()
    r = invoke_cli(*["plan", "--grid", "256x256", "--tile-px", "256", "--out", str(tmp_path / "y.tif")])
    assert r.exit_code == 0 and "65,536 x 65,536" in r.output
    for args, msg in [(["--out", str(tmp_path / "nofolder" / "a.tif")], "does not exist"),
                      (["--out", str(tmp_path / "a.bmp")], "unknown output type"),
                      (["--out", str(tmp_path / "a.jpg"), "--tile-px", "4096"], "limit"),
                      (["--out", str(tmp_path / "a.tif"), "--codec", "gif"], "gif")]:
        r = invoke_cli(*["render", j, *args])
        assert r.exit_code != 0, args
        assert msg in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mosaic.json", "m.mosaic.npz"]


def test_cli_render_tif_with_print_size(synthetic_db, tmp_path):
    saved = random_assignment(synthetic_db, 20, 10)
    out = tmp_path / "m.tif"
    asg.save(out, saved)
    r = invoke_cli(*["render", str(asg.sidecar_paths(out)[0]), "--out", str(out),
                                 "--print-size", "40cm", "--dpi", "150", "-q"])
    assert r.exit_code == 0, r.output
    with tifffile.TiffFile(out) as tf:
        w = tf.pages[0].shape[1]
        x = tf.pages[0].tags["XResolution"].value
        assert abs(w / (x[0] / x[1]) * 2.54 - 40) < 0.05
