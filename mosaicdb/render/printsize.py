"""Physical size -> pixels per cell: the one rule `make --print-size`, `render --print-size`,
`plan` and `print --size` all use.

A size is one side ("120cm": the long side) or two ("120x80cm": width x height). A grid of
cells is fitted as the largest print of the mosaic's own aspect inside the size; cells get a
whole number of pixels (size x dpi / cells, rounded), and the dpi written to the file is
adjusted so the print lands exactly on the size: 120 cm at 150 dpi over 640 cells is 11.07 px,
so 11 px per cell at 149.0 dpi.

>>> t, dpi, _ = fit_cells(640, 480, parse_print_size("120cm"), 150)
>>> t, round(dpi, 1)
(11, 149.0)
>>> fit_cells(100, 100, parse_print_size("120x80cm"), 100)[0]   # 80 cm is the limit
31
>>> grid_for_print(parse_print_size("120x80cm"), 300, 256)
'55x37'
"""
from __future__ import annotations

from ..errors import UsageError
from ..units import parse_print_size

__all__ = ["MAX_CELL_PX", "fit_cells", "grid_for_print", "parse_print_size"]

MAX_CELL_PX = 4096   # the largest tile the renderer draws
MM_PER_IN = 25.4


def fit_cells(cols: int, rows: int, size_in: tuple, dpi: float,
              cell_px: int | None = None) -> tuple[int, float, list[str]]:
    """(px per cell, effective dpi, warnings) that put a cols x rows grid at `size_in` inches
    ((long side, None) or (width, height)) at `dpi`. With `cell_px` the cell size is kept and
    only the dpi follows from the size."""
    a, b = size_in
    if b is None:
        n, side_in = max(cols, rows), a
    else:
        n, side_in = (cols, a) if a / cols <= b / rows else (rows, b)
    exact = side_in * dpi / n
    if cell_px is None:
        if exact < 1:
            raise UsageError(f"at {dpi:g} dpi, {side_in * MM_PER_IN / 10:.1f} cm is {side_in * dpi:.0f} px for "
                             f"{n} cells: less than a pixel per cell; raise --dpi or --size")
        t = max(1, round(exact))
    else:
        t = int(cell_px)
    eff = n * t / side_in
    warnings = []
    if cell_px is None and abs(eff - dpi) / dpi > 0.02:
        warnings.append(f"cells are {t} px ({exact:.2f} at {dpi:g} dpi), so the file is written at {eff:.1f} dpi "
                        "to keep the requested size")
    if b is not None:
        w_in, h_in = cols * t / eff, rows * t / eff
        if abs(w_in - a) > 0.01 * a or abs(h_in - b) > 0.01 * b:
            warnings.append(f"the mosaic is {cols}x{rows} cells ({cols / rows:.2f}:1), so it prints at "
                            f"{w_in * 2.54:.1f} x {h_in * 2.54:.1f} cm inside the requested "
                            f"{a * 2.54:.1f} x {b * 2.54:.1f} cm; give one side (e.g. --size {a * 2.54:.0f}cm) "
                            "to size by the long side")
    if t > MAX_CELL_PX:
        raise UsageError(f"each cell would be {t} px at {dpi:g} dpi: more than the {MAX_CELL_PX} px a tile is "
                         "drawn at; lower --dpi or use more cells")
    return t, eff, warnings


def grid_for_print(size_in: tuple, dpi: float, cell_px: int) -> str:
    """The --grid that cells of `cell_px` give at this size: N across the long side for one
    side, COLSxROWS for two (the target is then cropped to the print's aspect)."""
    a, b = size_in
    if b is None:
        return str(max(1, round(a * dpi / cell_px)))
    return f"{max(1, round(a * dpi / cell_px))}x{max(1, round(b * dpi / cell_px))}"
