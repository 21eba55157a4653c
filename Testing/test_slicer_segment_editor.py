"""The embedded Segment Editor on real MRML (slicer-core): its node, its masking, its undo states.

The module's panel embeds a ``qMRMLSegmentEditorWidget``; the Qt widget itself cannot run here,
but everything the module does with it goes through MRML or through the class the widget
delegates its undo to since Slicer 5.10, ``vtkSlicerSegmentEditorLogic``, which slicer-core has.
So these tests use the real editor node and the real undo states: the module's own
``vtkMRMLSegmentEditorNode`` (singleton tag "SAMMed3D"), the write options taken from it, the
module's Undo/Redo going through the editor's states, and the module's clicks following an undo
made in the editor. The scene and the bright-spot model are those of ``test_slicer_logic.py``.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from test_slicer_logic import add_segmentation, paint, slicer, sphere_truth  # noqa: F401  (re-used helpers)

from InteractiveSegmentationLogic import InteractiveSegmentationLogic  # noqa: E402
from InteractiveSegmentationLogic.testing import add_sphere_volume, bright_spot_model, in_window, segment_on_volume  # noqa: E402
from SAMMed3DModule import segment_editor  # noqa: E402
from SAMMed3DModule.choices import DeviceChoice, ModelChoice  # noqa: E402
from SAMMed3DModule.module_logic import ParameterNodeLogic  # noqa: E402
from SAMMed3DModule.segment_editor import UndoStates, initializeEditorNode, moduleEditorNode, syncParameterNode  # noqa: E402


def _parameters(**fields):
    """A stand-in for ``SAMMed3DParameterNode`` (the wrapper needs the Slicer application)."""
    defaults = {"inputVolume": None, "segmentation": None, "segmentId": "", "model": ModelChoice.DEFAULT, "modelPath": None,
                "device": DeviceChoice.CPU, "autoRun": True, "autoExtend": False, "boxRoi": None, "lockOtherSegments": False, "snapToEdges": True, "signedClicks": True}
    return types.SimpleNamespace(**{**defaults, **fields})


class WidgetLike:
    """The embedded widget's undo API (``saveStateForUndo``/``undo``/``redo``/``segmentationNode``) over
    the ``vtkSlicerSegmentEditorLogic`` it delegates to: it says nothing about whether it had a state."""

    def __init__(self, logic) -> None:
        self._logic = logic

    def segmentationNode(self):
        return self._logic.GetSegmentationNode()

    def saveStateForUndo(self) -> None:
        self._logic.SaveStateForUndo()

    def undo(self) -> None:
        self._logic.Undo()

    def redo(self) -> None:
        self._logic.Redo()


@pytest.fixture
def editor_case(scene, monkeypatch):
    """Spheres volume, segments A and B, the module's editor node on a real vtkSlicerSegmentEditorLogic."""
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)  # no Segment Editor module
    volume, centres = add_sphere_volume(scene, spheres_ijk=((28.0, 40.0, 14.0), (85.0, 55.0, 22.0)))
    segmentation, (a, b) = add_segmentation(scene, volume, ("A", "B"))
    node = moduleEditorNode(scene)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(node)
    editor.SetMaximumNumberOfUndoStates(segment_editor.UNDO_STATES)
    node.SetAndObserveSegmentationNode(segmentation)
    node.SetAndObserveSourceVolumeNode(volume)
    node.SetSelectedSegmentID(a)
    parameters = _parameters()
    assert syncParameterNode(parameters, node)
    logic = ParameterNodeLogic(InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False))
    logic.useSegmentEditor(node, UndoStates(editor))
    plus, minus = logic.pointsNodes(segmentation, a)
    return types.SimpleNamespace(scene=scene, volume=volume, centres=centres, segmentation=segmentation, a=a, b=b,
                                 node=node, editor=editor, parameters=parameters, logic=logic, plus=plus, minus=minus)


def _update(case):
    request = case.logic.prepare(case.parameters, case.plus, case.minus)
    return case.logic.apply(request, case.logic.compute(request, lambda *a: None, __import__("threading").Event(), False))


# -- the editor node and the parameter node ---------------------------------------------------------


