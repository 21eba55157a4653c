"""Click-latency benchmark: the interactive path on a large clinical-size volume.

Measures, for the official-size model (random weights) on a synthetic 512×512×200 CT at
0.8×0.8×2.5 mm: time to the first mask, split into window extraction, image encoder, prompt
encoder + decoder and paste-back; time of each follow-up click in the same window (the previous
result held, as ``result = session.click(...)`` holds it); peak RSS of the process. The CT is
axis-aligned, as almost every CT is stored (the paste-back is then separable,
:mod:`SAMMed3DLib.separable`), and the same CT tilted by 20° (an oblique acquisition: SimpleITK
interpolates every voxel) gives the ``*_oblique_s`` figures. Auto-extension is off so that every
click runs exactly one window (random weights predict arbitrary masks that would trigger it at
random).

Two first clicks are reported, because users meet both: ``cold_first_click_s`` in a fresh
process (model built, image made, then the first click, with the kernels pre-warmed in the
background meanwhile, as the ``sammed3d`` commands and Slicer do, :mod:`SAMMed3DLib.warmup`),
and ``first_click_s`` in a new window after kernels have warmed up (every later new window).
``cold_first_click_no_warm_up_s`` is the fresh-process first click without pre-warming. The cold
figures come from child processes, so this process's warm-up does not leak into them.
``peak_rss_mb`` is the process's peak during the axis-aligned session, before the oblique one.

``precision="bf16"`` runs every click under ``torch.autocast(device, torch.bfloat16)`` (the
network in bf16; windows, logits and paste-back stay float32) and reports ``mask_dice_vs_fp32``,
the Dice of the axis-aligned session's final mask against the same clicks in fp32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)


def synthetic_ct(
    size_xyz: tuple[int, int, int] = (512, 512, 200), spacing_xyz_mm: tuple[float, float, float] = (0.8, 0.8, 2.5), seed: int = 0, oblique: bool = True
) -> sitk.Image:
    """A CT-like float32 volume (air, body ellipse, a bright organ), tilted by 20° when ``oblique``."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    body = (((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.35 * ny)) ** 2) <= 1
    organ = (((x - 0.6 * nx) / (0.12 * nx)) ** 2 + ((y - 0.45 * ny) / (0.1 * ny)) ** 2) <= 1
    slab = np.where(body, 40.0, -1000.0).astype(np.float32) + np.where(organ, 90.0, 0.0).astype(np.float32)
    arr = np.empty((nz, ny, nx), dtype=np.float32)
    for k in range(nz):
        arr[k] = slab + rng.normal(0, 10, size=(ny, nx)).astype(np.float32)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing_xyz_mm)
    if oblique:
        image.SetDirection(sitk.VersorTransform((0.3, 0.2, 1.0), np.deg2rad(20.0)).GetMatrix())
    image.SetOrigin((-200.0, -180.0, -250.0))
    return image


def _build(config: str | dict, model: str | None, device: str) -> Any:
    """Random weights of ``config``, or the checkpoint / registry model ``model`` (loaded from disk, as a user loads it)."""
    if model is not None:
        from .checkpoint import load_model

        return load_model(model, device=device)
    from .model import build_sam3d

    return build_sam3d(config).to(device).eval()


PRECISIONS = ("fp32", "bf16")


