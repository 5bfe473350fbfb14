"""TileDB: the tile database's user API.

This module opens and reads a database; the rest of the API comes in along its seams:
writing (`writer.TileWriter`: ingest, add_images, remove, find), the vector index
(`indexing.IndexLifecycle`: build, update, search) and upkeep (`maintenance.Maintenance`:
stats, check).

Layout of a database folder:
    catalog.sqlite          tiles, sources seen, skipped inputs, settings (WAL mode)
    originals/ab/<sha256>.<ext>   full-resolution originals, content-addressed
    features.f32            (next_id, dim) float32 Lab features, row = tile id
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

from ..errors import DatabaseError, UsageError
from ..features import feature_dim
from ..index import VectorIndex
from ..io import write_atomic
from . import catalog
from .arrays import RowArray
from .decode import DecodeOptions, open_image, square_resize
from .indexing import IndexLifecycle
from .ingest import IngestReport
from .lock import WriteLock
from .maintenance import CATALOG, CheckReport, Maintenance
from .writer import TileWriter

DEFAULT_THUMB_SIZES = (8, 16, 32, 64)


def _validate_sizes(sizes) -> tuple[int, ...]:
    sizes = tuple(sorted(set(int(s) for s in sizes)))
    if not sizes or any(s < 4 or s > 1024 or s & (s - 1) for s in sizes):
        raise UsageError(f"--thumb-sizes must be powers of two between 4 and 1024, got {sizes}")
    if any(b != 2 * a for a, b in zip(sizes, sizes[1:])):
        raise UsageError(f"--thumb-sizes must be consecutive powers of two (e.g. 8,16,32,64), got {sizes}")
    return sizes


class TileDB(TileWriter, IndexLifecycle, Maintenance):
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
        self.meta = catalog.get_meta(self.con)
        self.thumb_sizes = tuple(self.meta["thumb_sizes"])
        self.feature_grid = int(self.meta["feature_grid"])
        self.mean_weight = float(self.meta["mean_weight"])
        self.dim = feature_dim(self.feature_grid)
        self.decode_options = DecodeOptions(tuple(self.meta["background"]), int(self.meta["max_pixels"]))
        self.lock = WriteLock(self.path)
        self._features = RowArray(self.path / "features.f32", (self.dim,), np.float32)
        self._thumbs = {s: RowArray(self.path / f"thumbs_{s}.u8", (s, s, 3), np.uint8) for s in self.thumb_sizes}
        self._index: VectorIndex | None = None
        self._read_lock = threading.Lock()  # one connection, shared by render threads

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, thumb_sizes=DEFAULT_THUMB_SIZES, feature_grid: int = 4, mean_weight: float = 1.0,
               background=(255, 255, 255), max_pixels: int = DecodeOptions.max_pixels) -> "TileDB":
        """A new, empty tile database folder at `path` (it must not exist, or be empty). `thumb_sizes`:
        the square thumbnails kept per tile; features are the Lab mean (weighted `mean_weight`) plus a
        `feature_grid` x `feature_grid` grid of Lab means; transparent pixels are composited on
        `background`; images over `max_pixels` are refused."""
        path = Path(path)
        if (path / CATALOG).exists():
            raise DatabaseError(f"{path} is already a tile database")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise DatabaseError(f"{path} exists and is not an empty folder: choose a new path for the database")
        sizes = _validate_sizes(thumb_sizes)
        if not 1 <= feature_grid <= 16:
            raise UsageError(f"--feature-grid must be between 1 and 16, got {feature_grid}")
        if len(tuple(background)) != 3 or not all(0 <= int(c) <= 255 for c in background):
            raise UsageError(f"--background must be three values 0-255, got {background}")
        path.mkdir(parents=True, exist_ok=True)

        def write_catalog(tmp: Path) -> None:
            con = catalog.connect(tmp)
            catalog.create(con, {"thumb_sizes": list(sizes), "feature_grid": int(feature_grid),
                                 "mean_weight": float(mean_weight), "background": [int(c) for c in background],
                                 "max_pixels": int(max_pixels), "created": time.time()})
            con.execute("PRAGMA journal_mode=DELETE")  # fold the WAL into the file before the rename
            con.close()

        write_atomic(path / CATALOG, write_catalog)
        return cls(path)

    @staticmethod
    def exists(path) -> bool:
        """Whether `path` is a tile database folder (it holds a catalog)."""
        return bool(path) and (Path(path) / CATALOG).is_file()

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
        """Close the catalog (the database is also closed by leaving a `with` block)."""
        self.con.close()

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

    def __len__(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]

    def ids(self) -> np.ndarray:
        """The ids of the tiles in the database (removed tiles excluded), sorted."""
        return catalog.live_ids(self.con)

    def features(self) -> np.ndarray:
        """(next_id, dim) float32 memory map; rows of removed tiles are holes (see `ids()`)."""
        return self._features.read(self.next_id)

    def thumbs(self, size: int) -> np.ndarray:
        """The (next_id, size, size, 3) uint8 thumbnails of that size, memory-mapped; row = tile id."""
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

    def blob_path(self, tile: dict) -> Path:
        """Where a tile's original is (`tile`: a row from `tiles()`): in the database, or the linked file."""
        p = Path(tile["blob"])
        return p if p.is_absolute() else self.path / p

    def load_original(self, tile_id: int):
        """The tile's original, normalised (EXIF, alpha, colour) as a full-resolution RGB PIL image."""
        rows = self.tiles([tile_id])
        if not rows:
            raise DatabaseError(f"no tile {tile_id} in {self.path}")
        p = self.blob_path(rows[0])
        try:
            data = p.read_bytes()
        except OSError as e:
            raise DatabaseError(f"original of tile {tile_id} is missing ({p}: {e.strerror}); run `mosaic db check`") from None
        return open_image(data, self.decode_options)[0]

    def tile_pixels(self, tile_id: int, size: int) -> np.ndarray:
        """Square size x size pixels of one tile: from thumbnails when they reach `size`, else the original."""
        for s in self.thumb_sizes:
            if s >= size:
                t = self._thumbs[s].read(self.next_id)[tile_id]
                if s == size:
                    return np.array(t)
                import cv2
                return cv2.resize(np.asarray(t), (size, size), interpolation=cv2.INTER_AREA)
        return np.asarray(square_resize(self.load_original(tile_id), size))

    def errors(self) -> list[dict]:
        """The inputs that were skipped, with why and when: [{source, reason, at}]."""
        return [dict(r) for r in self.con.execute("SELECT source, reason, at FROM errors ORDER BY source")]

__all__ = ["TileDB", "CheckReport", "IngestReport", "DEFAULT_THUMB_SIZES"]


def saved_db_path(named: str, given=None, fallback=None) -> str:
    """The database that renders a saved assignment: `given` (--db), else the one the assignment
    `named`, else (only when that one is gone) `fallback` ($MOSAICDB_DB), so a default from the
    environment never silently replaces the database the tiles were chosen from."""
    if given:
        return str(given)
    if fallback and not TileDB.exists(named):
        return str(fallback)
    return named
