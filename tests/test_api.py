"""The Python API: every public class and function has a docstring, the README's example runs as
written, and the core install (and `import mosaicdb`, `mosaic --help`) pulls in no torch."""
from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_synthetic

ROOT = Path(__file__).resolve().parents[1]

# What a user of the library imports: packages' __all__ and the modules named here.
PUBLIC_MODULES = {
    "mosaicdb": None, "mosaicdb.printing": None, "mosaicdb.serve": None, "mosaicdb.generate": None,
    "mosaicdb.store": ["TileDB", "IngestReport", "CheckReport"],
    "mosaicdb.index": ["IndexOptions", "VectorIndex", "build_index"],
    "mosaicdb.errors": "*", "mosaicdb.jobs": "*", "mosaicdb.assignment": "*", "mosaicdb.evaluate": "*",
    "mosaicdb.units": "*", "mosaicdb.srgb": "*", "mosaicdb.progress": "*",
    "mosaicdb.make": ["Maker", "MakeResult", "render_saved", "evaluate_files", "expand_targets", "output_paths"],
    "mosaicdb.demo": ["run_demo", "DemoResult"],
    "mosaicdb.match.options": ["MatchOptions"], "mosaicdb.render.options": ["RenderOptions"],
    "mosaicdb.autoencoder": None, "mosaicdb.autoencoder.make": ["AutoMaker"],
    "mosaicdb.autoencoder.fit": ["Fitter", "FitResult", "decode_tiles"],
    "mosaicdb.autoencoder.files": ["Model", "load_model", "save_model"],
    "mosaicdb.autoencoder.train": ["train_autoencoder", "TrainReport"],
}


def public_objects():
    for modname, names in PUBLIC_MODULES.items():
        mod = importlib.import_module(modname)
        if names is None:
            names = mod.__all__
        elif names == "*":
            names = [n for n, v in vars(mod).items() if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
                     and getattr(v, "__module__", "") == modname]
        for n in names:
            obj = getattr(mod, n)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            yield f"{modname}.{n}", obj
            if inspect.isclass(obj):
                for klass in obj.__mro__:
                    if not klass.__module__.startswith("mosaicdb"):
                        continue
                    for m, v in vars(klass).items():
                        if m.startswith("_"):
                            continue
                        f = v.__func__ if isinstance(v, (classmethod, staticmethod)) else v
                        if inspect.isfunction(f):
                            yield f"{modname}.{n}.{m}", f


def test_public_api_has_docstrings():
    seen, missing = set(), []
    for name, obj in public_objects():
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        doc = inspect.getdoc(obj) if inspect.isfunction(obj) else obj.__dict__.get("__doc__")
        if not doc or (inspect.isclass(obj) and doc.startswith(obj.__name__ + "(")):  # a dataclass's generated one
            missing.append(name)
    assert len(seen) > 150
    assert not missing, f"{len(missing)} without a docstring: {missing}"


# ---- the README's example ----------------------------------------------------------------------
def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example; this test runs it"
    return blocks[0]


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    """Create, ingest, make to a file and to an array, exactly as the README shows."""
    write_synthetic(tmp_path / "photos", 120, seed=5)
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[0:240, 0:320]
    Image.fromarray(np.stack([xx * 255 // 319, yy * 255 // 239, 255 - xx * 255 // 319], -1).astype(np.uint8)
                    ^ rng.integers(0, 8, (240, 320, 3), dtype=np.uint8)).save(tmp_path / "target.jpg")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_python(), str(ROOT / "README.md"), "exec"), ns)
    assert (tmp_path / "tiles.db" / "catalog.sqlite").is_file()
    written = np.asarray(Image.open(tmp_path / "mosaic.png").convert("RGB"))
    assert (tmp_path / "mosaic.mosaic.json").is_file() and (tmp_path / "mosaic.metrics.json").is_file()
    pixels = ns["pixels"]
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.shape == written.shape
    np.testing.assert_array_equal(pixels, written)  # the same options: the same mosaic
    assert ns["result"].metrics["psnr64"] > 10
    assert not (set(p.name for p in tmp_path.iterdir()) - {"photos", "target.jpg", "tiles.db", "mosaic.png",
                                                            "mosaic.mosaic.json", "mosaic.mosaic.npz",
                                                            "mosaic.metrics.json"})


# ---- what the core install pulls in ------------------------------------------------------------
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "ray")


def test_core_dependencies_pull_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[A-Za-z0-9_.\-]+", d)[0].lower() for d in project["dependencies"]]
    assert not set(names) & set(HEAVY), names
    extras = project["optional-dependencies"]
    assert set(extras) == {"gen", "ray", "dev"}
    assert {"torch", "diffusers"} <= {re.match(r"[\w.\-]+", d)[0] for d in extras["gen"]}
    assert any(d.startswith("ray") for d in extras["ray"])
    readme = (ROOT / "README.md").read_text()
    for extra in extras:  # each one documented
        assert f"[{extra}]" in readme, f"README: document the `{extra}` extra"


def test_import_and_help_load_no_heavy_module():
    code = ("import sys, mosaicdb\n"
            "from mosaicdb import TileDB, Maker, MatchOptions, RenderOptions\n"
            "from mosaicdb_cli.main import cli\n"
            "for args in (['--help'], ['make', '--help'], ['generate', 'tiles', '--help'], ['serve', '--help']):\n"
            "    try:\n"
            "        cli(args, prog_name='mosaic')\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stderr.strip().splitlines()[-1] == "[]", res.stderr
    assert "Usage: mosaic" in res.stdout
