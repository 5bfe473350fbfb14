"""Training the autoencoder on a tile database's thumbnails: seeded, deterministic on the CPU,
checkpointed, resumable.

Every step's batch and code noise come from a generator seeded with (seed, step) alone, so a
run resumed from its checkpoint (weights + Adam moments) computes exactly the steps an
uninterrupted run would: the same loss curve from the checkpoint on (with the same thread
count, which is part of the run's identity). The learning rate is constant, then falls
linearly to zero over the last 40% of the steps.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import ModelError, UsageError
from ..generate import deps
from ..progress import progress_bar
from ..render.tiles import box_reduce
from . import files
from . import model as M
from .options import TrainOptions

log = logging.getLogger(__name__)

DECAY_FROM = 0.6       # fraction of the steps after which the learning rate decays linearly to 0
METRIC_BATCH = 1024
CURVE_POINTS = 200     # loss curve points kept in config.json (the checkpoint keeps every step)


@dataclass
class TrainReport:
    """What `train_autoencoder` did: steps, where it resumed, metrics, seconds, weights' hash."""
    out: str
    steps: int
    resumed_from: int = 0            # step the run started from (0: a new run)
    already_done: bool = False
    tiles: int = 0                   # training tiles
    val_tiles: int = 0
    metrics: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    sha256: str = ""

    def summary(self) -> str:
        """One line for the CLI."""
        m = self.metrics
        head = "already trained" if self.already_done else (
            f"resumed at step {self.resumed_from}" if self.resumed_from else "trained")
        return (f"{head}: {self.steps} steps on {self.tiles:,} tiles in {self.seconds.get('train', 0):.1f} s; "
                f"reconstruction MSE {m.get('mse_encoder', float('nan')):.5f} vs {m.get('mse_random_code', float('nan')):.5f} "
                f"for random codes (ratio {m.get('ratio', float('nan')):.3f}, {'held-out' if m.get('held_out') else 'training'} tiles)")


