"""Repairing a damaged tile database: what can be rebuilt is rebuilt from what is trusted.

- Array files that are too short (truncated, deleted) are grown back, and every row that was
  lost, or fails its checksum, is rebuilt from the tile's original (decoded again, the same
  thumbnails and features as at ingest), as long as the original is there and still has the
  hash the catalog recorded.
- Rows made by an older mosaicdb (no checksum) are checked against each other (features
  recomputed from the thumbnails; all-black thumbnails are suspect) before their checksums are
  recorded.
- Rows whose features are not finite are rebuilt the same way, even when their checksums match
  (rows written so by a damaged or older writer: matching could never place those tiles).
- The index is rebuilt from the features.
- Every original is re-hashed: tiles whose original is missing, changed or outside its folder
  cannot be drawn at full size and cannot be rebuilt; they are reported with the tiles whose
  rows could not be rebuilt, and removed with `remove_unrecoverable`.

A mixin of `TileDB`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatabaseError
from . import catalog
from .decode import tile_features
from .ingest import Source, WorkerConfig, chunked, run_chunks


@dataclass
class RepairReport:
    """What `TileDB.repair` did."""
    grown: list = field(default_factory=list)           # array files grown back to the catalog's size
    rebuilt: int = 0                                     # tiles whose rows were rebuilt from originals
    recorded: int = 0                                    # rows whose checksums were recorded anew
    unrecoverable: list = field(default_factory=list)   # (tile id, reason)
    removed: int = 0
    index_rebuilt: bool = False
    temporaries: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unrecoverable or self.removed == len(self.unrecoverable)

    def summary(self) -> str:
        parts = [f"{self.rebuilt} tiles rebuilt from their originals"]
        if self.grown:
            parts.append(f"{', '.join(self.grown)} grown back")
        if self.recorded:
            parts.append(f"checksums recorded for {self.recorded} rows")
        if self.index_rebuilt:
            parts.append("index rebuilt")
        if self.temporaries:
            parts.append(f"{self.temporaries} stale temporary files removed")
        if self.unrecoverable:
            parts.append(f"{len(self.unrecoverable)} tiles cannot be rebuilt"
                         + (f" (removed {self.removed})" if self.removed else ""))
        return "; ".join(parts) + f" in {self.seconds:.1f} s"

    def to_json(self) -> dict:
        return {**self.__dict__, "ok": self.ok, "unrecoverable": [list(u) for u in self.unrecoverable]}


class Repair:
    def repair(self, *, remove_unrecoverable: bool = False, workers: int = 1, progress: bool = False) -> RepairReport:
        """Rebuild what a damaged database lost (see the module docstring)."""
        self._writable()
        t0 = time.perf_counter()
        rep = RepairReport()
        self.refuse_links()
        with self.lock:
            rep.temporaries = len(self.sweep_temporaries())
            ids = self.ids()
            if len(ids) and ids[-1] >= self.next_id:  # next_id lowered: the rows above it are lost
                with self.con:
                    catalog.set_meta(self.con, next_id=int(ids[-1]) + 1)
                self._refresh()
            lost = set()
            for name, arr in self.arrays().items():
                cap = arr.capacity()
                if cap < self.next_id:
                    rep.grown.append(arr.path.name)
                    lost.update(ids[ids >= cap].tolist())
                    arr.ensure(self.next_id)
            self._ranges_cache = None
            self._verified_runs.clear()
            self._bad_runs.clear()
            bad = set(lost)
            for name in self.arrays():
                bad.update(self.bad_rows(name, ids).tolist())
            bad.update(self._suspect_unrecorded(ids).tolist())
            bad.update(self.nonfinite_ids().tolist())  # NaN rows whose checksums match (written so)
            unrecorded = set(self._unrecorded_ids(ids).tolist())
            rebuilt, unrecoverable = self._rebuild(sorted(bad), workers, progress)
            rep.rebuilt, rep.unrecoverable = len(rebuilt), unrecoverable
            rep.recorded = self._record(sorted(bad | unrecorded), [u[0] for u in unrecoverable])
            idx = self.load_index()
            if (rebuilt or rep.grown or idx is None or self.index_stale() or not np.array_equal(idx.ids, ids)
                    or (len(ids) and self.index_mismatches(idx, ids, self.features())[0])):
                good = np.setdiff1d(ids, np.array([u[0] for u in unrecoverable], np.int64))
                if len(good):
                    self._build_index_from(good)
                    rep.index_rebuilt = True
            # originals that are gone or changed while their rows are intact: nothing can bring
            # them back, and a full-size render refuses them; say so (and remove them on request)
            lost = self.original_problems(deep=True)
            known = {u[0] for u in unrecoverable}
            for key, why in (("outside", "original leads outside its folder"), ("missing", "original missing"),
                             ("changed", "original changed since ingest")):
                unrecoverable += [(i, f"{why} ({f})") for i, f in lost[key] if i not in known]
            rep.unrecoverable = unrecoverable = sorted(unrecoverable)
        if unrecoverable and remove_unrecoverable:
            rep.removed = self.remove([u[0] for u in unrecoverable])
        rep.seconds = time.perf_counter() - t0
        return rep

    def _unrecorded_ids(self, ids: np.ndarray) -> np.ndarray:
        """Live tiles whose rows of some array no checksum covers."""
        out = ids[:0]
        for name in self.arrays():
            starts, counts, _ = self._ranges(name)
            if not len(starts):
                return ids
            j = np.searchsorted(starts, ids, side="right") - 1
            covered = (j >= 0) & (ids < starts[np.maximum(j, 0)] + counts[np.maximum(j, 0)])
            out = np.union1d(out, ids[~covered])
        return out

    def _suspect_unrecorded(self, ids: np.ndarray) -> np.ndarray:
        """Tiles without checksums whose rows disagree (features vs thumbnails) or are all black."""
        ids = self._unrecorded_ids(ids)
        out = []
        feats = self.features()
        for part in np.array_split(ids, max(1, len(ids) // 4096)) if len(ids) else []:
            thumbs = [np.asarray(self.thumbs(s)[part]) for s in self.thumb_sizes]
            again = tile_features(thumbs, self.thumb_sizes, self.feature_spec)
            off = np.abs(again - np.asarray(feats[part])).max(axis=1) > 1e-3
            black = ~thumbs[-1].reshape(len(part), -1).any(axis=1)
            out.append(part[off | black])
        return np.concatenate(out) if out else ids[:0]

    def _rebuild(self, ids: list[int], workers: int, progress: bool) -> tuple[list[int], list[tuple[int, str]]]:
        """Decode each tile's original again and rewrite its rows."""
        if not ids:
            return [], []
        rows = {r["id"]: r for r in self.tiles(ids)}
        unrecoverable, jobs = [], []
        for i in ids:
            r = rows[i]
            try:
                path = self.blob_path(r)
            except DatabaseError as e:
                unrecoverable.append((i, str(e)))
                continue
            src = Source(str(i), "file", str(path), "", 0, 0, str(self.blob_root(r)))
            jobs.append((src, None, {}))
        cfg = WorkerConfig(str(self.path), True, self.thumb_sizes, self.feature_spec,
                           self.decode_options)
        arrays = self.arrays()
        rebuilt = []
        from .writer import _bar
        bar = _bar(progress, len(jobs), "repair")
        try:
            for chunk, res in run_chunks(chunked(jobs, 64), cfg, workers):
                unrecoverable += [(int(src.key), f"original unreadable: {why}") for src, why in res.errors]
                for k, (src, digest, *_rest) in enumerate(res.ok):
                    tid = int(src.key)
                    if digest != rows[tid]["hash"]:
                        unrecoverable.append((tid, f"original changed since ingest ({Path(src.path).name})"))
                        continue
                    arrays["features"].write(tid, res.features[k:k + 1])
                    for s, t in zip(self.thumb_sizes, res.thumbs):
                        arrays[f"thumbs_{s}"].write(tid, t[k:k + 1])
                    rebuilt.append(tid)
                bar.update(len(chunk))
        finally:
            bar.close()
        return rebuilt, sorted(unrecoverable)

    def _record(self, ids: list[int], poisoned: list[int], block: int = 1024) -> int:
        """Checksums, of the rows as they now are, for the blocks of rows holding `ids`; the
        rows of tiles that could not be rebuilt are poisoned instead."""
        blocks = sorted({i // block for i in ids} | {i // block for i in poisoned})
        for name in self.arrays():
            for b in blocks:
                self.rewrite_checksums(name, b * block, min((b + 1) * block, self.next_id), block, poisoned)
        return len(ids)

    def _build_index_from(self, ids: np.ndarray) -> None:
        self._index_of(ids, self._chosen_options(None, self.load_index()))
