"""Generated cells (issue 13, ../shared/GENERATIVE.md §3): ∫-noise statistics and exact block sums,
AdaIN statistics, x̂0 against `add_noise`, the loop against the pipeline, guidance, frozen
parameters, batch = single, the colour VAE, the decoders, and `mosaic generate cells` / `mosaic
make --generate-worst` end to end (resume, provenance, render/print/serve, bad input)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

torch = pytest.importorskip("torch", reason="generation tests need torch: pip install torch==2.13.0 then 'mosaicdb[gen]'")
pytest.importorskip("diffusers", reason="generation tests need diffusers: pip install 'mosaicdb[gen]'")
pytest.importorskip("transformers", reason="generation tests need transformers: pip install 'mosaicdb[gen]'")

from conftest import synthetic_image  # noqa: E402
from mosaicdb import TileDB  # noqa: E402
from mosaicdb import assignment as asg  # noqa: E402
from mosaicdb.errors import UsageError  # noqa: E402
from mosaicdb.generate import PipelineOptions, SceneOptions, generate_scene, save_tiny_pipeline  # noqa: E402
from mosaicdb.generate import guidance as G  # noqa: E402
from mosaicdb.generate import pipeline as pipeline_mod  # noqa: E402
from mosaicdb.generate.cellloop import CellLoop  # noqa: E402
from mosaicdb.generate.cellopts import CellOptions, resolve_geometry  # noqa: E402
from mosaicdb.generate.cellrun import generate_cells  # noqa: E402
from mosaicdb.generate.cells import CellGenerator, plan_cells  # noqa: E402
from mosaicdb.generate.colourvae import Q, build_colour_vae  # noqa: E402
from mosaicdb.generate.hybrid import select_cells  # noqa: E402
from mosaicdb.generate.noise import global_field, integral_noise, scene_noise, sum_pool  # noqa: E402
from mosaicdb.generate.pipeline import Generator, resolve_pipeline  # noqa: E402
from mosaicdb.generate.schedulers import SCHEDULERS, coeffs, model_output, resolve_scheduler, swap_scheduler, \
    x0_eps  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
F = torch.nn.functional
STEPS = 4


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_random(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tinyr") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_colour(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tinyc") / "tiny-colour", vae="colour")


def popts(folder, **kw) -> PipelineOptions:
    return PipelineOptions(str(folder), steps=kw.pop("steps", STEPS), guidance=kw.pop("guidance", 5.0), threads=1, **kw)


@pytest.fixture(scope="session")
def pipes(tiny_random, tiny_colour) -> dict:
    return {name: Generator(resolve_pipeline(popts(folder))).pipe
            for name, folder in (("random", tiny_random), ("colour", tiny_colour))}


@pytest.fixture(scope="session")
def target_file(tmp_path_factory) -> Path:
    """A 128 x 96 picture (a disc on a gradient-free background): a 4 x 3 grid of 32 px cells."""
    p = tmp_path_factory.mktemp("target") / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(3), 128, 96, "disc")).save(p)
    return p


def make_loop(pipe, scheduler="euler", steps=STEPS, cfg=5.0, size=64, **opts) -> CellLoop:
    """A loop on `pipe` with a fresh scheduler of the given kind (the pipe is shared by tests)."""
    import diffusers
    pipe.scheduler = swap_scheduler(diffusers, pipe.scheduler, scheduler)
    o = CellOptions(prompt="a dog", **opts)
    loop = CellLoop(pipe, o, resolve_geometry(o, size, 8), scheduler=scheduler, prediction="epsilon", steps=steps,
                    cfg_scale=cfg)
    if o.guided:
        loop.decoder = G.VaeDecoder(pipe.vae, size)
    return loop


def gens(seeds):
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def batch_inputs(n, seed=0, size=64):
    g = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((n, 4, size // 8, size // 8), generator=g)
    mean = torch.randn((n, 4), generator=g, dtype=torch.float64)
    std = 0.2 + torch.rand((n, 4), generator=g, dtype=torch.float64)
    refs = torch.rand((n, 3, size, size), generator=g)
    return noise, mean, std, refs


# ---- ∫-noise -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [1, 2, 8])
@pytest.mark.parametrize("shape", [(3, 4, 2, 2), (2, 4, 3, 5), (1, 4, 1, 4)])
def test_integral_noise_block_sums_are_exact(s, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    fine = integral_noise(torch, x, s, gens(range(shape[0])))
    assert fine.shape == (shape[0], shape[1], shape[2] * s, shape[3] * s)
    torch.testing.assert_close(F.avg_pool2d(fine, s) * s, x, atol=1e-5, rtol=0)
    if s == 1:
        assert torch.equal(fine, x)


@settings(max_examples=25, deadline=None)
@given(s=st.integers(1, 6), hb=st.integers(1, 4), wb=st.integers(1, 4), seed=st.integers(0, 2 ** 31 - 1))
def test_integral_noise_block_sums_hold_for_any_grid(s, hb, wb, seed):
    x = torch.randn((2, 4, hb, wb), generator=torch.Generator().manual_seed(seed)) * 3
    fine = integral_noise(torch, x, s, gens([seed, seed + 1]))
    torch.testing.assert_close(F.avg_pool2d(fine, s) * s, x, atol=1e-5, rtol=0)


def wrong_eq1(torch, x, s, generators):
    """GP's Eq. 1 as printed: variance 1/N."""
    n = s * s
    z = torch.cat([torch.randn((1, 4, x.shape[2] * s, x.shape[3] * s), generator=g) for g in generators])
    up = F.interpolate(x, scale_factor=s, mode="nearest")
    return up / n + (z - F.interpolate(F.avg_pool2d(z, s), scale_factor=s, mode="nearest")) / s


