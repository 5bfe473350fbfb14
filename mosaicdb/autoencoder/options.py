"""Options of the autoencoder stages, each one frozen dataclass validated when it is made:
the network's shape (`Arch`), training (`TrainOptions`) and making a mosaic (`AutoOptions`)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

from ..errors import UsageError

SIZES = (8, 16, 32, 64)      # tile sides the network is built for: stride-2 stages down to 4x4
BOTTOM = 4                   # side of the smallest feature map
MAX_LATENT = 256
MAX_WIDTH = 256


@dataclass(frozen=True)
class Arch:
    """The network: `latent` code dimensions, `size` px tiles, `width` channels at full
    resolution (doubling at each stride-2 stage, capped at MAX_WIDTH)."""
    latent: int = 32
    size: int = 32
    width: int = 8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "Arch":
        """Raise UsageError naming the option when a value is out of range; return self."""
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise UsageError(f"autoencoder {f.name} must be an integer, got {v!r}")
        if self.size not in SIZES:
            raise UsageError(f"--size must be one of {', '.join(map(str, SIZES))} px, got {self.size}")
        if not 1 <= self.latent <= MAX_LATENT:
            raise UsageError(f"--latent must be between 1 and {MAX_LATENT}, got {self.latent}")
        if not 1 <= self.width <= MAX_WIDTH:
            raise UsageError(f"--width must be between 1 and {MAX_WIDTH}, got {self.width}")
        return self

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels after each stride-2 stage, from full resolution down to BOTTOM px."""
        stages = (self.size // BOTTOM).bit_length() - 1
        return tuple(min(MAX_WIDTH, self.width << i) for i in range(stages))

    def to_json(self) -> dict:
        """The options as a JSON object (recorded in model folders and assignments)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d) -> "Arch":
        """An architecture from a model file's JSON, exactly these three keys, validated."""
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise UsageError(f"architecture must have exactly latent, size and width, got {keys}")
        return cls(**d).validate()


@dataclass(frozen=True)
class TrainOptions:
    """Training a model on a database's thumbnails (`mosaic autoencoder train`)."""
    arch: Arch = field(default_factory=Arch)
    steps: int = 3000
    batch: int = 128
    lr: float = 2e-3
    noise: float = 0.05              # std of the Gaussian noise added to the code while training
    seed: int = 0
    threads: int = 1                 # torch CPU threads; 0: all CPUs (see README: 1 is the robust choice)
    max_tiles: int = 100_000         # training tiles held in memory (a seeded sample beyond)
    val_tiles: int = 1000            # held out for the reconstruction metrics
    atlas_size: int = 2048           # codes decoded once per model for the first guess
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainOptions":
        """Raise UsageError naming the option when a value is out of range; return self."""
        self.arch.validate()
        _int_range("--steps", self.steps, 1, 10_000_000)
        _int_range("--batch", self.batch, 1, 65_536)
        _int_range("--seed", self.seed, 0, 2**63 - 1)
        _int_range("--threads", self.threads, 0, 1024)
        _int_range("--max-tiles", self.max_tiles, 1, 100_000_000)
        _int_range("--val-tiles", self.val_tiles, 0, 1_000_000)
        _int_range("--atlas-size", self.atlas_size, 0, 1_000_000)
        _int_range("--checkpoint-every", self.checkpoint_every, 1, 10_000_000)
        if not 0 < self.lr <= 1:
            raise UsageError(f"--lr must be in (0, 1], got {self.lr}")
        if not 0 <= self.noise <= 1:
            raise UsageError(f"--noise must be in [0, 1], got {self.noise}")
        return self

    def resolved_threads(self) -> int:
        """Threads to use: `threads`, or every CPU for 0."""
        return self.threads or os.cpu_count() or 1

    def identity(self) -> dict:
        """What makes two runs the same run (a checkpoint resumes only its own): everything but
        how often it is saved. Threads count: CPU kernels split sums differently per thread count."""
        d = asdict(self)
        d.pop("checkpoint_every")
        d["threads"] = self.resolved_threads()
        return d

    def to_json(self) -> dict:
        """The options as a JSON object (recorded in model folders and assignments)."""
        return asdict(self)


@dataclass(frozen=True)
class AutoOptions:
    """Making a mosaic from an autoencoder: each cell's tile is decoded from a code fitted to it."""
    model: str
    steps: int = 1                   # Adam steps on logit(code) per cell (1: ~5,400 cells/s on 2 cores)
    lr: float = 0.2
    shortlist: int = 1               # nearest atlas codes re-ranked at full size per cell; 0: no atlas
    atlas_px: int = 8                # the atlas shortlist compares cells at this size
    color_fit: bool = True           # per-cell, per-channel least-squares a + b * tile (0 <= b <= MAX_GAIN)
    hybrid: bool = False             # per cell, the closer of the decoded and the retrieved tile
    ae_db: str | None = None         # where decoded tiles go; None: MODEL-NAME.tiles.db beside the output
    batch: int = 512                 # cells per torch batch
    threads: int = 0                 # worker threads, one batch each; 0: all CPUs

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "AutoOptions":
        """Raise UsageError naming the option when a value is out of range; return self."""
        _int_range("--ae-steps", self.steps, 0, 10_000)
        _int_range("--ae-shortlist", self.shortlist, 0, 256)
        _int_range("--ae-batch", self.batch, 1, 65_536)
        _int_range("--threads", self.threads, 0, 1024)
        if self.atlas_px not in SIZES[:-1] + (4, 2, 1) or self.atlas_px < 1:
            raise UsageError(f"atlas_px must be a power of two up to 32, got {self.atlas_px}")
        if not 0 < self.lr <= 10:
            raise UsageError(f"--ae-lr must be in (0, 10], got {self.lr}")
        return self

    def resolved_threads(self) -> int:
        """Threads to use: `threads`, or every CPU for 0."""
        return self.threads or os.cpu_count() or 1

    def to_json(self) -> dict:
        """The options as a JSON object (recorded in model folders and assignments)."""
        return asdict(self)


def _int_range(name: str, v, lo: int, hi: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise UsageError(f"{name} must be an integer between {lo} and {hi}, got {v!r}")
