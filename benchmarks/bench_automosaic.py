"""Benchmark: autoencoder tiles ("automosaic") against retrieval from the same pool (not a test).

Pool: the 10,000 CIFAR-10 tiles of sheet 1 (ingested once, cached under --work). Model: trained
on that pool with the default settings of `mosaic autoencoder train` (or --model to reuse one);
timed, with its reconstruction MSE against decoding random codes. Baseline for the training
time, in the same run: the same number of bare forward/backward/Adam steps of the same network
on one preloaded batch (no data loading, noise or checkpoints), timed on a slice and scaled.

Targets: --targets (default 8 Kodak photos) at --grids cells (32, 64, 128) across the long
side. Methods, each rendered at the same evaluation size by `mosaicdb.make.metrics_for` and
scored by `mosaicdb.evaluate` (PSNR/SSIM at 64 px, PSNR per cell, Gaussian-pyramid MSE):

  retrieval              `mosaic make` defaults (--min-distance 2), no colour transfer
  retrieval_mean         the same assignment rendered with --color mean --color-strength 1
  retrieval_meanstd      the same with --color meanstd --color-strength 1
  autoencoder            `mosaic make --autoencoder` defaults (encoder, atlas, Adam, colour fit)
  autoencoder_no_fit     the same without the per-cell colour fit
  hybrid                 --autoencoder --hybrid: per cell the closer of decoded and retrieved
  hybrid_no_fit          the same without the colour fit (where retrieved tiles can compete)
  autoencoder_latentN    the first, with a second model of --compare-latent N code values
                         (default 8): a tighter bottleneck keeps tiles closer to the pool's look

Inference speed: Fitter.fit on every cell of the largest grid of the first target, for several
Adam step counts (wall and process CPU seconds, with the stage split), against retrieval's
matcher on the same grid in the same run (cell features + search + assignment).

Picture: results/automosaic_side_by_side.png: a crop of the first target at 64 cells, 32 px
per tile: target | retrieval | retrieval meanstd | autoencoder | hybrid.

    python benchmarks/bench_automosaic.py            # ~15-30 min on 2 cores
    python benchmarks/bench_automosaic.py --quick    # 2 targets, grids 32 and 64, 600 steps
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "bench_automosaic"
GOAL_TRAIN_SECONDS = 300.0
GOAL_RATIO = 0.2
GOAL_CELLS_PER_S = 5000.0
DEFAULT_TARGETS = ["kodim23", "kodim01", "kodim03", "kodim05", "kodim07", "kodim13", "kodim15", "kodim19"]
EVAL_TILE_PX = 16
PICTURE_GRID, PICTURE_PX = 64, 32
SPEED_STEPS = (0, 1, 2, 4, 8)


def target_path(data: Path, name: str) -> Path:
    p = Path(name)
    return p if p.suffix else data / "targets" / "kodak" / f"{name}.png"


# ---- setup -------------------------------------------------------------------------------------
def pool_db(data: Path, work: Path) -> Path:
    """The 10,000 tiles of CIFAR-10 sheet 1 as a tile database (cached)."""
    from PIL import Image
    from mosaicdb import TileDB
    path = work / "cifar10k.db"
    if (path / "catalog.sqlite").exists():
        with TileDB.open(path) as db:
            if len(db) == common.CIFAR_PER_SHEET:
                db.ensure_index()
                return path
        raise SystemExit(f"{path} exists but does not hold {common.CIFAR_PER_SHEET} tiles: delete it and rerun")
    tiles = common.load_sheet(data / "tiles" / "cifar10_train_1.png")

    def items():
        for i, t in enumerate(tiles):
            b = io.BytesIO()
            Image.fromarray(t).save(b, "PNG", compress_level=1)
            yield b.getvalue(), f"cifar10_train_1:{i}", {"sheet": 1, "index": i}

    with TileDB.create(path) as db:
        db.add_images(items())
    return path


def train(db_path: Path, model: Path, opts) -> dict:
    """Train (timed: wall and process CPU), then the bare-steps baseline."""
    from mosaicdb import TileDB
    from mosaicdb.autoencoder.train import train_autoencoder
    if model.exists():
        shutil.rmtree(model)
    load0, cpu0, t0 = common.loadavg(), common.cpu_seconds(), time.perf_counter()
    with TileDB.open(db_path, readonly=True) as db:
        rep = train_autoencoder(db, model, opts)
    wall, cpu = time.perf_counter() - t0, common.cpu_since(cpu0)
    base = bare_steps(opts, min(200, opts.steps))
    return {"options": opts.to_json(), "wall_s": round(wall, 2), "cpu_s": cpu["self"], "seconds": rep.seconds,
            "metrics": rep.metrics, "loadavg_before": load0, "loadavg_after": common.loadavg(),
            "baseline_bare_steps_s": round(base * opts.steps, 2),
            "ratio_to_baseline": round(rep.seconds["train"] / max(base * opts.steps, 1e-9), 3),
            "goal_seconds": GOAL_TRAIN_SECONDS, "goal_met": bool(wall <= GOAL_TRAIN_SECONDS),
            "goal_ratio": GOAL_RATIO, "ratio_met": bool(rep.metrics["ratio"] < GOAL_RATIO)}


def bare_steps(opts, n: int) -> float:
    """Seconds per step of forward/backward/Adam on one preloaded batch: the floor of training."""
    import torch
    from mosaicdb.autoencoder import model as M
    torch.set_num_threads(opts.resolved_threads())
    torch.manual_seed(0)
    net = M.build(opts.arch)
    adam = torch.optim.Adam(net.parameters(), lr=opts.lr)
    s = opts.arch.size
    x = torch.rand(opts.batch, s, s, 3).permute(0, 3, 1, 2)
    t0 = time.perf_counter()
    for _ in range(n):
        loss = (M.decode(net, M.encode(net, x)) - x).square().mean()
        adam.zero_grad()
        loss.backward()
        adam.step()
    return (time.perf_counter() - t0) / n


# ---- mosaics -----------------------------------------------------------------------------------
def scored(m: dict) -> dict:
    keep = ("psnr64", "ssim64", "psnr_cell", "pyramid_mse")
    out = {k: m[k] for k in keep}
    out["distinct_tiles"] = m["repeats"]["distinct_tiles"]
    return out


def run_target(pool, model: Path, target: Path, grid: int, work: Path, variants: list[str],
               models: dict | None = None) -> dict:
    from mosaicdb import assignment as asg
    from mosaicdb.autoencoder import AutoOptions
    from mosaicdb.autoencoder.make import AutoMaker
    from mosaicdb.make import Maker
    from mosaicdb.match.grid import load_target
    from mosaicdb.match.options import MatchOptions
    from mosaicdb.render.fidelity import metrics_for
    from mosaicdb.render.options import RenderOptions
    out, mopts = {}, MatchOptions(grid=str(grid))
    ropts = RenderOptions(tile_px=EVAL_TILE_PX)
    img = load_target(target).image
    folder = work / "mosaics"
    folder.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    r = Maker(pool, mopts, ropts).make(target, folder / f"{target.stem}-{grid}-retrieval.jpg")
    out["retrieval"] = {**scored(r.metrics), "seconds": round(time.perf_counter() - t0, 3),
                        "assignment": str(r.assignment)}
    saved = asg.load(r.assignment)
    for mode in ("mean", "meanstd"):
        m = metrics_for(pool, saved, img, RenderOptions(tile_px=EVAL_TILE_PX, color=mode, color_strength=1.0))
        out[f"retrieval_{mode}"] = scored(m)
    kinds = {"autoencoder": {}, "autoencoder_no_fit": {"color_fit": False}, "hybrid": {"hybrid": True},
             "hybrid_no_fit": {"hybrid": True, "color_fit": False}}
    for name in variants:
        aopts = AutoOptions(model=str((models or {}).get(name, model)), ae_db=str(work / f"aedb-{name}"),
                            **kinds.get(name, {}))
        t0 = time.perf_counter()
        r = AutoMaker(pool, mopts, ropts, aopts).make(target, folder / f"{target.stem}-{grid}-{name}.jpg")
        a = r.metrics["autoencoder"]
        out[name] = {**scored(r.metrics), "seconds": round(time.perf_counter() - t0, 3),
                     "fit_seconds": a["fit_seconds"], "stage_seconds": a["stage_seconds"], "mse": a["mse"],
                     "cells_decoded": a["cells_decoded"], "cells_retrieved": a["cells_retrieved"],
                     "tiles_added": a["tiles_added"],
                     "tiles_shared": a["tiles_shared"], "assignment": str(r.assignment)}
    return out


def speed(pool, model: Path, target: Path, grid: int, steps_list) -> dict:
    """Fitter.fit on every cell of the grid per step count, and retrieval's matcher on the same grid."""
    from mosaicdb.autoencoder import AutoOptions
    from mosaicdb.autoencoder.files import load_model
    from mosaicdb.autoencoder.fit import Fitter
    from mosaicdb.autoencoder.make import cell_bands
    from mosaicdb.match.grid import cell_data, load_target, make_grid
    from mosaicdb.match.matcher import match
    from mosaicdb.match.options import MatchOptions
    img = load_target(target).image
    g = make_grid(img.shape[1], img.shape[0], str(grid))
    m = load_model(model)
    cells = np.concatenate([c for _, _, c in cell_bands(img, g, m.arch.size)])
    out = {"cells": int(len(cells)), "grid": f"{g.cols}x{g.rows}", "loadavg_before": common.loadavg(), "steps": {}}
    for steps in steps_list:
        f = Fitter(m, AutoOptions(model=str(model), steps=steps))
        f.fit(cells[:256])   # warm-up (first-call allocations)
        cpu0, t0 = common.cpu_seconds(), time.perf_counter()
        r = f.fit(cells)
        wall, cpu = time.perf_counter() - t0, common.cpu_since(cpu0)["self"]
        out["steps"][str(steps)] = {"wall_s": round(wall, 3), "cpu_s": cpu, "cells_per_s": round(len(cells) / wall, 1),
                                    "cells_per_cpu_s": round(len(cells) / max(cpu, 1e-9), 1),
                                    "stage_seconds": r.seconds,
                                    "mse": {k: float(v.mean()) for k, v in r.errors.items()}}
    pool.ensure_index()
    t0 = time.perf_counter()
    cd = cell_data(img, g, pool.feature_spec)
    match(pool, cd, g, MatchOptions(grid=str(grid)))
    wall = time.perf_counter() - t0
    out["retrieval_match"] = {"wall_s": round(wall, 3), "cells_per_s": round(len(cells) / wall, 1)}
    out["loadavg_after"] = common.loadavg()
    return out


