"""Looking after a tile database: what it holds (`stats`) and whether its parts agree
(`check`). A mixin of `TileDB`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decode import tile_features

CATALOG = "catalog.sqlite"


@dataclass
class CheckReport:
    """What `TileDB.check` found: problems (the database is damaged) and warnings."""
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    tiles: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        """The report as JSON: ok, tiles, problems, warnings."""
        return {"ok": self.ok, "tiles": self.tiles, "problems": list(self.problems), "warnings": list(self.warnings)}


class Maintenance:
    def stats(self) -> dict:
        """What the database holds: tile counts by origin, skipped inputs, linked files, thumbnail
        sizes, feature layout, bytes on disk per part, and the index (kind, parameters, recall, staleness)."""
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
            "thumb_sizes": list(self.thumb_sizes), "feature_grid": self.feature_grid, "feature_dim": self.dim,
            "bytes": {"catalog": du(self.path / CATALOG), "originals": du(self.path / "originals"),
                      "features": du(self.path / "features.f32"),
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
            again = tile_features(thumbs, self.thumb_sizes, self.feature_grid, self.mean_weight)
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


