"""Click-latency benchmark: the interactive path on a large clinical-size volume.

Measures, for the official-size model (random weights) on a synthetic 512×512×200 CT at
0.8×0.8×2.5 mm with an oblique direction: time to the first mask, split into window extraction,
image encoder, prompt encoder + decoder and paste-back; time of each follow-up click in the same
window; peak RSS of the process. Auto-extension is off so that every click runs exactly one
window (random weights predict arbitrary masks that would trigger it at random).

Two first clicks are reported, because users meet both: ``cold_first_click_s`` in a fresh
process (model built, then the first click with no warm-up: what the first click after starting
the tool costs), and ``first_click_s`` in a new window after kernels have warmed up (every later
new window). ``cold_first_click_s`` comes from a child process, so this process's warm-up does
not leak into it.
"""

from __future__ import annotations

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


def synthetic_ct(size_xyz: tuple[int, int, int] = (512, 512, 200), spacing_xyz_mm: tuple[float, float, float] = (0.8, 0.8, 2.5), seed: int = 0) -> sitk.Image:
    """A CT-like float32 volume (air, body ellipse, a bright organ) with an oblique direction."""
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
    rot = sitk.VersorTransform((0.3, 0.2, 1.0), np.deg2rad(20.0))
    image.SetDirection(rot.GetMatrix())
    image.SetOrigin((-200.0, -180.0, -250.0))
    return image


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cold_first_click(threads: int = 2, config: str | dict = "vit_b_ori", device: str = "cpu") -> dict[str, float]:
    """In this (fresh) process: build the model, then time the first click with no warm-up.

    Returns ``cold_load_s`` (building the model and moving it to ``device``) and
    ``cold_first_click_s`` (the first click, window extraction to paste-back).
    """
    import torch

    from .model import build_sam3d
    from .session import Session

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    image = synthetic_ct()
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
    t = time.perf_counter()
    model = build_sam3d(config).to(device)
    load_s = time.perf_counter() - t
    session = Session(model, image, auto_extend=False)
    t = time.perf_counter()
    session.click(centre, positive=True)
    return {"cold_load_s": round(load_s, 4), "cold_first_click_s": round(time.perf_counter() - t, 4)}


def run_cold_first_click(threads: int = 2, config: str | dict = "vit_b_ori", device: str = "cpu", timeout_s: float = 900.0) -> dict[str, float]:
    """:func:`cold_first_click` in a child process (a fresh interpreter, nothing warmed up).

    Raises:
        RuntimeError: the child failed (its error output is in the message).
    """
    code = (
        "import json, sys; from SAMMed3DLib.benchmark import cold_first_click; "
        f"print(json.dumps(cold_first_click({threads!r}, {config!r}, {device!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"the cold-start benchmark process failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_click_latency(
    threads: int = 2, follow_ups: int = 10, config: str | dict = "vit_b_ori", device: str = "cpu", cold: bool = True
) -> dict[str, Any]:
    """Run the benchmark and return its figures (seconds and MB); ``cold`` adds the fresh-process first click."""
    import torch

    from .model import build_sam3d
    from .session import Session

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    image = synthetic_ct()
    model = build_sam3d(config).to(device)
    geometry_centre = np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
    # Warm-up on a small volume: first-call costs of torch kernels are not the user's latency.
    warm = Session(model, sitk.Image([64, 64, 32], sitk.sitkFloat32), auto_extend=False)
    warm.click_index((32, 32, 16))
    warm.click_index((30, 30, 16), positive=False)

    session = Session(model, image, auto_extend=False)
    t = time.perf_counter()
    first = session.click(geometry_centre, positive=True)
    first_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    next_times = []
    for i in range(follow_ups):
        offset = rng.uniform(-30, 30, size=3)
        t = time.perf_counter()
        session.click(geometry_centre + offset, positive=bool(i % 2))
        next_times.append(time.perf_counter() - t)
    result = {
        "image_size_xyz": list(image.GetSize()),
        "spacing_xyz_mm": list(image.GetSpacing()),
        "threads": threads,
        "device": device,
        "first_click_s": round(first_s, 4),
        "extract_s": round(first.timings["extract"], 4),
        "encoder_s": round(first.timings["encoder"], 4),
        "decoder_s": round(first.timings["decoder"], 4),
        "paste_s": round(first.timings["paste"], 4),
        "first_click_overhead_ratio": round(first_s / first.timings["encoder"], 3),
        "next_click_s": round(statistics.median(next_times), 4),
        "next_click_all_s": [round(v, 4) for v in next_times],
        "windows": len(session.windows),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    if cold:
        result.update(run_cold_first_click(threads, config, device))
    return result


def format_table(result: dict[str, Any]) -> str:
    rows = [(name, result[key]) for name, key in (("cold first click (fresh process)", "cold_first_click_s"), ("  model build", "cold_load_s")) if key in result]
    rows += [
        ("first click, new window (total)", result["first_click_s"]),
        ("  window extraction", result["extract_s"]),
        ("  image encoder", result["encoder_s"]),
        ("  prompt enc. + decoder (+ fine head)", result["decoder_s"]),
        ("  paste-back", result["paste_s"]),
        ("follow-up click (median)", result["next_click_s"]),
    ]
    lines = [f"{'step':<38}{'seconds':>10}"] + [f"{name:<38}{value:>10.4f}" for name, value in rows]
    lines.append(f"{'first click / encoder':<38}{result['first_click_overhead_ratio']:>10.3f}")
    lines.append(f"{'peak RSS (MB)':<38}{result['peak_rss_mb']:>10.1f}")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True)
