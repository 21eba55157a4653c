"""Editing in the Slicer logic on a real MRML scene: existing segments, box ROIs, locked segments, 3D-view clicks.

Same set-up as test_slicer_logic.py: slicer-core's MRML with the segmentations and markups
logics, an oblique anisotropic volume with two bright spheres, and the bright-spot model (it
segments the bright voxels of its 48 mm window whatever the prompts).
"""

from __future__ import annotations

import numpy as np
import pytest

from test_slicer_logic import add_points, case, paint, slicer, sphere_truth  # noqa: F401, F811  (fixtures re-used)

from InteractiveSegmentationLogic import WriteOptions  # noqa: E402
from InteractiveSegmentationLogic.testing import BACKGROUND, BRIGHT, ijk_to_ras_matrix, in_window, rotation_matrix, segment_on_volume  # noqa: E402
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


def test_locked_segments_are_read_once_and_again_only_after_they_change(case) -> None:
    scene, volume, centres, segmentation, a, b, logic = case
    sphere = sphere_truth(volume) & in_window(volume, centres[0])
    ras = ras_grid(volume)
    half = sphere & (ras[..., 0] > centres[0][0])
    paint(segmentation, b, volume, half.astype(np.uint8))
    plus, _ = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*(centres[0] + np.array([-3.0, 0.0, 0.0])))
    options = WriteOptions(overwrite="all", lockedSegmentIds=(b,))
    logic.segment(volume, segmentation, a, plus, options=options)
    assert logic.lockedVoxels.reads == 1
    plus.AddControlPoint(*(centres[0] + np.array([-4.0, 1.0, 0.0])))
    logic.segment(volume, segmentation, a, plus, options=options)
    assert logic.lockedVoxels.reads == 1, "B did not change: the click reads no segment"
    # Start A afresh, then B grows (a Segment Editor stroke) after the cache was built: the next click honours it.
    logic.clearPoints(segmentation, a)
    paint(segmentation, a, volume, np.zeros_like(half, dtype=np.uint8))
    grown = sphere & (ras[..., 0] > centres[0][0] - 4.0)
    paint(segmentation, b, volume, grown.astype(np.uint8))
    plus.AddControlPoint(*(centres[0] + np.array([-6.0, 0.0, 1.0])))
    logic.segment(volume, segmentation, a, plus, options=options)
    assert logic.lockedVoxels.reads == 2, "B changed: read again"
    got_a = segment_on_volume(segmentation, a, volume)
    np.testing.assert_array_equal(segment_on_volume(segmentation, b, volume), grown)
    assert not (got_a & grown).any(), "A never gains the voxels B took after the cache was built"
    assert not (logic.session.mask_array.astype(bool) & grown).any(), "the model's mask leaves them out too"
    assert (got_a & sphere & ~grown).sum() >= 0.9 * (sphere & ~grown).sum()
    # Unlocked for a click, then locked again: B did not change meanwhile, so nothing is read.
    logic.segment(volume, segmentation, a, plus, options=WriteOptions(overwrite="none"))
    logic.segment(volume, segmentation, a, plus, options=options)
    assert logic.lockedVoxels.reads == 2


def _ray_hit_on_model(model_node, start, end) -> np.ndarray:
    """Where the ray start→end first meets the model's surface (what a markups click in the 3D view places)."""
    import vtk

    locator = vtk.vtkCellLocator()
    locator.SetDataSet(model_node.GetPolyData())
    locator.BuildLocator()
    t, hit, pcoords, sub_id = vtk.reference(0.0), [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], vtk.reference(0)
    assert locator.IntersectWithLine(list(start), list(end), 1e-6, t, hit, pcoords, sub_id)
    return np.array(hit)


def _ray_hit_on_volume(volume, start, end, threshold) -> np.ndarray:
    """The first point along start→end whose voxel is above ``threshold`` (a volume rendering's surface)."""
    ras_to_ijk = np.linalg.inv(ijk_to_ras_matrix(volume))
    array = slicer.util.arrayFromVolume(volume)
    for t in np.linspace(0.0, 1.0, 4000):
        p = start + t * (end - start)
        i, j, k = np.rint((ras_to_ijk @ np.array([*p, 1.0]))[:3]).astype(int)
        if 0 <= k < array.shape[0] and 0 <= j < array.shape[1] and 0 <= i < array.shape[2] and array[k, j, i] > threshold:
            return p
    raise AssertionError("the ray misses the structure")


