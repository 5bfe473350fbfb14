"""Build hooks (everything else about the package is in pyproject.toml).

The wheel carries OpenSeadragon, the viewer's front end, fetched at build time by `npm ci` from
the pinned package.json/package-lock.json (as Jupyter and Bokeh package their front ends), so
`pip install mosaicdb-*.whl` gives a working `mosaic serve` with no npm and no checkout. The
repository holds no copy of OpenSeadragon; the sdist does (fetched the same way when it is
made), so a wheel built from the sdist needs no npm either.

Only what the viewer serves goes in: openseadragon.min.js, its button images, the package's
licence (BSD-3-Clause) and package.json (its version), in mosaicdb/serve/openseadragon/.
Editable installs skip this: a checkout serves its own node_modules/ (`make` runs npm ci).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
BUNDLE = Path("mosaicdb", "serve", "openseadragon")
SCRIPT = "openseadragon.min.js"


def fetch_openseadragon(work: Path) -> Path:
    """`npm ci` of the pinned lockfile in `work`; returns the openseadragon package folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("building mosaicdb needs npm (Node.js) to fetch OpenSeadragon as pinned in "
                         "package-lock.json: install Node.js and npm, or build the wheel from the sdist, "
                         "which already holds it")
    work.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(HERE / name, work / name)
    subprocess.run([npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=work, check=True)
    return work / "node_modules" / "openseadragon"


def copy_bundle(package: Path, dest: Path) -> None:
    """The served files, licence and version of the npm package into `dest`, replacing it."""
    build = package / "build" / "openseadragon"
    if not (build / SCRIPT).is_file():
        raise SystemExit(f"{build / SCRIPT} is missing after npm ci: is package-lock.json intact?")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True)
    shutil.copy2(build / SCRIPT, dest / SCRIPT)
    for png in sorted((build / "images").glob("*.png")):
        shutil.copy2(png, dest / "images" / png.name)
    for name in ("LICENSE.txt", "package.json"):
        shutil.copy2(package / name, dest / name)


class BuildPyWithViewer(build_py):
    def run(self):
        super().run()  # copies the bundle too when the source (an unpacked sdist) has it
        if self.editable_mode:
            return
        dest = Path(self.build_lib) / BUNDLE
        if not (dest / SCRIPT).is_file():
            build_temp = Path(self.get_finalized_command("build").build_temp)
            copy_bundle(fetch_openseadragon(build_temp / "npm"), dest)


class SdistWithViewer(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        build_temp = Path(self.get_finalized_command("build").build_temp)
        copy_bundle(fetch_openseadragon(build_temp / "npm"), Path(base_dir) / BUNDLE)


setup(cmdclass={"build_py": BuildPyWithViewer, "sdist": SdistWithViewer})
