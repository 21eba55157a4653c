"""What ``SAMMed3DLogic`` does, apart from being a ``ScriptedLoadableModuleLogic``.

Design: :class:`ParameterNodeLogic` reads the module's settings (a ``SAMMed3DParameterNode``, or
anything with its fields) and delegates every action to one ``InteractiveSegmentationLogic``,
created on first use: only then are ``SAMMed3DLib`` and the model needed, so Slicer can show and
keep the clicks before PyTorch is installed. The embedded Segment Editor is handed in
(:meth:`ParameterNodeLogic.useSegmentEditor`): its parameter node gives the write options
(masking, "modify other segments") and its undo states are the ones every update saves and
Undo/Redo restore (see :mod:`.segment_editor`). It needs no Slicer application (``slicer.modules``
is touched only to save an undo state in the Segment Editor module too, when it is loaded), so
pytest runs it on real MRML scenes; ``SAMMed3D.py``'s ``SAMMed3DLogic`` adds the parameter node
wrapper and the dependency installation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .choices import ModelChoice
from .segment_editor import UndoStates, saveCoreSegmentEditorUndoState


class ParameterNodeLogic:
    """Settings from the parameter node, actions delegated to a lazily created ``InteractiveSegmentationLogic``.

    The interactive logic (and with it ``SAMMed3DLib``) is created on first use, after the module's
    ``ensureDependencies``; before that only the torch-free parts (points) are used. Changing the
    model, device or window-following setting ends the editing session.
    """

    def __init__(self, interactiveLogic: Any = None) -> None:
        """``interactiveLogic``: an ``InteractiveSegmentationLogic`` to use instead of one created on first use (scripts, tests)."""
        self._impl: Any = interactiveLogic
        if interactiveLogic is not None:
            interactiveLogic.beforeWriteCallback = self._saveUndoStates
        self._settings: tuple | None = None
        self._baseline: Any = None
        self._editorNode: Any = None
        self._undoStates: UndoStates | None = None

    def useSegmentEditor(self, editorNode: Any, undoStates: UndoStates | None) -> None:
        """Take write options from ``editorNode`` and save/restore undo states through ``undoStates``.

        Args:
            editorNode: the module's ``vtkMRMLSegmentEditorNode`` (masking, overwrite), or None.
            undoStates: the embedded Segment Editor's undo states, or None (the module's own undo only).
        """
        self._editorNode = editorNode
        self._undoStates = undoStates

    # -- settings -----------------------------------------------------------------------------------

    @staticmethod
    def modelSpec(parameterNode: Any) -> str:
        """The model to load: a registry name, or the checkpoint path of the "Local file…" choice.

        Raises:
            ValueError: "Local file…" is chosen but no file is set.
        """
        if parameterNode.model == ModelChoice.FILE:
            path = str(parameterNode.modelPath)
            if not path or path == ".":
                raise ValueError("choose a checkpoint file (Model section) or another model")
            return path
        return parameterNode.model.value

    @staticmethod
    def checkpointNameFilters() -> list[str]:
        """File-dialog filters for "Local file…": ``.safetensors`` only when that package is installed."""
        import importlib.util

        patterns = "*.pth *.pt" + (" *.safetensors" if importlib.util.find_spec("safetensors") is not None else "")
        return [f"Checkpoints ({patterns})"]

    @staticmethod
    def currentSegmentId(parameterNode: Any) -> str:
        """The chosen segment if it exists in the chosen segmentation, else "" (and the stale ID is cleared).

        The segment selector emits no ``currentSegmentChanged`` when the user switches to a
        segmentation without segments, so the parameter node can still hold the previous
        segmentation's segment: binding its points (or writing into it) would then error or leave
        orphan markups nodes.
        """
        segmentId = parameterNode.segmentId
        segmentation = parameterNode.segmentation
        if segmentId and (segmentation is None or segmentation.GetSegmentation().GetSegment(segmentId) is None):
            parameterNode.segmentId = segmentId = ""
        return segmentId

    def configure(self, parameterNode: Any) -> None:
        """Apply model, device, window-following and mask-rule settings; changing them starts a new session.

        "Snap to image edges" and "Points only add or remove" checked mean the model's default
        (on for this project's models, off for official checkpoints, whose masks stay the
        official ones); unchecked turns the rule off for any model.
        """
        spec = parameterNode.model.value if parameterNode.model != ModelChoice.FILE else str(parameterNode.modelPath)
        rules = (None if parameterNode.snapToEdges else False, None if parameterNode.signedClicks else False)
        settings = (spec, parameterNode.device.value, parameterNode.autoExtend, *rules)
        if settings == self._settings:
            return
        self._settings = settings
        if self._impl is not None:
            if (self._impl.modelSpec, self._impl.device) != settings[:2]:
                self._impl.setModel(settings[0], settings[1])
            self._impl.autoExtend, self._impl.refine, self._impl.signedClicks = settings[2:]
            self._impl.endSession()

    def _logic(self) -> Any:
        if self._impl is None:
            from InteractiveSegmentationLogic import InteractiveSegmentationLogic

            spec, device, autoExtend, refine, signedClicks = self._settings or ("default", "auto", True, None, None)
            self._impl = InteractiveSegmentationLogic(model=spec, device=device, autoExtend=autoExtend, refine=refine, signedClicks=signedClicks)
            self._impl.beforeWriteCallback = self._saveUndoStates
            if self._baseline is not None:
                self._impl.rememberPoints(self._baseline)
        return self._impl

    # -- delegation ---------------------------------------------------------------------------------

    def pointsNodes(self, segmentation: Any, segmentId: str) -> tuple[Any, Any]:
        """The segment's (+, −) markups nodes, created if missing.

        Before the interactive logic exists, the points are snapshotted here and handed to it when
        it is created, so undoing the first update restores the points as they were at binding.
        """
        from InteractiveSegmentationLogic import PointsSnapshot, ensure_points_nodes

        if self._impl is not None:
            return self._impl.pointsNodesForSegment(segmentation, segmentId)
        nodes = ensure_points_nodes(segmentation, segmentId)
        self._baseline = PointsSnapshot.take(list(nodes))
        return nodes

    @property
    def modelLoaded(self) -> bool:
        return self._impl is not None and self._impl.modelLoaded

    @property
    def canUndo(self) -> bool:
        return self._impl is not None and self._impl.canUndo

    @property
    def canRedo(self) -> bool:
        return self._impl is not None and self._impl.canRedo

    def modelNeedsDownload(self) -> bool:
        return self._logic().modelNeedsDownload()

    @staticmethod
    def cacheFolder() -> str:
        """Where downloaded models are kept (``SAMMed3DLib.registry.cache_dir``)."""
        from SAMMed3DLib.registry import cache_dir

        return str(cache_dir())

    def _saveUndoStates(self, segmentationNode: Any) -> None:
        """Before any write: an undo state in the embedded Segment Editor (and the Segment Editor module)."""
        if self._undoStates is not None:
            self._undoStates.save(segmentationNode)
        saveCoreSegmentEditorUndoState(segmentationNode)

    def writeOptions(self, parameterNode: Any) -> Any:
        """The ``WriteOptions`` of the module's Segment Editor node: its masking and "modify other segments".

        Without an editor node, the Segment Editor's defaults (editable everywhere, overwrite all
        other segments). With "Lock other segments", every other segment of the segmentation is
        locked: never modified nor overlapped, and left out of the model's mask.
        """
        import dataclasses

        from InteractiveSegmentationLogic import write_options_for_mode

        options = write_options_for_mode("segment_editor", self._editorNode)
        segmentation = parameterNode.segmentation
        if getattr(parameterNode, "lockOtherSegments", False) and segmentation is not None:
            ids = segmentation.GetSegmentation().GetSegmentIDs()
            locked = tuple(str(s) for s in ids if s != parameterNode.segmentId)
            options = dataclasses.replace(options, lockedSegmentIds=locked)
        return options

    def prepare(self, parameterNode: Any, positive: Any, negative: Any) -> Any:
        """Main thread: read the volume and the points into a request for :meth:`compute`.

        Raises:
            ValueError: "Local file…" is chosen but no file is set (before any work).
        """
        self.modelSpec(parameterNode)  # a missing checkpoint file is reported before any work
        return self._logic().prepare(
            parameterNode.inputVolume, parameterNode.segmentation, parameterNode.segmentId, positive, negative,
            self.writeOptions(parameterNode), getattr(parameterNode, "boxRoi", None),
        )

    def compute(self, request: Any, progress: Callable[[float, float, str], None], cancel: threading.Event, allowDownload: bool) -> Any:
        """Worker thread: load the model if needed, then run it (no Qt, no MRML).

        Args:
            request: what :meth:`prepare` returned.
            progress: ``progress(done, total, message)`` while downloading or loading the model.
            cancel: set by the main thread to stop a download or the first model load.
            allowDownload: the user agreed to download the model.

        Raises:
            RuntimeError: cancelled while the model was loading.
        """
        logic = self._logic()
        logic.loadModel(progress, cancel, allowDownload)
        if cancel.is_set():
            raise RuntimeError("cancelled")
        return logic.compute(request)

    def apply(self, request: Any, update: Any) -> Any:
        """Main thread: write :meth:`compute`'s update into the segment (undoable)."""
        return self._logic().apply(request, update)

    def segment(self, volume: Any, segmentation: Any, segmentId: str, positive: Any, negative: Any = None, options: Any = None) -> Any:
        """Prepare, compute and apply in one call (scripts and tests)."""
        return self._logic().segment(volume, segmentation, segmentId, positive, negative, options)

    def undo(self) -> str | None:
        """Undo the last edit: through the Segment Editor's undo states when it shows the segmentation.

        Returns:
            The segment ID whose update was undone; "" when the Segment Editor undid an edit of its
            own (a Paint stroke: the module's history stays); None when there was nothing to undo.
        """
        return self._move(forward=False)

    def redo(self) -> str | None:
        """Redo, the same way as :meth:`undo`."""
        return self._move(forward=True)

    def _move(self, forward: bool) -> str | None:
        impl = self._impl
        step = None
        if impl is not None:
            impl.followOutsideUndo()  # an undo made in the editor meanwhile
            step = impl.historyStep(forward)
        if step is not None and not step[2]:  # a clicks-only step (Clear points): only the module has it
            return impl.redo() if forward else impl.undo()
        states = self._undoStates
        if states is not None and (step is None or states.edits(step[0])) and (states.redo() if forward else states.undo()):
            moved = impl.followOutsideUndo() if impl is not None else 0
            return step[1] if moved and step is not None else ""
        if impl is None:
            return None
        # The editor had no state to restore (it keeps fewer than the module, or shows another segmentation).
        return impl.redo() if forward else impl.undo()

    def resetSegment(self, segmentation: Any, segmentId: str) -> int:
        return self._logic().resetSegment(segmentation, segmentId)

    def clearPoints(self, segmentation: Any, segmentId: str) -> None:
        self._logic().clearPoints(segmentation, segmentId)

    def addNextSegment(self, segmentation: Any) -> str:
        return self._logic().addNextSegment(segmentation)

    def endSession(self) -> None:
        if self._impl is not None:
            self._impl.endSession()

    def discard(self) -> None:
        """An update was computed but cancelled before it was written: the session (which took its
        points) is dropped, so the next click starts from the segment's voxels and its undo baseline
        stays the points before the cancelled update."""
        self.endSession()

    def closeScene(self) -> None:
        """The scene closes: nothing of it can be undone any more (the undo buttons turn off)."""
        self._baseline = None
        if self._impl is not None:
            self._impl.closeScene()
