"""Hostile input, damage and interruptions: nothing lost, nothing leaked, nothing hangs.

One test per class of fault found by trying the product as a hostile user would (issue 11):
damaged databases, half-written outputs, special files, paths that escape their root, outputs
over inputs, memory bombs and dying workers, the viewer's Host/token checks, signals and stale
temporary files, bad numbers in saved files, and misuse of the Python API.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import invoke_cli
from conftest import start_render_to_interrupt, synthetic_image, write_synthetic
from mosaicdb import TileDB
from mosaicdb import assignment as asg
from mosaicdb.errors import DatabaseError, MosaicError, UsageError
from mosaicdb.io import temp_path
from mosaicdb.make import Maker
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions

MOSAIC = [sys.executable, "-m", "mosaicdb"]


@pytest.fixture
def target(tmp_path) -> Path:
    p = tmp_path / "target.png"
    Image.fromarray(synthetic_image(np.random.default_rng(3), 96, 64, "blocks")).save(p)
    return p


def make(db_path, target, out, **kw):
    with TileDB.open(db_path) as db:
        return Maker(db, MatchOptions(grid="12", min_distance=0), RenderOptions(tile_px=8, **kw)).make(target, out)


def test_row_checksums_are_zlibs_crc32():
    """Databases written with zlib's CRC-32 stay valid: the fast checksum must be the same function."""
    import zlib

    from mosaicdb.store.integrity import crc_of
    rows = np.random.default_rng(0).integers(0, 256, (7, 3, 5), dtype=np.uint8)
    for a in (rows, rows[:1], rows[::2], rows[:0]):
        assert crc_of(a) == zlib.crc32(np.ascontiguousarray(a).tobytes()) & 0xFFFFFFFF


# ---- 1. a damaged database is never "repaired" into black tiles -----------------------------------
@pytest.mark.parametrize("damage", ["truncate", "delete", "zero-rows"])
def test_damaged_arrays_are_refused_detected_and_repaired(db40, target, tmp_path, damage):
    m = make(db40, target, tmp_path / "before.png")
    before = np.asarray(Image.open(m.output))
    arr = db40 / "thumbs_16.u8"
    if damage == "truncate":
        os.truncate(arr, 16 * 16 * 3 * 5)
    elif damage == "delete":
        arr.unlink()
    else:  # same size, rows overwritten: only the checksums can tell
        with open(arr, "r+b") as f:
            f.seek(16 * 16 * 3 * 3)
            f.write(bytes(16 * 16 * 3 * 20))
    # another ingest must not grow the array back with zeros
    extra = tmp_path / "extra"
    write_synthetic(extra, 3, seed=99, prefix="x")
    res = invoke_cli("db", "ingest", db40, extra, "-q", "--workers", "1")
    if damage != "zero-rows":
        assert res.exit_code == 1 and "db repair" in res.output
    res = invoke_cli("db", "check", "--deep", db40)
    assert res.exit_code == 1 and "thumbs_16" in res.output
    # a render never draws a damaged row: it refuses, naming the repair
    res = invoke_cli("render", asg.sidecar_paths(m.output)[0], "--out", tmp_path / "again.png", "--tile-px", "16")
    assert res.exit_code == 1 and "db repair" in res.output and not (tmp_path / "again.png").exists()
    res = invoke_cli("db", "repair", db40, "-q")
    assert res.exit_code == 0, res.output
    assert invoke_cli("db", "check", "--deep", db40).exit_code == 0
    invoke_cli("render", asg.sidecar_paths(m.output)[0], "--out", tmp_path / "again.png", "--tile-px", "8", code=0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), before)


def test_unrecoverable_tiles_are_reported_and_never_drawn(db40, target, tmp_path):
    m = make(db40, target, tmp_path / "m.png")
    with TileDB.open(db40, readonly=True) as db:
        used = int(m.saved.tile_ids[0, 0])
        blob = db.blob_path(db.tiles([used])[0])
    blob.unlink()
    with open(db40 / "thumbs_8.u8", "r+b") as f:  # its rows are gone too
        f.seek(8 * 8 * 3 * used)
        f.write(bytes(8 * 8 * 3))
    res = invoke_cli("db", "repair", db40)
    assert res.exit_code == 1 and f"tile {used}" in res.output and "cannot be rebuilt" in res.output
    res = invoke_cli("render", asg.sidecar_paths(m.output)[0], "--out", tmp_path / "r.png")
    assert res.exit_code == 1 and not (tmp_path / "r.png").exists()
    res = invoke_cli("db", "repair", db40, "--remove-unrecoverable", "-q")
    assert res.exit_code == 0
    with TileDB.open(db40, readonly=True) as db:
        assert used not in db.ids()


# ---- 2. nothing half-written under a final name ----------------------------------------------------
def test_disk_full_leaves_nothing(db40, target, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): the simulated-ENOSPC test covers the logic")
    try:
        for name in ("m.jpg", "m.png", "m.tif"):
            res = invoke_cli("make", "--db", db40, target, "--out", mnt / name, "--grid", "64", "--tile-px", "16",
                             "-q")
            assert res.exit_code == 1, res.output
            assert list(mnt.iterdir()) == [], sorted(p.name for p in mnt.iterdir())
    finally:
        subprocess.run(["umount", str(mnt)])


def test_simulated_disk_full_mid_write_leaves_nothing(db40, target, tmp_path, monkeypatch):
    import errno

    from mosaicdb.render import raster
    real = raster.write_png_stream

    def full(f, bands, *a, **k):
        f.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(raster, "write_png_stream", full)
    res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--tile-px", "4", "-q")
    assert res.exit_code == 1 and "No space left" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "t.db", "target.png"]
    monkeypatch.setattr(raster, "write_png_stream", real)


