"""Feature kinds: the pyramid features and their cost, one function for tiles and cells, the
kind recorded in the catalog, the PCA in the index, and old (pre-kind) databases."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import synthetic_image
from mosaicdb import TileDB
from mosaicdb import feature_kinds as fk
from mosaicdb.errors import UsageError
from mosaicdb.feature_kinds import KINDS, LabGrid, Pyramid
from mosaicdb.features import cell_blocks, rgb_to_lab
from mosaicdb.make import Maker
from mosaicdb.match.grid import cell_data, make_grid
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions

PYRAMIDS = ["rgb-pyramid", "lab-pyramid"]


def block_means(x: np.ndarray, p: int) -> np.ndarray:
    """(S, S, 3) float -> (p, p, 3) means of its p x p blocks, written the slow obvious way."""
    s = x.shape[0]
    q = s // p
    out = np.empty((p, p, 3))
    for i in range(p):
        for j in range(p):
            out[i, j] = x[i * q:(i + 1) * q, j * q:(j + 1) * q].reshape(-1, 3).mean(axis=0)
    return out


@pytest.mark.parametrize("kind", PYRAMIDS)
@pytest.mark.parametrize("levels", [((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), ((1, 3.0), (4, 0.5)), ((16, 1.0),)])
def test_pyramid_squared_distance_is_weighted_mse_per_level(kind, levels):
    """|f(a) - f(b)|^2 = 3 * sum_p w_p * MSE_p, with MSE_p the mean squared difference of the two
    blocks' p x p block means in the kind's colour space (the cost the README promises)."""
    spec = Pyramid(KINDS[kind].space, levels, 16)
    rng = np.random.default_rng(len(levels))
    a, b = (rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    fa, fb = spec(a), spec(b)
    assert fa.shape == (5, spec.dim) == (5, 3 * sum(p * p for p, _ in levels)) and fa.dtype == np.float32
    to_space = (lambda x: x.astype(np.float64)) if spec.space == "rgb" else (lambda x: rgb_to_lab(x).astype(np.float64))
    for i in range(5):
        want = sum(3 * w * np.mean((block_means(to_space(a[i]), p) - block_means(to_space(b[i]), p)) ** 2)
                   for p, w in levels)
        got = float(np.sum((fa[i].astype(np.float64) - fb[i]) ** 2))
        np.testing.assert_allclose(got, want, rtol=1e-4)
        # and the matcher's cost is the RMS of that weighted mean
        np.testing.assert_allclose(np.sqrt(got / spec.cost_divisor),
                                   np.sqrt(want / (3 * sum(w for _, w in levels))), rtol=1e-4)


def test_rgb_pyramid_of_a_flat_block_is_its_colour_at_every_level():
    spec = KINDS["rgb-pyramid"]
    colour = np.array([200, 31, 90], np.uint8)
    f = spec(np.broadcast_to(colour, (1, 16, 16, 3)))[0]
    at = 0
    for p, w in spec.levels:
        part = f[at:at + 3 * p * p].reshape(p * p, 3)
        np.testing.assert_allclose(part, np.broadcast_to(colour * np.sqrt(w) / p, part.shape), rtol=1e-6)
        at += 3 * p * p
    assert at == spec.dim == 255


def test_pyramid_rejects_wrong_blocks():
    with pytest.raises(ValueError, match=r"uint8 \(N, 16, 16, 3\)"):
        KINDS["rgb-pyramid"](np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        KINDS["rgb-pyramid"](np.zeros((2, 16, 16, 3), np.float32))


@pytest.mark.parametrize("spec", [KINDS["rgb-pyramid"], KINDS["lab-pyramid"], LabGrid(4, 1.0), LabGrid(2, 0.3),
                                  Pyramid("rgb", ((1, 2.0), (4, 1.0)), 8, 0)])
def test_meta_round_trip(spec):
    meta = fk.to_meta(spec)
    json.dumps(meta)
    assert fk.from_meta(json.loads(json.dumps(meta))) == spec
    assert fk.signature(fk.from_meta(meta)) == fk.signature(spec)


def test_meta_without_a_kind_is_the_old_lab_grid():
    assert fk.from_meta({"feature_grid": 4, "mean_weight": 1.0}) == LabGrid(4, 1.0)
    assert fk.features_file({}) == "features.f32"
    with pytest.raises(ValueError, match="unknown feature kind 'hog'"):
        fk.from_meta({"feature_kind": "hog"})
    with pytest.raises(ValueError, match="bad feature_params"):
        fk.from_meta({"feature_kind": "rgb-pyramid",
                      "feature_params": {"space": "rgb", "levels": [[3, 1.0]], "samples": 16, "pca_dims": 0}})


def test_spec_for_validates():
    assert fk.spec_for("lab-grid", 2, 0.5) == LabGrid(2, 0.5)
    assert fk.spec_for("rgb-pyramid") == KINDS["rgb-pyramid"]
    with pytest.raises(UsageError, match="unknown feature kind 'rgb'.*choose one of lab-grid, lab-pyramid, rgb-pyramid"):
        fk.spec_for("rgb")
    with pytest.raises(UsageError, match="apply to --features lab-grid"):
        fk.spec_for("lab-pyramid", mean_weight=2.0)
    with pytest.raises(UsageError, match="--mean-weight"):
        fk.spec_for("lab-grid", mean_weight=-1.0)


def test_index_outdated_rules():
    spec = KINDS["rgb-pyramid"]
    n = fk.PCA_MIN_TILES * 4
    fresh = {"dim": spec.dim, "features": fk.signature(spec), "pca_dims": spec.pca_dims, "ntotal_at_build": n}
    assert not fk.index_outdated(fresh, spec, n)
    assert not fk.index_outdated(fresh, spec, 2 * n) and not fk.index_outdated(fresh, spec, n // 2)
    assert fk.index_outdated(fresh, spec, 2 * n + 1)  # the PCA was fitted on too different a pool
    assert fk.index_outdated(fresh, spec, n // 2 - 1)
    assert fk.index_outdated(fresh, KINDS["lab-pyramid"], n)  # same dim, other features
    assert fk.index_outdated({**fresh, "pca_dims": 0}, spec, n)  # grew past the PCA threshold
    small = {"dim": spec.dim, "features": fk.signature(spec), "pca_dims": 0, "ntotal_at_build": 10}
    assert not fk.index_outdated(small, spec, 100)  # no PCA below the threshold: update in place
    old = {"dim": 51}  # an index from before feature kinds
    assert not fk.index_outdated(old, LabGrid(4, 1.0), 5000)
    assert fk.index_outdated(old, spec, 5000)


@pytest.mark.parametrize("kind", ["rgb-pyramid", "lab-pyramid", "lab-grid"])
def test_tile_features_equal_target_cell_features(kind, tmp_path, new_db):
    """The same pixels as a tile (ingest -> thumbnail -> features) and as a target cell
    (target -> grid -> cell_data) give identical vectors, for every kind."""
    db = new_db(thumb_sizes=(8, 16), features=kind)
    s = db.feature_spec.samples
    rows, cols = 3, 4
    rng = np.random.default_rng(5)
    cells = [synthetic_image(rng, s, s) for _ in range(rows * cols)]
    for i, c in enumerate(cells):
        Image.fromarray(c).save(tmp_path / f"cell{i:02d}.png")
    db.ingest(sorted(tmp_path.glob("cell*.png")), workers=1, update_index=False)
    target = np.concatenate([np.concatenate(cells[r * cols:(r + 1) * cols], axis=1) for r in range(rows)])
    cd = cell_data(target, make_grid(cols * s, rows * s, f"{cols}x{rows}"), db.feature_spec)
    np.testing.assert_array_equal(np.asarray(db.features()[db.ids()]), cd.features)
    np.testing.assert_array_equal(cd.features, db.feature_spec(cell_blocks(target, rows, cols)))


def test_pca_features_of_a_tile_equal_those_of_the_same_pixels_as_a_cell(cifar_db):
    """A target laid out from 2,000-tile pool thumbnails: through the index's PCA, every cell's
    vector is its tile's, so the cell finds that tile at distance 0."""
    import faiss
    db = cifar_db
    idx = db.ensure_index()
    assert idx.infos["pca_dims"] == fk.PCA_DIMS and idx.infos["dim"] == 255
    pca = faiss.downcast_VectorTransform(faiss.downcast_index(idx.index).chain.at(0))
    assert (pca.d_in, pca.d_out) == (255, fk.PCA_DIMS)
    rng = np.random.default_rng(9)
    layout = rng.choice(db.ids(), size=(6, 9), replace=False)
    th = np.asarray(db.thumbs(16)[layout.ravel()]).reshape(6, 9, 16, 16, 3)
    target = th.swapaxes(1, 2).reshape(6 * 16, 9 * 16, 3)
    cd = cell_data(target, make_grid(9 * 16, 6 * 16, "9x6"), db.feature_spec)
    tile_f = np.asarray(db.features()[layout.ravel()])
    np.testing.assert_array_equal(pca.apply(cd.features), pca.apply(tile_f))
    d, ids = db.search(cd.features, 1)
    np.testing.assert_array_equal(ids[:, 0], layout.ravel())
    assert float(d.max()) < 1e-6


