"""The Segment Editor embedded in the module: its parameter node, its undo states, its choices.

Design: the module's panel embeds a ``qMRMLSegmentEditorWidget`` (as SlicerNNInteractive and
MONAI Label do) on a ``vtkMRMLSegmentEditorNode`` of its own (singleton tag
:data:`EDITOR_NODE_TAG`, so the Segment Editor module's settings are left alone). That node is
where the user picks the segmentation, the source volume and the segment, and sets masking and
"modify other segments"; :func:`syncParameterNode` copies the choices into the module's
parameter node (the one the logic reads), and the write options come from the same node.

Undo: every model update first saves a Segment Editor undo state (:meth:`UndoStates.save`), so
the editor's Ctrl+Z restores it; the module's Undo (Z) goes through the same states
(:meth:`UndoStates.undo`), and the logic's ``followOutsideUndo`` then moves the clicks and the
model session along. :class:`UndoStates` speaks to the embedded widget in Slicer, or to a
``vtkSlicerSegmentEditorLogic`` (the class the widget delegates to since Slicer 5.10; slicer-core
has it, so pytest runs the same undo on real scenes). No Qt import: the widget is handed in.
"""

from __future__ import annotations

from typing import Any

#: Singleton tag of the module's own Segment Editor parameter node (the Segment Editor module uses "SegmentEditor").
EDITOR_NODE_TAG = "SAMMed3D"

#: Effects shown in the embedded editor, in this order (the others are hidden to keep the panel short).
EFFECT_ORDER = ("Paint", "Draw", "Erase", "Level tracing", "Grow from seeds", "Margin", "Islands", "Smoothing", "Scissors", "Logical operators")

#: Undo states the embedded editor keeps (each is a copy of the segmentation, as for every Segment Editor effect).
UNDO_STATES = 10


def moduleEditorNode(scene: Any) -> Any:
    """The module's ``vtkMRMLSegmentEditorNode`` in ``scene``, created the first time (and after a scene close)."""
    node = scene.GetSingletonNode(EDITOR_NODE_TAG, "vtkMRMLSegmentEditorNode")
    if node is None:
        import slicer

        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(EDITOR_NODE_TAG)
        node = scene.AddNode(node)
    return node


def _sourceVolume(editorNode: Any) -> Any:
    getter = getattr(editorNode, "GetSourceVolumeNode", None) or editorNode.GetMasterVolumeNode  # Slicer < 5.2
    return getter()


def _setSourceVolume(editorNode: Any, volume: Any) -> None:
    setter = getattr(editorNode, "SetAndObserveSourceVolumeNode", None) or editorNode.SetAndObserveMasterVolumeNode
    setter(volume)


def syncParameterNode(parameterNode: Any, editorNode: Any) -> bool:
    """Copy the editor's segmentation, source volume and selected segment into the parameter node.

    A source volume that is not a scalar volume (the logic segments scalar volumes only) leaves
    the input empty. Returns whether anything changed.
    """
    volume = _sourceVolume(editorNode)
    if volume is not None and not volume.IsA("vtkMRMLScalarVolumeNode"):
        volume = None
    wanted = {
        "inputVolume": volume,
        "segmentation": editorNode.GetSegmentationNode(),
        "segmentId": editorNode.GetSelectedSegmentID() or "",
    }
    changed = False
    for name, value in wanted.items():
        current = getattr(parameterNode, name)
        if current is not value and current != value:
            setattr(parameterNode, name, value)
            changed = True
    return changed


def initializeEditorNode(editorNode: Any, parameterNode: Any, scene: Any) -> None:
    """Fill what the editor node lacks: the parameter node's choices (a reloaded scene), else the scene's first.

    What the editor node already holds is kept (it is what the user last chose). Without any
    segmentation, one is created for the volume, as the Segment Editor module does.
    """
    if _sourceVolume(editorNode) is None:
        volume = parameterNode.inputVolume or scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if volume is not None:
            _setSourceVolume(editorNode, volume)
    if editorNode.GetSegmentationNode() is None:
        segmentation = parameterNode.segmentation or scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        volume = _sourceVolume(editorNode)
        if segmentation is None and volume is not None:
            segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        if segmentation is not None:
            editorNode.SetAndObserveSegmentationNode(segmentation)
            if parameterNode.segmentId and segmentation.GetSegmentation().GetSegment(parameterNode.segmentId) is not None:
                editorNode.SetSelectedSegmentID(parameterNode.segmentId)


def segmentationStamp(segmentationNode: Any) -> tuple:
    """Changes whenever any segment of the segmentation may have changed (see ``locked.segment_stamp``)."""
    from InteractiveSegmentationLogic.locked import segment_stamp

    ids = [str(s) for s in segmentationNode.GetSegmentation().GetSegmentIDs()]
    return tuple((s, segment_stamp(segmentationNode, s)) for s in ids)


class UndoStates:
    """The undo states of one Segment Editor: the embedded ``qMRMLSegmentEditorWidget`` or a ``vtkSlicerSegmentEditorLogic``.

    Args:
        editor: the widget (``saveStateForUndo()``, ``undo()``, ``redo()``, ``segmentationNode()``)
            or the logic (``SaveStateForUndo()``, ``Undo()``, ``Redo()``, ``CanUndo()``, ``CanRedo()``,
            ``GetSegmentationNode()``).
    """

    def __init__(self, editor: Any) -> None:
        self._editor = editor

    def segmentationNode(self) -> Any:
        editor = self._editor
        return editor.GetSegmentationNode() if hasattr(editor, "GetSegmentationNode") else editor.segmentationNode()

    def edits(self, segmentationNode: Any) -> bool:
        """Whether the editor shows (and would undo) this segmentation."""
        edited = self.segmentationNode()
        return edited is not None and segmentationNode is not None and edited.GetID() == segmentationNode.GetID()

    def save(self, segmentationNode: Any) -> None:
        """Save an undo state of ``segmentationNode`` before it is written (nothing when the editor shows another one)."""
        if self.edits(segmentationNode):
            editor = self._editor
            (editor.SaveStateForUndo if hasattr(editor, "SaveStateForUndo") else editor.saveStateForUndo)()

    def undo(self) -> bool:
        """Restore the editor's previous state; False when it had none (nothing changed)."""
        return self._restore(forward=False)

    def redo(self) -> bool:
        """Restore the editor's next state; False when it had none."""
        return self._restore(forward=True)

    def _restore(self, forward: bool) -> bool:
        node = self.segmentationNode()
        if node is None:
            return False
        editor = self._editor
        if hasattr(editor, "CanUndo"):
            if not (editor.CanRedo() if forward else editor.CanUndo()):
                return False
            (editor.Redo if forward else editor.Undo)()
            return True
        before = segmentationStamp(node)  # the widget does not say whether it had a state: compare
        (editor.redo if forward else editor.undo)()
        return segmentationStamp(node) != before


def coreSegmentEditorWidget() -> Any:
    """The Segment Editor module's ``qMRMLSegmentEditorWidget``, or None when that module is not loaded."""
    import slicer

    module = getattr(slicer.modules, "segmenteditor", None)
    if module is None:
        return None
    representation = module.widgetRepresentation()
    return representation.self().editor if representation is not None else None


def saveCoreSegmentEditorUndoState(segmentationNode: Any) -> None:
    """Let Ctrl+Z in the Segment Editor module undo our updates too, when it edits the same segmentation."""
    widget = coreSegmentEditorWidget()
    if widget is not None:
        UndoStates(widget).save(segmentationNode)