# ---- 3. special files never hang an ingest ---------------------------------------------------------
def test_fifos_devices_and_sockets_are_skipped(tmp_path):
    src = tmp_path / "src"
    write_synthetic(src, 4, seed=5)
    os.mkfifo(src / "pipe.png")
    (src / "zero.png").symlink_to("/dev/zero")
    (src / "null.jpg").symlink_to("/dev/null")
    p = subprocess.run(MOSAIC + ["db", "init", str(tmp_path / "d.db")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(MOSAIC + ["db", "ingest", str(tmp_path / "d.db"), str(src), "-q"], capture_output=True,
                       text=True, timeout=120)  # a hang fails here
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("4 added, 3 skipped")
    with TileDB.open(tmp_path / "d.db", readonly=True) as db:
        reasons = {Path(e["source"]).name: e["reason"] for e in db.errors()}
    assert "FIFO" in reasons["pipe.png"] and "device" in reasons["zero.png"] and "device" in reasons["null.jpg"]


# ---- 4, 5. paths from the catalog stay inside their roots --------------------------------------------
def test_linked_original_swapped_for_a_symlink_is_never_served(tmp_path, target, caplog):
    pytest.importorskip("selenium")  # the serve extras; the server itself is stdlib
    from mosaicdb.serve import Viewer, make_server, serve_in_thread
    from mosaicdb.serve.assets import find_openseadragon
    try:
        find_openseadragon()
    except MosaicError:
        pytest.skip("OpenSeadragon is not installed: run `npm ci` (or `make`)")
    src = tmp_path / "linked"
    write_synthetic(src, 30, seed=12)
    with TileDB.create(tmp_path / "l.db") as db:
        db.ingest([src], link=True, workers=1)
    out = tmp_path / "m.png"
    m = make(tmp_path / "l.db", target, out)
    tid = int(m.saved.tile_ids[0, 0])
    with TileDB.open(tmp_path / "l.db", readonly=True) as db:
        linked = Path(db.tiles([tid])[0]["blob"])
    secret = tmp_path / "secret.png"  # outside the linked folder, a perfectly good image
    Image.fromarray(synthetic_image(np.random.default_rng(1), 20, 20)).save(secret)
    linked.unlink()
    linked.symlink_to(secret)
    viewer = Viewer(out)
    httpd = make_server(viewer, "127.0.0.1", 0)
    serve_in_thread(httpd)
    try:
        c = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=30)
        c.request("GET", f"/tile/{tid}/original")
        r = c.getresponse()
        body = r.read()
        # refused, and why (and where the files are) is told to the server's log only: asking
        # must not tell a client which files exist or where the database is
        assert r.status == 404 and b"not available" in body and str(tmp_path).encode() not in body
        assert any("outside" in rec.getMessage() for rec in caplog.records)
        linked.unlink()
        linked.symlink_to("/etc/passwd")
        c.request("GET", f"/tile/{tid}/original")
        r = c.getresponse()
        assert r.status == 404 and b"root:" not in r.read()
    finally:
        httpd.shutdown()
        httpd.server_close()
        viewer.close()


def test_crafted_catalog_paths_never_touch_files_outside(db40, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    import sqlite3
    con = sqlite3.connect(db40 / "catalog.sqlite")
    with con:
        con.execute("UPDATE tiles SET blob = ? WHERE id = 0", ("../victim.txt",))
        con.execute("UPDATE tiles SET blob = ? WHERE id = 1", ("originals/../../victim.txt",))
    con.close()
    res = invoke_cli("db", "check", db40)
    assert res.exit_code == 1 and "outside" in res.output
    with TileDB.open(db40, readonly=True) as db:
        with pytest.raises(DatabaseError, match="outside"):
            db.load_original(0)
    invoke_cli("db", "remove", db40, "0", "1", code=0)
    assert victim.read_text() == "keep me"


def test_absolute_catalog_paths_need_a_recorded_link_root(db40, tmp_path):
    """An absolute path with no (absolute) link root recorded names any file on the machine:
    even with the file's true hash in the catalog it is neither read nor passed by db check."""
    import hashlib
    import sqlite3
    con = sqlite3.connect(db40 / "catalog.sqlite")
    with con:
        for tid, root in ((0, None), (1, "."), (2, "/"), (3, "/tmp\0x")):  # none, relative, the fs root, a NUL
            outside = tmp_path / f"outside{tid}.png"
            Image.fromarray(synthetic_image(np.random.default_rng(tid), 20, 20)).save(outside)
            h = hashlib.sha256(outside.read_bytes()).hexdigest()
            con.execute("UPDATE tiles SET blob = ?, hash = ?, link_root = ? WHERE id = ?", (str(outside), h, root, tid))
    con.close()
    res = invoke_cli("db", "check", db40)
    assert res.exit_code == 1 and "4 tiles' originals lead outside" in res.output
    with TileDB.open(db40, readonly=True) as db:
        for tid in (0, 1, 2, 3):
            with pytest.raises(DatabaseError, match="no usable link root is recorded"):
                db.load_original(tid)
            with pytest.raises(DatabaseError, match="outside"):
                db.original_bytes(db.tiles([tid])[0])


def test_a_linked_index_is_not_loaded(db40, target, tmp_path):
    """index/ moved out and linked back: make does not read through the link (db check refuses it too)."""
    make(db40, target, tmp_path / "first.png")
    (db40 / "index").rename(tmp_path / "idx")
    (db40 / "index").symlink_to(tmp_path / "idx")
    with TileDB.open(db40, readonly=True) as db:
        with pytest.raises(DatabaseError, match="index is a symbolic link"):
            db.load_index()  # (make went on to read it, then refused the database later, or not at all)
    res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", code=1)
    assert "index is a symbolic link" in res.output
    assert not list(tmp_path.glob("m.*"))
    res = invoke_cli("render", tmp_path / "first.mosaic.json", "--out", tmp_path / "r.png", code=1)
    assert "remove the link" in res.output and "db repair" not in res.output  # (repair refuses links)


def test_make_reads_a_database_it_cannot_write(db40, target, tmp_path, monkeypatch):
    """On a read-only mount sqlite cannot open the catalog for writing: make opens it read-only
    (it said "not a readable catalog"). Simulated: the mount is what the test cannot make."""
    import mosaicdb.batch as batch
    make(db40, target, tmp_path / "first.png")  # the index, up to date
    real_open = TileDB.open

    def ro_mount(path, readonly=False):
        if not readonly:
            raise DatabaseError(f"{path}/catalog.sqlite is not a readable catalog (unable to open database file)")
        return real_open(path, readonly=True)

    monkeypatch.setattr(batch.TileDB, "open", staticmethod(ro_mount))
    monkeypatch.setattr(batch, "_writable", lambda path: False)
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "-q", code=0)
    assert (tmp_path / "m.png").is_file()
    monkeypatch.setattr(batch, "_writable", lambda path: True)  # writable after all: the error stands
    res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "n.png", "-q", code=1)
    assert "not a readable catalog" in res.output


# ---- 6. an output never replaces an input ----------------------------------------------------------
def test_out_equal_to_an_input_is_refused(db40, target, tmp_path):
    data = target.read_bytes()
    res = invoke_cli("make", "--db", db40, target, "--out", target, code=2)
    assert "would overwrite" in res.output and target.read_bytes() == data
    m = make(db40, target, tmp_path / "m.png")
    res = invoke_cli("render", asg.sidecar_paths(m.output)[0], "--out", target, code=2)
    assert target.read_bytes() == data


