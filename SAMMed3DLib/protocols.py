"""The evaluation protocols, one structure at a time: ``paper``, ``cvpr25`` and ``correction``.

Each runner takes a method with the session's interface (:class:`ClickSegmenter`: the model's
:class:`~SAMMed3DLib.session.Session` or :class:`~SAMMed3DLib.baselines.GrowCutSession`), one
structure's true mask on the image grid, and returns ``{step: (dice, nsd, seconds so far)}``:

* ``paper`` (:func:`run_structure`) — the SAM-Med3D paper's: a first click inside the structure,
  each next click in the error of the current mask (random by default,
  :class:`~SAMMed3DLib.clicks.SimulatedUser`); Dice and NSD (1 mm by default) after each requested
  click count.
* ``cvpr25`` (:func:`run_cvpr25_structure`) — the CVPR 2025 "Foundation Models for Interactive 3D
  Biomedical Image Segmentation" challenge's (``CVPR25_iter_eval.py``): the structure's box
  (:func:`~SAMMed3DLib.boxes.cvpr25_box`, the challenge's random margin drawn from the structure's
  generator) is the first prompt, given as two LPS corners to ``set_box``; then 5 clicks, each
  at the voxel deepest inside the largest 26-connected error component
  (:func:`~SAMMed3DLib.clicks.cvpr25_click`, depth in mm), the method carrying its previous
  prediction forward. Dice and NSD (2 mm, counted 0 when Dice <= 0.2, as the challenge) after the
  box (step 0) and after each click. The box comes from one slice, so a miss on another slice may
  lie outside it; the session keeps its box as the object's bound, so before such a positive click
  the box is widened to hold it (``set_box`` again, clicks kept), as a user would redraw it
  (counted per structure as ``box_widened``).
* ``correction`` (:func:`run_correction_structure`) — start from a corrupted copy of the truth
  (:func:`~SAMMed3DLib.corruption.corrupt`, seeded, near-correct by default: Dice 0.80–0.95),
  given to ``set_mask`` as the current answer; then N corrective clicks (default 3) by the cvpr25
  rule. Dice and NSD (as cvpr25) of the start (step 0) and after each click.

When a mask becomes perfect the simulated user stops: later steps repeat its values and cost
no time. Seconds count only the method's calls (``set_box``, ``set_mask``, ``click_index``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .boxes import VoxelBox, cvpr25_box
from .clicks import ClickMode, SimulatedUser, cvpr25_click
from .corruption import corrupt
from .errors import ConfigError
from .geometry import ImageGeometry
from .metrics import CVPR25_NSD_TOLERANCE_MM, DEFAULT_NSD_TOLERANCE_MM, challenge_nsd, dice, normalized_surface_distance

logger = logging.getLogger(__name__)

#: The protocols ``evaluate`` runs; see the module docstring.
PROTOCOLS: tuple[str, ...] = ("paper", "cvpr25", "correction")
#: Clicks after the box in the challenge.
CVPR25_CLICKS = 5
#: Corrective clicks of the correction protocol by default.
CORRECTION_CLICKS = 3
#: Click counts the paper reports (Table 3).
PAPER_CLICKS: tuple[int, ...] = (1, 3, 5, 10)
#: Each protocol's NSD tolerance when none is given.
DEFAULT_TOLERANCES_MM = {"paper": DEFAULT_NSD_TOLERANCE_MM, "cvpr25": CVPR25_NSD_TOLERANCE_MM, "correction": CVPR25_NSD_TOLERANCE_MM}
#: What each protocol needs of a method beyond clicks.
_NEEDS = {"cvpr25": "set_box", "correction": "set_mask"}

Metrics = dict[int, tuple[float, float, float]]


class ClickSegmenter(Protocol):
    """What the protocols need from a method: the click interface of ``Session``.

    ``cvpr25`` also needs ``set_box(corner_a_lps, corner_b_lps)`` (a 3D box as the object's first
    prompt) and ``correction`` ``set_mask(mask_zyx)`` (an existing mask as the current answer).
    """

    def click_index(self, index_xyz: Sequence[float] | np.ndarray, positive: bool = True) -> Any:
        """Add a click at an ITK index (x, y, z) and update the mask."""

    @property
    def mask_array(self) -> np.ndarray:
        """Current mask, (z, y, x) array on the image grid, non-zero = object."""

    def reset(self) -> None:
        """Forget all clicks (start a new object)."""


def check_protocol(protocol: str) -> str:
    """Return ``protocol`` if it is one of :data:`PROTOCOLS`, else raise :class:`ConfigError`."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r} is not known; use one of {', '.join(PROTOCOLS)}")
    return protocol


