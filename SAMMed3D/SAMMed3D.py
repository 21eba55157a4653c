"""SAM-Med3D: click in any view, watch the segment grow, never lose work.

Design (the Slicer ExtensionWizard layout):

- :class:`SAMMed3D` declares the module; :class:`SAMMed3DParameterNode` (``@parameterNodeWrapper``)
  keeps every user choice in the scene, so saving the scene saves the settings.
- :class:`SAMMed3DWidget` only wires Qt to the logic: it loads ``Resources/UI/SAMMed3D.ui`` (the
  embedded Segment Editor on the module's own editor node), observes the points, debounces
  clicks, runs the model on one persistent worker thread and shows ``SAMMed3DModule/feedback.py``.
- All behaviour a user relies on lives in ``InteractiveSegmentationLogic`` (MRML, no Qt; tested
  with pytest on real slicer-core scenes); :class:`SAMMed3DLogic` is the thin logic in front of it.
- Helpers live in ``SAMMed3DModule`` (Slicer takes every loose ``.py`` file here for a module).
- Dependencies are installed when the user first runs the model, never at import, after asking,
  skipped in testing mode: PyTorch in the background (``SAMMed3DModule/torch_install.py``, the
  PyTorch extension's light-the-torch command), the rest from ``Resources/requirements.txt``.
- :class:`SAMMed3DTest` fails in Slicer when a segment misses the clicked sphere or undo is not exact.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SAMMed3DModule import dependencies
from SAMMed3DModule.choices import DeviceChoice, ModelChoice
from SAMMed3DModule.feedback import Feedback, undoText
from SAMMed3DModule.module_logic import ParameterNodeLogic
from SAMMed3DModule.segment_editor import (
    EFFECT_ORDER,
    UNDO_STATES,
    UndoStates,
    initializeEditorNode,
    moduleEditorNode,
    syncParameterNode,
)
from SAMMed3DModule.shortcuts import ShortcutSet
from SAMMed3DModule.torch_install import runCommands
from SAMMed3DModule.worker import Job, ModelWorker, waitPumpingEvents

logger = logging.getLogger(__name__)


# OpenMP's passive waiting, before anything imports torch (see SAMMed3DLib/__init__.py for why).
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _addCoreFromSourceCheckout() -> None:
    """Make ``SAMMed3DLib`` importable when the module runs from a source checkout.

    An installed extension has the core beside this file (CMakeLists.txt installs it there, on
    Slicer's ``sys.path``); a source checkout has it one folder up: put that folder on ``sys.path``
    then, and only then (a pip-installed core wins, nothing is shadowed).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "SAMMed3DLib")):
        return
    checkout = os.path.dirname(here)
    if os.path.isfile(os.path.join(checkout, "SAMMed3DLib", "__init__.py")) and checkout not in sys.path:
        sys.path.append(checkout)


_addCoreFromSourceCheckout()

#: Clicks closer together than this (ms) run the model once, with all of them: placing a point
#: fires several MRML events, and a user's double click should not cost two decoder passes.
DEBOUNCE_MS = 150


