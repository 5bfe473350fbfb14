"""SDXL-family pipelines through diffusers: where the model is, which device/dtype/steps, and a
`Generator` that turns (prompt, negative, seed) batches into uint8 pixels.

`resolve_pipeline` checks everything that can be checked cheaply (model folder or hub id and
its configs, device, dtype, LoRA file) in the process that starts a run, and returns a small
picklable `ResolvedPipeline`; `Generator` builds the actual pipeline from it wherever it runs
(this process, or inside each Ray actor). Initial noise always comes from a CPU
`torch.Generator` seeded per image, so a seed gives the same noise on any device and in any
batch position.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import DeviceError, MissingDependency, UsageError, check_int, check_number, choice
from . import deps

DTYPES = {"auto": "auto", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
OFFLOAD = {"none": "none", "model": "model", "sequential": "sequential"}
ATTENTION = {"default": "default", "slicing": "slicing", "xformers": "xformers"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_HINT = ("point --model at a diffusers SDXL folder (one saved with save_pretrained, e.g. a downloaded "
              "stabilityai/sdxl-turbo: `hf download stabilityai/sdxl-turbo --local-dir sdxl-turbo`), "
              "or try the commands with `mosaic generate tiny-model DIR`")
CPU_NOTE = ("generating on the CPU: fine for the tiny test pipeline, but a real SDXL model takes minutes per "
            "image here; use a CUDA GPU (--device cuda) for real pools")


MAX_IMAGE_SIDE = 4096   # SDXL-family models are trained at 512-1024 px: larger is memory, not detail


@dataclass(frozen=True)
class PipelineOptions:
    """What the user asked for; `None` means the model's default (see `resolve_pipeline`)."""
    model: str
    device: str = "auto"          # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"           # auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16
    steps: int | None = None      # default 30; SDXL-Turbo 4
    guidance: float | None = None  # default 7.0; SDXL-Turbo 0 (no classifier-free guidance)
    lora: str | None = None
    lora_scale: float = 1.0
    offload: str = "none"         # none | model | sequential (diffusers CPU offload, GPU only)
    attention: str = "default"    # default (PyTorch SDPA) | slicing | xformers
    vae_tiling: bool = False
    turbo: bool | None = None     # None: guessed from the model name ("turbo")
    offline: bool = False         # never contact the hub (local_files_only)
    threads: int = 0              # torch CPU threads (0: torch's default)


@dataclass(frozen=True)
class ResolvedPipeline:
    """Everything a worker needs to build the pipeline, and what provenance records."""
    model: str                 # as given
    source: str                # absolute folder, or hub id
    local: bool
    pipeline_class: str
    scheduler: str
    turbo: bool
    device: str
    dtype: str
    steps: int
    guidance: float
    native_size: int
    vae_scale: int
    lora: str | None = None
    lora_sha256: str | None = None
    lora_scale: float = 1.0
    offload: str = "none"
    attention: str = "default"
    vae_tiling: bool = False
    offline: bool = False
    threads: int = 0
    notes: tuple = field(default=(), compare=False)

    def provenance(self) -> dict:
        """What made a tile, as stored with it: model, scheduler, dtype, device, LoRA... and
        the library versions."""
        d = asdict(self)
        d.pop("notes")
        d["versions"] = _versions()
        return d

    @classmethod
    def from_provenance(cls, d: dict, **overrides) -> "ResolvedPipeline":
        """The pipeline settings recorded in a tile's provenance, with `overrides` (None: as
        recorded), to regenerate it."""
        keep = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "notes"}
        return replace(cls(**keep), **{k: v for k, v in overrides.items() if v is not None})

    def check_size(self, size: int, what: str = "--size") -> int:
        """`size` if the VAE can make it (a multiple of its scale, at least 4 latents, at most
        MAX_IMAGE_SIDE px), else UsageError."""
        size = check_int(what, size, 1, MAX_IMAGE_SIDE)
        if size < self.vae_scale * 4 or size % self.vae_scale:
            raise UsageError(f"{what} must be a multiple of {self.vae_scale} and at least {self.vae_scale * 4}, got {size}")
        return size


