"""Options of a generated-cell run (`mosaic generate cells`, and the hybrid `make --generate-worst`):
one frozen dataclass, validated once before anything heavy is imported or loaded, and the
geometry (tile, latent and block sizes) resolved from it and the model's configs."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UsageError, choice
from ..match.grid import parse_grid
from .guidance import ADAIN_MODES, DECODERS
from .noise import NOISE_MODES
from .schedulers import SCHEDULER_CHOICES

MAX_CELLS = 16_384     # 128 x 128: at seconds per tile on a GPU, already hours of work
DEFAULT_S = 8          # GP: a tile's latent is 8x its cell's block of the reference latent


@dataclass(frozen=True)
class CellOptions:
    """How `mosaic generate cells` makes a tile for each cell (GP): the prompt, grid, tile size,
    reference block, seeds and batch, and each part of the loop (∫-noise, AdaIN, low-frequency
    guidance, scheduler), every one switchable. Validated when made."""
    prompt: str
    negative: str | None = None        # None: DEFAULT_NEGATIVE
    grid: str = "8"                    # N across the long side, or COLSxROWS
    size: int | None = None            # tile px; None: the model's native size
    block: int | None = None           # b: reference latent px per cell; None: tile latent / 8 (at least 2)
    seed: int = 0
    batch: int = 4
    noise: str = "integral"            # integral (∫-noise from one global field) | independent
    scene_noise: bool = True           # a `generate scene` target: its own initial noise is the field
    adain: str = "x0"                  # x0 | zt | off
    # 1: the block's std (GP's AdaIN: a flat block, a sky, gives a flat tile with nothing of the
    # prompt left); 0: keep the tile's own (a mean shift only). 0.5 cost 0.3 dB on kodim23 (tiny).
    adain_std_weight: float = 0.5
    guidance_weight: float = 5000.0    # w (GP: 5000 for SD 2.1 at 768 px); 0: off
    guidance_decay: float = 0.95       # γ: w_{i+1} = γ w_i
    guidance_decoder: str = "vae"      # vae | tiny | linear
    tiny_decoder: str | None = None    # AutoencoderTiny folder for guidance_decoder="tiny"
    blur_sigma: float | None = None    # Gaussian σ in tile px; None: s (GP gives none)
    guidance_iters: int = 1            # gradient steps per denoising step (backward guidance)
    grad_through_unet: bool = False    # backpropagate through the UNet too (SyncDiffusion-style; costly)
    scheduler: str = "model"           # model | euler | euler-ancestral | ddim | lcm

    def __post_init__(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise UsageError('--prompt is required: what every tile shows, e.g. --prompt "a dog"')
        cols, rows = parse_grid(self.grid)
        check_cells(self.grid, cols * (rows or 1))
        choice("--noise", self.noise, NOISE_MODES)
        choice("--adain", self.adain, ADAIN_MODES)
        choice("--guidance-decoder", self.guidance_decoder, {d: d for d in DECODERS})
        choice("--scheduler", self.scheduler, {s: s for s in SCHEDULER_CHOICES})
        if not 1 <= self.batch <= 256:
            raise UsageError(f"--batch must be between 1 and 256, got {self.batch}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.block is not None and self.block < 1:
            raise UsageError(f"--block must be >= 1 latent pixel, got {self.block}")
        if not 0.0 <= self.adain_std_weight <= 1.0:
            raise UsageError(f"--adain-std-weight must be between 0 and 1, got {self.adain_std_weight}")
        if not 0.0 <= self.guidance_weight <= 1e7:
            raise UsageError(f"--guidance-weight must be between 0 and 1e7, got {self.guidance_weight}")
        if not 0.0 < self.guidance_decay <= 1.0:
            raise UsageError(f"--guidance-decay must be in (0, 1], got {self.guidance_decay}")
        if not 1 <= self.guidance_iters <= 16:
            raise UsageError(f"--guidance-iters must be between 1 and 16, got {self.guidance_iters}")
        if self.blur_sigma is not None and not 0.0 <= self.blur_sigma <= 256:
            raise UsageError(f"--blur-sigma must be between 0 and 256 tile pixels, got {self.blur_sigma}")
        if self.guidance_decoder == "tiny" and self.guidance_weight > 0 and not self.tiny_decoder:
            raise UsageError("--guidance-decoder tiny needs --tiny-decoder DIR (an AutoencoderTiny folder, e.g. "
                             "`hf download madebyollin/taesdxl --local-dir taesdxl`)")
        if self.grad_through_unet and self.guidance_iters != 1:
            raise UsageError("--grad-through-unet takes one gradient step per denoising step: drop --guidance-iters")

    @property
    def guided(self) -> bool:
        return self.guidance_weight > 0

    def to_json(self) -> dict:
        """The options as JSON-ready values (recorded in every tile's provenance)."""
        return asdict(self)


def check_cells(spec: str, cells: int) -> None:
    if cells > MAX_CELLS:
        raise UsageError(f"--grid {spec}: {cells:,} cells is more than {MAX_CELLS:,} generated cells; use `mosaic "
                         "make` with a generated pool (`mosaic generate tiles`) for grids this fine")


@dataclass(frozen=True)
class CellGeometry:
    """Sizes of one run, in pixels (px) and latent pixels (lat)."""
    size: int          # tile side, px
    factor: int        # VAE downsampling (8)
    latent: int        # h: tile side, lat
    block: int         # b: a cell's block of the reference latent, lat
    s: int             # h / b: ∫-noise upsampling, and tile px per reference px
    blur_sigma: float  # guidance blur, tile px

    @property
    def reference_px(self) -> int:
        """Side of a cell's reference patch when encoded (b latent px)."""
        return self.block * self.factor

    def to_json(self) -> dict:
        return asdict(self)


def resolve_geometry(opts: CellOptions, size: int, factor: int) -> CellGeometry:
    """Tile, latent and block sizes; a block that does not divide the tile latent, or one too
    small for AdaIN's statistics, is a UsageError (before any model loads)."""
    h = size // factor
    b = opts.block if opts.block is not None else max(2, h // DEFAULT_S)
    if b > h or h % b:
        divisors = [d for d in range(1, h + 1) if h % d == 0]
        raise UsageError(f"--block {b} must divide the tile latent side {h} ({size} px / {factor}): "
                         f"choose one of {', '.join(map(str, divisors))}")
    if opts.adain != "off" and b < 2:
        raise UsageError(f"a block of {b} latent pixel has no spread for AdaIN: use --block 2 or more "
                         "(or --adain off)")
    s = h // b
    sigma = float(opts.blur_sigma) if opts.blur_sigma is not None else float(s)
    return CellGeometry(size=size, factor=factor, latent=h, block=b, s=s, blur_sigma=sigma)
