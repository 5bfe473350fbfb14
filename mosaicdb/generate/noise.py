"""Initial noise for generated cells: ∫-noise from one global field (GP §1.1, after Chang et
al., "How I Warped Your Noise", ICLR 2024), or independent noise per tile for the ablation.

A tile's latent is h x w = (b s) x (b s); its cell owns a b x b block X_k of a global field X
(4 x rows*b x cols*b, i.i.d. N(0, 1)). The tile's noise

    fine = up_s(X_k) / s + Z - up_s(avgpool_s(Z)),    Z ~ N(0, I), up_s nearest-neighbour,

has every s x s patch summing to s * X_k (so avgpool_s(fine) * s == X_k exactly) and is itself
i.i.d. N(0, 1): each value has variance 1/s^2 + (1 - 1/s^2) = 1 and two values of one patch
have covariance 1/s^2 - 1/s^2 = 0. (GP's printed Eq. 1-2 give variance 1/N and 1/N + 1/N^2
instead; see ../shared/GENERATIVE.md.) When X is the initial noise a scene was generated from,
every tile starts from a zoomed-in copy of its block of that noise.

Z comes from the tile's own CPU `torch.Generator`, so a tile's noise does not depend on its
batch, device or run order. torch is passed in (imported lazily by the callers).
"""
from __future__ import annotations

NOISE_MODES = {"integral": "integral", "independent": "independent"}


def global_field(torch, seed: int, rows: int, cols: int, channels: int = 4):
    """X: (1, channels, rows, cols) float32 i.i.d. N(0, 1) from one seeded CPU generator."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((1, channels, rows, cols), generator=g, dtype=torch.float32)


def sum_pool(torch, field, k: int):
    """Unit-variance coarsening: avgpool_k(field) * k. Each output is the sum of k*k i.i.d.
    N(0, 1) values divided by k, so it is N(0, 1) again (a scene's noise seen at a coarser grid)."""
    if k == 1:
        return field
    return torch.nn.functional.avg_pool2d(field, k) * k


def integral_noise(torch, coarse, s: int, generators):
    """∫-noise for a batch. coarse: (B, C, hb, wb) blocks X_k; s: integer upsampling factor;
    generators: one CPU torch.Generator per tile (Z is drawn from it first).
    Returns (B, C, hb*s, wb*s) float32."""
    coarse = coarse.to(torch.float32)
    b, c, hb, wb = coarse.shape
    if len(generators) != b:
        raise ValueError(f"{len(generators)} generators for {b} tiles")
    z = independent_noise(torch, (c, hb * s, wb * s), generators)
    if s == 1:
        return coarse.clone()  # a patch of one value must equal X exactly: no room for Z
    up = torch.nn.functional.interpolate
    z_mean = torch.nn.functional.avg_pool2d(z, s)
    return up(coarse, scale_factor=s, mode="nearest") / s + z - up(z_mean, scale_factor=s, mode="nearest")


def independent_noise(torch, shape, generators):
    """(B, *shape) float32 N(0, 1), tile i drawn from generators[i] alone (as diffusers'
    `randn_tensor` does with a list of generators)."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])


def scene_noise(torch, seed: int, latent_h: int, latent_w: int, dtype: str = "fp32", channels: int = 4):
    """The initial noise `mosaic generate scene` drew for a scene: one CPU generator seeded with
    the scene's seed, shape (1, 4, H/8, W/8), in the pipeline's dtype (diffusers' `randn_tensor`
    with a one-element generator list). Returned as float32."""
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((1, channels, latent_h, latent_w), generator=g, dtype=dt).to(torch.float32)
