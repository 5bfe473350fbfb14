"""The IVF-PQ index kind: compressed codes in RAM, an exact refine from the full vectors on disk.

Past a few million tiles the vectors of an IVF-Flat index no longer fit a RAM budget. This
kind keeps only product-quantized codes (M bytes a vector) and ids in RAM; a search takes a
shortlist of `refine_factor` x k candidates from the codes and ranks it again by the exact
distance between the full vectors, read by tile id from the caller's rows (the database's
memory-mapped features). FAISS's own IndexRefineFlat would keep a second full copy of every
vector in RAM, which is what this kind exists to avoid.

Building never holds more than a training sample and one chunk of vectors at a time; nprobe
is tuned against what the index would return with exact lists and codes: the exact shortlist
in the space it searches (chunked brute force), refined the same way.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np

from ..errors import UsageError
from .tuning import default_nlist as ivf_nlist, midpoint_queries, recall_at_1

log = logging.getLogger(__name__)

NBITS = 8                # bits per sub-quantizer code: 256 centroids, one byte
DIMS_PER_CODE = 2        # default M = d / 2: one byte per two dimensions (see README, Index)
# Default shortlist = refine_factor x k. On 10M vectors (45,000 real ones x ~222 jittered copies:
# a query's neighbours are near-identical copies the codes cannot order), at nprobe 32, recall@10
# was 0.697 / 0.855 / 0.945 / 0.968 at x8 / x16 / x32 / x64 for 456 / 442 / 417 / 381 queries
# per CPU-second: the scan of the lists costs far more than reading the shortlist's rows.
REFINE_FACTOR = 64
PLATEAU = 0.005          # nprobe tuning stops when doubling nprobe gains less recall than this
SHORTLIST_MIN = 16       # a k = 1 search still refines from this many candidates
SHORTLIST_MAX = 8192
KMEANS_ITER = 10         # k-means iterations, coarse and per sub-quantizer (FAISS default 25)
PQ_TRAIN_PER_CENTROID = 64  # sub-quantizer training points per centroid (FAISS default 256)
NLIST_MAX = 4096         # coarse lists: assigning 10M vectors to 16,384 lists is 16 TFLOP (~9 min here)
TRAIN_PER_LIST = 64      # coarse k-means sample: this many vectors per list (FAISS wants >= 39)
TRAIN_MIN = 65536        # and at least this many, for the PCA and the 256-centroid sub-quantizers
CHUNK = 1 << 17          # vectors read from the rows at a time while adding and in exact search
MIN_VECTORS = 1024       # fewer cannot train 256-centroid sub-quantizers well (and need no compression)
ID_BYTES = 8             # FAISS keeps an int64 id per vector in its inverted lists


def flat_bytes(n: int, dim: int) -> int:
    """RAM of an IVF-Flat index over n vectors of `dim` float32 (vectors + ids)."""
    return int(n) * (4 * int(dim) + ID_BYTES)


def pq_bytes(n: int, m: int, nlist: int, dim: int) -> int:
    """RAM of an IVF-PQ index: codes, ids (FAISS's and VectorIndex's sorted copy), coarse
    centroids and FAISS's precomputed per-list distance tables (nlist x M x 256 floats; the
    PCA and the sub-quantizer centroids are a few hundred KB)."""
    ksub = 1 << NBITS
    return int(n) * (int(m) * NBITS // 8 + 2 * ID_BYTES) + int(nlist) * int(dim) * 4 + int(nlist) * int(m) * ksub * 4


def resolve_kind(kind: str, n: int, dim: int, flat_max: int, ivf_ram_max: int) -> str:
    """The kind `auto` stands for: exact up to flat_max vectors, IVF of half floats behind a
    32-dim PCA (ivf16) while IVF-Flat vectors would fit ivf_ram_max bytes, IVF-PQ beyond. Any
    other kind is itself. (ivf16 rather than ivf: at 1M tiles 1.35-1.5x faster at the same tuned
    nprobe, and on 50,000 tiles the same mosaics to 0.015 dB; faiss_index.IVF16_PCA_DIMS.)"""
    if kind != "auto":
        return kind
    if n <= flat_max:
        return "flat"
    return "ivf16" if flat_bytes(n, dim) <= ivf_ram_max else "ivfpq"


def divisors(d: int) -> list[int]:
    return [m for m in range(1, d + 1) if d % m == 0]


def choose_m(dim: int, requested: int = 0) -> int:
    """Sub-quantizers: `requested` (must divide dim), else the divisor of dim nearest dim / 2."""
    if requested:
        if dim % requested:
            raise UsageError(f"--pq-m {requested} must divide the index's {dim} dimensions: "
                             f"use one of {', '.join(map(str, divisors(dim)))}")
        return requested
    return min(divisors(dim), key=lambda m: (abs(m - dim / DIMS_PER_CODE), -m))


def default_nlist(n: int) -> int:
    return min(ivf_nlist(n), NLIST_MAX)


def shortlist(k: int, refine_factor: int) -> int:
    """Candidates taken from the codes for a search of k."""
    return max(k, min(max(k * refine_factor, SHORTLIST_MIN), SHORTLIST_MAX))


def gather(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """rows[ids] as contiguous float32 (reads only those rows of a memory map)."""
    return np.ascontiguousarray(rows[ids], dtype=np.float32)


def exact_knn(rows: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, chunk: int = CHUNK,
              transform=None):
    """Exact k nearest of `ids` (rows[id] are their vectors) for each query, by brute force
    over chunks of the rows: (squared L2 (nq, k) ascending, ids (nq, k), -1 padded). Memory:
    one chunk of vectors plus (nq, 2k) running results. `transform`: a function applied to the
    queries and to each chunk first (an index's PCA: exact search in the space it searches)."""
    import faiss
    space = transform or (lambda x: x)
    queries = np.ascontiguousarray(space(np.ascontiguousarray(queries, dtype=np.float32)), dtype=np.float32)
    nq = len(queries)
    best_d = np.full((nq, k), np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    for s in range(0, len(ids), chunk):
        part = ids[s:s + chunk]
        d, i = faiss.knn(queries, np.ascontiguousarray(space(gather(rows, part))), min(k, len(part)))
        i = np.where(i >= 0, part[np.clip(i, 0, None)], -1)
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, i], axis=1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_d, best_i


@contextmanager
def omp_threads(n: int):
    """FAISS's OpenMP thread count set to n for the duration."""
    import faiss
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _train_sample(rows, ids: np.ndarray, n_train: int, rng) -> np.ndarray:
    pick = ids if n_train >= len(ids) else np.sort(rng.choice(ids, n_train, replace=False))
    return gather(rows, pick)


def build_ivfpq(rows_of, ids: np.ndarray, opts, pca_dims: int = 0, extra: dict | None = None):
    """Build an IVF-PQ index over the vectors rows_of()[ids] (row = tile id): (FAISS index,
    infos, sorted ids, rng for tune_nprobe). `pca_dims` > 0: a PCA to that many dims, fitted
    on the training sample, is part of the index (as for the other kinds)."""
    import faiss
    t0 = time.perf_counter()
    rows = rows_of()
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    n, d = len(ids), int(rows.shape[1])
    if n < MIN_VECTORS:
        raise UsageError(f"--kind ivfpq needs at least {MIN_VECTORS:,} tiles (this pool has {n:,}): "
                         f"use --kind auto, flat, ivf or ivf16")
    d_in = pca_dims if 0 < pca_dims < d else d
    m = choose_m(d_in, opts.pq_m)
    nlist = opts.nlist or default_nlist(n)
    nlist = max(1, min(nlist, n // 39 or 1))
    rng = np.random.default_rng(opts.seed)
    n_train = min(n, max(TRAIN_PER_LIST * nlist, TRAIN_MIN))
    train = _train_sample(rows, ids, n_train, rng)
    t_train = time.perf_counter()
    pca = None
    if d_in != d:
        pca = faiss.PCAMatrix(d, d_in, 0, False)  # no whitening: distances stay (truncated) L2
        pca.train(train)
        train = pca.apply(train)
    quantizer = faiss.IndexFlatL2(d_in)
    coarse = faiss.Clustering(d_in, nlist)
    coarse.seed, coarse.niter = opts.seed, KMEANS_ITER
    coarse.train(train, quantizer)  # BLAS-sized work: all threads
    ivf = faiss.IndexIVFPQ(quantizer, d_in, nlist, m, NBITS)
    ivf.pq.cp.seed, ivf.pq.cp.niter = opts.seed, KMEANS_ITER
    ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_PER_CENTROID
    ivf.pq.cp.min_points_per_centroid = 1  # small pools train on what they have (FAISS would print a warning)
    # The sub-quantizers are M k-means of 2-3 dim points: tiny steps whose OpenMP barriers cost
    # 5-8x on a shared machine (2,000 vectors: 2.5 s on one thread, 12-17 s on two with other
    # jobs running), so they train on one thread. (The coarse quantizer is already trained.)
    with omp_threads(1):
        ivf.train(train)
    train = None
    index = faiss.IndexPreTransform(pca, ivf) if pca is not None else ivf
    train_s = time.perf_counter() - t_train
    for s in range(0, n, CHUNK):
        part = ids[s:s + CHUNK]
        index.add_with_ids(gather(rows, part), part)
        log.info("ivfpq: added %d of %d vectors", min(s + CHUNK, n), n)
    build_s = time.perf_counter() - t0
    factor = opts.refine_factor or REFINE_FACTOR
    params = {"nlist": int(nlist), "pq_m": int(m), "nbits": NBITS, "refine_factor": int(factor),
              "trained_on": int(n_train)}
    infos = {"kind": "ivfpq", "params": params, "dim": d, "pca_dims": int(d_in if d_in != d else 0),
             "ntotal": int(index.ntotal), "build_seconds": round(build_s, 3), "train_seconds": round(train_s, 3),
             "ram_bytes": pq_bytes(n, m, nlist, d_in), "recall_sample": int(min(opts.recall_sample, n)),
             "recall_queries": "midpoints of random pairs of pool vectors",
             "recall_against": "the exact shortlist in the index's space (after its PCA), refined by the full vectors",
             "options": asdict(opts), "faiss_version": faiss.__version__, "built_at": time.time(),
             **(extra or {})}
    return index, infos, ids, rng


def index_space(index):
    """The function an index applies to vectors before its IVF (its PCA), or None."""
    import faiss
    if not isinstance(index, faiss.IndexPreTransform):
        return None
    chain = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]

    def apply(x):
        for t in chain:
            x = t.apply(x)
        return x
    return apply


def tune_nprobe(vi, rows, ids: np.ndarray, opts, rng) -> None:
    """Set the smallest nprobe whose recall@1 reaches opts.target_recall on midpoint queries,
    or past which doubling it gains less than PLATEAU (opts.nprobe when given), recording the
    tuning in vi.infos. The plateau is where the codes, not the lists probed, limit recall: on
    1M replicated CIFAR pyramids recall@1 rose 0.834, 0.882, 0.897 at nprobe 16, 32, 64 and
    stayed at 0.897 up to 256, at 2x the search time per doubling.

    The reference is what this index would return if its IVF and codes were exact: the exact
    shortlist in the space it searches (after its PCA), refined by the full vectors. (Against
    exact search over the full vectors, recall@1 on midpoints stalls near 0.5 at any nprobe
    on CIFAR pyramids: what the PCA drops reorders them, which no nprobe can change. Recall
    over the full vectors of realistic queries is measured by benchmarks/bench_index.py.)"""
    import faiss
    from .refine import rerank
    ivf = faiss.extract_index_ivf(vi.index)
    nlist = int(ivf.nlist)
    pairs = np.sort(rng.choice(ids, size=(min(opts.recall_sample, len(ids)), 2)), axis=None)
    q = midpoint_queries(gather(rows, pairs), len(pairs) // 2, rng)
    t0 = time.perf_counter()
    ed, ei = exact_knn(rows, ids, q, shortlist(1, int(vi.infos["params"]["refine_factor"])),
                       transform=index_space(vi.index))
    exact = rerank(rows, q, ed, ei, 1)[0][:, 0]
    exact_s = time.perf_counter() - t0
    candidates = [opts.nprobe] if opts.nprobe else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    tuning, recall = [], 0.0
    for nprobe in candidates:
        ivf.nprobe = min(nprobe, nlist)
        t1 = time.perf_counter()
        recall = recall_at_1(vi.search(q, 1, device="cpu")[0][:, 0], exact)
        tuning.append({"nprobe": int(ivf.nprobe), "recall_at_1": recall,
                       "ms_per_1k_queries": 1000 * (time.perf_counter() - t1) / len(q) * 1000})
        if recall >= opts.target_recall or ivf.nprobe >= nlist:
            break
        if len(tuning) > 1 and recall - tuning[-2]["recall_at_1"] < PLATEAU:
            ivf.nprobe = tuning[-2]["nprobe"]  # the doubling bought nothing: keep the cheaper one
            recall = tuning[-2]["recall_at_1"]
            break
    vi.infos["params"]["nprobe"] = int(ivf.nprobe)
    vi.infos.update(recall_at_1=recall, tuning=tuning, exact_seconds=round(exact_s, 3))


def check_loaded(index, infos: dict, ids: np.ndarray, rows_of) -> bool:
    """Whether a loaded ivfpq index (untrusted files) is what its infos say: an IVF-PQ inside,
    parameters in range, ids sorted, distinct, non-negative, and rows of the index's width."""
    import faiss
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # RuntimeError when it is not one
    if not isinstance(ivf, faiss.IndexIVFPQ):
        return False
    p = infos["params"]
    factor = p.get("refine_factor")
    if not _int_in(factor, 1, 1024) or not _int_in(p.get("nprobe"), 1, ivf.nlist) or p.get("pq_m") != ivf.pq.M:
        return False
    if len(ids) and (ids[0] < 0 or not bool(np.all(ids[1:] > ids[:-1]))):
        return False
    if rows_of is not None:
        rows = rows_of()
        if rows.ndim != 2 or rows.shape[1] != index.d:
            return False
    ivf.nprobe = int(p["nprobe"])
    return True


def _int_in(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