def side_by_side(target: Path, rows: dict, out_png: Path) -> None:
    """A crop of the mosaics at PICTURE_PX per tile, one panel per method, labelled."""
    from PIL import Image, ImageDraw
    from mosaicdb import TileDB
    from mosaicdb import assignment as asg
    from mosaicdb.match.grid import load_target, make_grid
    img = load_target(target).image
    panels = []
    crop = None
    named = [("retrieval", "none"), ("retrieval", "meanstd"), ("autoencoder", "none")]
    named += [(k, "none") for k in rows if k.startswith("autoencoder_latent")] + [("hybrid_no_fit", "none")]
    for name, color in named:
        if name not in rows:
            continue
        saved = asg.load(rows[name]["assignment"])
        if crop is None:   # the middle 12 x 8 cells
            c0, r0 = max(0, saved.cols // 2 - 6), max(0, saved.rows // 2 - 4)
            crop = (r0, min(saved.rows, r0 + 8), c0, min(saved.cols, c0 + 12))
            g = make_grid(img.shape[1], img.shape[0], saved.meta.grid.spec)
            l, t = g.crop[0], g.crop[1]
            px = g.cell_px
            box = (int(l + crop[2] * px), int(t + crop[0] * px), int(l + crop[3] * px), int(t + crop[1] * px))
            w, h = (crop[3] - crop[2]) * PICTURE_PX, (crop[1] - crop[0]) * PICTURE_PX
            panels.append(("target", Image.fromarray(img).crop(box).resize((w, h), Image.LANCZOS)))
        with TileDB.open(saved.meta.db, readonly=True) as db:
            from mosaicdb.render.cells import CellRenderer
            from mosaicdb.render.options import RenderOptions
            cr = CellRenderer(db, saved, RenderOptions(color=color, color_strength=1.0), img)
            a = cr.region(crop[0], crop[1], crop[2], crop[3], PICTURE_PX)
        label = name if color == "none" else f"{name} + {color}"
        panels.append((label, Image.fromarray(a)))
    w, h = panels[0][1].size
    per_row = 3
    rows_n = -(-len(panels) // per_row)
    sheet = Image.new("RGB", (per_row * (w + 8) - 8, rows_n * (h + 22)), "white")
    d = ImageDraw.Draw(sheet)
    for i, (label, im) in enumerate(panels):
        x, y = (i % per_row) * (w + 8), (i // per_row) * (h + 22)
        sheet.paste(im, (x, y + 20))
        d.text((x + 2, y + 5), label, fill="black")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, optimize=True)


# ---- summary -----------------------------------------------------------------------------------
def summarise(results: dict, grids, methods) -> dict:
    table = {}
    for g in grids:
        for m in methods:
            rows = [results[t][str(g)][m] for t in results if m in results[t].get(str(g), {})]
            if not rows:
                continue
            table.setdefault(str(g), {})[m] = {
                "targets": len(rows),
                "psnr64": round(float(np.mean([r["psnr64"] for r in rows])), 3),
                "ssim64": round(float(np.mean([r["ssim64"] for r in rows])), 4),
                "psnr_cell": round(float(np.mean([r["psnr_cell"] for r in rows])), 3),
                "pyramid_mse": {k: round(float(np.mean([r["pyramid_mse"][k] for r in rows])), 5)
                                for k in rows[0]["pyramid_mse"]},
            }
    for g, t in table.items():
        if "autoencoder" in t and "retrieval" in t:
            wins = sum(results[x][g]["autoencoder"]["psnr64"] >= results[x][g]["retrieval"]["psnr64"] for x in results)
            t["autoencoder"]["psnr64_wins_vs_retrieval"] = f"{wins}/{len(results)}"
            t["autoencoder"]["psnr64_minus_retrieval"] = round(t["autoencoder"]["psnr64"] - t["retrieval"]["psnr64"], 3)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mosaicdb-bench-automosaic"),
                    help="cache for the pool database, the model and the mosaics")
    ap.add_argument("--model", default=None, help="reuse this model folder instead of training one")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="Kodak names or image paths, comma-separated")
    ap.add_argument("--grids", default="32,64,128")
    ap.add_argument("--steps", type=int, default=None, help="training steps [default: the CLI's default]")
    ap.add_argument("--compare-latent", type=int, default=8,
                    help="also train a model with this many code values and make its mosaics (0: skip)")
    ap.add_argument("--quick", action="store_true", help="2 targets, grids 32 and 64, 600 training steps, "
                    "no second model")
    ap.add_argument("--out", default=str(common.default_out(NAME)))
    args = ap.parse_args()
    data = common.data_dir(args.data)
    from mosaicdb import TileDB
    from mosaicdb.autoencoder import AutoOptions, TrainOptions

    targets = [target_path(data, t) for t in args.targets.split(",")]
    grids = [int(g) for g in args.grids.split(",")]
    steps = args.steps
    if args.quick:
        targets, grids, steps = targets[:2], [g for g in grids if g <= 64] or grids[:1], steps or 600
        args.compare_latent = 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for p in work.glob("aedb-*"):
        shutil.rmtree(p)
    results: dict = {"quick": args.quick, "loadavg_start": common.loadavg(), "pool": "CIFAR-10 sheet 1 (10,000 tiles)"}
    t0 = time.perf_counter()
    db_path = pool_db(data, work)
    results["setup_s"] = round(time.perf_counter() - t0, 2)
    if args.model:
        model = Path(args.model)
        results["training"] = {"reused": str(model)}
    else:
        model = work / "model"
        opts = TrainOptions() if steps is None else TrainOptions(steps=steps)
        print(f"training {opts.steps} steps ...", flush=True)
        results["training"] = train(db_path, model, opts)
        print(f"  {results['training']['wall_s']} s, ratio {results['training']['metrics']['ratio']:.3f}", flush=True)
    variants = ["autoencoder", "autoencoder_no_fit", "hybrid", "hybrid_no_fit"]
    models = {}
    if args.compare_latent:
        from mosaicdb.autoencoder import Arch
        name = f"autoencoder_latent{args.compare_latent}"
        base = TrainOptions() if steps is None else TrainOptions(steps=steps)
        opts2 = TrainOptions(**{**base.__dict__, "arch": Arch(**{**base.arch.__dict__, "latent": args.compare_latent})})
        models[name] = work / f"model-latent{args.compare_latent}"
        print(f"training the latent-{args.compare_latent} model ...", flush=True)
        results["training_compare"] = train(db_path, models[name], opts2)
        variants.append(name)
    per_target: dict = {}
    with TileDB.open(db_path) as pool:
        for t in targets:
            per_target[t.stem] = {}
            for g in grids:
                print(f"{t.stem} at {g} cells ...", flush=True)
                per_target[t.stem][str(g)] = run_target(pool, model, t, g, work, variants, models)
        print("inference speed ...", flush=True)
        results["inference"] = speed(pool, model, targets[0], max(grids), SPEED_STEPS)
        pic_grid = PICTURE_GRID if PICTURE_GRID in grids else grids[0]
        pic = common.RESULTS / "automosaic_side_by_side.png"
        side_by_side(targets[0], per_target[targets[0].stem][str(pic_grid)], pic)
        results["picture"] = str(pic)
    methods = ["retrieval", "retrieval_mean", "retrieval_meanstd"] + variants
    results["per_target"] = per_target
    results["summary"] = summarise(per_target, grids, methods)
    inf = results["inference"]
    default_steps = str(AutoOptions(model="x").steps)
    results["goals"] = {
        "train_s_at_most_300": results["training"].get("goal_met"),
        "ratio_below_0_2": results["training"].get("ratio_met"),
        "psnr64_at_64_cells_ge_retrieval": (results["summary"].get("64", {}).get("autoencoder", {})
                                            .get("psnr64_minus_retrieval", -1) >= 0) if "64" in results["summary"] else None,
        "inference_cells_per_s_default_steps": inf["steps"].get(default_steps, {}).get("cells_per_s"),
        "inference_goal_met": (inf["steps"].get(default_steps, {}).get("cells_per_s", 0) >= GOAL_CELLS_PER_S),
    }
    results["loadavg_end"] = common.loadavg()
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    out = common.write_results(Path(args.out), NAME, results)
    print(f"wrote {out}")
    for g, t in results["summary"].items():
        for m, r in t.items():
            print(f"{g:>4} {m:<20} PSNR@64 {r['psnr64']:6.2f}  SSIM@64 {r['ssim64']:.3f}  "
                  f"pyr {r['pyramid_mse']}")


if __name__ == "__main__":
    main()
