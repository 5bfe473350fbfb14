"""Sub-mosaics: a tile's original, matched against the same database with the same options (the
tile itself excluded), as a grid x grid assignment of its own.

Each is computed once, on first use, and kept twice: in memory (a byte-bounded LRU; one
computation per tile even when many requests ask at once, the others wait), and on disk in
DB/recursive/<tile id>-<key>.mosaic.json/.npz, written atomically. The key hashes the tile's
content, the database's identity and version (any change to its set of tiles), the match
options and the grid, so a changed pool or option never reuses a stale file. A cached file is
untrusted input: it is loaded with the bounded, checked reader of every assignment, and used
only when it names its own key and tile, has the grid asked for, leaves the tile out and draws
only tiles the database holds with the content they had (tiles digest); otherwise it is
computed again and replaced.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import assignment as asg
from ..errors import MatchError, UsageError
from ..match.grid import cell_data, make_grid
from ..match.matcher import match
from ..match.options import MatchOptions
from ..render.cells import CellRenderer, OnceLRU, PixelCache
from ..render.options import RenderOptions
from ..render.region import Node
from .options import RecursiveOptions

log = logging.getLogger(__name__)

CACHE_DIR = "recursive"
KEY_VERSION = 2                  # 2: sub-mosaics dithered (--dither), whatever older files say
MATCH_SLOTS = 2                  # sub-mosaics matched at once: FAISS and numba use every core anyway
NODE_CACHE_BYTES = 256 << 20     # sub-assignments kept in memory (~150 KB each at 64 x 64)


def sub_match_options(parent: dict | None, grid: int) -> MatchOptions:
    """The mosaic's own match options, on a grid x grid sub-mosaic. A mosaic whose tiles may be
    turned (--orient) is refused: each sub-mosaic would have to turn with its tile."""
    try:
        mopts = MatchOptions.from_json(parent or {})
    except UsageError as e:  # a saved file's value, not an option given now: say where it comes from
        raise UsageError(f"this mosaic's saved match options are damaged ({e}); run `mosaic make` again") from None
    if mopts.orient != "none":
        raise UsageError(f"this mosaic was matched with --orient {mopts.orient}: its tiles are turned, and "
                         "recursive sub-mosaics are not; serve it without --recursive, or make it without --orient")
    return replace(mopts, grid=f"{grid}x{grid}")


def cache_key(db, tile: dict, mopts: MatchOptions, grid: int) -> str:
    """What a sub-mosaic depends on, hashed: the tile (id and content), the pool (database
    identity and version), the features, the match options and the grid."""
    spec = {"v": KEY_VERSION, "tile": int(tile["id"]), "hash": tile["hash"], "db": db.uuid, "version": db.version,
            "features": [db.feature_spec.kind, db.feature_spec.params()], "match": mopts.to_json(), "grid": grid}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def compute(db, tile: dict, mopts: MatchOptions, grid: int, ropts: RenderOptions, key: str) -> asg.SavedAssignment:
    """Match the tile's original (its centre square) on a grid x grid grid, excluding the tile."""
    tid = int(tile["id"])
    img = np.asarray(db.load_original(tid))
    g = make_grid(img.shape[1], img.shape[0], f"{grid}x{grid}")
    cells = cell_data(img, g, db.feature_spec)
    res = match(db, cells, g, mopts, exclude=[tid])
    meta = asg.AssignmentMeta(
        grid=asg.GridInfo(g.cols, g.rows, g.crop, mopts.grid_spec), db=str(Path(db.path).resolve()),
        db_uuid=db.uuid, db_version=db.version, tiles_digest=db.tiles_digest(res.assignment.tile_ids),
        target=asg.TargetInfo(f"tile:{tid}", tile["hash"], (img.shape[1], img.shape[0])),
        match=res.options.to_json(), render=ropts.to_json(), widened_cells=res.assignment.widened_cells,
        created=time.time(), extra={"recursive": {"tile_id": tid, "key": key}})
    return asg.SavedAssignment(meta, res.assignment.tile_ids, res.assignment.cost, cells.mean, cells.std)


def valid_cached(db, saved: asg.SavedAssignment, tid: int, key: str, grid: int) -> str | None:
    """Why a sub-mosaic read from disk cannot be used, or None when it can."""
    rec = saved.meta.extra.get("recursive") if isinstance(saved.meta.extra, dict) else None
    if not isinstance(rec, dict) or rec.get("key") != key or rec.get("tile_id") != tid:
        return "it is not the sub-mosaic of this tile and these options"
    if (saved.rows, saved.cols) != (grid, grid):
        return f"it is {saved.cols}x{saved.rows} cells, not {grid}x{grid}"
    if (saved.tile_ids == tid).any():
        return "it holds the tile it is made of"
    if len(db.missing(saved.tile_ids)):
        return "it draws tiles the database no longer holds"
    if saved.meta.tiles_digest != db.tiles_digest(saved.tile_ids):
        return "its tiles' content differs from the database's"
    return None


