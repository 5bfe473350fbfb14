"""`mosaic make --executor ray`: targets spread over Ray actors (a local 2-CPU instance) write
exactly the files the local executor writes; errors in actors reach the user as one line."""
from __future__ import annotations

import hashlib
import json
import os
import signal
from dataclasses import replace
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke_cli
from PIL import Image

from mosaicdb.batch import BatchOptions, BatchRunner
from mosaicdb.errors import DatabaseError, MissingDependency, UsageError
from mosaicdb.match.options import MatchOptions
from mosaicdb.render.options import RenderOptions

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def batch_targets(shared_data, tmp_path_factory) -> list[Path]:
    """10 targets: 5 Kodak photographs and 5 crops of them (small, so 10 runs stay quick),
    and one file that is not an image."""
    d = tmp_path_factory.mktemp("targets")
    kodak = sorted((shared_data / "targets" / "kodak").glob("*.png"))[:5]
    for i, p in enumerate(kodak):
        im = Image.open(p).convert("RGB")
        im.resize((192, 128)).save(d / f"k{i}.png")
        w, h = im.size
        im.crop((w // 4, h // 4, w // 4 + 160, h // 4 + 160)).save(d / f"crop{i}.jpg", quality=92)
    (d / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return sorted(d.iterdir())


def made_files(folder: Path) -> dict[str, str]:
    """sha256 of every file a make run wrote except the metrics (they hold timings)."""
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if not p.name.endswith(".metrics.json")}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own settings
def test_ray_and_local_executors_write_identical_files(cifar_ingest, batch_targets, tmp_path, monkeypatch):
    pytest.importorskip("ray.data", reason="the Ray executor needs Ray: pip install 'mosaicdb[ray]'")
    import ray
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # `created` in the assignments
    db = cifar_ingest[0]
    runs = {}
    for executor in ("local", "ray"):
        out = tmp_path / "out"  # the same path for both: assignments record it
        extra = ["--ray-cpus", 2] if executor == "ray" else []
        res = invoke_cli("make", "--db", db, *batch_targets, "--out", out, "--grid", 24, "--tile-px", 8,
                         "--min-distance", 2, "--executor", executor, *extra, "-q", code=1)
        # the broken target fails alone, with its name; the other ten are made
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and str(batch_targets[-1]) in lines[0], res.stderr
        assert lines[0].count(str(batch_targets[-1])) == 1, "the target is named once"
        assert lines[1] == "Error: 1 of 11 targets failed (see above); the others were made", res.stderr
        assert "zz-broken" in res.stderr and res.stdout.split() == [str(out / f"{t.stem}.jpg") for t in batch_targets[:-1]]
        runs[executor] = made_files(out)
        out.rename(tmp_path / executor)
    assert not ray.is_initialized()  # the runner shut down the instance it started
    assert len(runs["local"]) == 10 * 3
    assert runs["ray"] == runs["local"]
    # and they are real mosaics of different targets, not one file ten times
    assert len({h for n, h in runs["local"].items() if n.endswith(".mosaic.npz")}) == 10


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU Ray instance for the library-level tests (the runner joins it, not stops it)."""
    ray = pytest.importorskip("ray", reason="the Ray executor needs Ray: pip install 'mosaicdb[ray]'")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own settings
def test_an_actor_that_cannot_open_the_database_says_why(cifar_ingest, batch_targets, local_ray, tmp_path):
    """A node without the database (here: it vanished after the driver checked it) is a
    DatabaseError naming it, not Ray's wrapped traceback."""
    db = tmp_path / "copy.db"
    shutil.copytree(cifar_ingest[0], db)
    opts = BatchOptions(executor="ray", actors=2)
    with BatchRunner(db, MatchOptions(grid="8"), RenderOptions(tile_px=4), opts) as run:
        shutil.rmtree(db)
        with pytest.raises(DatabaseError) as e:
            list(run.make(batch_targets[:2], [tmp_path / "a.jpg", tmp_path / "b.jpg"]))
    assert str(e.value).startswith(f"{db.resolve()} does not exist") and "\n" not in str(e.value)
    assert type(e.value) is DatabaseError
    assert local_ray.is_initialized()  # joined, so left running


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own settings
def test_more_targets_than_actors_come_back_in_order(cifar_ingest, batch_targets, local_ray, tmp_path):
    opts = BatchOptions(executor="ray", actors=2)
    targets = batch_targets[:6]
    outs = [tmp_path / f"{t.stem}.jpg" for t in targets]
    with BatchRunner(cifar_ingest[0], MatchOptions(grid="8"), RenderOptions(tile_px=4), opts) as run:
        results = list(run.make(targets, outs))
    assert [t for t, _ in results] == [t.resolve() for t in targets]
    assert [r.output for _, r in results] == [o.resolve() for o in outs]
    assert all(o.exists() and r.saved is None for (_, r), o in zip(results, outs))


@pytest.mark.parametrize("kw, words", [
    (dict(executor="dask"), ["--executor", "local", "ray"]),
    (dict(executor="local", ray_address="auto"), ["--ray-address", "--executor ray"]),
    (dict(executor="local", actors=2), ["--actors", "--executor ray"]),
    (dict(executor="ray", actors=0), ["--actors"]),
    (dict(executor="ray", ray_cpus=-1), ["--ray-cpus"]),
    (dict(executor="ray", cpus_per_actor=0), ["--cpus-per-actor"]),
    (dict(executor="ray", ray_address=" "), ["--ray-address"]),
])
def test_batch_options_are_checked_when_made(kw, words):
    with pytest.raises(UsageError) as e:
        BatchOptions(**kw)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_cli_refuses_ray_options_without_the_ray_executor(synthetic_db, tmp_path):
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    res = invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "o.jpg", "--ray-address", "auto",
                     code=2)
    assert res.stderr.strip().splitlines() == ["Error: --ray-address, --ray-cpus and --actors need --executor ray"]
    assert not (tmp_path / "o.jpg").exists()


def test_cli_refuses_generate_worst_on_ray(synthetic_db, tmp_path):
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    res = invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "o.jpg", "--executor", "ray",
                     "--generate-worst", 2, "--generate-model", tmp_path, "--generate-prompt", "x", code=2)
    assert "--generate-worst" in res.stderr and "--executor local" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_missing_ray_names_the_extra(synthetic_db, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.data", None)  # import ray.data now raises ImportError
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    with pytest.raises(MissingDependency) as e:
        with BatchRunner(synthetic_db.path, MatchOptions(grid="4"), RenderOptions(), BatchOptions(executor="ray")):
            pass
    assert "pip install 'mosaicdb[ray]'" in str(e.value)
    res = invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "o.jpg", "--executor", "ray", code=1)
    assert "pip install 'mosaicdb[ray]'" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ---- assignment files are reproducible --------------------------------------------------------
