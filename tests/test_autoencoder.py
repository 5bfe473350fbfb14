"""Autoencoder tiles: options, the network's bounds, training (seeded, resumable after kill -9),
the model folder as untrusted input, the per-cell fit's guarantees, and `mosaic make
--autoencoder` end to end (decoded-tile database, provenance, hybrid, render/print/serve).

Most tests use a session model trained on 2-parameter glyphs (a disc whose position and hue
vary, 16 px) made here; the fit's guarantees are also checked on real CIFAR-10 cells."""
from __future__ import annotations

import colorsys
import io
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

torch = pytest.importorskip("torch", reason="autoencoder tests need torch: pip install torch==2.13.0 then 'mosaicdb[gen]'")
pytest.importorskip("safetensors", reason="autoencoder tests need safetensors: pip install 'mosaicdb[gen]'")

from clirun import invoke_cli  # noqa: E402
from mosaicdb import TileDB  # noqa: E402
from mosaicdb import assignment as asg  # noqa: E402
from mosaicdb.autoencoder import Arch, AutoOptions, TrainOptions  # noqa: E402
from mosaicdb.autoencoder import files  # noqa: E402
from mosaicdb.autoencoder import model as M  # noqa: E402
from mosaicdb.autoencoder.fit import Fitter, cell_errors, decode_tiles  # noqa: E402
from mosaicdb.autoencoder.make import cell_bands  # noqa: E402
from mosaicdb.autoencoder.train import reconstruction_metrics, tiles_at, train_autoencoder  # noqa: E402
from mosaicdb.errors import ModelError, UsageError  # noqa: E402
from mosaicdb.match.grid import make_grid, resample_cells  # noqa: E402

GLYPHS = 400
SIZE = 16
ARCH = Arch(latent=4, size=SIZE, width=8)
OPTS = TrainOptions(ARCH, steps=600, batch=32, lr=0.01, threads=1, atlas_size=256, checkpoint_every=200)
MOSAIC = [sys.executable, "-m", "mosaicdb"]


# ---- data ---------------------------------------------------------------------------------------
def glyphs(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: a soft disc, its horizontal position and hue drawn at random, on grey."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    out = []
    for pos, hue in rng.random((n, 2)):
        r = np.sqrt((xx - (0.25 + 0.5 * pos)) ** 2 + (yy - 0.5) ** 2)
        alpha = np.clip((0.3 - r) * size, 0, 1)[..., None]
        img = alpha * np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.95)) + (1 - alpha) * 0.5
        out.append(np.rint(img * 255).astype(np.uint8))
    return np.stack(out)


def png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def make_db(path: Path, tiles: np.ndarray, thumb_sizes=(8, 16)) -> Path:
    with TileDB.create(path, thumb_sizes=thumb_sizes) as db:
        db.add_images((png(a), f"glyph{i}", {}) for i, a in enumerate(tiles))
    return path


@pytest.fixture(scope="session")
def glyph_db(tmp_path_factory) -> Path:
    """A read-only database of 400 glyphs (thumbnails 8 and 16 px)."""
    return make_db(tmp_path_factory.mktemp("glyphs") / "glyphs.db", glyphs(GLYPHS))


@pytest.fixture(scope="session")
def glyph_model(glyph_db, tmp_path_factory) -> Path:
    """A model folder trained on `glyph_db` with OPTS (read-only)."""
    out = tmp_path_factory.mktemp("model") / "glyph-ae"
    with TileDB.open(glyph_db, readonly=True) as db:
        train_autoencoder(db, out, OPTS)
    return out


@pytest.fixture(scope="session")
def loaded(glyph_model):
    return files.load_model(glyph_model)


@pytest.fixture(scope="session")
def target_png(tmp_path_factory) -> Path:
    """A 192x128 target: rows of glyphs (the model's world) beside a smooth gradient (not)."""
    g = glyphs(48, seed=7)
    top = np.concatenate([np.concatenate(list(g[r * 12:(r + 1) * 12]), axis=1) for r in range(4)], axis=0)
    yy, xx = np.mgrid[0:64, 0:192]
    grad = np.stack([xx * 255 / 191, yy * 255 / 63, np.full_like(xx, 90)], -1).astype(np.uint8)
    p = tmp_path_factory.mktemp("target") / "target.png"
    Image.fromarray(np.concatenate([top, grad], axis=0)).save(p)
    return p


def mosaic(*args, code: int | None = 0):
    """The CLI in this process (`invoke_cli`: no traceback, no internal error); a failure must be
    one line."""
    res = invoke_cli(*args, code=code)
    if code:
        assert len(res.output.strip().splitlines()) == 1, res.output
    return res


