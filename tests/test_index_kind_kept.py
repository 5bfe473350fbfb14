"""A hand-chosen index kind survives the loss of its index: a missing, damaged or foreign index
is rebuilt as the kind the user built (recorded in the catalog, or read from the damaged
index's infos), and when that kind is lost a warning names it and the command to get it back."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from mosaicdb import TileDB
from mosaicdb.index import IndexOptions, build_index
from mosaicdb.index.ivfpq import MIN_VECTORS
from clirun import invoke_cli

KINDS = ("flat", "ivf", "ivf16", "ivfpq")
# What the user built: a kind, or auto with a --flat-max that makes 2,000 tiles an IVF (flat is
# also what auto builds for 2,000 tiles: only the other kinds fail without the record)
CHOICES = {**{k: dict(kind=k) for k in KINDS}, "auto-flat-max-100": dict(kind="auto", flat_max=100)}
BUILDS = {**{k: k for k in KINDS}, "auto-flat-max-100": "ivf16"}  # what auto builds past flat_max
LOGGER = "mosaicdb.store.indexing"


def _build(path, choice: str) -> dict:
    opts = CHOICES[choice]
    with TileDB.open(path) as db:
        return db.index(IndexOptions(**opts, nprobe=0 if opts["kind"] == "flat" else 4), rebuild=True)


def _forget_the_record(path) -> None:
    """The catalog as a database indexed before the kind was recorded there."""
    with sqlite3.connect(path / "catalog.sqlite") as con:
        con.execute("DELETE FROM meta WHERE key = 'index_options'")
    con.close()


def _damage(path, how: str) -> None:
    index = path / "index"
    if how == "deleted":
        shutil.rmtree(index)
    elif how == "garbled":  # the infos stay readable
        (index / "index.faiss").write_bytes(b"\0garbage" * 64)
    elif how == "foreign":  # another database's vectors under these ids, saved as another kind
        with TileDB.open(path, readonly=True) as db:
            infos = json.loads((index / "index_infos.json").read_text())
            ids = db.ids()
            other = np.random.default_rng(5).normal(0, 1, (len(ids), db.dim)).astype(np.float32)
            kind = "ivf" if infos["kind"] == "flat" else "flat"
            keep = {k: infos[k] for k in ("catalog_version", "ntotal_at_build", "features")}
            build_index(other, ids, IndexOptions(kind=kind), extra=keep).save(index)
    else:
        raise AssertionError(how)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "garbled", "foreign"])
@pytest.mark.parametrize("choice", CHOICES)
def test_a_lost_index_comes_back_as_the_kind_chosen(cifar_copy, choice, how, caplog):
    built, kind = _build(cifar_copy, choice), BUILDS[choice]
    assert built["kind"] == kind
    _damage(cifar_copy, how)
    with caplog.at_level("WARNING", logger=LOGGER), TileDB.open(cifar_copy) as db:
        idx = db.ensure_index()
        assert idx.infos["kind"] == kind and idx.infos["options"] == built["options"]
        assert not db.index_foreign(idx)
        assert db.search(np.asarray(db.features()[:20]), 1)[1][:, 0].tolist() == list(range(20))
    assert "as kind auto" not in caplog.text
    with TileDB.open(cifar_copy, readonly=True) as db:
        assert db.load_index().infos["kind"] == kind  # saved that way, not only kept in memory


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ivf16", "ivfpq"])
def test_the_damaged_index_infos_tell_the_kind_of_an_older_database(cifar_copy, kind, caplog):
    _build(cifar_copy, kind)
    _forget_the_record(cifar_copy)
    _damage(cifar_copy, "garbled")
    with caplog.at_level("WARNING", logger=LOGGER), TileDB.open(cifar_copy) as db:
        assert db.ensure_index().infos["kind"] == kind
        assert db.meta["index_options"]["kind"] == kind  # recorded from now on
    assert not caplog.records


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ivf16"])
def test_db_index_rebuild_without_kind_keeps_it_and_with_kind_auto_does_not(cifar_copy, kind):
    _build(cifar_copy, kind)
    shutil.rmtree(cifar_copy / "index")
    assert json.loads(invoke_cli("db", "index", cifar_copy, "--json").output)["kind"] == kind
    assert json.loads(invoke_cli("db", "index", cifar_copy, "--rebuild", "--json").output)["kind"] == kind
    assert json.loads(invoke_cli("db", "index", cifar_copy, "--kind", "auto", "--json").output)["kind"] == "flat"
    shutil.rmtree(cifar_copy / "index")
    with TileDB.open(cifar_copy) as db:
        assert db.ensure_index().infos["kind"] == "flat"  # auto was the last choice


def test_an_unknown_kind_is_rebuilt_as_auto_with_one_warning_naming_the_command(db40, caplog):
    _forget_the_record(db40)
    (db40 / "index" / "index_infos.json").write_text("{")
    with caplog.at_level("WARNING", logger=LOGGER), TileDB.open(db40) as db:
        assert db.ensure_index().infos["kind"] == "flat"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "kind it was built with is not recorded" in warnings[0]
    assert f"mosaic db index {db40} --kind KIND" in warnings[0]


def test_a_first_index_is_built_without_a_warning(new_db, synthetic_tiles, caplog):
    db = new_db()
    db.ingest([synthetic_tiles], workers=1, update_index=False)
    with caplog.at_level("WARNING", logger=LOGGER):
        assert db.ensure_index().infos["kind"] == "flat"
    assert not caplog.records and db.meta["index_options"]["kind"] == "auto"


@pytest.mark.slow
def test_an_ivfpq_index_lost_below_its_minimum_names_the_kind_and_the_command(cifar_copy, caplog):
    _build(cifar_copy, "ivfpq")
    with caplog.at_level("WARNING", logger=LOGGER), TileDB.open(cifar_copy) as db:
        db.remove(range(len(db) - MIN_VECTORS + 1))
        assert db.load_index().infos["kind"] == "flat"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "too few for its ivfpq index" in warnings[0]
    assert f"mosaic db index {cifar_copy} --kind ivfpq" in warnings[0]


