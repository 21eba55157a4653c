"""Read and write segment voxels block by block on the segmentation's own lattice.

Design:

- A segmentation stores each segment as a binary labelmap (``vtkOrientedImageData``, possibly a
  layer shared with other segments, each with its label value) in the segmentation node's own
  frame ("local", RAS before the node's parent transform). Its *reference geometry* is the voxel
  lattice effects paint on. Every read and write here happens on that lattice (a
  :class:`Lattice`), in blocks given by an inclusive extent ``(i0, i1, j0, j1, k0, k1)``; block
  arrays are numpy ``(k, j, i)`` (``zyx``), uint8.
- The model's mask lives on the *volume* grid. :func:`resample_block` maps arrays between grids
  with nearest-neighbour sampling (the same rule Slicer uses for binary labelmaps). When the two
  grids coincide up to an integer voxel shift (the usual case: the segmentation's reference
  geometry was taken from the volume) it is a plain numpy slice — exact and fast; otherwise it goes
  through ``vtkOrientedImageDataResample``.
- Writing a block replaces the segment's voxels *inside the block only*: a ``MODE_MERGE_MIN`` pass
  clears the voxels the block has at 0, a ``MODE_MERGE_MAX`` pass sets the voxels it has at 1
  (``MODE_REPLACE`` would replace the whole segment). Before writing, the segment is moved to a
  layer of its own if it shares one: measured with slicer-core 5.13, a MAX merge into a segment on a
  shared layer writes the *other* segment's label value, and separating first avoids that. Layers
  are a storage detail; no voxel of any other segment changes.
- Because reads and writes use the segmentation's lattice, an undo block written back is bit-exact
  whatever the volume's geometry is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

from SAMMed3DLib.errors import ImageError, SessionStateError

from .mrml_geometry import node_label, node_to_world_matrix, numpy_to_vtk_matrix, vtk_to_numpy_matrix

logger = logging.getLogger(__name__)

Extent = tuple[int, int, int, int, int, int]
SliceZYX = tuple[slice, slice, slice]

#: Two grids whose index mapping differs from an integer shift by less than this (in voxels)
#: are treated as the same lattice (float noise from NRRD round trips is ~1e-12).
_SAME_LATTICE_TOLERANCE = 1e-6


def _slicer() -> Any:
    import slicer  # imported lazily: the module docstring and helpers stay importable for tools

    return slicer


@dataclass(frozen=True, eq=False)
class Lattice:
    """A voxel lattice in a segmentation node's own coordinate frame.

    Attributes:
        ijk_to_local: (4, 4) float64, voxel index (i, j, k, 1) → segmentation-local RAS mm.
        extent: inclusive index extent ``(i0, i1, j0, j1, k0, k1)`` of the reference geometry.
    """

    ijk_to_local: np.ndarray
    extent: Extent

    def same_as(self, other: Lattice) -> bool:
        return bool(np.allclose(self.ijk_to_local, other.ijk_to_local, atol=1e-9, rtol=0)) and self.extent == other.extent


def extent_is_empty(extent: Extent) -> bool:
    return extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]


def extent_shape_zyx(extent: Extent) -> tuple[int, int, int]:
    """numpy shape (k, j, i) of an inclusive extent."""
    return (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)


def region_to_extent(region_zyx: SliceZYX) -> Extent:
    """Inclusive extent of (z, y, x) slices of a volume array (start at 0, step 1)."""
    z, y, x = region_zyx
    return (x.start, x.stop - 1, y.start, y.stop - 1, z.start, z.stop - 1)


def extent_to_region(extent: Extent) -> SliceZYX:
    """(z, y, x) slices of a non-negative inclusive extent."""
    return (slice(extent[4], extent[5] + 1), slice(extent[2], extent[3] + 1), slice(extent[0], extent[1] + 1))


def intersect_extents(a: Extent, b: Extent) -> Extent:
    return (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]), max(a[4], b[4]), min(a[5], b[5]))


# -- vtkOrientedImageData <-> numpy --------------------------------------------------------------


def to_oriented_image(array_zyx: np.ndarray, ijk_to_frame: np.ndarray, extent: Extent) -> Any:
    """A ``vtkOrientedImageData`` holding a copy of ``array_zyx`` (its dtype kept) on ``extent``.

    Args:
        array_zyx: (k, j, i) numeric array matching ``extent``'s shape.
        ijk_to_frame: (4, 4) index → frame (RAS mm) matrix of the whole lattice.
        extent: inclusive extent the array covers.
    """
    slicer = _slicer()
    if array_zyx.shape != extent_shape_zyx(extent):
        raise ValueError(f"array shape {array_zyx.shape} does not match extent {extent} (shape {extent_shape_zyx(extent)})")
    array_zyx = np.ascontiguousarray(array_zyx)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
    image.AllocateScalars(numpy_support.get_vtk_array_type(array_zyx.dtype), 1)
    image.SetImageToWorldMatrix(numpy_to_vtk_matrix(ijk_to_frame))
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array_zyx.ravel()
    image.Modified()
    return image


def from_oriented_image(image: Any) -> tuple[np.ndarray | None, Extent, np.ndarray]:
    """(array (k, j, i) copy or None when empty, extent, ijk_to_frame matrix) of an oriented image."""
    extent = tuple(int(v) for v in image.GetExtent())
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    scalars = image.GetPointData().GetScalars()
    if scalars is None or extent_is_empty(extent):  # type: ignore[arg-type]
        return None, extent, vtk_to_numpy_matrix(matrix)  # type: ignore[return-value]
    array = numpy_support.vtk_to_numpy(scalars).reshape(extent_shape_zyx(extent)).copy()  # type: ignore[arg-type]
    return array, extent, vtk_to_numpy_matrix(matrix)  # type: ignore[return-value]


# -- grids ----------------------------------------------------------------------------------------


def integer_shift(src_ijk_to_frame: np.ndarray, dst_ijk_to_frame: np.ndarray) -> np.ndarray | None:
    """Integer (i, j, k) offset ``d`` with ``src_index = dst_index + d`` when the grids coincide, else None."""
    mapping = np.linalg.solve(src_ijk_to_frame, dst_ijk_to_frame)  # dst index → src index
    if not np.allclose(mapping[:3, :3], np.eye(3), atol=_SAME_LATTICE_TOLERANCE, rtol=0):
        return None
    shift = mapping[:3, 3]
    rounded = np.round(shift)
    if not np.allclose(shift, rounded, atol=_SAME_LATTICE_TOLERANCE, rtol=0):
        return None
    return rounded.astype(np.int64)


def map_extent(src_extent: Extent, src_ijk_to_frame: np.ndarray, dst_ijk_to_frame: np.ndarray) -> Extent:
    """Smallest dst extent holding every dst voxel centre that falls inside the src voxels.

    The src box is taken with its half-voxel border (voxel boxes, not centres), mapped through
    ``dst ← src`` and rounded outward; the result may exceed the dst lattice (intersect it).
    """
    lo = np.array([src_extent[0], src_extent[2], src_extent[4]], dtype=np.float64) - 0.5
    hi = np.array([src_extent[1], src_extent[3], src_extent[5]], dtype=np.float64) + 0.5
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    mapping = np.linalg.solve(dst_ijk_to_frame, src_ijk_to_frame)  # src index → dst index
    dst = (corners @ mapping.T)[:, :3]
    d_lo = np.floor(dst.min(axis=0) + 0.5 - _SAME_LATTICE_TOLERANCE).astype(np.int64)
    d_hi = np.ceil(dst.max(axis=0) - 0.5 + _SAME_LATTICE_TOLERANCE).astype(np.int64)
    return (int(d_lo[0]), int(d_hi[0]), int(d_lo[1]), int(d_hi[1]), int(d_lo[2]), int(d_hi[2]))


def resample_block(
    array_zyx: np.ndarray,
    src_ijk_to_frame: np.ndarray,
    src_extent: Extent,
    dst_ijk_to_frame: np.ndarray,
    dst_extent: Extent,
) -> np.ndarray:
    """Nearest-neighbour resampling of a block onto another grid; 0 outside the source.

    Args:
        array_zyx: (k, j, i) values on ``src_extent`` (labels, codes or intensities).
        src_ijk_to_frame, dst_ijk_to_frame: (4, 4) index → common frame (RAS mm) matrices.
        src_extent, dst_extent: inclusive extents.

    Returns:
        (k, j, i) array of ``array_zyx``'s dtype on ``dst_extent``.
    """
    out_shape = extent_shape_zyx(dst_extent)
    shift = integer_shift(src_ijk_to_frame, dst_ijk_to_frame)
    if shift is not None:
        out = np.zeros(out_shape, dtype=array_zyx.dtype)
        # dst index range expressed in src indices, intersected with the source extent
        lo = np.array([dst_extent[0], dst_extent[2], dst_extent[4]]) + shift
        hi = np.array([dst_extent[1], dst_extent[3], dst_extent[5]]) + shift
        s_lo = np.maximum(lo, [src_extent[0], src_extent[2], src_extent[4]])
        s_hi = np.minimum(hi, [src_extent[1], src_extent[3], src_extent[5]])
        if np.any(s_hi < s_lo):
            return out
        src_sl = tuple(slice(int(s_lo[a] - [src_extent[0], src_extent[2], src_extent[4]][a]), int(s_hi[a] - [src_extent[0], src_extent[2], src_extent[4]][a]) + 1) for a in (2, 1, 0))
        dst_sl = tuple(slice(int(s_lo[a] - lo[a]), int(s_hi[a] - lo[a]) + 1) for a in (2, 1, 0))
        out[dst_sl] = array_zyx[src_sl]
        return out
    slicer = _slicer()
    source = to_oriented_image(array_zyx, src_ijk_to_frame, src_extent)
    reference = to_oriented_image(np.zeros(out_shape, dtype=array_zyx.dtype), dst_ijk_to_frame, dst_extent)
    output = slicer.vtkOrientedImageData()
    ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(source, reference, output, False, False)
    if not ok:
        raise ImageError(f"resampling a labelmap block from extent {src_extent} to {dst_extent} failed")
    values, extent, _ = from_oriented_image(output)
    if values is None:
        return np.zeros(out_shape, dtype=array_zyx.dtype)
    if extent != dst_extent:  # the resampler returns the reference extent; guard against surprises
        values = resample_block(values, dst_ijk_to_frame, extent, dst_ijk_to_frame, dst_extent)
    return values.astype(array_zyx.dtype, copy=False)


# -- segmentation lattice -------------------------------------------------------------------------


def segmentation_lattice(segmentation_node: Any, volume_node: Any) -> Lattice:
    """The segmentation's reference geometry; taken from the volume when it has none yet.

    Setting it from the volume (as the Segment Editor does with its source volume) makes the
    model's grid and the segment's lattice coincide, so writes are exact slices.

    Raises:
        ImageError: the reference geometry cannot be read, or the segmentation is under a
            non-linear transform.
    """
    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    text = segmentation.GetConversionParameter(name)
    if not text:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        text = segmentation.GetConversionParameter(name)
    image = slicer.vtkOrientedImageData()
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image, False):
        raise ImageError(
            f"the segmentation {node_label(segmentation_node)} has an unreadable reference geometry {text!r}; "
            "set it in the Segment Editor (Specify geometry) and click again"
        )
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    node_to_world_matrix(segmentation_node, "segmentation")  # refuses a non-linear transform early
    return Lattice(ijk_to_local=vtk_to_numpy_matrix(matrix), extent=tuple(int(v) for v in image.GetExtent()))  # type: ignore[arg-type]


def require_overlap(lattice: Lattice, volume_ijk_to_local: np.ndarray, size_xyz: tuple[int, int, int], segmentation_node: Any, volume_node: Any) -> None:
    """Refuse a segmentation whose reference geometry covers no voxel of the volume (nothing could be written).

    Raises:
        ImageError: saying how to give the segmentation the volume's geometry.
    """
    volume_extent = (0, size_xyz[0] - 1, 0, size_xyz[1] - 1, 0, size_xyz[2] - 1)
    if not extent_is_empty(intersect_extents(map_extent(volume_extent, volume_ijk_to_local, lattice.ijk_to_local), lattice.extent)):
        return
    raise ImageError(
        f"the segmentation {node_label(segmentation_node)} has a reference geometry (its labelmap grid) that does not overlap the "
        f"volume {node_label(volume_node)} anywhere, so no result could be stored in it. Give it this volume's geometry "
        "(Segment Editor: Specify geometry, or segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)) "
        "or pick the volume it was made for"
    )


def require_segment(segmentation_node: Any, segment_id: str) -> Any:
    """The vtkSegment, or a clear error if it was removed."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise SessionStateError(
            f"segment {segment_id!r} no longer exists in the segmentation {node_label(segmentation_node)}; "
            "select a segment (or press Next segment) and click again"
        )
    return segment