# ---- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, words", [
    ({"latent": 0}, "--latent"), ({"latent": 300}, "--latent"), ({"size": 24}, "8, 16, 32, 64"),
    ({"size": 128}, "--size"), ({"width": 0}, "--width"), ({"latent": 2.5}, "integer"),
])
def test_bad_arch_is_a_usage_error(kw, words):
    with pytest.raises(UsageError, match=words):
        Arch(**kw).validate()


@pytest.mark.parametrize("kw, words", [
    ({"steps": 0}, "--steps"), ({"batch": 0}, "--batch"), ({"lr": 0.0}, "--lr"), ({"lr": 2.0}, "--lr"),
    ({"noise": -0.1}, "--noise"), ({"seed": -1}, "--seed"), ({"checkpoint_every": 0}, "--checkpoint-every"),
])
def test_bad_train_options(kw, words):
    with pytest.raises(UsageError, match=words):
        TrainOptions(**kw).validate()


@pytest.mark.parametrize("kw, words", [
    ({"steps": -1}, "--ae-steps"), ({"lr": 0}, "--ae-lr"), ({"shortlist": -1}, "--ae-shortlist"),
    ({"atlas_px": 3}, "atlas_px"), ({"batch": 0}, "--ae-batch"),
])
def test_bad_auto_options(kw, words):
    with pytest.raises(UsageError, match=words):
        AutoOptions(model="m", **kw).validate()


@pytest.mark.parametrize("size, channels", [(8, (16,)), (16, (16, 32)), (32, (16, 32, 64)), (64, (16, 32, 64, 128))])
def test_architecture_reaches_4x4_for_every_size(size, channels):
    arch = Arch(latent=3, size=size, width=16)
    assert arch.channels == channels
    net = M.build(arch)
    x = torch.rand(2, 3, size, size)
    assert M.encode(net, x).shape == (2, 3)
    assert M.decode(net, torch.rand(2, 3)).shape == (2, 3, size, size)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([8, 16, 32, 64]), st.integers(1, 8), st.integers(1, 9))
def test_inference_decoder_is_the_transposed_convolution(seed, size, width, latent):
    """Each stride-2 transposed convolution as a 3x3 convolution to four phases + pixel shuffle
    gives the decoder's output (up to float summation order), for any weights and shape."""
    torch.manual_seed(seed)
    net = M.build(Arch(latent=latent, size=size, width=width))
    for p in net.parameters():   # weights far from the initialisation's small values too
        p.data.normal_(0, 0.5)
    z = torch.rand(5, latent, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = M.decode(net, z)
    got = M.InferenceDecoder(net)(z)
    assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4   # a wrong tap: ~0.1


# ---- the network's bounds and determinism ----------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 1.0, 1e6, -1e6]))
def test_codes_and_tiles_lie_in_the_bound(seed, extreme):
    """Any input, including saturating ones, encodes into [0, 1]^latent and decodes into [0, 1]."""
    torch.manual_seed(seed)
    net = M.build(Arch(latent=5, size=8, width=4))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 3, 8, 8, generator=g)
    x[0] = extreme
    with torch.no_grad():
        c = M.encode(net, x)
        y = M.decode(net, torch.randn(8, 5, generator=g) * 100)
    assert bool(((c >= 0) & (c <= 1)).all()) and bool(((y >= 0) & (y <= 1)).all())


def test_trained_codes_are_strictly_inside(loaded, glyph_db):
    with TileDB.open(glyph_db, readonly=True) as db:
        x = M.from_images(tiles_at(db, db.ids(), SIZE))
    with torch.no_grad():
        c = M.encode(loaded.net, x)
    assert bool(((c > 0) & (c < 1)).all())
    assert bool(((loaded.atlas >= 0) & (loaded.atlas <= 1)).all())


def test_eval_mode_is_deterministic(loaded):
    """The loaded net is in eval mode with frozen parameters (the training noise is not in it):
    encoding, decoding and the whole fit give identical results twice."""
    assert not loaded.net.training
    assert not any(p.requires_grad for p in loaded.net.parameters())
    x = M.from_images(np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8))
    with torch.no_grad():
        assert torch.equal(M.encode(loaded.net, x), M.encode(loaded.net, x))
        c = M.encode(loaded.net, x)
        assert torch.equal(M.decode(loaded.net, c), M.decode(loaded.net, c))
    f = Fitter(loaded, AutoOptions(model=str(loaded.path), steps=3, threads=1))
    a, b = f.fit(glyphs(40, seed=3)), f.fit(glyphs(40, seed=3))
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.tiles, b.tiles)


