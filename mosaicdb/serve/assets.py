"""The viewer's static files: our page (static/) and OpenSeadragon's build from npm.

Every file is read once at start-up into a fixed table of URL -> bytes, so no request ever
turns into a filesystem path. OpenSeadragon comes from `node_modules` (package.json at the
repository root, installed by `npm ci` / `make`), or from the folder given by --osd-dir or
$MOSAICDB_OPENSEADRAGON.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import MissingDependency

STATIC = Path(__file__).with_name("static")
REPO = Path(__file__).resolve().parents[2]
ENV = "MOSAICDB_OPENSEADRAGON"
OSD_SCRIPT = "openseadragon.min.js"
OWN = {"/": ("index.html", "text/html; charset=utf-8"),
       "/static/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
       "/static/viewer.css": ("viewer.css", "text/css; charset=utf-8")}


def find_openseadragon(explicit=None) -> Path:
    """The folder holding openseadragon.min.js and images/ (the npm package's build folder)."""
    candidates = []
    for given in (explicit, os.environ.get(ENV)):
        if given:
            p = Path(given)
            candidates += [p, p / "build" / "openseadragon", p / "openseadragon" / "build" / "openseadragon"]
            break
    else:
        candidates += [base / "node_modules" / "openseadragon" / "build" / "openseadragon"
                       for base in (REPO, Path.cwd())]
    for c in candidates:
        if (c / OSD_SCRIPT).is_file():
            return c
    where = explicit or os.environ.get(ENV)
    raise MissingDependency(
        (f"OpenSeadragon not found in {where}" if where else
         f"OpenSeadragon is not installed (looked in {REPO / 'node_modules'})") +
        f": run `npm ci` in {REPO} (or `make`), or point --osd-dir / ${ENV} at the openseadragon "
        "package's build/openseadragon folder")


def osd_version(folder: Path) -> str | None:
    try:
        return json.loads((folder.parents[1] / "package.json").read_text()).get("version")
    except (OSError, ValueError, IndexError):
        return None


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
