"""The vector index: flat vs IVF by pool size, recall, persistence, incremental updates, tile ids."""
from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from conftest import write_synthetic
from mosaicdb import TileDB
from mosaicdb.errors import DeviceError, EmptyDatabase, IndexStale, UsageError
from mosaicdb.features import lab_features
from mosaicdb.index import IndexOptions, VectorIndex, build_index
from mosaicdb.index.faiss_index import default_nlist, resolve_device

INDEX_FILES = {"index.faiss", "ids.npy", "index_infos.json"}


def exact_top1(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    flat = faiss.IndexFlatL2(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, i = flat.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return ids[i[:, 0]]


def jitter(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), n, replace=False)]
    return (q + rng.normal(0, 0.1, q.shape) * vectors.std(axis=0)).astype(np.float32)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    d = ((queries[:, None, :].astype(np.float64) - vectors[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), ids[order]


def self_search_ok(db: TileDB, ids) -> None:
    """Every tile's own feature finds that tile (by tile id, not row position) at distance 0."""
    ids = np.asarray(ids)
    d, got = db.search(np.asarray(db.features()[ids]), 1)
    np.testing.assert_array_equal(got[:, 0], ids)
    assert np.abs(d[:, 0]).max() < 1e-2


@pytest.fixture(scope="module")
def cifar_features(cifar_tiles) -> np.ndarray:
    """Features of 6,000 real CIFAR tiles: 16x16 box-reduced, the feature grid's sampling."""
    blocks = cifar_tiles[:6000].reshape(6000, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    return lab_features(np.rint(blocks).astype(np.uint8), 4, 1.0)


# ---- small pools: flat ---------------------------------------------------------------------------
def test_flat_index_for_small_pool(synthetic_copy, new_db):
    db = new_db()
    db.ingest([synthetic_copy], workers=2)
    assert {p.name for p in db.index_dir.iterdir()} == INDEX_FILES
    infos = json.loads((db.index_dir / "index_infos.json").read_text())
    assert infos["kind"] == "flat" and infos["params"] == {}
    assert infos["ntotal"] == 300 and infos["dim"] == 255 and infos["pca_dims"] == 0 and infos["recall_at_1"] == 1.0
    assert infos["catalog_version"] == db.version and infos["options"]["flat_max"] == 20_000
    np.testing.assert_array_equal(np.load(db.index_dir / "ids.npy"), db.ids())
    assert faiss.read_index(str(db.index_dir / "index.faiss")).ntotal == 300
    self_search_ok(db, db.ids())
    q = np.asarray(db.features()[:50]) + 0.5
    before = db.search(q, 5)

    db.close()
    again = TileDB.open(db.path, readonly=True)
    idx = again.load_index()
    assert idx.infos == infos and idx.ntotal == 300 and not again.index_stale()
    after = again.search(q, 5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    again.close()


# ---- large pools: IVF ----------------------------------------------------------------------------
def test_ivf_recall_on_real_features(cifar_features, tmp_path):
    pool = cifar_features[:5000]
    ids = np.arange(5000, dtype=np.int64) * 3 + 7  # tile ids are not row positions
    opts = IndexOptions(flat_max=1000)
    idx = build_index(pool, ids, opts)
    infos = idx.infos
    assert infos["kind"] == "ivf16" and infos["ntotal"] == 5000  # what auto builds past flat_max
    nlist, nprobe = infos["params"]["nlist"], infos["params"]["nprobe"]
    assert nlist == min(default_nlist(5000), 5000 // 39) and 1 <= nprobe <= nlist
    assert infos["recall_at_1"] >= opts.target_recall or nprobe == nlist
    assert infos["recall_at_1"] >= 0.95
    assert [t["nprobe"] for t in infos["tuning"]][-1] == nprobe

    queries = jitter(pool, 1000, seed=123)  # not the build's own recall sample
    want = exact_top1(pool, ids, queries)
    _, got = idx.search(queries, 1)
    assert set(np.unique(got)) <= set(ids.tolist())
    recall = float((got[:, 0] == want).mean())
    assert recall >= 0.95, recall

    idx.save(tmp_path / "index")
    assert {p.name for p in (tmp_path / "index").iterdir()} == INDEX_FILES
    assert json.loads((tmp_path / "index" / "index_infos.json").read_text())["recall_at_1"] == infos["recall_at_1"]
    loaded = VectorIndex.load(tmp_path / "index")
    assert faiss.extract_index_ivf(loaded.index).nprobe == nprobe
    np.testing.assert_array_equal(loaded.ids, np.sort(ids))
    q = jitter(pool, 300, seed=5)
    np.testing.assert_array_equal(loaded.search(q, 4)[1], idx.search(q, 4)[1])


def test_ivf_recall_on_novel_queries(cifar_features):
    """Queries that are not perturbed pool vectors (held-out tiles, like target cells) should
    reach the recall the index records too."""
    pool, held_out = cifar_features[:5000], cifar_features[5000:]
    ids = np.arange(5000, dtype=np.int64)
    idx = build_index(pool, ids, IndexOptions(flat_max=1000))
    _, got = idx.search(held_out, 1)
    recall = float((got[:, 0] == exact_top1(pool, ids, held_out)).mean())
    assert recall >= min(0.95, idx.infos["recall_at_1"] - 0.02), (recall, idx.infos["params"])


def test_ivf_in_database(cifar_ingest, synthetic_tiles, tmp_path):
    shutil.copytree(cifar_ingest[0], tmp_path / "cifar.db")
    db = TileDB.open(tmp_path / "cifar.db")
    assert db.load_index().infos["kind"] == "flat" and len(db) == 2000  # 2,000 <= the default flat_max
    infos = db.build_index(IndexOptions(flat_max=1000))
    assert infos["kind"] == "ivf16" and infos["ntotal"] == 2000 and infos["ntotal_at_build"] == 2000
    on_disk = json.loads((db.index_dir / "index_infos.json").read_text())
    assert on_disk["recall_at_1"] == infos["recall_at_1"] >= 0.95
    feats, ids = np.asarray(db.features()), db.ids()
    q = jitter(feats, 500, seed=9)
    _, got = db.search(q, 1)
    assert (got[:, 0] == exact_top1(feats, ids, q)).mean() >= 0.95
    assert db.stats()["index"]["kind"] == "ivf16"

    # incremental: 300 more tiles (within 2x of the build size) are added to the same IVF
    built_at = infos["built_at"]
    db.ingest([synthetic_tiles], workers=2)
    idx = db.load_index()
    assert idx.infos["kind"] == "ivf16" and idx.ntotal == 2300 and idx.infos["built_at"] == built_at
    assert idx.infos["catalog_version"] == db.version and not db.index_stale()
    assert idx.infos["options"]["flat_max"] == 1000  # the options the index was built with are kept
    self_search_ok(db, np.arange(2000, 2300))
    reopened = TileDB.open(db.path, readonly=True)
    assert reopened.load_index().infos == idx.infos and reopened.load_index().ntotal == 2300
    reopened.close()

    # removal from the IVF
    gone = np.arange(0, 2000, 7)
    db.remove(gone)
    idx = db.load_index()
    assert idx.ntotal == 2300 - len(gone) and idx.infos["built_at"] == built_at
    _, got = db.search(np.asarray(db.features()[gone]), 3)
    assert not set(got.ravel().tolist()) & set(gone.tolist())
    assert db.check().ok
    db.close()


def test_pool_growing_past_flat_max_switches_to_ivf(tmp_path, new_db):
    write_synthetic(tmp_path / "a", 150, seed=21, prefix="a")
    write_synthetic(tmp_path / "b", 150, seed=22, prefix="b")
    db = new_db()
    db.ingest([tmp_path / "a"], workers=1, index_options=IndexOptions(flat_max=200))
    assert db.load_index().infos["kind"] == "flat"
    db.ingest([tmp_path / "b"], workers=1)  # 300 > flat_max: rebuilt as IVF
    idx = db.load_index()
    assert idx.infos["kind"] == "ivf16" and idx.ntotal == 300 and idx.infos["ntotal_at_build"] == 300
    assert idx.infos["params"]["nlist"] == 300 // 39
    self_search_ok(db, db.ids())


# ---- incremental updates and ids -----------------------------------------------------------------
def test_incremental_add_and_remove(tmp_path, new_db):
    write_synthetic(tmp_path / "a", 120, seed=31, prefix="a")
    write_synthetic(tmp_path / "b", 80, seed=32, prefix="b")
    db = new_db()
    db.ingest([tmp_path / "a"], workers=1)
    idx = db.load_index()
    built_at, v0 = idx.infos["built_at"], db.version
    assert idx.ntotal == 120 and idx.infos["catalog_version"] == v0

    rep = db.ingest([tmp_path / "b"], workers=1)
    idx = db.load_index()
    assert idx.ntotal == 200 and db.version > v0 and idx.infos["catalog_version"] == db.version
    assert idx.infos["built_at"] == built_at and "updated_at" in idx.infos  # updated, not rebuilt
    np.testing.assert_array_equal(idx.ids, np.arange(200))
    self_search_ok(db, rep.new_ids)
    on_disk = VectorIndex.load(db.index_dir)
    assert on_disk.ntotal == 200 and on_disk.infos["catalog_version"] == db.version

    gone = list(range(0, 100))  # remove the first 100: row positions and tile ids now differ
    db.remove(gone)
    idx = db.load_index()
    assert idx.ntotal == 100 and idx.infos["catalog_version"] == db.version and not db.index_stale()
    np.testing.assert_array_equal(idx.ids, np.arange(100, 200))
    self_search_ok(db, np.arange(100, 200))
    d, got = db.search(np.asarray(db.features()[:100]), 5)  # the removed tiles' own features
    assert got.min() >= 100
    assert VectorIndex.load(db.index_dir).ntotal == 100
    assert db.check().ok

    # k beyond the pool pads with -1
    d, got = db.search(np.asarray(db.features()[150:152]), 130)
    assert (got[:, 100:] == -1).all() and (got[:, :100] >= 100).all()


def test_stale_index_is_brought_up_to_date(tmp_path, new_db):
    write_synthetic(tmp_path / "a", 60, seed=41)
    db = new_db()
    db.ingest([tmp_path / "a"], workers=1, update_index=False)
    assert db.index_stale() and db.check().ok
    with TileDB.open(db.path, readonly=True) as ro:
        with pytest.raises(IndexStale, match="mosaic db index"):
            ro.search(np.zeros((1, ro.dim), np.float32), 1)
    # a re-run that adds nothing still leaves a current index (as after a kill before the index)
    rep = db.ingest([tmp_path / "a"], workers=1)
    assert rep.added == 0 and not db.index_stale() and db.load_index().ntotal == 60
    assert db.check().warnings == []


def test_index_files_from_different_saves_are_rebuilt(tmp_path, new_db):
    """A kill between the renames of index.faiss, ids.npy and index_infos.json."""
    write_synthetic(tmp_path / "a", 50, seed=51)
    db = new_db()
    db.ingest([tmp_path / "a"], workers=1)
    np.save(db.index_dir / "ids.npy", np.arange(40, dtype=np.int64))  # an older, shorter save
    assert VectorIndex.load(db.index_dir) is None
    db.close()
    db = TileDB.open(db.path)
    assert db.load_index() is None and db.index_stale()
    self_search_ok(db, db.ids())  # search rebuilds it
    assert VectorIndex.load(db.index_dir).ntotal == 50 and db.check().ok
    db.close()


# ---- search API ----------------------------------------------------------------------------------
def test_exact_search_matches_numpy(synthetic_db):
    db = synthetic_db
    feats, ids = np.asarray(db.features()), db.ids()
    rng = np.random.default_rng(3)
    q = (feats[rng.choice(len(feats), 40)] + rng.normal(0, 5, (40, feats.shape[1]))).astype(np.float32)
    d, got = db.search(q, 10, exact=True)
    want_d, want_ids = brute_force(feats[ids], ids, q, 10)
    np.testing.assert_array_equal(got, want_ids)
    np.testing.assert_allclose(d, want_d, rtol=1e-4, atol=1e-2)
    d2, got2 = db.search(q, 10)  # the flat index gives the same answer
    np.testing.assert_array_equal(got2, want_ids)
    # more neighbours than tiles: padded
    d, got = db.search(q[:2], 305, exact=True)
    assert (got[:, 300:] == -1).all() and np.isinf(d[:, 300:]).all()
    assert sorted(got[0, :300].tolist()) == ids.tolist()


def test_search_validation(synthetic_db, new_db):
    with pytest.raises(UsageError, match=r"\(n, 255\)"):
        synthetic_db.search(np.zeros((3, 50), np.float32), 1)
    with pytest.raises(UsageError):
        synthetic_db.search(np.zeros(255, np.float32), 1)
    empty = new_db()
    with pytest.raises(EmptyDatabase):
        empty.search(np.zeros((1, 255), np.float32), 1)
    with pytest.raises(EmptyDatabase):
        empty.search(np.zeros((1, 255), np.float32), 1, exact=True)
    with pytest.raises(EmptyDatabase):
        empty.build_index()
    with pytest.raises(EmptyDatabase):
        empty.update_index()


def test_devices(synthetic_db):
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible: the no-GPU behaviour can't be checked here")
    assert faiss.get_num_gpus() == 0
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    q = np.asarray(synthetic_db.features()[:3])
    _, got = synthetic_db.search(q, 1, device="auto")
    np.testing.assert_array_equal(got[:, 0], synthetic_db.ids()[:3])
    with pytest.raises(DeviceError, match="no GPU"):
        synthetic_db.search(q, 1, device="cuda")
    with pytest.raises(DeviceError, match="no GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize("kw, message", [
    (dict(kind="hnsw"), "unknown index kind"),
    (dict(device="tpu"), "unknown device"),
    (dict(target_recall=0), "target-recall"),
    (dict(target_recall=float("nan")), "target-recall"),
    (dict(nlist=-1), "nlist"),
    (dict(nprobe=1.5), "nprobe"),
])
def test_index_options_validation(kw, message):
    with pytest.raises(UsageError, match=message):
        IndexOptions(**kw)


def test_forced_kinds(tmp_path, synthetic_tiles, new_db):
    db = new_db()
    db.ingest([synthetic_tiles], workers=1, update_index=False)
    infos = db.build_index(IndexOptions(kind="ivf", nlist=4, nprobe=2))
    assert infos["kind"] == "ivf" and infos["params"]["nlist"] == 4 and infos["params"]["nprobe"] == 2
    assert 0 < infos["recall_at_1"] <= 1
    infos = db.build_index(IndexOptions(kind="flat", flat_max=10))
    assert infos["kind"] == "flat" and infos["recall_at_1"] == 1.0
    copy = tmp_path / "copy.db"
    shutil.copytree(db.path, copy)
    with TileDB.open(copy, readonly=True) as c:
        assert c.load_index().infos["kind"] == "flat" and not c.index_stale()


def test_an_nlist_the_pool_cannot_train_is_lowered_with_a_warning(caplog):
    # --nlist 512 on 1,100 tiles silently became 28 lists
    vecs = np.random.default_rng(0).normal(size=(1100, 8)).astype(np.float32)
    with caplog.at_level("WARNING", logger="mosaicdb.index.faiss_index"):
        idx = build_index(vecs, np.arange(1100), IndexOptions(kind="ivf", nlist=512, nprobe=4))
    assert idx.infos["params"]["nlist"] == 1100 // 39
    assert [r.getMessage() for r in caplog.records] == [
        "--nlist 512 is more lists than 1100 tiles can train (39 a list): using 28"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="mosaicdb.index.faiss_index"):
        build_index(vecs, np.arange(1100), IndexOptions(kind="ivf", nlist=16, nprobe=4))
    assert not caplog.records


def test_cli_kind_auto_given_builds_auto_and_no_kind_keeps_the_saved_one(tmp_path, synthetic_tiles, new_db):
    # `db index --kind auto` on a database with an ivf index kept the ivf index (auto was taken
    # for "not given"): any --kind given now builds that kind
    from clirun import invoke_cli
    db = new_db()
    db.ingest([synthetic_tiles], workers=1, update_index=False)
    db.build_index(IndexOptions(kind="ivf", nlist=4, nprobe=2))
    db.close()
    assert "Index: ivf" in invoke_cli("db", "index", db.path, code=0).stdout          # brought up to date
    assert "Index: flat" in invoke_cli("db", "index", db.path, "--kind", "auto", code=0).stdout
    with TileDB.open(db.path, readonly=True) as d:
        assert d.load_index().infos["kind"] == "flat"
