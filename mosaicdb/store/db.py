"""TileDB: the tile database's user API.

This module opens and reads a database; the rest of the API comes in along its seams:
writing (`writer.TileWriter`: ingest, add_images, remove, find), the vector index
(`indexing.IndexLifecycle`: build, update, search), upkeep (`maintenance.Maintenance`: stats,
check), trust in the arrays (`integrity.Integrity`: checksums, verified reads) and
`repair.Repair` (rebuild what was lost from the originals).

Layout of a database folder:
    catalog.sqlite          tiles, sources seen, skipped inputs, settings (WAL mode)
    originals/ab/<sha256>.<ext>   full-resolution originals, content-addressed
    features.f32            (next_id, dim) float32 features, row = tile id (the catalog's
                            `features_file` names it after a `mosaic db reindex`)
    thumbs_<s>.u8           (next_id, s, s, 3) uint8 square thumbnails, one file per size
    index/                  index.faiss, ids.npy, index_infos.json
    lock                    held (flock) by the one writer
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import DatabaseError, ImageError, UsageError
from .. import feature_kinds
from ..index import VectorIndex
from ..io import UnsafeFile, inside, read_regular_file, write_atomic
from . import catalog
from .arrays import RowArray
from .decode import DecodeOptions, open_image, square_resize
from .indexing import IndexLifecycle
from .integrity import Integrity
from .ingest import IngestReport
from .lock import WriteLock
from .maintenance import CATALOG, CheckReport, Maintenance
from .repair import Repair, RepairReport
from .writer import TileWriter

DEFAULT_THUMB_SIZES = (8, 16, 32, 64)


def _validate_sizes(sizes) -> tuple[int, ...]:
    sizes = tuple(sorted(set(int(s) for s in sizes)))
    if not sizes or any(s < 4 or s > 1024 or s & (s - 1) for s in sizes):
        raise UsageError(f"--thumb-sizes must be powers of two between 4 and 1024, got {sizes}")
    if any(b != 2 * a for a, b in zip(sizes, sizes[1:])):
        raise UsageError(f"--thumb-sizes must be consecutive powers of two (e.g. 8,16,32,64), got {sizes}")
    return sizes


class TileDB(TileWriter, IndexLifecycle, Maintenance, Integrity, Repair):
    """A tile database folder: tiles at full resolution with their provenance, thumbnails and
    features by tile id, and a FAISS index over the features.

    >>> db = TileDB.create("tiles.db")                  # doctest: +SKIP
    >>> db.ingest(["~/Pictures"], progress=True)         # doctest: +SKIP
    >>> d, ids = db.search(features, k=16)               # doctest: +SKIP

    Open an existing one with `TileDB.open(path)` (read-only with `readonly=True`); use it as
    a context manager to close it. One process writes at a time (a lock names the holder).
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.con = catalog.connect(self.path / CATALOG, readonly=readonly)
        if not readonly:
            catalog.upgrade(self.con)
        self.meta = catalog.get_meta(self.con)
        self.thumb_sizes = tuple(self.meta["thumb_sizes"])
        self._open_features()
        self.decode_options = DecodeOptions(tuple(self.meta["background"]), int(self.meta["max_pixels"]))
        self.lock = WriteLock(self.path, on_acquire=self._reload_features)
        self._thumbs = {s: RowArray(self.path / f"thumbs_{s}.u8", (s, s, 3), np.uint8) for s in self.thumb_sizes}
        self._index: VectorIndex | None = None
        self._init_integrity()
        self._read_lock = threading.Lock()  # one connection, shared by render threads

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, thumb_sizes=DEFAULT_THUMB_SIZES, features: str = feature_kinds.DEFAULT_KIND,
               feature_grid: int | None = None, mean_weight: float | None = None,
               background=(255, 255, 255), max_pixels: int = DecodeOptions.max_pixels) -> "TileDB":
        path = Path(path)
        if (path / CATALOG).exists():
            raise DatabaseError(f"{path} is already a tile database")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise DatabaseError(f"{path} exists and is not an empty folder: choose a new path for the database")
        sizes = _validate_sizes(thumb_sizes)
        spec = feature_kinds.spec_for(features, feature_grid, mean_weight)
        if len(tuple(background)) != 3 or not all(0 <= int(c) <= 255 for c in background):
            raise UsageError(f"--background must be three values 0-255, got {background}")
        path.mkdir(parents=True, exist_ok=True)

        def write_catalog(tmp: Path) -> None:
            con = catalog.connect(tmp)
            catalog.create(con, {"thumb_sizes": list(sizes), **feature_kinds.to_meta(spec),
                                 "background": [int(c) for c in background],
                                 "max_pixels": int(max_pixels), "created": time.time()})
            con.execute("PRAGMA journal_mode=DELETE")  # fold the WAL into the file before the rename
            con.close()

        write_atomic(path / CATALOG, write_catalog)
        return cls(path)

    @classmethod
    def open(cls, path, readonly: bool = False) -> "TileDB":
        """An existing database (`TileDB.create` makes a new one)."""
        path = Path(path)
        if not (path / CATALOG).is_file():
            what = "does not exist" if not path.exists() else "is not a tile database"
            raise DatabaseError(f"{path} {what}: create one with `mosaic db init {path}` "
                                "(in Python: TileDB.create(path))")
        try:
            return cls(path, readonly=readonly)
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            raise DatabaseError(f"{path}/{CATALOG} is damaged ({e}): rebuild the database") from None
        except Exception as e:  # sqlite3.DatabaseError: not a database file, etc.
            if type(e).__module__ == "sqlite3":
                raise DatabaseError(f"{path}/{CATALOG} is not a readable catalog ({e})") from None
            raise

    @classmethod
    def open_or_create(cls, path, **create_options) -> "TileDB":
        """The database at `path`, created (with `create_options`) if there is none yet."""
        return cls.open(path) if (Path(path) / CATALOG).exists() else cls.create(path, **create_options)

    def close(self) -> None:
        self.con.close()

    def _open_features(self) -> None:
        """The feature kind and array the catalog names."""
        self.feature_spec = feature_kinds.from_meta(self.meta)
        self.dim = self.feature_spec.dim
        self._features = RowArray(self.path / feature_kinds.features_file(self.meta), (self.dim,), np.float32)

    def _reload_features(self) -> None:
        """On taking the write lock: another process may have reindexed since we opened."""
        self._refresh()
        if feature_kinds.features_file(self.meta) != self._features.path.name or \
                feature_kinds.from_meta(self.meta) != self.feature_spec:
            self._open_features()
            self._index = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- reading -----------------------------------------------------------------------------
    def _refresh(self) -> None:
        self.meta = catalog.get_meta(self.con)

    @property
    def next_id(self) -> int:
        return int(self.meta["next_id"])

    @property
    def version(self) -> int:
        return int(self.meta["version"])

    @property
    def uuid(self) -> str | None:
        """The database's identity, recorded in every assignment made from it (None for a
        database made by an older mosaicdb and opened read-only since)."""
        return self.meta.get("uuid")

    def __len__(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]

    def ids(self) -> np.ndarray:
        return catalog.live_ids(self.con)

    def features(self) -> np.ndarray:
        """(next_id, dim) float32 memory map; rows of removed tiles are holes (see `ids()`)."""
        return self._features.read(self.next_id)

    def thumbs(self, size: int) -> np.ndarray:
        if size not in self._thumbs:
            raise UsageError(f"thumbnail size {size} is not stored; this database has {list(self.thumb_sizes)}")
        return self._thumbs[size].read(self.next_id)

    def tiles(self, ids) -> list[dict]:
        """Catalog rows (dicts, provenance parsed) of tile ids, in the order given; safe from any thread."""
        ids = [int(i) for i in ids]
        out = {}
        with self._read_lock:
            for i in range(0, len(ids), 900):
                part = ids[i:i + 900]
                for r in self.con.execute(f"SELECT * FROM tiles WHERE id IN ({','.join('?' * len(part))})", part):
                    d = dict(r)
                    d["provenance"] = json.loads(d["provenance"])
                    out[d["id"]] = d
        return [out[i] for i in ids if i in out]

    def blob_root(self, tile: dict) -> Path:
        """The folder a tile's original must stay inside: originals/ for copies, the source
        folder it was linked from for --link tiles (its own folder for older databases)."""
        p = Path(tile["blob"])
        if not p.is_absolute():
            return self.path / "originals"
        return Path(tile.get("link_root") or p.parent)

    def blob_path(self, tile: dict) -> Path:
        """Where a tile's original is; DatabaseError when the catalog points outside its root."""
        p = Path(tile["blob"])
        full = p if p.is_absolute() else self.path / p
        if not inside(full, self.blob_root(tile)):
            raise DatabaseError(f"tile {tile['id']}: its original's path ({tile['blob']}) leads outside "
                                f"{self.blob_root(tile)}; the catalog is damaged or was tampered with")
        return full

    def load_original(self, tile_id: int):
        """The tile's original, normalised (EXIF, alpha, colour) as a full-resolution RGB PIL image.
        Only a regular file inside the tile's root, of bounded size, is read."""
        rows = self.tiles([tile_id])
        if not rows:
            raise DatabaseError(f"no tile {tile_id} in {self.path}")
        p = self.blob_path(rows[0])
        try:
            data = read_regular_file(p, self.decode_options.max_bytes, root=self.blob_root(rows[0]))
        except OSError as e:
            raise DatabaseError(f"original of tile {tile_id} is missing ({p}: {e.strerror}); "
                                f"run `mosaic db check {self.path}`") from None
        except UnsafeFile as e:
            raise DatabaseError(f"original of tile {tile_id} cannot be read safely: {e}") from None
        try:
            return open_image(data, self.decode_options)[0]
        except ImageError as e:
            raise DatabaseError(f"original of tile {tile_id} ({p}) no longer decodes ({e}); "
                                f"run `mosaic db check --deep {self.path}`") from None

    def tile_pixels(self, tile_id: int, size: int) -> np.ndarray:
        """Square size x size pixels of one tile: from thumbnails when they reach `size`, else the original."""
        for s in self.thumb_sizes:
            if s >= size:
                self.check_rows(f"thumbs_{s}", [tile_id])
                t = self._thumbs[s].read(self.next_id)[tile_id]
                if s == size:
                    return np.array(t)
                import cv2
                return cv2.resize(np.asarray(t), (size, size), interpolation=cv2.INTER_AREA)
        return np.asarray(square_resize(self.load_original(tile_id), size))

    def errors(self) -> list[dict]:
        return [dict(r) for r in self.con.execute("SELECT source, reason, at FROM errors ORDER BY source")]

