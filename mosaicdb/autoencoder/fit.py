"""Fitting a code to every cell: encoder -> atlas -> Adam on logit(code) -> colour fit.

Per cell (all in batches, on the model's size x size pixels, values 0-1):

1. **Encoder**: code = E(cell), tile = D(code).
2. **Atlas**: the model's atlas codes are decoded once (full size, and box-averaged to
   `atlas_px`). Each cell's nearest atlas tile at `atlas_px` (exact search over the whole atlas:
   one matrix product; with `shortlist` > 1 the best of that many at full size) is scored
   exactly beside the encoder's tile and the better one is the first guess, so it is never
   worse than the encoder alone.
3. **Refinement**: `steps` Adam steps on logit(code) (codes stay inside (0, 1)) minimising the
   cell's error before clipping, with its gradient written out (`residual`) rather than traced
   through the fit; every evaluated code is scored and the best kept, and it replaces the
   first guess only where its stored tile is closer, so refinement never increases a cell's
   error.
4. **Colour fit** (on by default): per cell and channel the least-squares a + b * tile with
   0 <= b <= MAX_GAIN, clipped to 0-1. The error that steps 2-3 minimise is the error after this
   fit, so codes are chosen for structure and the fit supplies the colour. Without it the error
   is the plain MSE.

The error of a cell is always the MSE (0-1 scale) of the tile as it will be stored, before
rounding to 8 bits.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..generate import deps
from . import model as M
from .files import Model
from .options import AutoOptions

MAX_GAIN = 4.0
CODE_EPS = 1e-6        # codes are kept in [CODE_EPS, 1 - CODE_EPS]: strictly inside, logit finite
SOURCES = ("encoder", "atlas")


@dataclass
class FitResult:
    """Per cell, row for row with the cells given to `Fitter.fit`."""
    codes: np.ndarray                 # (n, latent) float32 final codes
    tiles: np.ndarray                 # (n, s, s, 3) uint8 final tiles
    gain: np.ndarray                  # (n, 3) b of the colour fit (ones without it)
    offset: np.ndarray                # (n, 3) a of the colour fit (0-1 scale; zeros without it)
    errors: dict                      # stage -> (n,) float32 MSE: encoder, first, final
    first_source: np.ndarray          # (n,) index into SOURCES of the first guess
    seconds: dict = field(default_factory=dict)   # per stage, summed over worker threads


class Cells:
    """A batch of cells (n, 3, s, s) in 0-1 with the per-channel statistics every fit reuses."""

    def __init__(self, x):
        self.x = x
        self.mean = x.mean(dim=(2, 3), keepdim=True)
        self.centred = x - self.mean
        self.var = self.centred.square().mean(dim=(2, 3), keepdim=True)


def colour_fit(y, cells: Cells):
    """Least squares of the cell on the tile y per cell and channel, as
    (b, mean_y, y - mean_y, var_y, cov): the fitted tile is mean_x + b (y - mean_y) with
    0 <= b <= MAX_GAIN."""
    torch = deps.torch()
    my = y.mean(dim=(2, 3), keepdim=True)
    dy = y - my
    var = dy.square().mean(dim=(2, 3), keepdim=True)
    cov = (dy * cells.centred).mean(dim=(2, 3), keepdim=True)
    # a flat tile (var 0) gets b = 0: the cell's mean colour, the least-squares answer
    b = torch.where(var > 1e-12, cov / var.clamp_min(1e-12), torch.zeros_like(var)).clamp(0.0, MAX_GAIN)
    return b, my, dy, var, cov


def fitted_tiles(y, cells: Cells, fit: bool):
    """The tiles as stored: colour-fitted (if on) and clipped to 0-1."""
    if not fit:
        return y
    b, _, dy, _, _ = colour_fit(y, cells)
    return (cells.mean + b * dy).clamp(0.0, 1.0)


def errors(y, cells: Cells, fit: bool):
    """(n,) MSE of each cell's stored tile against the cell."""
    return (fitted_tiles(y, cells, fit) - cells.x).square().mean(dim=(1, 2, 3))


def residual(y, cells: Cells, fit: bool):
    """(r, b): the fitted tile before clipping is cells.x + r, and its error is mean(r^2). The
    gradient of that error with respect to y is 2 b r / (3 s^2) per cell: at the least-squares
    b the error does not move with b to first order (the envelope theorem; at a bound of b the
    same holds on the feasible side), and r has zero mean per channel, so centring y adds
    nothing. Without the fit, r = y - x and b = 1."""
    if not fit:
        return y - cells.x, 1.0
    b, _, dy, _, _ = colour_fit(y, cells)
    return b * dy - cells.centred, b


def cell_errors(y, x, fit: bool):
    """(n,) MSE of the stored tiles made from decoder outputs y against cells x (n, 3, s, s)."""
    return errors(y, Cells(x), fit)


