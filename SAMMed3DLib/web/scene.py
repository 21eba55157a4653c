"""The web app's MRML scene: volumes from files, segmentations, window/level presets, voxel counts.

Design:

- Images are read as the command line reads them (:func:`SAMMed3DLib.io.read_image`: NIfTI,
  NRRD, MetaImage, a DICOM folder; special files refused) and become a scalar volume node whose
  ``IJKToRAS`` is the image's LPS geometry flipped to RAS, so a voxel is where it is for
  ``sammed3d segment`` and for Slicer alike.
- ``--segmentation SEG`` loads an existing segmentation as the starting masks: a ``.seg.nrrd``
  through Slicer's own segmentation storage node (every segment, name and colour), any other
  label image as one segment per label value. The logic reads a segment's voxels when its
  session starts, so the first click refines what was loaded.
- Slicer classes are imported inside the functions: importing this module needs no slicer-core.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import ImageError
from ..geometry import ImageGeometry

logger = logging.getLogger(__name__)

#: Window/level presets (window, level) in the image's units; None: Slicer's automatic window.
#: The CT values are Slicer's own presets (HU); for MR the window spans the 1st to 99th
#: percentile of the voxels above the lowest value.
WINDOW_PRESETS: dict[str, tuple[float, float] | None] = {
    "Auto": None,
    "CT soft tissue": (350.0, 40.0),
    "CT lung": (1400.0, -500.0),
    "CT bone": (1000.0, 400.0),
    "CT brain": (100.0, 50.0),
    "MR (1-99 %)": (float("nan"), float("nan")),
}

#: Extensions read as a Slicer segmentation (all segments, names and colours).
SEGMENTATION_FILE_EXTENSIONS = (".seg.nrrd", ".seg.nhdr")


def add_volume(scene: Any, image: sitk.Image, name: str) -> Any:
    """Add ``image`` (LPS, any scalar type) to ``scene`` as a scalar volume node and return it."""
    import slicer.util

    from ..io import validate_image
    from InteractiveSegmentationLogic.mrml_geometry import numpy_to_vtk_matrix

    image = validate_image(image, name)
    geometry = ImageGeometry.from_image(image)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(numpy_to_vtk_matrix(geometry.ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.AutoWindowLevelOn()
    return node


def volume_name(path: str | Path) -> str:
    """A node name from a file or folder name, without the image extensions."""
    name = Path(path).name
    for ext in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or "volume"
    return name or "volume"


def new_segmentation(scene: Any, volume_node: Any, name: str = "Segmentation") -> Any:
    """An empty segmentation on the volume's grid (see :func:`show_in_3d` once it has a segment)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return node


def show_in_3d(segmentation_node: Any) -> None:
    """Keep a closed surface of every segment, so the 3D view shows the segments as surfaces.

    Needs a segment: on a segmentation without any, Slicer keeps no surface (measured with
    slicer-core 5.11). The surfaces stay opaque: translucent ones vanish with the 3D view's depth
    peeling on Mesa's llvmpipe.
    """
    segmentation_node.CreateClosedSurfaceRepresentation()


