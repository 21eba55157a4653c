"""SAM-Med3D checkpoints to models and back: choose the architecture, load, verify, save.

Design:

- **Reading** is :mod:`SAMMed3DLib.checkpoint_formats`: every file is loaded safely (no code from
  a file ever runs) and unwrapped from whichever accepted layout it has (ours, the official
  training container, other wrappers, bare state dicts, ``.safetensors``); :func:`read_checkpoint`
  is re-exported here.
- **Architecture**, in this order: the ``config=`` / ``card=`` arguments, the card stored in the
  file, else :func:`~SAMMed3DLib.model.infer_config` from the tensor shapes. Keys and shapes are
  checked strictly before any weight is assigned; a mismatch names the missing, unexpected and
  mis-shaped keys and which known architecture the file itself matches.
- **Memory.** Zip-format files are memory-mapped and only the weights are copied out, so an
  official container's optimizer state (twice the weights) is never read. Large files
  (≥ ``META_BUILD_MIN_ELEMENTS`` elements) build the model on the ``meta`` device (no random
  init, no memory) and the file's tensors are assigned to it (``load_state_dict(assign=True)``).
  Measured for a 1.2 GB vit_b_ori container with AdamW state, on 2 CPU cores shared with other
  jobs: peak anonymous memory 597 MB (1,681 MB without the mapping, 914 MB with a normal build
  and copy); load 4.0 s for the first model of a process and 1.9 s for later ones (4.7 s and
  4.4 s with a normal build). Small models are built normally and copied into: the first
  random op on ``meta`` costs ~1 s of one-off torch imports, far more than building a small
  model (0.03 s). Either way persistent buffers such as the random-Fourier matrix
  ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`` come from the file.
- **Our format** (:func:`save_model`): ``{"format": "sammed3d", "format_version": 1,
  "model_state_dict": ..., "model_card": card.to_dict(), **extra}`` — only tensors, dicts,
  lists, strings and numbers, so it loads with plain ``weights_only=True``. A copy of the card
  is written beside it as ``<stem>.json`` (readable without torch, e.g. by the registry). Writes
  are atomic (:mod:`SAMMed3DLib.atomic`: temporary file in the same folder, fsync,
  ``os.replace``); a failed save leaves no partial file and any previous file untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from . import registry
from .atomic import atomic_open
from .card import ModelCard, official_card
from .checkpoint_formats import FORMAT_NAME, FORMAT_VERSION, _RESERVED_KEYS, Checkpoint, _first_sentence, _list_keys, read_checkpoint
from .devices import resolve_device
from .errors import CheckpointError, CheckpointMismatchError, ConfigError, ModelCardError, SAMMed3DError
from .model import KNOWN_CONFIGS, Sam3D, build_sam3d, infer_config, match_known_config, normalize_config
from .warmup import warm_up_in_background, warn_if_openmp_spins

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Checkpoint",
    "load_model",
    "read_checkpoint",
    "resolve_device",
    "save_model",
    "verify_checkpoint",
]

logger = logging.getLogger(__name__)

#: From this many tensor elements on, build on ``meta`` and assign (saves a full copy of the
#: weights, 300 MB for vit_b_ori); below it a plain build is faster (see module docstring).
META_BUILD_MIN_ELEMENTS = 20_000_000

#: Where a configuration came from, as error messages say it.
_INFERRED = "the tensor shapes in the file"
_EXPECTED = "the expected architecture"
#: infer_config reports foreign state dicts as ConfigError; odd tensor ranks can surface as these.
_INFER_ERRORS = (ConfigError, IndexError, ValueError, TypeError)


# --------------------------------------------------------------------------------------------
# Matching weights to an architecture


def _describe_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One clause saying which architecture a state dict's own shapes describe."""
    try:
        inferred = infer_config(state_dict)
    except _INFER_ERRORS as exc:
        return f"Its tensors are not those of a SAM-Med3D model ({exc})"
    enc = inferred["image_encoder"]
    summary = (
        f"img_size {enc['img_size']}, patch {enc['patch_size']}, embed_dim {enc['embed_dim']}, depth {enc['depth']}, "
        f"heads {enc['num_heads']}, window {enc['window_size']}, global blocks {enc['global_attn_indexes']}, "
        f"out_chans {enc['out_chans']}"
    )
    name = match_known_config(inferred)
    if name is not None:
        return f"The file itself matches the known architecture {name!r} ({summary})"
    return f"The file matches no known architecture (known: {', '.join(KNOWN_CONFIGS)}); its shapes say {summary}"


