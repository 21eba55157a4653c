"""All-or-nothing file writes: a temporary file beside the destination, fsync, ``os.replace``.

Design:

- **One implementation** for every file the project writes that must never be half-written:
  segmentations and preview pictures (:mod:`SAMMed3DLib.io`), checkpoints and their model cards
  (:mod:`SAMMed3DLib.checkpoint`), evaluation reports, training states, caches and configs
  (``training/``), and the final move of a verified download (:mod:`SAMMed3DLib.download`).
- The temporary file is ``.<name>.<random hex><suffix>`` in the destination's folder, so that
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

__all__ = ["atomic_open", "atomic_path", "atomic_write_json", "atomic_write_text", "move_into_place"]

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


@contextlib.contextmanager
def _temporary(path: str | os.PathLike[str], suffix: str, sync_file: bool) -> Iterator[Path]:
    target = Path(path)
    temp = target.parent / f".{target.name}.{secrets.token_hex(6)}{suffix}"
    try:
        yield temp
        if sync_file:
            _fsync_file(temp)
        os.replace(temp, target)
    except BaseException:  # also KeyboardInterrupt: never leave a half-written temporary file
        with contextlib.suppress(OSError):  # keep the original error, whatever happens here
            temp.unlink()
        raise
    _fsync_folder(target.parent)


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
    with _temporary(path, suffix, sync_file=True) as temp:
        yield temp


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
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_open writes a new file: mode must be one of {', '.join(_WRITE_MODES)}, got {mode!r}")
    with _temporary(path, suffix, sync_file=False) as temp:
        # O_EXCL: never write into another file; 0o666 lets the umask decide the permissions, as open() does.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            handle = os.fdopen(fd, mode, encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            raise
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


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
