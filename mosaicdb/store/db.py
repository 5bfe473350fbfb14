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

import hashlib
import json
import numbers
import os
import threading
import time
from pathlib import Path

import numpy as np

from .. import feature_kinds
from ..errors import DatabaseError, ImageError, UsageError, check_int
from ..index import VectorIndex
from ..io import UnsafeFile, inside, read_regular_file, write_atomic
from . import catalog
from .arrays import RowArray
from .decode import DecodeOptions, open_image, square_resize
from .indexing import IndexLifecycle
from .integrity import KIND_NAMES, Integrity, file_kind
from .ingest import IngestReport
from .lock import WriteLock
from .maintenance import CATALOG, CheckReport, Maintenance
from .repair import Repair, RepairReport
from .writer import TileWriter

DEFAULT_THUMB_SIZES = (8, 16, 32, 64)


def _as_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise UsageError(f"a tile database is a folder path, got {path!r}")
    return Path(path)


def tile_id_arg(value) -> int:
    """A tile id given to the API: a whole number (UsageError otherwise; any size: ids out of
    range are simply not in the database)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"tile ids are whole numbers, got {value!r}")
    return int(value)


def check_settings(meta: dict, path: Path) -> dict:
    """The catalog's settings, checked: a damaged or tampered catalog is a DatabaseError here,
    not a crash (or a 20 GB allocation) later."""
    try:
        out = {"thumb_sizes": _validate_sizes(meta["thumb_sizes"]),
               "features": feature_kinds.from_meta(meta),
               "features_file": feature_kinds.features_file(meta),
               "background": tuple(check_int("background", int(c), 0, 255) for c in meta["background"]),
               "max_pixels": check_int("max_pixels", meta["max_pixels"], 1)}
        check_int("next_id", meta["next_id"], 0, 1 << 62)
        check_int("version", meta["version"], 0)
        if len(out["background"]) != 3:
            raise UsageError("background must hold 3 values")
    except (KeyError, TypeError, ValueError, UsageError, AttributeError) as e:
        raise DatabaseError(f"{path / CATALOG}: its settings are damaged ({e}); restore it from a copy "
                            "or rebuild the database") from None
    return out


def _validate_sizes(sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted(set(check_int("--thumb-sizes", s, 1, 4096) for s in sizes)))
    except TypeError:
        raise UsageError(f"--thumb-sizes must be a list of powers of two, got {sizes!r}") from None
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
        self._con = catalog.connect(self.path / CATALOG, readonly=readonly)
        if not readonly:
            catalog.upgrade(self._con)
        self.meta = catalog.get_meta(self._con)
        settings = check_settings(self.meta, self.path)
        self.thumb_sizes = settings["thumb_sizes"]
        self._open_features(settings["features"])
        self.decode_options = DecodeOptions(settings["background"], settings["max_pixels"])
        self.lock = WriteLock(self.path, on_acquire=self._reload_features)
        self._thumbs = {s: RowArray(self.path / f"thumbs_{s}.u8", (s, s, 3), np.uint8) for s in self.thumb_sizes}
        self._index: VectorIndex | None = None
        special = self.special_problems()
        if special:  # before anything opens them: a FIFO would block, a folder fail oddly
            self._con.close()
            raise DatabaseError(f"{self.path}: {special[0]}")
        self._init_integrity()
        self._read_lock = threading.Lock()  # one connection, shared by render threads

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, thumb_sizes=DEFAULT_THUMB_SIZES, features: str = feature_kinds.DEFAULT_KIND,
               feature_grid: int | None = None, mean_weight: float | None = None,
               background=(255, 255, 255), max_pixels: int = DecodeOptions.max_pixels) -> "TileDB":
        """A new, empty tile database folder at `path` (it must not exist, or be empty). `thumb_sizes`:
        the square thumbnails kept per tile; `features`: the feature kind (see `feature_kinds`;
        `feature_grid` and `mean_weight` apply to `lab-grid` only); transparent pixels are composited on
        `background`; images over `max_pixels` are refused."""
        path = _as_path(path)
        if os.path.lexists(path / CATALOG):
            if file_kind(path / CATALOG) != "file":
                raise DatabaseError(f"{path / CATALOG} exists and is not a regular file: remove it, or choose a new "
                                    "path for the database")
            raise DatabaseError(f"{path} is already a tile database")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise DatabaseError(f"{path} exists and is not an empty folder: choose a new path for the database")
        sizes = _validate_sizes(thumb_sizes)
        spec = feature_kinds.spec_for(features, feature_grid, mean_weight)
        check_int("--max-pixels", max_pixels, 1)
        try:
            background = tuple(background)
            if len(background) != 3:
                raise ValueError
            background = tuple(check_int("--background", c, 0, 255) for c in background)
        except (TypeError, ValueError):
            raise UsageError(f"--background must be three values 0-255, got {background!r}") from None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseError(f"cannot create the database folder {path}: {e.strerror or e}") from None

        def write_catalog(tmp: Path) -> None:
            con = catalog.connect(tmp)
            catalog.create(con, {"thumb_sizes": list(sizes), **feature_kinds.to_meta(spec),
                                 "background": [int(c) for c in background],
                                 "max_pixels": int(max_pixels), "created": time.time()})
            con.execute("PRAGMA journal_mode=DELETE")  # fold the WAL into the file before the rename
            con.close()

        write_atomic(path / CATALOG, write_catalog)
        return cls(path)

    @staticmethod
    def writable(path) -> bool:
        """Whether the database folder and its catalog can be written (not a read-only mount,
        not another user's files)."""
        return all(os.access(p, os.W_OK) for p in (Path(path), Path(path) / CATALOG))

    @staticmethod
    def exists(path) -> bool:
        """Whether `path` is a tile database folder (it holds a catalog)."""
        return bool(path) and (Path(path) / CATALOG).is_file()

    @classmethod
    def open(cls, path, readonly: bool = False) -> "TileDB":
        """An existing database (`TileDB.create` makes a new one)."""
        path = _as_path(path)
        for name in (CATALOG, CATALOG + "-wal", CATALOG + "-shm"):
            kind = file_kind(path / name)
            if kind not in (None, "file"):  # a FIFO would block sqlite, a link lead it elsewhere
                raise DatabaseError(f"{path / name} is {KIND_NAMES[kind]}, not a regular file: a tile database's "
                                    "catalog must be a real file inside it (restore it from a copy)")
        if not (path / CATALOG).is_file():
            what = "does not exist" if not path.exists() else "is not a tile database"
            raise DatabaseError(f"{path} {what}: create one with `mosaic db init {path}` "
                                "(in Python: TileDB.create(path))")
        try:
            return cls(path, readonly=readonly)
        except (KeyError, ValueError, TypeError, json.JSONDecodeError, RecursionError) as e:
            raise DatabaseError(f"{path}/{CATALOG} is damaged ({e}): rebuild the database") from None
        except Exception as e:  # sqlite3.DatabaseError: not a database file, etc.
            if type(e).__module__ == "sqlite3":
                if not readonly and not cls.writable(path):
                    raise DatabaseError(f"{path} cannot be written (a read-only folder or mount, or another "
                                        f"user's files): this command changes the database ({e})") from None
                raise DatabaseError(f"{path}/{CATALOG} is not a readable catalog ({e})") from None
            raise

    @classmethod
    def open_or_create(cls, path, **create_options) -> "TileDB":
        """The database at `path`, created (with `create_options`) if there is none yet."""
        return cls.open(path) if (Path(path) / CATALOG).exists() else cls.create(path, **create_options)

    @property
    def con(self):
        """The catalog connection (DatabaseError once the database is closed)."""
        if self._con is None:
            raise DatabaseError(f"the tile database {self.path} is closed")
        return self._con

    def close(self) -> None:
        """Close the catalog (the database is also closed by leaving a `with` block)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def _open_features(self, spec) -> None:
        """The feature kind (checked by check_settings) and the array the catalog names."""
        self.feature_spec = spec
        self.dim = spec.dim
        self._features = RowArray(self.path / feature_kinds.features_file(self.meta), (self.dim,), np.float32)

    def _reload_features(self) -> None:
        """On taking the write lock: another process may have reindexed since we opened."""
        self._refresh()
        spec = check_settings(self.meta, self.path)["features"]
        if feature_kinds.features_file(self.meta) != self._features.path.name or spec != self.feature_spec:
            self._open_features(spec)
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
        """The ids of the tiles in the database (removed tiles excluded), sorted; read-only.

        Kept per catalog version (read from the catalog each call, so another process's change
        is seen): a million ids cost ~0.9 s to read, and every make asks more than once."""
        if self.con.in_transaction:        # a writer mid-change: the version is not bumped yet
            return catalog.live_ids(self.con)
        version = catalog.current_version(self.con)
        cached = getattr(self, "_ids_cache", None)
        if cached is None or cached[0] != version:
            ids = catalog.live_ids(self.con)
            ids.flags.writeable = False
            cached = self._ids_cache = (version, ids)
        return cached[1]

    def missing(self, tile_ids) -> np.ndarray:
        """The distinct ids among `tile_ids` that are not live tiles, sorted (a binary search in
        `ids()`: no sort of the whole pool)."""
        u = np.unique(np.asarray(tile_ids, dtype=np.int64))
        live = self.ids()
        if not len(live):
            return u
        pos = np.minimum(np.searchsorted(live, u), len(live) - 1)
        return u[live[pos] != u]

    def features(self) -> np.ndarray:
        """(next_id, dim) float32 memory map; rows of removed tiles are holes (see `ids()`)."""
        return self._features.read(self.next_id)

    def thumbs(self, size: int) -> np.ndarray:
        """The (next_id, size, size, 3) uint8 thumbnails of that size, memory-mapped; row = tile id."""
        if size not in self._thumbs:
            raise UsageError(f"thumbnail size {size} is not stored; this database has {list(self.thumb_sizes)}")
        return self._thumbs[size].read(self.next_id)

    def tiles(self, ids) -> list[dict]:
        """Catalog rows (dicts, provenance parsed) of tile ids, in the order given; ids not in
        the database are left out. Safe from any thread."""
        ids = [i for i in (tile_id_arg(i) for i in ids) if 0 <= i < (1 << 62)]
        out = {}
        with self._read_lock:
            for i in range(0, len(ids), 900):
                part = ids[i:i + 900]
                for r in self.con.execute(f"SELECT * FROM tiles WHERE id IN ({','.join('?' * len(part))})", part):
                    d = dict(r)
                    try:
                        d["provenance"] = json.loads(d["provenance"])
                    except (TypeError, ValueError):
                        d["provenance"] = {"damaged": str(d["provenance"])[:200]}
                    out[d["id"]] = d
        return [out[i] for i in ids if i in out]

    def tiles_digest(self, tile_ids) -> str:
        """SHA-256 over the (id, content hash) of the distinct tiles in `tile_ids`: what an
        assignment records so it is never drawn from another database's (or copy's) tiles."""
        ids = np.unique(np.asarray(tile_ids, dtype=np.int64))
        hashes = {}
        wanted = [i for i in ids.tolist() if 0 <= i < (1 << 62)]
        with self._read_lock:  # only (id, hash): whole rows with their provenance cost 2x more
            for s in range(0, len(wanted), 900):
                part = wanted[s:s + 900]
                hashes.update(self.con.execute(
                    f"SELECT id, hash FROM tiles WHERE id IN ({','.join('?' * len(part))})", part).fetchall())
        h = hashlib.sha256()
        for i in ids.tolist():
            h.update(f"{i}:{hashes.get(i, '-')}\n".encode())
        return h.hexdigest()

    def blob_root(self, tile: dict) -> Path | None:
        """The folder a tile's original must stay inside: originals/ for copies, the source
        folder it was linked from for --link tiles (`link_root`, recorded at ingest). None for an
        absolute path with no absolute link root recorded: a catalog is untrusted input, and such
        a row would let it name any file on the machine, so it is trusted nowhere."""
        if "\0" in str(tile["blob"]) or "\0" in str(tile.get("link_root") or ""):
            return None  # no path holds a NUL: a damaged or crafted row
        p = Path(tile["blob"])
        if not p.is_absolute():
            return self.path / "originals"
        root = tile.get("link_root")
        if not root or not Path(root).is_absolute() or os.path.realpath(root) == os.path.realpath(os.sep):
            return None  # (the filesystem's root would let a crafted catalog name any file)
        return Path(root)

    def blob_path(self, tile: dict) -> Path:
        """Where a tile's original is; DatabaseError when the catalog points outside its root."""
        p = Path(tile["blob"])
        full = p if p.is_absolute() else self.path / p
        root = self.blob_root(tile)
        # a copy must be inside originals/ and, symlinks resolved, inside the database folder
        if root is None or not inside(full, root) or (not p.is_absolute() and not inside(full, self.path)):
            where = root if root is not None else "any folder it was linked from (no usable link root is recorded)"
            raise DatabaseError(f"tile {tile['id']}: its original's path ({tile['blob']}) leads outside "
                                f"{where}; the catalog is damaged or was tampered with")
        return full

    def original_bytes(self, tile: dict) -> bytes:
        """The bytes of a tile's original (a catalog row): only a regular file inside the tile's
        root, of bounded size, with the hash it was ingested with. DatabaseError otherwise."""
        p = self.blob_path(tile)
        try:
            data = read_regular_file(p, self.decode_options.max_bytes, root=self.blob_root(tile))
            if hashlib.sha256(data).hexdigest() != tile["hash"]:
                raise UnsafeFile(f"{p} changed since it was ingested (its hash differs); `mosaic db repair "
                                 f"{self.path}` reports (and --remove-unrecoverable removes) such tiles")
        except OSError as e:
            raise DatabaseError(f"original of tile {tile['id']} is missing ({p}: {e.strerror}); "
                                f"run `mosaic db check {self.path}`") from None
        except UnsafeFile as e:
            raise DatabaseError(f"original of tile {tile['id']} cannot be read safely: {e}") from None
        return data

    def load_original(self, tile_id: int, max_side: int = 0):
        """The tile's original, normalised (EXIF, alpha, colour) as a full-resolution RGB PIL image
        (with `max_side`, its long side at most that: JPEG decoded at a reduced scale, other formats
        box-reduced right after decoding). Only a regular file inside the tile's root, of bounded
        size, with the hash it was ingested with, is read (`original_bytes`)."""
        rows = self.tiles([tile_id])
        if not rows:
            raise DatabaseError(f"no tile {tile_id} in {self.path}")
        data = self.original_bytes(rows[0])
        try:
            return open_image(data, self.decode_options, max_side=max_side)[0]
        except ImageError as e:
            raise DatabaseError(f"original of tile {tile_id} ({self.blob_path(rows[0])}) no longer decodes ({e}); "
                                f"run `mosaic db check --deep {self.path}`") from None

    def tile_pixels(self, tile_id: int, size: int) -> np.ndarray:
        """Square size x size pixels of one tile: from thumbnails when they reach `size`, else the original."""
        tile_id, size = tile_id_arg(tile_id), check_int("size", size, 1, 4096)
        if not 0 <= tile_id < (1 << 62):
            raise UsageError(f"no tile {tile_id} in {self.path}")
        if not self.tiles([tile_id]):
            raise UsageError(f"no tile {tile_id} in {self.path}")
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
        """The inputs that were skipped, with why and when: [{source, reason, at}]."""
        return [dict(r) for r in self.con.execute("SELECT source, reason, at FROM errors ORDER BY source")]

