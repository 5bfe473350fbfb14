"""The one assignment -> pixels path (`render/cells.py`, `color.recolor_grid`), issue 18: colour
transfer painted in bounded slices with nothing kept per cell, exactly equal to the per-tile
lookup-table render it replaced, for every colour mode, cell size, pyramid level, print and proof;
and peak memory that does not grow with the number of cells."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import tracemalloc

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings, strategies as st

from mosaicdb import assignment as asg
from mosaicdb.color import affine_luts, recolor_grid, transfer
from mosaicdb.match.grid import Grid, resample_cells
from mosaicdb.printing import PrintOptions, write_print
from mosaicdb.printing.geometry import Geometry, make_geometry
from mosaicdb.printing.proof import render_small
from mosaicdb.render.cells import BLEND_MAX_BYTES, CellRenderer, PixelCache, StatsCache
from mosaicdb.render.options import RenderOptions
from mosaicdb.render.output import render_saved
from mosaicdb.render.pyramid import plan_levels
from mosaicdb.render.tiles import box_reduce
from mosaicdb.store.decode import square_resize
from test_pyramid import random_assignment

MODES = ("none", "mean", "meanstd", "blend")


# ---- the reference: the render as it was before issue 18, one tile at a time --------------------
def ref_transfer(tiles, mu, sd, mode, s, cells=None):
    """Per-tile statistics (cv2.meanStdDev), one 256-entry table per tile and channel (cv2.LUT),
    or cv2.addWeighted per tile for blend: the pre-issue-18 `color.transfer`."""
    if mode == "none" or s == 0:
        return tiles
    out = np.empty_like(tiles)
    v = np.arange(256, dtype=np.float64)
    for i, tile in enumerate(tiles):
        if mode == "blend":
            out[i] = cv2.addWeighted(tile, 1.0 - s, cells[i], s, 0.0)
            continue
        m, d = (x.ravel() for x in cv2.meanStdDev(tile))
        cm, cs = mu[i].astype(np.float32).astype(np.float64), sd[i].astype(np.float32).astype(np.float64)
        if mode == "mean":
            a, b = np.ones(3), s * (cm - m)
        else:
            g = cs / np.maximum(d, 1.0)
            a, b = (1.0 - s) + s * g, s * (cm - m * g)
        lut = np.clip(np.rint(a[:, None] * v + b[:, None]), 0, 255).astype(np.uint8)
        out[i] = cv2.LUT(tile, np.ascontiguousarray(lut.T[:, None, :]))
    return out


def ref_tile(db, tid: int, t: int) -> np.ndarray:
    if t <= max(db.thumb_sizes):
        s = min(x for x in db.thumb_sizes if x >= t)
        return box_reduce(np.asarray(db.thumbs(s)[[tid]]), t)[0]
    return np.asarray(square_resize(db.load_original(tid), t))


def ref_blend_cells(saved, target, rows, cols, t):
    g = saved.meta.grid
    grid = Grid(g.cols, g.rows, tuple(g.crop))
    q = int(max(1, min(64, (BLEND_MAX_BYTES / (3 * grid.cells)) ** 0.5)))
    src = resample_cells(target, grid, q).reshape(grid.rows, q, grid.cols, q, 3).swapaxes(1, 2)
    out = []
    for r in rows:
        for c in cols:
            cell = np.ascontiguousarray(src[r, c])
            out.append(cell if q == t else cv2.resize(cell, (t, t), interpolation=cv2.INTER_AREA if t < q
                                                      else cv2.INTER_LINEAR))
    return np.stack(out)


def ref_paint(db, saved, rows, cols, t, color="none", strength=0.5, target=None) -> np.ndarray:
    tiles = np.stack([ref_tile(db, int(saved.tile_ids[r, c]), t) for r in rows for c in cols])
    mu = np.stack([saved.target_mean[r, c] for r in rows for c in cols])
    sd = np.stack([saved.target_std[r, c] for r in rows for c in cols])
    cells = ref_blend_cells(saved, target, rows, cols, t) if color == "blend" and strength > 0 else None
    out = ref_transfer(tiles, mu, sd, color, strength, cells)
    return out.reshape(len(rows), len(cols), t, t, 3).swapaxes(1, 2).reshape(len(rows) * t, len(cols) * t, 3)


def tie_assignment(db, cols, rows, seed):
    """Random tiles under target means that are whole levels (so strength 0.5 meets flat tiles'
    whole-level means at exact half shifts), some beyond 0-255 (so transfers clip)."""
    saved = random_assignment(db, cols, rows, seed=seed)
    rng = np.random.default_rng(seed)
    mean = np.rint(rng.uniform(-20, 275, (rows, cols, 3))).astype(np.float32)
    std = rng.uniform(0, 70, (rows, cols, 3)).astype(np.float32)
    return asg.SavedAssignment(saved.meta, saved.tile_ids, saved.cost, mean, std)


@pytest.fixture(scope="module")
def saved9(synthetic_db):
    return tie_assignment(synthetic_db, 11, 9, seed=18)


@pytest.fixture(scope="module")
def target9():
    return np.random.default_rng(3).integers(0, 256, (9 * 8, 11 * 8, 3), dtype=np.uint8)


# ---- CellRenderer equals the reference ---------------------------------------------------------
@pytest.mark.parametrize("t", [1, 2, 3, 4, 7, 16, 24, 64, 80])
@pytest.mark.parametrize("color", MODES)
def test_paint_equals_the_per_tile_render(synthetic_db, saved9, target9, color, t):
    for strength in (0.5, 1.0):
        opts = RenderOptions(tile_px=t, color=color, color_strength=strength)
        cr = CellRenderer(synthetic_db, saved9, opts, target=target9, cache=PixelCache(synthetic_db, (t,)))
        rows, cols = np.arange(9), np.arange(11)
        np.testing.assert_array_equal(cr.region(0, 9, 0, 11, t),
                                      ref_paint(synthetic_db, saved9, rows, cols, t, color, strength, target9),
                                      err_msg=f"{color} {strength} {t}px")
        # any rectangle, and index maps with repeats (a print's reflected bleed)
        rr, cc = np.array([1, 0, 1, 2, 8, 7]), np.array([3, 2, 1, 0, 1, 10, 9])
        np.testing.assert_array_equal(cr.paint(rr, cc, t),
                                      ref_paint(synthetic_db, saved9, rr, cc, t, color, strength, target9))
        np.testing.assert_array_equal(cr.cells(2, 5, 4, 9, t).swapaxes(1, 2).reshape(3 * t, 5 * t, 3),
                                      ref_paint(synthetic_db, saved9, range(2, 5), range(4, 9), t, color,
                                                strength, target9))


@pytest.mark.parametrize("cells_per_slice", [1, 3, 25])
@pytest.mark.parametrize("color", MODES[1:])
def test_slices_do_not_change_pixels(synthetic_db, saved9, target9, monkeypatch, color, cells_per_slice):
    """Painting in slices of one cell, of 3 cells (rows cut into columns: strided views) or of
    two rows and a bit gives the same image as one step."""
    import mosaicdb.render.cells as cells
    t = 8
    opts = RenderOptions(tile_px=t, color=color, color_strength=0.7)
    whole = CellRenderer(synthetic_db, saved9, opts, target=target9).region(0, 9, 0, 11, t)
    monkeypatch.setattr(cells, "CHUNK_BYTES", cells_per_slice * (3 * t * t + cells.CELL_OVERHEAD))
    np.testing.assert_array_equal(CellRenderer(synthetic_db, saved9, opts, target=target9).region(0, 9, 0, 11, t),
                                  whole)


@pytest.mark.parametrize("cols,rows,tile_px,cell_sizes", [
    (9, 5, 256, [256, 128, 64, 32, 16]),               # originals, then thumbnails
    (150, 3, 16, [16, 8, 4, None, None])])            # levels resampled from the small render
@pytest.mark.parametrize("color", ["mean", "meanstd"])
def test_every_pyramid_level_equals_the_per_tile_render(synthetic_db, tmp_path, color, cols, rows, tile_px,
                                                        cell_sizes):
    saved = tie_assignment(synthetic_db, cols, rows, seed=4)
    out = tmp_path / "p.tif"
    render_saved(synthetic_db, saved, out, RenderOptions(tile_px=tile_px, codec="deflate", color=color))
    levels, small_px = plan_levels(cols, rows, tile_px)
    assert [lv.cell_px for lv in levels] == cell_sizes
    with tifffile.TiffFile(out) as tf:
        for lv, page in zip(levels, tf.pages):
            if lv.cell_px is not None:
                ref = ref_paint(synthetic_db, saved, range(rows), range(cols), lv.cell_px, color)
            else:
                small = ref_paint(synthetic_db, saved, range(rows), range(cols), small_px, color)
                ref = cv2.resize(small, (lv.width, lv.height), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(page.asarray(), ref, err_msg=f"level {lv.index}")


def _ref_canvas(db, saved, g, color, strength=0.5):
    ext = ref_paint(db, saved, g.row_map(), g.col_map(), g.cell_px, color, strength)
    o = g.offset
    return ext[o:o + g.height, o:o + g.width]


@pytest.mark.parametrize("color", MODES[:3])
def test_print_with_bleed_and_its_proof_equal_the_per_tile_render(synthetic_db, tmp_path, color):
    db, saved = synthetic_db, tie_assignment(synthetic_db, 10, 7, seed=9)
    opts = PrintOptions(size="10cm", dpi=100, bleed="6mm", compression="deflate", buffer_bytes=1 << 18,
                        panels="2x1", overlap="5mm", render=RenderOptions(color=color, workers=2))
    m = write_print(db, saved, opts, tmp_path / "out", "mos")
    g, _ = make_geometry(10, 7, (10 / 2.54, None), 100, 6 / 25.4)
    assert m["cell_px"] == g.cell_px and m["bleed_box_px"] == [0, 0, g.width, g.height] and g.bleed_px > 0
    canvas = _ref_canvas(db, saved, g, color)
    assert len(m["panels"]) == 2
    for p in m["panels"]:
        x0, y0, x1, y1 = p["box_px"]
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / p["name"]), canvas[y0:y1, x0:x1],
                                      err_msg=p["name"])
    # the proof's picture: the same cells, bleed and colour at a smaller whole number of px per cell
    for longest in (g.width // 2, 7):   # 7 px: fewer px than cells, drawn at 1 px then shrunk
        img, _ = render_small(db, saved, g, longest, RenderOptions(color=color))
        q = min(g.cell_px, max(1, math.floor(g.cell_px * longest / max(g.width, g.height))))
        k = q / g.cell_px
        gs = Geometry(g.cols, g.rows, q, g.dpi * k, g.requested_dpi, round(g.bleed_px * k), g.requested_size_in)
        ref = _ref_canvas(db, saved, gs, color)
        if max(ref.shape[:2]) > longest:
            f = longest / max(ref.shape[:2])
            ref = cv2.resize(ref, (max(1, round(ref.shape[1] * f)), max(1, round(ref.shape[0] * f))),
                             interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(img, ref, err_msg=f"proof at {longest} px")


# ---- recolor_grid: exact tables, whatever path a cell takes ------------------------------------
@settings(max_examples=150, deadline=None)
@given(t=st.integers(1, 20), nr=st.integers(1, 4), nc=st.integers(1, 5), seed=st.integers(0, 2 ** 32 - 1),
       shape=st.sampled_from(["shift", "half", "affine", "mixed"]), band_rows=st.sampled_from([1, 3, None]))
def test_recolor_grid_is_each_cells_table(t, nr, nc, seed, shape, band_rows):
    """Every pixel of every cell ends up exactly its table's entry: shifts (whole, fractional, and
    exactly half a level, where v + rint(b) would be wrong for half the values) and general affine
    maps, at sizes either side of the per-cell table threshold, with big-cell shifts done in bands
    of 1 or 3 pixel rows as well as in one go."""
    from unittest import mock

    import mosaicdb.color as color
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (nr * t, nc * t, 3), dtype=np.uint8)
    a = np.ones((nr, nc, 3))
    b = rng.uniform(-300, 300, (nr, nc, 3))
    if shape == "half":
        b = np.floor(b) + 0.5
    elif shape == "affine":
        a = rng.uniform(0, 3, (nr, nc, 3))
    elif shape == "mixed":
        pick = rng.random((nr, nc)) < 0.5
        a[pick] = rng.uniform(0, 3, (int(pick.sum()), 3))
        b[~pick] = np.floor(b[~pick]) + rng.choice([0.5, 0.25], b[~pick].shape)
    luts = affine_luts(a.reshape(-1, 3), b.reshape(-1, 3)).reshape(nr, nc, 3, 256)
    cells = img.reshape(nr, t, nc, t, 3)
    want = np.empty_like(cells)
    for ch in range(3):
        want[..., ch] = np.take_along_axis(luts[:, :, ch].reshape(nr, 1, nc, 1, 256).repeat(t, 1).repeat(t, 3),
                                           cells[..., ch, None].astype(np.intp), axis=-1)[..., 0]
    got = img.copy()
    band_bytes = color._BAND_BYTES if band_rows is None else band_rows * nc * t * 3
    with mock.patch.object(color, "_BAND_BYTES", band_bytes):
        recolor_grid(got, t, a, b)
    np.testing.assert_array_equal(got, want.reshape(img.shape))


def test_half_level_shift_is_not_a_plain_shift():
    """The case the tie check exists for: a flat 100 tile pulled half way to 101 at strength 0.5
    maps v to rint(v + 0.5), which rounds half to even, so it is not v + rint(0.5)."""
    tile = np.arange(96, 104, dtype=np.uint8).repeat(3).reshape(1, 2, 4, 3)  # mean 99.5
    tile = np.concatenate([tile, tile[:, ::-1]], axis=1).reshape(1, 4, 4, 3)
    mu = np.full((1, 3), 100.5, np.float32)   # b = 0.5 * (100.5 - 99.5) = 0.5 exactly
    got = transfer(tile, mu, np.ones((1, 3), np.float32), "mean", 0.5)
    want = np.rint(tile.astype(np.float64) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    assert (want != tile + 0).any() and (want != tile + 1).any()  # neither plain shift gets it right


def test_transfer_equals_the_per_tile_reference():
    rng = np.random.default_rng(5)
    for t in (1, 3, 16, 40):
        tiles = rng.integers(0, 256, (23, t, t, 3), dtype=np.uint8)
        tiles[::4] = tiles[::4, :1, :1]  # some flat tiles: whole-level means, ties at strength 0.5
        mu = np.rint(rng.uniform(-20, 275, (23, 3))).astype(np.float32)
        sd = rng.uniform(0, 60, (23, 3)).astype(np.float32)
        cells = rng.integers(0, 256, tiles.shape, dtype=np.uint8)
        for mode in MODES:
            for s in (0.5, 0.8, 1.0):
                np.testing.assert_array_equal(transfer(tiles, mu, sd, mode, s, cells),
                                              ref_transfer(tiles, mu, sd, mode, s, cells), err_msg=f"{mode} {s} {t}")


# ---- bounded by design -------------------------------------------------------------------------
def _extra_bytes_to_paint(db, n: int, t: int, color: str) -> int:
    """Bytes allocated beyond its output while painting all n x n cells at t px (tracemalloc)."""
    saved = random_assignment(db, n, n, seed=2)
    target = np.random.default_rng(0).integers(0, 256, (n * 2, n * 2, 3), dtype=np.uint8)
    cr = CellRenderer(db, saved, RenderOptions(tile_px=t, color=color), target=target)
    cr.region(0, 8, 0, 8, t)  # thumbnails mapped, caches warm
    tracemalloc.start()
    try:
        img = cr.region(0, n, 0, n, t)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - img.nbytes


@pytest.mark.parametrize("color", ["mean", "meanstd", pytest.param("blend", marks=pytest.mark.slow)])
def test_working_memory_does_not_grow_with_the_cells_drawn(synthetic_db, color):
    """A whole level of 2 px cells (the small pyramid level), 96^2 and then 384^2 of them: 16 times
    the cells, the same working memory beyond the output (the per-tile tables of the old path
    took 6 KB per cell: 0.9 GB at 384^2)."""
    extra = {n: _extra_bytes_to_paint(synthetic_db, n, 2, color) for n in (96, 384)}
    mb = {n: round(v / 2 ** 20, 2) for n, v in extra.items()}
    assert extra[384] < 1.25 * extra[96] + (1 << 20) and extra[384] < 16 << 20, mb


def test_stats_cache_is_bounded_and_exact(synthetic_db):
    from mosaicdb.color import tile_stats
    cache = StatsCache(max_entries=10)
    ids = np.arange(25)
    tiles = np.stack([ref_tile(synthetic_db, int(i), 16) for i in ids])
    mu, sd = cache.get(ids, tiles, 16)
    fresh = tile_stats(tiles)
    np.testing.assert_array_equal(mu, fresh[0])
    np.testing.assert_array_equal(sd, fresh[1])
    assert cache.computed == 25 and len(cache._lru) == 10
    mu2, _ = cache.get(ids[-10:], tiles[-10:], 16)  # the last ten are kept: no new computation
    assert cache.computed == 25
    np.testing.assert_array_equal(mu2, fresh[0][-10:])
    cache.get(ids[-10:], tiles[-10:], 8)  # another size is another key
    assert cache.computed == 35


def test_statistics_are_computed_once_per_tile_and_size(synthetic_db):
    saved = random_assignment(synthetic_db, 40, 30, seed=1)
    cr = CellRenderer(synthetic_db, saved, RenderOptions(tile_px=32, color="mean"))
    for r in range(30):                        # row by row, as a pyramid block or a print band
        cr.region(r, r + 1, 0, 40, 32)
    assert cr.stats.computed == len(np.unique(saved.tile_ids))


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    from mosaicdb import TileDB, assignment as asg
    from mosaicdb.render.options import RenderOptions
    from mosaicdb.render.output import render_saved
    saved = asg.load(sys.argv[2])
    with TileDB.open(sys.argv[1], readonly=True) as db:
        render_saved(db, saved, sys.argv[3], RenderOptions(tile_px=int(sys.argv[4]), color=sys.argv[5], workers=2))
    # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork+exec into ru_maxrss
    print(json.dumps(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024))
""")


