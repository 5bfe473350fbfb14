"""The `mosaic` command line: help texts with examples, every `mosaic db` command, JSON output."""
from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

import mosaicdb
from clirun import invoke_cli
from conftest import first_images
from mosaicdb_cli.main import cli
from mosaicdb import TileDB


def commands(group: click.Command, path=("mosaic",)):
    yield " ".join(path), group
    if isinstance(group, click.Group):
        for name in sorted(group.list_commands(None)):   # the root loads its commands lazily
            yield from commands(group.get_command(None, name), path + (name,))


ALL = dict(commands(cli))


def run(*args, ok: bool = True):
    return invoke_cli(*args, code=0 if ok else None)


def test_the_tree_is_walked():
    assert {"mosaic", "mosaic db", "mosaic db init", "mosaic db ingest", "mosaic db index", "mosaic db stats",
            "mosaic db check", "mosaic db errors", "mosaic db remove"} <= set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_command_has_an_example(name):
    cmd = ALL[name]
    assert cmd.help and cmd.help.strip(), f"`{name}` has no help text"
    assert "Example:" in cmd.help, f"`{name}` help has no 'Example:' section"
    example = cmd.help.split("Example:", 1)[1].strip()
    assert example.startswith("\b"), f"`{name}`: mark the example block with \\b so click keeps its lines"
    lines = [ln.strip() for ln in example[1:].strip().splitlines()]
    assert lines and all(ln.startswith("mosaic ") for ln in lines), f"`{name}`: examples are command lines: {lines}"
    res = invoke_cli(*name.split()[1:], "--help", code=0, terminal_width=80)
    assert "Example:" in res.output and "Usage: mosaic" in res.output
    shown = [ln.strip() for ln in res.output.splitlines()]
    for ln in lines:  # each example whole on one line at 80 columns: copy-paste works
        assert ln in shown, f"`{name}`: example {ln!r} was re-wrapped in --help"
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden and p.name not in ("help", "version"):
            assert p.help, f"`{name}` option {p.opts[0]} has no help"


def test_version():
    res = run("--version")
    assert res.output.strip() == f"mosaic, version {mosaicdb.__version__}"


@pytest.fixture
def images(synthetic_tiles, tmp_path) -> Path:
    """60 of the synthetic images in a private folder."""
    return first_images(synthetic_tiles, 60, tmp_path / "images")


