"""The ivfpq index kind: PQ codes, a shortlist refined by exact distances from the caller's rows,
persistence as untrusted files, the CLI, and when `auto` picks it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mosaicdb import TileDB
from mosaicdb.errors import UsageError
from mosaicdb.index import IndexOptions, VectorIndex, build_index
from mosaicdb.index import ivfpq
from mosaicdb.index.faiss_index import IVF_RAM_MAX
from mosaicdb.index.refine import exact_distances

N, DIM, PCA = 12_000, 64, 32


@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    """Seeded clustered vectors: 300 centres, 40 jittered copies each (near-duplicates, like a
    replicated pool), whose ranking PQ codes alone get wrong."""
    rng = np.random.default_rng(17)
    centres = rng.normal(0, 10, (300, DIM))
    return (centres[np.arange(N) % 300] + rng.normal(0, 1.0, (N, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def queries(pool) -> np.ndarray:
    rng = np.random.default_rng(18)
    return (pool[rng.choice(N, 300, replace=False)] + rng.normal(0, 0.5, (300, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def built(pool) -> VectorIndex:
    # few, coarse sub-quantizers (8 dims each) so that the codes alone rank near vectors badly
    return build_index(pool, np.arange(N), IndexOptions(kind="ivfpq", nlist=32, pq_m=4, refine_factor=8),
                       pca_dims=PCA)


def exact_knn_ref(pool, q, k):
    p, q = pool.astype(np.float64), q.astype(np.float64)
    d = (q * q).sum(1)[:, None] - 2 * q @ p.T + (p * p).sum(1)[None]
    i = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, i, 1), i


# ---- search: the refine ---------------------------------------------------------------------------
def test_refine_finds_the_exact_neighbours(built, pool, queries):
    ex_d, ex_i = exact_knn_ref(pool, queries, 10)
    d, i = built.search(queries, 10)
    assert built.infos["kind"] == "ivfpq" and built.refines
    # distances are the exact ones of the ids returned, ascending
    ref = ((queries[:, None, :] - pool[i]) ** 2).sum(-1)
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-3)
    assert (np.diff(d, axis=1) >= 0).all()
    recall1 = (i[:, 0] == ex_i[:, 0]).mean()
    recall10 = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(i, ex_i)])
    assert recall1 >= 0.95 and recall10 >= 0.9, (recall1, recall10)

    # the codes alone (no refine) rank them much worse: the threshold above needs the refine
    raw_i = built.index.search(queries, 10)[1]
    assert (raw_i[:, 0] == ex_i[:, 0]).mean() < recall1 - 0.2


def test_refine_factor_widens_the_shortlist(built, pool, queries):
    ex_i = exact_knn_ref(pool, queries, 10)[1]
    got = {}
    for rf in (1, 8):
        built.infos["params"]["refine_factor"] = rf
        got[rf] = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(built.search(queries, 10)[1], ex_i)])
    built.infos["params"]["refine_factor"] = 8
    assert got[8] > got[1] + 0.05, got


def test_search_with_exclusions(built, pool, queries):
    _, first = built.search(queries[:20], 5)
    d, i = built.search(queries[:20], 5, exclude=np.unique(first[:, 0]))
    assert not np.isin(i, first[:, 0]).any()
    np.testing.assert_allclose(d, ((queries[:20, None] - pool[i]) ** 2).sum(-1), rtol=1e-4, atol=1e-3)


def test_add_and_remove(pool):
    base = pool[:4000]
    rows = np.array(pool)  # row = id for the ids added below
    vi = build_index(None, np.arange(4000), IndexOptions(kind="ivfpq", nlist=16, pq_m=8, nprobe=16),
                     pca_dims=PCA, rows=lambda: rows)
    new = np.arange(4000, 4500)
    vi.add(rows[new], new)
    d, i = vi.search(rows[new], 1)
    np.testing.assert_array_equal(i[:, 0], new)
    assert np.abs(d).max() < 1e-3
    vi.remove(new[:250])
    _, i = vi.search(rows[new], 1)
    assert not np.isin(i, new[:250]).any() and (i[250:, 0] == new[250:]).all()
    assert vi.ntotal == 4250 and len(vi.ids) == 4250 and base.shape == (4000, DIM)


def test_out_of_range_ids_refine_to_infinity():
    """A damaged index returning ids past the rows gets inf distances, never a read outside them."""
    rows = np.zeros((5, 3), np.float32)
    out = exact_distances(rows, np.ones((1, 3), np.float32), np.array([[0, 5, 1 << 40, -1]]),
                          np.full((1, 4), 7.0, np.float32))
    np.testing.assert_array_equal(out, [[3.0, np.inf, np.inf, 7.0]])


def test_needs_rows_by_tile_id(pool):
    with pytest.raises(UsageError, match="rows="):
        build_index(pool[:2000], np.arange(5, 2005), IndexOptions(kind="ivfpq"))
    with pytest.raises(UsageError, match="at least 1,024 tiles"):
        build_index(pool[:500], np.arange(500), IndexOptions(kind="ivfpq"))
    with pytest.raises(UsageError, match=r"--pq-m 5 must divide the index's 32 dimensions: use one of 1, 2, 4, 8, 16, 32"):
        build_index(pool[:2000], np.arange(2000), IndexOptions(kind="ivfpq", pq_m=5), pca_dims=PCA)


# ---- persistence: untrusted files -----------------------------------------------------------------
def test_save_load_round_trip(built, pool, queries, tmp_path):
    built.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix", rows=lambda: pool)
    assert loaded.infos == json.loads(json.dumps(built.infos))
    for a, b in zip(loaded.search(queries, 10), built.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    without = VectorIndex.load(tmp_path / "ix")  # loads, but cannot search without the rows
    with pytest.raises(UsageError, match="refines from the tiles' full vectors"):
        without.search(queries, 1)


def _tamper_infos(folder, change):
    p = folder / "index_infos.json"
    infos = json.loads(p.read_text())
    change(infos)
    p.write_text(json.dumps(infos))


@pytest.mark.parametrize("change", [
    lambda i: i["params"].update(refine_factor=0),
    lambda i: i["params"].update(refine_factor=True),
    lambda i: i["params"].update(refine_factor="8"),
    lambda i: i["params"].update(refine_factor=10 ** 9),
    lambda i: i["params"].pop("refine_factor"),
    lambda i: i["params"].update(nprobe=10 ** 6),
    lambda i: i["params"].update(nprobe=0),
    lambda i: i["params"].update(pq_m=8),
    lambda i: i.update(kind="ivfpq2"),
    lambda i: i.update(params=[]),
], ids=["factor0", "factor-bool", "factor-str", "factor-huge", "factor-missing", "nprobe-huge", "nprobe0",
        "pq_m-mismatch", "kind-unknown", "params-list"])
def test_load_refuses_tampered_infos(built, pool, tmp_path, change):
    built.save(tmp_path / "ix")
    _tamper_infos(tmp_path / "ix", change)
    assert VectorIndex.load(tmp_path / "ix", rows=lambda: pool) is None


def test_load_refuses_other_files(built, pool, tmp_path):
    built.save(tmp_path / "ix")
    # an IVF-Flat index under infos that say ivfpq
    flat = build_index(pool[:2000], np.arange(2000), IndexOptions(kind="ivf", nlist=8))
    flat.save(tmp_path / "flat")
    shutil.copy(tmp_path / "ix" / "index_infos.json", tmp_path / "flat" / "index_infos.json")
    _tamper_infos(tmp_path / "flat", lambda i: i.update(ntotal=2000))
    assert VectorIndex.load(tmp_path / "flat", rows=lambda: pool) is None
    # ids: unsorted, repeated, negative
    for bad in (np.arange(N)[::-1], np.zeros(N, np.int64), np.arange(N) - 1):
        np.save(tmp_path / "ix" / "ids.npy", bad.astype(np.int64))
        assert VectorIndex.load(tmp_path / "ix", rows=lambda: pool) is None
    np.save(tmp_path / "ix" / "ids.npy", np.arange(N, dtype=np.int64))
    assert VectorIndex.load(tmp_path / "ix", rows=lambda: pool) is not None
    # rows of another width than the index's vectors
    assert VectorIndex.load(tmp_path / "ix", rows=lambda: pool[:, :10]) is None


# ---- when auto picks it ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, dim, flat_max, ram_max, kind", [
    (20_000, 48, 20_000, IVF_RAM_MAX, "flat"),
    (20_001, 48, 20_000, IVF_RAM_MAX, "ivf16"),
    (1_000_000, 48, 20_000, IVF_RAM_MAX, "ivf16"),                 # today's 1M choice is unchanged
    (5_368_709, 48, 20_000, IVF_RAM_MAX, "ivf16"),                 # 200 bytes a vector: 1 GiB at 5.37M
    (5_368_710, 48, 20_000, IVF_RAM_MAX, "ivfpq"),
    (10_000_000, 48, 20_000, IVF_RAM_MAX, "ivfpq"),
    (1_000_000, 255, 20_000, IVF_RAM_MAX, "ivf16"),                # no PCA: 1,028 bytes a vector
    (1_100_000, 255, 20_000, IVF_RAM_MAX, "ivfpq"),
    (30_000, 48, 20_000, 30_000 * 200, "ivf16"),
    (30_001, 48, 20_000, 30_000 * 200, "ivfpq"),
])
def test_auto_kind_threshold(n, dim, flat_max, ram_max, kind):
    assert ivfpq.resolve_kind("auto", n, dim, flat_max, ram_max) == kind
    assert ivfpq.resolve_kind("flat", n, dim, flat_max, ram_max) == "flat"


def test_defaults_chosen():
    assert ivfpq.choose_m(48) == 24 and ivfpq.choose_m(51) == 17 and ivfpq.choose_m(255) == 85
    assert ivfpq.default_nlist(10_000_000) == ivfpq.NLIST_MAX and ivfpq.default_nlist(100_000) == 1024
    assert ivfpq.shortlist(32, 4) == 128 and ivfpq.shortlist(1, 4) == ivfpq.SHORTLIST_MIN
    ram = ivfpq.pq_bytes(10_000_000, 24, 4096, 48)
    assert ram == 10_000_000 * (24 + 16) + 4096 * 48 * 4 + 4096 * 24 * 256 * 4 and ram < 2 << 30


@pytest.mark.parametrize("kw, message", [
    (dict(pq_m=-1), "--pq-m"), (dict(refine_factor=-2), "--refine-factor"), (dict(ivf_ram_max=-1), "--ivf-ram-max"),
    (dict(kind="pq"), "unknown index kind"),
])
def test_options_validation(kw, message):
    with pytest.raises(UsageError, match=message):
        IndexOptions(**kw)


# ---- in a database, through the CLI --------------------------------------------------------------
@pytest.mark.slow
def test_db_index_kind_ivfpq_cli(cifar_copy, run_cli, shared_data, tmp_path):
    res = run_cli("db", "index", cifar_copy, "--kind", "ivfpq", "--json", code=0)
    infos = json.loads(res.output)
    assert infos["kind"] == "ivfpq" and infos["pca_dims"] == 48 and infos["params"]["pq_m"] == 24
    assert infos["params"]["refine_factor"] == ivfpq.REFINE_FACTOR and infos["recall_at_1"] >= 0.9
    assert infos["ram_bytes"] == ivfpq.pq_bytes(2000, 24, infos["params"]["nlist"], 48)
    text = run_cli("db", "index", cifar_copy, "--kind", "ivfpq", "--refine-factor", "2", code=0).output
    assert text.startswith("Index: ivfpq (") and "refine_factor=2" in text and "in RAM" in text
    run_cli("db", "check", cifar_copy, "--deep", code=0)
    with TileDB.open(cifar_copy, readonly=True) as db:
        idx = db.ensure_index()
        assert idx.refines and db.search(np.asarray(db.features()[:50]), 1)[1][:, 0].tolist() == list(range(50))
    out = tmp_path / "m.png"
    run_cli("make", "--db", cifar_copy, shared_data / "targets" / "kodak" / "kodim23.png", "--out", out,
            "--grid", "24", "--tile-px", "8", "-q", code=0)
    assert out.is_file()
    bad = run_cli("db", "index", cifar_copy, "--kind", "ivfpq", "--pq-m", "7", code=2).output
    assert "--pq-m 7 must divide the index's 48 dimensions" in bad and len(bad.strip().splitlines()) == 1
    bad = run_cli("db", "index", cifar_copy, "--ivf-ram-max", "lots", code=2).output
    assert "--ivf-ram-max" in bad


@pytest.mark.slow
def test_auto_switches_to_ivfpq_past_the_ram_budget(cifar_copy, cifar_files):
    budget = 2050 * (4 * 48 + 8)  # IVF-Flat over 48 PCA dims: 200 bytes a vector
    with TileDB.open(cifar_copy) as db:
        infos = db.index(IndexOptions(flat_max=100, ivf_ram_max=budget), rebuild=True)
        assert infos["kind"] == "ivf16"
        db.ingest([cifar_files(2100)], workers=1)  # 2,100 tiles: 1.05x, no doubling, but over budget
        idx = db.load_index()
        assert idx.infos["kind"] == "ivfpq" and idx.ntotal == 2100
        assert db.search(np.asarray(db.features()[2050:2100]), 1)[1][:, 0].tolist() == list(range(2050, 2100))
        db.remove(list(range(10)))  # updated in place
        idx = db.load_index()
        assert idx.infos["kind"] == "ivfpq" and idx.ntotal == 2090 and "updated_at" in idx.infos
        assert not np.isin(db.search(np.asarray(db.features()[:10]), 3)[1], np.arange(10)).any()


def test_the_index_self_probe_accepts_a_tile_ranked_below_its_near_copies():
    """An approximate index over near-copies may rank a copy above the tile itself: the probe
    that tells a foreign index (store/maintenance.py) must not count that as a mismatch, or an
    IVF-PQ index over such a pool would be rebuilt on every first use; a wrong id still counts."""
    from mosaicdb.store.db import TileDB

    rng = np.random.default_rng(4)
    feats = rng.normal(size=(40, 6)).astype(np.float32)
    ids = np.arange(40)

    class NearCopyFirst:   # each tile comes back second, after its neighbour id
        def search(self, q, k, device="cpu"):
            own = np.array([int(np.argmin(np.abs(feats - v).sum(1))) for v in q])
            got = np.stack([(own + 1) % 40, own] + [(own + j) % 40 for j in range(2, k)], 1)[:, :k]
            return np.zeros(got.shape, np.float32), got

    class Shifted:         # an index whose ids belong to other vectors
        def search(self, q, k, device="cpu"):
            return NearCopyFirst().search(q, k)[0], (NearCopyFirst().search(q, k)[1] + 7) % 40

    assert TileDB.index_mismatches(None, NearCopyFirst(), ids, feats, sample=40, k=2) == (0, 40)
    assert TileDB.index_mismatches(None, Shifted(), ids, feats, sample=40, k=2) == (40, 40)
