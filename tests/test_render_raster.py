"""PNG/JPEG/WebP writers: the streamed PNG is exact, limits are checked before any work, and
writes are atomic (a failure leaves neither a partial file nor a temporary one)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mosaicdb.errors import RenderError, UsageError
from mosaicdb.render import raster
from mosaicdb.io import write_atomic
from mosaicdb.render.raster import MAX_SIDE, check_raster, write_png_stream
from mosaicdb.render.raster import write_raster as write_raster_to


def write_raster(out, bands, width, height, **kw):
    """The raster writer as outputs use it: through a temporary name and a rename."""
    check_raster(out, width, height)  # before any temporary exists
    write_atomic(out, lambda tmp: write_raster_to(tmp, bands, width, height, **kw))


def random_bands(rng, width: int, heights: list[int], smooth: bool = False):
    """Seeded random (h, width, 3) uint8 bands; `smooth` makes them compressible."""
    bands = []
    for h in heights:
        if smooth:
            base = rng.integers(0, 256, (h, 1, 3))
            b = (base + np.arange(width)[None, :, None] * rng.integers(-3, 4, 3)) % 256
            bands.append(b.astype(np.uint8))
        else:
            bands.append(rng.integers(0, 256, (h, width, 3), dtype=np.uint8))
    return bands


def read_back(data_or_path) -> np.ndarray:
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        im.load()
        assert im.mode == "RGB"
        return np.asarray(im)


@pytest.mark.parametrize("width, heights, smooth", [
    (1, [1], False),
    (1, [3, 1, 2], False),
    (3, [5] * 7, False),
    (17, [1] * 40, False),                     # many one-row bands
    (333, [7, 1, 32, 13, 2, 9], False),        # odd width, uneven bands
    (1001, [4] * 60, True),                    # odd width, many bands, compressible
    (641, [128] * 7, False),                   # > 1 MB of incompressible data: several IDAT chunks
])
def test_png_stream_round_trips_exactly(width, heights, smooth):
    rng = np.random.default_rng(width * 7 + len(heights))
    bands = random_bands(rng, width, heights, smooth)
    buf = io.BytesIO()
    seen = []
    write_png_stream(buf, iter(bands), width, sum(heights), on_band=seen.append)
    np.testing.assert_array_equal(read_back(buf.getvalue()), np.concatenate(bands))
    assert seen == heights
    if width * sum(heights) * 3 > 1 << 21:
        assert buf.getvalue().count(b"IDAT") >= 2


def test_png_stream_wraps_the_sub_filter_modulo_256():
    """Neighbouring bytes 255 -> 0 -> 255 exercise the uint8 wrap-around of the Sub filter."""
    row = np.zeros((1, 9, 3), np.uint8)
    row[0, ::2] = 255
    band = np.concatenate([row, 255 - row, row])
    buf = io.BytesIO()
    write_png_stream(buf, [band], 9, 3)
    np.testing.assert_array_equal(read_back(buf.getvalue()), band)


def test_png_stream_row_count_must_match():
    rng = np.random.default_rng(0)
    with pytest.raises(RenderError, match="rendered 6 rows, expected 7"):
        write_png_stream(io.BytesIO(), random_bands(rng, 5, [3, 3]), 5, 7)


@pytest.mark.parametrize("suffix", [".png", ".PNG"])
def test_write_raster_png_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    bands = random_bands(rng, 37, [8] * 5)
    out = tmp_path / f"m{suffix}"
    write_raster(out, iter(bands), 37, 40)
    np.testing.assert_array_equal(read_back(out), np.concatenate(bands))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")])
def test_write_raster_lossy_formats(tmp_path, suffix, fmt):
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 4, yy * 5, 128 + 60 * np.sin(xx / 6.0 + yy / 9.0)], axis=-1).astype(np.uint8)
    bands = np.split(img, 3)
    out = tmp_path / f"m{suffix}"
    write_raster(out, iter(bands), 64, 48, quality=95)
    with Image.open(out) as im:
        assert im.format == fmt and im.size == (64, 48)
        err = np.abs(np.asarray(im.convert("RGB")).astype(int) - np.concatenate(bands)).mean()
    assert err < 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def never_iterated():
    raise AssertionError("bands were consumed before the limits were checked")
    yield  # pragma: no cover


@pytest.mark.parametrize("name, width, height, words", [
    ("big.jpg", MAX_SIDE["JPEG"] + 1, 8, "65500 px a side"),
    ("big.jpeg", 8, MAX_SIDE["JPEG"] + 1, "65500 px a side"),
    ("big.webp", MAX_SIDE["WEBP"] + 1, 8, "16383 px a side"),
    ("big.webp", 8, MAX_SIDE["WEBP"] + 1, "16383 px a side"),
    ("big.jpg", 30_000, 30_000, "whole picture in memory"),     # under the side limit, too many pixels
])
def test_lossy_size_limits_raise_before_writing(tmp_path, name, width, height, words):
    out = tmp_path / name
    with pytest.raises(UsageError, match=words) as e:  # the request asks the impossible: exit 2
        write_raster(out, never_iterated(), width, height)
    assert ".png" in str(e.value), "the message says what to use instead"
    assert list(tmp_path.iterdir()) == []


def test_png_has_no_in_memory_limit():
    assert check_raster("big.png", 30_000, 30_000) == "PNG"
    assert check_raster("big.webp", MAX_SIDE["WEBP"], 100) == "WEBP"


@pytest.mark.parametrize("name", ["m.gif", "m.bmp", "m", "m.png.txt"])
def test_unknown_suffix(tmp_path, name):
    with pytest.raises(UsageError, match="unknown image type") as e:
        write_raster(tmp_path / name, never_iterated(), 8, 8)
    assert ".jpg" in str(e.value) and ".png" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def failing_bands(width: int, good: int):
    rng = np.random.default_rng(3)
    for b in random_bands(rng, width, [4] * good):
        yield b
    raise RuntimeError("render failed mid-way")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_failure_mid_write_leaves_nothing(tmp_path, suffix):
    out = tmp_path / f"m{suffix}"
    with pytest.raises(RuntimeError, match="mid-way"):
        write_raster(out, failing_bands(21, 3), 21, 40)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_failure_keeps_the_previous_file(tmp_path, suffix):
    """The final name is only ever replaced whole: an earlier output survives a failed rewrite."""
    out = tmp_path / f"m{suffix}"
    rng = np.random.default_rng(4)
    first = random_bands(rng, 21, [8] * 5)
    write_raster(out, iter(first), 21, 40)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        write_raster(out, failing_bands(21, 3), 21, 40)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_encoder_failure_leaves_nothing(tmp_path, monkeypatch):
    """An error inside the encoder after the temporary file exists (e.g. disk full)."""
    def broken_save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    out = tmp_path / "m.jpg"
    rng = np.random.default_rng(5)
    with pytest.raises(OSError, match="No space"):
        write_raster(out, iter(random_bands(rng, 8, [8])), 8, 8)
    assert list(tmp_path.iterdir()) == []


def test_png_writes_to_a_temporary_name_then_renames(tmp_path, monkeypatch):
    """While bands are being written, the final name does not exist yet."""
    out = tmp_path / "m.png"
    seen = []

    def bands():
        rng = np.random.default_rng(6)
        for b in random_bands(rng, 9, [3, 3]):
            seen.append((out.exists(), sorted(p.name for p in tmp_path.iterdir())))
            yield b

    write_raster(out, bands(), 9, 6)
    assert all(not exists for exists, _ in seen)
    assert all(len(names) == 1 and names[0].startswith(".m.png.") for _, names in seen)
    assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]
    assert raster.FORMATS[".png"] == "PNG"
