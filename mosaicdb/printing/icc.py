"""Colour profiles of print files. Tile pixels are sRGB (ingest converts every image to it), so
the default embeds the standard sRGB profile (`mosaicdb.srgb`: fixed bytes, so two prints of one
assignment are identical); `--icc FILE` names another RGB output profile, into
which the pixels are converted (relative colorimetric, black-point compensation) before it
is embedded, so the embedded profile always describes the pixels."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..io import read_input
from ..srgb import srgb_icc as srgb_bytes


@dataclass(frozen=True)
class Profile:
    data: bytes
    name: str                 # the profile's description
    source: str               # "sRGB (built in)" or the file it came from

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def is_srgb(self) -> bool:
        return self.data == srgb_bytes()

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "bytes": len(self.data), "sha256": self.sha256}


def _describe(data: bytes) -> str:
    from PIL import ImageCms
    p = ImageCms.ImageCmsProfile(io.BytesIO(data))
    return (ImageCms.getProfileDescription(p) or "").strip() or "unnamed profile"


def load_profile(path: str | None) -> Profile:
    """The built-in sRGB profile, or the RGB ICC profile in `path`; anything else is a UsageError."""
    if path is None:
        return Profile(srgb_bytes(), _describe(srgb_bytes()), "sRGB (built in)")
    data = read_input(path, 64 << 20, f"--icc {path}")
    if len(data) < 132 or data[36:40] != b"acsp":
        raise UsageError(f"--icc {path} is not an ICC profile (no 'acsp' signature); give a .icc/.icm file")
    try:
        name = _describe(data)
    except Exception as e:  # LittleCMS refuses it
        raise UsageError(f"--icc {path} is not a usable ICC profile ({e})") from None
    space = data[16:20].decode("latin-1").strip()
    if space != "RGB":
        raise UsageError(f"--icc {path} is a {space or 'unknown'} profile; print files here are RGB: "
                         "give an RGB output profile (the shop's RIP converts to its inks)")
    cls = data[12:16]
    if cls not in (b"mntr", b"prtr", b"spac", b"scnr"):
        raise UsageError(f"--icc {path} is a {cls.decode('latin-1')!r} profile, not one that can describe an image")
    return Profile(data, name, str(path))


class Converter:
    """sRGB pixels -> the profile's RGB, band by band (None when the profile is sRGB itself)."""

    def __init__(self, profile: Profile):
        from PIL import ImageCms
        self._t = ImageCms.buildTransform(
            ImageCms.ImageCmsProfile(io.BytesIO(srgb_bytes())), ImageCms.ImageCmsProfile(io.BytesIO(profile.data)),
            "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image, ImageCms
        im = Image.fromarray(np.ascontiguousarray(rgb))
        return np.asarray(ImageCms.applyTransform(im, self._t))


def converter(profile: Profile) -> Converter | None:
    return None if profile.is_srgb else Converter(profile)
