"""Hostile-review cases on what landed after the second QA pass (issue 11's pass 3): feature
specs in the catalog, saved index options after the pool shrank, outputs over special files or
inside the database, Ray actors no node can hold."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import invoke_cli
from conftest import synthetic_image, write_synthetic
from mosaicdb import TileDB
from mosaicdb.batch import BatchOptions, BatchRunner
from mosaicdb.errors import UsageError
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions


@pytest.fixture(scope="module")
def built_db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qa5")
    write_synthetic(root / "src", 40, seed=5)
    with TileDB.create(root / "t.db") as db:
        db.ingest([root / "src"], workers=1)
        db.index()
    return root / "t.db"


@pytest.fixture
def db40(built_db, tmp_path) -> Path:
    return Path(shutil.copytree(built_db, tmp_path / "t.db"))


@pytest.fixture
def target(tmp_path) -> Path:
    p = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(3), 96, 64, "blocks")).save(p)
    return p


def set_meta(db: Path, key: str, value) -> None:
    with sqlite3.connect(db / "catalog.sqlite") as con:
        con.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(value), key))
    con.close()


def feature_params(db: Path) -> dict:
    with sqlite3.connect(db / "catalog.sqlite") as con:
        params = json.loads(con.execute("SELECT value FROM meta WHERE key = 'feature_params'").fetchone()[0])
    con.close()
    return params


@pytest.mark.parametrize("field, value", [("levels", [[float("inf"), 1.0]]), ("samples", float("inf")),
                                          ("samples", "16"), ("samples", 16.7), ("levels", [[1.5, 1.0]]),
                                          ("levels", [[1, float("nan")]])])
def test_catalog_feature_params_that_are_not_whole_numbers_are_damage(db40, field, value):
    # Infinity was an OverflowError (internal error); "16" and 16.7 were taken as 16
    set_meta(db40, "feature_params", {**feature_params(db40), field: value})
    res = invoke_cli("db", "stats", db40, code=1)
    assert "settings are damaged" in res.output and field.rstrip("s") in res.output


@pytest.mark.parametrize("levels", [[[1, 1.0]], [[1, 1.0], [2, 1.0], [4, 1.0], [8, 1.0], [16, 1.0]]])
def test_catalog_feature_spec_of_other_dims_than_its_files_is_refused_not_a_crash(db40, target, tmp_path, levels):
    # the index (and the feature rows) hold vectors of the old width: FAISS asserted on search
    set_meta(db40, "feature_params", {**feature_params(db40), "levels": levels})
    res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--grid", "8", "-q", code=1)
    assert "damaged" in res.output and "repair" in res.output
    invoke_cli("db", "check", db40, "-q")  # a warning or a problem, never an internal error
    assert not (tmp_path / "m.png").exists()


def test_saved_ivfpq_options_after_the_pool_shrank_rebuild_as_auto(db40):
    # an ivfpq index whose pool fell below what ivfpq trains on: `db remove` (and every make
    # after it) failed with "--kind ivfpq needs at least 1,024 tiles", an option nobody gave
    p = db40 / "index" / "index_infos.json"
    infos = json.loads(p.read_text())
    infos["options"]["kind"] = "ivfpq"
    infos["features"] = "built for other features"   # forces the rebuild a shrunk pool forces
    p.write_text(json.dumps(infos))
    invoke_cli("db", "remove", db40, "3", code=0)
    assert json.loads(p.read_text())["kind"] == "flat"
    invoke_cli("db", "check", db40, code=0)


def test_out_that_exists_and_is_not_a_folder_is_a_usage_error(db40, target, tmp_path):
    # was: the whole mosaic or print made, then "Error: File exists (X)", exit 1
    afile = tmp_path / "outputs"
    afile.write_text("keep me")
    for args in (["make", "--db", db40, target, "--out", afile],
                 ["make", "--db", db40, target, target, "--out", afile],
                 ["make", "--db", db40, target, "--out", "/dev/null"]):
        res = invoke_cli(*args, "--grid", "8", "-q", code=2)
        assert "is not a folder" in res.output
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--grid", "8", "-q", code=0)
    res = invoke_cli("print", tmp_path / "m.mosaic.json", "--size", "5cm", "--dpi", "72", "--out", "/dev/null", code=2)
    assert "/dev/null exists and is not a folder" in res.output
    assert afile.read_text() == "keep me"


def test_outputs_inside_the_database_are_refused(db40, target, tmp_path):
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--grid", "8", "-q", code=0)
    def listing():  # the database's own files (sqlite's -wal/-shm and the lock come and go)
        return sorted(p.relative_to(db40) for p in db40.rglob("*")
                      if p.name != "lock" and not p.name.startswith("catalog.sqlite-"))

    before = listing()
    (tmp_path / "link").symlink_to(db40)
    for args in (["make", "--db", db40, target, "--out", db40 / "m.png"],
                 ["make", "--db", db40, target, "--out", db40 / "originals" / "m.jpg"],
                 ["make", "--db", db40, target, "--out", tmp_path / "link" / "index" / "m.png"],
                 ["make", "--db", db40, target, target, "--out", db40 / "outs"],
                 ["make", "--db", db40, target, target, "--out", db40],
                 ["render", tmp_path / "m.mosaic.json", "--out", db40 / "r.png"],
                 ["print", tmp_path / "m.mosaic.json", "--size", "5cm", "--dpi", "72", "--out", db40 / "p.tif"]):
        res = invoke_cli(*args, "-q", code=2)
        assert "inside the tile database" in res.output, args
    assert listing() == before


class FakeRay:
    """What BatchRunner asks of Ray before any actor exists: one live node with `cpus` CPUs."""

    def __init__(self, cpus: int):
        self.cpus = cpus

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": float(self.cpus)}},
                {"Alive": False, "Resources": {"CPU": 64.0}}]

    def is_initialized(self):
        return False


@pytest.mark.parametrize("per, ok", [(4, False), (2, True)])
def test_ray_actors_bigger_than_every_node_are_refused_before_waiting_forever(db40, monkeypatch, per, ok):
    # `--ray-cpus 1 --cpus-per-actor 4` waited for ever for an actor no node could place
    import mosaicdb.batch as batch
    monkeypatch.setattr(batch.deps, "ray", lambda: FakeRay(2))
    monkeypatch.setattr(batch, "init_ray", lambda ray, address, cpus: False)
    runner = BatchRunner(db40, MatchOptions(grid="8"), RenderOptions(tile_px=8),
                         BatchOptions(executor="ray", ray_cpus=2, cpus_per_actor=per))
    if ok:
        with runner:
            pass
        return
    with pytest.raises(UsageError, match="--cpus-per-actor 4: no Ray node has that many CPUs"):
        with runner:
            pass


def recursive_of(db: Path, saved_json: Path):
    from mosaicdb import assignment as asg
    from mosaicdb.recursive.options import RecursiveOptions
    from mosaicdb.recursive.submosaic import SubMosaics
    with TileDB.open(db, readonly=True) as d:
        SubMosaics(d, asg.load(saved_json), RenderOptions(tile_px=8), RecursiveOptions(depth=1, grid=4),
                   disk=False).close()   # its warm-up searches the database: closing that under it crashed sqlite


def test_recursion_under_tiles_turned_behind_the_saved_orient_is_refused(db40, target, tmp_path):
    # an orient array beside `orient: none` is drawn turned; `serve --recursive` refused turned
    # mosaics by their saved --orient only, and drew unturned sub-mosaics under such tiles
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--grid", "8", "--min-distance", "0",
               "-q", code=0)
    recursive_of(db40, tmp_path / "m.mosaic.json")   # unturned: fine
    npz = tmp_path / "m.mosaic.npz"
    arrays = dict(np.load(npz))
    turns = np.zeros(arrays["tile_ids"].shape, np.uint8)
    turns[0, 0] = 5
    np.savez(npz, **{**arrays, "orient": turns})
    with pytest.raises(UsageError, match="turns some of its tiles, and recursive sub-mosaics do not"):
        recursive_of(db40, tmp_path / "m.mosaic.json")
    invoke_cli("render", tmp_path / "m.mosaic.json", "--out", tmp_path / "r.png", "-q", code=0)  # drawn as saved


@pytest.mark.parametrize("match, says", [(5, "match must be an object"), ("x", "match must be an object"),
                                         ({"seed": float("inf")}, "saved match options are damaged")])
def test_damaged_saved_match_options_are_named_as_the_assignment(db40, target, tmp_path, match, says):
    # `match: 5` was an AttributeError (internal error) in serve --recursive; a bad saved seed
    # was reported as the option "--seed", which nobody gave
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--grid", "8", "--min-distance", "0",
               "-q", code=0)
    j = tmp_path / "m.mosaic.json"
    meta = json.loads(j.read_text())
    meta["match"] = match
    j.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=says):
        recursive_of(db40, j)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "no-such-host.invalid:6379"])
def test_a_ray_address_where_nothing_answers_is_refused_before_ray_waits(address):
    # Ray retried `--ray-address foo:1` for minutes (still waiting after 120 s)
    from mosaicdb.generate.executors import init_ray

    class Ray:
        def is_initialized(self):
            return False

        def init(self, **kw):
            raise AssertionError("ray.init reached: it would retry for minutes")

    with pytest.raises(UsageError, match="nothing answers there"):
        init_ray(Ray(), address, None)


def test_special_files_in_a_target_folder_are_named_when_skipped(tmp_path, target, caplog):
    # a FIFO or a link to a device among the images was skipped without a word
    import os
    from mosaicdb.make import expand_targets
    folder = tmp_path / "targets"
    folder.mkdir()
    shutil.copy(target, folder / "a.png")
    os.mkfifo(folder / "f.png")
    (folder / "z.jpg").symlink_to("/dev/zero")
    (folder / "gone.png").symlink_to(tmp_path / "nothing")
    with caplog.at_level("WARNING", logger="mosaicdb.make"):
        assert expand_targets([folder]) == [folder / "a.png"]
    skipped = sorted(r.getMessage() for r in caplog.records)
    assert skipped == [f"skipped {folder / n}: not a regular file" for n in ("f.png", "gone.png", "z.jpg")]


def test_a_target_reached_twice_is_made_once(tmp_path, target, caplog):
    # the same folder given twice made every mosaic twice (a.jpg and a-2.jpg)
    from mosaicdb.make import expand_targets
    folder = tmp_path / "targets"
    folder.mkdir()
    shutil.copy(target, folder / "a.png")
    shutil.copy(target, folder / "b.png")
    with caplog.at_level("WARNING", logger="mosaicdb.make"):
        got = expand_targets([folder, folder / "b.png", folder, tmp_path / "targets" / ".." / "targets" / "a.png"])
    assert got == [folder / "a.png", folder / "b.png"]
    assert len([r for r in caplog.records if "more than once" in r.getMessage()]) == 4


def test_mosaics_made_in_the_target_folder_are_not_targets_of_the_next_run(db40, target, tmp_path, caplog):
    # `make tg --out tg` run twice took the first run's mosaics as new targets the second time
    folder = tmp_path / "tg"
    folder.mkdir()
    shutil.copy(target, folder / "a.png")
    shutil.copy(target, folder / "b.png")
    for run in range(2):
        with caplog.at_level("WARNING", logger="mosaicdb.make"):
            invoke_cli("make", "--db", db40, folder, "--out", folder, "--grid", "6", "--tile-px", "4", "-q", code=0)
        images = sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
        assert images == ["a.jpg", "a.png", "b.jpg", "b.png"], run
    assert sorted(r.getMessage().split(":")[0] for r in caplog.records if "made earlier" in r.getMessage()) == [
        f"skipped {folder / 'a.jpg'}", f"skipped {folder / 'b.jpg'}"]
    # given by name, a mosaic is a target like any image
    invoke_cli("make", "--db", db40, folder / "a.jpg", "--out", tmp_path / "again.png", "--grid", "6",
               "--tile-px", "4", "-q", code=0)
