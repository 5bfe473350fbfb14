"""IVF search in list order (index/listorder.py) returns what FAISS's own search returns."""
from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from mosaicdb.index import IndexOptions, build_index
from mosaicdb.index.listorder import search_in_list_order

N, D = 6000, 24


def clustered(n, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (40, D)).astype(np.float32)
    return (centres[rng.integers(0, 40, n)] + rng.normal(0, 1, (n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def ivf_index():
    pool = clustered(N, 0)
    ids = np.arange(100, 100 + N)
    return build_index(pool, ids, IndexOptions(kind="ivf", nlist=64, nprobe=4), pca_dims=12), pool, ids


def faiss_order(index, q, k, params=None):
    return index.search(np.ascontiguousarray(q, dtype=np.float32), k, params=params)


@pytest.mark.parametrize("nq, k, batch", [(0, 5, 64), (1, 5, 64), (3, 8, 2), (700, 16, 256), (700, 1, 10_000)])
def test_same_results_as_faiss(ivf_index, nq, k, batch):
    vi, _, _ = ivf_index
    q = clustered(nq, 1)
    d, i = search_in_list_order(vi.index, q, k, batch=batch)
    ed, ei = faiss_order(vi.index, q, k)
    assert d.shape == i.shape == (nq, k)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(d, ed, rtol=1e-6)


def test_params_select_and_probe(ivf_index):
    """A selector and an nprobe other than the index's are honoured (the C++ call takes them)."""
    vi, _, ids = ivf_index
    q = clustered(300, 2)
    banned = np.ascontiguousarray(ids[::3], dtype=np.int64)
    sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(len(banned), faiss.swig_ptr(banned)))
    params = faiss.SearchParametersIVF(sel=sel, nprobe=16)
    _d, i = search_in_list_order(vi.index, q, 10, params=params, batch=128)
    _ed, ei = faiss_order(vi.index, q, 10, params=params)
    np.testing.assert_array_equal(i, ei)
    assert not np.isin(i, banned).any()
    plain = search_in_list_order(vi.index, q, 10, batch=128)[1]
    assert not np.array_equal(plain, i)  # the selector changed something


def test_finish_applied_per_batch_in_given_order(ivf_index):
    vi, _pool, _ids = ivf_index
    q = clustered(200, 3)
    seen = []

    def finish(qs, d, i):
        seen.append(len(qs))
        return d[:, :2] + qs[:, :1] * 0, i[:, :2]  # the queries handed over are the batch's own

    _d, i = search_in_list_order(vi.index, q, 6, batch=64, finish=finish, k_out=2)
    assert sum(seen) == 200 and max(seen) <= 64
    np.testing.assert_array_equal(i, faiss_order(vi.index, q, 6)[1][:, :2])


@pytest.mark.parametrize("nq, used", [(300, False), (500, True)])
def test_vector_index_search_uses_it_from_enough_queries_and_matches(monkeypatch, nq, used):
    # ivfpq (the kind whose lists hold codes): fewer queries than LIST_ORDER_MIN go in FAISS's
    # own order (threads cost more than they save); ivf and ivf16 use index/scan.py instead
    from mosaicdb.index import faiss_index
    pool = clustered(4000, 7)
    vi = build_index(pool, np.arange(4000), IndexOptions(kind="ivfpq", nlist=32, nprobe=4))
    calls = []
    real = faiss_index.search_in_list_order
    monkeypatch.setattr(faiss_index, "search_in_list_order", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(faiss_index, "LIST_ORDER_MIN", 400)
    q = clustered(nq, 4)
    _d, i = vi.search(q, 7, device="cpu")
    assert bool(calls) == used
    ref = faiss.extract_index_ivf(vi.index)
    assert ref.nprobe == 4 and i.shape == (nq, 7) and (i >= 0).all()
