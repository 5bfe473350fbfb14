"""Candidates from the index, then the repeat-controlled assignment of one tile per cell."""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import MosaicError, UsageError
from ..features import bad_feature_rows, lab_to_rgb
from .assign import Assignment, assign
from .grid import CellData, Grid
from .options import MatchOptions
from .oriented import best_orientations, oriented_search, query_permutations, turns_are_none
from .rerank import RERANK_FACTOR, index_is_approximate, rerank
from .unused import search_unused, use_exact
from .views import canvas_px, views

# Widening an IVF index: probe lists holding about this many times k vectors, and search rows
# that still come back short (their nearest lists used up by --max-uses) again with this many
# times more lists, up to all of them (= exact). At its tuned nprobe an IVF index returns only
# what a few lists hold, and exact search with k in the thousands costs ~2 ms a cell.
_WIDEN_SCAN = 3
_NPROBE_STEP = 4

log = logging.getLogger(__name__)


@dataclass
class MatchResult:
    assignment: Assignment
    options: MatchOptions      # as applied: min_distance resolved for this grid and pool
    warnings: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def match(db, cells: CellData, grid: Grid, opts: MatchOptions, progress: bool = False,
          exclude=None) -> MatchResult:
    """Assign a tile of `db` to every cell of `grid`. Costs are RMS differences in the feature's
    colour space (mosaicdb.feature_kinds: squared distance / cost_divisor, square-rooted).
    `exclude`: tile ids never to place (e.g. the tile a recursive sub-mosaic is made of)."""
    exclude = np.asarray([] if exclude is None else exclude, dtype=np.int64)
    known = _known_damage(db)  # found by an earlier target of this opened database
    try:
        res = _match(db, cells, grid, opts, progress, exclude if known is None else np.union1d(known, exclude))
    except MosaicError:  # e.g. a pool short by the tiles left out: say why before the error
        if known is None and getattr(db, "_met_damage", False) and _scan_damage(db) is not None:
            log.warning("%s", _damaged_warning(db, _known_damage(db)))
        raise
    if not _nonfinite(db, res.assignment):
        if known is None and getattr(db, "_met_damage", False):
            known = _scan_damage(db)  # the re-rank met them (at an infinite distance): none placed
        if known is not None:  # (said in every target's metrics; the command line says it once)
            res.warnings.insert(0, _damaged_warning(db, known))
        return res
    # features.f32 damaged after the index was built: the index still finds those tiles, whose
    # cost, turn and colours are then NaN (an assignment file that cannot be read back). Every
    # such tile is left out (a scan of the features, only now), as a fresh index leaves them out.
    bad = _scan_damage(db, fresh=True)
    res = _match(db, cells, grid, opts, progress, exclude if bad is None else np.union1d(bad, exclude))
    if bad is not None:
        res.warnings.insert(0, _damaged_warning(db, bad))
    return res


def _note_damage(db, d: np.ndarray, ids: np.ndarray) -> None:
    """Remember that a search on the stored rows (a re-rank, the exact search over unused
    tiles) met a tile whose row is damaged: a distance that is not finite (~2 ms at 65,536 x 32)."""
    if d.size and (~np.isfinite(d) & (ids >= 0)).any():
        db._met_damage = True


def _scan_damage(db, fresh: bool = False) -> np.ndarray | None:
    """The damaged rows (None: none), from a scan of the features kept on `db`: once per
    opened database, or again when `fresh`."""
    if fresh or getattr(db, "_damage_scan", None) is None:
        db._damage_scan = db.nonfinite_ids()
    return _known_damage(db)


def _known_damage(db) -> np.ndarray | None:
    """The damaged rows a scan of this opened database found, None when none or not scanned."""
    scan = getattr(db, "_damage_scan", None)
    return scan if scan is not None and len(scan) else None


def _damaged_warning(db, bad: np.ndarray) -> str:
    return (f"{len(bad)} tiles of {db.path} have features that are not finite numbers (or beyond any feature's "
            f"range) though its index holds "
            f"them (features.f32 was damaged after the index was built): left out; `mosaic db check` reports "
            f"them, `mosaic db repair` recomputes them")


