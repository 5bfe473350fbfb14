"""A tile database's vector index: when it is built, updated in place or rebuilt, and
searching it. A mixin of `TileDB`."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .. import feature_kinds
from ..errors import EmptyDatabase, IndexStale, UsageError, check_int
from ..features import bad_feature_rows
from ..index import IndexOptions, VectorIndex, build_index
from ..index.faiss_index import INVERTED_KINDS, IVF_KINDS, exact_search, is_count, read_infos
from ..index.ivfpq import MIN_VECTORS, resolve_kind
from . import catalog

log = logging.getLogger(__name__)

# Tiles looked up by their own features each time a database's index is first used.
INDEX_PROBES = 32


class IndexLifecycle:
    @property
    def index_dir(self) -> Path:
        return self.path / "index"

    def index(self, options: IndexOptions | None = None, *, rebuild: bool = False, keep_kind: bool = False) -> dict:
        """Bring the index up to date and return its infos: built from scratch when `rebuild`
        or when `options` fix its kind or parameters, updated in place otherwise. `keep_kind`
        (options of kind auto, meaning none was given): a rebuild keeps the kind the index was
        last built with (`mosaic db index --rebuild` without --kind)."""
        opts = options or IndexOptions()
        if not (rebuild or opts.kind != "auto" or opts.nlist or opts.nprobe or opts.pq_m or opts.refine_factor):
            return self.update_index(opts)
        if keep_kind and opts.kind == "auto":
            self._writable()
            with self.lock:
                return self._build_index_locked(self._chosen_options(opts, self.load_index()))
        return self.build_index(opts)

    def load_index(self) -> VectorIndex | None:
        """The saved vector index (loaded once), or None when there is none yet."""
        if self._index is None:
            self.refuse_links()  # an index/ that is a link would be read from wherever it leads
            self._index = VectorIndex.load(self.index_dir, rows=self.features)
        return self._index

    def index_stale(self) -> bool:
        """Whether the index is missing or does not cover the catalog as it is now (nor its
        vectors' width: FAISS asserts on queries of another)."""
        idx = self.load_index()
        return idx is None or idx.infos.get("catalog_version") != self.version or idx.index.d != self.dim

    def build_index(self, options: IndexOptions | None = None, progress: bool = False) -> dict:
        """Build the index from scratch (takes the write lock); returns its index_infos."""
        self._writable()
        with self.lock:
            return self._build_index_locked(options or IndexOptions())

    def _build_index_locked(self, options: IndexOptions) -> dict:
        self.refuse_links()
        ids = self.ids()
        if len(ids) == 0:
            raise EmptyDatabase(f"{self.path} has no tiles: add some with `mosaic db ingest {self.path} FOLDER`")
        self.check_rows("features", ids)
        return self._index_of(ids, options)

    def _index_of(self, ids: np.ndarray, options: IndexOptions) -> dict:
        """Build, save and keep the index of the tiles `ids` (their rows already trusted)."""
        # rows, not a copy of the vectors: the ivfpq kind reads them a chunk at a time and
        # refines its searches from them
        # tiles whose features are NaN or infinite: in the index, never found (counted here, where
        # every row is read anyway, so that make can say so without reading them again)
        nonfinite = len(np.intersect1d(self.nonfinite_ids(), ids))
        idx = build_index(None, ids, options, pca_dims=feature_kinds.index_pca_dims(self.feature_spec, len(ids)),
                          extra={"catalog_version": self.version, "ntotal_at_build": len(ids),
                                 "features": feature_kinds.signature(self.feature_spec), "nonfinite": nonfinite},
                          rows=self.features)
        idx.save(self.index_dir)
        self._index = idx
        # the choice outlives the index files: a lost or damaged index is rebuilt as this kind
        with self.con:
            catalog.set_meta(self.con, index_options=asdict(options))
        self._refresh()
        return idx.infos

    def update_index(self, options: IndexOptions | None = None) -> dict:
        """Bring the index up to date with the catalog: add and remove in place, or rebuild when
        the pool doubled or halved; returns its index_infos."""
        self._writable()
        with self.lock:
            if len(self) == 0:  # (the locked helper returns {} here, which callers can't print)
                raise EmptyDatabase(f"{self.path} has no tiles: add some with `mosaic db ingest {self.path} FOLDER`")
            return self._update_index_locked(options)

    def _update_index_locked(self, options: IndexOptions | None) -> dict:
        """Bring the index up to date: add/remove ids in place, or rebuild when the pool size
        moved far from what the index was built for (flat grew past flat_max, IVF 2x off)."""
        self.refuse_links()
        idx = self.load_index()
        if idx is not None and options is None and self._recorded_options(idx) is None:
            idx = None  # infos from an older or damaged index, and no record: rebuild with defaults
        options = self._chosen_options(options, idx)
        ids = self.ids()
        if idx is None or len(ids) == 0:
            return self._build_index_locked(options) if len(ids) else {}
        built = idx.infos.get("ntotal_at_build", idx.ntotal) or 1
        kind = idx.infos["kind"]
        too_far = (kind == "flat" and options.kind == "auto" and len(ids) > options.flat_max) or \
                  (kind in INVERTED_KINDS and not 0.5 <= len(ids) / built <= 2.0) or \
                  (kind in IVF_KINDS and options.kind == "auto"
                   and self._auto_kind(options, len(ids)) == "ivfpq")
        if too_far or idx.index.d != self.dim or feature_kinds.index_outdated(idx.infos, self.feature_spec, len(ids)):
            return self._build_index_locked(options)
        missing = np.setdiff1d(ids, idx.ids)
        extra = np.setdiff1d(idx.ids, ids)
        self.check_rows("features", missing)
        idx.remove(extra)
        added = np.asarray(self.features()[missing])
        idx.add(added, missing)
        nonfinite = _saved_count(idx.infos)
        if nonfinite is not None:  # the removed tiles' rows are still there (row = id)
            nonfinite += _nonfinite_rows(added) - _nonfinite_rows(np.asarray(self.features()[extra]))
        idx.infos.update(ntotal=idx.ntotal, catalog_version=self.version, updated_at=time.time(),
                         nonfinite=None if nonfinite is None else max(0, nonfinite))
        idx.save(self.index_dir)
        return idx.infos

    def _recorded_options(self, idx: VectorIndex | None) -> IndexOptions | None:
        """The options the index was last built with: as the catalog records them at each build,
        else (databases indexed before that record) as the index's infos say, read even when
        the index itself is missing or damaged; None when neither is there and valid."""
        infos = idx.infos if idx is not None else read_infos(self.index_dir) or {}
        for saved in (self.meta.get("index_options"), infos.get("options")):
            if isinstance(saved, dict):
                try:
                    return IndexOptions(**saved)
                except (TypeError, UsageError):
                    pass
        return None

    def _chosen_options(self, given: IndexOptions | None, idx: VectorIndex | None) -> IndexOptions:
        """The options to update or rebuild the index with: the kind and parameters it was last
        built with (a hand-chosen --kind survives a lost, damaged or foreign index), with the
        other settings of `given` (kind auto: the update path of `index()` gets no other)."""
        recorded = self._recorded_options(idx)
        if recorded is None:
            if idx is None and self._index_files_left():
                log.warning("the index of %s is damaged and the kind it was built with is not recorded: rebuilding "
                            "it as kind auto (if it was built with --kind, run `mosaic db index %s --kind KIND`)",
                            self.path, self.path)
            return given or IndexOptions()
        recorded = self._recorded_pq_m_that_fits(recorded)
        if given is not None:  # parameters given (non-zero) win over the recorded ones
            recorded = replace(given, kind=recorded.kind, **{k: getattr(given, k) or getattr(recorded, k)
                                                             for k in ("nlist", "nprobe", "pq_m", "refine_factor")})
        return self._saved_options_that_fit(recorded)

    def _recorded_pq_m_that_fits(self, options: IndexOptions) -> IndexOptions:
        """The recorded options, with an ivfpq --pq-m that no longer divides the index's
        dimensions (the features were reindexed as another kind since) chosen again: the
        user gave no --pq-m now, so refusing would fail make, reindex and repair for good."""
        dims = feature_kinds.index_pca_dims(self.feature_spec, len(self)) or self.dim
        if options.kind != "ivfpq" or not options.pq_m or dims % options.pq_m == 0:
            return options
        log.warning("%s: the --pq-m %d its ivfpq index was built with does not divide the %d dimensions of its "
                    "features now: rebuilding it with a chosen one", self.path, options.pq_m, dims)
        return replace(options, pq_m=0)

    def _index_files_left(self) -> bool:
        try:
            return any(self.index_dir.iterdir())
        except OSError:
            return False

    def _saved_options_that_fit(self, options: IndexOptions) -> IndexOptions:
        """The options an index was built with, to rebuild it after the pool changed; an ivfpq
        index over a pool that shrank below what ivfpq trains on becomes kind auto (nobody asked
        for ivfpq now: refusing would fail `db remove` or `make` with an option never given)."""
        if options.kind == "ivfpq" and len(self) < MIN_VECTORS:
            log.warning("%s has %d tiles now, too few for its ivfpq index (%d at least): rebuilding it as kind "
                        "auto (once it has more, run `mosaic db index %s --kind ivfpq`)",
                        self.path, len(self), MIN_VECTORS, self.path)
            return replace(options, kind="auto", pq_m=0, refine_factor=0, nlist=0, nprobe=0)
        return options

    def _auto_kind(self, options: IndexOptions, n: int) -> str:
        """The kind `auto` builds for n tiles of this database's features."""
        dims = feature_kinds.index_pca_dims(self.feature_spec, n) or self.dim
        return resolve_kind("auto", n, dims, options.flat_max, options.ivf_ram_max)

    def ensure_index(self) -> VectorIndex:
        """The index, brought up to date first if the catalog changed since it was built."""
        if len(self) == 0:
            raise EmptyDatabase(f"{self.path} has no tiles: add some with `mosaic db ingest {self.path} FOLDER`")
        if self.index_stale():
            if self.readonly:
                raise IndexStale(f"the index of {self.path} is out of date: run `mosaic db index {self.path}`")
            self.update_index()
        idx = self.load_index()
        if not getattr(self, "_index_probed", False):
            if self.index_foreign(idx):
                if self.readonly:
                    raise IndexStale(f"the index of {self.path} does not find its own tiles (copied from another "
                                     f"database, or damaged): run `mosaic db index --rebuild {self.path}`")
                log.warning("the index of %s does not find its own tiles: rebuilding it", self.path)
                self._writable()
                with self.lock:  # its infos may be another database's: the catalog's record comes first
                    self._build_index_locked(self._chosen_options(None, idx))
                idx = self.load_index()
            self._warn_nonfinite(idx)
            self._index_probed = True
        return idx

    def _warn_nonfinite(self, idx: VectorIndex) -> None:
        """Once per opened database (a batch of targets warns once): tiles whose features are
        NaN or infinite, which no search returns, so matching goes on without them. The count
        the index recorded when it read them (an index from before that record: the rows are
        scanned, 0.4 s warm at 1M tiles of 255 dims, 1.8 s from disk)."""
        n = _saved_count(idx.infos)
        if n is None:
            n = len(self.nonfinite_ids())
        if n:
            log.warning("%s: %d tiles have non-finite features and are left out of matching: `mosaic db check %s` "
                        "reports them, `mosaic db repair %s` recomputes them", self.path, n, self.path, self.path)

    def index_foreign(self, idx) -> bool:
        """Whether `idx` fails to return a quarter or more of a few sampled tiles at their own
        features: an index file copied from another database (same size, other vectors), or
        ids that no longer belong to its vectors. Cheap enough for every make."""
        ids = self.ids()
        if not len(ids):
            return False
        off, n = self.index_mismatches(idx, ids, self.features(), sample=INDEX_PROBES)
        return off * 4 > n

    def search(self, vectors: np.ndarray, k: int, *, exact: bool = False, device: str = "auto",
               exclude: np.ndarray | None = None):
        """k nearest tiles of each query: (squared L2 distances (n, k), tile ids (n, k), -1 padded).
        `exclude`: tile ids never to return."""
        k = check_int("k", k, 1, 4096)
        try:
            vectors = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise UsageError(f"queries must be (n, {self.dim}) feature vectors") from None
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


def _nonfinite_rows(rows: np.ndarray) -> int:
    return int(bad_feature_rows(rows).sum()) if len(rows) else 0


def _saved_count(infos: dict) -> int | None:
    """infos["nonfinite"] when it is a count of at most the index's tiles (index infos are
    untrusted), else None."""
    n, total = infos.get("nonfinite"), infos.get("ntotal")
    return n if is_count(n) and is_count(total) and n <= total else None
