"""Writing files so that nothing is ever half-written under its final name.

Every output goes to a temporary name beside its final one (`.NAME.PID-RANDOM.tmp` plus the
final suffix, so writers that look at the suffix still work), created here exclusively and
without following symlinks (a name planted in a shared folder can never redirect a write), and
renamed into place only when complete; on any failure the temporary is removed. `AtomicFiles`
does the same for a group of files (and folders) that must appear together: all renamed at
the end, or none. Temporaries whose process is gone (a kill -9) are swept from a folder
whenever something is written there again.

The free-space check lives here too, so every writer asks the same question the same way.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import stat
from pathlib import Path
from typing import Callable

from .errors import MosaicError, RenderError, UsageError
from .units import human_bytes

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-[0-9a-f]+)?\.tmp(?:\.[^.]*)?$")


def temp_path(path, pid: int | None = None) -> Path:
    """A temporary name for `path`: hidden, beside it, tagged with our pid and a random part."""
    path = Path(path)
    pid = os.getpid() if pid is None else pid
    return path.with_name(f".{path.name}.{pid}-{secrets.token_hex(4)}.tmp{path.suffix}")


def create_exclusive(path: Path, folder: bool = False) -> Path:
    """Create an empty file (or folder) that did not exist, never through a symlink."""
    if folder:
        os.mkdir(path, 0o755)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        os.close(os.open(path, flags, 0o644))
    return path


def temp_owner(path) -> tuple[str, int] | None:
    """(final name, pid) of a temporary made by `temp_path`, or None for any other name."""
    m = _TEMP.match(Path(path).name)
    return (m.group("name"), int(m.group("pid"))) if m else None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def unwind(signum: int, grace: int = 10):
    """For a worker process's SIGTERM handler while it writes: raise SystemExit, so that the
    write unwinds and removes its temporaries, and ignore any further SIGTERM meanwhile. A
    process pool sends SIGTERM again to every worker when it sees the first one gone
    (ProcessPoolExecutor's terminate_broken); a second SystemExit raised inside the unwinding,
    e.g. in AtomicFiles.discard between two removals, left a temporary behind. Should the
    unwinding not end the process within `grace` seconds, SIGALRM's default action does."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "alarm"):
        signal.alarm(grace)
    raise SystemExit(128 + signum)


def write_atomic(path, write: Callable[[Path], object], *, sweep: bool = True) -> Path:
    """Call `write(tmp)`, then rename `tmp` to `path`; the temporary is removed on failure.
    `sweep=False` skips looking for stale temporaries beside `path` (a listing of its folder):
    for writers of many files into big folders that sweep them once beforehand."""
    with AtomicFiles(sweep=sweep) as group:
        write(group.temp(path))
        group.commit()
    return Path(path)


class AtomicFiles:
    """A group of outputs written under temporary names and renamed into place together.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with AtomicFiles() as g:
    ...     _ = g.temp(d / "a.txt").write_text("a")
    ...     _ = g.temp(d / "b.txt").write_text("b")
    ...     g.commit()
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt', 'b.txt']
    >>> with AtomicFiles() as g:
    ...     _ = g.temp(d / "c.txt").write_text("c")   # no commit: nothing appears
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt', 'b.txt']
    """

    def __init__(self, *, sweep: bool = True):
        self._temps: dict[Path, Path] = {}   # final -> temporary, in the order they were asked for
        self.committed = False
        self._sweep = sweep

    def temp(self, final, folder: bool = False) -> Path:
        """The temporary path to write `final` under (the same one each time it is asked),
        created empty (a folder with `folder`). Temporaries left in that folder by killed runs
        are removed first."""
        final = Path(final)
        if final not in self._temps:
            if self._sweep:
                sweep_stale(final.parent if str(final.parent) else ".")
            # known before it exists: a signal's exception raised just after its creation
            # still finds it to remove
            tmp = self._temps[final] = temp_path(final)
            try:
                create_exclusive(tmp, folder)
            except OSError:
                del self._temps[final]  # not created: never ours to remove
                raise
        return self._temps[final]

    def commit(self, order=None) -> None:
        """Rename every temporary into place (`order`: finals to rename last, e.g. a manifest).
        A folder replaces an existing folder of the same name."""
        last = [Path(p) for p in (order or ())]
        finals = [f for f in self._temps if f not in last] + [f for f in last if f in self._temps]
        for final in finals:
            tmp = self._temps[final]
            if tmp.is_dir() and final.exists():
                old = temp_path(final.with_name(final.name + ".old"))
                final.rename(old)
                tmp.rename(final)
                _remove(old)
            else:
                os.replace(tmp, final)
            del self._temps[final]
        self.committed = True

    def discard(self) -> None:
        for tmp in self._temps.values():
            _remove(tmp)
        self._temps.clear()

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()  # after a commit there is nothing left to discard


def free_bytes(path) -> int:
    """Free space on the filesystem that `path` (a file to write, or a folder) would go to."""
    p = Path(path)
    probe = p if p.is_dir() else p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe if str(probe) else ".").free


def check_free_space(path, need: int, what: str, free: int | None = None) -> None:
    """Raise RenderError when `need` bytes (with 10% to spare) don't fit beside `path`."""
    free = free_bytes(path) if free is None else free
    need = int(need * 1.1)
    if need > free:
        where = Path(path) if Path(path).is_dir() else Path(path).parent
        raise RenderError(f"{what} needs about {human_bytes(need)}, only {human_bytes(free)} free on "
                          f"{where or '.'}; free space or write elsewhere")