def test_small_pools_search_the_full_vectors(synthetic_db):
    infos = synthetic_db.load_index().infos
    assert infos["pca_dims"] == 0 and infos["dim"] == 255 and infos["kind"] == "flat"
    assert infos["features"] == fk.signature(KINDS["rgb-pyramid"])


def make_old_style(path):
    """Strip what feature kinds added, so the catalog and index look as old code left them."""
    con = sqlite3.connect(path / "catalog.sqlite")
    with con:
        con.execute("DELETE FROM meta WHERE key IN ('feature_kind', 'feature_params')")
    con.close()
    infos_path = path / "index" / "index_infos.json"
    infos = json.loads(infos_path.read_text())
    for k in ("features", "pca_dims"):
        infos.pop(k)
    infos_path.write_text(json.dumps(infos))


def test_old_database_with_51_d_features_still_makes_mosaics(synthetic_tiles, tmp_path):
    """A database from before feature kinds (51-d Lab grid, no kind in its catalog or index)
    opens as lab-grid, keeps its index (not rebuilt) and makes the same mosaic as a lab-grid one."""
    src = sorted(synthetic_tiles.iterdir())[:150]
    for name in ("old", "new"):
        with TileDB.create(tmp_path / name, features="lab-grid") as db:
            db.ingest(src, workers=1)
    make_old_style(tmp_path / "old")
    index_file = tmp_path / "old" / "index" / "index.faiss"
    before = index_file.stat().st_mtime_ns
    target = tmp_path / "t.png"
    Image.fromarray(synthetic_image(np.random.default_rng(2), 120, 80, "gradient")).save(target)
    got = {}
    for name in ("old", "new"):
        with TileDB.open(tmp_path / name) as db:
            assert db.feature_spec == LabGrid(4, 1.0) and db.dim == 51
            assert db.check(deep=True).ok
            r = Maker(db, MatchOptions(grid="12"), RenderOptions(tile_px=8)).make(target, tmp_path / f"{name}.png")
            got[name] = np.load(tmp_path / f"{name}.mosaic.npz")["tile_ids"]
            assert r.metrics["repeats"]["min_repeat_distance"] > 2
    assert index_file.stat().st_mtime_ns == before  # the old index was current: used as it was
    np.testing.assert_array_equal(got["old"], got["new"])
    assert "feature_kind" not in json.dumps(TileDB.open(tmp_path / "old", readonly=True).meta)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
