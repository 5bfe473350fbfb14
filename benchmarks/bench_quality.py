"""Benchmark: how faithful mosaics are, per repeat mode, against simple matchers (not a test).

Pools (tile databases built through the library, cached under --work): one CIFAR-10 sheet
(10,000 tiles, `cifar1` by default), confirmed on a second sheet and on the 3,926 Noto emoji
(`--pools cifar1,cifar2,emoji`). Each pool is ingested twice: with today's features
(`lab-grid`, 51-d Lab) and with the default `rgb-pyramid` features. Targets: the 24 Kodak and
9 Wikimedia photographs of ../shared/data, at 32, 64 and 128 cells across the long side.

Methods (every mosaic rendered from the same 32 px thumbnails, colour transfer off, scored by
mosaicdb.evaluate: PSNR/SSIM at 64 px, Gaussian-pyramid MSE L1-L4 of the target-sized mosaic,
PSNR per cell, repeat statistics):

  5x5 rgb (free)      tiles and cells area-resampled to 5x5 RGB, exact nearest tile, no repeat
                      control (the "plain 5x5 RGB thumbnail matcher" of issue 12)
  PxP rgb (free)      the same at p x p (`--pxp`, e.g. 3,4,6,8: none by default)
  pixel L2 (free)     the seed's method: cells at 32x32 against the 32 px thumbnails, exact L2
                      over all pixels, no repeat control
  today <mode>        lab-grid database, random-order greedy, no refinement (the code before
                      issue 12, which `--order random --refine-passes 0` still runs)
  features <mode>     rgb-pyramid database, random-order greedy, no refinement
  ours <mode>         rgb-pyramid database, the defaults: regret order + refinement + dithering
                      (--dither 0.5; none with --unique or turns)
  ours <mode> orient mirror / all
                      the same with `--orient mirror` (a tile or its mirror image) and `--orient
                      all` (the 8 flips and quarter turns); `--orients` picks which ([mirror,all])
  ours <mode> dither W
                      the same with `--dither W` (the weight of the mosaic's colours, blurred
                      over about a cell, against the target's; 0: no dithering, the defaults
                      before it); `--dithers` picks the weights ([0]; not with --unique)

Modes: --min-distance 0 (free), 2 (the default), 3, --max-uses 40 (--min-distance 0), --unique
(only where the pool has at least as many tiles as cells). Pixel L2 and --unique take seconds
to minutes per target, so they run on grids up to --slow-max-cells (3,000: the 32 and 64 cell
grids). Match time = cell features + search + assignment, wall seconds on a shared machine
(the load average is recorded).

`--sweep` instead measures the feature choices (free repeats, exact nearest neighbour on the
full vectors, in memory): colour space (sRGB vs CIE Lab), pyramid levels and weights, the old
layout (mean + 4x4 grid) in either space, and the PCA dims D.

Goals (issue 12, same run): free repeats PSNR@64 >= 5x5 + 1 dB, SSIM@64 >= it, pyramid MSE
L1-L4 <= it; `--min-distance 3` PSNR@64 >= the 5x5 matcher (free); default mode SSIM@64 >= 0.80
at 64 cells.

    python benchmarks/bench_quality.py                 # cifar1, all 33 targets, 3 grids (~30 min)
    python benchmarks/bench_quality.py --quick         # 4 targets, 64 cells, no pixel L2 (~2 min)
    python benchmarks/bench_quality.py --pools cifar2,emoji --grids 64
    python benchmarks/bench_quality.py --sweep         # the feature choices
    python benchmarks/bench_quality.py --grids 64 --no-pixel-l2 --no-crops --no-today --targets kodim01,kodim03
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "bench_quality"
RENDER_PX = 32
MODES = {  # name -> MatchOptions fields
    "md0": {"min_distance": 0},
    "md2 (default)": {},
    "md3": {"min_distance": 3},
    "maxuses40": {"min_distance": 0, "max_uses": 40},
    "unique": {"unique": True},
}
QUICK_TARGETS = ("kodim05", "kodim14", "kodim23", "019")
CROP_TARGETS = ("kodim23", "kodim05", "047")


# ---- pools and targets ---------------------------------------------------------------------------
def pool_source(data: Path, name: str, work: Path) -> Path:
    """Files to ingest: a CIFAR sheet unpacked to PNGs (cached), or the emoji zip as it is."""
    if name == "emoji":
        return data / "tiles" / "noto_emoji_136x128.zip"
    if not (name.startswith("cifar") and name[5:].isdigit() and 1 <= int(name[5:]) <= common.CIFAR_SHEETS):
        raise SystemExit(f"unknown pool {name!r}: cifar1..cifar5 or emoji")
    folder = work / "png" / name
    done = folder / ".complete"
    if not done.exists():
        from PIL import Image
        folder.mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(common.load_sheet(data / "tiles" / f"cifar10_train_{name[5:]}.png")):
            Image.fromarray(t).save(folder / f"{i:05d}.png", compress_level=1)
        done.touch()
    return folder


def pool_db(data: Path, name: str, kind: str, work: Path) -> Path:
    """A database of the pool with `kind` features (built once, then reused from --work)."""
    from mosaicdb import TileDB
    path = work / "db" / f"{name}-{kind}"
    if (path / ".complete").exists():
        return path
    import shutil
    shutil.rmtree(path, ignore_errors=True)
    src = pool_source(data, name, work)
    t0 = time.perf_counter()
    with TileDB.create(path, features=kind) as db:
        db.ingest([src], workers=2)
        db.ensure_index()
    print(f"  built {path.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    (path / ".complete").touch()
    return path


def target_paths(data: Path, quick: bool) -> list[Path]:
    paths = sorted((data / "targets" / "kodak").glob("*.png")) + sorted((data / "targets" / "wikimedia_pd").glob("*.png"))
    if quick:
        paths = [p for p in paths if p.stem in QUICK_TARGETS]
    return paths


# ---- methods ---------------------------------------------------------------------------------------
class FiveByFive:
    """Exact nearest tile on p x p (5 x 5) RGB thumbnails (tiles from their 32 px thumbnail)."""

    def __init__(self, db, p: int = 5):
        import cv2
        import faiss
        self.p = p
        self.ids = db.ids()
        t = np.asarray(db.thumbs(32)[self.ids])
        v = np.stack([cv2.resize(x, (p, p), interpolation=cv2.INTER_AREA) for x in t]).reshape(len(t), -1)
        self.index = faiss.IndexFlatL2(3 * p * p)
        self.index.add(v.astype(np.float32))

    def __call__(self, image, grid) -> np.ndarray:
        from mosaicdb.features import cell_blocks
        from mosaicdb.match.grid import resample_cells
        cells = cell_blocks(resample_cells(image, grid, self.p), grid.rows, grid.cols).reshape(grid.cells, -1)
        _, nn = self.index.search(cells.astype(np.float32), 1)
        return self.ids[nn[:, 0]].reshape(grid.rows, grid.cols)


def run_ours(db, image, grid, mode: dict, order: str, refine_passes: int, orient: str = "none") -> dict:
    from mosaicdb.match.grid import cell_data
    from mosaicdb.match.matcher import match
    from mosaicdb.match.options import MatchOptions
    opts = MatchOptions(grid=f"{grid.cols}x{grid.rows}", order=order, refine_passes=refine_passes, orient=orient,
                        **mode)
    t0 = time.perf_counter()
    cells = cell_data(image, grid, db.feature_spec)
    res = match(db, cells, grid, opts)
    seconds = time.perf_counter() - t0
    a = res.assignment
    ref = a.stats.get("refine", {})
    return {"tile_ids": a.tile_ids, "orient": a.orient, "match_seconds": seconds, "mean_cost": float(a.cost.mean()),
            "widened_cells": a.widened_cells,
            "total_cost_before_refine": ref.get("total_cost_before"), "total_cost_after_refine": ref.get("total_cost_after"),
            "refine_moves": ref.get("reassigned", 0) + ref.get("swapped", 0), "refine_seconds": ref.get("seconds")}


def timed(fn, *args) -> dict:
    t0 = time.perf_counter()
    ids = fn(*args)
    return {"tile_ids": ids, "match_seconds": time.perf_counter() - t0}


def draw(db, tile_ids: np.ndarray, grid, px: int, orient=None) -> np.ndarray:
    """The mosaic of `tile_ids` (turned by `orient`) from the database's thumbnails, colour transfer off."""
    from mosaicdb import assignment as asg
    from mosaicdb.render.options import RenderOptions
    from mosaicdb.render.rows import render_array
    rows, cols = tile_ids.shape
    z = np.zeros((rows, cols, 3), np.float32)
    saved = asg.SavedAssignment({"grid": {"cols": cols, "rows": rows, "crop": list(grid.crop)}},
                                np.ascontiguousarray(tile_ids, dtype=np.int64), z[..., 0], z, z, orient)
    return render_array(db, saved, RenderOptions(tile_px=px))


