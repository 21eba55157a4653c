"""Editing in the Slicer logic on a real MRML scene: existing segments, box ROIs, locked segments.

Same set-up as test_slicer_logic.py: slicer-core's MRML with the segmentations and markups
logics, an oblique anisotropic volume with two bright spheres, and the bright-spot model (it
segments the bright voxels of its 48 mm window whatever the prompts).
"""

from __future__ import annotations

import numpy as np
import pytest

from test_slicer_logic import add_points, case, paint, slicer, sphere_truth  # noqa: F401, F811  (fixtures re-used)

from InteractiveSegmentationLogic import WriteOptions  # noqa: E402
from InteractiveSegmentationLogic.testing import ijk_to_ras_matrix, in_window, segment_on_volume  # noqa: E402
from SAMMed3DLib.errors import PromptError  # noqa: E402


def ras_grid(volume) -> np.ndarray:
    shape = slicer.util.arrayFromVolume(volume).shape
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk = np.stack([xx, yy, zz, np.ones_like(xx)], -1).astype(float)
    return (ijk @ ijk_to_ras_matrix(volume).T)[..., :3]


def test_negative_points_alone_remove_a_leak_from_an_existing_segment(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    sphere = sphere_truth(volume) & in_window(volume, centres[0])
    ras = ras_grid(volume)
    leak_centre = centres[0] + np.array([0.0, 15.0, 0.0])
    leak = np.linalg.norm(ras - leak_centre, axis=-1) <= 7.0  # dark tissue next to the sphere
    paint(segmentation, a, volume, (sphere | leak).astype(np.uint8))
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    minus.AddControlPoint(*leak_centre)
    result = logic.segment(volume, segmentation, a, plus, minus)
    after = segment_on_volume(segmentation, a, volume)
    assert result.changedVoxels > 0
    assert (after & leak & ~sphere).sum() <= 0.05 * (leak & ~sphere).sum()  # the model's shell around the sphere may stay
    assert (after & sphere).sum() >= 0.98 * sphere.sum()
    logic.undo()
    assert np.array_equal(segment_on_volume(segmentation, a, volume), sphere | leak)


def test_negative_points_alone_on_an_empty_segment_ask_for_a_positive_point(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    minus.AddControlPoint(*centres[0])
    with pytest.raises(PromptError, match=r"\+ point"):
        logic.segment(volume, segmentation, a, plus, minus)
    assert segment_on_volume(segmentation, a, volume).sum() == 0


def test_a_box_roi_alone_segments_the_sphere_inside_it(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetXYZ(*centres[0])
    roi.SetRadiusXYZ(12.0, 12.0, 12.0)
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    logic.segment(volume, segmentation, a, plus, minus, roiNode=roi)
    after = segment_on_volume(segmentation, a, volume)
    sphere = sphere_truth(volume) & in_window(volume, centres[0])
    ras = ras_grid(volume)
    inside_roi = np.all(np.abs(ras - centres[0]) <= 12.0 + 1e-6, axis=-1)
    assert (after & sphere).sum() >= 0.98 * sphere.sum()
    assert not (after & ~inside_roi).any()
    # A smaller box cuts the mask: the box bounds the object.
    roi.SetRadiusXYZ(12.0, 12.0, 4.0)
    logic.segment(volume, segmentation, a, plus, minus, roiNode=roi)
    smaller = segment_on_volume(segmentation, a, volume)
    assert 0 < smaller.sum() < after.sum()


def test_a_locked_segment_is_never_written_nor_overlapped(case) -> None:
    scene, volume, centres, segmentation, a, b, logic = case
    sphere = sphere_truth(volume) & in_window(volume, centres[0])
    ras = ras_grid(volume)
    half = sphere & (ras[..., 0] > centres[0][0])  # B holds half of the clicked sphere and is locked
    paint(segmentation, b, volume, half.astype(np.uint8))
    plus = add_points(scene, [centres[0] + np.array([-3.0, 0.0, 0.0])])
    options = WriteOptions(overwrite="all", lockedSegmentIds=(b,))
    logic.segment(volume, segmentation, a, plus, options=options)
    got_a = segment_on_volume(segmentation, a, volume)
    assert np.array_equal(segment_on_volume(segmentation, b, volume), half)
    assert not (got_a & half).any()
    assert (got_a & sphere & ~half).sum() >= 0.95 * (sphere & ~half).sum()
    assert not (logic.session.mask_array.astype(bool) & half).any()  # the model's mask leaves it out too
