"""The Slicer module's logic on a real MRML scene (slicer-core): clicks land, undo is exact, nothing else moves.

The scene is set up as Slicer does at start-up: an application logic (it creates the selection
and interaction singletons), then the segmentations and markups module logics registered on the
scene. Volumes are oblique and anisotropic.

Placement uses ``testing.bright_spot_model()``: a real :class:`Sam3D` whose encoder passes the normalised
window through and whose decoder answers "bright voxels of the window" (normalised intensity
> 1), ignoring the prompts. The window is 32³ voxels of 1.5 mm (48 mm), smaller than the test
volumes, so "inside the window" and "outside" are both testable: a click on a bright sphere must
give exactly that sphere, and a second sphere 50 mm away must stay out. Segment voxels are read
back with Slicer's own ``ExportSegmentsToLabelmapNode``, independently of the code under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAMMed3D"))

slicer = pytest.importorskip("slicer", reason="slicer-core provides MRML outside Slicer (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from InteractiveSegmentationLogic import (  # noqa: E402
    EditableArea,
    InteractiveSegmentationLogic,
    OverwriteMode,
    WriteOptions,
    get_points_nodes,
    points_role,
)
from InteractiveSegmentationLogic import labelmaps  # noqa: E402
from InteractiveSegmentationLogic.testing import (  # noqa: E402
    BRIGHT,
    SMALL_CONFIG,
    add_sphere_volume,
    bright_spot_model,
    centroid_ras,
    dice,
    ijk_to_ras_matrix,
    in_window,
    rotation_matrix,
    segment_on_volume,
)
from SAMMed3DLib import build_sam3d  # noqa: E402
from SAMMed3DLib.card import ModelCard  # noqa: E402
from SAMMed3DLib.errors import ImageError, PromptError, SessionStateError  # noqa: E402


# -- scene helpers ----------------------------------------------------------------------------



def add_segmentation(scene, volume, names=("A",)):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    ids = [node.GetSegmentation().AddEmptySegment(n, n) for n in names]
    return node, ids


def add_points(scene, points_ras, name="P"):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for p in points_ras:
        node.AddControlPoint(float(p[0]), float(p[1]), float(p[2]))
    return node


def paint(segmentation, segment_id, volume, mask_zyx) -> None:
    """Set a segment's voxels on the volume grid through Slicer (as a Segment Editor effect would)."""
    from InteractiveSegmentationLogic.labelmaps import Lattice, write_segment_block

    shape = mask_zyx.shape
    lattice = Lattice(ijk_to_ras_matrix(volume), (0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1))
    write_segment_block(segmentation, segment_id, lattice, lattice.extent, mask_zyx)


def sphere_truth(volume) -> np.ndarray:
    return slicer.util.arrayFromVolume(volume) == BRIGHT


@pytest.fixture
def case(scene):
    """Two bright spheres 50+ mm apart; segments A and B; the logic with the bright-spot model."""
    volume, centres = add_sphere_volume(scene, spheres_ijk=((28.0, 40.0, 14.0), (85.0, 55.0, 22.0)))
    segmentation, (a, b) = add_segmentation(scene, volume, ("A", "B"))
    logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False)
    return scene, volume, centres, segmentation, a, b, logic


# -- placement ----------------------------------------------------------------------------------


