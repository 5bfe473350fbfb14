"""One writer at a time: an exclusive flock on DB/lock, released by the kernel even on kill -9."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from pathlib import Path

from ..errors import DatabaseError, DatabaseLocked

# Lock fds this process holds. A forked child (an ingest worker) shares the open file
# description, so it would keep the flock alive after the parent is killed: close them there.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class WriteLock:
    def __init__(self, db_path: Path, on_acquire=None):
        """`on_acquire()` runs each time the lock is taken (not when re-entered): what another
        writer changed while we did not hold it must be re-read."""
        self.path = Path(db_path) / "lock"
        self._fd = None
        self._depth = 0
        self._on_acquire = on_acquire

    def __enter__(self):
        if self._depth == 0:
            try:  # never through a symlink: the lock file is truncated below
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise DatabaseError(f"{self.path} is a symbolic link: a database's own files must be real "
                                        "files inside it; remove the link") from None
                if e.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
                    raise DatabaseError(f"{self.path} is not a regular file: remove it") from None
                raise
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise DatabaseError(f"{self.path} is not a regular file: remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 400).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                raise DatabaseLocked(f"database {self.path.parent} is busy: {holder} is writing to it; "
                                     "wait for it to finish or stop it") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} ({' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]})".encode("utf-8", "backslashreplace"))
            self._fd, self._pid = fd, os.getpid()
            _HELD.add(fd)
        self._depth += 1
        if self._depth == 1 and self._on_acquire is not None:
            try:
                self._on_acquire()
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            if self._pid != os.getpid():  # a forked child: its copy of the fd is already closed
                self._fd = None
                return
            _HELD.discard(self._fd)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
