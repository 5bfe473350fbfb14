"""Shared helpers for the benchmarks (not tests): data location, CIFAR-10 sheets -> PNG files,
peak RSS, sizes on disk, isolated phases, JSON results with machine info.

Benchmarks report only what they measure and compare against a baseline measured in the
same run. They need the shared real-image folder (`../shared/data` next to the repository).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import multiprocessing as mp

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"

CIFAR_SHEETS = 5
CIFAR_PER_SHEET = 10_000
CIFAR_SIDE = 32


# ---- data ------------------------------------------------------------------------------------
def data_dir(arg: str | None) -> Path:
    """The shared data folder, or exit with a clear message when it (or the CIFAR sheets) is absent."""
    d = Path(arg) if arg else DEFAULT_DATA
    missing = [f"tiles/cifar10_train_{k}.png" for k in range(1, CIFAR_SHEETS + 1)
               if not (d / "tiles" / f"cifar10_train_{k}.png").is_file()]
    if not d.is_dir() or missing:
        what = "does not exist" if not d.is_dir() else f"lacks {', '.join(missing)}"
        sys.exit(f"benchmark needs the shared real-image data: {d} {what}.\n"
                 f"Point --data at the shared/data folder (see shared/data/README.md).")
    return d


def load_sheet(path: Path) -> np.ndarray:
    """One CIFAR sheet -> (10000, 32, 32, 3) uint8 in meta order (see shared/data/README.md)."""
    from PIL import Image
    a = np.asarray(Image.open(path).convert("RGB"))
    s = CIFAR_SIDE
    return a.reshape(100, s, 100, s, 3).swapaxes(1, 2).reshape(-1, s, s, 3)


def _unpack_sheet(args) -> list[str]:
    from PIL import Image
    sheet_path, dest, sheet_no, count = args
    tiles = load_sheet(Path(sheet_path))[:count]
    folder = Path(dest) / f"sheet{sheet_no}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, t in enumerate(tiles):
        p = folder / f"{i:05d}.png"
        Image.fromarray(t).save(p, format="PNG")  # Pillow defaults (zlib level 6), like a typical PNG
        out.append(str(p))
    return out


def unpack_cifar(data: Path, dest: Path, limit: int | None = None, workers: int | None = None) -> list[str]:
    """Write the first `limit` (default all 50,000) CIFAR-10 tiles as individual 32x32 PNG files
    under dest/sheet<k>/<i>.png; returns their paths in sheet order (= meta order)."""
    total = CIFAR_SHEETS * CIFAR_PER_SHEET
    limit = total if limit is None else max(0, min(int(limit), total))
    jobs = []
    for k in range(1, CIFAR_SHEETS + 1):
        n = min(CIFAR_PER_SHEET, limit - (k - 1) * CIFAR_PER_SHEET)
        if n > 0:
            jobs.append((str(data / "tiles" / f"cifar10_train_{k}.png"), str(dest), k, n))
    workers = workers or os.cpu_count() or 1
    # Run in child processes so the parent's peak RSS is not inflated by the decoded sheets.
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs))), mp_context=mp.get_context("spawn")) as ex:
        return [p for part in ex.map(_unpack_sheet, jobs) for p in part]


# ---- measuring -----------------------------------------------------------------------------
def peak_rss_mb() -> dict:
    """Peak resident set size (MB) of this process and of its largest waited-for child."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KB on Linux
    return {"self_mb": round(self_kb * scale, 1), "largest_child_mb": round(child_kb * scale, 1)}


def vm_hwm_mb() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss would include the parent's peak, which
    Linux carries across fork+exec."""
    with open("/proc/self/status") as f:
        return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024, 1)


class TreeMemory:
    """Peak memory of this process and its descendants together (worker processes), sampled
    every `every` s on a thread: the peak of the summed RSS (shared pages, e.g. a memory-mapped
    database, count once per process: an upper bound) and of the summed PSS (shared pages split
    between the processes that map them: what the tree really holds).

    >>> with TreeMemory() as mem:                                   # doctest: +SKIP
    ...     work()
    >>> mem.peak                                                    # doctest: +SKIP
    {'rss_sum_mb': 1510.2, 'pss_sum_mb': 1490.7, 'processes': 3}
    """

    def __init__(self, every: float = 0.25):
        import threading
        self.every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = {"rss_sum_mb": 0.0, "pss_sum_mb": 0.0, "processes": 0}

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    @staticmethod
    def _tree() -> list[int]:
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def _sample(self) -> None:
        rss = pss = 0.0
        n = 0
        for pid in self._tree():
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
            except (OSError, ValueError):
                continue
            rss += int(fields["Rss"].split()[0]) / 1024
            pss += int(fields["Pss"].split()[0]) / 1024
            n += 1
        if rss > self.peak["rss_sum_mb"]:
            self.peak = {"rss_sum_mb": round(rss, 1), "pss_sum_mb": round(pss, 1), "processes": n}
        self.peak["pss_sum_mb"] = max(self.peak["pss_sum_mb"], round(pss, 1))


def cpu_seconds() -> dict:
    """User+system CPU seconds of this process and of its waited-for children so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": me.ru_utime + me.ru_stime, "children": ch.ru_utime + ch.ru_stime}


def cpu_since(start: dict) -> dict:
    now = cpu_seconds()
    d = {k: round(now[k] - start[k], 3) for k in now}
    d["total"] = round(d["self"] + d["children"], 3)
    return d


def best_of(fn, repeat: int):
    """(wall s, CPU s, result) of the fastest of `repeat` calls of fn()."""
    best = None
    for _ in range(max(1, repeat)):
        c0, t0 = cpu_seconds(), time.perf_counter()
        out = fn()
        w, c = time.perf_counter() - t0, cpu_since(c0)["self"]
        if best is None or w < best[0]:
            best = (w, c, out)
    return best


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine makes wall times noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_isolated(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) in a fresh (spawned) process and return its result, so that the
    phase's peak RSS (fn should include `peak_rss_mb()` in its result) covers only that phase."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args, **kwargs).result()


def disk_usage(path: Path) -> dict:
    """Apparent bytes (file sizes) and allocated bytes (st_blocks, what `du` reports) and files."""
    path = Path(path)
    if not path.exists():
        return {"bytes": 0, "allocated_bytes": 0, "files": 0}
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    apparent = allocated = 0
    for f in files:
        st = f.stat()
        apparent += st.st_size
        allocated += st.st_blocks * 512
    return {"bytes": apparent, "allocated_bytes": allocated, "files": len(files)}


def mb(n_bytes: float) -> float:
    return round(n_bytes / 1e6, 2)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        self.seconds = None
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


# ---- results -----------------------------------------------------------------------------------
def machine_info() -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import faiss
        info["faiss"] = faiss.__version__
        info["faiss_omp_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        info["faiss"] = None
    try:
        import PIL
        info["pillow"] = PIL.__version__
    except ImportError:
        pass
    try:
        import subprocess
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_head"] = rev or None
    except Exception:
        info["git_head"] = None
    return info


def default_out(name: str) -> Path:
    return RESULTS / f"{name}.json"


def write_results(out: Path, name: str, results: dict) -> Path:
    """Write {benchmark, machine, **results} as indented JSON (atomically) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine_info(), **results}
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, out)
    return out


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