@pytest.mark.parametrize("taken", ["m.metrics.json", "m.mosaic.npz", "m.mosaic.json"])
def test_a_folder_under_a_sidecar_name_is_refused_before_anything_is_written(db40, target, tmp_path, taken):
    out = tmp_path / "o"
    out.mkdir()
    (out / taken).mkdir()
    res = invoke_cli("make", "--db", db40, target, "--out", out / "m.png", code=2)
    assert f"{taken} is a folder" in res.output and "--out" in res.output
    assert sorted(p.name for p in out.iterdir()) == [taken]


def test_an_empty_out_is_a_usage_error(db40, target, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"  # an empty --out meant the current folder: files landed there
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for args in (["make", "--db", db40, target], ["demo"]):
        res = invoke_cli(*args, "--out", "", code=2)
        assert "--out" in res.output and "is empty" in res.output
    assert list(cwd.iterdir()) == []


def test_demo_does_not_write_into_a_tile_database(db40):
    before = sorted(p.name for p in db40.iterdir())
    for out in (db40, db40 / "sub"):
        res = invoke_cli("demo", "--out", out, code=2)
        assert "tile database" in res.output
    assert sorted(p.name for p in db40.iterdir()) == before


def test_a_batch_where_every_target_fails_says_so_and_leaves_no_folder(db40, target, tmp_path):
    other = tmp_path / "other.png"
    shutil.copy(target, other)
    out = tmp_path / "outs"
    res = invoke_cli("make", "--db", db40, target, other, "--out", out, "--grid", 30, "--max-uses", 1, code=1)
    assert "all 2 targets failed (see above); nothing was made" in res.output and "the others" not in res.output
    assert not out.exists()


# ---- 7. bounded memory on ingest; a dying worker costs one file --------------------------------------
def test_archive_members_and_files_are_bounded(tmp_path):
    src = tmp_path / "src"
    write_synthetic(src, 3, seed=7)
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
        f.writestr("huge.png", bytes(3 << 20))           # 3 MB of zeros in a few KB
        for p in sorted(src.iterdir()):
            f.write(p, p.name)
    big = tmp_path / "big"
    big.mkdir()
    (big / "huge.png").write_bytes(bytes(3 << 20))
    with TileDB.create(tmp_path / "d.db") as db:
        db.decode_options = replace(db.decode_options, max_bytes=1 << 20)
        rep = db.ingest([z, big], workers=1)
        assert (rep.added, rep.skipped) == (3, 2)
        reasons = " ".join(e["reason"] for e in db.errors())
        assert reasons.count("over the 1.0 MB limit") == 2


def test_decoding_memory_is_bounded_before_decoding(tmp_path):
    img = Image.new("RGBA", (4000, 3000))
    b = io.BytesIO()
    img.save(b, "PNG")  # ~50 KB on disk, 48 MB decoded
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bomb.png").write_bytes(b.getvalue())
    with TileDB.create(tmp_path / "d.db") as db:
        db.decode_options = replace(db.decode_options, max_bytes=16 << 20)
        rep = db.ingest([tmp_path / "src"], workers=1)
        assert rep.skipped == 1 and "to decode" in db.errors()[0]["reason"]


def test_a_worker_that_dies_costs_its_file_not_the_run(tmp_path, monkeypatch):
    from mosaicdb.store import ingest
    src = tmp_path / "src"
    write_synthetic(src, 12, seed=8)
    (src / "killer.png").write_bytes(sorted(src.glob("*.png"))[0].read_bytes() + b"KILL-THE-WORKER")
    real = ingest.open_image

    def dying(data, *a, **k):  # forked workers inherit this: the file with the marker kills one
        if data.endswith(b"KILL-THE-WORKER"):
            os._exit(9)
        return real(data, *a, **k)

    monkeypatch.setattr(ingest, "open_image", dying)
    with TileDB.create(tmp_path / "d.db") as db:
        rep = db.ingest([src], workers=2, chunk_size=4)
        assert (rep.added, rep.skipped) == (12, 1), rep
        assert "process died" in db.errors()[0]["reason"]
        assert db.check().ok


def serve_beyond_loopback(db40, target, tmp_path, host="0.0.0.0", **kw):
    """A running server bound to `host` (0.0.0.0 by default; port chosen by the system) on a
    fresh mosaic, and its viewer."""
    from mosaicdb.serve import Viewer, make_server, serve_in_thread
    from mosaicdb.serve.assets import find_openseadragon
    try:
        find_openseadragon()
    except MosaicError:
        pytest.skip("OpenSeadragon is not installed: run `npm ci` (or `make`)")
    m = make(db40, target, tmp_path / "m.png")
    viewer = Viewer(m.output)
    httpd = make_server(viewer, host, 0, **kw)
    serve_in_thread(httpd)
    return httpd, viewer


# ---- 8. the viewer checks Host (and a token) on every bind address --------------------------------------
def test_host_check_and_token_beyond_loopback(tmp_path, db40, target):
    httpd, viewer = serve_beyond_loopback(db40, target, tmp_path, allow_hosts=["mosaic.lan"])
    port = httpd.server_address[1]
    token = httpd.token

    def get(path, host, cookie=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", path, headers={"Host": host, **({"Cookie": cookie} if cookie else {})})
        r = c.getresponse()
        return r.status, r.getheader("Set-Cookie"), r.read()

    try:
        assert token and f"token={token}" in httpd.url
        assert get(f"/api/info?token={token}", "evil.example:80")[0] == 403       # DNS rebinding
        assert get("/api/info", "mosaic.lan")[0] == 403                           # no token
        assert get("/api/info?token=wrong", "mosaic.lan")[0] == 403
        status, cookie, _ = get(f"/?token={token}", f"mosaic.lan:{port}")
        assert status == 200 and cookie and "HttpOnly" in cookie
        assert get("/api/info", "mosaic.lan", cookie.split(";")[0])[0] == 200     # the cookie suffices
        assert get("/api/info", "localhost", cookie.split(";")[0])[0] == 200
    finally:
        httpd.shutdown()
        httpd.server_close()
        viewer.close()
    res = invoke_cli("serve", viewer.mosaic, "--port", "99999", "--no-open", code=2)
    assert "99999" in res.output


# ---- 9. SIGTERM and SIGHUP clean up like Ctrl-C; stale temporaries are swept ---------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_terminate_leaves_no_temporaries(synthetic_db, tmp_path, sig):
    from test_pyramid import random_assignment
    saved = random_assignment(synthetic_db, 320, 320, seed=5)
    out = tmp_path / "big.tif"
    proc = start_render_to_interrupt(saved, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and "Terminated" in err and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".big.tif")]


# A worker of `make --jobs` or of an ingest, stopped while it writes three temporaries, and
# stopped again between their removals: ProcessPoolExecutor sends SIGTERM a second time to every
# worker once it sees the first one gone, and the second SystemExit, raised in the middle of
# AtomicFiles.discard, left the last temporary behind (CI, test_batch's batch stopped midway).
SECOND_SIGTERM = r"""
import importlib, os, signal, sys
from pathlib import Path
from mosaicdb import io
which, folder = sys.argv[1], Path(sys.argv[2])
module = importlib.import_module(which)
signal.signal(signal.SIGTERM, module._on_sigterm)
removed = io._remove
def remove_then_stopped_again(p):
    removed(p)
    os.kill(os.getpid(), signal.SIGTERM)
io._remove = remove_then_stopped_again
def write(*args):
    with io.AtomicFiles() as g:
        for name in ("a.npz", "a.png", "a.json"):
            g.temp(folder / name).write_text("x")
        os.kill(os.getpid(), signal.SIGTERM)  # the driver stops the batch
        g.commit()
if which == "mosaicdb.batch":
    module._WORKER = type("Worker", (), {"make": lambda self, *a: write()})()
    module._make_in_worker("target", "out")
else:
    module.process_chunk = write
    module._chunk_in_worker([], None)
print("not stopped")
"""


@pytest.mark.parametrize("module", ["mosaicdb.batch", "mosaicdb.store.ingest"])
def test_a_worker_stopped_twice_while_unwinding_leaves_no_temporaries(tmp_path, module):
    res = subprocess.run([sys.executable, "-c", SECOND_SIGTERM, module, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr
    assert "not stopped" not in res.stdout and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_temporary_is_removed_even_when_its_creation_is_interrupted(tmp_path, monkeypatch):
    """A signal's exception raised just after the file is created, before `temp` returns."""
    from mosaicdb import io as mio

    def created_then_interrupted(path, folder=False):
        path.write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(mio, "create_exclusive", created_then_interrupted)
    with pytest.raises(KeyboardInterrupt), mio.AtomicFiles() as g:
        g.temp(tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_runs_are_swept(db40, target, tmp_path):
    out = tmp_path / "m.png"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = temp_path(out, pid=dead.pid)
    stale.write_bytes(b"left by a killed run")
    live = temp_path(out, pid=os.getpid() + 0)  # ours: alive, so kept
    make(db40, target, out)
    assert not stale.exists() and out.exists()
    orig_tmp = next((db40 / "originals").iterdir()) / temp_path("x.png", pid=dead.pid).name
    orig_tmp.write_bytes(b"half a copy")
    with TileDB.open(db40) as db:
        db.ingest([tmp_path / "src"], workers=1)
    assert not orig_tmp.exists()
    live.unlink(missing_ok=True)


# ---- 10. numbers and fields read from files are checked ---------------------------------------------------
@pytest.mark.parametrize("corrupt, words", [
    (lambda a: a.update(target_mean=np.full_like(a["target_mean"], np.nan)), "non-finite"),
    (lambda a: a.update(tile_ids=a["tile_ids"][:-1]), "expected"),
    (lambda a: a.update(tile_ids=a["tile_ids"].astype(np.float64)), "tile_ids"),
    (lambda a: a.update(tile_ids=-a["tile_ids"] - 1), "negative"),
])
def test_damaged_assignment_arrays_are_one_line_errors(db40, target, tmp_path, corrupt, words):
    m = make(db40, target, tmp_path / "m.png")
    j, n = asg.sidecar_paths(m.output)
    with np.load(n) as z:
        a = {k: z[k] for k in z.files}
    corrupt(a)
    np.savez(n, **a)
    res = invoke_cli("render", j, "--out", tmp_path / "r.png", code=2)
    assert words in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("field, value, words", [
    ("db", None, "names no tile database"),
    ("grid", {"cols": 100000, "rows": 100000, "crop": [0, 0, 1, 1]}, "limit"),
    ("grid", {"cols": "x"}, "not a mosaic assignment"),
    ("render", {"tile_px": float("nan")}, "--tile-px"),
    ("render", {"color_strength": 1e309}, "--color-strength"),
])
def test_damaged_assignment_fields_are_one_line_errors(db40, target, tmp_path, field, value, words):
    m = make(db40, target, tmp_path / "m.png")
    j = asg.sidecar_paths(m.output)[0]
    meta = json.loads(j.read_text())
    meta[field] = value
    j.write_text(json.dumps(meta))
    res = invoke_cli("render", j, "--out", tmp_path / "r.png")
    assert res.exit_code in (1, 2) and words in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_another_database_at_the_same_path_is_refused(db40, target, tmp_path):
    m = make(db40, target, tmp_path / "m.png")
    j = asg.sidecar_paths(m.output)[0]
    shutil.rmtree(db40)
    with TileDB.create(db40) as db:  # recreated: same path, same ids, other tiles
        db.ingest([tmp_path / "src"], workers=1)
    res = invoke_cli("render", j, "--out", tmp_path / "r.png", code=1)
    assert "not the tile database this assignment was made from" in res.output
    invoke_cli("render", j, "--out", tmp_path / "r.png", "--db", db40, "-q", code=0)   # explicit, ids fit
    other = tmp_path / "few.db"
    with TileDB.create(other) as db:
        db.ingest(sorted((tmp_path / "src").iterdir())[:3], workers=1)
    res = invoke_cli("render", j, "--out", tmp_path / "r2.png", "--db", other, code=1)
    assert "lacks" in res.output and not (tmp_path / "r2.png").exists()


def test_evaluation_failure_does_not_fail_a_finished_mosaic(db40, target, tmp_path, monkeypatch):
    import mosaicdb.render.fidelity as fidelity

    def broken(*a, **k):
        raise UsageError("evaluation could not run")

    monkeypatch.setattr(fidelity, "evaluate", broken)
    res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--grid", "12", "-q", code=0)
    assert "evaluation skipped" in res.output
    assert (tmp_path / "m.png").exists() and asg.metrics_path(tmp_path / "m.png").exists()


# ---- 11. misuse of the Python API is a MosaicError, never a crash ------------------------------------------
def test_python_api_misuse(db40, tmp_path):
    with pytest.raises(DatabaseError, match="TileDB.create"):
        TileDB.open(tmp_path / "nowhere")
    with TileDB.open(db40) as db:
        for call in (lambda: db.remove(["abc"]), lambda: db.search(np.zeros((2, 3), np.float32), 1),
                     lambda: db.thumbs(7), lambda: db.resolve_refs(["zz"]),
                     lambda: MatchOptions(grid=[12]), lambda: MatchOptions(grid=-3), lambda: RenderOptions(tile_px="32"),
                     lambda: Maker(db, MatchOptions(), RenderOptions()).make(tmp_path / "missing.png")):
            with pytest.raises(MosaicError):
                call()
        rep = db.ingest(tmp_path / "src", workers=1)  # one path, not a list of characters
        assert rep.unchanged == 40
    assert MatchOptions(grid=128).grid == "128"


# ---- found by a hostile review of the above (one test per class) ----------------------------------------
def test_batch_outputs_never_replace_other_targets(db40, tmp_path):
    ph = tmp_path / "ph"
    ph.mkdir()
    Image.fromarray(synthetic_image(np.random.default_rng(1), 64, 48)).save(ph / "a.png")
    Image.fromarray(synthetic_image(np.random.default_rng(2), 64, 48)).convert("RGB").save(ph / "a.jpg")
    before = (ph / "a.png").read_bytes()
    res = invoke_cli("make", "--db", db40, ph, "--out", ph, "--format", "png", "--grid", "8", "-q", code=2)
    assert "would overwrite" in res.output and (ph / "a.png").read_bytes() == before


@pytest.mark.parametrize("own", ["lock", "features.f32", "originals"])
def test_symlinked_database_files_are_never_written_through(db40, tmp_path, own):
    victim = tmp_path / "victim"
    if own == "originals":
        shutil.move(db40 / "originals", victim)
    else:
        shutil.copy(db40 / own, victim) if (db40 / own).exists() else victim.write_bytes(b"precious")
        (db40 / own).unlink()
    (db40 / own).symlink_to(victim)
    snapshot = victim.read_bytes() if victim.is_file() else sorted(p.name for p in victim.rglob("*"))
    for args in (["db", "index", db40, "--rebuild"], ["db", "ingest", db40, tmp_path / "src", "-q"],
                 ["db", "remove", db40, "5"], ["db", "repair", db40, "-q"]):
        res = invoke_cli(*args)
        assert res.exit_code == 1 and "symbolic link" in res.output, (args, res.output)
    assert (victim.read_bytes() if victim.is_file() else sorted(p.name for p in victim.rglob("*"))) == snapshot
    assert invoke_cli("db", "check", db40).exit_code == 1


def test_outputs_never_replace_another_outputs_files(db40, target, tmp_path):
    make(db40, target, tmp_path / "x.png")
    res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "x.tif", "--grid", "8", "-q", code=2)
    assert "x.mosaic.json is the assignment of" in res.output
    # a print into the assignment's own folder never replaces its pyramid
    with TileDB.open(db40) as db:
        Maker(db, MatchOptions(grid="8"), RenderOptions(tile_px=32)).make(target, tmp_path / "pf" / "m.tif") \
            if (tmp_path / "pf").mkdir() is None else None
    pyramid = (tmp_path / "pf" / "m.tif").read_bytes()
    res = invoke_cli("print", tmp_path / "pf" / "m.mosaic.json", "--size", "5cm", "--dpi", "100", "--out",
                     tmp_path / "pf", code=2)
    assert "would overwrite" in res.output and (tmp_path / "pf" / "m.tif").read_bytes() == pyramid
    # a DZI never replaces a folder that is not one of ours
    (tmp_path / "Report_files").mkdir()
    (tmp_path / "Report_files" / "notes.txt").write_text("important")
    res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "Report.dzi", "--grid", "8", "-q", code=2)
    assert "not a DeepZoom folder" in res.output and (tmp_path / "Report_files" / "notes.txt").exists()
    assert invoke_cli("make", "--db", db40, target, "--out", tmp_path / "Ok.dzi", "--grid", "8", "-q").exit_code == 0
    assert invoke_cli("make", "--db", db40, target, "--out", tmp_path / "Ok.dzi", "--grid", "8", "-q").exit_code == 0


def test_temporaries_are_created_exclusively(tmp_path, monkeypatch):
    from mosaicdb import io as mio
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    planted = tmp_path / ".out.png.1-aaaa.tmp.png"
    planted.symlink_to(victim)
    monkeypatch.setattr(mio, "temp_path", lambda path, pid=None: planted)
    with pytest.raises(FileExistsError):
        mio.write_atomic(tmp_path / "out.png", lambda t: t.write_bytes(b"mosaic"))
    assert victim.read_text() == "keep" and not (tmp_path / "out.png").exists()


def test_drawn_tiles_are_the_ones_matched(db40, target, tmp_path):
    """A diverged copy of the database, a replaced original, index vectors under other ids:
    refused or detected and repaired, never drawn silently."""
    m = make(db40, target, tmp_path / "m.png")
    j = asg.sidecar_paths(m.output)[0]
    copy = tmp_path / "copy.db"
    shutil.copytree(db40, copy)
    with TileDB.open(copy) as db:  # same uuid, other tiles under the same ids
        db.remove(np.unique(m.saved.tile_ids)[:3])
        extra = tmp_path / "extra"
        write_synthetic(extra, 5, seed=77, prefix="e")
        db.ingest([extra], workers=1)
    res = invoke_cli("render", j, "--out", tmp_path / "r.png", "--db", copy, code=1)
    assert any(w in res.output for w in ("not the ones this assignment was made with", "lacks", "no longer in"))
    # an original replaced behind the database's back is never drawn
    with TileDB.open(db40, readonly=True) as db:
        tid = int(m.saved.tile_ids[0, 0])
        blob = db.blob_path(db.tiles([tid])[0])
    data = blob.read_bytes()
    Image.fromarray(np.full((40, 40, 3), (255, 0, 255), np.uint8)).save(blob, format="PNG")
    with TileDB.open(db40, readonly=True) as db:
        with pytest.raises(DatabaseError, match="changed since it was ingested"):
            db.load_original(tid)
    blob.write_bytes(data)
    # index vectors moved under other ids: check --deep finds it, repair rebuilds the index
    import faiss
    idx_path = db40 / "index" / "index.faiss"
    index = faiss.read_index(str(idx_path))
    vecs = index.reconstruct_n(0, index.ntotal) if index.ntotal else None
    shuffled = faiss.IndexFlatL2(index.d)
    shuffled.add(vecs[::-1].copy())
    faiss.write_index(shuffled, str(idx_path))
    res = invoke_cli("db", "check", "--deep", db40)
    assert res.exit_code == 1 and "index:" in res.output
    invoke_cli("db", "repair", db40, "-q", code=0)
    invoke_cli("db", "check", "--deep", db40, code=0)


def test_special_files_as_inputs_never_hang(db40, tmp_path):
    fifo = tmp_path / "t.png"
    os.mkfifo(fifo)
    for args in (["make", "--db", db40, fifo, "--out", tmp_path / "m.png"], ["plan", fifo, "--out", tmp_path / "x.png"],
                 ["eval", fifo, fifo], ["make", "--db", db40, "/dev/zero", "--out", tmp_path / "z.png"]):
        p = subprocess.run([sys.executable, "-m", "mosaicdb", *map(str, args)], capture_output=True, text=True,
                           timeout=60)  # a hang fails here
        assert p.returncode in (1, 2) and "Traceback" not in p.stderr, (args, p.stderr)


def test_damaged_catalog_settings_and_index_infos_are_one_line_errors(db40, target, tmp_path):
    import sqlite3
    con = sqlite3.connect(db40 / "catalog.sqlite")
    params = con.execute("SELECT value FROM meta WHERE key = 'feature_params'").fetchone()[0]
    bad = [json.dumps({**json.loads(params), "samples": 1 << 20}), '{"space": "rgb"}', '"x"']
    for key, value in [("feature_params", v) for v in bad] + [("feature_kind", '"rgb-cube"'),
                                                              ("features_file", '"../../elsewhere.f32"')]:
        old = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        with con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        res = invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", code=1)
        assert "settings are damaged" in res.output, (key, value)
        with con:
            if old is None:
                con.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                con.execute("UPDATE meta SET value = ? WHERE key = ?", (old[0], key))
    con.close()
    infos = json.loads((db40 / "index" / "index_infos.json").read_text())
    infos["kind"], infos["params"] = "ivf", {"nprobe": "abc"}
    (db40 / "index" / "index_infos.json").write_text(json.dumps(infos))
    for args in (["db", "check", db40], ["db", "stats", db40]):
        assert invoke_cli(*args).exit_code == 0
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--grid", "8", "-q", code=0)


@pytest.mark.parametrize("field, value", [("db_version", float("inf")), ("widened_cells", float("-inf")),
                                          ("grid", {"cols": 12, "rows": 8, "crop": [50, 0, 10, 64]})])
def test_assignment_numbers_out_of_range(db40, target, tmp_path, field, value):
    m = make(db40, target, tmp_path / "m.png")
    j = asg.sidecar_paths(m.output)[0]
    meta = json.loads(j.read_text())
    meta[field] = value
    j.write_text(json.dumps(meta))
    for args in (["render", j, "--out", tmp_path / "r.png", "--color", "blend"], ["eval", target, m.output]):
        res = invoke_cli(*args)
        ok = res.exit_code in (1, 2) and len(res.output.strip().splitlines()) == 1
        assert ok or args[0] == "eval", (args, res.output)  # eval falls back to the images alone


def test_huge_numbers_and_odd_names(db40, target, tmp_path):
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--min-distance", "1" + "0" * 20, code=2)
    invoke_cli("make", "--db", db40, target, "--out", tmp_path / "m.png", "--max-uses", "9" * 20, code=2)
    res = invoke_cli("db", "remove", db40, "9" * 23, code=0)
    assert "Removed 0" in res.output
    src = tmp_path / "odd"
    write_synthetic(src, 3, seed=3)
    good = sorted(src.iterdir())[0]
    os.rename(good, os.fsencode(src) + b"/bad\xff\xfename.png")
    esc = src / "esc\x1b]0;TITLE\x07.png"
    esc.write_bytes(b"not an image")
    res = invoke_cli("db", "ingest", db40, src, "-q", "--workers", "1", code=0)
    assert res.output.startswith("3 added, 1 skipped")
    res = invoke_cli("db", "errors", db40, code=0)
    assert "\x1b" not in res.output and "\\x1b" in res.output


def test_tar_payloads_are_chunked_by_bytes():
    from mosaicdb.store.ingest import chunked
    items = [(i, bytes(30 << 20), {}) for i in range(7)]
    sizes = [len(c) for c in chunked(iter(items), 64, max_bytes=64 << 20)]
    assert sizes == [2, 2, 2, 1]


def test_generation_sizes_are_bounded():
    from mosaicdb.generate.run import TileRunOptions
    for size in (0, 100000, -8):
        with pytest.raises(UsageError, match="--size"):
            TileRunOptions(style="flowers", size=size)


def test_viewer_token_and_hosts_beyond_loopback(db40, target, tmp_path):
    httpd, viewer = serve_beyond_loopback(db40, target, tmp_path)
    try:
        def get(path, host, headers=None):
            c = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=30)
            c.request("GET", path, headers={"Host": host, **(headers or {})})
            r = c.getresponse()
            return r.status
        assert get("/api/info?token=%C3%A9", "192.0.2.7") == 403                   # not a 500
        assert get("/api/info", "192.0.2.7", {"Cookie": "mosaic_token=é".encode().decode("latin-1")}) == 403
        assert get(f"/api/info?token={httpd.token}", "192.0.2.7:8000") == 200     # any IP literal of ours
        assert get(f"/api/info?token={httpd.token}", "rebind.example") == 403
    finally:
        httpd.shutdown()
        httpd.server_close()
        viewer.close()


def test_remove_by_archive_leaves_files_with_a_bang_in_their_name(tmp_path):
    bang = tmp_path / "bang"
    write_synthetic(bang, 2, seed=4)
    z = bang / "x.zip"
    inner = io.BytesIO()
    Image.fromarray(synthetic_image(np.random.default_rng(8), 30, 30)).save(inner, format="PNG")
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("inner.png", inner.getvalue())
    plain = bang / "x.zip!other.png"
    Image.fromarray(synthetic_image(np.random.default_rng(9), 30, 30)).save(plain, format="PNG")
    with TileDB.create(tmp_path / "d.db") as db:
        db.ingest([bang], workers=1)
        n = db.remove(db.resolve_refs([], str(z)))
        assert n == 1 and any(t["source"].endswith("x.zip!other.png") for t in db.tiles(db.ids()))


def test_python_api_misuse_more(db40, tmp_path):
    with TileDB.open(db40) as db:
        for call in (lambda: TileDB.open(None), lambda: TileDB.create(tmp_path / "n1", thumb_sizes="abc"),
                     lambda: TileDB.create(tmp_path / "n2", feature_grid="4"), lambda: db.ingest(None),
                     lambda: db.ingest([tmp_path], workers="2"), lambda: db.search(np.zeros((1, db.dim)), 0),
                     lambda: db.search(np.zeros((1, db.dim)), 10 ** 9), lambda: db.tiles(["a"]),
                     lambda: db.tile_pixels(99999, 32), lambda: db.tile_pixels(0, 0), lambda: db.tile_pixels(-1, 32),
                     lambda: db.add_images([(b"x", None, {})]), lambda: db.add_images([(b"x", "n", {1, 2})]),
                     lambda: Maker(db, "x"), lambda: Maker(db).make(None)):
            with pytest.raises(MosaicError):
                call()
        assert db.tiles([2 ** 70]) == []
    with pytest.raises(MosaicError, match="closed"):
        db.ids()


# ---- second hostile pass (issue 11b) -------------------------------------------------------------------
def serve_on_loopback(db40, target, tmp_path):
    """A running loopback server (port chosen by the system) on a fresh mosaic, and its viewer."""
    return serve_beyond_loopback(db40, target, tmp_path, host="127.0.0.1")


@pytest.mark.parametrize("command", ["render", "plan"])
def test_deeply_nested_assignment_is_damaged_not_a_crash(db40, target, tmp_path, command):
    m = make(db40, target, tmp_path / "m.png")
    j = asg.sidecar_paths(m.output)[0]
    j.write_text("[" * 100000 + "]" * 100000)
    res = invoke_cli(command, j, "--out", tmp_path / "r.png", code=2)
    assert "damaged or not an assignment" in res.output and len(res.output.strip().splitlines()) == 1


def test_render_refuses_to_replace_the_image_its_assignment_was_saved_with(db40, target, tmp_path):
    m = make(db40, target, tmp_path / "m.png")
    before = m.output.read_bytes()
    res = invoke_cli("render", asg.sidecar_paths(m.output)[0], "--out", m.output, code=2)
    assert "would overwrite" in res.output and m.output.read_bytes() == before


def test_python_api_misuse_third_round(db40, target, tmp_path):
    with pytest.raises(DatabaseError, match="/proc/xyz"):
        TileDB.create("/proc/xyz/db")
    for bad in (None, str(db40), db40):
        with pytest.raises(UsageError, match="Maker needs an open TileDB"):
            Maker(bad)
    with TileDB.open(db40) as db:
        maker = Maker(db, MatchOptions(grid="8"))
        for out in (b"/x.png", 7, ["m.png"]):
            with pytest.raises(UsageError, match="output's path"):
                maker.make(target, out)


def test_two_host_headers_are_a_bad_request(db40, target, tmp_path):
    httpd, viewer = serve_on_loopback(db40, target, tmp_path)
    try:
        def get(*hosts):
            c = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=30)
            c.putrequest("GET", "/api/info", skip_host=True)
            for h in hosts:
                c.putheader("Host", h)
            c.endheaders()
            return c.getresponse().status
        assert get("localhost") == 200
        assert get("localhost", "evil.com") == 400
        assert get("localhost", "localhost") == 400
    finally:
        httpd.shutdown()
        httpd.server_close()
        viewer.close()