def wrong_eq2(torch, x, s, generators):
    """GP's Eq. 2 as printed: variance 1/N + 1/N²."""
    z = torch.cat([torch.randn((1, 4, x.shape[2] * s, x.shape[3] * s), generator=g) for g in generators])
    return F.interpolate(x, scale_factor=s, mode="nearest") / (s * s) + z / s


def wrong_nearest(torch, x, s, generators):
    return F.interpolate(x, scale_factor=s, mode="nearest")


def wrong_bilinear(torch, x, s, generators):
    return F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)


def noise_failures(fn, s: int) -> list[str]:
    """What an ∫-noise function gets wrong on ~1M seeded samples: (mean, unit variance,
    uncorrelated values within a patch, exact block sums, residual variance (N-1)/N)."""
    x = torch.randn((64, 4, 64 // s, 64 // s), generator=torch.Generator().manual_seed(7))
    fine = fn(torch, x, s, gens(range(64)))
    bad = []
    if abs(float(fine.mean())) >= 0.01:
        bad.append("mean")
    if abs(float(fine.var()) - 1) >= 0.01:
        bad.append("variance")
    p = fine.reshape(64, 4, 64 // s, s, 64 // s, s)
    first = p[:, :, :, 0, :, 0].flatten()
    for dy in range(s):
        for dx in range(s):
            if (dy, dx) != (0, 0):
                other = p[:, :, :, dy, :, dx].flatten()
                if abs(float(torch.corrcoef(torch.stack([first, other]))[0, 1])) >= 0.02:
                    bad.append(f"correlation {dy},{dx}")
                    break
        else:
            continue
        break
    if not torch.allclose(F.avg_pool2d(fine, s) * s, x, atol=1e-5):
        bad.append("block sums")
    n = s * s
    resid = fine - F.interpolate(x, scale_factor=s, mode="nearest") / s
    if abs(float(resid.var()) - (n - 1) / n) >= 0.01:
        bad.append("residual variance")
    return bad


@pytest.mark.parametrize("s", [2, 4])
def test_integral_noise_is_unit_gaussian_and_uncorrelated(s):
    assert noise_failures(integral_noise, s) == []


@pytest.mark.parametrize("wrong", [wrong_eq1, wrong_eq2, wrong_nearest, wrong_bilinear])
def test_the_statistics_catch_the_wrong_formulas(wrong):
    assert noise_failures(wrong, 4), f"{wrong.__name__} passed the ∫-noise checks"


def test_sum_pool_keeps_unit_variance_and_scene_noise_is_the_scenes():
    f = global_field(torch, 3, 256, 256)
    pooled = sum_pool(torch, f, 4)
    assert pooled.shape == (1, 4, 64, 64) and abs(float(pooled.var()) - 1) < 0.03
    torch.testing.assert_close(pooled[0, :, 0, 0], f[0, :, :4, :4].sum((1, 2)) / 4)
    # what diffusers' randn_tensor draws for a scene from one CPU generator seeded with its seed
    g = torch.Generator("cpu").manual_seed(11)
    assert torch.equal(scene_noise(torch, 11, 8, 12), torch.randn((1, 4, 8, 12), generator=g))


# ---- AdaIN -----------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), weight=st.sampled_from([1.0, 0.5, 0.0]))
def test_adain_gives_the_block_statistics(seed, weight):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((3, 4, 8, 8), generator=g, dtype=torch.float64) * 3 + 1
    mean = torch.randn((3, 4), generator=g, dtype=torch.float64)
    std = torch.rand((3, 4), generator=g, dtype=torch.float64) + 0.1
    own = x.std(dim=(2, 3), unbiased=False)
    out = G.adain(x, mean, std, weight)
    m, s = G.channel_stats(out)
    torch.testing.assert_close(m, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(s, weight * std + (1 - weight) * own, atol=1e-5, rtol=0)


def test_adain_of_a_flat_tile_is_flat_at_the_target_mean():
    out = G.adain(torch.full((2, 4, 8, 8), 0.7), torch.ones(2, 4), torch.full((2, 4), 2.0))
    assert torch.isfinite(out).all() and torch.equal(out, torch.ones(2, 4, 8, 8))


def test_noisy_stats_are_those_of_a_noised_block():
    g = torch.Generator().manual_seed(0)
    block = torch.randn((1, 4, 512, 512), generator=g, dtype=torch.float64) * 0.5 + 2
    noised = 0.6 * block + 0.8 * torch.randn((1, 4, 512, 512), generator=g, dtype=torch.float64)
    m, s = G.noisy_stats(*G.channel_stats(block), 0.6, 0.8)
    torch.testing.assert_close(m, G.channel_stats(noised)[0], atol=0.01, rtol=0)
    torch.testing.assert_close(s, G.channel_stats(noised)[1], atol=0.01, rtol=0)


@pytest.mark.parametrize("adain", ["x0", "zt"])
def test_each_tile_of_a_batch_matches_its_own_block(pipes, adain):
    loop = make_loop(pipes["colour"], adain=adain, adain_std_weight=1.0, guidance_weight=0)
    noise, mean, std, refs = batch_inputs(4, seed=1)
    res = loop.run(noise, mean, std, refs, gens(range(4)), "a dog", "")
    m, s = G.channel_stats(res.latents.double())
    if adain == "x0":   # Euler's last step lands on that step's (AdaIN'd) x̂0
        torch.testing.assert_close(m, mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(s, std, atol=1e-4, rtol=0)
    else:               # on z_t the match is loose, but each tile is nearest its own block
        d = ((m[:, None] - mean[None]) ** 2).sum(-1)
        assert d.argmin(1).tolist() == [0, 1, 2, 3]
    perm = [2, 0, 3, 1]   # the same tiles in another order: the same results, moved along
    res2 = loop.run(noise[perm], mean[perm], std[perm], refs[perm], gens(perm), "a dog", "")
    torch.testing.assert_close(res2.latents, res.latents[perm], atol=1e-4, rtol=0)


# ---- x̂0 and the loop -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_x0_inverts_add_noise(pipes, name, prediction):
    import diffusers
    sched = swap_scheduler(diffusers, pipes["random"].scheduler, name)
    sched = type(sched).from_config(sched.config, prediction_type=prediction)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn((2, 4, 8, 8), generator=g, dtype=torch.float64)
    eps = torch.randn((2, 4, 8, 8), generator=g, dtype=torch.float64)
    ddpm = diffusers.DDPMScheduler.from_config(sched.config)
    for t in sched.timesteps[[0, 3, -1]]:
        if hasattr(sched, "_step_index"):
            sched._step_index = None
        z = sched.add_noise(x0, eps, t.reshape(1))
        sched.scale_model_input(z, t)                 # sets Euler's step index, as in the loop
        k = coeffs(sched, SCHEDULERS[name][1], t)
        out = eps if prediction == "epsilon" else ddpm.get_velocity(x0, eps, t.reshape(1).long())
        got_x0, got_eps = x0_eps(k.c * z, out, k, prediction)
        torch.testing.assert_close(got_x0, x0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_eps, eps, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model_output(got_x0, got_eps, k, prediction), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_loop_with_every_part_off_is_the_pipeline(pipes, name):
    """Same latents, same generators, the same prompt embeddings: the same latents out."""
    pipe = pipes["random"]
    loop = make_loop(pipe, scheduler=name, adain="off", guidance_weight=0)
    noise, mean, std, refs = batch_inputs(3)
    ours = loop.run(noise, mean, std, refs, gens([1, 2, 3]), "a red fox", "blurry")
    pe, npe, ppe, nppe = loop.embeddings("a red fox", "blurry")
    ref = pipe(prompt_embeds=pe.repeat(3, 1, 1), negative_prompt_embeds=npe.repeat(3, 1, 1),
               pooled_prompt_embeds=ppe.repeat(3, 1), negative_pooled_prompt_embeds=nppe.repeat(3, 1),
               num_inference_steps=STEPS, guidance_scale=5.0, latents=noise.clone(), generator=gens([1, 2, 3]),
               output_type="latent", height=64, width=64).images
    torch.testing.assert_close(ours.latents, ref, atol=1e-5, rtol=0)
    pixels = pipe.image_processor.postprocess(pipe.vae.decode(ref / pipe.vae.config.scaling_factor).sample,
                                              output_type="np")
    np.testing.assert_allclose(ours.images, pixels, atol=1e-5)


@pytest.mark.parametrize("vae", ["random", "colour"])
def test_one_small_guidance_step_lowers_the_loss(pipes, vae):
    dec = G.VaeDecoder(pipes[vae].vae, 64)
    noise, _, _, refs = batch_inputs(2, seed=4)
    k = type("K", (), {"alpha": 0.8, "sigma": 0.6})()
    eps = torch.randn_like(noise)
    ref_b = G.blur(torch, refs, 8.0)
    g, before = G.guidance_grad(torch, dec, noise, eps, k, ref_b, 8.0)
    _, after = G.guidance_grad(torch, dec, noise - 1e-3 * g / g.abs().max(), eps, k, ref_b, 8.0)
    assert (after < before).all(), (before, after)


def test_guidance_lowers_the_final_loss_over_seeds_and_sets_no_parameter_gradient(pipes):
    pipe = pipes["colour"]
    for seed in range(3):
        noise, mean, std, refs = batch_inputs(2, seed=seed)
        losses = {}
        for w in (0.0, 5000.0):
            loop = make_loop(pipe, adain="off", guidance_weight=w)
            losses[w] = loop.run(noise, mean, std, refs, gens([seed, seed + 9]), "a dog", "").final_loss
        assert sum(losses[5000.0]) < 0.95 * sum(losses[0.0]), (seed, losses)
    loop = make_loop(pipe, adain="x0", guidance_weight=5000.0, grad_through_unet=True, steps=2)
    loop.run(noise, mean, std, refs, gens([0, 1]), "a dog", "")
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())


def test_through_the_unet_the_gradient_differs_but_also_pulls(pipes):
    noise, mean, std, refs = batch_inputs(2, seed=8)
    res = {}
    for through in (False, True):
        loop = make_loop(pipes["colour"], adain="off", guidance_weight=5000.0, grad_through_unet=through)
        res[through] = loop.run(noise, mean, std, refs, gens([3, 4]), "a dog", "")
    assert not torch.allclose(res[True].latents, res[False].latents)
    plain = make_loop(pipes["colour"], adain="off", guidance_weight=0).run(noise, mean, std, refs, gens([3, 4]),
                                                                             "a dog", "")
    assert sum(res[True].final_loss) < sum(plain.final_loss)


def test_a_tile_alone_equals_the_same_tile_in_a_batch(tiny_colour, target_file):
    plan = plan_cells(target_file, popts(tiny_colour), CellOptions(prompt="a dog", grid="4x3", batch=3))
    gen = CellGenerator(plan)
    cells = [(0, 0), (1, 2), (2, 3)]
    together = gen.batch(cells)
    shuffled = {(t.row, t.col): t for t in gen.batch([cells[2], cells[0], cells[1]])}
    alone = gen.batch([(1, 2)])[0]
    assert [(t.row, t.col) for t in together] == cells
    for t in together + [alone]:
        diff = np.abs(t.rgb.astype(int) - shuffled[t.row, t.col].rgb.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (t.row, t.col)


# ---- the colour VAE and the decoders ----------------------------------------------------------------------
def test_colour_vae_is_an_exact_colour_codec():
    vae = build_colour_vae()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 64, 64), generator=g) * 2 - 1
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode()
        rec = vae.decode(lat).sample
        q = torch.tensor(Q)
        torch.testing.assert_close(lat, 2 * torch.einsum("ij,bjhw->bihw", q, F.avg_pool2d(x, 8)), atol=1e-3, rtol=0)
        torch.testing.assert_close(rec, F.interpolate(F.avg_pool2d(x, 8), scale_factor=8), atol=1e-3, rtol=0)


def test_random_vae_cannot_reach_a_colour_and_the_colour_vae_can(pipes):
    """Why the colour VAE exists: the mean colour the random VAE decodes does not follow the latent."""
    for name, moves in (("random", False), ("colour", True)):
        vae = pipes[name].vae
        with torch.no_grad():
            means = [vae.decode(torch.full((1, 4, 8, 8), v) / vae.config.scaling_factor).sample.mean().item()
                     for v in (-2.0, 2.0)]
        assert (abs(means[1] - means[0]) > 0.5) == moves, (name, means)


def test_linear_decoder_recovers_the_colour_vae_map():
    vae = build_colour_vae()
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand((8, 3, 32, 32), generator=g)
    with torch.no_grad():
        lat = vae.encode(rgb * 2 - 1).latent_dist.mode()
    xtx, xty = G.LinearDecoder.normal_equations(torch, lat, F.avg_pool2d(rgb, 8))
    dec = G.LinearDecoder.fit(torch, xtx, xty, 8)
    torch.testing.assert_close(dec.weight, torch.tensor(Q).T / 4, atol=1e-3, rtol=0)
    torch.testing.assert_close(dec.bias, torch.full((3,), 0.5), atol=1e-3, rtol=0)


def test_tiny_decoder_loads_and_guides(tmp_path):
    import diffusers
    torch.manual_seed(0)
    tae = diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8))
    tae.save_pretrained(tmp_path / "taesd")
    dec = G.TinyDecoder.load(torch, diffusers, str(tmp_path / "taesd"), "cpu", 64)
    noise, _, _, refs = batch_inputs(2)
    k = type("K", (), {"alpha": 1.0, "sigma": 0.0})()
    g, loss = G.guidance_grad(torch, dec, noise, torch.zeros_like(noise), k, refs, 2.0)
    assert g.shape == noise.shape and g.abs().sum() > 0 and loss.shape == (2,)
    with pytest.raises(UsageError, match="not an AutoencoderTiny folder"):
        G.TinyDecoder.load(torch, diffusers, str(tmp_path), "cpu", 64)


def test_blur_is_normalised_and_smooths():
    img = torch.zeros((1, 3, 32, 32))
    img[..., 16, 16] = 1.0
    out = G.blur(torch, img, 2.0)
    torch.testing.assert_close(out.sum(), torch.tensor(3.0))
    assert out.max() < 0.05 and torch.equal(G.blur(torch, img, 0), img)
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(G.blur(torch, flat, 3.0), flat)


# ---- options, schedulers, geometry ---------------------------------------------------------------------
def test_schedulers_are_resolved_or_refused():
    assert resolve_scheduler("model", "EulerDiscreteScheduler") == "euler"
    assert resolve_scheduler("model", "LCMScheduler") == "lcm"
    assert resolve_scheduler("ddim", "DPMSolverMultistepScheduler") == "ddim"
    with pytest.raises(UsageError, match="DPMSolverMultistepScheduler is not supported.*--scheduler"):
        resolve_scheduler("model", "DPMSolverMultistepScheduler")
    with pytest.raises(UsageError, match="choose one of model, euler"):
        resolve_scheduler("heun", "EulerDiscreteScheduler")


@pytest.mark.parametrize("kw,match", [
    ({"prompt": " "}, "--prompt is required"),
    ({"adain": "both"}, "unknown --adain 'both': choose one of off, x0, zt"),
    ({"noise": "pink"}, "unknown --noise"),
    ({"guidance_decoder": "big"}, "choose one of linear, tiny, vae"),
    ({"guidance_decoder": "tiny"}, "needs --tiny-decoder"),
    ({"guidance_decay": 0}, "--guidance-decay"),
    ({"batch": 0}, "--batch"),
    ({"grid": "200x100"}, "20,000 cells is more than 16,384 generated cells"),
    ({"grad_through_unet": True, "guidance_iters": 2}, "--grad-through-unet"),
    ({"scheduler": "heun"}, "unknown --scheduler"),
])
def test_cell_options_fail_in_one_line(kw, match):
    with pytest.raises(UsageError, match=match):
        CellOptions(**{"prompt": "a dog", **kw})


@pytest.mark.parametrize("size,block,adain,match", [
    (64, 3, "x0", "--block 3 must divide the tile latent side 8"),
    (64, 16, "x0", "must divide"),
    (64, 1, "x0", "no spread for AdaIN"),
])
def test_geometry_is_checked(size, block, adain, match):
    with pytest.raises(UsageError, match=match):
        resolve_geometry(CellOptions(prompt="a", block=block, adain=adain), size, 8)


def test_default_geometry():
    g = resolve_geometry(CellOptions(prompt="a"), 64, 8)
    assert (g.latent, g.block, g.s, g.blur_sigma, g.reference_px) == (8, 2, 4, 4.0, 16)
    g = resolve_geometry(CellOptions(prompt="a"), 1024, 8)
    assert (g.latent, g.block, g.s) == (128, 16, 8)
    assert resolve_geometry(CellOptions(prompt="a", block=1, adain="off"), 64, 8).s == 8


def test_select_cells():
    cost = np.array([[1.0, 9.0, 3.0], [7.0, 2.0, 8.0]], np.float32)
    assert select_cells(cost, 2, None) == [(0, 1), (1, 2)]
    assert select_cells(cost, 0, 2.5) == [(0, 1), (1, 2), (1, 0), (0, 2)]
    assert select_cells(cost, 1, 7.5) == [(0, 1), (1, 2)]
    assert select_cells(cost, 10, None) == [(0, 1), (1, 2), (1, 0), (0, 2), (1, 1), (0, 0)]


# ---- bad input: one line, before any model loads ------------------------------------------------------------
@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(self, rp):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(pipeline_mod.Generator, "__init__", refuse)


def cli_run(*args):
    res = invoke_cli(*args)
    assert "Traceback" not in res.output
    return res


def edited_model(src: Path, dest: Path, **changes) -> Path:
    shutil.copytree(src, dest)
    for rel, edit in changes.items():
        p = dest / rel
        cfg = json.loads(p.read_text())
        cfg.update(edit)
        p.write_text(json.dumps(cfg))
    return dest


def test_bad_input_is_one_line_before_any_model_loads(tiny_colour, target_file, tmp_path, no_model_load):
    base = ["generate", "cells", target_file, "--model", tiny_colour, "--prompt", "a dog", "--out", tmp_path / "o.png"]
    dpm = edited_model(tiny_colour, tmp_path / "dpm",
                       **{"model_index.json": {"scheduler": ["diffusers", "DPMSolverMultistepScheduler"]}})
    sd15 = edited_model(tiny_colour, tmp_path / "sd15", **{"model_index.json": {"_class_name": "StableDiffusionPipeline"}})
    sample = edited_model(tiny_colour, tmp_path / "x0", **{"scheduler/scheduler_config.json": {"prediction_type": "sample"}})
    cases = [
        (["generate", "cells", tmp_path / "missing.png"] + base[3:], "target .*missing.png does not exist"),
        (["generate", "cells", target_file, "--model", dpm] + base[5:], "DPMSolverMultistepScheduler is not supported"),
        (["generate", "cells", target_file, "--model", sd15] + base[5:], "needs an SDXL-family one"),
        (["generate", "cells", target_file, "--model", sample] + base[5:], "predicts 'sample'"),
        (["generate", "cells", target_file, "--model", tmp_path / "nowhere"] + base[5:], "does not exist"),
        (base + ["--scheduler", "heun"], "unknown --scheduler 'heun'"),
        (base + ["--block", "3"], "must divide the tile latent side 8"),
        (base + ["--grid", "200"], "more than 16,384 generated cells"),
        (base + ["--out", tmp_path / "o.gif"], "gif"),
    ]
    for args, match in cases:
        res = cli_run(*args)
        assert res.exit_code != 0, args
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and __import__("re").search(match, lines[0]), (args, res.output)
    assert not (tmp_path / "o.tiles.db").exists()


def test_a_grid_too_fine_for_the_scenes_latent_is_refused(tiny_colour, tmp_path):
    scene = tmp_path / "scene.png"
    generate_scene(popts(tiny_colour), SceneOptions(prompt="a lighthouse", width=64, height=64, seed=2), scene)
    with pytest.raises(UsageError, match="too fine for the latent size.*--no-scene-noise"):
        plan_cells(scene, popts(tiny_colour), CellOptions(prompt="a dog", grid="8"))
    assert plan_cells(scene, popts(tiny_colour), CellOptions(prompt="a dog", grid="8", scene_noise=False)).scene is None
    assert plan_cells(scene, popts(tiny_colour), CellOptions(prompt="a dog", grid="4")).scene is not None


# ---- scene link: the scene's own noise is the field ------------------------------------------------------------
def test_a_scene_target_reuses_its_initial_noise(tiny_colour, tmp_path):
    scene = tmp_path / "scene.png"
    prov = generate_scene(popts(tiny_colour), SceneOptions(prompt="a lighthouse", width=128, height=128, seed=9), scene)
    plan = plan_cells(scene, popts(tiny_colour), CellOptions(prompt="a dog", grid="8"))
    assert plan.scene is not None and plan.scene.seed == 9 and plan.scene.pool == 1
    gen = CellGenerator(plan)
    noise = scene_noise(torch, 9, 16, 16)
    assert torch.equal(gen.field, noise)            # grid 8 x block 2 = the scene's 16 x 16 latent
    cells = [(0, 0), (5, 3)]
    fine = gen.initial_noise(cells, gens([1, 2]))
    for k, (r, c) in enumerate(cells):
        torch.testing.assert_close(F.avg_pool2d(fine[k:k + 1], 4) * 4, noise[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2],
                                   atol=1e-5, rtol=0)
    assert prov["sha256"]
    # an edited image is no longer that scene: a fresh field
    Image.open(scene).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(scene)
    assert plan_cells(scene, popts(tiny_colour), CellOptions(prompt="a dog", grid="8")).scene is None


# ---- end to end ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_generate_cells_end_to_end_resume_and_outputs(tiny_colour, target_file, tmp_path, monkeypatch):
    out = tmp_path / "m.png"
    # pure AdaIN (std weight 1): the target's flat background cells get byte-identical flat tiles,
    # which the database stores once; the run record remembers which cells they serve
    opts = CellOptions(prompt="a dog", grid="4x3", batch=5, seed=3, adain_std_weight=1.0)
    # interrupted after the first batch: the tiles made so far are kept
    from mosaicdb.generate import cellrun
    real = cellrun.ingest_tiles
    calls = []

    def interrupt_after_one(db, tiles, common):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(tiles))
        return real(db, tiles, common)

    monkeypatch.setattr(cellrun, "ingest_tiles", interrupt_after_one)
    with pytest.raises(KeyboardInterrupt):
        generate_cells(target_file, popts(tiny_colour), opts, out)
    monkeypatch.setattr(cellrun, "ingest_tiles", real)
    rep = generate_cells(target_file, popts(tiny_colour), opts, out)
    assert (rep.cells, rep.already_done, rep.generated) == (12, 5, 7)
    again = generate_cells(target_file, popts(tiny_colour), opts, out)
    assert (again.already_done, again.generated) == (12, 0)

    saved = asg.load(out)
    assert saved.tile_ids.shape == (3, 4) and len(np.unique(saved.tile_ids)) < 12
    assert json.loads(Path(rep.record).read_text())["duplicates"]
    with TileDB.open(rep.db, readonly=True) as db:
        rows = {tuple(r["provenance"]["cell"]): r for r in db.tiles(saved.tile_ids.ravel())}
        assert db.check().ok and not db.index_stale()
    for (r, c), row in rows.items():
        p = row["provenance"]
        assert saved.tile_ids[r, c] == row["id"] and row["origin"] == "generated"
        assert p["kind"] == "cell" and p["run"] == rep.run and p["prompt"] == "a dog"
        assert p["target"]["sha256"] == saved.meta.target.sha256
        assert p["options"] == opts.to_json() and p["pipeline"]["steps"] == STEPS
        assert p["guidance_loss"]["output"] < p["guidance_loss"]["first_step"]
    m = json.loads(Path(rep.metrics_path).read_text())
    assert m["generated"]["run"] == rep.run and m["psnr64"] > 15

    # the resumed tiles are the tiles an uninterrupted run makes (up to batch arithmetic)
    fresh = generate_cells(target_file, popts(tiny_colour), opts, tmp_path / "f.png", db_path=tmp_path / "fresh.db")
    a, b = np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "f.png"))
    assert fresh.generated == 12 and np.abs(a.astype(int) - b.astype(int)).max() <= 1

    # an ordinary assignment: render (pyramid), print, serve's cell API, reproduce
    assert cli_run("render", saved.meta.output, "--out", tmp_path / "big.tif", "--tile-px", 64, "-q").exit_code == 0
    assert cli_run("print", out, "--size", "10cm", "--dpi", 100, "--out", tmp_path / "p.tif").exit_code == 0
    from mosaicdb.serve.api import MosaicAPI
    with TileDB.open(rep.db, readonly=True) as db:
        cell = MosaicAPI(saved, db, 256, 192).cell(2, 1)
    assert cell["generation"]["kind"] == "cell" and cell["generation"]["cell"] == [2, 1]
    assert cell["generation"]["prompt"] == "a dog" and cell["generation"]["run"] == rep.run
    tid = int(saved.tile_ids[1, 2])
    res = cli_run("generate", "reproduce", rep.db, tid, "--out", tmp_path / "t.png", "--check")
    assert res.exit_code == 0 and "Identical" in res.output