class SubMosaics:
    """The sub-mosaic of any tile of a database, for a mosaic's options: computed lazily, once
    per tile, cached in memory and in DB/recursive/. `node(tile_id)` is safe from any thread."""

    def __init__(self, db, parent: asg.SavedAssignment, ropts: RenderOptions, opts: RecursiveOptions, *,
                 pixel_cache: PixelCache | None = None, budget: int = NODE_CACHE_BYTES, disk: bool = True):
        self.db, self.opts = db, opts
        self.mopts = sub_match_options(parent.meta.match, opts.grid)
        if self.mopts.dither_weight and db.feature_spec.sub_columns() is None:
            # the mosaic's weight, not an option given now: its sub-mosaics go without, as `make` would
            self.mopts = replace(self.mopts, dither=0.0)
        if parent.orient is not None:  # turned whatever its saved options say (edited, or made by the API)
            raise UsageError("this mosaic's assignment turns some of its tiles, and recursive sub-mosaics do not "
                             "turn: serve it without --recursive")
        try:
            self.mopts.resolved(opts.grid, opts.grid, max(0, len(db) - 1))
        except MatchError as e:
            raise UsageError(f"--recursive: a {opts.grid}x{opts.grid} sub-mosaic cannot be matched with this "
                             f"mosaic's options ({e}); use a smaller --recursive-grid") from None
        db.ensure_index()  # once, here: a stale or missing index is an error before serving
        # blend tints each cell with its target's pixels: a sub-mosaic's target is a tile's
        # original, which would be decoded per sub-mosaic drawn; meanstd is its cheap likeness
        self.ropts = replace(ropts, color="meanstd") if ropts.color == "blend" else ropts
        self.pixel_cache = pixel_cache or PixelCache(db, ())
        self.folder = Path(db.path) / CACHE_DIR
        self.disk = disk and self._usable_folder()
        self._nodes = OnceLRU(budget, lambda n: sum(a.nbytes for a in (
            n.cells.saved.tile_ids, n.cells.saved.cost, n.cells.saved.target_mean, n.cells.saved.target_std)))
        self._slots = threading.BoundedSemaphore(MATCH_SLOTS)
        self._lock = threading.Lock()
        self._allowed: set[int] = set()
        self.computed = 0
        self.loaded = 0
        # the first match of a process loads numba's compiled kernels and warms FAISS (~1 s):
        # done now, beside serving, rather than inside the first view of a sub-mosaic
        self._warm = threading.Thread(target=self._warm_up, name="submosaic-warm-up", daemon=True)
        self._warm.start()

    def close(self, timeout: float = 60.0) -> None:
        """Wait for the warm-up and any sub-mosaic being matched: both read the database, and
        closing it under them can crash sqlite. Later matches wait for ever (the database is
        going away). Call before closing the database."""
        deadline = time.monotonic() + timeout
        self._warm.join(timeout)
        for _ in range(MATCH_SLOTS):  # every slot taken: the matches in flight have ended
            if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                log.warning("a sub-mosaic was still being matched after %.0f s while closing", timeout)
                return

    def _warm_up(self) -> None:
        try:
            tid = int(self.db.ids()[0])
            img = np.full((8, 8, 3), 128, np.uint8)
            g = make_grid(8, 8, "2x2")
            with self._slots:
                match(self.db, cell_data(img, g, self.db.feature_spec), g,
                      replace(self.mopts, grid="2x2", min_distance=0, unique=False), exclude=[tid])
        except Exception:  # only a warm-up: a real failure shows on the first real match
            log.debug("sub-mosaic warm-up failed", exc_info=True)

    def _usable_folder(self) -> bool:
        if self.folder.is_symlink():
            log.warning("%s is a symbolic link: sub-mosaics are kept in memory only", self.folder)
            return False
        return True

    def node(self, tile_id: int) -> Node:
        """The sub-mosaic of tile `tile_id`, ready to draw."""
        node = self._nodes.get_or_make(int(tile_id), lambda: self._make(int(tile_id)))
        with self._lock:
            self._allowed.update(np.unique(node.cells.saved.tile_ids).tolist())
        return node

    def child(self, node: Node, row: int, col: int) -> Node:
        """The sub-mosaic drawn in cell (row, col) of `node` (`render.region.Children`)."""
        return self.node(node.tile_id(row, col))

    def shown(self, tile_id: int) -> bool:
        """Is `tile_id` placed in a sub-mosaic made so far?"""
        with self._lock:
            return tile_id in self._allowed

    def _make(self, tid: int) -> Node:
        rows = self.db.tiles([tid])
        if not rows:
            raise MatchError(f"tile {tid} is no longer in {self.db.path}")
        tile = rows[0]
        key = cache_key(self.db, tile, self.mopts, self.opts.grid)
        base = self.folder / f"{tid}-{key}"
        saved = self._read(base, tid, key)
        if saved is None:
            with self._slots:
                saved = compute(self.db, tile, self.mopts, self.opts.grid, self.ropts, key)
            self.computed += 1
            self._write(base, saved)
        else:
            self.loaded += 1
        return Node(CellRenderer(self.db, saved, self.ropts, cache=self.pixel_cache))

    def _read(self, base: Path, tid: int, key: str) -> asg.SavedAssignment | None:
        jpath, _ = asg.sidecar_paths(base)
        if not self.disk or not jpath.exists():
            return None
        try:
            saved = asg.load(jpath)
        except UsageError as e:
            log.warning("sub-mosaic %s is damaged (%s): made again", jpath.name, e)
            return None
        why = valid_cached(self.db, saved, tid, key, self.opts.grid)
        if why:
            log.warning("sub-mosaic %s is not used (%s): made again", jpath.name, why)
            return None
        return saved

    def _write(self, base: Path, saved: asg.SavedAssignment) -> None:
        if not self.disk:
            return
        try:
            self.folder.mkdir(exist_ok=True)
            asg.save(base, saved)
        except OSError as e:  # a read-only database folder: still served, from memory
            log.warning("cannot cache sub-mosaics in %s (%s): they are kept in memory only", self.folder, e)
            self.disk = False
