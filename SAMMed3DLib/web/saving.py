"""Save what the page made: the segmentation (.seg.nrrd and NIfTI) and its clicks (markups JSON).

Design:

- ``<name>.seg.nrrd`` is written by Slicer's own segmentation storage node (every segment with
  its name and colour), ``<name>.<segment>.positive.mrk.json`` / ``.negative.mrk.json`` (and
  ``.box.mrk.json``, the segment's box as a markups ROI) by Slicer's markups JSON storage nodes
  (the ROI one for the box: the plain one leaves its size out): Slicer opens them as they are. ``<name>.nii.gz`` is a label
  image on the volume's grid (segment n of the list has label n; a later segment wins where two
  overlap) with ``<name>.labels.json`` naming the labels, for tools that do not read .seg.nrrd.
- All or nothing (:func:`SAMMed3DLib.outputs.all_or_nothing`): every file goes to a temporary
  file beside it and is read back and compared (each segment's voxels on the volume's grid, each
  control point) before any of them replaces an earlier file; a failure leaves the folder as it
  was. An output may never be one of the inputs (the image, the ``--segmentation`` file).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import OutputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "segment") -> str:
    """A file-name part made of letters, digits, ``.``, ``_`` and ``-`` (nothing that leaves the folder)."""
    name = _UNSAFE.sub("_", text).strip("._")
    return name or fallback


def output_paths(folder: Path, stem: str, segments: Sequence[tuple[str, str]]) -> dict[str, Path]:
    """The files :func:`save` writes: keys ``seg``, ``nifti``, ``labels`` and ``<segment id> +`` / ``-`` / ``box``.

    Args:
        segments: (segment ID, segment name) pairs.

    Raises:
        OutputError: ``stem`` is empty or holds a path separator.
    """
    if not stem or stem != Path(stem).name or stem in (".", ".."):
        raise OutputError(f"the file name {stem!r} must be a plain name without a folder (e.g. liver)")
    paths = {"seg": folder / f"{stem}.seg.nrrd", "nifti": folder / f"{stem}.nii.gz", "labels": folder / f"{stem}.labels.json"}
    used: set[str] = set()
    for segment_id, name in segments:
        part = safe_name(name)
        if part in used:
            part = f"{part}_{safe_name(segment_id)}"
        used.add(part)
        for sign, word in (("+", "positive"), ("-", "negative"), ("box", "box")):
            paths[f"{segment_id} {sign}"] = folder / f"{stem}.{part}.{word}.mrk.json"
    return paths


def save(
    folder: str | Path,
    stem: str,
    volume_node: Any,
    segmentation_node: Any,
    points_nodes: dict[str, tuple[Any, Any]],
    boxes: dict[str, Any] | None = None,
    inputs: Sequence[tuple[str, Path]] = (),
) -> list[Path]:
    """Write the segmentation and the clicks into ``folder``, all or nothing; returns the files written.

    Args:
        folder: output folder (created when missing).
        stem: file name without extension.
        volume_node: the volume the segmentation was made on (its grid is the NIfTI's).
        segmentation_node: the segmentation.
        points_nodes: segment ID → (positive, negative) markups nodes; a node without points is
            not written.
        boxes: segment ID → its box (a markups ROI), for the segments that have one.
        inputs: (what, path) of files that must not be overwritten.

    Raises:
        OutputError: a path is unusable or an input, a writer failed, or a file read back
            differently; nothing was replaced.
    """
    from InteractiveSegmentationLogic.mrml_geometry import volume_geometry

    from ..io import write_segmentation
    from ..outputs import all_or_nothing, check_distinct, check_output_path, write_text_verified, write_verified
    from .scene import segment_ids, segment_mask, segment_name

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {str(folder)!r}: {exc}; choose another folder") from exc
    ids = segment_ids(segmentation_node)
    if len(ids) > 255:
        raise OutputError(f"{len(ids)} segments do not fit a uint8 label image (at most 255)")
    paths = output_paths(folder, stem, [(i, segment_name(segmentation_node, i)) for i in ids])
    for key, path in paths.items():
        check_output_path(path, f"the {key} file", extensions=(".seg.nrrd", ".nii.gz", ".json"))
    check_distinct([(key, path) for key, path in paths.items()], inputs=list(inputs))
    masks = {i: segment_mask(segmentation_node, i, volume_node).astype(bool) for i in ids}
    geometry = volume_geometry(volume_node)
    labels = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    for value, segment_id in enumerate(ids, start=1):
        labels[masks[segment_id]] = value
    label_image = sitk.GetImageFromArray(labels)
    label_image.SetSpacing(geometry.spacing_xyz_mm.tolist())
    label_image.SetOrigin(geometry.origin_lps.tolist())
    label_image.SetDirection(geometry.direction.ravel().tolist())
    table = [_label_entry(segmentation_node, segment_id, value) for value, segment_id in enumerate(ids, start=1)]
    written: list[Path] = []
    with all_or_nothing() as files:
        write_verified(
            paths["seg"],
            lambda temp: _write_with(_storage("vtkMRMLSegmentationStorageNode"), temp, segmentation_node),
            lambda temp: _segmentation_difference(temp, masks, volume_node),
            suffix=".seg.nrrd",
            files=files,
        )
        written.append(paths["seg"])
        write_segmentation(label_image, paths["nifti"], files=files)
        written.append(paths["nifti"])
        write_text_verified(paths["labels"], json.dumps({"labels": table}, indent=2) + "\n", files=files)
        written.append(paths["labels"])
        for segment_id, nodes in points_nodes.items():
            for sign, node in zip(("+", "-"), nodes):
                if node is None or node.GetNumberOfDefinedControlPoints() == 0 or f"{segment_id} {sign}" not in paths:
                    continue
                path = paths[f"{segment_id} {sign}"]
                write_verified(
                    path,
                    lambda temp, node=node: _write_with(_storage("vtkMRMLMarkupsJsonStorageNode"), temp, node),
                    lambda temp, node=node: _points_difference(temp, node),
                    suffix=".mrk.json",
                    files=files,
                )
                written.append(path)
        for segment_id, box in (boxes or {}).items():
            path = paths[f"{segment_id} box"]
            write_verified(
                path,
                lambda temp, box=box: _write_with(_storage("vtkMRMLMarkupsROIJsonStorageNode"), temp, box),
                lambda temp, box=box: _box_difference(temp, box),
                suffix=".mrk.json",
                files=files,
            )
            written.append(path)
    return written


def zipped(paths: Sequence[Path]) -> bytes:
    """The files as one zip archive (their names without folders), for a download."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(path, arcname=path.name)
    return buffer.getvalue()


def _label_entry(segmentation_node: Any, segment_id: str, value: int) -> dict[str, Any]:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return {"label": value, "id": segment_id, "name": segment.GetName(), "color": [round(float(c), 4) for c in segment.GetColor()]}


def _storage(class_name: str) -> Any:
    import slicer

    return getattr(slicer, class_name)()


def _write_with(storage: Any, temp: Path, node: Any) -> None:
    storage.SetFileName(str(temp))
    if not storage.WriteData(node):
        raise RuntimeError(f"Slicer's {type(storage).__name__} could not write {node.GetName()!r}")


def _read_into(class_name: str, node_class: str, path: Path) -> tuple[Any, Any] | None:
    """(scene, node) holding ``path`` read by a fresh storage node, or None when it cannot be read."""
    import slicer

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass(node_class)
    storage = _storage(class_name)
    storage.SetFileName(str(path))
    return (scene, node) if storage.ReadData(node) else None


def _segmentation_difference(path: Path, masks: dict[str, np.ndarray], volume_node: Any) -> str | None:
    from .scene import segment_ids, segment_mask

    read = _read_into("vtkMRMLSegmentationStorageNode", "vtkMRMLSegmentationNode", path)
    if read is None:
        return "Slicer cannot read the segmentation written"
    _, node = read
    if sorted(segment_ids(node)) != sorted(masks):
        return f"the segmentation written holds segments {segment_ids(node)} instead of {list(masks)}"
    for segment_id, expected in masks.items():
        back = segment_mask(node, segment_id, volume_node).astype(bool)
        differ = int(np.count_nonzero(back != expected))
        if differ:
            return f"{differ} voxel(s) of segment {segment_id!r} read back differently"
    return None


def _points_difference(path: Path, node: Any) -> str | None:
    read = _read_into("vtkMRMLMarkupsJsonStorageNode", "vtkMRMLMarkupsFiducialNode", path)
    if read is None:
        return "Slicer cannot read the markups file written"
    _, back = read
    expected = _defined_points(node)
    got = _defined_points(back)
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-3):
        return f"the points read back ({len(got)}) differ from the {len(expected)} written"
    return None


def _box_difference(path: Path, box: Any) -> str | None:
    read = _read_into("vtkMRMLMarkupsROIJsonStorageNode", "vtkMRMLMarkupsROINode", path)
    if read is None:
        return "Slicer cannot read the box written"
    _, back = read
    if not (np.allclose(back.GetCenter(), box.GetCenter(), atol=1e-3) and np.allclose(back.GetSize(), box.GetSize(), atol=1e-3)):
        return "the box read back differs from the one written"
    return None


def _defined_points(node: Any) -> np.ndarray:
    points = [node.GetNthControlPointPosition(n) for n in range(node.GetNumberOfControlPoints()) if node.GetNthControlPointPositionStatus(n) == node.PositionDefined]
    return np.array(points, dtype=np.float64).reshape(-1, 3)
