"""`mosaic db reindex`: recompute every tile's features as another kind, without re-ingesting.

Features come from the stored thumbnails (the kind's sample size, or the largest thumbnail
resampled to it), in chunks of rows. Kill-safe by construction: the new vectors go to a new
file (`features.<kind>.<n>.f32`) that the catalog does not name yet; once it is complete and
synced, one catalog commit switches `feature_kind`, `feature_params` and `features_file` to
it and bumps the version. A kill before that commit leaves the database as it was (the
partial file is an orphan, removed by the next reindex); a kill after it leaves the new
features in place. The index is rebuilt afterwards (an index of the old kind is never
updated in place: see feature_kinds.index_outdated).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import feature_kinds
from . import catalog
from .arrays import RowArray
from .decode import tile_features

CHUNK_ROWS = 4096


@dataclass
class ReindexReport:
    kind: str
    previous: str
    tiles: int
    dim: int
    seconds: float
    index: dict

    def summary(self) -> str:
        idx = self.index
        where = f"; index {idx['kind']}, recall@1 {idx['recall_at_1']:.3f}" if idx else ""
        return (f"{self.tiles} tiles reindexed from {self.previous} to {self.kind} features "
                f"({self.dim}-dim) in {self.seconds:.1f} s{where}")


def _new_name(db_path: Path, kind: str) -> str:
    n = 1
    while (db_path / f"features.{kind}.{n}.f32").exists():
        n += 1
    return f"features.{kind}.{n}.f32"


def _remove_orphans(db_path: Path, keep: str) -> None:
    """Feature files the catalog does not name: left by an interrupted reindex, or replaced."""
    for f in db_path.glob("features*.f32"):
        if f.name != keep:
            f.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reindex(db, kind: str, *, grid: int | None = None, mean_weight: float | None = None,
            progress: bool = False, update_index: bool = True) -> ReindexReport:
    """Recompute the features of every tile of `db` (a writable TileDB) as `kind`."""
    from .db import _bar  # the one tqdm factory of the store
    spec = feature_kinds.spec_for(kind, grid, mean_weight)
    db._writable()
    t0 = time.perf_counter()
    with db.lock:
        db._refresh()
        previous = db.feature_spec.kind
        old_name = feature_kinds.features_file(db.meta)
        _remove_orphans(db.path, keep=old_name)
        name = _new_name(db.path, spec.kind)
        rows = db.next_id  # every row, holes included: ids stay rows
        out = RowArray(db.path / name, (spec.dim,), np.float32)
        thumbs = {s: db.thumbs(s) for s in db.thumb_sizes}
        bar = _bar(progress, rows, "reindex")
        try:
            for start in range(0, rows, CHUNK_ROWS):
                stop = min(rows, start + CHUNK_ROWS)
                part = [np.asarray(thumbs[s][start:stop]) for s in db.thumb_sizes]
                out.write(start, tile_features(part, db.thumb_sizes, spec))
                bar.update(stop - start)
        finally:
            bar.close()
        out.ensure(max(rows, 1))
        _fsync(out.path)
        with db.con:
            catalog.set_meta(db.con, **feature_kinds.to_meta(spec), features_file=name)
            catalog.bump_version(db.con)
        db._refresh()
        db._open_features()
        _remove_orphans(db.path, keep=name)
        infos = db._update_index_locked(None) if update_index and len(db) else {}
    return ReindexReport(spec.kind, previous, len(db), spec.dim, time.perf_counter() - t0, infos)
