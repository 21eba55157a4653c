"""The paper's data-cleaning steps (SAM-Med3D §3.2) as small pure functions on numpy masks.

Each function takes bool masks (3D, on an axis-aligned grid whose voxel size the caller gives)
and returns masks or a verdict; none reads files or resamples. :func:`training.prepare.clean_structures`
applies them per structure in the order the :mod:`training.prepare` docstring explains (split,
size, background, components, symmetry) on the RAS cache grid, with the paper's thresholds below
as defaults (``python -m training.prepare`` makes the first four options)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from SAMMed3DLib.card import DEFAULT_INPUT_SIZE

logger = logging.getLogger(__name__)

#: Paper §3.2 step 1: masks (and images) under 1 cm³ are too small to see.
MIN_VOLUME_ML = 1.0
#: Paper §3.2 step 1: any bounding-box side under 1.5 cm is too thin to see.
MIN_EXTENT_MM = 15.0
#: Paper §3.2 step 2: drop a mask whose background exceeds 99 % of the (crop) volume.
MAX_BACKGROUND_FRACTION = 0.99
#: Paper §3.2 step 3: keep the top-5 connected components.
KEEP_COMPONENTS = 5
#: Structures that come in a left and a right copy (TotalSegmentator / AMOS / BTCV names).
SYMMETRIC_STRUCTURES: tuple[str, ...] = (
    "kidney", "lung", "adrenal_gland", "adrenal", "breast", "eye", "eyeball", "lens", "optic_nerve",
    "parotid_gland", "submandibular_gland", "cochlea", "femur", "humerus", "scapula", "clavicula",
    "clavicle", "hip", "gluteus_maximus", "gluteus_medius", "gluteus_minimus", "autochthon",
    "iliopsoas", "psoas", "ovary", "ureter", "hippocampus", "amygdala", "thalamus", "caudate",
    "putamen", "pallidum", "common_carotid_artery", "subclavian_artery", "iliac_artery",
    "iliac_vena", "atrial_appendage", "lung_upper_lobe", "lung_lower_lobe",
)
_SIDE_WORDS = re.compile(r"(^|_)(left|right|l|r|lt|rt)(_|$)")
#: Minimum size of the smaller side, relative to the larger, to call a mask a pair.
PAIR_MIN_RATIO = 0.2


def split_classes(label: np.ndarray, names: dict[int, str]) -> list[tuple[str, np.ndarray]]:
    """Split a multi-class label map into one binary mask per class (paper §3.2 step 2).

    Args:
        label: integer label map, any shape and axis order; 0 is background.
        names: class value → structure name. Values present in ``label`` but missing from
            ``names`` are named ``label_<value>``.

    Returns:
        ``(name, mask)`` pairs, in increasing class value, for every class with ≥ 1 voxel;
        ``mask`` is bool with ``label``'s shape.
    """
    present = [int(v) for v in np.unique(label) if v != 0]
    return [(names.get(v, f"label_{v}"), label == v) for v in present]


def mask_bbox(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Inclusive index bounding box ``(lo, hi)`` of a bool mask, or None when it is empty."""
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax))) for ax in range(mask.ndim)]
    if any(len(i) == 0 for i in idx):
        return None
    return tuple(int(i[0]) for i in idx), tuple(int(i[-1]) for i in idx)


def passes_size_check(
    mask: np.ndarray, spacing_mm: Sequence[float], min_volume_ml: float = MIN_VOLUME_ML, min_extent_mm: float = MIN_EXTENT_MM
) -> tuple[bool, str]:
    """Paper §3.2 step 1: is the mask at least ``min_volume_ml`` and ``min_extent_mm`` on every axis?

    Args:
        mask: bool mask on an axis-aligned grid.
        spacing_mm: voxel size along each array axis, in mm (same order as ``mask``'s axes).
        min_volume_ml: smallest kept volume in millilitres (cm³).
        min_extent_mm: smallest kept bounding-box side in mm (side = voxel count × spacing).

    Returns:
        ``(keep, reason)``; ``reason`` says why a mask is dropped ("" when kept).
    """
    bbox = mask_bbox(mask)
    if bbox is None:
        return False, "empty"
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    volume_ml = int(mask.sum()) * voxel_ml
    if volume_ml < min_volume_ml:
        return False, f"volume {volume_ml:.3f} ml < {min_volume_ml} ml"
    extent = [(hi - lo + 1) * s for lo, hi, s in zip(*bbox, spacing_mm)]
    if min(extent) < min_extent_mm:
        return False, f"bounding box {', '.join(f'{e:.1f}' for e in extent)} mm has a side < {min_extent_mm} mm"
    return True, ""


