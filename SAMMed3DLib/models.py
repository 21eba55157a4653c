"""Registry of known SAM-Med3D models, their cache folder, and resumable, verified downloads.

Design:

- **Torch-free.** This module imports only the standard library, so ``sammed3d models`` and
  the Slicer module can list and download models before torch is installed (a test pins this).
  The structural check of a download whose SHA-256 is unknown imports
  :mod:`SAMMed3DLib.checkpoint` lazily, only when torch is installed.
- **Registry** ``Resources/models.json`` (schema checked on load, see :func:`parse_registry`).
  Two kinds of entry: *shipped* (``file`` under ``Resources/``, e.g. the small ``default``
  model trained by ``training/``; reported as "not shipped yet" while the file is absent) and
  *download* (``url``, cache ``filename``, optional ``size`` and ``sha256``).
- **Cache folder**: ``$SAMMED3D_CACHE_DIR``, else ``~/.cache/sammed3d/models``, read at each call.
  ``$SAMMED3D_MODEL_URL_<NAME>`` (name upper-cased) or the ``url=`` argument replaces an entry's
  URL, for mirrors, air-gapped sites and tests against a local server.
- **Downloads** (:func:`download_file`, standard ``urllib``; redirects are followed with the
  ``Range`` header kept): bytes go to ``<file>.part``; a later call resumes with
  ``Range: bytes=N-`` and starts over when the server ignores it (200) or answers another range.
  Dropped connections and 5xx answers are retried ``retries`` times, resuming each time. Free
  disk space is checked against the announced length before any byte is written. When the
  transfer is complete: size and SHA-256 are checked when known, otherwise the file must load as
  a checkpoint with the expected keys and shapes; a bad file is deleted and
  :class:`IntegrityError` says expected vs got. Only then is the file moved into place with
  ``os.replace``, so the cache never holds a partial or unverified model. Progress goes through
  ``progress(done_bytes, total_bytes_or_None)`` (tqdm in the CLI, a dialog in Slicer) and a
  ``threading.Event`` cancels between chunks, keeping the ``.part`` for a later resume.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import CheckpointError, ConfigError, DownloadError, IntegrityError, OperationCancelledError, UnknownModelError

__all__ = [
    "CACHE_ENV",
    "REGISTRY_PATH",
    "URL_ENV_PREFIX",
    "ModelEntry",
    "ModelInfo",
    "ModelRegistry",
    "cache_dir",
    "default_registry",
    "download_file",
    "download_model",
    "ensure_model",
    "format_bytes",
    "get_entry",
    "is_registered",
    "list_models",
    "model_path",
    "parse_registry",
]

logger = logging.getLogger(__name__)

RESOURCES_DIR = Path(__file__).resolve().parent / "Resources"
REGISTRY_PATH = RESOURCES_DIR / "models.json"
CACHE_ENV = "SAMMED3D_CACHE_DIR"
URL_ENV_PREFIX = "SAMMED3D_MODEL_URL_"
SCHEMA_VERSION = 1
#: Read size per step: bounds cancel latency and progress granularity (a 400 MB file is ~1,600
#: steps; the per-step overhead is negligible next to the network).
CHUNK_BYTES = 256 * 1024
DEFAULT_TIMEOUT_S = 30.0

ProgressCallback = Callable[[int, "int | None"], None]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_COMMON_FIELDS = {"description": str, "license": str, "source": str}
_OPTIONAL_FIELDS = ("parameters", "architecture")
_SHIPPED_FIELDS = ("file", "card")
_DOWNLOAD_FIELDS = ("url", "filename", "size", "sha256")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry.

    Attributes:
        name: registry key (lower-case letters, digits, underscores).
        description: one line for users.
        license: licence of the weights.
        source: where the weights come from (project page or training recipe).
        parameters: number of parameters, or None if not known yet.
        architecture: known architecture name the weights must match (``"vit_b_ori"``), or None
            to accept the file's own card / inferred configuration.
        file: shipped entries: checkpoint path relative to ``Resources/``.
        card: shipped entries: model-card JSON path relative to ``Resources/``, or None.
        url: download entries: where to get the file.
        filename: download entries: file name in the cache folder.
        size: download entries: expected size in bytes, or None if unknown.
        sha256: download entries: expected SHA-256 (hex), or None if unknown.
    """

    name: str
    description: str
    license: str
    source: str
    parameters: int | None = None
    architecture: str | None = None
    file: str | None = None
    card: str | None = None
    url: str | None = None
    filename: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def kind(self) -> Literal["shipped", "download"]:
        """``"shipped"`` (comes with the package) or ``"download"`` (fetched into the cache)."""
        return "shipped" if self.file is not None else "download"