@pytest.mark.parametrize("panels, why", [("1000x1000", "more than 400"), ("30x1", "narrower than one cell"),
                                         ("1x25", "narrower than one cell")])
@pytest.mark.parametrize("command", ["print", "plan"])
def test_absurd_panel_grids_are_refused_before_any_work(db40, target, tmp_path, command, panels, why):
    m = make(db40, target, tmp_path / "m.png")  # 12x8 cells
    extra = ["--print"] if command == "plan" else []
    t0 = time.perf_counter()
    res = invoke_cli(command, asg.sidecar_paths(m.output)[0], *extra, "--size", "30cm", "--panels", panels,
                     "--out", tmp_path / "p.tif", code=2)
    assert "--panels" in res.output and why in res.output, res.output
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "p.tif").exists()


def test_panel_width_cutting_too_many_panels_is_refused(db40, target, tmp_path):
    m = make(db40, target, tmp_path / "m.png")
    res = invoke_cli("plan", asg.sidecar_paths(m.output)[0], "--print", "--size", "10m", "--dpi", "30", "--panel-width", "1cm",
                     "--out", tmp_path / "p.tif", code=2)
    assert "--panel-width" in res.output and "more than 400" in res.output


def _leaf_commands(group, name="mosaic"):
    import click
    for sub, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, f"{name} {sub}")
        else:
            yield f"{name} {sub}", cmd


