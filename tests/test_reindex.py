"""`mosaic db reindex`: features recomputed as another kind from the thumbnails, equal to a fresh
ingest's; the index follows; SIGKILL at any moment leaves a database `db check` passes."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import invoke_cli
from conftest import synthetic_image
from mosaicdb import TileDB
from mosaicdb import feature_kinds as fk
from mosaicdb.make import Maker
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions
from mosaicdb.store.reindex import reindex


def run(*args):
    return invoke_cli(*args)


def feature_files(db: Path) -> list[str]:
    return sorted(f.name for f in db.glob("features*.f32"))


def temporaries(db: Path) -> list[str]:
    """Feature files being written (hidden, tagged with the writer's pid: mosaicdb.io.temp_path)."""
    return sorted(f.name for f in db.glob(".features*.tmp*"))


@pytest.fixture
def lab_db(synthetic_tiles, tmp_path) -> Path:
    """A lab-grid database of the 300 synthetic tiles (as every database was before kinds)."""
    path = tmp_path / "db"
    with TileDB.create(path, features="lab-grid") as db:
        db.ingest([synthetic_tiles], workers=1)
    return path


def fresh(kind: str, synthetic_tiles, tmp_path) -> TileDB:
    db = TileDB.create(tmp_path / f"fresh-{kind}", features=kind)
    db.ingest([synthetic_tiles], workers=1, update_index=False)
    return db


@pytest.mark.parametrize("kind", ["rgb-pyramid", "lab-pyramid"])
def test_reindex_equals_a_fresh_ingest_and_back(kind, lab_db, synthetic_tiles, tmp_path):
    with TileDB.open(lab_db) as db:
        old = np.array(db.features())
        rep = reindex(db, kind)
        assert rep.kind == kind and rep.previous == "lab-grid" and rep.tiles == 300 and rep.dim == 255
        assert db.feature_spec == fk.KINDS[kind] and db.dim == 255
        with fresh(kind, synthetic_tiles, tmp_path) as ref:
            by_hash = {t["hash"]: t["id"] for t in ref.tiles(ref.ids())}
            order = [by_hash[t["hash"]] for t in db.tiles(db.ids())]
            np.testing.assert_array_equal(np.asarray(db.features()[db.ids()]), np.asarray(ref.features()[order]))
        assert feature_files(lab_db) == [f"features.{kind}.1.f32"]
        infos = db.load_index().infos
        assert infos["dim"] == 255 and infos["features"] == fk.signature(db.feature_spec) and not db.index_stale()
        assert db.check(deep=True).ok and db.check().warnings == []
        target = tmp_path / "t.png"
        Image.fromarray(synthetic_image(np.random.default_rng(4), 90, 60, "blocks")).save(target)
        r = Maker(db, MatchOptions(grid="9"), RenderOptions(tile_px=8)).make(target, tmp_path / "m.png")
        assert r.metrics["cells"] == 54

        back = reindex(db, "lab-grid")
        assert back.previous == kind and db.dim == 51
        np.testing.assert_array_equal(np.asarray(db.features()), old)
        assert feature_files(lab_db) == ["features.lab-grid.1.f32"] and db.check(deep=True).ok
    with TileDB.open(lab_db, readonly=True) as ro:  # a new process sees the switch
        assert ro.feature_spec == fk.LabGrid(4, 1.0) and not ro.index_stale()


def test_ingest_after_reindex_writes_the_new_kind(lab_db, synthetic_tiles, tmp_path):
    """An ingest through a TileDB opened before another process reindexed: it follows the
    catalog's current kind and file, never the ones it opened with."""
    more = tmp_path / "more"
    more.mkdir()
    for i in range(5):
        Image.fromarray(synthetic_image(np.random.default_rng(100 + i), 40, 40)).save(more / f"m{i}.png")
    stale = TileDB.open(lab_db)
    with TileDB.open(lab_db) as other:
        reindex(other, "rgb-pyramid")
    rep = stale.ingest([more], workers=1)
    assert rep.added == 5 and stale.dim == 255
    new = stale.ids()[-5:]
    spec = fk.KINDS["rgb-pyramid"]
    np.testing.assert_allclose(np.asarray(stale.features()[new]), spec(np.asarray(stale.thumbs(16)[new])), atol=1e-5)
    assert stale.check(deep=True).ok
    stale.close()


def test_reindex_cli(lab_db):
    res = run("db", "reindex", lab_db, "--features", "rgb-pyramid", "-q")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("300 tiles reindexed from lab-grid to rgb-pyramid features (255-dim) in ")
    assert "index flat, recall@1 1.000" in res.stdout
    stats = run("db", "stats", lab_db).stdout
    assert "features rgb-pyramid (255-dim)" in stats
    res = run("db", "reindex", lab_db, "--features", "rgb-pyramid", "--feature-grid", "2")
    assert res.exit_code != 0 and "apply to --features lab-grid" in res.output
    res = run("db", "reindex", lab_db)
    assert res.exit_code == 2 and "--features" in res.output
    res = run("db", "reindex", lab_db, "--features", "hog")
    assert res.exit_code == 2 and "rgb-pyramid" in res.output
    assert "Example:" in run("db", "reindex", "--help").output


# ---- SIGKILL ---------------------------------------------------------------------------------
# The child runs the real CLI with tile_features slowed down (so a kill lands between chunks)
# and the index build slowed down (so a kill lands after the catalog switch, before the index).
CHILD = """
import sys, time
import mosaicdb.store.reindex as r, mosaicdb.store.indexing as d
tf, bi = r.tile_features, d.build_index
r.CHUNK_ROWS = 32
r.tile_features = lambda *a: (time.sleep(0.25), tf(*a))[1]
d.build_index = lambda *a, **k: (time.sleep(60), bi(*a, **k))[1]
from mosaicdb_cli.main import main
sys.argv = ["mosaic", "db", "reindex", sys.argv[1], "--features", "rgb-pyramid", "-q"]
main()
"""


def meta_kind(db: Path) -> str | None:
    con = sqlite3.connect(f"file:{urllib.parse.quote(str(db / 'catalog.sqlite'))}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'feature_kind'").fetchone()
        return None if row is None else row[0].strip('"')
    finally:
        con.close()


def kill_reindex(db: Path, until, log: Path) -> None:
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        t0 = time.monotonic()
        while not until():
            assert p.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 120, "reindex did not reach the moment to kill"
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def check_ok(db: Path) -> str:
    res = run("db", "check", db, "--deep")
    assert res.exit_code == 0 and "OK (300 tiles)" in res.stdout, res.output
    return res.stderr


@pytest.mark.slow
def test_reindex_killed_at_any_moment_then_rerun(lab_db, synthetic_tiles, tmp_path):
    before = np.array(TileDB.open(lab_db, readonly=True).features())

    # 1. mid-way through the chunks: nothing switched, the old features are intact
    started = {}

    def mid_way():
        if not temporaries(lab_db):
            return False
        started.setdefault("t", time.monotonic())
        return time.monotonic() - started["t"] > 0.8  # ~3 of 10 chunks written

    kill_reindex(lab_db, mid_way, tmp_path / "log1.txt")
    assert meta_kind(lab_db) == "lab-grid"
    assert feature_files(lab_db) == ["features.f32"] and len(temporaries(lab_db)) == 1  # a dead writer's
    check_ok(lab_db)
    with TileDB.open(lab_db, readonly=True) as ro:
        assert ro.feature_spec == fk.LabGrid(4, 1.0) and not ro.index_stale()
        np.testing.assert_array_equal(np.asarray(ro.features()), before)

    # 2. after the catalog switched, while the index is being rebuilt
    kill_reindex(lab_db, lambda: meta_kind(lab_db) == "rgb-pyramid", tmp_path / "log2.txt")
    warnings = check_ok(lab_db)
    assert "index: out of date" in warnings
    with TileDB.open(lab_db) as db, fresh("rgb-pyramid", synthetic_tiles, tmp_path) as ref:
        assert db.feature_spec == fk.KINDS["rgb-pyramid"]
        np.testing.assert_array_equal(np.asarray(db.features()[db.ids()]), np.asarray(ref.features()[ref.ids()]))

    # 3. rerun to the end: current index, one feature file, a clean check
    res = subprocess.run([sys.executable, "-c", "from mosaicdb_cli.main import main; main()", "db", "reindex", str(lab_db),
                          "--features", "rgb-pyramid", "-q"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "300 tiles reindexed" in res.stdout, res.stderr
    assert check_ok(lab_db).strip() == ""
    files = feature_files(lab_db)
    assert len(files) == 1 and files[0].startswith("features.rgb-pyramid.")  # orphans are gone
    assert temporaries(lab_db) == []
    with TileDB.open(lab_db, readonly=True) as ro:
        assert not ro.index_stale() and ro.load_index().infos["features"] == fk.signature(ro.feature_spec)


def test_reindex_between_kinds_of_the_same_size_rebuilds_the_index(synthetic_tiles, tmp_path):
    """rgb-pyramid and lab-pyramid vectors are both 255-d: the index must still be rebuilt, or
    it would keep searching the old kind's vectors."""
    with TileDB.create(tmp_path / "db") as db:
        db.ingest([synthetic_tiles], workers=1)
        reindex(db, "lab-pyramid")
        ids = db.ids()
        d, got = db.search(np.asarray(db.features()[ids]), 1)
        np.testing.assert_array_equal(got[:, 0], ids)
        assert float(d.max()) < 1e-3
        assert db.load_index().infos["features"] == fk.signature(fk.KINDS["lab-pyramid"])
