"""An assignment saved beside its output: OUT.mosaic.json (grid, target, options, database)
and OUT.mosaic.npz (tile ids, distances, target cell colour statistics, and each tile's turn
when any is turned: `orient`, absent = all as stored), so any output can be explained and
re-rendered without matching."""
from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import UsageError
from .io import AtomicFiles, UnsafeFile, not_a_file, read_regular_file, refuse_non_files

FORMAT_VERSION = 2
READS = (1, 2)
MAX_CELLS = 1 << 22          # as match.grid allows: bounds what a saved assignment may make us read
MAX_JSON_BYTES = 16 << 20


@dataclass(frozen=True)
class TargetInfo:
    """The target image a mosaic was matched to: where it was, its bytes' hash, its size."""
    path: str
    sha256: str
    size: tuple[int, int]       # (width, height) after EXIF rotation


@dataclass(frozen=True)
class GridInfo:
    """The grid of cells: cols x rows square cells over `crop` (left, top, right, bottom) of the
    target; `spec` is the --grid that made it."""
    cols: int
    rows: int
    crop: tuple[int, int, int, int]
    spec: str = ""


@dataclass(frozen=True, kw_only=True)
class AssignmentMeta:
    """Everything about an assignment except its arrays: what `mosaic render`, `print`, `plan`
    and `serve` need to redo or explain the output.

    db / db_uuid / db_version: the tile database (path, identity, catalog version when matched).
    match: the matching options as applied (`MatchOptions.to_json()`), None when the tiles were
        not matched (e.g. generated per cell).
    render: the render options the output was written with (`RenderOptions.to_json()`).
    extra: mode-specific records (e.g. which cells were generated), kept as given.
    """
    grid: GridInfo
    db: str = ""
    db_uuid: str | None = None
    db_version: int = 0
    tiles_digest: str | None = None   # TileDB.tiles_digest of the tiles used: never drawn from others
    target: TargetInfo | None = None
    match: dict | None = None
    render: dict = field(default_factory=dict)
    output: str = ""
    widened_cells: int = 0
    created: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The metadata as saved in OUT.mosaic.json."""
        d = asdict(self)
        d["grid"]["crop"] = list(self.grid.crop)
        if self.target is not None:
            d["target"]["size"] = list(self.target.size)
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "assignment") -> "AssignmentMeta":
        """Read (and check the shape of) the JSON of a saved assignment, format 1 or 2."""
        try:
            g = d["grid"]
            grid = GridInfo(int(g["cols"]), int(g["rows"]), tuple(int(v) for v in g["crop"]), str(g.get("spec", "")))
            if len(grid.crop) != 4 or grid.cols < 1 or grid.rows < 1:
                raise ValueError("bad grid")
            t = d.get("target")
            target = None if t is None else TargetInfo(str(t["path"]), str(t["sha256"]),
                                                       tuple(int(v) for v in t["size"]))
            match = d.get("match")
            if match is not None and not isinstance(match, dict):
                raise TypeError(f"match must be an object, not {type(match).__name__}")
            if isinstance(match, dict) and "resolved" in match:   # format 1: requested + resolved
                match = {**{k: v for k, v in match.items() if k != "resolved"}, **match["resolved"]}
            db, uid, digest = d.get("db"), d.get("db_uuid"), d.get("tiles_digest")
            if not (0 <= grid.crop[0] < grid.crop[2] and 0 <= grid.crop[1] < grid.crop[3]):
                raise ValueError(f"crop {list(grid.crop)} is not a box inside the target")
            if target is not None and (grid.crop[2] > target.size[0] or grid.crop[3] > target.size[1]):
                raise ValueError(f"crop {list(grid.crop)} passes the target's {target.size[0]}x{target.size[1]} px")
            if grid.cols * grid.rows > MAX_CELLS:
                raise ValueError(f"{grid.cols}x{grid.rows} cells is over the {MAX_CELLS:,} limit")
            return cls(grid=grid, db="" if db is None else str(db), db_uuid=None if uid is None else str(uid),
                       tiles_digest=None if digest is None else str(digest),
                       db_version=int(d.get("db_version", 0)),
                       target=target, match=match, render=dict(d.get("render") or {}),
                       output=str(d.get("output", "")), widened_cells=int(d.get("widened_cells", 0)),
                       created=float(d.get("created", 0.0)), extra=dict(d.get("extra") or {}))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise UsageError(f"{source} is not a mosaic assignment ({type(e).__name__}: {e}); "
                             "run `mosaic make` again") from None


@dataclass
class SavedAssignment:
    """A tile per cell, and what is needed to draw it: `meta`, tile ids and the matched
    distance per cell, and the target cells' RGB mean and std (for colour transfer)."""
    meta: AssignmentMeta
    tile_ids: np.ndarray     # (rows, cols) int64
    cost: np.ndarray         # (rows, cols) float32
    target_mean: np.ndarray  # (rows, cols, 3) float32
    target_std: np.ndarray   # (rows, cols, 3) float32
    orient: np.ndarray | None = None   # (rows, cols) uint8 orientation codes 0-7 (mosaicdb.orient); None: all 0

    def __post_init__(self) -> None:
        if isinstance(self.meta, dict):   # the JSON form, as saved
            self.meta = AssignmentMeta.from_json(self.meta)
        if self.orient is not None:
            turn = np.asarray(self.orient)
            if turn.shape != np.shape(self.tile_ids) or turn.dtype.kind not in "iu" or turn.min(initial=0) < 0 \
                    or turn.max(initial=0) > 7:
                raise ValueError(f"orient must be codes 0-7 shaped like tile_ids {np.shape(self.tile_ids)}, "
                                 f"got {turn.dtype} {turn.shape}")
            # all as stored: the same assignment, the same files and renders
            self.orient = turn.astype(np.uint8) if turn.any() else None

    @property
    def rows(self) -> int:
        return int(self.tile_ids.shape[0])

    @property
    def cols(self) -> int:
        return int(self.tile_ids.shape[1])


