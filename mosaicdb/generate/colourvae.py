"""A tiny SDXL-shaped VAE (diffusers `AutoencoderKL`) whose weights are set, not trained, so that
it is an exact colour codec: the latent of an 8 x 8 pixel patch is a fixed linear map of its mean
colour, and decoding paints each latent pixel's colour back over 8 x 8 pixels.

Why: the tiny pipeline's random VAE cannot show anything a latent asks for. Its GroupNorms have
one channel per group, which removes every channel's spatial mean, so a tile's colour is the
same whatever its latent (measured: no gradient step gets a flat green patch below an MSE of
0.14). Guidance and AdaIN act through the VAE, so testing what they do to a mosaic needs a
decoder that can reach a colour; training one on a CPU took minutes and still lost the hue.

How, in the real architecture (every module of an SDXL VAE is present and runs):
- every ResNet and attention branch is zeroed, so each block is its residual identity;
  downsamplers average 2 x 2, upsamplers copy (nearest) with an identity convolution;
- the one GroupNorm that is not inside a zeroed branch (`conv_norm_out`, on each side) would
  erase a plain colour channel, so each colour value u rides in a group of four channels
  (K + u, -K - u, K - u, -K + u): their mean is 0 and their variance K² + E[u²], so the norm
  divides by ~K and keeps u (second-order error E[u²]/2K², ~1e-5 here), the affine part
  scales back and adds an offset that keeps SiLU in its linear range, and `conv_out` averages
  the two channels whose residual errors cancel.
It is a toy: tiles it decodes are 8 x 8 px colour blocks; no texture, nothing like SDXL's VAE.
"""
from __future__ import annotations

from . import deps

CONFIG = {"block_out_channels": (12, 12, 12, 12), "latent_channels": 4, "norm_num_groups": 3,
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "scaling_factor": 1.0, "force_upcast": False}
ANCHOR = 256.0     # K
OFFSET = 16.0      # SiLU(x) = x to 1e-6 relative for x >= 16 - |u|
SIGNS = ((1, 1), (-1, -1), (1, -1), (-1, 1))   # (anchor sign, signal sign) of a group's four channels
# latent = 2 Q u for the colour u in [-1, 1]^3, Q three orthonormal (Hadamard) columns: unit-scale
# latents for photographs; the fourth Hadamard direction is the decoder's blind spot
Q = ((0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.5, 0.5, -0.5), (0.5, -0.5, -0.5))


def build_colour_vae(sample_size: int = 64):
    """The AutoencoderKL with its weights set as described above."""
    torch = deps.torch()
    D = deps.diffusers()
    vae = D.AutoencoderKL(sample_size=sample_size, **CONFIG)
    q = torch.tensor(Q, dtype=torch.float32)               # (4 latent, 3 colour)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for side in (vae.encoder, vae.decoder):
            _identity_blocks(torch, side)
        enc, dec = vae.encoder, vae.decoder
        _carry(enc.conv_in.weight, enc.conv_in.bias, torch.eye(3), torch.zeros(3))   # rgb -> groups
        _carry(dec.conv_in.weight, dec.conv_in.bias, q.T / 2.0, torch.zeros(3))       # latent -> groups
        for norm in (enc.conv_norm_out, dec.conv_norm_out):
            for ch in range(12):
                a = SIGNS[ch % 4][0]
                norm.weight[ch] = ANCHOR
                norm.bias[ch] = -a * ANCHOR + OFFSET
        _read(enc.conv_out.weight, enc.conv_out.bias, 2.0 * q)        # groups -> latent mean
        enc.conv_out.bias[4:] = -20.0                                  # log variance: a point posterior
        _read(dec.conv_out.weight, dec.conv_out.bias, torch.eye(3))    # groups -> rgb in [-1, 1]
        for conv in (vae.quant_conv, vae.post_quant_conv):
            n = conv.weight.shape[0]
            conv.weight[:, :, 0, 0] = torch.eye(n)
    return vae


def _identity_blocks(torch, side) -> None:
    blocks = list(getattr(side, "down_blocks", [])) + list(getattr(side, "up_blocks", [])) + [side.mid_block]
    for block in blocks:
        for res in block.resnets:
            res.conv2.weight.zero_()
            res.conv2.bias.zero_()
        for att in getattr(block, "attentions", None) or []:
            att.to_out[0].weight.zero_()
            att.to_out[0].bias.zero_()
        for down in getattr(block, "downsamplers", None) or []:
            for c in range(down.conv.weight.shape[0]):
                down.conv.weight[c, c, 0:2, 0:2] = 0.25    # 2x2 average (the input is padded right/bottom)
        for up in getattr(block, "upsamplers", None) or []:
            for c in range(up.conv.weight.shape[0]):
                up.conv.weight[c, c, 1, 1] = 1.0


def _carry(weight, bias, m, c) -> None:
    """A 3x3 conv (centre tap) writing u = m x + c into the four channels of each group."""
    for j in range(3):
        for k, (a, s) in enumerate(SIGNS):
            ch = 4 * j + k
            weight[ch, :, 1, 1] = s * m[j]
            bias[ch] = a * ANCHOR + s * c[j]


def _read(weight, bias, m) -> None:
    """A 3x3 conv (centre tap) computing m u from the normalised groups, each u read from the
    two channels (K + u and -K + u) whose anchor errors cancel."""
    for j in range(3):
        for k in (0, 3):
            weight[:m.shape[0], 4 * j + k, 1, 1] = m[:, j] / 2.0
    bias[:m.shape[0]] = -OFFSET * m.sum(dim=1)
