"""A model folder on disk: safetensors for tensors, JSON for everything else, never pickle.

    MODEL/config.json              architecture, training options, data, metrics, loss curve
    MODEL/model.safetensors        weights + the atlas codes; metadata repeats the architecture
    MODEL/checkpoint.safetensors   the last training state: weights, Adam moments, losses so far

Model files are untrusted input: sizes are bounded before anything is read, the safetensors
header is checked against the architecture (names, dtypes, shapes) before tensors are loaded,
and every value must be finite. Any problem is one `ModelError` line naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependency, ModelError, UsageError
from ..generate import deps
from ..generate.deps import GEN_HINT
from ..io import UnsafeFile, read_regular_file, write_atomic
from . import model as M
from .options import Arch

FORMAT = "mosaicdb.autoencoder"
CHECKPOINT_FORMAT = "mosaicdb.autoencoder-checkpoint"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, CHECKPOINT = "config.json", "model.safetensors", "checkpoint.safetensors"
MAX_CONFIG_BYTES = 4 << 20
MAX_HEADER_BYTES = 4 << 20
MAX_ATLAS_BYTES = 256 << 20
MAX_LOSSES = 10_000_000


@dataclass
class Model:
    """A loaded model: the network in eval mode (parameters frozen), its atlas codes, the
    config, and the SHA-256 of its weights file (recorded in every tile it makes)."""
    path: Path
    arch: Arch
    net: object
    atlas: object        # torch (K, latent) float32 codes in [0, 1]
    config: dict
    sha256: str

    def describe(self) -> dict:
        """What every decoded tile records of its model: path, weights' SHA-256, architecture."""
        return {"path": str(self.path), "sha256": self.sha256, "arch": self.arch.to_json()}


def _st():
    try:
        import safetensors.torch as st
    except ImportError:
        raise MissingDependency(f"autoencoder models need safetensors (not installed): {GEN_HINT}") from None
    return st


def model_folder(path) -> Path:
    """MODEL as given: the folder, or its config.json / model.safetensors."""
    p = Path(path)
    if p.is_file() and p.name in (CONFIG, WEIGHTS):
        p = p.parent
    if not p.is_dir() or not (p / CONFIG).is_file() or not (p / WEIGHTS).is_file():
        what = "does not exist" if not p.exists() else "is not a model folder (config.json + model.safetensors)"
        raise ModelError(f"autoencoder model {p} {what}: train one with `mosaic autoencoder train DB --out {p}`")
    return p


# ---- safetensors, checked ------------------------------------------------------------------------
def _read_bounded(path: Path, limit: int) -> bytes:
    """A model file's bytes: a regular file (no FIFO, no device) of at most `limit` bytes."""
    try:
        return read_regular_file(path, limit)
    except UnsafeFile as e:
        raise ModelError(f"cannot read {path} as a model file: {e}") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None


def _header(path: Path, data: bytes) -> dict:
    """The safetensors JSON header, checked for shape before any tensor is touched."""
    if len(data) < 8:
        raise ModelError(f"{path} is not a safetensors file (only {len(data)} bytes)")
    n = struct.unpack("<Q", data[:8])[0]
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ModelError(f"{path} is not a safetensors file (header length {n:,} does not fit the file)")
    try:
        head = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(head, dict):
        raise ModelError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return head


def _pack_meta(meta: dict) -> dict:
    """safetensors metadata as one key: the library writes several keys in no fixed order, and
    a model file should have the same bytes whenever it has the same content."""
    return {"mosaicdb": json.dumps(meta, sort_keys=True)}


