"""Trusting the arrays: every committed run of rows of features.f32 and thumbs_<s>.u8 has its
CRC-32 in the catalog (`checksums`), written in the same transaction as the tiles.

- The quick check (array sizes against the catalog's next_id) runs before every write, so a
  truncated or deleted array is never "repaired" by growing it with zeros.
- Rows are verified before they are used: thumbnails before a render draws them, features
  before an index is built from them (each run once per open database).
- `db check --deep` verifies every run; `db repair` rebuilds what fails from the originals.

A mixin of `TileDB`.
"""
from __future__ import annotations

import os
import stat
import threading

import numpy as np
from isal import isal_zlib

from ..errors import DatabaseError
from ..features import bad_feature_rows
from . import catalog


CATALOG_FILE = "catalog.sqlite"  # (maintenance.CATALOG; integrity sits below it)
KIND_NAMES = {"file": "a file", "dir": "a folder", "link": "a symbolic link", "fifo": "a FIFO", "device": "a device file",
               "socket": "a socket", "other": "a special file"}


def file_kind(p) -> str | None:
    """What is at `p`, without following a link: file, dir, link, fifo, device, socket, other
    (None when nothing is)."""
    try:
        m = os.lstat(p).st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return "other"
    for kind, test in (("file", stat.S_ISREG), ("dir", stat.S_ISDIR), ("link", stat.S_ISLNK), ("fifo", stat.S_ISFIFO),
                       ("device", stat.S_ISCHR), ("device", stat.S_ISBLK), ("socket", stat.S_ISSOCK)):
        if test(m):
            return kind
    return "other"


def crc_of(rows: np.ndarray) -> int:
    # ISA-L's CRC-32 is zlib's, bit for bit, at ~6x the speed (21 against 3.4 GB/s here): the rows
    # a render draws are verified as it reads them, ~0.18 s a target at 1M tiles with zlib's.
    return isal_zlib.crc32(np.ascontiguousarray(rows).data) & 0xFFFFFFFF


