"""Benchmark: which synthetic queries, built from the pool alone, predict the recall of real
target cells (issue 17: the nprobe tuner).

For a database's own saved IVF index (read-only, never rebuilt; a pool whose saved index is
exact gets an IVF index built in memory), at each nprobe, the recall@1
of the search `mosaic make` runs (k candidates from the index, re-ranked by the exact cost on
the full stored vectors) against exact search on the full vectors, for:

- midpoint: midpoints of random pairs of pool vectors (what the tuner uses today);
- loo: leave-one-out, a pool vector as the query and its nearest *other* tile as the truth;
- shifted: a tile's feature recomputed from its largest thumbnail shifted by 1-3 px (crop and
  resize back to the feature's sample size), plus a little blur: a near-copy of a tile;
- real: cells of the shared photographs (Kodak + wikimedia_pd, grids of 32, 64 and 128 across,
  computed as make computes them with `cell_data`), a random sample of them.

Also the tuner's own measure (k = 1 in the index's PCA space against exact search there) for
each kind, which is what decided nprobe until now.

    python benchmarks/bench_tuner_queries.py --db /tmp/mosaicdb-bench-match-vs/rgb.db
    python benchmarks/bench_tuner_queries.py                 # the 1M pool of pool_1m.py
    python benchmarks/bench_tuner_queries.py --quick         # 500 queries a kind, the 20,000-tile pool
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

NAME = "bench_tuner_queries"
GRIDS = (32, 64, 128)


def real_cells(db, data: Path, grids=GRIDS) -> np.ndarray:
    """Cell features of every Kodak and wikimedia_pd photograph at each grid size."""
    from mosaicdb.match.grid import cell_data, load_target, make_grid
    out = []
    for folder in ("kodak", "wikimedia_pd"):
        for p in sorted((data / "targets" / folder).glob("*.png")):
            t = load_target(p)
            for g in grids:
                out.append(cell_data(t.image, make_grid(*t.size, str(g)), db.feature_spec).features)
    return np.concatenate(out)


def shifted_queries(db, ids: np.ndarray, rng) -> np.ndarray:
    """Features of tiles' largest thumbnails shifted by 1-3 px and lightly blurred."""
    import cv2
    size = max(db.thumb_sizes)
    thumbs = db.thumbs(size)
    s = db.feature_spec.samples
    blocks = np.empty((len(ids), s, s, 3), np.uint8)
    for j, t in enumerate(ids):
        img = np.asarray(thumbs[t])
        dx, dy = rng.integers(-3, 4, size=2) * size // 32
        crop = img[max(0, dy):size + min(0, dy), max(0, dx):size + min(0, dx)]
        crop = cv2.GaussianBlur(crop, (3, 3), 0.6)
        blocks[j] = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA)
    return db.feature_spec(blocks)


def ivf_index(db):
    """The database's saved index when it is IVF, else an IVF index of its features built in
    memory (never saved: a small pool's saved index is exact)."""
    index = db.ensure_index()
    if index.infos["kind"] == "ivf":
        return index
    from mosaicdb import feature_kinds
    from mosaicdb.index import IndexOptions, build_index
    ids = db.ids()
    return build_index(None, ids, IndexOptions(kind="ivf"),
                       pca_dims=feature_kinds.index_pca_dims(db.feature_spec, len(ids)), rows=db.features)


def make_search(index, rows, q: np.ndarray, k: int, drop: np.ndarray | None):
    """The first of make's candidates: k (k + 1 when a query's own tile is dropped) from the
    index, re-ranked exactly; (distance, id) of the first that is not `drop`."""
    from mosaicdb.index.refine import rerank
    extra = 1 if drop is not None else 0
    d, i = index.search(q, k + extra, device="cpu")
    if drop is not None:  # leave one out: the query's own tile is not a candidate
        own = i == drop[:, None]
        d = np.where(own, np.inf, d)
        i = np.where(own, -1, i)
    d, i = rerank(rows, q, d, i, k)
    return d[:, 0], i[:, 0]