# ---- data -------------------------------------------------------------------------------------
def tiles_at(db, ids: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8 thumbnails of `ids`: stored ones, or box-reduced from the next
    larger stored size."""
    bigger = [s for s in db.thumb_sizes if s >= size]
    if not bigger:
        raise UsageError(f"--size {size}: {db.path} stores thumbnails up to {max(db.thumb_sizes)} px; "
                         f"choose a size of at most {max(db.thumb_sizes)}")
    s = min(bigger)
    src = db.thumbs(s)
    out = np.empty((len(ids), size, size, 3), np.uint8)
    for i in range(0, len(ids), 8192):
        out[i:i + 8192] = box_reduce(np.asarray(src[ids[i:i + 8192]]), size)
    return out


def split_ids(ids: np.ndarray, opts: TrainOptions) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (training, held-out) ids: at most max_tiles + val_tiles, the held-out part at
    most a fifth of them."""
    rng = np.random.default_rng([opts.seed, 1])
    n_val = min(opts.val_tiles, len(ids) // 5)
    take = min(len(ids), opts.max_tiles + n_val)
    pick = rng.permutation(len(ids))[:take]
    return np.sort(ids[pick[n_val:]]), np.sort(ids[pick[:n_val]])


def fingerprint(db, train: np.ndarray, pixels: np.ndarray) -> dict:
    """What the run trains on: the database and a hash of the exact training pixels."""
    return {"db": str(Path(db.path).resolve()), "tiles": int(len(train)), "size": int(pixels.shape[1]),
            "pixels_sha256": hashlib.sha256(np.ascontiguousarray(pixels).data).hexdigest()}


def step_batch(opts: TrainOptions, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch's tile indices and the code noise of one step, from (seed, step) alone."""
    rng = np.random.default_rng([opts.seed, 2, step])
    idx = rng.integers(0, n, opts.batch)
    noise = rng.standard_normal((opts.batch, opts.arch.latent), dtype=np.float32)
    return idx, noise


def learning_rate(opts: TrainOptions, step: int) -> float:
    """Adam's rate at `step`: constant, then falling linearly to 0 over the last 40 %."""
    start = DECAY_FROM * opts.steps
    if step < start:
        return opts.lr
    return opts.lr * (opts.steps - step) / (opts.steps - start)


# ---- the run ----------------------------------------------------------------------------------
def check_out_folder(out: Path) -> None:
    """--out must be a folder, new or holding only a model's own files, never a file."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for the model")
    if out.is_dir():
        ours = {files.CONFIG, files.WEIGHTS, files.CHECKPOINT}
        other = [p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".")]
        if other:
            raise UsageError(f"--out {out} holds other files ({other[0]}, ...): choose a new folder for the model")


def train_autoencoder(db, out, opts: TrainOptions, *, progress: bool = False, restart: bool = False,
                      on_checkpoint=None) -> TrainReport:
    """Train (or resume, or recognise as done) the model of `opts` on `db`'s thumbnails, into
    the folder `out`. `on_checkpoint(step)` is called after each checkpoint is written."""
    t0 = time.perf_counter()
    opts.validate()
    out = Path(out)
    check_out_folder(out)
    torch = deps.torch()
    files._st()
    ids = db.ids()
    if len(ids) < 2:
        raise UsageError(f"{db.path} holds {len(ids)} tiles: training needs at least 2")
    train_ids, val_ids = split_ids(ids, opts)
    pixels = tiles_at(db, train_ids, opts.arch.size)
    val = tiles_at(db, val_ids, opts.arch.size)
    data = fingerprint(db, train_ids, pixels)
    identity = opts.identity()
    rep = TrainReport(str(out), opts.steps, tiles=len(train_ids), val_tiles=len(val_ids))
    t_data = time.perf_counter() - t0

    ck = None if restart else files.load_checkpoint(out, opts.arch)
    if ck is not None:
        _check_same_run(out, ck, identity, data)
    if ck is not None and ck.step == opts.steps and _final_model_matches(out, identity, data):
        cfg = files.read_config(out)
        rep.already_done, rep.resumed_from = True, ck.step
        rep.metrics, rep.seconds, rep.sha256 = cfg["metrics"], cfg["seconds"], cfg["sha256"]
        return rep

    threads = opts.resolved_threads()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(opts.seed)
        net = M.build(opts.arch)
        adam = torch.optim.Adam(net.parameters(), lr=opts.lr)
        losses, spent = [], 0.0
        if ck is not None:
            _restore(out, net, adam, ck)
            losses, spent, rep.resumed_from = list(ck.losses), ck.seconds, ck.step
        t1 = time.perf_counter()
        _loop(net, adam, pixels, opts, out, losses, spent, t1, data, progress, on_checkpoint)
        t_train = spent + time.perf_counter() - t1
        t2 = time.perf_counter()
        net.eval()
        with torch.no_grad():
            rep.metrics = reconstruction_metrics(net, val if len(val) else pixels[:METRIC_BATCH], opts)
            rep.metrics["held_out"] = bool(len(val))
            rep.metrics["final_loss_mean_last_100"] = float(np.mean(losses[-100:]))
            atlas = make_atlas(net, pixels, opts)
        t3 = time.perf_counter()
    finally:
        torch.set_num_threads(old_threads)
    rep.seconds = {"load_data": round(t_data, 3), "train": round(t_train, 3), "metrics_and_atlas": round(t3 - t2, 3)}
    every = max(1, len(losses) // CURVE_POINTS)
    config = {"training": identity, "data": data, "metrics": rep.metrics, "seconds": rep.seconds,
              "steps_done": len(losses), "resumed_from": rep.resumed_from, "atlas_size": int(len(atlas)),
              "loss_curve": [[i + 1, round(float(v), 6)] for i, v in enumerate(losses) if (i + 1) % every == 0],
              "versions": {"mosaicdb": __version__, "torch": torch.__version__}, "created": time.time()}
    rep.sha256 = files.save_model(out, opts.arch, net, atlas, config)
    return rep


def _check_same_run(out: Path, ck, identity: dict, data: dict) -> None:
    diff = sorted(k for k in set(identity) | set(ck.identity) if identity.get(k) != ck.identity.get(k))
    if diff:
        bits = ", ".join(f"{k} {ck.identity.get(k)} -> {identity.get(k)}" for k in diff[:4])
        raise UsageError(f"{out} holds a checkpoint of a run with other settings ({bits}): use a new --out, "
                         "or --restart to discard it")
    if ck.data != data:
        raise UsageError(f"{out}: the training tiles changed since its checkpoint (the database {data['db']} "
                         "was modified): use a new --out, or --restart to train again from scratch")


def _final_model_matches(out: Path, identity: dict, data: dict) -> bool:
    try:
        cfg = files.read_config(out)
    except ModelError:
        return False
    return (cfg.get("training") == identity and cfg.get("data") == data and "sha256" in cfg
            and (out / files.WEIGHTS).is_file())


def _restore(out: Path, net, adam, ck) -> None:
    torch = deps.torch()
    net.load_state_dict(ck.net_state, strict=True)
    params = list(net.parameters())
    if set(ck.adam_state) != set(range(len(params))) and ck.step > 0:
        raise ModelError(f"{out / files.CHECKPOINT} is damaged (optimizer state does not fit); rerun with --restart")
    state = {}
    for i, st in ck.adam_state.items():
        p = params[i]
        if set(st) != {"step", "exp_avg", "exp_avg_sq"} or st["exp_avg"].shape != p.shape \
                or st["exp_avg_sq"].shape != p.shape or st["step"].numel() != 1:
            raise ModelError(f"{out / files.CHECKPOINT} is damaged (optimizer state of parameter {i}); "
                             "rerun with --restart")
        state[i] = {"step": st["step"].reshape(()).to(torch.float32), "exp_avg": st["exp_avg"],
                    "exp_avg_sq": st["exp_avg_sq"]}
    sd = adam.state_dict()
    sd["state"] = state
    adam.load_state_dict(sd)


def _loop(net, adam, pixels, opts: TrainOptions, out: Path, losses: list, spent: float, t1: float,
          data: dict, progress: bool, on_checkpoint) -> None:
    torch = deps.torch()
    X = torch.from_numpy(pixels).permute(0, 3, 1, 2)    # uint8 view, converted per batch
    n = len(X)
    identity = opts.identity()
    net.train()
    bar = progress_bar(progress, total=opts.steps, initial=len(losses), desc="train", unit="step")
    ema = None
    try:
        for step in range(len(losses), opts.steps):
            idx, noise = step_batch(opts, step, n)
            x = X[torch.from_numpy(idx)].float().div_(255.0)
            for g in adam.param_groups:
                g["lr"] = learning_rate(opts, step)
            z = M.encode(net, x) + opts.noise * torch.from_numpy(noise)
            loss = (M.decode(net, z) - x).square().mean()
            adam.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
            v = float(loss.detach())
            losses.append(v)
            ema = v if ema is None else 0.98 * ema + 0.02 * v
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{ema:.5f}", refresh=False)
            if (step + 1) % opts.checkpoint_every == 0 or step + 1 == opts.steps:
                files.save_checkpoint(out, files.Checkpoint(
                    step + 1, identity, data, net.state_dict(), adam.state_dict()["state"], losses,
                    spent + time.perf_counter() - t1))
                if on_checkpoint:
                    on_checkpoint(step + 1)
    finally:
        bar.close()


# ---- after training ---------------------------------------------------------------------------
def reconstruction_metrics(net, tiles: np.ndarray, opts: TrainOptions) -> dict:
    """MSE (0-1 scale) of decode(encode(tile)) and of decode(random code) against the tiles."""
    torch = deps.torch()
    rng = np.random.default_rng([opts.seed, 3])
    enc = rnd = 0.0
    for i in range(0, len(tiles), METRIC_BATCH):
        x = M.from_images(tiles[i:i + METRIC_BATCH])
        enc += float((M.decode(net, M.encode(net, x)) - x).square().sum())
        u = torch.from_numpy(rng.random((len(x), opts.arch.latent), dtype=np.float32))
        rnd += float((M.decode(net, u) - x).square().sum())
    count = tiles.size
    out = {"mse_encoder": enc / count, "mse_random_code": rnd / count, "tiles": int(len(tiles))}
    out["ratio"] = out["mse_encoder"] / max(out["mse_random_code"], 1e-12)
    return out


def make_atlas(net, pixels: np.ndarray, opts: TrainOptions):
    """Codes decoded once per model for each cell's first guess: encoder codes of a seeded
    sample of the training tiles (three quarters) and a scrambled Halton sample of the code
    cube (a quarter), which reaches corners of the cube the pool's codes never visit."""
    torch = deps.torch()
    from scipy.stats import qmc
    k = opts.atlas_size
    n_cube = k // 4
    n_pool = min(k - n_cube, len(pixels))
    rng = np.random.default_rng([opts.seed, 4])
    pick = np.sort(rng.choice(len(pixels), n_pool, replace=False))
    codes = [M.encode(net, M.from_images(pixels[pick[i:i + METRIC_BATCH]]))
             for i in range(0, n_pool, METRIC_BATCH)]
    cube = qmc.Halton(opts.arch.latent, scramble=True, seed=opts.seed).random(n_cube) if n_cube else \
        np.empty((0, opts.arch.latent))
    codes.append(torch.from_numpy(cube.astype(np.float32)))
    from .fit import CODE_EPS
    return torch.cat(codes).clamp(CODE_EPS, 1 - CODE_EPS).contiguous()

