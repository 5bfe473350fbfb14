"""The CPU scan of IVF lists (index/scan.py): what FAISS's search returns, excluded ids skipped,
results that depend on nothing but the query."""
from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from mosaicdb.index import IndexOptions, build_index
from mosaicdb.index.scan import FILLER, DecodedLists, scan

N, D = 6000, 24


def clustered(n, seed, d=D):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (40, d)).astype(np.float32) + 50  # far from the origin, like features
    return (centres[rng.integers(0, 40, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


@pytest.fixture(autouse=True)
def scan_every_search(monkeypatch):
    """The scan for any number of queries and list length (by default: 4,096 queries and 128
    vectors a list on average, test_when_the_scan_is_used)."""
    from mosaicdb.index import faiss_index
    monkeypatch.setattr(faiss_index, "LIST_ORDER_MIN", 0)
    monkeypatch.setattr(faiss_index, "SCAN_MIN_LIST", 0)


@pytest.fixture(scope="module", params=["ivf", "ivf16"])
def index(request):
    pool = clustered(N, 0)
    ids = np.arange(100, 100 + N)
    vi = build_index(pool, ids, IndexOptions(kind=request.param, nlist=64, nprobe=6), pca_dims=12)
    return vi, pool, ids


def faiss_search(vi, q, k, params=None):
    return vi.index.search(np.ascontiguousarray(q, dtype=np.float32), k, params=params)


def test_the_results_of_faiss(index):
    vi, _, _ = index
    assert vi.infos["kind"] in ("ivf", "ivf16")
    q = clustered(3000, 1)
    d, i = vi.search(q, 16, device="cpu")
    fd, fi = faiss_search(vi, q, 16)
    same = (i == fi).all(axis=1)
    assert same.mean() >= 0.99  # the rest: rounding between near-equal distances
    np.testing.assert_allclose(d, fd, rtol=1e-4, atol=1e-3)
    assert (np.diff(d, axis=1) >= 0).all()


def test_every_list_probed_is_exact_search():
    pool = clustered(2000, 2)
    ids = np.arange(2000) * 3
    vi = build_index(pool, ids, IndexOptions(kind="ivf", nlist=16, nprobe=16))
    q = clustered(200, 3)
    d, i = vi.search(q, 10, device="cpu")
    ref = ((q[:, None, :].astype(np.float64) - pool[None].astype(np.float64)) ** 2).sum(-1)
    want = np.argsort(ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(i, ids[want])
    np.testing.assert_allclose(d, np.take_along_axis(ref, want, 1), rtol=1e-5)


def test_a_vector_finds_itself_at_distance_zero(index):
    vi, pool, ids = index
    d, i = vi.search(pool[:500], 1, device="cpu")
    np.testing.assert_array_equal(i[:, 0], ids[:500])
    fd, _ = faiss_search(vi, pool[:500], 1)
    np.testing.assert_allclose(d[:, 0], fd[:, 0], atol=1e-4)  # ivf16: the half-float rounding, as FAISS
    assert d.max() < 1e-3


def test_excluded_ids_are_skipped_as_a_faiss_selector_skips_them(index):
    from mosaicdb.index.faiss_index import exclusion_selector
    vi, _, ids = index
    q = clustered(400, 4)
    _d, first = vi.search(q, 8, device="cpu")
    for exclude in (np.unique(first[:, :3]), np.unique(first[:, :3])[:50]):  # bitmap and batch selectors
        d, i = vi.search(q, 8, device="cpu", exclude=exclude)
        assert not np.isin(i, exclude).any()
        sel, keep = exclusion_selector(exclude)
        params = faiss.SearchParametersIVF(sel=sel, nprobe=6)
        fd, fi = faiss_search(vi, q, 8, params)
        del sel, keep
        assert (i == fi).all(axis=1).mean() >= 0.99
        np.testing.assert_allclose(d, fd, rtol=1e-4, atol=1e-3)


def test_results_depend_on_nothing_but_the_query(index):
    """Threads, the other queries of the call and their order change nothing, to the bit."""
    vi, _, _ = index
    lists = DecodedLists(faiss.extract_index_ivf(vi.index))
    space = faiss.downcast_VectorTransform(faiss.downcast_index(vi.index).chain.at(0))
    x = space.apply(clustered(2000, 5))
    x[7] = x[8]  # two equal queries
    pd, probes = faiss.extract_index_ivf(vi.index).quantizer.search(x, 6)
    d1, i1 = scan(lists, x, pd, probes, 12, threads=1)
    d2, i2 = scan(lists, x, pd, probes, 12, threads=2)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    perm = np.random.default_rng(0).permutation(2000)[:700]
    d3, i3 = scan(lists, x[perm], pd[perm], probes[perm], 12, threads=2)
    np.testing.assert_array_equal(i3, i1[perm])
    np.testing.assert_array_equal(d3, d1[perm])
    np.testing.assert_array_equal(i1[7], i1[8])


def test_equal_distances_are_ordered_by_id():
    base = clustered(300, 6)
    pool = np.concatenate([base, base, base])  # every vector three times
    ids = np.random.default_rng(1).permutation(900) + 10
    vi = build_index(pool, ids, IndexOptions(kind="ivf", nlist=4, nprobe=4))
    d, i = vi.search(base[:50], 6, device="cpu")
    for r in range(50):
        for a in range(0, 6, 3):
            assert d[r, a] == d[r, a + 1] == d[r, a + 2]
            assert i[r, a] < i[r, a + 1] < i[r, a + 2]


def test_fewer_vectors_than_k_and_non_finite_queries():
    pool = clustered(400, 7)
    vi = build_index(pool, np.arange(400), IndexOptions(kind="ivf", nlist=8, nprobe=1))
    q = clustered(20, 8)
    q[3] = np.nan
    d, i = vi.search(q, 300, device="cpu")
    sizes = [faiss.extract_index_ivf(vi.index).invlists.list_size(li) for li in range(8)]
    assert max(sizes) < 300
    found = (i >= 0).sum(axis=1)
    assert (found[np.arange(20) != 3] > 0).all() and found.max() <= max(sizes) and found[3] == 0
    for r in range(20):  # the missing ones last, with FAISS's filler
        assert (i[r, found[r]:] == -1).all() and (d[r, found[r]:] == FILLER).all()
        assert (i[r, :found[r]] >= 0).all()


def test_added_and_removed_vectors_are_seen(index):
    vi, pool, ids = index
    import copy
    vi = copy.copy(vi)
    vi.index = faiss.clone_index(vi.index)
    vi._decoded = None
    q = pool[:5] + 0.01
    vi.search(q, 3, device="cpu")  # decoded now
    new = pool[:5] + 0.001
    vi.add(new, np.array([90_001, 90_002, 90_003, 90_004, 90_005]))
    _d, i = vi.search(q, 1, device="cpu")
    assert (i[:, 0] >= 90_001).all()
    vi.remove(np.array([90_001, 90_002, 90_003, 90_004, 90_005]))
    _d, i = vi.search(q, 1, device="cpu")
    np.testing.assert_array_equal(i[:, 0], ids[:5])


def test_when_the_scan_is_used(monkeypatch):
    """IVF kinds of whole vectors on the CPU, from LIST_ORDER_MIN queries, lists of
    SCAN_MIN_LIST vectors on average; the rest is FAISS's search (the same results here)."""
    from mosaicdb.index import faiss_index, scan as scan_module
    pool = clustered(4000, 9)
    vi = build_index(pool, np.arange(4000), IndexOptions(kind="ivf16", nlist=16, nprobe=2), pca_dims=12)
    calls = []
    real = scan_module.scan
    monkeypatch.setattr(scan_module, "scan", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(faiss_index, "LIST_ORDER_MIN", 300)
    monkeypatch.setattr(faiss_index, "SCAN_MIN_LIST", 250)  # 4,000 / 16 = 250 a list
    q = clustered(400, 10)
    assert vi._scans(400, "cpu") and not vi._scans(299, "cpu")
    d, i = vi.search(q, 5, device="cpu")
    assert calls == [1]
    vi.search(q[:299], 5, device="cpu")
    assert calls == [1]
    monkeypatch.setattr(faiss_index, "SCAN_MIN_LIST", 251)
    assert not vi._scans(400, "cpu")
    fd, fi = vi.search(q, 5, device="cpu")
    assert calls == [1] and (fi == i).all(axis=1).mean() >= 0.99
    pq = build_index(pool, np.arange(4000), IndexOptions(kind="ivfpq", nlist=16, nprobe=2))
    assert not pq._scans(400, "cpu")


def test_an_ivf16_file_of_other_codes_is_not_trusted(tmp_path):
    """index_infos saying ivf16 over 8-bit scalar codes (a foreign file): rebuilt, not decoded as
    half floats."""
    import json
    from mosaicdb.index import VectorIndex
    pool = clustered(2000, 11)
    vi = build_index(pool, np.arange(2000), IndexOptions(kind="ivf16", nlist=8, nprobe=2))
    vi.save(tmp_path / "ix")
    assert VectorIndex.load(tmp_path / "ix") is not None
    q = faiss.IndexFlatL2(D)
    sq8 = faiss.IndexIVFScalarQuantizer(q, D, 8, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
    sq8.train(pool)
    sq8.add_with_ids(pool, np.arange(2000))
    faiss.write_index(sq8, str(tmp_path / "ix" / "index.faiss"))
    infos = json.loads((tmp_path / "ix" / "index_infos.json").read_text())
    assert infos["kind"] == "ivf16"
    assert VectorIndex.load(tmp_path / "ix") is None


def test_negative_ids_of_a_damaged_index_never_index_the_bitmap():
    pool = clustered(1000, 12)
    ids = np.arange(1000)
    ids[::7] = -3  # what a damaged file could hold
    vi = build_index(pool, np.arange(1000), IndexOptions(kind="ivf", nlist=4, nprobe=4))
    lists = DecodedLists(faiss.extract_index_ivf(vi.index))
    lists.ids = np.where(lists.ids % 7 == 0, -3, lists.ids)
    x = pool[:50]
    pd, probes = faiss.extract_index_ivf(vi.index).quantizer.search(x, 4)
    bitmap = np.zeros(1000, np.uint8)
    bitmap[-3] = 1  # id 997: if -3 indexed the bitmap from its end, -3 would be skipped
    d, i = scan(lists, x, pd, probes, 5, bitmap)
    plain_d, plain_i = scan(lists, x, pd, probes, 5, None)
    np.testing.assert_array_equal(i, plain_i)  # nothing excluded: 997 is not among the results
    assert (i == -3).any()


def test_overlapping_scans_give_the_blas_threads_back(index):
    """The one-BLAS-thread limit of a threaded scan is process-wide: scans that overlap share
    one, set by the first and lifted by the last, so it is never left at 1 (with a limit per
    scan, A in, B in, A out, B out left B's saved 1 behind). Concurrent scans: same results."""
    from concurrent.futures import ThreadPoolExecutor
    from threadpoolctl import threadpool_info, threadpool_limits
    from mosaicdb.index.scan import _one_blas_thread

    def blas_threads():
        return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    with threadpool_limits(2, user_api="blas"):
        assert min(blas_threads()) == 2
        a, b = _one_blas_thread(), _one_blas_thread()
        a.__enter__()
        b.__enter__()
        assert max(blas_threads()) == 1
        a.__exit__(None, None, None)
        assert max(blas_threads()) == 1  # b still runs
        b.__exit__(None, None, None)
        assert min(blas_threads()) == 2
        vi, _, _ = index
        lists = DecodedLists(faiss.extract_index_ivf(vi.index))
        space = faiss.downcast_VectorTransform(faiss.downcast_index(vi.index).chain.at(0))
        x = space.apply(clustered(3000, 13))
        pd, probes = faiss.extract_index_ivf(vi.index).quantizer.search(x, 6)
        want = scan(lists, x, pd, probes, 8, threads=1)
        sizes = [(4 + r % 5) * 256 for r in range(24)]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda m: scan(lists, x[:m], pd[:m], probes[:m], 8, threads=2), sizes))
        assert min(blas_threads()) == 2  # (a BLAS loaded meanwhile starts at the cores: 2)
    for m, (d, i) in zip(sizes, got):
        np.testing.assert_array_equal(i, want[1][:m])
        np.testing.assert_array_equal(d, want[0][:m])


def test_products_are_taken_in_slices_with_the_same_results(index, monkeypatch):
    from mosaicdb.index import scan as scan_module
    vi, _, _ = index
    q = clustered(900, 14)
    whole = vi.search(q, 10, device="cpu")
    monkeypatch.setattr(scan_module, "PRODUCT_MAX", 7)  # one query a product
    sliced = vi.search(q, 10, device="cpu")
    np.testing.assert_array_equal(sliced[1], whole[1])
    np.testing.assert_array_equal(sliced[0], whole[0])


def test_excluded_ids_the_index_does_not_hold_cost_nothing(index):
    vi, _, ids = index
    q = clustered(300, 15)
    _d, first = vi.search(q, 4, device="cpu")
    d, i = vi.search(q, 4, device="cpu", exclude=np.array([first[0, 0], 2**50, -7, 2**62]))
    assert not (i == first[0, 0]).any() and np.isin(i, ids).all()


def test_an_inner_product_file_is_not_trusted(tmp_path):
    import json
    from mosaicdb.index import VectorIndex
    pool = clustered(2000, 16)
    vi = build_index(pool, np.arange(2000), IndexOptions(kind="ivf", nlist=8, nprobe=2))
    vi.save(tmp_path / "ix")
    ip = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, 8, faiss.METRIC_INNER_PRODUCT)
    ip.train(pool)
    ip.add_with_ids(pool, np.arange(2000))
    faiss.write_index(ip, str(tmp_path / "ix" / "index.faiss"))
    assert json.loads((tmp_path / "ix" / "index_infos.json").read_text())["kind"] == "ivf"
    assert VectorIndex.load(tmp_path / "ix") is None


def test_many_results_a_query_go_to_faiss(monkeypatch):
    from mosaicdb.index import faiss_index
    pool = clustered(4000, 17)
    vi = build_index(pool, np.arange(4000), IndexOptions(kind="ivf", nlist=16, nprobe=2))
    monkeypatch.setattr(faiss_index, "SCAN_MIN_LIST", 0)
    assert vi._scans(5000, "cpu", faiss_index.SCAN_MAX_K)
    assert not vi._scans(5000, "cpu", faiss_index.SCAN_MAX_K + 1)


def test_a_coarse_assignment_given_is_used_and_changes_nothing(index, monkeypatch):
    """search(coarse=) with the lists index.coarse() found for the same queries: no coarse
    assignment is taken again, the results are those of a plain search; one for other queries
    (another shape) is not used."""
    from mosaicdb.index import listorder
    vi, _, _ = index
    q = clustered(1000, 20)
    exclude = np.unique(vi.search(q[:50], 2, device="cpu")[1])
    want_d, want_i = vi.search(q, 12, device="cpu", exclude=exclude)
    c = vi.coarse(q, "cpu")
    assert c is not None and c.dist.shape == c.lists.shape == (1000, 6) and c.x.shape == (1000, 12)
    calls = []
    real = listorder.coarse_assign
    monkeypatch.setattr(listorder, "coarse_assign", lambda *a: calls.append(1) or real(*a))
    spaces, real_space = [], type(vi)._space
    monkeypatch.setattr(type(vi), "_space", lambda self, x: spaces.append(1) or real_space(self, x))
    rows = np.arange(100, 400)
    d, i = vi.search(q[rows], 12, device="cpu", exclude=exclude, coarse=c.take(rows))
    assert calls == [] and spaces == []  # neither the lists nor the PCA again
    np.testing.assert_array_equal(i, want_i[rows])
    np.testing.assert_array_equal(d, want_d[rows])
    d, i = vi.search(q[:300], 12, device="cpu", exclude=exclude, coarse=c)  # enough rows for the scan
    assert calls == [1]
    np.testing.assert_array_equal(i, want_i[:300])


def test_the_scan_takes_fewer_queries_with_their_coarse_assignment(monkeypatch):
    from mosaicdb.index import faiss_index
    pool = clustered(4000, 21)
    vi = build_index(pool, np.arange(4000), IndexOptions(kind="ivf16", nlist=16, nprobe=2), pca_dims=12)
    monkeypatch.setattr(faiss_index, "LIST_ORDER_MIN", 4096)
    assert not vi._scans(4095, "cpu") and vi._scans(4096, "cpu")
    m = faiss_index.SCAN_MIN_QUERIES
    assert vi._scans(m, "cpu", coarse=True) and not vi._scans(m - 1, "cpu", coarse=True)
    assert vi.coarse(clustered(10, 22), "cpu").lists.shape == (10, 2)  # any number of queries
    pq = build_index(pool, np.arange(4000), IndexOptions(kind="ivfpq", nlist=16, nprobe=2))
    flat = build_index(pool, np.arange(4000), IndexOptions(kind="flat"))
    assert pq.coarse(clustered(10, 22), "cpu") is None and flat.coarse(clustered(10, 22), "cpu") is None


def test_the_matcher_widens_with_the_lists_of_its_first_search(cifar_ingest, tmp_path, monkeypatch):
    """Widened cells are searched with the coarse assignment their first search took (one
    coarse assignment a match), and the mosaic is the one taking it again would give."""
    import shutil
    from mosaicdb import TileDB
    from mosaicdb.index import faiss_index, listorder
    from mosaicdb.match import matcher
    from mosaicdb.match.grid import cell_data, make_grid
    from mosaicdb.match.options import MatchOptions
    from conftest import synthetic_image
    from mosaicdb.match import unused
    monkeypatch.setattr(faiss_index, "SCAN_MIN_QUERIES", 64)  # widening calls of this small grid
    monkeypatch.setattr(unused, "EXACT_UNUSED_MAX", 0)  # through the index, as in a big pool
    shutil.copytree(cifar_ingest[0], tmp_path / "c.db")
    with TileDB.open(tmp_path / "c.db") as db:
        assert db.build_index(IndexOptions(kind="ivf16", nlist=16))["kind"] == "ivf16"
        db.ensure_index()  # loaded (and checked) before the count
        img = synthetic_image(np.random.default_rng(23), 48 * 8, 32 * 8, "gradient")
        grid = make_grid(img.shape[1], img.shape[0], "48x32")
        cells = cell_data(img, grid, db.feature_spec)
        opts = MatchOptions(grid="48x32", k=4, min_distance=2, max_uses=2, refine_passes=0)
        calls, scans = [], []
        real, real_scan = listorder.coarse_assign, faiss_index.VectorIndex._scan
        monkeypatch.setattr(listorder, "coarse_assign", lambda *a: calls.append((len(a[1]), a[2])) or real(*a))
        ivf = faiss.extract_index_ivf(db.ensure_index().index)
        base = ivf.nprobe

        def scan_(self, q, k, ex, coarse=None, ranked=True):
            scans.append((coarse is not None, ivf.nprobe))
            return real_scan(self, q, k, ex, coarse, ranked)

        monkeypatch.setattr(faiss_index.VectorIndex, "_scan", scan_)
        res = matcher.match(db, cells, grid, opts)
        assert res.assignment.widened_cells > 0 and res.seconds["widen_calls"] > 0
        at_base = [given for given, nprobe in scans if nprobe == base]
        assert len(at_base) > 1 and all(at_base)  # the first search and the widening ones
        # at that nprobe, taken once (the first search); rows searched again with more lists take theirs
        assert [n for n, nprobe in calls if nprobe == base] == [len(cells.features)]
        # the same match, each search taking its coarse assignment itself
        monkeypatch.setattr(faiss_index.VectorIndex, "_scan",
                            lambda self, q, k, ex, coarse=None, ranked=True: real_scan(self, q, k, ex, None, ranked))
        again = matcher.match(db, cells, grid, opts)
        assert len(calls) > 2
        assert np.mean(again.assignment.tile_ids == res.assignment.tile_ids) >= 0.99


def test_a_jobs_worker_limits_the_blas_the_scan_calls(cifar_ingest):
    """A `make --jobs` worker limits every BLAS loaded when it starts. The one numba's products
    call (scipy's) must be among them: loaded only at the first scan, it kept both cores' threads
    and contended with the other worker's (bench_many --jobs 2: 126 s against 56)."""
    import os
    import subprocess
    import sys
    import textwrap
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: every BLAS starts with one thread, so nothing to limit")
    code = textwrap.dedent("""
        import logging, sys
        import numpy as np
        from threadpoolctl import threadpool_info
        from mosaicdb import batch
        from mosaicdb.index import IndexOptions, build_index, faiss_index
        from mosaicdb.match.options import MatchOptions
        from mosaicdb.render.options import RenderOptions
        batch._start_worker(sys.argv[1], MatchOptions(), RenderOptions(), 1, logging.WARNING, None)
        faiss_index.LIST_ORDER_MIN = faiss_index.SCAN_MIN_LIST = 0
        pool = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
        vi = build_index(pool, np.arange(3000), IndexOptions(kind="ivf", nlist=16, nprobe=4))
        vi.search(pool[:500], 8, device="cpu")
        print(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
    """)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code, str(cifar_ingest[0])], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


_FORKED = {}


def _scan_after_fork():
    a = _FORKED
    return scan(a["lists"], a["x"], a["pd"], a["probes"], 8, threads=2)


def test_threaded_scans_work_in_a_forked_process(index):
    """The scans' threads are kept per process: a worker forked after its parent scanned makes
    its own (the parent's pool has no threads in the child, and a scan there would wait for
    ever)."""
    import multiprocessing
    vi, _, _ = index
    lists = DecodedLists(faiss.extract_index_ivf(vi.index))
    space = faiss.downcast_VectorTransform(faiss.downcast_index(vi.index).chain.at(0))
    x = space.apply(clustered(1500, 24))
    pd, probes = faiss.extract_index_ivf(vi.index).quantizer.search(x, 6)
    want = scan(lists, x, pd, probes, 8, threads=2)  # the parent's threads exist now
    _FORKED.update(lists=lists, x=x, pd=pd, probes=probes)
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            d, i = pool.apply_async(_scan_after_fork).get(timeout=120)
    finally:
        _FORKED.clear()
    np.testing.assert_array_equal(i, want[1])
    np.testing.assert_array_equal(d, want[0])


def test_short_lists_taken_in_three_rounds_give_the_same_results(index, monkeypatch):
    """Short lists (the fixture's: ~94 a list) are read in three rounds (nearest list, the next
    MID_PHASE - 1, the rest): the same results as two rounds, only a tighter heap sooner."""
    from mosaicdb.index import scan as scan_module
    vi, _, _ = index
    lists = DecodedLists(faiss.extract_index_ivf(vi.index))
    assert len(lists.ids) < scan_module.SHORT_LISTS * (len(lists.starts) - 1)
    space = faiss.downcast_VectorTransform(faiss.downcast_index(vi.index).chain.at(0))
    x = space.apply(clustered(2000, 25))
    pd, probes = faiss.extract_index_ivf(vi.index).quantizer.search(x, 6)
    rounds = []
    real = scan_module._scan_lists
    monkeypatch.setattr(scan_module, "_scan_lists", lambda *a: rounds.append(a[-1]) or real(*a))
    three = scan(lists, x, pd, probes, 16, threads=1)
    monkeypatch.setattr(scan_module, "MID_PHASE", 1)
    two = scan(lists, x, pd, probes, 16, threads=1)
    assert rounds == [4, 1]
    np.testing.assert_array_equal(three[1], two[1])
    np.testing.assert_array_equal(three[0], two[0])


def test_queries_scanned_in_blocks_give_the_same_results(index, monkeypatch):
    from mosaicdb.index import scan as scan_module
    vi, _, _ = index
    lists = DecodedLists(faiss.extract_index_ivf(vi.index))
    space = faiss.downcast_VectorTransform(faiss.downcast_index(vi.index).chain.at(0))
    x = space.apply(clustered(1000, 26))
    pd, probes = faiss.extract_index_ivf(vi.index).quantizer.search(x, 6)
    bitmap = np.zeros(6200, np.uint8)
    bitmap[100:3000:7] = 1
    whole = scan(lists, x, pd, probes, 10, bitmap, threads=2)
    monkeypatch.setattr(scan_module, "QUERY_BLOCK", 97)
    blocks = scan(lists, x, pd, probes, 10, bitmap, threads=2)
    np.testing.assert_array_equal(blocks[1], whole[1])
    np.testing.assert_array_equal(blocks[0], whole[0])


def test_unranked_results_are_the_same_candidates(index):
    """scan(ranked=False), for a caller that ranks again (the matcher's exact re-rank): the same
    candidates in each row, its missing ones wherever the heap had them, -1 / FILLER."""
    vi, _, _ = index
    lists = DecodedLists(faiss.extract_index_ivf(vi.index))
    space = faiss.downcast_VectorTransform(faiss.downcast_index(vi.index).chain.at(0))
    x = space.apply(clustered(800, 27))
    pd, probes = faiss.extract_index_ivf(vi.index).quantizer.search(x, 2)
    k = 400  # more than two lists hold for some queries: missing results
    d, i = scan(lists, x, pd, probes, k, threads=2)
    ud, ui = scan(lists, x, pd, probes, k, threads=2, ranked=False)
    assert (i < 0).any()
    for r in range(len(x)):
        np.testing.assert_array_equal(np.sort(ui[r]), np.sort(i[r]))
        got = ui[r] >= 0
        assert (ud[r, ~got] == FILLER).all()
        order = np.argsort(ui[r, got])
        np.testing.assert_allclose(ud[r, got][order], d[r, i[r] >= 0][np.argsort(i[r, i[r] >= 0])],
                                   rtol=1e-3, atol=1e-2)  # the product form's distances


def test_widening_rows_unranked_are_filled_by_more_lists(monkeypatch):
    """_wide_ivf_search raises nprobe for rows the scan left short; unranked rows have their gaps
    anywhere (a heap not filled keeps its entries at the leaves), so shortness is counted."""
    from mosaicdb.index import faiss_index
    from mosaicdb.match import matcher
    from mosaicdb.match.matcher import _wide_ivf_search
    monkeypatch.setattr(matcher, "_WIDEN_SCAN", 0)  # start at the index's nprobe (1): rows come short
    pool = clustered(3000, 28)
    vi = build_index(pool, np.arange(3000), IndexOptions(kind="ivf16", nlist=16, nprobe=1), pca_dims=12)
    q = clustered(300, 29)
    exclude = np.arange(0, 3000, 3)  # a third of the pool: ~125 left a list
    k = faiss_index.SCAN_MAX_K  # more than one list holds then: rows come short at nprobe 1
    first = vi.search(q, k, device="cpu", exclude=exclude, ranked=False)[1]
    short = (first >= 0).sum(axis=1) < k
    assert short.mean() > 0.2 and (short & (first[:, -1] >= 0)).any()  # short rows, their gaps not last
    for ranked in (True, False):
        d, i = _wide_ivf_search(vi, q, k, exclude, ranked=ranked)
        assert ((i >= 0).sum(axis=1) == k).all()
        assert not np.isin(i, exclude).any()
