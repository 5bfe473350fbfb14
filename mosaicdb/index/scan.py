"""The CPU scan of an IVF index's lists for many queries at once, for the kinds that hold whole
vectors (ivf, ivf16).

FAISS scans one query at a time: for each of its nprobe lists, one distance per vector, pushed
into a heap. Here the lists are decoded once into float32 (`DecodedLists`, per loaded index),
and the queries are taken list by list: the queries that probe a list get their distances to
all its vectors from one matrix product (BLAS), |q-c|^2 + |r|^2 + 2 c.r - 2 q.r with r = x - c
the vectors' residuals from the list's centroid c (|q-c|^2 comes from the coarse assignment,
|r|^2 + 2 c.r is stored), and a numba kernel keeps each query's k best in a heap. Each query's
nearest list is scanned first, so its heap is tight before the far lists are, and they push
little. The distances of the k kept are then computed again directly, as FAISS computes them.

Measured on the 1M pool (ivf16, 32 dims, nprobe 32), 43,552 real cells of 4 Kodak photographs
at 128 cells, one thread: FAISS's search (list order) 3.2 CPU-s, this scan 2.1 CPU-s (of which
the coarse assignment, still FAISS's, 0.6), the same recall@1 and recall@32; the same 32 ids for
99.96 % of the cells, the others differing by rounding between near-equal distances. A numba
loop in place of BLAS was 2-5x slower (README, Index).

A query's results depend on nothing but the query: its lists are visited in a fixed order
(nearest first, then by list number), so neither the thread count nor the other queries of a
call change them. Equal distances among the k kept are ordered by id; which of several vectors
at exactly the k-th distance is kept follows their position in the lists (FAISS keeps the
smallest id), so with duplicate tiles the two may keep different ones of them. Excluded ids (a
bitmap) are skipped, as a FAISS selector would skip them.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np
# The BLAS that numba's np.dot calls (scipy's), loaded with this module: numba would load it at
# the first product, after a process's thread limits were set (a `make --jobs` worker limits
# every BLAS loaded when it starts), and its threads would then contend with the other workers'.
import scipy.linalg.cython_blas  # noqa: F401

FILLER = np.float32(np.finfo(np.float32).max)  # FAISS's distance for a missing result (-1)
# Distances computed at once for one list (queries x vectors): 16 MB. Without a bound, thousands
# of equal cells (a flat area) probing a list of equal tiles (thousands of solid black ones,
# which k-means cannot split) held a 1.6 GB product.
PRODUCT_MAX = 1 << 22
# The lists are taken in three rounds: each query's nearest, its next MID_PHASE - 1 nearest, then
# the rest (by list number), so its heap is tight before the far lists push into it. A round
# reads every list it needs again, so only for short lists (under SHORT_LISTS vectors on
# average). 50,000 tiles (49 a list), 65,536 queries, 2 threads: k 32 0.32 against 0.34 s, k 64
# 0.57 against 0.68 s (0.45 against 0.53 s in calls of 2,048); at the 1M pool (244 a list) a
# third round was slower (0.73 against 0.68 s at k 32).
MID_PHASE = 4
SHORT_LISTS = 128


class DecodedLists:
    """An IVF index's lists as float32 residuals from their list's centroid, list after list:
    `r` (n, d), `norms` (n,) |r|^2 + 2 c.r, `ids` (n,), `starts` (nlist + 1), `centroids`
    (nlist, d), `list_of` (n,). Half floats (ivf16 stores residuals) are widened exactly."""

    def __init__(self, ivf):
        import faiss
        from faiss.contrib.inspect_tools import get_invlist

        ivf = faiss.downcast_index(ivf)
        sq = isinstance(ivf, faiss.IndexIVFScalarQuantizer)
        if not sq and not isinstance(ivf, faiss.IndexIVFFlat):
            raise ValueError("only IVF lists of whole vectors (IVF-Flat, half floats) are decoded here")
        if sq and int(ivf.sq.qtype) != int(faiss.ScalarQuantizer.QT_fp16):
            raise ValueError("only half-float scalar quantizers are decoded here")
        nlist, d = int(ivf.nlist), int(ivf.d)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(nlist)], np.int64)
        self.starts = np.zeros(nlist + 1, np.int64)
        np.cumsum(sizes, out=self.starts[1:])
        n = int(self.starts[-1])
        residual = sq and bool(ivf.by_residual)  # codes hold x - centroid
        self.centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, nlist), dtype=np.float32)
        self.r = np.empty((n, d), np.float32)
        self.ids = np.empty(n, np.int64)
        self.norms = np.zeros(n, np.float32)
        for li in np.flatnonzero(sizes).tolist():
            a, b = int(self.starts[li]), int(self.starts[li + 1])
            ids, codes = get_invlist(ivf.invlists, li)
            self.r[a:b] = np.ascontiguousarray(codes).view(np.float16 if sq else np.float32).reshape(b - a, d)
            if not residual:
                self.r[a:b] -= self.centroids[li]
            self.ids[a:b] = ids
            # |r|^2 + 2 c.r: with |q-c|^2 from the coarse assignment, |q-x|^2 = that + this - 2 q.r
            rl = self.r[a:b]
            self.norms[a:b] = np.einsum("ij,ij->i", rl, rl) + 2 * (rl @ self.centroids[li])
        self.list_of = np.repeat(np.arange(nlist, dtype=np.int32), sizes)  # each row's list


def scan(lists: DecodedLists, x: np.ndarray, probe_dist: np.ndarray, probes: np.ndarray, k: int,
         excluded: np.ndarray | None = None, threads: int = 1, ranked: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest vectors of each query `x` (n, d) (already in the index's space) among its
    `probes` (n, nprobe) lists, nearest list first, `probe_dist` (n, nprobe) its squared
    distances to their centroids (the coarse assignment's): (squared L2 (n, k) float32
    ascending, ties by id; ids (n, k) int64), -1 / FILLER where fewer. `excluded`: a bitmap
    (uint8 by id; ids past its end are not excluded). `threads`: contiguous slices of the
    queries scanned at once. `ranked=False`: each row's results in no particular order (missing
    ones anywhere), with the product form's distances, for a caller that ranks them again by
    its own distances (the matcher's exact re-rank): the measuring and sorting is saved."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    probe_dist = np.ascontiguousarray(probe_dist, dtype=np.float32)
    n = len(x)
    dist = np.full((n, k), FILLER, np.float32)
    ids = np.full((n, k), -1, np.int64)
    if n == 0 or k == 0 or probes.shape[1] == 0:
        return dist, ids
    bitmap = np.zeros(0, np.uint8) if excluded is None else np.ascontiguousarray(excluded, dtype=np.uint8)
    cuts = np.linspace(0, n, max(1, min(int(threads), n // 256 or 1)) + 1).astype(np.int64)
    parts = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))

    def run(part):
        lo, hi = part
        _scan_part(lists, x[lo:hi], probe_dist[lo:hi], probes[lo:hi], k, bitmap, dist[lo:hi], ids[lo:hi], ranked)

    if len(parts) == 1:
        run(parts[0])
    else:  # BLAS and the numba kernel release the GIL; one BLAS thread each (small products)
        with _one_blas_thread():
            futures = [_pool(len(parts) - 1).submit(run, part) for part in parts[1:]]
            try:
                run(parts[0])  # this thread takes the first slice
            finally:
                for f in futures:
                    f.result()
    return dist, ids


_pool_lock = threading.Lock()
_pool_now = None   # (pid, workers, ThreadPoolExecutor)


def _pool(workers: int) -> ThreadPoolExecutor:
    """Threads kept for the scans of this process (a forked worker makes its own): a pool made
    per call cost ~2 ms a thread start, 0.1 s of bench_match's 22 scans."""
    global _pool_now
    with _pool_lock:
        pid = os.getpid()
        if _pool_now is None or _pool_now[0] != pid or _pool_now[1] < workers:
            # a smaller pool in use by another scan finishes its work; unreferenced, its threads end
            _pool_now = (pid, workers, ThreadPoolExecutor(workers, thread_name_prefix="mosaicdb-scan"))
        return _pool_now[2]


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limits = None
_blas_controller = None  # made once: a threadpool_limits call looks the libraries up again (~1.3 ms)


