"""bench_index.py --pq-pool N: the IVF-PQ index kind with its refine step on N vectors (issue 17).

Pool: the real features (the database's kind, rgb-pyramid 255-dim by default, behind the index's
48-dim PCA) replicated to N vectors, each copy + gaussian noise of --replica-noise (5 %) of the
per-dimension std, written in chunks to a memory-mapped float32 file (row = id, like a
database's features.f32) under --tmp, never held in RAM. The index refines from that file.

Measured: build seconds (train, add, nprobe tuning), the index's RAM (codes + ids + coarse
centroids + PQ tables, counted from the FAISS structures, and the process's peak anonymous RSS
growth while building, sampled: file-backed pages of the memory map are page cache, not the
index), recall@1 and recall@10 of the refined results against exact search over the full
vectors (brute force in chunks on --exact-sample queries, which also times the baseline), and
queries/s for all --queries. Then a sweep of nprobe x refine factor on the exact sample, and,
for each further --pq-m, another build. Goal: recall@10 >= 0.95 after refine, index RAM <= 2 GB.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

import common

GOAL_RECALL10 = 0.95
GOAL_RAM = 2 << 30
CHUNK = 1 << 18


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class AnonPeak:
    """Samples this process's anonymous RSS (heap, not page cache of memory maps) every 50 ms."""

    def __enter__(self):
        self.start = self.peak = proc_status_kb("RssAnon")
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, proc_status_kb("RssAnon"))

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, proc_status_kb("RssAnon"))

    @property
    def delta_mb(self) -> float:
        return round((self.peak - self.start) / 1024, 1)


def make_pool(path: Path, real: np.ndarray, n: int, noise: float, seed: int) -> np.memmap:
    """N replicated + jittered real vectors in a float32 file (reused when its sidecar matches)."""
    dim = real.shape[1]
    meta = {"n": n, "dim": dim, "noise": noise, "seed": seed, "real": len(real),
            "real_sum": float(np.float64(real[:1000]).sum())}
    side = path.with_suffix(".json")
    if path.is_file() and side.is_file() and json.loads(side.read_text()) == meta \
            and path.stat().st_size == n * dim * 4:
        return np.memmap(path, np.float32, "r", shape=(n, dim))
    sd = real.std(axis=0).astype(np.float32)
    src = np.random.default_rng([seed, 1]).permutation(np.arange(n) % len(real))
    g = np.random.default_rng([seed, 2, int(noise * 1e6)])
    out = np.memmap(path, np.float32, "w+", shape=(n, dim))
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        out[s:e] = real[src[s:e]] + g.normal(0.0, noise, (e - s, dim)).astype(np.float32) * sd
    out.flush()
    del out
    side.write_text(json.dumps(meta))
    return np.memmap(path, np.float32, "r", shape=(n, dim))


def index_ram(vi) -> dict:
    """Bytes the index holds in RAM, from the FAISS structures."""
    import faiss
    ivf = faiss.downcast_index(faiss.extract_index_ivf(vi.index))
    n, nlist = int(ivf.ntotal), int(ivf.nlist)
    codes = n * int(ivf.code_size)
    ids = n * 8
    coarse = nlist * int(ivf.d) * 4
    pq_centroids = int(ivf.pq.M) * int(ivf.pq.ksub) * int(ivf.pq.dsub) * 4
    tables = int(ivf.precomputed_table.size()) * 4
    pca = 0
    if isinstance(vi.index, faiss.IndexPreTransform):
        t = faiss.downcast_VectorTransform(vi.index.chain.at(0))
        pca = (t.A.size() + t.b.size()) * 4
    py_ids = vi.ids.nbytes
    total = codes + ids + coarse + pq_centroids + tables + pca + py_ids
    return {"codes": codes, "faiss_ids": ids, "coarse_centroids": coarse, "pq_centroids": pq_centroids,
            "precomputed_tables": tables, "pca": pca, "sorted_ids_copy": py_ids, "total": total,
            "total_mb": common.mb(total), "ivf_flat_equivalent_mb": common.mb(n * (4 * int(ivf.d) + 8) + coarse + py_ids)}


