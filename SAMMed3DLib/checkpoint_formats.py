"""Checkpoint files on disk: which layouts are accepted, and how each is read safely.

Design:

- **Never run code from a file.** Every ``.pth`` goes through ``torch.load(weights_only=True,
  map_location="cpu")``; the only class allow-listed beyond torch's defaults is
  ``argparse.Namespace`` (official files pickle their training arguments as one; it is a plain
  attribute bag). Anything else a pickle asks for (``os.system`` via ``__reduce__``, numpy
  objects, custom classes) is refused with :class:`UnsafeCheckpointError` naming what it asked
  for. Damaged files (empty, truncated, text, random bytes) become :class:`CheckpointError`
  with the path and what to do, never a traceback from inside torch.
- **Accepted layouts** (:func:`read_checkpoint`): our own format (``format == "sammed3d"``, with
  a model card), the official training container (``model_state_dict`` beside
  ``optimizer_state_dict``, ``args``...; ``../shared/spec/SAM_MED3D_FACTS.md`` §2), other
  wrappers (``state_dict``, ``model``), bare state dicts, ``module.`` (DDP) and ``_orig_mod.``
  (``torch.compile``) key prefixes, and ``.safetensors`` files when the optional ``safetensors``
  package is installed. The result is a :class:`Checkpoint`: the unwrapped state dict, the
  layout it came in, the stored card and the container's other entries.
- **Memory.** Zip-format files are memory-mapped and only the weights are copied out, so an
  official container's optimizer state (twice the weights) is never read; the model then owns
  its weights, so a file overwritten in place while in use cannot crash it.
- **Our format** is ``{"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
  "model_state_dict": ..., "model_card": ..., **extra}``; :func:`SAMMed3DLib.checkpoint.save_model`
  writes it, and files from a newer format version are refused with "update sammed3d".
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .card import ModelCard
from .errors import CheckpointError, ModelCardError, UnsafeCheckpointError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SAFE_GLOBALS", "Checkpoint", "Layout", "read_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "sammed3d"
FORMAT_VERSION = 1
_RESERVED_KEYS = frozenset({"format", "format_version", "model_state_dict", "model_card"})
#: Classes a checkpoint may build besides torch's weights-only defaults. Official files pickle
#: their ``args`` as an argparse.Namespace: setting attributes on it runs no code.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
#: Keys under which containers keep the weights, in order of preference.
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
#: Prefixes added by DistributedDataParallel and torch.compile; stripped when all keys carry one.
_STRIP_PREFIXES = ("module.", "_orig_mod.")
_SHOW_KEYS = 5  # how many key names an error message lists before "... (N in all)"
_REFUSED_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")

Layout = Literal["sammed3d", "official", "wrapped", "bare", "safetensors"]


@dataclass
class Checkpoint:
    """The contents of a checkpoint file, after safe loading and unwrapping.

    Attributes:
        path: the file read.
        state_dict: parameter name → tensor (on CPU), prefixes such as ``module.`` removed.
        layout: ``"sammed3d"`` (ours), ``"official"`` (``model_state_dict`` container),
            ``"wrapped"`` (``state_dict``/``model`` container), ``"bare"`` or ``"safetensors"``.
        card: the model card stored in the file, if any.
        extra: the container's other top-level entries (``epoch``, ``optimizer_state_dict``...);
            an official ``args`` Namespace is given as a plain dict.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    layout: Layout
    card: ModelCard | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOW_KEYS else "")


def _first_sentence(text: str) -> str:
    """First sentence of an exception text (torch appends paragraphs of advice)."""
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line.split(". ", 1)[0].rstrip(".")


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"cannot read checkpoint {path}: {what}. The file is damaged, truncated or not a PyTorch checkpoint; "
        "download or copy it again (for a registry model: sammed3d models download NAME --force)"
    )


def _check_is_file(path: Path) -> None:
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise CheckpointError(f"cannot open checkpoint {path}: {exc.strerror or exc}; check the path") from exc
    if not exists:
        raise CheckpointError(f"checkpoint file {path} does not exist; check the path (or use a registry name, see `sammed3d models`)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path {path} is not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {exc.strerror or exc}; make the file readable (e.g. chmod u+r), or remove it and "
            "copy or download it again (for a registry model: sammed3d models download NAME --force)"
        ) from exc
    if size == 0:
        raise _damaged(path, "the file is empty (0 bytes)")


