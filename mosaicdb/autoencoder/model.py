"""The network: a small convolutional autoencoder in colour with a bounded code.

Encoder: stride-2 4x4 convolutions (LeakyReLU) from `size` px down to 4x4, then a linear map to
`latent` values and a sigmoid, so every code lies in (0, 1)^latent. Decoder: the mirror image
(linear to 4x4, stride-2 transposed convolutions) ending in a sigmoid, so tiles lie in (0, 1).
Training adds Gaussian noise to the code (a regulariser: nearby codes must decode to similar
tiles, which is what the per-cell refinement relies on). torch is imported only here, and this
module only from the functions that need it.
"""
from __future__ import annotations

from ..generate import deps
from .options import BOTTOM, Arch

SLOPE = 0.2


def build(arch: Arch):
    """A new network for `arch` (torch's default initialisation from the current seed)."""
    torch = deps.torch()
    nn = torch.nn
    ch = arch.channels
    enc, c_in = [], 3
    for c in ch:
        enc += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(SLOPE)]
        c_in = c
    enc += [nn.Flatten(), nn.Linear(ch[-1] * BOTTOM * BOTTOM, arch.latent)]
    dec = [nn.Linear(arch.latent, ch[-1] * BOTTOM * BOTTOM), nn.Unflatten(1, (ch[-1], BOTTOM, BOTTOM))]
    outs = list(reversed(ch[:-1])) + [3]
    for c_in, c in zip(reversed(ch), outs):
        dec += [nn.LeakyReLU(SLOPE), nn.ConvTranspose2d(c_in, c, 4, 2, 1)]
    dec.append(nn.Sigmoid())
    return nn.ModuleDict({"encoder": nn.Sequential(*enc), "decoder": nn.Sequential(*dec)})


def encode(net, x):
    """(n, 3, s, s) in [0, 1] -> codes (n, latent) in (0, 1)."""
    return net["encoder"](x).sigmoid()


def decode(net, z):
    """Codes (n, latent) -> tiles (n, 3, s, s) in (0, 1). The feature maps are channels-last:
    oneDNN's transposed convolutions run 1.5-2.5x faster that way on a CPU (measured here)."""
    torch = deps.torch()
    layers = list(net["decoder"])
    h = layers[1](layers[0](z)).contiguous(memory_format=torch.channels_last)
    for layer in layers[2:]:
        h = layer(h)
    return h


def expected_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a network of `arch`: what a model file must hold, exactly."""
    return {k: tuple(v.shape) for k, v in build(arch).state_dict().items()}


def to_images(t):
    """(n, 3, s, s) floats in [0, 1] -> (n, s, s, 3) uint8, rounded."""
    return (t.clamp(0, 1) * 255).round().to(dtype=deps.torch().uint8).permute(0, 2, 3, 1).contiguous().numpy()


def from_images(a):
    """(n, s, s, 3) uint8 -> (n, 3, s, s) float32 in [0, 1], channels-last in memory like the
    decoder's output (no layout conversions between them)."""
    torch = deps.torch()
    return torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255.0)
