"""FAISS mechanics: choose an index by pool size, measure its recall, persist it, search it.

Small pools use exact search (IndexFlatL2); large ones IVF-Flat with nlist ~ 4*sqrt(n)
and the smallest nprobe whose recall@1 against exact search on a sample reaches the target;
pools whose IVF-Flat vectors would pass a RAM budget IVF-PQ with an exact refine (ivfpq.py).
GPU is used only when faiss reports one (`index_cpu_to_all_gpus` silently returns an empty
index on a machine without a GPU, so it is never called without that check).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DeviceError, MosaicError, UsageError, check_int, check_number, choice
from ..io import AtomicFiles, UnsafeFile, read_regular_file
from . import ivfpq
from . import listorder
from .listorder import search_in_list_order
from .tuning import default_nlist, midpoint_queries, recall_at_1  # noqa: F401  (public here too)

log = logging.getLogger(__name__)

# A PCA in front of a flat index is fitted on at most this many pool vectors (a sample).
_PCA_TRAIN_MAX = 65536
MAX_INFOS_BYTES = 16 << 20  # index_infos.json (a database is untrusted input: bounded before reading)
SEARCH_BATCH = 16384  # FAISS is several times slower per query below ~4k queries a call
# Fewer queries than this are searched in FAISS's own order: splitting them over threads that
# each start FAISS's own OpenMP team costs more than list order saves (50,000 tiles, k 64:
# 27.2 against 19.5 us a query at 1,024 queries; equal at 4,096), and the matcher widens its
# cells 1,024 at a time.
LIST_ORDER_MIN = 4096
# IVF lists at least this long on average (the scan of the ivf kinds, index/scan.py). Measured:
# 1M tiles (244 a list), 43,552 real cells, one thread, 2.1 against 3.2-3.4 CPU-s; 50,000 tiles
# (49 a list), bench_match's first search of 65,536 cells on 2 threads, three alternating runs,
# the same mosaics: ivf16 0.72-0.80 against FAISS's 0.79-1.13 s, ivf 0.77-1.07 against 1.24-1.29
# (an earlier 0.96 against 0.77 s was measured before the scan's threads shared one BLAS limit);
# 20,000 and 30,000 tiles (39 and 59 a list, in memory): as fast or faster. FAISS's k-means
# wants 39 vectors a list, so every IVF index built here qualifies.
SCAN_MIN_LIST = 32
# The scan takes fewer queries than LIST_ORDER_MIN when their coarse assignment is given
# (search(coarse=)): the matcher's widening searches (1,024-4,096 cells each, the lists their
# first search found). Below LIST_ORDER_MIN the coarse assignment was the scan's loss against
# FAISS; given, bench_match (65,536 cells, 21 widening calls of 2,048) took 2.59-2.99 s against
# FAISS's 2.90-3.16 s (4.2-4.6 against 5.0-5.2 CPU-s), three alternating runs, the same mosaic.
SCAN_MIN_QUERIES = 256
# ... and at most this many results a query: each one kept costs heap updates, and FAISS was the
# faster from k 256 (1M pool, one photograph's 10,880 cells, 2 threads: scan against FAISS 0.36
# / 0.48 s at k 32, 0.43 / 0.52 at 64, 0.59 / 0.68 at 128, 1.03 / 0.89 at 256)
SCAN_MAX_K = 128
KINDS = ("auto", "flat", "ivf", "ivf16", "ivfpq")
BUILT_KINDS = KINDS[1:]
IVF_KINDS = ("ivf", "ivf16")  # IVF lists of whole vectors (float32, half floats)
INVERTED_KINDS = (*IVF_KINDS, "ivfpq")  # every kind with inverted lists (nprobe, list order)
# ivf16 (what auto builds between flat and ivfpq): half-float vectors behind a PCA to at most
# this many dims (not the features' 48), candidates re-ranked by the exact cost as for ivf.
# 32 dims: on the 1M pool, 65,536 real cells, it tuned to nprobe 32 and searched in 2.94 s
# (5.5 CPU-s) against ivf's 4.40 s (8.0 CPU-s) at recall@1 0.9985 (ivf 0.9995); its 32
# candidates hold 0.811 of the exact 32 (ivf 0.884, 24 dims 0.755). On 50,000 tiles, 6
# photographs at 64 and 128 cells, every repeat mode: PSNR@64, SSIM@64 and pyramid L1 within
# 0.015 dB / 0.0002 / 0.002e-3 of ivf's, mean cost within 0.05 %; bench_match's 65,536 cells
# 13-15 % faster (README, Index; benchmarks/bench_search_db.py).
IVF16_PCA_DIMS = 32
# auto builds IVF-PQ once an IVF-Flat index would hold more than this (vectors + ids): 1 GiB is
# ~5.3M tiles at the 48 PCA dims of the pyramid features (see README, Index)
IVF_RAM_MAX = 1 << 30
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class IndexOptions:
    """How the index is built: kind (auto: exact up to flat_max tiles, IVF of half floats (ivf16)
    while IVF-Flat vectors would fit ivf_ram_max bytes, IVF-PQ beyond), IVF lists and
    probes (0: chosen, nprobe tuned to target_recall on recall_sample queries), IVF-PQ
    sub-quantizers and refine shortlist factor (0: chosen), device."""
    kind: str = "auto"
    flat_max: int = 20_000          # pools up to this size get exact search
    ivf_ram_max: int = IVF_RAM_MAX  # bytes of IVF-Flat vectors + ids past which auto builds IVF-PQ
    pq_m: int = 0                   # ivfpq sub-quantizers (bytes per vector); 0: dims / 2
    refine_factor: int = 0          # ivfpq: candidates refined per result; 0: ivfpq.REFINE_FACTOR
    nlist: int = 0                  # 0: ~4*sqrt(n), a power of two in [64, 16384]
    nprobe: int = 0                 # 0: tuned to reach target_recall
    target_recall: float = 0.99
    recall_sample: int = 1000
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        choice("index kind", self.kind, {k: k for k in KINDS})
        choice("device", self.device, {k: k for k in DEVICES})
        if check_number("--target-recall", self.target_recall, 0, 1) == 0:
            raise UsageError("--target-recall must be in (0, 1]")
        check_int("--flat-max", self.flat_max, 0)
        check_int("--ivf-ram-max", self.ivf_ram_max, 0)
        check_int("--pq-m", self.pq_m, 0, 4096)
        check_int("--refine-factor", self.refine_factor, 0, 1024)
        check_int("--nlist", self.nlist, 0, 1 << 20)
        check_int("--nprobe", self.nprobe, 0, 1 << 20)
        check_int("recall_sample", self.recall_sample, 1)
        check_int("seed", self.seed, 0)


def exclusion_selector(exclude: np.ndarray):
    """(a FAISS selector of every id not in `exclude`, the array it points into): keep the array
    alive while the selector is used, FAISS holds a raw pointer to it."""
    faiss = _faiss()
    excl = np.ascontiguousarray(exclude, dtype=np.int64)
    if len(excl) > BITMAP_FROM:
        # A bit test per scanned vector instead of a hash lookup: half the time of an IVF search
        # over all lists with 30,000 of 50,000 ids excluded (issue 19).
        excl = np.packbits(np.bincount(excl, minlength=int(excl.max()) + 1).astype(bool), bitorder="little")
        # FAISS takes the bitmap's length in bytes; given its length in bits (as before 2026-11-30)
        # it read 7/8 of its bits past the array: ids above the largest excluded one were left
        # out or not at random, so a matcher's widening searches were not repeatable.
        return faiss.IDSelectorNot(faiss.IDSelectorBitmap(excl.size, faiss.swig_ptr(excl))), excl
    return faiss.IDSelectorNot(faiss.IDSelectorBatch(len(excl), faiss.swig_ptr(excl))), excl


class IndexWriteError(MosaicError):
    """The index file could not be written (a full disk, an I/O error)."""


def _faiss():
    import faiss
    return faiss


def resolve_device(device: str) -> str:
    ngpu = _faiss().get_num_gpus()
    if device == "cuda" and ngpu == 0:
        raise DeviceError("--device cuda: faiss reports no GPU (faiss-cpu is installed, or no CUDA device "
                         "is visible); use --device cpu, or swap in faiss-gpu on a GPU machine (see README)")
    if device == "auto":
        return "cuda" if ngpu > 0 else "cpu"
    return device


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    faiss = _faiss()
    flat = faiss.IndexFlatL2(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    d, i = flat.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(vectors)))
    return d, np.where(i >= 0, ids[np.clip(i, 0, None)], -1)


# Excluded ids from which search() tests membership in a bitmap rather than a hash set.
BITMAP_FROM = 1024
# Candidates (queries x shortlist) refined per batch of an ivfpq search: bounds its memory.
REFINE_ENTRIES = 1 << 23  # 96 MB of candidates; 4,096 queries a batch at k = 32 x 64


class Coarse(NamedTuple):
    """Queries prepared for an IVF search: in the index's space (after its PCA), and the lists
    each one probes at some nprobe with its squared distances to their centroids."""
    x: np.ndarray      # (n, d) float32
    dist: np.ndarray   # (n, nprobe) float32
    lists: np.ndarray  # (n, nprobe) int64

    def take(self, rows: np.ndarray) -> Coarse:
        return Coarse(self.x[rows], self.dist[rows], self.lists[rows])

    def fits(self, n: int, nprobe: int, d: int) -> bool:
        return self.x.shape == (n, d) and self.dist.shape == self.lists.shape == (n, nprobe)


class VectorIndex:
    """A FAISS index over tile features whose ids are tile ids, plus its infos."""

    def __init__(self, index, infos: dict, ids: np.ndarray, rows=None):
        self.index = index
        self.infos = infos
        self.ids = ids
        self.rows = rows  # () -> full vectors by tile id (row = id): what the ivfpq kind refines from
        self._search_index = None
        self._search_device = None
        self._decoded = None  # scan.DecodedLists of an IVF kind, made at its first CPU search
        self._decode_lock = threading.Lock()

    @property
    def refines(self) -> bool:
        """Whether search() ranks a shortlist by exact distances over the full vectors."""
        return self.infos.get("kind") == "ivfpq"

    @property
    def inverted(self) -> bool:
        """Whether the index searches inverted lists (an nprobe, IVF search parameters)."""
        return self.infos.get("kind") in INVERTED_KINDS

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _for_search(self, device: str):
        device = resolve_device(device)  # on every call: the cached copy may be for another device
        if self._search_index is None or self._search_device != device:
            if device == "cuda":
                faiss = _faiss()
                self._search_index = faiss.index_cpu_to_all_gpus(self.index)
                if self._search_index.ntotal != self.index.ntotal:
                    raise RuntimeError("faiss GPU copy of the index is incomplete")
            else:
                self._search_index = self.index
            self._search_device = device
        return self._search_index

    def search(self, queries: np.ndarray, k: int, device: str = "auto", exclude: np.ndarray | None = None,
               coarse: Coarse | None = None, ranked: bool = True):
        """(distances (n, k) float32 squared L2, ids (n, k) int64, -1 where fewer than k).

        `exclude`: tile ids never to return (searched on the CPU index, with a FAISS selector).
        `coarse`: `self.coarse(queries)` taken earlier for these same queries (the matcher's
        widening searches cells its first search has assigned already); used by the scan
        when the index's nprobe has not changed since, ignored otherwise. `ranked=False`: the
        caller ranks each row again by its own distances (the matcher's exact re-rank), so rows
        may come unsorted, missing results anywhere in them (the scan's heaps as they are)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._scans(len(queries), device, k, coarse is not None):
            # long lists of whole vectors: scanned list by list with matrix products (index/scan.py)
            return self._scan(queries, k, exclude, coarse, ranked)
        n = len(queries)
        dist = np.empty((n, k), np.float32)
        ids = np.empty((n, k), np.int64)
        inner_k, batch, rows = k, SEARCH_BATCH, None
        if self.refines:
            if self.rows is None:
                raise UsageError("an ivfpq index refines from the tiles' full vectors: load it with "
                                 "VectorIndex.load(folder, rows=db.features)")
            rows = self.rows()
            inner_k = ivfpq.shortlist(k, int(self.infos["params"]["refine_factor"]))
            batch = max(1, min(SEARCH_BATCH, REFINE_ENTRIES // inner_k))
        params = None
        if exclude is not None and len(exclude):
            faiss = _faiss()
            sel, excl = exclusion_selector(exclude)
            if self.inverted:
                params = faiss.SearchParametersIVF(sel=sel, nprobe=int(faiss.extract_index_ivf(self.index).nprobe))
            else:
                params = faiss.SearchParameters(sel=sel)
            index = self.index  # GPU indexes take no selectors
        else:
            index = self._for_search(device)
        if self.inverted and index is self.index and n >= LIST_ORDER_MIN:
            # on the CPU, IVF lists are scanned with the queries in list order (listorder.py)
            finish = None if rows is None else (lambda qs, d, i: _rerank()(rows, qs, d, i, k))
            dist, ids = search_in_list_order(index, queries, inner_k, params=params, batch=batch,
                                             finish=finish, k_out=k)
        else:
            for s in range(0, n, batch):
                d, i = index.search(queries[s:s + batch], inner_k, params=params)
                if rows is not None:
                    d, i = _rerank()(rows, queries[s:s + batch], d, i, k)
                dist[s:s + batch], ids[s:s + batch] = d, i
        if params is not None:
            del sel, excl  # kept alive until here: FAISS holds raw pointers
        return dist, ids

    def _scans(self, n: int, device: str, k: int = 32, coarse: bool = False) -> bool:
        """Whether search() of n queries for k results goes through index/scan.py: an IVF kind
        of whole vectors, on the CPU, enough queries (fewer when their coarse assignment is
        given), few enough results, lists long enough (a rule of the index, n and k alone, so
        that a search gives the same results whatever the threads)."""
        return n >= (SCAN_MIN_QUERIES if coarse else LIST_ORDER_MIN) and self._scannable(device, k)

    def _scannable(self, device: str, k: int) -> bool:
        """_scans() but for the number of queries: the kind, the device, k, the lists' length."""
        if self.infos.get("kind") not in IVF_KINDS or k > SCAN_MAX_K or resolve_device(device) != "cpu":
            return False
        return self.ntotal >= SCAN_MIN_LIST * int(_faiss().extract_index_ivf(self.index).nlist)

    def coarse(self, queries: np.ndarray, device: str = "auto") -> Coarse | None:
        """The queries in the index's space and the lists a search of them probes at the index's
        nprobe as set now (`Coarse`), to give to search(coarse=) of the same queries (or of
        some: `Coarse.take`) later; None where searches do not use one (not an IVF kind of
        whole vectors, or not on the CPU)."""
        if not self._scannable(device, 1):
            return None
        ivf = _faiss().extract_index_ivf(self.index)
        x = self._space(queries)
        return Coarse(x, *self._coarse(x, max(1, min(int(ivf.nprobe), int(ivf.nlist)))))

    def _space(self, queries: np.ndarray) -> np.ndarray:
        space = ivfpq.index_space(self.index)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return np.ascontiguousarray(space(queries) if space is not None else queries, dtype=np.float32)

    def _coarse(self, x: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        if len(x):
            return listorder.coarse_assign(self.index, x, nprobe)
        return np.zeros((0, nprobe), np.float32), np.zeros((0, nprobe), np.int64)

    def _scan(self, queries: np.ndarray, k: int, exclude: np.ndarray | None, coarse=None, ranked=True):
        """search() of an IVF kind on the CPU: FAISS's coarse assignment at the index's nprobe
        (as set now; or `coarse`, taken before at that nprobe), then scan.scan over the decoded
        lists, `exclude` as a bitmap."""
        from . import scan
        ivf = _faiss().extract_index_ivf(self.index)
        with self._decode_lock:
            if self._decoded is None:
                self._decoded = scan.DecodedLists(ivf)
            lists = self._decoded
        nprobe = max(1, min(int(ivf.nprobe), int(ivf.nlist)))
        n = len(queries)
        if coarse is not None and coarse.fits(n, nprobe, int(ivf.d)):
            x, probe_dist, probes = coarse
        else:
            x = self._space(queries)
            probe_dist, probes = self._coarse(x, nprobe)
        bitmap = None
        if exclude is not None and len(exclude):
            excl = np.asarray(exclude, dtype=np.int64)
            # ids the index does not hold exclude nothing: the bitmap stays as long as its ids
            excl = excl[(excl >= 0) & (excl <= (int(self.ids.max()) if len(self.ids) else -1))]
            bitmap = np.zeros(int(excl.max()) + 1 if len(excl) else 0, np.uint8)
            bitmap[excl] = 1
        return scan.scan(lists, x, probe_dist, probes, k, bitmap, threads=listorder.threads(), ranked=ranked)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add `vectors` under tile `ids` (in place)."""
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
            self.ids = np.union1d(self.ids, ids)
            self._search_index = None
            self._decoded = None

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors of tile `ids` (in place)."""
        if len(ids):
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))
            self.ids = np.setdiff1d(self.ids, ids)
            self._search_index = None
            self._decoded = None

    def save(self, folder: Path) -> None:
        """Write index, ids and infos, each to a temporary name and renamed into place."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)

        def write_ids(path):
            with open(path, "wb") as f:
                np.save(f, self.ids)

        with AtomicFiles() as group:  # the three files are replaced together, the infos last
            try:
                write_faiss(self.index, group.temp(folder / "index.faiss"))
            except RuntimeError as e:  # faiss reports a full disk or an I/O error this way
                raise IndexWriteError(f"cannot write the index to {folder}: {str(e).strip().splitlines()[-1]}") \
                    from None
            write_ids(group.temp(folder / "ids.npy"))
            group.temp(folder / "index_infos.json").write_text(json.dumps(self.infos, indent=2))
            group.commit(order=[folder / "index_infos.json"])

    @classmethod
    def load(cls, folder: Path, rows=None) -> "VectorIndex | None":
        """The index saved in `folder`, or None when it is missing, unreadable or half-saved.
        `rows`: () -> the full vectors by tile id, which an ivfpq index refines from."""
        folder = Path(folder)
        # None means "no usable index": the database rebuilds it from its features
        infos = read_infos(folder)
        if infos is None:
            return None
        try:
            ids = np.load(folder / "ids.npy", allow_pickle=False)
            if not (isinstance(infos.get("params", {}), dict) and infos.get("kind") in BUILT_KINDS
                    and ids.ndim == 1 and ids.dtype.kind in "iu" and _infos_well_typed(infos)):
                return None
            index = read_faiss(folder / "index.faiss")
            if index.ntotal != len(ids) or infos.get("ntotal", index.ntotal) != index.ntotal:
                return None  # files from different saves (a kill between the renames): rebuild
            if infos["kind"] in IVF_KINDS:
                ivf = _faiss().extract_index_ivf(index)  # RuntimeError when it is not one
                inner = _faiss().downcast_index(ivf)
                half = isinstance(inner, _faiss().IndexIVFScalarQuantizer)
                if half != (infos["kind"] == "ivf16"):
                    return None  # infos that do not say what the file holds
                if half and int(inner.sq.qtype) != int(_faiss().ScalarQuantizer.QT_fp16):
                    return None  # not half floats (a foreign file): index/scan.py decodes only those
                if int(inner.metric_type) != int(_faiss().METRIC_L2):
                    return None  # inner products (a foreign file): every search here is squared L2
                nprobe = infos["params"].get("nprobe", ivf.nprobe)
                if isinstance(nprobe, bool) or not isinstance(nprobe, int) or not 1 <= nprobe <= ivf.nlist:
                    return None
                ivf.nprobe = nprobe
            elif infos["kind"] == "ivfpq" and not ivfpq.check_loaded(index, infos, ids, rows):
                return None
        except (OSError, json.JSONDecodeError, ValueError, RuntimeError, UnicodeDecodeError, TypeError, KeyError,
                AttributeError, RecursionError, UnsafeFile):
            return None
        return cls(index, infos, ids, rows=rows)


def _infos_well_typed(infos: dict) -> bool:
    """Whether the figures other code reads from `infos` (int(), formatting) have their types:
    an index whose infos say otherwise is rebuilt rather than failing `make` or `db stats`."""
    counts = ("pca_dims", "features_pca_dims", "ntotal_at_build", "ntotal")
    if not all(is_count(infos[k]) for k in counts if k in infos):
        return False
    recall = infos.get("recall_at_1")
    return recall is None or (isinstance(recall, (int, float)) and not isinstance(recall, bool))


def is_count(v) -> bool:
    """Whether an untrusted JSON value is a count: an int (not a bool) of 0 or more."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_infos(folder: Path) -> dict | None:
    """The index_infos.json saved in `folder` (a JSON object, bounded before reading), or None
    when it is missing or unreadable; read on its own too, to learn what a damaged index was."""
    try:
        infos = json.loads(read_regular_file(Path(folder) / "index_infos.json", MAX_INFOS_BYTES))
    except (OSError, json.JSONDecodeError, ValueError, UnicodeDecodeError, RecursionError, UnsafeFile):
        return None
    return infos if isinstance(infos, dict) else None


def _rerank():
    """The refine kernel, imported when first needed: numba stays out of processes that only
    render (tests/test_render_cells.py)."""
    from .refine import rerank
    return rerank


def build_index(vectors: np.ndarray | None, ids: np.ndarray, opts: IndexOptions = IndexOptions(),
                extra: dict | None = None, pca_dims: int = 0, *, rows=None) -> VectorIndex:
    """Build, tune and measure an index over `vectors` (n, d) with tile `ids` (n,).

    `pca_dims` > 0: a PCA to that many dims, fitted here on the pool, is part of the index
    (FAISS IndexPreTransform): vectors and queries stay full-size, the index projects them.
    `rows`: () -> the full vectors by tile id (row = id), e.g. a database's memory-mapped
    features; `vectors` may then be None (they are rows()[ids]). The ivfpq kind needs them (it
    refines from them, and reads them a chunk at a time instead of all at once); without them
    it may use `vectors` only when ids are 0..n-1.
    """
    ids = np.asarray(ids)
    n = len(ids)
    d = int(vectors.shape[1] if vectors is not None else rows().shape[1])
    d_in = pca_dims if 0 < pca_dims < d else d  # what the inner index stores
    kind = ivfpq.resolve_kind(opts.kind, n, d_in, opts.flat_max, opts.ivf_ram_max)
    features_pca = int(d_in if d_in != d else 0)  # the PCA the features ask for (feature_kinds)
    if kind == "ivf16" and d_in != d:
        d_in = min(d_in, IVF16_PCA_DIMS)
    if kind == "ivfpq":
        if rows is None:
            if not np.array_equal(ids, np.arange(n)):
                raise UsageError("the ivfpq index refines from the full vectors by tile id: pass rows= "
                                 "(row = tile id) when ids are not 0..n-1")
            whole = np.ascontiguousarray(vectors, dtype=np.float32)
            rows = lambda: whole  # noqa: E731
        index, infos, ids, rng = ivfpq.build_ivfpq(rows, ids, opts, pca_dims, extra)
        vi = VectorIndex(index, infos, ids, rows=rows)
        ivfpq.tune_nprobe(vi, rows(), ids, opts, rng)
        return vi
    if vectors is None:
        vectors = rows()[ids]
    faiss = _faiss()
    t0 = time.perf_counter()
    rng = np.random.default_rng(opts.seed)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    params: dict = {}
    if kind in IVF_KINDS:
        nlist = max(1, min(opts.nlist or default_nlist(n), n // 39 or 1))  # FAISS wants >= 39 points a list
        if opts.nlist and nlist != opts.nlist:
            log.warning("--nlist %d is more lists than %d tiles can train (39 a list): using %d", opts.nlist, n, nlist)
        quantizer = faiss.IndexFlatL2(d_in)
        if kind == "ivf":
            index = ivf = faiss.IndexIVFFlat(quantizer, d_in, nlist, faiss.METRIC_L2)
        else:
            index = ivf = faiss.IndexIVFScalarQuantizer(quantizer, d_in, nlist, faiss.ScalarQuantizer.QT_fp16,
                                                        faiss.METRIC_L2)
        train_n = min(n, 64 * nlist)
        ivf.cp.seed = opts.seed
        # under 39 tiles (one list) FAISS would print its own warning to stderr, past the CLI
        ivf.cp.min_points_per_centroid = 1
        params = {"nlist": nlist, "trained_on": int(train_n)}
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(d_in))
        train_n = min(n, _PCA_TRAIN_MAX)
    train = vectors[np.sort(rng.choice(n, train_n, replace=False))] if train_n < n else vectors
    pca = None
    if d_in != d:
        pca = faiss.PCAMatrix(d, d_in, 0, False)  # no whitening: distances stay (truncated) L2
        index = faiss.IndexPreTransform(pca, index)
    if kind in IVF_KINDS or pca is not None:
        index.train(train)
    index.add_with_ids(vectors, ids.astype(np.int64))
    build_s = time.perf_counter() - t0
    recall, tuning = 1.0, []
    if n:
        q = midpoint_queries(vectors, opts.recall_sample, rng)
        # recall of the index against exact search in the space it searches (after the PCA)
        space = (lambda x: pca.apply(x)) if pca is not None else (lambda x: x)
        first = _FirstFound(index, space(vectors), ids, q, space(q), exact_distances=kind == "ivf16")
        exact = first.exact
        if kind in IVF_KINDS:
            candidates = [opts.nprobe] if opts.nprobe else [1, 2, 4, 8, 16, 32, 64, 128, 256]
            for nprobe in candidates:
                nprobe = min(nprobe, params["nlist"])
                ivf.nprobe = nprobe
                t1 = time.perf_counter()
                recall = recall_at_1(first(), exact)
                tuning.append({"nprobe": nprobe, "recall_at_1": recall,
                               "ms_per_1k_queries": 1000 * (time.perf_counter() - t1) / len(q) * 1000})
                if recall >= opts.target_recall or nprobe >= params["nlist"]:
                    break
            params["nprobe"] = int(ivf.nprobe)
        else:
            recall = recall_at_1(index.search(q, 1)[0][:, 0], exact)
    infos = {
        "kind": kind, "params": params, "dim": int(d), "pca_dims": int(d_in if pca is not None else 0),
        "features_pca_dims": features_pca,
        "ntotal": int(index.ntotal),
        "build_seconds": round(build_s, 3), "recall_at_1": recall, "recall_sample": int(min(opts.recall_sample, n)),
        "recall_queries": "midpoints of random pairs of pool vectors", "tuning": tuning,
        "options": asdict(opts), "faiss_version": faiss.__version__, "built_at": time.time(), **(extra or {}),
    }
    return VectorIndex(index, infos, np.sort(ids.astype(np.int64)), rows=rows)


class _FirstFound:
    """Distance to the first result of the index for each tuning query, and (`exact`) to the
    first of exact search in the space the index searches. With `exact_distances` (ivf16,
    whose distances come from half floats) both are recomputed from the float vectors, so a
    query counts as found when the index returns its nearest vector, not off by rounding."""

    def __init__(self, index, space_vectors, ids, q, space_q, exact_distances: bool):
        self.index, self.sv, self.q, self.sq, self.recompute = index, space_vectors, q, space_q, exact_distances
        self.sorter = np.argsort(ids, kind="stable")
        self.sorted_ids = ids[self.sorter]
        d, i = exact_search(space_vectors, ids, space_q, 1)
        self.exact = self._distance(d[:, 0], i[:, 0])

    def _distance(self, d: np.ndarray, found: np.ndarray) -> np.ndarray:
        if not self.recompute:
            return d
        at = np.clip(np.searchsorted(self.sorted_ids, found), 0, len(self.sorted_ids) - 1)
        diff = self.sq.astype(np.float64) - self.sv[self.sorter[at]]
        return np.where(found >= 0, (diff * diff).sum(axis=1), np.inf).astype(np.float32)

    def __call__(self) -> np.ndarray:
        d, i = self.index.search(self.q, 1)
        return self._distance(d[:, 0], i[:, 0])


def _utf8(path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def write_faiss(index, path) -> None:
    """faiss.write_index, also under a path that is not UTF-8 (faiss takes only UTF-8 text:
    such a path goes through Python's file I/O, serialized in memory)."""
    faiss = _faiss()
    if _utf8(path):
        faiss.write_index(index, str(path))
    else:
        with open(path, "wb") as f:
            f.write(faiss.serialize_index(index).tobytes())


def read_faiss(path):
    """faiss.read_index, also under a path that is not UTF-8 (see write_faiss)."""
    faiss = _faiss()
    if _utf8(path):
        return faiss.read_index(str(path))
    with open(path, "rb") as f:
        return faiss.deserialize_index(np.frombuffer(f.read(), np.uint8))