@dataclass(frozen=True)
class ModelInfo:
    """What ``sammed3d models`` shows for one model.

    Attributes:
        name, kind, description, parameters, license, source, url: from the registry entry.
        status: ``"shipped"``, ``"not shipped yet"``, ``"downloaded"``, ``"not downloaded"`` or
            ``"partly downloaded (X of Y)"``.
        available: whether the checkpoint file is present (``load_model(name)`` will work).
        path: where the checkpoint is or will be.
        size_bytes: size of the file on disk if present, else the registry's size (or None).
    """

    name: str
    kind: str
    status: str
    available: bool
    path: Path
    description: str
    parameters: int | None
    license: str
    source: str
    url: str | None
    size_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the path as a string)."""
        out = asdict(self)
        out["path"] = str(self.path)
        return out


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


# --------------------------------------------------------------------------------------------
# Registry file


def parse_registry(data: Any, origin: str = "<registry>") -> dict[str, ModelEntry]:
    """Validate a registry document and return its entries.

    Expected shape: ``{"schema_version": 1, "models": {NAME: ENTRY}}``. Every entry has
    ``description``, ``license``, ``source`` (strings), optional ``parameters`` (int > 0 or
    null) and ``architecture`` (string or null), and exactly one of: ``file`` (+ optional
    ``card``) for shipped models, or ``url`` + ``filename`` (+ optional ``size``, ``sha256``)
    for downloads.

    Raises:
        ConfigError: listing every problem found, with the entry it belongs to.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError(f"model registry {origin} is invalid: the top level must be an object")
    if data.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    unknown_top = sorted(set(data) - {"schema_version", "models", "comment"})
    if unknown_top:
        problems.append(f"unknown top-level key(s) {unknown_top}")
    models = data.get("models")
    if not isinstance(models, Mapping) or not models:
        problems.append("'models' must be a non-empty object")
        models = {}
    entries: dict[str, ModelEntry] = {}
    for name, raw in models.items():
        where = f"model {name!r}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems.append(f"{where}: names use lower-case letters, digits and underscores, starting with a letter")
            continue
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: must be an object")
            continue
        allowed = set(_COMMON_FIELDS) | set(_OPTIONAL_FIELDS) | set(_SHIPPED_FIELDS) | set(_DOWNLOAD_FIELDS)
        unknown = sorted(set(raw) - allowed)
        if unknown:
            problems.append(f"{where}: unknown key(s) {unknown}")
        for key, typ in _COMMON_FIELDS.items():
            if not isinstance(raw.get(key), typ) or not raw.get(key):
                problems.append(f"{where}: {key!r} must be a non-empty string")
        params = raw.get("parameters")
        if params is not None and (not isinstance(params, int) or isinstance(params, bool) or params <= 0):
            problems.append(f"{where}: 'parameters' must be a positive integer or null, got {params!r}")
        arch = raw.get("architecture")
        if arch is not None and (not isinstance(arch, str) or not arch):
            problems.append(f"{where}: 'architecture' must be a known architecture name or null, got {arch!r}")
        shipped, download = "file" in raw, "url" in raw
        if shipped == download:
            problems.append(f"{where}: needs exactly one of 'file' (shipped) or 'url' (download)")
            continue
        if shipped:
            extra = sorted(set(raw) & set(_DOWNLOAD_FIELDS))
            if extra:
                problems.append(f"{where}: shipped entries cannot have {extra}")
            for key in ("file", "card"):
                value = raw.get(key)
                if (key == "file" or value is not None) and (not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(value).parts):
                    problems.append(f"{where}: {key!r} must be a relative path inside Resources/, got {value!r}")
        else:
            extra = sorted(set(raw) & set(_SHIPPED_FIELDS))
            if extra:
                problems.append(f"{where}: download entries cannot have {extra}")
            url, filename = raw.get("url"), raw.get("filename")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                problems.append(f"{where}: 'url' must be an http(s) URL, got {url!r}")
            if not isinstance(filename, str) or not filename or filename != Path(filename).name or filename.startswith("."):
                problems.append(f"{where}: 'filename' must be a plain file name, got {filename!r}")
            size = raw.get("size")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
                problems.append(f"{where}: 'size' must be a positive integer (bytes) or null, got {size!r}")
            digest = raw.get("sha256")
            if digest is not None and (not isinstance(digest, str) or not _SHA256_RE.match(digest)):
                problems.append(f"{where}: 'sha256' must be 64 lower-case hex digits or null, got {digest!r}")
        if not problems:
            entries[name] = ModelEntry(name=name, **{k: raw.get(k) for k in allowed if k in raw})
    if problems:
        raise ConfigError(f"model registry {origin} is invalid: " + "; ".join(problems))
    return entries


