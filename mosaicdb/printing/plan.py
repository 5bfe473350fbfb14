"""Everything a print request will produce, worked out (and every bad input refused) before
any pixel is written: geometry, panels, file names, profile, the tiles' own resolution at the
print size, estimated bytes (from a small rendered and encoded sample), warnings."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..io import free_bytes
from ..render.cells import check_tiles_present
from ..units import human_bytes
from .canvas import PrintCanvas, redraws, stripes
from .geometry import Geometry, PanelLayout, make_geometry, plan_panels
from .icc import Profile, converter, load_profile
from .options import PrintOptions
from .tiffstrips import CLASSIC_MAX, encode_strip, rows_per_strip

TIFF_SUFFIXES = (".tif", ".tiff")
NOT_A_PRINT = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".pdf", ".psd", ".psb", ".dzi", ".json", ".eps"}
WIDE_SINGLE = 65_500
HEADER_BYTES = 64 << 10


@dataclass
class Outputs:
    folder: Path
    base: str
    files: list            # one per panel, row-major
    manifest: Path
    layout: Path | None
    proof: Path | None
    make_folder: bool = False

    def all(self) -> list[Path]:
        return [*self.files, *(p for p in (self.proof, self.layout) if p), self.manifest]


@dataclass
class PrintPlan:
    """A print request worked out before any pixel is drawn: geometry, panels, file names, colour
    profile, the tiles' own resolution at print size, size and time estimates, warnings."""
    options: PrintOptions
    geometry: Geometry
    layout: PanelLayout
    profile: Profile
    outputs: Outputs
    tiles: dict                              # the tiles' own resolution at print size
    compress_ratio: float
    est_bytes: list = field(default_factory=list)   # per file
    est_seconds: float = 0.0
    free_bytes: int = 0
    redraws: int = 1
    warnings: list = field(default_factory=list)
    canvas: PrintCanvas | None = None

    @property
    def est_total(self) -> int:
        return int(sum(self.est_bytes))

    def to_json(self) -> dict:
        """The plan as `mosaic plan --print --json` shows it."""
        g, lay = self.geometry, self.layout
        return {"geometry": g.to_json(), "compression": self.options.compression,
                "profile": self.profile.to_json(),
                "panel_grid": [lay.cols, lay.rows], "overlap_px": lay.overlap_px, "overlap_mm": g.mm(lay.overlap_px),
                "files": [{"name": f.name, "size_px": [p.width, p.height], "size_mm": [g.mm(p.width), g.mm(p.height)],
                           "box_px": [p.x0, p.y0, p.x1, p.y1], "raw_bytes": p.width * p.height * 3,
                           "est_bytes": int(b), "est_bigtiff": b > CLASSIC_MAX}
                          for f, p, b in zip(self.outputs.files, lay.panels, self.est_bytes)],
                "tiles": self.tiles, "est_total_bytes": self.est_total, "est_seconds": round(self.est_seconds, 1),
                "free_bytes": self.free_bytes, "fits_on_disk": self.est_total * 1.1 <= self.free_bytes,
                "cell_redraws": self.redraws, "proof": str(self.outputs.proof) if self.outputs.proof else None,
                "layout": str(self.outputs.layout) if self.outputs.layout else None,
                "manifest": str(self.outputs.manifest), "warnings": list(self.warnings)}


def resolve_outputs(out, name: str, layout: PanelLayout, proof: bool) -> Outputs:
    out = Path(out)
    if out.suffix.lower() in TIFF_SUFFIXES and not out.is_dir():
        folder, base, single = out.parent if str(out.parent) else Path("."), out.stem, out.name
        make = False
        if not folder.is_dir():
            raise UsageError(f"--out {out}: folder {folder} does not exist")
    elif out.suffix.lower() in NOT_A_PRINT and not out.is_dir():
        raise UsageError(f"--out {out}: a print is a .tif/.tiff file or a folder, not {out.suffix}")
    else:
        folder, base, single = out, name, f"{name}.tif"
        make = not out.is_dir()
        if make and (out.exists() or out.is_symlink()):  # e.g. /dev/null: a folder cannot be made there
            raise UsageError(f"--out {out} exists and is not a folder: give a folder, or a NAME.tif file")
        parent = out.parent if str(out.parent) else Path(".")
        if make and not parent.is_dir():
            raise UsageError(f"--out {out}: folder {parent} does not exist")
    check = folder if folder.is_dir() else folder.parent if str(folder.parent) else Path(".")
    if not os.access(check, os.W_OK):
        raise UsageError(f"--out {out}: folder {check} is not writable")
    if layout.single:
        files = [folder / single]
        manifest, lay = folder / f"{base}.print.json", None
    else:
        files = [folder / p.name(base) for p in layout.panels]
        manifest, lay = folder / f"{base}.panels.json", folder / f"{base}.layout.png"
    return Outputs(folder, base, files, manifest, lay, folder / f"{base}.proof.jpg" if proof else None, make)


