"""The Segment Editor's settings and undo, as seen from the SAMMed3D module.

Design: the module honours the Segment Editor's masking settings (write mode "use Segment Editor
masking") and lets the Segment Editor's Ctrl+Z undo the module's updates when both edit the same
segmentation. The logic package never reaches for ``slicer.modules`` or ``slicer.mrmlScene``; it
receives these as a node (:func:`segmentEditorNode`) and a callback (:func:`saveSegmentEditorUndoState`).
"""

from __future__ import annotations

from typing import Any

import slicer


def segmentEditorNode() -> Any:
    """The Segment Editor's parameter node (its masking settings), or None.

    Returns:
        The ``vtkMRMLSegmentEditorNode`` of the Segment Editor module's widget, else the scene's
        first one, else None.
    """
    widget = segmentEditorWidget()
    if widget is not None:
        return widget.mrmlSegmentEditorNode()
    return slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentEditorNode")


def segmentEditorWidget() -> Any:
    """The Segment Editor module's ``qMRMLSegmentEditorWidget``, or None when that module is not loaded."""
    module = getattr(slicer.modules, "segmenteditor", None)
    if module is None:
        return None
    representation = module.widgetRepresentation()
    return representation.self().editor if representation is not None else None


def saveSegmentEditorUndoState(segmentationNode: Any) -> None:
    """Let Ctrl+Z in the Segment Editor undo our updates too, when it edits the same segmentation.

    Args:
        segmentationNode: the ``vtkMRMLSegmentationNode`` about to be written.
    """
    widget = segmentEditorWidget()
    edited = widget.segmentationNode() if widget is not None else None
    if edited is not None and edited.GetID() == segmentationNode.GetID():
        widget.saveStateForUndo()