def test_a_click_creates_the_segment_where_the_click_is_on_an_oblique_anisotropic_volume(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    assert np.linalg.norm(centres[0] - centres[1]) > 50.0
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    result = logic.segment(volume, segmentation, a, plus, minus)
    mask = segment_on_volume(segmentation, a, volume)
    truth = sphere_truth(volume)
    first_sphere = truth & in_window(volume, centres[0])
    assert result.newSession and result.changedVoxels == int(mask.sum()) > 0
    assert dice(mask, first_sphere) > 0.9 and (first_sphere & mask).sum() > 0.99 * first_sphere.sum()
    np.testing.assert_allclose(centroid_ras(mask, volume), centres[0], atol=0.6)
    assert not (mask & ~in_window(volume, centres[0])).any()  # nothing outside the window
    assert result.latencySeconds > 0 and result.changedExtent is not None


def test_written_mask_equals_the_session_mask(case) -> None:
    _, volume, centres, segmentation, a, _, logic = case
    plus = add_points(case[0], [centres[0] + np.array([1.0, -2.0, 1.5])])
    logic.segment(volume, segmentation, a, plus)
    assert np.array_equal(segment_on_volume(segmentation, a, volume), logic.session.mask_array)


def test_volume_under_a_linear_parent_transform(scene) -> None:
    volume, centres = add_sphere_volume(scene, spheres_ijk=((40.0, 40.0, 16.0),))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    m = np.eye(4)
    m[:3, :3] = rotation_matrix((1.0, 0.0, 0.3), 30.0)
    m[:3, 3] = (12.0, -7.0, 20.0)
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, m[r, c])
    transform.SetMatrixTransformToParent(vm)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation, (a,) = add_segmentation(scene, volume)
    world_centre = (m @ np.r_[centres[0], 1.0])[:3]
    plus = add_points(scene, [world_centre])
    logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False)
    logic.segment(volume, segmentation, a, plus)
    # The segmentation follows the volume's geometry in world space: compare on the volume grid.
    mask = segment_on_volume(segmentation, a, volume)
    assert dice(mask, sphere_truth(volume)) > 0.9


def test_points_in_a_transformed_markups_node_are_read_in_world_space(scene) -> None:
    volume, centres = add_sphere_volume(scene, spheres_ijk=((40.0, 40.0, 16.0),))
    segmentation, (a,) = add_segmentation(scene, volume)
    shift = np.array([30.0, -10.0, 5.0])
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    vm = vtk.vtkMatrix4x4()
    for r in range(3):
        vm.SetElement(r, 3, shift[r])
    transform.SetMatrixTransformToParent(vm)
    plus = add_points(scene, [centres[0] - shift])  # local coordinates; world = centre
    plus.SetAndObserveTransformNodeID(transform.GetID())
    logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False)
    logic.segment(volume, segmentation, a, plus)
    assert dice(segment_on_volume(segmentation, a, volume), sphere_truth(volume)) > 0.9


def test_segmentation_with_its_own_finer_geometry_receives_the_resampled_mask(scene) -> None:
    volume, centres = add_sphere_volume(scene, spheres_ijk=((40.0, 40.0, 16.0),))
    segmentation, (a,) = add_segmentation(scene, volume)
    # Reference geometry: axis-aligned 0.6 mm grid, unrelated to the oblique volume grid.
    fine = slicer.vtkOrientedImageData()
    fine.SetExtent(0, 99, 0, 99, 0, 99)
    fine.SetSpacing(0.6, 0.6, 0.6)
    fine.SetOrigin(*(centres[0] - 30.0 + 0.17))
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(fine)
    segmentation.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry
    )
    plus = add_points(scene, [centres[0]])
    logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False)
    logic.segment(volume, segmentation, a, plus)
    session_mask = logic.session.mask_array
    # Expected: nearest volume voxel of each fine voxel centre (independent numpy resampling).
    zz, yy, xx = np.meshgrid(*(np.arange(100),) * 3, indexing="ij")
    ras = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1) * 0.6 + (centres[0] - 30.0 + 0.17)
    ijk = np.c_[ras, np.ones(len(ras))] @ np.linalg.inv(ijk_to_ras_matrix(volume)).T
    idx = np.round(ijk[:, :3]).astype(int)
    shape = session_mask.shape
    inside = np.all((idx >= 0) & (idx < np.array(shape[::-1])), axis=1)
    expected = np.zeros(len(ras), np.uint8)
    expected[inside] = session_mask[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
    from InteractiveSegmentationLogic.labelmaps import read_segment

    fine_matrix = np.diag([0.6, 0.6, 0.6, 1.0])
    fine_matrix[:3, 3] = centres[0] - 30.0 + 0.17
    got = read_segment(segmentation, a, fine_matrix, (0, 99, 0, 99, 0, 99)).ravel()
    assert expected.sum() > 1000
    assert np.mean(got != expected) < 1e-3


def test_segmentation_geometry_disjoint_from_the_volume_is_a_clear_error(scene) -> None:
    """It used to run the model and write nothing, with only a log line."""
    volume, centres = add_sphere_volume(scene, spheres_ijk=((40.0, 40.0, 16.0),))
    segmentation, (a,) = add_segmentation(scene, volume)
    elsewhere = slicer.vtkOrientedImageData()  # a 0.7 mm grid 2 m away from the volume
    elsewhere.SetExtent(0, 49, 0, 49, 0, 49)
    elsewhere.SetSpacing(0.7, 0.7, 0.7)
    elsewhere.SetOrigin(*(centres[0] + 2000.0))
    segmentation.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(elsewhere),
    )
    plus = add_points(scene, [centres[0]])
    logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False)
    with pytest.raises(ImageError) as caught:
        logic.segment(volume, segmentation, a, plus)
    message = str(caught.value)
    assert "does not overlap the volume" in message and "Specify geometry" in message
    assert logic.session is None  # refused before the model ran
    assert not segment_on_volume(segmentation, a, volume).any()
    assert not logic.canUndo