def score(db, tile_ids: np.ndarray, crop: np.ndarray, grid, orient=None) -> dict:
    from mosaicdb.evaluate import evaluate
    m = evaluate(crop, draw(db, tile_ids, grid, RENDER_PX, orient), *tile_ids.shape, tile_ids)
    rep = m["repeats"]
    return {"psnr64": m["psnr64"], "ssim64": m["ssim64"], "psnr_cell": m["psnr_cell"],
            "pyramid_mse_e3": [1e3 * m["pyramid_mse"][k] for k in "1234"],
            "distinct": rep["distinct_tiles"], "max_uses": rep["max_uses"],
            "min_repeat_distance": rep["min_repeat_distance"]}


# ---- the main run ----------------------------------------------------------------------------------
def run_pool(args, data, work, pool: str, targets: list[Path]) -> dict:
    from mosaicdb import TileDB
    from mosaicdb.match.grid import load_target, make_grid
    from bench_match import BruteForce
    dbs = {kind: TileDB.open(pool_db(data, pool, kind, work), readonly=True) for kind in ("lab-grid", "rgb-pyramid")}
    new, old = dbs["rgb-pyramid"], dbs["lab-grid"]
    assert np.array_equal(new.ids(), old.ids())
    for db in dbs.values():
        db.ensure_index()
    n_tiles = len(new)
    five = FiveByFive(new)
    others = {p: FiveByFive(new, p) for p in args.pxp}
    brute = BruteForce(new) if args.pixel_l2 else None
    per_target: dict = {}
    for path in targets:
        target = load_target(path)
        for n in args.grids:
            grid = make_grid(*target.size, str(n))
            l, t, r, b = grid.crop
            crop = target.image[t:b, l:r]
            runs = {"5x5 rgb (free)": timed(five, target.image, grid)}
            for p, m in others.items():
                runs[f"{p}x{p} rgb (free)"] = timed(m, target.image, grid)
            if brute is not None and grid.cells <= args.slow_max_cells:
                runs["pixel L2 (free)"] = timed(lambda im, g: brute.nearest(brute.cell_pixels(im, g)).reshape(g.rows, g.cols),
                                                target.image, grid)
            for mode, fields in MODES.items():
                if fields.get("unique") and (n_tiles < grid.cells or grid.cells > args.slow_max_cells):
                    continue  # --unique needs at least as many tiles as cells (and minutes per target)
                if args.today:
                    before = {**fields, "dither": 0.0}  # (no refinement passes: no dithering either)
                    runs[f"today {mode}"] = run_ours(old, target.image, grid, before, "random", 0)
                    if mode != "unique" and mode != "md0":  # order and refinement act on constraints only
                        runs[f"features {mode}"] = run_ours(new, target.image, grid, before, "random", 0)
                runs[f"ours {mode}"] = run_ours(new, target.image, grid, fields, "regret", 4)
                for orient in args.orients:
                    runs[f"ours {mode} orient {orient}"] = run_ours(new, target.image, grid, fields, "regret", 4, orient)
                for w in args.dithers if not fields.get("unique") else ():
                    runs[f"ours {mode} dither {w:g}"] = run_ours(new, target.image, grid, {**fields, "dither": w},
                                                                 "regret", 4)
            scored = {}
            for name, r in runs.items():
                ids, turn = r.pop("tile_ids"), r.pop("orient", None)
                scored[name] = {**r, **score(new, ids, crop, grid, turn)}
                if args.crops and n == args.crop_grid and path.stem in CROP_TARGETS:
                    r["_ids"] = (ids, turn)
            if args.crops and n == args.crop_grid and path.stem in CROP_TARGETS:
                save_crops(new, target.image, grid, {k: v.pop("_ids") for k, v in runs.items() if "_ids" in v},
                           work_out=args.crop_dir, name=f"{pool}-{path.stem}-{n}")
            per_target.setdefault(str(n), {})[path.stem] = scored
            print(f"  {pool} {path.stem} {n}: " + ", ".join(
                f"{k} {v['psnr64']:.2f}" for k, v in scored.items() if k.startswith(("5x5", "today md2", "ours"))),
                flush=True)
    for db in dbs.values():
        db.close()
    return {"tiles": n_tiles, "per_target": per_target, "means": means(per_target)}


