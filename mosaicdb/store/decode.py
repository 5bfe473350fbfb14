"""Decode any image Pillow reads into a normalised 8-bit sRGB picture, and make tiles from it.

Policy (the same for ingest and for rendering from originals):
EXIF orientation applied; an embedded ICC profile converted to sRGB; alpha composited on the
background colour; grey, palette, CMYK, 16-bit and float modes converted to 8-bit RGB;
square tiles are the centre crop of the shorter side (nothing is stretched or padded).
"""
from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

from ..errors import ImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are errors, not grey half-images

_SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class DecodeOptions:
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = 256_000_000  # larger images are refused as decompression bombs
    max_bytes: int = 1 << 30       # larger files (and archive members) are not read at all
    limit_is: str = " (the database's, set by `mosaic db init --max-pixels`)"  # where max_pixels comes from


def _to_rgb(img: Image.Image, background) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc and img.mode in ("RGB", "RGBA", "CMYK", "L"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
            img = ImageCms.profileToProfile(img, src, _SRGB, outputMode=out_mode)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's plain conversion below
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.int64)
        # 16-bit modes always span 0..65535 (a dark 16-bit image is not an 8-bit one); only
        # the generic 32-bit "I" mode is guessed from its values.
        top = 255 if img.mode == "I" and a.max(initial=0) <= 255 else 65535
        img = Image.fromarray((np.clip(a, 0, top) * 255 // top).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.nan_to_num(a) * scale, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


_LIMIT_LOCK = threading.Lock()


def _open_with_limit(data: bytes, max_pixels: int, limit_is: str = "") -> Image.Image:
    """Image.open (header only) with Pillow's bomb check at our limit: Pillow's own global limit
    (~89 Mpx, an error above ~179 Mpx) would otherwise refuse images max_pixels allows. The
    global is swapped under a lock, only for this quick call, so threads can't interleave."""
    with _LIMIT_LOCK, warnings.catch_warnings():  # the warnings state is global too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            return Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"decompression bomb: over the {max_pixels:,} px limit{limit_is}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old


def open_image(data: bytes, opts: DecodeOptions = DecodeOptions(), min_side: int = 0,
               square: bool = False, max_side: int = 0) -> tuple[Image.Image, tuple[int, int], str]:
    """Decode `data` -> (normalised RGB image, original (width, height), format).

    `min_side` > 0 lets JPEG decode at a reduced scale while keeping the short side >= min_side.
    `square` (ingest): only the centre square is kept, cut and box-reduced (to >= 2 x min_side)
    right after decoding, before any conversion, so a large image costs about one decoded copy
    of memory rather than several. Raises ImageError with a short reason for anything that is
    not a readable, sane image, including one whose decoded pixels would pass opts.max_bytes.
    `max_side` > 0 (the viewer): the long side is brought to at most max_side px, by a reduced
    JPEG decode, else by a box reduction right after decoding (before any conversion).
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    w = h = 0
    try:
        img = _open_with_limit(data, opts.max_pixels, opts.limit_is)
        w, h = img.size
        if w * h > opts.max_pixels:
            raise ImageError(f"decompression bomb: {w}x{h} px is over the {opts.max_pixels:,} px limit{opts.limit_is}")
        fmt = img.format or "unknown"
        need = decoded_bytes(img)
        if need > opts.max_bytes:
            raise ImageError(f"{w}x{h} {img.mode} needs {need / 2**30:.1f} GB to decode, over the "
                             f"{opts.max_bytes / 2**30:.1f} GB limit")
        if min_side and fmt == "JPEG":
            s = min_side / min(w, h)
            img.draft("RGB", (max(1, int(w * s + 1)), max(1, int(h * s + 1))))
        if max_side and fmt == "JPEG" and max(w, h) > max_side:
            s = max_side / max(w, h)
            img.draft("RGB", (max(1, int(w * s)), max(1, int(h * s))))
        img.load()
        reducible = img.mode not in ("P", "PA", "1")  # box-reducing palette indices would mix them
        if square:
            # the same region in every EXIF orientation; cut and reduced in one step when it
            # shrinks, so no full-size copy of the square exists beside the decoded image
            box = square_box(img.size)
            k = (box[2] - box[0]) // (2 * max(min_side, 1))
            img = img.reduce(k, box=box) if k >= 2 and reducible else center_square(img)
        if max_side and max(img.size) > max_side:
            k = -(-max(img.size) // max_side)
            img = img.reduce(k) if reducible else img.resize((max(1, img.width // k), max(1, img.height // k)),
                                                             Image.NEAREST)
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img, opts.background)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except MemoryError:
        raise ImageError(f"too large to decode in the memory available ({w}x{h} px)") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError) as e:
        raise ImageError(f"corrupt or truncated image: {e}") from None
    if min(img.size) < 1:
        raise ImageError("image has no pixels")
    return img, (w, h), fmt


_BYTES_PER_BAND = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


def decoded_bytes(img: Image.Image) -> int:
    """Bytes the decoded pixels of an opened (not yet loaded) image take, from its header."""
    w, h = img.size
    return w * h * len(img.getbands()) * _BYTES_PER_BAND.get(img.mode, 1)


# EXIF orientations 5-8 turn the picture a quarter turn: width and height swap
_QUARTER_TURNS = {5, 6, 7, 8}


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file as it will be decoded (EXIF rotation applied), from its
    header only."""
    from ..io import check_regular_file
    check_regular_file(path, str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112, 1)
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read {path}: {e}") from None
    return (h, w) if orientation in _QUARTER_TURNS else (w, h)


def square_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred square of an image of `size` (width, height)."""
    w, h = size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return left, top, left + s, top + s


def center_square(img: Image.Image) -> Image.Image:
    box = square_box(img.size)
    s = box[2] - box[0]
    if (s, s) == img.size:
        return img  # already square: a crop would only copy it
    if s * s <= (Image.MAX_IMAGE_PIXELS or s * s):
        return img.crop(box)
    # crop() applies Pillow's bomb check, pointless on a decoded image that passed ours:
    # a same-size NEAREST resize of the box gives exactly the same pixels without it
    return img.resize((s, s), Image.NEAREST, box=box)


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-square `img` and resample it to size x size (Lanczos, with a box pre-reduction)."""
    sq = center_square(img)
    if sq.size[0] == size:
        return sq
    return sq.resize((size, size), Image.LANCZOS, reducing_gap=2.0)


def make_thumbnails(img: Image.Image, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Square thumbnails at each size (ascending powers of two): the largest from the centre
    square (area-averaged down, or bicubic up for small originals), each smaller one by a 2x
    area reduction of the next. OpenCV on arrays: several times cheaper than Pillow per tile,
    which is most of ingest's cost for small images."""
    import cv2
    sq = np.asarray(center_square(img))
    top, s = sizes[-1], sq.shape[0]
    if s != top:
        sq = cv2.resize(sq, (top, top), interpolation=cv2.INTER_AREA if s > top else cv2.INTER_CUBIC)
    out = [None] * len(sizes)
    out[-1] = np.ascontiguousarray(sq)
    for i in range(len(sizes) - 2, -1, -1):
        out[i] = cv2.resize(out[i + 1], (sizes[i], sizes[i]), interpolation=cv2.INTER_AREA)
    return out


def tile_features(thumbs: list[np.ndarray], sizes: tuple[int, ...], spec) -> np.ndarray:
    """Features (`spec`, a mosaicdb.feature_kinds spec) of a batch of tiles from their
    thumbnails (list over sizes of (N, s, s, 3)): the thumbnail of the spec's sample size, or
    the largest one area-resampled to it."""
    s = spec.samples
    if s in sizes:
        blocks = thumbs[sizes.index(s)]
    else:
        import cv2
        src = thumbs[-1]
        blocks = np.stack([cv2.resize(t, (s, s), interpolation=cv2.INTER_AREA) for t in src])
    return spec(blocks)