def test_assignment_files_do_not_depend_on_the_clock(synthetic_db, tmp_path, monkeypatch):
    """`created` follows SOURCE_DATE_EPOCH (and .npz members carry a fixed stamp): the same
    assignment saved at two times gives the same bytes."""
    import time

    from mosaicdb import assignment as asg
    from test_pyramid import random_assignment
    saved = random_assignment(synthetic_db, 12, 9, seed=4)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    digests = []
    for i, clock in enumerate((1.0e9, 1.6e9)):
        monkeypatch.setattr(time, "time", lambda c=clock: c)
        saved.meta = replace(saved.meta, created=asg.created_time())
        jpath, npath = asg.save(tmp_path / f"m{i}.png", saved)
        digests.append((sha(npath), jpath.read_text().replace(f"m{i}.png", "")))
    assert digests[0] == digests[1]
    back = asg.load(tmp_path / "m0.mosaic.json")
    assert back.meta.created == 1.7e9
    for name in ("tile_ids", "cost", "target_mean", "target_std"):
        a, b = getattr(back, name), getattr(saved, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.mark.parametrize("value", ["soon", "1.5", ""])
def test_a_bad_source_date_epoch_is_a_usage_error(value, monkeypatch):
    from mosaicdb.assignment import created_time
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        created_time()


def test_cli_lists_the_executors_for_an_unknown_one(synthetic_db, tmp_path):
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    res = invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "o.jpg", "--executor", "dask", code=2)
    line = res.stderr.strip()
    assert "\n" not in line and "--executor" in line and "local" in line and "ray" in line


def test_cli_checks_cpus_per_actor(synthetic_db, tmp_path):
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    res = invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "o.jpg", "--executor", "ray",
                     "--cpus-per-actor", 0, code=2)
    assert "--cpus-per-actor" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jpg").exists()