def test_every_command_takes_q_and_info_lines_go_quiet(db40, tmp_path):
    """-q on every command drops informational lines; results and warnings stay (README)."""
    from mosaicdb_cli.main import cli
    missing = [n for n, c in _leaf_commands(cli) if not any(p.name == "quiet" and "-q" in p.opts for p in c.params)]
    assert not missing, f"no -q on: {missing}"
    assert invoke_cli("db", "init", tmp_path / "new.db", code=0).output.strip()
    assert invoke_cli("db", "init", tmp_path / "q.db", "-q", code=0).output == ""
    assert "skipped input(s)" in invoke_cli("db", "errors", db40, code=0).output
    assert invoke_cli("db", "errors", db40, "-q", code=0).output == ""
    for args in (["db", "check", db40], ["db", "remove", db40, "99999"], ["db", "stats", db40]):
        assert invoke_cli(*args, "-q", code=0).output == invoke_cli(*args, code=0).output, args


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_eval_names_the_mosaic_argument_and_exit_codes_match_make(db40, target, tmp_path, suffix):
    trunc = tmp_path / f"trunc{suffix}"
    good = tmp_path / f"good{suffix}"
    Image.fromarray(synthetic_image(np.random.default_rng(5), 64, 48)).save(good)
    trunc.write_bytes(good.read_bytes()[:60])
    res = invoke_cli("eval", target, trunc, code=1)              # undecodable: exit 1, as `make` on a bad target
    assert res.output.startswith(f"Error: mosaic {trunc}") and "target" not in res.output, res.output
    res = invoke_cli("make", "--db", db40, trunc, "--out", tmp_path / "m.png", code=1)
    assert f"target {trunc}" in res.output
    fifo = tmp_path / f"fifo{suffix}"
    os.mkfifo(fifo)
    res = invoke_cli("eval", target, fifo, code=2)               # special file: a usage error, as for `make`
    assert f"mosaic {fifo}" in res.output and "target" not in res.output, res.output
    invoke_cli("make", "--db", db40, fifo, "--out", tmp_path / "m.png", code=2)
    res = invoke_cli("eval", trunc, target, code=1)
    assert f"target {trunc}" in res.output