def recalls(d, i, ex_d, ex_i) -> dict:
    """recall@1 (same id; and counting a result as near as the exact first, ties), recall@k.
    ex_d must come from the same kernel as d (faiss.knn's distances differ by rounding)."""
    n, k = ex_i.shape
    inter = sum(len(np.intersect1d(a, b)) for a, b in zip(i[:n, :k], ex_i))
    tie1 = (i[:n, 0] == ex_i[:, 0]) | (d[:n, 0] <= ex_d[:, 0] * (1 + 1e-5) + 1e-6)
    return {"recall_at_1": float((i[:n, 0] == ex_i[:, 0]).mean()), "recall_at_1_ties_ok": float(tie1.mean()),
            f"recall_at_{k}": float(inter / (n * k))}


def run(args, real: np.ndarray, queries: np.ndarray, fsrc: dict) -> dict:
    from mosaicdb.feature_kinds import PCA_DIMS, PCA_MIN_TILES
    from mosaicdb.index import IndexOptions, build_index
    from mosaicdb.index.ivfpq import exact_knn
    from mosaicdb.index.refine import exact_distances
    n, k = args.pq_pool, 10
    dim = real.shape[1]
    pca_dims = PCA_DIMS if dim > PCA_DIMS and n >= PCA_MIN_TILES else 0
    out: dict = {"vectors": n, "dim": dim, "pca_dims": pca_dims, "k": k, "queries": len(queries),
                 "features": fsrc, "loadavg_start": common.loadavg()}
    tmp = Path(args.tmp or "/tmp")
    path = tmp / f"bench_index_pq_{n}_{dim}_{args.replica_noise[0]:g}_{args.seed}.f32"
    t0 = time.perf_counter()
    pool = make_pool(path, real, n, args.replica_noise[0], args.seed)
    out["pool"] = {"file": str(path), "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 1),
                   "is": f"{n} vectors: each of the {len(real)} real vectors replicated, every copy + "
                         f"N(0, ({args.replica_noise[0]:g} * per-dimension std)^2); float32 memory map, row = id"}
    print(f"[pq] pool {n} x {dim} at {path} ({out['pool']['seconds']} s)", flush=True)
    ids = np.arange(n, dtype=np.int64)

    # Baseline: exact search over the full vectors, brute force in chunks (also the truth).
    sub = min(args.exact_sample, len(queries))
    la = common.loadavg()
    c0 = common.cpu_seconds()
    t0 = time.perf_counter()
    cache = path.with_suffix(f".exact{sub}.npz")  # kept with --keep-pool: a rerun reuses the truth and its timing
    key = float(np.float64(queries[:sub]).sum())
    if args.keep_pool and cache.is_file() and float(np.load(cache)["key"]) == key:
        z = np.load(cache)
        ex_d, ex_i, ex_s, cpu, la = z["d"], z["i"], float(z["seconds"]), float(z["cpu"]), z["loadavg"].tolist()
    else:
        ex_d, ex_i = exact_knn(pool, ids, queries[:sub], k)
        ex_s, cpu = time.perf_counter() - t0, common.cpu_since(c0)["self"]
        if args.keep_pool:
            np.savez(cache, d=ex_d, i=ex_i, seconds=ex_s, cpu=cpu, loadavg=np.array(la), key=key)
    # the truth's distances again with the refine's kernel, so that equal distances compare equal
    ex_d = exact_distances(pool, queries[:sub], ex_i, ex_d)
    out["exact"] = {"queries": sub, "seconds": round(ex_s, 2), "cpu_seconds": cpu,
                    "queries_per_s": round(sub / ex_s, 1), "loadavg_before": la,
                    "how": "mosaicdb.index.ivfpq.exact_knn: faiss.knn over chunks of 131,072 rows of the memory map"}
    print(f"[pq] exact: {sub} queries in {ex_s:.1f} s ({sub / ex_s:.1f} q/s)", flush=True)

    def rows():
        return pool

    def measure(vi, label: dict, all_queries: bool) -> dict:
        q = queries if all_queries else queries[:sub]
        c0 = common.cpu_seconds()
        t0 = time.perf_counter()
        d, i = vi.search(q, k, device="cpu")
        s = time.perf_counter() - t0
        r = {**label, "searched": len(q), "search_seconds": round(s, 2), "search_cpu_seconds": common.cpu_since(c0)["self"],
             "queries_per_s": round(len(q) / s, 1), "speedup_vs_exact": round((len(q) / s) / (sub / ex_s), 1),
             **recalls(d, i, ex_d, ex_i), "loadavg": common.loadavg()}
        return r

    builds = []
    for m in args.pq_m:
        rss0 = proc_status_kb("VmRSS")
        c0 = common.cpu_seconds()
        with AnonPeak() as anon:
            t0 = time.perf_counter()
            vi = build_index(None, ids, IndexOptions(kind="ivfpq", pq_m=m, nlist=args.pq_nlist,
                                                     refine_factor=args.pq_refine[0]),
                             pca_dims=pca_dims, rows=rows)
            wall = time.perf_counter() - t0
        inf = vi.infos
        b = {"pq_m": inf["params"]["pq_m"], "params": dict(inf["params"]), "build_seconds": inf["build_seconds"],
             "train_seconds": inf["train_seconds"], "build_plus_tuning_seconds": round(wall, 1),
             "build_cpu_seconds": common.cpu_since(c0)["self"], "tuner_recall_at_1": inf["recall_at_1"],
             "tuner_against": inf["recall_against"], "tuning": inf["tuning"],
             "tuner_exact_seconds": inf["exact_seconds"], "ram": index_ram(vi),
             "peak_anon_rss_growth_mb": anon.delta_mb, "vm_rss_growth_mb": round((proc_status_kb("VmRSS") - rss0) / 1024, 1),
             "rss_note": "peak_anon_rss_growth: heap while building (training sample, chunks, index); "
                         "VmRSS also counts the memory map's file pages, which are page cache"}
        print(f"[pq] M={b['pq_m']} {inf['params']}: build {wall:.1f} s, RAM {b['ram']['total_mb']} MB, "
              f"peak anon growth {anon.delta_mb} MB", flush=True)
        b["default_search"] = measure(vi, {"nprobe": inf["params"]["nprobe"],
                                           "refine_factor": inf["params"]["refine_factor"]}, all_queries=True)
        r = b["default_search"]
        print(f"[pq]   {len(queries)} queries: {r['search_seconds']} s ({r['queries_per_s']:,} q/s), "
              f"recall@1 {r['recall_at_1']:.4f} recall@10 {r['recall_at_10']:.4f}", flush=True)
        # What `db check` and every first use of a database's index probe: tiles searched at
        # their own features must come back (themselves, at distance 0) in a k = 1 search.
        probe = np.sort(np.random.default_rng([args.seed, 5]).choice(n, size=min(1000, n), replace=False))
        pd, pi = vi.search(np.ascontiguousarray(pool[probe]), 1, device="cpu")
        b["self_probe_found_at_1"] = float(((pi[:, 0] == probe) | (pd[:, 0] <= 1e-6)).mean())
        print(f"[pq]   own features found at k=1: {b['self_probe_found_at_1']:.3f}", flush=True)
        sweep = []
        import faiss
        ivf = faiss.extract_index_ivf(vi.index)
        tuned = ivf.nprobe
        for nprobe in args.pq_nprobe:
            for rf in args.pq_refine:
                ivf.nprobe = min(nprobe, ivf.nlist)
                vi.infos["params"]["refine_factor"] = rf
                r = measure(vi, {"nprobe": int(ivf.nprobe), "refine_factor": rf}, all_queries=False)
                sweep.append(r)
                print(f"[pq]   nprobe {ivf.nprobe:4d} refine x{rf:<3d}: recall@1 {r['recall_at_1']:.4f} "
                      f"recall@10 {r['recall_at_10']:.4f} {r['queries_per_s']:>8,.0f} q/s", flush=True)
        ivf.nprobe = tuned
        vi.infos["params"]["refine_factor"] = b["params"]["refine_factor"]
        b["sweep_on_exact_sample"] = sweep
        r = b["default_search"]
        b["meets_goal"] = bool(r["recall_at_10"] >= GOAL_RECALL10 and b["ram"]["total"] <= GOAL_RAM)
        builds.append(b)
        vi = None
        out["builds"] = builds
        common.write_results(args.out, "bench_index", {"ivfpq": out})
    out["goal"] = f"recall@10 >= {GOAL_RECALL10} after refine, index RAM <= {GOAL_RAM >> 30} GB"
    out["loadavg_end"] = common.loadavg()
    if not args.keep_pool:
        del pool
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        cache.unlink(missing_ok=True)
    return out