def _nonfinite(db, a) -> bool:
    """Whether any placed tile's stored features are damaged (`bad_feature_rows`: NaN, infinite
    or huge). Where the costs were computed from the stored rows (a re-ranked or refined index),
    such a row has an infinite cost, never placed but as a last resort; where they came from
    the index's own copy of the vectors, the placed tiles' rows are read (20 ms for 65,536
    cells of 50,000 tiles)."""
    index = db.ensure_index()
    if not np.isfinite(a.cost).all() or a.stats.get("dither", {}).get("stopped") == "non-finite features":
        return True
    if index_is_approximate(index) or index.refines:
        return False
    placed = np.unique(a.tile_ids)
    return bool(len(placed)) and bool(bad_feature_rows(np.asarray(db.features()[placed])).any())


def _match(db, cells: CellData, grid: Grid, opts: MatchOptions, progress: bool, exclude) -> MatchResult:
    excl = np.unique(np.asarray([] if exclude is None else exclude, dtype=np.int64))
    excl = np.setdiff1d(excl, db.missing(excl), assume_unique=True)   # only live tiles shrink the pool
    n_tiles = len(db) - len(excl)
    check_dither(opts, db.feature_spec)
    opts, warnings = opts.resolved(grid.rows, grid.cols, n_tiles)
    spec = db.feature_spec
    canvas_p = _canvas_px(spec, grid) if opts.dither else None
    cell_px = _to_srgb(spec, spec.sub_means(cells.features, p=canvas_p)) if canvas_p else None
    if opts.dither and cell_px is None:  # the default weight: dithering is skipped, and said so
        warnings.append(f"no dithering: this database's {spec.kind} features hold no colours at 2x2 per cell "
                        f"(`mosaic db reindex DB --features rgb-pyramid` adds them)")
        opts = replace(opts, dither=0.0)
    t0 = time.perf_counter()
    index = db.ensure_index()
    t1 = time.perf_counter()
    divisor = float(db.feature_spec.cost_divisor)
    k = min(opts.k, n_tiles)

    def to_cost(d):
        return np.sqrt(np.maximum(d, 0.0) / divisor).astype(np.float32)

    approximate = index_is_approximate(index)
    codes = opts.orient_codes
    turns = query_permutations(spec, codes)   # each orientation: the cells' vectors permuted

    # The cells in the index's space and the lists their first search probed, for their widening
    # searches (the same cells, at the same nprobe): without turns, on the CPU scan. bench_match:
    # 0.3 s of 2.8 (the lists), then 0.07 s (the PCA).
    cells_coarse = index.coarse(cells.features, opts.device) if turns_are_none(turns, cells.features) else None

    def first_search(q):
        d, ids = _search_without(index, q, min(n_tiles, k * RERANK_FACTOR) if approximate else k, excl, opts.device,
                                 coarse=cells_coarse if q is cells.features else None, ranked=not approximate)
        if approximate:  # the best by the exact cost
            d, ids = rerank(db.features(), q, d, ids, k)
            _note_damage(db, d, ids)
        return d, ids

    d, ids = oriented_search(first_search, cells.features, k, turns)
    t2 = time.perf_counter()

    widen_seconds = [0.0, 0]  # time in widening searches and their count: part of "assign"

    def widen(which: np.ndarray, k2: int, exclude: np.ndarray):
        tw = time.perf_counter()
        try:
            return _widen(which, k2, exclude)
        finally:
            widen_seconds[0] += time.perf_counter() - tw
            widen_seconds[1] += 1

    def _widen(which: np.ndarray, k2: int, exclude: np.ndarray):
        # Searched in grid order, neighbours one after the other: they share candidates, whose
        # full vectors the re-rank then finds in cache. bench_match A/B (four alternating runs,
        # the same mosaic): 1.96-2.47 against 2.22-2.33 s.
        order = np.argsort(which, kind="stable")
        ii, dd = _widen_sorted(which[order], k2, exclude)
        ids, cost = np.empty_like(ii), np.empty_like(dd)
        ids[order], cost[order] = ii, dd
        return ids, cost

    def _widen_sorted(which: np.ndarray, k2: int, exclude: np.ndarray):
        if len(excl):
            exclude = np.union1d(exclude, excl)
        k2 = min(k2, n_tiles)
        coarse = None if cells_coarse is None else cells_coarse.take(which)

        def search(q):
            if use_exact(index.ntotal, len(exclude)):  # on the full vectors: exact costs
                dd, ii = search_unused(db.features(), index.ids, q, k2, exclude)
                _note_damage(db, dd, ii)
                return dd, ii
            if not index.inverted:
                dd, ii = index.search(q, k2, device=opts.device, exclude=exclude)  # flat: every vector
            else:
                dd, ii = _wide_ivf_search(index, q, k2, exclude, coarse, ranked=not approximate)
            if approximate:
                dd, ii = rerank(db.features(), q, dd, ii, k2)
                _note_damage(db, dd, ii)
            return dd, ii

        dd, ii = oriented_search(search, cells.features[which], k2, turns)
        return ii, to_cost(dd)

    a = assign(grid.rows, grid.cols, ids, to_cost(d), n_tiles, opts, widen, progress=progress,
               dither_input=_dither_input(db, spec, cell_px, grid) if opts.dither else None)
    if codes != (0,):  # each placed tile at its best turn, exactly, from the full vectors
        turn, sq = best_orientations(db.features(), cells.features, a.tile_ids, spec, codes)
        a.orient, a.cost = turn.reshape(grid.rows, grid.cols), to_cost(sq).reshape(grid.rows, grid.cols)
    t3 = time.perf_counter()
    return MatchResult(a, opts, warnings, {"index_load": t1 - t0, "search": t2 - t1, "assign": t3 - t2,
                                           "widen_search": widen_seconds[0], "widen_calls": widen_seconds[1]})