@pytest.fixture
def big_originals(tmp_path):
    """A database holding a 4800x3000 PNG and a 4800x3000 JPEG (smooth gradients), and their ids."""
    src = tmp_path / "big"
    src.mkdir()
    y, x = np.mgrid[0:3000, 0:4800]
    rgb = np.stack([x * 255 // 4800, y * 255 // 3000, (x + y) * 255 // 7800], -1).astype(np.uint8)
    Image.fromarray(rgb).save(src / "a.png", compress_level=1)
    Image.fromarray(rgb[:, ::-1]).save(src / "b.jpg", quality=90)
    with TileDB.create(tmp_path / "big.db") as db:
        db.ingest([src], workers=1)
    with TileDB.open(tmp_path / "big.db", readonly=True) as db:
        yield db, {Path(t["source"]).suffix: t["id"] for t in db.tiles(db.ids())}


@pytest.mark.slow
def test_viewer_sends_originals_reduced_and_decodes_few_at_once(big_originals, monkeypatch):
    import threading
    from types import SimpleNamespace
    from mosaicdb.serve import api
    db, ids = big_originals
    full = db.load_original(ids[".png"])
    png = db.load_original(ids[".png"], max_side=2048)
    assert png.size == (1600, 1000)  # 4800 / 3: box-reduced right after decoding
    assert np.array_equal(np.asarray(png), np.asarray(full.reduce(3)))
    jpg = db.load_original(ids[".jpg"], max_side=2048)
    assert max(jpg.size) <= 2048 and jpg.size[0] * 3000 == jpg.size[1] * 4800  # a reduced JPEG decode
    ref = np.asarray(db.load_original(ids[".jpg"]).resize(jpg.size, Image.BOX), np.float32)
    assert np.abs(np.asarray(jpg, np.float32) - ref).mean() < 3
    active, peak, lock = [0], [0], threading.Lock()
    from mosaicdb.store import db as dbmod
    real = dbmod.open_image

    def slow_open(*a, **kw):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        try:
            return real(*a, **kw)
        finally:
            with lock:
                active[0] -= 1
    monkeypatch.setattr(dbmod, "open_image", slow_open)
    mapi = api.MosaicAPI(SimpleNamespace(tile_ids=np.array(list(ids.values()))), db, 1, 1)
    bodies = []
    threads = [threading.Thread(target=lambda i=i: bodies.append(mapi.original(list(ids.values())[i % 2])))
               for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bodies) == 5 and peak[0] == api.ORIGINAL_DECODE_SLOTS
    for body, ctype in bodies:
        assert max(Image.open(io.BytesIO(body)).size) <= 2048


def test_ingest_decode_keeps_about_one_decoded_copy(tmp_path):
    """A large square PNG, decoded for ingest, costs about one decoded copy of memory (not a
    crop's second copy beside it): measured as the peak RSS growth of a fresh process."""
    p = tmp_path / "zeros.png"
    Image.new("RGB", (6000, 6000)).save(p)  # Pillow holds RGB as 4 bytes a pixel: 144 MB decoded
    code = ("import sys\nfrom mosaicdb.store.decode import open_image\n"
            "def hwm():\n    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "data = open(sys.argv[1], 'rb').read(); base = hwm()\n"
            "open_image(data, min_side=128, square=True)\nprint((hwm() - base) / 1024)")
    grew = float(subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                                check=True).stdout)
    assert 100 < grew < 200, f"peak grew {grew:.0f} MB decoding a 144 MB image"


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(np.random.default_rng(seed), 24, 24)).save(buf, format="PNG")
    return buf.getvalue()


