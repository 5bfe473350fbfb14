"""kill -9 an ingest at several moments: the database stays consistent and a rerun finishes the job
with exactly what a clean single run gives."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from clirun import check_process, invoke_cli

from mosaicdb import TileDB
from mosaicdb.store.lock import WriteLock

pytestmark = pytest.mark.slow

N_FILES = 3000
MOSAIC = [sys.executable, "-m", "mosaicdb"]


def mosaic(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real console script in a process of its own."""
    res = subprocess.run(MOSAIC + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    check_process(res, args)
    return res


def mosaic_here(*args):
    """The same CLI in this process (no interpreter start-up): for the read-only commands."""
    return invoke_cli(*args)


def orphan_warnings_only(stderr: str) -> list[str]:
    """Warnings other than orphan originals (a kill mid-copy leaves a <hash>.<ext>.<pid>.tmp file)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and "files no tile references" not in ln]


def tile_count(db: Path) -> int:
    """Committed tiles, read the way a second process sees them (0 before the catalog exists)."""
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db / 'catalog.sqlite'))}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def live_group_members(pgid: int) -> list[int]:
    """Pids (not zombies) in process group `pgid`."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def kill_ingest(db: Path, src: Path, workers: int, *, after_seconds: float | None = None,
                after_tiles: int | None = None, log: Path) -> int:
    """Start `mosaic db ingest`, SIGKILL the main process at the given moment; -> tiles committed
    at the kill (or -1 when the ingest finished first). Only the main process is killed, like
    `kill -9 PID`; its decoding workers must go away by themselves."""
    with open(log, "w") as out:
        p = subprocess.Popen(MOSAIC + ["db", "ingest", str(db), str(src), "--workers", str(workers), "-q"],
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while p.poll() is None:
            if after_seconds is not None and time.monotonic() - t0 >= after_seconds:
                break
            if after_tiles is not None and tile_count(db) >= after_tiles:
                break
            if time.monotonic() - t0 > 240:
                pytest.fail("ingest neither progressed nor finished in 240 s")
            time.sleep(0.02)
        if p.poll() is not None:
            return -1
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        n = tile_count(db)
        # the workers die with their parent (no orphans left holding memory or the lock)
        deadline = time.monotonic() + 15
        while live_group_members(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_group_members(p.pid) == [], "decoding workers outlived the killed ingest"
        return n
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # only our own session, if anything is left
        except ProcessLookupError:
            pass


def by_hash(db: TileDB) -> dict[str, int]:
    return {t["hash"]: t["id"] for t in db.tiles(db.ids())}


def test_kill_and_resume(cifar_files, tmp_path):
    src = cifar_files(N_FILES)

    # the reference: one clean run
    with TileDB.create(tmp_path / "ref") as ref:
        rep = ref.ingest([src], workers=2)
        assert rep.added == N_FILES

    db = tmp_path / "db"
    TileDB.create(db).close()
    counts = []
    for workers, when in [(2, {"after_seconds": 0.5}), (2, {"after_tiles": 900}), (1, {"after_tiles": 2000})]:
        n = kill_ingest(db, src, workers, log=tmp_path / f"log{len(counts)}.txt", **when)
        if n == -1:
            break  # a very fast machine finished first: nothing more to interrupt
        counts.append(n)
        with WriteLock(db):  # the next writer gets in at once: nothing holds the lock any more
            pass
        res = mosaic_here("db", "check", db)
        assert res.exit_code == 0, res.output
        assert f"OK ({n} tiles)" in res.stdout
        assert "problem" not in res.stderr
    assert counts == sorted(counts)  # committed work is never lost
    assert any(0 < n < N_FILES for n in counts), counts  # at least one kill landed mid-way

    res = mosaic("db", "ingest", db, src, "--workers", "2", "-q")
    assert res.returncode == 0, res.stderr
    done = max(counts)
    assert res.stdout.startswith(f"{N_FILES - done} added, 0 skipped (mosaic db errors), 0 duplicates, "
                                 f"{done} unchanged"), res.stdout
    res = mosaic_here("db", "check", db, "--deep")
    assert res.exit_code == 0 and f"OK ({N_FILES} tiles)" in res.stdout, res.output
    assert orphan_warnings_only(res.stderr) == []  # no problems, and the index is current

    with TileDB.open(tmp_path / "ref", readonly=True) as ref, TileDB.open(db, readonly=True) as got:
        assert len(got) == len(ref) == N_FILES
        np.testing.assert_array_equal(got.ids(), np.arange(N_FILES))  # no holes from the kills
        a, b = by_hash(ref), by_hash(got)
        assert set(a) == set(b)
        order = list(a)
        ra, rb = [a[h] for h in order], [b[h] for h in order]
        np.testing.assert_array_equal(np.asarray(got.features())[rb], np.asarray(ref.features())[ra])
        for s in got.thumb_sizes:
            np.testing.assert_array_equal(np.asarray(got.thumbs(s))[rb], np.asarray(ref.thumbs(s))[ra])
        assert {t["source"] for t in got.tiles(got.ids())} == {t["source"] for t in ref.tiles(ref.ids())}
        idx = got.load_index()
        assert idx is not None and not got.index_stale() and idx.ntotal == N_FILES
        np.testing.assert_array_equal(idx.ids, np.arange(N_FILES))

    stats = json.loads(mosaic_here("db", "stats", db, "--json").stdout)
    assert stats["tiles"] == N_FILES and stats["index"]["stale"] is False

    # and once more: nothing left to do
    res = mosaic_here("db", "ingest", db, src, "--workers", "1", "-q")
    assert res.stdout.startswith(f"0 added, 0 skipped (mosaic db errors), 0 duplicates, {N_FILES} unchanged")


def test_ctrl_c_to_the_process_group_stops_an_ingest_at_once(tmp_path):
    """Ctrl-C at a terminal signals the whole group, decoding workers included. They leave the
    interruption to the ingest process: no worker tracebacks, and no hang (a worker interrupted
    mid-task could die holding the pool's result queue, and the shutdown waited for ever)."""
    from conftest import write_synthetic
    src = tmp_path / "src"
    write_synthetic(src, 1500, seed=5)
    db = tmp_path / "i.db"
    invoke_cli("db", "init", db, "-q", code=0)
    p = subprocess.Popen(MOSAIC + ["db", "ingest", str(db), str(src), "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         # a shell's background job (as CI may run us) inherits SIGINT ignored
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while p.poll() is None and tile_count(db) == 0 and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        if p.poll() is not None:
            pytest.skip("the ingest finished before it could be interrupted")
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 130, err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == "Interrupted.", err
        deadline = time.monotonic() + 15
        while live_group_members(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_group_members(p.pid) == []
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    invoke_cli("db", "check", db, code=0)


def test_a_worker_killed_between_chunks_is_recovered_from_not_a_traceback(tmp_path, monkeypatch):
    """A worker that dies while idle (SIGTERM from outside, the OOM killer) breaks the pool
    before the next chunk is handed out: that `submit` raised BrokenProcessPool, uncaught (exit
    70, a traceback); only a death during a chunk was recovered from. Now both redo the chunks
    involved, and every file is ingested."""
    import multiprocessing

    from conftest import write_synthetic
    from mosaicdb.store import writer
    write_synthetic(tmp_path / "src", 48, seed=3)
    real = writer.chunked

    def chunked(jobs, size):
        for i, c in enumerate(real(jobs, size)):
            if i == 7:
                os.kill(multiprocessing.active_children()[0].pid, signal.SIGTERM)
                time.sleep(1.0)  # the pool notices and is broken when the next chunk goes out
            yield c

    monkeypatch.setattr(writer, "chunked", chunked)
    with TileDB.create(tmp_path / "t.db") as db:
        report = db.ingest([tmp_path / "src"], workers=2, chunk_size=2)
        assert report.added + report.duplicates == 48 and report.skipped == 0
    res = invoke_cli("db", "check", tmp_path / "t.db")
    assert res.exit_code == 0, res.output
