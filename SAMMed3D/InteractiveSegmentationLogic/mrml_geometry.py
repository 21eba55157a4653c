"""MRML geometry → the core's frames: volumes to SimpleITK (LPS), control points to LPS.

Design:

- Slicer keeps a volume as voxels (numpy order ``(k, j, i)`` = ``zyx``) plus an ``IJKToRAS`` matrix
  in the node's own frame, possibly under a chain of parent transforms. The core takes a SimpleITK
  image in *world* LPS. So ``ijk_to_world_ras = node_to_world @ IJKToRAS``: a linear parent
  transform is hardened into the image geometry (the scene is not modified); a non-linear one
  cannot be expressed by an image grid and raises :class:`~SAMMed3DLib.errors.ImageError` that
  says how to fix it (harden the transform, or resample the volume).
- Oblique volumes are normal: the direction comes from the matrix columns. A sheared matrix (an
  affine transform with shear) is not an image grid and is refused with the same kind of error.
- Control points are read with ``GetNthControlPointPositionWorld`` (world RAS, every parent
  transform applied, non-linear ones included) and flipped to LPS; points still being placed
  (position status other than "defined") are skipped.
- Nothing here imports Qt or reaches for ``slicer.mrmlScene``: every function takes its nodes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import SimpleITK as sitk
import vtk

from SAMMed3DLib.errors import ImageError, SessionStateError
from SAMMed3DLib.geometry import ImageGeometry, ras_to_lps

logger = logging.getLogger(__name__)

#: Tolerance on the orthogonality of volume axes (cosine of the angle between two columns).
#: Slicer writes directions as float64 from NRRD/DICOM; 1e-4 accepts rounding, refuses shear.
_ORTHOGONALITY_TOLERANCE = 1e-4


def vtk_to_numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """Copy a ``vtkMatrix4x4`` into a (4, 4) float64 numpy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def numpy_to_vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """Copy a (4, 4) array into a new ``vtkMatrix4x4``."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def node_label(node: Any) -> str:
    """``'Name' (ID)`` of a node for error messages, robust to removed nodes."""
    try:
        return f"{node.GetName()!r} ({node.GetID()})"
    except Exception:  # a deleted VTK object or None: the message must still be built
        return repr(node)


def require_in_scene(node: Any, role: str) -> None:
    """Raise a clear error if ``node`` is missing or was removed from its scene.

    Args:
        node: an MRML node or None.
        role: what the node is used for, e.g. "input volume".

    Raises:
        SessionStateError: the node is None or no longer in a scene (deleted mid-session).
    """
    if node is None:
        raise SessionStateError(f"no {role} is selected: select one and click again")
    if node.GetScene() is None:
        raise SessionStateError(
            f"the {role} {node_label(node)} was removed from the scene while segmenting; "
            f"select another {role} (or reload it) and click again"
        )


def node_to_world_matrix(node: Any, role: str) -> np.ndarray:
    """(4, 4) matrix from the node's own frame to world RAS (identity without a parent transform).

    Raises:
        ImageError: the parent transform chain is not linear.
    """
    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise ImageError(
            f"the {role} {node_label(node)} is under the non-linear transform {node_label(transform_node)}; "
            "an image grid cannot follow a non-linear transform. Harden the transform on the node "
            "(Data module: right-click → Harden transform) or resample it, then click again"
        )
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return vtk_to_numpy_matrix(matrix)


def volume_ijk_to_world_ras(volume_node: Any) -> np.ndarray:
    """(4, 4) matrix from the volume's voxel index (i, j, k, 1) to world RAS mm.

    The volume's own ``IJKToRAS`` composed with its linear parent transforms.

    Raises:
        ImageError: non-linear parent transform.
    """
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return node_to_world_matrix(volume_node, "input volume") @ vtk_to_numpy_matrix(matrix)


def check_scalar_volume(volume_node: Any) -> None:
    """Raise ImageError unless the node holds a 3D single-component image.

    Raises:
        SessionStateError: the node was removed from the scene.
        ImageError: no voxels, more than one component (RGB or vector volume), or not 3D.
    """
    require_in_scene(volume_node, "input volume")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise ImageError(f"the input volume {node_label(volume_node)} has no voxels: load or select an image volume")
    components = image_data.GetNumberOfScalarComponents()
    if components != 1:
        raise ImageError(
            f"the input volume {node_label(volume_node)} has {components} components per voxel (RGB or vector image); "
            "SAM-Med3D segments scalar images: convert it to a scalar volume (Vector to Scalar Volume module)"
        )
    dims = image_data.GetDimensions()
    if min(dims) < 2:
        raise ImageError(
            f"the input volume {node_label(volume_node)} has size {list(dims)}: a 3D image with at least 2 voxels on each axis is needed"
        )


def volume_geometry(volume_node: Any) -> ImageGeometry:
    """The volume's grid in world LPS (linear parent transforms hardened in).

    Raises:
        ImageError: no voxels, non-linear or shearing transform.
    """
    check_scalar_volume(volume_node)
    size_xyz = tuple(int(v) for v in volume_node.GetImageData().GetDimensions())
    ijk_to_ras = volume_ijk_to_world_ras(volume_node)
    axes = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    cosines = np.abs(axes.T @ axes - np.eye(3))
    if np.max(cosines) > _ORTHOGONALITY_TOLERANCE:
        raise ImageError(
            f"the input volume {node_label(volume_node)} has sheared axes in world space (axis cosines "
            f"{np.round(axes.T @ axes, 4).tolist()}), usually from a shearing parent transform; "
            "resample the volume (Resample Scalar/Vector/DWI Volume) or remove the shear, then click again"
        )
    return ImageGeometry.from_ijk_to_ras(size_xyz, ijk_to_ras)  # type: ignore[arg-type]


def volume_to_image(volume_node: Any) -> tuple[sitk.Image, ImageGeometry]:
    """Copy a scalar volume into a SimpleITK image in world LPS.

    Returns:
        The image (pixel type of the volume, numpy view (k, j, i) = ``arrayFromVolume``) and its
        :class:`~SAMMed3DLib.geometry.ImageGeometry`.

    Raises:
        SessionStateError: the node was removed from the scene.
        ImageError: see :func:`volume_geometry`.
    """
    import slicer.util  # slicer-core: arrayFromVolume works without the application

    geometry = volume_geometry(volume_node)
    array_zyx = slicer.util.arrayFromVolume(volume_node)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(geometry.spacing_xyz_mm.tolist())
    image.SetOrigin(geometry.origin_lps.tolist())
    image.SetDirection(geometry.direction.ravel().tolist())
    return image, geometry


def control_points_world_lps(markups_node: Any | None, role: str) -> np.ndarray:
    """Defined control points of a markups node in world LPS.

    Args:
        markups_node: a markups node, or None for no points.
        role: for error messages ("positive points").

    Returns:
        (N, 3) float64 LPS mm, in control point order; points being placed are skipped.

    Raises:
        SessionStateError: the node was removed from the scene.
    """
    if markups_node is None:
        return np.zeros((0, 3))
    require_in_scene(markups_node, role)
    defined = markups_node.PositionDefined
    points_ras = []
    position = [0.0, 0.0, 0.0]
    for n in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(n) != defined:
            continue
        markups_node.GetNthControlPointPositionWorld(n, position)
        points_ras.append(list(position))
    if not points_ras:
        return np.zeros((0, 3))
    return ras_to_lps(np.array(points_ras, dtype=np.float64))


def roi_world_lps_box(roi_node: Any | None, role: str = "box") -> tuple[np.ndarray, np.ndarray] | None:
    """Two opposite corners (LPS mm) of a markups ROI's world bounds, or None without a usable ROI.

    The box is the ROI's axis-aligned bounding box in world coordinates (parent transforms
    applied; a rotated ROI gives the box around it). An ROI not placed yet (no control point, or
    zero size while it is being drawn) is no box.

    Raises:
        SessionStateError: the node was removed from the scene.
    """
    if roi_node is None:
        return None
    require_in_scene(roi_node, role)
    if roi_node.GetNumberOfControlPoints() == 0 or roi_node.GetNthControlPointPositionStatus(0) != roi_node.PositionDefined:
        return None
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    low = np.array(bounds[0::2], dtype=np.float64)
    high = np.array(bounds[1::2], dtype=np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        return None
    return ras_to_lps(low), ras_to_lps(high)
