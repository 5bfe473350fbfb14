"""Benchmark: the matcher's own search on a real database's own index (issue 17: 1M tiles).

bench_index measures index kinds on feature arrays; this measures what `mosaic make` does: the
database's saved index (kind, PCA and nprobe as the database chose them), searched for k
candidates per cell, then re-ranked by the exact cost on the full stored vectors when the index
is approximate (`mosaicdb.match.rerank`), exactly as `match.matcher.match` searches.

Queries: 65,536 real target cells: 128x128 grids of four Kodak photos (--targets, centre-cropped
square), features computed as `make` computes them (`cell_data`). Baseline in the same run:
exact search of --exact-queries of them on the full vectors (faiss IndexFlatL2 over the whole
pool, in chunks), timed and scaled to all queries. recall@1: the same top tile as exact search
(distance ties count as hits); recall@k: the share of exact top-k found.

Then the same search at other nprobe values (--nprobe), to show the speed/recall curve. The
goal (issue 17): 65,536 queries in <= 10 s at recall@1 >= 0.98 on the 1M pool.

    python benchmarks/bench_search_db.py                            # the 1M pool of pool_1m.py
    python benchmarks/bench_search_db.py --quick                    # the 20,000-tile pool, 8,192 queries
    python benchmarks/bench_search_db.py --db /path/to/tiles.db
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "bench_search_db"
GOAL_SECONDS, GOAL_RECALL = 10.0, 0.98


def target_cells(db, data: Path, names: list[str], per_side: int) -> np.ndarray:
    """Cell features of per_side x per_side grids of the named Kodak photos (centre squares)."""
    from mosaicdb.match.grid import Grid, cell_data, load_target
    out = []
    for name in names:
        t = load_target(data / "targets" / "kodak" / f"{name}.png")
        h, w = t.image.shape[:2]
        s = min(h, w)
        crop = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        out.append(cell_data(t.image, Grid(per_side, per_side, crop), db.feature_spec).features)
    return np.concatenate(out)


def faiss_order_search(index, queries: np.ndarray, k: int):
    """The search before issue 17e on an ivf index: FAISS's own search, the queries in the
    order given (the baseline of the list-order scan)."""
    return index.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def matcher_search(db, index, queries: np.ndarray, k: int, search=None):
    """(distances, ids) as `match` gets its first candidates (`search`: another search than
    the index's own, same signature)."""
    from mosaicdb.match.rerank import RERANK_FACTOR, index_is_approximate, rerank
    approximate = index_is_approximate(index)
    d, i = (search or index.search)(queries, k * RERANK_FACTOR if approximate else k, device="cpu")
    if approximate:
        d, i = rerank(db.features(), queries, d, i, k)
    return d, i


def recall(d, i, ex_d, ex_i) -> dict:
    n, k = ex_i.shape
    hit = (i[:n, 0] == ex_i[:, 0]) | (d[:n, 0] <= ex_d[:, 0] * (1 + 1e-5) + 1e-6)
    inter = sum(len(np.intersect1d(a, b)) for a, b in zip(i[:n], ex_i))
    return {"recall_at_1": round(float(hit.mean()), 4), f"recall_at_{k}": round(inter / (n * k), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default=None, help="a tile database [default: the 1M pool of pool_1m.py]")
    ap.add_argument("--data", default=None)
    ap.add_argument("--targets", default="kodim23,kodim05,kodim14,kodim03",
                    help="Kodak photos whose --per-side grids are the queries (all "
                         "concatenated, shuffled, the first --queries used)")
    ap.add_argument("--queries", type=int, default=65536)
    ap.add_argument("--per-side", type=int, default=128)
    ap.add_argument("-k", type=int, default=32, help="candidates per cell (mosaic make's -k)")
    ap.add_argument("--exact-queries", type=int, default=2048)
    ap.add_argument("--nprobe", default="8,16,32,64", help="other nprobe values to measure (IVF indexes)")
    ap.add_argument("--also-kind", default="ivf",
                    help="also build an index of this kind over the database's features (in memory, never "
                         "saved: the database is only read) and measure it the same way ('' to skip)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="8,192 queries, 512 exact, one run each; without --db the 20,000-tile pool")
    ap.add_argument("--out", default=str(common.default_out(NAME)))
    a = ap.parse_args(argv)
    if a.quick:
        a.queries, a.exact_queries, a.repeat = 8192, 512, 1
    from mosaicdb import TileDB
    from mosaicdb.index.ivfpq import exact_knn
    data = common.data_dir(a.data)
    if a.db is None:
        import pool_1m
        a.db = str(pool_1m.ensure_pool(20_000 if a.quick else 1_000_000, data=data))
    la0 = common.loadavg()
    with TileDB.open(a.db, readonly=True) as db:
        t0 = time.perf_counter()
        index = db.ensure_index()
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        q = target_cells(db, data, a.targets.split(","), a.per_side)
        q = np.ascontiguousarray(q[rng.permutation(len(q))[:a.queries]], dtype=np.float32)
        sub = q[:a.exact_queries]
        print(f"{a.db}: {len(db):,} tiles, index {index.infos['kind']} {index.infos.get('params')} "
              f"pca {index.infos.get('pca_dims')}, loaded in {load_s:.2f} s; {len(q):,} queries", flush=True)
        ex_w, ex_c, (ex_d, ex_i) = common.best_of(lambda: exact_knn(db.features(), db.ids(), sub, a.k), 1)
        exact = {"queries": len(sub), "seconds": round(ex_w, 2), "cpu_seconds": round(ex_c, 2),
                 "seconds_scaled_to_all": round(ex_w * len(q) / len(sub), 1)}
        print(f"exact: {len(sub)} queries {ex_w:.1f} s -> all {exact['seconds_scaled_to_all']} s", flush=True)

        def run(label: str, search=None) -> dict:
            w, c, (d, i) = common.best_of(lambda: matcher_search(db, index, q, a.k, search), a.repeat)
            r = {"setting": label, "seconds": round(w, 2), "cpu_seconds": round(c, 2),
                 "queries_per_s": round(len(q) / w), **recall(d, i, ex_d, ex_i),
                 "speedup_vs_exact": round(exact["seconds_scaled_to_all"] / w, 1), "loadavg": common.loadavg()}
            r["meets_goal"] = bool(r["recall_at_1"] >= GOAL_RECALL and w <= GOAL_SECONDS)
            print(f"  {label}: {w:.2f} s ({c:.2f} CPU-s), recall@1 {r['recall_at_1']}, "
                  f"recall@{a.k} {r[f'recall_at_{a.k}']}", flush=True)
            return r

        runs = [run("as the database chose")]
        base = None
        import faiss
        if index.infos["kind"] in ("ivf", "ivf16", "ivfpq"):
            ivf = faiss.extract_index_ivf(index.index)
            chosen = int(ivf.nprobe)
            for nprobe in [int(x) for x in a.nprobe.split(",") if x]:
                ivf.nprobe = nprobe
                if nprobe != chosen:
                    runs.append(run(f"nprobe {nprobe}"))
                if index.infos["kind"] == "ivf":  # the same nprobe, FAISS's own query order
                    runs.append(run(f"nprobe {nprobe}, FAISS query order (before 17e)",
                                    lambda qs, k, device: faiss_order_search(index, qs, k)))
            ivf.nprobe = chosen
            base = next((r for r in runs if r["setting"] == f"nprobe {chosen}, FAISS query order (before 17e)"), None)
            for r in runs:
                if base is not None:
                    r["speedup_vs_faiss_order_at_chosen_nprobe"] = round(base["seconds"] / r["seconds"], 2)
                    r["cpu_ratio_vs_faiss_order_at_chosen_nprobe"] = round(base["cpu_seconds"] / r["cpu_seconds"], 2)
        other = None
        if a.also_kind and a.also_kind != index.infos["kind"]:
            from mosaicdb import feature_kinds
            from mosaicdb.index import IndexOptions, build_index
            c0, t0 = common.cpu_seconds(), time.perf_counter()
            ids = db.ids()
            built = build_index(None, ids, IndexOptions(kind=a.also_kind),
                                pca_dims=feature_kinds.index_pca_dims(db.feature_spec, len(ids)), rows=db.features)
            other = {k: built.infos.get(k) for k in ("kind", "params", "dim", "pca_dims", "recall_at_1", "tuning")}
            other.update(build_seconds=round(time.perf_counter() - t0, 1),
                         build_cpu_seconds=round(common.cpu_since(c0)["self"], 1))
            print(f"built {a.also_kind}: {other['params']} pca {other['pca_dims']} in {other['build_seconds']} s",
                  flush=True)
            index, saved = built, index
            runs.append(run(f"{a.also_kind} as tuned (built here)"))
            bivf = faiss.extract_index_ivf(built.index)
            tuned = int(bivf.nprobe)
            for nprobe in [int(x) for x in a.nprobe.split(",") if x]:
                if nprobe != tuned and built.infos["kind"] != "ivfpq":
                    bivf.nprobe = nprobe
                    runs.append(run(f"{a.also_kind} nprobe {nprobe} (built here)"))
            bivf.nprobe = tuned
            index = saved
            for r in runs:
                if base is not None and "speedup_vs_faiss_order_at_chosen_nprobe" not in r:
                    r["speedup_vs_faiss_order_at_chosen_nprobe"] = round(base["seconds"] / r["seconds"], 2)
                    r["cpu_ratio_vs_faiss_order_at_chosen_nprobe"] = round(base["cpu_seconds"] / r["cpu_seconds"], 2)
        n_tiles = len(db)
        infos = {k: index.infos.get(k) for k in ("kind", "params", "dim", "pca_dims", "recall_at_1")}
    res = {"db": a.db, "tiles": n_tiles, "index": infos, "also_built": other, "index_load_seconds": round(load_s, 2),
           "queries": len(q), "k": a.k, "targets": a.targets, "exact": exact, "runs": runs,
           "goal": {"seconds": GOAL_SECONDS, "recall_at_1": GOAL_RECALL, "met_as_chosen": runs[0]["meets_goal"]},
           "loadavg_before": la0, "loadavg_after": common.loadavg()}
    print(f"wrote {common.write_results(Path(a.out), NAME, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
