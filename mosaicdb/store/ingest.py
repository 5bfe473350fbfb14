"""Ingest: sources (folders, files, zip/tar archives) -> decoded tiles -> catalog + arrays.

Workers are picklable functions `chunk -> ChunkResult` run in a process pool; the parent is
the only writer. Per chunk it writes the array rows first and commits the catalog after, so a
kill at any moment leaves a consistent database and a rerun picks up where it stopped.

Untrusted input: only regular files are read (FIFOs, devices and sockets are skipped; symlinks
are resolved, and for --link must stay inside the folder given), every file and archive member
is bounded in size before and while it is read, decoding is bounded in memory, and a worker
that dies on a file (out of memory, a crashing decoder) costs that file, not the run.
"""
from __future__ import annotations

import bz2
import collections
import gzip
import hashlib
import lzma
import multiprocessing as mp
import os
import stat
import tarfile
import time
import zipfile
import zlib
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageError, UsageError
from ..io import UnsafeFile, read_regular_file, unwind, write_atomic
from ..units import human_bytes
from .catalog import text as catalog_text
from .decode import DecodeOptions, make_thumbnails, open_image, tile_features

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp"}


@dataclass(frozen=True)
class Source:
    key: str          # unique name: the absolute path, or "archive!member"
    kind: str         # file | zip | tar | bytes
    path: str         # the file or archive on disk
    member: str = ""
    size: int = 0
    mtime_ns: int = 0
    root: str = ""    # the folder given on the command line (--link: files must stay inside it)


@dataclass(frozen=True)
class WorkerConfig:
    db_path: str
    link: bool
    thumb_sizes: tuple[int, ...]
    features: object  # a mosaicdb.feature_kinds spec (frozen, picklable)
    decode: DecodeOptions


@dataclass
class ChunkResult:
    ok: list = field(default_factory=list)        # (Source, hash, blob, w, h, fmt, provenance)
    thumbs: list = field(default_factory=list)    # per size: (n_ok, s, s, 3) uint8
    features: np.ndarray | None = None            # (n_ok, D) float32
    errors: list = field(default_factory=list)    # (Source, reason)


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def enumerate_sources(paths, exclude: Path | None = None):
    """Yield Source for every file under `paths` (folders recursively, in sorted order; dot
    files skipped) and every member of zip/tar archives. Missing paths raise UsageError."""
    for p in paths:
        if not os.path.lexists(p):
            raise UsageError(f"source {p} does not exist: give an image file, folder, zip or tar archive")
    excl = str(exclude.resolve()) + os.sep if exclude else None
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                if excl and (root + os.sep).startswith(excl):
                    dirs[:] = []
                    continue
                for name in sorted(files):
                    if not name.startswith("."):
                        yield from _file_sources(os.path.join(root, name), p)
        else:
            yield from _file_sources(p, os.path.dirname(p))


def _file_sources(path: str, root: str):
    key = catalog_text(path)
    try:
        st = os.stat(path)  # follows symlinks: what would be read
    except OSError as e:
        yield Source(key, "file", path, "", -1, -1, root), f"unreadable: {e.strerror}"
        return
    if not stat.S_ISREG(st.st_mode):
        what = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a file")
        yield Source(key, "file", path, "", -1, -1, root), f"skipped: {what}, not a regular file"
        return
    if is_archive(path):
        yield from _archive_sources(path, st, root)
    else:
        yield Source(key, "file", path, "", st.st_size, st.st_mtime_ns, root), None