__all__ = ["TileDB", "CheckReport", "IngestReport", "RepairReport", "DEFAULT_THUMB_SIZES"]


def open_for_assignment(recorded: str, recorded_uuid: str | None, tile_ids, override=None) -> TileDB:
    """The tile database an assignment was made from, read-only: `override` (--db) if given,
    else the path it recorded. A database at the recorded path that is not the one it was
    made from (another uuid: recreated or replaced) is refused; an explicit --db is accepted
    when it holds every tile of the assignment."""
    path = override or recorded
    if not path:
        raise UsageError("the assignment names no tile database: give --db")
    try:
        db = TileDB.open(path, readonly=True)
    except DatabaseError as e:
        hint = "" if override else " (moved? pass its new place with --db)"
        raise DatabaseError(f"{e}{hint}") from None
    try:
        if recorded_uuid and db.uuid and db.uuid != recorded_uuid:
            if not override:
                raise DatabaseError(f"{path} is not the tile database this assignment was made from (it was "
                                    "recreated or replaced since): pass --db to use it anyway")
            gone = np.setdiff1d(np.unique(np.asarray(tile_ids)), db.ids())
            if len(gone):
                raise DatabaseError(f"--db {path} is another database than this assignment's and lacks {len(gone)} "
                                    f"of its tiles (e.g. id {gone[0]}): it cannot draw this mosaic")
    except BaseException:
        db.close()
        raise
    return db
