"""Feature kinds: how a tile and a target cell become the vector that matching compares.

Every kind is one function of an (N, S, S, 3) uint8 block of samples, used for tiles (their
S-px thumbnail) and target cells (the target area-resampled to S px per cell) alike, so the
same pixels always give the same vector. A database records its kind in the catalog
(`feature_kind`, `feature_params`); databases made before kinds existed are `lab-grid`.

- ``rgb-pyramid`` (the default): the cell's block means at 1x1, 2x2, 4x4 and 8x8 in sRGB, level
  p scaled by sqrt(w_p)/p, so that the squared distance between two vectors is
  3 * sum_p w_p * MSE_p, where MSE_p is the mean squared sRGB difference (0-255 levels) of the
  two blocks seen at p x p. The metrics a mosaic is judged by (PSNR/SSIM at 64 px, Gaussian-
  pyramid MSE) are MSEs of sRGB pixels at a few scales, so this cost measures what they measure.
  The index stores these 255 numbers reduced by a PCA fitted on the pool (see index/).
- ``lab-pyramid``: the same pyramid in CIE Lab (perceptual: distances in Lab units).
- ``lab-grid``: the original 51-d feature, Lab mean (weighted) + a g x g grid of Lab means.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UsageError, check_int, check_number, choice
from .features import block_means, feature_dim, lab_features, rgb_to_lab, samples_per_side
from .orient import block_permutation

# PCA output dims for the pyramid kinds, and the smallest pool it is fitted on (below it the
# index searches the full vectors, which is exact and cheap at that size).
PCA_DIMS = 48
PCA_MIN_TILES = 1024


@dataclass(frozen=True)
class LabGrid:
    """Lab mean * mean_weight * grid + a grid x grid grid of Lab means (51-d at grid 4)."""
    grid: int = 4
    mean_weight: float = 1.0
    kind = "lab-grid"
    pca_dims = 0

    @property
    def samples(self) -> int:
        return samples_per_side(self.grid)

    @property
    def dim(self) -> int:
        return feature_dim(self.grid)

    @property
    def cost_divisor(self) -> float:
        """Squared distance / this = mean squared difference per number (the historical RMS cost)."""
        return float(self.dim)

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        return lab_features(blocks, self.grid, self.mean_weight)

    def sub_columns(self, p: int = 2) -> slice | None:
        """The columns `sub_means` reads (the grid); None when p does not divide the grid."""
        return None if self.grid % p else slice(3, self.dim)

    def sub_means(self, vectors: np.ndarray, columns: bool = False, p: int = 2) -> np.ndarray | None:
        """The colours at p x p (N, p, p, 3) that `vectors` hold (their grid pooled), in Lab;
        None when p does not divide the grid. `columns`: `vectors` are only the `sub_columns(p)`."""
        cols = self.sub_columns(p)
        if cols is None:
            return None
        v = np.asarray(vectors, np.float32)
        g = self.grid
        v = (v if columns else v[:, cols]).reshape(-1, g, g, 3)
        return v.copy() if g == p else block_means(v, p)

    def orient_permutation(self, o: int) -> np.ndarray:
        """`perm` with features(turned by o) == features[:, perm]: the mean stays, the grid turns."""
        return np.concatenate([np.arange(3), 3 + block_permutation(self.grid, o)])

    def params(self) -> dict:
        return {"grid": self.grid, "mean_weight": self.mean_weight}


@dataclass(frozen=True)
class Pyramid:
    """Block means of the samples at each level p (p x p, p dividing `samples`), weighted."""
    space: str = "rgb"
    levels: tuple = ((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0))
    samples: int = 16
    pca_dims: int = PCA_DIMS

    @property
    def kind(self) -> str:
        return f"{self.space}-pyramid"

    @property
    def dim(self) -> int:
        return 3 * sum(p * p for p, _ in self.levels)

    @property
    def cost_divisor(self) -> float:
        """Squared distance / this = sum_p w_p MSE_p / sum_p w_p: a weighted mean squared
        difference, so sqrt of it is in the colour space's units (sRGB levels, or Lab)."""
        return 3.0 * sum(w for _, w in self.levels)

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        blocks = _check_blocks(blocks, self.samples)
        n = blocks.shape[0]
        # 2x2 means of 2x2 means: the sample sizes reached by halving, down to the smallest level
        sizes = [self.samples]
        while sizes[-1] % 2 == 0 and sizes[-1] > 1 and sizes[-1] // 2 >= min(p for p, _ in self.levels):
            sizes.append(sizes[-1] // 2)
        x = blocks if self.space == "rgb" else rgb_to_lab(blocks)
        out = np.empty((n, self.dim), np.float32)
        if all(p in sizes for p, _ in self.levels):  # every level a halving of the samples: one pass a cell
            ps = np.array([p for p, _ in self.levels], np.int64)
            scales = np.array([np.float32(np.sqrt(w) / p) for p, w in self.levels], np.float32)
            _pyramid_kernel()(x, ps, scales, sizes[-1], out)
            return out
        x = x.astype(np.float32, copy=False)
        halves = {sizes[0]: x}
        for size in sizes[1:]:
            x = (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * np.float32(0.25)
            halves[size] = x
        at = 0
        for p, w in self.levels:
            if p in halves:
                means = halves[p]
            else:
                means = block_means(halves[self.samples], p)
            out[:, at:at + 3 * p * p] = means.reshape(n, -1) * np.float32(np.sqrt(w) / p)
            at += 3 * p * p
        return out

    def _sub_level(self, p: int):
        """(level, w, first column) of the level `sub_means` reads: the coarsest one that p
        divides (p itself when there is one)."""
        at, found = 0, None
        for q, w in self.levels:
            if q % p == 0 and w > 0 and (found is None or q < found[0]):
                found = (q, w, at)
            at += 3 * q * q
        return found

    def sub_columns(self, p: int = 2) -> slice | None:
        """The columns `sub_means` reads (one level); None when no level is a multiple of p."""
        found = self._sub_level(p)
        return None if found is None else slice(found[2], found[2] + 3 * found[0] ** 2)

    def sub_means(self, vectors: np.ndarray, columns: bool = False, p: int = 2) -> np.ndarray | None:
        """The colours at p x p (N, p, p, 3) that `vectors` hold, in the kind's colour space: the
        p x p level, else the coarsest level p divides, pooled; None when there is none.
        `columns`: `vectors` are only the `sub_columns(p)` of them."""
        found = self._sub_level(p)
        if found is None:
            return None
        q, w, at = found
        v = np.asarray(vectors, np.float32)
        v = (v if columns else v[:, at:at + 3 * q * q]).reshape(-1, q, q, 3) * np.float32(q / np.sqrt(w))
        return v if q == p else block_means(v, p)  # (a mean of one is a copy: 300,000 rows took 0.16 s)

    def orient_permutation(self, o: int) -> np.ndarray:
        """`perm` with features(turned by o) == features[:, perm]: every level's p x p blocks turn
        with the pixels (the 1 x 1 mean stays)."""
        parts, at = [], 0
        for p, _ in self.levels:
            parts.append(at + block_permutation(p, o))
            at += 3 * p * p
        return np.concatenate(parts)

    def params(self) -> dict:
        return {"space": self.space, "levels": [list(lv) for lv in self.levels], "samples": self.samples,
                "pca_dims": self.pca_dims}


FeatureSpec = LabGrid | Pyramid

KINDS = {
    "rgb-pyramid": Pyramid("rgb"),
    "lab-pyramid": Pyramid("lab"),
    "lab-grid": LabGrid(),
}
DEFAULT_KIND = "rgb-pyramid"
# the names reindex gives (a catalog is untrusted input: its file names stay in the folder)
_FEATURES_FILE = re.compile(r"features(\.[a-z]+-[a-z]+\.[0-9]{1,9})?\.f32")


# The pyramid of each cell in one pass over its samples, without an (N, S, S, 3) float copy and
# a temporary per level: the same float32 operations in the same order as the numpy form below
# it (2x2 means as ((a + b) + c) + d times 0.25, then times sqrt(w)/p), so the same bits.
# bench_match's 65,536 cells in one call, one thread: 0.046 against 0.18-0.32 s.
@functools.cache
def _pyramid_kernel():
    """Compiled on first use: numba stays out of processes that only render (test_render_cells)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def _pyramid_cells(blocks, ps, scales, smallest, out):
        n, s = blocks.shape[0], blocks.shape[1]
        offsets = np.empty(len(ps), np.int64)
        at = 0
        for li in range(len(ps)):
            offsets[li] = at
            at += 3 * ps[li] * ps[li]
        x = np.empty((s, s, 3), np.float32)
        for i in range(n):
            for a in range(s):
                for b in range(s):
                    for ch in range(3):
                        x[a, b, ch] = np.float32(blocks[i, a, b, ch])
            size = s
            while True:
                for li in range(len(ps)):
                    if ps[li] == size:
                        o = offsets[li]
                        for a in range(size):
                            for b in range(size):
                                for ch in range(3):
                                    out[i, o] = x[a, b, ch] * scales[li]
                                    o += 1
                if size <= smallest:
                    break
                h = size // 2
                for a in range(h):  # in place: (a, b) is read again only by an earlier (a // 2, b // 2)
                    for b in range(h):
                        for ch in range(3):
                            x[a, b, ch] = (((x[2 * a, 2 * b, ch] + x[2 * a + 1, 2 * b, ch]) + x[2 * a, 2 * b + 1, ch])
                                           + x[2 * a + 1, 2 * b + 1, ch]) * np.float32(0.25)
                size = h

    return _pyramid_cells


def _check_blocks(blocks, s: int) -> np.ndarray:
    blocks = np.asarray(blocks)
    if blocks.dtype != np.uint8 or blocks.ndim != 4 or blocks.shape[1:] != (s, s, 3):
        raise ValueError(f"features need uint8 (N, {s}, {s}, 3) blocks, got {blocks.dtype} {blocks.shape}")
    return blocks


def spec_for(kind: str, grid: int | None = None, mean_weight: float | None = None) -> FeatureSpec:
    """The spec of a kind named on the command line (grid/mean weight apply to lab-grid only)."""
    spec = choice("feature kind", kind, KINDS)
    if isinstance(spec, LabGrid):
        spec = LabGrid(spec.grid if grid is None else check_int("--feature-grid", grid, 1, 16),
                       spec.mean_weight if mean_weight is None else
                       check_number("--mean-weight", mean_weight, 0.0, 1000.0))
    elif grid is not None or mean_weight is not None:
        raise UsageError(f"--feature-grid and --mean-weight apply to --features lab-grid, not {kind}")
    return spec


def to_meta(spec: FeatureSpec) -> dict:
    """Catalog settings of a spec (lab-grid keeps its historical keys, which old code reads)."""
    meta = {"feature_kind": spec.kind, "feature_params": spec.params()}
    if isinstance(spec, LabGrid):
        meta.update(feature_grid=spec.grid, mean_weight=spec.mean_weight)
    return meta


def from_meta(meta: dict) -> FeatureSpec:
    """The spec a database was built with; no `feature_kind` means a database from before kinds.
    A catalog is untrusted: anything out of range is a ValueError (the caller names the file)."""
    kind = meta.get("feature_kind", "lab-grid")
    if kind == "lab-grid":
        grid, weight = check_int("feature_grid", meta["feature_grid"], 1, 16), meta["mean_weight"]
        return LabGrid(grid, check_number("mean_weight", weight, 0.0, 1000.0))
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r} (made by a newer mosaicdb?)")
    p = meta["feature_params"]
    # check_* before any int(): int() of "16" or 16.7 would pass, of Infinity raise OverflowError
    levels = tuple((check_int("levels", a, 1, 64), check_number("level weight", b, 0.0, 1000.0))
                   for a, b in p["levels"])
    s = check_int("samples", p["samples"], 1, 64)
    if not levels or len(levels) > 8 or p["space"] not in ("rgb", "lab") or any(s % a for a, _ in levels):
        raise ValueError(f"bad feature_params {p}")
    spec = Pyramid(str(p["space"]), levels, s, check_int("pca_dims", p["pca_dims"], 0, 4096))
    if f"{spec.kind}" != kind:
        raise ValueError(f"feature_kind {kind!r} does not match its params")
    return spec


def signature(spec: FeatureSpec) -> str:
    """Identifies what the stored vectors mean: an index built on another signature is rebuilt."""
    return json.dumps({"kind": spec.kind, **spec.params()}, sort_keys=True)


def describe(spec: FeatureSpec) -> dict:
    return {"kind": spec.kind, "dim": spec.dim, **asdict(spec)}


def features_file(meta: dict) -> str:
    """The feature array's file name in the database folder (`mosaic db reindex` writes a new
    one and switches the catalog to it in one commit)."""
    name = meta.get("features_file", "features.f32")
    if not isinstance(name, str) or not _FEATURES_FILE.fullmatch(name):
        raise ValueError(f"features_file {name!r} is not a features file name")
    return name


def index_pca_dims(spec: FeatureSpec, n_tiles: int) -> int:
    """Dims of the PCA an index over `n_tiles` of these features applies (0: none)."""
    if spec.pca_dims and spec.pca_dims < spec.dim and n_tiles >= PCA_MIN_TILES:
        return int(spec.pca_dims)
    return 0


def index_outdated(infos: dict, spec: FeatureSpec, n_tiles: int) -> bool:
    """Whether an index (its infos) must be rebuilt rather than updated in place for a pool of
    `n_tiles` with these features: other features, or a PCA fitted on a pool half or twice
    the size of today's (a PCA basis is refitted only by a rebuild)."""
    if infos.get("dim") != spec.dim:
        return True
    sig = infos.get("features")
    if sig is None:  # built before feature kinds: 51-d-style lab-grid vectors
        if spec.kind != "lab-grid":
            return True
    elif sig != signature(spec):
        return True
    # an index kind may reduce further than the features ask (ivf16): it records what they asked
    has = int(infos.get("features_pca_dims", infos.get("pca_dims", 0)))
    want = index_pca_dims(spec, n_tiles)
    if has != want:
        return True
    built = max(int(infos.get("ntotal_at_build", n_tiles)), 1)
    return bool(has) and not 0.5 <= n_tiles / built <= 2.0
