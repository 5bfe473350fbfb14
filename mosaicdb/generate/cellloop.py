"""Our own SDXL denoising loop for generated cells (GP §1.2), built on a loaded
`StableDiffusionXLPipeline`'s parts: its prompt encoder, time ids, scheduler, UNet and VAE.

diffusers' `__call__` cannot host it: it runs under no_grad, and its step callback comes after
`scheduler.step` without ε̂, so guidance would need a second UNet pass. Per step:

    ε̂ = UNet(z) with classifier-free guidance            (no gradient, unless grad_through_unet)
    x̂0, ε̂ in DDPM form                                    (schedulers.py)
    AdaIN of x̂0 (or of z_t) to the cell's block statistics (guidance.py)
    z_d <- z_d - w_i ∇ℓ (ε̂ fixed), w_{i+1} = γ w_i           (guidance.py)
    scheduler.step(model output rebuilt from (x̂0, ε̂), t, z)

With AdaIN off and w = 0 this is exactly the pipeline's own loop (tested to 1e-5). All model
parameters are frozen: gradients reach only the latents.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import guidance as G
from .cellopts import CellGeometry, CellOptions
from .schedulers import SCHEDULERS, coeffs, model_output, x0_eps


@dataclass
class BatchResult:
    images: np.ndarray      # (B, H, W, 3) float32 in [0, 1], as the pipeline's "np" output
    latents: object         # (B, 4, h, w) final latents (torch)
    losses: list            # per step: list of B floats (guidance loss before that step's update), or None
    final_loss: list        # per tile: ℓ of the decoded output against its blurred reference


class CellLoop:
    def __init__(self, pipe, opts: CellOptions, geom: CellGeometry, *, scheduler: str, prediction: str,
                 steps: int, cfg_scale: float, decoder=None):
        import torch
        self.torch, self.pipe, self.opts, self.geom = torch, pipe, opts, geom
        self.kind = SCHEDULERS[scheduler][1]
        self.prediction, self.steps, self.cfg_scale = prediction, int(steps), float(cfg_scale)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            if m is not None:
                m.requires_grad_(False)
        if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
            pipe.upcast_vae()   # the SDXL VAE overflows in fp16, forwards and backwards
        self.decoder = decoder
        self.grad_scale = G.area_scale(geom.latent)
        # float64 for the latent algebra (Apple's MPS has no float64; float32 there)
        self.exact = torch.float32 if self.device.type == "mps" else torch.float64
        self._embeds: dict = {}

    @property
    def device(self):
        return self.pipe._execution_device

    @property
    def cfg(self) -> bool:
        return self.cfg_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def embeddings(self, prompt: str, negative: str):
        """(prompt, negative, pooled, negative pooled) embeddings of one prompt, computed once."""
        key = (prompt, negative)
        if key not in self._embeds:
            with self.torch.no_grad():
                self._embeds[key] = self.pipe.encode_prompt(
                    prompt=prompt, device=self.device, num_images_per_prompt=1,
                    do_classifier_free_guidance=self.cfg, negative_prompt=negative)
        return self._embeds[key]

    # ---- one batch ---------------------------------------------------------------------------
    def run(self, noise, block_mean, block_std, refs, generators, prompt: str, negative: str) -> BatchResult:
        """noise: (B, 4, h, w) unit-variance initial noise; block_mean/std: (B, 4) AdaIN targets;
        refs: (B, 3, H, W) float32 references P_k in [0, 1]; generators: one per tile (the
        schedulers' own noise, e.g. Euler-ancestral, is drawn from them)."""
        torch, pipe = self.torch, self.pipe
        from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps
        with torch.no_grad():
            n = noise.shape[0]
            cond = self._conditioning(prompt, negative, n)
            sched = pipe.scheduler
            timesteps, _ = retrieve_timesteps(sched, self.steps, self.device)
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(0)
            latents = noise.to(self.device, cond["dtype"]) * sched.init_noise_sigma
            extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
            mean = block_mean.to(self.device, self.exact)
            std = block_std.to(self.device, self.exact)
            ref_b = G.blur(torch, refs.to(self.device, torch.float32), self.geom.blur_sigma)
            w = float(self.opts.guidance_weight)
            losses = []
            for t in timesteps:
                latents, out, loss = self._step_edit(latents, t, cond, mean, std, ref_b, w)
                losses.append(loss)
                latents = sched.step(out, t, latents, **extra, return_dict=False)[0]
                w *= self.opts.guidance_decay
            images = self.decode(latents)
            final = G.tile_losses(torch, torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device), ref_b,
                                  self.geom.blur_sigma)
        return BatchResult(images, latents, losses if self.opts.guided else None, final.cpu().tolist())

    def _conditioning(self, prompt: str, negative: str, n: int) -> dict:
        """The UNet's conditioning for n tiles of one prompt, laid out as the pipeline lays it out
        ([n negatives, n positives] under classifier-free guidance)."""
        torch, pipe = self.torch, self.pipe
        pe, npe, ppe, nppe = self.embeddings(prompt, negative)
        size = (self.geom.size, self.geom.size)
        proj = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                else int(ppe.shape[-1]))
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=pe.dtype, text_encoder_projection_dim=proj)
        embeds, text = pe.repeat(n, 1, 1), ppe.repeat(n, 1)
        if self.cfg:
            embeds = torch.cat([npe.repeat(n, 1, 1), embeds])
            text = torch.cat([nppe.repeat(n, 1), text])
        time_ids = time_ids.repeat(embeds.shape[0], 1)
        cond_t = None
        if pipe.unet.config.time_cond_proj_dim is not None:   # guidance-distilled UNets (LCM-SDXL)
            g = torch.tensor(self.cfg_scale - 1).repeat(n)
            cond_t = pipe.get_guidance_scale_embedding(g, embedding_dim=pipe.unet.config.time_cond_proj_dim)
            cond_t = cond_t.to(device=self.device, dtype=pe.dtype)
        return {"embeds": embeds.to(self.device), "text": text.to(self.device), "time_ids": time_ids.to(self.device),
                "timestep_cond": cond_t, "dtype": pe.dtype}

    def predict(self, latents, t, cond):
        """The (CFG-combined) model output at z = latents."""
        torch, pipe = self.torch, self.pipe
        inp = torch.cat([latents] * 2) if self.cfg else latents
        inp = pipe.scheduler.scale_model_input(inp, t)
        out = pipe.unet(inp, t, encoder_hidden_states=cond["embeds"], timestep_cond=cond["timestep_cond"],
                        added_cond_kwargs={"text_embeds": cond["text"], "time_ids": cond["time_ids"]},
                        return_dict=False)[0]
        if self.cfg:
            uncond, text = out.chunk(2)
            out = uncond + self.cfg_scale * (text - uncond)
        return out

    def _step_edit(self, latents, t, cond, mean, std, ref_b, w: float):
        """Model output, AdaIN and guidance at one step: (latents, model output for step(), losses)."""
        torch, o = self.torch, self.opts
        through_unet = o.grad_through_unet and w > 0 and self.decoder is not None
        if through_unet:
            return self._step_through_unet(latents, t, cond, mean, std, ref_b, w)
        out = self.predict(latents, t, cond)
        k = coeffs(self.pipe.scheduler, self.kind, t)
        dtype = latents.dtype
        # float64 for the algebra: with nothing edited, z and the model output come back to the
        # last bit, so the loop is the pipeline's own
        z_d = k.c * latents.to(self.exact)
        x0, eps = x0_eps(z_d, out.to(self.exact), k, self.prediction)
        x0, z_d = self._adain(x0, z_d, eps, k, mean, std)
        loss = None
        if w > 0 and self.decoder is not None:
            for it in range(o.guidance_iters):
                g, per_tile = G.guidance_grad(torch, self.decoder, z_d, eps, k, ref_b, self.geom.blur_sigma)
                if it == 0:
                    loss = per_tile.cpu().tolist()
                z_d = z_d - (w * self.grad_scale) * g
            x0 = (z_d - k.sigma * eps) / k.alpha
        return (z_d / k.c).to(dtype), model_output(x0, eps, k, self.prediction).to(out.dtype), loss

    def _adain(self, x0, z_d, eps, k, mean, std):
        o = self.opts
        if o.adain == "x0":
            x0 = G.adain(x0, mean, std, o.adain_std_weight)
            z_d = k.alpha * x0 + k.sigma * eps
        elif o.adain == "zt":
            m, s = G.noisy_stats(mean, std, k.alpha, k.sigma)
            z_d = G.adain(z_d, m, s, o.adain_std_weight)
            x0 = (z_d - k.sigma * eps) / k.alpha
        return x0, z_d

    def _step_through_unet(self, latents, t, cond, mean, std, ref_b, w: float):
        """As `_step_edit`, but ∇ℓ also flows through ε̂(z): one UNet forward and backward with
        the whole batch (memory grows with the batch and the UNet's activations)."""
        torch = self.torch
        dtype = latents.dtype
        with torch.enable_grad():
            z = latents.detach().float().requires_grad_(True)
            out = self.predict(z.to(dtype), t, cond)
            k = coeffs(self.pipe.scheduler, self.kind, t)   # after predict: Euler's step index is set
            x0, eps = x0_eps(k.c * z, out.float(), k, self.prediction)
            x0, z_d = self._adain(x0, k.c * z, eps, k, mean, std)
            per_tile = G.tile_losses(torch, self.decoder(x0), ref_b, self.geom.blur_sigma)
            (g,) = torch.autograd.grad(per_tile.sum(), z)
        eps, z_d = eps.detach(), z_d.detach()
        z_d = z_d - (w * self.grad_scale / k.c) * g     # ∇ with respect to z_d = c z is ∇_z / c
        x0 = (z_d - k.sigma * eps) / k.alpha
        return ((z_d / k.c).to(dtype), model_output(x0, eps, k, self.prediction).to(out.dtype),
                per_tile.detach().cpu().tolist())

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, latents) -> np.ndarray:
        """Final latents -> (B, H, W, 3) float32 in [0, 1], exactly as the pipeline decodes."""
        torch, vae = self.torch, self.pipe.vae
        with torch.no_grad():
            x = G.vae_latents_to_input(vae, latents.to(vae.dtype))
            image = vae.decode(x, return_dict=False)[0]
            return self.pipe.image_processor.postprocess(image, output_type="np").astype(np.float32)

    def encode_blocks(self, patches):
        """Reference patches (B, 3, b*8, b*8) in [0, 1] -> their latents (B, 4, b, b) in UNet space
        (the distribution's mode: deterministic)."""
        torch, vae = self.torch, self.pipe.vae
        with torch.no_grad():
            x = patches.to(self.device, vae.dtype) * 2.0 - 1.0
            lat = vae.encode(x).latent_dist.mode().float()
            cfg = vae.config
            if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
                m = lat.new_tensor(cfg.latents_mean).view(1, -1, 1, 1)
                s = lat.new_tensor(cfg.latents_std).view(1, -1, 1, 1)
                return (lat - m) * cfg.scaling_factor / s
            return lat * cfg.scaling_factor
