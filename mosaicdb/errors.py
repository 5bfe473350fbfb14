"""The exception hierarchy, and the checks that raise it for option values.

The CLI turns every `MosaicError` into a one-line message: `UsageError` exits 2 (the request
is wrong), every other `MosaicError` exits 1 (the request could not be carried out). Any
other exception is a bug.
"""
import math
import numbers


class MosaicError(Exception):
    """Base class: a problem the user can fix; the message says what to do."""


class UsageError(MosaicError):
    """An option or argument is invalid or conflicts with another."""


class DatabaseError(MosaicError):
    """The tile database is missing, not a database, or inconsistent."""


class DatabaseLocked(DatabaseError):
    """Another process holds the database's write lock."""


class EmptyDatabase(DatabaseError):
    """The database holds no tiles."""


class IndexStale(DatabaseError):
    """The vector index does not cover the catalog."""


class ImageError(MosaicError):
    """An image could not be read or decoded."""


class MatchError(MosaicError):
    """No assignment satisfies the requested repeat constraints."""


class PoolTooSmall(MatchError, UsageError):
    """The repeat options ask for more distinct tiles than the pool holds (known before any
    matching: a usage error, exit 2; still a MatchError)."""


class RenderError(MosaicError):
    """An output cannot be written as requested."""


class ModelError(MosaicError):
    """A model file is missing, damaged, not ours, or does not fit its configuration."""


class DeviceError(MosaicError):
    """A device the request names (a CUDA GPU) is not available on this machine."""


class MissingDependency(MosaicError):
    """An optional package is needed; the message holds the install hint."""


def choice(name: str, value, table: dict):
    """Look `value` up in `table`; an unknown value raises UsageError listing the allowed ones."""
    try:
        return table[value]
    except (KeyError, TypeError):
        allowed = ", ".join(sorted(map(str, table)))
        raise UsageError(f"unknown {name} {value!r}: choose one of {allowed}") from None


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi]; bools, floats, strings and values out of range raise a
    UsageError naming the option.

    >>> check_int("--k", 3, 1, 10)
    3
    >>> check_int("--k", 0, 1)
    Traceback (most recent call last):
    ...
    mosaicdb.errors.UsageError: --k must be 1 or more (and below 2^62), got 0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    top = 2 ** 62 - 1 if hi is None else hi  # no option means more; this keeps numpy and numba in int64
    if value < lo or value > top:
        where = f"between {lo} and {hi}" if hi is not None else f"{lo} or more (and below 2^62)"
        raise UsageError(f"{name} must be {where}, got {value}")
    return value


def check_number(name: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """`value` as a finite float in [lo, hi]; NaN, infinities, strings and values out of range
    raise a UsageError naming the option.

    >>> check_number("--color-strength", 0.5, 0, 1)
    0.5
    >>> check_number("--dpi", float("nan"), 1)
    Traceback (most recent call last):
    ...
    mosaicdb.errors.UsageError: --dpi must be a finite number, got nan
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int past the floats (e.g. 400 digits in a saved file)
        raise UsageError(f"{name} must be a finite number, got an integer of {len(str(abs(value)))} digits") from None
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        where = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                 else f"{lo:g} or more" if lo is not None else f"{hi:g} or less")
        raise UsageError(f"{name} must be {where}, got {value:.10g}")  # (:g showed 100.0001 as 100)
    return value