def _archive_sources(path: str, st, root: str):
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    if not info.is_dir() and not os.path.basename(info.filename).startswith("."):
                        yield Source(catalog_text(f"{path}!{info.filename}"), "zip", path, info.filename,
                                     info.file_size, st.st_mtime_ns, root), None
        else:
            with tarfile.open(path, "r:*") as t:
                for m in t:
                    if os.path.basename(m.name).startswith(".") or m.isdir():
                        continue
                    key = catalog_text(f"{path}!{m.name}")
                    if not m.isfile():
                        yield (Source(key, "tar", path, m.name, -1, st.st_mtime_ns, root),
                               f"skipped: {_tar_kind(m)} in the archive, not a regular file")
                        continue
                    yield Source(key, "tar", path, m.name, m.size, st.st_mtime_ns, root), None
                    if m.size > DecodeOptions.max_bytes and _compressed(t):
                        # reaching the next header means decompressing all of this member (a
                        # small .tar.gz can declare gigabytes of zeros): stop here
                        yield (Source(catalog_text(path), "file", path, "", st.st_size, st.st_mtime_ns, root),
                               f"skipped the members after {catalog_text(m.name)}: it is over the "
                               f"{human_bytes(DecodeOptions.max_bytes)} limit and this compressed archive can only "
                               "be read past it by decompressing it all; extract or repack the archive without it")
                        return
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error, UnicodeError) as e:
        yield Source(catalog_text(path), "file", path, "", st.st_size, st.st_mtime_ns, root), f"unreadable archive: {e}"


_TAR_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
              tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO"}


def _tar_kind(m: tarfile.TarInfo) -> str:
    return _TAR_KINDS.get(m.type, "a special member")


def _compressed(t: tarfile.TarFile) -> bool:
    """Whether the tar is read through a decompressor (seeking forward then decompresses)."""
    return isinstance(t.fileobj, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile))


def blob_relpath(digest: str, fmt: str) -> str:
    return f"originals/{digest[:2]}/{digest}.{_EXT.get(fmt, fmt.lower() or 'bin')}"


def _write_blob(db_path: str, rel: str, data: bytes) -> None:
    dest = os.path.join(db_path, rel)
    if os.path.exists(dest):
        return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    # no sweep per file (a listing of a folder of thousands): the writer sweeps originals/ first
    write_atomic(dest, lambda tmp: tmp.write_bytes(data), sweep=False)


_zip_cache: dict[str, tuple[int, zipfile.ZipFile]] = {}  # path -> (mtime_ns it was opened at, zip)


def read_capped(f, max_bytes: int, what: str) -> bytes:
    """Read a stream to its end, refusing more than max_bytes (a zip member's declared size
    may lie)."""
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFile(f"{what} is over the {human_bytes(max_bytes)} limit")
    return data


def _read(src: Source, payload: bytes | Exception | None, cfg: "WorkerConfig") -> bytes:
    if isinstance(payload, Exception):  # with_payloads could not read the member
        raise payload
    if payload is not None:
        return payload
    limit = cfg.decode.max_bytes
    if src.kind == "zip":
        cached = _zip_cache.get(src.path)
        if cached is None or cached[0] != src.mtime_ns:  # a rewritten archive must be reopened
            if cached is not None:
                cached[1].close()
            cached = _zip_cache[src.path] = (src.mtime_ns, zipfile.ZipFile(src.path))
        if cached[1].getinfo(src.member).file_size > limit:
            raise UnsafeFile(f"archive member of {human_bytes(src.size)} is over the {human_bytes(limit)} limit")
        with cached[1].open(src.member) as f:
            return read_capped(f, limit, "archive member")
    # --link keeps a path to the file: it (symlinks resolved) must stay inside the folder given
    return read_regular_file(src.path, limit, root=src.root if cfg.link and src.root else None)


def process_chunk(chunk: list, cfg: WorkerConfig) -> ChunkResult:
    """Decode a chunk of (Source, payload-or-None, provenance) into thumbnails and features."""
    res = ChunkResult()
    thumbs = [[] for _ in cfg.thumb_sizes]
    for src, payload, prov in chunk:
        try:
            try:
                data = _read(src, payload, cfg)
            except UnsafeFile as e:
                raise ImageError(f"skipped: {e}") from None
            except (OSError, KeyError, zipfile.BadZipFile, RuntimeError, EOFError, zlib.error) as e:
                raise ImageError(f"unreadable: {getattr(e, 'strerror', None) or e}") from None
            img, (w, h), fmt = open_image(data, cfg.decode, min_side=cfg.thumb_sizes[-1], square=True)
            ts = make_thumbnails(img, cfg.thumb_sizes)
            digest = hashlib.sha256(data).hexdigest()
            if cfg.link and src.kind == "file":
                if catalog_text(src.path) != src.path:
                    raise ImageError("skipped: its name is not valid UTF-8, so it cannot be linked in place; "
                                     "ingest it without --link")
                blob = src.path
            else:
                blob = blob_relpath(digest, fmt)
                _write_blob(cfg.db_path, blob, data)
        except ImageError as e:
            res.errors.append((src, str(e)))
            continue
        for lst, t in zip(thumbs, ts):
            lst.append(t)
        res.ok.append((src, digest, blob, w, h, fmt, prov))
    if res.ok:
        res.thumbs = [np.stack(t) for t in thumbs]
        res.features = tile_features(res.thumbs, cfg.thumb_sizes, cfg.features)
    return res


