"""The data one update carries between the logic's steps, and what the history keeps of it.

:class:`SegmentRequest` is what :meth:`~.logic.InteractiveSegmentationLogic.prepare` reads from
MRML on the main thread; :class:`ModelUpdate` what ``compute`` returns from the worker thread
(plain numpy, no MRML); :class:`SegmentResult` what ``apply`` reports; :class:`UndoRecord` the
entry of the one history that undo and redo move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from SAMMed3DLib.geometry import ImageGeometry

from .changes import SegmentChange
from .labelmaps import Extent, Lattice
from .masking import WriteOptions
from .points import PointsSnapshot


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
    session: Any = None  # the session this update continues (None: a new one from image/startMask)
    modelGeneration: int = 0  # the model choice the request was made with
    boxLps: tuple[np.ndarray, np.ndarray] | None = None  # the ROI's two corners, LPS mm
    lockedMask: np.ndarray | None = None  # (k, j, i) voxels of the locked segments on the volume grid

    @property
    def newSession(self) -> bool:
        return self.image is not None


@dataclass
class ModelUpdate:
    """The voxels a model update decided, on the volume grid.

    Attributes:
        region: (z, y, x) slices of the volume array holding every decided voxel, or None.
        code: (k, j, i) uint8 on ``region``: 0 not decided, 1 background, 2 object (see masking).
        sessionBefore / sessionAfter: the session's :class:`~SAMMed3DLib.session.SessionState`
            around the update; maskChange: the session's mask change (None when nothing ran).
    """

    session: Any
    region: tuple[slice, slice, slice] | None
    code: np.ndarray | None
    sessionBefore: Any
    sessionAfter: Any
    maskChange: Any
    modelSeconds: float
    timings: dict[str, float]


@dataclass
class UndoRecord:
    """One step of the editing session's history: segment blocks, points and the session's states."""

    segmentationNode: Any
    segmentId: str
    lattice: Lattice
    changes: list[SegmentChange]
    pointsBefore: PointsSnapshot
    pointsAfter: PointsSnapshot
    session: Any = None
    sessionBefore: Any = None  # SessionState
    sessionAfter: Any = None
    maskChange: Any = None  # the session's MaskChange
    key: tuple | None = None
