"""The first click after a model loads should cost what later ones do: pre-warming, OpenMP's wait.

The first pass through a network pays one-off costs that later passes do not: oneDNN compiles its
convolution kernels for each new shape, OpenMP starts its thread team, CUDA initialises its
libraries, and glibc serves the encoder's large temporaries from fresh pages until its mmap
threshold has adapted to them (a first click on a 512×512×200 CT made three times the page faults
of the second; ``benchmarks/README.md``). :func:`warm_up` runs each kind of layer once at the
shapes a click uses, on a zero window: the patch embedding, one transformer block of each
attention kind (not all of them: the others run the same kernels), the neck, the prompt encoder
and mask decoder with one click, and the fine head when there is one. It costs about a fifth of an
encoder pass.

Who warms up: the ``sammed3d`` commands start it in the background right after loading a model,
``load_model(..., warm_up=True)`` does for the Python API, and the Slicer logic's model holder
after each load. :func:`warm_up_in_background` never blocks: the warm-up uses the time until the
first click (reading the image, placing the click). A :class:`~SAMMed3DLib.session.Session` that
starts before it has finished stops it (:func:`stop_warm_up`: the step in progress ends, the rest
is skipped), so the two never compete for the same cores and the first click is never later
than without pre-warming by more than one step (about a twelfth of an encoder pass). Measured
pre-warming right before the first click, in ``sammed3d benchmark``, waiting for the whole
warm-up cost more than it saved (``benchmarks/README.md``): it pays only in time that would
otherwise be idle.

OpenMP's passive wait (``OMP_WAIT_POLICY=PASSIVE``, set by ``SAMMed3DLib/__init__.py`` before
torch loads) only counts if it is in the environment when torch is first imported: libgomp reads
it once, when it loads. :func:`openmp_wait_is_passive` says whether that happened, and
:func:`warn_if_openmp_spins` tells the user (once) how to fix it when it did not.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

logger = logging.getLogger(__name__)

_lock = threading.Lock()
#: model → its warm-up state; weak, so a model dropped by its user is not kept alive here.
_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_warned_about_openmp = False


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while a warm-up runs
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()  # set: skip the remaining steps of a background warm-up
        self.warmed_on: str | None = None  # the device the kernels were warmed on


def _state(model: Any) -> _State:
    with _lock:
        state = _states.get(model)
        if state is None:
            state = _states[model] = _State()
        return state


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _steps(model: Any, device: Any) -> list[Any]:
    """The warm-up as steps (closures run in order), each about a twelfth of an encoder pass or less."""
    import torch

    encoder = model.image_encoder
    size = model.img_size
    window = torch.zeros((1, encoder.in_chans, size, size, size), device=device)
    held: dict[str, Any] = {}

    def patches() -> None:
        tokens = encoder.patch_embed(window)
        held["tokens"] = tokens + encoder.pos_embed if encoder.pos_embed is not None else tokens

    def block(b: Any) -> Any:
        return lambda: held.__setitem__("tokens", b(held["tokens"]))

    def neck() -> None:
        held["embedding"] = encoder.neck(held["tokens"].permute(0, 4, 1, 2, 3))

    def decoder() -> None:
        coords = torch.full((1, 1, 3), size / 2.0, device=device)
        labels = torch.ones((1, 1), dtype=torch.int64, device=device)
        previous = torch.zeros((1, 1, *model.low_res_size), device=device)
        logits, _ = model.predict_low_res(held["embedding"], coords, labels, previous)
        model.refine(window if model.has_fine_head else None, logits, coords, labels)

    kinds: dict[int, Any] = {}
    for b in encoder.blocks:  # one block of each attention kind (window size): the others run the same kernels
        kinds.setdefault(b.window_size, b)
    return [patches, *(block(b) for b in kinds.values()), neck, decoder]


def warm_up(model: Any, stop: threading.Event | None = None) -> float:
    """Run every kind of layer of ``model`` once at the shapes of a click; returns the seconds it took.

    Does nothing (0.0) when the model was already warmed on its current device. Thread-safe: a
    second caller waits for a warm-up in progress instead of running another.

    Args:
        model: a :class:`~SAMMed3DLib.model.Sam3D`, on the device it will run on.
        stop: when set, the remaining steps are skipped (the model then does not count as warmed).
    """
    import torch

    warn_if_openmp_spins(model)
    state = _state(model)
    with state.lock:
        device = _device(model)
        if state.warmed_on == str(device):
            return 0.0
        started = time.perf_counter()
        with torch.inference_mode():
            for step in _steps(model, device):
                if stop is not None and stop.is_set():
                    logger.debug("pre-warming stopped after %.2f s: a click came first", time.perf_counter() - started)
                    return time.perf_counter() - started
                step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state.warmed_on = str(device)
        seconds = time.perf_counter() - started
        logger.debug("warmed up the model's kernels on %s in %.2f s", device, seconds)
        return seconds


def _run_in_background(model_ref: weakref.ref, stop: threading.Event) -> None:
    model = model_ref()
    if model is None:
        return
    try:
        warm_up(model, stop)
    except Exception as exc:  # noqa: BLE001 - a failed warm-up only means a slower first click
        logger.warning("pre-warming the model failed (the first click will be slower): %s", exc)


def warm_up_in_background(model: Any) -> threading.Thread:
    """Start :func:`warm_up` on a daemon thread and return at once (the thread is returned)."""
    state = _state(model)
    stop = threading.Event()
    thread = threading.Thread(target=_run_in_background, args=(weakref.ref(model), stop), name="sammed3d-warm-up", daemon=True)
    with _lock:
        state.thread, state.stop = thread, stop
    thread.start()
    return thread


def wait_for_warm_up(model: Any, timeout: float | None = None) -> bool:
    """Wait until a background warm-up of ``model`` has finished; True when none is running (any more)."""
    with _lock:
        state = _states.get(model)
        thread = state.thread if state is not None else None
    if thread is None or thread is threading.current_thread():
        return True
    thread.join(timeout)
    return not thread.is_alive()


def stop_warm_up(model: Any) -> None:
    """Stop a background warm-up of ``model`` that has not finished: its current step ends, the rest is skipped.

    A session calls it before its first click, which then warms the kernels itself.
    """
    with _lock:
        state = _states.get(model)
        if state is None or state.thread is None:
            return
        state.stop.set()
    wait_for_warm_up(model)


def openmp_wait_is_passive() -> bool:
    """Whether OpenMP threads wait passively in this process.

    libgomp (torch's OpenMP on Linux) reads ``OMP_WAIT_POLICY`` once, when torch is first
    imported: SAMMed3DLib sets it to PASSIVE if it is imported first (a value the user set wins).
    If torch came first, the value in the environment when SAMMed3DLib was imported is taken as
    the one torch saw; unset means libgomp's default, which spins.
    """
    from . import _OMP_WAIT_POLICY_AT_IMPORT

    return _OMP_WAIT_POLICY_AT_IMPORT is not None and _OMP_WAIT_POLICY_AT_IMPORT.strip().upper() == "PASSIVE"


def warn_if_openmp_spins(model: Any = None) -> bool:
    """Warn once when torch was imported before SAMMed3DLib without ``OMP_WAIT_POLICY`` (returns whether it warned).

    Then OpenMP threads spin while they wait: with another process busy on one of 2 cores, a
    first mask took 20 s instead of 7 s. A policy the user set (even ACTIVE) is respected, and
    nothing is said for one thread or a model on an accelerator.
    """
    global _warned_about_openmp
    from . import _OMP_WAIT_POLICY_AT_IMPORT

    if _warned_about_openmp or _OMP_WAIT_POLICY_AT_IMPORT is not None:
        return False
    import torch

    if torch.get_num_threads() < 2 or (model is not None and _device(model).type != "cpu"):
        return False
    _warned_about_openmp = True
    logger.warning(
        "torch was imported before SAMMed3DLib, so OpenMP threads spin while they wait: on a busy machine a click can take "
        "several times longer. Set OMP_WAIT_POLICY=PASSIVE in the environment, or import SAMMed3DLib before torch."
    )
    return True