def _precision(device: str, precision: str) -> Any:
    """The context the clicks run in: none for fp32, bf16 autocast on ``device``'s type for bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))


def cold_first_click(
    threads: int = 2, config: str | dict = "vit_b_ori", device: str = "cpu", warm_up: bool = True, model: str | None = None, precision: str = "fp32"
) -> dict[str, float]:
    """In this (fresh) process: build the model, make the image, then time the first click.

    This is the order of ``sammed3d segment``: the model loads, the image is read, the session
    starts. With ``warm_up`` the kernels are pre-warmed in the background from the moment the
    model is built, as :func:`~SAMMed3DLib.checkpoint.load_model` does for the ``sammed3d``
    commands, while the image is made (as it would be read); the session stops a warm-up that
    has not finished.

    ``model`` (a registry name or checkpoint path) replaces the random weights of ``config``;
    ``precision`` as in :func:`run_click_latency`.

    Returns ``cold_load_s`` (building or loading the model and moving it to ``device``), ``cold_image_s``
    (making the image) and ``cold_first_click_s`` (session start to first mask).
    """
    import torch

    from .session import Session
    from .warmup import warm_up_in_background

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t = time.perf_counter()
    net = _build(config, model, device)
    load_s = time.perf_counter() - t
    if warm_up:
        warm_up_in_background(net)
    t = time.perf_counter()
    image = synthetic_ct(oblique=False)
    image_s = time.perf_counter() - t
    t = time.perf_counter()
    with _precision(device, precision):
        Session(net, image, auto_extend=False).click(_centre(image), positive=True)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return {"cold_load_s": round(load_s, 4), "cold_image_s": round(image_s, 4), "cold_first_click_s": round(time.perf_counter() - t, 4)}


def run_cold_first_click(
    threads: int = 2,
    config: str | dict = "vit_b_ori",
    device: str = "cpu",
    timeout_s: float = 900.0,
    warm_up: bool = True,
    model: str | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """:func:`cold_first_click` in a child process (a fresh interpreter, nothing warmed up).

    Raises:
        RuntimeError: the child failed (its error output is in the message).
    """
    code = (
        "import json, sys; from SAMMed3DLib.benchmark import cold_first_click; "
        f"print(json.dumps(cold_first_click({threads!r}, {config!r}, {device!r}, {warm_up!r}, {model!r}, {precision!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"the cold-start benchmark process failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def click_session(model: Any, image: sitk.Image, follow_ups: int, **session_options: Any) -> tuple[Any, float, Any, list[float]]:
    """(session, first click seconds, its result, follow-up click seconds): the benchmark's clicks in a new session.

    A first click at the image's centre, then ``follow_ups`` clicks within ±30 mm of it, alternately
    negative and positive (seeded), each result held until the next as a caller holds it.
    ``session_options`` go to :class:`~SAMMed3DLib.session.Session` (``auto_extend`` is off).
    """
    from .session import Session

    session = Session(model, image, auto_extend=False, **session_options)
    centre = _centre(image)
    t = time.perf_counter()
    first = result = session.click(centre, positive=True)
    first_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    next_times = []
    for i in range(follow_ups):
        offset = rng.uniform(-30, 30, size=3)
        t = time.perf_counter()
        result = session.click(centre + offset, positive=bool(i % 2))  # the previous result is held meanwhile
        next_times.append(time.perf_counter() - t)
    del result
    return session, first_s, first, next_times


def _clicks(model: Any, image: sitk.Image, follow_ups: int, context: Any) -> tuple[float, Any, list[float], int, np.ndarray]:
    """(first click seconds, its result, follow-up click seconds, windows opened, final mask (z, y, x) bool)
    in a new session on ``image``, the clicks run in ``context`` (a :func:`_precision`)."""
    with context:
        session, first_s, first, next_times = click_session(model, image, follow_ups)
    return first_s, first, next_times, len(session.windows), sitk.GetArrayViewFromImage(session.mask) > 0


def run_click_latency(
    threads: int = 2,
    follow_ups: int = 10,
    config: str | dict = "vit_b_ori",
    device: str = "cpu",
    cold: bool = True,
    cold_repeats: int = 3,
    model_source: str | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Run the benchmark and return its figures (seconds and MB); ``cold`` adds the fresh-process first
    clicks (medians of ``cold_repeats`` child processes with and without pre-warming).

    ``model_source`` (a registry name such as ``default``, or a checkpoint path) measures that
    model instead of random weights of ``config``. ``precision``: ``fp32`` or ``bf16`` (autocast;
    the module docstring says what it covers).
    """
    import torch

    from .session import Session

    _precision(device, precision)  # a bad value fails before anything runs
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    image = synthetic_ct(oblique=False)
    model = _build(config, model_source, device)
    # Warm-up on a small volume: first-call costs of torch kernels are not the user's latency.
    with _precision(device, precision):
        warm = Session(model, sitk.Image([64, 64, 32], sitk.sitkFloat32), auto_extend=False)
        warm.click_index((32, 32, 16))
        warm.click_index((30, 30, 16), positive=False)

    first_s, first, next_times, windows, mask = _clicks(model, image, follow_ups, _precision(device, precision))
    peak_rss_mb = _peak_rss_mb()  # one CT session, as a user has it
    timings, size, spacing = dict(first.timings), list(image.GetSize()), list(image.GetSpacing())
    dice_vs_fp32 = None
    if precision != "fp32":
        from .metrics import dice

        dice_vs_fp32 = dice(mask, _clicks(model, image, follow_ups, _precision(device, "fp32"))[4])
    del first, image, mask
    oblique_first_s, oblique_first, oblique_next, *_ = _clicks(model, synthetic_ct(oblique=True), follow_ups, _precision(device, precision))
    result = {
        "model": model_source if model_source is not None else f"random weights ({config if isinstance(config, str) else 'custom config'})",
        "image_size_xyz": size,
        "spacing_xyz_mm": spacing,
        "threads": threads,
        "device": device,
        "precision": precision,
        "first_click_s": round(first_s, 4),
        "extract_s": round(timings["extract"], 4),
        "encoder_s": round(timings["encoder"], 4),
        "decoder_s": round(timings["decoder"], 4),
        "paste_s": round(timings["paste"], 4),
        "first_click_overhead_ratio": round(first_s / timings["encoder"], 3),
        "next_click_s": round(statistics.median(next_times), 4),
        "next_click_all_s": [round(v, 4) for v in next_times],
        "first_click_oblique_s": round(oblique_first_s, 4),
        "paste_oblique_s": round(oblique_first.timings["paste"], 4),
        "next_click_oblique_s": round(statistics.median(oblique_next), 4),
        "windows": windows,
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    if dice_vs_fp32 is not None:
        result["mask_dice_vs_fp32"] = round(dice_vs_fp32, 5)
    if torch.device(device).type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(torch.device(device))
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**20, 1)
    if cold:
        # alternately with and without pre-warming, medians: the machine's load falls on both alike
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for _ in range(cold_repeats):
            for warm_up in (True, False):
                runs[warm_up].append(run_cold_first_click(threads, config, device, warm_up=warm_up, model=model_source, precision=precision))
        result["cold_load_s"] = round(statistics.median(r["cold_load_s"] for r in runs[True] + runs[False]), 4)
        result["cold_first_click_s"] = round(statistics.median(r["cold_first_click_s"] for r in runs[True]), 4)
        result["cold_first_click_no_warm_up_s"] = round(statistics.median(r["cold_first_click_s"] for r in runs[False]), 4)
        result["cold_first_click_all_s"] = [r["cold_first_click_s"] for r in runs[True]]
        result["cold_first_click_no_warm_up_all_s"] = [r["cold_first_click_s"] for r in runs[False]]
    return result