def _refused_what(path: Path, message: str) -> str | None:
    """What a weights-only refusal was about: the global torch names, if it names one."""
    match = _REFUSED_GLOBAL_RE.search(message)
    if match:
        return match.group(1)
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5, zip files only
    if lister is None or not zipfile.is_zipfile(path):
        return None
    try:
        names = [n for n in lister(str(path)) if n != "argparse.Namespace"]
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as exc:
        logger.debug("could not list the globals of %s: %s", path, exc)  # the refusal stands regardless
        return None
    return ", ".join(names) if names else None


def _torch_load(path: Path, mmap: bool) -> Any:
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" not in message:
            raise _damaged(path, f"it is not a valid pickle ({message})") from exc
        what = _refused_what(path, message)
        if what is not None:
            raise UnsafeCheckpointError(
                f"refused to load {path}: unpickling it would build or call {what}, which a file of model weights never "
                "needs; it was not loaded and nothing in it was run. Use checkpoints only from sources you trust; "
                "a SAM-Med3D checkpoint holds only tensors and plain data"
            ) from exc
        reason = message.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0].strip()
        raise _damaged(path, f"the safe loader refused it ({reason or 'unsupported pickle content'}); nothing in it was run") from exc
    except MemoryError:
        raise
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, KeyError, ValueError...
        raise _damaged(path, f"{type(exc).__name__}: {_first_sentence(str(exc))}") from exc


def _read_safetensors(path: Path) -> tuple[dict[str, Any], ModelCard | None]:
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise CheckpointError(
            f"{path} is a .safetensors file, which needs the optional 'safetensors' package: pip install safetensors "
            "(or use a .pth checkpoint)"
        ) from exc
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise _damaged(path, f"{type(exc).__name__}: {exc}") from exc
    card = None
    if "model_card" in metadata:
        try:
            card = ModelCard.from_json(metadata["model_card"])
        except ModelCardError as exc:
            raise ModelCardError(f"{path}: {exc}") from exc
    return state, card


def _clean_state_dict(state: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: {where} should be a non-empty dict of tensors, got {type(state).__name__}; not a model checkpoint")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {where} holds entries that are not named tensors: {_list_keys(bad)}; not a model checkpoint")
    out = dict(state)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped = True
    return out


def _unpack(obj: Any, path: Path) -> Checkpoint:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of weights; it is not a SAM-Med3D checkpoint")
    if obj.get("format") == FORMAT_NAME:
        version = obj.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{path}: format_version {version!r} is invalid; the file is damaged")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path} was written by a newer sammed3d (checkpoint format {version}; this version reads up to "
                f"{FORMAT_VERSION}); update sammed3d"
            )
        card = None
        if obj.get("model_card") is not None:
            try:
                card = ModelCard.from_dict(obj["model_card"])
            except ModelCardError as exc:
                raise ModelCardError(f"{path}: {exc}") from exc
        state = _clean_state_dict(obj.get("model_state_dict"), path, "'model_state_dict'")
        extra = {k: v for k, v in obj.items() if k not in _RESERVED_KEYS}
        return Checkpoint(path, state, "sammed3d", card, extra)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(path, _clean_state_dict(obj, path, "the file"), "bare")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            state = _clean_state_dict(obj[key], path, repr(key))
            extra = {k: (vars(v) if isinstance(v, argparse.Namespace) else v) for k, v in obj.items() if k != key}
            return Checkpoint(path, state, "official" if key == "model_state_dict" else "wrapped", None, extra)
    keys = sorted(str(k) for k in obj)
    raise CheckpointError(
        f"{path} holds no model weights: expected a 'model_state_dict' entry or a dict of tensors, found keys {_list_keys(keys)}"
    )