def check_dither(opts: MatchOptions, spec) -> None:
    """An explicit --dither needs features that hold colours at 2x2 per cell (the default does
    without on those that do not, with a warning)."""
    if opts.dither and spec.sub_columns() is None:
        raise UsageError(f"--dither needs colours at 2x2 per cell, which this database's {spec.kind} features "
                         f"do not hold: drop --dither, or `mosaic db reindex DB --features rgb-pyramid`")


def _canvas_px(spec, grid: Grid) -> int | None:
    """Dithering's canvas px per cell (views.canvas_px), or less when the features hold no level
    it divides; None when they hold none of 2, 4 or 8."""
    l, t, r, b = grid.crop
    want = canvas_px(grid.rows, grid.cols, r - l)
    return next((p for p in (8, 4, 2) if p <= want and spec.sub_columns(p) is not None), None)


def _to_srgb(spec, px):
    """Pixels in the kind's colour space -> sRGB levels (float)."""
    if px is None or getattr(spec, "space", "lab") == "rgb":
        return px
    return lab_to_rgb(px).astype(np.float32)


def _dither_input(db, spec, cell_px: np.ndarray, grid: Grid):
    """The tiles' pixels at p x p (a function of their ids), the cells', and the grid's views."""
    p = cell_px.shape[1]
    feats, cols = db.features(), spec.sub_columns(p)
    table = _colour_table(db, feats, cols)
    l, t, r, b = grid.crop
    views_ = views(grid.rows, grid.cols, p, b - t, r - l)
    # else only those columns of each row (one level): against 1M tiles, 340,000 rows read whole
    # took 0.47 s, their 12 columns of the 2x2 level 0.02 s
    rows = (lambda ids: table[ids]) if table is not None else (lambda ids: np.asarray(feats[ids, cols]))
    return (lambda ids: _to_srgb(spec, spec.sub_means(rows(np.asarray(ids, np.int64)), columns=True, p=p)),
            cell_px, views_)


# A database that dithers a second target keeps the columns dithering reads of every row (the
# level of its canvas), as one array: measured for the 2x2 level, the candidates' rows scattered
# over the memory-mapped features cost 33-47 ms a 128-cell target against 1M tiles (TLB misses
# over 1 GB), the same rows of the table 9-12 ms; the table takes 0.04-0.18 s to read (48 MB at
# 1M tiles), once. Not past this size (the 4x4 level of 1M tiles, 192 MB, fits; the 8x8 does not).
_TABLE_MAX_BYTES = 256 << 20


