"""Segmentation quality: Dice and normalised surface Dice (NSD) of binary masks.

Both functions take boolean (or 0/1) numpy arrays on one grid, in any axis order; spacing is
given **per array axis, in the array's axis order** (for a SimpleITK array (z, y, x) pass
``image.GetSpacing()[::-1]``).

NSD is MONAI's :func:`monai.metrics.compute_surface_dice` (boundary voxels, i.e. voxels of the
mask with a background 6-neighbour, whose distance in mm to the other mask's boundary is within
the tolerance, over all boundary voxels of both masks). MONAI measures distances with the voxel
spacing, so anisotropic grids are handled. The default tolerance is 1 mm, the value the official
SAM-Med3D metric code uses (``utils/metric_utils.py``: ``compute_surface_dice_at_tolerance(...,
1.0)``); the CVPR 2024/2025 challenges use 2 mm. The masks are cropped to the bounding box of
their union plus a one-voxel margin before MONAI sees them, so large volumes cost only the box.

Empty masks: both empty → 1.0 (nothing to find and nothing found); exactly one empty → 0.0.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np

from .clicks import bounding_box
from .errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Default NSD tolerance in mm: the official SAM-Med3D metric code's value.
DEFAULT_NSD_TOLERANCE_MM = 1.0


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; they must share one grid")
    return (pred if pred.dtype == bool else pred != 0), (gt if gt.dtype == bool else gt != 0)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P∩G| / (|P| + |G|) of two masks on one grid.

    Args:
        pred: predicted mask, boolean (or 0/1) array of any shape.
        gt: ground-truth mask, same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty.

    Raises:
        DataError: the shapes differ.
    """
    pred, gt = _pair(pred, gt)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / total


def normalized_surface_distance(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: Sequence[float] | float = 1.0,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice (NSD) at a tolerance, with MONAI's boundary-voxel definition.

    Args:
        pred: predicted mask, boolean (or 0/1) array of any shape (2D or 3D).
        gt: ground-truth mask, same shape.
        spacing_mm: voxel size in mm per array axis, **in the array's axis order** (for a
            SimpleITK (z, y, x) array: ``image.GetSpacing()[::-1]``); a single number means
            isotropic.
        tolerance_mm: boundary distances up to this many mm count as correct.

    Returns:
        NSD in [0, 1]: the fraction of boundary voxels of both masks lying within
        ``tolerance_mm`` of the other mask's boundary; 1.0 when both masks are empty, 0.0 when
        exactly one is.

    Raises:
        DataError: the shapes differ.
        ConfigError: malformed spacing or a negative tolerance.
    """
    import torch
    from monai.metrics import compute_surface_dice

    pred, gt = _pair(pred, gt)
    if pred.ndim not in (2, 3):
        raise DataError(f"NSD needs 2D or 3D masks, got {pred.ndim} axes (shape {pred.shape})")
    try:
        spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float).ravel(), (pred.ndim,))
    except ValueError:  # wrong count, or not numbers
        spacing = None
    if spacing is None or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise ConfigError(f"spacing_mm must be one positive number or {pred.ndim} (one per array axis), got {spacing_mm!r}")
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")

    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 1.0
    if not has_pred or not has_gt:
        return 0.0

    box = bounding_box(pred | gt)
    assert box is not None  # both masks are non-empty here
    # A one-voxel background margin keeps boundary voxels on the box faces boundary voxels.
    crop = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, pred.shape))
    p = torch.from_numpy(np.ascontiguousarray(pred[crop]))[None, None]
    g = torch.from_numpy(np.ascontiguousarray(gt[crop]))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own get_mask_edges passes internally.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\..*")
        value = compute_surface_dice(
            p, g, class_thresholds=[float(tolerance_mm)], include_background=True, spacing=[float(s) for s in spacing]
        )
    return float(value.reshape(-1)[0])


#: NSD tolerance of the CVPR 2024/2025 challenges (``CVPR25_iter_eval.py``: ``tolerance=2.0``).
CVPR25_NSD_TOLERANCE_MM = 2.0
#: The challenge computes NSD only when Dice exceeds this; at or below it NSD counts as 0.
CVPR25_NSD_MIN_DICE = 0.2


def challenge_nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: Sequence[float] | float,
    dice_value: float,
    tolerance_mm: float = CVPR25_NSD_TOLERANCE_MM,
) -> float:
    """NSD as the CVPR 2025 challenge counts it: 0 when Dice <= 0.2, else :func:`normalized_surface_distance`.

    Args:
        pred: predicted mask.
        gt: ground-truth mask, same shape.
        spacing_mm: voxel size per array axis (array order), mm.
        dice_value: the Dice of ``pred`` against ``gt`` (already computed by the caller).
        tolerance_mm: NSD tolerance (the challenge's 2 mm by default).
    """
    if dice_value <= CVPR25_NSD_MIN_DICE:
        return 0.0
    return normalized_surface_distance(pred, gt, spacing_mm, tolerance_mm)


def trapezoid_auc(values: Sequence[float]) -> float:
    """Area under a curve sampled at unit steps (trapezoid rule): the challenge's Dice/NSD AUC.

    ``CVPR25_iter_eval.py`` takes ``cumulative_trapezoid(scores, np.arange(n))[-1]`` over the n = 5
    click steps, so the AUC runs from 0 to n - 1 = 4. One value gives 0.
    """
    v = [float(x) for x in values]
    return float(sum((a + b) / 2.0 for a, b in zip(v[:-1], v[1:])))