def read_checkpoint(path: str | os.PathLike[str], *, file_format: Literal["auto", "torch", "safetensors"] = "auto") -> Checkpoint:
    """Read a checkpoint file safely (no code from the file runs) and unwrap its weights.

    Args:
        path: a ``.pth``/``.pt`` (any name) or ``.safetensors`` file.
        file_format: ``"auto"`` decides by the ``.safetensors`` suffix.

    Returns:
        The unwrapped :class:`Checkpoint`; tensors are on the CPU.

    Raises:
        UnsafeCheckpointError: the pickle would build or call something other than plain data.
        CheckpointError: the file is missing, empty, truncated, corrupt or holds no weights.
        ModelCardError: the stored model card is invalid.
    """
    file = Path(path).expanduser()
    _check_is_file(file)
    if file_format == "safetensors" or (file_format == "auto" and file.suffix.lower() == ".safetensors"):
        state, card = _read_safetensors(file)
        return Checkpoint(file, _clean_state_dict(state, file, "the file"), "safetensors", card)
    # Zip-format files are memory-mapped, so only the tensors used are read: an official container's
    # optimizer state (twice the weights) never is. Legacy (non-zip) files cannot be mapped.
    mapped = zipfile.is_zipfile(file)
    if mapped:
        check_zip_checksums(file)
    ckpt = _unpack(_torch_load(file, mapped), file)
    if mapped:
        # Own the weights in memory: a model backed by the file's pages would crash (SIGBUS) if the
        # file were overwritten in place while in use. ``extra`` stays mapped and is read on access.
        try:
            ckpt.state_dict = {k: v.clone() for k, v in ckpt.state_dict.items()}
        except RuntimeError as exc:  # a truncated mapped file fails here, when the bytes are first read
            raise _damaged(file, f"RuntimeError: {_first_sentence(str(exc))}") from exc
    check_weight_values(ckpt.state_dict, file)
    return ckpt


#: Largest weight magnitude a trained network holds (the shipped default's largest is 20; half
#: precision cannot even store 65,504): beyond it a file is damaged, and the model's masks empty.
MAX_WEIGHT_MAGNITUDE = 1e6


def check_zip_checksums(path: Path) -> None:
    """Check the CRC-32 that torch's zip format stores for every record (torch.load itself does not).

    A flipped bit anywhere in the weights (a bad disk, a damaged copy) loads silently otherwise.
    Files saved with torch's checksums switched off (every CRC 0) cannot be checked and pass. The
    cost is one read of the file: 14 ms for the 24.7 MB default model; CRC-32 runs at ~3.5 GB/s.

    Raises:
        CheckpointError: a record's data does not match its checksum, or the archive is damaged.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if all(r.CRC == 0 for r in records) and any(r.file_size for r in records):
                logger.debug("%s was saved without checksums; its bytes cannot be verified", path)
                return
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error) as exc:
        raise _damaged(path, f"its zip archive cannot be read ({type(exc).__name__}: {_first_sentence(str(exc))})") from exc
    if bad is not None:
        raise _damaged(path, f"the checksum of its record {bad!r} does not match its bytes (a flipped bit, in a copy or on the disk)")


def check_weight_values(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that are NaN, infinite or beyond :data:`MAX_WEIGHT_MAGNITUDE`.

    Such a file loads and runs, but every mask it gives is empty. One pass over the floating
    tensors (``torch.aminmax``, NaN propagates): 0.5-0.7 s for the 100 M weights of vit_b_ori on
    2 busy cores, next to 2-4 s for the load itself.

    Raises:
        CheckpointError: naming the tensors and what they hold.
    """
    bad = []
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        low, high = (float(v) for v in torch.aminmax(tensor.detach()))
        if not (-MAX_WEIGHT_MAGNITUDE <= low and high <= MAX_WEIGHT_MAGNITUDE):
            values = tensor.detach().float()
            nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
            what = ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p) or f"values up to {max(abs(low), abs(high)):.3g}"
            bad.append(f"{key} ({what})")
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds unusable weights: {_list_keys(bad)}; a trained network has no NaN or infinite weights and "
            f"none beyond {MAX_WEIGHT_MAGNITUDE:g}, so the file is damaged or was saved from a diverged training: use another "
            "checkpoint (for a registry model: sammed3d models download NAME --force)"
        )