def peak_rss_mb(db_path, saved, tmp_path, tile_px: int, color: str) -> float:
    p = tmp_path / f"m{saved.cols}.tif"
    asg.save(p, saved)
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(db_path), str(asg.sidecar_paths(p)[0]), str(p),
                        str(tile_px), color], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    p.unlink()
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_cells(synthetic_db, tmp_path):
    """The same 4096^2 pyramid from 64^2 cells of 64 px and from 256^2 cells of 16 px, with colour
    transfer: 16 times the cells, the same peak RSS (within 10 % + 25 MB)."""
    rss = {n: peak_rss_mb(synthetic_db.path, random_assignment(synthetic_db, n, n, seed=n), tmp_path, 4096 // n,
                          "mean") for n in (64, 256)}
    print(f"peak RSS by cells across: {rss}")
    assert rss[256] <= 1.10 * rss[64] + 25, rss


PRINT_RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mosaicdb import TileDB
    from mosaicdb.assignment import SavedAssignment
    from mosaicdb.printing import PrintOptions, write_print
    from mosaicdb.render.options import RenderOptions
    db_path, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with TileDB.open(db_path, readonly=True) as db:
        rng = np.random.default_rng(n)
        ids = rng.choice(db.ids(), size=(n, n)).astype(np.int64)
        meta = {"db": str(db.path), "grid": {"cols": n, "rows": n, "crop": [0, 0, n, n]}, "render": {}}
        saved = SavedAssignment(meta, ids, np.zeros((n, n), np.float32),
                                rng.uniform(0, 255, (n, n, 3)).astype(np.float32),
                                rng.uniform(0, 60, (n, n, 3)).astype(np.float32))
        opts = PrintOptions(size="30.72in", dpi=100, compression="none", buffer_bytes=8 << 20,
                            render=RenderOptions(color="mean", workers=2))
        m = write_print(db, saved, opts, out)
    print(json.dumps({"rss_mb": next(int(ln.split()[1]) for ln in open("/proc/self/status")
                                     if ln.startswith("VmHWM")) / 1024, "cell_px": m["cell_px"]}))