# ---- training ------------------------------------------------------------------------------------
def test_training_reconstructs_far_better_than_random_codes(loaded, glyph_db):
    """Held-out glyphs: encoder MSE < 0.2 x the MSE of decoding random codes (recomputed here)."""
    m = loaded.config["metrics"]
    assert m["held_out"] and m["tiles"] == GLYPHS // 5
    assert m["ratio"] < 0.2
    with TileDB.open(glyph_db, readonly=True) as db:
        tiles = tiles_at(db, db.ids(), SIZE)
    with torch.no_grad():
        again = reconstruction_metrics(loaded.net, tiles, OPTS)
    assert again["mse_encoder"] < 0.2 * again["mse_random_code"]


def test_training_is_seeded_and_deterministic(glyph_db, glyph_model, tmp_path):
    """The same options train the very same weights; another seed does not."""
    short = TrainOptions(ARCH, steps=30, batch=16, threads=1, atlas_size=16, checkpoint_every=10)
    with TileDB.open(glyph_db, readonly=True) as db:
        a = train_autoencoder(db, tmp_path / "a", short)
        b = train_autoencoder(db, tmp_path / "b", short)
        c = train_autoencoder(db, tmp_path / "c", TrainOptions(**{**short.__dict__, "seed": 1}))
    assert a.sha256 == b.sha256 != c.sha256
    assert (tmp_path / "a" / files.WEIGHTS).read_bytes() == (tmp_path / "b" / files.WEIGHTS).read_bytes()


def test_rerun_after_completion_does_nothing_and_other_settings_are_refused(glyph_db, tmp_path):
    short = TrainOptions(ARCH, steps=20, batch=16, threads=1, atlas_size=16, checkpoint_every=10)
    with TileDB.open(glyph_db, readonly=True) as db:
        first = train_autoencoder(db, tmp_path / "m", short)
        again = train_autoencoder(db, tmp_path / "m", short)
        assert again.already_done and again.sha256 == first.sha256
        with pytest.raises(UsageError, match="other settings.*steps 20 -> 40.*--restart"):
            train_autoencoder(db, tmp_path / "m", TrainOptions(**{**short.__dict__, "steps": 40}))
        fresh = train_autoencoder(db, tmp_path / "m", TrainOptions(**{**short.__dict__, "steps": 40}), restart=True)
    assert fresh.resumed_from == 0 and files.load_model(tmp_path / "m").config["steps_done"] == 40