# --------------------------------------------------------------------------------------------
# Downloading


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
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise OperationCancelledError(f"download of {url} cancelled; {done} bytes kept in {part}, the next download resumes")
                try:
                    chunk = response.read(CHUNK_BYTES)
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
        retries: how many times a dropped connection, timeout or 5xx is retried (resuming).
        retry_wait_s: pause before a retry.

    Returns:
        ``dest``.

    Raises:
        DownloadError: network failure after the retries (the ``.part`` is kept for a resume),
            HTTP error such as 404, not enough disk space, unwritable folder.
        IntegrityError: size, SHA-256 or ``verify`` rejected the file (it was deleted).
        OperationCancelledError: ``cancel`` was set.
    """
    target = Path(dest).expanduser()
    part = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the folder {target.parent}: {exc.strerror or exc}; set {CACHE_ENV} to a writable folder") from exc
    started = time.perf_counter()
    attempt = 0
    while True:
        try:
            total = _fetch_once(url, part, size, progress, cancel, timeout_s)
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
    os.replace(part, target)
    logger.info("downloaded %s (%s) in %.1f s", target, format_bytes(got_size), time.perf_counter() - started)
    return target


# --------------------------------------------------------------------------------------------
# The registry


def cache_dir() -> Path:
    """Folder of downloaded models: ``$SAMMED3D_CACHE_DIR`` or ``~/.cache/sammed3d/models``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "sammed3d" / "models"


def _url_env_name(name: str) -> str:
    return URL_ENV_PREFIX + name.upper()


def _verify_structure(architecture: str | None) -> Callable[[Path], None] | None:
    if importlib.util.find_spec("torch") is None:
        logger.warning("torch is not installed: the download cannot be checked now; it will be checked when loaded")
        return None

    def verify(path: Path) -> None:
        from .checkpoint import verify_checkpoint

        verify_checkpoint(path, architecture)

    return verify