def format_table(result: dict[str, Any]) -> str:
    cold = (
        ("cold first click (fresh process)", "cold_first_click_s"),
        ("  the same without pre-warming", "cold_first_click_no_warm_up_s"),
        ("  model build (before it)", "cold_load_s"),
    )
    rows = [(name, result[key]) for name, key in cold if key in result]
    rows += [
        ("first click, new window (total)", result["first_click_s"]),
        ("  window extraction", result["extract_s"]),
        ("  image encoder", result["encoder_s"]),
        ("  prompt enc. + decoder (+ fine head)", result["decoder_s"]),
        ("  paste-back", result["paste_s"]),
        ("follow-up click (median)", result["next_click_s"]),
        ("oblique CT: first click", result["first_click_oblique_s"]),
        ("  paste-back", result["paste_oblique_s"]),
        ("oblique CT: follow-up click (median)", result["next_click_oblique_s"]),
    ]
    lines = [f"model: {result['model']}"] if "model" in result else []
    if "precision" in result:
        lines.append(f"device: {result.get('gpu', result['device'])}, {result['precision']}")
    lines += [f"{'step':<38}{'seconds':>10}"] + [f"{name:<38}{value:>10.4f}" for name, value in rows]
    lines.append(f"{'first click / encoder':<38}{result['first_click_overhead_ratio']:>10.3f}")
    lines.append(f"{'peak RSS (MB)':<38}{result['peak_rss_mb']:>10.1f}")
    if "peak_gpu_memory_mb" in result:
        lines.append(f"{'peak GPU memory (MB)':<38}{result['peak_gpu_memory_mb']:>10.1f}")
    if "mask_dice_vs_fp32" in result:
        lines.append(f"{'final mask Dice vs fp32':<38}{result['mask_dice_vs_fp32']:>10.5f}")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True)