@contextmanager
def _one_blas_thread():
    """BLAS limited to one thread while any scan runs its threads. The limit is process-wide
    (threadpoolctl): scans that overlap share one, set by the first and lifted by the last, so
    an overlap never leaves it behind (nor restores another's)."""
    global _blas_users, _blas_limits, _blas_controller
    with _blas_lock:
        if _blas_users == 0:
            if _blas_controller is None:  # the libraries loaded now, among them the BLAS numba calls
                from threadpoolctl import ThreadpoolController
                _blas_controller = ThreadpoolController()
            _blas_limits = _blas_controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limits.restore_original_limits()
                _blas_limits = None


# Queries scanned a block at a time (each block its own pass over the lists it probes): the heaps
# of a block stay in cache while the lists stream past. 50,000 tiles, 65,536 queries, 2 threads:
# k 32 0.30-0.31 against 0.38-0.42 s, k 64 0.45-0.46 against 0.60-0.62 s; 1M tiles (lists 5x
# longer, read again per block), 43,520 queries: the same within noise (0.66-0.71 against 0.67-0.68 s).
QUERY_BLOCK = 4096


def _scan_part(lists: DecodedLists, x, probe_dist, probes, k, bitmap, dist, ids, ranked=True) -> None:
    m = len(x)
    mid = MID_PHASE if len(lists.ids) < SHORT_LISTS * (len(lists.starts) - 1) else 1
    step = QUERY_BLOCK
    for b0 in range(0, m, step):
        b1 = min(b0 + step, m)
        hd = np.full((b1 - b0, k), np.inf, np.float32)  # per query a max-heap of distances (root: the worst kept)
        hi = np.full((b1 - b0, k), -1, np.int64)
        _scan_lists(x[b0:b1], probe_dist[b0:b1], probes[b0:b1], lists.starts, lists.r, lists.norms, lists.ids,
                    bitmap, hd, hi, PRODUCT_MAX, mid)
        if ranked:
            _finish(x[b0:b1], hd, hi, lists.r, lists.centroids, lists.list_of, lists.ids, dist[b0:b1], ids[b0:b1])
        else:
            _unranked(hd, hi, lists.ids, dist[b0:b1], ids[b0:b1])


