"""Where batches run: `local` (this process) or `ray` (Ray Data feeding batches to an actor
pool, one pipeline per actor, `num_gpus=1` per actor on GPUs). Both take the same list of
batches and yield the same per-job results (in any order); the caller is the single writer.

Each batch stays one unit end to end (Ray Data calls an actor with exactly one batch), so a
job is always generated together with the same batch mates: the pixels do not depend on the
executor (same device, dtype and torch threads).
"""
from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import replace

from ..errors import MosaicError, UsageError, choice
from . import deps
from .worker import Job, TileWorker, WorkerSpec

log = logging.getLogger(__name__)


class LocalExecutor:
    name = "local"

    def __init__(self, **_):
        self._worker: TileWorker | None = None

    def gpus(self) -> int | None:
        return None  # local torch decides

    def prepare(self, spec: WorkerSpec) -> WorkerSpec:
        if spec.pipeline.threads:
            return spec
        torch = deps.torch()
        return replace(spec, pipeline=replace(spec.pipeline, threads=int(torch.get_num_threads())))

    def run(self, spec: WorkerSpec, batches: list[list[Job]]):
        if self._worker is None or self._worker.spec != spec:
            self._worker = TileWorker(spec)
        for batch in batches:
            yield from self._worker(batch)

    def close(self) -> None:
        self._worker = None


class _RayTileWorker:
    """The actor class Ray Data instantiates: one TileWorker (one pipeline) per actor."""

    def __init__(self, spec: WorkerSpec):
        self.worker = TileWorker(spec)
        self.worker.generator()

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        results, pngs = [], []
        for text in batch["jobs"]:
            for r in self.worker([Job.from_json(j) for j in json.loads(str(text))]):
                pngs.append(r.pop("png") or b"")
                results.append(json.dumps(r))
        return {"result": np.array(results, dtype=object), "png": np.array(pngs, dtype=object)}


def _bound_worker_class(spec: WorkerSpec):
    """The actor class with `spec` bound in: pickled with the class rather than passed as
    constructor arguments (which Ray keeps in the object store and warns about)."""
    class RayTileWorker(_RayTileWorker):
        def __init__(self):
            super().__init__(spec)
    return RayTileWorker


def init_ray(ray, ray_address: str | None, ray_cpus: int | None) -> bool:
    """Join the cluster at `ray_address`, or start a local instance of `ray_cpus` CPUs (all by
    default), unless Ray is already up. True when this call started it (the caller shuts it down)."""
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if ray_address:
        probe_ray_address(ray_address)
    try:
        if ray_address:
            ray.init(address=ray_address, **kw)
        else:
            ray.init(num_cpus=ray_cpus or os.cpu_count() or 1, **kw)
    except ConnectionError as e:
        raise UsageError(f"--ray-address {ray_address}: cannot join the Ray cluster ({e})") from None
    return True


def probe_ray_address(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must accept a connection: Ray retries an
    unreachable one for minutes (seen: `--ray-address foo:1` still waiting after 120 s)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", "local" and the like: Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise UsageError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); check the "
                         "head node's address and port, or use auto on a cluster node") from None


class RayExecutor:
    name = "ray"

    def __init__(self, *, ray_address: str | None = None, ray_cpus: int | None = None,
                 workers: int | None = None, **_):
        self.ray = deps.ray()
        self.workers = workers
        self._started = init_ray(self.ray, ray_address, ray_cpus)
        if not logging.getLogger().isEnabledFor(logging.DEBUG):  # Ray Data logs every execution at INFO
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = self.ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own bar counts tiles
        ctx.verbose_progress = False

    def gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    def _cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def prepare(self, spec: WorkerSpec) -> WorkerSpec:
        if spec.pipeline.device.startswith("cuda") or spec.pipeline.threads:
            return spec
        # a CPU actor gets one CPU unless --threads says otherwise; record the number used
        return replace(spec, pipeline=replace(spec.pipeline, threads=1))

    def run(self, spec: WorkerSpec, batches: list[list[Job]]):
        if not batches:
            return
        ray = self.ray
        gpu = spec.pipeline.device.startswith("cuda")
        if gpu:
            actors = self.workers or max(1, self.gpus())
            res = {"num_gpus": 1, "num_cpus": 1}
            # each actor sees one GPU as cuda:0
            spec = replace(spec, pipeline=replace(spec.pipeline, device="cuda"))
        else:
            per = max(1, spec.pipeline.threads)
            actors = self.workers or max(1, self._cpus() // per)
            res = {"num_cpus": per}
        actors = max(1, min(actors, len(batches)))
        items = [{"jobs": json.dumps([j.to_json() for j in b])} for b in batches]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        out = ds.map_batches(_bound_worker_class(spec), batch_size=1,
                             compute=ray.data.ActorPoolStrategy(size=actors), batch_format="numpy", **res)
        try:
            for row in out.iter_rows():
                r = json.loads(str(row["result"]))
                png = row["png"]
                r["png"] = bytes(png) if png is not None and len(png) else None
                yield r
        except Exception as e:
            cause = _mosaic_cause(e)
            if cause is not None:
                raise cause from None
            raise

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


def _mosaic_cause(e: BaseException) -> MosaicError | None:
    """A MosaicError raised inside an actor arrives wrapped (RayTaskError, UserCodeException)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, MosaicError):
            return e
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, **kw):
    return choice("--executor", name, EXECUTORS)(**kw)
