"""Shared fixtures: real data from ../shared/data (skipped when absent) and synthetic images.

Session-scoped folders (`synthetic_tiles`, `cifar_folder`, `cifar_files(n)`) and databases
(`synthetic_db`) are shared by many tests: treat them as read-only, and copy or create your own
(`new_db`) when a test changes files or the database.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SKIP_SHARED = "../shared/data not found: real-data tests need the shared data folder beside the repo"

SYNTHETIC_COUNT = 300
CIFAR_COUNT = 2000


def pytest_collection_modifyitems(config, items):
    """Tests that use ../shared/data (through any fixture) get the `shared` marker, so
    `-m "not shared"` selects the self-contained ones."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)


@pytest.fixture
def run_cli():
    """`run_cli(*args, code=None)`: run `mosaic ARGS`; fails the test on an internal error."""
    from clirun import invoke_cli
    return invoke_cli


# ---- real data ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it (directly or through the fixtures below)
    are skipped where it is absent."""
    if not (SHARED / "tiles").is_dir():
        pytest.skip(SKIP_SHARED)
    return SHARED


def load_sheet(path) -> np.ndarray:
    """A CIFAR-10 sheet -> (10000, 32, 32, 3) uint8, in meta order (see shared/data/README.md)."""
    a = np.asarray(Image.open(path).convert("RGB"))
    return a.reshape(100, 32, 100, 32, 3).swapaxes(1, 2).reshape(-1, 32, 32, 3)


@pytest.fixture(scope="session")
def cifar_tiles(shared_data) -> np.ndarray:
    """The 10,000 tiles of `tiles/cifar10_train_1.png`, (10000, 32, 32, 3) uint8."""
    return load_sheet(shared_data / "tiles" / "cifar10_train_1.png")


@pytest.fixture(scope="session")
def cifar_files(cifar_tiles, tmp_path_factory):
    """`cifar_files(n)` -> a folder of the first n CIFAR tiles as PNGs named c00000.png ...
    (one folder per n, made once per session; file i holds `cifar_tiles[i]`)."""
    made: dict[int, Path] = {}

    def make(n: int) -> Path:
        if n not in made:
            if not 0 < n <= len(cifar_tiles):
                raise ValueError(f"n must be in 1..{len(cifar_tiles)}")
            folder = tmp_path_factory.mktemp(f"cifar{n}")
            for i in range(n):
                Image.fromarray(cifar_tiles[i]).save(folder / f"c{i:05d}.png", compress_level=1)
            made[n] = folder
        return made[n]

    return make


@pytest.fixture(scope="session")
def cifar_folder(cifar_files) -> Path:
    """A folder of 2,000 CIFAR-10 tiles (c00000.png ... c01999.png)."""
    return cifar_files(CIFAR_COUNT)


@pytest.fixture(scope="session")
def cifar_ingest(cifar_folder, tmp_path_factory):
    """(path, IngestReport) of a database holding the 2,000 `cifar_folder` tiles: default
    settings, ingested with 2 workers, flat index. Read-only: copy the folder to change it."""
    from mosaicdb import TileDB

    path = tmp_path_factory.mktemp("cifardb") / "cifar.db"
    with TileDB.create(path) as db:
        report = db.ingest([cifar_folder], workers=2)
    return path, report


@pytest.fixture(scope="session")
def cifar_db(cifar_ingest):
    """The `cifar_ingest` database opened read-only."""
    from mosaicdb import TileDB

    db = TileDB.open(cifar_ingest[0], readonly=True)
    yield db
    db.close()


@pytest.fixture(scope="session")
def emoji_zip(shared_data) -> Path:
    """The Noto Color Emoji zip: 3,926 PNGs, 136x128, mostly palette mode with transparency."""
    return shared_data / "tiles" / "noto_emoji_136x128.zip"


# ---- synthetic images --------------------------------------------------------------------------
def synthetic_image(rng: np.random.Generator, width: int, height: int, kind: str | None = None) -> np.ndarray:
    """An (height, width, 3) uint8 picture: random colour blocks, a gradient, a disc or noise.

    Every kind draws continuous random colours, so two calls practically never give the same
    pixels (or the same features)."""
    kind = kind or rng.choice(["blocks", "gradient", "disc", "noise"])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "blocks":
        n = int(rng.integers(2, 6))
        colours = rng.uniform(0, 255, (n, n, 3))
        img = colours[(yy * n // height).astype(int), (xx * n // width).astype(int)]
    elif kind == "gradient":
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx / max(width - 1, 1) + np.sin(angle) * yy / max(height - 1, 1))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = a + (b - a) * t[..., None]
    elif kind == "disc":
        bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, rng.uniform(0.2, 0.45) * min(width, height)
        img = np.where(((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None], fg, bg)
    elif kind == "noise":
        img = rng.uniform(40, 215, 3) + rng.normal(0, 25, (height, width, 3))
    else:
        raise ValueError(kind)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode(img, fmt: str = "PNG", **kw) -> bytes:
    """Encode a numpy array or PIL image to bytes."""
    im = img if isinstance(img, Image.Image) else Image.fromarray(img)
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def write_synthetic(folder: Path, n: int, seed: int = 0, prefix: str = "s") -> list[Path]:
    """Write n varied synthetic images (sizes 8-160 px, mixed aspect ratios; ~1 in 5 a JPEG)
    into `folder`, named <prefix>0000.png ...; returns the paths in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(8, 161, 2))
        img = synthetic_image(rng, w, h)
        if rng.random() < 0.2:
            p = folder / f"{prefix}{i:04d}.jpg"
            Image.fromarray(img).save(p, quality=92)
        else:
            p = folder / f"{prefix}{i:04d}.png"
            Image.fromarray(img).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def cifar_copy(cifar_ingest, tmp_path):
    """A writable copy of the 2,000-tile CIFAR database."""
    dest = tmp_path / "c.db"
    shutil.copytree(cifar_ingest[0], dest)
    return dest