__all__ = ["TileDB", "CheckReport", "IngestReport", "RepairReport", "DEFAULT_THUMB_SIZES"]


def open_for_assignment(recorded: str, recorded_uuid: str | None, tile_ids, override=None,
                        fallback=None, *, digest: str | None = None) -> TileDB:
    """The tile database an assignment was made from, read-only: `override` (--db) if given,
    else the path it recorded. A database at the recorded path that is not the one it was
    made from (another uuid: recreated or replaced) is refused; an explicit --db is accepted
    when it holds every tile of the assignment. `fallback` ($MOSAICDB_DB) stands in for the
    recorded path only when no database is left there, and is held to the same uuid check: an
    implicit default finds a moved database, it never swaps in another one. `digest` (the
    assignment's `tiles_digest`) must match the tiles found: a copy of the database that has
    since diverged, or any other set of tiles under the same ids, is refused."""
    implicit = bool(not override and fallback and not TileDB.exists(recorded))
    path = override or (fallback if implicit else recorded)
    if not path:
        raise UsageError("the assignment names no tile database: give --db")
    try:
        db = TileDB.open(path, readonly=True)
    except DatabaseError as e:
        hint = "" if override else " (moved? pass its new place with --db or $MOSAICDB_DB)"
        raise DatabaseError(f"{e}{hint}") from None
    try:
        if recorded_uuid and db.uuid and db.uuid != recorded_uuid:
            if not override:
                where = f"$MOSAICDB_DB ({path})" if implicit else path
                raise DatabaseError(f"{where} is not the tile database this assignment was made from (it was "
                                    "recreated or replaced since): pass --db to use it anyway")
            gone = db.missing(tile_ids)
            if len(gone):
                raise DatabaseError(f"--db {path} is another database than this assignment's and lacks {len(gone)} "
                                    f"of its tiles (e.g. id {gone[0]}): it cannot draw this mosaic")
        if digest:
            gone = db.missing(tile_ids)
            if len(gone):  # the common case, said plainly: tiles removed since
                raise DatabaseError(f"{len(gone)} tiles of this assignment are no longer in {path} (e.g. id "
                                    f"{gone[0]}): run `mosaic make` again")
        if digest and db.tiles_digest(tile_ids) != digest:
            raise DatabaseError(f"the tiles in {path} are not the ones this assignment was made with (a copy of the "
                                "database that has changed since, or another one): make the mosaic again from it")
    except BaseException:
        db.close()
        raise
    return db