def means(per_target: dict) -> dict:
    out = {}
    for grid, targets in per_target.items():
        methods: dict = {}
        for scored in targets.values():
            for name, m in scored.items():
                methods.setdefault(name, []).append(m)
        out[grid] = {}
        for name, ms in methods.items():
            row = {k: float(np.mean([m[k] for m in ms])) for k in ("psnr64", "ssim64", "psnr_cell", "match_seconds",
                                                                     "distinct", "max_uses")}
            row["pyramid_mse_e3"] = np.mean([m["pyramid_mse_e3"] for m in ms], axis=0).round(4).tolist()
            d = [m["min_repeat_distance"] for m in ms if m["min_repeat_distance"] is not None]
            row["min_repeat_distance"] = int(min(d)) if d else None
            if ms[0].get("total_cost_after_refine") is not None:
                row["total_cost_before_refine"] = float(np.mean([m["total_cost_before_refine"] for m in ms]))
                row["total_cost_after_refine"] = float(np.mean([m["total_cost_after_refine"] for m in ms]))
            row["targets"] = len(ms)
            out[grid][name] = row
    return out


def goals(m: dict, suffix: str = "") -> dict:
    """The issue's goals for the `ours` rows (`suffix`: e.g. " orient all", those rows instead)."""
    base = m.get("5x5 rgb (free)")
    free, md3, default = m.get("ours md0" + suffix), m.get("ours md3" + suffix), m.get("ours md2 (default)" + suffix)
    if not (base and free and md3 and default):
        return {}
    return {
        "free_psnr64_vs_5x5_plus_1dB": {"ours": free["psnr64"], "goal_min": base["psnr64"] + 1.0,
                                        "met": free["psnr64"] >= base["psnr64"] + 1.0},
        "free_ssim64_vs_5x5": {"ours": free["ssim64"], "goal_min": base["ssim64"], "met": free["ssim64"] >= base["ssim64"]},
        "free_pyramid_vs_5x5": {"ours": free["pyramid_mse_e3"], "goal_max": base["pyramid_mse_e3"],
                                "met": [a <= b for a, b in zip(free["pyramid_mse_e3"], base["pyramid_mse_e3"])]},
        "md3_psnr64_vs_5x5_free": {"ours": md3["psnr64"], "goal_min": base["psnr64"], "met": md3["psnr64"] >= base["psnr64"]},
        "default_ssim64": {"ours": default["ssim64"], "goal_min": 0.80, "met": default["ssim64"] >= 0.80},
    }