@dataclass
class IngestReport:
    """What an ingest did: tiles added, exact duplicates, unchanged inputs (a rerun), skipped
    inputs (listed by `TileDB.errors`), seconds, and the new tile ids."""
    added: int = 0
    duplicates: int = 0
    unchanged: int = 0
    skipped: int = 0
    seconds: float = 0.0
    new_ids: list = field(default_factory=list)

    def to_json(self) -> dict:
        """The counts and time (not the new ids: there may be millions)."""
        return {"added": self.added, "duplicates": self.duplicates, "unchanged": self.unchanged,
                "skipped": self.skipped, "seconds": self.seconds}

    def summary(self) -> str:
        """The report in one line, as `mosaic db ingest` prints it."""
        rate = self.added / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.added} added, {self.skipped} skipped (mosaic db errors), "
                f"{self.duplicates} duplicates, {self.unchanged} unchanged in {self.seconds:.1f} s"
                f" ({rate:.0f} tiles/s)")


def _start_worker(parent: int) -> None:
    """Worker initializer. Ctrl-C is the ingest process's to handle (it stops the workers with
    SIGTERM); a worker interrupted too, mid-task, printed tracebacks and could die half-way
    through a result, so that the ingest hung in its shutdown. On SIGTERM a busy worker unwinds
    (write_atomic removes its temporary) and exits; see _on_sigterm for an idle one. It also
    exits when the ingest process dies (kill -9), instead of waiting forever on the task queue as
    an orphan (Linux; elsewhere that part is a no-op)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


_BUSY = False
_STOPPING = False


def _on_sigterm(signum, frame):
    global _STOPPING
    if _BUSY:  # in a chunk: unwind (write_atomic removes its temporary), then leave
        unwind(signum)
    # Idle, or sending a result back: leaving now could cut a message in the pool's result pipe,
    # and the ingest's pool would then wait for its end for ever. Leave when the pool says stop,
    # at the next task, or in a second (SIGALRM's default action), whichever comes first.
    _STOPPING = True
    import signal
    if not hasattr(signal, "alarm"):  # (not on Windows: leave now)
        os._exit(128 + signum)
    signal.alarm(1)


def _chunk_in_worker(chunk, cfg: WorkerConfig):
    global _BUSY
    try:
        if _STOPPING:
            os._exit(128 + 15)
        _BUSY = True
        try:
            return process_chunk(chunk, cfg)
        finally:
            _BUSY = False
    except SystemExit as e:  # SIGTERM, unwound: leave without reporting back through the pool
        os._exit(e.code if isinstance(e.code, int) else 1)


def _pool(workers: int):
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(os.getpid(),))


def run_chunks(chunks, cfg: WorkerConfig, workers: int):
    """Yield (chunk, ChunkResult) in order, with a bounded number of chunks in flight. A worker
    that dies (killed, out of memory) breaks the pool: the chunks in flight are then redone a
    file at a time in a fresh pool, the file that kills a worker again is recorded as skipped,
    and the run goes on."""
    if workers <= 1:
        for chunk in chunks:
            yield chunk, process_chunk(chunk, cfg)
        return
    pool = _pool(workers)
    pending = collections.deque()
    finished = False
    try:
        for chunk in chunks:
            pending.append((chunk, _submit(pool, chunk, cfg)))
            while len(pending) >= 3 * workers:
                pool = yield from _next_result(pending, pool, cfg, workers)
        while pending:
            pool = yield from _next_result(pending, pool, cfg, workers)
        finished = True
    finally:
        if not finished:  # Ctrl-C, SIGTERM, an error: stop the workers now, not after their chunks
            _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool, chunk, cfg: WorkerConfig):
    """The chunk's future; a pool that broke before it was handed out (a worker killed while
    idle) gives one that fails like those in flight, and is recovered from in the same place
    (a BrokenProcessPool raised here stopped the ingest with a traceback)."""
    try:
        return pool.submit(_chunk_in_worker, chunk, cfg)
    except BrokenProcessPool as e:
        failed = Future()
        failed.set_exception(e)
        return failed


def _stop_workers(pool) -> None:
    # ProcessPoolExecutor has no public way to stop a running task; its processes are ours
    for proc in list(getattr(pool, "_processes", {}).values()):
        try:
            proc.terminate()
        except (OSError, AttributeError, ValueError):
            pass


def _next_result(pending, pool, cfg: WorkerConfig, workers: int):
    chunk, fut = pending.popleft()
    try:
        yield chunk, fut.result()
        return pool
    except BrokenProcessPool:
        suspects = [chunk] + [c for c, _ in pending]
        pending.clear()
    pool.shutdown(wait=False, cancel_futures=True)
    pool = _pool(workers)
    for c in suspects:
        results = []
        for item in c:  # one file at a time: a death now names its file
            try:
                results.append(pool.submit(_chunk_in_worker, [item], cfg).result())
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _pool(workers)
                results.append(ChunkResult(errors=[(item[0], "skipped: the decoding process died on this file "
                                                             "(out of memory, or a crashing decoder)")]))
        yield c, merge_results(results)
    return pool


def merge_results(results: list[ChunkResult]) -> ChunkResult:
    """One ChunkResult of several, in order."""
    out = ChunkResult()
    for r in results:
        out.ok += r.ok
        out.errors += r.errors
    parts = [r for r in results if r.ok]
    if parts:
        out.thumbs = [np.concatenate([r.thumbs[i] for r in parts]) for i in range(len(parts[0].thumbs))]
        out.features = np.concatenate([r.features for r in parts])
    return out


CHUNK_PAYLOAD_BYTES = 64 << 20  # archive members read ahead per chunk: bounds memory in flight


def chunked(items, size: int, max_bytes: int = CHUNK_PAYLOAD_BYTES):
    """Lists of at most `size` jobs whose in-memory payloads (tar members read by the parent)
    total at most `max_bytes` (a larger payload travels alone)."""
    buf, held = [], 0
    for it in items:
        n = len(it[1]) if isinstance(it, tuple) and len(it) > 1 and isinstance(it[1], (bytes, bytearray)) else 0
        if buf and held + n > max_bytes:
            yield buf
            buf, held = [], 0
        buf.append(it)
        held += n
        if len(buf) >= size:
            yield buf
            buf, held = [], 0
    if buf:
        yield buf


def with_payloads(sources, max_bytes: int = 1 << 30):
    """Attach bytes to tar members (read here, in order, so a compressed tar is read once);
    members over `max_bytes` are not read."""
    open_tars: dict[str, tarfile.TarFile] = {}
    members: dict[str, dict] = {}
    try:
        for src in sources:
            if src.kind != "tar":
                yield src, None
                continue
            if src.path not in members:
                found = members[src.path] = {}
                try:
                    t = open_tars[src.path] = tarfile.open(src.path, "r:*")
                    for m in t:  # a damaged archive raises part-way: the members before stay usable
                        found[m.name] = m
                        if m.isfile() and m.size > max_bytes and _compressed(t):
                            break  # as listed: nothing after it is asked for
                except (tarfile.TarError, OSError, EOFError, zlib.error):
                    pass  # listing it recorded the damage as an error of the archive
            try:
                m = members[src.path][src.member]
                if m.size > max_bytes:
                    yield src, UnsafeFile(f"archive member of {human_bytes(m.size)} is over the "
                                          f"{human_bytes(max_bytes)} limit")
                    continue
                f = open_tars[src.path].extractfile(m)
                yield src, read_capped(f, max_bytes, "archive member") if f else b""
            except UnsafeFile as e:
                yield src, e
            except (tarfile.TarError, OSError, EOFError, KeyError, zlib.error) as e:
                yield src, OSError(f"damaged archive member ({type(e).__name__}: {e})")
    finally:
        for t in open_tars.values():
            t.close()


def now() -> float:
    return time.time()