# The loop over lists runs in numba, products and all (np.dot: BLAS through scipy): in Python it
# cost ~10 us a list and call, which the matcher's widening searches (2,048 cells, 1,024 lists,
# 20 calls) paid in full: 65,536 queries, k 64, 2 threads, in calls of 2,048: 0.72-0.75 against
# 1.00-1.46 s; one call of 65,536: the same. The results are the same to the bit (same products,
# same pushes in the same order).
@numba.njit(cache=True, nogil=True)
def _scan_lists(x, probe_dist, probes, starts, r, norms, list_ids, bitmap, hd, hi, product_max, mid):
    m, nprobe = probes.shape
    d = x.shape[1]
    nlist = starts.shape[0] - 1
    for r0, r1 in ((0, 1), (1, min(mid, nprobe)), (min(mid, nprobe), nprobe)):  # nearest list, next nearest, the rest
        if r1 <= r0:
            continue
        qs, qd, seg_list, seg_start = _by_list(probes[:, r0:r1], probe_dist[:, r0:r1], nlist)
        for s in range(seg_list.shape[0]):
            li = seg_list[s]
            a, b = starts[li], starts[li + 1]
            if a == b:
                continue
            rt = r[a:b].T
            step = max(1, product_max // (b - a))  # many queries on one long list: in slices
            for c0 in range(seg_start[s], seg_start[s + 1], step):
                c1 = min(c0 + step, seg_start[s + 1])
                q = np.empty((c1 - c0, d), np.float32)  # the queries probing the list
                for e in range(c0, c1):
                    q[e - c0] = x[qs[e]]
                g = np.dot(q, rt)  # (queries, the list's vectors' residuals)
                _push(g, qd[c0:c1], norms[a:b], list_ids[a:b], a, qs[c0:c1], bitmap, hd, hi)


@numba.njit(cache=True, nogil=True)
def _by_list(probes, probe_dist, nlist):
    """The (query, list) pairs grouped by list, lists ascending, queries ascending within one
    (a counting sort): (queries, their distances to the list's centroid, the lists present,
    where each one's queries start (and the end))."""
    m, w = probes.shape
    counts = np.zeros(nlist + 1, np.int64)
    for q in range(m):
        for r in range(w):
            li = probes[q, r]
            if 0 <= li < nlist:
                counts[li + 1] += 1
    for li in range(nlist):
        counts[li + 1] += counts[li]
    total = counts[nlist]
    fill = counts[:nlist].copy()
    qs = np.empty(total, np.int64)
    qd = np.empty(total, np.float32)
    for q in range(m):
        for r in range(w):
            li = probes[q, r]
            if 0 <= li < nlist:
                qs[fill[li]] = q
                qd[fill[li]] = probe_dist[q, r]
                fill[li] += 1
    present = 0
    for li in range(nlist):
        if counts[li + 1] > counts[li]:
            present += 1
    seg_list = np.empty(present, np.int64)
    seg_start = np.empty(present + 1, np.int64)
    j = 0
    for li in range(nlist):
        if counts[li + 1] > counts[li]:
            seg_list[j] = li
            seg_start[j] = counts[li]
            j += 1
    seg_start[present] = total
    return qs, qd, seg_list, seg_start


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "arcp", "nsz"})
def _push(g, qnorms, norms, list_ids, base, q, bitmap, hd, hi):
    """Each query q[r]'s distances (|q-c|^2 + |r|^2 + 2 c.r - 2 q.r, the product row g[r])
    into its heap, by position (base + j: the row of the decoded lists), excluded ids skipped."""
    m, n = g.shape
    k = hd.shape[1]
    nbits = bitmap.shape[0]
    buf = np.empty(n, np.float32)
    for r in range(m):
        qi = q[r]
        thr = hd[qi, 0]
        qn = qnorms[r]
        below = 0
        for j in range(n):  # vectorised: most rows have nothing under the heap's worst
            v = qn + norms[j] - np.float32(2.0) * g[r, j]
            buf[j] = v
            below += np.int32(v < thr)
        if below == 0:
            continue
        for j in range(n):
            v = buf[j]
            if v < thr:
                t = list_ids[j]
                if 0 <= t < nbits and bitmap[t]:  # (a damaged index's negative ids: never read before it)
                    continue
                i = 0  # replace the root, sift down
                while True:
                    c = 2 * i + 1
                    if c >= k:
                        break
                    if c + 1 < k and hd[qi, c + 1] > hd[qi, c]:
                        c += 1
                    if hd[qi, c] <= v:
                        break
                    hd[qi, i] = hd[qi, c]
                    hi[qi, i] = hi[qi, c]
                    i = c
                hd[qi, i] = v
                hi[qi, i] = base + j
                thr = hd[qi, 0]


