"""Hostile-review cases on the database's own files (second pass): special files where the
database keeps its own, an index from another database, paths that are not UTF-8, repair of
lost originals, ambiguous tile references, a damaged database refusing writes."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import check_process, invoke_cli
from conftest import synthetic_image, write_synthetic
from mosaicdb import TileDB
from mosaicdb.errors import DatabaseError, IndexStale, UsageError
from mosaicdb.make import Maker
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions

MOSAIC = [sys.executable, "-m", "mosaicdb"]


def new_db(folder: Path, n: int = 40, seed: int = 11) -> Path:
    src = folder.parent / f"{folder.name}-src"
    write_synthetic(src, n, seed=seed, prefix=f"s{seed}-")
    with TileDB.create(folder) as db:
        db.ingest([src], workers=1)
        db.index()
    return folder


@pytest.fixture
def db40(tmp_path) -> Path:
    return new_db(tmp_path / "t.db")


def mosaic_run(*args, timeout: float = 60):
    """`mosaic ARGS` in a subprocess with a timeout: a blocked open fails the test, not the suite."""
    res = subprocess.run([*MOSAIC, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    check_process(res, args)
    return res


@pytest.mark.parametrize("name,make_it", [
    ("index/ids.npy", "fifo"), ("index/index.faiss", "fifo"), ("features.f32", "fifo"),
    ("thumbs_16.u8", "fifo"), ("lock", "dir"), ("catalog.sqlite", "fifo"), ("catalog.sqlite-wal", "fifo"),
    ("catalog.sqlite", "link"), ("catalog.sqlite-wal", "link"),
])
def test_special_files_in_the_database_are_refused_not_waited_on(db40, name, make_it):
    p = db40 / name
    if make_it == "link":  # the real file moved out, a link in its place (sqlite would follow it)
        real = db40.parent / ("moved-" + p.name)
        if p.exists():
            p.rename(real)
        else:
            real.write_bytes(b"")
        p.symlink_to(real)
    else:
        if p.exists():
            p.unlink()
        os.mkfifo(p) if make_it == "fifo" else p.mkdir()
    for cmd in (["db", "check", db40], ["db", "stats", db40], ["db", "repair", db40], ["db", "index", db40]):
        res = mosaic_run(*cmd)
        assert res.returncode == 1, (cmd, res.stdout, res.stderr)
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and name in err[0] and ("not a regular" in err[0] or "symbolic link" in err[0]), \
            (cmd, res.stderr)


def test_init_over_a_special_catalog_says_what_is_there(tmp_path):
    d = tmp_path / "x.db"
    d.mkdir()
    os.mkfifo(d / "catalog.sqlite")
    with pytest.raises(DatabaseError, match="not a regular file"):
        TileDB.open(d)
    with pytest.raises(DatabaseError, match="not a regular file"):
        TileDB.create(d)


def test_an_index_from_another_database_is_found_and_rebuilt(db40, tmp_path):
    other = new_db(tmp_path / "o.db", seed=99)
    shutil.copy(other / "index" / "index.faiss", db40 / "index" / "index.faiss")
    res = invoke_cli("db", "check", db40, code=1)
    assert "not found under their own id" in res.output
    with TileDB.open(db40, readonly=True) as db:
        with pytest.raises(IndexStale, match="does not find its own tiles"):
            db.ensure_index()
    with TileDB.open(db40) as db:
        idx = db.ensure_index()  # a writable database rebuilds it
        assert not db.index_foreign(idx)
        f = np.asarray(db.features()[db.ids()])
        _, got = db.search(f, 1)
        assert (got[:, 0] == db.ids()).mean() > 0.9
    invoke_cli("db", "check", db40, code=0)


def test_reordered_index_ids_are_named_plainly(db40):
    ids = np.load(db40 / "index" / "ids.npy")
    np.save(db40 / "index" / "ids.npy", ids[::-1].copy())
    res = invoke_cli("db", "check", db40, code=1)
    assert "are not the database's" in res.output and "although" not in res.output


def test_paths_and_arguments_that_are_not_utf8(tmp_path, monkeypatch):
    d = Path(os.fsdecode(bytes(tmp_path) + b"/db\xff\xfe"))
    src = Path(os.fsdecode(bytes(tmp_path) + b"/src\xff"))
    write_synthetic(src, 6, seed=5)
    monkeypatch.setattr(sys, "argv", ["mosaic", "db", "ingest", str(d), str(src)])  # the lock records argv
    with TileDB.create(d) as db:
        assert db.ingest([src], workers=1).added == 6
    with TileDB.open(d, readonly=True) as db:
        assert len(db) == 6 and db.check().ok
    invoke_cli("db", "stats", d, code=0)


def test_repair_names_and_removes_tiles_whose_originals_changed_or_went(db40):
    with TileDB.open(db40) as db:
        rows = db.tiles(db.ids()[:3])
        a, b, c = (db.path / r["blob"] for r in rows)
    shutil.copy(b, a)           # tile 0's original now holds tile 1's bytes
    c.unlink()                  # tile 2's original is gone
    res = invoke_cli("db", "repair", db40, code=1)
    assert "2 tiles cannot be rebuilt" in res.output, res.output
    with TileDB.open(db40) as db:
        rep = db.repair()
        assert sorted(i for i, _ in rep.unrecoverable) == [rows[0]["id"], rows[2]["id"]] and not rep.ok
        assert any("changed" in why for _, why in rep.unrecoverable)
        assert any("missing" in why for _, why in rep.unrecoverable)
    invoke_cli("db", "repair", db40, "--remove-unrecoverable", code=0)
    res = invoke_cli("db", "check", db40, "--deep", code=0)
    assert "38 tiles" in res.output


def test_a_number_that_is_an_id_and_a_hash_prefix_is_refused(db40):
    with TileDB.open(db40) as db:
        ids = db.ids()
        victim = int(ids[5])
    con = sqlite3.connect(db40 / "catalog.sqlite")
    with con:  # tile 5's hash now starts like tile 1's id written with leading zeros
        h = con.execute("SELECT hash FROM tiles WHERE id = ?", (victim,)).fetchone()[0]
        con.execute("UPDATE tiles SET hash = ? WHERE id = ?", ("00000001" + h[8:], victim))
    con.close()
    res = invoke_cli("db", "remove", db40, "00000001", code=2)
    assert "id:00000001 or hash:00000001" in res.output
    with TileDB.open(db40) as db:
        assert list(db.resolve_refs(["hash:00000001"])) == [victim]
        assert list(db.resolve_refs(["id:00000001"])) == [1]
        assert list(db.resolve_refs(["1"])) == [1]
        with pytest.raises(UsageError):
            db.resolve_refs(["id:12ab"])
    res = invoke_cli("db", "remove", db40, "999999", code=0)
    assert "nothing removed" in res.stderr


def test_ingest_refuses_a_database_check_calls_damaged(db40, tmp_path):
    with TileDB.open(db40) as db:
        f = db._features.read(db.next_id, mode="r+")
        f[3:9] = np.nan
        f.flush()
        del f
    invoke_cli("db", "check", db40, code=1)
    extra = tmp_path / "extra"
    write_synthetic(extra, 2, seed=123, prefix="x")
    res = invoke_cli("db", "ingest", db40, extra, code=1)
    assert "non-finite" in res.output and "repair" in res.output


def test_a_full_disk_under_sqlite_is_said_plainly(tmp_path, monkeypatch):
    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(TileDB, "create", classmethod(lambda cls, *a, **k: full()))
    res = invoke_cli("db", "init", tmp_path / "n.db", code=1)
    assert "no space left" in res.output and "damaged" not in res.output


def test_make_rebuilds_a_foreign_index_and_draws_the_right_tiles(db40, tmp_path):
    target = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(3), 96, 64, "blocks")).save(target)

    def make(db_path, out):
        with TileDB.open(db_path) as db:
            r = Maker(db, MatchOptions(grid="12", min_distance=0), RenderOptions(tile_px=8)).make(target, out)
            return r.saved.tile_ids.copy()

    good = make(db40, tmp_path / "good.png")
    other = new_db(tmp_path / "o.db", seed=99)
    shutil.copy(other / "index" / "index.faiss", db40 / "index" / "index.faiss")
    assert np.array_equal(make(db40, tmp_path / "again.png"), good)


def test_deeply_nested_or_huge_index_infos_mean_no_index(db40):
    infos = db40 / "index" / "index_infos.json"
    for text in ("[" * 100000 + "]" * 100000, " " * (17 << 20) + "{}"):
        infos.write_text(text)
        with TileDB.open(db40, readonly=True) as db:
            assert db.load_index() is None
    res = invoke_cli("db", "check", db40, code=0)
    assert "damaged" in res.output
    with TileDB.open(db40) as db:
        assert db.ensure_index() is not None
