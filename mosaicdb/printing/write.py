"""Write a print: one pass over the canvas, top to bottom, in bands rendered by worker
threads; each band feeds every panel it crosses (so overlaps cost no extra rendering), the
proof/layout reducers, and nothing else. The same threads encode the strips, straight from the
bands; this thread only hands rows on and writes encoded strips in order. Panel files are opened when the pass reaches them
and closed when it leaves them. Every output is written under a temporary name; all are
renamed into place only when all have been written, and removed on any failure or Ctrl-C."""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

from .._version import __version__
from ..io import AtomicFiles, check_free_space
from ..progress import progress_bar
from ..units import human_bytes
from .canvas import band_edges, stripes
from .plan import PrintPlan, band_budget, plan_print
from .proof import LAYOUT_MAX, PROOF_MAX, draw_layout, draw_proof, render_small
from .tiffstrips import CLASSIC_MAX, StripTiffWriter

MANIFEST_VERSION = 1


class StageClock:
    """Seconds per stage of a print: render_cpu and encode_cpu are CPU seconds summed over the
    worker threads that did them; write (strips, directories, fsync) and wait (for a band) are
    wall seconds of the writing thread."""

    def __init__(self):
        self.render_cpu = self.encode_cpu = self.write = self.wait = 0.0

    def timed_band(self, canvas, *args):
        t0 = time.thread_time()
        out = canvas.band(*args)
        self.render_cpu += time.thread_time() - t0  # one += at a time under the GIL
        return out

    def add_writer(self, w: StripTiffWriter) -> None:
        self.encode_cpu += w.encode_seconds
        self.write += w.write_seconds

    def to_json(self) -> dict:
        return {k: round(getattr(self, k), 3) for k in ("render_cpu", "encode_cpu", "write", "wait")}


def _ordered_bands(canvas, edges, x0, x1, pool, inflight: int, clock: StageClock):
    """Yield (y0, y1, pixels [y0, y1) x [x0, x1)) in order, rendering up to `inflight` bands ahead."""
    pending = []

    def result(f):
        t0 = time.perf_counter()
        r = f.result()
        clock.wait += time.perf_counter() - t0
        return r

    try:
        for e in edges:
            pending.append((e, pool.submit(clock.timed_band, canvas, *e, x0, x1)))
            if len(pending) > inflight:
                (y0, y1), f = pending.pop(0)
                yield y0, y1, result(f)
        while pending:
            (y0, y1), f = pending.pop(0)
            yield y0, y1, result(f)
    finally:
        for _, f in pending:
            f.cancel()


def write_print(db, saved, opts, out, name: str = "print", *, progress: bool = False, target=None,
                plan: PrintPlan | None = None, assignment_path: str | None = None) -> dict:
    """Render `saved` as print file(s) under `out`; returns the manifest (also written), plus
    `stage_seconds` (render/encode CPU seconds, write/wait seconds; not in the file)."""
    plan = plan or plan_print(db, saved, opts, out, name, target=target)
    check_free_space(plan.outputs.folder, plan.est_total, "the print", free=plan.free_bytes)
    g, lay, outs = plan.geometry, plan.layout, plan.outputs
    workers = opts.resolved_workers()
    band_bytes = band_budget(opts)
    if outs.make_folder:
        outs.folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    group = AtomicFiles()
    writers: dict[int, StripTiffWriter] = {}
    written: dict[int, dict] = {}
    icc = plan.profile.data
    software = f"mosaicdb {__version__}"
    pool = ThreadPoolExecutor(workers, thread_name_prefix="print")
    passes = stripes(g, lay, band_bytes)
    clock = StageClock()
    bar = progress_bar(progress, sum(g.height * (x1 - x0) for x0, x1, _ in passes), f"print {outs.base}", unit="px",
                       unit_scale=True, smoothing=0.05)
    ok = False
    try:
        for sx0, sx1, idx in passes:
            edges = band_edges(g, band_bytes, sx1 - sx0)
            for y0, y1, band in _ordered_bands(plan.canvas, edges, sx0, sx1, pool, workers + 1, clock):
                for i in idx:
                    p = lay.panels[i]
                    if p.y1 <= y0 or p.y0 >= y1 or i in written:
                        continue
                    w = writers.get(i)
                    if w is None:
                        w = writers[i] = StripTiffWriter(group.temp(outs.files[i]), p.width, p.height, dpi=g.dpi, icc=icc,
                                                         compression=opts.compression, software=software, pool=pool,
                                                         max_pending=2 * workers + 2)
                    a, b = max(p.y0, y0), min(p.y1, y1)
                    w.add_rows(band[a - y0:b - y0, p.x0 - sx0:p.x1 - sx0])
                    if b == p.y1:
                        written[i] = w.close()
                        clock.add_writer(w)
                        del writers[i]
                bar.update((y1 - y0) * (sx1 - sx0))
        bar.close()
        extras = {}
        small = {}
        for key, path, longest in (("proof", outs.proof, PROOF_MAX), ("layout", outs.layout, LAYOUT_MAX)):
            if path is None:
                continue
            img, scale = small.get("img") or render_small(db, saved, g, longest, opts.render,
                                                           convert=plan.canvas.convert, target=target)
            small["img"] = (img, scale)
            tmp = group.temp(path)
            if key == "proof":
                im = draw_proof(img, scale, g.trim_box, lay.panels, lay.overlap_px)
                im.save(tmp, "JPEG", quality=opts.render.quality, icc_profile=icc, dpi=(g.dpi * scale,) * 2)
            else:
                im = draw_layout(img, g.trim_box, lay.panels, lay.overlap_px, [f.name for f in outs.files])
                im.save(tmp, "PNG", icc_profile=icc)
            extras[key] = {"name": path.name, "size_px": list(im.size), "scale": round(scale, 6)}
        warnings = list(plan.warnings)
        for i, f in enumerate(outs.files):
            if written[i]["bigtiff"]:
                warnings.append(f"{f.name} is {human_bytes(written[i]['bytes'])}: over 4 GB, written as BigTIFF, which "
                                "many RIPs do not read; ask your print shop, or split it with --panel-width")
        warnings += _stale_panels(outs)
        manifest = _manifest(plan, written, extras, warnings, time.perf_counter() - t0, assignment_path, saved)
        group.temp(outs.manifest).write_text(json.dumps(manifest, indent=2))
        group.commit(order=[outs.manifest])
        # returned, not written: the manifest file stays the same from run to run but for `seconds`
        manifest["stage_seconds"] = {**clock.to_json(), "workers": workers}
        ok = True
    finally:
        bar.close()
        for w in writers.values():
            w.abort()
        pool.shutdown(wait=True, cancel_futures=True)
        group.discard()
        if not ok and outs.make_folder:
            try:
                outs.folder.rmdir()  # only if this run made it and left it empty
            except OSError:
                pass
    return manifest