class SAMMed3D(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAM-Med3D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SlicerSAMMed3D team (https://github.com/SlicerSAMMed3D)"]
        self.parent.helpText = """
Interactive 3D segmentation with <a href="https://github.com/uni-medical/SAM-Med3D">SAM-Med3D</a>.
Pick the volume, the segmentation and the segment in the embedded Segment Editor, press <b>+</b> and
click inside the structure in any slice or 3D view; add <b>−</b> points where the mask leaks, or
draw a box (markups ROI). Updates follow the Segment Editor's masking and share its undo.
Shortcuts while the module is shown: P place +, N place −, T toggle + / −, Z undo, Y redo.
"""
        self.parent.acknowledgementText = """
SAM-Med3D by Wang et al. (uni-medical/SAM-Med3D, Apache-2.0). Built on the 3D Slicer scripted module
template (Kitware, Isomics, PerkLab) and the PyTorch extension (PyTorchUtils).
"""


@parameterNodeWrapper
class SAMMed3DParameterNode:
    """The module's settings, stored in the scene.

    inputVolume, segmentation, segmentId - the embedded Segment Editor's choices, copied here.
    model, modelPath, device - which weights run where. autoRun - update on every point placed
    or moved. autoExtend - follow objects larger than one window. boxRoi - the object's box
    (a markups ROI). lockOtherSegments - never change, nor overlap, the other segments.
    snapToEdges, signedClicks - the two mask rules: the model's default, or (False) off.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    model: ModelChoice = ModelChoice.DEFAULT
    modelPath: pathlib.Path = pathlib.Path()
    device: DeviceChoice = DeviceChoice.AUTO
    autoRun: bool = True
    autoExtend: bool = True
    boxRoi: vtkMRMLMarkupsROINode
    lockOtherSegments: bool = False
    snapToEdges: bool = True
    signedClicks: bool = True


class SAMMed3DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui controls to :class:`SAMMed3DLogic`; holds no segmentation behaviour itself."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: SAMMed3DLogic | None = None
        self._parameterNode: SAMMed3DParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._editorNode: Any = None
        self._pointsNodes: tuple[Any, Any] = (None, None)
        self._boxRoi: Any = None  # the ROI observed for changes
        self._boundSegment: tuple[str, str] | None = None
        self._worker = ModelWorker()
        self._job: Job | None = None
        self._request: Any = None
        self._pending = False
        self._cancel = threading.Event()
        self._feedback = Feedback()
        self._clickTime = 0.0
        self._restoringPoints = False
        self._shortcuts = ShortcutSet(qt)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMMed3D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMMed3DLogic()

        editor = self.ui.segmentEditorWidget
        editor.setMaximumNumberOfUndoStates(UNDO_STATES)
        editor.setEffectNameOrder(list(EFFECT_ORDER))
        editor.unorderedEffectsVisible = False
        editor.setSwitchToSegmentationsButtonVisible(False)
        editor.setMRMLScene(slicer.mrmlScene)
        self._useEditorNode()

        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
            placeWidget.deleteButton().show()
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.modelPathLineEdit.nameFilters = self.logic.checkpointNameFilters()
        self._showFeedback()

        self._debounce = qt.QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.onRun)  # the newest points, once they stop moving

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.redoButton.connect("clicked(bool)", self.onRedo)
        self.ui.resetButton.connect("clicked(bool)", self.onReset)
        self.ui.clearPointsButton.connect("clicked(bool)", self.onClearPoints)
        self.ui.nextSegmentButton.connect("clicked(bool)", self.onNextSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._shortcuts.remove()
        self.removeObservers()
        self._worker.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.setupViewObservations()
        self._shortcuts.install(slicer.util.mainWindow(), {
            "P": lambda: self._placePoints(positive=True),
            "N": lambda: self._placePoints(positive=False),
            "T": self._togglePointSign,
            "Z": self.onUndo,
            "Y": self.onRedo,
        })

    def exit(self) -> None:
        self._shortcuts.remove()
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.removeViewObservations()
        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setPlaceModeEnabled(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)
        self._bindPointsNodes(None, None)
        if self.logic is not None:
            self.logic.closeScene()
            self._updateUndoButtons()

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        self._useEditorNode()  # the closed scene took the editor's parameter node with it
        if self.parent.isEntered:
            self.initializeParameterNode()

    def _useEditorNode(self) -> None:
        """Give the embedded Segment Editor the module's own parameter node and follow its choices."""
        if self._editorNode is not None:
            self.removeObserver(self._editorNode, vtk.vtkCommand.ModifiedEvent, self.onEditorNodeModified)
        self._editorNode = moduleEditorNode(slicer.mrmlScene)
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self._editorNode)
        self.addObserver(self._editorNode, vtk.vtkCommand.ModifiedEvent, self.onEditorNodeModified)
        self.logic.useSegmentEditor(self._editorNode, UndoStates(self.ui.segmentEditorWidget))

    def onEditorNodeModified(self, caller: Any = None, event: Any = None) -> None:
        """The user picked another segmentation, volume or segment in the Segment Editor."""
        if self._parameterNode is not None:
            syncParameterNode(self._parameterNode, self._editorNode)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        initializeEditorNode(self._editorNode, self._parameterNode, slicer.mrmlScene)
        self.onEditorNodeModified()

    def setParameterNode(self, inputParameterNode: SAMMed3DParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Controls carry a "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    # -- GUI state --------------------------------------------------------------------------------

    def _updateGui(self, caller: Any = None, event: Any = None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self.ui.modelPathLineEdit.enabled = p.model == ModelChoice.FILE
        self.logic.configure(p)
        ready = bool(p.inputVolume and p.segmentation and self.logic.currentSegmentId(p))
        for widget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget, self.ui.runButton,
                       self.ui.resetButton, self.ui.clearPointsButton):
            widget.enabled = ready
        self.ui.nextSegmentButton.enabled = bool(p.segmentation)
        self._updateUndoButtons()
        self._bindBoxRoi(p.boxRoi if ready else None)
        if ready:
            self._bindPointsNodes(p.segmentation, p.segmentId)
        else:
            self._bindPointsNodes(None, None)
            if not self._feedback.busy:
                self.ui.statusLabel.text = "Choose a volume, a segmentation and a segment in the Segment Editor below, then place + points."

    def _updateUndoButtons(self) -> None:
        busy = self._job is not None
        self.ui.undoButton.enabled = not busy and self.logic.canUndo
        self.ui.redoButton.enabled = not busy and self.logic.canRedo

    def _bindPointsNodes(self, segmentation: Any, segmentId: str | None) -> None:
        """Show the segment's +/− points in the place widgets and observe them (once per segment)."""
        bound = (segmentation.GetID(), segmentId) if segmentation and segmentId else None
        stillThere = all(n is not None and n.GetScene() is not None for n in self._pointsNodes)
        if bound is not None and bound == self._boundSegment and stillThere:
            return  # rebinding would re-take the undo baseline of points not yet segmented
        self._boundSegment = bound
        nodes = self.logic.pointsNodes(segmentation, segmentId) if bound is not None else (None, None)
        if nodes == self._pointsNodes:
            return
        for node in self._pointsNodes:
            if node is not None:
                for event in self._pointEvents():
                    self.removeObserver(node, event, self.onPointsModified)
        self._pointsNodes = nodes
        self.ui.positivePlaceWidget.setCurrentNode(nodes[0])
        self.ui.negativePlaceWidget.setCurrentNode(nodes[1])
        for node in nodes:
            if node is not None:
                for event in self._pointEvents():
                    self.addObserver(node, event, self.onPointsModified)

    def _bindBoxRoi(self, roi: Any) -> None:
        """Observe the box ROI: moving or resizing it runs the model again (debounced like points)."""
        if roi is self._boxRoi:
            return
        if self._boxRoi is not None:
            self.removeObserver(self._boxRoi, vtk.vtkCommand.ModifiedEvent, self.onPointsModified)
        self._boxRoi = roi
        if roi is not None:
            self.addObserver(roi, vtk.vtkCommand.ModifiedEvent, self.onPointsModified)

    @staticmethod
    def _pointEvents() -> tuple[int, ...]:
        markups = slicer.vtkMRMLMarkupsNode
        return (markups.PointPositionDefinedEvent, markups.PointEndInteractionEvent, markups.PointRemovedEvent)

    # -- shortcuts (SAMMed3DModule/shortcuts.py) ----------------------------------------------------

    def _placePoints(self, positive: bool) -> None:
        (self.ui.negativePlaceWidget if positive else self.ui.positivePlaceWidget).setPlaceModeEnabled(False)
        (self.ui.positivePlaceWidget if positive else self.ui.negativePlaceWidget).setPlaceModeEnabled(True)

    def _togglePointSign(self) -> None:
        self._placePoints(positive=not self.ui.positivePlaceWidget.placeModeEnabled)

    # -- running the model --------------------------------------------------------------------------

    def onPointsModified(self, caller: Any, event: Any) -> None:
        if self._restoringPoints or self._parameterNode is None or not self._parameterNode.autoRun:
            return
        self._clickTime = time.perf_counter()
        self._debounce.start()  # restarts: a newer click supersedes a pending one

    def onRun(self) -> None:
        """Run the model on all points of the current segment (now, or after the running update)."""
        if self._job is not None:
            self._pending = True  # the running update finishes and is written; then the newest points run
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("SAM-Med3D could not start the update.", waitCursor=True):
            if not self.logic.ensureDependencies(self._confirm, self._installTorch):
                self.ui.statusLabel.text = "SAM-Med3D needs PyTorch: install it to segment."
                return
            positive, negative = self._pointsNodes
            if positive is None or positive.GetNumberOfDefinedControlPoints() == 0:
                self.ui.statusLabel.text = "Place a + point inside the structure."
                return
            allowDownload = True
            if self.logic.modelNeedsDownload():
                allowDownload = self._confirm(
                    f"The model '{p.model.label()}' is downloaded once (several hundred MB) into "
                    f"{self.logic.cacheFolder()}. Download it now?"
                )
                if not allowDownload:
                    self.ui.statusLabel.text = "Download declined: choose another model."
                    return
            request = self._request = self.logic.prepare(p, positive, negative)
            self._startJob(lambda: self.logic.compute(request, self._feedback.report, self._cancel, allowDownload))

    def _startJob(self, function: Callable[[], Any]) -> None:
        """Run ``function`` on the worker and wait for it here, processing Qt events (see worker.py)."""
        self._cancel.clear()
        self._job = job = self._worker.submit(function)
        self._feedback.start(self.logic.modelLoaded)
        self._showFeedback()
        self._updateUndoButtons()
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)  # busy: the views show it while the model runs
        try:
            waitPumpingEvents(job, self._pumpEvents)
        finally:
            qt.QApplication.restoreOverrideCursor()
        self._finishJob(job)

    def _pumpEvents(self) -> None:
        self._feedback.poll()
        self._showFeedback()
        slicer.app.processEvents()

    def _installTorch(self, commands: list[list[str]]) -> bool:
        """Install PyTorch on the worker (``SAMMed3DModule/torch_install.py``); the panel stays usable."""
        self._cancel.clear()
        self._job = job = self._worker.submit(lambda: runCommands(commands, self._feedback.report, self._cancel))
        self._feedback.startInstall()
        qt.QApplication.setOverrideCursor(qt.Qt.ArrowCursor)  # Slicer stays usable: no wait cursor for minutes
        try:
            waitPumpingEvents(job, self._pumpEvents)
        finally:
            self._job = None
            qt.QApplication.restoreOverrideCursor()
        installed = self._feedback.installFinished(job.error)
        self._showFeedback()
        return installed

    def _showFeedback(self) -> None:
        """Copy the feedback state machine (``SAMMed3DModule/feedback.py``) into the widgets."""
        visible, maximum, value = self._feedback.progressBar()
        self.ui.progressBar.visible = visible
        self.ui.progressBar.setRange(0, maximum)
        self.ui.progressBar.setValue(value)
        self.ui.cancelButton.visible = self._feedback.cancellable
        self.ui.statusLabel.text = self._feedback.status

    def _finishJob(self, job: Job) -> None:
        self._job = None
        if job.error is not None:
            self._pending = False
            self._reportError(job.error)
        elif self._cancel.is_set():
            self._pending = False
            self.logic.discard()  # computed but not written: the next click starts from the segment's voxels
            self._feedback.cancelled()
        else:
            with slicer.util.tryWithErrorDisplay("SAM-Med3D could not write the segment.", waitCursor=True):
                with slicer.util.RenderBlocker():
                    result = self.logic.apply(self._request, job.result)
                clickToDisplay = time.perf_counter() - self._clickTime if self._clickTime else result.latencySeconds
                self._clickTime = 0.0  # the next update measures from its own click
                self._feedback.finished(result.changedVoxels, result.modelSeconds, clickToDisplay, result.newSession)
        if self._feedback.busy:  # the write failed: its error was shown
            self._feedback.failed("The segment could not be written.")
        self._showFeedback()
        self._updateUndoButtons()
        if self._pending:
            self._pending = False
            self.onRun()

    def _reportError(self, error: BaseException) -> None:
        from SAMMed3DLib.errors import SAMMed3DError

        if self._cancel.is_set():
            self._feedback.cancelled()
            return
        if isinstance(error, SAMMed3DError):
            self._feedback.failed(str(error))
            slicer.util.errorDisplay(str(error), windowTitle="SAM-Med3D")
        else:
            details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            logger.error("SAM-Med3D update failed:\n%s", details)
            self._feedback.failed(f"Update failed: {error}")
            slicer.util.errorDisplay(f"SAM-Med3D update failed: {error}", detailedText=details, windowTitle="SAM-Med3D")

    def onCancel(self) -> None:
        if self._feedback.cancel():
            self._cancel.set()
            self._showFeedback()

    def _confirm(self, text: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(text, windowTitle="SAM-Med3D")

    # -- buttons ------------------------------------------------------------------------------------

    def _edit(self, failure: str, action: Callable[[], Any], status: Callable[[Any], str]) -> None:
        """Run an undo-history action (not while the model runs); the points it moves trigger no update."""
        if self._job is not None:
            return
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            self._restoringPoints = True
            try:
                outcome = action()
            finally:
                self._restoringPoints = False
            self.ui.statusLabel.text = status(outcome)
        self._updateUndoButtons()

    def onUndo(self) -> None:
        self._edit("SAM-Med3D could not undo.", self.logic.undo, lambda segmentId: undoText(segmentId, "Undone", "undo"))

    def onRedo(self) -> None:
        self._edit("SAM-Med3D could not redo.", self.logic.redo, lambda segmentId: undoText(segmentId, "Redone", "redo"))

    def onReset(self) -> None:
        p = self._parameterNode
        self._edit("SAM-Med3D could not reset the segment.", lambda: self.logic.resetSegment(p.segmentation, p.segmentId),
                   lambda count: f"Reset: {count} update(s) undone (Redo brings them back).")

    def onClearPoints(self) -> None:
        p = self._parameterNode
        self._edit("SAM-Med3D could not clear the points.", lambda: self.logic.clearPoints(p.segmentation, p.segmentId),
                   lambda _: "Points cleared; the segment is kept. The next + point starts afresh.")

    def onNextSegment(self) -> None:
        if self._job is not None or self._parameterNode is None or not self._parameterNode.segmentation:
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("SAM-Med3D could not add a segment.", waitCursor=True):
            segmentId = self.logic.addNextSegment(p.segmentation)
            self.ui.segmentEditorWidget.setCurrentSegmentID(segmentId)  # the editor's node, then the parameter node
            p.segmentId = segmentId
            self.ui.positivePlaceWidget.setPlaceModeEnabled(True)
            self.ui.statusLabel.text = "New segment: place + points inside the next structure."


class SAMMed3DLogic(ParameterNodeLogic, ScriptedLoadableModuleLogic):
    """Thin module logic: everything but the parameter node wrapper and the dependency installation is
    :class:`SAMMed3DModule.module_logic.ParameterNodeLogic` (no Slicer application: pytest runs it on real MRML).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ParameterNodeLogic.__init__(self)

    def getParameterNode(self) -> SAMMed3DParameterNode:
        return SAMMed3DParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(confirm: Callable[[str], bool] | None = None, installInBackground: Callable[[list[list[str]]], bool] | None = None) -> bool:
        """Install PyTorch (PyTorch extension; in the background when given) and ``requirements.txt`` if missing; False if declined.

        Skipped in testing mode: tests must not change the Python environment.
        """
        requirements = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        return dependencies.ensureDependencies(requirements, confirm, installInBackground)


class SAMMed3DTest(ScriptedLoadableModuleTest):
    """Runs the logic inside Slicer on a generated oblique, anisotropic volume; fails on misplacement.

    The stand-in model of ``InteractiveSegmentationLogic.testing`` makes a failure mean wrong geometry, resampling or writing.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        # Testing mode never installs dependencies (extension build machines, a fresh Slicer).
        missing = dependencies.torchMissingMessage()
        if missing:
            logger.warning("SAM-Med3D self-test skipped: %s", missing)
            self.skipTest(f"SAM-Med3D self-test skipped: {missing}")
        self.setUp()
        self.test_SAMMed3D_clickSegmentsTheClickedSphere()
        self.setUp()
        self.test_SAMMed3D_undoAndOtherSegments()

    def _case(self) -> tuple[Any, Any, Any, Any, list[Any]]:
        from InteractiveSegmentationLogic import InteractiveSegmentationLogic
        from InteractiveSegmentationLogic.testing import add_sphere_volume, bright_spot_model

        volume, centres = add_sphere_volume(slicer.mrmlScene, spheres_ijk=((28.0, 40.0, 14.0), (85.0, 55.0, 22.0)))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        logic = InteractiveSegmentationLogic(model=bright_spot_model(), device="cpu", autoExtend=False)
        return volume, segmentation, logic, segmentation.GetSegmentation(), centres

    def test_SAMMed3D_clickSegmentsTheClickedSphere(self) -> None:
        from InteractiveSegmentationLogic.testing import BRIGHT, centroid_ras, dice, in_window, segment_on_volume

        self.delayDisplay("Click on a sphere of an oblique, anisotropic volume")
        volume, segmentation, logic, seg, centres = self._case()
        segmentId = seg.AddEmptySegment("sphere")
        plus, minus = logic.pointsNodesForSegment(segmentation, segmentId)
        plus.AddControlPoint(*centres[0])
        result = logic.segment(volume, segmentation, segmentId, plus, minus)
        mask = segment_on_volume(segmentation, segmentId, volume)
        sphere = (slicer.util.arrayFromVolume(volume) == BRIGHT) & in_window(volume, centres[0])
        self.assertGreater(result.changedVoxels, 0)
        self.assertGreater(dice(mask, sphere), 0.9)
        self.assertLess(float(abs(centroid_ras(mask, volume) - centres[0]).max()), 1.0)
        self.assertFalse((mask & ~in_window(volume, centres[0])).any(), "voxels written outside the model window")
        self.delayDisplay("Test passed")

    def test_SAMMed3D_undoAndOtherSegments(self) -> None:
        from InteractiveSegmentationLogic.testing import segment_on_volume

        self.delayDisplay("Undo is exact and other segments stay untouched")
        volume, segmentation, logic, seg, centres = self._case()
        first = seg.AddEmptySegment("first")
        plus, minus = logic.pointsNodesForSegment(segmentation, first)
        plus.AddControlPoint(*centres[1])
        logic.segment(volume, segmentation, first, plus, minus)
        firstMask = segment_on_volume(segmentation, first, volume)
        second = logic.addNextSegment(segmentation)
        plus2, minus2 = logic.pointsNodesForSegment(segmentation, second)
        plus2.AddControlPoint(*centres[0])
        logic.segment(volume, segmentation, second, plus2, minus2)
        self.assertTrue((segment_on_volume(segmentation, first, volume) == firstMask).all())
        self.assertGreater(int(segment_on_volume(segmentation, second, volume).sum()), 0)
        self.assertEqual(logic.undo(), second)
        self.assertEqual(int(segment_on_volume(segmentation, second, volume).sum()), 0)
        self.assertEqual(plus2.GetNumberOfControlPoints(), 0)
        self.assertTrue((segment_on_volume(segmentation, first, volume) == firstMask).all())
        self.delayDisplay("Test passed")
