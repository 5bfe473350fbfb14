"""Matching options: one frozen dataclass, validated when it is made (before any target is
decoded), passed down whole from the CLI to the assignment kernel, and saved with the result."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..errors import EmptyDatabase, PoolTooSmall, UsageError, check_int, check_number, choice
from ..orient import DEFAULT_ORIENT, codes
from .grid import parse_grid

DEFAULT_GRID = "64"
DEFAULT_MIN_DISTANCE = 2
MAX_K = 4096
DEVICES = {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}
ORDERS = {"regret": "regret", "random": "random"}
# The dithering weight when none is given (greedy modes without turns), and the most it may be:
# the weight of the mosaic seen whole against the mosaic seen close (match/dither.py); beyond
# 100 the close view hardly counts. The choice of 0.3 is measured (bench_quality, README
# "Dithering").
DEFAULT_DITHER = 0.3
MAX_DITHER = 100.0


@dataclass(frozen=True, kw_only=True)
class MatchOptions:
    """How cells get tiles.

    grid: cells across the long side ("128") or COLSxROWS ("128x96"); None: 64, or what
        --print-size implies.
    k: nearest tiles considered per cell (widened when all are excluded).
    min_distance: the same tile never twice within this Chebyshev distance; None: 2 (0 with
        `unique`), lowered for pools too small for it.
    max_uses: no tile used more than this many times (0: no cap).
    usage_penalty: cost added per earlier use of a tile.
    unique: each tile at most once (global min-cost matching).
    seed: same seed, same mosaic.
    device: where FAISS searches ("auto", "cpu", "cuda").
    order: greedy visiting order: "regret" (cells with most to lose first) or "random".
    refine_passes: local-improvement sweeps after the greedy pass (0: none).
    refine_seconds: ... and no new chunk of cells after this long (a time-limited result can
        depend on the machine; a pass-limited one never does).
    orient: which turns of a tile a cell may take: "none" (as stored), "mirror" (or its
        left-right mirror image), "all" (the 8 flips and quarter turns); see mosaicdb.orient.
    dither: weight of the dithering pass after refinement (0: off): tiles chosen so that the
        mosaic seen close (the target-sized mosaic at half size) and seen whole (at 64 px) match
        the target, this the weight of the second; see match/dither.py.
        None: DEFAULT_DITHER, or 0 with `unique` or turns (resolved()).
    """
    grid: str | None = None
    k: int = 32
    min_distance: int | None = None
    max_uses: int = 0
    usage_penalty: float = 0.0
    unique: bool = False
    seed: int = 0
    device: str = "auto"
    order: str = "regret"
    refine_passes: int = 4
    refine_seconds: float = 10.0
    orient: str = DEFAULT_ORIENT
    dither: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.grid, int) and not isinstance(self.grid, bool):
            object.__setattr__(self, "grid", str(self.grid))  # grid=128 means "128"
        if self.grid is not None:
            if not isinstance(self.grid, str):
                raise UsageError(f"--grid takes N or COLSxROWS, e.g. 128 or 128x96; got {self.grid!r}")
            parse_grid(self.grid)
        check_int("-k/--candidates", self.k, 1, MAX_K)
        if self.min_distance is not None:
            check_int("--min-distance", self.min_distance, 0)
        check_int("--max-uses", self.max_uses, 0)
        check_int("--seed", self.seed, 0)
        check_number("--usage-penalty", self.usage_penalty, 0.0)
        choice("--device", self.device, DEVICES)
        choice("--order", self.order, ORDERS)
        check_int("--refine-passes", self.refine_passes, 0)
        check_number("--refine-seconds", self.refine_seconds, 0.0)
        codes(self.orient)
        if self.dither is not None:
            object.__setattr__(self, "dither", check_number("--dither", self.dither, 0.0, MAX_DITHER) + 0.0)  # not -0.0
        if self.dither:
            if self.refine_passes == 0:
                raise UsageError("--dither runs within the refinement's passes, and --refine-passes 0 turns both off: "
                                 "drop one of them")
            if self.unique:
                raise UsageError("--dither moves tiles between cells, which --unique does not: drop one of them")
            if self.orient != DEFAULT_ORIENT:
                raise UsageError(f"--dither works on tiles as stored: drop --orient {self.orient} or --dither")
        if self.unique:
            for flag, bad in (("--max-uses", self.max_uses > 1), ("--min-distance", bool(self.min_distance)),
                              ("--usage-penalty", self.usage_penalty > 0)):
                if bad:
                    raise UsageError(f"--unique never repeats a tile, so {flag} has no effect; drop {flag}")

    @property
    def grid_spec(self) -> str:
        return self.grid if self.grid is not None else DEFAULT_GRID

    @property
    def dither_weight(self) -> float:
        """The dithering weight these options mean: as given, else DEFAULT_DITHER in greedy modes
        without turns (the pass works on tiles as stored) that refine, else 0."""
        if self.dither is not None:
            return float(self.dither)
        off = self.unique or self.orient != DEFAULT_ORIENT or self.refine_passes == 0
        return 0.0 if off else DEFAULT_DITHER

    @property
    def orient_codes(self) -> tuple[int, ...]:
        return codes(self.orient)

    def to_json(self) -> dict:
        """The options as JSON (saved in the assignment). `orient` only when it is not the
        default, so the files (and the recursive cache keys hashing them) stay as they were;
        `dither` once resolved (a saved 0 must stay 0, not become a later default)."""
        d = asdict(self)
        if d["orient"] == DEFAULT_ORIENT:
            del d["orient"]
        if d["dither"] is None:
            del d["dither"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "MatchOptions":
        """Options from JSON saved by `to_json` (unknown keys, from other versions, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    # ---- against a pool ----------------------------------------------------------------------
    def resolved(self, rows: int, cols: int, n_tiles: int) -> tuple["MatchOptions", list[str]]:
        """These options for a rows x cols grid and a pool of n_tiles: min_distance and dither
        made concrete (the default radius lowered for pools too small for it), and the pool
        checked."""
        warnings = []
        r = self.min_distance
        if r is None:
            r = 0 if self.unique else DEFAULT_MIN_DISTANCE
            cap = max_safe_radius(rows, cols, n_tiles, self.max_uses)
            if r > cap:
                warnings.append(f"the database has only {n_tiles} tiles: --min-distance lowered from {r} to {cap}")
                r = cap
        out = replace(self, min_distance=r, dither=self.dither_weight)
        out.check_pool(rows, cols, n_tiles)
        return out, warnings

    def check_pool(self, rows: int, cols: int, n_tiles: int) -> None:
        """Raise when a pool of n_tiles cannot possibly satisfy these options on rows x cols."""
        n_cells = rows * cols
        if n_tiles <= 0:
            raise EmptyDatabase("the database holds no tiles: add tiles before building a mosaic")
        if self.unique:
            if n_tiles < n_cells:
                raise PoolTooSmall(f"--unique needs at least {n_cells} tiles, the database has "
                                 f"{n_tiles}: use a coarser --grid or drop --unique")
            return
        if self.max_uses and self.max_uses * n_tiles < n_cells:
            need = -(-n_cells // n_tiles)
            raise PoolTooSmall(f"--max-uses {self.max_uses} with {n_tiles} tiles covers at most "
                             f"{self.max_uses * n_tiles} of {n_cells} cells: use --max-uses {need} "
                             f"or more, or a coarser --grid")
        if self.min_distance:
            # Cells pairwise within distance R form (R+1) x (R+1) blocks, and that many tiles
            # are also enough: tile (r mod R+1, c mod R+1) never repeats closer than R+1.
            side = self.min_distance + 1
            block_r, block_c = min(rows, side), min(cols, side)
            if block_r * block_c > n_tiles:
                raise PoolTooSmall(f"--min-distance {self.min_distance} needs at least "
                                 f"{block_r * block_c} different tiles (every {block_r}x{block_c} "
                                 f"block is all different), the database has {n_tiles}: "
                                 f"lower --min-distance")


def max_safe_radius(rows: int, cols: int, n_tiles: int, max_uses: int = 0) -> int:
    """Largest R at which greedy placement can never get stuck: a cell's (2R+1)^2 window blocks
    at most window-1 tiles and --max-uses exhausts at most (cells-1)//N, and one tile must be left.

    >>> max_safe_radius(64, 64, 30), max_safe_radius(64, 64, 10_000), max_safe_radius(1, 1, 1)
    (2, 64, 1)
    """
    exhausted = (rows * cols - 1) // max_uses if max_uses else 0

    def safe(r):
        return min(rows, 2 * r + 1) * min(cols, 2 * r + 1) - 1 + exhausted < n_tiles

    r = 0
    while r < max(rows, cols) and safe(r + 1):
        r += 1
    return r