def _check_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, origin: str) -> None:
    """Strict key and shape check of ``state_dict`` against ``model`` (may live on ``meta``)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != expected[k]
    )
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_list_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_list_keys(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_list_keys(shapes)}")
    if origin == _INFERRED:
        hint = "The file looks damaged or comes from a different model version; download or copy it again"
    elif origin.startswith(_EXPECTED):
        hint = "It is not the model this name stands for"
    else:
        hint = "Load it without config=/card= to use the file's own architecture, or choose the matching model"
    raise CheckpointMismatchError(
        f"checkpoint {path} does not fit the model built from {origin}: {'; '.join(problems)}. "
        f"{_describe_architecture(state_dict)}. {hint}"
    )


def _choose_config(ckpt: Checkpoint, config: Mapping[str, Any] | str | None, card: ModelCard | None) -> tuple[dict[str, Any], str]:
    if config is not None:
        if isinstance(config, str):
            if config not in KNOWN_CONFIGS:
                raise ConfigError(f"unknown architecture {config!r}; known: {', '.join(KNOWN_CONFIGS)}")
            config = KNOWN_CONFIGS[config]
        return normalize_config(config), "the config= argument"
    if card is not None:
        return normalize_config(card.config), "the card= argument"
    if ckpt.card is not None:
        return normalize_config(ckpt.card.config), "the model card stored in the file"
    try:
        return infer_config(ckpt.state_dict), _INFERRED
    except _INFER_ERRORS as exc:
        keys = sorted(ckpt.state_dict)
        raise CheckpointMismatchError(
            f"{ckpt.path} does not hold SAM-Med3D weights: {exc}. Its first keys: {_list_keys(keys)}"
        ) from exc


def _is_large(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return sum(t.numel() for t in state_dict.values()) >= META_BUILD_MIN_ELEMENTS


def _skeleton(config: dict[str, Any], on_meta: bool) -> Sam3D:
    """The model to fill: on ``meta`` (no memory, no init) or a normal CPU build."""
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        return build_sam3d(config)


def _build_from(ckpt: Checkpoint, config: dict[str, Any], origin: str) -> Sam3D:
    """Build the model once, check keys and shapes strictly, then load the file's tensors."""
    large = _is_large(ckpt.state_dict)
    model = _skeleton(config, large)
    _check_fits(model, ckpt.state_dict, ckpt.path, origin)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    # A half-precision file becomes float32; views (strided, expanded) become plain tensors.
    state = {k: v.to(dtypes[k]).contiguous() for k, v in ckpt.state_dict.items()}
    model.load_state_dict(state, strict=True, assign=large)
    if large:
        leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftover:  # a tensor that is neither a parameter nor a persistent buffer: a model-code bug
            raise RuntimeError(f"model tensors {leftover} are not in the state dict and stayed on the meta device")
    return model


