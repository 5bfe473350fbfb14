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


# Tap of a 4x4 stride-2 transposed convolution (padding 1) that feeds output phase a (0: even
# rows or columns, 1: odd ones) from input offset i - 1 of a 3x3 window; None: no tap.
_PHASE_TAPS = ((3, 1, None), (None, 2, 0))


def subpixel_weight(w):
    """ConvTranspose2d(kernel 4, stride 2, padding 1) weights (C_in, C_out, 4, 4) -> Conv2d
    (padding 1) weights (4 C_out, C_in, 3, 3) whose `pixel_shuffle(2)` is the same transposed
    convolution: each output phase is a 2x2 window of the input, all four fit in one 3x3."""
    cin, cout = w.shape[:2]
    k = w.new_zeros(cout, 2, 2, cin, 3, 3)
    for a in range(2):
        for b in range(2):
            for i in range(3):
                for j in range(3):
                    ta, tb = _PHASE_TAPS[a][i], _PHASE_TAPS[b][j]
                    if ta is not None and tb is not None:
                        k[:, a, b, :, i, j] = w[:, :, ta, tb].T
    return k.reshape(cout * 4, cin, 3, 3).contiguous()


class InferenceDecoder:
    """`decode` without gradients, for a frozen network: each transposed convolution runs as
    one 3x3 convolution to four output phases and a pixel shuffle. The same products summed in
    another order (6e-8 from `decode` at the default size); oneDNN's forward convolution is
    faster than its transposed one (measured here, one thread: 17.7 against 30 ms CPU per 512
    codes at the default size). With gradients `decode` stays: its backward pass is cheaper."""

    def __init__(self, net):
        torch = deps.torch()
        with torch.no_grad():
            self.ops = []
            for layer in net["decoder"]:
                if isinstance(layer, torch.nn.ConvTranspose2d):
                    self.ops.append(("shuffle", subpixel_weight(layer.weight.detach()),
                                     layer.bias.detach().repeat_interleave(4)))
                else:
                    self.ops.append(("layer", layer, None))

    def __call__(self, z):
        torch = deps.torch()
        F = torch.nn.functional
        with torch.inference_mode():
            h = self.ops[1][1](self.ops[0][1](z)).contiguous(memory_format=torch.channels_last)
            for kind, a, b in self.ops[2:]:
                h = F.pixel_shuffle(F.conv2d(h, a, b, padding=1), 2) if kind == "shuffle" else a(h)
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