def test_another_maker_runs_locally_only(synthetic_db, tmp_path):
    with pytest.raises(UsageError, match="--autoencoder"):
        BatchRunner(synthetic_db.path, MatchOptions(), RenderOptions(), BatchOptions(executor="ray"),
                    maker=lambda db: None)
    made = []

    class Recorder:
        def make(self, target, out):
            made.append((target, out))
            return "done"

    with BatchRunner(synthetic_db.path, MatchOptions(grid="4"), RenderOptions(), maker=lambda db: Recorder()) as run:
        got = list(run.make([tmp_path / "a.png"], [tmp_path / "a.jpg"]))
    assert got == [(tmp_path / "a.png", "done")] and made == [(tmp_path / "a.png", tmp_path / "a.jpg")]


# ---- --jobs: worker processes on this machine -------------------------------------------------
@pytest.mark.slow
def test_jobs_write_the_files_one_process_writes(cifar_ingest, batch_targets, tmp_path, monkeypatch):
    """`--jobs 2`: the same outputs, assignments and failures as one process, in target order."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    db = cifar_ingest[0]
    runs, outputs = {}, {}
    for jobs in (1, 2):
        out = tmp_path / "out"  # the same path for both: assignments record it
        res = invoke_cli("make", "--db", db, *batch_targets, "--out", out, "--grid", 24, "--tile-px", 8,
                         "--min-distance", 2, "--jobs", jobs, "-q", code=1)
        assert res.stderr.strip().splitlines()[-1] == "Error: 1 of 11 targets failed (see above); the others were made"
        assert len(res.stderr.strip().splitlines()) == 2 and str(batch_targets[-1]) in res.stderr.splitlines()[0]
        outputs[jobs] = res.stdout.split()
        runs[jobs] = made_files(out)
        out.rename(tmp_path / f"jobs{jobs}")
    assert outputs[2] == outputs[1] == [str(tmp_path / "out" / f"{t.stem}.jpg") for t in batch_targets[:-1]]
    assert len(runs[1]) == 10 * 3 and runs[2] == runs[1]
    assert len({h for n, h in runs[1].items() if n.endswith(".mosaic.npz")}) == 10


def test_a_worker_that_cannot_open_the_database_says_why(cifar_ingest, batch_targets, tmp_path):
    db = tmp_path / "copy.db"
    shutil.copytree(cifar_ingest[0], db)
    with BatchRunner(db, MatchOptions(grid="8"), RenderOptions(tile_px=4), BatchOptions(jobs=2)) as run:
        shutil.rmtree(db)  # after the driver checked it, before the workers open it
        with pytest.raises(DatabaseError) as e:
            list(run.make(batch_targets[:2], [tmp_path / "a.jpg", tmp_path / "b.jpg"]))
    assert str(e.value).startswith(f"{db.resolve()} does not exist") and "\n" not in str(e.value)
    assert not (tmp_path / "a.jpg").exists()


def test_a_worker_that_dies_is_one_error_naming_jobs(cifar_ingest, batch_targets, tmp_path):
    """A worker killed (the OOM killer, say) ends the batch with one line that names --jobs; the
    targets made before it are kept."""
    import multiprocessing
    import os
    import signal

    from mosaicdb.errors import MosaicError
    targets = batch_targets[:5] * 8  # enough that the workers cannot finish them all before the kill
    outs = [tmp_path / f"{i}-{t.stem}.jpg" for i, t in enumerate(targets)]
    got = []
    with BatchRunner(cifar_ingest[0], MatchOptions(grid="32"), RenderOptions(tile_px=8), BatchOptions(jobs=2)) as run:
        made = run.make(targets, outs)
        with pytest.raises(MosaicError) as e:
            for t, r in made:
                got.append(t)
                for p in multiprocessing.active_children():
                    os.kill(p.pid, signal.SIGKILL)
    assert type(e.value) is MosaicError and "--jobs" in str(e.value) and "\n" not in str(e.value)
    assert got and got == targets[:len(got)] and len(got) < len(targets)
    assert all(o.exists() for o in outs[:len(got)])
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("args, words", [
    (["--jobs", 0], ["--jobs"]),
    (["--jobs", 2, "--executor", "ray"], ["--jobs", "--executor local", "--actors"]),
    (["--jobs", 2, "--recursive", 1], ["--recursive", "--jobs"]),
    (["--jobs", 2, "--generate-worst", 2, "--generate-model", ".", "--generate-prompt", "x"],
     ["--generate-worst", "--jobs"]),
])
def test_cli_checks_jobs(synthetic_db, tmp_path, args, words):
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    res = invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "o.jpg", *args, code=2)
    assert all(w in res.stderr for w in words) and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "o.jpg").exists()


def test_jobs_refuse_another_maker():
    with pytest.raises(UsageError, match="--autoencoder.*--jobs"):
        BatchRunner("x.db", MatchOptions(), RenderOptions(), BatchOptions(jobs=2), maker=lambda db: None)


def test_a_batch_stopped_midway_stops_its_workers_and_leaves_no_temporaries(cifar_ingest, batch_targets, tmp_path):
    """Ctrl-C or an error in the caller: workers stop at once (SIGTERM), outputs are whole or
    absent, and nothing is left running."""
    import multiprocessing
    targets = batch_targets[:6]
    out = tmp_path / "out"
    out.mkdir()
    outs = [out / f"{t.stem}.png" for t in targets]
    with BatchRunner(cifar_ingest[0], MatchOptions(grid="32"), RenderOptions(tile_px=16), BatchOptions(jobs=2)) as run:
        made = run.make(targets, outs)
        first = next(made)
        made.close()  # what an exception in the caller's loop does
    assert not multiprocessing.active_children()
    assert first[0] == targets[0] and outs[0].exists()
    names = [p.name for p in out.iterdir()]
    assert not [n for n in names if n.startswith(".")], names
    assert len([n for n in names if n.endswith(".png")]) < len(targets)
    for p in out.glob("*.png"):
        Image.open(p).verify()


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("blocked", ["b.mosaic.json", "b.metrics.json", "b.jpg"])
def test_one_targets_blocked_output_name_stops_the_batch_before_any_target(synthetic_db, tmp_path, jobs, blocked):
    """A folder under the name of one target's output or sidecar is refused before any target
    runs; it was found only when that target's turn came, after the targets before it were made."""
    src = tmp_path / "t"
    src.mkdir()
    for i, name in enumerate("abc"):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(src / f"{name}.png")
    out = tmp_path / "out"
    (out / blocked).mkdir(parents=True)
    res = invoke_cli("make", "--db", synthetic_db.path, src, "--out", out, "--grid", 4, "--jobs", jobs, code=2)
    assert blocked in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert [p.name for p in out.iterdir()] == [blocked]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_link_under_an_output_name_is_replaced_not_written_through(synthetic_db, tmp_path, jobs):
    """With --jobs 2 the workers were given resolved paths: the mosaic went onto the file the
    link pointed to (sidecars beside it), the link stayed, and a link to another target's
    output lost that target's mosaic."""
    src = tmp_path / "t"
    src.mkdir()
    for i, name in enumerate("abc"):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(src / f"{name}.png")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.jpg").write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(victim / "precious.jpg")
    (out / "b.png").symlink_to("c.png")
    invoke_cli("make", "--db", synthetic_db.path, src, "--out", out, "--grid", 4, "--format", "png", "--jobs", jobs)
    assert (victim / "precious.jpg").read_bytes() == b"precious" and sorted(os.listdir(victim)) == ["precious.jpg"]
    for name in "abc":
        p = out / f"{name}.png"
        assert p.is_file() and not p.is_symlink() and (out / f"{name}.mosaic.json").is_file()
        assert json.loads((out / f"{name}.mosaic.json").read_text())["target"]["path"].endswith(f"{name}.png")


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("case", ["dzi files is a file", "dzi files is not ours", "long name"])
def test_other_blocked_outputs_stop_a_batch_before_any_target(synthetic_db, tmp_path, jobs, case):
    """A DeepZoom output's NAME_files that is not a DeepZoom folder, and a target name whose
    sidecars' temporary names are too long for the filesystem, were found when that target's
    turn came (the long name with an error naming the temporary)."""
    src = tmp_path / "t"
    src.mkdir()
    names = ["a", "b" + "m" * 221 if case == "long name" else "b", "c"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(src / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    fmt = "png" if case == "long name" else "dzi"
    if case == "dzi files is a file":
        (out / "b_files").write_text("x")
    elif case == "dzi files is not ours":
        (out / "b_files" / "junk").mkdir(parents=True)
    before = sorted(p.name for p in out.iterdir())
    res = invoke_cli("make", "--db", synthetic_db.path, src, "--out", out, "--grid", 4, "--format", fmt,
                     "--jobs", jobs, code=2)
    assert len(res.stderr.strip().splitlines()) == 1 and ".tmp" not in res.stderr, res.stderr
    assert ("too long" in res.stderr) if case == "long name" else ("b_files" in res.stderr)
    assert sorted(p.name for p in out.iterdir()) == before


def test_workers_start_ignoring_ctrl_c(cifar_ingest, batch_targets, tmp_path, monkeypatch):
    """Ctrl-C to the process group while the workers were still importing (their initializer,
    which ignores it, comes ~0.5 s later): each printed a KeyboardInterrupt traceback and died.
    Here SIGINT goes to each worker the moment it is started."""
    from mosaicdb import batch

    class Pool(batch.ProcessPoolExecutor):
        def submit(self, *a, **kw):
            fut = super().submit(*a, **kw)
            for p in list(self._processes.values()):
                if p.pid not in seen:
                    seen.add(p.pid)
                    os.kill(p.pid, signal.SIGINT)
            return fut

    seen: set = set()
    monkeypatch.setattr(batch, "ProcessPoolExecutor", Pool)
    targets = [t for t in batch_targets if t.suffix == ".png" and t.stem.startswith("k")][:3]
    out = tmp_path / "out"
    out.mkdir()
    # Ctrl-C handled as in a terminal (a shell's background job, as CI may run us, starts with
    # it ignored, which the workers would inherit with or without the fix)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with BatchRunner(cifar_ingest[0], MatchOptions(grid="16"), RenderOptions(tile_px=8),
                         BatchOptions(jobs=2)) as run:
            made = list(run.make(targets, [out / f"{t.stem}.png" for t in targets]))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the driver's own, back
    finally:
        signal.signal(signal.SIGINT, old)
    assert len(seen) == 2 and all(not isinstance(r, Exception) for _, r in made), made


@pytest.mark.parametrize("name", ["x" * 240, "é" * 120])  # 240 bytes either way
def test_a_single_output_name_too_long_for_its_temporary_is_refused_first(synthetic_db, tmp_path, name):
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    res = invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / f"{name}.png", code=2)
    assert "its name is too long" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.png"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_replaced_link_records_the_path_written_and_the_same_make_runs_again(synthetic_db, tmp_path, jobs):
    """The assignment recorded the link's old target as its output (resolved): the same
    command run again was refused ("m.mosaic.json is the assignment of keep.png"), and so was
    rendering to keep.png."""
    t = tmp_path / "t.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(t)
    (tmp_path / "keep.png").write_bytes(b"keep")
    (tmp_path / "m.png").symlink_to("keep.png")
    for _ in range(2):
        invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "m.png", "--grid", 4, "--jobs", jobs)
        meta = json.loads((tmp_path / "m.mosaic.json").read_text())
        assert meta["output"] == str(tmp_path / "m.png") and (tmp_path / "keep.png").read_bytes() == b"keep"
    invoke_cli("render", tmp_path / "m.mosaic.json", "--out", tmp_path / "keep.png")


@pytest.mark.parametrize("command", ["make", "render"])
def test_a_sidecar_name_itself_too_long_is_the_usage_error_not_a_stat_failure(synthetic_db, tmp_path, command):
    """244-251 bytes: OUT itself fits, OUT.mosaic.json does not even without a temporary (a
    stat in the check against the inputs failed first: exit 1, "File name too long"); render
    had no early check at all (its error named the temporary)."""
    t = tmp_path / "t.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t)
    invoke_cli("make", "--db", synthetic_db.path, t, "--out", tmp_path / "m.png", "--grid", 4)
    out = tmp_path / ("y" * 247 + ".png")
    args = (["make", "--db", synthetic_db.path, t] if command == "make" else ["render", tmp_path / "m.mosaic.json"])
    res = invoke_cli(*args, "--out", out, code=2)
    assert "too long" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("y", ".y"))]