def test_rgb_pyramid_cost_of_two_flat_blocks_is_their_rms_difference(r, g, b):
    spec = KINDS["rgb-pyramid"]
    a = np.broadcast_to(np.array([r, g, b], np.uint8), (1, 16, 16, 3))
    c = np.broadcast_to(np.array([255 - r, g, 0], np.uint8), (1, 16, 16, 3))
    d2 = float(np.sum((spec(a).astype(np.float64) - spec(c)) ** 2))
    rms = np.sqrt(((r - (255 - r)) ** 2 + b ** 2) / 3)
    np.testing.assert_allclose(np.sqrt(d2 / spec.cost_divisor), rms, rtol=1e-5, atol=1e-4)


def test_pca_is_fitted_once_the_pool_is_large_and_refitted_as_it_moves(cifar_folder, tmp_path):
    """Below PCA_MIN_TILES the index searches the full vectors; past it a PCA fitted on the pool
    joins (a rebuild); growing within 2x updates in place (same basis); shrinking below half,
    or below the threshold, rebuilds again."""
    files = sorted(cifar_folder.iterdir())
    parts = [tmp_path / n for n in ("a", "b", "c")]
    for part, chunk in zip(parts, (files[:700], files[700:1300], files[1300:2000])):
        part.mkdir()
        for f in chunk:
            (part / f.name).symlink_to(f)
    with TileDB.create(tmp_path / "db") as db:
        db.ingest([parts[0]], workers=2)
        infos = db.load_index().infos
        assert infos["pca_dims"] == 0 and infos["ntotal_at_build"] == 700
        db.ingest([parts[1]], workers=2)  # 1,300 >= PCA_MIN_TILES: rebuilt with a PCA
        infos = db.load_index().infos
        assert infos["pca_dims"] == fk.PCA_DIMS and infos["ntotal_at_build"] == 1300
        built_at = infos["built_at"]
        db.ingest([parts[2]], workers=2)  # 2,000 <= 2 x 1,300: in place, same basis
        infos = db.load_index().infos
        assert infos["built_at"] == built_at and infos["ntotal"] == 2000 and infos["pca_dims"] == fk.PCA_DIMS
        db.remove(db.ids()[:1400])  # 600 < 1,300 / 2 and below the threshold
        infos = db.load_index().infos
        assert infos["pca_dims"] == 0 and infos["ntotal_at_build"] == 600
        ids = db.ids()
        d, got = db.search(np.asarray(db.features()[ids]), 1)
        np.testing.assert_array_equal(got[:, 0], ids)