def variants(args) -> list[str]:
    """The row suffixes measured besides the defaults: "orient all", "dither 0.5", ..."""
    return [f"orient {o}" for o in args.orients] + [f"dither {w:g}" for w in args.dithers]


def match_time_ratios(means_by_grid: dict) -> dict:
    """Match seconds of each `ours <mode> orient X` (or `dither W`) row over its `ours <mode>` row
    (same run)."""
    out = {}
    for grid, methods in means_by_grid.items():
        out[grid] = {}
        for name, m in methods.items():
            for sep in (" orient ", " dither "):
                if sep in name:
                    out[grid][name] = round(m["match_seconds"] / methods[name.rsplit(sep, 1)[0]]["match_seconds"], 2)
    return out


def table(means_by_grid: dict, pool: str) -> str:
    head = ("| pool | grid | method | PSNR@64 | SSIM@64 | pyr L1 | L2 | L3 | L4 (×1e-3) | PSNR/cell | match s "
            "| distinct | max uses | min rep. dist |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for grid, methods in means_by_grid.items():
        for name, m in methods.items():
            p = m["pyramid_mse_e3"]
            lines.append(f"| {pool} | {grid} | {name} | {m['psnr64']:.2f} | {m['ssim64']:.3f} | {p[0]:.2f} | {p[1]:.2f} "
                         f"| {p[2]:.2f} | {p[3]:.2f} | {m['psnr_cell']:.2f} | {m['match_seconds']:.2f} | "
                         f"{m['distinct']:.0f} | {m['max_uses']:.0f} | {m['min_repeat_distance']} |")
    return "\n".join(lines)


# ---- pictures ---------------------------------------------------------------------------------------
def _busiest_window(crop: np.ndarray, grid, h: int, w: int) -> tuple[int, int]:
    """Top-left cell of the h x w cells where the target has the most detail (gradient energy)."""
    import cv2
    small = cv2.resize(crop, (grid.cols * 4, grid.rows * 4), interpolation=cv2.INTER_AREA).astype(np.float32)
    g = np.abs(np.diff(small, axis=0))[:, :-1].sum(-1) + np.abs(np.diff(small, axis=1))[:-1].sum(-1)
    per_cell = cv2.resize(g, (grid.cols, grid.rows), interpolation=cv2.INTER_AREA)
    box = cv2.boxFilter(per_cell, -1, (w, h), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    box = box[:max(1, grid.rows - h + 1), :max(1, grid.cols - w + 1)]
    r, c = np.unravel_index(int(np.argmax(box)), box.shape)
    return int(r), int(c)


def save_crops(db, image, grid, ids_by_method: dict, work_out: Path, name: str) -> None:
    """Side by side: the target and each mosaic, whole at 8 px per cell and a 12x8-cell detail
    at 32 px per cell (the thumbnails' own size)."""
    import cv2
    from PIL import Image, ImageDraw
    show = [m for m in ("5x5 rgb (free)", "today md2 (default)", "ours md0", "ours md0 orient all", "ours md2 (default)",
                        "ours md2 (default) orient mirror", "ours md2 (default) orient all", "today md3", "ours md3")
            if m in ids_by_method]
    show += [m for m in ids_by_method if " dither " in m and m.startswith(("ours md0 ", "ours md3 "))]
    l, t, r, b = grid.crop
    crop = image[t:b, l:r]
    panels_small, panels_big = [], []
    cr, cc = _busiest_window(crop, grid, 8, 12)
    for label in ["target"] + show:
        if label == "target":
            small = cv2.resize(crop, (grid.cols * 8, grid.rows * 8), interpolation=cv2.INTER_AREA)
            big = cv2.resize(crop, (grid.cols * 32, grid.rows * 32), interpolation=cv2.INTER_CUBIC)
        else:
            ids, turn = ids_by_method[label]
            small = draw(db, ids, grid, 8, turn)
            big = draw(db, ids, grid, 32, turn)
        big = big[cr * 32:(cr + 8) * 32, cc * 32:(cc + 12) * 32]
        panels_small.append((label, small))
        panels_big.append((label, big))

    def strip(panels):
        h = max(p.shape[0] for _, p in panels) + 18
        w = sum(p.shape[1] for _, p in panels) + 6 * (len(panels) - 1)
        canvas = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(canvas)
        x = 0
        for label, p in panels:
            canvas.paste(Image.fromarray(p), (x, 18))
            draw.text((x + 2, 2), label, fill="black")
            x += p.shape[1] + 6
        return canvas

    a, bb = strip(panels_small), strip(panels_big)
    out = Image.new("RGB", (max(a.width, bb.width), a.height + bb.height + 6), "white")
    out.paste(a, (0, 0))
    out.paste(bb, (0, a.height + 6))
    work_out.mkdir(parents=True, exist_ok=True)
    out.save(work_out / f"{name}.png")


# ---- the feature sweep -------------------------------------------------------------------------------
SWEEP = [  # (label, space, levels, pca dims or 0)
    ("lab-grid (today: Lab mean + 4x4)", "lab-grid", None, 0),
    ("rgb mean + 4x4 (today's layout in sRGB)", "rgb", ((1, 1.0), (4, 1.0)), 0),
    ("lab pyramid 1,2,4,8", "lab", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 0),
    ("rgb 2x2 + mean", "rgb", ((1, 1.0), (2, 1.0)), 0),
    ("rgb 4x4 only", "rgb", ((4, 1.0),), 0),
    ("rgb 8x8 only", "rgb", ((8, 1.0),), 0),
    ("rgb 8x8 + mean", "rgb", ((1, 1.0), (8, 1.0)), 0),
    ("rgb mean x3 + 4x4", "rgb", ((1, 3.0), (4, 1.0)), 0),
    ("rgb pyramid 1,2,4,8 (rgb-pyramid)", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 0),
    ("rgb pyramid, mean x2", "rgb", ((1, 2.0), (2, 1.0), (4, 1.0), (8, 1.0)), 0),
    ("rgb pyramid, 2x2 x2", "rgb", ((1, 1.0), (2, 2.0), (4, 1.0), (8, 1.0)), 0),
    ("rgb pyramid, 8x8 x2", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 2.0)), 0),
    ("rgb pyramid, mean x4", "rgb", ((1, 4.0), (2, 1.0), (4, 1.0), (8, 1.0)), 0),
    ("rgb pyramid 1,2,4 (no 8x8)", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0)), 0),
    ("rgb pyramid 1,2,4,8,16", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (16, 1.0)), 0),
    ("rgb pyramid, PCA 16", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 16),
    ("rgb pyramid, PCA 24", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 24),
    ("rgb pyramid, PCA 32", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 32),
    ("rgb pyramid, PCA 48 (default)", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 48),
    ("rgb pyramid, PCA 64", "rgb", ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 64),
]


