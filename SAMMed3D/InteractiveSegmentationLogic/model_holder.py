"""Which model the logic runs, and loading it on first use (download included).

The widget lets the user pick a model (registry name, checkpoint file) and a device at any time,
while the worker thread may be loading or running the current one. :class:`ModelHolder` keeps
the choice and the loaded network behind a lock held only for an instant (never during a
download or a load, so changing the choice never freezes the main thread), and a generation
number that changes with every choice: it is part of the logic's session key, so a new model
never reuses embeddings computed by the previous one, and a model loaded for an older choice is
not kept.

The first model loaded on a GPU is warmed up (:func:`warm_up`: one click on an empty window)
before the first real click: CUDA's lazy initialisation and cuDNN's kernel choice cost seconds
once, and the user sees them as "Warming up" progress instead of a first click that hangs. On
the CPU nothing is warmed up: a first click there costs the same either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from SAMMed3DLib.errors import ConfigError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float, str], None]


class ModelHolder:
    """A model choice and, once loaded, the model.

    Args:
        spec: a registry name (``"default"``, ``"sam_med3d_turbo"``), a checkpoint path, or an
            already built :class:`~SAMMed3DLib.model.Sam3D` (placed on ``device`` at once).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        warm: warm a loaded model up (:func:`warm_up`) before handing it out; None: on CUDA only.
    """

    def __init__(self, spec: Any, device: str, warm: bool | None = None) -> None:
        self.spec = spec
        self.warm = warm  # None: warm up on CUDA only
        self.device = device
        self.generation = 0
        self._model: Any = None
        self._lock = threading.Lock()
        if not isinstance(spec, str):
            self._model = self._place(spec)

    @property
    def model(self) -> Any:
        """The loaded model, or None before :meth:`load`."""
        return self._model

    def choose(self, spec: Any, device: str | None = None) -> None:
        """Use another model (name, path or Sam3D) and/or device from now on."""
        with self._lock:
            self.spec = spec
            if device is not None:
                self.device = device
            self._model = None if isinstance(spec, str) else self._place(spec)
            self.generation += 1

    def _place(self, model: Any) -> Any:
        import torch

        from SAMMed3DLib.devices import resolve_device
        from SAMMed3DLib.model import Sam3D

        if not isinstance(model, Sam3D):
            raise ConfigError(f"model must be a registry name, a checkpoint path or a Sam3D, got {type(model).__name__}")
        with torch.no_grad():
            return model.to(resolve_device(self.device)).eval()

    def needs_download(self) -> bool:
        """Whether :meth:`load` will download first (a registry model not cached yet)."""
        if self._model is not None or not isinstance(self.spec, str):
            return False
        from SAMMed3DLib.registry import default_registry, is_registered

        if not is_registered(self.spec):
            return False
        registry = default_registry()
        return registry.entry(self.spec).kind != "shipped" and not registry.model_path(self.spec).is_file()

    def load(
        self,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        allow_download: bool = True,
    ) -> Any:
        """Load the model if needed and return it; a registry model is downloaded on first use.

        Args:
            progress: ``progress(done, total, message)`` (bytes while downloading).
            cancel: set it from another thread to abort a download.
            allow_download: False refuses to download (the user declined).

        Raises:
            UnknownModelError, CheckpointError, DownloadError, DeviceError: from the core loader.
        """
        with self._lock:
            if self._model is not None:
                return self._model
            spec, device, generation = self.spec, self.device, self.generation
        # Download and load without the lock: the main thread can change the choice (which
        # must never wait minutes for a download) or cancel while this runs.
        from SAMMed3DLib.checkpoint import load_model
        from SAMMed3DLib.registry import ensure_model, is_registered

        started = time.perf_counter()
        if is_registered(spec):

            def bytes_progress(done: int, total: int | None) -> None:
                if progress is not None:
                    progress(float(done), float(total or 0), f"Downloading model {spec}")

            ensure_model(spec, download=allow_download, progress=bytes_progress, cancel=cancel)
        if progress is not None:
            progress(0.0, 0.0, f"Loading model {spec}")
        model = load_model(spec, device=device, warm_up=True)  # kernels warmed in the background
        logger.info("model %s loaded on %s in %.2f s", spec, device, time.perf_counter() - started)
        if self.warm or (self.warm is None and _on_cuda(model)):
            if progress is not None:
                progress(0.0, 0.0, f"Warming up model {spec}")
            logger.info("model %s warmed up in %.2f s", spec, warm_up(model))
        with self._lock:
            if self.generation == generation and self._model is None:
                self._model = model  # still the choice: keep it; otherwise it serves this call only
            return self._model if self.generation == generation else model


def _on_cuda(model: Any) -> bool:
    return any(p.is_cuda for p in model.parameters())


def warm_up(model: Any) -> float:
    """One click on an empty image of one window, on the model's device; returns the seconds it took.

    Runs the whole path of a click (resampling, encoder, decoder, paste), so every kernel a real
    click needs has been chosen and loaded once.
    """
    import SimpleITK as sitk

    from SAMMed3DLib.session import Session

    started = time.perf_counter()
    side = int(model.img_size)
    image = sitk.Image([side] * 3, sitk.sitkFloat32)
    card = getattr(model, "card", None)
    if card is not None:
        image.SetSpacing([float(card.spacing_mm)] * 3)  # exactly one window
    session = Session(model, image, auto_extend=False, keep_history=False)
    session.click_index((side // 2,) * 3)
    return time.perf_counter() - started
