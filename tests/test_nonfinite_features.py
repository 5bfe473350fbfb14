"""Tiles whose features are NaN or infinite: matching leaves them out, and says so once per
opened database (not once per target); `db repair` recomputes them even when their checksums
match the bad rows."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clirun import check_process, invoke_cli
from conftest import synthetic_image, write_synthetic
from mosaicdb import TileDB
from mosaicdb.make import Maker
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions

LOGGER = "mosaicdb.store.indexing"
# building an index over such rows must not print numpy's overflow warning to the user either
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
BAD = np.arange(3, 9)


@pytest.fixture
def spoiled(tmp_path):
    """A 40-tile database whose tiles 3-8 have non-finite features, with checksums and index
    made of those rows (as a writer that computed them so would have left it), and two targets."""
    write_synthetic(tmp_path / "src", 40, seed=11)
    with TileDB.create(tmp_path / "t.db") as db:
        db.ingest([tmp_path / "src"], workers=1)
        f = db._features.read(db.next_id, mode="r+")
        f[BAD[:3]] = np.nan
        f[BAD[3:], 2] = np.inf
        f.flush()
        del f
        db.rewrite_checksums("features", 0, db.next_id)
        db.index(rebuild=True)
    targets = []
    for seed in (3, 4):
        targets.append(tmp_path / f"target{seed}.png")
        Image.fromarray(synthetic_image(np.random.default_rng(seed), 96, 64, "blocks")).save(targets[-1])
    return tmp_path / "t.db", targets


def _nonfinite_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]


def test_make_warns_once_for_a_batch_with_the_count_and_the_fix(spoiled, tmp_path, caplog):
    path, targets = spoiled
    with caplog.at_level("WARNING", logger=LOGGER), TileDB.open(path, readonly=True) as db:
        maker = Maker(db, MatchOptions(grid="12", min_distance=0), RenderOptions(tile_px=8))
        used = [maker.make(t, tmp_path / f"out{i}.png").saved.tile_ids for i, t in enumerate(targets)]
        db.search(np.asarray(db.features()[:5]), 1)  # the library's search: no second warning
    warnings = _nonfinite_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert f"{path}: 6 tiles have non-finite features and are left out of matching" in warnings[0]
    assert f"`mosaic db check {path}`" in warnings[0] and f"`mosaic db repair {path}`" in warnings[0]
    assert not np.isin(np.concatenate(used), BAD).any()


def _warnings_on_first_use(path, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level("WARNING", logger=LOGGER), TileDB.open(path, readonly=True) as db:
        db.ensure_index()
    return _nonfinite_warnings(caplog)


def test_the_count_is_the_index_s_and_read_from_the_rows_for_an_older_index(spoiled, caplog):
    """The index counts them when it reads the rows (make reads no row for it); an index from
    before that count, or with a count that is not one, has the rows scanned."""
    path, _ = spoiled
    infos_file = path / "index" / "index_infos.json"
    infos = json.loads(infos_file.read_text())
    assert infos["nonfinite"] == 6
    infos_file.write_text(json.dumps({**infos, "nonfinite": 2}))  # what make believes
    assert "2 tiles have non-finite features" in _warnings_on_first_use(path, caplog)[0]
    for older in ({k: v for k, v in infos.items() if k != "nonfinite"}, {**infos, "nonfinite": "many"},
                  {**infos, "nonfinite": True}):
        infos_file.write_text(json.dumps(older))
        assert "6 tiles have non-finite features" in _warnings_on_first_use(path, caplog)[0]


def test_a_sound_database_makes_no_such_warning(spoiled, tmp_path, caplog):
    path, targets = spoiled
    invoke_cli("db", "repair", path, code=0)
    with caplog.at_level("WARNING", logger=LOGGER), TileDB.open(path, readonly=True) as db:
        Maker(db, MatchOptions(grid="12", min_distance=0), RenderOptions(tile_px=8)).make(targets[0], tmp_path / "o.png")
    assert not _nonfinite_warnings(caplog)


def test_the_cli_says_it_once_on_stderr(spoiled, tmp_path):
    path, targets = spoiled
    res = subprocess.run([sys.executable, "-m", "mosaicdb", "make", "--db", str(path), *map(str, targets),
                          "--out", str(tmp_path / "outs"), "--grid", "12", "--tile-px", "8", "-q"],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    check_process(res, "make")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if "non-finite" in line]
    # the library's warnings read like the CLI's own ("warning: ..."), not like a log record
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "6 tiles" in lines[0], res.stderr
    assert "WARNING" not in res.stderr and "mosaicdb." not in res.stderr
    assert len(list((tmp_path / "outs").glob("*.jpg"))) == 2


def test_repair_recomputes_non_finite_rows_whose_checksums_match(spoiled):
    path, _ = spoiled
    assert "6 tiles have non-finite or out-of-range features" in invoke_cli("db", "check", path, code=1).output
    assert "6 tiles rebuilt" in invoke_cli("db", "repair", path, code=0).output
    invoke_cli("db", "check", path, code=0)
    with TileDB.open(path, readonly=True) as db:
        assert np.isfinite(np.asarray(db.features()[db.ids()])).all()


@pytest.fixture
def spoiled_after_index(tmp_path):
    """A sound 40-tile database whose features.f32 is damaged after its index was built (NaN
    and inf in tiles 3-8; checksums and index untouched, as a hostile edit leaves them): the
    index still finds those tiles, with distances from its own copy of the old rows."""
    write_synthetic(tmp_path / "src", 40, seed=11)
    with TileDB.create(tmp_path / "t.db") as db:
        db.ingest([tmp_path / "src"], workers=1)
        db.index(rebuild=True)
        f = db._features.read(db.next_id, mode="r+")
        f[BAD[:3]] = np.nan
        f[BAD[3:], 2] = np.inf
        f.flush()
        del f
    target = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(3), 96, 64, "blocks")).save(target)
    return tmp_path / "t.db", target


@pytest.mark.parametrize("opts", [dict(min_distance=0), dict(), dict(orient="all"), dict(unique=True),
                                  dict(max_uses=2, usage_penalty=1.0)])
def test_features_damaged_after_the_index_was_built_are_left_out(spoiled_after_index, tmp_path, opts):
    """They were placed (their costs, turns and dithering colours NaN): the mosaic was written
    with an assignment file that `mosaic render` then refused as damaged."""
    from mosaicdb import assignment as asg
    path, target = spoiled_after_index
    with TileDB.open(path, readonly=True) as db:
        made = Maker(db, MatchOptions(grid="6", **opts), RenderOptions(tile_px=8)).make(target, tmp_path / "m.png")
    saved = asg.load(tmp_path / "m.png")  # reads back: every cost finite
    assert not np.isin(saved.tile_ids, BAD).any() and np.isfinite(saved.cost).all()
    assert any("6 tiles" in w and "not finite" in w and "repair" in w for w in made.warnings), made.warnings
    dither = made.metrics.get("assignment", {}).get("dither")
    assert dither is None or np.isfinite(dither["objective_after"])
    res = invoke_cli("render", asg.sidecar_paths(tmp_path / "m.png")[0], "--out", tmp_path / "r.png")
    assert (tmp_path / "r.png").exists(), res.output


def test_the_exact_re_rank_puts_tiles_with_non_finite_features_last_at_inf():
    from mosaicdb.index.refine import exact_distances, rerank
    feats = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    feats[1, 0], feats[3, 2] = np.nan, np.inf
    q = feats[[2]].copy()
    ids = np.array([[1, 3, 2, 4, -1]])
    d, i = rerank(feats, q, np.zeros((1, 5), np.float32), ids, 5)
    assert i[0, :2].tolist() == [2, 4] and np.isinf(d[0, 2:4]).all() and set(i[0, 2:4]) == {1, 3}
    assert i[0, 4] == -1 and d[0, 4] == 0  # a missing candidate keeps its filler, last
    e = exact_distances(feats, q, ids, np.zeros((1, 5), np.float32))
    assert np.isinf(e[0, :2]).all() and e[0, 2] == 0 and np.isfinite(e[0, 3])


@pytest.mark.parametrize("opts", [dict(), dict(orient="mirror")])
def test_damaged_rows_behind_a_pca_index_are_left_out_too(cifar_ingest, tmp_path, opts):
    """2,000 tiles: a PCA index, whose candidates are re-ranked from the stored rows (a NaN row
    is at an infinite distance there; it sorted last at NaN, and dithering took it)."""
    import shutil

    from mosaicdb import assignment as asg
    from mosaicdb.match.rerank import index_is_approximate
    path = tmp_path / "c.db"
    shutil.copytree(cifar_ingest[0], path)
    target = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(5), 120, 90, "blocks")).save(target)
    with TileDB.open(path) as db:
        assert index_is_approximate(db.ensure_index())
        clean = Maker(db, MatchOptions(grid="16", **opts), RenderOptions(tile_px=8)).make(target, tmp_path / "a.png")
        bad = np.unique(clean.saved.tile_ids)[:40]  # tiles the mosaic wants
        f = db._features.read(db.next_id, mode="r+")
        f[bad] = np.nan
        f.flush()
        del f
    with TileDB.open(path, readonly=True) as db:
        made = Maker(db, MatchOptions(grid="16", **opts), RenderOptions(tile_px=8)).make(target, tmp_path / "m.png")
    saved = asg.load(tmp_path / "m.png")
    assert not np.isin(saved.tile_ids, bad).any() and np.isfinite(saved.cost).all()
    dither = made.metrics.get("assignment", {}).get("dither")
    assert dither is None or np.isfinite(dither["objective_after"])


def test_a_batch_on_damaged_rows_scans_once_and_the_cli_warns_once(spoiled_after_index, tmp_path, monkeypatch):
    """Every target found the damaged rows again (a scan of every feature row, 0.4 s at 1M
    tiles) and printed the same warning."""
    path, target = spoiled_after_index
    src = tmp_path / "targets"
    src.mkdir()
    for i in range(3):
        (src / f"t{i}.png").write_bytes(target.read_bytes())
    scans = []
    real = TileDB.nonfinite_ids
    monkeypatch.setattr(TileDB, "nonfinite_ids", lambda self, *a: scans.append(1) or real(self, *a))
    with TileDB.open(path, readonly=True) as db:
        maker = Maker(db, MatchOptions(grid="6"), RenderOptions(tile_px=8))
        made = [maker.make(t, tmp_path / f"{t.stem}.png") for t in sorted(src.iterdir())]
    assert len(scans) == 1 and all(any("not finite" in w for w in m.warnings) for m in made)
    res = invoke_cli("make", "--db", path, src, "--out", tmp_path / "out", "--grid", 6, "--tile-px", 8)
    assert res.stderr.count("not finite") == 1, res.stderr
    assert len(list((tmp_path / "out").glob("*.mosaic.json"))) == 3


@pytest.mark.parametrize("value", [1e38, 1e20, -1e15])
@pytest.mark.parametrize("opts", [dict(orient="all", dither=0.0), dict(orient="mirror"), dict(), dict(unique=True)])
def test_huge_finite_values_are_damage_too(tmp_path, value, opts):
    """1e38 written into the rows of the tiles a mosaic uses: with turns, their squared
    distances overflowed to inf (a numpy warning on stderr), the costs were written so and
    render refused the assignment; `db check` said OK."""
    from mosaicdb import assignment as asg
    write_synthetic(tmp_path / "src", 40, seed=11)
    target = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(3), 96, 64, "blocks")).save(target)
    with TileDB.create(tmp_path / "t.db") as db:
        db.ingest([tmp_path / "src"], workers=1)
        db.index(rebuild=True)
        used = np.unique(Maker(db, MatchOptions(grid="6", **opts), RenderOptions(tile_px=8))
                         .make(target, tmp_path / "a.png").saved.tile_ids)[:4]
        f = db._features.read(db.next_id, mode="r+")
        f[used, 5] = value
        f.flush()
        del f
    with TileDB.open(tmp_path / "t.db", readonly=True) as db:
        made = Maker(db, MatchOptions(grid="6", **opts), RenderOptions(tile_px=8)).make(target, tmp_path / "m.png")
    saved = asg.load(tmp_path / "m.png")
    assert not np.isin(saved.tile_ids, used).any() and np.isfinite(saved.cost).all()
    assert any(f"{len(used)} tiles" in w and "not finite" in w for w in made.warnings), made.warnings
    res = invoke_cli("db", "check", tmp_path / "t.db", code=1)
    assert "non-finite" in res.output


def test_damage_met_only_by_the_re_rank_is_said_too(cifar_ingest, tmp_path):
    """Behind a PCA index a damaged row is at an infinite distance and never placed: the
    mosaic changed without a word, and a pool short by exactly those tiles failed with advice
    to raise --max-uses or to check the index."""
    import shutil
    path = tmp_path / "c.db"
    shutil.copytree(cifar_ingest[0], path)
    target = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(5), 120, 90, "blocks")).save(target)
    with TileDB.open(path) as db:
        db.ensure_index()
        used = np.unique(Maker(db, MatchOptions(grid="16"), RenderOptions(tile_px=8))
                         .make(target, tmp_path / "a.png").saved.tile_ids)[:5]
        n = len(db)
        f = db._features.read(db.next_id, mode="r+")
        f[used, 7] = np.nan
        f.flush()
        del f
    with TileDB.open(path, readonly=True) as db:
        made = Maker(db, MatchOptions(grid="16"), RenderOptions(tile_px=8)).make(target, tmp_path / "m.png")
        assert any("5 tiles" in w and "not finite" in w for w in made.warnings), made.warnings
    res = subprocess.run([sys.executable, "-m", "mosaicdb", "make", "--db", str(path), str(target), "--out",
                          str(tmp_path / "u.png"), "--grid", f"{n // 40}x40", "--unique", "-q"],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    check_process(res, "make")
    assert res.returncode == 1 and "5 tiles" in res.stderr and "db repair" in res.stderr, res.stderr
