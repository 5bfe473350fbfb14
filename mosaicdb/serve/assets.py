"""The viewer's static files: our page (static/) and OpenSeadragon's build from npm.

Every file is read once at start-up into a fixed table of URL -> bytes, so no request ever
turns into a filesystem path.

Where OpenSeadragon is looked for, in this order (the first that holds openseadragon.min.js):
1. the folder given by `--osd-dir` (`osd_dir`), else the one in $MOSAICDB_OPENSEADRAGON: either
   the build folder itself or the npm package / a node_modules folder holding it; when one of
   these is given, nothing else is tried (a wrong override is an error, not silently ignored);
2. the copy installed with mosaicdb (serve/openseadragon/, put into the wheel and the sdist by
   the build hook in setup.py from the pinned package-lock.json);
3. node_modules/ of the mosaicdb checkout this module runs from (`npm ci` or `make`);
4. node_modules/ of the current directory.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import MissingDependency

STATIC = Path(__file__).with_name("static")
BUNDLED = Path(__file__).with_name("openseadragon")
REPO = Path(__file__).resolve().parents[2]
ENV = "MOSAICDB_OPENSEADRAGON"
OSD_SCRIPT = "openseadragon.min.js"
OWN = {"/": ("index.html", "text/html; charset=utf-8"),
       "/static/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
       "/static/viewer.css": ("viewer.css", "text/css; charset=utf-8")}


def _npm_build(base: Path) -> Path:
    return base / "node_modules" / "openseadragon" / "build" / "openseadragon"


def osd_candidates(explicit=None) -> list[Path]:
    """The folders tried, in order (see the module's docstring)."""
    given = explicit or os.environ.get(ENV)
    if given:
        p = Path(given)
        return [p, p / "build" / "openseadragon", p / "openseadragon" / "build" / "openseadragon"]
    return [BUNDLED, _npm_build(REPO), _npm_build(Path.cwd())]


def find_openseadragon(explicit=None) -> Path:
    """The folder holding openseadragon.min.js and images/ (the npm package's build folder)."""
    for c in osd_candidates(explicit):
        if (c / OSD_SCRIPT).is_file():
            return c
    where = explicit or os.environ.get(ENV)
    if where:
        raise MissingDependency(f"OpenSeadragon not found in {where} ({'--osd-dir' if explicit else '$' + ENV}): "
                                "point it at the build/openseadragon folder of the openseadragon npm package "
                                "(`npm ci` installs it in a checkout), or leave it out to use the installed copy")
    raise MissingDependency(
        f"OpenSeadragon is not installed (looked in {BUNDLED} and {REPO / 'node_modules'}): reinstall "
        f"mosaicdb from its wheel, run `npm ci` in a checkout ({REPO}; or `make`), or point --osd-dir / "
        f"${ENV} at the openseadragon package's build/openseadragon folder")


def load_assets(osd_dir=None) -> dict[str, tuple[bytes, str]]:
    """URL path -> (bytes, content type) for every static file the viewer serves."""
    table = {url: ((STATIC / name).read_bytes(), ctype) for url, (name, ctype) in OWN.items()}
    osd = find_openseadragon(osd_dir)
    table["/osd/" + OSD_SCRIPT] = ((osd / OSD_SCRIPT).read_bytes(), "text/javascript; charset=utf-8")
    images = osd / "images"
    if images.is_dir():
        for f in sorted(images.iterdir()):
            if re.fullmatch(r"[a-z0-9_]+\.png", f.name) and f.is_file():
                table["/osd/images/" + f.name] = (f.read_bytes(), "image/png")
    return table