def _load_tensors(path: Path, limit: int, fmt: str) -> tuple[dict, dict, dict, str]:
    """(header entries, our metadata, tensors, SHA-256 of the bytes) of a safetensors file of our format."""
    data = _read_bounded(path, limit)
    head = _header(path, data)
    raw = head.pop("__metadata__", None) or {}
    try:
        meta = json.loads(raw["mosaicdb"]) if isinstance(raw, dict) else None
    except (KeyError, TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ModelError(f"{path} is a safetensors file but not a {fmt} file (no mosaicdb metadata of that format)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path} has format version {meta.get('format_version')}; this mosaicdb reads {FORMAT_VERSION}")
    try:
        tensors = _st().load(data)
    except Exception as e:  # safetensors raises its own SafetensorError for every malformed file
        if type(e).__name__ != "SafetensorError":
            raise
        raise ModelError(f"{path} is damaged: {e}") from None
    return head, meta, tensors, hashlib.sha256(data).hexdigest()


def _check_tensor(path: Path, name: str, t, shape) -> None:
    torch = deps.torch()
    if t.dtype != torch.float32:
        raise ModelError(f"{path}: tensor {name} is {t.dtype}, expected float32")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ModelError(f"{path}: tensor {name} has shape {tuple(t.shape)}, the architecture needs {tuple(shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ModelError(f"{path}: tensor {name} holds NaN or infinite values")


def _check_names(path: Path, have, want) -> None:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        bits = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise ModelError(f"{path} does not fit its architecture: {'; '.join(bits)}")


def _weights_limit(shapes: dict) -> int:
    return sum(4 * math.prod(s) for s in shapes.values()) + MAX_ATLAS_BYTES + MAX_HEADER_BYTES + 8


# ---- the model ------------------------------------------------------------------------------------
def read_config(folder: Path) -> dict:
    """config.json of a model folder, bounded and checked (format, version, architecture)."""
    p = folder / CONFIG
    data = _read_bounded(p, MAX_CONFIG_BYTES)
    try:
        cfg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{p} is not JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ModelError(f"{p} is not a {FORMAT} config")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{p} has format version {cfg.get('format_version')}; this mosaicdb reads {FORMAT_VERSION}")
    try:
        Arch.from_json(cfg.get("arch"))
    except UsageError as e:
        raise ModelError(f"{p}: {e}") from None
    return cfg


def load_model(path) -> Model:
    """Load and check a model folder; the network comes back in eval mode with frozen parameters."""
    folder = model_folder(path)
    cfg = read_config(folder)
    arch = Arch.from_json(cfg["arch"])
    shapes = M.expected_shapes(arch)
    p = folder / WEIGHTS
    head, meta, tensors, digest = _load_tensors(p, _weights_limit(shapes), FORMAT)
    if meta.get("arch") != arch.to_json():
        raise ModelError(f"{p} was written for architecture {meta.get('arch')}, but {folder / CONFIG} says "
                         f"{json.dumps(arch.to_json())}: the folder mixes two models")
    _check_names(p, tensors, list(shapes) + ["atlas"])
    for name, shape in shapes.items():
        _check_tensor(p, name, tensors[name], shape)
    atlas = tensors["atlas"]
    _check_tensor(p, "atlas", atlas, None)
    if atlas.ndim != 2 or atlas.shape[1] != arch.latent or bool((atlas < 0).any() | (atlas > 1).any()):
        raise ModelError(f"{p}: the atlas must be (K, {arch.latent}) codes in [0, 1], got {tuple(atlas.shape)}")
    net = M.build(arch)
    net.load_state_dict({k: tensors[k] for k in shapes}, strict=True)
    net.eval()
    net.requires_grad_(False)
    return Model(folder, arch, net, atlas, cfg, digest)


def save_model(folder: Path, arch: Arch, net, atlas, config: dict) -> str:
    """Write model.safetensors, then config.json (each atomically). Returns the weights' SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    tensors["atlas"] = atlas.detach().float().contiguous()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch.to_json()}
    data = _st().save(tensors, metadata=_pack_meta(meta))
    write_atomic(folder / WEIGHTS, lambda t: Path(t).write_bytes(data))
    digest = hashlib.sha256(data).hexdigest()
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch.to_json(), **config, "sha256": digest}
    write_atomic(folder / CONFIG, lambda t: Path(t).write_text(json.dumps(cfg, indent=2) + "\n"))
    return digest


# ---- training checkpoints -----------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A training run's state after `step` steps: enough to resume it bit for bit."""
    step: int                 # steps done
    identity: dict            # TrainOptions.identity() of the run
    data: dict                # which tiles it trains on
    net_state: dict
    adam_state: dict          # torch Adam state_dict()["state"]
    losses: list              # one per step done
    seconds: float            # training time spent so far


def save_checkpoint(folder: Path, ck: Checkpoint) -> None:
    """Write checkpoint.safetensors atomically (weights, Adam moments, losses; no pickle)."""
    torch = deps.torch()
    tensors = {f"net.{k}": v.detach().contiguous() for k, v in ck.net_state.items()}
    for i, st in ck.adam_state.items():
        for k, v in st.items():
            tensors[f"adam.{i}.{k}"] = v.detach().contiguous() if torch.is_tensor(v) else torch.tensor(float(v))
    tensors["losses"] = torch.tensor(ck.losses, dtype=torch.float64)
    meta = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION, "step": ck.step,
            "identity": ck.identity, "data": ck.data, "seconds": float(ck.seconds)}
    data = _st().save(tensors, metadata=_pack_meta(meta))
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / CHECKPOINT, lambda t: Path(t).write_bytes(data))


def load_checkpoint(folder: Path, arch: Arch) -> Checkpoint | None:
    """The last checkpoint in `folder`, checked against `arch`; None when there is none."""
    p = folder / CHECKPOINT
    if not p.is_file():
        return None
    shapes = M.expected_shapes(arch)
    limit = 3 * _weights_limit(shapes) + 8 * MAX_LOSSES
    _, meta, tensors, _ = _load_tensors(p, limit, CHECKPOINT_FORMAT)
    try:
        step, identity, data = int(meta["step"]), dict(meta["identity"]), dict(meta["data"])
        seconds = float(meta.get("seconds", 0))
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{p} is damaged (metadata: {e}); delete it or rerun with --restart") from None
    net_state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    _check_names(p, net_state, shapes)
    for name, shape in shapes.items():
        _check_tensor(p, f"net.{name}", net_state[name], shape)
    adam: dict = {}
    for k, v in tensors.items():
        if k.startswith("adam."):
            _, i, field_ = k.split(".", 2)
            adam.setdefault(int(i), {})[field_] = v
    losses = tensors.get("losses")
    if losses is None or losses.ndim != 1 or len(losses) != step:
        raise ModelError(f"{p} is damaged (losses do not match step {step}); delete it or rerun with --restart")
    return Checkpoint(step, identity, data, net_state, adam, losses.tolist(), seconds)
