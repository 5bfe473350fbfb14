"""Where every pixel of a print goes: cell size and effective dpi from --size/--dpi, the bleed
(extra cells reflected across each edge), and the panel boxes with their overlaps.

Cell size: `render.printsize.fit_cells`, the rule every size request uses (whole pixels per
cell, the dpi written to the file adjusted so the print lands exactly on the size). Tiles are
never resampled twice and seams stay on whole pixels.

Bleed: the grid is extended by k cells on every side whose tiles are the assignment's own,
reflected across the edge (cell -1 is cell 1, cell n is cell n-2), each drawn upright and at
full size, with the colour transfer of the cell it copies. The canvas is the trim box (the
mosaic) plus `bleed_px` of that extension on each side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..render.printsize import MM_PER_IN, fit_cells
from .tiffstrips import MAX_SIDE

PANEL_MAX_SIDE = 65_500       # JPEG-era and many RIPs' limit, for every panel
PANEL_MAX_BYTES = 4 * 10 ** 9  # raw bytes of a panel, so it stays a classic (< 4 GiB) TIFF
# A wall of 20x20 panels is already far past any real hanging; beyond it a typo (1000x1000)
# would spend minutes writing a million files, so refuse it before any work.
MAX_PANELS = 400


def reflect_index(n: int, k: int) -> np.ndarray:
    """Original cell index of each of the n + 2k extended cells (reflection without repeating
    the edge cell; repeated reflection for small n)."""
    if n == 1:
        return np.zeros(1 + 2 * k, np.int64)
    return np.pad(np.arange(n), k, mode="reflect").astype(np.int64)


@dataclass(frozen=True)
class Geometry:
    cols: int
    rows: int
    cell_px: int
    dpi: float                # effective: written to the file
    requested_dpi: float
    bleed_px: int
    requested_size_in: tuple  # (w or long side, h or None)

    @property
    def bleed_cells(self) -> int:
        return -(-self.bleed_px // self.cell_px) if self.bleed_px else 0

    @property
    def trim_w(self) -> int:
        return self.cols * self.cell_px

    @property
    def trim_h(self) -> int:
        return self.rows * self.cell_px

    @property
    def width(self) -> int:
        return self.trim_w + 2 * self.bleed_px

    @property
    def height(self) -> int:
        return self.trim_h + 2 * self.bleed_px

    @property
    def trim_box(self) -> tuple[int, int, int, int]:
        b = self.bleed_px
        return b, b, b + self.trim_w, b + self.trim_h

    @property
    def offset(self) -> int:
        """Extended-grid pixel of canvas pixel 0 (same on both axes)."""
        return self.bleed_cells * self.cell_px - self.bleed_px

    def row_map(self) -> np.ndarray:
        return reflect_index(self.rows, self.bleed_cells)

    def col_map(self) -> np.ndarray:
        return reflect_index(self.cols, self.bleed_cells)

    def mm(self, px: float) -> float:
        return round(px / self.dpi * MM_PER_IN, 2)

    def to_json(self) -> dict:
        return {"grid": [self.cols, self.rows], "cell_px": self.cell_px, "cell_mm": self.mm(self.cell_px),
                "dpi": self.dpi, "requested_dpi": self.requested_dpi,
                "size_px": [self.width, self.height], "size_mm": [self.mm(self.width), self.mm(self.height)],
                "trim_px": [self.trim_w, self.trim_h], "trim_mm": [self.mm(self.trim_w), self.mm(self.trim_h)],
                "trim_box": list(self.trim_box), "bleed_box": [0, 0, self.width, self.height],
                "bleed_px": self.bleed_px, "bleed_mm": self.mm(self.bleed_px), "bleed_cells": self.bleed_cells}


def make_geometry(cols: int, rows: int, size_in: tuple, dpi: float, bleed_in: float) -> tuple[Geometry, list[str]]:
    t, eff, warnings = fit_cells(cols, rows, size_in, dpi)
    g = Geometry(cols, rows, t, eff, dpi, round(bleed_in * eff), tuple(size_in))
    if g.bleed_px and 2 * g.bleed_px >= min(g.trim_w, g.trim_h):
        # the bleed is the margin cut off at trimming (a few mm): this much is a mistaken unit
        raise UsageError(f"--bleed {bleed_in * 2.54:g} cm is half the print's short side "
                         f"({min(g.trim_w, g.trim_h) / eff * 2.54:.3g} cm) or more: bleed is the margin trimmed "
                         "off, usually 3 mm (--bleed 3mm)")
    if max(g.width, g.height) > MAX_SIDE:
        raise UsageError(f"{g.width:,} x {g.height:,} px is beyond what TIFF allows ({MAX_SIDE:,} px a side); "
                         "lower --dpi or --size")
    return g, warnings


# ---- panels ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Panel:
    row: int     # 1-based
    col: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def name(self, base: str) -> str:
        return f"{base}_r{self.row:02d}_c{self.col:02d}.tif"


def cuts(total: int, n: int, overlap: int) -> list[tuple[int, int]]:
    """n ranges covering [0, total), neighbours sharing `overlap` px, widths within 1 px."""
    step = (total - overlap) / n
    c = [round(j * step) for j in range(n + 1)]
    return [(c[j], c[j + 1] + overlap) for j in range(n)]


def count_for(total: int, max_len: int, overlap: int) -> int:
    """Fewest pieces of at most max_len px, overlapping by `overlap`, that cover total px."""
    if total <= max_len:
        return 1
    return math.ceil((total - overlap) / (max_len - overlap))


@dataclass(frozen=True)
class PanelLayout:
    cols: int
    rows: int
    overlap_px: int
    panels: tuple          # Panel, row-major
    note: str | None = None

    @property
    def single(self) -> bool:
        return len(self.panels) == 1


def plan_panels(g: Geometry, *, panel_width_in: float | None = None, grid: tuple[int, int] | None = None,
                overlap_in: float = 0.0, limits: bool = True) -> PanelLayout:
    """Panel boxes over the canvas (trim + bleed). `panel_width_in`: the widest a panel may be
    (overlap included), rows added only if a panel would pass 65,500 px or 4 GB; `grid`:
    exactly COLS x ROWS panels. With neither, one image."""
    W, H = g.width, g.height
    ov = round(overlap_in * g.dpi)
    note = None
    if panel_width_in is None and grid is None:
        return PanelLayout(1, 1, 0, (Panel(1, 1, 0, 0, W, H),))
    if panel_width_in is not None:
        pw = math.floor(panel_width_in * g.dpi)
        if pw <= ov:
            raise UsageError(f"--panel-width ({g.mm(pw):.0f} mm) must be wider than --overlap ({g.mm(ov):.0f} mm)")
        if pw < 2 * ov:
            raise UsageError(f"--panel-width ({g.mm(pw):.0f} mm) must be at least twice --overlap ({g.mm(ov):.0f} mm): "
                             "each panel overlaps both its neighbours")
        if pw > PANEL_MAX_SIDE:
            raise UsageError(f"--panel-width is {pw:,} px at {g.dpi:.1f} dpi: panels must stay within "
                             f"{PANEL_MAX_SIDE:,} px; use a narrower panel")
        nc = count_for(W, pw, ov)
        width = max(b - a for a, b in cuts(W, nc, ov))
        by_bytes = max(1, PANEL_MAX_BYTES // (3 * width))
        nr = count_for(H, min(PANEL_MAX_SIDE, by_bytes), ov) if ov < min(PANEL_MAX_SIDE, by_bytes) else 0
        if nr == 0:
            raise UsageError("--overlap is too large for panels this size")
        if nc * nr > MAX_PANELS:
            raise UsageError(f"--panel-width {g.mm(pw):.0f} mm would cut the print into {nc * nr:,} panels, more than "
                             f"{MAX_PANELS}: use a wider panel")
        if nr > 1:
            note = (f"panels are also split into {nr} rows so each stays within {PANEL_MAX_SIDE:,} px and "
                    f"4 GB ({H:,} px tall)")
    else:
        nc, nr = check_panel_count(*grid)
    for total, n, what in ((W, nc, "wide"), (H, nr, "tall")):
        if n > 1:
            step = (total - ov) / n
            if step < g.cell_px:
                asked = f"--panels {nc}x{nr}" if grid is not None else f"--panel-width {g.mm(pw):.0f} mm"
                raise UsageError(f"{asked}: panels would be {g.mm(step + ov):.1f} mm {what}, narrower than "
                                 f"one cell ({g.mm(g.cell_px):.1f} mm): use "
                                 + ("fewer panels" if grid is not None else "a wider panel"))
            if step < 1:
                raise UsageError(f"the print is {total:,} px {what}: too small for {n} panels with --overlap "
                                 f"{g.mm(ov):.0f} mm")
            if step < ov:
                raise UsageError(f"panels {g.mm(step + ov):.0f} mm {what} with --overlap {g.mm(ov):.0f} mm "
                                 "would overlap three deep: a panel must be at least twice the overlap")
    xs = cuts(W, nc, ov if nc > 1 else 0)
    ys = cuts(H, nr, ov if nr > 1 else 0)
    panels = tuple(Panel(r + 1, c + 1, x0, y0, x1, y1) for r, (y0, y1) in enumerate(ys)
                   for c, (x0, x1) in enumerate(xs))
    if limits:
        big = max(panels, key=lambda p: p.width * p.height)
        side = max(max(p.width, p.height) for p in panels)
        if side > PANEL_MAX_SIDE or big.width * big.height * 3 > PANEL_MAX_BYTES:
            raise UsageError(f"panels of {big.width:,} x {big.height:,} px pass {PANEL_MAX_SIDE:,} px a side or 4 GB: "
                             "use more panels (--panels) or --panel-width")
    return PanelLayout(nc, nr, ov, panels, note)


def parse_panel_grid(text: str) -> tuple[int, int]:
    import re
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise UsageError(f"--panels {text!r}: use COLSxROWS, e.g. 3x2")
    return check_panel_count(int(m.group(1)), int(m.group(2)))


def check_panel_count(cols: int, rows: int) -> tuple[int, int]:
    """--panels COLSxROWS within 1..MAX_PANELS panels in all."""
    if cols < 1 or rows < 1:
        raise UsageError("--panels must be COLSxROWS with both at least 1, e.g. 3x2")
    if cols * rows > MAX_PANELS:
        raise UsageError(f"--panels {cols}x{rows} is {cols * rows:,} panels, more than {MAX_PANELS}: use fewer panels")
    return cols, rows
