"""Strip codecs for print TIFFs (issue 17), measured on a real print's pixels: CPU seconds per
raw byte on one thread (thread CPU time, so other jobs on the machine hardly matter) and
compressed / raw bytes, each strip horizontal-predicted (TIFF predictor 2) as `mosaic print`
writes it. The baseline in the same run is LZW (imagecodecs), the default before issue 17.

The print is bench_print's case A (2 m x 2 m at 150 dpi of a 128 x 128 assignment of a real
pool), written once uncompressed; `--tiff` measures an existing 8-bit RGB TIFF instead.

    python benchmarks/bench_print_codecs.py                 # the 2 m print (500-tile pool), every strip
    python benchmarks/bench_print_codecs.py --quick         # a quarter of the size, 300 tiles
    python benchmarks/bench_print_codecs.py --tiff print.tif
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, default_out, loadavg, write_results  # noqa: E402


def codecs() -> dict:
    """name -> encoder of predicted strip bytes (zlib-format streams for the Deflate ones)."""
    import imagecodecs
    from isal import isal_zlib
    out = {"lzw (imagecodecs; baseline)": imagecodecs.lzw_encode}
    out.update({f"deflate isal level {lv}": (lambda d, lv=lv: isal_zlib.compress(d, lv)) for lv in (0, 1, 2, 3)})
    out.update({f"deflate libdeflate level {lv}": (lambda d, lv=lv: imagecodecs.deflate_encode(d, level=lv))
                for lv in (1, 6)})
    out.update({f"deflate zlib level {lv}": (lambda d, lv=lv: imagecodecs.zlib_encode(d, level=lv)) for lv in (1, 6)})
    out.update({f"deflate zlib-ng level {lv}": (lambda d, lv=lv: imagecodecs.zlibng_encode(d, level=lv))
                for lv in (1, 2)})
    return out


def make_print(data: Path, work: Path, tiles: int, scale: float) -> Path:
    from bench_render import build_assignments, pool_database
    from mosaicdb import TileDB
    from mosaicdb import assignment as asg
    from mosaicdb.printing import PrintOptions, write_print
    _, dbp, _, _, _ = pool_database(data, work, tiles)
    saved = asg.load(build_assignments(dbp, data / "targets" / "kodak" / "kodim23.png", work, [128])[128])
    with TileDB.open(dbp, readonly=True) as db:
        write_print(db, saved, PrintOptions(size=f"{200 * scale:g}cm", dpi=150, compression="none"), work / "p.tif")
    return work / "p.tif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--tiff", default=None, help="measure this 8-bit RGB TIFF instead of rendering the print")
    ap.add_argument("--tiles", type=int, default=500)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", default=str(default_out("bench_print_codecs")))
    ap.add_argument("--quick", action="store_true", help="--scale 0.25 --tiles 300")
    a = ap.parse_args()
    if a.quick:
        a.scale, a.tiles = 0.25, 300
    import tifffile
    from mosaicdb.printing.tiffstrips import rows_per_strip
    work = Path(tempfile.mkdtemp(prefix="bench_print_codecs_"))
    load = [loadavg()]
    try:
        path = Path(a.tiff) if a.tiff else make_print(data_dir(a.data), work, a.tiles, a.scale)
        img = tifffile.imread(path)
        rps = rows_per_strip(img.shape[1])
        strips = []
        for y in range(0, img.shape[0], rps):
            rows = img[y:y + rps]
            d = np.empty_like(rows)
            d[:, 0] = rows[:, 0]
            np.subtract(rows[:, 1:], rows[:, :-1], out=d[:, 1:])
            strips.append(d)
        raw = img.nbytes
        results = {}
        for name, enc in codecs().items():
            t0 = time.thread_time()
            n = sum(len(enc(s)) for s in strips)
            cpu = time.thread_time() - t0
            results[name] = {"cpu_seconds": round(cpu, 3), "mb_per_s_raw": round(raw / cpu / 1e6, 1),
                             "bytes": n, "ratio": round(n / raw, 4)}
            print(f"{name:32s} {results[name]['mb_per_s_raw']:7.1f} MB/s per core  {results[name]['ratio']:.3f} of raw",
                  flush=True)
        base = results["lzw (imagecodecs; baseline)"]
        for r in results.values():
            r["speed_vs_lzw"] = round(base["cpu_seconds"] / r["cpu_seconds"], 2)
            r["bytes_vs_lzw"] = round(r["bytes"] / base["bytes"], 3)
        load.append(loadavg())
        doc = {"image": str(path) if a.tiff else f"bench_print case A at scale {a.scale:g}, {a.tiles} tiles",
               "size_px": list(img.shape[:2]), "raw_bytes": raw, "rows_per_strip": rps, "strips": len(strips),
               "codecs": results, "loadavg": load}
        print(f"wrote {write_results(Path(a.out), 'bench_print_codecs', doc)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