@pytest.mark.parametrize("space", ["rgb", "lab"])
@pytest.mark.parametrize("levels, samples", [(((1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0)), 16),
                                              (((8, 1.0), (2, 0.5), (1, 3.0)), 16),
                                              (((1, 1.0), (16, 2.0)), 16), (((1, 1.0), (3, 1.0)), 12)])
def test_pyramid_kernel_gives_the_numpy_forms_bits(space, levels, samples):
    """The one-pass numba pyramid equals, to the bit, the block means taken the numpy way (2x2
    means of 2x2 means, in float32, then times sqrt(w)/p): stored tile features stay valid."""
    from mosaicdb.feature_kinds import Pyramid
    from mosaicdb.features import rgb_to_lab
    spec = Pyramid(space=space, levels=levels, samples=samples)
    blocks = np.random.default_rng(5).integers(0, 256, (300, samples, samples, 3), dtype=np.uint8)
    x = blocks.astype(np.float32) if space == "rgb" else rgb_to_lab(blocks)
    halves, s = {samples: x}, samples
    while s % 2 == 0 and s // 2 >= min(p for p, _ in levels):
        x = (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * np.float32(0.25)
        s //= 2
        halves[s] = x
    def means(p):  # a level that is no halving of the samples: means of its blocks (the numpy path)
        if p in halves:
            return halves[p]
        q = samples // p
        return halves[samples].reshape(300, p, q, p, q, 3).mean(axis=(2, 4), dtype=np.float32)

    want = np.concatenate([means(p).reshape(300, -1) * np.float32(np.sqrt(w) / p) for p, w in levels], axis=1)
    np.testing.assert_array_equal(spec(blocks), want)