# -- undo, untouched voxels, masking -------------------------------------------------------------


def test_undo_restores_the_previous_voxels_and_points_exactly(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    existing = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    existing[10:20, 35:45, 20:40] = 1  # a hand-painted part overlapping the window
    paint(segmentation, a, volume, existing)
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    after_first = segment_on_volume(segmentation, a, volume)
    minus.AddControlPoint(*(centres[0] + np.array([4.0, 0.0, 0.0])))
    logic.segment(volume, segmentation, a, plus, minus)
    assert logic.undo() == a
    assert np.array_equal(segment_on_volume(segmentation, a, volume), after_first)
    assert minus.GetNumberOfControlPoints() == 0 and plus.GetNumberOfControlPoints() == 1
    assert logic.undo() == a
    assert np.array_equal(segment_on_volume(segmentation, a, volume), existing)
    assert plus.GetNumberOfControlPoints() == 0
    assert logic.undo() is None
    assert logic.redo() == a
    assert np.array_equal(segment_on_volume(segmentation, a, volume), after_first)
    assert plus.GetNumberOfControlPoints() == 1


def test_undo_keeps_the_session_in_step_so_the_next_click_is_decoder_only(case) -> None:
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    session = logic.session
    plus.AddControlPoint(*(centres[0] + 2.0))
    logic.segment(volume, segmentation, a, plus, minus)
    logic.undo()
    assert logic.session is session and len(session.points_lps) == 1
    plus.AddControlPoint(*(centres[0] - 2.0))
    result = logic.segment(volume, segmentation, a, plus, minus)
    assert not result.newSession and logic.model.image_encoder.calls == 1


def test_one_history_moves_segment_points_and_session_together(case) -> None:
    """The logic owns the only history: the session keeps none, and every undo/redo leaves the
    segment, the points and the session's mask agreeing, with the cached window still in use."""
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    minus.AddControlPoint(*(centres[0] + np.array([6.0, 0.0, 0.0])))
    logic.segment(volume, segmentation, a, plus, minus)
    session = logic.session
    assert session.undo() is None, "the session must not keep a second history"
    for step in (logic.undo, logic.redo, logic.undo, logic.undo, logic.redo):
        step()
        assert logic.session is session
        assert np.array_equal(segment_on_volume(segmentation, a, volume), session.mask_array)
        assert len(session.points_lps) == plus.GetNumberOfControlPoints() + minus.GetNumberOfControlPoints()
    plus.AddControlPoint(*(centres[0] - 2.0))
    result = logic.segment(volume, segmentation, a, plus, minus)
    assert not result.newSession and logic.model.image_encoder.calls == 1
    assert np.array_equal(segment_on_volume(segmentation, a, volume), session.mask_array)


def test_undo_while_placing_a_point_adds_no_phantom_point(case) -> None:
    """The place widget's preview point (following the mouse) is not a click: undo/redo ignore it."""
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    plus.AddControlPoint(*(centres[0] + 2.0))
    # "place multiple" mode: right after the click, the widget adds the next point as a preview
    preview = plus.AddControlPoint(*(centres[0] - 3.0))
    plus.SetNthControlPointPosition(preview, *(centres[0] - 3.0), plus.PositionPreview)
    logic.segment(volume, segmentation, a, plus, minus)
    for step, defined in ((logic.undo, 1), (logic.redo, 2), (logic.undo, 1)):
        step()
        statuses = [plus.GetNthControlPointPositionStatus(n) for n in range(plus.GetNumberOfControlPoints())]
        assert statuses == [plus.PositionDefined] * defined, statuses


def _outside_undo(logic, forward: bool = False) -> None:
    """What the Segment Editor's Ctrl+Z (Ctrl+Y) does to the last update: the segmentation's voxels
    go back to the undo state saved before the write. The points and the module are not told."""
    record = logic._history.upcoming() if forward else logic._history.last()
    for change in record.changes:
        labelmaps.write_segment_block(record.segmentationNode, change.segmentId, record.lattice, change.extent,
                                      change.after if forward else change.before)


def test_an_undo_in_the_segment_editor_moves_the_one_history_and_the_next_click_continues_from_there(case) -> None:
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    first = segment_on_volume(segmentation, a, volume).copy()
    plus.AddControlPoint(*centres[1])  # the other sphere: a second window
    logic.segment(volume, segmentation, a, plus, minus)
    assert not np.array_equal(segment_on_volume(segmentation, a, volume), first)
    _outside_undo(logic)  # Ctrl+Z in the Segment Editor: the second update's voxels go back
    near = centres[0] - 1.5
    plus.AddControlPoint(*near)  # the user clicks on before the module hears of it
    result = logic.segment(volume, segmentation, a, plus, minus)
    assert not result.newSession and logic.model.image_encoder.calls == 2, "both windows stay cached"
    positions = [tuple(plus.GetNthControlPointPosition(n)) for n in range(plus.GetNumberOfControlPoints())]
    np.testing.assert_allclose(positions, [centres[0], near]), "the undone click is gone, the new one stays"
    np.testing.assert_array_equal(segment_on_volume(segmentation, a, volume), first)
    assert np.array_equal(segment_on_volume(segmentation, a, volume), logic.session.mask_array)
    np.testing.assert_array_equal(logic.session.labels, [1, 1])
    # the module's undo and the Segment Editor's move the same history
    logic.undo()  # the last click
    np.testing.assert_array_equal(segment_on_volume(segmentation, a, volume), first)
    _outside_undo(logic)  # and the first update, undone in the Segment Editor
    assert logic.undo() is None and not segment_on_volume(segmentation, a, volume).any()
    assert plus.GetNumberOfControlPoints() == 0
    _outside_undo(logic, forward=True)  # Ctrl+Y there
    assert logic.followOutsideUndo() == 1 and plus.GetNumberOfControlPoints() == 1
    np.testing.assert_array_equal(segment_on_volume(segmentation, a, volume), first)


def test_a_manual_edit_is_not_taken_for_an_undo(case) -> None:
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    record = logic._history.last()
    change = record.changes[0]
    painted = change.after.copy()
    painted[painted.shape[0] // 2] = 0  # the user erases one slice of the update with another tool
    labelmaps.write_segment_block(segmentation, a, record.lattice, change.extent, painted)
    assert logic.followOutsideUndo() == 0 and plus.GetNumberOfControlPoints() == 1


def test_other_segments_and_voxels_outside_the_window_are_untouched(case) -> None:
    scene, volume, centres, segmentation, a, b, logic = case
    shape = slicer.util.arrayFromVolume(volume).shape
    far = np.zeros(shape, np.uint8)
    far[:, :, 95:] = 1  # part of A far from the click
    paint(segmentation, a, volume, far)
    other = sphere_truth(volume) & in_window(volume, centres[0])  # B covers the clicked sphere
    other[5:12, 30:50, 15:45] = 1
    paint(segmentation, b, volume, other)
    plus = add_points(scene, [centres[0]])
    logic.segment(volume, segmentation, a, plus)
    after = segment_on_volume(segmentation, a, volume)
    window = in_window(volume, centres[0])
    assert np.array_equal(segment_on_volume(segmentation, b, volume), other)  # default: overlap allowed
    assert np.array_equal(after[~window], far[~window])
    assert (after & other).sum() > 0


@pytest.mark.parametrize(
    ("options", "expected_a", "expected_b"),
    [
        (WriteOptions(), "model", "kept"),
        (WriteOptions(overwrite="all"), "model", "loses_a"),
        (WriteOptions(overwrite=OverwriteMode.VISIBLE), "model", "loses_a"),
        (WriteOptions(editableArea=EditableArea.OUTSIDE_ALL_SEGMENTS), "model_outside_b", "kept"),
        (WriteOptions(editableArea="outside_visible_segments"), "model_outside_b", "kept"),
        (WriteOptions(editableArea="inside_all_segments"), "model_inside_b", "kept"),
        (WriteOptions(editableArea="inside_segment", maskSegmentId="B", overwrite="all"), "model_inside_b", "loses_a"),
        (WriteOptions(intensityRange=(500.0, 2000.0)), "model_inside_b", "kept"),
        (WriteOptions(intensityRange=(2000.0, 3000.0)), "empty", "kept"),
    ],
)
def test_write_options_decide_which_segments_change(case, options, expected_a, expected_b) -> None:
    scene, volume, centres, segmentation, a, b, logic = case
    sphere = sphere_truth(volume) & in_window(volume, centres[0])  # B = the bright sphere
    paint(segmentation, b, volume, sphere)
    plus = add_points(scene, [centres[0]])
    logic.segment(volume, segmentation, a, plus, options=options)
    model = logic.session.mask_array > 0
    assert model.sum() > sphere.sum() > 1000  # the model's mask: the sphere plus a partial-volume shell
    got_a = segment_on_volume(segmentation, a, volume)
    got_b = segment_on_volume(segmentation, b, volume)
    want_a = {
        "model": model,
        "model_outside_b": model & ~sphere,
        "model_inside_b": model & sphere,
        "empty": np.zeros_like(model),
    }[expected_a]
    assert np.array_equal(got_a, want_a)
    assert np.array_equal(got_b, sphere if expected_b == "kept" else sphere & ~got_a)
    logic.undo()
    assert np.array_equal(segment_on_volume(segmentation, b, volume), sphere)
    assert segment_on_volume(segmentation, a, volume).sum() == 0


def test_overwrite_visible_spares_hidden_segments(case) -> None:
    scene, volume, centres, segmentation, a, b, logic = case
    sphere = sphere_truth(volume) & in_window(volume, centres[0])
    paint(segmentation, b, volume, sphere)
    segmentation.GetDisplayNode().SetSegmentVisibility(b, False)
    logic.segment(volume, segmentation, a, add_points(scene, [centres[0]]), options=WriteOptions(overwrite="visible"))
    assert np.array_equal(segment_on_volume(segmentation, b, volume), sphere)


def test_write_options_from_the_segment_editor_node(scene) -> None:
    editor = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideVisibleSegments)
    editor.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteVisibleSegments)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(-100.0, 250.0)
    options = WriteOptions.from_segment_editor_node(editor)
    assert options == WriteOptions(
        editableArea=EditableArea.OUTSIDE_VISIBLE_SEGMENTS, overwrite=OverwriteMode.VISIBLE, intensityRange=(-100.0, 250.0)
    )