def verify_checkpoint(path: str | os.PathLike[str], architecture: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check that a file is a loadable SAM-Med3D checkpoint of the expected architecture.

    Used to vet downloads whose SHA-256 is not known. Reads the file safely and checks every key
    and shape against the architecture, without building real weights.

    Args:
        path: the checkpoint file.
        architecture: a known architecture name (``"vit_b_ori"``), a config dict, or None for
            the file's own card or inferred configuration.

    Returns:
        The normalised configuration the file matches.

    Raises:
        CheckpointError: (or its subclasses) the file is unsafe, damaged or does not fit.
    """
    ckpt = read_checkpoint(path)
    config, origin = _choose_config(ckpt, architecture, None)
    if architecture is not None:
        origin = f"{_EXPECTED} {architecture if isinstance(architecture, str) else 'config'}"
    model = _skeleton(config, _is_large(ckpt.state_dict))
    _check_fits(model, ckpt.state_dict, ckpt.path, origin)
    return config


# --------------------------------------------------------------------------------------------
# Loading a model


def _resolve_source(source: str | os.PathLike[str], download: bool, progress: Callable[[int, int | None], None] | None) -> tuple[Path, str | None]:
    """Registry name → its file (shipped or cached); anything else is a path."""
    if isinstance(source, str) and registry.is_registered(source):
        return registry.ensure_model(source, download=download, progress=progress), source
    path = Path(source).expanduser()
    text = str(source)
    looks_like_name = isinstance(source, str) and not path.suffix and os.sep not in text and "/" not in text
    if looks_like_name and not path.exists():
        registry.get_entry(text)  # raises UnknownModelError with the known names and a did-you-mean
    return path, None


def load_model(
    source: str | os.PathLike[str],
    device: str | torch.device = "auto",
    config: Mapping[str, Any] | str | None = None,
    card: ModelCard | None = None,
    *,
    download: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    warm_up: bool = False,
) -> Sam3D:
    """Load a SAM-Med3D model from a registry name or a checkpoint file.

    Args:
        source: a registry name (``"default"``, ``"sam_med3d_turbo"``; see ``sammed3d models``)
            or the path of a checkpoint. A name always means the registry model; write
            ``./default`` for a file of that name.
        device: ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"`` or a ``torch.device``.
        config: force an architecture (config dict or known name) instead of the file's card or
            the configuration inferred from its shapes.
        card: the model card to attach (and whose config to build) instead of the file's.
        download: download a registry model that is not cached yet (never implicit).
        progress: ``progress(done_bytes, total_bytes_or_None)`` during such a download.
        warm_up: pre-warm the kernels in the background (:mod:`SAMMed3DLib.warmup`), so that the
            first click costs what later ones do; a session on the model waits for it.

    Returns:
        The model in eval mode on the device, with ``model.card`` (a :class:`ModelCard`): the
        ``card`` argument, else the file's card, else :func:`official_card` for the
        configuration (official files carry no card).

    Raises:
        UnknownModelError: ``source`` is neither a registry name nor an existing file.
        CheckpointError: the model is not downloaded/shipped, or the file is missing or damaged.
        UnsafeCheckpointError: the file would run code when unpickled.
        CheckpointMismatchError: the weights do not fit the architecture.
        DeviceError: the device is not available.

    Example:
        >>> from SAMMed3DLib import load_model
        >>> model = load_model("sam_med3d_turbo", device="auto")  # after `sammed3d models download sam_med3d_turbo`
    """
    started = time.perf_counter()
    target = resolve_device(device)  # fail before reading hundreds of MB
    path, name = _resolve_source(source, download, progress)
    ckpt = read_checkpoint(path)
    chosen, origin = _choose_config(ckpt, config, card)
    model = _build_from(ckpt, chosen, origin)
    if card is not None:
        if normalize_config(card.config) != chosen:
            raise ModelCardError(f"card {card.name!r} describes a different architecture than the model loaded from {path}")
        model_card = card
    elif ckpt.card is not None:
        model_card = ckpt.card
        if normalize_config(model_card.config) != chosen:
            logger.warning("model card in %s describes another architecture than the weights; using the weights' one", path)
            model_card = replace(model_card, config=chosen)
    else:
        logger.info("%s carries no model card; assuming the official SAM-Med3D preprocessing", path)
        model_card = official_card(name=name or path.stem, config=chosen)
    model.card = model_card
    model.to(target).eval()
    warn_if_openmp_spins(model)
    if warm_up:
        warm_up_in_background(model)
    logger.info(
        "loaded %s (%s layout, %.1f M parameters) on %s in %.2f s",
        path,
        ckpt.layout,
        sum(p.numel() for p in model.parameters()) / 1e6,
        target,
        time.perf_counter() - started,
    )
    return model


# --------------------------------------------------------------------------------------------
# Saving


def _check_plain(value: Any, where: str) -> None:
    """Refuse values that ``torch.load(weights_only=True)`` would not read back."""
    # Exact types: numpy.float64 is a float subclass but pickles as a numpy object.
    if value is None or type(value) in (bool, int, float, str, bytes) or isinstance(value, torch.Tensor):
        return
    if type(value) in (dict, OrderedDict, Counter):
        for key, item in value.items():
            if type(key) not in (str, int, float, bool) and key is not None:
                raise CheckpointError(f"cannot save {where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple, torch.Size):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    hint = " (use vars(args))" if isinstance(value, argparse.Namespace) else " (convert with .item(), .tolist() or torch.from_numpy)"
    raise CheckpointError(
        f"cannot save {where}: a {type(value).__module__}.{type(value).__qualname__} would not load back with "
        f"weights_only=True; store only tensors, dicts, lists, strings and numbers{hint}"
    )


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` all-or-nothing (:func:`~SAMMed3DLib.atomic.atomic_open`); failures become CheckpointError."""
    folder = path.parent
    if not folder.is_dir():
        raise CheckpointError(f"cannot save {path}: folder {folder} does not exist; create it first")
    try:
        with atomic_open(path, "wb") as handle:
            write(handle)
    except Exception as exc:
        if isinstance(exc, SAMMed3DError):
            raise
        reason = _first_sentence(str(exc)) if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"could not write {path}: {reason}. Nothing was written and any previous file there is unchanged; "
            "check free disk space and write permission"
        ) from exc


