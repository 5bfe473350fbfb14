"""The macro scene (a mosaic's target) from the same model, and regenerating any generated
tile or scene from its provenance."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DatabaseError, UsageError, check_int
from ..io import write_atomic
from .colours import nearest_name
from .pipeline import Generator, PipelineOptions, ResolvedPipeline, override_pipeline, resolve_pipeline
from .prompts import DEFAULT_NEGATIVE
from .worker import derive_seed

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True)
class SceneOptions:
    """One `generate scene` image: prompt, negative prompt, size (None: the model's) and seed."""
    prompt: str
    negative: str | None = None   # None: DEFAULT_NEGATIVE
    width: int | None = None      # None: the model's native size
    height: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise UsageError("the scene needs a prompt, e.g. \"a lighthouse on a cliff at sunset\"")
        check_int("--seed", self.seed, 0)
        for flag, v in (("--width", self.width), ("--height", self.height)):
            if v is not None:
                check_int(flag, v, 32, 4096)  # leave it out for the model's native size


def image_format(out) -> str:
    fmt = _FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {out}: the suffix must be one of {', '.join(_FORMATS)}")
    return fmt


def write_image(rgb: np.ndarray, out) -> Path:
    """Write uint8 RGB to PNG/JPEG/WebP (by suffix) under a temporary name, then rename."""
    from PIL import Image
    out = Path(out)
    fmt = image_format(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kw = {"quality": 95} if fmt != "PNG" else {}
    return write_atomic(out, lambda tmp: Image.fromarray(rgb).save(tmp, format=fmt, **kw))


def generate_scene(popts: PipelineOptions, sopts: SceneOptions, out, *, on_note=None) -> dict:
    """Generate one scene image to `out`, with its provenance as JSON beside it (<out>.json).
    Returns the provenance."""
    image_format(out)
    rp = resolve_pipeline(popts)
    for note in rp.notes:
        if on_note:
            on_note(note)
    w = rp.check_size(sopts.width or rp.native_size, "--width")
    h = rp.check_size(sopts.height or rp.native_size, "--height")
    if rp.threads == 0:
        rp = replace(rp, threads=int(__import__("torch").get_num_threads()))
    negative = DEFAULT_NEGATIVE if sopts.negative is None else sopts.negative
    rgb = Generator(rp)([sopts.prompt], [negative], [sopts.seed], width=w, height=h)[0]
    out = write_image(rgb, out)
    # the hash lets `generate cells` tell that this very image came from this noise
    prov = {"generator": "mosaicdb.generate", "kind": "scene", "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "prompt": sopts.prompt, "negative": negative,
            "seed": sopts.seed, "width": w, "height": h, "model": rp.model, "steps": rp.steps,
            "guidance": rp.guidance,
            "lora": None if not rp.lora else {"path": rp.lora, "scale": rp.lora_scale, "sha256": rp.lora_sha256},
            "pipeline": rp.provenance(), "notes": list(rp.notes), "output": str(out)}
    Path(str(out) + ".json").write_text(json.dumps(prov, indent=2) + "\n")
    return prov


def regenerate(prov: dict, *, model: str | None = None, device: str | None = None, dtype: str | None = None,
               exact_batch: bool = True) -> np.ndarray:
    """The pixels of a generated tile or scene, from its provenance.

    A tile is regenerated together with the batch it was made in (`exact_batch`): batch mates
    change the low bits of the arithmetic, so only the same batch, device, dtype, torch threads
    and library versions reproduce every pixel exactly. `exact_batch=False` renders it alone
    (a few pixels may then differ by one level on a CPU). `model` points at the checkpoint when
    it has moved since the tile was made."""
    if prov.get("generator") != "mosaicdb.generate":
        raise DatabaseError("this tile was not made by `mosaic generate` (its provenance has no generator record)")
    if prov.get("kind") == "cell":
        from .cellrun import regenerate_cell
        return regenerate_cell(prov, model=model, device=device, dtype=dtype, exact_batch=exact_batch)
    rp = override_pipeline(ResolvedPipeline.from_provenance(prov["pipeline"]), model, device, dtype)
    gen = Generator(rp)
    w, h = int(prov["width"]), int(prov["height"])
    if prov.get("kind") == "scene":
        return gen([prov["prompt"]], [prov["negative"]], [int(prov["seed"])], width=w, height=h)[0]
    own = f"{prov['palette']['hex']}:{prov['attempt']}"
    members = prov["batch"]["members"] if exact_batch else [own]
    position = prov["batch"]["position"] if exact_batch else 0
    prompts, seeds, rgbs = [], [], []
    for m in members:
        hexcode, attempt = m.rsplit(":", 1)
        rgb = tuple(int(hexcode[i:i + 2], 16) for i in (1, 3, 5))
        prompts.append(prov["prompt"] if m == own else prov["template"].format(colour=nearest_name(rgb)))
        seeds.append(derive_seed(prov["base_seed"], hexcode, int(attempt)))
        rgbs.append(rgb)
    strength = float(prov.get("colour_init") or 0.0)
    pixels = gen(prompts, [prov["negative"]] * len(members), seeds, width=w, height=h,
                 init_rgb=rgbs if strength > 0 else None, strength=strength)
    return pixels[position]


def provenance_of(db_path, tile_id: int) -> dict:
    """The provenance stored with tile `tile_id` of the database at `db_path`."""
    from ..store import TileDB
    with TileDB.open(db_path, readonly=True) as db:
        rows = db.tiles([tile_id])
        if not rows:
            raise DatabaseError(f"no tile {tile_id} in {db_path}")
        return rows[0]["provenance"]


def reproduce_tile(db_path, tile_id: int, out, *, model: str | None = None, device: str | None = None,
                   dtype: str | None = None, alone: bool = False, check: bool = False) -> tuple[int, int]:
    """Regenerate generated tile `tile_id` of a database into `out` (written atomically); returns
    its (width, height). With `check`, raise DatabaseError unless it equals the stored original
    pixel for pixel."""
    rgb = regenerate(provenance_of(db_path, tile_id), model=model, device=device, dtype=dtype,
                     exact_batch=not alone)
    write_image(rgb, out)
    if check:
        from ..store import TileDB
        with TileDB.open(db_path, readonly=True) as db:
            orig = np.asarray(db.load_original(tile_id))
        if orig.shape != rgb.shape:
            raise DatabaseError(f"tile {tile_id} is {orig.shape[1]}x{orig.shape[0]}, the regenerated one "
                                f"{rgb.shape[1]}x{rgb.shape[0]}")
        diff = np.abs(orig.astype(np.int16) - rgb.astype(np.int16))
        if diff.max():
            raise DatabaseError(f"not identical: {int((diff.max(axis=2) > 0).sum())} pixels differ, by up to "
                                f"{int(diff.max())} levels")
    return rgb.shape[1], rgb.shape[0]


__all__ = ["SceneOptions", "generate_scene", "regenerate", "reproduce_tile", "provenance_of", "write_image",
           "asdict"]