def read_segment(segmentation_node: Any, segment_id: str, ijk_to_local: np.ndarray, extent: Extent) -> np.ndarray:
    """The segment's voxels sampled (nearest) on ``extent`` of a grid, as (k, j, i) uint8 0/1.

    Args:
        segmentation_node: the segmentation.
        segment_id: the segment.
        ijk_to_local: (4, 4) index → segmentation-local RAS matrix of the grid (the segmentation's
            lattice for exact reads, or the volume's grid mapped into the local frame).
        extent: inclusive extent to read.

    Raises:
        SessionStateError: the segment was removed.
    """
    slicer = _slicer()
    segment = require_segment(segmentation_node, segment_id)
    image = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, image, False):
        return np.zeros(extent_shape_zyx(extent), dtype=np.uint8)
    values, src_extent, src_matrix = from_oriented_image(image)
    if values is None:
        return np.zeros(extent_shape_zyx(extent), dtype=np.uint8)
    # The representation may be a layer shared with other segments: keep this segment's label.
    binary = (values == segment.GetLabelValue()).astype(np.uint8)
    return resample_block(binary, src_matrix, src_extent, ijk_to_local, extent)


def _ensure_own_layer(segmentation: Any, segment_id: str) -> None:
    layer = segmentation.GetLayerIndex(segment_id)
    if layer < 0:
        return
    ids = segmentation.GetSegmentIDsForLayer(layer)
    count = ids.size() if hasattr(ids, "size") else len(ids)
    if count > 1:
        segmentation.SeparateSegmentLabelmap(segment_id)


def write_segment_block(segmentation_node: Any, segment_id: str, lattice: Lattice, extent: Extent, block_zyx: np.ndarray) -> None:
    """Replace the segment's voxels inside ``extent`` by ``block_zyx`` (0/1); voxels outside stay.

    Raises:
        SessionStateError: the segment was removed.
        ImageError: Slicer refused the write.
    """
    slicer = _slicer()
    require_segment(segmentation_node, segment_id)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    _ensure_own_layer(segmentation_node.GetSegmentation(), segment_id)
    block = (np.asarray(block_zyx) > 0).astype(np.uint8)
    image = to_oriented_image(block, lattice.ijk_to_local, extent)
    if not block.all():  # clear where the block is 0 (MIN keeps the voxels where it is 1)
        if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_MERGE_MIN, extent, False, ()):
            raise ImageError(f"Slicer refused to clear voxels of segment {segment_id!r} in {node_label(segmentation_node)}")
    if block.any():
        if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_MERGE_MAX, extent, False, ()):
            raise ImageError(f"Slicer refused to set voxels of segment {segment_id!r} in {node_label(segmentation_node)}")
