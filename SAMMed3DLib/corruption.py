"""Corrupted copies of a true mask: the "existing mask" an annotator brings, for evaluation and training.

:func:`corrupt` turns a structure's true mask into a plausible imperfect one whose Dice against
the truth lies in a target range (0.80–0.95 by default), the start of the ``correction``
protocol (:mod:`SAMMed3DLib.protocols`) and of training rounds that learn to keep what is right
and fix what is wrong. The kinds (:data:`CORRUPTIONS`):

* ``erode`` — the mask shrunk by an uneven radius r mm (the rim missed);
* ``dilate`` — grown by an uneven r mm (a leak all round); the radius varies smoothly over the
  surface (a factor of 0.25–2 around its mean), so a structure a few voxels thick loses or gains
  part of a voxel layer rather than a whole one;
* ``holes`` — one to three balls of radius r mm removed around random inner voxels (at least
  half the structure's thickness deep);
* ``missing_slab`` — a slab of thickness t mm across the structure, perpendicular to a random
  array axis, removed (slices left unlabelled);
* ``shift`` — the whole mask moved by d mm in a random direction (a registration error);
* ``style`` — "another model's output": the mask blurred (Gaussian, σ mm) and thresholded at a
  level other than ½ (above or below, drawn per call), so corners round off, thin parts vanish
  and the boundary moves in or out;
* ``near_correct`` — a mixture: one boundary kind (erode, dilate or style) and, each with
  probability ½, holes, a missing slab and a shift (in that order).

Every size is physical (mm, with the voxel spacing), so anisotropic grids get the same
corruption as isotropic ones. One strength s in [0, 1] scales every part of a corruption (s = 0
leaves the mask as it is; sizes grow with s in proportion to the structure's thickness T, the
largest depth of a voxel inside it, or its extent: r up to 4 T for erosion and T for dilation,
holes up to 1.5 T or 0.3 of the box diagonal, slabs up to the extent, shifts up to 2 T or half
the extent along the direction, blur up to 0.6 T); :func:`corrupt` draws the target Dice from the
range and finds s by bisection. Where the target cannot be met (a structure a few voxels thick
changes in big steps), the closest Dice reached is returned and reported in
:attr:`Corruption.dice`.

Randomness comes only from the :class:`numpy.random.Generator` passed in: the same seed gives
the same mask. Only numpy and scipy.ndimage (no torch), on the structure's bounding box plus a
margin, so a small structure in a large CT costs little.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .clicks import bounding_box
from .errors import ConfigError, DataError

#: Corruption kinds, see the module docstring.
CORRUPTIONS: tuple[str, ...] = ("erode", "dilate", "holes", "missing_slab", "shift", "style", "near_correct")
#: The default Dice range of a corrupted mask against its truth: "near-correct".
DEFAULT_DICE_RANGE: tuple[float, float] = (0.80, 0.95)

_BOUNDARY_KINDS = ("erode", "dilate", "style")
_EXTRA_KINDS = ("holes", "missing_slab", "shift")
_BISECTION_STEPS = 24


@dataclass(frozen=True)
class Corruption:
    """A corrupted mask and how it was made.

    Attributes:
        mask: boolean array on the truth's grid.
        kind: the kind asked for (one of :data:`CORRUPTIONS`).
        parts: the kinds applied, in order (one for a single kind; the mixture for near_correct).
        dice: Dice of ``mask`` against the truth.
        strength: the strength s in [0, 1] that gave it.
        target: the Dice that was aimed at.
    """

    mask: np.ndarray
    kind: str
    parts: tuple[str, ...]
    dice: float
    strength: float
    target: float


def check_corruption(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`CORRUPTIONS`, else raise :class:`ConfigError`."""
    if kind not in CORRUPTIONS:
        raise ConfigError(f"corruption {kind!r} is not known; use one of {', '.join(CORRUPTIONS)}")
    return kind


def _check_range(dice_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in dice_range)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"dice_range must be two numbers (low, high), got {dice_range!r}") from exc
    if not (0.0 <= lo <= hi < 1.0):
        raise ConfigError(f"dice_range must satisfy 0 <= low <= high < 1, got {dice_range!r}")
    return lo, hi


