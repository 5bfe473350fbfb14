"""The `mosaic` program's first code (console script and `python -m mosaicdb`): it imports
nothing heavy itself, so Ctrl-C while Python is still loading the command line (numpy, click,
the library: the first ~0.25 s) ends it as Ctrl-C does later, "Interrupted." and exit 130,
not with a traceback."""
from __future__ import annotations

import sys


def main() -> None:
    try:
        from .main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        raise SystemExit(130) from None
    run()
