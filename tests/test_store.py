"""The tile database: ingest (real and synthetic), decoding policy, sources, re-runs, removal, check."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import encode, synthetic_image, write_synthetic
from mosaicdb import TileDB
from mosaicdb.errors import DatabaseError, UsageError
from mosaicdb.feature_kinds import KINDS
from mosaicdb.features import rgb_to_lab
from mosaicdb.store.decode import DecodeOptions, center_square, open_image


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tile_by_source(db: TileDB) -> dict[str, dict]:
    return {t["source"]: t for t in db.tiles(db.ids())}


def assert_content_addressed(db: TileDB, rows: list[dict]) -> None:
    for t in rows:
        p = db.blob_path(t)
        assert not Path(t["blob"]).is_absolute()
        assert p.parent.parent == db.path / "originals" and p.parent.name == t["hash"][:2]
        assert p.stem == t["hash"]
        assert sha256(p.read_bytes()) == t["hash"]


# ---- real data -------------------------------------------------------------------------------
def test_ingest_cifar(cifar_ingest, cifar_db, cifar_folder, cifar_tiles):
    db, rep = cifar_db, cifar_ingest[1]
    assert (rep.added, rep.duplicates, rep.skipped, rep.unchanged) == (2000, 0, 0, 0)
    assert len(db) == 2000 and db.next_id == 2000
    assert rep.new_ids == list(range(2000))
    ids = db.ids()
    np.testing.assert_array_equal(ids, np.arange(2000))

    rows = db.tiles(ids)
    # files are enumerated in sorted order and committed in order: tile i is c0000i.png
    assert [Path(t["source"]).name for t in rows] == [f"c{i:05d}.png" for i in range(2000)]
    assert all(t["source"] == str(cifar_folder / Path(t["source"]).name) for t in rows)
    assert {(t["width"], t["height"], t["format"], t["origin"]) for t in rows} == {(32, 32, "PNG", "file")}
    for t in rows[:200]:
        src_bytes = Path(t["source"]).read_bytes()
        assert t["hash"] == sha256(src_bytes)
        assert db.blob_path(t).read_bytes() == src_bytes
    assert_content_addressed(db, rows)
    assert len(list((db.path / "originals").rglob("*.png"))) == 2000

    for s in (8, 16, 32, 64):
        th = db.thumbs(s)
        assert th.shape == (2000, s, s, 3) and th.dtype == np.uint8
    # the 32 px thumbnail is the tile itself, up to the 64 px Lanczos round trip
    err = np.abs(db.thumbs(32).astype(np.int16) - cifar_tiles[:2000]).mean(axis=(1, 2, 3))
    assert err.mean() < 2.0 and err.max() < 5.0

    f = np.asarray(db.features())
    assert f.shape == (2000, 255) and f.dtype == np.float32 and np.isfinite(f).all()
    assert db.feature_spec == KINDS["rgb-pyramid"]  # the default kind
    np.testing.assert_allclose(f, KINDS["rgb-pyramid"](db.thumbs(16)), rtol=0, atol=1e-5)
    # distinct images, distinct features
    assert len(np.unique(f.round(3), axis=0)) == 2000

    assert db.check(deep=True).ok
    idx = db.load_index()
    assert idx is not None and idx.infos["kind"] == "flat" and idx.ntotal == 2000


@pytest.fixture(scope="module")
def emoji_db(emoji_zip, tmp_path_factory):
    db = TileDB.create(tmp_path_factory.mktemp("emoji") / "emoji.db", background=(255, 255, 255))
    rep = db.ingest([emoji_zip], workers=2, update_index=False)
    yield db, rep
    db.close()


@pytest.mark.slow
def test_ingest_emoji_zip(emoji_db, emoji_zip):
    db, rep = emoji_db
    with zipfile.ZipFile(emoji_zip) as z:
        names = [n for n in z.namelist() if n.endswith(".png")]
        hashes = {n: sha256(z.read(n)) for n in names}
    assert len(names) == 3926
    distinct = len(set(hashes.values()))
    assert rep.skipped == 0 and rep.unchanged == 0
    assert rep.added == distinct == len(db)
    assert rep.duplicates == len(names) - distinct > 0

    rows = db.tiles(db.ids())
    assert {t["origin"] for t in rows} == {"archive"}
    assert {(t["width"], t["height"], t["format"]) for t in rows} == {(136, 128, "PNG")}
    for t in rows:
        archive, member = t["source"].split("!", 1)
        assert archive == str(emoji_zip) and hashes[member] == t["hash"]
    assert_content_addressed(db, rows)
    assert db.stats()["by_origin"] == {"archive": distinct}

    th = db.thumbs(64)
    assert th.shape == (distinct, 64, 64, 3)
    # transparent surroundings composited on white: most emoji have pure white corners
    corners = th[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all(axis=(1, 2)).mean() > 0.8
    assert np.isfinite(np.asarray(db.features())).all()


@pytest.mark.slow
def test_emoji_zip_rerun_is_unchanged(emoji_db, emoji_zip):
    db, rep = emoji_db
    n, version = len(db), db.version
    again = db.ingest([emoji_zip], workers=1, update_index=False)
    assert (again.added, again.duplicates, again.skipped) == (0, 0, 0)
    assert again.unchanged == rep.added + rep.duplicates
    assert len(db) == n and db.version == version


# ---- decoding policy -----------------------------------------------------------------------------
def ingest_one(db: TileDB, path: Path) -> dict:
    rep = db.ingest([path], workers=1, update_index=False)
    assert rep.added == 1, db.errors()
    return db.tiles([rep.new_ids[0]])[0]


def thumb(db: TileDB, tile: dict, size: int = 32) -> np.ndarray:
    return np.asarray(db.thumbs(size)[tile["id"]]).astype(int)


def test_exif_orientation_applied(tmp_path, new_db):
    # stored 60x30: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise
    # to display, so the displayed 30x60 picture is red on top, blue below.
    a = np.zeros((30, 60, 3), np.uint8)
    a[:, :30] = (220, 20, 20)
    a[:, 30:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(p, quality=95, exif=exif.tobytes())
    plain = tmp_path / "plain.jpg"
    Image.fromarray(a).save(plain, quality=95)

    db = new_db()
    t = thumb(db, ingest_one(db, p))
    top, bottom = t[:12].mean(axis=(0, 1)), t[-12:].mean(axis=(0, 1))
    assert top[0] > 180 and top[2] < 60, top        # red above
    assert bottom[2] > 180 and bottom[0] < 60, bottom  # blue below
    left, right = t[:, :12].mean(axis=(0, 1)), t[:, -12:].mean(axis=(0, 1))
    assert abs(left - right).max() < 10  # no left/right split any more

    u = thumb(db, ingest_one(db, plain))  # the same pixels without the tag: split left/right
    assert u[:, :12, 0].mean() > 180 and u[:, -12:, 2].mean() > 180


@pytest.mark.parametrize("bg", [(255, 255, 255), (10, 200, 30)])
def test_transparent_image_becomes_background(tmp_path, new_db, bg):
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., :3] = (250, 0, 250)  # colour under alpha 0 must not leak
    p = tmp_path / "clear.png"
    Image.fromarray(a, "RGBA").save(p)
    db = new_db(background=bg)
    t = ingest_one(db, p)
    for s in db.thumb_sizes:
        assert (np.asarray(db.thumbs(s)[t["id"]]) == np.array(bg, np.uint8)).all()
    # the original itself, normalised, is the background too
    assert (np.asarray(db.load_original(t["id"])) == np.array(bg, np.uint8)).all()


def test_half_transparent_is_composited(tmp_path, new_db):
    a = np.zeros((32, 32, 4), np.uint8)
    a[...] = (200, 0, 0, 128)
    p = tmp_path / "half.png"
    Image.fromarray(a, "RGBA").save(p)
    db = new_db(background=(0, 0, 255))
    t = thumb(db, ingest_one(db, p))
    expect = np.rint(np.array([200, 0, 0]) * 128 / 255 + np.array([0, 0, 255]) * 127 / 255)
    assert np.abs(t - expect).max() <= 1, (t[0, 0], expect)


def _mode_images(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Files in various modes -> (path, expected 8-bit RGB of every pixel)."""
    out = {}
    grey = Image.new("L", (24, 24), 77)
    grey.save(tmp_path / "grey.png")
    out["L"] = (tmp_path / "grey.png", np.array([77, 77, 77]))

    pal = Image.new("P", (24, 24), 1)
    pal.putpalette([0, 0, 0, 12, 150, 230] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    out["P"] = (tmp_path / "palette.png", np.array([12, 150, 230]))

    pal_t = Image.new("P", (24, 24), 1)
    pal_t.putpalette([0, 0, 0, 12, 150, 230] + [0] * 762)
    pal_t.info["transparency"] = 1
    pal_t.save(tmp_path / "palette_transparent.png", transparency=1)
    out["P+transparency"] = (tmp_path / "palette_transparent.png", np.array([40, 50, 60]))  # the background

    cmyk = Image.new("CMYK", (24, 24), (10, 200, 30, 40))
    cmyk.save(tmp_path / "cmyk.tif")
    out["CMYK"] = (tmp_path / "cmyk.tif", np.array(cmyk.convert("RGB").getpixel((0, 0))))

    g16 = Image.fromarray(np.full((24, 24), 40000, np.uint16))
    assert g16.mode == "I;16"
    g16.save(tmp_path / "grey16.png")
    out["I;16"] = (tmp_path / "grey16.png", np.array([155, 155, 155]))  # 40000 * 255 // 65535

    dark16 = Image.fromarray(np.full((24, 24), 200, np.uint16))  # 16-bit, but very dark
    dark16.save(tmp_path / "dark16.png")
    out["I;16 dark"] = (tmp_path / "dark16.png", np.array([0, 0, 0]))

    la = Image.fromarray(np.dstack([np.full((24, 24), 100, np.uint8), np.full((24, 24), 255, np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    out["LA"] = (tmp_path / "la.png", np.array([100, 100, 100]))

    la0 = Image.fromarray(np.dstack([np.full((24, 24), 100, np.uint8), np.zeros((24, 24), np.uint8)]), "LA")
    la0.save(tmp_path / "la_clear.png")
    out["LA clear"] = (tmp_path / "la_clear.png", np.array([40, 50, 60]))
    return out


def test_modes_converted_to_8bit_srgb(tmp_path, new_db):
    db = new_db(background=(40, 50, 60))
    for mode, (path, expect) in _mode_images(tmp_path).items():
        with Image.open(path) as im:
            assert im.mode == mode.split()[0].split("+")[0]  # the file really is in that mode
        t = ingest_one(db, path)
        for s in db.thumb_sizes:
            px = np.asarray(db.thumbs(s)[t["id"]])
            assert px.dtype == np.uint8 and px.shape == (s, s, 3)
            assert np.abs(px.astype(int) - expect).max() <= 1, (mode, s, px[0, 0], expect)
        img = db.load_original(t["id"])
        assert img.mode == "RGB"
        assert np.abs(np.asarray(img).astype(int) - expect).max() <= 1, mode


def test_cmyk_jpeg(tmp_path, new_db):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    db = new_db()
    t = thumb(db, ingest_one(db, p))
    assert t[..., 0].mean() > 220 and t[..., 1].mean() < 40 and t[..., 2].mean() < 40


def test_centre_crop_policy(tmp_path, new_db):
    thirds = [(230, 20, 20), (20, 200, 40), (30, 30, 220)]
    wide = np.zeros((32, 96, 3), np.uint8)
    tall = np.zeros((96, 32, 3), np.uint8)
    for k, c in enumerate(thirds):
        wide[:, 32 * k:32 * (k + 1)] = c
        tall[32 * k:32 * (k + 1)] = c
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(tall).save(tmp_path / "tall.png")
    db = new_db()
    for name in ("wide.png", "tall.png"):
        t = ingest_one(db, tmp_path / name)
        assert (t["width"], t["height"]) == ((96, 32) if name == "wide.png" else (32, 96))
        for s in db.thumb_sizes:
            px = np.asarray(db.thumbs(s)[t["id"]]).astype(int)
            assert np.abs(px - thirds[1]).max() <= 1, (name, s)  # only the centre third, no bleed
    assert center_square(Image.fromarray(wide)).size == (32, 32)


# ---- sources -------------------------------------------------------------------------------------
def _archive_members(rng, n=5) -> dict[str, bytes]:
    return {f"sub/dir/m{i}.png": encode(synthetic_image(rng, 20 + i, 30)) for i in range(n)}


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archive_sources(tmp_path, new_db, kind):
    rng = np.random.default_rng(7)
    members = _archive_members(rng)
    members["notes.txt"] = b"not an image"
    members["sub/.hidden.png"] = encode(synthetic_image(rng, 10, 10))  # dot files are skipped
    path = tmp_path / f"pics.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    db = new_db()
    rep = db.ingest([path], workers=1)
    assert (rep.added, rep.skipped, rep.duplicates) == (5, 1, 0)
    rows = tile_by_source(db)
    assert set(rows) == {f"{path}!sub/dir/m{i}.png" for i in range(5)}
    for key, t in rows.items():
        assert t["origin"] == "archive" and t["hash"] == sha256(members[key.split("!", 1)[1]])
        assert (t["width"], t["height"]) == (20 + int(key[-5]), 30)
    assert_content_addressed(db, list(rows.values()))
    errs = db.errors()
    assert [e["source"] for e in errs] == [f"{path}!notes.txt"]
    assert "not an image" in errs[0]["reason"]
    # archives are never linked, even with link=True
    db2 = new_db()
    db2.ingest([path], link=True, workers=1)
    assert all(not Path(t["blob"]).is_absolute() for t in db2.tiles(db2.ids()))
    # a re-run is unchanged
    again = db.ingest([path], workers=1)
    assert (again.added, again.unchanged) == (0, 6)


def test_single_files_and_mixed_sources(tmp_path, new_db):
    paths = write_synthetic(tmp_path / "pics", 6, seed=3)
    db = new_db()
    rep = db.ingest([paths[0], paths[3]], workers=1)
    assert rep.added == 2
    assert set(tile_by_source(db)) == {str(paths[0]), str(paths[3])}
    rep = db.ingest([tmp_path / "pics", paths[0]], workers=1)  # the folder, and a file seen already
    assert rep.added == 4 and rep.unchanged >= 2
    assert set(tile_by_source(db)) == {str(p) for p in paths}


def test_relative_source_paths_are_made_absolute(tmp_path, new_db, monkeypatch):
    write_synthetic(tmp_path / "rel", 3, seed=4)
    monkeypatch.chdir(tmp_path)
    db = new_db()
    assert db.ingest(["rel"], workers=1).added == 3
    assert all(Path(k).is_absolute() and k.startswith(str(tmp_path / "rel")) for k in tile_by_source(db))


def test_link_keeps_files_in_place(tmp_path, new_db):
    paths = write_synthetic(tmp_path / "pics", 8, seed=5)
    db = new_db()
    rep = db.ingest([tmp_path / "pics"], link=True, workers=1)
    assert rep.added == 8
    rows = db.tiles(db.ids())
    for t in rows:
        assert Path(t["blob"]).is_absolute() and t["blob"] == t["source"]
        assert db.blob_path(t) == Path(t["source"])
        assert sha256(Path(t["blob"]).read_bytes()) == t["hash"]
    assert not (db.path / "originals").exists() or not any(f.is_file() for f in (db.path / "originals").rglob("*"))
    assert db.stats()["linked"] == 8 and db.stats()["bytes"]["originals"] == 0
    assert db.load_original(rows[0]["id"]).size == Image.open(paths[0]).size
    assert db.check(deep=True).ok
    # removing a linked tile leaves the user's file alone
    assert db.remove([rows[0]["id"]]) == 1
    assert Path(rows[0]["source"]).is_file()


def test_rerun_adds_nothing(synthetic_copy, new_db):
    db = new_db()
    first = db.ingest([synthetic_copy], workers=2)
    assert first.added == 300 and first.skipped == 0
    version, next_id = db.version, db.next_id
    feats = np.array(db.features())
    idx_version = db.load_index().infos["catalog_version"]
    again = db.ingest([synthetic_copy], workers=2)
    assert (again.added, again.duplicates, again.skipped, again.unchanged) == (0, 0, 0, 300)
    assert "0 added" in again.summary() and "300 unchanged" in again.summary()
    assert (db.version, db.next_id, len(db)) == (version, next_id, 300)
    np.testing.assert_array_equal(np.asarray(db.features()), feats)
    assert db.load_index().infos["catalog_version"] == idx_version
    # a reopened database remembers what it has seen
    db.close()
    db2 = TileDB.open(db.path)
    assert db2.ingest([synthetic_copy], workers=1).unchanged == 300
    db2.close()


def test_changed_file_is_reingested(tmp_path, new_db):
    paths = write_synthetic(tmp_path / "pics", 5, seed=6)
    db = new_db()
    assert db.ingest([tmp_path / "pics"], workers=1).added == 5
    new = synthetic_image(np.random.default_rng(99), 40, 40, "gradient")
    target = paths[2]
    st = target.stat()
    Image.fromarray(new).save(target, format="PNG")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    rep = db.ingest([tmp_path / "pics"], workers=1)
    assert (rep.added, rep.unchanged) == (1, 4)
    h = sha256(target.read_bytes())
    ids = db.find(hashes=[h])
    assert len(ids) == 1
    t = db.tiles(ids)[0]
    assert t["source"] == str(target) and (t["width"], t["height"]) == (40, 40)
    np.testing.assert_array_equal(np.asarray(db.thumbs(64)[t["id"]]),
                                  cv2.resize(new, (64, 64), interpolation=cv2.INTER_CUBIC))


def test_rewritten_zip_is_read_again(tmp_path, new_db):
    """An archive replaced between two ingests in the same process must be reopened."""
    rng = np.random.default_rng(8)
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(3):
            z.writestr(f"a{i}.png", encode(synthetic_image(rng, 20, 20)))
    db = new_db()
    assert db.ingest([path], workers=1).added == 3
    path.unlink()
    with zipfile.ZipFile(path, "w") as z:
        for i in range(4):
            z.writestr(f"folder/longer_name_{i}.png", encode(synthetic_image(rng, 24, 24)))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    rep = db.ingest([path], workers=1)
    assert (rep.added, rep.skipped) == (4, 0), db.errors()


def test_add_images_records_provenance(new_db):
    db = new_db()
    rng = np.random.default_rng(9)
    data = [encode(synthetic_image(rng, 48, 48)) for _ in range(3)]
    provs = [{"prompt": f"a red fox {i}", "seed": i, "model": "sd-turbo", "steps": [1, 2]} for i in range(3)]
    rep = db.add_images([(d, f"gen-{i}.png", p) for i, (d, p) in enumerate(zip(data, provs))], origin="generated")
    assert rep.added == 3
    rows = db.tiles(rep.new_ids)
    assert [t["provenance"] for t in rows] == provs
    assert [t["source"] for t in rows] == ["gen-0.png", "gen-1.png", "gen-2.png"]
    assert {t["origin"] for t in rows} == {"generated"}
    raw = db.con.execute("SELECT provenance FROM tiles WHERE id = ?", (rows[0]["id"],)).fetchone()[0]
    assert json.loads(raw) == provs[0]
    assert_content_addressed(db, rows)
    assert db.stats()["by_origin"] == {"generated": 3}
    # the same bytes again are a duplicate, not a new tile
    again = db.add_images([(data[0], "gen-again.png", {"prompt": "x"})])
    assert (again.added, again.duplicates) == (0, 1) and len(db) == 3
    # bytes sources leave no `sources` rows (nothing to re-scan)
    assert db.con.execute("SELECT COUNT(*) FROM sources").fetchone()[0] == 0


def test_remove_deletes_rows_originals_and_index_entries(synthetic_copy, new_db):
    db = new_db()
    db.ingest([synthetic_copy], workers=1)
    gone = [3, 50, 299]
    rows = db.tiles(gone)
    blobs = [db.blob_path(t) for t in rows]
    keep_blob = db.blob_path(db.tiles([4])[0])
    assert all(b.is_file() for b in blobs)
    version = db.version
    assert db.remove(gone + [3, 10_000]) == 3  # repeats and unknown ids are ignored
    assert len(db) == 297 and db.version == version + 1
    assert db.tiles(gone) == [] and not set(gone) & set(db.ids().tolist())
    assert not any(b.exists() for b in blobs) and keep_blob.is_file()
    idx = db.load_index()
    assert idx.ntotal == 297 and not set(gone) & set(idx.ids.tolist())
    assert not db.index_stale()
    placeholders = ",".join("?" * len(rows))
    assert db.con.execute(f"SELECT COUNT(*) FROM sources WHERE hash IN ({placeholders})",
                          [t["hash"] for t in rows]).fetchone()[0] == 0
    assert db.check().ok
    assert db.remove([]) == 0 and db.remove(gone) == 0


def test_find_by_hash_and_source(tmp_path, new_db):
    rng = np.random.default_rng(10)
    for folder in ("a_b", "axb", "a_b_more"):
        write_synthetic(tmp_path / folder, 3, seed=int(rng.integers(1e6)), prefix=folder)
    zpath = tmp_path / "a_b.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for i in range(2):
            z.writestr(f"z{i}.png", encode(synthetic_image(rng, 16, 16)))
    db = new_db()
    db.ingest([tmp_path / "a_b", tmp_path / "axb", tmp_path / "a_b_more", zpath], workers=1)
    assert len(db) == 11
    src = {t["id"]: t["source"] for t in db.tiles(db.ids())}

    def ids_where(pred):
        return sorted(i for i, s in src.items() if pred(s))

    assert db.find(source_prefix=str(tmp_path / "a_b")).tolist() == ids_where(
        lambda s: s.startswith(str(tmp_path / "a_b") + "/"))
    assert len(db.find(source_prefix=str(tmp_path / "a_b"))) == 3  # not axb/, not a_b_more/
    assert len(db.find(source_prefix=str(tmp_path / "a_b") + "/")) == 3
    assert len(db.find(source_prefix=str(tmp_path / "A_B"))) == 0  # paths are case-sensitive
    assert db.find(source_prefix=str(zpath)).tolist() == ids_where(lambda s: s.startswith(str(zpath) + "!"))
    assert len(db.find(source_prefix=str(zpath))) == 2
    one = next(iter(src.values()))
    assert db.find(source_prefix=one).tolist() == ids_where(lambda s: s == one)
    assert len(db.find(source_prefix=str(tmp_path / "nothing"))) == 0

    t = db.tiles([5])[0]
    assert db.find(hashes=[t["hash"][:10]]).tolist() == [5]
    assert db.find(hashes=[t["hash"][:10].upper()]).tolist() == [5]
    assert db.find(hashes=[t["hash"]]).tolist() == [5]
    two = db.tiles([1, 7])
    assert db.find(hashes=[x["hash"][:12] for x in two]).tolist() == [1, 7]
    assert db.find(hashes=["f" * 64]).tolist() == []


def test_check_healthy_and_broken(synthetic_copy, new_db):
    db = new_db()
    db.ingest([synthetic_copy], workers=1)
    rep = db.check(deep=True)
    assert rep.ok and rep.problems == [] and rep.warnings == [] and rep.tiles == 300

    # a deleted original
    victim = db.tiles([17])[0]
    db.blob_path(victim).unlink()
    rep = db.check()
    assert not rep.ok
    assert any("originals: 1 missing" in p and "tile 17 " in p for p in rep.problems), rep.problems
    with pytest.raises(DatabaseError, match="original of tile 17 is missing"):
        db.load_original(17)
    db.remove([17])
    assert db.check().ok

    # an original whose bytes changed (only --deep re-hashes)
    victim = db.tiles([18])[0]
    p = db.blob_path(victim)
    p.write_bytes(p.read_bytes() + b"x")
    assert db.check().ok
    deep = db.check(deep=True)
    assert any("tile 18" in q and "hash differs" in q for q in deep.problems), deep.problems

    # a truncated features file
    feat = db.path / "features.f32"
    keep = feat.read_bytes()
    with open(feat, "r+b") as f:
        f.truncate((db.next_id - 1) * db.dim * 4)
    rep = db.check()
    assert any("features.f32" in q and str(db.next_id) in q for q in rep.problems), rep.problems
    feat.write_bytes(keep)

    # non-finite features
    f = db._features.read(db.next_id, mode="r+")
    f[40, 5] = np.nan
    f.flush()
    del f
    rep = db.check()
    assert any("non-finite" in q and "first id 40" in q for q in rep.problems), rep.problems


def test_check_truncated_thumbnails_and_orphans(synthetic_copy, new_db):
    db = new_db()
    db.ingest([synthetic_copy], workers=1, update_index=False)
    rep = db.check()
    assert rep.ok and any(w.startswith("index: none") for w in rep.warnings)
    (db.path / "originals" / "00").mkdir(parents=True, exist_ok=True)
    (db.path / "originals" / "00" / ("0" * 64 + ".png")).write_bytes(b"left over")
    rep = db.check()
    assert rep.ok and any("originals: 1 files no tile references" in w for w in rep.warnings)
    with open(db.path / "thumbs_32.u8", "r+b") as f:
        f.truncate(10 * 32 * 32 * 3)
    rep = db.check()
    assert any("thumbs_32.u8 holds 10 rows" in q for q in rep.problems), rep.problems


def test_stats_numbers(tmp_path, synthetic_tiles, new_db):
    db = new_db(thumb_sizes=(8, 16, 32), features="lab-grid", feature_grid=2)
    files = sorted(synthetic_tiles.iterdir())[:40]
    for f in files:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    db.ingest([tmp_path / "in"], workers=1)
    db.add_images([(encode(synthetic_image(np.random.default_rng(1), 30, 30)), "g.png", {})])
    s = db.stats()
    assert s["tiles"] == 41 and s["by_origin"] == {"file": 40, "generated": 1}
    assert s["skipped_inputs"] == 1 and s["linked"] == 0
    assert s["thumb_sizes"] == [8, 16, 32] and s["feature_dim"] == 15
    assert s["features"]["kind"] == "lab-grid" and s["features"]["grid"] == 2
    b = s["bytes"]
    assert b["originals"] == sum(f.stat().st_size for f in files) + db.blob_path(db.tiles([40])[0]).stat().st_size
    assert b["features"] >= 41 * 15 * 4 and b["features"] % (15 * 4) == 0
    assert b["thumbnails"] >= 41 * 3 * (8 * 8 + 16 * 16 + 32 * 32)
    assert b["catalog"] > 0 and b["index"] > 0
    assert s["index"]["kind"] == "flat" and s["index"]["ntotal"] == 41 and s["index"]["stale"] is False
    assert s["index"]["recall_at_1"] == 1.0
    json.dumps(s)  # JSON-serialisable
    db.remove([0])
    assert db.stats()["tiles"] == 40 and db.stats()["by_origin"] == {"file": 39, "generated": 1}


def test_create_validation(tmp_path):
    with pytest.raises(UsageError, match="powers of two"):
        TileDB.create(tmp_path / "a", thumb_sizes=(8, 12))
    with pytest.raises(UsageError, match="consecutive"):
        TileDB.create(tmp_path / "b", thumb_sizes=(8, 32))
    with pytest.raises(UsageError, match="feature-grid"):
        TileDB.create(tmp_path / "c", features="lab-grid", feature_grid=0)
    with pytest.raises(UsageError, match="apply to --features lab-grid, not rgb-pyramid"):
        TileDB.create(tmp_path / "c", feature_grid=4)
    with pytest.raises(UsageError, match="unknown feature kind 'rgb'.*lab-grid, lab-pyramid, rgb-pyramid"):
        TileDB.create(tmp_path / "c", features="rgb")
    with pytest.raises(UsageError, match="background"):
        TileDB.create(tmp_path / "d", background=(1, 2))
    assert not any((tmp_path / n).exists() for n in "abcd")
    TileDB.create(tmp_path / "e").close()
    with pytest.raises(DatabaseError, match="already a tile database"):
        TileDB.create(tmp_path / "e")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x").write_text("x")
    with pytest.raises(DatabaseError, match="not an empty folder"):
        TileDB.create(tmp_path / "f")
    with pytest.raises(DatabaseError, match="does not exist"):
        TileDB.open(tmp_path / "nope")
    with pytest.raises(DatabaseError, match="is not a tile database"):
        TileDB.open(tmp_path / "f")


def test_readonly_open_of_awkward_path(tmp_path):
    """Read-only opening (stats, check, errors) must work whatever characters the path has."""
    path = tmp_path / "tiles #1?x=%20.db"
    db = TileDB.create(path)
    write_synthetic(tmp_path / "in", 2, seed=11)
    db.ingest([tmp_path / "in"], workers=1)
    db.close()
    with TileDB.open(path, readonly=True) as ro:
        assert len(ro) == 2 and ro.check().ok
        with pytest.raises(DatabaseError, match="read-only"):
            ro.ingest([tmp_path / "in"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", path.name]


def test_thumbnail_and_tile_pixels(synthetic_db):
    db = synthetic_db
    with pytest.raises(UsageError, match="not stored"):
        db.thumbs(128)
    t = db.tile_pixels(5, 32)
    np.testing.assert_array_equal(t, np.asarray(db.thumbs(32)[5]))
    assert db.tile_pixels(5, 24).shape == (24, 24, 3)
    assert db.tile_pixels(5, 100).shape == (100, 100, 3)  # from the original


def test_open_image_pixel_limit_is_ours(monkeypatch):
    """Pillow's global bomb limit (89 Mpx by default) must not override max_pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # stands in for a limit below ours
    data = encode(np.zeros((20, 20, 3), np.uint8))
    img, size, fmt = open_image(data, DecodeOptions())
    assert size == (20, 20) and fmt == "PNG"
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    wide = np.random.default_rng(0).integers(0, 256, (20, 31, 3), dtype=np.uint8)
    sq = center_square(Image.fromarray(wide))  # decoded already: no bomb check, same pixels
    np.testing.assert_array_equal(np.asarray(sq), wide[:, 5:25])
    from mosaicdb.errors import ImageError
    with pytest.raises(ImageError, match="decompression bomb"):
        open_image(data, DecodeOptions(max_pixels=399))
    assert open_image(data, DecodeOptions(max_pixels=400))[1] == (20, 20)


def test_open_image_from_threads_keeps_pillow_limit():
    from concurrent.futures import ThreadPoolExecutor

    before = Image.MAX_IMAGE_PIXELS
    data = encode(np.zeros((40, 30, 3), np.uint8))
    big = encode(np.zeros((60, 60, 3), np.uint8))

    def one(i):
        try:
            return open_image(big if i % 2 else data, DecodeOptions(max_pixels=1300 + i))[1]
        except Exception as e:  # noqa: BLE001 - the type is what is checked
            return type(e).__name__

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(one, range(400)))
    assert got == [("ImageError" if i % 2 else (30, 40)) for i in range(400)]
    assert Image.MAX_IMAGE_PIXELS == before


def test_features_of_ingested_tile_match_rgb_to_lab(tmp_path, new_db):
    colour = np.array([37, 140, 201], np.uint8)
    Image.new("RGB", (50, 30), tuple(int(c) for c in colour)).save(tmp_path / "u.png")
    db = new_db(features="lab-grid", mean_weight=0.5)
    t = ingest_one(db, tmp_path / "u.png")
    f = np.asarray(db.features()[t["id"]])
    lab = rgb_to_lab(colour)
    np.testing.assert_allclose(f[:3], lab * 4 * 0.5, atol=1e-3)
    np.testing.assert_allclose(f[3:].reshape(-1, 3), np.tile(lab, (16, 1)), atol=1e-3)


def test_ids_are_kept_per_catalog_version_and_see_another_writer(tmp_path):
    """`ids()` is read once per catalog version (a million ids cost ~1 s to read), read-only, and
    a change made through another handle (another process) is seen on the next call."""
    folder = tmp_path / "few"
    write_synthetic(folder, 12, seed=5)
    with TileDB.create(tmp_path / "t.db") as w:
        w.ingest([folder], workers=1)
    reader = TileDB.open(tmp_path / "t.db", readonly=True)
    try:
        ids = reader.ids()
        assert reader.ids() is ids and not ids.flags.writeable
        with TileDB.open(tmp_path / "t.db") as w:
            w.remove([int(ids[3])])
        now = reader.ids()
        assert now.tolist() == [i for i in ids.tolist() if i != ids[3]]
        ask = [int(ids[0]), int(ids[3]), int(ids[3]), 10 ** 6, -1, int(ids[-1])]
        assert reader.missing(ask).tolist() == [-1, int(ids[3]), 10 ** 6]
        assert reader.missing([]).tolist() == []
    finally:
        reader.close()


def test_tiles_digest_is_over_the_distinct_tiles_ids_and_hashes(cifar_db):
    """The digest an assignment records: the (id, content hash) of its distinct tiles, in id
    order, '-' for an id the database does not hold (computed here by hand from the catalog)."""
    db = cifar_db
    if True:
        ids = np.array([7, 3, 7, 1200, 3, 0, 10 ** 9], np.int64)
        rows = {r["id"]: r["hash"] for r in db.tiles([0, 3, 7, 1200])}
        h = hashlib.sha256()
        for i in (0, 3, 7, 1200, 10 ** 9):
            h.update(f"{i}:{rows.get(i, '-')}\n".encode())
        assert len(rows) == 4 and db.tiles_digest(ids) == h.hexdigest()
        assert db.tiles_digest(ids[::-1]) == db.tiles_digest(ids)
        assert db.tiles_digest(ids[:3]) == db.tiles_digest(ids[:2]) != db.tiles_digest(ids[:4])