class _Fields:
    """What every corruption of one structure needs, computed once on its box plus a margin.

    A result is a crop-sized mask before any shift plus the shift in voxels; a shift (always the
    last part) is applied when the result is placed on the full grid, so the crop never grows
    with it.
    """

    def __init__(self, truth: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, parts: Sequence[str]) -> None:
        box = bounding_box(truth)
        assert box is not None
        self.spacing = spacing
        self.full_shape = truth.shape
        inside_box = ndimage.distance_transform_edt(np.pad(truth[box], 1), sampling=spacing)[(slice(1, -1),) * 3]
        #: The structure's thickness: the largest distance from a voxel of it to its border, mm.
        self.thickness = float(inside_box.max())
        extent_mm = np.array([s.stop - s.start for s in box], dtype=float) * spacing
        self.sigma = float(rng.uniform(0.3, 0.6)) * self.thickness if "style" in parts else 0.0
        grows = "dilate" in parts or "style" in parts
        margin = np.ceil((self.thickness + 2.0 * self.sigma) / spacing).astype(int) + 1 if grows else np.ones(3, dtype=int)
        self.crop = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(box, margin, truth.shape))
        self.start = np.array([s.start for s in self.crop])
        self.truth = truth[self.crop]
        self.voxels = int(np.count_nonzero(self.truth))
        self.inside = np.zeros(self.truth.shape, dtype=np.float32)
        self.inside[tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, self.crop))] = inside_box
        if "erode" in parts or "dilate" in parts:
            # An uneven rim: the radius varies smoothly over the surface (factor 0.25-2, mean 1),
            # so thin structures lose or gain part of a voxel layer rather than all of it at once.
            noise = ndimage.gaussian_filter(rng.standard_normal(self.truth.shape).astype(np.float32), sigma=self.thickness / spacing)
            self.uneven = np.clip(1.0 + 0.5 * noise / max(float(noise.std()), 1e-6), 0.25, 2.0)
        if "dilate" in parts:
            self.outside = ndimage.distance_transform_edt(~self.truth, sampling=spacing).astype(np.float32)
        if "holes" in parts:
            candidates = np.flatnonzero(self.inside >= 0.5 * self.thickness)
            centres = rng.choice(candidates, size=min(int(rng.integers(1, 4)), candidates.size), replace=False)
            seeds = np.ones(self.truth.shape, dtype=bool)
            seeds.flat[centres] = False
            self.hole_distance = ndimage.distance_transform_edt(seeds, sampling=spacing).astype(np.float32)
            self.hole_radius = max(1.5 * self.thickness, 0.3 * float(np.linalg.norm(extent_mm)))
        if "missing_slab" in parts:
            axis = int(rng.integers(3))
            extent = np.flatnonzero(self.truth.any(axis=tuple(a for a in range(3) if a != axis)))
            first, last = int(extent[0]), int(extent[-1])
            centre = first + float(rng.uniform(0.25, 0.75)) * (last - first)
            shape = [1, 1, 1]
            shape[axis] = self.truth.shape[axis]
            self.slab_offset = (np.abs(np.arange(self.truth.shape[axis]) - centre) * spacing[axis]).reshape(shape)
            self.slab_extent = (last - first + 1) * float(spacing[axis])
        if "shift" in parts:
            direction = rng.normal(size=3)
            self.shift_direction = direction / max(float(np.linalg.norm(direction)), 1e-12)
            # Far enough to reach a low Dice even along a long structure's axis.
            self.shift_reach = max(2.0 * self.thickness, 0.5 * float(np.abs(self.shift_direction) @ extent_mm))
        if "style" in parts:
            self.style_grows = bool(rng.integers(2))

    def result(self, parts: Sequence[str], strength: float) -> tuple[np.ndarray, np.ndarray]:
        """(crop-sized mask before the shift, shift in voxels) of ``parts`` at strength s in [0, 1]."""
        s = float(strength)
        mask = self.truth
        offset = np.zeros(3, dtype=int)
        for part in parts:
            if part == "erode":
                mask = mask & (self.inside > s * 4.0 * self.thickness * self.uneven)
            elif part == "dilate":
                mask = mask | (self.outside <= s * self.thickness * self.uneven)
            elif part == "holes" and s > 0:
                mask = mask & (self.hole_distance > s * self.hole_radius)
            elif part == "missing_slab" and s > 0:
                mask = mask & (self.slab_offset > s * self.slab_extent / 2.0)
            elif part == "shift":
                offset = np.rint(self.shift_direction * s * self.shift_reach / self.spacing).astype(int)
            elif part == "style" and s > 0:
                blurred = ndimage.gaussian_filter(self.truth.astype(np.float32), sigma=s * self.sigma / self.spacing)
                mask = blurred > (0.5 - 0.35 * s if self.style_grows else 0.5 + 0.35 * s)
        return mask, offset

    def _placement(self, shape: Sequence[int], offset: np.ndarray) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """(source slices in a crop-sized mask, destination slices on the full grid) after a shift, or None if all leaves the image."""
        dest = self.start + offset
        lo = np.maximum(0, -dest)
        hi = np.minimum(np.asarray(shape), np.asarray(self.full_shape) - dest)
        if np.any(hi <= lo):
            return None
        src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        return src, tuple(slice(int(a + d), int(b + d)) for a, b, d in zip(lo, hi, dest))

    def dice(self, mask: np.ndarray, offset: np.ndarray) -> float:
        """Dice against the truth of ``mask`` shifted by ``offset`` (voxels leaving the image are lost)."""
        placement = self._placement(mask.shape, offset)
        count = int(np.count_nonzero(mask[placement[0]])) if placement is not None else 0
        # The truth lies inside the crop, so only the part of the shifted mask that stays in the crop can overlap it.
        m = np.asarray(mask.shape)
        lo, hi = np.maximum(0, -offset), np.minimum(m, m - offset)
        overlap = 0
        if np.all(hi > lo):
            src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            dst = tuple(slice(int(a + o), int(b + o)) for a, b, o in zip(lo, hi, offset))
            overlap = int(np.count_nonzero(mask[src] & self.truth[dst]))
        total = self.voxels + count
        return 2.0 * overlap / total if total else 1.0

    def place(self, mask: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The full-grid boolean mask of a result."""
        out = np.zeros(self.full_shape, dtype=bool)
        placement = self._placement(mask.shape, offset)
        if placement is not None:
            out[placement[1]] = mask[placement[0]]
        return out


def _parts(kind: str, rng: np.random.Generator) -> tuple[str, ...]:
    if kind != "near_correct":
        return (kind,)
    boundary = _BOUNDARY_KINDS[int(rng.integers(len(_BOUNDARY_KINDS)))]
    extras = tuple(k for k in _EXTRA_KINDS if rng.random() < 0.5)
    return (boundary, *extras)


def corrupt(
    mask_zyx: np.ndarray,
    kind: str = "near_correct",
    rng: np.random.Generator | int | None = None,
    spacing_mm: Sequence[float] | None = None,
    dice_range: Sequence[float] = DEFAULT_DICE_RANGE,
) -> Corruption:
    """A corrupted copy of a true mask whose Dice against it lies in ``dice_range`` where reachable.

    Args:
        mask_zyx: the true mask, boolean (or 0/1) 3D array.
        kind: one of :data:`CORRUPTIONS` (see the module docstring).
        rng: numpy Generator (or a seed for one); the only source of randomness.
        spacing_mm: voxel size per array axis (array order; for a SimpleITK array
            ``image.GetSpacing()[::-1]``), mm. None: 1 mm voxels.
        dice_range: (low, high) Dice wanted; the target is drawn uniformly from it.

    Returns:
        The :class:`Corruption` (mask on the truth's grid, parts applied, Dice reached).

    Raises:
        DataError: the mask is not 3D or is empty.
        ConfigError: an unknown kind, a malformed spacing or range.
    """
    kind = check_corruption(kind)
    lo, hi = _check_range(dice_range)
    rng = np.random.default_rng(rng)
    truth = np.asarray(mask_zyx)
    if truth.ndim != 3:
        raise DataError(f"a corruption needs a 3D mask (z, y, x), got shape {truth.shape}")
    truth = truth if truth.dtype == bool else truth != 0
    if not truth.any():
        raise DataError(f"cannot corrupt an empty mask (shape {truth.shape})")
    spacing = np.ones(3) if spacing_mm is None else np.asarray(spacing_mm, dtype=float).ravel()
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ConfigError(f"spacing_mm must be 3 positive numbers (one per array axis), got {spacing_mm!r}")

    parts = _parts(kind, rng)
    target = float(rng.uniform(lo, hi))
    fields = _Fields(truth, spacing, rng, parts)
    # Dice falls (in steps) from 1 at s = 0 as s grows; bisect for the target, keep the closest.
    low, high = 0.0, 1.0
    best: tuple[float, float, float, np.ndarray, np.ndarray] | None = None  # (|dice - target|, dice, s, crop mask, shift)
    for _ in range(_BISECTION_STEPS):
        s = (low + high) / 2.0
        crop_mask, offset = fields.result(parts, s)
        value = fields.dice(crop_mask, offset)
        if best is None or abs(value - target) < best[0]:
            best = (abs(value - target), value, s, crop_mask, offset)
        if value > target:
            low = s
        else:
            high = s
        if math.isclose(value, target, abs_tol=1e-3):
            break
    assert best is not None
    _, value, strength, crop_mask, offset = best
    return Corruption(fields.place(crop_mask, offset), kind, parts, value, strength, target)


__all__ = ["CORRUPTIONS", "DEFAULT_DICE_RANGE", "Corruption", "check_corruption", "corrupt"]