def exact_first(rows, ids, q, drop, transform=None):
    """Distance to the exact nearest tile (not `drop`): faiss's brute force ranks by
    |x|^2 + |y|^2 - 2xy in float32, off by ~0.4 % of a distance here, so its 8 nearest are
    ranked again by the exact kernel (in the PCA space, its distances are kept)."""
    from mosaicdb.index.ivfpq import exact_knn
    from mosaicdb.index.refine import rerank
    d, i = exact_knn(rows, ids, q, 8, transform=transform)
    if drop is not None:
        d = np.where(i == drop[:, None], np.inf, d)
        i = np.where(i == drop[:, None], -1, i)
        if transform is not None:
            order = np.argsort(d, axis=1, kind="stable")
            d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    if transform is not None:
        return d[:, 0]
    return rerank(rows, q, d, i, 1)[0][:, 0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default=None, help="a tile database with a saved IVF index [default: the 1M pool]")
    ap.add_argument("--data", default=None)
    ap.add_argument("--queries", type=int, default=2000, help="queries of each kind")
    ap.add_argument("--nprobe", default="2,4,8,16,32,64")
    ap.add_argument("-k", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(common.default_out(NAME)))
    a = ap.parse_args(argv)
    if a.quick:
        a.queries, a.nprobe = 500, "4,16,64"
    import faiss

    from mosaicdb import TileDB
    from mosaicdb.index.ivfpq import index_space
    from mosaicdb.index.tuning import midpoint_queries, recall_at_1
    data = common.data_dir(a.data)
    if a.db is None:
        import pool_1m
        a.db = str(pool_1m.ensure_pool(20_000 if a.quick else 1_000_000, data=data))
    la0 = common.loadavg()
    rng = np.random.default_rng(0)
    with TileDB.open(a.db, readonly=True) as db:
        index = ivf_index(db)
        ivf = faiss.extract_index_ivf(index.index)
        tuned = int(ivf.nprobe)
        ids = db.ids()
        rows = np.asarray(db.features()[:])  # in RAM: the exact searches read it many times
        space = index_space(index.index)
        n = a.queries
        own = rng.choice(ids, n, replace=False)
        cells = real_cells(db, data)
        kinds = {
            "midpoint": (midpoint_queries(rows[np.sort(rng.choice(ids, 2 * n))], n, rng), None),
            "loo": (np.ascontiguousarray(rows[own]), own),
            "shifted": (shifted_queries(db, own, rng), None),
            "real": (np.ascontiguousarray(cells[rng.choice(len(cells), n, replace=False)]), None),
        }
        t0 = time.perf_counter()
        truth = {name: exact_first(rows, ids, q, drop) for name, (q, drop) in kinds.items()}
        truth_pca = {name: exact_first(rows, ids, q, drop, transform=space) for name, (q, drop) in kinds.items()}
        exact_s = time.perf_counter() - t0
        print(f"{a.db}: {len(ids):,} tiles, {index.infos['params']}, {len(cells):,} real cells; "
              f"exact truth {exact_s:.1f} s", flush=True)
        table = []
        for nprobe in [int(x) for x in a.nprobe.split(",")]:
            ivf.nprobe = min(nprobe, int(ivf.nlist))
            row = {"nprobe": int(ivf.nprobe)}
            for name, (q, drop) in kinds.items():
                d, _ = make_search(index, rows, q, a.k, drop)
                row[name] = round(recall_at_1(d, truth[name]), 4)
                # the tuner's measure: k = 1 in the PCA space (loo: the first that is not the query)
                dp, ip = index.search(q, 2 if drop is not None else 1, device="cpu")
                first = dp[:, 0] if drop is None else np.where(ip[:, 0] == drop, dp[:, 1], dp[:, 0])
                row[f"{name}_pca_k1"] = round(recall_at_1(first, truth_pca[name]), 4)
            table.append(row)
            print("  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        ivf.nprobe = tuned
        res = {"db": a.db, "tiles": len(ids), "index": {k: index.infos.get(k) for k in ("kind", "params", "pca_dims")},
               "k": a.k, "queries_per_kind": n, "real_cells_total": len(cells), "grids": list(GRIDS),
               "recall": "recall@1 of make's search (k from the index, exact re-rank) vs exact search on the "
                         "full vectors; *_pca_k1: the tuner's measure (k = 1, PCA space)",
               "table": table, "exact_seconds": round(exact_s, 1),
               "loadavg_before": la0, "loadavg_after": common.loadavg()}
    print(f"wrote {common.write_results(Path(a.out), NAME, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