def check_method_supports(segmenter: Any, protocol: str, method_name: str) -> None:
    """Raise :class:`ConfigError` when ``segmenter`` lacks what ``protocol`` needs (a box or a mask input)."""
    need = _NEEDS.get(protocol)
    if need is not None and not callable(getattr(segmenter, need, None)):
        what = "a box prompt" if need == "set_box" else "an existing mask"
        raise ConfigError(f"method {method_name!r} has no {need}(): the {protocol} protocol starts from {what}; use --protocol paper")


def run_structure(
    segmenter: ClickSegmenter,
    gt_zyx: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    clicks: Sequence[int],
    rng: np.random.Generator,
    click_mode: ClickMode = "random",
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> Metrics:
    """Run the paper's protocol for one structure with a fresh (reset) segmenter.

    Args:
        segmenter: the method, with its image set; it is reset first.
        gt_zyx: ground-truth mask, (z, y, x) boolean array on the image grid.
        spacing_zyx_mm: voxel size per array axis (z, y, x), mm.
        clicks: click counts to record, ascending.
        rng: this structure's generator.
        click_mode: "random" (the paper) or "center".
        tolerance_mm: NSD tolerance.

    Returns:
        {click count: (dice, nsd, seconds in the method so far)}.
    """
    segmenter.reset()
    wanted = set(clicks)
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    user = SimulatedUser(gt_zyx, rng, click_mode, spacing)
    click = user.click()
    elapsed = 0.0
    out: Metrics = {}
    last: tuple[float, float] | None = None
    for k in range(1, max(clicks) + 1):
        if click is not None:
            start = time.perf_counter()
            segmenter.click_index(click.index[::-1], click.positive)  # (z, y, x) → ITK (x, y, z)
            elapsed += time.perf_counter() - start
            pred = np.asarray(segmenter.mask_array) != 0
            last = None  # the mask changed
        if k in wanted:
            if last is None:
                last = (dice(pred, gt_zyx), normalized_surface_distance(pred, gt_zyx, spacing, tolerance_mm))
            out[k] = (last[0], last[1], elapsed)
        if click is not None and k < max(clicks):
            click = user.click(pred)
            if click is None:
                logger.debug("perfect mask after %d click(s): the simulated user stops", k)
    return out


def _corrective_clicks(
    segmenter: ClickSegmenter,
    gt: np.ndarray,
    spacing: tuple[float, ...],
    clicks: int,
    elapsed: float,
    tolerance_mm: float,
    box: tuple[VoxelBox, ImageGeometry] | None = None,
) -> tuple[Metrics, int]:
    """Step 0 (the mask as it is now), then ``clicks`` cvpr25 clicks, each recorded.

    With ``box`` (the object's box and the image grid), a positive click outside the box first
    widens the box to hold it (``set_box`` again; the session keeps the clicks and the box keeps
    bounding the object), as a user would redraw it; that costs time in the click's step.

    Returns:
        ({step: (dice, nsd, seconds so far)}, how many times the box was widened).
    """
    pred = np.asarray(segmenter.mask_array) != 0
    value = dice(pred, gt)
    out: Metrics = {0: (value, challenge_nsd(pred, gt, spacing, value, tolerance_mm), elapsed)}
    widened = 0
    for k in range(1, clicks + 1):
        click = cvpr25_click(pred, gt, spacing)
        if click is None:
            out[k] = out[k - 1][:2] + (elapsed,)
            continue
        start = time.perf_counter()
        if box is not None and click.positive:
            current, geometry = box
            lo, hi = current.bounds_lps(geometry)
            point = geometry.index_to_lps(np.asarray(click.index[::-1], dtype=np.float64))
            if np.any(point < lo - 1e-6) or np.any(point > hi + 1e-6):
                first = tuple(min(a, i) for a, i in zip(current.first_zyx, click.index))
                last = tuple(max(b, i) for b, i in zip(current.last_zyx, click.index))
                box = (VoxelBox(first, last), geometry)  # type: ignore[arg-type]
                segmenter.set_box(*box[0].bounds_lps(geometry))  # type: ignore[attr-defined]
                widened += 1
        segmenter.click_index(click.index[::-1], click.positive)  # (z, y, x) → ITK (x, y, z)
        elapsed += time.perf_counter() - start
        pred = np.asarray(segmenter.mask_array) != 0
        value = dice(pred, gt)
        out[k] = (value, challenge_nsd(pred, gt, spacing, value, tolerance_mm), elapsed)
    return out, widened


def run_cvpr25_structure(
    segmenter: ClickSegmenter,
    gt_zyx: np.ndarray,
    geometry: ImageGeometry,
    rng: np.random.Generator,
    clicks: int = CVPR25_CLICKS,
    tolerance_mm: float = CVPR25_NSD_TOLERANCE_MM,
) -> tuple[Metrics, dict[str, Any]]:
    """Run the cvpr25 protocol for one structure: the box, then ``clicks`` corrective clicks.

    Args:
        segmenter: the method (with ``set_box``), its image set on ``geometry``; it is reset first.
        gt_zyx: ground-truth mask, (z, y, x) boolean array on the image grid.
        geometry: the image grid (for the box's LPS corners and the spacing).
        rng: this structure's generator (draws the challenge's box margin).
        clicks: clicks after the box.
        tolerance_mm: NSD tolerance.

    Returns:
        ({step: (dice, nsd, seconds so far)} with step 0 the box, {"box": first and last voxel (z, y, x)}).
    """
    segmenter.reset()
    spacing = tuple(float(s) for s in geometry.spacing_xyz_mm[::-1])
    box = cvpr25_box(gt_zyx, rng)
    corner_a, corner_b = box.bounds_lps(geometry)
    start = time.perf_counter()
    segmenter.set_box(corner_a, corner_b)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    metrics, widened = _corrective_clicks(segmenter, gt_zyx, spacing, clicks, elapsed, tolerance_mm, (box, geometry))
    return metrics, {"box_zyx": [list(box.first_zyx), list(box.last_zyx)], "box_widened": widened}


def run_correction_structure(
    segmenter: ClickSegmenter,
    gt_zyx: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    rng: np.random.Generator,
    kind: str = "near_correct",
    clicks: int = CORRECTION_CLICKS,
    tolerance_mm: float = CVPR25_NSD_TOLERANCE_MM,
) -> tuple[Metrics, dict[str, Any]]:
    """Run the correction protocol for one structure: a corrupted truth set as the mask, then corrective clicks.

    Args:
        segmenter: the method (with ``set_mask``), its image set; it is reset first.
        gt_zyx: ground-truth mask, (z, y, x) boolean array on the image grid.
        spacing_zyx_mm: voxel size per array axis (z, y, x), mm.
        rng: this structure's generator (draws the corruption).
        kind: the corruption kind (:data:`~SAMMed3DLib.corruption.CORRUPTIONS`).
        clicks: corrective clicks.
        tolerance_mm: NSD tolerance.

    Returns:
        ({step: (dice, nsd, seconds so far)} with step 0 the corrupted start, the corruption's
        kind, parts and Dice).
    """
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    start_mask = corrupt(gt_zyx, kind, rng, spacing)
    segmenter.reset()
    start = time.perf_counter()
    segmenter.set_mask(start_mask.mask.astype(np.uint8))  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    facts = {"start": kind, "start_parts": list(start_mask.parts), "start_dice": round(start_mask.dice, 6)}
    return _corrective_clicks(segmenter, gt_zyx, spacing, clicks, elapsed, tolerance_mm)[0], facts


__all__ = [
    "CORRECTION_CLICKS",
    "CVPR25_CLICKS",
    "PAPER_CLICKS",
    "PROTOCOLS",
    "ClickSegmenter",
    "check_method_supports",
    "check_protocol",
    "run_correction_structure",
    "run_cvpr25_structure",
    "run_structure",
]