def test_db_workflow(images, tmp_path):
    db = tmp_path / "tiles.db"
    res = run("db", "init", db, "--thumb-sizes", "8,16,32", "--features", "lab-grid", "--feature-grid", "2",
              "--background", "0,0,0")
    assert res.output.strip() == f"Created tile database {db} (thumbnails 8,16,32 px, lab-grid features, 15-dim)."
    assert (db / "catalog.sqlite").is_file()
    res = run("db", "init", db, ok=False)
    assert res.exit_code != 0 and "already a tile database" in res.output

    (images / "broken.jpg").write_bytes(b"nope")
    res = run("db", "ingest", db, images, "--workers", "1", "-q")
    assert res.stdout.startswith("60 added, 1 skipped (mosaic db errors), 0 duplicates, 0 unchanged in ")
    res = run("db", "ingest", db, images, "--workers", "2", "-q")
    assert res.stdout.startswith("0 added, 0 skipped (mosaic db errors), 0 duplicates, 61 unchanged in ")

    stats = json.loads(run("db", "stats", db, "--json").stdout)
    assert stats["tiles"] == 60 and stats["by_origin"] == {"file": 60} and stats["skipped_inputs"] == 1
    assert stats["thumb_sizes"] == [8, 16, 32] and stats["feature_dim"] == 15
    assert stats["index"]["kind"] == "flat" and stats["index"]["ntotal"] == 60 and not stats["index"]["stale"]
    text = run("db", "stats", db).stdout
    assert f"{db}: 60 tiles (60 file), 1 skipped inputs" in text and "index: flat" in text

    res = run("db", "check", db)
    assert res.stdout.strip() == f"{db}: OK (60 tiles)"
    assert run("db", "check", db, "--deep").stdout.strip() == f"{db}: OK (60 tiles)"

    errs = json.loads(run("db", "errors", db, "--json").stdout)
    assert [e["source"] for e in errs] == [str(images / "broken.jpg")] and "not an image" in errs[0]["reason"]
    res = run("db", "errors", db)
    assert f"{images / 'broken.jpg'}: not an image" in res.stdout and "1 skipped input(s)" in res.output

    infos = json.loads(run("db", "index", db, "--json").stdout)
    assert infos["kind"] == "flat" and infos["ntotal"] == 60 and infos["recall_at_1"] == 1.0
    infos = json.loads(run("db", "index", db, "--kind", "ivf", "--nlist", "8", "--json").stdout)
    assert infos["kind"] == "ivf" and infos["params"]["nlist"] == 1  # capped: FAISS wants 39 points a list
    res = run("db", "index", db, "--rebuild")  # without --kind: the kind last chosen
    assert res.stdout.startswith("Index: ivf (nlist=1, trained_on=60, nprobe=1), 60 vectors, recall@1 1.000, built in ")
    res = run("db", "index", db, "--kind", "auto")
    assert res.stdout.startswith("Index: flat, 60 vectors, recall@1 1.000, built in ")

    with TileDB.open(db, readonly=True) as d:
        rows = d.tiles(d.ids())
    h = rows[7]["hash"]
    res = run("db", "remove", db, "3", "4", h[:10])
    assert res.stdout.strip() == f"Removed 3 tile(s) from {db}."
    res = run("db", "remove", db, "--source", images / rows[10]["source"].split("/")[-1])
    assert res.stdout.strip() == f"Removed 1 tile(s) from {db}."
    res = run("db", "remove", db, "3")  # already gone
    assert res.stdout.strip() == f"Removed 0 tile(s) from {db}."
    stats = json.loads(run("db", "stats", db, "--json").stdout)
    assert stats["tiles"] == 56 and stats["index"]["ntotal"] == 56 and not stats["index"]["stale"]
    res = run("db", "remove", db, "--source", images)
    assert res.stdout.strip() == f"Removed 56 tile(s) from {db}."
    assert json.loads(run("db", "stats", db, "--json").stdout)["tiles"] == 0


def test_ingest_link_and_no_index(images, tmp_path):
    db = tmp_path / "linked.db"
    run("db", "init", db)
    res = run("db", "ingest", db, images, "--link", "--no-index", "--workers", "1", "-q")
    assert res.stdout.startswith("60 added")
    stats = json.loads(run("db", "stats", db, "--json").stdout)
    assert stats["linked"] == 60 and stats["index"] is None and stats["bytes"]["originals"] == 0
    res = run("db", "check", db)
    assert "warning: index: none yet" in res.stderr and res.stdout.strip() == f"{db}: OK (60 tiles)"
    assert "index: none" in run("db", "stats", db).stdout


def test_check_failure_exit_code(images, tmp_path):
    db = tmp_path / "tiles.db"
    run("db", "init", db)
    run("db", "ingest", db, images, "--workers", "1", "-q")
    with TileDB.open(db, readonly=True) as d:
        victim = d.blob_path(d.tiles([5])[0])
    victim.unlink()
    res = run("db", "check", db, ok=False)
    assert res.exit_code == 1
    assert "problem: originals: 1 missing, e.g. tile 5" in res.stderr
    assert res.stderr.strip().endswith(f"Error: {db}: 1 problem(s) found")
    assert res.stdout == ""


def test_debug_flag_and_verbose(images, tmp_path):
    db = tmp_path / "tiles.db"
    assert run("--verbose", "db", "init", db).exit_code == 0
    res = run("--debug", "db", "stats", tmp_path / "missing.db", ok=False)
    assert res.exit_code != 0 and "does not exist" in res.output  # user errors stay one line
