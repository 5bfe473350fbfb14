"""Writing to a tile database: ingest (files, folders, archives, in-memory images), removal,
and finding tiles by id, hash prefix or source. A mixin of `TileDB`; every write holds the
database's one-writer lock."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import DatabaseError, UsageError, check_int
from ..index import IndexOptions
from ..io import inside, sweep_stale
from ..progress import progress_bar
from . import catalog
from .ingest import (IngestReport, Source, WorkerConfig, chunked, enumerate_sources,
                     run_chunks, with_payloads)


class TileWriter:
    def _worker_config(self, link: bool) -> WorkerConfig:
        return WorkerConfig(str(self.path), link, self.thumb_sizes, self.feature_spec, self.decode_options)

    def ingest(self, sources, *, link: bool = False, workers: int | None = None, progress: bool = False,
               chunk_size: int = 64, update_index: bool = True, index_options: IndexOptions | None = None) -> IngestReport:
        """Add every image under `sources` (files, folders, zip/tar archives).

        Unchanged sources already seen (same size and mtime) are skipped without reading.
        """
        self._writable()
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        if sources is None or not all(isinstance(s, (str, os.PathLike)) for s in sources):
            raise UsageError(f"ingest takes paths (files, folders, zip/tar archives), got {sources!r}")
        workers = (os.cpu_count() or 1) if workers is None else check_int("--workers", workers, 0, 256)
        with self.lock:
            self.require_intact(writing=True)
            self.sweep_temporaries()
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
                jobs = ((src, payload, {}) for src, payload in with_payloads(todo, self.decode_options.max_bytes))
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
                   update_index: bool = True, workers: int = 1, chunk_size: int = 64) -> IngestReport:
        """Add in-memory images: an iterable of (bytes, name, provenance dict), read lazily. Used
        by generators. `workers` > 1 decodes in that many processes (this one stays the writer)."""
        self._writable()
        workers = check_int("workers", workers, 0, 256)
        chunk_size = check_int("chunk_size", chunk_size, 1, 1 << 16)
        with self.lock:
            self.require_intact(writing=True)
            self.sweep_temporaries()
            report = IngestReport()
            t0 = time.perf_counter()
            cfg = self._worker_config(False)
            jobs = (_in_memory_job(item) for item in images)
            bar = _bar(progress, None, "add")
            try:
                for chunk, res in run_chunks(chunked(jobs, chunk_size), cfg, workers):
                    self._commit_chunk(res, origin, report)
                    bar.update(len(chunk))
            finally:
                bar.close()
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
        written = {}
        if keep:
            # Arrays first, catalog second: rows past next_id are invisible until the commit.
            written["features"] = res.features[keep]
            for s, arr in zip(self.thumb_sizes, res.thumbs):
                written[f"thumbs_{s}"] = arr[keep]
            arrays = self.arrays()
            for name, rows in written.items():
                arrays[name].write(start, rows)
        now = time.time()
        with self.con:
            rows = []
            for n, j in enumerate(keep):
                src, digest, blob, w, h, fmt, prov = res.ok[j]
                kind = origin if src.kind in ("file", "bytes") else "archive"
                link_root = os.path.realpath(src.root) if os.path.isabs(blob) and src.root else None
                rows.append((start + n, digest, src.key, blob, w, h, fmt, kind, json.dumps(prov), now, link_root))
            self.con.executemany("INSERT INTO tiles (id, hash, source, blob, width, height, format, origin, "
                                 "provenance, added, link_root) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.record_checksums(start, written)
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

    def sweep_temporaries(self) -> list[Path]:
        """Remove temporary files left under the database by killed runs (their pid is gone)."""
        removed = []
        for folder in [self.path, self.path / "index", *(p for p in (self.path / "originals").glob("*") if p.is_dir())]:
            removed += sweep_stale(folder)
        return removed

    def _writable(self) -> None:
        if self.readonly:
            raise DatabaseError(f"{self.path} was opened read-only")

    def remove(self, ids) -> int:
        """Remove tiles by id: catalog rows, copied originals, index entries. Returns how many."""
        self._writable()
        try:
            ids = np.unique(np.asarray(list(ids), dtype=np.int64))
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"tile ids must be whole numbers, got {ids!r}") from None
        with self.lock:
            self.require_intact(writing=True)
            rows = self.tiles(ids)
            if not rows:
                return 0
            with self.con:
                self.con.executemany("DELETE FROM tiles WHERE id = ?", [(r["id"],) for r in rows])
                self.con.executemany("DELETE FROM sources WHERE hash = ?", [(r["hash"],) for r in rows])
                catalog.bump_version(self.con)
            self._refresh()
            originals = self.path / "originals"
            for r in rows:
                p = self.path / r["blob"]
                # only copies this database made, and only inside originals/: a crafted catalog
                # row can never make remove delete anything else
                if not Path(r["blob"]).is_absolute() and inside(p, originals) and not p.is_symlink():
                    p.unlink(missing_ok=True)
            if self.load_index() is not None:
                self._update_index_locked(None)
            return len(rows)

    def resolve_refs(self, refs=(), source_prefix: str | None = None) -> np.ndarray:
        """Tile ids named by `refs` (ids, or hash prefixes of >= 8 hex digits; `id:N` and
        `hash:PREFIX` say which, and a number that is both a live id and a hash prefix must) and
        by a source file/folder/archive prefix, sorted and distinct; ids that are not in the
        database are dropped."""
        ids, hashes = [], []
        live = self.ids()
        for t in map(str, refs):
            kind, _, value = t.partition(":") if t[:3] in ("id:", "has") else ("", "", t)
            is_hash = len(value) >= 8 and all(c in "0123456789abcdefABCDEF" for c in value)
            if kind == "id" or (not kind and value.isdigit()):
                if not value.isdigit():
                    raise UsageError(f"{t!r}: an id is a whole number")
                as_id = int(value) < (1 << 62) and bool(np.isin(int(value), live))
                if not kind and is_hash and len(self.find(hashes=[value])):
                    if as_id:  # both a live tile's id and the start of another's hash
                        raise UsageError(f"{t!r} is both tile id {int(value)} and the start of a tile's hash: write "
                                         f"id:{value} or hash:{value}")
                    hashes.append(value)
                elif int(value) < (1 << 62):  # larger numbers are no tile's id
                    ids.append(int(value))
            elif kind == "hash" or (not kind and is_hash):
                if not is_hash:
                    raise UsageError(f"{t!r}: a hash prefix has at least 8 hex digits")
                hashes.append(value)
            else:
                raise UsageError(f"{t!r} is neither a tile id nor a hash prefix of at least 8 hex digits "
                                 "(write id:N or hash:PREFIX to say which)")
        if not list(refs) and not source_prefix:
            raise UsageError("name tiles (ids or hash prefixes) or give a source path")
        found = set(self.find(hashes=hashes, source_prefix=source_prefix).tolist())
        found |= set(np.intersect1d(np.array(ids, np.int64), self.ids()).tolist())
        return np.array(sorted(found), dtype=np.int64)

    def find(self, *, hashes=(), source_prefix: str | None = None) -> np.ndarray:
        """Tile ids whose hash starts with any of `hashes`, or whose source starts with the prefix."""
        out = set()
        for h in hashes:
            out.update(r[0] for r in self.con.execute("SELECT id FROM tiles WHERE hash LIKE ?", (h.lower() + "%",)))
        if source_prefix:
            # the file itself, files under the folder, members of the archive ("archive!member");
            # compared exactly (LIKE would be case-insensitive and treat '_' and '%' as wildcards)
            p = catalog.text(os.path.abspath(source_prefix))
            folder, archive = p.rstrip("/") + "/", p + "!"
            # "archive!member" names only archive members: a plain file may have a '!' in its name
            out.update(r[0] for r in self.con.execute(
                "SELECT id FROM tiles WHERE source = ? OR substr(source, 1, ?) = ? "
                "OR (origin = 'archive' AND substr(source, 1, ?) = ?)",
                (p, len(folder), folder, len(archive), archive)))
        return np.array(sorted(out), dtype=np.int64)


def _in_memory_job(item):
    """(Source, bytes, provenance) of one (bytes, name, provenance) given to add_images."""
    try:
        data, name, prov = item
    except (TypeError, ValueError):
        raise UsageError("add_images takes (bytes, name, provenance dict) items") from None
    if not isinstance(data, (bytes, bytearray, memoryview)) or not isinstance(name, str) or not name:
        raise UsageError(f"add_images: each item is (bytes, a non-empty name, provenance), got ({type(data).__name__}, "
                         f"{name!r}, ...)")
    try:
        json.dumps(prov)
    except (TypeError, ValueError):
        raise UsageError(f"add_images: the provenance of {name!r} must be a JSON-serialisable dict") from None
    if not isinstance(prov, dict):
        raise UsageError(f"add_images: the provenance of {name!r} must be a dict")
    return Source(name, "bytes", name, "", len(data), 0), bytes(data), prov


def _bar(enabled: bool, total: int, desc: str):
    return progress_bar(enabled, total, desc, unit="img", smoothing=0.1)