def run_sweep(args, data, work, pool: str, targets: list[Path]) -> dict:
    import faiss
    from mosaicdb import TileDB
    from mosaicdb.feature_kinds import LabGrid, Pyramid
    from mosaicdb.features import cell_blocks
    from mosaicdb.match.grid import load_target, make_grid, resample_cells
    db = TileDB.open(pool_db(data, pool, "rgb-pyramid", work), readonly=True)
    ids = db.ids()
    tiles16 = np.asarray(db.thumbs(16)[ids])
    images = [load_target(p) for p in targets]
    five = FiveByFive(db)
    out: dict = {}
    for n in args.grids:
        cells = []
        for t in images:
            g = make_grid(*t.size, str(n))
            cells.append((t, g, cell_blocks(resample_cells(t.image, g, 16), g.rows, g.cols)))
        rows: dict = {"5x5 rgb (free)": [score(db, five(t.image, g), t.image[g.crop[1]:g.crop[3], g.crop[0]:g.crop[2]], g)
                                         for t, g, _ in cells]}
        for label, space, levels, dims in SWEEP:
            spec = LabGrid(4, 1.0) if space == "lab-grid" else Pyramid(space, levels, 16, 0)
            tf = spec(tiles16)
            project = (lambda x: x)
            if dims:
                pca = faiss.PCAMatrix(tf.shape[1], dims, 0, False)
                pca.train(tf)
                project = pca.apply
            index = faiss.IndexFlatL2(dims or tf.shape[1])
            index.add(project(tf))
            res = []
            for t, g, blocks in cells:
                _, nn = index.search(project(spec(blocks)), 1)
                res.append(score(db, ids[nn[:, 0]].reshape(g.rows, g.cols), t.image[g.crop[1]:g.crop[3], g.crop[0]:g.crop[2]], g))
            rows[label] = res
            m = res
            print(f"  sweep {pool} {n} {label}: PSNR@64 {np.mean([r['psnr64'] for r in m]):.2f}, "
                  f"SSIM {np.mean([r['ssim64'] for r in m]):.3f}, L1 {np.mean([r['pyramid_mse_e3'][0] for r in m]):.2f}",
                  flush=True)
        out[str(n)] = {k: {"psnr64": float(np.mean([r["psnr64"] for r in v])),
                           "ssim64": float(np.mean([r["ssim64"] for r in v])),
                           "pyramid_mse_e3": np.mean([r["pyramid_mse_e3"] for r in v], axis=0).round(4).tolist()}
                       for k, v in rows.items()}
    db.close()
    return out


