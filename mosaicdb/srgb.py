"""The standard sRGB colour profile (IEC 61966-2.1) as fixed ICC bytes, for every TIFF we write.

Built from the standard's numbers rather than asked of LittleCMS: Pillow's
`ImageCms.createProfile("sRGB")` stamps the current date into the header (two prints of one
assignment would differ) and its bytes follow the LittleCMS version. These bytes depend on
nothing but this file; tests/test_srgb.py pins their SHA-256 and checks with LittleCMS that
they convert to and from its own sRGB within one level.

What it is: an ICC v2.1 display profile (class 'mntr', RGB -> XYZ), the form RIPs and old
readers accept everywhere: the D50 white point, the IEC primaries and D65 white adapted to
D50 with the Bradford transform (also stored as 'chad'), and the piecewise sRGB curve sampled
at 1,024 points for each channel, as the ICC's own v2 sRGB profiles do. ICC data is big-endian.
"""
from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np

DESCRIPTION = "sRGB IEC61966-2.1"
COPYRIGHT = "No copyright, use freely"
CREATED = (2026, 1, 1, 0, 0, 0)        # fixed: a date of "now" would change every file
CURVE_POINTS = 1024

PRIMARIES = {"r": (0.64, 0.33), "g": (0.30, 0.60), "b": (0.15, 0.06)}   # IEC 61966-2.1 (x, y)
D65 = (0.3127, 0.3290)
D50_ICC = (0x0000F6D6, 0x00010000, 0x0000D32D)   # the ICC PCS illuminant, exactly as encoded
BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                     [-0.7502, 1.7135, 0.0367],
                     [0.0389, -0.0685, 1.0296]])


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def adaptation_matrix() -> np.ndarray:
    """Bradford chromatic adaptation from D65 to the PCS's D50."""
    d50 = np.array(D50_ICC) / 65536.0
    cone = np.diag((BRADFORD @ d50) / (BRADFORD @ _xyz(*D65)))
    return np.linalg.inv(BRADFORD) @ cone @ BRADFORD


def colorants() -> np.ndarray:
    """(3, 3) s15Fixed16 integers: column j is primary j's XYZ under D50. Rounded so that the
    three columns add up exactly to the encoded D50 white (RGB white maps to the PCS white)."""
    prim = np.stack([_xyz(*PRIMARIES[c]) for c in "rgb"], axis=1)
    scale = np.linalg.solve(prim, _xyz(*D65))           # each primary's luminance share of white
    m = adaptation_matrix() @ (prim * scale)
    fixed = np.rint(m * 65536).astype(np.int64)
    fixed[:, 1] += np.array(D50_ICC) - fixed.sum(axis=1)  # rounding leftovers go to green (largest)
    return fixed


def curve() -> np.ndarray:
    """The sRGB decoding curve (IEC 61966-2.1), CURVE_POINTS uint16 samples."""
    v = np.linspace(0.0, 1.0, CURVE_POINTS)
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    return np.rint(lin * 65535).astype(">u2")


def _s15(values) -> bytes:
    return b"".join(struct.pack(">i", int(v)) for v in values)


def _xyz_tag(values) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(values)


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    # textDescriptionType: ASCII, then empty Unicode and ScriptCode parts (67-byte field)
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">IIHB", 0, 0, 0, 0) + b"\0" * 67


def _tags() -> list[tuple[bytes, bytes]]:
    m = colorants()
    trc = b"curv\0\0\0\0" + struct.pack(">I", CURVE_POINTS) + curve().tobytes()
    chad = np.rint(adaptation_matrix() * 65536).astype(np.int64).ravel()
    return [(b"desc", _desc_tag(DESCRIPTION)),
            (b"cprt", b"text\0\0\0\0" + COPYRIGHT.encode("ascii") + b"\0"),
            (b"wtpt", _xyz_tag(D50_ICC)),
            (b"chad", b"sf32\0\0\0\0" + _s15(chad)),
            (b"rXYZ", _xyz_tag(m[:, 0])), (b"gXYZ", _xyz_tag(m[:, 1])), (b"bXYZ", _xyz_tag(m[:, 2])),
            (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)]


def _header(size: int) -> bytes:
    h = struct.pack(">I4sI4s4s4s6H4s4sI4s4sQI", size, b"\0" * 4, 0x02100000, b"mntr", b"RGB ", b"XYZ ",
                    *CREATED, b"acsp", b"\0" * 4, 0, b"\0" * 4, b"\0" * 4, 0, 0)
    h += _s15(D50_ICC) + b"\0" * 4 + b"\0" * 16   # illuminant, creator, profile ID (v2: zero)
    return h.ljust(128, b"\0")


@lru_cache(maxsize=1)
def srgb_icc() -> bytes:
    """The profile's bytes (a few KB), the same on every machine and every run."""
    tags = _tags()
    table_len = 4 + 12 * len(tags)
    offset = 128 + table_len
    table, data, placed = [struct.pack(">I", len(tags))], [], {}
    for sig, body in tags:
        if body not in placed:                    # the three TRCs share one curve
            placed[body] = offset
            padded = body + b"\0" * (-len(body) % 4)
            data.append(padded)
            offset += len(padded)
        table.append(struct.pack(">4sII", sig, placed[body], len(body)))
    return _header(offset) + b"".join(table) + b"".join(data)


def srgb_sha256() -> str:
    """The SHA-256 of the profile's bytes (as print manifests record it)."""
    return hashlib.sha256(srgb_icc()).hexdigest()
