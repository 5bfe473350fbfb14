"""An assignment saved beside its output: OUT.mosaic.json (grid, target, resolved options,
database) and OUT.mosaic.npz (tile ids, distances, target cell colour statistics), so any
output can be explained and re-rendered without matching."""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError

FORMAT_VERSION = 1


@dataclass
class SavedAssignment:
    meta: dict
    tile_ids: np.ndarray     # (rows, cols) int64
    cost: np.ndarray         # (rows, cols) float32
    target_mean: np.ndarray  # (rows, cols, 3) float32
    target_std: np.ndarray   # (rows, cols, 3) float32

    @property
    def rows(self) -> int:
        return int(self.tile_ids.shape[0])

    @property
    def cols(self) -> int:
        return int(self.tile_ids.shape[1])


def sidecar_paths(out) -> tuple[Path, Path]:
    out = Path(out)
    base = out.with_suffix("") if out.suffix else out
    return base.with_name(base.name + ".mosaic.json"), base.with_name(base.name + ".mosaic.npz")


def metrics_path(out) -> Path:
    out = Path(out)
    base = out.with_suffix("") if out.suffix else out
    return base.with_name(base.name + ".metrics.json")


def write_atomic(path: Path, write) -> None:
    """Call write(tmp_path), then rename into place; the temporary is removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(out, a: SavedAssignment) -> tuple[Path, Path]:
    jpath, npath = sidecar_paths(out)
    meta = {"format_version": FORMAT_VERSION, **a.meta}

    def write_npz(p):
        with open(p, "wb") as f:
            np.savez_compressed(f, tile_ids=a.tile_ids, cost=a.cost, target_mean=a.target_mean,
                                target_std=a.target_std)

    write_atomic(npath, write_npz)
    write_atomic(jpath, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return jpath, npath


def load(path) -> SavedAssignment:
    """Load from OUT.mosaic.json, OUT.mosaic.npz or the output image OUT itself."""
    p = Path(path)
    name = p.name
    if name.endswith(".mosaic.json") or name.endswith(".mosaic.npz"):
        base = p.with_name(name.rsplit(".mosaic.", 1)[0])
        jpath, npath = base.with_name(base.name + ".mosaic.json"), base.with_name(base.name + ".mosaic.npz")
    else:
        jpath, npath = sidecar_paths(p)
    if not jpath.is_file() or not npath.is_file():
        raise UsageError(f"no saved assignment for {path}: expected {jpath} and {npath} "
                         "(written by `mosaic make`)")
    try:
        meta = json.loads(jpath.read_text())
        with np.load(npath) as z:
            arrays = {k: z[k] for k in ("tile_ids", "cost", "target_mean", "target_std")}
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"assignment {jpath} / {npath} is damaged ({e}); run `mosaic make` again") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{jpath} has format version {meta.get('format_version')}, this mosaicdb reads {FORMAT_VERSION}")
    return SavedAssignment(meta, **arrays)
