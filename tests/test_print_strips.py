"""The print's fast path (issue 17): strips encoded straight from the rendered bands, in batches,
Adobe Deflate by ISA-L; bands of whole cell rows painted in one piece. Same pixels as the
copying path, the same bytes however the rows arrive, standard streams any decoder reads."""
from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mosaicdb.printing import tiffstrips
from mosaicdb.printing.canvas import PrintCanvas, band_edges
from mosaicdb.printing.geometry import make_geometry
from mosaicdb.printing.tiffstrips import StripTiffWriter
from mosaicdb.render.options import RenderOptions
from test_pyramid import random_assignment

ICC = b"not a real profile, only bytes to embed"


def write_strips(path, img: np.ndarray, chunks: list[int], compression: str, rps: int, pool=None) -> bytes:
    """`img` through a StripTiffWriter, handed over in row chunks of the given sizes (as views)."""
    h, w = img.shape[:2]
    wr = StripTiffWriter(path, w, h, dpi=150, icc=ICC, compression=compression, rowsperstrip=rps, pool=pool,
                         max_pending=2)
    y = 0
    for n in chunks:
        wr.add_rows(img[y:y + n])
        y += n
    wr.close()
    return path.read_bytes()


def split(total: int, cuts: list[int]) -> list[int]:
    edges = sorted({0, total, *(c % (total + 1) for c in cuts)})
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 40), w=st.integers(1, 30), rps=st.integers(1, 9), cuts=st.lists(st.integers(0, 40), max_size=6),
       compression=st.sampled_from(sorted(tiffstrips.COMPRESSIONS)), batch=st.integers(1, 5),
       strided=st.booleans(), threads=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_bytes_do_not_depend_on_how_rows_arrive(tmp_path, monkeypatch, h, w, rps, cuts, compression, batch, strided,
                                                threads, seed):
    """Whole strips are encoded from the caller's rows (views, strided or not), the others from
    the writer's own buffer, in batches of any size: the file is the same bytes as when the
    image arrives in one piece on one thread, and decodes to the image."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (h, w + 3, 3), dtype=np.uint8)
    img = big[:, 2:w + 2] if strided else np.ascontiguousarray(big[:, :w])
    ref = write_strips(tmp_path / "ref.tif", np.ascontiguousarray(img), [h], compression, rps)
    monkeypatch.setattr(tiffstrips, "BATCH_BYTES", batch * rps * w * 3)
    with ThreadPoolExecutor(2) as pool:
        got = write_strips(tmp_path / "got.tif", img, split(h, cuts), compression, rps, pool if threads else None)
    assert got == ref
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "got.tif"), img)


def test_a_strip_is_encoded_from_the_callers_rows_not_a_copy(tmp_path, monkeypatch):
    """Only the strips that span two `add_rows` calls go through the writer's buffer."""
    seen = []
    real = tiffstrips.encode_strip
    monkeypatch.setattr(tiffstrips, "encode_strip", lambda rows, c: seen.append(rows) or real(rows, c))
    img = np.random.default_rng(1).integers(0, 256, (20, 16, 3), dtype=np.uint8)
    write_strips(tmp_path / "a.tif", img, [9, 11], "deflate", 4)   # strips: 0-4, 4-8 | 8-12 spans | 12-16, 16-20
    shared = [np.shares_memory(s, img) for s in seen]
    assert [s.shape[0] for s in seen] == [4, 4, 4, 4, 4] and shared == [True, True, False, True, True]


