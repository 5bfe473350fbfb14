"""CLI habits: the exit-code table in `mosaic --help`, exit 2 for every usage error, --json on
every command, $MOSAICDB_DB for every database, -q on the root group, shell completion."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clirun import invoke_cli
from conftest import first_images
from mosaicdb import assignment as asg
from mosaicdb.store.db import TileDB
from mosaicdb_cli import common
from mosaicdb_cli.main import cli
from test_cli import ALL
from test_pyramid import random_assignment

ROOT = Path(__file__).resolve().parents[1]
LEAVES = sorted(name for name, cmd in ALL.items() if not isinstance(cmd, click.Group))


# ---- exit codes --------------------------------------------------------------------------------
def exit_table(text: str) -> dict[int, str]:
    block = text.split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    rows = [re.match(r"\s+(\d+)\s+(\S.*)$", ln) for ln in block.strip("\n").splitlines()]
    assert all(rows), block
    return {int(m[1]): m[2] for m in rows}


def test_root_help_documents_the_exit_codes():
    res = invoke_cli("--help", code=0, terminal_width=80)
    assert exit_table(res.output) == common.EXIT_CODES
    assert set(common.EXIT_CODES) == {0, common.EXIT_RUNTIME, common.EXIT_USAGE, common.EXIT_BUG, common.EXIT_HANGUP,
                                      common.EXIT_INTERRUPTED, common.EXIT_TERMINATED} == {0, 1, 2, 70, 129, 130, 143}
    epilog = res.output.split("Exit codes:", 1)[1]
    assert all(len(ln) <= 80 for ln in epilog.splitlines()), "the epilog is kept as written: fit 80 columns"
    assert "MOSAICDB_DB" in epilog and "TQDM_DISABLE" in epilog and "_MOSAIC_COMPLETE=bash_source" in epilog
    readme = (ROOT / "README.md").read_text()
    for code in common.EXIT_CODES:  # the README says the same
        assert re.search(rf"\b{code}\b", readme.split("Exit codes", 1)[1][:800]), code


@pytest.mark.parametrize("args", [
    ["make", "--db", "{db}", "{target}", "--out", "{tmp}/m.png", "--grid", "abc"],      # our check
    ["make", "--db", "{db}", "{target}", "--out", "{tmp}/m.xyz"],                      # unknown suffix
    ["make", "--db", "{db}", "{target}", "--out", "{tmp}/m.png", "--color", "teal"],   # click's choice
    ["make", "--db", "{db}", "{target}"],                                              # click: --out missing
    ["print", "{saved}", "--size", "10km", "--out", "{tmp}/p.tif"],                    # bad unit
    ["render", "{saved}", "--out", "{tmp}/r.png", "--tile-px", "0"],
    ["db", "remove", "{db}"],                                                          # nothing named
])
def test_every_usage_error_exits_2(synthetic_db, tmp_path, args):
    target = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(target)
    asg.save(tmp_path / "s.png", random_assignment(synthetic_db, 6, 4))
    subs = {"db": synthetic_db.path, "target": target, "tmp": tmp_path, "saved": tmp_path / "s.mosaic.json"}
    res = invoke_cli(*[a.format(**subs) for a in args], code=2)
    assert res.output.strip().count("\n") <= 3 and "Error" in res.output  # a message, not a traceback
    assert not list(tmp_path.glob("m.*")) and not list(tmp_path.glob("p.*")) and not list(tmp_path.glob("r.*"))


def test_runtime_errors_exit_1(tmp_path):
    res = invoke_cli("db", "stats", tmp_path / "nowhere.db", code=1)
    assert "mosaic db init" in res.output  # says what to do


# ---- --json ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LEAVES)
def test_every_command_has_json(name):
    opts = {o for p in ALL[name].params if isinstance(p, click.Option) for o in p.opts}
    assert "--json" in opts, f"`{name}` reports something: give it --json"


@pytest.fixture
def images(synthetic_tiles, tmp_path) -> Path:
    return first_images(synthetic_tiles, 40, tmp_path / "images")


def test_db_commands_json(images, tmp_path):
    db = tmp_path / "tiles.db"
    made = json.loads(invoke_cli("db", "init", db, "--thumb-sizes", "8,16", "--json", code=0).stdout)
    assert made == {"path": str(db), "thumb_sizes": [8, 16], "features": "rgb-pyramid", "feature_dim": 255}
    (images / "broken.png").write_bytes(b"no")
    rep = json.loads(invoke_cli("db", "ingest", db, images, "--workers", "1", "--json", code=0).stdout)
    assert (rep["added"], rep["skipped"], rep["duplicates"], rep["unchanged"], rep["db"]) == (40, 1, 0, 0, str(db))
    chk = json.loads(invoke_cli("db", "check", db, "--json", code=0).stdout)
    assert chk == {"db": str(db), "ok": True, "tiles": 40, "problems": [], "warnings": []}
    rm = json.loads(invoke_cli("db", "remove", db, "1", "2", "--json", code=0).stdout)
    assert rm == {"db": str(db), "removed": 2}
    with TileDB.open(db, readonly=True) as d:
        d.blob_path(d.tiles([5])[0]).unlink()
    res = invoke_cli("db", "check", db, "--json", code=1)
    bad = json.loads(res.stdout)
    assert not bad["ok"] and bad["tiles"] == 38 and "originals: 1 missing" in bad["problems"][0]


# ---- $MOSAICDB_DB ------------------------------------------------------------------------------
@pytest.mark.slow
def test_mosaicdb_db_is_the_default_database(images, tmp_path, monkeypatch):
    db, other = tmp_path / "env.db", tmp_path / "other.db"
    invoke_cli("db", "init", db, code=0)
    invoke_cli("db", "init", other, code=0)
    monkeypatch.setenv("MOSAICDB_DB", str(db))
    # DB left out: the positionals are the sources / the tiles
    assert json.loads(invoke_cli("db", "ingest", images, "--workers", "1", "--json", code=0).stdout)["db"] == str(db)
    assert json.loads(invoke_cli("db", "stats", "--json", code=0).stdout)["tiles"] == 40
    assert json.loads(invoke_cli("db", "remove", "3", "--json", code=0).stdout) == {"db": str(db), "removed": 1}
    # a database named on the command line wins
    rep = json.loads(invoke_cli("db", "ingest", other, images, "--workers", "1", "--json", code=0).stdout)
    assert rep["db"] == str(other) and rep["added"] == 40
    assert json.loads(invoke_cli("db", "stats", other, "--json", code=0).stdout)["tiles"] == 40
    res = invoke_cli("db", "ingest", code=2)
    assert "Missing argument 'SOURCES...'" in res.output
    # make: --db from the environment
    target = images / sorted(p.name for p in images.iterdir())[0]
    out = tmp_path / "m.png"
    invoke_cli("make", target, "--out", out, "--grid", "6", "--tile-px", "4", "-q", code=0)
    assert asg.load(asg.sidecar_paths(out)[0]).meta.db == str(db.resolve())
    monkeypatch.delenv("MOSAICDB_DB")
    assert "Missing option '--db'" in invoke_cli("make", target, "--out", out, code=2).output


def test_saved_database_wins_over_the_environment(synthetic_db, tmp_path, monkeypatch):
    """For a saved assignment, $MOSAICDB_DB stands in only when the database it names is gone,
    and only if it is that same database, moved (its uuid): an implicit default never swaps tiles."""
    moved = tmp_path / "moved.db"
    shutil.copytree(synthetic_db.path, moved)
    asg.save(tmp_path / "s.png", random_assignment(synthetic_db, 6, 4))
    js = tmp_path / "s.mosaic.json"
    meta = json.loads(js.read_text())
    meta["db_uuid"] = synthetic_db.uuid
    js.write_text(json.dumps(meta))
    other = tmp_path / "other.db"
    invoke_cli("db", "init", other, code=0)
    monkeypatch.setenv("MOSAICDB_DB", str(other))
    invoke_cli("render", js, "--out", tmp_path / "a.png", "--tile-px", "4", "-q", code=0)  # the named one
    meta["db"] = str(tmp_path / "gone.db")
    js.write_text(json.dumps(meta))
    res = invoke_cli("render", js, "--out", tmp_path / "b.png", "--tile-px", "4", "-q", code=1)
    assert f"$MOSAICDB_DB ({other}) is not the tile database this assignment was made from" in res.output
    monkeypatch.setenv("MOSAICDB_DB", str(moved))
    invoke_cli("render", js, "--out", tmp_path / "c.png", "--tile-px", "4", "-q", code=0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "c.png")))
    monkeypatch.delenv("MOSAICDB_DB")
    assert "moved? pass its new place with --db or $MOSAICDB_DB" in invoke_cli(
        "render", js, "--out", tmp_path / "d.png", "-q", code=1).output


# ---- -q on the root group ----------------------------------------------------------------------
def test_root_quiet_silences_every_command(synthetic_db, images, tmp_path):
    db = tmp_path / "q.db"
    invoke_cli("db", "init", db, code=0)
    (images / "broken.png").write_bytes(b"no")
    invoke_cli("db", "ingest", db, images, "--workers", "1", code=0)
    assert "1 skipped input(s)" in invoke_cli("db", "errors", db, code=0).stderr
    res = invoke_cli("-q", "db", "errors", db, code=0)
    assert res.stderr == "" and "broken.png" in res.stdout  # the answer stays, the chatter goes
    target = sorted(images.glob("s*.png"))[0]
    loud = invoke_cli("make", "--db", db, target, "--out", tmp_path / "a.png", "--grid", "6", "--tile-px", "4", code=0)
    quiet = invoke_cli("-q", "make", "--db", db, target, "--out", tmp_path / "b.png", "--grid", "6", "--tile-px", "4",
                       code=0)
    assert "PSNR@64" in loud.stderr and "PSNR@64" not in quiet.stderr and quiet.stdout == loud.stdout.replace("a.png", "b.png")


# ---- shell completion --------------------------------------------------------------------------
def test_shell_completion():
    runner = CliRunner()
    script = runner.invoke(cli, [], prog_name="mosaic", env={"_MOSAIC_COMPLETE": "bash_source"}, complete_var="_MOSAIC_COMPLETE")
    assert "_mosaic_completion" in script.output and "complete " in script.output
    res = runner.invoke(cli, [], prog_name="mosaic", complete_var="_MOSAIC_COMPLETE",
                        env={"_MOSAIC_COMPLETE": "bash_complete", "COMP_WORDS": "mosaic db st", "COMP_CWORD": "2"})
    assert "plain,stats" in res.output.splitlines()
    assert 'eval "$(_MOSAIC_COMPLETE=bash_source mosaic)"' in (ROOT / "README.md").read_text()


# ---- Ctrl-C at any moment, even while Python is still loading the command line ------------------
@pytest.mark.parametrize("delay", [0.0, 0.03, 0.08])
def test_ctrl_c_while_the_program_loads_shows_no_traceback(tmp_path, delay):
    """The console script imports numpy, click and the library for ~0.25 s before any command
    runs: a Ctrl-C then printed a KeyboardInterrupt traceback. The child says "go" from inside the
    entry point, as it starts loading the command line (an interrupt inside Python's own start-up,
    or between a `print` and the call in this test's own code, is not ours to handle: saying "go"
    before calling `main()` let a signal land in between, seen in 2 of 4 full runs under load)."""
    import signal
    import subprocess
    import sys
    import time
    code = ("import sys; sys.argv = ['mosaic', 'serve', 'none.mosaic.json']\n"
            "class Go:  # says go when main() asks for the command line, inside its own guard\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'mosaicdb_cli.main':\n"
            "            print('go', flush=True)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Go())\n"
            "from mosaicdb_cli.entry import main\n"
            "main()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.readline() == b"go\n"
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert "Traceback" not in err.decode(), err.decode()[-2000:]
    assert p.returncode == 130 and err.decode().strip().splitlines()[-1] == "Interrupted.", (p.returncode, err.decode())


def test_python_m_mosaicdb_runs_the_same_entry_point():
    import tomllib
    from pathlib import Path as P
    root = P(__file__).resolve().parent.parent
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]["mosaic"] == "mosaicdb_cli.entry:main"
    assert "from mosaicdb_cli.entry import main" in (root / "mosaicdb" / "__main__.py").read_text()


def test_a_signal_while_the_interpreter_exits_ends_it_without_a_traceback():
    """Ctrl-C twice near the end of a `make --jobs` batch: the second landed in
    multiprocessing's exit hook (joining the workers) and printed "Exception ignored in atexit
    callback" with a KeyboardInterrupt traceback. Here an exit hook sends itself SIGINT."""
    import subprocess
    import sys
    code = ("import atexit, os, signal, sys, time\n"
            "from mosaicdb_cli.main import main\n"
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(1)))\n"
            "sys.argv = ['mosaic', '--version']\n"
            "main()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: __import__("signal").signal(2, __import__("signal").SIG_DFL))
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr
    assert res.returncode == -2 and "mosaic" in res.stdout
