"""The package on its own: `python -m build` makes an sdist and a wheel (the wheel from the sdist,
as pip would from PyPI, and one straight from the tree: the same files), the wheel carries the
viewer's page and OpenSeadragon, and installed in a fresh venv outside the checkout it runs
`mosaic demo` and `mosaic serve` with no npm on PATH and no checkout in sight.

The fresh venv borrows the third-party dependencies from this environment through a .pth line
(no download: fast and offline), after checking the wheel's own requirements are met there.
MOSAICDB_WHEEL_FULL_INSTALL=1 makes it `pip install` the wheel with its dependencies from the
index instead (minutes; needs the network).
"""
from __future__ import annotations

import email
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUNK = shutil.ignore_patterns(".git", "node_modules", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              "demo-out", "results", "artifacts", ".pytest_cache", ".hypothesis")
pytestmark = pytest.mark.slow


def run(cmd, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """{sdist, wheel (built from the sdist), tree_wheel (built from the source tree)}."""
    pytest.importorskip("build", reason="`build` is in the dev extra: pip install -e '.[dev]'")
    if shutil.which("npm") is None:
        pytest.skip("npm is needed to build the wheel (it fetches OpenSeadragon)")
    import setuptools
    if int(setuptools.__version__.split(".")[0]) < 77:  # built without isolation: this one is used
        pytest.fail(f"setuptools {setuptools.__version__} is below the build requirement (>=77): "
                    "pip install -e '.[dev]' brings a newer one")
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=JUNK)  # a clean tree: no node_modules, no build leftovers
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src], env=env)
    run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", tmp / "tree", src], env=env)
    (sdist,), (wheel,), (tree_wheel,) = (list((tmp / d).glob(p)) for d, p in
                                         (("dist", "*.tar.gz"), ("dist", "*.whl"), ("tree", "*.whl")))
    return {"sdist": sdist, "wheel": wheel, "tree_wheel": tree_wheel}


def test_wheel_contents(dists):
    with zipfile.ZipFile(dists["wheel"]) as z, zipfile.ZipFile(dists["tree_wheel"]) as t:
        names = set(z.namelist())
        assert names == set(t.namelist())
        assert all(z.read(n) == t.read(n) for n in names if "dist-info" not in n)
        top = z.read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
        meta = email.message_from_bytes(z.read(next(n for n in names if n.endswith("METADATA"))))
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert sorted(top) == ["mosaicdb", "mosaicdb_cli"]  # no generic top-level `cli`
    assert not [n for n in names if n.startswith("cli/")]
    assert "mosaic = mosaicdb_cli.entry:main" in entry
    osd = "mosaicdb/serve/openseadragon/"
    for f in ["mosaicdb/serve/static/index.html", "mosaicdb/serve/static/viewer.js", "mosaicdb/serve/static/viewer.css",
              osd + "openseadragon.min.js", osd + "LICENSE.txt", osd + "package.json", osd + "images/home_rest.png",
              "mosaicdb/__main__.py"]:
        assert f in names, f
    with zipfile.ZipFile(dists["wheel"]) as z:
        pinned = json.loads((ROOT / "package-lock.json").read_text())["packages"]["node_modules/openseadragon"]
        assert json.loads(z.read(osd + "package.json"))["version"] == pinned["version"]
        assert b"BSD" in z.read(osd + "LICENSE.txt") or b"Redistribution" in z.read(osd + "LICENSE.txt")
    # the core install pulls no torch, diffusers or ray: those are extras
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert core and not [r for r in core if re.match(r"(torch|diffusers|transformers|ray)\b", r)]
    assert set(meta.get_all("Provides-Extra")) == {"gen", "ray", "dev"}