def load_segmentation(scene: Any, path: str | Path, volume_node: Any) -> tuple[Any, list[str]]:
    """Load a segmentation file as the starting masks; returns the node and its segment IDs.

    Raises:
        ImageError: the file does not exist, cannot be read, holds no segment, or its label
            image is not an integer 3D image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"segmentation {str(path)!r} does not exist; give a .seg.nrrd or a label image (.nii.gz, .nrrd, .mha)")
    if path.name.lower().endswith(SEGMENTATION_FILE_EXTENSIONS):
        node = _read_slicer_segmentation(scene, path)
    else:
        node = _read_label_image(scene, path, volume_node)
    ids = segment_ids(node)
    if not ids:
        scene.RemoveNode(node)
        raise ImageError(f"segmentation {str(path)!r} holds no segment (no non-zero voxel); start without --segmentation")
    return node, ids


def _read_slicer_segmentation(scene: Any, path: Path) -> Any:
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume_name(path))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise ImageError(f"cannot read segmentation {str(path)!r}: Slicer's segmentation reader refused it; is it a .seg.nrrd file?")
    node.CreateDefaultDisplayNodes()
    return node


def _read_label_image(scene: Any, path: Path, volume_node: Any) -> Any:
    import slicer
    import slicer.util

    from InteractiveSegmentationLogic.mrml_geometry import numpy_to_vtk_matrix

    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageError(f"cannot read segmentation {str(path)!r}: {str(exc).strip().splitlines()[0]}") from exc
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(f"segmentation {str(path)!r} must be a 3D label image, got {label.GetDimension()}D with {label.GetNumberOfComponentsPerPixel()} component(s)")
    values = sitk.GetArrayFromImage(label)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise ImageError(f"segmentation {str(path)!r} holds non-integer values; a label image has one integer per structure")
        values = values.astype(np.int32)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SAMMed3D import")
    try:
        labelmap.SetIJKToRASMatrix(numpy_to_vtk_matrix(ImageGeometry.from_image(label).ijk_to_ras))
        slicer.util.updateVolumeFromArray(labelmap, values.astype(np.int32))
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", volume_name(path))
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node):
            scene.RemoveNode(node)
            raise ImageError(f"Slicer could not import the label image {str(path)!r} as segments")
    finally:
        scene.RemoveNode(labelmap)
    return node


def segment_ids(segmentation_node: Any) -> list[str]:
    """The segment IDs of a segmentation, in its order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def segment_name(segmentation_node: Any, segment_id: str) -> str:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return segment.GetName() if segment is not None else segment_id


def segment_mask(segmentation_node: Any, segment_id: str, volume_node: Any) -> np.ndarray:
    """The segment's voxels on the volume's grid, (k, j, i) uint8 0/1."""
    from InteractiveSegmentationLogic import labelmaps
    from InteractiveSegmentationLogic.mrml_geometry import node_to_world_matrix, volume_ijk_to_world_ras

    world_to_local = np.linalg.inv(node_to_world_matrix(segmentation_node, "segmentation"))
    size = volume_node.GetImageData().GetDimensions()
    extent = (0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    return labelmaps.read_segment(segmentation_node, segment_id, world_to_local @ volume_ijk_to_world_ras(volume_node), extent)


def segment_mtime(segmentation_node: Any, segment_id: str) -> int:
    """A number that changes whenever the segment's voxels do (its labelmap's modification time)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return -1
    labelmap = segment.GetRepresentation("Binary labelmap")
    return int(labelmap.GetMTime()) if labelmap is not None else 0


def segment_voxels(segmentation_node: Any, segment_id: str, volume_node: Any) -> int:
    """How many voxels of the volume's grid the segment covers."""
    return int(np.count_nonzero(segment_mask(segmentation_node, segment_id, volume_node)))


def apply_window_preset(volume_node: Any, preset: str) -> tuple[float, float] | None:
    """Set the volume's window/level from :data:`WINDOW_PRESETS`; returns (window, level), None for auto.

    Raises:
        ImageError: unknown preset name.
    """
    import slicer.util

    if preset not in WINDOW_PRESETS:
        raise ImageError(f"unknown window/level preset {preset!r}; use one of {', '.join(WINDOW_PRESETS)}")
    display = volume_node.GetDisplayNode()
    values = WINDOW_PRESETS[preset]
    if values is None:
        display.AutoWindowLevelOn()
        return None
    window, level = values
    if not np.isfinite(window):
        window, level = percentile_window(slicer.util.arrayFromVolume(volume_node))
    display.AutoWindowLevelOff()
    display.SetWindowLevel(float(window), float(level))
    return float(window), float(level)


def percentile_window(values: np.ndarray, percentiles: Sequence[float] = (1.0, 99.0)) -> tuple[float, float]:
    """(window, level) spanning the given percentiles of the voxels above the lowest value (MR background)."""
    flat = np.asarray(values).ravel()
    above = flat[flat > flat.min()] if flat.size else flat
    sample = above if above.size else flat
    low, high = np.percentile(sample, percentiles) if sample.size else (0.0, 1.0)
    window = max(float(high - low), 1e-6)
    return window, float(low + high) / 2.0
