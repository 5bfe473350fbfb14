"""TileDB: the tile database's user API (create/open, ingest, index, search, check, remove).

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
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatabaseError, EmptyDatabase, IndexStale, UsageError
from .. import feature_kinds
from ..index import IndexOptions, VectorIndex, build_index
from ..index.faiss_index import exact_search
from . import catalog
from .arrays import RowArray
from .decode import DecodeOptions, open_image, square_resize, tile_features
from .ingest import (IngestReport, Source, WorkerConfig, chunked, enumerate_sources,
                     run_chunks, with_payloads)
from .lock import WriteLock

DEFAULT_THUMB_SIZES = (8, 16, 32, 64)
CATALOG = "catalog.sqlite"


@dataclass
class CheckReport:
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    tiles: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _validate_sizes(sizes) -> tuple[int, ...]:
    sizes = tuple(sorted(set(int(s) for s in sizes)))
    if not sizes or any(s < 4 or s > 1024 or s & (s - 1) for s in sizes):
        raise UsageError(f"--thumb-sizes must be powers of two between 4 and 1024, got {sizes}")
    if any(b != 2 * a for a, b in zip(sizes, sizes[1:])):
        raise UsageError(f"--thumb-sizes must be consecutive powers of two (e.g. 8,16,32,64), got {sizes}")
    return sizes


class TileDB:
    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.con = catalog.connect(self.path / CATALOG, readonly=readonly)
        self.meta = catalog.get_meta(self.con)
        self.thumb_sizes = tuple(self.meta["thumb_sizes"])
        self._open_features()
        self.decode_options = DecodeOptions(tuple(self.meta["background"]), int(self.meta["max_pixels"]))
        self.lock = WriteLock(self.path)
        self._thumbs = {s: RowArray(self.path / f"thumbs_{s}.u8", (s, s, 3), np.uint8) for s in self.thumb_sizes}
        self._index: VectorIndex | None = None
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
        tmp = path / (CATALOG + ".tmp")
        con = catalog.connect(tmp)
        catalog.create(con, {"thumb_sizes": list(sizes), **feature_kinds.to_meta(spec),
                             "background": [int(c) for c in background],
                             "max_pixels": int(max_pixels), "created": time.time()})
        con.execute("PRAGMA journal_mode=DELETE")  # fold the WAL into the file before the rename
        con.close()
        os.replace(tmp, path / CATALOG)
        return cls(path)

    @classmethod
    def open(cls, path, readonly: bool = False) -> "TileDB":
        path = Path(path)
        if not (path / CATALOG).is_file():
            what = "does not exist" if not path.exists() else "is not a tile database"
            raise DatabaseError(f"{path} {what}: create one with `mosaic db init {path}`")
        try:
            return cls(path, readonly=readonly)
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            raise DatabaseError(f"{path}/{CATALOG} is damaged ({e}): rebuild the database") from None
        except Exception as e:  # sqlite3.DatabaseError: not a database file, etc.
            if type(e).__module__ == "sqlite3":
                raise DatabaseError(f"{path}/{CATALOG} is not a readable catalog ({e})") from None
            raise

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open_features(self) -> None:
        """The feature kind and array the catalog names (again after a reindex switched them)."""
        self.feature_spec = feature_kinds.from_meta(self.meta)
        self.dim = self.feature_spec.dim
        self._features = RowArray(self.path / feature_kinds.features_file(self.meta), (self.dim,), np.float32)

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

    def blob_path(self, tile: dict) -> Path:
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
        return [dict(r) for r in self.con.execute("SELECT source, reason, at FROM errors ORDER BY source")]

    # ---- writing -----------------------------------------------------------------------------
    def _worker_config(self, link: bool) -> WorkerConfig:
        self._refresh()  # under the lock: the features may have been reindexed since we opened
        self._open_features()
        return WorkerConfig(str(self.path), link, self.thumb_sizes, self.feature_spec, self.decode_options)

    def ingest(self, sources, *, link: bool = False, workers: int | None = None, progress: bool = False,
               chunk_size: int = 64, update_index: bool = True, index_options: IndexOptions | None = None) -> IngestReport:
        """Add every image under `sources` (files, folders, zip/tar archives).

        Unchanged sources already seen (same size and mtime) are skipped without reading.
        """
        self._writable()
        workers = (os.cpu_count() or 1) if workers is None else workers
        with self.lock:
            report = IngestReport()
            t0 = time.perf_counter()
            items = list(enumerate_sources([str(s) for s in sources], exclude=self.path))
            seen = catalog.known_sources(self.con, [s.key for s, _ in items])
            todo = []
            with self.con:
                for src, err in items:
                    if err is not None:
                        catalog.record_error(self.con, src.key, err)
                        report.skipped += 1
                    elif seen.get(src.key) == (src.size, src.mtime_ns):
                        report.unchanged += 1
                    else:
                        todo.append(src)
            bar = _bar(progress, len(todo), "ingest")
            try:
                jobs = ((src, payload, {}) for src, payload in with_payloads(todo))
                for chunk, res in run_chunks(chunked(jobs, chunk_size), self._worker_config(link), workers):
                    self._commit_chunk(res, "file", report)
                    bar.update(len(chunk))
            finally:
                bar.close()
            # also when nothing was added but the index is behind (a rerun after a kill)
            if update_index and (report.added or (len(self) and self.index_stale())):
                self._update_index_locked(index_options)
            report.seconds = time.perf_counter() - t0
            return report

    def add_images(self, images, *, origin: str = "generated", progress: bool = False,
                   update_index: bool = True) -> IngestReport:
        """Add in-memory images: an iterable of (bytes, name, provenance dict). Used by generators."""
        self._writable()
        with self.lock:
            report = IngestReport()
            t0 = time.perf_counter()
            cfg = self._worker_config(False)
            from .ingest import process_chunk
            jobs = ((Source(name, "bytes", name, "", len(data), 0), data, prov) for data, name, prov in images)
            for chunk in chunked(jobs, 64):
                self._commit_chunk(process_chunk(chunk, cfg), origin, report)
            if update_index and report.added:
                self._update_index_locked(None)
            report.seconds = time.perf_counter() - t0
            return report

    def _commit_chunk(self, res, origin: str, report: IngestReport) -> None:
        hashes = [r[1] for r in res.ok]
        existing = catalog.existing_hashes(self.con, hashes)
        keep, dup = [], []
        chunk_seen: set[str] = set()
        for j, r in enumerate(res.ok):
            if r[1] in existing or r[1] in chunk_seen:
                dup.append(r)
            else:
                chunk_seen.add(r[1])
                keep.append(j)
        start = self.next_id
        if keep:
            # Arrays first, catalog second: rows past next_id are invisible until the commit.
            self._features.write(start, res.features[keep])
            for s, arr in zip(self.thumb_sizes, res.thumbs):
                self._thumbs[s].write(start, arr[keep])
        now = time.time()
        with self.con:
            rows = []
            for n, j in enumerate(keep):
                src, digest, blob, w, h, fmt, prov = res.ok[j]
                kind = origin if src.kind in ("file", "bytes") else "archive"
                rows.append((start + n, digest, src.key, blob, w, h, fmt, kind, json.dumps(prov), now))
            self.con.executemany("INSERT INTO tiles VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            srcs = [(res.ok[j][0], "added", res.ok[j][1]) for j in keep] + [(r[0], "duplicate", r[1]) for r in dup]
            srcs += [(src, "error", None) for src, _ in res.errors]
            self.con.executemany("INSERT OR REPLACE INTO sources VALUES (?,?,?,?,?)",
                                 [(s.key, s.size, s.mtime_ns, st, h) for s, st, h in srcs if s.kind != "bytes"])
            self.con.executemany("DELETE FROM errors WHERE source = ?", [(r[0].key,) for r in res.ok])
            for src, reason in res.errors:
                catalog.record_error(self.con, src.key, reason)
            if keep:
                catalog.set_meta(self.con, next_id=start + len(keep))
                catalog.bump_version(self.con)
        self._refresh()
        report.added += len(keep)
        report.duplicates += len(dup)
        report.skipped += len(res.errors)
        report.new_ids.extend(range(start, start + len(keep)))

    def _writable(self) -> None:
        if self.readonly:
            raise DatabaseError(f"{self.path} was opened read-only")

    def remove(self, ids) -> int:
        """Remove tiles by id: catalog rows, copied originals, index entries. Returns how many."""
        self._writable()
        ids = np.unique(np.asarray(list(ids), dtype=np.int64))
        with self.lock:
            rows = self.tiles(ids)
            if not rows:
                return 0
            with self.con:
                self.con.executemany("DELETE FROM tiles WHERE id = ?", [(r["id"],) for r in rows])
                self.con.executemany("DELETE FROM sources WHERE hash = ?", [(r["hash"],) for r in rows])
                catalog.bump_version(self.con)
            self._refresh()
            for r in rows:
                if not Path(r["blob"]).is_absolute():
                    (self.path / r["blob"]).unlink(missing_ok=True)
            if self.load_index() is not None:
                self._update_index_locked(None)
            return len(rows)

    def find(self, *, hashes=(), source_prefix: str | None = None) -> np.ndarray:
        """Tile ids whose hash starts with any of `hashes`, or whose source starts with the prefix."""
        out = set()
        for h in hashes:
            out.update(r[0] for r in self.con.execute("SELECT id FROM tiles WHERE hash LIKE ?", (h.lower() + "%",)))
        if source_prefix:
            # the file itself, files under the folder, members of the archive ("archive!member");
            # compared exactly (LIKE would be case-insensitive and treat '_' and '%' as wildcards)
            p = os.path.abspath(source_prefix)
            folder, archive = p.rstrip("/") + "/", p + "!"
            out.update(r[0] for r in self.con.execute(
                "SELECT id FROM tiles WHERE source = ? OR substr(source, 1, ?) = ? OR substr(source, 1, ?) = ?",
                (p, len(folder), folder, len(archive), archive)))
        return np.array(sorted(out), dtype=np.int64)

    # ---- index -------------------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.path / "index"

    def load_index(self) -> VectorIndex | None:
        if self._index is None:
            self._index = VectorIndex.load(self.index_dir)
        return self._index

    def index_stale(self) -> bool:
        idx = self.load_index()
        return idx is None or idx.infos.get("catalog_version") != self.version

    def build_index(self, options: IndexOptions | None = None, progress: bool = False) -> dict:
        self._writable()
        with self.lock:
            return self._build_index_locked(options or IndexOptions())

    def _build_index_locked(self, options: IndexOptions) -> dict:
        ids = self.ids()
        if len(ids) == 0:
            raise EmptyDatabase(f"{self.path} has no tiles: add some with `mosaic db ingest {self.path} FOLDER`")
        vectors = np.asarray(self.features()[ids])
        idx = build_index(vectors, ids, options, pca_dims=feature_kinds.index_pca_dims(self.feature_spec, len(ids)),
                          extra={"catalog_version": self.version, "ntotal_at_build": len(ids),
                                 "features": feature_kinds.signature(self.feature_spec)})
        idx.save(self.index_dir)
        self._index = idx
        return idx.infos

    def update_index(self, options: IndexOptions | None = None) -> dict:
        self._writable()
        with self.lock:
            if len(self) == 0:  # (the locked helper returns {} here, which callers can't print)
                raise EmptyDatabase(f"{self.path} has no tiles: add some with `mosaic db ingest {self.path} FOLDER`")
            return self._update_index_locked(options)

    def _update_index_locked(self, options: IndexOptions | None) -> dict:
        """Bring the index up to date: add/remove ids in place, or rebuild when the pool size
        moved far from what the index was built for (flat grew past flat_max, IVF 2x off)."""
        idx = self.load_index()
        if idx is not None and options is None:
            options = IndexOptions(**idx.infos.get("options", {}))
        options = options or IndexOptions()
        ids = self.ids()
        if idx is None or len(ids) == 0:
            return self._build_index_locked(options) if len(ids) else {}
        built = idx.infos.get("ntotal_at_build", idx.ntotal) or 1
        too_far = (idx.infos["kind"] == "flat" and options.kind == "auto" and len(ids) > options.flat_max) or \
                  (idx.infos["kind"] == "ivf" and not 0.5 <= len(ids) / built <= 2.0)
        if too_far or feature_kinds.index_outdated(idx.infos, self.feature_spec, len(ids)):
            return self._build_index_locked(options)
        missing = np.setdiff1d(ids, idx.ids)
        extra = np.setdiff1d(idx.ids, ids)
        idx.remove(extra)
        idx.add(np.asarray(self.features()[missing]), missing)
        idx.infos.update(ntotal=idx.ntotal, catalog_version=self.version, updated_at=time.time())
        idx.save(self.index_dir)
        return idx.infos

    def ensure_index(self) -> VectorIndex:
        """The index, brought up to date first if the catalog changed since it was built."""
        if len(self) == 0:
            raise EmptyDatabase(f"{self.path} has no tiles: add some with `mosaic db ingest {self.path} FOLDER`")
        if self.index_stale():
            if self.readonly:
                raise IndexStale(f"the index of {self.path} is out of date: run `mosaic db index {self.path}`")
            self.update_index()
        return self.load_index()

    def search(self, vectors: np.ndarray, k: int, *, exact: bool = False, device: str = "auto",
               exclude: np.ndarray | None = None):
        """k nearest tiles of each query: (squared L2 distances (n, k), tile ids (n, k), -1 padded).
        `exclude`: tile ids never to return."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise UsageError(f"queries must be (n, {self.dim}) feature vectors, got {vectors.shape}")
        if exact:
            ids = self.ids()
            if len(ids) == 0:
                raise EmptyDatabase(f"{self.path} has no tiles")
            if exclude is not None and len(exclude):
                ids = np.setdiff1d(ids, exclude)
                if len(ids) == 0:
                    return (np.full((len(vectors), k), np.inf, np.float32), np.full((len(vectors), k), -1, np.int64))
            d, i = exact_search(np.asarray(self.features()[ids]), ids, vectors, k)
            if d.shape[1] < k:
                pad = k - d.shape[1]
                d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
                i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
            return d, i
        return self.ensure_index().search(vectors, k, device=device, exclude=exclude)

    # ---- reporting ---------------------------------------------------------------------------
    def stats(self) -> dict:
        def du(p: Path) -> int:
            if p.is_file():
                return p.stat().st_size
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0

        idx = self.load_index()
        by_origin = dict(self.con.execute("SELECT origin, COUNT(*) FROM tiles GROUP BY origin").fetchall())
        return {
            "path": str(self.path), "tiles": len(self), "by_origin": by_origin,
            "skipped_inputs": self.con.execute("SELECT COUNT(*) FROM errors").fetchone()[0],
            "linked": self.con.execute("SELECT COUNT(*) FROM tiles WHERE blob LIKE '/%'").fetchone()[0],
            "thumb_sizes": list(self.thumb_sizes), "features": feature_kinds.describe(self.feature_spec),
            "feature_dim": self.dim,
            "bytes": {"catalog": du(self.path / CATALOG), "originals": du(self.path / "originals"),
                      "features": du(self._features.path),
                      "thumbnails": sum(du(self.path / f"thumbs_{s}.u8") for s in self.thumb_sizes),
                      "index": du(self.index_dir)},
            "index": None if idx is None else {
                "kind": idx.infos["kind"], "params": idx.infos["params"], "ntotal": idx.ntotal,
                "recall_at_1": idx.infos["recall_at_1"], "stale": self.index_stale()},
        }

    def check(self, deep: bool = False) -> CheckReport:
        """Catalog vs originals vs features/thumbnails vs index. `deep` re-hashes the originals."""
        rep = CheckReport()
        qc = self.con.execute("PRAGMA quick_check").fetchone()[0]
        if qc != "ok":
            rep.problems.append(f"catalog: sqlite quick_check says {qc}")
        ids = self.ids()
        rep.tiles = len(ids)
        if len(ids) and ids[-1] >= self.next_id:
            rep.problems.append(f"catalog: tile id {ids[-1]} is beyond next_id {self.next_id}")
        for name, arr in [("features", self._features)] + [(f"thumbs_{s}", a) for s, a in self._thumbs.items()]:
            if arr.capacity() < self.next_id:
                rep.problems.append(f"{name}: holds {arr.capacity()} rows, the catalog needs {self.next_id}")
        if rep.problems:
            return rep
        feats = self.features()
        bad = ids[~np.isfinite(np.asarray(feats[ids])).all(axis=1)] if len(ids) else ids
        if len(bad):
            rep.problems.append(f"features: {len(bad)} tiles have non-finite features (first id {bad[0]})")
        referenced = set()
        missing = []
        for r in self.con.execute("SELECT id, hash, blob FROM tiles"):
            p = Path(r["blob"])
            full = p if p.is_absolute() else self.path / p
            if not p.is_absolute():
                referenced.add(str(p))
            if not full.is_file():
                missing.append(f"{r['id']} ({full})")
            elif deep and hashlib.sha256(full.read_bytes()).hexdigest() != r["hash"]:
                rep.problems.append(f"original of tile {r['id']} ({full}) changed since ingest (hash differs)")
        if missing:
            rep.problems.append(f"originals: {len(missing)} missing, e.g. tile {missing[0]}")
        if deep and len(ids):
            sample = ids if len(ids) <= 5000 else np.random.default_rng(0).choice(ids, 5000, replace=False)
            sample = np.sort(sample)
            thumbs = [np.asarray(self.thumbs(s)[sample]) for s in self.thumb_sizes]
            again = tile_features(thumbs, self.thumb_sizes, self.feature_spec)
            off = np.abs(again - np.asarray(feats[sample])).max(axis=1) > 1e-3
            if off.any():
                rep.problems.append(f"features: {int(off.sum())} tiles disagree with their thumbnails")
        orig = self.path / "originals"
        if orig.exists():
            files = [str(f.relative_to(self.path)) for f in orig.rglob("*") if f.is_file()]
            orphans = [f for f in files if f not in referenced]
            if orphans:
                rep.warnings.append(f"originals: {len(orphans)} files no tile references (left by an interrupted "
                                    "ingest or a duplicate; harmless, reused when that file is ingested again)")
        idx = self.load_index()
        if idx is None:
            if len(ids):
                rep.warnings.append(f"index: none yet; build it with `mosaic db index {self.path}`")
        elif self.index_stale():
            rep.warnings.append(f"index: out of date ({idx.ntotal} of {len(ids)} tiles); "
                                f"`mosaic db index {self.path}` updates it (make does so automatically)")
        else:
            if idx.ntotal != len(idx.ids) or not np.array_equal(idx.ids, ids):
                rep.problems.append(f"index: holds {idx.ntotal} vectors for {len(ids)} tiles although it is "
                                    f"marked current; rebuild it with `mosaic db index --rebuild {self.path}`")
        return rep


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


__all__ = ["TileDB", "CheckReport", "IngestReport", "DEFAULT_THUMB_SIZES", "asdict"]
