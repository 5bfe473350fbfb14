"""`mosaic serve MOSAIC.mosaic.json` benchmark: a 65536^2 mosaic served with no image at all
(256 x 256 cells of 256 px, from a 2,000-tile pool of 512 px crops of the photographs in
shared/data, the pool of bench_render.py), every DeepZoom tile rendered on request.

Measured, each server in its own process (`python -m mosaicdb serve ... --port 0`):
- page: seconds from starting the process to the first byte of GET /;
- tiles: 256 random tile requests, 8 at a time, level drawn uniformly from all levels and the
  tile uniformly within it: p50 / p95 cold (first request of each), then the same again warm;
- the baseline, in the same run and server: 256 GETs of a static file 8 at a time (the HTTP
  floor every tile pays), and ratios of tile latency to it;
- the server's peak RSS (VmHWM), and the CPU seconds it spent up to the page's first byte
  (independent of the machine's load, unlike the wall time);
- recursive (`--recursive 1`, 64 x 64 sub-mosaics, their cache folder emptied first): the
  first view of a cell's sub-mosaic (the level tile that needs it: match + draw), then views of
  the same sub-mosaics at other tiles and deeper levels (matched already: their tiles are new,
  some originals are decoded), those same tiles again (the tile cache), and the first view in a
  new server process (read back from DB/recursive/); ratios to the level tiles' cold and warm p50.
Goals (issue 15): page < 1 s, p50 <= 30 ms, p95 <= 150 ms, RSS <= 1 GB, first sub-mosaic view
<= 0.5 s, cached views at level-tile latency. The machine is shared: the load average is
recorded at the start and the end.

    python benchmarks/bench_serve.py            # full run (pool and assignment cached in --work)
    python benchmarks/bench_serve.py --quick    # 500 tiles, 64 x 64 cells, 64 requests
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import pool_database  # noqa: E402
from common import REPO, data_dir, default_out, loadavg, write_results  # noqa: E402

WORK = Path("/work/cache/mosaicdb-bench-serve")
TILE_PX = 256
TARGET = "targets/kodak/kodim23.png"


def build(data: Path, work: Path, n_tiles: int, cells: int) -> Path:
    """The pool database (built once per size) and a cells x cells assignment at 256 px per cell."""
    from mosaicdb import Maker, MatchOptions, RenderOptions, TileDB
    from mosaicdb import assignment as asg
    from dataclasses import replace
    work = work / f"pool{n_tiles}"
    out = work / f"m{cells}"
    jpath = asg.sidecar_paths(out)[0]
    if jpath.is_file():
        return jpath
    work.mkdir(parents=True, exist_ok=True)
    dbp = work / "tiles.db"
    if not (dbp / "catalog.sqlite").exists():
        pool_database(data, work, n_tiles)
        shutil.rmtree(work / "pool", ignore_errors=True)   # the database holds copies
    with TileDB.open(dbp) as db:
        small = work / f"m{cells}_small.png"
        Maker(db, MatchOptions(grid=f"{cells}x{cells}"), RenderOptions(tile_px=1)).make(data / TARGET, small)
    saved = asg.load(small)
    saved.meta = replace(saved.meta, render={**saved.meta.render, "tile_px": TILE_PX}, output="")
    asg.save(out, saved)
    return jpath


class Server:
    """`python -m mosaicdb serve` in its own process; `first_byte` is seconds from start to the
    first byte of the page."""

    def __init__(self, assignment: Path, *extra: str):
        env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "mosaicdb", "-q", "serve", str(assignment), "--port", "0",
                                      "--no-open", "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the server did not start: {self.proc.stderr.read()}")
        info = json.loads(line)
        self.port = int(info["url"].rsplit(":", 1)[1].split("/")[0])
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", "/")
        r = c.getresponse()
        r.read(1)
        self.first_byte = time.perf_counter() - t0
        self.first_byte_cpu = self.cpu_seconds()   # load-independent: CPU the server spent to get there
        r.read()
        c.close()
        self.dzi = self.get("/mosaic.dzi")[2].decode()
        self.info = json.loads(self.get("/api/info")[2])

    def get(self, path: str) -> tuple[int, float, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        t0 = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        dt = time.perf_counter() - t0
        c.close()
        return r.status, dt, body

    def many(self, paths: list[str], at_once: int = 8) -> np.ndarray:
        with ThreadPoolExecutor(at_once) as ex:
            res = list(ex.map(self.get, paths))
        bad = [(p, s, b[:100]) for p, (s, _, b) in zip(paths, res) if s != 200]
        if bad:
            raise SystemExit(f"{len(bad)} requests failed, e.g. {bad[0]}")
        return np.array([dt for _, dt, _ in res])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 3)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def stats(dt: np.ndarray) -> dict:
    ms = dt * 1000
    return {"n": int(len(ms)), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "max_ms": round(float(ms.max()), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def levels(width: int, height: int) -> list[tuple[int, int, int]]:
    top = int(np.ceil(np.log2(max(width, height))))
    return [(lv, -(-width // 2 ** (top - lv)), -(-height // 2 ** (top - lv))) for lv in range(top + 1)]


def random_tiles(width, height, n, rng, lo=0, hi=None) -> list[str]:
    lv = levels(width, height)[lo:hi]
    out = []
    for _ in range(n):
        level, w, h = lv[int(rng.integers(0, len(lv)))]
        out.append(f"/mosaic_files/{level}/{int(rng.integers(0, -(-w // 256)))}_{int(rng.integers(0, -(-h // 256)))}.jpeg")
    return out


def bench_plain(jpath: Path, n_requests: int, rng) -> dict:
    s = Server(jpath)
    try:
        w, h = s.info["width"], s.info["height"]
        paths = random_tiles(w, h, n_requests, rng)
        floor = s.many(["/static/viewer.css"] * n_requests)
        cold = s.many(paths)
        warm = s.many(paths)
        out = {"width": w, "height": h, "cols": s.info["cols"], "levels": len(levels(w, h)),
               "page_first_byte_s": round(s.first_byte, 3), "page_first_byte_server_cpu_s": s.first_byte_cpu,
               "tiles_cold": stats(cold), "tiles_warm": stats(warm),
               "baseline_static_file": stats(floor), "peak_rss_mb": s.peak_rss_mb()}
        out["ratio_cold_p50_to_baseline"] = round(out["tiles_cold"]["p50_ms"] / out["baseline_static_file"]["p50_ms"], 2)
        out["ratio_cold_p95_to_baseline"] = round(out["tiles_cold"]["p95_ms"] / out["baseline_static_file"]["p95_ms"], 2)
        return out
    finally:
        s.stop()


def bench_recursive(jpath: Path, n_cells: int, rng) -> dict:
    shutil.rmtree(jpath.parent / "tiles.db" / "recursive", ignore_errors=True)
    s = Server(jpath, "--recursive", "1")
    try:
        cols, rows = s.info["cols"], s.info["rows"]
        w, h = s.info["width"], s.info["height"]
        lv = levels(w, h)
        base_top = int(np.ceil(np.log2(cols * TILE_PX)))   # the mosaic's own deepest level
        cells = set()
        while len(cells) < n_cells:
            cells.add((int(rng.integers(0, rows)), int(rng.integers(0, cols))))
        cells = sorted(cells)
        first, first_cpu, again, seen = [], [], [], []
        time.sleep(2)        # let the start-up warm-up finish, so each first view's CPU is its own
        for r, c in cells:   # one at a time: each first view matches one sub-mosaic
            cpu0 = s.cpu_seconds()
            first.append(s.get(f"/mosaic_files/{base_top + 1}/{2 * c}_{2 * r}.jpeg")[1])
            first_cpu.append(s.cpu_seconds() - cpu0)
        for r, c in cells:   # the same sub-mosaics (matched already), other tiles and deeper levels
            paths = [f"/mosaic_files/{base_top + 1}/{2 * c + 1}_{2 * r + 1}.jpeg"]
            for d in range(2, 7):
                k = 2 ** d
                paths.append(f"/mosaic_files/{base_top + d}/{k * c + int(rng.integers(0, k))}_{k * r + int(rng.integers(0, k))}.jpeg")
            again.extend(s.many(paths).tolist())
            seen.extend(paths)
        revisits = s.many(seen)   # the same tiles again: from the tile cache
        rss = s.peak_rss_mb()
    finally:
        s.stop()
    s2 = Server(jpath, "--recursive", "1")
    try:   # a new process: the sub-mosaics come from DB/recursive/
        from_disk = [s2.get(f"/mosaic_files/{base_top + 1}/{2 * c}_{2 * r}.jpeg")[1] for r, c in cells]
    finally:
        s2.stop()
    return {"sub_grid": 64, "levels": len(lv), "cells": len(cells), "first_view": stats(np.array(first)),
            "first_view_server_cpu": stats(np.array(first_cpu)),
            "cached_views": stats(np.array(again)), "revisited_tiles": stats(revisits),
            "first_view_new_process_from_disk": stats(np.array(from_disk)),
            "peak_rss_mb": rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 tiles, 64 x 64 cells, 64 requests, 3 sub-mosaics")
    ap.add_argument("--data", default=None, help="the shared/data folder")
    ap.add_argument("--work", default=str(WORK), help="where the pool and assignment are cached (outside the repo)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data = data_dir(a.data)
    n_tiles, cells, n_req, n_sub = (500, 64, 64, 3) if a.quick else (2000, 256, 256, 8)
    load_start = loadavg()
    t0 = time.perf_counter()
    jpath = build(data, Path(a.work), n_tiles, cells)
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(a.seed)
    res = {"quick": a.quick, "pool_tiles": n_tiles, "cells": [cells, cells], "tile_px": TILE_PX,
           "setup_seconds": round(setup_s, 1), "loadavg_start": load_start}
    res["plain"] = bench_plain(jpath, n_req, rng)
    res["recursive"] = bench_recursive(jpath, n_sub, rng)
    res["loadavg_end"] = loadavg()
    p, r = res["plain"], res["recursive"]
    r["ratio_cached_views_p50_to_level_tiles_cold_p50"] = round(r["cached_views"]["p50_ms"] / p["tiles_cold"]["p50_ms"], 2)
    r["ratio_revisits_p50_to_level_tiles_warm_p50"] = round(r["revisited_tiles"]["p50_ms"] / p["tiles_warm"]["p50_ms"], 2)
    res["goals"] = {"page_under_1s": p["page_first_byte_s"] < 1.0, "p50_le_30ms": p["tiles_cold"]["p50_ms"] <= 30,
                    "p95_le_150ms": p["tiles_cold"]["p95_ms"] <= 150, "rss_le_1GB": p["peak_rss_mb"] <= 1024,
                    "first_sub_mosaic_le_0.5s": r["first_view"]["max_ms"] <= 500}
    out = write_results(Path(a.out) if a.out else default_out("bench_serve" + ("_quick" if a.quick else "")),
                        "bench_serve", res)
    print(json.dumps({k: res[k] for k in ("plain", "recursive", "goals", "loadavg_start", "loadavg_end")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