@numba.njit(cache=True, nogil=True)
def _unranked(hd, hi, tile_ids, dist, ids):
    """The heaps as they are: tile ids and product-form distances, -1 / FILLER where empty."""
    m, k = hd.shape
    for q in range(m):
        for j in range(k):
            p = hi[q, j]
            if p >= 0:
                dist[q, j] = hd[q, j]
                ids[q, j] = tile_ids[p]


@numba.njit(cache=True, nogil=True, inline="always")
def _before(da, ia, db, ib):
    """(distance, id) a before b, NaN last (as numpy sorts)."""
    if da != da:
        return False
    if db != db:
        return True
    return da < db or (da == db and ia < ib)


@numba.njit(cache=True, nogil=True)
def _finish(x, hd, hi, r, centroids, list_of, tile_ids, dist, ids):
    """Each query's kept vectors with their distance computed again directly, |(q-c) - r|^2 as
    FAISS computes it (the product form above loses ~1e-7 of |q-c|^2 to cancellation: enough
    to rank by, not to report a tile's own vector at distance 0), ascending, ties by id.
    Sorted by insertion, the heap's far end first (nearly ascending already): 65,536 queries,
    k 64, 0.24 against 0.34 s for two stable argsorts, the same order."""
    m, k = hd.shape
    d = x.shape[1]
    ex = np.empty(k, np.float32)
    tid = np.empty(k, np.int64)
    for q in range(m):
        n = 0
        for j in range(k - 1, -1, -1):
            p = hi[q, j]
            if p < 0:
                continue  # missing results: the rest of the row stays -1 / FILLER
            c = list_of[p]
            s = np.float32(0.0)
            for u in range(d):
                t = (x[q, u] - centroids[c, u]) - r[p, u]
                s += t * t
            if s != s:
                continue  # NaN (a damaged list): dropped, as the sort by numpy put it past the missing
            t_id = tile_ids[p]
            i = n - 1
            while i >= 0 and _before(s, t_id, ex[i], tid[i]):
                ex[i + 1] = ex[i]
                tid[i + 1] = tid[i]
                i -= 1
            ex[i + 1] = s
            tid[i + 1] = t_id
            n += 1
        for j in range(n):
            dist[q, j] = ex[j]
            ids[q, j] = tid[j]