class Integrity:
    # ---- the arrays ----------------------------------------------------------------------------
    def arrays(self) -> dict:
        """name -> RowArray for every array file of the database."""
        return {"features": self._features, **{f"thumbs_{s}": a for s, a in self._thumbs.items()}}

    def size_problems(self) -> list[str]:
        """Arrays too short for the catalog (truncated or deleted files), and tile ids the
        catalog's own row count (next_id) does not cover."""
        out = []
        top = self.con.execute("SELECT MAX(id) FROM tiles").fetchone()[0]
        if top is not None and top >= self.next_id:
            out.append(f"catalog: tile id {top} is beyond next_id {self.next_id}")
        for name, arr in self.arrays().items():
            cap = arr.capacity()
            if cap < self.next_id:
                what = "is missing" if not arr.path.exists() else f"holds {cap} rows"
                out.append(f"{arr.path.name} {what}, the catalog needs {self.next_id}")
        return out

    def nonfinite_ids(self, block: int = 1 << 16) -> np.ndarray:
        """Live tiles whose features are not finite (matching can never place them), read in
        blocks."""
        ids = self.ids()
        if not len(ids):
            return ids
        feats = self._features.read(self.next_id)
        return np.concatenate([part[bad_feature_rows(np.asarray(feats[part]))]
                               for part in np.array_split(ids, max(1, len(ids) // block))])

    def finite_problems(self) -> list[str]:
        """The non-finite features `db check` reports."""
        off = self.nonfinite_ids()
        if not len(off):
            return []
        return [f"features: {len(off)} tiles have non-finite or out-of-range features (first id {off[0]})"]

    def own_files(self) -> list:
        """The files and folders the database itself owns, as (path, kind) with kind "file" or
        "dir" (links and special files among them are refused)."""
        idx = self.path / "index"
        files = [self.path / CATALOG_FILE, self.path / (CATALOG_FILE + "-wal"), self.path / (CATALOG_FILE + "-shm"),
                 self.path / "lock", *(a.path for a in self.arrays().values())]
        if file_kind(idx) == "dir":
            files += [p for p in idx.iterdir()]
        return [(p, "file") for p in files] + [(idx, "dir"), (self.path / "originals", "dir")]

    def link_problems(self) -> list[str]:
        """Own files that are symbolic links (writes through them would land outside the
        database) or not what they should be: a FIFO, a device or a folder where a file belongs
        would block or fail every read."""
        out = []
        for p, want in self.own_files():
            kind = file_kind(p)
            if kind == "link":
                out.append(f"{p.relative_to(self.path)} is a symbolic link (to {os.readlink(p)}): a database's "
                           "own files must be real files inside it: remove the link")
            elif kind not in (None, want):
                out.append(f"{p.relative_to(self.path)} is {KIND_NAMES[kind]}, not a regular {want}: remove it "
                           f"(`mosaic db repair {self.path}` rebuilds what it held)")
        return out

    def special_problems(self) -> list[str]:
        """Own files that are FIFOs, devices, sockets or folders where a file belongs: opening
        them could block, so they are refused as soon as the database is opened."""
        return [p for p in self.link_problems() if "symbolic link" not in p]

    def refuse_links(self) -> None:
        """Refuse a database whose own files (catalog, arrays, index) are symlinks or special files."""
        problems = self.link_problems()
        if problems:
            raise DatabaseError(f"{self.path}: {problems[0]}")

    def require_intact(self, writing: bool = False) -> None:
        """Refuse to read rows from a database whose own files are links or whose arrays are too
        short; `writing` (once per write, not per read) also refuses non-finite features, as
        `db check` does."""
        problems = self.link_problems() + self.size_problems()
        if writing and not problems:
            problems = self.finite_problems()
        if problems and "symbolic link" in problems[0]:  # its own remedy: remove the link (repair refuses links)
            raise DatabaseError(f"{self.path}: {problems[0]}")
        if problems:
            raise DatabaseError(f"{self.path} is damaged ({problems[0]}): run `mosaic db repair {self.path}`")

    # ---- checksums -----------------------------------------------------------------------------
    def record_checksums(self, start: int, rows: dict) -> None:
        """Record the CRC of rows written at `start` (name -> array of rows); call inside the
        transaction that commits them."""
        self.con.executemany("INSERT OR REPLACE INTO checksums VALUES (?, ?, ?, ?)",
                             [(name, int(start), len(a), crc_of(a)) for name, a in rows.items() if len(a)])
        self._ranges_cache = None

    def rewrite_checksums(self, name: str, start: int, stop: int, step: int = 1024, poisoned=()) -> None:
        """Replace the checksums of rows [start, stop) of array `name` (widened to whole
        recorded runs) by ones of the current contents, in runs of at most `step` rows, after a
        reindex or a repair rewrote them. Rows in `poisoned` (tiles that could not be repaired)
        get a checksum that never matches, so they are never drawn or searched."""
        starts, counts, _ = self._ranges(name)
        over = (starts < stop) & (starts + counts > start)
        if over.any():
            start, stop = min(start, int(starts[over].min())), max(stop, int((starts + counts)[over].max()))
        stop = min(stop, self.next_id)
        arr = self.arrays()[name].read(self.next_id)
        poison = {int(i) for i in poisoned if start <= int(i) < stop}
        runs, s0 = [], start
        for r in range(start, stop + 1):
            if r == stop or r in poison or r - s0 >= step:
                if r > s0:
                    runs.append((name, s0, r - s0, crc_of(arr[s0:r])))
                if r in poison:
                    runs.append((name, r, 1, -1))
                s0 = r + 1 if r in poison else r
        with self.con:
            self.con.execute("DELETE FROM checksums WHERE array = ? AND start < ? AND start + count > ?",
                             (name, stop, start))
            self.con.executemany("INSERT OR REPLACE INTO checksums VALUES (?, ?, ?, ?)", runs)
        self.forget_verified(name)

    def forget_verified(self, name: str) -> None:
        """Drop what is known of array `name`'s runs (after its rows or checksums were replaced)."""
        self._ranges_cache = None
        with self._verify_lock:
            for cache in (self._verified_runs, self._bad_runs):
                for key in [k for k in cache if k[0] == name]:
                    del cache[key]

    def _ranges(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, counts, crcs) of an array's recorded runs, sorted by start."""
        cache = getattr(self, "_ranges_cache", None)
        if cache is None or cache[0] != self.version:
            cache = self._ranges_cache = (self.version, {})
        if name not in cache[1]:
            rows = [] if not catalog.has_table(self.con, "checksums") else self.con.execute(
                "SELECT start, count, crc FROM checksums WHERE array = ? ORDER BY start", (name,)).fetchall()
            a = np.array(rows, dtype=np.int64).reshape(-1, 3)
            cache[1][name] = (a[:, 0], a[:, 1], a[:, 2])
        return cache[1][name]

    def unrecorded(self, name: str) -> int:
        """How many live tiles' rows of `name` no checksum covers (databases made before them)."""
        ids = self.ids()
        starts, counts, _ = self._ranges(name)
        j = np.searchsorted(starts, ids, side="right") - 1
        covered = (j >= 0) & (ids < starts[np.maximum(j, 0)] + counts[np.maximum(j, 0)]) if len(starts) else \
            np.zeros(len(ids), bool)
        return int((~covered).sum())

    def bad_rows(self, name: str, ids=None) -> np.ndarray:
        """Live tile ids (of `ids`, default all) whose rows of array `name` fail their checksum.
        Each run is read and verified once per open database."""
        ids = self.ids() if ids is None else np.unique(np.asarray(ids, dtype=np.int64))
        if not len(ids):
            return ids
        if self._intact_version != self.version:  # once per catalog version, not per rendered block
            self.require_intact()
            self._intact_version = self.version
        starts, counts, crcs = self._ranges(name)
        if not len(starts):
            return ids[:0]
        j = np.searchsorted(starts, ids, side="right") - 1
        inside = (j >= 0) & (ids < starts[np.maximum(j, 0)] + counts[np.maximum(j, 0)])
        runs = np.unique(j[inside])
        with self._verify_lock:
            done = self._verified_runs.setdefault((name, self.version), set())
            todo = [r for r in runs.tolist() if r not in done]
            if todo:
                arr = self.arrays()[name].read(self.next_id)
                bad_runs = set()
                for r in todo:
                    s, c = int(starts[r]), int(counts[r])
                    if crc_of(arr[s:s + c]) != int(crcs[r]):
                        bad_runs.add(r)
                    else:
                        done.add(r)
                self._bad_runs.setdefault((name, self.version), set()).update(bad_runs)
            bad = self._bad_runs.get((name, self.version), set())
        if not bad:
            return ids[:0]
        return ids[inside & np.isin(j, list(bad))]

    def check_rows(self, name: str, ids) -> None:
        """Raise DatabaseError when any of these tiles' rows of `name` are damaged."""
        bad = self.bad_rows(name, ids)
        if len(bad):
            raise DatabaseError(f"{self.path}: {name} rows are damaged: those of {len(bad)} tile(s) fail their "
                                f"checksums (e.g. tile {bad[0]}; a checksum covers a run of rows), so they cannot "
                                f"be drawn or searched: run `mosaic db repair {self.path}`")

    def _init_integrity(self) -> None:
        self._intact_version = None
        self._verify_lock = threading.Lock()
        self._verified_runs: dict = {}
        self._bad_runs: dict = {}
        self._ranges_cache = None