@pytest.fixture
def db40(tmp_path):
    """A database of 40 synthetic tiles, closed; its folder of sources beside it (tmp_path/src)."""
    from mosaicdb import TileDB
    src = tmp_path / "src"
    write_synthetic(src, 40, seed=11)
    with TileDB.create(tmp_path / "t.db") as db:
        db.ingest([src], workers=1)
    return tmp_path / "t.db"


@pytest.fixture(scope="session")
def synthetic_tiles(tmp_path_factory) -> Path:
    """A read-only folder of 300 varied synthetic images (PNG and JPEG, 8-160 px, mixed sizes)."""
    folder = tmp_path_factory.mktemp("synthetic")
    write_synthetic(folder, SYNTHETIC_COUNT, seed=1234)
    return folder


@pytest.fixture
def synthetic_copy(synthetic_tiles, tmp_path) -> Path:
    """A private, writable copy of `synthetic_tiles` (for tests that change or delete files)."""
    dest = tmp_path / "synthetic"
    shutil.copytree(synthetic_tiles, dest)
    return dest


def first_images(folder: Path, n: int, dest: Path) -> Path:
    """A private folder `dest` holding copies of the first `n` images of `folder` (sorted)."""
    dest.mkdir()
    for f in sorted(folder.iterdir())[:n]:
        shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture
def new_db(tmp_path):
    """`new_db(**TileDB.create options)` -> a new empty TileDB under tmp_path (closed at teardown)."""
    from mosaicdb import TileDB

    made = []

    def make(name: str | None = None, **kw):
        d = TileDB.create(tmp_path / (name or f"db{len(made)}"), **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture(scope="session")
def synthetic_db(synthetic_tiles, tmp_path_factory):
    """A read-only TileDB holding the 300 synthetic tiles, with a (flat) index."""
    from mosaicdb import TileDB

    d = TileDB.create(tmp_path_factory.mktemp("synthdb") / "tiles.db")
    d.ingest([synthetic_tiles], workers=1)
    d.close()
    d = TileDB.open(d.path, readonly=True)
    yield d
    d.close()


def start_render_to_interrupt(saved, out: Path, *extra: str, **popen):
    """`mosaic render` of `saved` (written beside `out`) to `out` in a subprocess, returned once
    its temporary output exists (so a signal now lands mid-render)."""
    import subprocess
    import sys
    import time
    from mosaicdb import assignment as asg
    asg.save(out, saved)
    proc = subprocess.Popen([sys.executable, "-m", "mosaicdb", "render", str(asg.sidecar_paths(out)[0]), "--out",
                             str(out), "-q", "--color", "mean", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(f".{out.name}") for p in out.parent.iterdir()):
        time.sleep(0.02)
    time.sleep(0.1)
    assert proc.poll() is None, "render finished before it could be interrupted: make it bigger"
    return proc

