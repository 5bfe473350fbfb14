"""What pulls each generated tile towards its cell: AdaIN of the latent to the statistics of the
cell's block of the reference latent, and low-frequency guidance, a gradient step on
ℓ = Σ_k mean((G_σ(D(x̂0_k)) - G_σ(P_k))²) with D a decoder to RGB in [0, 1] and G_σ a
Gaussian blur (GP §1.2). Gradients flow through the decoder only: ε̂ is held fixed, so one
UNet pass per step suffices (`grad_through_unet` in the loop is the exception).

Decoders (`DECODERS`): `vae`, the pipeline's own VAE decoder (gradient checkpointing on, so its
activations are recomputed rather than kept); `tiny`, a TAESD-style `AutoencoderTiny` from a
local folder (e.g. madebyollin/taesdxl, MIT), far cheaper to backpropagate through; `linear`,
a least-squares 4 -> 3 map from the reference's own latents to its RGB, free but blind to
anything above the latent's resolution. All take latents in the UNet's (scaled) space.
torch is passed in or reached through the tensors; nothing here imports it at module level.
"""
from __future__ import annotations

import math

ADAIN_MODES = {"x0": "x0", "zt": "zt", "off": "off"}
DECODERS = ("vae", "tiny", "linear")
FLAT_ULPS = 64     # a channel whose std is within this many ulps of its magnitude is flat (rounding only)


# ---- AdaIN -----------------------------------------------------------------------------------
def channel_stats(x):
    """Per-sample, per-channel mean and (population) std: two (B, C) tensors."""
    return x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)


def adain(x, mean, std, std_weight: float = 1.0):
    """x (B, C, H, W) shifted and scaled so each channel has mean `mean` and std
    std_weight * std + (1 - std_weight) * its own std (mean/std: (B, C)). A flat channel (its
    spread is rounding error, which scaling would blow up into noise) becomes flat at the
    target mean."""
    import torch
    mu, sd = channel_stats(x)
    want = std_weight * std + (1.0 - std_weight) * sd
    flat = sd <= FLAT_ULPS * torch.finfo(x.dtype).eps * (mu.abs() + 1.0)
    scale = torch.where(flat, torch.zeros_like(sd), want / torch.where(flat, torch.ones_like(sd), sd))
    return mean[..., None, None] + scale[..., None, None] * (x - mu[..., None, None])


def noisy_stats(mean, std, alpha: float, sigma: float):
    """Statistics of α B + σ ε (ε white, independent of B): what z_t of a tile whose x0 had B's
    statistics would show at this step. Used by AdaIN on z_t."""
    return alpha * mean, (alpha * alpha * std * std + sigma * sigma) ** 0.5


