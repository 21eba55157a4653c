"""Choose the torch device a model runs on, from a user's word for it.

One function, :func:`resolve_device`, turns ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or
``"mps"`` into a :class:`torch.device` and refuses a device this machine does not have with a
:class:`~SAMMed3DLib.errors.DeviceError` that lists the ones it has. ``"auto"`` prefers CUDA,
then Apple's MPS, then the CPU. The CLI, the Slicer logic and :func:`SAMMed3DLib.load_model`
and the trainer (``training.trainer``, one CUDA device per DDP process via ``cuda_index``, no
MPS) all go through it, so a typo fails the same way everywhere.
"""

from __future__ import annotations

import re

import torch

from .errors import DeviceError

#: Accepted spellings, for error messages.
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N", "mps")

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Names of the devices usable on this machine, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def is_device_name(name: str | torch.device, *, allow_mps: bool = True) -> bool:
    """Whether :func:`resolve_device` knows the spelling ``name`` (availability is not checked).

    For option validation before any device is touched (e.g. ``training.config``).
    """
    text = str(name).strip().lower()
    return text in ("auto", "cpu") or (allow_mps and text == "mps") or _CUDA_RE.match(text) is not None


def resolve_device(name: str | torch.device = "auto", *, cuda_index: int | None = None, allow_mps: bool = True) -> torch.device:
    """Turn a device name into an available :class:`torch.device`.

    Args:
        name: ``"auto"`` (CUDA if available, else MPS, else CPU), ``"cpu"``, ``"cuda"`` (the
            current CUDA device), ``"cuda:N"``, ``"mps"``, or a ``torch.device``. Case and
            surrounding spaces are ignored.
        cuda_index: the CUDA device that ``"auto"`` and ``"cuda"`` without an index mean; None
            = the current CUDA device. A DDP process passes its ``LOCAL_RANK``.
        allow_mps: False when the caller cannot run on Apple's MPS (the trainer): ``"auto"`` then
            skips MPS and ``"mps"`` is refused.

    Returns:
        The device; ``"cuda"`` without an index resolves to ``cuda:<cuda_index or current device>``.

    Raises:
        DeviceError: the name is unknown, or this machine lacks that device (the message lists
            the available ones).
    """
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            text = "cuda"
        elif allow_mps and _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    available = ", ".join(available_devices())
    if text == "mps":
        if not allow_mps:
            raise DeviceError("device 'mps' (Apple GPU) is not supported here; use --device cpu or cuda")
        if not _mps_available():
            raise DeviceError(f"device 'mps' (Apple GPU) is not available on this machine; available: {available}. Use --device cpu")
        return torch.device("mps")
    match = _CUDA_RE.match(text)
    if match is None:
        choices = DEVICE_CHOICES if allow_mps else tuple(c for c in DEVICE_CHOICES if c != "mps")
        raise DeviceError(f"unknown device {str(name)!r}; use one of {', '.join(choices)} (available here: {available})")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {text!r} is not available: this torch build or machine has no usable CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); available: {available}. Use --device cpu"
        )
    if match.group(1) is not None:
        index = int(match.group(1))
    else:
        index = torch.cuda.current_device() if cuda_index is None else int(cuda_index)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device 'cuda:{index}' does not exist: this machine has {count} CUDA device(s); available: {available}")
    return torch.device("cuda", index)
