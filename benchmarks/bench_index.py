"""Benchmark: FAISS index over real tile features (CIFAR-10), 65,536 target-cell-like queries (not a test).

Features: the features of the 50,000 CIFAR-10 tiles (the default kind, rgb-pyramid, 255-dim),
from a database made here (sheets unpacked to PNG and ingested, untimed) or reused with --db
(its own kind).

Queries (65,536, like the cells of a 256x256 mosaic): a held-out set of tiles (--holdout, default
5,000, removed from every pool) supplies the base vectors; each query is a random held-out
vector plus gaussian jitter of --jitter (default 10%) of the pool's per-dimension std. A second,
smaller query set, real Kodak target cells (16x16 samples per cell, as `features.py` describes),
is used for recall only.

Pools:
  real   the remaining real features (50,000 - holdout)
  1m     1,000,000 vectors: every real pool vector replicated ~22x (1,000,000 / pool size), each copy
         plus gaussian noise of --replica-noise (default 5%) of the per-dimension std

Per pool: exact search (IndexFlatL2, k=16) as the baseline (on the 1M pool a subset of queries is
timed and scaled), then `build_index` with defaults (kind auto -> IVF): build seconds, chosen
nlist/nprobe, search seconds of all queries at k=16 via `VectorIndex.search`, queries/s, recall@1 and
recall@16 vs exact, speedup vs exact; then a sweep of nlist x nprobe. Goal: 1M pool <= 20 s for
65,536 queries at recall@1 >= 0.98. Each setting also reports the recall build_index's tuner would
see (pool vector + jitter, "self"), a leave-one-out variant of it, and recall on Kodak cells.
Further --replica-noise values add more 1M pools (default: also 25%, a less clustered pool).

    python benchmarks/bench_index.py                          # ingest + everything (~10 min)
    python benchmarks/bench_index.py --db /tmp/bench/db50k    # reuse a database
    python benchmarks/bench_index.py --db /work/cache/mosaicdb-1m/tiles-1000000.db --big-pool 0 \
        --nlist-real 1024,4096 --nprobe 8,16,32                 # issue 17: the real 1M pool

IVF-PQ mode (issue 17; benchmarks/index_pq.py says what it measures): only the ivfpq index kind,
with its refine step, on --pq-pool replicated real vectors in a memory-mapped file under --tmp:

    python benchmarks/bench_index.py --pq-pool 10000000 --db /tmp/bench/db50k   # 10M vectors
    python benchmarks/bench_index.py --pq-pool 10000000 --quick                 # 1M instead

Kinds (every run, each pool): besides `default` (auto, over the full vectors) and the IVF sweep,
`kinds` builds each of --kinds (default ivf, ivf16, ivfpq) with its defaults as a database
builds it (behind the PCA its features ask for, 48 dims for the pyramid kinds, which ivf16
narrows to 24; ivfpq refined from the full vectors) and reports, against the same exact
baseline: build seconds, nprobe chosen, search seconds, recall@1 and recall@k (and how often
the exact nearest is among the k: what the matcher's exact re-rank finds), and the index's
bytes (serialized size; ivfpq: its RAM estimate, PQ codes only: it refines from the features).

    python benchmarks/bench_index.py --quick      # 10,000 tiles, 8,192 queries, no 1M pool (~1-2 min)
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from mosaicdb import feature_kinds  # noqa: E402

NAME = "bench_index"
GOAL_SECONDS_1M = 20.0
GOAL_SECONDS_1M_17 = 10.0   # issue 17, on the real 1M pool of benchmarks/pool_1m.py
GOAL_RECALL = 0.98


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


# ---- data ------------------------------------------------------------------------------------
def load_features(args, data: Path) -> tuple[np.ndarray, dict, object]:
    """(features, where they came from, their feature kind)."""
    from mosaicdb import TileDB
    if args.db:
        with TileDB.open(args.db, readonly=True) as db:
            ids = db.ids()
            f = np.asarray(db.features()[ids], dtype=np.float32)
            spec = db.feature_spec
        return f, {"source": "reused database", "db": str(args.db), "tiles": len(f)}, spec
    work = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.tmp))
    try:
        paths = common.unpack_cifar(data, work / "tiles", args.limit)
        t0 = time.perf_counter()
        with TileDB.create(work / "db") as db:
            rep = db.ingest([work / "tiles"], update_index=False)
            f = np.asarray(db.features()[db.ids()], dtype=np.float32)
            spec = db.feature_spec
        return f, {"source": "ingested here (untimed for this benchmark)", "tiles": len(paths),
                   "ingest_seconds": round(time.perf_counter() - t0, 1), "added": rep.added}, spec
    finally:
        shutil.rmtree(work, ignore_errors=True)


def kodak_cell_features(data: Path, spec, n: int, rng) -> np.ndarray | None:
    """n random real target cells of the 24 Kodak photos (each photo cut into ~64x43 cells of
    spec.samples x spec.samples area-resampled samples, features of the pool's kind `spec`), or
    None when the photos are absent."""
    import cv2
    from PIL import Image
    from mosaicdb.features import cell_blocks
    folder = data / "targets" / "kodak"
    files = sorted(folder.glob("kodim*.png"))
    if not files:
        return None
    s = spec.samples
    feats = []
    for p in files:
        img = np.asarray(Image.open(p).convert("RGB"))
        h, w = img.shape[:2]
        cols, rows = (64, 43) if w >= h else (43, 64)
        small = cv2.resize(img, (cols * s, rows * s), interpolation=cv2.INTER_AREA)
        feats.append(spec(cell_blocks(small, rows, cols)))
    f = np.concatenate(feats)
    return f[np.sort(rng.choice(len(f), size=min(n, len(f)), replace=False))]


def nn_distance_stats(pool: np.ndarray, probes: np.ndarray) -> dict:
    """Median / 10th / 90th percentile of the L2 distance from each probe to its nearest pool vector."""
    import faiss
    flat = faiss.IndexFlatL2(pool.shape[1])
    flat.add(pool)
    d, _ = flat.search(probes, 1)
    d = np.sqrt(np.maximum(d[:, 0], 0))
    return {"p10": float(np.percentile(d, 10)), "median": float(np.median(d)), "p90": float(np.percentile(d, 90))}


# ---- measuring -----------------------------------------------------------------------------
def recall(got_d, got_i, ex_d, ex_i) -> dict:
    """recall@1 (same id as exact top-1; also counting exact-distance ties) and recall@k."""
    n, k = ex_i.shape
    hit1 = got_i[:n, 0] == ex_i[:, 0]
    tie1 = hit1 | (got_d[:n, 0] <= ex_d[:, 0] * (1 + 1e-6) + 1e-9)
    inter = sum(len(np.intersect1d(a, b, assume_unique=False)) for a, b in zip(got_i[:n], ex_i))
    miss = ~tie1
    excess = (np.sqrt(got_d[:n, 0][miss]) / np.maximum(np.sqrt(ex_d[:, 0][miss]), 1e-9) - 1) if miss.any() else np.zeros(0)
    return {"recall_at_1": float(hit1.mean()), "recall_at_1_ties_ok": float(tie1.mean()),
            f"recall_at_{k}": float(inter / (n * k)),
            # what the matcher's exact re-rank of the k candidates (an index with a PCA) finds
            f"exact_nearest_in_{k}": float((got_i[:n] == ex_i[:, :1]).any(axis=1).mean()),
            "misses_median_excess_distance": float(np.median(excess)) if len(excess) else 0.0}


def timed_search(vi, queries: np.ndarray, k: int, repeat: int = 1):
    """(wall seconds, CPU seconds, all wall times, distances, ids): the run with the least wall time."""
    best = None
    walls = []
    for _ in range(max(1, repeat)):
        c0 = common.cpu_seconds()
        t0 = time.perf_counter()
        d, i = vi.search(queries, k, device="cpu")
        w, c = time.perf_counter() - t0, common.cpu_since(c0)["self"]
        walls.append(round(w, 3))
        if best is None or w < best[0]:
            best = (w, c)
    return best[0], best[1], walls, d, i


def index_bytes(vi) -> int:
    """What the index holds in RAM: its serialized size (ivfpq: its own estimate, the codes and
    lists; the full vectors it refines from are the database's, memory-mapped)."""
    import faiss
    return int(vi.infos["ram_bytes"]) if "ram_bytes" in vi.infos else int(faiss.serialize_index(vi.index).nbytes)


def build_kind(kind: str, pool: np.ndarray, ids: np.ndarray, spec):
    """`kind` built with its defaults over `pool`, as a database of features `spec` builds it:
    behind the PCA the features ask for (which ivf16 narrows to IVF16_PCA_DIMS)."""
    from mosaicdb import feature_kinds
    from mosaicdb.index import IndexOptions, build_index
    return build_index(pool, ids, IndexOptions(kind=kind), pca_dims=feature_kinds.index_pca_dims(spec, len(ids)))


def bench_pool(name: str, pool: np.ndarray, queries: np.ndarray, kodak, args, exact_subset: int) -> dict:
    from mosaicdb.index import IndexOptions, build_index
    from mosaicdb.index.faiss_index import default_nlist, exact_search
    n, k, nq = len(pool), args.k, len(queries)
    ids = np.arange(n, dtype=np.int64)
    out: dict = {"vectors": n, "queries": nq, "k": k, "default_nlist_formula": default_nlist(n)}

    # Baseline: exact search (IndexFlatL2) on the first `exact_subset` queries (queries are random).
    sub = min(exact_subset, nq)
    la0 = common.loadavg()
    c0 = common.cpu_seconds()
    t0 = time.perf_counter()
    ex_d, ex_i = exact_search(pool, ids, queries[:sub], k)
    ex_s = time.perf_counter() - t0
    ex_cpu = common.cpu_since(c0)["self"]
    ex_full = ex_s * nq / sub
    out["exact"] = {"timed_queries": sub, "seconds_timed": round(ex_s, 3), "cpu_seconds_timed": round(ex_cpu, 2),
                    "seconds_for_all_queries": round(ex_full, 2),
                    "seconds_for_all_queries_is": "measured" if sub == nq else f"scaled x{nq / sub:g} from {sub} queries",
                    "queries_per_s": round(sub / ex_s, 1), "loadavg_before": la0}
    out["recall_measured_on"] = f"{sub} queries (the ones timed for exact search)" + (" = all" if sub == nq else "")
    kex = None
    if kodak is not None:
        kd, ki = exact_search(pool, ids, kodak, 1)
        kex = (kd, ki)
    # Recall as nprobe tuners would measure it, to see which tracks the held-out queries:
    # 2,000 pool vectors + the same jitter as the queries, scored two ways: "self" (top-1 vs exact
    # top-1, the source vector itself being in the pool: build_index's first tuner) and
    # "leave-one-out" (the source ignored in both results: its second); and "midpoint": 2,000
    # midpoints of random pool pairs, scored by distance (build_index's current tuner).
    g = np.random.default_rng([args.seed, 3, n])
    src = np.sort(g.choice(n, size=min(2000, n), replace=False))
    sd = pool.std(axis=0)
    loo_q = (pool[src] + g.normal(0.0, args.jitter, (len(src), pool.shape[1])).astype(np.float32) * sd).astype(np.float32)
    _, le = exact_search(pool, ids, loo_q, 2)
    loo_truth = np.where(le[:, 0] == src, le[:, 1], le[:, 0])

    pairs = g.integers(0, n, size=(2000, 2))
    mid_q = np.ascontiguousarray(0.5 * (pool[pairs[:, 0]] + pool[pairs[:, 1]]), dtype=np.float32)
    mid_d = exact_search(pool, ids, mid_q, 1)[0][:, 0]

    def tuner_recalls(vi) -> dict:
        _, gi = vi.search(loo_q, 2, device="cpu")
        got = np.where(gi[:, 0] == src, gi[:, 1], gi[:, 0])
        md, _ = vi.search(mid_q, 1, device="cpu")
        return {"tuner_self_recall_at_1": float((gi[:, 0] == le[:, 0]).mean()),
                "tuner_leave_one_out_recall_at_1": float((got == loo_truth).mean()),
                "tuner_midpoint_recall_at_1": float((md[:, 0] <= mid_d * (1 + 1e-5) + 1e-6).mean())}

    print(f"[{name}] exact: {sub} queries in {ex_s:.1f} s -> all {nq}: {ex_full:.1f} s", flush=True)

    def measure(vi, label_extra: dict) -> dict:
        s, cpu, walls, d, i = timed_search(vi, queries, k, args.repeat)
        r = {**label_extra, "search_seconds": round(s, 3), "search_cpu_seconds": round(cpu, 2),
             **({"search_seconds_all_runs": walls} if len(walls) > 1 else {}),
             "queries_per_s": round(nq / s, 1), "speedup_vs_exact": round(ex_full / s, 2),
             **recall(d, i, ex_d, ex_i), "loadavg": common.loadavg()}
        r.update(tuner_recalls(vi))
        if kex is not None:
            kd, ki = vi.search(kodak, 1, device="cpu")
            r["kodak_cells_recall_at_1"] = recall(kd, ki, kex[0], kex[1])["recall_at_1"]
        r["meets_goal"] = bool(r["recall_at_1"] >= GOAL_RECALL and s <= GOAL_SECONDS_1M)
        return r

    # Default options: kind auto.
    t0 = time.perf_counter()
    vi = build_index(pool, ids, IndexOptions())
    wall = time.perf_counter() - t0
    inf = vi.infos
    out["default"] = {"kind": inf["kind"], "params": inf["params"],
                      "build_seconds": inf["build_seconds"], "build_plus_tuning_seconds": round(wall, 2),
                      "tuner_recall_at_1": inf["recall_at_1"], "tuner_sample": inf["recall_sample"],
                      "tuner_queries": inf["recall_queries"], "tuning": inf["tuning"]}
    out["default"].update(measure(vi, {"index_bytes": index_bytes(vi)}))
    d = out["default"]
    print(f"[{name}] default {inf['kind']} {inf['params']}: build {wall:.1f} s, search {d['search_seconds']:.1f} s, "
          f"{d['queries_per_s']:,.0f} q/s, recall@1 {d['recall_at_1']:.4f} (tuner said {inf['recall_at_1']:.3f}), "
          f"x{d['speedup_vs_exact']:.1f} vs exact", flush=True)

    # Each index kind with its defaults, against the same exact baseline.
    vi = None
    out["kinds"] = {}
    for kind in args.kinds:
        t0 = time.perf_counter()
        v = build_kind(kind, pool, ids, args.spec)
        r = measure(v, {"params": v.infos["params"], "pca_dims": v.infos["pca_dims"],
                        "build_plus_tuning_seconds": round(time.perf_counter() - t0, 2),
                        "tuner_recall_at_1": v.infos["recall_at_1"], "index_bytes": index_bytes(v)})
        out["kinds"][kind] = r
        v = None
        print(f"[{name}] kind {kind:6s} {r['params']}: build {r['build_plus_tuning_seconds']:.1f} s, search "
              f"{r['search_seconds']:.2f} s (x{r['speedup_vs_exact']:.1f} vs exact), recall@1 {r['recall_at_1']:.4f} "
              f"recall@{k} {r[f'recall_at_{k}']:.3f}, nearest in {k} {r[f'exact_nearest_in_{k}']:.4f}, "
              f"{r['index_bytes'] / 2**20:.1f} MiB", flush=True)

    # Sweep nlist x nprobe.
    sweep = []
    built = {inf["params"].get("nlist"): (vi, inf["build_seconds"])} if inf["kind"] == "ivf" else {}
    for nlist in (args.nlist_real if name == "real" else args.nlist_1m):
        if nlist in built:
            v, bs = built.pop(nlist)
        else:
            v = None  # free the previous index before building the next
            v = build_index(pool, ids, IndexOptions(kind="ivf", nlist=nlist, nprobe=args.nprobe[0], recall_sample=1))
            bs = v.infos["build_seconds"]
        vi = None
        real_nlist = v.infos["params"]["nlist"]
        for nprobe in args.nprobe:
            if nprobe > real_nlist:
                continue
            v.index.nprobe = nprobe
            r = measure(v, {"nlist": real_nlist, "nprobe": nprobe, "build_seconds": bs})
            sweep.append(r)
            print(f"[{name}]   nlist {real_nlist:5d} nprobe {nprobe:3d}: {r['search_seconds']:6.2f} s "
                  f"({r['queries_per_s']:>9,.0f} q/s) recall@1 {r['recall_at_1']:.4f} "
                  f"recall@{k} {r[f'recall_at_{k}']:.3f}" + (f" kodak {r['kodak_cells_recall_at_1']:.3f}" if kex else ""),
                  flush=True)
            if r["recall_at_1"] >= 0.999:
                break  # larger nprobe only costs time
            if r["search_seconds"] > args.max_search_fraction * ex_full:
                print(f"[{name}]   (larger nprobe skipped: over {args.max_search_fraction:g} x exact time)", flush=True)
                break
        v = None
    out["sweep"] = sweep
    ok = [r for r in sweep if r["meets_goal"]]
    out["fastest_meeting_goal"] = min(ok, key=lambda r: r["search_seconds"]) if ok else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="shared data folder [default: ../shared/data next to the repo]")
    ap.add_argument("--out", type=Path, default=common.default_out(NAME), help="JSON result file")
    ap.add_argument("--db", type=Path, default=None, help="reuse this database's features instead of ingesting")
    ap.add_argument("--limit", type=int, default=None, help="ingest only the first N tiles (without --db)")
    ap.add_argument("--tmp", default=None, help="folder for temporary files")
    ap.add_argument("--queries", type=int, default=65536)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--holdout", type=int, default=5000, help="tiles kept out of the pools as query bases")
    ap.add_argument("--jitter", type=float, default=0.10, help="query noise, fraction of per-dimension std")
    ap.add_argument("--big-pool", type=int, default=1_000_000, help="size of the synthetic large pool (0: skip)")
    ap.add_argument("--replica-noise", type=_floats, default=_floats("0.05,0.25"),
                    help="large-pool noise, fraction of per-dim std; the first makes pool '1m' (the goal), "
                         "each further value another 1M pool (sensitivity to how clustered the pool is)")
    ap.add_argument("--exact-subset", type=int, default=4096,
                    help="queries timed for exact search on the large pool (scaled to all; recall measured on them)")
    ap.add_argument("--kodak-queries", type=int, default=4096, help="real Kodak target cells for a recall check (0: skip)")
    ap.add_argument("--nlist-real", type=_ints, default=_ints("256,512,1024"))
    ap.add_argument("--nlist-1m", type=_ints, default=_ints("1024,2048,4096"))
    ap.add_argument("--nprobe", type=_ints, default=_ints("4,8,16,32,48,64"))
    ap.add_argument("--max-search-fraction", type=float, default=0.5,
                    help="stop raising nprobe once a search takes this fraction of the exact search time "
                         "(also stopped at recall@1 >= 0.999)")
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads [0: faiss default = CPU count]")
    ap.add_argument("--repeat", type=int, default=1, help="time each index search N times, keep the fastest")
    ap.add_argument("--skip-real", action="store_true", help="only the large pool(s)")
    ap.add_argument("--seed", type=int, default=0)
    pq = ap.add_argument_group("IVF-PQ mode (benchmarks/index_pq.py)")
    pq.add_argument("--pq-pool", type=int, default=0, help="vectors in the IVF-PQ pool; runs only that mode")
    ap.add_argument("--kinds", type=lambda s: [k for k in s.split(",") if k], default=["ivf", "ivf16", "ivfpq"],
                    help="index kinds built with their defaults and measured on each pool [default: ivf,ivf16,ivfpq]")
    pq.add_argument("--quick", action="store_true",
                    help="a short run: 10,000 tiles, 8,192 queries, no 1M pool, a small sweep; with --pq-pool: "
                         "1,000,000 vectors and 8,192 queries")
    pq.add_argument("--exact-sample", type=int, default=1000, help="queries searched exactly (recall truth, baseline)")
    pq.add_argument("--pq-m", type=_ints, default=_ints("0"), help="sub-quantizers, one build each (0: the default)")
    pq.add_argument("--pq-nlist", type=int, default=0, help="IVF lists (0: the default)")
    pq.add_argument("--pq-nprobe", type=_ints, default=_ints("8,16,32,64"), help="nprobe values swept on the exact sample")
    pq.add_argument("--pq-refine", type=_ints, default=_ints("64,8,16,32"),
                    help="refine factors swept; the first is the one built (and searched for all queries)")
    pq.add_argument("--keep-pool", action="store_true", help="keep the pool file under --tmp for the next run")
    args = ap.parse_args(argv)
    from mosaicdb.index.faiss_index import BUILT_KINDS
    if set(args.kinds) - set(BUILT_KINDS):
        ap.error(f"--kinds: unknown {sorted(set(args.kinds) - set(BUILT_KINDS))}; use {', '.join(BUILT_KINDS)}")
    if args.pq_pool and args.quick:
        args.pq_pool, args.queries = min(args.pq_pool, 1_000_000), 8192
    elif args.quick:
        args.limit = args.limit or 10_000
        args.queries, args.holdout, args.big_pool, args.kodak_queries = 8192, 1000, 0, 1024
        args.nlist_real, args.nprobe = [256], [4, 8, 16]
        if args.out == common.default_out(NAME):
            args.out = common.default_out(NAME + "_quick")
    if args.pq_pool and args.out == common.default_out(NAME):
        args.out = common.default_out(NAME + "_ivfpq" + ("_quick" if args.quick else ""))
    data = common.data_dir(args.data)
    import faiss
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    feats, fsrc, spec = load_features(args, data)
    args.spec = spec
    fsrc["seconds"] = round(time.perf_counter() - t0, 1)
    n_all, dim = feats.shape
    if args.holdout >= n_all:
        sys.exit(f"--holdout {args.holdout} leaves no pool out of {n_all} tiles")
    print(f"features: {n_all} x {dim} ({fsrc['source']})", flush=True)

    perm = rng.permutation(n_all)
    held, real = feats[np.sort(perm[:args.holdout])], np.ascontiguousarray(feats[np.sort(perm[args.holdout:])])
    sd = real.std(axis=0).astype(np.float32)
    base = held[rng.integers(0, len(held), size=args.queries)]
    queries = (base + rng.normal(0.0, args.jitter, base.shape).astype(np.float32) * sd).astype(np.float32)
    if args.pq_pool:
        import index_pq
        res = index_pq.run(args, real, queries, {**fsrc, "dim": dim})
        res["peak_rss"] = common.peak_rss_mb()
        print(f"wrote {common.write_results(args.out, NAME, {'ivfpq': res})}")
        return 0
    kodak = kodak_cell_features(data, spec, args.kodak_queries, rng) if args.kodak_queries else None

    def make_big(noise: float) -> np.ndarray:
        src = np.random.default_rng([args.seed, 1]).permutation(np.arange(args.big_pool) % len(real))
        g = np.random.default_rng([args.seed, 2, int(noise * 1e6)])
        big = np.empty((args.big_pool, dim), np.float32)
        for s in range(0, args.big_pool, 100_000):
            e = min(s + 100_000, args.big_pool)
            big[s:e] = real[src[s:e]] + g.normal(0.0, noise, (e - s, dim)).astype(np.float32) * sd
        return big

    # Scales, to judge the noise levels: distances from probes to their nearest pool vector.
    scale = {
        "per_dim_std_norm": float(np.linalg.norm(sd)),
        "query_jitter_norm_expected": float(args.jitter * np.linalg.norm(sd)),
        "heldout_tile_to_nearest_real_pool_vector": nn_distance_stats(real, held[:2000]),
        "query_to_nearest_real_pool_vector": nn_distance_stats(real, queries[:2000]),
    }
    if kodak is not None:
        scale["kodak_cell_to_nearest_real_pool_vector"] = nn_distance_stats(real, kodak[:2000])
    print("scales (L2): " + ", ".join(f"{k} {v['median']:.1f}" if isinstance(v, dict) else f"{k} {v:.1f}"
                                      for k, v in scale.items()), flush=True)

    results = {
        "features": {**fsrc, "dim": dim, "kind": feature_kinds.describe(spec)},
        "config": {
            "queries": args.queries, "k": args.k, "seed": args.seed,
            "queries_are": (f"{args.queries} = a random held-out tile feature (of {args.holdout} tiles kept out of every pool) "
                            f"+ N(0, ({args.jitter:g} * per-dimension std of the real pool)^2) per dimension"),
            "pool_real_is": f"the {len(real)} remaining real CIFAR-10 features",
            "pool_1m_is": (None if not args.big_pool else
                           f"{args.big_pool} vectors: each real pool vector replicated {args.big_pool // len(real)}-"
                           f"{-(-args.big_pool // len(real))}x, every copy + N(0, (r * per-dimension std)^2) with "
                           f"r = {args.replica_noise[0]:g} for pool '1m'"
                           + "".join(f", r = {r:g} for pool '1m_noise{r:g}'" for r in args.replica_noise[1:])),
            "kodak_queries_are": (None if kodak is None else
                                  f"{len(kodak)} random cells of the 24 Kodak photos (64x43 cells each, "
                                  f"{spec.samples}x{spec.samples} INTER_AREA samples per cell, features of the "
                                  f"pool's kind); recall only"),
            "exact_baseline": "faiss IndexFlatL2 via mosaicdb.index.faiss_index.exact_search, same k",
            "index_search": "VectorIndex.search (batches of SEARCH_BATCH), device cpu",
            "faiss_threads": faiss.omp_get_max_threads(),
            "goal": f"1M pool: all {args.queries} queries <= {GOAL_SECONDS_1M:g} s at recall@1 >= {GOAL_RECALL}",
            "nlist_real": args.nlist_real, "nlist_1m": args.nlist_1m, "nprobe": args.nprobe,
            "sweep_stops": f"raising nprobe stops at recall@1 >= 0.999 or search > {args.max_search_fraction:g} x exact time",
            "timing_note": "wall times (fastest of --repeat runs); search_cpu_seconds is this process's CPU time "
                           "(faiss threads included); loadavg shows other load on the machine",
            "repeat": args.repeat,
        },
        "scales": scale,
        "pools": {},
    }
    if not args.skip_real:
        # a real pool of a million (--db of benchmarks/pool_1m.py) is timed exactly on a subset, as "1m" is
        results["pools"]["real"] = bench_pool("real", real, queries, kodak, args,
                                              exact_subset=args.queries if len(real) <= 200_000 else args.exact_subset)
        if len(real) >= 950_000:  # issue 17: the real million-tile pool
            d = results["pools"]["real"]["default"]
            results["goal_issue17_real_1m"] = {
                "goal": f"<= {GOAL_SECONDS_1M_17:g} s at recall@1 >= {GOAL_RECALL}", "search_seconds": d["search_seconds"],
                "recall_at_1": d["recall_at_1"],
                "met": bool(d["recall_at_1"] >= GOAL_RECALL and d["search_seconds"] <= GOAL_SECONDS_1M_17)}
        common.write_results(args.out, NAME, results)  # partial results, in case the big pool is interrupted
    for j, noise in enumerate(args.replica_noise if args.big_pool else []):
        name = "1m" if j == 0 else f"1m_noise{noise:g}"
        big = make_big(noise)
        results["scales"][f"{name}_replica_noise_norm_expected"] = float(noise * np.linalg.norm(sd))
        results["scales"][f"query_to_nearest_{name}_pool_vector"] = nn_distance_stats(big, queries[:2000])
        print(f"[{name}] replica noise {noise:g} std; query to nearest pool vector "
              f"{results['scales'][f'query_to_nearest_{name}_pool_vector']['median']:.1f}", flush=True)
        results["pools"][name] = bench_pool(name, big, queries, kodak, args, exact_subset=args.exact_subset)
        big = None
        if j == 0:
            d = results["pools"]["1m"]["default"]
            results["goal_met_with_defaults"] = bool(d["recall_at_1"] >= GOAL_RECALL and d["search_seconds"] <= GOAL_SECONDS_1M)
        common.write_results(args.out, NAME, results)
    results["peak_rss"] = common.peak_rss_mb()
    out = common.write_results(args.out, NAME, results)
    for name, p in results["pools"].items():
        d = p["default"]
        f = p["fastest_meeting_goal"]
        print(f"{name}: default {d['params']} {d['search_seconds']:.1f} s recall@1 {d['recall_at_1']:.4f} "
              f"(exact {p['exact']['seconds_for_all_queries']:.1f} s); fastest meeting goal: "
              + (f"nlist {f['nlist']} nprobe {f['nprobe']} {f['search_seconds']:.1f} s recall@1 {f['recall_at_1']:.4f}"
                 if f else "none"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