def _versions() -> dict:
    out = {}
    for m in ("torch", "diffusers", "transformers"):
        try:
            out[m] = __import__(m).__version__
        except ImportError:
            out[m] = None
    return out


# ---- resolving -------------------------------------------------------------------------------
def locate_model(model: str) -> tuple[str, bool]:
    """(absolute folder, True) or (hub id, False); a missing or unusable path is a UsageError."""
    if not model or not model.strip():
        raise UsageError(f"--model is required: {MODEL_HINT}")
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise UsageError(f"model folder {model} has no model_index.json, so it is not a diffusers pipeline: {MODEL_HINT}")
        return str(p.resolve()), True
    if p.exists():
        raise UsageError(f"--model {model} is a file; single-file checkpoints are not supported: {MODEL_HINT}")
    if model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise UsageError(f"model folder {model} does not exist: {MODEL_HINT}")
    return model, False


def _read_configs(source: str, local: bool, offline: bool) -> tuple[dict, dict, dict]:
    """model_index.json, unet/config.json and vae/config.json (from the hub for an id)."""
    if local:
        def load(rel):
            try:
                return json.loads((Path(source) / rel).read_text())
            except (OSError, ValueError) as e:
                raise UsageError(f"model folder {source}: cannot read {rel} ({e}): {MODEL_HINT}") from None
        return load("model_index.json"), load("unet/config.json"), load("vae/config.json")
    import warnings
    D = deps.diffusers()
    try:
        with warnings.catch_warnings():  # huggingface_hub deprecations raised on diffusers' behalf
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            index = D.DiffusionPipeline.load_config(source, local_files_only=offline)
            unet = D.UNet2DConditionModel.load_config(source, subfolder="unet", local_files_only=offline)
            vae = D.AutoencoderKL.load_config(source, subfolder="vae", local_files_only=offline)
    except Exception:  # OSError, hub HTTP/offline errors: all mean "not reachable here"
        where = "not in the local hub cache (--offline)" if offline else "the hub did not provide it (offline? misspelt?)"
        raise UsageError(f"--model {source!r} is not a local folder, and {where}: {MODEL_HINT}") from None
    return dict(index), dict(unet), dict(vae)


def resolve_pipeline(opts: PipelineOptions, *, gpus: int | None = None) -> ResolvedPipeline:
    """Validate `opts` and fill in the model's defaults. `gpus` is how many GPUs the workers
    will see (None: ask local torch; the Ray executor passes the cluster's count)."""
    choice("--dtype", opts.dtype, DTYPES)
    choice("--offload", opts.offload, OFFLOAD)
    choice("--attention", opts.attention, ATTENTION)
    if opts.steps is not None and not 1 <= opts.steps <= 1000:
        raise UsageError(f"--steps must be between 1 and 1000, got {opts.steps}")
    if opts.guidance is not None and not 0 <= opts.guidance <= 50:
        raise UsageError(f"--guidance must be between 0 and 50, got {opts.guidance}")
    if opts.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {opts.threads}")
    check_number("--lora-scale", opts.lora_scale, -10.0, 10.0)
    source, local = locate_model(opts.model)
    index, unet, vae = _read_configs(source, local, opts.offline)
    cls = str(index.get("_class_name", ""))
    if "XL" not in cls:
        raise UsageError(f"{opts.model} is a {cls or 'non-diffusers'} pipeline; mosaic generate needs an SDXL-family one "
                         "(StableDiffusionXLPipeline: SDXL base, SDXL-Turbo, fine-tunes)")
    vae_scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    native = int(unet.get("sample_size", 128)) * vae_scale
    turbo = ("turbo" in opts.model.lower()) if opts.turbo is None else bool(opts.turbo)
    notes = []
    if turbo:
        native = min(native, 512)  # SDXL-Turbo was trained at 512 px
        if opts.guidance and opts.guidance > 1:
            notes.append("SDXL-Turbo was trained without classifier-free guidance: --guidance 0 is recommended")
    device, dtype = _resolve_device(opts, gpus, notes)
    lora = lora_sha = None
    if opts.lora:
        lora, lora_sha = _locate_lora(opts.lora)
    sched = index.get("scheduler", [None, "unknown"])
    return ResolvedPipeline(
        model=opts.model, source=source, local=local, pipeline_class=cls,
        scheduler=str(sched[1] if isinstance(sched, (list, tuple)) else sched), turbo=turbo,
        device=device, dtype=dtype,
        steps=int(opts.steps if opts.steps is not None else (4 if turbo else 30)),
        guidance=float(opts.guidance if opts.guidance is not None else (0.0 if turbo else 7.0)),
        native_size=native, vae_scale=vae_scale, lora=lora, lora_sha256=lora_sha,
        lora_scale=float(opts.lora_scale), offload=opts.offload, attention=opts.attention,
        vae_tiling=bool(opts.vae_tiling), offline=bool(opts.offline), threads=int(opts.threads), notes=tuple(notes))


