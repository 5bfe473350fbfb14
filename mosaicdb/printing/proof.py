"""Small pictures of a print: the JPEG proof (<= 8,000 px on the long side, panel seams,
overlaps and the trim box drawn) and the layout PNG (panels and their names over the mosaic).
Both are drawn from the assignment at a small cell size, not reduced from the print, so they
cost a fraction of the print and do not constrain how the print streams."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .canvas import PrintCanvas
from ..render.options import RenderOptions
from .geometry import Geometry

PROOF_MAX = 8000
LAYOUT_MAX = 1200
SEAM = (255, 0, 64)
OVERLAP_TINT = (255, 0, 64)
TRIM = (0, 200, 255)


def render_small(db, saved, g: Geometry, longest: int, opts: RenderOptions, *,
                 convert=None, target=None) -> tuple[np.ndarray, float]:
    """(image, scale): the whole canvas at <= `longest` px on its long side, drawn straight from
    the tiles at a smaller whole number of px per cell (the same cells, bleed and colour as the
    print; only the tile resampling differs), and its px per canvas px."""
    q = min(g.cell_px, max(1, math.floor(g.cell_px * longest / max(g.width, g.height))))
    s = q / g.cell_px
    gs = Geometry(g.cols, g.rows, q, g.dpi * s, g.requested_dpi, round(g.bleed_px * s), g.requested_size_in)
    img = PrintCanvas(db, saved, gs, opts, target=target, convert=convert).band(0, gs.height)
    if max(img.shape[:2]) > longest:  # more cells than `longest` px: one px per cell, then shrink
        k = longest / max(img.shape[:2])
        img = cv2.resize(img, (max(1, round(img.shape[1] * k)), max(1, round(img.shape[0] * k))),
                         interpolation=cv2.INTER_AREA)
    return img, img.shape[1] / g.width


def draw_proof(image: np.ndarray, scale: float, trim_box, panels, overlap: int, line: int | None = None):
    """`image` (the canvas at `scale` px per canvas px) as a PIL image with the panel overlaps
    tinted, every panel's edges (the seams) and the trim box drawn."""
    from PIL import Image, ImageDraw
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    lw = line or max(1, round(max(im.size) / 1500))

    def box(x0, y0, x1, y1):
        return [x0 * scale, y0 * scale, max(x0 * scale, x1 * scale - 1), max(y0 * scale, y1 * scale - 1)]

    if len(panels) > 1 and overlap:
        mask = Image.new("L", im.size, 0)
        md = ImageDraw.Draw(mask)
        for x in sorted({p.x0 for p in panels} - {0}):
            md.rectangle(box(x, 0, x + overlap, max(p.y1 for p in panels)), fill=90)
        for y in sorted({p.y0 for p in panels} - {0}):
            md.rectangle(box(0, y, max(p.x1 for p in panels), y + overlap), fill=90)
        im = Image.composite(Image.new("RGB", im.size, OVERLAP_TINT), im, mask)
    d = ImageDraw.Draw(im)
    if len(panels) > 1:
        for p in panels:
            d.rectangle(box(p.x0, p.y0, p.x1, p.y1), outline=SEAM, width=lw)
    d.rectangle(box(*trim_box), outline=TRIM, width=lw)
    return im


def draw_layout(image: np.ndarray, trim_box, panels, overlap: int, names, longest: int = LAYOUT_MAX):
    """The layout picture: the canvas at <= `longest` px, overlaps, seams, trim box, and each
    panel's name in its middle."""
    from PIL import Image, ImageDraw, ImageFont
    im = Image.fromarray(image)
    s = min(1.0, longest / max(im.size))
    if s < 1:
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.LANCZOS)
    k = im.size[0] / max(p.x1 for p in panels)
    im = draw_proof(im, k, trim_box, panels, overlap, line=2)
    d = ImageDraw.Draw(im)
    size = max(10, min(48, int(min(p.width for p in panels) * k / 9)))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for p, name in zip(panels, names):
        cx, cy = (p.x0 + p.x1) / 2 * k, (p.y0 + p.y1) / 2 * k
        d.text((cx, cy), name.rsplit(".", 1)[0], fill=(255, 255, 255), font=font, anchor="mm",
               stroke_width=max(1, size // 8), stroke_fill=(0, 0, 0))
    return im
