"""IVF search with the queries taken in the order of their nearest list.

FAISS scans each query's nprobe lists one query after another. With queries in any order (a
photograph's cells row by row, a shuffled benchmark) every query reads its lists from RAM, and
at a million tiles that traffic bounds the scan: 65,536 queries x 32 lists x ~244 vectors x
192 bytes is ~100 GB. Taken in the order of their nearest list, neighbouring queries probe
mostly the same lists while they are still in cache: the scan of 65,536 real cells against
the 1M pool (nprobe 32, the scan alone on one thread) went from 9.3 to 5.7 CPU-s, same results;
the whole search as make runs it from 12.5 to 8.2 CPU-s (issue 17e, bench_search_db).

The coarse assignment is computed once here and given to FAISS (`search_preassigned`), which
scans a slice of the sorted queries per thread.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np


def threads() -> int:
    """FAISS's OpenMP threads: the slices a CPU search is cut into."""
    import faiss
    return max(1, int(faiss.omp_get_max_threads()))


def coarse_assign(index, x: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, lists) of the nprobe lists nearest each (already transformed) query."""
    import faiss
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.search(x, nprobe)


def search_in_list_order(index, queries: np.ndarray, k: int, *, params=None, batch: int, finish=None,
                         k_out: int | None = None):
    """index.search(queries, k) for an IVF index (optionally behind a pre-transform), the queries
    scanned in the order of their nearest list, results in the order given.

    `params`: FAISS SearchParametersIVF (a selector, nprobe) or None (the index's nprobe).
    `batch`: queries scanned per round (bounds the (batch, k) candidates held at once).
    `finish(queries, d, i) -> (d, i)`: applied to each round's results (e.g. an exact re-rank
    down to `k_out` columns)."""
    import faiss

    from .ivfpq import index_space
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(queries)
    k_out = k if k_out is None else k_out
    dist = np.empty((n, k_out), np.float32)
    ids = np.empty((n, k_out), np.int64)
    if n == 0:
        return dist, ids
    ivf = faiss.extract_index_ivf(index)
    space = index_space(index)
    x = np.ascontiguousarray(space(queries) if space is not None else queries, dtype=np.float32)
    nprobe = int(params.nprobe) if params is not None and int(params.nprobe) > 0 else int(ivf.nprobe)
    nprobe = max(1, min(nprobe, int(ivf.nlist)))
    cd, cl = coarse_assign(index, x, nprobe)
    order = np.argsort(cl[:, 0], kind="stable")
    n_threads = threads()

    def scan(part):
        # the C++ call: FAISS's Python wrapper takes no search parameters (selectors, nprobe)
        xs, cls, cds = part
        d = np.empty((len(xs), k), np.float32)
        i = np.empty((len(xs), k), np.int64)
        ivf.search_preassigned_c(len(xs), faiss.swig_ptr(xs), k, faiss.swig_ptr(cls), faiss.swig_ptr(cds),
                                 faiss.swig_ptr(d), faiss.swig_ptr(i), False, params)
        return d, i

    with ThreadPoolExecutor(n_threads) as pool:
        for s in range(0, n, batch):
            rows = order[s:s + batch]
            xs, cls, cds = x[rows], cl[rows], cd[rows]
            cuts = np.linspace(0, len(rows), min(n_threads, len(rows)) + 1).astype(int)
            parts = [tuple(np.ascontiguousarray(a[lo:hi]) for a in (xs, cls, cds))
                     for lo, hi in pairwise(cuts)]
            found = list(pool.map(scan, parts))  # FAISS releases the GIL: one slice per core
            d = np.concatenate([f[0] for f in found])
            i = np.concatenate([f[1] for f in found])
            if finish is not None:
                d, i = finish(queries[rows], d, i)
            dist[rows], ids[rows] = d, i
    return dist, ids
