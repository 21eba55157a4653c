"""What ``SAMMed3DLogic`` does, apart from being a ``ScriptedLoadableModuleLogic``.

Design: :class:`ParameterNodeLogic` reads the module's settings (a ``SAMMed3DParameterNode``, or
anything with its fields) and delegates every action to one ``InteractiveSegmentationLogic``,
created on first use: only then are ``SAMMed3DLib`` and the model needed, so Slicer can show and
keep the clicks before PyTorch is installed. It needs no Slicer application (``slicer.mrmlScene``
and ``slicer.modules`` are touched only by :func:`~.segment_editor.segmentEditorNode` for the
"use Segment Editor masking" write mode, and by Segment Editor undo when that module is loaded),
so pytest runs it on real MRML scenes; ``SAMMed3D.py``'s ``SAMMed3DLogic`` adds the parameter
node wrapper and the dependency installation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .choices import ModelChoice
from .segment_editor import saveSegmentEditorUndoState, segmentEditorNode


class ParameterNodeLogic:
    """Settings from the parameter node, actions delegated to a lazily created ``InteractiveSegmentationLogic``.

    The interactive logic (and with it ``SAMMed3DLib``) is created on first use, after the module's
    ``ensureDependencies``; before that only the torch-free parts (points) are used. Changing the
    model, device or window-following setting ends the editing session.
    """

    def __init__(self) -> None:
        self._impl: Any = None
        self._settings: tuple | None = None
        self._baseline: Any = None

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
        """Apply model, device and window-following settings; changing them starts a new session."""
        spec = parameterNode.model.value if parameterNode.model != ModelChoice.FILE else str(parameterNode.modelPath)
        settings = (spec, parameterNode.device.value, parameterNode.autoExtend)
        if settings == self._settings:
            return
        self._settings = settings
        if self._impl is not None:
            if (self._impl.modelSpec, self._impl.device) != settings[:2]:
                self._impl.setModel(settings[0], settings[1])
            self._impl.autoExtend = settings[2]
            self._impl.endSession()

    def _logic(self) -> Any:
        if self._impl is None:
            from InteractiveSegmentationLogic import InteractiveSegmentationLogic

            spec, device, autoExtend = self._settings or ("default", "auto", True)
            self._impl = InteractiveSegmentationLogic(model=spec, device=device, autoExtend=autoExtend)
            self._impl.beforeWriteCallback = saveSegmentEditorUndoState
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

    def writeOptions(self, parameterNode: Any) -> Any:
        """The ``WriteOptions`` of the chosen write mode (the Segment Editor's masking for "segment_editor").

        With "Lock other segments", every other segment of the segmentation is locked: never
        modified nor overlapped, and left out of the model's mask.
        """
        import dataclasses

        from InteractiveSegmentationLogic import write_options_for_mode

        options = write_options_for_mode(parameterNode.writeMode.value, segmentEditorNode())
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
        return self._logic().undo() if self._impl is not None else None

    def redo(self) -> str | None:
        return self._logic().redo() if self._impl is not None else None

    def resetSegment(self, segmentation: Any, segmentId: str) -> int:
        return self._logic().resetSegment(segmentation, segmentId)

    def clearPoints(self, segmentation: Any, segmentId: str) -> None:
        self._logic().clearPoints(segmentation, segmentId)

    def addNextSegment(self, segmentation: Any) -> str:
        return self._logic().addNextSegment(segmentation)

    def endSession(self) -> None:
        if self._impl is not None:
            self._impl.endSession()

    def closeScene(self) -> None:
        """The scene closes: nothing of it can be undone any more (the undo buttons turn off)."""
        self._baseline = None
        if self._impl is not None:
            self._impl.closeScene()