def _stale_panels(outs) -> list[str]:
    pat = re.compile(re.escape(outs.base) + r"_r\d\d_c\d\d\.tif$")
    current = {f.name for f in outs.files}
    stale = sorted(p.name for p in outs.folder.iterdir() if pat.match(p.name) and p.name not in current)
    if stale:
        return [f"{len(stale)} panel file(s) from an earlier print are still in {outs.folder} "
                f"(e.g. {stale[0]}); they are not part of this print"]
    return []


def _manifest(plan: PrintPlan, written: dict, extras: dict, warnings: list, seconds: float, assignment_path,
              saved) -> dict:
    g, lay, outs = plan.geometry, plan.layout, plan.outputs
    tx0, ty0, tx1, ty1 = g.trim_box
    panels = []
    for i, (f, p) in enumerate(zip(outs.files, lay.panels)):
        ix0, iy0, ix1, iy1 = max(p.x0, tx0), max(p.y0, ty0), min(p.x1, tx1), min(p.y1, ty1)
        trim = [ix0 - p.x0, iy0 - p.y0, ix1 - p.x0, iy1 - p.y0] if ix1 > ix0 and iy1 > iy0 else None
        ov = lay.overlap_px
        panels.append({
            "name": f.name, "row": p.row, "col": p.col,
            "box_px": [p.x0, p.y0, p.x1, p.y1], "size_px": [p.width, p.height],
            "size_mm": [g.mm(p.width), g.mm(p.height)], "offset_mm": [g.mm(p.x0), g.mm(p.y0)],
            "overlap_px": {"left": ov if p.col > 1 else 0, "right": ov if p.col < lay.cols else 0,
                           "top": ov if p.row > 1 else 0, "bottom": ov if p.row < lay.rows else 0},
            "trim_box_px": trim, **written[i]})
    return {
        "format": "mosaicdb print manifest", "version": MANIFEST_VERSION, "software": f"mosaicdb {__version__}",
        "assignment": assignment_path, "db": saved.meta.db, "options": plan.options.to_json(),
        "dpi": g.dpi, "requested_dpi": g.requested_dpi, "resolution_unit": "inch",
        "cell_px": g.cell_px, "grid": [g.cols, g.rows],
        "size_px": [g.width, g.height], "size_mm": [g.mm(g.width), g.mm(g.height)],
        "trim_box_px": list(g.trim_box), "trim_mm": [g.mm(g.trim_w), g.mm(g.trim_h)],
        "bleed_box_px": [0, 0, g.width, g.height],
        "bleed": {"px": g.bleed_px, "mm": g.mm(g.bleed_px), "cells": g.bleed_cells,
                  "content": "the assignment's cells reflected across each edge"},
        "overlap": {"px": lay.overlap_px, "mm": g.mm(lay.overlap_px)},
        "panel_grid": {"cols": lay.cols, "rows": lay.rows},
        "compression": plan.options.compression,
        "predictor": "horizontal" if plan.options.compression != "none" else None,
        "profile": plan.profile.to_json(),
        "panels": panels, **extras, "tiles": plan.tiles,
        "bytes": sum(w["bytes"] for w in written.values()), "classic_tiff_limit": CLASSIC_MAX,
        "seconds": round(seconds, 2), "warnings": warnings}
