"""Progress bars: every tqdm bar in the library is made here, so one rule decides when one shows.

A bar shows when the caller asked for progress (the CLI unless -q) *and* it would reach a
person: stderr is a terminal (or a Jupyter kernel's output) and `TQDM_DISABLE` is not set. In
a log file, a pipe or CI the bar is a silent counter with the same methods, so no `\\r`
updates end up in the log.
"""
from __future__ import annotations

import os
import sys

OFF_VALUES = ("", "0", "false", "no", "off")


def progress_enabled(requested: bool, stream=None) -> bool:
    """Whether a bar asked for with `requested` is drawn on `stream` (default: sys.stderr)."""
    if not requested:
        return False
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in OFF_VALUES:
        return False
    stream = sys.stderr if stream is None else stream
    if "ipykernel" in sys.modules and type(stream).__name__ == "OutStream":
        return True  # a notebook cell: tqdm's text bar redraws in place there
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(enabled: bool, total: int | None = None, desc: str | None = None, unit: str = "it", **kw):
    """A tqdm bar (keywords passed on) that is drawn only when `progress_enabled(enabled)`."""
    from tqdm import tqdm
    kw.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(enabled, kw.get("file")), **kw)


def lower_level_names() -> None:
    """Log level names in lower case, so that a logged warning reads "warning: ..." like the
    CLI's own (the CLI, and the --jobs workers that take its log format)."""
    import logging
    for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        logging.addLevelName(lv, logging.getLevelName(lv).lower())


def use_thread_lock() -> None:
    """Bars in this process share a thread lock, not tqdm's default named multiprocessing
    semaphore: a spawned worker (make --jobs) stopped mid-batch would leave that semaphore for
    the resource tracker to warn about on the user's terminal."""
    import threading

    from tqdm import tqdm
    tqdm.set_lock(threading.RLock())