# -- sessions ---------------------------------------------------------------------------------


def test_switching_segment_or_volume_starts_a_fresh_session(case) -> None:
    scene, volume, centres, segmentation, a, b, logic = case
    plus = add_points(scene, [centres[0]])
    first = logic.segment(volume, segmentation, a, plus)
    session_a = logic.session
    plus.AddControlPoint(*(centres[0] + 1.0))
    again = logic.segment(volume, segmentation, a, plus)
    assert first.newSession and not again.newSession and logic.session is session_a
    assert logic.segment(volume, segmentation, b, plus).newSession and logic.session is not session_a
    other_volume, _ = add_sphere_volume(scene, spheres_ijk=((28.0, 40.0, 14.0),), name="MR")
    assert logic.segment(other_volume, segmentation, b, plus).newSession
    assert logic.segment(other_volume, segmentation, b, plus).newSession is False
    array = slicer.util.arrayFromVolume(other_volume)
    array[0, 0, 0] = 7
    slicer.util.arrayFromVolumeModified(other_volume)  # edited voxels: the embeddings are stale
    assert logic.segment(other_volume, segmentation, b, plus).newSession


def test_a_fresh_session_starts_from_the_segment_voxels(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    plus = add_points(scene, [centres[1]])
    logic.segment(volume, segmentation, a, plus)
    before = segment_on_volume(segmentation, a, volume)
    logic.endSession()
    plus2 = add_points(scene, [centres[0]])
    logic.segment(volume, segmentation, a, plus2)
    after = segment_on_volume(segmentation, a, volume)
    assert np.array_equal(after & before, before)  # the earlier sphere is kept
    assert np.array_equal(logic.session.mask_array, after)


@pytest.mark.parametrize("removed", ["segmentation", "volume", "points", "segment"])
def test_a_node_deleted_mid_session_gives_a_clear_error(case, removed) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    plus = add_points(scene, [centres[0]])
    logic.segment(volume, segmentation, a, plus)
    plus.AddControlPoint(*(centres[0] + 3.0))
    request = logic.prepare(volume, segmentation, a, plus)
    update = logic.compute(request)
    before = segment_on_volume(segmentation, a, volume) if removed != "segmentation" else None
    if removed == "segmentation":
        scene.RemoveNode(segmentation)
    elif removed == "volume":
        scene.RemoveNode(volume)
    elif removed == "points":
        scene.RemoveNode(plus)
    else:
        segmentation.GetSegmentation().RemoveSegment(a)
    if removed == "points":
        logic.apply(request, update)  # points are not needed to write: the update lands
        with pytest.raises(SessionStateError, match="positive points .* was removed from the scene"):
            logic.segment(volume, segmentation, a, plus)
        return
    with pytest.raises(SessionStateError, match="removed from the scene|no longer exists"):
        logic.apply(request, update)
    assert logic.session is None
    if before is not None and removed != "segment":
        assert np.array_equal(segment_on_volume(segmentation, a, volume), before)
    with pytest.raises(SessionStateError, match="removed from the scene|no longer exists"):
        logic.segment(volume, segmentation, a, plus)


def test_undo_after_the_segmentation_was_deleted_gives_a_clear_error(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    logic.segment(volume, segmentation, a, add_points(scene, [centres[0]]))
    scene.RemoveNode(segmentation)
    with pytest.raises(SessionStateError, match="removed from the scene; it cannot be undone"):
        logic.undo()
    assert not logic.canUndo


@pytest.mark.parametrize(
    ("points", "error", "match"),
    [
        ("none", PromptError, "no positive"),
        ("only_negative", PromptError, "no positive"),
        ("outside", PromptError, "outside the image"),
    ],
)
def test_bad_points_give_clear_errors_and_leave_the_segment(case, points, error, match) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    if points == "only_negative":
        minus.AddControlPoint(*centres[0])
    elif points == "outside":
        plus.AddControlPoint(*(centres[0] + np.array([500.0, 0.0, 0.0])))
    with pytest.raises(error, match=match):
        logic.segment(volume, segmentation, a, plus, minus)
    assert segment_on_volume(segmentation, a, volume).sum() == 0


def test_non_linear_volume_transform_is_refused_with_advice(scene) -> None:
    volume, centres = add_sphere_volume(scene)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Warp")
    displacement = slicer.vtkOrientedGridTransform()
    field = vtk.vtkImageData()
    field.SetDimensions(4, 4, 4)
    field.SetSpacing(50.0, 50.0, 50.0)
    field.SetOrigin(-100.0, -100.0, -100.0)
    field.AllocateScalars(vtk.VTK_DOUBLE, 3)
    displacement.SetDisplacementGridData(field)
    grid.SetAndObserveTransformToParent(displacement)
    volume.SetAndObserveTransformNodeID(grid.GetID())
    segmentation, (a,) = add_segmentation(scene, volume)
    logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu")
    with pytest.raises(ImageError, match="non-linear transform .* Harden"):
        logic.segment(volume, segmentation, a, add_points(scene, [centres[0]]))


# -- buttons -----------------------------------------------------------------------------------


def test_clear_points_next_segment_and_reset(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    kept = segment_on_volume(segmentation, a, volume)
    logic.clearPoints(segmentation, a)
    assert plus.GetNumberOfControlPoints() == 0 and logic.session is None
    assert np.array_equal(segment_on_volume(segmentation, a, volume), kept)
    logic.undo()
    assert plus.GetNumberOfControlPoints() == 1

    new_id = logic.addNextSegment(segmentation, "C")
    assert segmentation.GetSegmentation().GetSegment(new_id).GetName() == "C"
    new_plus, new_minus = get_points_nodes(segmentation, new_id)
    assert new_plus is not None and new_minus is not None and new_plus is not plus
    new_plus.AddControlPoint(*centres[1])
    logic.segment(volume, segmentation, new_id, new_plus, new_minus)
    assert np.array_equal(segment_on_volume(segmentation, a, volume), kept)
    assert segment_on_volume(segmentation, new_id, volume).sum() > 0
    new_plus.AddControlPoint(*(centres[1] + 1.0))
    logic.segment(volume, segmentation, new_id, new_plus, new_minus)
    assert logic.resetSegment(segmentation, new_id) == 2
    assert segment_on_volume(segmentation, new_id, volume).sum() == 0
    assert new_plus.GetNumberOfControlPoints() == 0


# -- saving and resuming ------------------------------------------------------------------------


def _save_scene(scene, folder: Path) -> Path:
    for node in list(scene.GetNodesByClass("vtkMRMLStorableNode")):
        if node.GetHideFromEditors() and not node.IsA("vtkMRMLMarkupsNode"):
            continue
        if not node.GetStorageNode():
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        if storage is None:
            continue
        extension = storage.GetDefaultWriteFileExtension()
        storage.SetFileName(str(folder / f"{node.GetID()}.{extension}"))
        assert storage.WriteData(node), node.GetID()
    path = folder / "scene.mrml"
    scene.SetURL(str(path))
    scene.SetRootDirectory(str(folder))
    assert scene.Commit()
    return path


def test_saving_and_reloading_the_scene_keeps_segment_and_points(case, tmp_path, scene) -> None:
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    minus.AddControlPoint(*(centres[0] + np.array([10.0, 0.0, 0.0])))
    logic.segment(volume, segmentation, a, plus, minus)
    mask = segment_on_volume(segmentation, a, volume)
    path = _save_scene(scene, tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} >= {".mrml", ".nrrd", ".json"}
    assert any(p.name.endswith(".seg.nrrd") for p in tmp_path.iterdir())
    assert any(p.name.endswith(".mrk.json") for p in tmp_path.iterdir())

    reloaded = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(reloaded)
    keep = [app]
    for cls in (slicer.vtkSlicerSegmentationsModuleLogic, slicer.vtkSlicerMarkupsLogic):
        module_logic = cls()
        module_logic.SetMRMLApplicationLogic(app)
        module_logic.SetMRMLScene(reloaded)
        keep.append(module_logic)
    reloaded.SetURL(str(path))
    assert reloaded.Connect()
    segmentation2 = reloaded.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    volume2 = reloaded.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert segmentation2.GetSegmentation().GetSegment(a) is not None
    assert np.array_equal(segment_on_volume(segmentation2, a, volume2), mask)
    plus2, minus2 = get_points_nodes(segmentation2, a)
    assert plus2 is not None and minus2 is not None
    assert segmentation2.GetNodeReferenceID(points_role(a, True)) == plus2.GetID()
    np.testing.assert_allclose(plus2.GetNthControlPointPosition(0), centres[0], atol=1e-6)
    np.testing.assert_allclose(minus2.GetNthControlPointPosition(0), centres[0] + np.array([10.0, 0.0, 0.0]), atol=1e-6)
    # Resume: a new logic continues on the reloaded nodes, starting from the saved voxels.
    resumed = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False)
    plus2.AddControlPoint(*centres[1])
    result = resumed.segment(volume2, segmentation2, a, plus2, minus2)
    assert result.newSession
    after = segment_on_volume(segmentation2, a, volume2)
    # The saved voxels are the current answer: the points replay as corrections of it, so only
    # voxels next to the − point (on the sphere's rim, where the model says background) may go.
    from InteractiveSegmentationLogic.testing import ijk_to_ras_matrix

    kji = np.argwhere(mask & ~after)
    ras = (np.c_[kji[:, ::-1], np.ones(len(kji))] @ ijk_to_ras_matrix(volume2).T)[:, :3]
    assert np.all(np.linalg.norm(ras - (centres[0] + np.array([10.0, 0.0, 0.0])), axis=1) <= 5.0)
    assert len(kji) < 0.02 * mask.sum() and after.sum() > mask.sum()


def test_a_checkpoint_path_loads_lazily_and_runs_the_real_network(scene, tmp_path) -> None:
    from SAMMed3DLib.checkpoint import save_model

    model = build_sam3d(SMALL_CONFIG)
    model.card = ModelCard(name="small-random", config=model.config)
    path = save_model(model, tmp_path / "small.pth")
    volume, centres = add_sphere_volume(scene)
    segmentation, (a,) = add_segmentation(scene, volume)
    logic = InteractiveSegmentationLogic(model=str(path), device="cpu", autoExtend=False)
    assert not logic.modelLoaded and not logic.modelNeedsDownload()
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    first = logic.segment(volume, segmentation, a, plus, minus)
    assert logic.modelLoaded and first.newSession
    minus.AddControlPoint(*(centres[0] + 3.0))
    second = logic.segment(volume, segmentation, a, plus, minus)
    assert not second.newSession  # loading the model does not restart the session
    assert np.array_equal(segment_on_volume(segmentation, a, volume), logic.session.mask_array)


# -- the main thread changes settings while the worker runs -------------------------------------


def test_changing_the_model_between_prepare_and_compute_neither_crashes_nor_mixes_models(case) -> None:
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    plus.AddControlPoint(*(centres[0] + 2.0))
    request = logic.prepare(volume, segmentation, a, plus, minus)  # continues the session
    other = bright_spot_model()
    logic.setModel(other, "cpu")  # the user picks another model while the worker runs
    update = logic.compute(request)
    result = logic.apply(request, update)
    assert not result.newSession and logic.session is None, "the old session is not continued with the new model"
    plus.AddControlPoint(*(centres[0] - 2.0))
    result = logic.segment(volume, segmentation, a, plus, minus)
    assert result.newSession and logic.session.model is other
    np.testing.assert_array_equal(segment_on_volume(segmentation, a, volume), logic.session.mask_array)


def test_a_first_update_prepared_before_a_model_change_does_not_adopt_its_session(case) -> None:
    _, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    request = logic.prepare(volume, segmentation, a, plus, minus)
    logic.setModel(bright_spot_model(), "cpu")
    logic.apply(request, logic.compute(request))
    assert segment_on_volume(segmentation, a, volume).any() and logic.session is None


def test_changing_the_model_during_a_download_does_not_wait_for_it(monkeypatch) -> None:
    """The choice lock is never held while a model downloads: the main thread must not freeze."""
    import threading

    from InteractiveSegmentationLogic.model_holder import ModelHolder
    from SAMMed3DLib import registry

    downloading, release = threading.Event(), threading.Event()

    def slow_ensure_model(name, download=True, progress=None, cancel=None):  # noqa: ANN001
        downloading.set()
        release.wait(20)
        return registry.default_registry().model_path(name)

    monkeypatch.setattr(registry, "ensure_model", slow_ensure_model)
    holder = ModelHolder("default", "cpu")
    loaded: list = []
    worker = threading.Thread(target=lambda: loaded.append(holder.load()))
    worker.start()
    assert downloading.wait(20)
    chooser = threading.Thread(target=lambda: holder.choose(bright_spot_model(), "cpu"))
    chooser.start()
    chooser.join(5)
    assert not chooser.is_alive(), "choosing another model waited for the download"
    release.set()
    worker.join(30)
    assert loaded and loaded[0] is not holder.model, "the model loaded for the old choice is not kept"
    assert holder.model is not None and holder.generation == 1


def test_closing_the_scene_leaves_nothing_to_undo(case) -> None:
    scene, volume, centres, segmentation, a, _, logic = case
    plus, minus = logic.pointsNodesForSegment(segmentation, a)
    plus.AddControlPoint(*centres[0])
    logic.segment(volume, segmentation, a, plus, minus)
    assert logic.canUndo
    logic.closeScene()
    scene.Clear()
    assert not logic.canUndo and not logic.canRedo and logic.undo() is None and logic.session is None


def test_the_logic_hands_its_mask_rules_to_the_session(case) -> None:
    scene, volume, centres, segmentation, a, _, _ = case
    for refine, signed in ((True, True), (False, False)):
        logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False, refine=refine, signedClicks=signed)
        plus, minus = logic.pointsNodesForSegment(segmentation, a)
        plus.RemoveAllControlPoints()
        plus.AddControlPoint(*centres[0])
        logic.segment(volume, segmentation, a, plus, minus)
        assert (logic._session.refinement is not None, logic._session.signed_clicks) == (refine, signed)
        assert segment_on_volume(segmentation, a, volume).any()