# ---- blur ------------------------------------------------------------------------------------
def gaussian_kernel(torch, sigma: float, size_limit: int):
    """Normalised 1-D Gaussian taps (radius 3σ, at most size_limit - 1 so reflect padding works)."""
    radius = max(1, min(int(math.ceil(3.0 * sigma)), size_limit - 1))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(torch, img, sigma: float):
    """Separable Gaussian blur of (B, C, H, W) with reflected borders; sigma <= 0 is identity."""
    if sigma <= 0:
        return img
    F = torch.nn.functional
    c = img.shape[1]
    k = gaussian_kernel(torch, sigma, min(img.shape[2], img.shape[3])).to(img.device, img.dtype)
    r = (k.numel() - 1) // 2
    x = F.pad(img, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def tile_losses(torch, rgb, ref_blurred, sigma: float):
    """(B,) mean squared difference of the blurred decoded tiles and the blurred references."""
    d = blur(torch, rgb, sigma) - ref_blurred
    return (d * d).mean(dim=(1, 2, 3))


# ---- decoders --------------------------------------------------------------------------------
def vae_latents_to_input(vae, latents):
    """UNet-space latents -> what `vae.decode` takes (as the SDXL pipeline does it)."""
    cfg = vae.config
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = latents.new_tensor(cfg.latents_mean).view(1, -1, 1, 1)
        std = latents.new_tensor(cfg.latents_std).view(1, -1, 1, 1)
        return latents * std / cfg.scaling_factor + mean
    return latents / cfg.scaling_factor


CHUNK_PIXELS = 512 * 512     # tiles decoded per backward pass: about this many pixels at a time


def chunk_for(size: int) -> int:
    return max(1, CHUNK_PIXELS // (size * size))


class VaeDecoder:
    """The pipeline's VAE decoder, in float32, a chunk of tiles per backward pass. From 512 px
    up, with gradient checkpointing (activations recomputed in the backward pass instead of
    kept: diffusers#10350 saw ~15 GB for one 768 px decode without it)."""
    name = "vae"

    def __init__(self, vae, size: int):
        self.vae = vae
        self.chunk = chunk_for(size)
        if size * size >= CHUNK_PIXELS and hasattr(vae, "enable_gradient_checkpointing"):
            vae.enable_gradient_checkpointing()

    def __call__(self, latents):
        x = vae_latents_to_input(self.vae, latents.to(self.vae.dtype))
        out = self.vae.decode(x, return_dict=False)[0]
        return (out.float() + 1.0) / 2.0


class TinyDecoder:
    """An AutoencoderTiny (TAESD family) loaded from a local folder; it decodes UNet-space
    latents directly (its scaling factor is 1)."""
    name = "tiny"

    def __init__(self, model, size: int):
        self.model = model
        self.chunk = 4 * chunk_for(size)

    @classmethod
    def load(cls, torch, D, folder: str, device, size: int):
        from ..errors import UsageError
        try:
            model = D.AutoencoderTiny.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"--tiny-decoder {folder}: not an AutoencoderTiny folder ({first[:160]}); "
                             "download one with `hf download madebyollin/taesdxl --local-dir taesdxl`") from None
        model.requires_grad_(False)
        return cls(model.to(device=device, dtype=torch.float32).eval(), size)

    def __call__(self, latents):
        out = self.model.decode(latents.float() / self.model.config.scaling_factor, return_dict=False)[0]
        return (out + 1.0) / 2.0


class LinearDecoder:
    """rgb = A z + c per latent pixel, upsampled (bilinear) by the VAE's factor; A and c are
    least squares over every latent pixel of the reference blocks against the mean RGB of the
    pixels it covers (accumulated as normal equations, so any number of cells fits in memory)."""
    name = "linear"
    chunk = 64

    def __init__(self, weight, bias, factor: int):
        self.weight, self.bias, self.factor = weight, bias, int(factor)   # (3, C), (3,)

    @staticmethod
    def normal_equations(torch, latents, rgb_small):
        """Contributions of one batch: latents (B, C, b, b), rgb_small (B, 3, b, b) -> (XᵀX, XᵀY)."""
        x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        y = rgb_small.permute(0, 2, 3, 1).reshape(-1, 3).double()
        return x.T @ x, x.T @ y

    @classmethod
    def fit(cls, torch, xtx, xty, factor: int):
        ridge = 1e-6 * torch.eye(xtx.shape[0], dtype=xtx.dtype) * max(float(xtx.diagonal().mean()), 1e-12)
        w = torch.linalg.solve(xtx + ridge, xty)          # (C + 1, 3)
        return cls(w[:-1].T.float(), w[-1].float(), factor)

    def __call__(self, latents):
        import torch
        w = self.weight.to(latents.device)
        small = torch.einsum("oc,bchw->bohw", w, latents.float()) + self.bias.to(latents.device)[None, :, None, None]
        return torch.nn.functional.interpolate(small, scale_factor=self.factor, mode="bilinear", align_corners=False)

    def to_json(self) -> dict:
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist(), "factor": self.factor}


def area_scale(latent: int) -> float:
    """GP's w is for SD 2.1 at 768 px (a 96² latent). ℓ is a mean over pixels, so its gradient
    on each latent pixel shrinks with the latent's area; scaling the gradient by area / 96²
    makes one w pull as hard at 64 px as at 1024 px (w = 5000 is GP's strength everywhere)."""
    return latent * latent / GP_LATENT_AREA


GP_LATENT_AREA = 96 * 96


def guidance_grad(torch, decoder, z_d, eps, k, ref_blurred, sigma: float):
    """∇_{z_d} ℓ with ε̂ fixed (x̂0 = (z_d - σ_t ε̂)/α_t), decoded in chunks of the decoder's
    size so the backward pass holds only a chunk's activations. Returns (grad, per-tile loss);
    the caller applies w and `area_scale`."""
    grads, losses = [], []
    for i in range(0, z_d.shape[0], decoder.chunk):
        zc = z_d[i:i + decoder.chunk].detach().float().requires_grad_(True)
        with torch.enable_grad():
            x0 = (zc - k.sigma * eps[i:i + decoder.chunk].float()) / k.alpha
            per_tile = tile_losses(torch, decoder(x0), ref_blurred[i:i + decoder.chunk], sigma)
            (g,) = torch.autograd.grad(per_tile.sum(), zc)
        grads.append(g.to(z_d.dtype))
        losses.append(per_tile.detach())
    return torch.cat(grads), torch.cat(losses)
