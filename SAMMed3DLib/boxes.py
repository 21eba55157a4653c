"""3D box prompts on an image grid: the CVPR 2025 challenge's box of a structure, and its corners in LPS.

A :class:`VoxelBox` is a block of voxels of one image, given by its first and last voxel along each
array axis (both included, SimpleITK array order (z, y, x)). Prompts give a box the way
:meth:`SAMMed3DLib.session.Session.set_box` takes it: two opposite corners of a box whose faces
are perpendicular to the L, P and S axes (:class:`SAMMed3DLib.editing.Box`).
:meth:`VoxelBox.bounds_lps` gives those corners for a block: the least and greatest LPS coordinates of
the outer corners of its voxels (continuous indices ``first - 0.5`` and ``last + 0.5`` through the
image geometry), so every voxel of the block has its centre inside. On an image whose axes run
along L, P and S (flipped or permuted included) the two boxes are the same voxels, exactly, and
:meth:`VoxelBox.from_corners_lps` gives the block back; on an oblique image the LPS box is the one
that holds the block, a little larger.

:func:`cvpr25_box` is the box the CVPR 2025 "Foundation Models for Interactive 3D Biomedical
Image Segmentation" challenge gives as the first prompt (its ``get_boxes.py``):

* the axial slice is the array z of the structure's median voxel: ``z_indices[len(z_indices) // 2]``
  of the voxels listed in array order (so the slice splits the structure's voxels in half, which
  for a structure that bulges at one end is not the middle of its z-range);
* on that slice, the 2D bounding box of the structure (x and y), optionally widened on every side
  by the challenge's random margin: ``shift`` drawn from 0–5, ``int(shift * W / 256)`` voxels in x
  and ``int(shift * H / 256)`` in y (W, H the slice's x and y sizes), clipped to the slice;
* extended over the structure's whole z-range (first to last slice holding a voxel of it).

Parts of the structure on other slices may lie outside the box's x/y range: the box comes from
one slice, as in the challenge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .editing import corner_bounds
from .errors import DataError, PromptError
from .geometry import ImageGeometry

#: The challenge's widening: a shift of 0..5 pixels on a 256-pixel slice, scaled to the slice size.
CVPR25_MAX_SHIFT = 5
CVPR25_SHIFT_REFERENCE = 256


@dataclass(frozen=True)
class VoxelBox:
    """A block of voxels: ``first_zyx`` to ``last_zyx`` (array indices, both included).

    Raises:
        DataError: an index is negative or ``last`` precedes ``first`` on an axis.
    """

    first_zyx: tuple[int, int, int]
    last_zyx: tuple[int, int, int]

    def __post_init__(self) -> None:
        first = tuple(int(v) for v in self.first_zyx)
        last = tuple(int(v) for v in self.last_zyx)
        if len(first) != 3 or len(last) != 3 or min(first) < 0 or any(b < a for a, b in zip(first, last)):
            raise DataError(f"a box needs 3 first and 3 last voxel indices with 0 <= first <= last, got {self.first_zyx}, {self.last_zyx}")
        object.__setattr__(self, "first_zyx", first)
        object.__setattr__(self, "last_zyx", last)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The box as array slices (z, y, x)."""
        return tuple(slice(a, b + 1) for a, b in zip(self.first_zyx, self.last_zyx))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels along (z, y, x)."""
        return tuple(b - a + 1 for a, b in zip(self.first_zyx, self.last_zyx))  # type: ignore[return-value]

    @property
    def center_zyx(self) -> tuple[float, float, float]:
        """The box's centre as a continuous array index (z, y, x)."""
        return tuple((a + b) / 2.0 for a, b in zip(self.first_zyx, self.last_zyx))  # type: ignore[return-value]

    def mask(self, shape_zyx: Sequence[int]) -> np.ndarray:
        """A boolean array of ``shape_zyx``, True inside the box (clipped to the array)."""
        out = np.zeros(tuple(int(s) for s in shape_zyx), dtype=bool)
        out[self.slices] = True
        return out

    def bounds_lps(self, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) LPS mm: two opposite corners of the LPS box holding the block's physical extent."""
        first = np.array(self.first_zyx[::-1], dtype=np.float64) - 0.5
        last = np.array(self.last_zyx[::-1], dtype=np.float64) + 0.5
        corners = np.array([[(first, last)[c][axis] for axis, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        points = geometry.index_to_lps(corners)
        return points.min(axis=0), points.max(axis=0)

    @classmethod
    def from_corners_lps(cls, geometry: ImageGeometry, corner_a_lps: Sequence[float], corner_b_lps: Sequence[float]) -> VoxelBox:
        """The smallest block of ``geometry``'s voxels holding every voxel whose centre lies in an LPS box.

        The LPS box is the one with faces perpendicular to L, P, S and these two opposite corners
        (in either order), as :meth:`SAMMed3DLib.session.Session.set_box` reads it; the block is
        clipped to the image.

        Raises:
            PromptError: a corner is not 3 finite numbers, or no voxel centre lies in the box
                (it is outside the image or thinner than a voxel).
        """
        lo, hi = corner_bounds(corner_a_lps, corner_b_lps)
        box_corners = np.array([[(lo, hi)[c][axis] for axis, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        index = geometry.lps_to_index(box_corners)
        size = np.asarray(geometry.size_xyz)
        first = np.maximum(np.ceil(index.min(axis=0) - 1e-6), 0).astype(int)
        last = np.minimum(np.floor(index.max(axis=0) + 1e-6), size - 1).astype(int)
        if np.any(last < first):
            raise PromptError(
                f"the box from LPS {np.round(lo, 2).tolist()} to {np.round(hi, 2).tolist()} mm holds no voxel "
                f"of the image of size {list(geometry.size_xyz)}: draw the box over the image, at least one voxel thick"
            )
        return cls(tuple(first[::-1].tolist()), tuple(last[::-1].tolist()))  # type: ignore[arg-type]


def cvpr25_box(gt_zyx: np.ndarray, rng: np.random.Generator | None = None) -> VoxelBox:
    """The CVPR 2025 challenge's box of a structure (see the module docstring).

    Args:
        gt_zyx: the structure's mask, boolean (or 0/1) 3D array in SimpleITK order (z, y, x).
        rng: draws the challenge's random margin (0–5 pixels on a 256-pixel slice); None gives
            the tight box of the median slice.

    Returns:
        The box: x and y from the median slice (widened, clipped), z over the whole structure.

    Raises:
        DataError: ``gt_zyx`` is not 3D or is empty.
    """
    gt = np.asarray(gt_zyx)
    if gt.ndim != 3:
        raise DataError(f"a box needs a 3D mask (z, y, x), got shape {gt.shape}")
    gt = gt if gt.dtype == bool else gt != 0
    per_slice = np.count_nonzero(gt, axis=(1, 2))
    total = int(per_slice.sum())
    if total == 0:
        raise DataError(f"cannot make a box: the mask of shape {gt.shape} is empty")
    z_slices = np.flatnonzero(per_slice)
    # The z of the voxel at position total // 2 when the voxels are listed in array (z-major) order.
    z_mid = int(np.searchsorted(np.cumsum(per_slice), total // 2, side="right"))
    ys, xs = np.nonzero(gt[z_mid])
    height, width = gt.shape[1], gt.shape[2]
    shift = int(rng.integers(0, CVPR25_MAX_SHIFT + 1)) if rng is not None else 0
    dx, dy = int(shift * width / CVPR25_SHIFT_REFERENCE), int(shift * height / CVPR25_SHIFT_REFERENCE)
    first = (int(z_slices[0]), max(0, int(ys.min()) - dy), max(0, int(xs.min()) - dx))
    last = (int(z_slices[-1]), min(height - 1, int(ys.max()) + dy), min(width - 1, int(xs.max()) + dx))
    return VoxelBox(first, last)


__all__ = ["CVPR25_MAX_SHIFT", "VoxelBox", "cvpr25_box"]