def test_cli_generate_cells(tiny_colour, target_file, tmp_path):
    res = cli_run("generate", "cells", target_file, "--model", tiny_colour, "--steps", 2, "--threads", 1,
                  "--grid", "4x3", "--prompt", "a dog", "--out", tmp_path / "c.jpg", "--adain", "off",
                  "--guidance-decoder", "linear", "--json", "-q")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["generated"] == 12 and Path(rep["output"]).is_file() and Path(rep["record"]).is_file()
    assert json.loads(Path(rep["record"]).read_text())["options"]["guidance_decoder"] == "linear"


@pytest.mark.slow
def test_hybrid_generates_the_worst_cells(tiny_colour, synthetic_tiles, tmp_path):
    db = tmp_path / "pool.db"
    with TileDB.create(db) as d:
        d.ingest([synthetic_tiles], workers=1)
    target = tmp_path / "t.png"
    Image.fromarray(synthetic_image(np.random.default_rng(9), 192, 128, "gradient")).save(target)
    out = tmp_path / "h.png"
    base = ["make", "--db", db, target, "--out", out, "--grid", "6", "--min-distance", "0", "-q"]
    assert cli_run(*base).exit_code == 0
    before = asg.load(out)
    res = cli_run(*base, "--generate-worst", 3, "--generate-model", tiny_colour, "--generate-prompt", "a dog",
                  "--generate-steps", 3, "--generate-device", "cpu")
    assert res.exit_code == 0, res.output
    m = json.loads(asg.metrics_path(out).read_text())
    g = m["generated"]
    worst = select_cells(before.cost, 3, None)
    assert [tuple(c) for c in g["cells"]] == worst
    after = asg.load(out)
    with TileDB.open(db, readonly=True) as d:
        for (r, c), tid in zip(worst, g["tile_ids"]):
            assert after.tile_ids[r, c] == tid
            p = d.tiles([tid])[0]["provenance"]
            assert p["kind"] == "cell" and p["cell"] == [r, c]
    changed = after.tile_ids != before.tile_ids
    assert changed.sum() == 3
    assert np.mean(g["distance_after"]) < np.mean(g["distance_before"])
    assert g["fidelity_before"]["psnr64"] == pytest.approx(json.loads(json.dumps(g))["fidelity_before"]["psnr64"])
    assert g["fidelity_after"]["psnr_cell"] > g["fidelity_before"]["psnr_cell"]


def test_hybrid_options_are_checked(tiny_colour, synthetic_db, tmp_path, no_model_load):
    Image.fromarray(synthetic_image(np.random.default_rng(1), 64, 64, "blocks")).save(tmp_path / "x.png")
    base = ["make", "--db", synthetic_db.path, tmp_path / "x.png", "--out", tmp_path / "o.png"]
    for extra, match in [(["--generate-worst", 2], "need --generate-model"),
                         (["--generate-model", tiny_colour], "needs --generate-worst"),
                         (["--generate-worst", -1, "--generate-model", tiny_colour, "--generate-prompt", "a"],
                          "--generate-worst must be >= 0")]:
        res = cli_run(*base, *extra)
        assert res.exit_code != 0 and match in res.output, res.output
