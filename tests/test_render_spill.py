"""Resized originals in a small memory cache in front of a spill file (`render/spill.py`), issue 18:
the same pixels as decoding every time, each original decoded once per render, and a render's peak
memory that does not depend on whether its cells come from originals or thumbnails."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from mosaicdb import TileDB
from mosaicdb.render.cells import PixelCache
from mosaicdb.render.spill import SpillFile
from mosaicdb.store.decode import square_resize
from test_render_cells import peak_rss_mb
from test_pyramid import random_assignment

ORIGINAL_PX = 256
TILES = 1100


@pytest.fixture(scope="module")
def big_originals_db(tmp_path_factory):
    """1,100 smooth random 256 px PNG originals, thumbnails up to 32 px: cells above 32 px are
    resized from the originals."""
    folder = tmp_path_factory.mktemp("originals")
    rng = np.random.default_rng(18)
    for i in range(TILES):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"t{i:04d}.png"), cv2.resize(small, (ORIGINAL_PX, ORIGINAL_PX),
                                                              interpolation=cv2.INTER_LINEAR))
    db = TileDB.create(tmp_path_factory.mktemp("bigdb") / "tiles.db", thumb_sizes=(8, 16, 32))
    db.ingest([folder], workers=2)
    db.close()
    db = TileDB.open(db.path, readonly=True)
    yield db
    db.close()


# ---- SpillFile ---------------------------------------------------------------------------------
def test_spill_file_returns_what_was_put(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {k: rng.integers(0, 256, (k + 1, 5, 3), dtype=np.uint8) for k in range(20)}
    spill = SpillFile(1 << 20, str(tmp_path))
    for k, a in arrays.items():
        spill.put(k, a)
    spill.put(3, np.zeros((4, 5, 3), np.uint8))          # write-once: the first value stays
    for k, a in arrays.items():
        np.testing.assert_array_equal(spill.get(k), a)
    assert spill.get("absent") is None
    assert spill.nbytes == sum(a.nbytes for a in arrays.values())
    assert list(tmp_path.iterdir()) == []                # unlinked: nothing to leave behind
    spill.close()
    assert spill.get(0) is None


def test_a_full_spill_file_stores_no_more(tmp_path):
    spill = SpillFile(1000, str(tmp_path))
    spill.put("a", np.ones(600, np.uint8))
    spill.put("b", np.ones(600, np.uint8))               # past the budget: not kept
    assert spill.get("a") is not None and spill.get("b") is None
    assert spill.nbytes == 600


def test_an_unusable_spill_folder_only_costs_decodes(tmp_path, caplog):
    spill = SpillFile(1 << 20, str(tmp_path / "missing"))
    with caplog.at_level(logging.WARNING):
        spill.put("a", np.ones(10, np.uint8))
        spill.put("b", np.ones(10, np.uint8))
    assert spill.get("a") is None
    assert sum("decoded again" in r.message for r in caplog.records) == 1


# ---- PixelCache --------------------------------------------------------------------------------
@pytest.mark.parametrize("spill_budget", [0, 64 << 20])
def test_pixel_cache_gives_the_resized_original_whatever_it_keeps(big_originals_db, tmp_path, spill_budget):
    db = big_originals_db
    ids = db.ids()[:40]
    cache = PixelCache(db, (128, 64), budget=0, spill=SpillFile(spill_budget, str(tmp_path)))
    for _ in range(2):
        for size in (128, 64):
            for i in ids.tolist():
                np.testing.assert_array_equal(cache.get(i, size), np.asarray(square_resize(db.load_original(i), size)))
    # with the spill file each original is decoded once for both sizes and both passes; without
    # it (and no memory) every request decodes
    assert cache.decodes == (len(ids) if spill_budget else 4 * len(ids))


def test_pixel_cache_memory_stays_within_its_budget(big_originals_db, tmp_path):
    db = big_originals_db
    cache = PixelCache(db, (128,), budget=1 << 20, spill=SpillFile(64 << 20, str(tmp_path)))
    for i in db.ids()[:200].tolist():
        cache.get(i, 128)
    assert cache.nbytes <= (1 << 20) + 128 * 128 * 3
    assert cache.spill.nbytes == 200 * 128 * 128 * 3


@pytest.mark.slow
def test_peak_memory_is_the_same_from_originals_and_from_thumbnails(big_originals_db, tmp_path):
    """The same 4096^2 pyramid, with colour transfer, from 32^2 cells of 128 px (1,024 distinct
    originals resized to 128 and 64 px: 63 MB of pixels) and from 256^2 cells of 16 px
    (thumbnails): the same peak RSS, within 10 % + 25 MB either way."""
    db = big_originals_db

    def distinct(n):
        saved = random_assignment(db, n, n, seed=n)
        ids = db.ids()
        picks = np.random.default_rng(n).choice(ids, size=min(n * n, len(ids)), replace=False)
        saved.tile_ids[:] = np.resize(picks, (n, n))
        return saved

    rss = {n: peak_rss_mb(db.path, distinct(n), tmp_path, 4096 // n, "mean") for n in (32, 256)}
    print(f"peak RSS by cells across: {rss}")
    assert rss[32] <= 1.10 * rss[256] + 25 and rss[256] <= 1.10 * rss[32] + 25, rss
