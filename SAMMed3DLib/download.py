"""HTTP client for model files: resumable, verified downloads with progress and cancel.

Design:

- **Torch-free, standard library only** (``urllib``), like :mod:`SAMMed3DLib.registry`, which
  calls :func:`download_file` for the registry's download entries. Redirects are followed with
  the ``Range`` header kept.
- **Resumable**: bytes go to ``<file>.part`` (:func:`partial_path`); a later call resumes with
  ``Range: bytes=N-`` and starts over when the server ignores it (200) or answers another range.
  Dropped connections and 5xx answers are retried ``retries`` times, resuming each time. Free
  disk space is checked against the announced length before any byte is written.
- **Verified**: when the transfer is complete, size and SHA-256 are checked when known, and a
  ``verify`` callback may reject the file (the registry checks that it loads as a checkpoint
  when the SHA-256 is unknown); a bad file is deleted and :class:`IntegrityError` says expected
  vs got. Only then is the file moved into place (``os.replace`` and a folder fsync,
  :func:`~SAMMed3DLib.atomic.move_into_place`), so the destination never holds a partial or
  unverified file.
- **Progress and cancel**: ``progress(done_bytes, total_bytes_or_None)`` is called as bytes
  arrive (tqdm in the CLI, a dialog in Slicer); a ``threading.Event`` cancels between chunks,
  keeping the ``.part`` for a later resume. So does Ctrl+C (``KeyboardInterrupt``, which the CLI
  turns into exit status 130): bytes are appended in order, so whatever reached the ``.part``
  is a prefix of the file, and the next call resumes after it.
- **Stalls**: the socket timeout (``timeout_s``) ends a silent connection, but not one that
  trickles (a byte every few seconds would keep a 400 MB download going for years). Reads
  return what one ``recv`` gives, and fewer than ``stall_min_bytes`` in ``stall_s`` seconds
  (:data:`STALL_MIN_BYTES` in :data:`STALL_S`: about 1 kB/s) counts as a dropped connection:
  retried with resume, then reported, the ``.part`` kept. A server that trickles its *headers*
  is bounded only by ``timeout_s`` per byte (urllib reads them itself).
- **One download per file**: a :class:`~SAMMed3DLib.locks.FileLock` on the destination
  serialises downloads of the same file into one cache (two processes must never append to one
  ``.part``). One that had to wait and then finds the file in place (of the expected size)
  returns it instead of downloading it again.
- The environment variables of the model cache (:data:`CACHE_ENV`, :data:`URL_ENV_PREFIX`) are
  defined here, because this client's error messages tell users to set them; the registry reads
  them.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .atomic import move_into_place
from .errors import DownloadError, IntegrityError, OperationCancelledError
from .locks import FileLock

__all__ = [
    "CACHE_ENV",
    "CHUNK_BYTES",
    "DEFAULT_TIMEOUT_S",
    "STALL_MIN_BYTES",
    "STALL_S",
    "URL_ENV_PREFIX",
    "ProgressCallback",
    "check_url",
    "download_file",
    "format_bytes",
    "partial_path",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the folder of downloaded models (read by the registry).
CACHE_ENV = "SAMMED3D_CACHE_DIR"
#: Prefix of the environment variables that replace a model's URL (``<prefix><NAME>``).
URL_ENV_PREFIX = "SAMMED3D_MODEL_URL_"
#: Read size per step: bounds cancel latency and progress granularity (a 400 MB file is ~1,600
#: steps; the per-step overhead is negligible next to the network).
CHUNK_BYTES = 256 * 1024
DEFAULT_TIMEOUT_S = 30.0
#: A download that receives fewer than :data:`STALL_MIN_BYTES` in this many seconds has stalled.
STALL_S = 60.0
#: 64 KiB a minute (about 1 kB/s): at that rate the 400 MB turbo checkpoint would take five days.
STALL_MIN_BYTES = 64 * 1024

ProgressCallback = Callable[[int, "int | None"], None]

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def format_bytes(n: int | None) -> str:
    """Human-readable size, e.g. ``"402.1 MB"`` (decimal units); ``"?"`` for None."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # unreachable: the loop returns at "TB"


