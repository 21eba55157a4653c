"""Masks given by a caller (an existing segmentation to refine, locked voxels) on an image's grid."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from .cases import same_grid
from .errors import SessionStateError

logger = logging.getLogger(__name__)

#: Tolerances (rtol, atol) under which a mask image counts as on the image's grid.
_GRID_TOLERANCE = {"spacing": (1e-5, 1e-6), "origin": (1e-6, 1e-4), "direction": (1e-6, 1e-6)}


def mask_on_grid(mask: np.ndarray | sitk.Image, image: sitk.Image, name: str = "mask") -> np.ndarray:
    """A (z, y, x) uint8 0/1 array on ``image``'s grid from an array or an image anywhere in space.

    An array must have the image's (z, y, x) shape. A SimpleITK image on another grid is
    resampled onto the image's (nearest neighbour, non-zero = object); one that does not overlap
    the image at all is refused rather than read as if it were on the image's grid.

    Raises:
        SessionStateError: wrong shape, not 3D scalar numbers, or no overlap with the image.
    """
    shape = image.GetSize()[::-1]
    if isinstance(mask, sitk.Image):
        if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
            raise SessionStateError(f"the {name} must be a 3D scalar image, got {mask.GetDimension()}D with {mask.GetNumberOfComponentsPerPixel()} component(s)")
        if not same_grid(mask, image, **_GRID_TOLERANCE):
            resampled = sitk.Resample(sitk.Cast(mask != 0, sitk.sitkUInt8), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            arr = sitk.GetArrayFromImage(resampled)
            had = bool(np.any(sitk.GetArrayViewFromImage(mask)))
            if had and not arr.any():
                raise SessionStateError(
                    f"the {name} lies outside the image (origin {np.round(mask.GetOrigin(), 1).tolist()} mm, "
                    f"size {list(mask.GetSize())}, against the image's origin {np.round(image.GetOrigin(), 1).tolist()} mm, "
                    f"size {list(image.GetSize())}): give a {name} of this image, in the same physical space"
                )
            logger.info("the %s's grid differs from the image's: resampled onto it (nearest neighbour)", name)
            return arr.astype(np.uint8, copy=False)
        arr = sitk.GetArrayViewFromImage(mask)
    else:
        arr = np.asarray(mask)
    if arr.shape != shape:
        raise SessionStateError(f"the {name}'s shape {arr.shape} does not match the image's (z, y, x) shape {shape}")
    if arr.dtype.kind not in "biuf":
        raise SessionStateError(f"the {name} must hold numbers (non-zero = object), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise SessionStateError(f"the {name} holds NaN or infinite values: give a 0/1 (or label) mask")
    return (arr != 0).astype(np.uint8)
