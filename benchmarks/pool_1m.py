"""A million-tile benchmark database, built once from the shared CIFAR-10 sheets and Noto emoji
by deterministic augmentation, through the library (`TileDB.add_images`): real images, real
thumbnails, real features (the default kind; a pool built before it is reindexed). Cached outside the repository; reruns resume where a run stopped.

Bases (53,926): the 50,000 CIFAR-10 tiles in sheet order, then the 3,926 emoji in zip order.
Tile i is base i % 53,926, variant i // 53,926. Variant 0 is the base as it is (the CIFAR tile
as a 32 px PNG, the emoji's own RGBA PNG bytes, composited on white by the normal ingest).
Every other variant is drawn from numpy's generator seeded (seed, block of 4,096 tiles):
  - a square crop of 60-100 % of the side at a random place (emoji: first composited on a
    random background colour), resized back to 32 px (CIFAR) or 64 px (emoji),
  - a left-right flip half of the time,
  - a hue rotation of up to +-90 degrees and a saturation factor of 0.7-1.3 (OpenCV HSV),
  - an exposure shift of up to +-1 stop, applied in linear light.
Each tile is ingested as PNG bytes named `aug/NNNNNNN` with its recipe as provenance.

Thumbnails: 8, 16, 32 px (CIFAR tiles are 32 px, so larger ones would add only disk: 12 KB a
tile at 64 px, 12 GB for a million); features come from the 16 px one.

    python benchmarks/pool_1m.py                        # 1,000,000 tiles (about 9 GB, ~10-30 min)
    python benchmarks/pool_1m.py --quick                # 20,000 tiles, to check it works
    python benchmarks/pool_1m.py --tiles 200000         # any size: a prefix of the same sequence

It writes `DIR/tiles-N.db` and `DIR/tiles-N.json` (what was built, how long it took, sizes on
disk), and the same record to benchmarks/results/pool_1m.json. Other benchmarks call `ensure_pool`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from mosaicdb.feature_kinds import DEFAULT_KIND

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "pool_1m"
DEFAULT_CACHE = Path(os.environ.get("MOSAICDB_BENCH_1M", "/work/cache/mosaicdb-1m"))
RECIPE = 1                      # bump when the augmentation changes: a cached pool of another recipe is refused
THUMB_SIZES = (8, 16, 32)
BLOCK = 4096                    # variant parameters are drawn per block of this many tiles
CIFAR_PX, EMOJI_PX = 32, 64
EMOJI_ZIP = "tiles/noto_emoji_136x128.zip"


# ---- bases -------------------------------------------------------------------------------------
class Bases:
    """The 53,926 base images: CIFAR tiles as arrays, emoji as their PNG bytes (decoded on use)."""

    def __init__(self, data: Path):
        self.cifar = np.concatenate([common.load_sheet(data / "tiles" / f"cifar10_train_{k}.png")
                                     for k in range(1, common.CIFAR_SHEETS + 1)])
        with zipfile.ZipFile(data / EMOJI_ZIP) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".png"))
            self.emoji = [(n, z.read(n)) for n in names]

    def __len__(self) -> int:
        return len(self.cifar) + len(self.emoji)

    def name(self, b: int) -> str:
        if b < len(self.cifar):
            sheet, j = divmod(b, common.CIFAR_PER_SHEET)
            return f"cifar10_train_{sheet + 1}.png#{j}"
        return f"{Path(EMOJI_ZIP).name}!{self.emoji[b - len(self.cifar)][0]}"

    def rgba_emoji(self, b: int) -> np.ndarray:
        from PIL import Image
        return np.asarray(Image.open(io.BytesIO(self.emoji[b - len(self.cifar)][1])).convert("RGBA"))


# ---- augmentation ------------------------------------------------------------------------------
def block_params(seed: int, block: int) -> dict:
    """Random parameters of the BLOCK tiles of one block (fixed whatever the resume point)."""
    g = np.random.default_rng([seed, RECIPE, block])
    n = BLOCK
    return {"crop": g.uniform(0.6, 1.0, n), "x": g.uniform(0, 1, n), "y": g.uniform(0, 1, n),
            "flip": g.random(n) < 0.5, "hue": g.uniform(-90, 90, n), "sat": g.uniform(0.7, 1.3, n),
            "stops": g.uniform(-1, 1, n), "bg": g.integers(0, 256, (n, 3))}


_LIN = None


def _exposure(rgb: np.ndarray, stops: float) -> np.ndarray:
    """Multiply linear light by 2**stops (sRGB in and out, through 256-entry tables)."""
    global _LIN
    if _LIN is None:
        c = np.arange(256) / 255.0
        _LIN = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lin = np.clip(_LIN * 2.0 ** stops, 0, 1)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    lut = np.clip(np.rint(srgb * 255), 0, 255).astype(np.uint8)
    return lut[rgb]


def augment(img: np.ndarray, p: dict, j: int, out_px: int) -> tuple[np.ndarray, dict]:
    """Variant j of the block's parameters applied to an RGB image; returns it with its recipe."""
    import cv2
    h, w = img.shape[:2]
    side = max(4, int(round(min(h, w) * p["crop"][j])))
    x, y = int(p["x"][j] * (w - side)), int(p["y"][j] * (h - side))
    out = img[y:y + side, x:x + side]
    if p["flip"][j]:
        out = out[:, ::-1]
    interp = cv2.INTER_AREA if side > out_px else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(out), (out_px, out_px), interpolation=interp)
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(p["hue"][j] / 2))) % 180     # OpenCV hue is degrees / 2
    hsv[..., 1] = np.clip(np.rint(hsv[..., 1] * p["sat"][j]), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    out = _exposure(out, float(p["stops"][j]))
    recipe = {"crop": [x, y, side], "flip": bool(p["flip"][j]), "hue_deg": round(float(p["hue"][j]), 2),
              "saturation": round(float(p["sat"][j]), 3), "exposure_stops": round(float(p["stops"][j]), 3)}
    return out, recipe


def png(rgb: np.ndarray) -> bytes:
    import cv2
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    assert ok
    return buf.tobytes()


def tile(bases: Bases, i: int, params: dict, seed: int) -> tuple[bytes, str, dict]:
    """Tile i as (PNG bytes, name, provenance)."""
    b, v = i % len(bases), i // len(bases)
    prov = {"pool": f"pool_1m recipe {RECIPE} seed {seed}", "index": i, "base": bases.name(b), "variant": v}
    emoji = b >= len(bases.cifar)
    if v == 0:
        data = bases.emoji[b - len(bases.cifar)][1] if emoji else png(bases.cifar[b])
        return data, f"aug/{i:07d}", prov
    j = i % BLOCK
    if emoji:
        rgba = bases.rgba_emoji(b).astype(np.float32)
        a = rgba[..., 3:] / 255.0
        bg = params["bg"][j].astype(np.float32)
        img = np.rint(rgba[..., :3] * a + bg * (1 - a)).astype(np.uint8)
        prov["background"] = [int(c) for c in params["bg"][j]]
    else:
        img = bases.cifar[b]
    out, recipe = augment(img, params, j, EMOJI_PX if emoji else CIFAR_PX)
    prov.update(recipe)
    return png(out), f"aug/{i:07d}", prov


def tiles(bases: Bases, start: int, stop: int, seed: int):
    params, cur = None, -1
    for i in range(start, stop):
        if i // BLOCK != cur:
            cur = i // BLOCK
            params = block_params(seed, cur)
        yield tile(bases, i, params, seed)


# ---- building ----------------------------------------------------------------------------------
def resume_point(db) -> int:
    """Index of the next tile to add: one past the last committed (chunks commit in order)."""
    row = db.con.execute("SELECT source FROM tiles WHERE source LIKE 'aug/%' ORDER BY id DESC LIMIT 1").fetchone()
    return int(row[0].split("/")[1]) + 1 if row else 0


def pool_paths(cache: Path, n: int) -> tuple[Path, Path]:
    return cache / f"tiles-{n}.db", cache / f"tiles-{n}.json"


def ensure_pool(n: int, cache: Path = DEFAULT_CACHE, data: Path | None = None, seed: int = 0,
                workers: int | None = None, log=print) -> Path:
    """The path of the n-tile pool, built (or finished) first when needed."""
    from mosaicdb import TileDB
    db_path, rec_path = pool_paths(cache, n)
    if rec_path.exists():
        rec = json.loads(rec_path.read_text())
        if rec.get("recipe") != RECIPE or rec.get("seed") != seed:
            raise SystemExit(f"{db_path} was built with recipe {rec.get('recipe')} seed {rec.get('seed')}, "
                             f"not {RECIPE}/{seed}: delete {db_path} and {rec_path} to rebuild it")
        if rec.get("complete") and rec.get("features") == DEFAULT_KIND:
            return db_path
    data = data or common.data_dir(None)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    c0 = common.cpu_seconds()
    la0 = common.loadavg()
    db = TileDB.open(db_path) if TileDB.exists(db_path) else TileDB.create(db_path, thumb_sizes=THUMB_SIZES)
    with db:
        start = resume_point(db)
        bases = Bases(data)
        added = duplicates = skipped = 0
        # augmentation sometimes repeats an image (the store keeps one copy): the sequence
        # continues past n until the pool holds n distinct tiles
        while len(db) < n:
            first = resume_point(db)
            log(f"{db_path}: {len(db)} tiles, adding {first}..{first + n - len(db) - 1}")
            rep = db.add_images(tiles(bases, first, first + n - len(db), seed), origin="augmented",
                                update_index=False, workers=workers or os.cpu_count() or 1, chunk_size=256,
                                progress=True)
            added, duplicates, skipped = added + rep.added, duplicates + rep.duplicates, skipped + rep.skipped
            if rep.added == 0:
                break
        add_s = time.perf_counter() - t0
        log(f"added {added} ({duplicates} duplicates, {skipped} skipped) in {add_s:.0f} s")
        reindex_s = None
        if db.feature_spec.kind != DEFAULT_KIND:      # a pool built before today's default features
            from mosaicdb.store.reindex import reindex
            log(f"{db_path}: features {db.feature_spec.kind} -> {DEFAULT_KIND}")
            t1 = time.perf_counter()
            reindex(db, DEFAULT_KIND, progress=True, update_index=False)
            reindex_s = round(time.perf_counter() - t1, 1)
        t1 = time.perf_counter()
        infos = db.build_index()
        index_s = time.perf_counter() - t1
        rec = {"recipe": RECIPE, "seed": seed, "tiles_requested": n, "tiles": len(db), "complete": len(db) >= n,
               "features": db.feature_spec.kind, "feature_dim": db.feature_spec.dim, "reindex_seconds": reindex_s,
               "resumed_from": start, "added_this_run": added, "duplicates": duplicates, "skipped": skipped,
               "thumb_sizes": list(THUMB_SIZES), "bases": len(bases), "add_seconds": round(add_s, 1),
               "add_tiles_per_s": round(added / max(add_s, 1e-9), 1), "index_seconds": round(index_s, 1),
               "index": {k: infos.get(k) for k in ("kind", "params", "recall_at_1", "build_seconds")},
               "cpu_seconds": common.cpu_since(c0), "loadavg_before": la0, "loadavg_after": common.loadavg(),
               "disk": {p.name: common.disk_usage(p) for p in sorted(db_path.iterdir())
                        if p.name != "lock" and not p.name.startswith(".")},
               "peak_rss": common.peak_rss_mb(), "db": str(db_path)}
    rec_path.write_text(json.dumps(rec, indent=2, default=common._json_default) + "\n")
    common.write_results(common.default_out(NAME), NAME, rec)
    return db_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 tiles")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where pools live [default: %(default)s]")
    ap.add_argument("--data", default=None, help="the shared data folder [default: ../shared/data]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes [default: CPU count]")
    args = ap.parse_args(argv)
    n = 20_000 if args.quick else args.tiles
    path = ensure_pool(n, args.cache, common.data_dir(args.data), args.seed, args.workers)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