def background_fraction(mask: np.ndarray, window: int = DEFAULT_INPUT_SIZE) -> float:
    """Background fraction of a ``window``³ model crop that holds the mask (paper §3.2 step 2).

    Our reading of "background occupies more than 99 % of the whole volume" (module docstring):
    the volume is the model's input crop of ``window``³ voxels (zero padding included), and the
    foreground is the mask's voxels, at most the whole crop:
    ``1 − min(voxels, window³) / window³``. Counting voxels rather than what one particular crop
    position contains keeps the test independent of shape: a left/right pair or a U-shaped
    structure has an empty centre, and a crop centred on its bounding box would see nothing.

    Args:
        mask: bool mask, 3D (any grid; its voxels must have the crop's voxel size).
        window: side of the cubic crop in voxels.

    Returns:
        Background fraction in [0, 1]; 1.0 for an empty mask.
    """
    crop = float(window) ** mask.ndim
    return 1.0 - min(float(np.count_nonzero(mask)), crop) / crop


def keep_largest_components(mask: np.ndarray, keep: int = KEEP_COMPONENTS) -> tuple[np.ndarray, int]:
    """Paper §3.2 step 3: keep the ``keep`` largest connected components (26-connectivity).

    Args:
        mask: bool mask, 3D.
        keep: number of components to keep.

    Returns:
        ``(cleaned mask, number of removed components)``.
    """
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= keep:
        return mask.copy(), 0
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:keep] + 1
    return np.isin(labelled, order), n - keep


def has_side(name: str) -> bool:
    """True when a structure name already says left or right (``kidney_left``, ``l_eye``)."""
    return bool(_SIDE_WORDS.search(name.lower()))


def is_symmetric_name(name: str) -> bool:
    """True for a paired structure named without a side (``kidney``, ``lung``, ``adrenal_gland``)."""
    low = name.lower()
    return not has_side(low) and low in SYMMETRIC_STRUCTURES


def split_left_right(
    mask: np.ndarray, lr_axis: int = 0, right_is_increasing: bool = True, min_ratio: float = PAIR_MIN_RATIO
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paper §3.2 step 4: split a paired structure into (left, right) masks.

    The mask is a pair when its two largest connected components each hold at least
    ``min_ratio`` of the larger one's voxels and lie on either side of a sagittal plane: the
    plane half-way between the two components' facing edges along ``lr_axis`` separates them
    (no voxel of either crosses it). Every voxel of the mask (small fragments too) then goes to
    the side of that plane it lies on.

    Args:
        mask: bool mask, 3D, on an axis-aligned grid.
        lr_axis: the array axis along the patient's left–right direction.
        right_is_increasing: True when index increases toward patient Right (RAS cache), False
            when it increases toward Left (LPS arrays).
        min_ratio: smaller/larger component size ratio below which the mask is not a pair.

    Returns:
        ``(left, right)`` bool masks, or None when the mask is not a left/right pair.
    """
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n < 2:
        return None
    sizes = np.bincount(labelled.ravel())[1:]
    a, b = (np.argsort(-sizes, kind="stable")[:2] + 1).tolist()
    if sizes[b - 1] < min_ratio * sizes[a - 1]:
        return None
    other = tuple(ax for ax in range(3) if ax != lr_axis)
    prof_a = np.flatnonzero((labelled == a).any(axis=other))
    prof_b = np.flatnonzero((labelled == b).any(axis=other))
    low, high = (prof_a, prof_b) if prof_a.mean() < prof_b.mean() else (prof_b, prof_a)
    if low[-1] >= high[0]:
        return None  # the two components overlap along the left-right axis: not a pair
    plane = (low[-1] + high[0] + 1) // 2  # first index on the high side
    coords = np.arange(mask.shape[lr_axis])
    shape = [1, 1, 1]
    shape[lr_axis] = -1
    high_side = (coords >= plane).reshape(shape)
    low_mask, high_mask = mask & ~high_side, mask & high_side
    return (low_mask, high_mask) if right_is_increasing else (high_mask, low_mask)


__all__ = [
    "KEEP_COMPONENTS",
    "MAX_BACKGROUND_FRACTION",
    "MIN_EXTENT_MM",
    "MIN_VOLUME_ML",
    "PAIR_MIN_RATIO",
    "SYMMETRIC_STRUCTURES",
    "background_fraction",
    "has_side",
    "is_symmetric_name",
    "keep_largest_components",
    "mask_bbox",
    "passes_size_check",
    "split_classes",
    "split_left_right",
]
