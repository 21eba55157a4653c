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
- **Writing only what the model decided.** The logic keeps a copy of the session's mask as of
  its last write ("shadow"); an update writes the voxels where the new mask differs from it. So
  only voxels inside the footprint of the windows that ran can change, and an edit the user made
  with another tool survives unless the model changes its mind about that very voxel.
- **Undo.** Every update pushes a record of (segment ID, block extent on the segmentation
  lattice, voxels before, voxels after) for each segment it changed, plus the clicks before and
  after. Undo/redo write those blocks back (bit-exact: same lattice), restore the clicks and step
  the session back/forward so the next click stays decoder-only. The Segment Editor's own undo
  (``saveStateForUndo``) needs the application; headless, this stack is the only undo, and in
  Slicer the widget hooks :attr:`~InteractiveSegmentationLogic.beforeWriteCallback` to also save
  a Segment Editor undo state.
- Names are camelCase here, like Slicer's API (this package lives in the Slicer module folder).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from SAMMed3DLib.errors import ConfigError, SessionStateError
from SAMMed3DLib.geometry import ImageGeometry

from . import labelmaps
from .labelmaps import Extent, Lattice
from .masking import CODE_UNDECIDED, WriteOptions, compose_update
from .mrml_geometry import (
    control_points_world_lps,
    node_label,
    node_to_world_matrix,
    require_in_scene,
    volume_geometry,
    volume_ijk_to_world_ras,
    volume_to_image,
)
from .points import PointsSnapshot, clear_points, ensure_points_nodes, get_points_nodes, order_points, require_positive_point

logger = logging.getLogger(__name__)

#: Undo records kept (each holds only the changed blocks: typically < 1 MB).
MAX_UNDO = 50

ProgressCallback = Callable[[float, float, str], None]


@dataclass
class SegmentResult:
    """What one model update did.

    Attributes:
        segmentId: the segment written.
        changedExtent: inclusive (i0, i1, j0, j1, k0, k1) on the segmentation lattice of the
            voxels that changed in any segment, or None when no voxel changed.
        changedVoxels: number of voxels of the target segment whose value changed.
        latencySeconds: from the start of :meth:`prepare` to the end of :meth:`apply` (for
            :meth:`segment`; the widget measures click to display itself).
        modelSeconds: time spent in the model session (encoder when a window opens, decoder, paste).
        newSession: whether this update started a new session (new volume/segment/model).
        timings: the session's per-step seconds.
    """

    segmentId: str
    changedExtent: Extent | None
    changedVoxels: int
    latencySeconds: float
    modelSeconds: float
    newSession: bool
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class SegmentRequest:
    """Everything :meth:`InteractiveSegmentationLogic.compute` needs, read from MRML on the main thread.

    Arrays: ``startMask`` (k, j, i) uint8 on the volume grid; points (N, 3) LPS mm.
    """

    volumeNode: Any
    segmentationNode: Any
    segmentId: str
    positiveNode: Any
    negativeNode: Any
    options: WriteOptions
    key: tuple
    geometry: ImageGeometry
    volumeIjkToLocal: np.ndarray
    lattice: Lattice
    positiveLps: np.ndarray
    negativeLps: np.ndarray
    pointsBefore: PointsSnapshot
    pointsAfter: PointsSnapshot
    image: sitk.Image | None = None
    startMask: np.ndarray | None = None
    startTime: float = 0.0

    @property
    def newSession(self) -> bool:
        return self.image is not None


@dataclass
class ModelUpdate:
    """The voxels a model update decided, on the volume grid.

    Attributes:
        region: (z, y, x) slices of the volume array holding every decided voxel, or None.
        code: (k, j, i) uint8 on ``region``: 0 not decided, 1 background, 2 object (see masking).
        sessionBefore / sessionAfter: (points (N, 3) LPS, labels (N,)) of the session around the update.
    """

    session: Any
    region: tuple[slice, slice, slice] | None
    code: np.ndarray | None
    sessionBefore: tuple[np.ndarray, np.ndarray]
    sessionAfter: tuple[np.ndarray, np.ndarray]
    modelSeconds: float
    timings: dict[str, float]


@dataclass
class _SegmentChange:
    segmentId: str
    extent: Extent
    before: np.ndarray
    after: np.ndarray


@dataclass
class _UndoRecord:
    segmentationNode: Any
    segmentId: str
    lattice: Lattice
    changes: list[_SegmentChange]
    pointsBefore: PointsSnapshot
    pointsAfter: PointsSnapshot
    session: Any = None
    sessionBefore: tuple[np.ndarray, np.ndarray] | None = None
    sessionAfter: tuple[np.ndarray, np.ndarray] | None = None
    key: tuple | None = None