ASSIGNMENT_SUFFIXES = (".mosaic.json", ".mosaic.npz")


def is_assignment(path) -> bool:
    """Whether `path` names a saved assignment (OUT.mosaic.json or .npz)."""
    return str(path).endswith(ASSIGNMENT_SUFFIXES)


def sidecar_paths(out) -> tuple[Path, Path]:
    """OUT.mosaic.json and OUT.mosaic.npz for an output OUT."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix else out
    return base.with_name(base.name + ".mosaic.json"), base.with_name(base.name + ".mosaic.npz")


def metrics_path(out) -> Path:
    """Where the metrics of output `out` go: OUT.metrics.json beside it."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix else out
    return base.with_name(base.name + ".metrics.json")


def output_record(out) -> str:
    """An output's path as recorded in its assignment and as handed to `make --jobs` workers:
    absolute, its links not followed. A link under the output's name is replaced by the mosaic;
    resolved, the record named the link's old target (the next `make` to that name was refused)
    and a worker wrote through the link, onto the file it pointed to."""
    return os.path.abspath(out)


def same_output(recorded, path) -> bool:
    """Whether a recorded output and `path` name the same file (folder links resolved)."""
    return os.path.realpath(recorded) == os.path.realpath(path)


def check_sidecars_free(out) -> None:
    """OUT.mosaic.json/.npz and OUT.metrics.json are named after OUT's stem: refuse when they
    belong to another output that still exists (x.png and x.tif would share them)."""
    out = Path(out)
    jpath, npath = sidecar_paths(out)
    refuse_non_files([out, jpath, npath, metrics_path(out)])
    if not jpath.is_file():
        return
    try:
        recorded = json.loads(read_regular_file(jpath, MAX_JSON_BYTES)).get("output")
    except (ValueError, OSError, UnsafeFile, AttributeError, RecursionError):
        return  # a damaged record of nothing: replacing it loses nothing
    if recorded and isinstance(recorded, str) and "\0" not in recorded and not same_output(recorded, out) \
            and Path(recorded).exists():
        raise UsageError(f"{jpath.name} is the assignment of {recorded}: writing {out} would replace it; "
                         "choose another output name")