def _colour_table(db, feats: np.ndarray, cols) -> np.ndarray | None:
    """The table of `cols` for every row of `feats`, from the second call on with the same
    features file (unchanged: same inode, size, mtime and rows); None on the first call, or
    when it would be too large."""
    width = len(range(*cols.indices(feats.shape[1]))) if isinstance(cols, slice) else len(cols)
    if not isinstance(feats, np.memmap) or feats.shape[0] * width * 4 > _TABLE_MAX_BYTES:
        return None
    st = os.stat(feats.filename)
    key = (st.st_ino, st.st_size, st.st_mtime_ns, feats.shape, str(cols))
    seen = getattr(db, "_dither_table", None)
    if seen is None or seen[0] != key:
        db._dither_table = (key, None)
        return None
    if seen[1] is None:
        table = np.empty((feats.shape[0], width), np.float32)
        for i in range(0, feats.shape[0], 1 << 16):
            table[i:i + (1 << 16)] = feats[i:i + (1 << 16), cols]
        db._dither_table = (key, table)
    return db._dither_table[1]


# Up to this many excluded ids, search k + that many and drop them: a FAISS selector makes a
# flat search of 4,096 queries ~10x slower (measured: 250 ms against 25 ms on 500 tiles).
_DROP_MAX = 64


def _search_without(index, q: np.ndarray, k: int, excl: np.ndarray, device: str, coarse=None, ranked=True):
    """k nearest tiles of each query that are not in `excl` (sorted): (squared L2, ids), -1 padded.
    `coarse`: index.coarse(q), or None. `ranked=False`: rows may come unsorted (the caller
    re-ranks them)."""
    if not len(excl):
        return index.search(q, k, device=device, coarse=coarse, ranked=ranked)
    if len(excl) > _DROP_MAX:
        return index.search(q, k, device=device, exclude=excl, coarse=coarse, ranked=ranked)
    d, ids = index.search(q, k + len(excl), device=device, coarse=coarse)
    keep_first = np.argsort(np.isin(ids, excl), axis=1, kind="stable")[:, :k]   # excluded ids last
    d, ids = np.take_along_axis(d, keep_first, 1), np.take_along_axis(ids, keep_first, 1)
    dropped = np.isin(ids, excl)
    return np.where(dropped, np.inf, d).astype(np.float32), np.where(dropped, -1, ids)


@contextmanager
def _nprobe(index, nprobe: int):
    """The IVF index searched with `nprobe` lists for the duration (CPU searches)."""
    import faiss
    ivf = faiss.extract_index_ivf(index.index)
    old = ivf.nprobe
    ivf.nprobe = int(nprobe)
    try:
        yield
    finally:
        ivf.nprobe = old


def _wide_ivf_search(index, q: np.ndarray, k: int, exclude: np.ndarray, coarse=None, ranked=True):
    """k nearest tiles not in `exclude` from an IVF index, with nprobe raised until every row
    is full (or all lists are probed, which is exact search). On the CPU index: a GPU copy
    would not see the nprobe changes. `coarse`: index.coarse(q) at the index's own nprobe,
    or None. `ranked=False`: rows may come unsorted (the caller re-ranks them)."""
    import faiss
    ivf = faiss.extract_index_ivf(index.index)
    nlist, base = int(ivf.nlist), int(ivf.nprobe)
    avail = max(index.ntotal - len(exclude), 1)
    want = min(k, avail)
    nprobe = min(nlist, max(base, math.ceil(_WIDEN_SCAN * k * nlist / avail)))
    with _nprobe(index, nprobe):
        dd, ii = index.search(q, k, device="cpu", exclude=exclude, coarse=coarse if nprobe == base else None,
                              ranked=ranked)
    short = (ii >= 0).sum(axis=1) < want  # (unranked rows may have their gaps anywhere)
    while short.any() and nprobe < nlist:
        nprobe = min(nlist, nprobe * _NPROBE_STEP)
        with _nprobe(index, nprobe):
            d2, i2 = index.search(q[short], k, device="cpu", exclude=exclude, ranked=ranked)
        dd[short], ii[short] = d2, i2
        short[short] = (i2 >= 0).sum(axis=1) < want
    return dd, ii
