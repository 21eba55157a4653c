"""Registry of known SAM-Med3D models and their cache folder.

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
- **Downloads** go through :func:`SAMMed3DLib.download.download_file` (resumable ``.part`` file,
  size/SHA-256 or checkpoint-structure check, progress callback, cancel event), so the cache
  never holds a partial or unverified model.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .download import CACHE_ENV, DEFAULT_TIMEOUT_S, STALL_S, URL_ENV_PREFIX, ProgressCallback, check_url, download_file, format_bytes, partial_path
from .errors import CheckpointError, ConfigError, DownloadError, UnknownModelError

__all__ = [
    "CACHE_ENV",
    "REGISTRY_PATH",
    "URL_ENV_PREFIX",
    "ModelEntry",
    "ModelInfo",
    "ModelRegistry",
    "cache_dir",
    "default_registry",
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
SCHEMA_VERSION = 1

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
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
# The registry


def cache_dir() -> Path:
    """Folder of downloaded models: ``$SAMMED3D_CACHE_DIR`` or ``~/.cache/sammed3d/models``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "sammed3d" / "models"


def _url_env_name(name: str) -> str:
    return URL_ENV_PREFIX + name.upper()


def _in_the_way(path: Path) -> str | None:
    """What occupies a model's path when it is not a regular file (a folder, a broken link...), else None."""
    if not os.path.lexists(path) or path.is_file():
        return None
    if path.is_dir():
        return f"{path} is a folder, not a checkpoint"
    if path.is_symlink() and not path.exists():
        return f"{path} is a link to {os.readlink(path)!r}, which does not exist"
    return f"{path} is not a regular file"


def _refuse_in_the_way(path: Path, name: str) -> None:
    """Raise CheckpointError when something other than a checkpoint file occupies a model's path."""
    blocked = _in_the_way(path)
    if blocked is not None:
        raise CheckpointError(f"model {name!r}: {blocked}; remove it, then run `sammed3d models download {name}` (or copy the checkpoint there)")


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
        """Download URL: ``$SAMMED3D_MODEL_URL_<NAME>`` if set, else the registry's.

        Raises:
            DownloadError: the environment's URL is not an http(s) URL.
        """
        entry = self.entry(name)
        override = os.environ.get(_url_env_name(name), "").strip()
        if override:
            check_url(override, f"${_url_env_name(name)}")
            return override
        if entry.url is None:
            raise DownloadError(f"model {name!r} ships with sammed3d and has no download URL")
        return entry.url

    def info(self, name: str) -> ModelInfo:
        """Status of one model (see :class:`ModelInfo`)."""
        entry = self.entry(name)
        path = self.model_path(name)
        present = path.is_file()
        blocked = _in_the_way(path)
        if blocked is not None:
            status = "blocked (not a file)"
            url = None if entry.kind == "shipped" else self.url(name)
        elif entry.kind == "shipped":
            status = "shipped" if present else "not shipped yet"
            url = None
        else:
            part = partial_path(path)
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
        stall_s: float = STALL_S,
    ) -> Path:
        """Download a model into the cache folder (see :func:`download_file`); return its path.

        A model already downloaded is returned as is unless ``force`` (which also discards a
        partial download). Concurrent downloads of one model into one cache are serialised; the
        later ones reuse the first one's file. ``url`` replaces the
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
        _refuse_in_the_way(dest, name)
        if dest.is_file() and not force:
            logger.info("model %s is already downloaded: %s", name, dest)
            return dest
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
            stall_s=stall_s,
            restart=force,
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
        _refuse_in_the_way(path, name)
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
