"""Where a batch of `make` targets runs: `local` (one `Maker` in this process, or with `jobs` > 1
that many worker processes on this machine) or `ray` (Ray actors; local Ray or a cluster).
Worker processes and Ray actors each open the database read-only (its rows memory-mapped, so
the page cache is shared) and load its index once, then make the targets they are handed.

Worker processes share the machine's cores: each searches with cores / jobs FAISS, BLAS and
numba threads (render threads stay --workers: the assignment records them), so the stages that
run on one thread (rendering, encoding, evaluation, the assignment) overlap with another
target's search. 100 targets at 128 cells against a million tiles on 2 cores: 71.0 s in one
process, 50.5-55.9 s with `jobs=2` (README, bench_many).

All executors yield (target, MakeResult or the ImageError/MatchError it failed with) in the
order of the targets, and write the same files: matching and rendering do not depend on the
process they run in. Ray actors write their outputs themselves, so on a cluster the database
and the output folder must be at the same path on every node (shared storage, or the database
copied to each node at that path).

>>> opts = BatchOptions(executor="ray", ray_cpus=2)               # doctest: +SKIP
>>> with BatchRunner("tiles.db", MatchOptions(grid="128"), RenderOptions(), opts) as run:  # doctest: +SKIP
...     results = dict(run.make(targets, outs))   # target -> MakeResult (or its error)
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from . import assignment as asg
from .errors import DatabaseError, ImageError, MatchError, MosaicError, UsageError, check_int, choice
from .generate import deps
from .generate.executors import _mosaic_cause, init_ray
from .io import refuse_inside, unwind
from .make import Maker, check_batch, make_batch
from .match.options import MatchOptions
from .progress import lower_level_names, progress_bar, use_thread_lock
from .render.options import RenderOptions
from .store import TileDB

log = logging.getLogger(__name__)

EXECUTORS = {"local": "local", "ray": "ray"}
FORWARDED_ENV = ("SOURCE_DATE_EPOCH",)   # what makes outputs reproducible must reach the actors


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """executor: local or ray; jobs: with local, targets made at once by that many worker
    processes (1: in this process); ray_address: join this Ray cluster (else a local instance with
    ray_cpus CPUs, default all); actors: how many (default: the cluster's CPUs divided by
    cpus_per_actor, at most one per target); cpus_per_actor: Ray CPUs each actor reserves (its
    render/encode threads are still --workers, the node's CPU count by default)."""
    executor: str = "local"
    ray_address: str | None = None
    ray_cpus: int | None = None
    actors: int | None = None
    cpus_per_actor: int = 1
    jobs: int = 1

    def __post_init__(self):
        choice("--executor", self.executor, EXECUTORS)
        check_int("--jobs", self.jobs, 1, 1024)
        if self.jobs > 1 and self.executor != "local":
            raise UsageError("--jobs is for --executor local (worker processes on this machine); Ray takes --actors")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise UsageError("--ray-address takes a Ray address, e.g. auto or ray://head:10001")
        if self.ray_cpus is not None:
            check_int("--ray-cpus", self.ray_cpus, 1, 4096)
        if self.actors is not None:
            check_int("--actors", self.actors, 1, 4096)
        check_int("--cpus-per-actor", self.cpus_per_actor, 1, 1024)
        if self.executor == "local" and (self.ray_address or self.ray_cpus or self.actors):
            raise UsageError("--ray-address, --ray-cpus and --actors need --executor ray")

    def check_generation(self, asked: bool) -> None:
        """Generated cells (`make --generate-worst`) run locally only."""
        if asked and self.executor != "local":
            raise UsageError("--generate-worst/--generate-above run with --executor local only (each Ray actor "
                             "would load the diffusion model): drop one of them")
        if asked and self.jobs > 1:
            raise UsageError("--generate-worst/--generate-above run in this process only (the diffusion model "
                             "loaded once): drop --jobs")


class BatchRunner:
    """Opens what a batch needs once (`with BatchRunner(...) as run:`), then `run.make(targets,
    outs)`. Errors in the database or options surface on entry, before any output exists.
    `maker(db)` builds another maker than the plain `Maker` (the autoencoder's, or one for
    recursive mosaics), on the local executor only; `maker_option` names it in that refusal."""

    def __init__(self, db_path, match_opts: MatchOptions, render_opts: RenderOptions,
                 options: BatchOptions = BatchOptions(), *, progress: bool = False, hybrid=None, maker=None,
                 maker_option: str | None = None):
        if not isinstance(options, BatchOptions):
            raise UsageError(f"BatchRunner(options=...) takes a BatchOptions, got {type(options).__name__}")
        options.check_generation(hybrid is not None)
        if maker is not None and options.executor != "local":
            raise UsageError(f"{maker_option or '--autoencoder'} runs with --executor local only: drop one of them")
        if options.jobs > 1 and maker is not None:  # generated cells: refused by check_generation
            raise UsageError(f"{maker_option or '--autoencoder'} runs in this process only (one model loaded once): "
                             "drop --jobs")
        self.db_path = Path(db_path).resolve()
        self.mopts, self.ropts, self.options = match_opts, render_opts, options
        self.progress, self.hybrid = progress, hybrid
        self._make_maker = maker  # db -> an object with .make(target, out) (e.g. AutoMaker), local only
        self._db = self._maker = None
        self._ray = None
        self._ray_started = False
        self._jobs = 0  # worker processes (when jobs > 1), started by make()

    def __enter__(self) -> "BatchRunner":
        try:
            self._db = _open_for_make(self.db_path)
            # the index is brought up to date here, once: actors open the database read-only
            if self._make_maker is not None:
                self._maker = self._make_maker(self._db)
            else:
                self._maker = Maker(self._db, self.mopts, self.ropts, progress=self.progress, hybrid=self.hybrid)
            if self.options.executor == "ray" or self.options.jobs > 1:
                self.mopts = self._maker.mopts  # the grid resolved from a print size, as local does
                self._db.close()
                self._db = self._maker = None
                self._jobs = self.options.jobs if self.options.executor == "local" else 0
            if self.options.executor == "ray":
                self._ray = deps.ray()
                self._ray_started = init_ray(self._ray, self.options.ray_address, self.options.ray_cpus)
                self._check_actor_fits()
        except BaseException:
            self.close()
            raise
        return self

    def _check_actor_fits(self) -> None:
        """An actor that reserves more CPUs than any node has is never scheduled: Ray waits for
        it forever (seen: `--ray-cpus 1 --cpus-per-actor 4` hung)."""
        per = self.options.cpus_per_actor
        biggest = max((n.get("Resources", {}).get("CPU", 0) for n in self._ray.nodes() if n.get("Alive")), default=0)
        if per > biggest:
            raise UsageError(f"--cpus-per-actor {per}: no Ray node has that many CPUs (the largest has "
                             f"{int(biggest)}): lower --cpus-per-actor" +
                             ("" if self.options.ray_address else " or raise --ray-cpus"))

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = self._maker = None
        if self._ray_started and self._ray.is_initialized():
            self._ray.shutdown()
        self._ray_started = False

    def make(self, targets, outs):
        """An iterator of (target, MakeResult or ImageError/MatchError) per target, in order; a
        target that fails to read or match does not stop the others (unless it is the only one).
        The outputs are checked here, before the first target runs."""
        targets, outs = [Path(t) for t in targets], [Path(o) for o in outs]
        if len(targets) != len(outs):
            raise UsageError(f"{len(targets)} targets but {len(outs)} output paths")
        refuse_inside(outs, self.db_path)
        return self._results(targets, outs)

    def _results(self, targets: list[Path], outs: list[Path]):
        if self._maker is not None:
            yield from make_batch(self._maker, targets, outs)
            return
        if self._jobs:
            check_batch(targets, outs)
            yield from self._make_in_processes(targets, outs)
            return
        if self._ray is None:
            raise UsageError("BatchRunner.make is called inside `with BatchRunner(...) as run:`")
        check_batch(targets, outs)
        yield from self._make_on_ray(targets, outs)

    def _make_on_ray(self, targets: list[Path], outs: list[Path]):
        ray = self._ray
        per = self.options.cpus_per_actor
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(self.options.actors or max(1, cpus // per), len(targets)))
        actor_cls = ray.remote(num_cpus=per)(_MakerActor)
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if env:  # a cluster's workers do not inherit the driver's environment
            actor_cls = actor_cls.options(runtime_env={"env_vars": env})
        actors = [actor_cls.remote(str(self.db_path), self.mopts, self.ropts) for _ in range(n)]
        log.info("making %d targets on %d Ray actors (%d CPU each)", len(targets), n, per)
        # absolute paths: an actor's working folder is not ours
        jobs = [(str(t.resolve()), asg.output_record(o)) for t, o in zip(targets, outs)]
        pool = ray.util.ActorPool(actors)
        bar = progress_bar(self.progress, len(jobs), "make", unit="target")
        try:
            for (t, _), (kind, value) in zip(jobs, pool.map(lambda a, job: a.make.remote(*job), jobs)):
                bar.update(1)
                if kind == "error" and len(targets) == 1:
                    raise value
                yield Path(t), value
        except Exception as e:
            # Ray re-raises an actor's error as a subclass of it whose message holds the remote traceback
            cause = _mosaic_cause(getattr(e, "cause", None) or e)
            if cause is not None:
                raise cause from None
            raise
        finally:
            bar.close()
            for a in actors:
                ray.kill(a)
            _drain(pool)

    def _make_in_processes(self, targets: list[Path], outs: list[Path]):
        n = min(self._jobs, len(targets))
        threads = max(1, (os.cpu_count() or 1) // n)
        root = logging.getLogger()
        fmt = root.handlers[0].formatter._fmt if root.handlers and root.handlers[0].formatter else None
        log.info("making %d targets in %d worker processes (%d threads each)", len(targets), n, threads)
        # spawn, not fork: FAISS's and numba's thread pools do not survive a fork
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                   initargs=(str(self.db_path), self.mopts, self.ropts, threads,
                                             root.getEffectiveLevel(), fmt))
        bar = progress_bar(self.progress, len(targets), "make", unit="target")
        done = False
        try:
            try:
                with _starting_workers():  # (submit starts them)
                    futures = [pool.submit(_make_in_worker, str(t.resolve()), asg.output_record(o))
                               for t, o in zip(targets, outs)]
            except BrokenProcessPool:  # one died at once (killed, or out of memory)
                raise MosaicError(f"a worker process of --jobs {n} died as it started (killed, or out of "
                                  "memory?): run again with fewer --jobs") from None
            for t, f in zip(targets, futures):
                try:
                    kind, value = f.result()
                except BrokenProcessPool:
                    raise MosaicError(f"a worker process of --jobs {n} died while making {t} (killed, or out of "
                                      "memory?): run again with fewer --jobs") from None
                bar.update(1)
                if kind == "error" and len(targets) == 1:
                    raise value
                yield t, value
            done = True
        finally:
            bar.close()
            _stop(pool, done)


@contextmanager
def _starting_workers():
    """While worker processes start: SIGINT ignored, so that they start ignoring it (spawned
    children keep an ignored SIGINT, and Python then leaves it so; their initializer only
    comes after ~0.5 s of imports, where a Ctrl-C to the process group printed each one's
    KeyboardInterrupt traceback); SIGTERM held until they are started (arriving while a worker
    was being handed its start-up data, it cut that short, and the worker printed an EOFError
    traceback). A Ctrl-C in these few milliseconds is lost; a SIGTERM is delivered after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if old_int is None else old_int)  # (None: not set from Python)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old_term is None else old_term)
        if held:
            os.kill(os.getpid(), held[0])


def _stop(pool: ProcessPoolExecutor, done: bool) -> None:
    """Shut the workers down: at the end of the batch, when they are idle; otherwise (an error,
    Ctrl-C, the caller stopped iterating) at once, SIGTERM, each removing the temporaries of the
    output it was writing (io.write_atomic) before it exits."""
    if done:
        pool.shutdown(wait=True)
        return
    # ProcessPoolExecutor.terminate_workers() is Python 3.14's; before it, its processes. The
    # pool's own thread then finds them gone, fails what is pending and closes its queues, and
    # shutdown waits for that (it also reaps them: joining them here too would race it)
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


_WORKER: "_MakerActor | None" = None


def _start_worker(db_path: str, mopts: MatchOptions, ropts: RenderOptions, threads: int, level: int,
                  fmt: str | None) -> None:
    """A worker process of `jobs` > 1: its share of the cores, the driver's log level, and the
    database opened once. Ctrl-C is the driver's to handle: it stops handing out targets."""
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if fmt:  # the driver's log format, and its level names ("warning: ..." from the CLI)
        lower_level_names()
    logging.basicConfig(level=level, **({"format": fmt} if fmt else {}))
    import cv2
    import faiss
    import numba
    import threadpoolctl

    from .index import scan  # noqa: F401  (loads the BLAS its numba kernels call)
    # every BLAS and OpenMP pool loaded (FAISS's, numpy's, scipy's, OpenCV's), numba's and OpenCV's own
    threadpoolctl.threadpool_limits(threads)
    faiss.omp_set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    cv2.setNumThreads(threads)
    use_thread_lock()  # tqdm's default lock would outlive a stopped worker (progress.py)
    # a driver killed outright (SIGKILL) cannot stop its workers: they stop when it is gone
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _WORKER = _MakerActor(db_path, mopts, ropts)


_BUSY = False


def _exit_with(parent) -> None:
    parent.join()
    os.kill(os.getpid(), signal.SIGTERM)  # as if the driver had stopped us: temporaries removed


def _on_sigterm(signum, frame):
    """The driver stops the batch: a worker making a target unwinds (write_atomic removes its
    temporary) and exits; an idle one exits at once."""
    if not _BUSY:
        os._exit(128 + signum)
    unwind(signum)


def _make_in_worker(target: str, out: str):
    global _BUSY
    _BUSY = True
    try:
        return _WORKER.make(target, out)
    except SystemExit:  # SIGTERM: the pool's loop would report it and take the next target
        os._exit(128 + signal.SIGTERM)
    finally:
        _BUSY = False


def _drain(pool) -> None:
    """Collect what killed actors left pending: an uncollected failed task is logged as an
    "unhandled error" when Ray drops it."""
    while pool.has_next():
        try:
            pool.get_next_unordered()
        except Exception:  # noqa: BLE001 - actors killed on purpose, or the error already raised
            pass


def _open_for_make(path: Path) -> TileDB:
    """The database, writable so that an outdated index can be brought up to date; read-only
    when it cannot be written (a read-only mount, another user's files): matching only reads,
    and an outdated index is then an error that names `mosaic db index` (it said "not a
    readable catalog" of a catalog that could be read)."""
    try:
        return TileDB.open(path)
    except DatabaseError:
        if _writable(path):
            raise
        return TileDB.open(path, readonly=True)


_writable = TileDB.writable


class _MakerActor:
    """One Ray actor: the database (memory-mapped rows) and its index opened once, a Maker
    reused for every target it is handed."""

    def __init__(self, db_path: str, mopts: MatchOptions, ropts: RenderOptions):
        # an error here would reach the driver as a bare ActorDiedError: keep it for the first task
        self.failed: MosaicError | None = None
        try:
            self.db = TileDB.open(db_path, readonly=True)
            self.maker = Maker(self.db, mopts, ropts)
        except MosaicError as e:
            self.failed = e

    def make(self, target: str, out: str):
        if self.failed is not None:
            raise self.failed
        try:
            r = self.maker.make(target, out)
        except (ImageError, MatchError) as e:
            return "error", e
        return "ok", replace(r, saved=None, image=None)  # the driver needs the summary, not the arrays