def gain_offset(y, cells: Cells, fit: bool):
    """(b, a) per cell and channel, each (n, 3): the stored tile is clip(a + b * y)."""
    torch = deps.torch()
    if not fit:
        return torch.ones(len(y), 3), torch.zeros(len(y), 3)
    b, my, _, _, _ = colour_fit(y, cells)
    return b.reshape(-1, 3), (cells.mean - b * my).reshape(-1, 3)


def apply_gain_offset(y, b, a):
    """clip(a + b * y) with (n, 3) gains and offsets."""
    return (a.reshape(-1, 3, 1, 1) + b.reshape(-1, 3, 1, 1) * y).clamp(0.0, 1.0)


class Fitter:
    """Fits codes to cells for one model; the decoded atlas is computed once here."""

    def __init__(self, model: Model, opts: AutoOptions):
        opts.validate()
        self.model, self.opts = model, opts
        torch = deps.torch()
        self.size = model.arch.size
        self.q = min(opts.atlas_px, self.size)
        self.decode = M.InferenceDecoder(model.net)    # every decode without gradients
        self.use_atlas = opts.shortlist > 0 and len(model.atlas) > 0
        if self.use_atlas:
            with torch.inference_mode():
                full = torch.cat([self.decode(model.atlas[i:i + 1024]) for i in range(0, len(model.atlas), 1024)])
            self.atlas_full = full
            self.atlas_flat = flat = full.reshape(len(full), 3, -1).contiguous()   # (K, 3, s^2)
            self.atlas_mean = flat.mean(2)                          # (K, 3)
            self.atlas_sq = flat.square().mean(2)                   # (K, 3) E[y^2]
            low = self._low(full)
            self.atlas_low, self.atlas_low_sq = low, low.square().sum(1)

    def _low(self, x):
        """(n, 3, s, s) -> (n, 3 q^2) box averages; centred per channel when colour is fitted
        (the fit removes each tile's mean, so only the structure should pick the shortlist)."""
        torch = deps.torch()
        f = self.size // self.q
        low = torch.nn.functional.avg_pool2d(x, f) if f > 1 else x
        if self.opts.color_fit:
            low = low - low.mean(dim=(2, 3), keepdim=True)
        return low.reshape(len(x), -1)

    def fit(self, cells: np.ndarray) -> FitResult:
        """cells: (n, s, s, 3) uint8, the target resampled to the model's size per cell."""
        torch = deps.torch()
        if cells.ndim != 4 or cells.shape[1:] != (self.size, self.size, 3) or cells.dtype != np.uint8:
            raise ValueError(f"cells must be uint8 (n, {self.size}, {self.size}, 3), got {cells.dtype} {cells.shape}")
        n, lat = len(cells), self.model.arch.latent
        res = FitResult(np.empty((n, lat), np.float32), np.empty_like(cells), np.empty((n, 3), np.float32),
                        np.empty((n, 3), np.float32), {k: np.empty(n, np.float32) for k in ("encoder", "first", "final")},
                        np.empty(n, np.int8))
        starts = range(0, n, self.opts.batch)
        secs = [dict.fromkeys(("encode", "atlas", "refine", "colour"), 0.0) for _ in starts]

        def one(j: int) -> None:
            i = starts[j]
            self._fit_batch(cells[i:i + self.opts.batch], res, slice(i, i + self.opts.batch), secs[j])

        # Batches side by side on worker threads, each op on one thread: the ops are small, and
        # OpenMP's barriers inside every op cost 3-4x when another job shares the cores
        # (measured here); independent batches need none. The result does not depend on how
        # many threads run: every batch is computed alone, the same way.
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            workers = min(self.opts.resolved_threads(), len(starts))
            if workers <= 1:
                for j in range(len(starts)):
                    one(j)
            else:
                with ThreadPoolExecutor(workers) as ex:
                    list(ex.map(one, range(len(starts))))
        finally:
            torch.set_num_threads(old)
        res.seconds = {k: round(sum(s[k] for s in secs), 4) for k in secs[0]} if secs else {}
        return res

    def _fit_batch(self, px: np.ndarray, res: FitResult, sl: slice, secs: dict) -> None:
        torch = deps.torch()
        net, fit = self.model.net, self.opts.color_fit
        cells = Cells(M.from_images(px))
        t0 = time.perf_counter()
        with torch.inference_mode():
            code = M.encode(net, cells.x).clamp(CODE_EPS, 1 - CODE_EPS)
            y = self.decode(code)
            err = errors(y, cells, fit)
        res.errors["encoder"][sl] = err.numpy()
        source = torch.zeros(len(px), dtype=torch.int8)
        t1 = time.perf_counter()
        if self.use_atlas:
            code, y, err, source = self._atlas_guess(cells, code, y, err, source)
        res.errors["first"][sl] = err.numpy()
        res.first_source[sl] = source.numpy()
        t2 = time.perf_counter()
        if self.opts.steps:
            code, y, err = self._refine(cells, code.clone(), y.clone(), err.clone())
        t3 = time.perf_counter()
        with torch.inference_mode():
            b, a = gain_offset(y, cells, fit)
            tile = apply_gain_offset(y, b, a)
        res.errors["final"][sl] = err.numpy()
        res.codes[sl] = code.numpy()
        res.tiles[sl] = M.to_images(tile)
        res.gain[sl], res.offset[sl] = b.numpy(), a.numpy()
        t4 = time.perf_counter()
        for k, v in zip(secs, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            secs[k] += v

    def _atlas_guess(self, cells: Cells, code, y, err, source):
        """Each cell's nearest atlas tiles at atlas_px (exact search: one matrix product); with a
        shortlist of several, ranked by their full-size error before clipping (per-channel
        moments and one dot product per channel). The best is scored exactly and replaces the
        encoder's tile where it is closer, so the first guess is never worse than the encoder."""
        torch = deps.torch()
        m = min(self.opts.shortlist, len(self.atlas_low))
        x = cells.x
        with torch.inference_mode():
            low = self._low(x)
            d = low.square().sum(1, keepdim=True) - 2 * low @ self.atlas_low.T + self.atlas_low_sq
            idx = d.topk(m, dim=1, largest=False).indices                     # (n, m)
            if m > 1:
                pick = idx.gather(1, self._rank_full(cells, idx).argmin(1, keepdim=True))[:, 0]
            else:
                pick = idx[:, 0]
            cy = self.atlas_full[pick]
            ce = errors(cy, cells, self.opts.color_fit)
            better = ce < err
            code = torch.where(better[:, None], self.model.atlas[pick], code)
            y = torch.where(better[:, None, None, None], cy, y)
            err = torch.where(better, ce, err)
            source = torch.where(better, torch.ones_like(source), source)
        return code, y, err, source

    def _rank_full(self, cells: Cells, idx):
        """(n, m) full-size errors before clipping of the shortlisted atlas tiles."""
        torch = deps.torch()
        xf = cells.x.reshape(len(idx), 3, -1)
        cand = self.atlas_flat[idx]                                            # (n, m, 3, P)
        exy = torch.einsum("ncp,nmcp->nmc", xf, cand) / xf.shape[2]
        ex, ex2 = xf.mean(2)[:, None], xf.square().mean(2)[:, None]          # (n, 1, 3)
        ey, ey2 = self.atlas_mean[idx], self.atlas_sq[idx]                    # (n, m, 3)
        if not self.opts.color_fit:
            return (ex2 - 2 * exy + ey2).mean(2)
        vx, vy, cov = ex2 - ex * ex, (ey2 - ey * ey).clamp_min(0), exy - ex * ey
        b = torch.where(vy > 1e-12, cov / vy.clamp_min(1e-12), torch.zeros_like(vy)).clamp(0, MAX_GAIN)
        return (vx - 2 * b * cov + b * b * vy).mean(2)

    def _refine(self, cells: Cells, code, y, err):
        """Adam on logit(code). Each step keeps, per cell, the code with the lowest error before
        clipping (a by-product of the gradient); at the end the kept code replaces the first
        guess only where its stored tile (clipped) is closer, so no cell's error increases."""
        torch = deps.torch()
        net, fit = self.model.net, self.opts.color_fit
        bound = float(torch.logit(torch.tensor(1 - CODE_EPS)))
        scale = 2.0 / (3 * self.size * self.size)
        z = torch.logit(code).requires_grad_(True)
        adam = torch.optim.Adam([z], lr=self.opts.lr)
        best = torch.full_like(err, float("inf"))
        kept_code, kept_y = code, y
        for k in range(self.opts.steps + 1):
            last = k == self.opts.steps
            if last:
                c = z.detach().sigmoid()
                out = self.decode(c)
            else:
                c = z.sigmoid()
                out = M.decode(net, c)
            with torch.no_grad():
                r, b = residual(out.detach(), cells, fit)
                e = r.square().mean(dim=(1, 2, 3))
                better = e < best
                best = torch.where(better, e, best)
                kept_code = torch.where(better[:, None], c.detach(), kept_code)
                kept_y = torch.where(better[:, None, None, None], out.detach(), kept_y)
            if last:
                break
            # each cell's error depends on its own code only: the gradients stay per cell
            adam.zero_grad(set_to_none=True)
            out.backward(r.mul_(b).mul_(scale))
            adam.step()
            with torch.no_grad():
                z.clamp_(-bound, bound)
        with torch.no_grad():
            e = errors(kept_y, cells, fit)
            better = e < err
            return (torch.where(better[:, None], kept_code, code), torch.where(better[:, None, None, None], kept_y, y),
                    torch.where(better, e, err))


def decode_tiles(model: Model, codes: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Tiles from codes and colour-fit parameters (as recorded in a tile's provenance)."""
    torch = deps.torch()
    with torch.inference_mode():
        y = M.InferenceDecoder(model.net)(torch.from_numpy(np.asarray(codes, np.float32)))
        return M.to_images(apply_gain_offset(y, torch.from_numpy(np.asarray(gain, np.float32)),
                                             torch.from_numpy(np.asarray(offset, np.float32))))
