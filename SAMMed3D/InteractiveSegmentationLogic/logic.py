"""InteractiveSegmentationLogic: clicks in MRML → SAM-Med3D session → voxels of a segment, undoable.

Design:

- One click costs three steps, so that the Slicer widget can run the model on a worker thread
  while every Qt and MRML call stays on the main thread:

  1. :meth:`InteractiveSegmentationLogic.prepare` (main thread) reads the nodes: it validates them,
     converts the volume to a SimpleITK image in world LPS when a new session is needed, reads the
     segment's voxels to start from, and the control points in world LPS. Returns a
     :class:`SegmentRequest` holding plain numpy/SimpleITK data.
  2. :meth:`~InteractiveSegmentationLogic.compute` (any thread, touches no MRML) runs the core
     :class:`~SAMMed3DLib.session.Session` on all points and returns the voxels the model decided
     in this update (:class:`ModelUpdate`): those whose predicted value changed, all inside the
     footprint of the windows that ran.
  3. :meth:`~InteractiveSegmentationLogic.apply` (main thread) re-checks the nodes (a node deleted
     meanwhile gives a clear :class:`~SAMMed3DLib.errors.SessionStateError`), maps the update onto
     the segmentation's own lattice, applies the masking rules (:mod:`.masking`), writes only the
     changed blocks and pushes an undo record.

  :meth:`~InteractiveSegmentationLogic.segment` chains the three for scripts and tests.
- **A session per (volume, segment).** Switching volume, segment, segmentation, model, or
  editing the volume's voxels or geometry starts a fresh session, seeded with the segment's
  current voxels; clicks on the same segment reuse the cached image embeddings.
- **Writing only what the model decided.** Every session step reports the voxels it changed
  (:class:`~SAMMed3DLib.session.MaskChange`: region, before, after); an update writes exactly the
  voxels whose value changed. So only voxels inside the footprint of the windows that ran can
  change, and an edit the user made with another tool survives unless the model changes its mind
  about that very voxel. The session orders the points itself (:meth:`Session.set_points
  <SAMMed3DLib.session.Session.set_points>`).
- **One history.** The session runs with ``keep_history=False``; this logic owns the history
  (a :class:`~SAMMed3DLib.history.History` of records). Every update pushes a record of (segment
  ID, block extent on the segmentation lattice, voxels before, voxels after) for each segment it
  changed, the clicks before and after, and the session's states before and after with its mask
  change. Undo/redo write those blocks back (bit-exact: same lattice), restore the clicks and put
  the session back with :meth:`Session.restore <SAMMed3DLib.session.Session.restore>`, so the next
  click stays decoder-only. In Slicer the widget hooks
  :attr:`~InteractiveSegmentationLogic.beforeWriteCallback` to also save a Segment Editor undo
  state, so Ctrl+Z there undoes a model update too; :meth:`followOutsideUndo` notices it (the
  update's blocks hold their old voxels again) and moves this history, the clicks and the
  session along, before every update, undo and redo. Headless, this history is the only undo.
- Names are camelCase here, like Slicer's API (this package lives in the Slicer module folder).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from SAMMed3DLib.errors import SessionStateError
from SAMMed3DLib.geometry import ImageGeometry
from SAMMed3DLib.history import History
from SAMMed3DLib.prompts import require_positive

from . import labelmaps
from .labelmaps import Lattice
from .changes import SegmentChange, bbox_extent, blocks_hold, compose_changes, sub_block, union_extent, write_changes
from .locked import LockedVoxels
from .masking import CODE_UNDECIDED, WriteOptions
from .model_holder import ModelHolder, ProgressCallback
from .mrml_geometry import (
    control_points_world_lps,
    node_label,
    node_to_world_matrix,
    require_in_scene,
    roi_world_lps_box,
    volume_geometry,
    volume_ijk_to_world_ras,
    volume_to_image,
)
from .points import PointsSnapshot, clear_points, ensure_points_nodes, get_points_nodes
from .updates import ModelUpdate, SegmentRequest, SegmentResult, UndoRecord

logger = logging.getLogger(__name__)

#: Undo records kept (each holds only the changed blocks: typically < 1 MB).
MAX_UNDO = 50


class InteractiveSegmentationLogic:
    """Click-driven SAM-Med3D segmentation of MRML segments, with undo.

    Args:
        model: a registry name (``"default"``, ``"sam_med3d_turbo"``), a checkpoint path, or an
            already built :class:`~SAMMed3DLib.model.Sam3D` (its ``card`` attribute, if any, says
            how to preprocess).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        autoExtend: let the session follow objects larger than one window.
        refine: snap masks to the image's edges (``Session(refine=...)``); None: the model's
            default (on for this project's models, off for official checkpoints).
        signedClicks: a + point only adds voxels, a − point only removes them
            (``Session(signed_clicks=...)``); None: the model's default, as for ``refine``.
        writeOptions: default masking rules (:class:`~.masking.WriteOptions`); ``segment`` may
            override them per call.

    Thread use: :meth:`prepare`, :meth:`apply`, :meth:`undo`, :meth:`redo` and the point helpers
    touch MRML and belong on the main thread; :meth:`compute` and :meth:`loadModel` touch no
    MRML and may run on one worker thread. The caller runs one step at a time.

    Example:
        >>> logic = InteractiveSegmentationLogic(model="default", device="cpu")
        >>> result = logic.segment(volumeNode, segmentationNode, "Segment_1", plusNode, minusNode)
        >>> logic.undo()
    """

    def __init__(
        self,
        model: Any = "default",
        device: str = "auto",
        *,
        autoExtend: bool = True,
        refine: bool | None = None,
        signedClicks: bool | None = None,
        writeOptions: WriteOptions | None = None,
    ) -> None:
        self._models = ModelHolder(model, device)
        self.autoExtend = autoExtend
        self.refine = refine
        self.signedClicks = signedClicks
        self.writeOptions = writeOptions or WriteOptions()
        #: Called with the segmentation node just before any voxel is written (Slicer: save a
        #: Segment Editor undo state). None headless.
        self.beforeWriteCallback: Callable[[Any], None] | None = None
        self._session: Any = None
        self._key: tuple | None = None
        self._history: History[UndoRecord] = History(limit=MAX_UNDO)
        self._pointsState: dict[tuple[int, int], PointsSnapshot] = {}
        #: The locked segments' voxels, cached per segment until it changes (its ``reads`` count the misses).
        self.lockedVoxels = LockedVoxels()

    # -- model (see ModelHolder) ------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self._models.device

    @property
    def modelSpec(self) -> Any:
        """What :meth:`loadModel` loads: a registry name, a checkpoint path, or the Sam3D given."""
        return self._models.spec

    @property
    def modelLoaded(self) -> bool:
        return self._models.model is not None

    @property
    def model(self) -> Any:
        """The loaded model, or None before :meth:`loadModel`."""
        return self._models.model

    def setModel(self, model: Any, device: str | None = None) -> None:
        """Use another model (name, path or Sam3D) or device; the next click starts a new session."""
        self._models.choose(model, device)
        self.endSession()

    def modelNeedsDownload(self) -> bool:
        """Whether loading the model will download it first (a registry model not cached yet)."""
        return self._models.needs_download()

    def loadModel(
        self,
        progressCallback: ProgressCallback | None = None,
        cancelEvent: threading.Event | None = None,
        allowDownload: bool = True,
    ) -> Any:
        """Load the model if needed and return it (see :meth:`.model_holder.ModelHolder.load`)."""
        return self._models.load(progressCallback, cancelEvent, allowDownload)

    # -- points ---------------------------------------------------------------------------------

    def pointsNodesForSegment(self, segmentationNode: Any, segmentId: str, create: bool = True) -> tuple[Any, Any]:
        """The (positive, negative) markups nodes stored with a segment (created when missing).

        Also remembers their current points, so that undoing the next update restores exactly
        these points.
        """
        require_in_scene(segmentationNode, "segmentation")
        labelmaps.require_segment(segmentationNode, segmentId)
        nodes = ensure_points_nodes(segmentationNode, segmentId) if create else get_points_nodes(segmentationNode, segmentId)
        self._rememberPoints(nodes[0], nodes[1])
        return nodes

    def rememberPoints(self, snapshot: PointsSnapshot) -> None:
        """Take ``snapshot`` as the clicks before the next update of its nodes (for undo).

        The widget takes a snapshot when it shows a segment's points before this logic exists
        (PyTorch not yet installed) and hands it over here.
        """
        if snapshot.nodes:
            negative = snapshot.nodes[1] if len(snapshot.nodes) > 1 else None
            self._pointsState[self._pointsKey(snapshot.nodes[0], negative)] = snapshot

    def _pointsKey(self, positiveNode: Any, negativeNode: Any) -> tuple[int, int]:
        return (id(positiveNode), id(negativeNode))

    def _rememberPoints(self, positiveNode: Any, negativeNode: Any) -> PointsSnapshot:
        snap = PointsSnapshot.take([positiveNode, negativeNode])
        self._pointsState[self._pointsKey(positiveNode, negativeNode)] = snap
        return snap

    # -- session --------------------------------------------------------------------------------

    @property
    def session(self) -> Any:
        """The current core session (None before the first click or after :meth:`endSession`)."""
        return self._session

    def endSession(self) -> None:
        """Forget the current session (cached embeddings included); the next click starts afresh."""
        self._session = None
        self._key = None

    def closeScene(self) -> None:
        """The scene is closing: end the session and forget the history (its nodes are going away)."""
        self.endSession()
        self._history.clear()
        self._pointsState.clear()
        self.lockedVoxels.clear()

    def _sessionKey(self, volumeNode: Any, geometry: ImageGeometry, segmentationNode: Any, segmentId: str) -> tuple:
        return (
            id(volumeNode),
            volumeNode.GetID(),
            volumeNode.GetImageData().GetMTime(),
            hash(geometry),
            id(segmentationNode),
            segmentationNode.GetID(),
            segmentId,
            self._models.generation,
        )

    # -- one update: prepare / compute / apply ----------------------------------------------------

    def prepare(
        self,
        volumeNode: Any,
        segmentationNode: Any,
        segmentId: str,
        positivePointsNode: Any,
        negativePointsNode: Any | None = None,
        options: WriteOptions | None = None,
        roiNode: Any | None = None,
    ) -> SegmentRequest:
        """Read what one update needs from MRML (main thread).

        A segment that already has voxels is the current answer: the points refine it, and
        negative points alone are a valid correction. ``roiNode`` (a markups ROI) gives the
        object's box (:meth:`SAMMed3DLib.session.Session.set_box`); the voxels of the locked
        segments (``options.lockedSegmentIds``) are handed to the session so that the model's
        mask leaves them out.

        Raises:
            SessionStateError: a node is missing or was removed, or the segment does not exist.
            ImageError: the volume cannot be segmented (see :func:`.mrml_geometry.volume_geometry`),
                or the segmentation's geometry does not overlap it.
            PromptError: there is no positive point, and the segment is empty and there is no box.
        """
        started = time.perf_counter()
        require_in_scene(volumeNode, "input volume")
        require_in_scene(segmentationNode, "segmentation")
        require_in_scene(positivePointsNode, "positive points")
        labelmaps.require_segment(segmentationNode, segmentId)
        self.followOutsideUndo()
        geometry = volume_geometry(volumeNode)
        positive = control_points_world_lps(positivePointsNode, "positive points")
        negative = control_points_world_lps(negativePointsNode, "negative points")
        box = roi_world_lps_box(roiNode, "box ROI")
        if box is None and len(negative) == 0:
            require_positive(positive)
        world_to_local = np.linalg.inv(node_to_world_matrix(segmentationNode, "segmentation"))
        volume_ijk_to_local = world_to_local @ volume_ijk_to_world_ras(volumeNode)
        lattice = labelmaps.segmentation_lattice(segmentationNode, volumeNode)
        labelmaps.require_overlap(lattice, volume_ijk_to_local, geometry.size_xyz, segmentationNode, volumeNode)
        key = self._sessionKey(volumeNode, geometry, segmentationNode, segmentId)
        pointsKey = self._pointsKey(positivePointsNode, negativePointsNode)
        after = PointsSnapshot.take([positivePointsNode, negativePointsNode])
        before = self._pointsState.get(pointsKey, after)
        request = SegmentRequest(
            volumeNode=volumeNode,
            segmentationNode=segmentationNode,
            segmentId=segmentId,
            positiveNode=positivePointsNode,
            negativeNode=negativePointsNode,
            options=options or self.writeOptions,
            key=key,
            geometry=geometry,
            volumeIjkToLocal=volume_ijk_to_local,
            lattice=lattice,
            positiveLps=positive,
            negativeLps=negative,
            pointsBefore=before,
            pointsAfter=after,
            startTime=started,
            session=self._session if key == self._key else None,
            modelGeneration=self._models.generation,
            boxLps=box,
        )
        full = (0, geometry.size_xyz[0] - 1, 0, geometry.size_xyz[1] - 1, 0, geometry.size_xyz[2] - 1)
        if request.session is None:
            request.image, _ = volume_to_image(volumeNode)
            request.startMask = labelmaps.read_segment(segmentationNode, segmentId, volume_ijk_to_local, full)
        editing = request.session.editing if request.session is not None else bool(request.startMask.any())  # type: ignore[union-attr]
        if len(positive) == 0 and box is None and not editing:
            require_positive(positive)  # negative points alone correct an existing segment only
        locked = [s for s in request.options.lockedSegmentIds if s != segmentId and segmentationNode.GetSegmentation().GetSegment(s)]
        if locked:  # re-read only the locked segments that changed since the last click
            request.lockedMask = self.lockedVoxels.mask(segmentationNode, locked, volume_ijk_to_local, full)
        return request

    def compute(
        self,
        request: SegmentRequest,
        progressCallback: ProgressCallback | None = None,
        cancelEvent: threading.Event | None = None,
    ) -> ModelUpdate:
        """Run the model on all points of the request (no MRML access; worker thread allowed).

        The main thread may change the model or end the session meanwhile: this update runs on
        the session (and model) it was prepared for, and a session it starts is kept only if the
        model choice is still the one the request was made with.

        Raises:
            PromptError: a point lies outside the image.
            DeviceError, CheckpointError, DownloadError: while loading or running the model.
        """
        from SAMMed3DLib.session import Session

        model = self.loadModel(progressCallback, cancelEvent)
        session = request.session
        if session is None:
            session = Session(
                model, request.image, auto_extend=self.autoExtend, keep_history=False, refine=self.refine, signed_clicks=self.signedClicks
            )
            if request.startMask is not None and request.startMask.any():
                session.set_mask(request.startMask)
            if request.modelGeneration == self._models.generation:
                self._session, self._key = session, request.key
            logger.info("new session for segment %r on a %s volume", request.segmentId, "x".join(map(str, request.geometry.size_xyz)))
        before = session.state()
        started = time.perf_counter()
        try:
            session.set_locked(request.lockedMask)
            result = session.set_points(request.positiveLps, request.negativeLps, box=request.boxLps)
        except Exception:
            # the session may hold a partial replay: start over next time rather than guess
            if self._session is session:
                self.endSession()
            raise
        modelSeconds = time.perf_counter() - started
        region, code = None, None
        change = result.change
        if change is not None:
            changed = change.before != change.after
            extent = labelmaps.region_to_extent(change.region)
            tight = bbox_extent(changed, extent)
            if tight is not None:
                region = labelmaps.extent_to_region(tight)
                sub_new = sub_block(change.after, extent, tight)
                code = np.where(sub_block(changed, extent, tight), sub_new + 1, CODE_UNDECIDED).astype(np.uint8)
        return ModelUpdate(session, region, code, before, session.state(), change, modelSeconds, dict(result.timings))

    def apply(self, request: SegmentRequest, update: ModelUpdate) -> SegmentResult:
        """Write a computed update into the segment (main thread) and push an undo record.

        Raises:
            SessionStateError: a node or the segment was removed since :meth:`prepare`; the
                segmentation is left untouched and the next click starts a new session.
        """
        try:
            require_in_scene(request.volumeNode, "input volume")
            require_in_scene(request.segmentationNode, "segmentation")
            labelmaps.require_segment(request.segmentationNode, request.segmentId)
        except SessionStateError:
            self.endSession()
            raise
        changes = compose_changes(request, update)
        record = UndoRecord(
            segmentationNode=request.segmentationNode,
            segmentId=request.segmentId,
            lattice=request.lattice,
            changes=changes,
            pointsBefore=request.pointsBefore,
            pointsAfter=request.pointsAfter,
            session=update.session,
            sessionBefore=update.sessionBefore,
            sessionAfter=update.sessionAfter,
            maskChange=update.maskChange.packed() if update.maskChange is not None else None,  # ~1 bit a voxel, zlib
            key=request.key,
        )
        self._writeChanges(request.segmentationNode, request.lattice, changes, after=True)
        self._history.push(record)
        self._pointsState[self._pointsKey(request.positiveNode, request.negativeNode)] = request.pointsAfter
        changedExtent = None
        for change in changes:
            changedExtent = union_extent(changedExtent, change.extent)
        target = next((c for c in changes if c.segmentId == request.segmentId), None)
        changedVoxels = int(np.count_nonzero(target.before != target.after)) if target is not None else 0
        latency = time.perf_counter() - request.startTime if request.startTime else 0.0
        logger.info(
            "segment %r updated: %d voxels changed in %.3f s (model %.3f s)", request.segmentId, changedVoxels, latency, update.modelSeconds
        )
        return SegmentResult(request.segmentId, changedExtent, changedVoxels, latency, update.modelSeconds, request.newSession, update.timings)

    def segment(
        self,
        volumeNode: Any,
        segmentationNode: Any,
        segmentId: str,
        positivePointsNode: Any,
        negativePointsNode: Any | None = None,
        options: WriteOptions | None = None,
        roiNode: Any | None = None,
    ) -> SegmentResult:
        """Run the model on all points of the markups nodes and write the segment.

        Args:
            volumeNode: scalar volume to segment (oblique, anisotropic, under a linear transform: all fine).
            segmentationNode: segmentation holding the segment.
            segmentId: the segment to write.
            positivePointsNode: markups with the "object here" points (world RAS, parent transforms applied).
            negativePointsNode: markups with the "not object here" points, or None.
            options: masking rules for this call (default: :attr:`writeOptions`).
            roiNode: a markups ROI giving the object's box, or None.

        Returns:
            A :class:`SegmentResult` (changed extent, voxel count, latency).

        Raises:
            SessionStateError, ImageError, PromptError, DeviceError: see :meth:`prepare`,
                :meth:`compute`, :meth:`apply`. No error leaves a half-written segment.
        """
        request = self.prepare(volumeNode, segmentationNode, segmentId, positivePointsNode, negativePointsNode, options, roiNode)
        update = self.compute(request)
        return self.apply(request, update)

    def _writeChanges(self, segmentationNode: Any, lattice: Lattice, changes: list[SegmentChange], after: bool) -> None:
        if changes and self.beforeWriteCallback is not None:
            self.beforeWriteCallback(segmentationNode)
        write_changes(segmentationNode, lattice, changes, after)

    # -- undo / redo ----------------------------------------------------------------------------

    @property
    def canUndo(self) -> bool:
        return self._history.can_undo

    @property
    def canRedo(self) -> bool:
        return self._history.can_redo

    def historyStep(self, forward: bool = False) -> tuple[Any, str, bool] | None:
        """(segmentation, segment ID, writes voxels) of the step :meth:`undo` (or :meth:`redo`) would move, or None."""
        record = self._history.upcoming() if forward else self._history.last()
        return None if record is None else (record.segmentationNode, record.segmentId, bool(record.changes))

    def undo(self) -> str | None:
        """Undo the last update: voxels, clicks and session step. Returns the segment ID, or None.

        Raises:
            SessionStateError: the segmentation of that update was removed from the scene (the
                record is dropped).
        """
        self.followOutsideUndo()
        record = self._history.undo()
        if record is None:
            return None
        self._stepOrDiscard(record, forward=False)
        return record.segmentId

    def redo(self) -> str | None:
        """Redo the last undone update. Returns the segment ID, or None when there is nothing to redo.

        Raises:
            SessionStateError: the segmentation of that update was removed from the scene.
        """
        self.followOutsideUndo()
        record = self._history.redo()
        if record is None:
            return None
        self._stepOrDiscard(record, forward=True)
        return record.segmentId

    def followOutsideUndo(self) -> int:
        """Move this history along with an undo or redo made elsewhere (the Segment Editor's Ctrl+Z / Ctrl+Y).

        The widget saves a Segment Editor undo state before every write, so the Segment Editor can
        undo a model update by restoring the segmentation. When the last update's blocks hold
        their voxels from before it, that update was undone outside: this history steps back too,
        putting back its clicks and the session's state (the voxels are already there), so the
        next click continues from where the user went back to. The same for a redo. Called before
        every update, undo and redo.

        Returns:
            Steps followed: negative for undone, positive for redone, 0 when nothing moved.
        """
        moved = 0
        while (record := self._history.last()) is not None and blocks_hold(record.segmentationNode, record.lattice, record.changes, after=False):
            self._history.undo()
            self._step(record, forward=False, writeVoxels=False)
            moved -= 1
        while moved == 0 and (record := self._history.upcoming()) is not None and blocks_hold(record.segmentationNode, record.lattice, record.changes, after=True):
            self._history.redo()
            self._step(record, forward=True, writeVoxels=False)
            moved += 1
        if moved:
            logger.info("followed %d %s made outside the module", abs(moved), "undo step(s)" if moved < 0 else "redo step(s)")
        return moved

    def _stepOrDiscard(self, record: UndoRecord, forward: bool) -> None:
        try:
            self._step(record, forward)
        except SessionStateError:
            self._history.discard(record)  # its segmentation is gone: the step cannot come back
            raise

    def _step(self, record: UndoRecord, forward: bool, writeVoxels: bool = True) -> None:
        node = record.segmentationNode
        if node.GetScene() is None:
            raise SessionStateError(
                f"the segmentation {node_label(node)} of this step was removed from the scene; it cannot be "
                f"{'redone' if forward else 'undone'}"
            )
        if writeVoxels:
            self._writeChanges(node, record.lattice, record.changes, after=forward)
        snapshot = record.pointsAfter if forward else record.pointsBefore
        if writeVoxels:
            snapshot.restore()
        else:  # followed from outside: points placed since then stay
            snapshot.restore_keeping_new(since=record.pointsBefore if forward else record.pointsAfter)
        self.rememberPoints(snapshot)
        self._moveSession(record, forward)

    def _moveSession(self, record: UndoRecord, forward: bool) -> None:
        """Put the session where the record's step left it (before or after), or drop it."""
        if record.session is None or record.session is not self._session:
            if record.key is not None and record.key == self._key:
                self.endSession()  # same segment, other session: rebuild it from the voxels
            return
        change = record.maskChange.unpacked() if hasattr(record.maskChange, "unpacked") else record.maskChange
        state = record.sessionAfter if forward else record.sessionBefore
        if change is None:
            self._session.restore(state)
        else:
            self._session.restore(state, change.region, change.after if forward else change.before)

    # -- buttons ----------------------------------------------------------------------------------

    def clearPoints(self, segmentationNode: Any, segmentId: str) -> None:
        """Remove the segment's clicks and end the session; the voxels stay. Undoable."""
        require_in_scene(segmentationNode, "segmentation")
        positive, negative = get_points_nodes(segmentationNode, segmentId)
        before = PointsSnapshot.take([positive, negative])
        clear_points([positive, negative])
        after = PointsSnapshot.take([positive, negative])
        self._pointsState[self._pointsKey(positive, negative)] = after
        self.endSession()
        self._history.push(UndoRecord(segmentationNode, segmentId, Lattice(np.eye(4), (0, -1, 0, -1, 0, -1)), [], before, after))

    def resetSegment(self, segmentationNode: Any, segmentId: str) -> int:
        """Undo every update of the current session on this segment, then clear its clicks.

        Returns:
            The number of updates undone (each can be redone).
        """
        count = 0
        while True:
            last = self._history.last()
            if last is None or last.session is None or last.session is not self._session:
                break
            if last.segmentationNode is not segmentationNode or last.segmentId != segmentId:
                break
            self.undo()
            count += 1
        positive, negative = get_points_nodes(segmentationNode, segmentId)
        clear_points([positive, negative])
        self._rememberPoints(positive, negative)
        self.endSession()
        return count

    def addNextSegment(self, segmentationNode: Any, name: str = "") -> str:
        """Add an empty segment (the previous ones are kept), with its points nodes; returns its ID."""
        require_in_scene(segmentationNode, "segmentation")
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", name)  # (ID, name): Slicer picks the ID
        self.pointsNodesForSegment(segmentationNode, segmentId, create=True)
        self.endSession()
        return segmentId