class ModelRegistry:
    """Named models: where each lives, whether it is present, and how to fetch it.

    Args:
        entries: the models, by name (see :func:`parse_registry`).
        resources_dir: folder that shipped entries' ``file``/``card`` paths are relative to.
        cache: download folder; None follows :func:`cache_dir` (the environment) at each call.
    """

    def __init__(self, entries: Mapping[str, ModelEntry], *, resources_dir: Path = RESOURCES_DIR, cache: Path | None = None) -> None:
        self._entries = dict(entries)
        self.resources_dir = Path(resources_dir)
        self._cache = Path(cache) if cache is not None else None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] = REGISTRY_PATH, *, resources_dir: Path | None = None, cache: Path | None = None) -> ModelRegistry:
        """Read and validate a registry JSON file (default: the shipped ``Resources/models.json``)."""
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the model registry {file}: {exc}; reinstall sammed3d") from exc
        return cls(parse_registry(data, str(file)), resources_dir=resources_dir or file.parent, cache=cache)

    @property
    def cache_dir(self) -> Path:
        """Folder downloads go to."""
        return self._cache if self._cache is not None else cache_dir()

    def names(self) -> list[str]:
        """Registered model names, in registry order."""
        return list(self._entries)

    def is_registered(self, name: str) -> bool:
        """Whether ``name`` is a registry name."""
        return name in self._entries

    def entry(self, name: str) -> ModelEntry:
        """The entry called ``name``.

        Raises:
            UnknownModelError: with the known names and the closest match.
        """
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(self.names())}.{hint} To load a checkpoint file, give its path"
        )

    def model_path(self, name: str) -> Path:
        """Where the model's checkpoint is (shipped) or will be (download cache); may not exist yet."""
        entry = self.entry(name)
        if entry.kind == "shipped":
            return self.resources_dir / str(entry.file)
        return self.cache_dir / str(entry.filename)

    def url(self, name: str) -> str:
        """Download URL: ``$SAMMED3D_MODEL_URL_<NAME>`` if set, else the registry's."""
        entry = self.entry(name)
        override = os.environ.get(_url_env_name(name), "").strip()
        if override:
            return override
        if entry.url is None:
            raise DownloadError(f"model {name!r} ships with sammed3d and has no download URL")
        return entry.url

    def info(self, name: str) -> ModelInfo:
        """Status of one model (see :class:`ModelInfo`)."""
        entry = self.entry(name)
        path = self.model_path(name)
        present = path.is_file()
        if entry.kind == "shipped":
            status = "shipped" if present else "not shipped yet"
            url = None
        else:
            part = path.with_name(path.name + ".part")
            if present:
                status = "downloaded"
            elif part.is_file():
                status = f"partly downloaded ({format_bytes(part.stat().st_size)} of {format_bytes(entry.size)})"
            else:
                status = "not downloaded"
            url = self.url(name)
        return ModelInfo(
            name=name,
            kind=entry.kind,
            status=status,
            available=present,
            path=path,
            description=entry.description,
            parameters=entry.parameters,
            license=entry.license,
            source=entry.source,
            url=url,
            size_bytes=path.stat().st_size if present else entry.size,
        )

    def list_models(self) -> list[ModelInfo]:
        """Status of every registered model, in registry order."""
        return [self.info(name) for name in self.names()]

    def download_model(
        self,
        name: str,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        *,
        url: str | None = None,
        force: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        retry_wait_s: float = 2.0,
    ) -> Path:
        """Download a model into the cache folder (see :func:`download_file`); return its path.

        A model already downloaded is returned as is unless ``force``. ``url`` replaces the
        registry's (and the environment's) URL. When the registry has no SHA-256 for it, the file
        must load as a checkpoint with the expected architecture's keys and shapes.

        Raises:
            UnknownModelError, DownloadError, IntegrityError, OperationCancelledError;
            CheckpointError for a shipped model that is not shipped yet.
        """
        entry = self.entry(name)
        if entry.kind == "shipped":
            return self.ensure_model(name)
        dest = self.model_path(name)
        if dest.is_file() and not force:
            logger.info("model %s is already downloaded: %s", name, dest)
            return dest
        if force:
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        source = url or self.url(name)
        verify = None if entry.sha256 is not None else _verify_structure(entry.architecture)
        logger.info("downloading %s from %s to %s", name, source, dest)
        return download_file(
            source,
            dest,
            size=entry.size,
            sha256=entry.sha256,
            verify=verify,
            progress=progress,
            cancel=cancel,
            timeout_s=timeout_s,
            retries=retries,
            retry_wait_s=retry_wait_s,
        )

    def ensure_model(
        self,
        name: str,
        *,
        download: bool = False,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Path:
        """Path of a model's checkpoint, which exists on return.

        Args:
            name: registry name.
            download: download a missing download-kind model instead of raising.
            progress, cancel: passed to the download.

        Raises:
            UnknownModelError: the name is not registered.
            CheckpointError: the model is not shipped yet, or not downloaded and ``download`` is
                False (the message gives the command to run).
        """
        entry = self.entry(name)
        path = self.model_path(name)
        if path.is_file():
            return path
        if entry.kind == "shipped":
            others = [n for n in self.names() if n != name]
            hint = f"; use another model, e.g. `sammed3d models download {others[0]}`" if others else ""
            raise CheckpointError(f"model {name!r} is not shipped with this version yet (expected at {path}){hint}")
        if not download:
            raise CheckpointError(
                f"model {name!r} is not downloaded yet ({format_bytes(entry.size)} from {self.url(name)}); run "
                f"`sammed3d models download {name}` first (it goes to {self.cache_dir})"
            )
        return self.download_model(name, progress=progress, cancel=cancel)


@functools.lru_cache(maxsize=1)
def default_registry() -> ModelRegistry:
    """The shipped registry (``Resources/models.json``), read once per process."""
    return ModelRegistry.from_file(REGISTRY_PATH)


def is_registered(name: str) -> bool:
    """Whether ``name`` is in the shipped registry."""
    return default_registry().is_registered(name)


def get_entry(name: str) -> ModelEntry:
    """Registry entry of ``name`` (raises UnknownModelError with a did-you-mean)."""
    return default_registry().entry(name)


def list_models() -> list[ModelInfo]:
    """Status of every model of the shipped registry."""
    return default_registry().list_models()


def model_path(name: str) -> Path:
    """Where model ``name``'s checkpoint is or will be."""
    return default_registry().model_path(name)


def ensure_model(
    name: str, *, download: bool = False, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Path:
    """Existing checkpoint path of model ``name`` (see :meth:`ModelRegistry.ensure_model`)."""
    return default_registry().ensure_model(name, download=download, progress=progress, cancel=cancel)


def download_model(
    name: str,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    *,
    url: str | None = None,
    force: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    retries: int = 3,
) -> Path:
    """Download model ``name`` of the shipped registry (see :meth:`ModelRegistry.download_model`)."""
    return default_registry().download_model(name, progress, cancel, url=url, force=force, timeout_s=timeout_s, retries=retries)
