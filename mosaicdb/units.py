"""Human units in one place: lengths ("120cm", "48in"), print sizes ("120x80cm"), bytes ("16G").

>>> round(parse_length("2.54cm"), 6)
1.0
>>> parse_length("48in")
48.0
>>> parse_length("0mm", "--bleed", allow_zero=True), parse_length("0", "--bleed", allow_zero=True)
(0.0, 0.0)
>>> [round(v, 4) if v else v for v in parse_print_size("120x80cm")]
[47.2441, 31.4961]
>>> parse_print_size("48in")
(48.0, None)
>>> parse_bytes("16G"), parse_bytes("512M"), parse_bytes("1024")
(17179869184, 536870912, 1024)
>>> human_bytes(1536 * 1024 ** 2)
'1.5 GB'
"""
from __future__ import annotations

import re

from .errors import UsageError

_PER_INCH = {"mm": 25.4, "cm": 2.54, "m": 0.0254, "in": 1.0, "inch": 1.0, "inches": 1.0, '"': 1.0}
_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
MAX_LENGTH_IN = 1000 / 0.0254   # 1 km: no print (or bleed, or panel) is larger


def parse_length(text: str, option: str = "--size", allow_zero: bool = False) -> float:
    """A length with a unit (mm, cm, m, in) -> inches; with allow_zero, also 0 (unit optional)."""
    if allow_zero and re.fullmatch(r"\s*(0+(\.0*)?|\.0+)\s*(mm|cm|m|inches|inch|in|\")?\s*", str(text).lower()):
        return 0.0
    m = re.fullmatch(rf"\s*{_NUM}\s*(mm|cm|m|inches|inch|in|\")\s*", str(text).lower())
    if not m:
        raise UsageError(f"{option}: {text!r} is not a length; use a number and a unit (mm, cm, m, in), e.g. 120cm")
    value = float(m.group(1)) / _PER_INCH[m.group(2)]
    if value <= 0:
        raise UsageError(f"{option}: {text!r} must be greater than zero")
    if value > MAX_LENGTH_IN:
        raise UsageError(f"{option}: {text!r} is more than 1 km")
    return value


def parse_print_size(text: str, option: str = "--print-size") -> tuple[float, float | None]:
    """'120cm' (the long side) or '120x80cm' / '120cmx80cm' (width x height) -> inches."""
    t = str(text).lower().replace(" ", "")
    m = re.fullmatch(rf"{_NUM}([a-z\"]*)x{_NUM}([a-z\"]+)", t)
    if m:
        unit_a = m.group(2) or m.group(4)
        return parse_length(m.group(1) + unit_a, option), parse_length(m.group(3) + m.group(4), option)
    return parse_length(t, option), None


def parse_bytes(text: str, option: str = "--cache") -> int:
    """Bytes from a size such as 512M, 2G or 1.5GiB (powers of 1024); a bad one is a UsageError
    naming `option`."""
    m = re.fullmatch(rf"\s*{_NUM}\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise UsageError(f"{option}: {text!r} is not a size; use e.g. 512M or 2G")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2) or "_"))


def human_bytes(n: float) -> str:
    """A byte count for people: 512 B, 3.4 KB, 1.2 GB (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