@pytest.mark.parametrize("surface", ["model", "volume rendering"])
def test_a_point_placed_in_the_3d_view_on_a_surface_segments_the_structure_clicked(case, surface) -> None:
    """A 3D-view click is a control point anywhere in RAS (on a model or a rendered surface), on no slice plane."""
    import vtk

    scene, volume, centres, segmentation, a, _, logic = case
    direction = np.array([0.6, -0.5, 0.62])
    direction /= np.linalg.norm(direction)
    start, end = centres[1] + 80.0 * direction, centres[1] - 80.0 * direction  # the camera looks obliquely
    if surface == "model":
        source = vtk.vtkSphereSource()
        source.SetCenter(*centres[1])
        source.SetRadius(10.0)
        source.SetThetaResolution(48)
        source.SetPhiResolution(48)
        source.Update()
        model = scene.AddNewNodeByClass("vtkMRMLModelNode", "sphere surface")
        model.SetAndObservePolyData(source.GetOutput())
        click = _ray_hit_on_model(model, start, end)
    else:
        click = _ray_hit_on_volume(volume, start, end, threshold=0.5 * (BRIGHT + BACKGROUND))
    assert 9.0 <= np.linalg.norm(click - centres[1]) <= 10.5, "the point lies on the surface, off the centre"
    plus = add_points(scene, [click])
    result = logic.segment(volume, segmentation, a, plus)
    mask = segment_on_volume(segmentation, a, volume)
    clicked = sphere_truth(volume) & in_window(volume, click)
    assert result.changedVoxels > 0
    assert (mask & clicked).sum() >= 0.95 * clicked.sum() and not (mask & (sphere_truth(volume) & ~clicked)).any()
    ras = ras_grid(volume)
    assert np.linalg.norm(ras[mask] - click, axis=-1).min() <= 1.5, "the segment touches the clicked point"
    assert not (mask & ~in_window(volume, click)).any(), "the window was centred on the 3D click"


def test_a_rotated_roi_under_a_transform_segments_only_inside_its_world_box(case) -> None:
    import vtk

    scene, volume, centres, segmentation, a, _, logic = case
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    offset = np.array([5.0, -4.0, 3.0])
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        matrix.SetElement(r, 3, float(offset[r]))
    transform.SetMatrixTransformToParent(matrix)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetAndObserveTransformNodeID(transform.GetID())
    rotation = vtk.vtkMatrix4x4()
    r = rotation_matrix((0.2, 1.0, 0.4), 30.0)
    for i in range(3):
        for j in range(3):
            rotation.SetElement(i, j, float(r[i, j]))
    roi.SetAndObserveObjectToNodeMatrix(rotation)  # the box's axes are oblique to the volume's and to RAS
    roi.SetCenter(*(centres[1] - offset))  # in the ROI's own frame: its world centre is the far sphere
    roi.SetSize(20.0, 30.0, 24.0)
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    logic.segment(volume, segmentation, a, plus, minus, roiNode=roi)
    mask = segment_on_volume(segmentation, a, volume)
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    ras = ras_grid(volume)
    inside = np.all((ras >= np.array(bounds[0::2]) - 1e-6) & (ras <= np.array(bounds[1::2]) + 1e-6), axis=-1)
    far = sphere_truth(volume) & in_window(volume, centres[1])
    assert np.allclose((np.array(bounds[0::2]) + np.array(bounds[1::2])) / 2.0, centres[1], atol=1.0)
    assert (mask & far).sum() >= 0.95 * far.sum(), "the sphere inside the box is segmented"
    assert mask.any() and not (mask & ~inside).any(), "nothing outside the ROI's world box"
    assert not (mask & sphere_truth(volume) & in_window(volume, centres[0]) & ~in_window(volume, centres[1])).any()
