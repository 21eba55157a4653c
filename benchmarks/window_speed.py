"""Speed of window extraction, normalisation and paste-back on a CT-sized oblique volume.

    python benchmarks/window_speed.py [--threads 2] [--repeats 7] [--out benchmarks/results/window_speed.json]

A synthetic CT (512 x 512 x 200 voxels, 0.8 x 0.8 x 2.5 mm, direction tilted 15 degrees about x and
10 degrees about z) is built in memory; a 128^3 window at 1.5 mm is centred in it. Each step is
timed as the median of ``--repeats`` runs after one warm-up. The same CT stored axis-aligned (same
voxels, direction the identity) is extracted by SimpleITK and by the separable path
(:mod:`SAMMed3DLib.window_image`, what a session uses then). Target (issue "Interactive session"):
extraction + paste-back <= 0.1 s for an organ-sized object. Rows marked "alternative" are the
designs that were measured and not chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from SAMMed3DLib.atomic import atomic_write_text
from SAMMed3DLib.card import official_card
from SAMMed3DLib.geometry import ImageGeometry, Window, extract_window
from SAMMed3DLib import paste as paste_module
from SAMMed3DLib.paste import paste_logits, resample_logits_to_grid, window_footprint
from SAMMed3DLib.preprocessing import normalize_window
from SAMMed3DLib.window_image import extract_window_fast

TARGET_S = 0.1


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return m


def synthetic_ct(seed: int = 0) -> sitk.Image:
    """512 x 512 x 200 int16-valued float32 CT: air, an elliptic body, organs, a spine, noise."""
    size_xyz, spacing = (512, 512, 200), (0.8, 0.8, 2.5)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:512, 0:512].astype(np.float32)
    body = ((x - 256) / 220) ** 2 + ((y - 270) / 160) ** 2 < 1.0
    organ = ((x - 190) / 70) ** 2 + ((y - 250) / 60) ** 2 < 1.0
    spine = ((x - 256) / 25) ** 2 + ((y - 380) / 25) ** 2 < 1.0
    plane = np.full((512, 512), -1000.0, dtype=np.float32)
    plane[body] = 40.0
    plane[organ] = 60.0
    plane[spine] = 700.0
    volume = np.empty((200, 512, 512), dtype=np.float32)
    for k in range(200):
        volume[k] = plane + rng.normal(0.0, 15.0, size=(512, 512)).astype(np.float32)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    direction = rotation(0, 15.0) @ rotation(2, 10.0)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((-200.0, -180.0, -250.0))
    assert image.GetSize() == size_xyz
    return image


def sphere_logits(radius_mm: float, side: int = 32, size: int = 128, spacing: float = 1.5) -> np.ndarray:
    """Low-res logits (tensor order) = signed distance to a sphere at the window centre, in mm."""
    x = (size / side) * (np.arange(side) + 0.5) - 0.5
    t = np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1)
    return (radius_mm - np.linalg.norm((t - size // 2) * spacing, axis=-1)).astype(np.float32)


def median_time(fn: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None) -> tuple[float, float, float]:
    """(median wall, min wall, median CPU) seconds of ``fn`` over ``repeats`` runs after one warm-up.

    ``setup`` runs untimed before each run. CPU time (all threads of this process) does not grow
    when other processes compete for the cores, so it shows the cost on a busy machine too.
    """
    if setup:
        setup()
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if setup:
            setup()
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def torch_extract(image: sitk.Image, window: Window) -> np.ndarray:
    """Alternative extraction: crop the window's bounding box, then torch grid_sample."""
    geom = ImageGeometry.from_image(image)
    corners = geom.lps_to_index(window.corners_lps())
    lo = np.maximum(np.floor(corners.min(axis=0)) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(corners.max(axis=0)) + 2, np.asarray(geom.size_xyz)).astype(int)
    view = sitk.GetArrayViewFromImage(image)
    sub = torch.from_numpy(np.ascontiguousarray(view[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]))[None, None]
    n = hi - lo
    t = torch.arange(window.size, dtype=torch.float64)
    pts = window.index_to_lps(np.zeros(3))
    a = (geom.direction.T @ (window.spacing_mm * np.diag([-1.0, -1.0, 1.0]))) / geom.spacing_xyz_mm[:, None]
    b = geom.lps_to_index(pts) - lo
    scale = 2.0 / (n - 1)
    a_t = torch.from_numpy(a * scale[:, None]).float()
    b_t = torch.from_numpy(b * scale - 1).float()
    tf = t.float()
    grid = b_t + tf[:, None, None, None] * a_t[:, 0] + tf[None, :, None, None] * a_t[:, 1] + tf[None, None, :, None] * a_t[:, 2]
    return F.grid_sample(sub, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0].numpy()


