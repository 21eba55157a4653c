"""All-or-nothing file writes: a temporary file beside the destination, fsync, ``os.replace``.

Design:

- **One implementation** for every file the project writes that must never be half-written:
  segmentations and preview pictures (:mod:`SAMMed3DLib.io`), checkpoints and their model cards
  (:mod:`SAMMed3DLib.checkpoint`), evaluation reports, training states, caches and configs
  (``training/``), and the final move of a verified download (:mod:`SAMMed3DLib.download`).
- The temporary file is ``.<name>.<random hex><suffix>`` in the destination's folder (the name
  shortened to keep it within 255 bytes, :func:`temp_name`), so that
  ``os.replace`` stays on one file system and is atomic. ``suffix`` (default ``.tmp``) is for
  writers that choose their format from the file name, such as SimpleITK (``.nii.gz``,
  ``.nrrd``, ``.png``).
- On success the temporary file is fsynced, moved over the destination with ``os.replace`` and
  the folder is fsynced (POSIX; best effort), so after a crash or power loss the destination holds
  either the old file or the complete new one.
- On any failure, ``KeyboardInterrupt`` included, the temporary file is removed and the exception
  propagates unchanged: callers turn it into their own error (:class:`~SAMMed3DLib.errors.OutputError`,
  :class:`~SAMMed3DLib.errors.CheckpointError`) with their own advice. A missing folder is the
  caller's to report as well (the writers here raise ``FileNotFoundError`` for it).
- Several files at once: :func:`atomic_files` stages one temporary file per destination and
  moves them all only when the block succeeds (after fsyncing every one of them), so a command
  with several outputs replaces all of them or none. The moves are renames inside folders that
  just took a new file; should one still fail, the error propagates and the outputs already moved
  are logged.
- Standard library only, so torch-free modules (the registry and downloader) can use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["NAME_MAX", "AtomicFiles", "atomic_files", "atomic_open", "atomic_path", "atomic_write_json", "atomic_write_text", "move_into_place", "temp_name"]

logger = logging.getLogger(__name__)

_WRITE_MODES = ("w", "wt", "wb")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; skipped where folders cannot be opened (Windows)."""
    if os.name != "posix":  # Windows cannot open a folder for fsync; os.replace is durable enough there
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:  # the file is in place already; only the rename's durability is unknown
        logger.debug("cannot open %s to fsync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on folders
        logger.debug("cannot fsync the folder %s: %s", folder, exc)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    """Flush a file that another writer (e.g. SimpleITK) wrote by name to the disk."""
    # POSIX fsyncs read-only descriptors; Windows' _commit needs write access.
    flags = os.O_RDONLY if os.name == "posix" else os.O_RDWR | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a complete, flushed file over ``target`` with ``os.replace`` and fsync the folder.

    Args:
        source: the finished file, in the same folder (file system) as ``target``.
        target: the destination; an existing file there is replaced in one step.

    Raises:
        OSError: from ``os.replace`` (``target`` is a folder, no permission...).
    """
    os.replace(source, target)
    _fsync_folder(Path(target).parent)


#: Longest file name (bytes) of the file systems in use (ext4, XFS, APFS, NTFS, tmpfs).
NAME_MAX = 255


def temp_name(name: str, suffix: str = ".tmp") -> str:
    """``.<name>.<random hex><suffix>``, with ``name`` shortened so that it fits in :data:`NAME_MAX` bytes.

    A legal 245-byte output name would otherwise give a temporary name too long to create.
    """
    tail = f".{secrets.token_hex(6)}{suffix}"
    room = NAME_MAX - 1 - len(tail.encode("utf-8"))
    head = name.encode("utf-8")[: max(room, 1)].decode("utf-8", errors="ignore")
    return f".{head}{tail}"


class AtomicFiles:
    """Temporary files that replace their destinations together, when :meth:`commit` is called.

    Use it through :func:`atomic_files`, which commits when its block ends normally and
    discards everything when it raises.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary file, destination), in staging order

    def path(self, destination: str | os.PathLike[str], *, suffix: str = ".tmp") -> Path:
        """Reserve a temporary path for ``destination`` (not created; the caller's writer creates it).

        Args:
            destination: the file to replace at commit; its folder must exist.
            suffix: ending of the temporary file's name (the writer may pick its format from it).

        Returns:
            ``.<name>.<random hex><suffix>`` in the destination's folder.
        """
        target = Path(destination)
        temp = target.parent / temp_name(target.name, suffix)
        self._staged.append((temp, target))
        return temp

    @contextlib.contextmanager
    def open(
        self,
        destination: str | os.PathLike[str],
        mode: str = "wb",
        *,
        suffix: str = ".tmp",
        encoding: str | None = None,
        newline: str | None = None,
    ) -> Iterator[IO[Any]]:
        """Open a new temporary file for ``destination``; arguments as for :func:`atomic_open`."""
        if mode not in _WRITE_MODES:
            raise ValueError(f"atomic_open writes a new file: mode must be one of {', '.join(_WRITE_MODES)}, got {mode!r}")
        temp = self.path(destination, suffix=suffix)
        # O_EXCL: never write into another file; 0o666 lets the umask decide the permissions, as open() does.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            handle = os.fdopen(fd, mode, encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            raise
        try:
            with handle:
                yield handle
        except BaseException:  # a half-written file must not be committed, even if the caller goes on
            self.drop(temp)
            raise

    @property
    def destinations(self) -> list[Path]:
        """The destinations staged so far (not moved yet), in staging order."""
        return [target for _, target in self._staged]

    def drop(self, temp: Path) -> None:
        """Remove one staged temporary file (e.g. after its writer failed) and forget it."""
        self._staged = [(t, d) for t, d in self._staged if t != temp]
        with contextlib.suppress(OSError):
            temp.unlink()

    def commit(self) -> list[Path]:
        """Fsync every staged file, then move each over its destination; return the destinations.

        Raises:
            OSError: a staged file is missing or cannot be synced (nothing was moved), or a move
                failed (the destinations moved before it are logged; the rest are unchanged).
        """
        for temp, _ in self._staged:
            _fsync_file(temp)
        moved: list[Path] = []
        try:
            for temp, target in self._staged:
                os.replace(temp, target)
                moved.append(target)
        except OSError:
            if moved:
                logger.error("moving the outputs into place failed after %s had been replaced", ", ".join(map(str, moved)))
            raise
        finally:
            self._staged = self._staged[len(moved) :]
        for folder in dict.fromkeys(target.parent for target in moved):
            _fsync_folder(folder)
        return moved

    def discard(self) -> None:
        """Remove every staged temporary file; the destinations stay as they were."""
        for temp, _ in self._staged:
            with contextlib.suppress(OSError):  # keep the caller's error, whatever happens here
                temp.unlink()
        self._staged = []


