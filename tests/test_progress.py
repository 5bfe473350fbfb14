"""Progress bars reach people, not logs: drawn on a terminal, never into a pipe or a file, and
never under TQDM_DISABLE or -q (the command's or the root group's)."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest

from mosaicdb import assignment as asg
from mosaicdb.progress import progress_bar, progress_enabled
from test_pyramid import random_assignment


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("requested, tty, env, shown", [
    (True, True, None, True),
    (True, False, None, False),       # a pipe, a file, CI
    (False, True, None, False),       # -q
    (True, True, "1", False),
    (True, True, "true", False),
    (True, True, "0", True),          # TQDM_DISABLE=0 means "not disabled"
    (True, True, "", True),
])
def test_the_rule(monkeypatch, requested, tty, env, shown):
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    stream = FakeTerminal() if tty else io.StringIO()
    assert progress_enabled(requested, stream) is shown
    with progress_bar(requested, 10, "work", file=stream) as bar:
        bar.update(10)
    assert ("\r" in stream.getvalue()) is shown and ("10/10" in stream.getvalue()) is shown


def test_a_closed_or_odd_stream_gets_no_bar():
    s = io.StringIO()
    s.close()
    assert not progress_enabled(True, s) and not progress_enabled(True, object())


@pytest.fixture(scope="module")
def saved_json(synthetic_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "m.png"
    asg.save(out, random_assignment(synthetic_db, 24, 16, seed=2))
    return asg.sidecar_paths(out)[0]


def run_mosaic(args, *, terminal: bool, env_extra: dict | None = None) -> str:
    """`python -m mosaicdb ARGS` with stderr on a pseudo-terminal or a pipe; returns stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "mosaicdb", *map(str, args)]
    if not terminal:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real one has a size
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env, timeout=300)
    os.close(slave)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["terminal", "pipe", "TQDM_DISABLE", "-q", "root -q"])
def test_render_bar_only_on_a_terminal(saved_json, tmp_path, case):
    args = ["render", saved_json, "--out", tmp_path / "r.tif", "--tile-px", "32"]
    if case == "-q":
        args.append("-q")
    if case == "root -q":
        args = ["-q", *args]
    err = run_mosaic(args, terminal=case != "pipe", env_extra={"TQDM_DISABLE": "1"} if case == "TQDM_DISABLE" else None)
    if case == "terminal":  # the control: the same run on a terminal does draw the bar
        assert re.search("\r(?!\n)", err) and "render r.tif" in err, err
    else:
        assert not re.search("\r(?!\n)", err) and "render r.tif" not in err, err