def check_url(url: str, where: str = "the URL") -> None:
    """Refuse anything but an http(s) URL with a host (a file:// URL, a path, a typo), before any transfer.

    Raises:
        DownloadError: saying what was given and what to do instead.
    """
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return
    local = parts.scheme.lower() == "file" or not parts.scheme
    hint = (
        "for a checkpoint on this machine, pass its path instead (sammed3d segment --model PATH, load_model(PATH))"
        if local
        else "give an http:// or https:// address"
    )
    raise DownloadError(f"{where} {str(url)!r} is not an http(s) URL; downloads need one: {hint}")


def partial_path(dest: Path) -> Path:
    """The ``<dest>.part`` file a download of ``dest`` writes to and resumes from."""
    return dest.with_name(dest.name + ".part")


class _TransientError(Exception):
    """A failure worth retrying with resume (dropped connection, timeout, 5xx)."""


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE_RE.match((value or "").strip())
    if not match:
        raise _TransientError(f"server sent an unusable Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _check_disk_space(folder: Path, needed: int | None) -> None:
    if needed is None or needed <= 0:
        return
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DownloadError(
            f"not enough disk space in {folder}: the download needs {format_bytes(needed)} more, only {format_bytes(free)} "
            f"free. Free some space or set {CACHE_ENV} to a folder on a larger disk"
        )


def _user_agent() -> str:
    from . import __version__

    return f"sammed3d/{__version__} (python-urllib)"


def _fetch_once(
    url: str,
    part: Path,
    size: int | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    timeout_s: float,
    stall_s: float,
    stall_min_bytes: int,
) -> int | None:
    """One HTTP request appending to ``part``; returns the total size the server announced.

    Raises _TransientError for failures a resume can fix; DownloadError for the others.
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        logger.info("partial file %s is larger than expected; starting over", part)
        part.unlink()
        offset = 0
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 (http/https checked by the registry)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            if size is not None and offset == size:
                return size  # the partial file is already complete
            part.unlink()
            raise _TransientError("server refused to resume from the partial file; starting over") from exc
        if exc.code >= 500 or exc.code == 429:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}. Check the URL, or whether the file moved "
            f"(a mirror can be set with {URL_ENV_PREFIX}<NAME>)"
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _TransientError(f"{type(exc).__name__}: {reason}") from exc

    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _TransientError(f"server resumed at byte {start} instead of {offset}; starting over")
        elif status == 200:
            if offset:
                logger.info("server ignored the resume request for %s; starting over", url)
                offset = 0
            total = body
        else:
            raise DownloadError(f"cannot download {url}: unexpected HTTP status {status} {response.reason}")
        if total is not None and size is not None and total != size:
            raise IntegrityError(
                f"server announces {total} bytes for {url} but {size} are expected; the file on the server is not the "
                "expected model. Check the URL; run the command again later"
            )
        _check_disk_space(part.parent, None if total is None else total - offset)
        done = offset
        if progress is not None:
            progress(done, total)
        try:
            handle = open(part, "ab" if offset else "wb")  # noqa: SIM115 (closed in finally)
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}; check that the folder is writable") from exc
        read = getattr(response, "read1", response.read)  # read1: what one recv gives, so stalls are seen
        since, since_done = time.monotonic(), done
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise OperationCancelledError(f"download of {url} cancelled; {done} bytes kept in {part}, the next download resumes")
                try:
                    chunk = read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise _TransientError(f"connection lost after {done} bytes ({type(exc).__name__}: {exc})") from exc
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise DownloadError(
                        f"cannot write {part}: {exc.strerror or exc}. Free some disk space or set {CACHE_ENV} to another "
                        "folder, then run the command again to resume"
                    ) from exc
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
                now = time.monotonic()
                if now - since >= stall_s:
                    if done - since_done < stall_min_bytes:  # what came is kept: the resume starts after it
                        raise _TransientError(
                            f"the server stalled: {done - since_done} bytes in the last {now - since:.0f} s (fewer than "
                            f"{format_bytes(stall_min_bytes)}) after {done} bytes"
                        )
                    since, since_done = now, done
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            handle.close()
    if total is not None and done < total:
        raise _TransientError(f"connection closed after {done} of {total} bytes")
    return total if total is not None else done


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    size: int | None = None,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = 3,
    retry_wait_s: float = 2.0,
    stall_s: float = STALL_S,
    stall_min_bytes: int = STALL_MIN_BYTES,
    restart: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` through ``<dest>.part``, resumable and verified.

    Args:
        url: http(s) URL.
        dest: final file; its folder is created. Replaced only by a complete, verified file.
        size: expected size in bytes, or None.
        sha256: expected SHA-256 (hex), or None.
        verify: extra check ``verify(part_path)`` run on the complete file; raising any
            exception rejects it (used when the SHA-256 is unknown).
        progress: ``progress(done_bytes, total_bytes_or_None)``, called as bytes arrive.
        cancel: set it (from any thread) to stop between chunks; the ``.part`` is kept.
        timeout_s: socket timeout per connect/read.
        retries: how many times a dropped connection, timeout, stall or 5xx is retried (resuming).
        retry_wait_s: pause before a retry.
        stall_s, stall_min_bytes: fewer than ``stall_min_bytes`` received in ``stall_s`` seconds
            is a stall (see the module docstring).
        restart: discard a partial file first instead of resuming it (done under the lock, so a
            download running elsewhere keeps its own).

    Returns:
        ``dest``; a file another process downloaded while this call waited for it is reused.

    Raises:
        DownloadError: network failure after the retries (the ``.part`` is kept for a resume),
            HTTP error such as 404, not enough disk space, unwritable folder.
        IntegrityError: size, SHA-256 or ``verify`` rejected the file (it was deleted).
        OperationCancelledError: ``cancel`` was set.
    """
    check_url(url)
    target = Path(dest).expanduser()
    if os.path.lexists(target) and not target.is_file():
        raise DownloadError(f"cannot download to {target}: something other than a file is in the way (a folder?); remove it and run again")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the folder {target.parent}: {exc.strerror or exc}; set {CACHE_ENV} to a writable folder") from exc
    with FileLock(target, cancel=cancel) as lock:
        if lock.waited and target.is_file() and (size is None or target.stat().st_size == size):
            logger.info("%s was downloaded by another process meanwhile; using it", target)
            return target
        part = partial_path(target)
        if restart:
            part.unlink(missing_ok=True)
        return _download_locked(url, target, part, size, sha256, verify, progress, cancel, timeout_s, retries, retry_wait_s, stall_s, stall_min_bytes)


def _download_locked(
    url: str,
    target: Path,
    part: Path,
    size: int | None,
    sha256: str | None,
    verify: Callable[[Path], None] | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    timeout_s: float,
    retries: int,
    retry_wait_s: float,
    stall_s: float,
    stall_min_bytes: int,
) -> Path:
    """:func:`download_file` once its lock is held: fetch (with retries), verify, move into place."""
    started = time.perf_counter()
    attempt = 0
    while True:
        try:
            total = _fetch_once(url, part, size, progress, cancel, timeout_s, stall_s, stall_min_bytes)
            break
        except _TransientError as exc:
            attempt += 1
            kept = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise DownloadError(
                    f"download of {url} failed: {exc}. {format_bytes(kept)} kept in {part}; "
                    "check the network and run the command again to resume"
                ) from exc
            logger.warning("download of %s interrupted (%s); resuming (attempt %d of %d)", url, exc, attempt, retries)
            if cancel is not None and cancel.wait(retry_wait_s):
                raise OperationCancelledError(f"download of {url} cancelled; {kept} bytes kept in {part}, the next download resumes") from exc
            if cancel is None and retry_wait_s > 0:
                time.sleep(retry_wait_s)

    got_size = part.stat().st_size
    expected_size = size if size is not None else total
    if expected_size is not None and got_size != expected_size:
        part.unlink()
        raise IntegrityError(f"downloaded file from {url} has {got_size} bytes, expected {expected_size}; it was deleted. Run the command again")
    if sha256 is not None:
        got = _sha256_of(part)
        if got != sha256.lower():
            part.unlink()
            raise IntegrityError(
                f"downloaded file from {url} is corrupt: SHA-256 expected {sha256.lower()}, got {got}; it was deleted. "
                "Run the command again"
            )
    if verify is not None:
        try:
            verify(part)
        except Exception as exc:  # any rejection, from checkpoint errors to torch's own
            part.unlink(missing_ok=True)
            raise IntegrityError(f"downloaded file from {url} is not a usable checkpoint ({exc}); it was deleted. Run the command again") from exc
    move_into_place(part, target)
    logger.info("downloaded %s (%s) in %.1f s", target, format_bytes(got_size), time.perf_counter() - started)
    return target
