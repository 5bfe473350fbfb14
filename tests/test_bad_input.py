"""Bad inputs: every broken file is skipped with a reason, the ingest goes on, the CLI says so
in one line, and no command ever shows a traceback."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import textwrap
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke_cli
from PIL import Image

from conftest import encode, synthetic_image
from mosaicdb import TileDB
from mosaicdb.errors import DatabaseLocked, ImageError, MosaicError, UsageError
from mosaicdb.store.decode import DecodeOptions, open_image
from mosaicdb.store.lock import WriteLock


def run(*args, code: int | None = None):
    return invoke_cli(*args, code=code)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A PNG whose header claims width x height grey pixels, with a tiny IDAT (never allocated)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b""))


def make_corpus(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Good images plus one of each kind of bad input -> (good paths, {bad source key: reason substring})."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(42)
    good = []
    for i in range(3):
        p = folder / f"good{i}.png"
        Image.fromarray(synthetic_image(rng, 30 + i, 40)).save(p)
        good.append(p)
    png = encode(synthetic_image(rng, 64, 64, "noise"))
    jpg = encode(synthetic_image(rng, 64, 64, "noise"), "JPEG", quality=90)
    bad: dict[str, str] = {}

    def put(name: str, data: bytes, reason: str) -> None:
        (folder / name).write_bytes(data)
        bad[str(folder / name)] = reason

    put("random_bytes.png", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "not an image")
    put("truncated.png", png[: len(png) // 2], "truncated")
    put("truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    put("empty.jpg", b"", "empty file (0 bytes)")
    put("notes.jpg", b"These are my holiday notes, not a picture.\n" * 20, "not an image")
    put("bad_idat.png", png[:60] + bytes(200) + png[260:], "corrupt")
    put("bomb.png", bomb_png(), "decompression bomb")
    put("broken.zip", b"PK\x03\x04" + rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), "unreadable archive")
    os.symlink(folder / "does-not-exist.png", folder / "dangling.png")
    bad[str(folder / "dangling.png")] = "unreadable: No such file or directory"
    return good, bad


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    good, bad = make_corpus(tmp_path / "corpus")
    TileDB.create(tmp_path / "db").close()
    res = run("db", "ingest", tmp_path / "db", tmp_path / "corpus", "--workers", "1", "-q")
    assert res.exit_code == 0, res.output
    assert f"3 added, {len(bad)} skipped (mosaic db errors)" in res.output

    with TileDB.open(tmp_path / "db", readonly=True) as db:
        assert len(db) == 3
        assert sorted(t["source"] for t in db.tiles(db.ids())) == sorted(str(p) for p in good)
        errors = {e["source"]: e["reason"] for e in db.errors()}
        assert db.check().ok
    assert set(errors) == set(bad)
    for source, want in bad.items():
        assert want in errors[source], (source, errors[source])

    # `mosaic db errors` lists them, plain and as JSON
    res = run("db", "errors", tmp_path / "db")
    assert res.exit_code == 0
    for source in bad:
        assert f"{source}: " in res.stdout
    assert f"{len(bad)} skipped input(s)" in res.output
    listed = json.loads(run("db", "errors", tmp_path / "db", "--json").stdout)
    assert {e["source"]: e["reason"] for e in listed} == errors

    # a rerun skips them again (still listed), adds nothing and still exits 0
    res = run("db", "ingest", tmp_path / "db", tmp_path / "corpus", "--workers", "2", "-q")
    assert res.exit_code == 0 and res.output.startswith("0 added, ")
    with TileDB.open(tmp_path / "db", readonly=True) as db:
        assert {e["source"] for e in db.errors()} == set(bad) and len(db) == 3


def test_fixed_input_leaves_the_error_list(tmp_path):
    (tmp_path / "in").mkdir()
    p = tmp_path / "in" / "later.png"
    p.write_bytes(b"not yet")
    db = TileDB.create(tmp_path / "db")
    assert db.ingest([tmp_path / "in"], workers=1).skipped == 1
    assert [e["source"] for e in db.errors()] == [str(p)]
    Image.fromarray(synthetic_image(np.random.default_rng(0), 20, 20)).save(p, format="PNG")
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert db.ingest([tmp_path / "in"], workers=1).added == 1
    assert db.errors() == []
    db.close()


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading a file")
    (tmp_path / "in").mkdir()
    p = tmp_path / "in" / "secret.png"
    Image.fromarray(synthetic_image(np.random.default_rng(0), 20, 20)).save(p)
    p.chmod(0)
    try:
        db = TileDB.create(tmp_path / "db")
        rep = db.ingest([tmp_path / "in"], workers=1)
        assert (rep.added, rep.skipped) == (0, 1)
        assert "Permission denied" in db.errors()[0]["reason"]
        db.close()
    finally:
        p.chmod(0o644)


def test_damaged_archives(tmp_path):
    rng = np.random.default_rng(5)

    def tar_bytes(mode: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as t:
            for i in range(6):  # noise PNGs: incompressible, so the cut falls mid-archive
                name, data = f"m{i}.png", encode(synthetic_image(rng, 64, 64, "noise"))
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    tgz, tar = tar_bytes("w:gz"), tar_bytes("w")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "truncated.tar.gz").write_bytes(tgz[: len(tgz) * 6 // 10])
    (tmp_path / "in" / "truncated.tar").write_bytes(tar[: len(tar) * 6 // 10])
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(6):  # BMPs of colour blocks: highly compressible, so truly deflated
            z.writestr(f"m{i}.bmp", encode(synthetic_image(rng, 64, 64, "blocks"), "BMP"))
    zdata = bytearray(zbuf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(zdata))) as z:
        info = z.getinfo("m2.bmp")
    start = info.header_offset + 30 + len(info.filename) + 20
    zdata[start:start + 40] = b"\xff" * 40  # damage one member's deflate stream
    (tmp_path / "in" / "damaged.zip").write_bytes(bytes(zdata))
    (tmp_path / "in" / "truncated.zip").write_bytes(bytes(zdata[: len(zdata) // 2]))

    TileDB.create(tmp_path / "db").close()
    res = run("db", "ingest", tmp_path / "db", tmp_path / "in", "--workers", "1", "-q")
    assert res.exit_code == 0, res.output
    with TileDB.open(tmp_path / "db", readonly=True) as db:
        errors = {e["source"]: e["reason"] for e in db.errors()}
        srcs = {t["source"] for t in db.tiles(db.ids())}
    d = tmp_path / "in"
    assert "unreadable archive" in errors[f"{d}/truncated.tar.gz"]
    assert "unreadable archive" in errors[f"{d}/truncated.tar"]
    assert "unreadable archive" in errors[f"{d}/truncated.zip"]
    assert "decompressing" in errors[f"{d}/damaged.zip!m2.bmp"]
    # the intact members of the damaged zip and the members before the cut are ingested
    assert {f"{d}/damaged.zip!m{i}.bmp" for i in (0, 1, 3, 4, 5)} <= srcs
    assert any(s.startswith(f"{d}/truncated.tar.gz!") for s in srcs)
    assert any(s.startswith(f"{d}/truncated.tar!") for s in srcs)
    for key, reason in errors.items():
        assert reason and "empty file" not in reason, (key, reason)
    assert res.output.startswith(f"{len(srcs)} added, {len(errors)} skipped (mosaic db errors)")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_mutated_files_only_raise_image_error(fmt):
    """Random byte damage in any format is an ImageError, never another exception."""
    rng = np.random.default_rng(sum(map(ord, fmt)))
    data = encode(synthetic_image(rng, 40, 30, "blocks"), fmt)
    failures = 0
    for _ in range(150):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(1, len(b)))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img, _, _ = open_image(bytes(b), DecodeOptions(), min_side=64)
            assert img.mode == "RGB"
        except ImageError as e:
            assert str(e)
            failures += 1
    assert failures > 0


def test_bomb_limits(tmp_path):
    with pytest.raises(ImageError, match="decompression bomb.*db init --max-pixels"):  # where to change it
        open_image(bomb_png(40000, 40000))
    (tmp_path / "t.png").write_bytes(bomb_png(40000, 40000))
    from mosaicdb.match.grid import load_target
    with pytest.raises(MosaicError, match="target .*t.png.*1,000,000,000 px limit for a target") as e:
        load_target(tmp_path / "t.png")  # a fixed limit: no option to name
    assert "--max-pixels" not in str(e.value)
    # below our limit but above Pillow's default (89 Mpx): a sane, if broken, file, not a bomb
    with pytest.raises(ImageError) as e:
        open_image(bomb_png(10000, 10000))
    assert "bomb" not in str(e.value) and "truncated" in str(e.value)
    # the database's own --max-pixels applies
    db = TileDB.create(tmp_path / "db", max_pixels=1000)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "in" / "big.png")
    Image.new("RGB", (30, 30), "red").save(tmp_path / "in" / "ok.png")
    rep = db.ingest([tmp_path / "in"], workers=1)
    assert (rep.added, rep.skipped) == (1, 1)
    assert "decompression bomb" in db.errors()[0]["reason"] and "1,000 px limit" in db.errors()[0]["reason"]
    db.close()


# ---- missing things ------------------------------------------------------------------------------
def test_missing_source(tmp_path):
    TileDB.create(tmp_path / "db").close()
    before = sorted(p.name for p in (tmp_path / "db").iterdir())
    missing = tmp_path / "no" / "such" / "folder"
    res = run("db", "ingest", tmp_path / "db", missing)
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(missing) in lines[0]
    assert not missing.exists() and not (tmp_path / "no").exists()
    with TileDB.open(tmp_path / "db", readonly=True) as db:
        assert len(db) == 0 and db.errors() == [] and db.version == 0
    after = {p.name for p in (tmp_path / "db").iterdir()}
    assert after - set(before) <= {"lock", "catalog.sqlite-wal", "catalog.sqlite-shm"}, after
    # one missing source among good ones: nothing is ingested
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    res = run("db", "ingest", tmp_path / "db", good, missing)
    assert res.exit_code != 0 and str(missing) in res.output
    with TileDB.open(tmp_path / "db", readonly=True) as db:
        assert len(db) == 0
    with pytest.raises(UsageError, match="does not exist"):
        TileDB.open(tmp_path / "db").ingest([missing])


@pytest.mark.parametrize("command", [["ingest", "{src}"], ["index"], ["stats"], ["check"], ["errors"],
                                     ["remove", "3"]])
def test_missing_database(tmp_path, command):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "a.png")
    db = tmp_path / "nowhere" / "tiles.db"
    res = run("db", command[0], db, *[c.format(src=src) for c in command[1:]])
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(db) in lines[0], res.output
    assert "mosaic db init" in lines[0]
    assert not db.exists() and not db.parent.exists()


def test_not_a_database(tmp_path):
    (tmp_path / "folder").mkdir()
    res = run("db", "stats", tmp_path / "folder")
    assert res.exit_code == 1 and "is not a tile database" in res.output
    (tmp_path / "bad.db").mkdir()
    (tmp_path / "bad.db" / "catalog.sqlite").write_bytes(b"this is not sqlite" * 100)
    res = run("db", "stats", tmp_path / "bad.db")
    assert res.exit_code != 0 and "catalog" in res.output and len(res.output.strip().splitlines()) == 1


def test_bad_options_are_one_line_errors(tmp_path):
    for args in (["db", "init", tmp_path / "a", "--thumb-sizes", "8,x"],
                 ["db", "init", tmp_path / "b", "--thumb-sizes", "8,24"],
                 ["db", "init", tmp_path / "c", "--background", "1,2"]):
        res = run(*args)
        assert res.exit_code == 2 and res.output.startswith("Error: ") and len(res.output.strip().splitlines()) == 1
    assert not any((tmp_path / n).exists() for n in "abc")
    TileDB.create(tmp_path / "db").close()
    res = run("db", "remove", tmp_path / "db", "not-a-hash")
    assert res.exit_code == 2 and "neither a tile id nor a hash prefix" in res.output
    res = run("db", "remove", tmp_path / "db")
    assert res.exit_code == 2 and "--source" in res.output
    res = run("db", "index", tmp_path / "db")
    assert res.exit_code == 1 and "has no tiles" in res.output


# ---- the write lock ------------------------------------------------------------------------------
def test_second_writer_in_process(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "in" / "a.png")
    TileDB.create(tmp_path / "db").close()
    with WriteLock(tmp_path / "db"):
        res = run("db", "ingest", tmp_path / "db", tmp_path / "in", "-q")
        assert res.exit_code != 0
        line = res.output.strip()
        assert len(line.splitlines()) == 1
        assert f"database {tmp_path / 'db'} is busy: pid {os.getpid()} (" in line
        for args in (["remove", "0"], ["index"]):
            res = run("db", args[0], tmp_path / "db", *args[1:])
            assert res.exit_code != 0 and "is busy" in res.output
        # readers don't need the lock
        assert run("db", "stats", tmp_path / "db").exit_code == 0
        assert run("db", "check", tmp_path / "db").exit_code == 0
        with TileDB.open(tmp_path / "db") as db, pytest.raises(DatabaseLocked, match="is busy"):
            db.ingest([tmp_path / "in"])
    res = run("db", "ingest", tmp_path / "db", tmp_path / "in", "-q")
    assert res.exit_code == 0 and res.output.startswith("1 added")


def test_second_writer_other_process(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "in" / "a.png")
    TileDB.create(tmp_path / "db").close()
    holder = textwrap.dedent(f"""
        import sys, time
        from mosaicdb.store.lock import WriteLock
        with WriteLock({str(tmp_path / 'db')!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", holder, "holder-marker"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        res = run("db", "ingest", tmp_path / "db", tmp_path / "in", "-q")
        assert res.exit_code != 0
        assert f"is busy: pid {p.pid} (-c holder-marker) is writing to it" in res.output
    finally:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=30)
    assert run("db", "ingest", tmp_path / "db", tmp_path / "in", "-q").exit_code == 0


def test_lock_released_after_error(tmp_path):
    """An ingest that fails (missing source) must not leave the lock held."""
    TileDB.create(tmp_path / "db").close()
    with TileDB.open(tmp_path / "db") as db:
        with pytest.raises(UsageError):
            db.ingest([tmp_path / "missing"])
        with WriteLock(db.path):
            pass
