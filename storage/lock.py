"""The single-writer lock of an artifacts directory: ``fcntl.flock`` on ``<dir>/.lock``.

Every process that writes a run's artifacts (``train.py``, ``build_index.py``, the service's
live edits) holds this lock while it writes; readers never take it (they read immutable
generations, see ``storage.generations``). Threads of one process first queue on an in-process
lock, so a service's concurrent edits wait in order instead of polling; the same thread may
re-enter. The lock file names its holder (pid and command), so a writer that waits too long can
say who holds it. The kernel drops a flock when its holder dies, even by SIGKILL: a crashed
writer never leaves the directory locked.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock, in-process only
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
DEFAULT_TIMEOUT_S = 60.0
_POLL_S = 0.02

_registry_guard = threading.Lock()
_thread_locks: dict[str, threading.RLock] = {}
_depth = threading.local()


class LockTimeout(ValueError):
    """Another writer held the artifacts lock for longer than the timeout."""


def _thread_lock(key: str) -> threading.RLock:
    with _registry_guard:
        return _thread_locks.setdefault(key, threading.RLock())


class DirLock:
    """``with DirLock(run_dir, timeout=30, who="build_index add="): ...`` — exclusive writer."""

    def __init__(self, directory: str | Path, timeout: float = DEFAULT_TIMEOUT_S,
                 who: str | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.timeout = float(timeout)
        self.who = who or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] or "python"
        self._key = str(self.directory.resolve())
        self._fd: int | None = None

    def _depths(self) -> dict[str, int]:
        if not hasattr(_depth, "by_key"):
            _depth.by_key = {}
        return _depth.by_key

    def holder(self) -> str:
        """What the lock file says about its holder (may be stale once released)."""
        try:
            return self.path.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            return "unknown"

    def _timeout_error(self) -> LockTimeout:
        return LockTimeout(f"{self.directory} is being written by another process "
                           f"({self.holder()}) for more than {self.timeout:g} s; wait for it "
                           "to finish, then run this again (one writer at a time)")

    def acquire(self) -> DirLock:
        depths = self._depths()
        if depths.get(self._key, 0) > 0:  # this thread holds it already
            depths[self._key] += 1
            return self
        deadline = time.monotonic() + self.timeout
        local = _thread_lock(self._key)
        if not local.acquire(timeout=max(self.timeout, 0.0)):
            raise self._timeout_error()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                while fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise self._timeout_error() from None
                        time.sleep(_POLL_S)
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}: {self.who}\n".encode(errors="replace"))
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            local.release()
            raise
        self._fd = fd
        depths[self._key] = 1
        return self

    def release(self) -> None:
        depths = self._depths()
        depth = depths.get(self._key, 0)
        if depth > 1:
            depths[self._key] = depth - 1
            return
        if depth == 0 or self._fd is None:
            return
        depths[self._key] = 0
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            _thread_lock(self._key).release()

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
