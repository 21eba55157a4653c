"""Image grids for the resampling tests: direction matrices and grids centred on one point.

Shared by the paste-back (separable and oblique) and window-extraction tests, so that all of
them exercise the same kinds of geometry: permuted and flipped axes, rotations, anisotropic
voxels.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from SAMMed3DLib.geometry import ImageGeometry

#: The LPS point (mm) every test grid is centred on: off the origin, so sign errors show.
CENTRE = np.array([12.0, -30.0, 45.0])


def permutation(order, signs) -> np.ndarray:
    """Direction whose column k is ``signs[k]`` times the unit vector of axis ``order[k]``."""
    m = np.zeros((3, 3))
    for column, (row, sign) in enumerate(zip(order, signs)):
        m[row, column] = sign
    return m


def rotation_z(radians: float) -> np.ndarray:
    """Rotation about the S axis."""
    c, s = np.cos(radians), np.sin(radians)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation(axis, degrees: float, flip_column: int | None = None) -> np.ndarray:
    """Rotation about ``axis``; ``flip_column`` negates one column (a left-handed acquisition)."""
    m = np.reshape(sitk.VersorTransform(tuple(float(v) for v in axis), np.deg2rad(degrees)).GetMatrix(), (3, 3))
    if flip_column is not None:
        m = m.copy()
        m[:, flip_column] *= -1.0
    return m


def centred_geometry(spacing, direction, extent_mm: float = 60.0) -> ImageGeometry:
    """A grid of about ``extent_mm`` per axis centred on :data:`CENTRE`."""
    size = tuple(int(round(extent_mm / s)) for s in spacing)
    half = (np.asarray(size) - 1) / 2.0
    origin = CENTRE - np.asarray(direction) @ (np.asarray(spacing) * half)
    return ImageGeometry(size_xyz=size, spacing_xyz_mm=spacing, origin_lps=origin, direction=np.asarray(direction))


#: (name, spacing_xyz_mm, direction) of axis-aligned grids (the image's axes are LPS's up to order
#: and sign): axial as ITK stores it, RAS-stored (LPS-flipped), flipped z, sagittal and coronal
#: acquisitions (axes permuted) with flips, all anisotropic.
AXIS_ALIGNED_GRIDS = [
    ("identity", (0.7, 0.9, 3.0), np.eye(3)),
    ("ras_stored", (0.8, 0.8, 2.5), np.diag([-1.0, -1.0, 1.0])),
    ("flipped_z", (1.1, 0.6, 2.0), np.diag([1.0, 1.0, -1.0])),
    ("sagittal", (2.5, 0.8, 1.1), permutation((2, 0, 1), (1.0, -1.0, -1.0))),
    ("coronal_flipped", (0.9, 3.0, 0.7), permutation((0, 2, 1), (-1.0, 1.0, -1.0))),
]