def created_time() -> float:
    """Now, or SOURCE_DATE_EPOCH when it is set (the reproducible-builds convention): with it,
    the same request writes byte-identical assignment files wherever it runs."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        return time.time()
    try:
        return float(int(epoch))
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r} is not a whole number of seconds: unset it or fix it") from None


def write_into(group: AtomicFiles, out, a: SavedAssignment) -> tuple[Path, Path]:
    """Write the assignment of output `out` under temporary names of `group` (renamed into place
    when the group commits, together with the output itself)."""
    jpath, npath = sidecar_paths(out)
    meta = {"format_version": FORMAT_VERSION, **a.meta.to_json()}
    with open(group.temp(npath), "wb") as f:
        # members stamped 1980-01-01 by zipfile, so the same arrays give the same bytes
        turned = {} if a.orient is None else {"orient": np.asarray(a.orient, np.uint8)}
        np.savez_compressed(f, tile_ids=a.tile_ids, cost=a.cost, target_mean=a.target_mean,
                            target_std=a.target_std, **turned)
    group.temp(jpath).write_text(json.dumps(meta, indent=2))
    return jpath, npath


def save(out, a: SavedAssignment) -> tuple[Path, Path]:
    """Write OUT.mosaic.json and OUT.mosaic.npz (both, or neither)."""
    with AtomicFiles() as group:
        paths = write_into(group, out, a)
        group.commit()
    return paths


def load(path) -> SavedAssignment:
    """Load from OUT.mosaic.json, OUT.mosaic.npz or the output image OUT itself."""
    p = Path(path)
    name = p.name
    if name.endswith(".mosaic.json") or name.endswith(".mosaic.npz"):
        base = p.with_name(name.rsplit(".mosaic.", 1)[0])
        jpath, npath = base.with_name(base.name + ".mosaic.json"), base.with_name(base.name + ".mosaic.npz")
    else:
        jpath, npath = sidecar_paths(p)
    for f in (jpath, npath):  # a FIFO, a device or a folder there: say so, not that it is missing
        if not_a_file(f):
            raise UsageError(f"assignment file {f} is not a regular file: the assignment of {path} "
                             "cannot be read from it (run `mosaic make` again)")
    if not jpath.is_file() or not npath.is_file():
        raise UsageError(f"no saved assignment for {path}: expected {jpath} and {npath} "
                         "(written by `mosaic make`)")
    try:
        meta = json.loads(read_regular_file(jpath, MAX_JSON_BYTES))
    except RecursionError:  # deeply nested brackets: no assignment nests more than a few levels
        raise UsageError(f"assignment {jpath} is damaged or not an assignment (nested too deeply); "
                         "run `mosaic make` again") from None
    except (ValueError, OSError, UnsafeFile) as e:
        raise UsageError(f"assignment {jpath} is damaged or not an assignment ({e}); run `mosaic make` again") from None
    if not isinstance(meta, dict) or meta.get("format_version") not in READS:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise UsageError(f"{jpath}: format_version {version!r} is not one this mosaicdb reads "
                         f"({', '.join(map(str, READS))}): not a mosaic assignment, or from a newer mosaicdb")
    m = AssignmentMeta.from_json(meta, str(jpath))
    arrays = _load_arrays(npath, m.grid.rows, m.grid.cols)
    return SavedAssignment(m, **arrays)


# the arrays of a rows x cols assignment: (dtype kinds allowed, trailing shape, itemsize at most)
_ARRAYS = {"tile_ids": ("iu", (), 8), "cost": ("f", (), 8), "target_mean": ("f", (3,), 8), "target_std": ("f", (3,), 8)}
_OPTIONAL = {"orient": ("u", (), 1)}   # absent in files made before orientations, and when no tile is turned


def _load_arrays(npath: Path, rows: int, cols: int) -> dict:
    """The .npz arrays, checked against the grid before and after reading: sizes bounded by
    the grid (a crafted file cannot make us allocate more), dtypes, shapes, finite values."""
    bad = f"assignment {npath} is damaged"
    try:
        with zipfile.ZipFile(npath) as z:
            for info in z.infolist():
                name = info.filename.removesuffix(".npy")
                if name in _ARRAYS or name in _OPTIONAL:
                    _, tail, item = {**_ARRAYS, **_OPTIONAL}[name]
                    limit = rows * cols * int(np.prod(tail or (1,))) * item + 4096
                    if info.file_size > limit:
                        raise UsageError(f"{bad}: {name} is {info.file_size:,} bytes, more than a {cols}x{rows} "
                                         f"grid needs; run `mosaic make` again")
        with np.load(npath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _ARRAYS}
            arrays.update({k: z[k] for k in _OPTIONAL if k in z.files})
    except UsageError:
        raise
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{bad} ({e}); run `mosaic make` again") from None
    for name, (kinds, tail, item) in {**_ARRAYS, **_OPTIONAL}.items():
        a = arrays.get(name)
        if a is None:
            continue
        if a.dtype.kind not in kinds or a.shape != (rows, cols, *tail) or a.dtype.itemsize > item:
            want = {"iu": "whole numbers (tile ids)", "u": "uint8 orientation codes"}.get(kinds, "floating-point numbers")
            raise UsageError(f"{bad}: {name} is {a.dtype} of shape {a.shape}, expected {want} of shape "
                             f"{(rows, cols, *tail)} for its grid; run `mosaic make` again")
        if kinds == "f" and not np.isfinite(a).all():
            raise UsageError(f"{bad}: {name} holds non-finite values; run `mosaic make` again")
    if (arrays["tile_ids"] < 0).any() or arrays["tile_ids"].max(initial=0) > 2 ** 62:
        raise UsageError(f"{bad}: negative tile ids; run `mosaic make` again")
    if "orient" in arrays and arrays["orient"].max(initial=0) > 7:
        raise UsageError(f"{bad}: orient holds codes above 7 (there are 8 orientations); run `mosaic make` again")
    arrays["tile_ids"] = arrays["tile_ids"].astype(np.int64)
    arrays["cost"] = arrays["cost"].astype(np.float32)
    for k in ("target_mean", "target_std"):
        arrays[k] = np.clip(arrays[k], 0, 255).astype(np.float32)
    return arrays