def _resolve_device(opts: PipelineOptions, gpus: int | None, notes: list) -> tuple[str, str]:
    torch = deps.torch()
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = (opts.device or "auto").strip().lower()
    if dev == "auto":
        dev = "cuda" if gpus else "cpu"
    if dev.startswith("cuda"):
        m = re.fullmatch(r"cuda(?::(\d+))?", dev)
        if not m:
            raise UsageError(f"unknown --device {opts.device!r}: choose auto, cpu, cuda, cuda:N or mps")
        if not gpus:
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
            raise DeviceError(f"--device {dev}: no CUDA GPU is visible ({build}); use --device cpu (slow) "
                              "or install a CUDA build of torch on a GPU machine")
        if m.group(1) and int(m.group(1)) >= gpus:
            raise DeviceError(f"--device {dev}: only {gpus} GPU(s) are visible (cuda:0..cuda:{gpus - 1})")
    elif dev == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: Apple's Metal backend is not available here; use --device cpu")
    elif dev != "cpu":
        raise UsageError(f"unknown --device {opts.device!r}: choose auto, cpu, cuda, cuda:N or mps")
    dtype = opts.dtype
    if dtype == "auto":
        dtype = "fp16" if dev.startswith("cuda") else "fp32"
    if dtype == "fp16" and dev == "cpu":
        raise UsageError("--dtype fp16 needs a GPU; on the CPU use fp32 (or bf16)")
    if opts.offload != "none":
        if not dev.startswith("cuda"):
            raise UsageError(f"--offload {opts.offload} moves weights between CPU and GPU, so it needs --device cuda")
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise MissingDependency(f"--offload needs accelerate: {deps.GEN_HINT}") from None
    if opts.attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise MissingDependency("--attention xformers needs xformers: pip install xformers "
                                    "(matching your torch build)") from None
    if dev == "cpu":
        notes.append(CPU_NOTE)
    return dev, dtype


def _locate_lora(lora: str) -> tuple[str, str | None]:
    p = Path(os.path.expanduser(lora))
    if p.exists():
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        if not any(f.suffix in (".safetensors", ".bin") for f in files):
            raise UsageError(f"--lora {lora} holds no .safetensors or .bin weights")
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return str(p.resolve()), h.hexdigest()
    if _HUB_ID.match(lora) and not lora.startswith((".", "/", "~")):
        return lora, None
    raise UsageError(f"--lora {lora} does not exist: give a LoRA .safetensors file or folder (diffusers/kohya format)")


