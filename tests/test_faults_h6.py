"""A hostile pass over the index-kind record, the index infos, non-finite features and odd
targets (issue 17): each test here failed before its fix."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from clirun import invoke_cli


@pytest.fixture
def target(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "target.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _infos(db):
    return db / "index" / "index_infos.json"


@pytest.mark.parametrize("field, value", [("pca_dims", "x"), ("pca_dims", -4), ("features_pca_dims", [1]),
                                          ("ntotal_at_build", 1.5), ("recall_at_1", "NaN"), ("recall_at_1", {})])
@pytest.mark.parametrize("command", ["make", "stats"])
def test_index_infos_with_wrong_types_rebuild_the_index(db40, target, tmp_path, field, value, command):
    invoke_cli("db", "index", db40, code=0)
    infos = json.loads(_infos(db40).read_text())
    _infos(db40).write_text(json.dumps({**infos, field: value}))
    if command == "make":
        invoke_cli("-q", "make", "--db", db40, target, "--out", tmp_path / "m.png", code=0)
        assert json.loads(_infos(db40).read_text())[field] != value  # rebuilt
    else:
        res = invoke_cli("db", "stats", db40, code=0)
        assert "recall@1" not in res.output or "NaN" not in res.output


def test_deeply_nested_catalog_meta_is_one_line(db40):
    con = sqlite3.connect(db40 / "catalog.sqlite")
    with con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'index_options'", ("[" * 100_000 + "]" * 100_000,))
    con.close()
    res = invoke_cli("db", "stats", db40, code=1)
    assert "catalog.sqlite is damaged" in res.output


def test_quick_check_names_damaged_thumbnails_not_reindex(db40):
    """Every thumbnail the quick check recomputes features from is damaged: the rows fail
    their checksums, so the fix is db repair (a reindex would compute features from the noise)."""
    from mosaicdb import TileDB
    with TileDB.open(db40) as db:
        sizes = db.thumb_sizes
    for size in sizes:
        thumbs = np.memmap(db40 / f"thumbs_{size}.u8", dtype=np.uint8, mode="r+")
        thumbs[:] = np.random.default_rng(size).integers(0, 256, thumbs.size, dtype=np.uint8)
        thumbs.flush()
        del thumbs
    res = invoke_cli("db", "check", db40, code=1)
    assert "fail their checksum" in res.output and "db repair" in res.output
    assert "reindex" not in res.output
    invoke_cli("db", "repair", db40, code=0)
    invoke_cli("db", "check", db40, code=0)


@pytest.mark.parametrize("kind", ["ivf", "ivf16"])
def test_ivf_of_a_tiny_pool_prints_nothing_of_faiss(tmp_path, capfd, kind):
    """Under 39 tiles an IVF has one list: FAISS printed 'WARNING clustering 10 points to 1
    centroids' straight to the process's stderr, around the CLI's one-line messages."""
    from conftest import write_synthetic
    from mosaicdb import TileDB
    write_synthetic(tmp_path / "src", 10, seed=3)
    with TileDB.create(tmp_path / "t.db") as db:
        db.ingest([tmp_path / "src"], workers=1)
    capfd.readouterr()
    invoke_cli("-q", "db", "index", tmp_path / "t.db", "--kind", kind, code=0)
    assert "clustering" not in capfd.readouterr().err


def test_ivfpq_on_a_small_pool_names_every_kind_that_fits(db40):
    res = invoke_cli("db", "index", db40, "--kind", "ivfpq", code=2)
    assert "flat, ivf or ivf16" in res.output


@pytest.mark.slow
def test_reindex_after_ivfpq_with_pq_m_that_no_longer_divides(cifar_copy, target, tmp_path):
    """`db index --kind ivfpq --pq-m 16` (48 PCA dims), then `db reindex --features lab-grid`
    (51 dims): the recorded --pq-m 16 failed reindex, make and db index --rebuild with exit 2
    naming an option none of them was given; now a pq_m is chosen again (ivfpq kept)."""
    invoke_cli("-q", "db", "index", cifar_copy, "--kind", "ivfpq", "--pq-m", "16", code=0)
    invoke_cli("-q", "db", "reindex", cifar_copy, "--features", "lab-grid", code=0)
    invoke_cli("-q", "make", "--db", cifar_copy, target, "--out", tmp_path / "m.png", code=0)
    invoke_cli("-q", "db", "index", cifar_copy, "--rebuild", code=0)
    infos = json.loads(_infos(cifar_copy).read_text())
    assert infos["kind"] == "ivfpq" and 51 % infos["params"]["pq_m"] == 0
    # a --pq-m given now is still the user's: refused when it does not fit
    res = invoke_cli("db", "index", cifar_copy, "--kind", "ivfpq", "--pq-m", "16", code=2)
    assert "--pq-m 16" in res.output


def test_nonfinite_count_above_the_index_size_is_not_believed(db40, target, tmp_path, caplog):
    """infos saying 10**30 tiles have non-finite features (of 40): make warned with that number;
    now the rows are scanned instead (none is non-finite: no warning)."""
    invoke_cli("db", "index", db40, code=0)
    infos = json.loads(_infos(db40).read_text())
    _infos(db40).write_text(json.dumps({**infos, "nonfinite": 10**30}))
    invoke_cli("-q", "make", "--db", db40, target, "--out", tmp_path / "m.png", code=0)
    assert not [r for r in caplog.records if "non-finite" in r.getMessage()]