def test_out_folder_of_other_files_is_refused(glyph_db, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with TileDB.open(glyph_db, readonly=True) as db, pytest.raises(UsageError, match="holds other files"):
        train_autoencoder(db, tmp_path / "busy", OPTS)


@pytest.mark.parametrize("stored, size, expect", [((8, 16), 8, "stored"), ((16, 32), 8, "reduced"), ((8, 16), 32, None)])
def test_training_tiles_come_from_thumbnails(tmp_path, stored, size, expect):
    g = glyphs(12, size=32)
    path = make_db(tmp_path / "db", g, thumb_sizes=stored)
    with TileDB.open(path, readonly=True) as db:
        if expect is None:
            with pytest.raises(UsageError, match="thumbnails up to 16 px"):
                tiles_at(db, db.ids(), size)
            return
        got = tiles_at(db, db.ids(), size)
        small = np.asarray(db.thumbs(min(stored))[db.ids()])
    assert got.shape == (12, size, size, 3)
    if expect == "stored":
        assert np.array_equal(got, small)
    else:  # 16 px thumbnails box-averaged 2x2
        ref = np.asarray(small, np.float64).reshape(12, 8, 2, 8, 2, 3).mean(axis=(2, 4)).round()
        assert np.array_equal(got, ref.astype(np.uint8))


@pytest.mark.slow
def test_training_killed_and_resumed_follows_the_same_loss_curve(glyph_db, tmp_path):
    """kill -9 a training process after a checkpoint; rerunning the command resumes from it and
    produces, step for step, the losses and the final weights of an uninterrupted run."""
    args = ["autoencoder", "train", str(glyph_db), "--latent", "4", "--size", "16", "--width", "8",
            "--steps", "300", "--batch", "32", "--lr", "0.01", "--threads", "1", "--atlas-size", "64",
            "--checkpoint-every", "25", "-q"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(MOSAIC + args + ["--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if (killed / files.CHECKPOINT).is_file():
                ck = files.load_checkpoint(killed, ARCH)
                if ck is not None and ck.step >= 50:
                    break
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    at_kill = files.load_checkpoint(killed, ARCH)
    assert 50 <= at_kill.step < 300 and not (killed / files.WEIGHTS).exists()

    resumed = subprocess.run(MOSAIC + args + ["--out", str(killed), "--json"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from"] == at_kill.step
    whole = tmp_path / "whole"
    assert subprocess.run(MOSAIC + args + ["--out", str(whole)], capture_output=True).returncode == 0

    a, b = files.load_checkpoint(killed, ARCH), files.load_checkpoint(whole, ARCH)
    assert a.step == b.step == 300
    assert a.losses[:at_kill.step] == at_kill.losses
    assert a.losses == b.losses                      # the same curve, from the checkpoint on too
    assert (killed / files.WEIGHTS).read_bytes() == (whole / files.WEIGHTS).read_bytes()


# ---- the model folder as untrusted input -----------------------------------------------------------
def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (files.CONFIG, files.WEIGHTS):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _rewrite(folder: Path, change):
    """Re-save the weights with `change(tensors, metadata)` applied (safetensors, our own writer)."""
    import safetensors.torch as sst
    data = (folder / files.WEIGHTS).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(json.loads(data[8:8 + n])["__metadata__"]["mosaicdb"])
    tensors = sst.load(data)
    change(tensors, meta)
    (folder / files.WEIGHTS).write_bytes(sst.save(tensors, metadata={"mosaicdb": json.dumps(meta)}))


def _hostile(kind: str, folder: Path) -> None:
    w, c = folder / files.WEIGHTS, folder / files.CONFIG
    if kind == "random bytes":
        w.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        w.write_bytes(w.read_bytes()[:300])
    elif kind == "huge header length":
        w.write_bytes(struct.pack("<Q", 1 << 40) + w.read_bytes()[8:])
    elif kind == "pickle":
        torch.save({"weights": torch.zeros(3)}, w)
    elif kind == "too big":
        with open(w, "r+b") as f:
            f.truncate(2 << 30)     # sparse: refused by its size before anything is read
    elif kind == "config not json":
        c.write_text("{not json")
    elif kind == "config of something else":
        c.write_text(json.dumps({"format": "something", "format_version": 1}))
    elif kind == "config arch invalid":
        cfg = json.loads(c.read_text())
        cfg["arch"]["size"] = 24
        c.write_text(json.dumps(cfg))
    elif kind == "config and weights disagree":
        cfg = json.loads(c.read_text())
        cfg["arch"]["latent"] = 5
        c.write_text(json.dumps(cfg))
    elif kind == "wrong shape":
        _rewrite(folder, lambda t, m: t.update({"decoder.0.bias": torch.zeros(7)}))
    elif kind == "missing tensor":
        _rewrite(folder, lambda t, m: t.pop("encoder.0.weight"))
    elif kind == "extra tensor":
        _rewrite(folder, lambda t, m: t.update({"evil": torch.zeros(2)}))
    elif kind == "nan weights":
        _rewrite(folder, lambda t, m: t["encoder.0.weight"].fill_(float("nan")))
    elif kind == "float64 weights":
        _rewrite(folder, lambda t, m: t.update({"encoder.0.bias": t["encoder.0.bias"].double()}))
    elif kind == "atlas outside the cube":
        _rewrite(folder, lambda t, m: t["atlas"].fill_(2.0))
    elif kind == "other safetensors file":
        _rewrite(folder, lambda t, m: m.update({"format": "pt"}))
    elif kind == "newer format":
        _rewrite(folder, lambda t, m: m.update({"format_version": 2}))
    elif kind == "no weights":
        w.unlink()
    else:
        raise ValueError(kind)


HOSTILE = ["random bytes", "truncated", "huge header length", "pickle", "too big", "config not json",
           "config of something else", "config arch invalid", "config and weights disagree", "wrong shape",
           "missing tensor", "extra tensor", "nan weights", "float64 weights", "atlas outside the cube",
           "other safetensors file", "newer format", "no weights"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_bad_model_file_is_one_clear_error(glyph_model, tmp_path, kind):
    folder = _copy_model(glyph_model, tmp_path / "m")
    _hostile(kind, folder)
    with pytest.raises(ModelError) as e:
        files.load_model(folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder) in msg, msg
    res = mosaic("autoencoder", "info", folder, code=1)
    assert res.output.startswith("Error: "), res.output


def test_missing_model_names_the_command_to_make_one(tmp_path):
    with pytest.raises(ModelError, match="mosaic autoencoder train DB --out"):
        files.load_model(tmp_path / "nothing")


def test_damaged_checkpoint_is_a_clear_error(glyph_db, tmp_path):
    short = TrainOptions(ARCH, steps=20, batch=16, threads=1, atlas_size=16, checkpoint_every=10)
    with TileDB.open(glyph_db, readonly=True) as db:
        train_autoencoder(db, tmp_path / "m", short)
        ck = tmp_path / "m" / files.CHECKPOINT
        ck.write_bytes(ck.read_bytes()[:200])
        with pytest.raises(ModelError, match="checkpoint.safetensors"):
            train_autoencoder(db, tmp_path / "m", TrainOptions(**{**short.__dict__, "steps": 30}))


def test_save_load_round_trip_is_exact(tmp_path):
    """A new network and atlas (random float32 values, nothing rounded yet) come back bit for bit."""
    arch = Arch(latent=6, size=8, width=4)
    torch.manual_seed(3)
    net = M.build(arch)
    atlas = torch.rand(100, 6, generator=torch.Generator().manual_seed(4))
    files.save_model(tmp_path / "m", arch, net, atlas, {})
    got = files.load_model(tmp_path / "m")
    assert torch.equal(got.atlas, atlas)
    for k, v in net.state_dict().items():
        assert torch.equal(got.net.state_dict()[k], v), k


def test_saved_model_loads_and_reproduces_tiles_exactly(loaded, tmp_path):
    """A trained model saved again and reloaded decodes and fits exactly the same tiles."""
    again_path = tmp_path / "copy"
    files.save_model(again_path, loaded.arch, loaded.net, loaded.atlas, {"note": "copy"})
    again = files.load_model(again_path)
    assert again.sha256 == loaded.sha256
    for (k, a), (_, b) in zip(loaded.net.state_dict().items(), again.net.state_dict().items()):
        assert torch.equal(a, b), k
    codes = torch.rand(50, ARCH.latent, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(M.decode(loaded.net, codes), M.decode(again.net, codes))
    opts = AutoOptions(model="x", steps=2, threads=1)
    cells = glyphs(30, seed=9)
    a, b = Fitter(loaded, opts).fit(cells), Fitter(again, opts).fit(cells)
    assert np.array_equal(a.tiles, b.tiles) and np.array_equal(a.codes, b.codes)


# ---- the per-cell fit ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_cells(cifar_tiles) -> np.ndarray:
    """200 CIFAR-10 tiles box-reduced to 16 px: real cells, outside the glyph model's world."""
    return cifar_tiles[:200].reshape(200, 16, 2, 16, 2, 3).mean(axis=(2, 4)).round().astype(np.uint8)


@pytest.mark.parametrize("color_fit", [True, False])
@pytest.mark.parametrize("steps, lr", [(1, 0.1), (5, 0.1), (5, 5.0)])
@pytest.mark.parametrize("which", ["glyphs", "cifar"])
def test_refinement_never_increases_a_cells_error(loaded, real_cells, color_fit, steps, lr, which):
    """Per cell: atlas first guess <= encoder, refined <= first guess (even with a learning rate
    that overshoots), and the recorded errors are the stored tiles' errors."""
    cells = glyphs(120, seed=11) if which == "glyphs" else real_cells
    r = Fitter(loaded, AutoOptions(model="x", steps=steps, lr=lr, color_fit=color_fit, threads=1)).fit(cells)
    e = r.errors
    assert (e["first"] <= e["encoder"]).all()
    assert (e["final"] <= e["first"]).all()
    x = M.from_images(cells)
    y = torch.from_numpy(r.tiles).permute(0, 3, 1, 2).float() / 255
    stored = (y - x).square().mean(dim=(1, 2, 3)).numpy()
    assert np.abs(stored - e["final"]).max() < 2 / 255   # the uint8 rounding only
    assert ((r.codes > 0) & (r.codes < 1)).all()     # strictly: logit(code) stays finite


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 10.0), st.integers(1, 6), st.booleans())
def test_refinement_never_increases_error_on_any_cells(loaded, seed, lr, steps, color_fit):
    """The same guarantee on seeded random cells of every kind the fixtures make (blocks,
    gradients, discs, noise), for any learning rate and step count."""
    from conftest import synthetic_image
    rng = np.random.default_rng(seed)
    cells = np.stack([synthetic_image(rng, SIZE, SIZE) for _ in range(12)])
    r = Fitter(loaded, AutoOptions(model="x", steps=steps, lr=lr, color_fit=color_fit, threads=1)).fit(cells)
    assert (r.errors["first"] <= r.errors["encoder"]).all() and (r.errors["final"] <= r.errors["first"]).all()


def test_atlas_guess_is_the_exact_nearest_atlas_tile(loaded, real_cells):
    """Where the atlas wins, its code is the atlas entry nearest to the cell at atlas_px (mean-
    centred per channel when colour is fitted), found by brute force here in float64."""
    opts = AutoOptions(model="x", steps=0, threads=1, atlas_px=4)
    f = Fitter(loaded, opts)
    r = f.fit(real_cells)
    won = np.flatnonzero(r.first_source == 1)
    assert len(won) > 5

    def low(a):   # (n, s, s, 3) in 0-1 -> centred 4x4 box means, (n, 48)
        n, s = a.shape[:2]
        b = a.reshape(n, 4, s // 4, 4, s // 4, 3).mean(axis=(2, 4))
        return (b - b.mean(axis=(1, 2), keepdims=True)).transpose(0, 3, 1, 2).reshape(n, -1)

    with torch.no_grad():
        atlas_px = M.InferenceDecoder(loaded.net)(loaded.atlas).permute(0, 2, 3, 1).double().numpy()
    cells = low(real_cells[won] / 255.0)
    d = ((cells[:, None, :] - low(atlas_px)[None]) ** 2).sum(-1)
    nearest = loaded.atlas.numpy()[d.argmin(1)]
    assert np.array_equal(r.codes[won], nearest)


@pytest.mark.parametrize("shortlist", [0, 1, 8])
def test_atlas_shortlists_keep_the_first_guess_guarantee(loaded, real_cells, shortlist):
    r = Fitter(loaded, AutoOptions(model="x", steps=1, shortlist=shortlist, threads=1)).fit(real_cells)
    assert (r.errors["first"] <= r.errors["encoder"]).all() and (r.errors["final"] <= r.errors["first"]).all()
    assert (r.first_source == 1).any() == (shortlist > 0)


def test_refinement_and_atlas_help_on_average(loaded, real_cells):
    r = Fitter(loaded, AutoOptions(model="x", steps=8, threads=1)).fit(real_cells)
    assert r.errors["final"].mean() < 0.98 * r.errors["encoder"].mean()
    assert (r.errors["final"] < r.errors["first"]).mean() > 0.5
    assert (r.first_source == 1).any()   # the atlas won some cells


def test_colour_fit_is_the_least_squares_answer(loaded, real_cells):
    """With the fit, each channel of a stored tile is a + b * D(code), a least-squares optimum:
    moving the offset, or the gain about the tile's mean, either way does not lower the error."""
    r = Fitter(loaded, AutoOptions(model="x", steps=0, threads=1)).fit(real_cells[:50])
    with torch.no_grad():
        y = M.InferenceDecoder(loaded.net)(torch.from_numpy(r.codes))
    x = M.from_images(real_cells[:50])
    a, b, my = torch.from_numpy(r.offset), torch.from_numpy(r.gain), y.mean(dim=(2, 3))

    def err(a, b):
        return ((a[:, :, None, None] + b[:, :, None, None] * y).clamp(0, 1) - x).square().mean(dim=(1, 2, 3))

    base = err(a, b)
    for da, db in [(0.01, 0), (-0.01, 0), (0, 0.02), (0, -0.02)]:
        nb = (b + db).clamp(0, 4)
        assert bool((err(a + da - (nb - b) * my, nb) >= base - 1e-7).all()), (da, db)
    assert bool(((b >= 0) & (b <= 4)).all()) and bool((b > 0).any())


def test_decoding_from_provenance_reproduces_fitted_tiles(loaded, real_cells):
    r = Fitter(loaded, AutoOptions(model="x", steps=3, threads=1)).fit(real_cells[:80])
    again = decode_tiles(loaded, r.codes, r.gain, r.offset)
    diff = np.abs(again.astype(int) - r.tiles.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_cell_errors_without_fit_is_plain_mse():
    g = torch.Generator().manual_seed(0)
    y, x = torch.rand(5, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
    assert torch.allclose(cell_errors(y, x, False), (y - x).square().mean(dim=(1, 2, 3)))
    assert bool((cell_errors(y, x, True) <= cell_errors(y, x, False) + 1e-7).all())


@pytest.mark.parametrize("max_bytes", [10**9, 1, 3 * 8 * 8 * 3 * 8])
def test_cell_bands_cover_the_grid_like_one_resample(max_bytes):
    """Bands of cell rows (memory bounded by `max_bytes`) give the same cells as resampling the
    whole crop, here where cell edges fall on whole target pixels."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    grid = make_grid(64, 48, "8x6")
    whole = resample_cells(img, grid, 8).reshape(6, 8, 8, 8, 3).swapaxes(1, 2).reshape(-1, 8, 8, 3)
    parts = list(cell_bands(img, grid, 8, max_bytes))
    assert [p[0] for p in parts] == sorted({p[0] for p in parts}) and parts[-1][1] == 6
    assert np.array_equal(np.concatenate([p[2] for p in parts]), whole)


# ---- mosaic make --autoencoder ----------------------------------------------------------------------
def _cell_mse(db, saved, target, px):
    from mosaicdb.render.options import RenderOptions
    from mosaicdb.render.rows import render_array
    grid = make_grid(*target.shape[1::-1], saved.meta.grid.spec)
    ref = resample_cells(target, grid, px).astype(np.float64)
    got = render_array(db, saved, RenderOptions(tile_px=px)).astype(np.float64)
    d = (got - ref) ** 2
    return d.reshape(grid.rows, px, grid.cols, px, 3).mean(axis=(1, 3, 4))


@pytest.mark.slow
def test_make_with_autoencoder_end_to_end(glyph_db, glyph_model, target_png, tmp_path):
    """Decoded tiles land in their own database with provenance, the pool is untouched, and the
    result is an ordinary saved assignment: render, a pyramidal .tif, print and serve's API work."""
    with TileDB.open(glyph_db, readonly=True) as pool:
        before = (len(pool), pool.version)
    out = tmp_path / "m.png"
    res = mosaic("make", "--db", glyph_db, target_png, "--autoencoder", glyph_model, "--out", out,
                 "--grid", "12", "--tile-px", "16", "--ae-steps", "3")
    assert "cells decoded" in res.output
    saved = asg.load(out)
    ae_path = tmp_path / "glyph-ae.tiles.db"
    assert Path(saved.meta.db) == ae_path.resolve()
    a = json.loads(asg.metrics_path(out).read_text())["autoencoder"]
    assert a["cells"] == saved.rows * saved.cols == a["cells_decoded"] and a["cells_retrieved"] == 0
    with TileDB.open(glyph_db, readonly=True) as pool:
        assert (len(pool), pool.version) == before
    model = files.load_model(glyph_model)
    assert saved.meta.extra["autoencoder"]["sha256"] == model.sha256
    assert saved.meta.extra["autoencoder"]["cells_decoded"] == a["cells_decoded"]
    with TileDB.open(ae_path, readonly=True) as ae:
        assert saved.meta.db_uuid == ae.uuid and saved.meta.tiles_digest == ae.tiles_digest(saved.tile_ids)
        assert len(ae) == a["tiles_added"] == len(np.unique(saved.tile_ids))
        rows = ae.tiles(saved.tile_ids.ravel())
        by_id = {r["id"]: r for r in rows}
        prov = by_id[int(saved.tile_ids[2, 3])]["provenance"]
        assert by_id[int(saved.tile_ids[2, 3])]["origin"] == "autoencoder"
        assert prov["model"]["sha256"] == model.sha256 and len(prov["code"]) == ARCH.latent
        assert prov["cell"]["target_sha256"] == saved.meta.target.sha256
        cell = (prov["cell"]["row"], prov["cell"]["col"])
        assert int(saved.tile_ids[cell]) == int(saved.tile_ids[2, 3])
        stored = np.asarray(ae.load_original(int(saved.tile_ids[2, 3])))
        again = decode_tiles(model, np.array([prov["code"]]), np.array([prov["colour_fit"]["gain"]]),
                             np.array([prov["colour_fit"]["offset"]]))[0]
        assert np.abs(stored.astype(int) - again.astype(int)).max() <= 1
    # the usual commands on the result
    mosaic("render", out, "--out", tmp_path / "again.png", "--tile-px", "8", "-q")
    assert Image.open(tmp_path / "again.png").size == (saved.cols * 8, saved.rows * 8)
    mosaic("make", "--db", glyph_db, target_png, "--autoencoder", glyph_model, "--out", tmp_path / "mt.tif",
           "--grid", "12", "--tile-px", "32", "-q")
    mosaic("print", out, "--size", "10cm", "--dpi", "60", "--out", tmp_path / "p.tif", "-q")
    from mosaicdb.serve.api import MosaicAPI
    with TileDB.open(ae_path, readonly=True) as ae:
        cell = MosaicAPI(saved, ae, 1, 1).cell(1, 2)
    assert cell["origin"] == "autoencoder" and cell["provenance"]["model"]["sha256"] == model.sha256
    # the same mosaic again: every tile is already there
    mosaic("make", "--db", glyph_db, target_png, "--autoencoder", glyph_model, "--out", tmp_path / "m2.png",
           "--grid", "12", "--tile-px", "16", "--ae-steps", "3", "-q")
    again = json.loads(asg.metrics_path(tmp_path / "m2.png").read_text())["autoencoder"]
    assert again["tiles_added"] == 0 and again["tiles_shared"] == a["cells_decoded"]


@pytest.mark.slow
def test_hybrid_takes_the_closer_tile_per_cell(glyph_db, glyph_model, target_png, tmp_path):
    """The pool holds the target's own glyph cells, which retrieval finds exactly; the gradient
    half is better decoded. Per cell the hybrid is as close as the better of the two pure
    mosaics (same retrieval, same fits), and both kinds of tile are used."""
    target = np.asarray(Image.open(target_png).convert("RGB"))
    cells = target[:64].reshape(4, 16, 12, 16, 3).swapaxes(1, 2).reshape(-1, 16, 16, 3)
    pool = make_db(tmp_path / "pool.db", np.concatenate([glyphs(200, seed=5), cells]))
    common = ["--db", pool, target_png, "--autoencoder", glyph_model, "--grid", "12", "--tile-px", "16",
              "--min-distance", "0", "--ae-db", tmp_path / "ae.db", "-q"]
    mosaic("make", *common, "--out", tmp_path / "ae.png")
    mosaic("make", *common, "--hybrid", "--out", tmp_path / "hy.png")
    mosaic("make", "--db", pool, target_png, "--grid", "12", "--tile-px", "16", "--min-distance", "0", "-q",
           "--out", tmp_path / "rt.png")
    with TileDB.open(tmp_path / "ae.db", readonly=True) as ae, TileDB.open(pool, readonly=True) as p:
        e_ae = _cell_mse(ae, asg.load(tmp_path / "ae.png"), target, 16)
        e_hy = _cell_mse(ae, asg.load(tmp_path / "hy.png"), target, 16)
        e_rt = _cell_mse(p, asg.load(tmp_path / "rt.png"), target, 16)
        hy = asg.load(tmp_path / "hy.png")
        origins = {r["id"]: r for r in ae.tiles(np.unique(hy.tile_ids))}
    assert (e_hy <= np.minimum(e_ae, e_rt) + 1e-9).all()
    a = json.loads(asg.metrics_path(tmp_path / "hy.png").read_text())["autoencoder"]
    assert a["cells_retrieved"] > 0 and a["cells_decoded"] > 0
    copied = [r for r in origins.values() if r["origin"] == "retrieved"]
    assert copied and all(r["provenance"]["copied_from"]["db"] == str(pool.resolve()) for r in copied)
    assert e_hy[:4].mean() < e_ae[:4].mean()   # the glyph rows: retrieval is exact there


def test_decoded_tile_database_keeps_thumbnails_up_to_the_tile_size(tmp_path):
    from mosaicdb.autoencoder import aedb
    pool = make_db(tmp_path / "pool.db", glyphs(4), thumb_sizes=(8, 16, 32, 64))
    with TileDB.open(pool, readonly=True) as p:
        with aedb.open_or_create(tmp_path / "ae.db", p, 16) as ae:
            assert ae.thumb_sizes == (8, 16) and ae.feature_spec == p.feature_spec
            tile = glyphs(1, seed=3)[0]
            ae.add_images([(aedb.png_bytes(tile), "t", {})], update_index=False)
            assert np.array_equal(ae.thumbs(16)[ae.ids()[0]], tile)   # the decoded tile itself
        with aedb.open_or_create(tmp_path / "ae.db", p, 64) as again:   # an existing one keeps its settings
            assert again.thumb_sizes == (8, 16) and len(again) == 1


def test_make_option_errors(glyph_db, glyph_model, target_png, tmp_path):
    res = mosaic("make", "--db", glyph_db, target_png, "--hybrid", "--out", tmp_path / "x.png", code=2)
    assert "--hybrid and --ae-db need --autoencoder" in res.output
    res = mosaic("make", "--db", glyph_db, target_png, "--autoencoder", glyph_model, "--ae-db", glyph_db,
                 "--out", tmp_path / "x.png", code=2)
    assert "kept apart from your photos" in res.output
    res = mosaic("make", "--db", glyph_db, target_png, "--autoencoder", glyph_model, "--generate-worst", "2",
                 "--out", tmp_path / "x.png", code=2)
    assert "--generate-worst/--generate-above replace retrieved tiles" in res.output
    res = mosaic("make", "--db", glyph_db, target_png, "--autoencoder", tmp_path / "none", "--out",
                 tmp_path / "x.png", code=1)
    assert "mosaic autoencoder train" in res.output
    assert not list(tmp_path.glob("*.tiles.db"))


def test_cli_defaults_are_the_options_defaults():
    """`mosaic autoencoder train` and `mosaic make --autoencoder` default to the dataclasses'
    defaults (one source of truth for what the README and benchmarks call the defaults)."""
    from mosaicdb_cli.autoencoder import train_cmd
    from mosaicdb_cli.make import make_cmd
    d = {p.name: p.default for p in train_cmd.params}
    t = TrainOptions()
    assert (d["latent"], d["size"], d["width"]) == (t.arch.latent, t.arch.size, t.arch.width)
    for k in ("steps", "batch", "lr", "noise", "seed", "threads", "max_tiles", "atlas_size", "checkpoint_every"):
        assert d[k] == getattr(t, k), k
    m = {p.name: p.default for p in make_cmd.params}
    a = AutoOptions(model="x")
    assert (m["ae_steps"], m["ae_color_fit"], m["ae_hybrid"]) == (a.steps, a.color_fit, a.hybrid)