def test_the_module_has_its_own_editor_node_apart_from_the_segment_editor_modules(scene) -> None:
    core = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    core.SetSingletonTag("SegmentEditor")
    ours = moduleEditorNode(scene)
    assert ours is not core and ours.GetSingletonTag() == segment_editor.EDITOR_NODE_TAG
    assert moduleEditorNode(scene) is ours, "one node per scene: a second call finds it"
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode") == 2


def test_the_parameter_node_follows_the_editors_segmentation_volume_and_segment(scene) -> None:
    volume, _ = add_sphere_volume(scene)
    other, _ = add_sphere_volume(scene, name="MR")
    segmentation, (a, b) = add_segmentation(scene, volume, ("A", "B"))
    node = moduleEditorNode(scene)
    parameters = _parameters()
    initializeEditorNode(node, parameters, scene)  # a scene with a volume and a segmentation: both are picked
    assert node.GetSourceVolumeNode() is volume and node.GetSegmentationNode() is segmentation
    assert syncParameterNode(parameters, node) and parameters.inputVolume is volume and parameters.segmentation is segmentation
    node.SetSelectedSegmentID(b)
    node.SetAndObserveSourceVolumeNode(other)
    assert syncParameterNode(parameters, node)
    assert (parameters.segmentId, parameters.inputVolume) == (b, other)
    assert not syncParameterNode(parameters, node), "nothing changed: the parameter node is not touched"
    initializeEditorNode(node, _parameters(inputVolume=volume), scene)
    assert node.GetSourceVolumeNode() is other, "what the user chose in the editor is kept"


def test_an_empty_editor_takes_the_reloaded_parameter_node_or_creates_a_segmentation(scene) -> None:
    volume, _ = add_sphere_volume(scene)
    saved, (a, b) = add_segmentation(scene, volume, ("A", "B"))
    first = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")  # not the one the saved parameters name
    node = moduleEditorNode(scene)
    initializeEditorNode(node, _parameters(inputVolume=volume, segmentation=saved, segmentId=b), scene)
    assert node.GetSegmentationNode() is saved and node.GetSelectedSegmentID() == b and first is not saved
    scene.Clear(1)  # a new, empty scene
    bare = scene
    fresh = moduleEditorNode(bare)
    initializeEditorNode(fresh, _parameters(), bare)
    assert fresh.GetSegmentationNode() is None, "no volume: nothing is created"
    lone = bare.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    initializeEditorNode(fresh, _parameters(), bare)
    assert fresh.GetSourceVolumeNode() is lone and fresh.GetSegmentationNode() is not None


# -- write options come from our editor node ----------------------------------------------------------


def test_write_options_are_the_masking_of_the_modules_editor_node_not_the_segment_editor_modules(editor_case) -> None:
    case = editor_case
    core = case.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    core.SetSingletonTag("SegmentEditor")
    core.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    sphere = sphere_truth(case.volume) & in_window(case.volume, case.centres[0])
    paint(case.segmentation, case.b, case.volume, sphere.astype(np.uint8))  # B holds the sphere A will get
    case.node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    assert case.logic.writeOptions(case.parameters).overwrite.value == "all"
    case.plus.AddControlPoint(*case.centres[0])
    _update(case)
    got_a, got_b = (segment_on_volume(case.segmentation, s, case.volume) for s in (case.a, case.b))
    assert got_a[sphere].mean() >= 0.95
    assert not (got_a & got_b).any() and got_b.sum() < 0.05 * sphere.sum(), "our node says: overwrite all"
    case.logic.undo()
    case.node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    case.node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    options = case.logic.writeOptions(case.parameters)
    assert (options.overwrite.value, options.editableArea.value) == ("none", "outside_all_segments")
    case.plus.AddControlPoint(*(case.centres[0] + 1.0))
    _update(case)
    assert not segment_on_volume(case.segmentation, case.a, case.volume)[sphere].any(), "editable only outside B"
    np.testing.assert_array_equal(segment_on_volume(case.segmentation, case.b, case.volume), sphere)


def test_lock_other_segments_adds_to_the_editors_masking(editor_case) -> None:
    case = editor_case
    case.parameters.lockOtherSegments = True
    options = case.logic.writeOptions(case.parameters)
    assert options.lockedSegmentIds == (case.b,) and options.overwrite.value == "all"


# -- undo goes through the editor's states ------------------------------------------------------------


