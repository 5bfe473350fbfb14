"""What the viewer's JSON API answers: the mosaic's grid, and for a cell the tile placed there,
its distance to the target cell and where it came from; originals of the assignment's tiles."""
from __future__ import annotations

import io
import logging
import threading

import numpy as np

from ..assignment import SavedAssignment
from ..errors import DatabaseError
from ..orient import describe as orient_name
from .tilesource import NotFound, BadRequest

log = logging.getLogger(__name__)

GENERATION_KEYS = ("prompt", "negative", "seed", "model", "steps", "guidance", "recipe", "style",
                   # a tile generated for its cell (`mosaic generate cells`, `make --generate-worst`)
                   "kind", "cell", "run", "guidance_weight", "adain", "noise", "scheduler")
JPEG_ABOVE_PIXELS = 4_000_000   # converted originals: PNG up to this size, JPEG beyond
ORIGINAL_MAX_SIDE = 2048        # originals are sent at most this long: a browser panel, not a print
# A 225 MP PNG under the --max-pixels limit still decodes to ~0.9 GB before it is reduced:
# bound how many such decodes run at once so parallel requests cannot add those up.
ORIGINAL_DECODE_SLOTS = 2


class MosaicAPI:
    """Cell and original look-ups for one saved assignment and its (read-only) tile database;
    with `subs` (recursive.SubMosaics), also for the cells of its tiles' sub-mosaics."""

    def __init__(self, saved: SavedAssignment, db, width: int, height: int, subs=None):
        self.saved, self.db, self.subs = saved, db, subs
        self.width, self.height = width, height
        self.allowed = set(np.unique(saved.tile_ids).tolist())
        self._decode_slots = threading.BoundedSemaphore(ORIGINAL_DECODE_SLOTS)

    @property
    def depth(self) -> int:
        return self.subs.opts.depth if self.subs is not None else 0

    def info(self) -> dict:
        target = self.saved.meta.target
        out = {"width": self.width, "height": self.height, "cols": self.saved.cols, "rows": self.saved.rows,
               "distinct_tiles": len(self.allowed), "db": str(self.db.path),
               "target": target.path if target is not None else None,
               "mean_distance": float(self.saved.cost.mean())}
        if self.subs is not None:
            out["recursive"] = {"depth": self.depth, "grid": self.subs.opts.grid,
                                "tile_px": self.width // (self.saved.cols * self.subs.opts.zoom)}
        return out

    def cell(self, row: int, col: int) -> dict:
        """The tile in cell (row, col) of the mosaic, and where it came from."""
        return self.cell_path([(row, col)])

    def cell_path(self, steps: list[tuple[int, int]]) -> dict:
        """The tile at a path of cells: (row, col) in the mosaic, then (row, col) in that tile's
        sub-mosaic, and so on; the deepest is described in full, every step in `path`."""
        if len(steps) - 1 > self.depth:
            raise NotFound(f"depth {len(steps) - 1} is beyond this mosaic's recursion (--recursive {self.depth})")
        saved, path, tid = self.saved, [], None
        for i, (row, col) in enumerate(steps):
            if i:
                saved = self.subs.node(tid).cells.saved
            if not (0 <= row < saved.rows and 0 <= col < saved.cols):
                where = "the" if i == 0 else f"tile {tid}'s sub-mosaic's"
                raise BadRequest(f"cell ({row}, {col}) is outside {where} {saved.rows} x {saved.cols} grid")
            tid = int(saved.tile_ids[row, col])
            path.append({"row": row, "col": col, "tile_id": tid, "distance": round(float(saved.cost[row, col]), 3)})
        out = self._describe(saved, *steps[-1])
        out.update(path=path, depth=len(steps) - 1)
        return out

    def _describe(self, saved: SavedAssignment, row: int, col: int) -> dict:
        tid = int(saved.tile_ids[row, col])
        out = {"row": row, "col": col, "tile_id": tid, "distance": round(float(saved.cost[row, col]), 3),
               "original_url": f"/tile/{tid}/original"}
        turn = 0 if saved.orient is None else int(saved.orient[row, col])
        if turn:
            out["orientation"] = {"code": turn, "name": orient_name(turn)}
        rows = self.db.tiles([tid])
        if not rows:
            out["missing"] = f"tile {tid} is no longer in the database"
            return out
        t = rows[0]
        prov = t["provenance"] or {}
        out.update(source=t["source"], origin=t["origin"], width=t["width"], height=t["height"],
                   format=t["format"], provenance=prov)
        gen = {k: prov[k] for k in GENERATION_KEYS if prov.get(k) is not None}
        if gen.get("prompt") is not None:
            out["generation"] = gen
        return out

    def original(self, tile_id: int) -> tuple[bytes, str]:
        """The original of a tile of this mosaic, decoded and encoded again (PNG, or JPEG when
        large): never a file's bytes as stored, so nothing but an image can come out."""
        if tile_id not in self.allowed and not (self.subs is not None and self.subs.shown(tile_id)):
            raise NotFound(f"tile {tile_id} is not in this mosaic")
        with self._decode_slots:
            try:
                img = self.db.load_original(tile_id, max_side=ORIGINAL_MAX_SIDE)
            except DatabaseError as e:
                # the reason stays on this machine: a crafted catalog could otherwise learn which
                # files exist (missing, or another hash?) and where the database is, by asking
                log.warning("tile %d: %s", tile_id, e)
                raise NotFound(f"the original of tile {tile_id} is not available (the server's log says why)") from None
            buf = io.BytesIO()
            if img.width * img.height > JPEG_ABOVE_PIXELS:
                img.save(buf, "JPEG", quality=90)
                return buf.getvalue(), "image/jpeg"
            img.save(buf, "PNG", compress_level=3)
            return buf.getvalue(), "image/png"
