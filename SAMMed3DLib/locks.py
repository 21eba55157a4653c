"""An exclusive lock file between processes, for downloads into a shared model cache.

Two ``sammed3d models download`` runs (or a download and a Slicer session) fetching the same model
into one cache would append to the same ``.part`` file. :class:`FileLock` serialises them: the
second one waits, then finds the model in place and reuses it (:func:`~SAMMed3DLib.download.download_file`).

Design:

- **POSIX** (Linux, macOS): ``fcntl.flock`` on ``<file>.lock``. The kernel drops the lock when its
  holder exits or is killed, so a crash never leaves a stale lock. The holder deletes the file on
  release; a waiter that then gets the lock on the deleted file notices (its inode is no longer
  the path's) and tries again, so two holders can never overlap.
- **Fallback** (no ``fcntl``, i.e. Windows): the lock file is created with ``O_CREAT | O_EXCL``
  (atomic on every platform and file system) and holds the holder's process id. While held, a
  heartbeat thread refreshes its modification time every :data:`HEARTBEAT_S` seconds; a lock
  whose time is older than :data:`STALE_S` belongs to a holder that died and is removed. A
  holder that is alive but suspended for longer than that (a laptop asleep) may lose its lock;
  its download then still ends verified, because the file is checked before it is moved into place.
- Waiting polls every :data:`POLL_S` seconds and stops when the caller's ``cancel`` event is set.

Standard library only, like :mod:`SAMMed3DLib.download`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .errors import DownloadError, OperationCancelledError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["HEARTBEAT_S", "POLL_S", "STALE_S", "FileLock", "lock_path"]

logger = logging.getLogger(__name__)

#: Seconds between two attempts to take a held lock (a download lasts seconds to minutes).
POLL_S = 0.2
#: Fallback only: seconds between two refreshes of a held lock file's modification time.
HEARTBEAT_S = 5.0
#: Fallback only: a lock file not refreshed for this long belongs to a holder that is gone
#: (six missed heartbeats).
STALE_S = 30.0


def lock_path(path: Path) -> Path:
    """The ``<path>.lock`` file that guards ``path``."""
    return path.with_name(path.name + ".lock")


class FileLock:
    """Exclusive lock on ``<path>.lock``, between processes and between threads.

    Use as a context manager; :attr:`waited` says whether another holder had to be waited for.

    Args:
        path: the file the lock guards (the lock file is :func:`lock_path` of it).
        cancel: set it (from any thread) to stop waiting with :class:`OperationCancelledError`.
        use_flock: ``fcntl.flock`` (the default where it exists) or the exclusive-create
            fallback (see the module docstring).
        poll_s, stale_s, heartbeat_s: see :data:`POLL_S`, :data:`STALE_S`, :data:`HEARTBEAT_S`.

    Example:
        >>> with FileLock(dest) as lock:
        ...     if lock.waited and dest.is_file():
        ...         return dest  # another process downloaded it meanwhile
    """

    def __init__(
        self,
        path: Path,
        *,
        cancel: threading.Event | None = None,
        use_flock: bool | None = None,
        poll_s: float = POLL_S,
        stale_s: float = STALE_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.path = lock_path(Path(path))
        self.cancel = cancel
        self.use_flock = fcntl is not None if use_flock is None else bool(use_flock)
        if self.use_flock and fcntl is None:
            raise ValueError("use_flock=True needs fcntl, which this platform does not have")
        self.poll_s = float(poll_s)
        self.stale_s = float(stale_s)
        self.heartbeat_s = float(heartbeat_s)
        self.waited = False
        self._fd: int | None = None
        self._stop_heartbeat: threading.Event | None = None

    # -- taking and giving back ------------------------------------------------------------------

    def acquire(self) -> None:
        """Wait until the lock is ours.

        Raises:
            OperationCancelledError: ``cancel`` was set while waiting.
            DownloadError: the lock file cannot be created (folder not writable).
        """
        self.waited = False
        announced = False
        while True:
            if self._try_acquire():
                return
            if not announced:
                logger.info("another download holds %s; waiting for it to finish", self.path)
                announced = True
            self.waited = True
            if self.cancel is not None:
                if self.cancel.wait(self.poll_s):
                    raise OperationCancelledError(f"cancelled while waiting for another download (lock file {self.path})")
            else:
                time.sleep(self.poll_s)

    def release(self) -> None:
        """Give the lock back (deleting the lock file); does nothing when not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._stop_heartbeat is not None:
            self._stop_heartbeat.set()
            self._stop_heartbeat = None
        try:
            ours = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:
            ours = False  # already removed (a fallback lock judged stale by another process)
        if self.use_flock:  # delete while holding it, then drop it by closing
            if ours:
                self.path.unlink(missing_ok=True)
            os.close(fd)
        else:  # Windows cannot delete an open file: close, then delete
            os.close(fd)
            if ours:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # -- internals -------------------------------------------------------------------------------

    def _open_error(self, exc: OSError) -> DownloadError:
        return DownloadError(f"cannot create the lock file {self.path}: {exc.strerror or exc}; check that the folder is writable")

    def _try_acquire(self) -> bool:
        return self._try_flock() if self.use_flock else self._try_exclusive_create()

    def _try_flock(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._open_error(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[union-attr]
        except OSError:
            os.close(fd)
            return False
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:  # the holder deleted the file as we got its lock
            same = False
        if not same:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _try_exclusive_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._remove_if_stale()
            return False
        except OSError as exc:
            raise self._open_error(exc) from exc
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self._stop_heartbeat = threading.Event()
        threading.Thread(target=self._heartbeat, args=(self._stop_heartbeat,), name="sammed3d-lock-heartbeat", daemon=True).start()
        return True

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def _remove_if_stale(self) -> None:
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return  # released meanwhile: the next attempt takes it
        # Two waiters may judge the same lock stale; the second one's unlink can then remove the
        # first one's fresh lock. The window is one stat-to-unlink, on the fallback only.
        if age > self.stale_s:
            logger.warning("removing the stale lock file %s (not refreshed for %.0f s: its download is gone)", self.path, age)
            try:
                self.path.unlink()
            except OSError:
                pass