def _bbox_extent(changed: np.ndarray, extent: Extent) -> Extent | None:
    """Inclusive extent of the True voxels of a (k, j, i) block lying on ``extent``."""
    if not changed.any():
        return None
    bounds = []
    for axis in (2, 1, 0):  # i, j, k
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(changed.any(axis=other))
        bounds += [int(idx[0]), int(idx[-1])]
    return (
        extent[0] + bounds[0], extent[0] + bounds[1],
        extent[2] + bounds[2], extent[2] + bounds[3],
        extent[4] + bounds[4], extent[4] + bounds[5],
    )


def _sub_block(block: np.ndarray, extent: Extent, sub: Extent) -> np.ndarray:
    return block[
        sub[4] - extent[4] : sub[5] - extent[4] + 1,
        sub[2] - extent[2] : sub[3] - extent[2] + 1,
        sub[0] - extent[0] : sub[1] - extent[0] + 1,
    ]


def _union_extent(a: Extent | None, b: Extent | None) -> Extent | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), min(a[4], b[4]), max(a[5], b[5]))


class InteractiveSegmentationLogic:
    """Click-driven SAM-Med3D segmentation of MRML segments, with undo.

    Args:
        model: a registry name (``"default"``, ``"sam_med3d_turbo"``), a checkpoint path, or an
            already built :class:`~SAMMed3DLib.model.Sam3D` (its ``card`` attribute, if any, says
            how to preprocess).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        autoExtend: let the session follow objects larger than one window.
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
        writeOptions: WriteOptions | None = None,
    ) -> None:
        self._modelSpec = model
        self._device = device
        self._model: Any = None
        self._modelGeneration = 0  # part of the session key: a new model means new embeddings
        self._modelLock = threading.Lock()
        self.autoExtend = autoExtend
        self.writeOptions = writeOptions or WriteOptions()
        #: Called with the segmentation node just before any voxel is written (Slicer: save a
        #: Segment Editor undo state). None headless.
        self.beforeWriteCallback: Callable[[Any], None] | None = None
        self._session: Any = None
        self._shadow: np.ndarray | None = None
        self._key: tuple | None = None
        self._undo: list[_UndoRecord] = []
        self._redo: list[_UndoRecord] = []
        self._pointsState: dict[tuple[int, int], PointsSnapshot] = {}
        if not isinstance(model, str):
            self._model = self._placeModel(model)

    # -- model --------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return self._device

    @property
    def modelSpec(self) -> Any:
        """What :meth:`loadModel` loads: a registry name, a checkpoint path, or the Sam3D given."""
        return self._modelSpec

    @property
    def modelLoaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded model, or None before :meth:`loadModel`."""
        return self._model

    def setModel(self, model: Any, device: str | None = None) -> None:
        """Use another model (name, path or Sam3D) or device; the next click starts a new session."""
        with self._modelLock:
            self._modelSpec = model
            if device is not None:
                self._device = device
            self._model = None if isinstance(model, str) else self._placeModel(model)
            self._modelGeneration += 1
        self.endSession()

    def _placeModel(self, model: Any) -> Any:
        import torch

        from SAMMed3DLib.devices import resolve_device
        from SAMMed3DLib.model import Sam3D

        if not isinstance(model, Sam3D):
            raise ConfigError(f"model must be a registry name, a checkpoint path or a Sam3D, got {type(model).__name__}")
        with torch.no_grad():
            return model.to(resolve_device(self._device)).eval()

    def modelNeedsDownload(self) -> bool:
        """Whether loading the model will download it first (a registry model not cached yet)."""
        if self._model is not None or not isinstance(self._modelSpec, str):
            return False
        from SAMMed3DLib.registry import default_registry, is_registered

        if not is_registered(self._modelSpec):
            return False
        registry = default_registry()
        return registry.entry(self._modelSpec).kind != "shipped" and not registry.model_path(self._modelSpec).is_file()

    def loadModel(
        self,
        progressCallback: ProgressCallback | None = None,
        cancelEvent: threading.Event | None = None,
        allowDownload: bool = True,
    ) -> Any:
        """Load the model if needed and return it; a registry model is downloaded on first use.

        Args:
            progressCallback: ``progress(done, total, message)`` (bytes while downloading).
            cancelEvent: set it from another thread to abort a download.
            allowDownload: False refuses to download (the user declined).

        Raises:
            UnknownModelError, CheckpointError, DownloadError, DeviceError: from the core loader.
        """
        with self._modelLock:
            if self._model is None:
                from SAMMed3DLib.checkpoint import load_model
                from SAMMed3DLib.registry import ensure_model, is_registered

                started = time.perf_counter()
                spec = self._modelSpec
                if is_registered(spec):

                    def bytesProgress(done: int, total: int | None) -> None:
                        if progressCallback is not None:
                            progressCallback(float(done), float(total or 0), f"Downloading model {spec}")

                    ensure_model(spec, download=allowDownload, progress=bytesProgress, cancel=cancelEvent)
                if progressCallback is not None:
                    progressCallback(0.0, 0.0, f"Loading model {spec}")
                self._model = load_model(spec, device=self._device)
                logger.info("model %s loaded on %s in %.2f s", spec, self._device, time.perf_counter() - started)
            return self._model

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
        self._shadow = None
        self._key = None

    def _sessionKey(self, volumeNode: Any, geometry: ImageGeometry, segmentationNode: Any, segmentId: str) -> tuple:
        return (
            id(volumeNode),
            volumeNode.GetID(),
            volumeNode.GetImageData().GetMTime(),
            hash(geometry),
            id(segmentationNode),
            segmentationNode.GetID(),
            segmentId,
            self._modelGeneration,
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
    ) -> SegmentRequest:
        """Read what one update needs from MRML (main thread).

        Raises:
            SessionStateError: a node is missing or was removed, or the segment does not exist.
            ImageError: the volume cannot be segmented (see :func:`.mrml_geometry.volume_geometry`).
            PromptError: there is no positive point.
        """
        started = time.perf_counter()
        require_in_scene(volumeNode, "input volume")
        require_in_scene(segmentationNode, "segmentation")
        require_in_scene(positivePointsNode, "positive points")
        labelmaps.require_segment(segmentationNode, segmentId)
        geometry = volume_geometry(volumeNode)
        positive = control_points_world_lps(positivePointsNode, "positive points")
        negative = control_points_world_lps(negativePointsNode, "negative points")
        require_positive_point(positive)
        world_to_local = np.linalg.inv(node_to_world_matrix(segmentationNode, "segmentation"))
        volume_ijk_to_local = world_to_local @ volume_ijk_to_world_ras(volumeNode)
        lattice = labelmaps.segmentation_lattice(segmentationNode, volumeNode)
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
        )
        if self._session is None or key != self._key:
            request.image, _ = volume_to_image(volumeNode)
            full = (0, geometry.size_xyz[0] - 1, 0, geometry.size_xyz[1] - 1, 0, geometry.size_xyz[2] - 1)
            request.startMask = labelmaps.read_segment(segmentationNode, segmentId, volume_ijk_to_local, full)
        return request

    def compute(
        self,
        request: SegmentRequest,
        progressCallback: ProgressCallback | None = None,
        cancelEvent: threading.Event | None = None,
    ) -> ModelUpdate:
        """Run the model on all points of the request (no MRML access; worker thread allowed).

        Raises:
            PromptError: a point lies outside the image.
            DeviceError, CheckpointError, DownloadError: while loading or running the model.
        """
        from SAMMed3DLib.session import Session

        model = self.loadModel(progressCallback, cancelEvent)
        if request.newSession:
            session = Session(model, request.image, auto_extend=self.autoExtend)
            if request.startMask is not None and request.startMask.any():
                session.set_mask(request.startMask)
            self._session, self._shadow, self._key = session, session.mask_array.copy(), request.key
            logger.info("new session for segment %r on a %s volume", request.segmentId, "x".join(map(str, request.geometry.size_xyz)))
        session = self._session
        before = (session.points_lps.copy(), session.labels.copy())
        points, labels = order_points(before[0], before[1], request.positiveLps, request.negativeLps)
        started = time.perf_counter()
        try:
            result = session.predict(points, labels)
        except Exception:
            # the session may hold a partial replay: start over next time rather than guess
            self.endSession()
            raise
        modelSeconds = time.perf_counter() - started
        after = (session.points_lps.copy(), session.labels.copy())
        region, code = None, None
        if result.changed_zyx is not None:
            new = session.mask_array[result.changed_zyx]
            old = self._shadow[result.changed_zyx]  # type: ignore[index]
            changed = new != old
            self._shadow[result.changed_zyx] = new  # type: ignore[index]
            if changed.any():
                extent = labelmaps.region_to_extent(result.changed_zyx)
                tight = _bbox_extent(changed, extent)
                assert tight is not None
                region = labelmaps.extent_to_region(tight)
                sub_changed = _sub_block(changed, extent, tight)
                sub_new = _sub_block(new, extent, tight)
                code = np.where(sub_changed, sub_new + 1, CODE_UNDECIDED).astype(np.uint8)
        return ModelUpdate(session, region, code, before, after, modelSeconds, dict(result.timings))

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
        changes = self._composeChanges(request, update)
        record = _UndoRecord(
            segmentationNode=request.segmentationNode,
            segmentId=request.segmentId,
            lattice=request.lattice,
            changes=changes,
            pointsBefore=request.pointsBefore,
            pointsAfter=request.pointsAfter,
            session=update.session,
            sessionBefore=update.sessionBefore,
            sessionAfter=update.sessionAfter,
            key=request.key,
        )
        self._writeChanges(request.segmentationNode, request.lattice, changes, after=True)
        self._undo.append(record)
        del self._undo[:-MAX_UNDO]
        self._redo.clear()
        self._pointsState[self._pointsKey(request.positiveNode, request.negativeNode)] = request.pointsAfter
        changedExtent = None
        for change in changes:
            changedExtent = _union_extent(changedExtent, change.extent)
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
    ) -> SegmentResult:
        """Run the model on all points of the markups nodes and write the segment.

        Args:
            volumeNode: scalar volume to segment (oblique, anisotropic, under a linear transform: all fine).
            segmentationNode: segmentation holding the segment.
            segmentId: the segment to write.
            positivePointsNode: markups with the "object here" points (world RAS, parent transforms applied).
            negativePointsNode: markups with the "not object here" points, or None.
            options: masking rules for this call (default: :attr:`writeOptions`).

        Returns:
            A :class:`SegmentResult` (changed extent, voxel count, latency).

        Raises:
            SessionStateError, ImageError, PromptError, DeviceError: see :meth:`prepare`,
                :meth:`compute`, :meth:`apply`. No error leaves a half-written segment.
        """
        request = self.prepare(volumeNode, segmentationNode, segmentId, positivePointsNode, negativePointsNode, options)
        update = self.compute(request)
        return self.apply(request, update)

    # -- writing ----------------------------------------------------------------------------------

    def _composeChanges(self, request: SegmentRequest, update: ModelUpdate) -> list[_SegmentChange]:
        if update.region is None or update.code is None:
            return []
        lattice = request.lattice
        src_extent = labelmaps.region_to_extent(update.region)
        block_extent = labelmaps.intersect_extents(
            labelmaps.map_extent(src_extent, request.volumeIjkToLocal, lattice.ijk_to_local), lattice.extent
        )
        if labelmaps.extent_is_empty(block_extent):
            logger.warning("the model's update lies outside the segmentation's reference geometry %s: nothing written", lattice.extent)
            return []
        code = labelmaps.resample_block(update.code, request.volumeIjkToLocal, src_extent, lattice.ijk_to_local, block_extent)
        segmentation = request.segmentationNode.GetSegmentation()
        segment_ids = list(segmentation.GetSegmentIDs())
        visible = self._visibleSegmentIds(request.segmentationNode, segment_ids)
        options = request.options
        others = {
            s: labelmaps.read_segment(request.segmentationNode, s, lattice.ijk_to_local, block_extent)
            for s in options.segments_to_read(request.segmentId, segment_ids, visible)
        }
        intensity = None
        if options.intensityRange is not None:
            import slicer.util

            volume = slicer.util.arrayFromVolume(request.volumeNode)[update.region]
            intensity = labelmaps.resample_block(
                np.ascontiguousarray(volume, dtype=np.float32), request.volumeIjkToLocal, src_extent, lattice.ijk_to_local, block_extent
            )
        target_before = labelmaps.read_segment(request.segmentationNode, request.segmentId, lattice.ijk_to_local, block_extent)
        target_after, others_after = compose_update(code, target_before, others, options, request.segmentId, visible, intensity)
        changes = []
        for segment_id, before, after in [(request.segmentId, target_before, target_after)] + [
            (s, others[s], a) for s, a in others_after.items()
        ]:
            sub = _bbox_extent(before != after, block_extent)
            if sub is not None:
                changes.append(_SegmentChange(segment_id, sub, _sub_block(before, block_extent, sub).copy(), _sub_block(after, block_extent, sub).copy()))
        # other segments lose voxels first, then the target gains them (no transient overlap)
        changes.sort(key=lambda c: c.segmentId == request.segmentId)
        return changes

    @staticmethod
    def _visibleSegmentIds(segmentationNode: Any, segmentIds: list[str]) -> list[str]:
        display = segmentationNode.GetDisplayNode()
        if display is None:
            return list(segmentIds)
        if not display.GetVisibility():
            return []
        return [s for s in segmentIds if display.GetSegmentVisibility(s)]

    def _writeChanges(self, segmentationNode: Any, lattice: Lattice, changes: list[_SegmentChange], after: bool) -> None:
        """Write each change's after (or before) block; on failure put back what was written."""
        if not changes:
            return
        if self.beforeWriteCallback is not None:
            self.beforeWriteCallback(segmentationNode)
        order = changes if after else list(reversed(changes))
        written: list[_SegmentChange] = []
        try:
            for change in order:
                labelmaps.write_segment_block(segmentationNode, change.segmentId, lattice, change.extent, change.after if after else change.before)
                written.append(change)
        except Exception:
            for change in reversed(written):
                try:
                    labelmaps.write_segment_block(
                        segmentationNode, change.segmentId, lattice, change.extent, change.before if after else change.after
                    )
                except Exception:  # already failing: report the first error, log this one
                    logger.exception("could not roll back segment %r after a failed write", change.segmentId)
            raise

    # -- undo / redo ----------------------------------------------------------------------------

    @property
    def canUndo(self) -> bool:
        return bool(self._undo)

    @property
    def canRedo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> str | None:
        """Undo the last update: voxels, clicks and session step. Returns the segment ID, or None.

        Raises:
            SessionStateError: the segmentation of that update was removed from the scene (the
                record is dropped).
        """
        if not self._undo:
            return None
        record = self._undo.pop()
        self._step(record, forward=False)
        self._redo.append(record)
        return record.segmentId

    def redo(self) -> str | None:
        """Redo the last undone update. Returns the segment ID, or None when there is nothing to redo.

        Raises:
            SessionStateError: the segmentation of that update was removed from the scene.
        """
        if not self._redo:
            return None
        record = self._redo.pop()
        self._step(record, forward=True)
        self._undo.append(record)
        return record.segmentId

    def _step(self, record: _UndoRecord, forward: bool) -> None:
        node = record.segmentationNode
        if node.GetScene() is None:
            raise SessionStateError(
                f"the segmentation {node_label(node)} of this step was removed from the scene; it cannot be "
                f"{'redone' if forward else 'undone'}"
            )
        self._writeChanges(node, record.lattice, record.changes, after=forward)
        snapshot = record.pointsAfter if forward else record.pointsBefore
        snapshot.restore()
        self.rememberPoints(snapshot)
        self._syncSession(record, forward)

    def _syncSession(self, record: _UndoRecord, forward: bool) -> None:
        """Step the session to the record's before/after clicks, or drop it if it cannot follow."""
        if record.session is None or record.session is not self._session:
            if record.key is not None and record.key == self._key:
                self.endSession()  # same segment, other session: rebuild it from the voxels
            return
        target = record.sessionAfter if forward else record.sessionBefore
        session = self._session
        step = session.redo if forward else session.undo
        for _ in range(len(self._undo) + len(self._redo) + 64):
            if target is not None and np.array_equal(session.points_lps, target[0]) and np.array_equal(session.labels, target[1]):
                return
            result = step()
            if result is None:
                break
            if result.changed_zyx is not None:
                self._shadow[result.changed_zyx] = session.mask_array[result.changed_zyx]  # type: ignore[index]
        logger.info("the session could not follow this undo/redo step; the next click starts a new session")
        self.endSession()

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
        self._undo.append(_UndoRecord(segmentationNode, segmentId, Lattice(np.eye(4), (0, -1, 0, -1, 0, -1)), [], before, after))
        self._redo.clear()

    def resetSegment(self, segmentationNode: Any, segmentId: str) -> int:
        """Undo every update of the current session on this segment, then clear its clicks.

        Returns:
            The number of updates undone (each can be redone).
        """
        count = 0
        while self._undo and self._undo[-1].session is not None and self._undo[-1].session is self._session and (
            self._undo[-1].segmentationNode is segmentationNode and self._undo[-1].segmentId == segmentId
        ):
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
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment(name)
        self.pointsNodesForSegment(segmentationNode, segmentId, create=True)
        self.endSession()
        return segmentId
