"""Looking after a tile database: what it holds (`stats`) and whether its parts agree
(`check`). A mixin of `TileDB`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import feature_kinds
from ..io import inside
from .decode import tile_features

CATALOG = "catalog.sqlite"
# Tiles whose features a quick check recomputes from their thumbnails (a few ms): enough to see
# features computed with other settings than the catalog's (every row disagrees), not to find a
# few damaged rows (--deep recomputes 5,000 and verifies every checksum).
QUICK_FEATURE_SAMPLE = 32
DEEP_FEATURE_SAMPLE = 5000


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
            "thumb_sizes": list(self.thumb_sizes), "features": feature_kinds.describe(self.feature_spec),
            "feature_dim": self.dim,
            "bytes": {"catalog": du(self.path / CATALOG), "originals": du(self.path / "originals"),
                      "features": du(self._features.path),
                      "thumbnails": sum(du(self.path / f"thumbs_{s}.u8") for s in self.thumb_sizes),
                      "index": du(self.index_dir)},
            "index": None if idx is None else {
                "kind": idx.infos["kind"], "params": idx.infos["params"], "ntotal": idx.ntotal,
                "pca_dims": int(idx.infos.get("pca_dims", 0)),
                "recall_at_1": idx.infos["recall_at_1"], "stale": self.index_stale()},
        }

    def check(self, deep: bool = False) -> CheckReport:
        """Catalog vs originals vs features/thumbnails vs index. Array sizes, paths and the
        index's coverage always; `deep` also re-hashes the originals, verifies every array row
        against its checksum and the index against the features."""
        rep = CheckReport()
        qc = self.con.execute("PRAGMA quick_check").fetchone()[0]
        if qc != "ok":
            rep.problems.append(f"catalog: sqlite quick_check says {qc}")
        ids = self.ids()
        rep.tiles = len(ids)
        rep.problems += [f"files: {p}" for p in self.link_problems()]
        rep.problems += [f"arrays: {p} (run `mosaic db repair {self.path}`)" for p in self.size_problems()]
        if rep.problems:
            return rep
        feats = self.features()
        rep.problems += self.finite_problems()
        self._check_originals(rep, deep)
        if deep:
            self._check_rows(rep, ids, feats)
        else:
            self._check_feature_settings(rep, ids, feats)
        self._check_index(rep, ids, feats, deep)
        return rep

    def original_problems(self, deep: bool = False) -> dict:
        """Tiles whose originals lead outside their folder, are missing, or (`deep`: re-hashed)
        changed since ingest, as lists of (tile id, blob); and files under originals/ that no
        tile references."""
        out = {"outside": [], "missing": [], "changed": [], "orphans": []}
        referenced = set()
        for r in self.con.execute("SELECT * FROM tiles"):
            r = dict(r)
            p = Path(r["blob"])
            full = p if p.is_absolute() else self.path / p
            if not p.is_absolute():
                referenced.add(str(p))
            root = self.blob_root(r)
            if root is None or not inside(full, root):
                out["outside"].append((r["id"], r["blob"]))
            elif not full.is_file():
                out["missing"].append((r["id"], str(full)))
            elif deep and _sha256(full) != r["hash"]:
                out["changed"].append((r["id"], str(full)))
        orig = self.path / "originals"
        if orig.exists():
            files = [str(f.relative_to(self.path)) for f in orig.rglob("*") if f.is_file()]
            out["orphans"] = [f for f in files if f not in referenced]
        return out

    def _check_originals(self, rep: CheckReport, deep: bool) -> None:
        o = self.original_problems(deep)
        rep.problems += [f"original of tile {i} ({f}) changed since ingest (hash differs)" for i, f in o["changed"]]
        if o["outside"]:
            i, b = o["outside"][0]
            rep.problems.append(f"catalog: {len(o['outside'])} tiles' originals lead outside their folder (tampered "
                                f"with?), e.g. tile {i} ({b}); `mosaic db remove` them")
        if o["missing"]:
            i, f = o["missing"][0]
            rep.problems.append(f"originals: {len(o['missing'])} missing, e.g. tile {i} ({f})")
        if o["orphans"]:
            rep.warnings.append(f"originals: {len(o['orphans'])} files no tile references (left by an interrupted "
                                "ingest or a duplicate; harmless, reused when that file is ingested again)")

    def _check_rows(self, rep: CheckReport, ids, feats) -> None:
        for name in self.arrays():
            bad = self.bad_rows(name, ids)
            if len(bad):
                rep.problems.append(f"{name}: rows of {len(bad)} tiles fail their checksum (e.g. tile {bad[0]}): "
                                    f"run `mosaic db repair {self.path}`")
            n = self.unrecorded(name)
            if n:
                rep.warnings.append(f"{name}: {n} tiles' rows have no checksum (made by an older mosaicdb); "
                                    f"`mosaic db repair {self.path}` records them")
        off, _ = self._features_disagreeing(ids, feats, DEEP_FEATURE_SAMPLE)
        if off:
            rep.problems.append(f"features: {off} tiles disagree with their thumbnails")

    def _check_feature_settings(self, rep: CheckReport, ids, feats) -> None:
        """A few tiles' features recomputed from their thumbnails with the catalog's feature
        settings: rows computed with other settings (a tampered catalog) all disagree."""
        off, pick = self._features_disagreeing(ids, feats, QUICK_FEATURE_SAMPLE)
        n = len(pick)
        # damaged thumbnails disagree too: that is for db repair, and a reindex would recompute
        # the features from the damaged thumbnails
        thumbs = [name for name in self.arrays() if name != "features"]
        damaged = np.unique(np.concatenate([self.bad_rows(name, pick) for name in thumbs])) if off else []
        if len(damaged):
            rep.problems.append(f"thumbnails: rows of {len(damaged)} of {n} sampled tiles fail their checksum (e.g. tile "
                                f"{damaged[0]}): run `mosaic db repair {self.path}` (`mosaic db check --deep "
                                f"{self.path}` verifies every row)")
        elif off and off == n:
            kind = self.feature_spec.kind
            rep.problems.append(f"features: none of {n} sampled tiles has the features the catalog's settings "
                                f"({feature_kinds.describe(self.feature_spec)}) give its thumbnails: the settings or "
                                f"the features were changed; `mosaic db reindex {self.path} --features {kind}` "
                                "recomputes them")
        elif off:
            rep.problems.append(f"features: {off} of {n} sampled tiles disagree with their thumbnails; "
                                f"`mosaic db check --deep {self.path}` verifies every row")

    def _features_disagreeing(self, ids, feats, sample: int) -> tuple[int, np.ndarray]:
        """(how many of the sampled tiles, the sampled tile ids): tiles whose stored features
        differ from the features of their thumbnails, recomputed now."""
        if not len(ids):
            return 0, ids
        pick = ids if len(ids) <= sample else np.random.default_rng(0).choice(ids, sample, replace=False)
        pick = np.sort(pick)
        thumbs = [np.asarray(self.thumbs(s)[pick]) for s in self.thumb_sizes]
        again = tile_features(thumbs, self.thumb_sizes, self.feature_spec)
        return int((np.abs(again - np.asarray(feats[pick])).max(axis=1) > 1e-3).sum()), pick

    def _check_index(self, rep: CheckReport, ids, feats, deep: bool) -> None:
        idx = self.load_index()
        if idx is None:
            if len(ids) and (self.index_dir / "index.faiss").exists():
                rep.warnings.append(f"index: its files are damaged or from another version; `mosaic db index "
                                    f"--rebuild {self.path}` rebuilds it (make and repair do so automatically)")
            elif len(ids):
                rep.warnings.append(f"index: none yet; build it with `mosaic db index {self.path}`")
            return
        if self.index_stale():
            rep.warnings.append(f"index: out of date ({idx.ntotal} of {len(ids)} tiles); "
                                f"`mosaic db index {self.path}` updates it (make does so automatically)")
            return
        if idx.ntotal != len(idx.ids) or not np.array_equal(idx.ids, ids):
            rep.problems.append(f"index: its ids ({idx.ntotal} vectors) are not the database's {len(ids)} tiles "
                                "(its files were altered or copied from elsewhere); rebuild it with "
                                f"`mosaic db index --rebuild {self.path}`")
            return
        if len(ids):
            off, n = self.index_mismatches(idx, ids, feats, sample=2000 if deep else 32)
            if off if deep else off * 4 > n:
                rep.problems.append(f"index: {off} of {n} sampled tiles are not found under their own id at "
                                    f"their features; rebuild it with `mosaic db index --rebuild {self.path}`")

    def index_mismatches(self, idx, ids, feats, sample: int = 2000, k: int = 16) -> tuple[int, int]:
        """(how many, of how many sampled) tiles the index does not return among their own
        features' `k` nearest under an id whose features are those (itself, or an identical
        tile). Among k, not first: in a pool of near-copies an approximate index (IVF-PQ) may
        rank a copy first, and a tile missed that way is no sign of a foreign index."""
        pick = ids if len(ids) <= sample else np.sort(np.random.default_rng(1).choice(ids, sample, replace=False))
        q = np.asarray(feats[pick], np.float32)
        _, got = idx.search(q, min(k, max(len(ids), 1)), device="cpu")
        known = np.isin(got, ids)
        same = np.zeros(got.shape, bool)
        if known.any():
            rows = np.nonzero(known)[0]
            ref = np.asarray(feats[got[known]], np.float32)
            same[known] = np.abs(ref - q[rows]).max(axis=1) <= 1e-4 * max(1.0, float(np.abs(q).max()))
        return int((~same.any(axis=1)).sum()), len(pick)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
