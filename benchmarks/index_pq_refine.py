"""Follow-up to `bench_index.py --pq-pool`: recall@10 of the ivfpq kind against the refine
factor at fixed nprobe, on the same pool file and queries (not a test; issue 17).

    python benchmarks/index_pq_refine.py --db /tmp/bench/db50k --tmp /tmp/bench   # 10M, ~15 min CPU

Reuses the pool file `bench_index.py --pq-pool 10000000 --keep-pool --tmp DIR` left in DIR (or
writes it). Writes benchmarks/results/bench_index_ivfpq_refine10m.json.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from mosaicdb import TileDB  # noqa: E402
from mosaicdb.index import IndexOptions, build_index  # noqa: E402
from mosaicdb.index.ivfpq import exact_knn  # noqa: E402
from mosaicdb.index.refine import exact_distances  # noqa: E402
import faiss  # noqa: E402
import index_pq  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--db", required=True, help="the database whose features are replicated (as bench_index --db)")
ap.add_argument("--tmp", default="/tmp", help="folder of the pool file")
ap.add_argument("--n", type=int, default=10_000_000)
ap.add_argument("--refine", default="8,16,32,64")
ap.add_argument("--nprobe", default="16,32")
args = ap.parse_args()
seed, nq = 0, 65536
with TileDB.open(args.db, readonly=True) as db:
    feats = np.asarray(db.features()[db.ids()], dtype=np.float32)
rng = np.random.default_rng(seed)
perm = rng.permutation(len(feats))
held, real = feats[np.sort(perm[:5000])], np.ascontiguousarray(feats[np.sort(perm[5000:])])
sd = real.std(axis=0).astype(np.float32)
base = held[rng.integers(0, len(held), size=nq)]
queries = (base + rng.normal(0.0, 0.10, base.shape).astype(np.float32) * sd).astype(np.float32)
n = args.n
pool = index_pq.make_pool(Path(args.tmp) / f"bench_index_pq_{n}_{real.shape[1]}_0.05_{seed}.f32", real, n, 0.05, seed)
out = {"loadavg_start": common.loadavg()}
q = queries[:1000]
t0 = time.perf_counter(); c0 = common.cpu_seconds()
ex_d, ex_i = exact_knn(pool, np.arange(n), q, 10)
ex_d = exact_distances(pool, q, ex_i, ex_d)
out["exact"] = {"seconds": time.perf_counter() - t0, "cpu_seconds": common.cpu_since(c0)["self"]}
print("exact", out["exact"], flush=True)
t0 = time.perf_counter(); c0 = common.cpu_seconds()
vi = build_index(None, np.arange(n), IndexOptions(kind="ivfpq", nprobe=32, refine_factor=8), pca_dims=48,
                 rows=lambda: pool)
out["build"] = {"seconds": time.perf_counter() - t0, "cpu_seconds": common.cpu_since(c0)["self"], "params": dict(vi.infos["params"])}
print("build", out["build"], flush=True)
ivf = faiss.extract_index_ivf(vi.index)
rows = []
for nprobe in (int(x) for x in args.nprobe.split(",")):
    for rf in (int(x) for x in args.refine.split(",")):
        ivf.nprobe = nprobe
        vi.infos["params"]["refine_factor"] = rf
        c0 = common.cpu_seconds(); t0 = time.perf_counter()
        d, i = vi.search(q, 10, device="cpu")
        r = {"nprobe": nprobe, "refine_factor": rf, "seconds": time.perf_counter() - t0,
             "cpu_seconds": common.cpu_since(c0)["self"], **index_pq.recalls(d, i, ex_d, ex_i),
             # how much farther the 10th result is than the exact 10th (distance, not squared)
             "median_excess_dist_10th": float(np.median(np.sqrt(d[:, 9]) / np.sqrt(np.maximum(ex_d[:, 9], 1e-12)) - 1)),
             "p99_excess_dist_10th": float(np.percentile(np.sqrt(d[:, 9]) / np.sqrt(np.maximum(ex_d[:, 9], 1e-12)) - 1, 99)),
             "loadavg": common.loadavg()}
        rows.append(r)
        print(r, flush=True)
out["sweep"] = rows
out["note"] = f"pool: {len(real)} real vectors x ~{n // len(real)} copies each, 5% jitter; queries as bench_index"
common.write_results(common.RESULTS / "bench_index_ivfpq_refine10m.json", "bench_index_ivfpq_refine10m", out)
print("done")