@pytest.mark.parametrize("api", ["logic", "widget"])
def test_the_modules_undo_and_redo_go_through_the_editors_undo_states(editor_case, api) -> None:
    case = editor_case
    if api == "widget":
        case.logic.useSegmentEditor(case.node, UndoStates(WidgetLike(case.editor)))
    assert not case.editor.CanUndo()
    case.plus.AddControlPoint(*case.centres[0])
    result = _update(case)
    assert result.changedVoxels > 0 and case.editor.CanUndo(), "the update saved an undo state in our editor"
    written = segment_on_volume(case.segmentation, case.a, case.volume).copy()
    assert case.logic.undo() == case.a
    assert not segment_on_volume(case.segmentation, case.a, case.volume).any() and case.editor.CanRedo()
    assert case.plus.GetNumberOfControlPoints() == 0, "the click went with the voxels"
    assert case.logic.redo() == case.a and case.plus.GetNumberOfControlPoints() == 1
    np.testing.assert_array_equal(segment_on_volume(case.segmentation, case.a, case.volume), written)
    assert case.logic.canUndo and not case.editor.CanRedo()


def test_an_edit_of_the_editor_is_undone_first_and_the_modules_update_next(editor_case) -> None:
    case = editor_case
    case.plus.AddControlPoint(*case.centres[0])
    _update(case)
    after_update = segment_on_volume(case.segmentation, case.a, case.volume).copy()
    stroke = np.zeros_like(after_update)
    stroke[2:5, 2:5, 2:5] = 1  # a Paint stroke of the user, saved for undo as every effect does
    case.editor.SaveStateForUndo()
    paint(case.segmentation, case.b, case.volume, stroke)
    assert case.logic.undo() == "", "Z undoes the stroke: an edit of the editor's own"
    assert not segment_on_volume(case.segmentation, case.b, case.volume).any()
    np.testing.assert_array_equal(segment_on_volume(case.segmentation, case.a, case.volume), after_update)
    assert case.plus.GetNumberOfControlPoints() == 1 and case.logic.canUndo
    assert case.logic.undo() == case.a and not segment_on_volume(case.segmentation, case.a, case.volume).any()
    assert case.logic.undo() is None, "nothing left in either history"


def test_a_ctrl_z_in_the_editor_is_followed_and_the_next_click_continues_from_there(editor_case) -> None:
    case = editor_case
    case.plus.AddControlPoint(*case.centres[0])
    _update(case)
    first = segment_on_volume(case.segmentation, case.a, case.volume).copy()
    case.plus.AddControlPoint(*case.centres[1])
    _update(case)
    case.editor.Undo()  # the editor's own Ctrl+Z
    case.plus.AddControlPoint(*(case.centres[0] - 1.5))
    result = _update(case)
    assert not result.newSession
    assert case.plus.GetNumberOfControlPoints() == 2, "the click undone in the editor is gone, the new one stays"
    np.testing.assert_array_equal(segment_on_volume(case.segmentation, case.a, case.volume), first)


def test_clearing_the_clicks_is_undone_by_the_module_and_an_editor_without_states_falls_back(editor_case) -> None:
    case = editor_case
    case.plus.AddControlPoint(*case.centres[0])
    _update(case)
    case.logic.clearPoints(case.segmentation, case.a)
    assert case.plus.GetNumberOfControlPoints() == 0
    assert case.logic.undo() == case.a and case.plus.GetNumberOfControlPoints() == 1, "a clicks-only step is the module's"
    case.editor.SetMaximumNumberOfUndoStates(0)  # the editor keeps nothing (or dropped its oldest states)
    assert not case.editor.CanUndo()
    assert case.logic.undo() == case.a, "the module writes the voxels back itself"
    assert not segment_on_volume(case.segmentation, case.a, case.volume).any()


def test_the_editor_saves_states_only_for_the_segmentation_it_shows(editor_case) -> None:
    case = editor_case
    other, (c,) = add_segmentation(case.scene, case.volume, ("C",))
    states = UndoStates(case.editor)
    assert states.edits(case.segmentation) and not states.edits(other) and not states.edits(None)
    states.save(other)
    assert not case.editor.CanUndo()
    assert not UndoStates(WidgetLike(case.editor)).undo(), "nothing to restore: the widget path sees no change"