def test_special_tar_members_are_recorded_as_skipped(tmp_path):
    import tarfile
    src = tmp_path / "s"
    src.mkdir()
    with tarfile.open(src / "t.tar", "w") as t:
        for name, kind in (("sym.png", tarfile.SYMTYPE), ("hard.png", tarfile.LNKTYPE),
                           ("tty", tarfile.CHRTYPE), ("pipe", tarfile.FIFOTYPE)):
            m = tarfile.TarInfo(name)
            m.type, m.linkname = kind, "good.png" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            t.addfile(m)
        data = _png_bytes(1)
        m = tarfile.TarInfo("good.png")
        m.size = len(data)
        t.addfile(m, io.BytesIO(data))
    with TileDB.create(tmp_path / "d.db") as db:
        rep = db.ingest([src], workers=1)
        errors = {e["source"].rsplit("!", 1)[1]: e["reason"] for e in db.errors()}
    assert rep.added == 1 and rep.skipped == 4
    assert errors == {"sym.png": "skipped: a symbolic link in the archive, not a regular file",
                      "hard.png": "skipped: a hard link in the archive, not a regular file",
                      "tty": "skipped: a character device in the archive, not a regular file",
                      "pipe": "skipped: a FIFO in the archive, not a regular file"}


class _Zeros(io.RawIOBase):
    """n zero bytes, read in blocks (a member too large to build in memory)."""
    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