def _inside_before(fp, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> np.ndarray:
    """The window's inside mask over a box as paste.py computed it before (every column compared with its row's bounds)."""
    rows = (slice(int(lo_xyz[2] - fp.lo_xyz[2]), int(hi_xyz[2] - fp.lo_xyz[2]) + 1), slice(int(lo_xyz[1] - fp.lo_xyz[1]), int(hi_xyz[1] - fp.lo_xyz[1]) + 1))
    width = int(hi_xyz[0] - lo_xyz[0]) + 1
    i_values = np.arange(width, dtype=np.int32)[None, None, :]
    i_lo = np.clip(fp.i_lo[rows] - lo_xyz[0], -1, width).astype(np.int32)[:, :, None]
    i_hi = np.clip(fp.i_hi[rows] - lo_xyz[0], -1, width).astype(np.int32)[:, :, None]
    return (i_values >= i_lo) & (i_values <= i_hi)


def _positive_before(low: np.ndarray, window: Window, geom: ImageGeometry, fp, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """paste.py's decisions over the positive box before slabs: the padded logits image over the whole box (or the mixed blocks' box)."""
    inside = _inside_before(fp, lo, hi)
    image = paste_module._low_res_image(low, window)
    block, surely_positive, mixed = paste_module._classify_blocks(low, window, geom, lo, hi)
    m_lo = m_hi = None
    if mixed.any():
        kb, jb, ib = (np.flatnonzero(mixed.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
        m_lo = np.array([ib[0] * block[0], jb[0] * block[1], kb[0] * block[2]]) + lo
        m_hi = np.minimum(np.array([(ib[-1] + 1) * block[0], (jb[-1] + 1) * block[1], (kb[-1] + 1) * block[2]]) + lo - 1, hi)
    mixed_voxels = 0 if m_lo is None else int(np.prod(m_hi - m_lo + 1))
    if not surely_positive.any() or mixed_voxels > paste_module._MIXED_SHARE_LIMIT * int(np.prod(hi - lo + 1)):
        return paste_module._sample_box(image, geom, lo, hi, positive_only=True) & inside
    nbk, nbj, nbi = surely_positive.shape
    expanded = np.broadcast_to(surely_positive[:, None, :, None, :, None], (nbk, block[2], nbj, block[1], nbi, block[0]))
    positive = expanded.reshape(nbk * block[2], nbj * block[1], nbi * block[0])[: inside.shape[0], : inside.shape[1], : inside.shape[2]].copy()
    if m_lo is not None:
        sub = tuple(slice(int(m_lo[a] - lo[a]), int(m_hi[a] - lo[a]) + 1) for a in (2, 1, 0))
        positive[sub] = paste_module._sample_box(image, geom, m_lo, m_hi, positive_only=True)
    return positive & inside


def paste_before(low: np.ndarray, window: Window, geom: ImageGeometry, mask: np.ndarray) -> None:
    """paste_logits's general path as it was before the oblique slabs (for the before/after ratio, value 1)."""
    fp = paste_module._footprint(window, geom)
    box = paste_module._positive_box(low, window, geom, fp)
    positive = None if box is None else _positive_before(low, window, geom, fp, box[0], box[1])
    region = mask[fp.slices_zyx]
    i_values = np.arange(fp.lo_xyz[0], fp.hi_xyz[0] + 1)
    for k in range(region.shape[0]):  # clear the window's non-zero voxels, slab by slab
        slab = region[k]
        if not slab.any():
            continue
        rows = np.flatnonzero(slab.any(axis=1))
        j0, j1 = int(rows[0]), int(rows[-1]) + 1
        inside = (i_values[None, :] >= fp.i_lo[k, j0:j1, None]) & (i_values[None, :] <= fp.i_hi[k, j0:j1, None])
        np.copyto(slab[j0:j1], np.uint8(0), where=inside)
    if box is not None and positive is not None:
        lo, hi = box
        sub = region[tuple(slice(int(lo[a] - fp.lo_xyz[a]), int(hi[a] - fp.lo_xyz[a]) + 1) for a in (2, 1, 0))]
        np.copyto(sub, np.uint8(1), where=positive)


def model_logits(image: sitk.Image, window: Window, which: str) -> np.ndarray:
    """Shown logits of one click at the window centre: official-size random weights or the default model."""
    from SAMMed3DLib import load_model
    from SAMMed3DLib.model import build_sam3d
    from SAMMed3DLib.session import Session

    torch.manual_seed(0)
    model = build_sam3d("vit_b_ori") if which == "official" else load_model("default", device="cpu")
    session = Session(model, image, auto_extend=False)
    session.click(window.index_to_lps(np.array([[63.5, 63.5, 63.5]]))[0], positive=True)
    return session._windows[0].output[0, 0].numpy().copy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/window_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    load_before = round(os.getloadavg()[0], 2)
    image = synthetic_ct()
    geom = ImageGeometry.from_image(image)
    click = geom.index_to_lps(np.array([200.0, 250.0, 100.0]))  # in the organ
    window = Window.centred_at(click, 128, 1.5)
    card = official_card()
    footprint = window_footprint(window, geom)
    fp_shape = tuple(s.stop - s.start for s in footprint)
    raw = extract_window(image, window)
    mask = np.zeros(geom.shape_zyx, dtype=np.uint8)
    rows: list[dict[str, object]] = []

    def add(name: str, fn: Callable[[], object], setup: Callable[[], object] | None = None, note: str = "") -> float:
        med, best, cpu = median_time(fn, args.repeats, setup)
        rows.append({"step": name, "median_s": round(med, 4), "min_s": round(best, 4), "cpu_s": round(cpu, 4), "note": note})
        return med

    clear = lambda: mask.fill(0)  # noqa: E731
    t_extract = add("extract_window 128^3 (SimpleITK linear)", lambda: extract_window(image, window))
    t_norm = add("normalize_window (zscore_nonzero)", lambda: normalize_window(raw, card))
    scratch = np.empty_like(raw)
    add("normalize_window in place (copy=False)", lambda: normalize_window(scratch, card, copy=False), lambda: np.copyto(scratch, raw))
    aligned = sitk.Image(image)
    aligned.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    aligned_geom = ImageGeometry.from_image(aligned)
    aligned_window = Window.centred_at(aligned_geom.index_to_lps(np.array([200.0, 250.0, 100.0])), 128, 1.5)
    t_aligned_sitk = add("axis-aligned CT: extract_window 128^3 (SimpleITK linear)", lambda: extract_window(aligned, aligned_window))
    t_aligned_fast = add(
        "axis-aligned CT: extract_window_fast 128^3 (separable)", lambda: extract_window_fast(aligned, aligned_window, aligned_geom), note="the session's path"
    )
    aligned_diff = float(np.abs(extract_window_fast(aligned, aligned_window, aligned_geom) - extract_window(aligned, aligned_window)).max())
    logits = {r: sphere_logits(r) for r in (30.0, 60.0)}
    t_paste30 = add("paste_logits, sphere r=30 mm, empty mask", lambda: paste_logits(logits[30.0], window, geom, mask), clear)

    def refill() -> None:
        mask.fill(0)
        paste_logits(logits[30.0], window, geom, mask)

    t_repaste = add("paste_logits, sphere r=30 mm over previous result", lambda: paste_logits(logits[30.0], window, geom, mask), refill)
    add("paste_logits, sphere r=60 mm, empty mask", lambda: paste_logits(logits[60.0], window, geom, mask), clear)
    ones = np.ones((32, 32, 32), np.float32)
    add("paste_logits, all positive (worst case)", lambda: paste_logits(ones, window, geom, mask), clear)
    ratios = {}
    for which in ("official", "default"):
        low = model_logits(image, window, which)
        refill_model = lambda: (mask.fill(0), paste_logits(low, window, geom, mask))  # noqa: E731
        kind = f"{which} model logits {low.shape[0]}^3 ({100 * float((low > 0).mean()):.0f}% positive), over its previous paste"
        after = add(f"paste_logits, {kind}", lambda: paste_logits(low, window, geom, mask), refill_model)
        before = add(f"before: paste_logits, {kind}", lambda: paste_before(low, window, geom, mask), refill_model, note="paste_logits before: padded image over the whole box, compared inside mask")
        ratios[which] = round(before / after, 2)
    add("resample_logits_to_grid, whole footprint", lambda: resample_logits_to_grid(logits[30.0], window, geom))
    add("alternative: crop + torch grid_sample extraction", lambda: torch_extract(image, window), note="not used")
    low_t = torch.from_numpy(logits[30.0])[None, None]
    add(
        "alternative: official F.interpolate 32^3->128^3 only",
        lambda: F.interpolate(low_t, size=(128, 128, 128), mode="trilinear", align_corners=False),
        note="not needed: direct interpolation",
    )
    max_diff = float(np.abs(torch_extract(image, window) - raw)[2:-2, 2:-2, 2:-2].max())

    typical = t_extract + t_norm + t_paste30
    summary = {
        "extract_plus_paste_s": round(t_extract + t_paste30, 4),
        "extract_normalize_paste_s": round(typical, 4),
        "extract_normalize_repaste_s": round(t_extract + t_norm + t_repaste, 4),
        "target_s": TARGET_S,
        "meets_target": bool(t_extract + t_paste30 <= TARGET_S),
        "paste_before_over_after": ratios,
        "axis_aligned_extract_sitk_over_separable": round(t_aligned_sitk / t_aligned_fast, 2),
    }
    result = {
        "benchmark": "window_speed",
        "image": {"size_xyz": list(geom.size_xyz), "spacing_xyz_mm": geom.spacing_xyz_mm.tolist(), "direction": "15 deg about x, 10 deg about z"},
        "window": {"size": 128, "spacing_mm": 1.5},
        "footprint_shape_zyx": list(fp_shape),
        "footprint_voxels": int(np.prod(fp_shape)),
        "torch_vs_sitk_extraction_max_abs_diff_hu": round(max_diff, 4),
        "separable_vs_sitk_extraction_max_abs_diff_hu": round(aligned_diff, 6),
        "threads": args.threads,
        "load_average_before": load_before,
        "load_average_after": round(os.getloadavg()[0], 2),
        "repeats": args.repeats,
        "rows": rows,
        "summary": summary,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "simpleitk": sitk.Version.VersionString(),
            "numpy": np.__version__,
        },
    }
    width = max(len(r["step"]) for r in rows)
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    print(f"{'step':<{width}}  median_ms  min_ms  cpu_ms")
    for r in rows:
        print(f"{r['step']:<{width}}  {1000 * r['median_s']:9.1f}  {1000 * r['min_s']:6.1f}  {1000 * r['cpu_s']:6.1f}")
    print(f"footprint {fp_shape} = {np.prod(fp_shape) / 1e6:.1f} M voxels; torch vs SimpleITK extraction max |diff| {max_diff:.3f} HU")
    print(f"axis-aligned CT: separable vs SimpleITK extraction max |diff| {aligned_diff:.2e} HU")
    print(
        f"extract + paste (r=30 mm): {1000 * summary['extract_plus_paste_s']:.1f} ms; with normalize: "
        f"{1000 * summary['extract_normalize_paste_s']:.1f} ms (target {1000 * TARGET_S:.0f} ms)"
    )
    print(f"paste of model logits, before / after (same run, medians): {ratios}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
