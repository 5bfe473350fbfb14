"""`mosaic db reindex`: recompute every tile's features as another kind, without re-ingesting.

Features come from the stored thumbnails (the kind's sample size, or the largest thumbnail
resampled to it, checked against their checksums first), in chunks of rows. Kill-safe by
construction: the new vectors go to a temporary file, which is synced and renamed to a name
the catalog does not use yet (`features.<kind>.<n>.f32`); then one catalog transaction
switches `feature_kind`, `feature_params` and `features_file` to it, replaces the features'
checksums and bumps the version. A kill before that commit leaves the database as it was
(the temporary is swept by the next writer, an unnamed file by the next reindex); a kill
after it leaves the new features in place. The index is rebuilt afterwards (an index of the
old kind is never updated in place: see feature_kinds.index_outdated).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import feature_kinds
from ..io import temp_path
from ..progress import progress_bar
from . import catalog
from .arrays import RowArray
from .decode import tile_features
from .integrity import crc_of

CHUNK_ROWS = 4096
CHECKSUM_RUN = 1024  # rows per recorded checksum of the new array


@dataclass
class ReindexReport:
    kind: str
    previous: str
    tiles: int
    dim: int
    seconds: float
    index: dict

    def to_json(self) -> dict:
        return {"kind": self.kind, "previous": self.previous, "tiles": self.tiles, "dim": self.dim,
                "seconds": round(self.seconds, 3), "index": self.index}

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


def _source_size(db, spec) -> int:
    """The thumbnail size tile_features reads for this spec."""
    return spec.samples if spec.samples in db.thumb_sizes else db.thumb_sizes[-1]


def _compute(db, spec, path: Path, progress: bool) -> list[tuple]:
    """Write the features of rows [0, next_id) to `path` (holes included: ids stay rows) and
    return the checksum runs of what was written."""
    rows = db.next_id
    out = RowArray(path, (spec.dim,), np.float32)
    out.ensure(max(rows, 1))
    thumbs = {s: db.thumbs(s) for s in db.thumb_sizes}
    runs = []
    bar = progress_bar(progress, rows, "reindex", unit="tile")
    try:
        for start in range(0, rows, CHUNK_ROWS):
            stop = min(rows, start + CHUNK_ROWS)
            feats = tile_features([np.asarray(thumbs[s][start:stop]) for s in db.thumb_sizes], db.thumb_sizes, spec)
            out.write(start, feats)
            runs += [("features", start + a, len(feats[a:a + CHECKSUM_RUN]), crc_of(feats[a:a + CHECKSUM_RUN]))
                     for a in range(0, len(feats), CHECKSUM_RUN)]
            bar.update(stop - start)
    finally:
        bar.close()
    _fsync(path)
    return runs


def reindex(db, kind: str, *, grid: int | None = None, mean_weight: float | None = None,
            progress: bool = False, update_index: bool = True) -> ReindexReport:
    """Recompute the features of every tile of `db` (a writable TileDB) as `kind`."""
    spec = feature_kinds.spec_for(kind, grid, mean_weight)
    db._writable()
    t0 = time.perf_counter()
    with db.lock:  # (taking it re-reads the catalog's features)
        db.require_intact(writing=True)
        db.sweep_temporaries()
        db.check_rows(f"thumbs_{_source_size(db, spec)}", db.ids())  # damaged thumbnails: repair first
        previous = db.feature_spec.kind
        _remove_orphans(db.path, keep=feature_kinds.features_file(db.meta))
        name = _new_name(db.path, spec.kind)
        tmp = temp_path(db.path / name)
        try:
            runs = _compute(db, spec, tmp, progress)
            os.replace(tmp, db.path / name)
        finally:
            tmp.unlink(missing_ok=True)
        with db.con:
            db.con.execute("DELETE FROM checksums WHERE array = 'features'")
            db.con.executemany("INSERT INTO checksums VALUES (?, ?, ?, ?)", runs)
            catalog.set_meta(db.con, **feature_kinds.to_meta(spec), features_file=name)
            catalog.bump_version(db.con)
        db._refresh()
        db._open_features(spec)
        db.forget_verified("features")
        _remove_orphans(db.path, keep=name)
        infos = db._update_index_locked(None) if update_index and len(db) else {}
    return ReindexReport(spec.kind, previous, len(db), spec.dim, time.perf_counter() - t0, infos)
