"""scripts/: building a pool from the shared sheets, running every benchmark, and the GPU check
that stops at once, saying why, on a machine without a GPU."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    import faiss
    return faiss.get_num_gpus() > 0


@pytest.mark.slow
@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: run scripts/gpu_check.sh for real")
def test_gpu_check_fails_fast_without_a_gpu():
    env = dict(os.environ, PYTHON=sys.executable)
    t = time.perf_counter()
    res = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=300)
    took = time.perf_counter() - t
    assert res.returncode == 1, res.stdout + res.stderr
    assert "gpu_check: no GPU to check on this machine" in res.stderr
    assert re.search(r"nvidia-smi finds no NVIDIA GPU|faiss sees 0 GPUs", res.stderr)
    assert res.stdout == "" and "Traceback" not in res.stderr  # nothing started
    assert took < 120  # imports faiss and torch once; under a heavy load that is the whole cost
    bad = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --nope" in bad.stderr


def test_run_benchmarks_covers_every_benchmark():
    res = subprocess.run(["bash", str(SCRIPTS / "run_benchmarks.sh"), "--dry-run", "--quick"],
                         capture_output=True, text=True, cwd="/", env=dict(os.environ, PYTHON="python3"))
    assert res.returncode == 0, res.stderr
    planned = re.findall(r"^== (bench_\w+): python3 benchmarks/\1\.py --out benchmarks/results/quick/\1\.json (.+)$",
                         res.stdout, re.M)
    assert sorted(n for n, _ in planned) == sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    assert all(args.strip() for _, args in planned)  # each has its quick arguments
    one = subprocess.run(["bash", str(SCRIPTS / "run_benchmarks.sh"), "--dry-run", "bench_print"],
                         capture_output=True, text=True)
    assert one.stdout.count("==") == 1 and "results/bench_print.json" in one.stdout and "--scale" not in one.stdout
    bad = subprocess.run(["bash", str(SCRIPTS / "run_benchmarks.sh"), "--fast"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr


@pytest.mark.slow
def test_prepare_pool(shared_data, cifar_tiles, tmp_path):
    db, tiles = tmp_path / "pool.db", tmp_path / "cut"
    cmd = [sys.executable, str(SCRIPTS / "prepare_pool.py"), db, "--data", shared_data, "--cifar", "150",
           "--tiles-dir", tiles, "--workers", "2", "-q"]
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    files = sorted(tiles.iterdir())
    assert [f.name for f in files] == [f"c{i:05d}.png" for i in range(150)]
    np.testing.assert_array_equal(np.asarray(Image.open(files[77])), cifar_tiles[77])
    added = int(re.search(r"(\d+) added", res.stdout)[1])
    total = int(re.search(r"(\d+) tiles in all", res.stdout)[1])
    assert added == total and 150 + 3900 <= total <= 150 + 3926  # CIFAR + the emoji (exact duplicates once)
    again = subprocess.run([str(c) for c in cmd[:-1]] + ["--no-emoji", "-q"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 added" in again.stdout and f"{total} tiles in all" in again.stdout