""")


@pytest.mark.slow
def test_print_memory_does_not_grow_with_the_number_of_cells(synthetic_db, tmp_path):
    """The same 3,072 px print from 64^2 cells of 48 px and from 256^2 cells of 12 px, colour
    transfer on: the same peak RSS (within 10 % + 25 MB)."""
    res = {}
    for n in (64, 256):
        r = subprocess.run([sys.executable, "-c", PRINT_RSS_SCRIPT, str(synthetic_db.path), str(n),
                            str(tmp_path / f"p{n}.tif")], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        res[n] = json.loads(r.stdout.strip().splitlines()[-1])
    assert (res[64]["cell_px"], res[256]["cell_px"]) == (48, 12)
    print(f"print peak RSS by cells across: {res}")
    assert res[256]["rss_mb"] <= 1.10 * res[64]["rss_mb"] + 25, res


def test_rendering_a_saved_assignment_loads_no_matching_stack(synthetic_db, tmp_path):
    """`mosaic render` / `print` start at ~90 MB: numba and scipy (the matcher's, ~150 MB of
    resident memory) stay out of a process that only re-renders."""
    saved = random_assignment(synthetic_db, 6, 4)
    p = tmp_path / "m.tif"
    asg.save(p, saved)
    code = textwrap.dedent(f"""
        import sys
        from mosaicdb_cli.main import main
        from mosaicdb.jobs import render_file
        render_file({str(asg.sidecar_paths(p)[0])!r}, {str(tmp_path / 'r.tif')!r}, tile_px=32, color="mean")
        print(sorted(m for m in ("numba", "scipy", "faiss", "mosaicdb.make") if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "r.tif").stat().st_size > 0