def sweep_table(res: dict, pool: str) -> str:
    lines = ["| pool | grid | features (free repeats, exact NN) | PSNR@64 | SSIM@64 | pyr L1 | L2 | L3 | L4 (×1e-3) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for grid, rows in res.items():
        for k, m in rows.items():
            p = m["pyramid_mse_e3"]
            lines.append(f"| {pool} | {grid} | {k} | {m['psnr64']:.2f} | {m['ssim64']:.3f} | {p[0]:.2f} | {p[1]:.2f} "
                         f"| {p[2]:.2f} | {p[3]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mosaicdb-bench-quality"),
                    help="cache for the unpacked pools and their databases [default: %(default)s]")
    ap.add_argument("--pools", default="cifar1", help="comma-separated: cifar1..cifar5, emoji")
    ap.add_argument("--grids", default="32,64,128")
    ap.add_argument("--quick", action="store_true", help=f"targets {', '.join(QUICK_TARGETS)} at 64 cells, no pixel L2")
    ap.add_argument("--targets", default=None, help="comma-separated target names (stems) instead of all / --quick's")
    ap.add_argument("--no-pixel-l2", dest="pixel_l2", action="store_false", help="skip the (slow) full-pixel brute force")
    ap.add_argument("--slow-max-cells", type=int, default=3000,
                    help="run pixel L2 and --unique only on grids of at most this many cells [default: %(default)s]")
    ap.add_argument("--sweep", action="store_true", help="measure the feature choices instead")
    ap.add_argument("--no-crops", dest="crops", action="store_false")
    ap.add_argument("--crop-grid", type=int, default=64)
    ap.add_argument("--orients", default="mirror,all", help="--orient values measured besides none ('' for none)")
    ap.add_argument("--pxp", default="", help="p x p RGB matchers measured besides 5x5, e.g. 3,4,6,8 (how low "
                    "pyramid L1 goes by choosing tiles cell by cell)")
    ap.add_argument("--dithers", default="0", help="--dither weights measured besides the default ('' for none)")
    ap.add_argument("--no-today", dest="today", action="store_false",
                    help="skip the 'today' and 'features' rows (the code before issue 12)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.orients = [o for o in args.orients.split(",") if o]
    args.dithers = [float(w) for w in args.dithers.split(",") if w]
    args.pxp = [int(p) for p in args.pxp.split(",") if p and int(p) != 5]
    args.grids = [64] if args.quick else [int(g) for g in args.grids.split(",")]
    if args.quick:
        args.pixel_l2 = False
    data = common.data_dir(args.data)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    name = NAME + ("_sweep" if args.sweep else "") + ("_quick" if args.quick else "") + ("_targets" if args.targets else "")
    out = Path(args.out) if args.out else common.default_out(name)
    args.crop_dir = out.parent / f"{name}_crops"
    targets = target_paths(data, args.quick)
    if args.targets:
        want = set(args.targets.split(","))
        targets = [p for p in target_paths(data, False) if p.stem in want]
        if len(targets) != len(want):
            raise SystemExit(f"unknown targets: {sorted(want - {p.stem for p in targets})}")
    results: dict = {"loadavg_start": common.loadavg(), "targets": [p.name for p in targets], "grids": args.grids,
                     "render": f"{RENDER_PX} px thumbnails, colour transfer off", "pools": {}}
    t0 = time.perf_counter()
    tables = []
    for pool in args.pools.split(","):
        print(f"pool {pool}", flush=True)
        if args.sweep:
            res = run_sweep(args, data, work, pool, targets)
            results["pools"][pool] = res
            tables.append(sweep_table(res, pool))
        else:
            res = run_pool(args, data, work, pool, targets)
            res["goals"] = {g: goals(m) for g, m in res["means"].items()}
            for v in variants(args):
                res[f"goals {v}"] = {g: goals(m, f" {v}") for g, m in res["means"].items()}
            res["match_time_vs_none"] = match_time_ratios(res["means"])
            results["pools"][pool] = res
            tables.append(table(res["means"], pool))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["loadavg_end"] = common.loadavg()
    results["table_markdown"] = "\n\n".join(tables)
    path = common.write_results(out, name, results)
    print("\n" + results["table_markdown"])
    if not args.sweep:
        for pool, res in results["pools"].items():
            for which in ["goals"] + [f"goals {v}" for v in variants(args)]:
                for g, gl in res[which].items():
                    for k, v in gl.items():
                        print(f"{pool} {g}: {which}: {k}: {v}")
            for g, ratios in res["match_time_vs_none"].items():
                print(f"{pool} {g}: match time with orientations or dithering / without: {ratios}")
        print(f"crops: {args.crop_dir}")
    print(f"loadavg start {results['loadavg_start']}, end {results['loadavg_end']}; wrote {path}")


if __name__ == "__main__":
    main()