def test_deflate_strips_are_zlib_streams_of_predicted_rows(tmp_path):
    """Decoded without tifffile or libtiff: each strip is a zlib stream (Adobe Deflate) of the
    rows with TIFF's horizontal predictor applied; undoing it gives the image back."""
    img = np.random.default_rng(2).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    img[5:15] = img[5]   # some runs for the codec to find
    data = write_strips(tmp_path / "d.tif", img, [23], "deflate", 5)
    with tifffile.TiffFile(tmp_path / "d.tif") as tf:
        p = tf.pages[0]
        assert (p.compression, p.predictor) == (8, 2)
        offsets, counts = p.dataoffsets, p.databytecounts
    rows = []
    for off, n in zip(offsets, counts):
        raw = np.frombuffer(zlib.decompress(data[off:off + n]), np.uint8).reshape(-1, 37, 3)
        rows.append(np.cumsum(raw, axis=1, dtype=np.uint8))   # predictor 2 undone: running sums mod 256
    np.testing.assert_array_equal(np.concatenate(rows), img)
    assert struct.unpack("<H", data[:2]) == (0x4949,)


@pytest.mark.parametrize("compression", sorted(tiffstrips.COMPRESSIONS))
def test_pillow_reads_every_compression(tmp_path, compression):
    """libtiff (through Pillow) decodes every compression the same as tifffile."""
    img = np.random.default_rng(3).integers(0, 256, (31, 45, 3), dtype=np.uint8)
    write_strips(tmp_path / "p.tif", img, [10, 21], compression, 4)
    with Image.open(tmp_path / "p.tif") as im:
        np.testing.assert_array_equal(np.asarray(im), img)
        assert im.info["icc_profile"] == ICC


def test_deflate_is_the_default_and_smaller_than_lzw(tmp_path):
    from mosaicdb.printing import PrintOptions
    assert PrintOptions(size="10cm").compression == tiffstrips.DEFAULT_COMPRESSION == "deflate"
    y, x = np.mgrid[0:64, 0:96]
    img = np.stack([(x * 2) % 256, (y * 3) % 256, (x + y) % 256], -1).astype(np.uint8)  # smooth, like tiles
    sizes = {c: len(write_strips(tmp_path / f"{c}.tif", img, [64], c, 8)) for c in ("deflate", "lzw", "none")}
    assert sizes["deflate"] < sizes["lzw"] < sizes["none"]


# ---- bands painted in one piece --------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved9(synthetic_db):
    return random_assignment(synthetic_db, 9, 7, seed=5)


@pytest.mark.parametrize("size_in,bleed_in,color", [(9 / 2.54, 0.0, "none"), (20 / 2.54, 0.4, "meanstd"),
                                                    (20 / 2.54, 0.0, "blend")])
@pytest.mark.parametrize("budget", [1 << 14, 1 << 17, 1 << 22])
def test_one_piece_bands_equal_the_chunked_bands(synthetic_db, saved9, size_in, bleed_in, color, budget, monkeypatch):
    """Every band the print asks for, full width and panel-wide (cutting cells), bleed or not,
    thumbnails or originals: painted in one piece it is the same pixels as painted in chunks
    and copied (the path before issue 17); `band` takes the one-piece path for whole cell rows."""
    import mosaicdb.printing.canvas as canvas_mod
    monkeypatch.setattr(canvas_mod, "CHUNK_BYTES", 3 * 40 * 40 * 2)   # several chunks per band
    g, _ = make_geometry(9, 7, (size_in, None), 100.0, bleed_in)
    target = np.random.default_rng(4).integers(0, 256, (7 * 8, 9 * 8, 3), dtype=np.uint8)  # for blend
    c = PrintCanvas(synthetic_db, saved9, g, RenderOptions(color=color), target=target)
    pieces = 0
    for x0, x1 in ((0, g.width), (g.cell_px // 3, g.width - g.cell_px // 2)):
        for y0, y1 in band_edges(g, budget, x1 - x0):
            want = c.band_in_chunks(y0, y1, x0, x1)
            assert want.shape == (y1 - y0, x1 - x0, 3)
            np.testing.assert_array_equal(c.band_in_one_piece(y0, y1, x0, x1), want)
            got = c.band(y0, y1, x0, x1)
            np.testing.assert_array_equal(got, want)
            pieces += got.base is not None
    if budget >= 3 * g.cell_px * g.width:   # a cell row fits the band budget: bands of whole rows
        assert pieces > 0