def tile_resolution(db, saved, g: Geometry) -> tuple[dict, list[str]]:
    """Each used tile's original (its centre square) against the px a cell needs: the tiles'
    own ppi at print size, and a warning when cells are drawn larger than their originals."""
    ids, counts = np.unique(saved.tile_ids, return_counts=True)
    side = {r["id"]: min(r["width"], r["height"]) for r in db.tiles(ids)}
    sides = np.array([side.get(int(i), 0) for i in ids], np.float64)
    t = g.cell_px
    ppi = sides * g.dpi / t
    order = np.argsort(ppi)
    cum = np.cumsum(counts[order]) / counts.sum()
    median_ppi = float(ppi[order][np.searchsorted(cum, 0.5)])
    up = sides < t
    info = {"cell_px": t, "distinct_tiles": int(len(ids)), "min_original_px": int(sides.min()),
            "min_ppi": round(float(ppi.min()), 1), "median_ppi": round(median_ppi, 1),
            "upsampled_tiles": int(up.sum()), "upsampled_cells": int(counts[up].sum()),
            "max_upsampling": round(float(t / sides.min()), 2) if sides.min() else None}
    warnings = []
    if up.any():
        f = t / sides[up]
        warnings.append(f"{info['upsampled_cells'] / counts.sum():.0%} of cells ({int(up.sum())} of {len(ids)} distinct "
                        f"tiles) are upsampled: their originals are smaller than the {t} px a cell needs at "
                        f"{g.dpi:.0f} dpi (up to {f.max():.1f}x, median {np.median(f):.1f}x; the smallest is "
                        f"{int(sides.min())} px, {info['min_ppi']:.0f} ppi at this size)")
    return info, warnings


def sample_encoding(canvas: PrintCanvas, compression: str, blocks: int = 6, cells: int = 16,
                    workers: int = 1) -> tuple[float, float]:
    """(compressed / raw bytes, seconds per raw byte on one thread) of a few blocks of cells
    spread over the mosaic, drawn and encoded as the print will be, on `workers` threads (the
    tiles they decode stay in the renderer's cache for the print itself)."""
    g = canvas.g
    k = g.bleed_cells
    rs = np.unique(np.linspace(k, k + g.rows - 1, min(blocks, g.rows)).round().astype(int))
    rng = np.random.default_rng(0)
    n = min(cells, g.cols)
    starts = [(int(R), k + int(rng.integers(0, g.cols - n + 1))) for R in rs]
    rps = rows_per_strip(g.width)

    def sample(start) -> tuple[int, int, float]:
        t0 = time.thread_time()
        R, C0 = start
        img = canvas.cell_block(R, R + 1, C0, C0 + n)
        if canvas.convert:
            img = canvas.convert(img)
        enc = sum(len(encode_strip(img[y:y + rps], compression)) for y in range(0, img.shape[0], rps))
        return img.nbytes, enc, time.thread_time() - t0

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="print-sample") as pool:
        done = list(pool.map(sample, starts))
    raw, enc, cpu = (sum(x) for x in zip(*done))
    return enc / raw, cpu / raw


def plan_print(db, saved, opts: PrintOptions, out, name: str = "print", *, sample: bool = True,
               target=None) -> PrintPlan:
    """Validate `opts` against this assignment and database and work out the whole print."""
    profile = load_profile(opts.icc)
    g, warnings = make_geometry(saved.cols, saved.rows, opts.size_in, float(opts.dpi), opts.bleed_in)
    layout = plan_panels(g, panel_width_in=opts.panel_width_in, grid=opts.panel_grid, overlap_in=opts.overlap_in)
    if layout.note:
        warnings.append(layout.note)
    outputs = resolve_outputs(out, name, layout, opts.proof)
    check_tiles_present(db, saved.tile_ids)
    tiles, tw = tile_resolution(db, saved, g)
    warnings += tw
    workers = opts.resolved_workers()
    band_bytes = band_budget(opts)
    canvas = PrintCanvas(db, saved, g, opts.render, target=target, convert=converter(profile))
    ratio, sec_per_byte = (sample_encoding(canvas, opts.compression, workers=workers) if sample else (1.0, 0.0))
    if opts.compression == "none":
        ratio = 1.0
    est = [p_.width * p_.height * 3 * ratio * (1.02 if opts.compression != "none" else 1) + HEADER_BYTES
           + (p_.height * 16) for p_ in layout.panels]
    plan = PrintPlan(opts, g, layout, profile, outputs, tiles, ratio, est,
                     g.width * g.height * 3 * sec_per_byte / workers,
                     redraws=max(redraws(g, band_bytes, x1 - x0) for x0, x1, _ in stripes(g, layout, band_bytes)),
                     warnings=warnings, canvas=canvas)
    plan.free_bytes = free_bytes(outputs.folder)
    if layout.single:
        if est[0] > CLASSIC_MAX:
            warnings.append(f"{outputs.files[0].name} will be about {human_bytes(est[0])}: over 4 GB, so it is written "
                            "as BigTIFF, which many RIPs do not read; ask your print shop, or split it with "
                            "--panel-width")
        if max(g.width, g.height) > WIDE_SINGLE:
            warnings.append(f"{g.width:,} x {g.height:,} px is more than {WIDE_SINGLE:,} px a side, which many RIPs "
                            "and editors refuse; ask your print shop, or split it with --panel-width")
    if plan.redraws > 1:
        warnings.append(f"a row of cells is larger than the row buffer ({human_bytes(band_bytes)} a band), so each "
                        f"cell is drawn {plan.redraws} times; a larger --buffer (or panels) avoids it")
    return plan


def band_budget(opts: PrintOptions) -> int:
    """Bytes of one rendered band: the buffer shared by the bands in flight and their copies."""
    return max(1, opts.buffer_bytes // (2 * (opts.resolved_workers() + 1)))