@pytest.mark.slow
def test_compressed_tar_stops_after_an_oversize_member(tmp_path):
    """A small .tar.gz declaring a member over the 1 GiB limit: the member and everything after
    it are recorded as skipped without decompressing it (reading past it would)."""
    import tarfile
    from mosaicdb.store.decode import DecodeOptions
    src = tmp_path / "s"
    src.mkdir()
    with tarfile.open(src / "t.tar.gz", "w:gz", compresslevel=1) as t:
        for name, data in (("a.png", _png_bytes(1)), ("big.bin", None), ("c.png", _png_bytes(2))):
            m = tarfile.TarInfo(name)
            m.size = len(data) if data else DecodeOptions.max_bytes + 1
            t.addfile(m, io.BytesIO(data) if data else io.BufferedReader(_Zeros(m.size), 1 << 20))
    t0 = time.process_time()
    with TileDB.create(tmp_path / "d.db") as db:
        rep = db.ingest([src], workers=1)
        errors = {e["source"]: e["reason"] for e in db.errors()}
    spent = time.process_time() - t0
    assert rep.added == 1 and rep.skipped == 2, rep
    assert "over the" in errors[f"{src / 't.tar.gz'}!big.bin"]
    assert errors[str(src / "t.tar.gz")].startswith("skipped the members after big.bin")
    assert spent < 3, f"{spent:.1f} CPU-s: the oversize member was decompressed"