def _unwrap(model: nn.Module) -> Sam3D:
    inner: Any = model
    for _ in range(4):  # DDP(.module) and torch.compile(._orig_mod) wrappers, possibly nested
        if isinstance(inner, Sam3D):
            return inner
        inner = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)
    raise TypeError(f"save_model needs a SAMMed3DLib Sam3D (or a DDP/compiled wrapper of one), got {type(model).__name__}")


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    card: ModelCard | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    card_json: bool = True,
) -> Path:
    """Save a model in our checkpoint format, atomically, with its model card.

    Args:
        model: a :class:`Sam3D` (DDP and ``torch.compile`` wrappers are unwrapped).
        path: the ``.pth`` file to write; its folder must exist. An existing file is replaced
            only once the new one is completely written.
        card: the card to store; default ``model.card`` (set by :func:`load_model`), else a
            minimal card named after the file.
        extra: more top-level entries (epoch, optimizer state...); only tensors, dicts, lists,
            strings and numbers, so the file loads with ``weights_only=True``.
        card_json: also write the card as ``<path without suffix>.json``.

    Returns:
        The path written.

    Raises:
        CheckpointError: the file cannot be written (missing folder, no space, no permission)
            or ``extra`` holds a reserved key or a value that would not load back safely.
        ModelCardError: the card describes another architecture than the model.
    """
    sam = _unwrap(model)
    file = Path(path).expanduser()
    if file.suffix.lower() in (".json", ".safetensors"):
        raise CheckpointError(f"cannot save {file}: save_model writes PyTorch checkpoints; use a .pth name")
    state = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
    config = normalize_config(sam.config) if sam.config else infer_config(state)
    chosen = card if card is not None else getattr(sam, "card", None)
    if chosen is None:
        chosen = ModelCard(name=file.stem, config=config)
    if not isinstance(chosen, ModelCard):
        raise ModelCardError(f"card must be a ModelCard, got {type(chosen).__name__}")
    if normalize_config(chosen.config) != config:
        raise ModelCardError(f"model card {chosen.name!r} describes a different architecture than the model being saved")
    card_dict = chosen.to_dict()
    try:
        card_text = json.dumps(card_dict, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"model card {chosen.name!r} cannot be written as JSON: {exc}") from exc
    _check_plain(card_dict, "the model card")
    extra = dict(extra or {})
    clash = sorted(set(extra) & _RESERVED_KEYS)
    if clash:
        raise CheckpointError(f"cannot save {file}: extra uses reserved key(s) {clash}")
    _check_plain(extra, "extra")
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_state_dict": state, "model_card": card_dict, **extra}
    started = time.perf_counter()
    _atomic_write(file, lambda handle: torch.save(payload, handle))
    if card_json:
        _atomic_write(file.with_suffix(".json"), lambda handle: handle.write(card_text.encode("utf-8")))
    logger.info("saved %s (%d tensors) in %.2f s", file, len(state), time.perf_counter() - started)
    return file