def test_sdist_contents(dists):
    with tarfile.open(dists["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for f in ["package.json", "package-lock.json", "setup.py", "pyproject.toml", "README.md",
              "mosaicdb/serve/static/index.html", "mosaicdb/serve/openseadragon/openseadragon.min.js"]:
        assert f in names, f
    assert not [n for n in names if "node_modules" in n]


@pytest.fixture(scope="module")
def fresh_venv(dists, tmp_path_factory):
    """A venv outside the checkout with the wheel installed (not editable)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    if os.environ.get("MOSAICDB_WHEEL_FULL_INSTALL") == "1":
        run([sys.executable, "-m", "pip", "--python", py, "install", "-q", dists["wheel"]])
    else:
        run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", dists["wheel"]])
        # the dependencies from here, as plain path entries (this environment's .pth files, e.g.
        # an editable mosaicdb, are not processed through them)
        (site / "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def clean_env(venv: Path) -> dict:
    """No checkout, no npm, no overrides: PATH holds the venv only."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MOSAICDB_OPENSEADRAGON", "MOSAICDB_DB", "VIRTUAL_ENV")}
    env["PATH"] = str(venv / "bin")
    return env


def test_installed_package_is_the_wheel(fresh_venv, tmp_path):
    py, env = fresh_venv / "bin" / "python", clean_env(fresh_venv)
    code = ("import importlib.metadata as md, json, sys, mosaicdb, mosaicdb_cli\n"
            "from packaging.requirements import Requirement\n"
            "unmet = []\n"
            "for r in map(Requirement, md.requires('mosaicdb')):\n"
            "    if r.marker and not r.marker.evaluate({'extra': ''}): continue\n"
            "    try: v = md.version(r.name)\n"
            "    except md.PackageNotFoundError: v = None\n"
            "    if v is None or not r.specifier.contains(v, prereleases=True): unmet.append(str(r))\n"
            "print(json.dumps({'files': [mosaicdb.__file__, mosaicdb_cli.__file__], 'unmet': unmet, "
            "'cli': 'cli' in sys.modules}))")
    out = json.loads(run([py, "-c", code], cwd=tmp_path, env=env).stdout)
    site = str(fresh_venv)
    assert all(f.startswith(site) for f in out["files"]), out["files"]
    assert out["unmet"] == [] and not out["cli"]
    assert shutil.which("npm", path=env["PATH"]) is None
    assert run([fresh_venv / "bin" / "mosaic", "--version"], cwd=tmp_path, env=env).stdout.startswith("mosaic, version")
    assert "Exit codes:" in run([py, "-m", "mosaicdb", "--help"], cwd=tmp_path, env=env).stdout


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_demo_and_serve_from_the_wheel(fresh_venv, dists, tmp_path):
    env, mosaic = clean_env(fresh_venv), fresh_venv / "bin" / "mosaic"
    made = json.loads(run([mosaic, "demo", "--out", "demo-out", "--tiles", "300", "--grid", "24", "--json"],
                          cwd=tmp_path, env=env).stdout)
    assert (tmp_path / "demo-out" / "mosaic.jpg").is_file() and made["cells"] > 0
    # PYTHONFAULTHANDLER: if it ever fails to stop, SIGABRT makes it print where it is stuck
    proc = subprocess.Popen([str(mosaic), "serve", "demo-out/mosaic.jpg", "--no-open", "--port", "0", "--json"],
                            cwd=tmp_path, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # a shell's background job (as CI may run us) inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.poll() is not None else "no output"
        info = json.loads(line)
        url = info["url"].rstrip("/")
        status, ctype, page = get(url + "/")
        assert status == 200 and "text/html" in ctype and b"openseadragon" in page.lower()
        status, _, dzi = get(url + "/mosaic.dzi")
        w, h = (int(re.search(rf'{k}="(\d+)"', dzi.decode())[1]) for k in ("Width", "Height"))
        assert (w, h) == (info["width"], info["height"])
        top = max(w, h).bit_length() - (max(w, h) & (max(w, h) - 1) == 0)  # ceil(log2)
        status, ctype, tile = get(f"{url}/mosaic_files/{top}/0_0.jpeg")
        assert status == 200 and ctype == "image/jpeg" and tile[:2] == b"\xff\xd8"
        _, _, js = get(url + "/osd/openseadragon.min.js")
        with zipfile.ZipFile(dists["wheel"]) as z:
            assert js == z.read("mosaicdb/serve/openseadragon/openseadragon.min.js")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)   # reads both pipes: a full one cannot block it
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"mosaic serve did not stop on SIGINT within 30 s:\n{err[-6000:]}") from None
    assert proc.returncode == 130 and "Interrupted" in err