@contextlib.contextmanager
def atomic_files() -> Iterator[AtomicFiles]:
    """Write several files all-or-nothing: every one replaces its destination, or none does.

    Example:
        >>> with atomic_files() as files:  # doctest: +SKIP
        ...     sitk.WriteImage(mask, str(files.path("seg.nii.gz", suffix=".nii.gz")))
        ...     with files.open("report.csv", "w", encoding="utf-8") as handle:
        ...         handle.write(text)

    Yields:
        An :class:`AtomicFiles`. When the block ends normally every staged file is fsynced and
        moved into place; when it raises (``KeyboardInterrupt`` included), every staged file is
        removed and the exception propagates unchanged.

    Raises:
        OSError: a staged file cannot be synced or moved (see :meth:`AtomicFiles.commit`).
    """
    files = AtomicFiles()
    try:
        yield files
        files.commit()
    except BaseException:
        files.discard()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path for a writer that takes a file name; moved to ``path`` on success.

    Example:
        >>> with atomic_path("seg.nii.gz", suffix=".nii.gz") as temp:  # doctest: +SKIP
        ...     sitk.WriteImage(mask, str(temp))

    Args:
        path: the destination file; its folder must exist.
        suffix: ending of the temporary file's name (the writer may pick its format from it).

    Yields:
        The temporary path (not created yet), in the destination's folder. When the block ends
        normally the file is fsynced and moved to ``path``; when it raises, the file is removed
        and the exception propagates.

    Raises:
        OSError: the written file cannot be synced or moved (e.g. ``path`` is a folder).
    """
    with atomic_files() as files:
        yield files.path(path, suffix=suffix)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    suffix: str = ".tmp",
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a new file that replaces ``path`` only once it is completely written.

    Example:
        >>> with atomic_open("state.pt") as handle:  # doctest: +SKIP
        ...     torch.save(state, handle)

    Args:
        path: the destination file; its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` / ``"wt"`` (text).
        suffix: ending of the temporary file's name.
        encoding, newline: as for :func:`open`, text mode only.

    Yields:
        The open file object. When the block ends normally it is flushed, fsynced, closed and
        moved to ``path``; when it raises, the temporary file is removed and the exception
        propagates.

    Raises:
        ValueError: ``mode`` is not a write mode.
        OSError: the temporary file cannot be created (missing folder, no permission) or the
            file cannot be written, synced or moved.
    """
    with atomic_files() as files, files.open(path, mode, suffix=suffix, encoding=encoding, newline=newline) as handle:
        yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` all-or-nothing (see :func:`atomic_open`); return the path."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **dumps_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` all-or-nothing, UTF-8; return the path.

    The document is serialised before anything is written, so an object that is not JSON
    (``TypeError``, ``ValueError``) leaves no file behind either.
    """
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs))
