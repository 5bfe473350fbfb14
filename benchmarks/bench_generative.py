"""Benchmark: generated cells (GP's ablation) against our retrieval + colour transfer (not a test).

On 8x8 and 16x16 grids of shared targets (Kodak photographs, centre-cropped square) and of
scenes the same tiny model made (whose own initial noise the ∫-noise field reuses), it runs
`generate_cells` with every part on, with each part off (∫-noise, AdaIN, guidance), and with
guidance and AdaIN both off (the goal's baseline), plus a sweep of the guidance weight; and, as
the baseline measured in the same run, `mosaic make` on a 10,000-tile CIFAR-10 pool with
colour transfer (match-and-tone). Reported: PSNR/SSIM@64, PSNR per cell, pyramid MSE, s/tile;
and, in subprocesses, peak memory and s/tile per batch size.

The model is the tiny offline SDXL pipeline with its colour VAE (`generate tiny-model --vae
colour`): a random UNet and a VAE that is an exact colour codec. Its numbers measure the
mechanics (guidance and AdaIN pulling low frequencies to the target; the ∫-noise field carrying
a scene's layout), NOT image quality: its tiles are noise-like 8 x 8 colour blocks. No GPU
and no real SDXL were available; what a GPU run would need is recorded from the sources, as
estimates, under "gpu_estimate_not_measured".

    python benchmarks/bench_generative.py            # ~10 CPU-minutes
    python benchmarks/bench_generative.py --quick    # one target, 8x8, fewer configs: ~3 min
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

NAME = "bench_generative"
ABLATION = {                      # name -> CellOptions changes
    "all_on": {},
    "no_integral_noise": {"noise": "independent"},
    "no_adain": {"adain": "off"},
    "no_guidance": {"guidance_weight": 0.0},
    "no_guidance_no_adain": {"adain": "off", "guidance_weight": 0.0},
    "all_off": {"noise": "independent", "adain": "off", "guidance_weight": 0.0},   # what ∫-noise alone does
}
SWEEP_W = (1000.0, 20000.0)       # besides the default 5000 (all_on)
FINE_GRID_TARGETS = 1             # 16x16 (256 tiles a run): the first Kodak target and the first scene
GPU_ESTIMATE = {
    "gp_paper": "GP (arXiv 2604.06989): ~17 s per tile on an A6000 (SD 2.1 at 768 px, 50 steps, CFG 7.5, guidance "
                "through the decoder): 1088 s for 64 tiles; i.e. ~0.34 s per step, one UNet pass plus the decoder's "
                "backward pass",
    "decoder_memory": "diffusers#10350: ~15 GB to backpropagate through the SD 2.1 VAE decoder for one 96x96 latent; "
                      "SDXL at 1024 px has a 128x128 latent (1.8x the pixels), so expect more than 24 GB without "
                      "gradient checkpointing (on from 512 px here) or --guidance-decoder tiny (taesdxl)",
    "sdxl_turbo": "SDXL-Turbo at 512 px (64x64 latent), 4 steps, CFG off: a fraction of the above per tile; "
                  "measure with --model ./sdxl-turbo --device cuda before quoting",
    "command": "python benchmarks/bench_generative.py --model ./sdxl-turbo --device cuda --steps 4 --cfg 0 --size 512",
}


def build_models(tmp: Path) -> dict:
    from mosaicdb.generate import save_tiny_pipeline
    return {"colour": str(save_tiny_pipeline(tmp / "tiny-colour", vae="colour")),
            "random": str(save_tiny_pipeline(tmp / "tiny-random", vae="random"))}


def square_targets(data: Path, names, tmp: Path) -> list[Path]:
    """Kodak photographs centre-cropped to squares (the grids are square, as GP's)."""
    from PIL import Image
    out = []
    for n in names:
        im = Image.open(data / "targets" / "kodak" / f"{n}.png").convert("RGB")
        s = min(im.size)
        l, t = (im.width - s) // 2, (im.height - s) // 2
        p = tmp / f"{n}_square.png"
        im.crop((l, t, l + s, t + s)).save(p)
        out.append(p)
    return out


def scene_target(model: str, grid: int, seed: int, tmp: Path, steps: int, cfg: float) -> Path:
    """A scene the tiny model made at grid x 2 latent px (block 2): its noise is the field."""
    from mosaicdb.generate import PipelineOptions, SceneOptions, generate_scene
    p = tmp / f"scene_g{grid}_s{seed}.png"
    px = grid * 2 * 8
    generate_scene(PipelineOptions(model, steps=steps, guidance=cfg, threads=1),
                   SceneOptions(prompt="a lighthouse on a cliff", width=px, height=px, seed=seed), p)
    return p


def retrieval_pool(data: Path, tmp: Path, n: int) -> Path:
    from mosaicdb import TileDB
    folder = tmp / "cifar"
    folder.mkdir()
    common.unpack_cifar(data, folder, limit=n)
    db = tmp / "pool.db"
    with TileDB.create(db) as d:
        d.ingest([folder], workers=2)
    return db


def retrieval(pool: Path, target: Path, grid: int, color: str, strength: float, out: Path) -> dict:
    from mosaicdb import TileDB
    from mosaicdb.make import Maker
    from mosaicdb.match.options import MatchOptions
    from mosaicdb.render.options import RenderOptions
    with TileDB.open(pool, readonly=True) as db:
        r = Maker(db, MatchOptions(grid=f"{grid}x{grid}"), RenderOptions(tile_px=32, color=color,
                                                                          color_strength=strength)).make(target, out)
    return pick(r.metrics) | {"seconds_total": round(r.metrics["seconds"]["total"], 3)}


def pick(m: dict) -> dict:
    return {"psnr64": round(m["psnr64"], 3), "ssim64": round(m["ssim64"], 4), "psnr_cell": round(m["psnr_cell"], 3),
            "pyramid_mse": {k: round(v, 6) for k, v in m["pyramid_mse"].items()}}


def generated(model: str, target: Path, grid: int, changes: dict, args, out: Path, seed: int = 0) -> dict:
    from mosaicdb.generate import PipelineOptions
    from mosaicdb.generate.cellopts import CellOptions
    from mosaicdb.generate.cellrun import generate_cells
    popts = PipelineOptions(model, device=args.device, steps=args.steps, guidance=args.cfg, threads=args.threads)
    opts = CellOptions(prompt=args.prompt, grid=f"{grid}x{grid}", size=args.size, batch=args.batch, seed=seed,
                       **changes)
    rep = generate_cells(target, popts, opts, out, db_path=out.with_suffix(".db"))
    scene = json.loads(Path(rep.assignment).read_text())["generated"]["scene"]
    return pick(rep.metrics) | {"seconds_per_tile": round(rep.seconds_per_tile, 4), "tiles": rep.generated,
                                "scene_noise": scene is not None}


def memory_probe(args) -> dict:
    """(in a subprocess) peak RSS after loading, and after generating batches of --probe-batch."""
    from mosaicdb.generate import PipelineOptions
    from mosaicdb.generate.cellopts import CellOptions
    from mosaicdb.generate.cells import CellGenerator, plan_cells
    b = args.probe_batch
    plan = plan_cells(args.probe_target, PipelineOptions(args.probe_model, device=args.device, steps=args.steps,
                                                         guidance=args.cfg, threads=args.threads),
                      CellOptions(prompt=args.prompt, grid="16x16", size=args.size, batch=b))
    gen = CellGenerator(plan)
    loaded = common.vm_hwm_mb()
    cells = [(r, c) for r in range(plan.grid.rows) for c in range(plan.grid.cols)][:2 * b]
    t0 = time.perf_counter()
    for i in range(0, len(cells), b):
        gen.batch(cells[i:i + b])
    sec = time.perf_counter() - t0
    return {"batch": b, "peak_rss_after_load_mb": loaded, "peak_rss_mb": common.vm_hwm_mb(),
            "batch_extra_mb": round(common.vm_hwm_mb() - loaded, 1), "seconds_per_tile": round(sec / len(cells), 4),
            "tiles": len(cells), "loadavg": common.loadavg()}


def memory_per_batch(args, model: str, target: Path) -> list[dict]:
    out = []
    for b in args.batches:
        cmd = [sys.executable, __file__, "--probe-batch", str(b), "--probe-model", model, "--probe-target", str(target),
               "--steps", str(args.steps), "--cfg", str(args.cfg), "--threads", str(args.threads),
               "--device", args.device] + (["--size", str(args.size)] if args.size else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def summarise(rows: list[dict]) -> dict:
    """Per grid and config: mean PSNR@64 over targets, and each config against all_on and baseline."""
    import numpy as np
    out = {}
    for grid in sorted({r["grid"] for r in rows}):
        for kind in sorted({r["kind"] for r in rows}):
            sel = [r for r in rows if r["grid"] == grid and r["kind"] == kind]
            if not sel:
                continue
            by = {}
            for r in sel:
                by.setdefault(r["config"], []).append(r["psnr64"])
            mean = {k: round(float(np.mean(v)), 3) for k, v in by.items()}
            ref = mean.get("all_on")
            out[f"{kind}_{grid}x{grid}"] = {
                "targets": len(by.get("all_on", [])), "mean_psnr64": mean,
                "all_on_minus": {k: round(ref - v, 3) for k, v in mean.items() if ref is not None and k != "all_on"},
            }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--quick", action="store_true", help="one Kodak target and one scene, 8x8, ablation only")
    # default: 8x8 on every target and scene; 16x16 (4x the tiles) on the first of each
    ap.add_argument("--model", default=None, help="SDXL folder [default: the tiny pipeline with its colour VAE]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", default="a dog")
    ap.add_argument("--targets", default="kodim23,kodim05")
    ap.add_argument("--scene-seeds", default="1,2")
    ap.add_argument("--pool", type=int, default=10_000, help="CIFAR-10 tiles in the retrieval baseline's pool")
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16])
    ap.add_argument("--out", type=Path, default=common.default_out(NAME))
    ap.add_argument("--probe-batch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-target", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe_batch:
        print(json.dumps(memory_probe(args)))
        return 0
    data = common.data_dir(args.data)
    load_start = common.loadavg()
    t_all = time.perf_counter()
    grids = [8] if args.quick else [8, 16]
    names = args.targets.split(",")[:1] if args.quick else args.targets.split(",")
    scene_seeds = [int(s) for s in args.scene_seeds.split(",")][:1 if args.quick else None]
    tmp = Path(tempfile.mkdtemp(prefix="bench_generative."))
    rows, baseline, extras = [], [], {}
    try:
        models = build_models(tmp) if args.model is None else {"colour": args.model}
        model = models["colour"]
        kodak = square_targets(data, names, tmp)
        pool = retrieval_pool(data, tmp, args.pool)
        n = 0
        for grid in grids:
            fine = grid > 8
            for target in kodak[:FINE_GRID_TARGETS] if fine else kodak:
                for color, strength in (("none", 0.5), ("meanstd", 1.0)):
                    r = retrieval(pool, target, grid, color, strength, tmp / f"ret{n}.png")
                    n += 1
                    baseline.append({"grid": grid, "target": target.stem, "color": color, "strength": strength, **r})
                for cfg, changes in ABLATION.items():
                    r = generated(model, target, grid, changes, args, tmp / f"gen{n}.png")
                    n += 1
                    rows.append({"kind": "kodak", "grid": grid, "target": target.stem, "config": cfg, **r})
                    print(f"kodak {target.stem} {grid}x{grid} {cfg}: PSNR@64 {r['psnr64']:.2f}", flush=True)
            for seed in scene_seeds[:FINE_GRID_TARGETS] if fine else scene_seeds:
                scene = scene_target(model, grid, seed, tmp, args.steps, args.cfg)
                for cfg, changes in ABLATION.items():
                    r = generated(model, scene, grid, changes, args, tmp / f"gen{n}.png", seed=seed)
                    n += 1
                    rows.append({"kind": "scene", "grid": grid, "target": scene.stem, "config": cfg, **r})
                    print(f"scene {seed} {grid}x{grid} {cfg}: PSNR@64 {r['psnr64']:.2f}", flush=True)
        if not args.quick:
            sweep = []
            for w in SWEEP_W:
                for target in kodak[:1]:
                    r = generated(model, target, 8, {"guidance_weight": w}, args, tmp / f"gen{n}.png")
                    n += 1
                    sweep.append({"guidance_weight": w, "target": target.stem, **r})
            extras["guidance_weight_sweep_8x8"] = sweep
            rnd = []
            for cfg in ("all_on", "no_guidance_no_adain"):
                r = generated(models["random"], kodak[0], 8, ABLATION[cfg], args, tmp / f"gen{n}.png")
                n += 1
                rnd.append({"config": cfg, "target": kodak[0].stem, **r})
            extras["random_vae_tiny_pipeline_8x8"] = rnd
        memory = memory_per_batch(args, model, kodak[0])
        results = {
            "model": "tiny offline SDXL pipeline, random UNet, colour VAE (mechanics only, not image quality)"
                     if args.model is None else args.model,
            "settings": {"steps": args.steps, "cfg": args.cfg, "batch": args.batch, "threads": args.threads,
                         "device": args.device, "prompt": args.prompt, "grids": grids, "targets": names,
                         "scene_seeds": scene_seeds, "retrieval_pool_cifar_tiles": args.pool,
                         "defaults": "∫-noise, AdaIN on x̂0 (std weight 0.5), guidance w 5000 (GP units), γ 0.95, "
                                     "decoder vae, Euler"},
            "summary": summarise(rows),
            "generated": rows, "baseline_retrieval_colour_transfer": baseline, **extras,
            "memory_per_batch": memory,
            "gpu_estimate_not_measured": GPU_ESTIMATE,
            "seconds_total": round(time.perf_counter() - t_all, 1),
            "loadavg_start": load_start, "loadavg_end": common.loadavg(), "peak_rss": common.peak_rss_mb(),
        }
        out = common.write_results(args.out, NAME, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in results["summary"].items():
        print(k, "mean PSNR@64", v["mean_psnr64"], "all_on minus", v["all_on_minus"])
    for b in baseline:
        print(f"retrieval {b['target']} {b['grid']}x{b['grid']} color {b['color']}: PSNR@64 {b['psnr64']:.2f}")
    for m in memory:
        print(f"batch {m['batch']}: peak RSS {m['peak_rss_mb']} MB (+{m['batch_extra_mb']} MB over the loaded "
              f"model), {m['seconds_per_tile']} s/tile")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