class UnsafeFile(MosaicError):
    """A file that must not be read: not a regular file, too large, or outside its root."""


def inside(path, root) -> bool:
    """Whether `path`, with every symlink resolved, lies inside `root` (also resolved)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def read_regular_file(path, max_bytes: int, root=None) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, read without blocking on FIFOs or
    devices; with `root`, the file (symlinks resolved) must lie inside it. Raises UnsafeFile
    for anything else (OSError for files that cannot be opened at all)."""
    if root is not None and not inside(path, root):
        raise UnsafeFile(f"{path} leads outside {root}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise UnsafeFile(f"{path} is {human_bytes(st.st_size)}, over the {human_bytes(max_bytes)} limit")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # grew while we read it
            raise UnsafeFile(f"{path} is over the {human_bytes(max_bytes)} limit")
        return data
    finally:
        os.close(fd)


def read_input(path, max_bytes: int, what: str) -> bytes:
    """A file the user named (a target, a profile): `read_regular_file`, with the one-line
    errors naming `what` (e.g. "target x.png")."""
    try:
        return read_regular_file(path, max_bytes)
    except IsADirectoryError:
        raise UsageError(f"{what} is a folder, not a file") from None
    except OSError as e:
        raise UsageError(f"cannot read {what}: {e.strerror or e}") from None
    except UnsafeFile as e:
        raise UsageError(f"cannot read {what}: {e}") from None


def check_regular_file(path, what: str) -> Path:
    """`path` is a regular file (symlinks followed) that can be opened by a library that would
    otherwise block on a FIFO or read a device without end."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise UsageError(f"cannot read {what}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{what} is not a regular file")
    return p


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder, name: str | None = None) -> list[Path]:
    """Remove temporaries (`temp_path` names) in `folder` whose writing process is gone; only
    those of final name `name` when given. Returns what was removed. A live pid keeps its
    files (it may be another run writing right now)."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        owner = temp_owner(p)
        if owner is None or (name is not None and owner[0] != name) or pid_alive(owner[1]):
            continue
        _remove(p)
        removed.append(p)
    return removed


def refuse_inside(outputs, folder, what: str = "the tile database") -> None:
    """No file written (`outputs`) may land in `folder` or below it: a database's folder holds
    only its own files (`db check` counts strays, `db repair` may remove them)."""
    root = Path(folder).resolve()
    for f in map(Path, outputs):
        p = f.resolve()
        if p == root or root in p.parents:
            raise UsageError(f"--out {f} is inside {what} {folder}: write outputs outside that folder")


def not_a_file(path) -> bool:
    """Whether something other than a regular file (or a link to one) is at `path`: a folder, a
    FIFO, a device, a dangling link."""
    return os.path.lexists(path) and not os.path.isfile(path)


def refuse_non_files(outputs, option: str = "--out") -> None:
    """Every file a command writes (`outputs`: the named output first, then what it writes beside
    it) must be free, a file it may replace or a link (replaced, never written through): a folder
    or a FIFO under one of those names made the command fail at its end, the others written.
    Its name, and its temporary's, must also fit the filesystem (`check_name_length`)."""
    first = Path(outputs[0])
    check_name_length(outputs, option)
    for f in map(Path, outputs):
        if not_a_file(f) and not os.path.islink(f):
            what = "a folder" if f.is_dir() else "not a regular file"
            beside = "" if f == first else f", where {option} {first} writes {f.name}"
            raise UsageError(f"{f} is {what}{beside}: move it away or choose another {option}")


def check_name_length(outputs, option: str = "--out") -> None:
    """UsageError when a file's temporary name (`temp_path`, with the longest pid) would be too
    long for its folder's filesystem: found only when written, it stopped a batch midway with an
    error naming the temporary."""
    first = Path(outputs[0])
    for f in map(Path, outputs):
        folder = f.parent if str(f.parent) else Path(".")
        try:
            limit = os.pathconf(folder, "PC_NAME_MAX") if folder.is_dir() else 255
        except (OSError, ValueError):
            limit = 255
        n = len(os.fsencode(temp_path(f, pid=9_999_999).name))
        if n > limit:
            what = "its name" if f == first else f"the name of {f.name}, written beside it,"
            raise UsageError(f"{option} {first}: {what} is too long for this filesystem ({n} bytes with the "
                             f"suffix of its temporary name, at most {limit}): choose a shorter name")


def refuse_overwriting_input(outputs, inputs) -> None:
    """No file written (`outputs`) may replace an input. (Their names are checked first: one too
    long for the filesystem failed here, in a stat, with a bare "File name too long".)"""
    check_name_length(outputs)
    for i in inputs:
        ip = Path(i)
        for f in map(Path, outputs):
            if ip.exists() and f.exists() and f.resolve() == ip.resolve():
                raise UsageError(f"--out {outputs[0]} would overwrite {ip}, an input of this request (or the "
                                 "output its assignment belongs to): choose another output name")
def silence_stdout() -> None:
    """Point stdout at /dev/null (its reader went away: `mosaic ... | head`)."""
    import sys
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
