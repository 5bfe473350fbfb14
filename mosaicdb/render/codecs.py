"""Tile encoders for pyramid outputs, mapped by name, with the TIFF tags each implies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import imagecodecs
import numpy as np

from ..errors import choice


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[np.ndarray], bytes]
    tiff: dict                 # tifffile write() keywords
    bytes_per_px: float        # rough size estimate for disk checks and `mosaic plan`
    lossless: bool
    dzi_ext: str


def jpeg_encode(a: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG of uint8 RGB pixels, YCbCr 4:2:0 (libjpeg-turbo): what pyramid tiles, DZI
    tiles and the viewer send."""
    return imagecodecs.jpeg8_encode(np.ascontiguousarray(a), level=quality, colorspace="RGB",
                                    outcolorspace="YCBCR", subsampling=(2, 2))


def _jpeg(quality: int) -> Codec:
    return Codec("jpeg", lambda a: jpeg_encode(a, quality), {"compression": "jpeg", "photometric": "ycbcr", "subsampling": (2, 2)},
                 0.25 + 0.004 * max(0, quality - 75), False, "jpeg")


def _deflate(quality: int) -> Codec:
    return Codec("deflate", lambda a: imagecodecs.zlib_encode(a, level=6),
                 {"compression": "zlib", "photometric": "rgb"}, 2.2, True, "png")


def _zstd(quality: int) -> Codec:
    return Codec("zstd", lambda a: imagecodecs.zstd_encode(a, level=3),
                 {"compression": "zstd", "photometric": "rgb"}, 2.4, True, "png")


def _none(quality: int) -> Codec:
    return Codec("none", lambda a: np.ascontiguousarray(a).tobytes(), {"compression": None, "photometric": "rgb"},
                 3.0, True, "png")


CODECS = {"jpeg": _jpeg, "deflate": _deflate, "zstd": _zstd, "none": _none}


def get_codec(name: str, quality: int = 85) -> Codec:
    return choice("--codec", name, CODECS)(quality)


def png_encode(a: np.ndarray) -> bytes:
    return imagecodecs.png_encode(a, level=3)
