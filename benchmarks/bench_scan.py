"""Benchmark: faster scans behind the PCA for the search `mosaic make` runs (issue 17).

On a database with a saved IVF index (PCA + IVF-Flat: the baseline, searched as make searched
it before issue 17e, FAISS's own query order: k candidates, re-ranked by the exact cost on the
full stored vectors), other scans, each searched for a shortlist of L that is re-ranked by the
exact cost (the refine kernel of the ivfpq kind) down to k, the queries in list order
(mosaicdb/index/listorder.py, what VectorIndex.search does now):

- `flat`: float32 vectors (IVF-Flat); `fp16`: half floats; `sq8`: 8-bit scalar quantizer;
- `fs{M}`: IVF-PQ FastScan, M 4-bit sub-quantizers (M/2 bytes a vector), bbs 32;
- each behind the saved PCA and coarse centroids, or (`--pca-dims`) a new PCA to fewer dims
  with its own coarse k-means (same nlist, 64 training vectors a list, 10 iterations).

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
import common
from bench_tuner_queries import exact_first, ivf_index, real_cells

NAME = "bench_scan"
BATCH = 8192
_ALIVE = []


def codes_index(kind: str, quantizer, nlist: int, dim: int):
    import faiss
    q = faiss.clone_index(quantizer)
    if kind == "flat":
        index = faiss.IndexIVFFlat(q, dim, nlist, faiss.METRIC_L2)
    elif kind.startswith("fs"):
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


def search(index, pca, rows, q, shortlist, k, nprobe, list_order=True):
    """k nearest by exact cost among the shortlist the codes give (as make gets them)."""
    import faiss

    from mosaicdb.index.listorder import search_in_list_order
    from mosaicdb.index.refine import rerank
    index.nprobe = nprobe
    full = faiss.IndexPreTransform(pca, index)
    _ALIVE.append(full)
    if list_order:
        return search_in_list_order(full, q, shortlist, batch=BATCH * 2,
                                    finish=lambda qs, d, i: rerank(rows, qs, d, i, k), k_out=k)
    out_d = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), BATCH * 2):
        part = q[s:s + BATCH * 2]
        d, i = full.search(part, shortlist)
        out_d[s:s + BATCH * 2], out_i[s:s + BATCH * 2] = rerank(rows, part, d, i, k)
    return out_d, out_i


def new_space(rows, ids, dims, nlist, rng):
    """A PCA to `dims` fitted on a sample and a coarse quantizer k-means-trained behind it."""
    import faiss
    d = rows.shape[1]
    pca = faiss.PCAMatrix(d, dims, 0, False)
    sample = np.ascontiguousarray(rows[np.sort(rng.choice(ids, min(len(ids), 64 * nlist), replace=False))])
    pca.train(sample)
    x = pca.apply(sample)
    quantizer = faiss.IndexFlatL2(dims)
    km = faiss.Clustering(dims, nlist)
    km.seed, km.niter = 0, 10
    km.train(x, quantizer)
    _ALIVE.extend([pca, quantizer])
    return pca, quantizer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--queries", type=int, default=65536)
    ap.add_argument("--exact-queries", type=int, default=2048)
    ap.add_argument("-k", type=int, default=32)
    ap.add_argument("--baseline-nprobe", default="8,16,32")
    ap.add_argument("--kinds", default="fp16,sq8", help="codes behind the saved PCA (flat, fp16, sq8, fs24, fs48)")
    ap.add_argument("--pca-dims", default="32,24", help="new PCAs to try, each with flat and fp16 codes")
    ap.add_argument("--nprobe", default="8,16,32")
    ap.add_argument("--shortlist", default="32,64,128")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(common.default_out(NAME)))
    a = ap.parse_args(argv)
    if a.quick:
        a.queries, a.exact_queries, a.repeat, a.kinds, a.shortlist, a.pca_dims = 8192, 512, 1, "fp16", "32", "32"
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
        saved = ivf_index(db)
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
            w, c, (d, _i) = common.best_of(fn, a.repeat)
            n = len(sub)
            r1 = float((d[:n, 0] <= truth * (1 + 1e-5) + 1e-6).mean())
            r = {"setting": label, "kind": kind, "nprobe": nprobe, "shortlist": shortlist, "seconds": round(w, 3),
                 "cpu_seconds": round(c, 2), "recall_at_1": round(r1, 4), "loadavg": common.loadavg(), **(extra or {})}
            runs.append(r)
            print(f"  {label}: {w:.2f} s ({c:.2f} CPU-s) recall@1 {r1:.4f}", flush=True)

        for nprobe in [int(x) for x in a.baseline_nprobe.split(",")]:
            record(f"ivf-flat nprobe {nprobe}, FAISS query order (before 17e)", "ivf", nprobe, a.k,
                   lambda p=nprobe: search(ivf, pca, rows, q, a.k, a.k, p, list_order=False), {"pca_dims": pca.d_out})
            record(f"ivf-flat nprobe {nprobe}, list order", "ivf", nprobe, a.k,
                   lambda p=nprobe: search(ivf, pca, rows, q, a.k, a.k, p), {"pca_dims": pca.d_out})
        spaces = [(pca, ivf.quantizer, [k for k in a.kinds.split(",") if k])]
        for dims in [int(x) for x in a.pca_dims.split(",") if x]:
            t0 = time.perf_counter()
            spaces.append((*new_space(rows, ids, dims, nlist, rng), ["flat", "fp16"]))
            print(f" pca {dims}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
        for space, quantizer, kinds in spaces:
            for kind in kinds:
                index, bw, bc = build(kind, quantizer, nlist, space, rows, ids, rng)
                label = f"pca {space.d_out} {kind}"
                print(f" {label}: built in {bw:.1f} s ({bc:.1f} CPU-s), {index.ntotal:,} vectors", flush=True)
                for nprobe in [int(x) for x in a.nprobe.split(",")]:
                    for sl in [int(x) for x in a.shortlist.split(",")]:
                        record(f"{label} nprobe {nprobe} shortlist {sl}", kind, nprobe, sl,
                               lambda x=index, s=space, n=sl, p=nprobe: search(x, s, rows, q, n, a.k, p),
                               {"pca_dims": space.d_out, "build_seconds": round(bw, 1),
                                "build_cpu_seconds": round(bc, 1)})
                del index
        base = next((r for r in runs if r["kind"] == "ivf" and r["nprobe"] == tuned
                     and "FAISS query order" in r["setting"]), runs[0])
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
