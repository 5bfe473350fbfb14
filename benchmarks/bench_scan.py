"""Benchmark: faster scans behind the PCA for the search `mosaic make` runs (issue 17).

On a database with a saved IVF index (PCA + IVF-Flat: the baseline, searched as make searches
it: k candidates, re-ranked by the exact cost on the full stored vectors), the same PCA and
coarse centroids with other codes in the lists, each searched for a shortlist of L that is
re-ranked by the exact cost (the refine kernel of the ivfpq kind) down to k:

- `fs{M}`: IVF-PQ FastScan, M 4-bit sub-quantizers (M/2 bytes a vector), bbs 32;
- `sq8`: 8-bit scalar quantizer codes; `fp16`: half floats.

Queries: real target cells (Kodak + wikimedia_pd at 32, 64 and 128 across, `cell_data` as make
computes them), a seeded sample of --queries; truth: exact search of --exact-queries of them
on the full vectors (faiss brute force, its 8 nearest ranked again by the exact kernel).
Seconds are best of --repeat, with CPU seconds, OpenMP threads 2; ratios against the baseline
at the database's own nprobe measured in the same run. The saved index is only read.

    python benchmarks/bench_scan.py                          # the 1M pool of pool_1m.py
    python benchmarks/bench_scan.py --db /tmp/mosaicdb-bench-match-vs/rgb.db
    python benchmarks/bench_scan.py --quick                  # the 20,000-tile pool, fewer settings
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_tuner_queries import exact_first, real_cells  # noqa: E402

NAME = "bench_scan"
BATCH = 8192
_ALIVE = []


def codes_index(kind: str, quantizer, nlist: int, dim: int):
    import faiss
    q = faiss.clone_index(quantizer)
    if kind.startswith("fs"):
        m = int(kind[2:])
        index = faiss.IndexIVFPQFastScan(q, dim, nlist, m, 4, faiss.METRIC_L2, 32)
    else:
        qt = {"sq8": faiss.ScalarQuantizer.QT_8bit, "fp16": faiss.ScalarQuantizer.QT_fp16}[kind]
        index = faiss.IndexIVFScalarQuantizer(q, dim, nlist, qt, faiss.METRIC_L2)
    _ALIVE.append(q)  # the IVF holds a raw pointer to it: Python keeps it alive
    return index


def build(kind, quantizer, nlist, pca, rows, ids, rng, train_n=65536):
    t0 = time.perf_counter()
    c0 = common.cpu_seconds()
    index = codes_index(kind, quantizer, nlist, pca.d_out)
    train = pca.apply(np.ascontiguousarray(rows[np.sort(rng.choice(ids, min(train_n, len(ids)), replace=False))]))
    index.train(train)
    for s in range(0, len(ids), 1 << 17):
        part = ids[s:s + (1 << 17)]
        index.add_with_ids(pca.apply(np.ascontiguousarray(rows[part])), part)
    return index, time.perf_counter() - t0, common.cpu_since(c0)["self"]


def search(index, pca, rows, q, shortlist, k, nprobe):
    """k nearest by exact cost among the shortlist the codes give (as make gets them)."""
    from mosaicdb.index.refine import rerank
    index.nprobe = nprobe
    out_d = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), BATCH):
        part = q[s:s + BATCH]
        x = part if pca is None else pca.apply(part)
        d, i = index.search(x, shortlist)
        out_d[s:s + BATCH], out_i[s:s + BATCH] = rerank(rows, part, d, i, k)
    return out_d, out_i


def measure(fn, repeat):
    best = None
    for _ in range(repeat):
        c0, t0 = common.cpu_seconds(), time.perf_counter()
        out = fn()
        w, c = time.perf_counter() - t0, common.cpu_since(c0)["self"]
        if best is None or w < best[0]:
            best = (w, c, out)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--queries", type=int, default=65536)
    ap.add_argument("--exact-queries", type=int, default=2048)
    ap.add_argument("-k", type=int, default=32)
    ap.add_argument("--baseline-nprobe", default="8,16,32")
    ap.add_argument("--kinds", default="fs24,fs48,sq8")
    ap.add_argument("--nprobe", default="8,16,32")
    ap.add_argument("--shortlist", default="32,64,128")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(common.default_out(NAME)))
    a = ap.parse_args(argv)
    if a.quick:
        a.queries, a.exact_queries, a.repeat, a.kinds, a.shortlist = 8192, 512, 1, "fs24", "64"
    import faiss
    from mosaicdb import TileDB
    faiss.omp_set_num_threads(2)
    data = common.data_dir(a.data)
    if a.db is None:
        import pool_1m
        a.db = str(pool_1m.ensure_pool(20_000 if a.quick else 1_000_000, data=data))
    la0 = common.loadavg()
    rng = np.random.default_rng(0)
    runs = []
    with TileDB.open(a.db, readonly=True) as db:
        saved = db.ensure_index()
        ivf = faiss.extract_index_ivf(saved.index)
        tuned, nlist = int(ivf.nprobe), int(ivf.nlist)
        pca = faiss.downcast_VectorTransform(saved.index.chain.at(0))
        ids = db.ids()
        rows = np.asarray(db.features()[:])
        cells = real_cells(db, data)
        q = np.ascontiguousarray(cells[rng.choice(len(cells), min(a.queries, len(cells)), replace=False)])
        sub = q[:a.exact_queries]
        truth = exact_first(rows, ids, sub, None)
        print(f"{a.db}: {len(ids):,} tiles, nlist {nlist}, tuned nprobe {tuned}, {len(q):,} real cells", flush=True)

        def record(label, kind, nprobe, shortlist, fn, extra=None):
            w, c, (d, i) = measure(fn, a.repeat)
            n = len(sub)
            r1 = float((d[:n, 0] <= truth * (1 + 1e-5) + 1e-6).mean())
            r = {"setting": label, "kind": kind, "nprobe": nprobe, "shortlist": shortlist, "seconds": round(w, 3),
                 "cpu_seconds": round(c, 2), "recall_at_1": round(r1, 4), "loadavg": common.loadavg(), **(extra or {})}
            runs.append(r)
            print(f"  {label}: {w:.2f} s ({c:.2f} CPU-s) recall@1 {r1:.4f}", flush=True)

        for nprobe in [int(x) for x in a.baseline_nprobe.split(",")]:
            record(f"ivf-flat nprobe {nprobe}", "ivf", nprobe, a.k,
                   lambda: search(ivf, pca, rows, q, a.k, a.k, nprobe))
        for kind in a.kinds.split(","):
            index, bw, bc = build(kind, ivf.quantizer, nlist, pca, rows, ids, rng)
            print(f" {kind}: built in {bw:.1f} s ({bc:.1f} CPU-s), {index.ntotal:,} vectors", flush=True)
            for nprobe in [int(x) for x in a.nprobe.split(",")]:
                for sl in [int(x) for x in a.shortlist.split(",")]:
                    record(f"{kind} nprobe {nprobe} shortlist {sl}", kind, nprobe, sl,
                           lambda: search(index, pca, rows, q, sl, a.k, nprobe),
                           {"build_seconds": round(bw, 1), "build_cpu_seconds": round(bc, 1)})
            del index
        base = next(r for r in runs if r["kind"] == "ivf" and r["nprobe"] == tuned) if any(
            r["kind"] == "ivf" and r["nprobe"] == tuned for r in runs) else runs[0]
        for r in runs:
            r["speedup_vs_baseline"] = round(base["seconds"] / r["seconds"], 2)
            r["cpu_speedup_vs_baseline"] = round(base["cpu_seconds"] / r["cpu_seconds"], 2)
        res = {"db": a.db, "tiles": len(ids), "nlist": nlist, "tuned_nprobe": tuned, "k": a.k,
               "queries": len(q), "exact_queries": len(sub), "baseline": base["setting"], "runs": runs,
               "loadavg_before": la0, "loadavg_after": common.loadavg()}
    print(f"wrote {common.write_results(Path(a.out), NAME, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