# ---- building and running ------------------------------------------------------------------
class Generator:
    """An SDXL pipeline built from a ResolvedPipeline; call it with batches of prompts/seeds."""

    def __init__(self, rp: ResolvedPipeline):
        torch = deps.torch()
        D = deps.diffusers()
        if rp.threads:
            torch.set_num_threads(rp.threads)
        self.rp, self.torch = rp, torch
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[rp.dtype]
        kw = {_dtype_keyword(D): dtype, "local_files_only": rp.local or rp.offline}
        try:
            if rp.dtype == "fp16" and not rp.local:
                try:  # hub SDXL repos ship fp16 weights: half the download
                    pipe = D.StableDiffusionXLPipeline.from_pretrained(rp.source, variant="fp16", **kw)
                except (OSError, ValueError):
                    pipe = D.StableDiffusionXLPipeline.from_pretrained(rp.source, **kw)
            else:
                pipe = D.StableDiffusionXLPipeline.from_pretrained(rp.source, **kw)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"cannot load model {rp.model!r} ({first[:200]}): {MODEL_HINT}") from None
        pipe.set_progress_bar_config(disable=True)
        if rp.lora:
            try:
                pipe.load_lora_weights(rp.lora, adapter_name="mosaic")
                pipe.set_adapters(["mosaic"], adapter_weights=[rp.lora_scale])
            except ValueError as e:
                if "peft" in str(e).lower():
                    raise MissingDependency(f"--lora needs peft: {deps.GEN_HINT} (or pip install peft)") from None
                raise UsageError(f"--lora {rp.lora}: {str(e).splitlines()[0][:200]}") from None
        if rp.offload == "model":
            pipe.enable_model_cpu_offload(device=rp.device)
        elif rp.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=rp.device)
        else:
            pipe.to(rp.device)
        if rp.attention == "slicing":
            pipe.enable_attention_slicing()
        elif rp.attention == "xformers":
            pipe.enable_xformers_memory_efficient_attention()
        if rp.vae_tiling:
            pipe.vae.enable_tiling()
        self.pipe = pipe
        self._img2img = None

    def __call__(self, prompts, negatives, seeds, *, width: int, height: int, init_rgb=None,
                 strength: float = 0.0) -> np.ndarray:
        """uint8 (n, height, width, 3). `init_rgb` (n, 3): start each image from a flat image of
        that colour (img2img at `strength`), so the hue lands even where the prompt is weak."""
        torch, rp = self.torch, self.rp
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        kw = dict(prompt=list(prompts), negative_prompt=list(negatives), num_inference_steps=rp.steps,
                  guidance_scale=rp.guidance, generator=gens, output_type="np")
        with torch.inference_mode():
            if init_rgb is not None and strength > 0:
                from PIL import Image
                if self._img2img is None:
                    D = deps.diffusers()
                    self._img2img = D.StableDiffusionXLImg2ImgPipeline.from_pipe(self.pipe)
                    self._img2img.set_progress_bar_config(disable=True)
                images = [Image.new("RGB", (width, height), tuple(int(v) for v in c)) for c in init_rgb]
                out = self._img2img(image=images, strength=float(strength), **kw)
            else:
                out = self.pipe(height=height, width=width, **kw)
        return to_uint8(out.images)


def _dtype_keyword(D) -> str:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns)."""
    import importlib
    try:
        du = importlib.import_module("diffusers.utils.deprecation_utils")
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(du, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def to_uint8(images) -> np.ndarray:
    """diffusers' float [0, 1] numpy output -> uint8, rounded as diffusers' own PIL conversion does."""
    a = np.asarray(images, dtype=np.float32)
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def check_colour_init(rp: ResolvedPipeline, strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"--colour-init must be between 0 and 1, got {strength}")
    if strength > 0 and int(rp.steps * strength) < 1:
        raise UsageError(f"--colour-init {strength} with --steps {rp.steps} leaves no denoising step "
                         f"(steps x strength < 1): raise --steps to at least {int(np.ceil(1 / strength))}")


def override_pipeline(rp: ResolvedPipeline, model: str | None, device: str | None,
                      dtype: str | None) -> ResolvedPipeline:
    """A recorded pipeline, pointed at where the model is now and at another device/dtype."""
    if model:
        source, local = locate_model(model)
        rp = replace(rp, source=source, local=local)
    elif rp.local and not Path(rp.source, "model_index.json").is_file():
        raise UsageError(f"the model this was made with ({rp.source}) is not there any more: pass --model to point at it")
    if device or dtype:
        dev, dt = _resolve_device(PipelineOptions(model=rp.model, device=device or rp.device, dtype=dtype or rp.dtype),
                                  None, [])
        rp = replace(rp, device=dev, dtype=dt)
    return rp
