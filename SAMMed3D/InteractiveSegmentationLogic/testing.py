"""Test fixtures shared by pytest and the in-Slicer self-test: a predictable model, synthetic scenes.

Design: placement and writing are checked with :func:`bright_spot_model`, a real
:class:`~SAMMed3DLib.model.Sam3D` whose encoder passes the normalised window through and whose
decoder answers "voxels brighter than one standard deviation above the window mean", ignoring
the prompts. Its window is 32³ voxels of 1.5 mm (48 mm), smaller than the synthetic volumes, so
a click on a bright sphere must give exactly that sphere and nothing outside the window. The
result does not depend on trained weights, so the self-test fails only when geometry, resampling
or writing is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Intensities of the synthetic volumes (int16 voxels).
BRIGHT, BACKGROUND = 1000, 100

#: A tiny SAM-Med3D configuration (32³ input) for the stand-in model and fast tests.
SMALL_CONFIG: dict[str, dict[str, Any]] = {
    "image_encoder": {"img_size": 32, "patch_size": 16, "embed_dim": 48, "depth": 1, "num_heads": 4, "out_chans": 48},
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 2, "input_image_size": 32, "mask_in_chans": 4},
    "mask_decoder": {"transformer_dim": 48},
}


def bright_spot_model() -> Any:
    """A Sam3D predicting "normalised intensity > 1" over its 48 mm window; prompts are ignored.

    ``model.image_encoder.calls`` and ``model.decoder_calls`` count the passes.
    """
    import torch

    from SAMMed3DLib import build_sam3d
    from SAMMed3DLib.card import ModelCard
    from SAMMed3DLib.model.sam3d import Sam3D

    class _PassThrough(torch.nn.Module):
        img_size = SMALL_CONFIG["image_encoder"]["img_size"]

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return x

    class BrightSpotModel(Sam3D):
        def __init__(self) -> None:
            base = build_sam3d(SMALL_CONFIG)
            super().__init__(_PassThrough(), base.prompt_encoder, base.mask_decoder, base.config)
            self.card = ModelCard(name="bright-spot", config=base.config, spacing_mm=1.5)
            self.decoder_calls = 0

        def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # type: ignore[no-untyped-def]
            self.decoder_calls += 1
            return (image_embeddings - 1.0) * 10.0, torch.zeros(1, 1)

    return BrightSpotModel()


def click_following_model() -> Any:
    """Like :func:`bright_spot_model`, but following the clicks: a bright voxel of the window is
    predicted when its nearest click is a positive one.

    So a − click on a part of the segment removes the bright voxels nearer to it than to every
    + click, whatever the trained weights would do: pages and scripts that pass clicks on can be
    checked for the sign and the place of every click.
    """
    import torch

    model = bright_spot_model()
    model.card.name = "click-following"
    bright = type(model).predict_low_res

    def predict_low_res(image_embeddings, coords, labels, mask_logits):  # type: ignore[no-untyped-def]
        logits, iou = bright(model, image_embeddings, coords, labels, mask_logits)
        if coords is None or labels is None or not bool((labels == 0).any()):
            return logits, iou
        grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in logits.shape[2:]), indexing="ij"), -1)
        points = coords[0].to(torch.float32) * (logits.shape[2] / image_embeddings.shape[2])
        distance = torch.cdist(grid.reshape(-1, 3), points).reshape(*logits.shape[2:], -1)
        positive = labels[0] > 0
        nearest_positive = distance[..., positive].min(-1).values if bool(positive.any()) else torch.full(logits.shape[2:], float("inf"))
        nearest_negative = distance[..., ~positive].min(-1).values
        return torch.where((nearest_negative < nearest_positive)[None, None], torch.full_like(logits, -10.0), logits), iou

    model.predict_low_res = predict_low_res
    return model


def rotation_matrix(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """(3, 3) rotation about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def ijk_to_ras_matrix(volume_node: Any) -> np.ndarray:
    """(4, 4) IJK → RAS matrix of a volume node (its own frame)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def add_sphere_volume(
    scene: Any,
    spheres_ijk: tuple[tuple[float, float, float], ...] = ((30.0, 45.0, 18.0),),
    radius_mm: float = 10.0,
    size_xyz: tuple[int, int, int] = (110, 90, 36),
    spacing: tuple[float, float, float] = (0.8, 0.9, 2.5),
    directions: np.ndarray | None = None,
    origin: tuple[float, float, float] = (-40.0, 15.0, -30.0),
    name: str = "CT",
) -> tuple[Any, list[np.ndarray]]:
    """Add an oblique, anisotropic int16 volume with bright spheres at voxel indices (node frame).

    Returns:
        The volume node and the spheres' centres in RAS mm (node frame).
    """
    import slicer.util
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    d = rotation_matrix((0.3, 0.2, 1.0), 25.0) if directions is None else np.asarray(directions)
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(d[r, c]))
    node.SetIJKToRASDirectionMatrix(m)
    matrix = ijk_to_ras_matrix(node)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in size_xyz[::-1]), indexing="ij")
    ras = (np.stack([xx.ravel(), yy.ravel(), zz.ravel(), np.ones(xx.size)], 1) @ matrix.T)[:, :3]
    array = np.full(xx.size, BACKGROUND, dtype=np.int16)
    centres = []
    for s in spheres_ijk:
        c = (matrix @ np.array([*s, 1.0]))[:3]
        centres.append(c)
        array[np.linalg.norm(ras - c, axis=1) <= radius_mm] = BRIGHT
    slicer.util.updateVolumeFromArray(node, array.reshape(xx.shape))
    node.CreateDefaultDisplayNodes()
    return node, centres


def segment_on_volume(segmentation_node: Any, segment_id: str, volume_node: Any) -> np.ndarray:
    """A segment on a volume's grid, read with Slicer's own export: (k, j, i) bool."""
    import slicer
    import slicer.util

    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SAMMed3D export")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, [segment_id], labelmap, volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not ok:
            raise RuntimeError(f"exporting segment {segment_id!r} onto the volume grid failed")
        return slicer.util.arrayFromVolume(labelmap) > 0
    finally:
        scene.RemoveNode(labelmap)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def centroid_ras(mask_zyx: np.ndarray, volume_node: Any) -> np.ndarray:
    """RAS centroid (node frame) of the True voxels of a (k, j, i) mask on the volume's grid."""
    kji = np.argwhere(np.asarray(mask_zyx) > 0).astype(np.float64)
    ijk = np.c_[kji[:, ::-1], np.ones(len(kji))]
    return (ijk @ ijk_to_ras_matrix(volume_node).T)[:, :3].mean(axis=0)


def in_window(volume_node: Any, centre_ras: np.ndarray, half_mm: float = 24.0) -> np.ndarray:
    """(k, j, i) voxels whose centre lies in the RAS-aligned cube of half side ``half_mm`` at ``centre_ras``."""
    import slicer.util

    shape = slicer.util.arrayFromVolume(volume_node).shape
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ras = (np.stack([xx.ravel(), yy.ravel(), zz.ravel(), np.ones(xx.size)], 1) @ ijk_to_ras_matrix(volume_node).T)[:, :3]
    return np.all(np.abs(ras - np.asarray(centre_ras)) <= half_mm + 1e-6, axis=1).reshape(shape)
