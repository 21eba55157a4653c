"""The voxels of the locked segments on the volume grid, read again only when a segment changed.

Design: "Lock other segments" hands the union of every other segment's voxels to the session
before each click (:meth:`SAMMed3DLib.session.Session.set_locked`). Reading a segment onto the
whole volume grid costs a full resample (tens of ms on a CT, per segment), so
:class:`LockedVoxels` keeps each locked segment's voxels, cropped to their bounding box, with a
stamp of what they were read from: the segment's representations (object and modified time,
its label value in a shared layer) and the grid they were read onto. A click re-reads exactly
the segments whose stamp changed: a Segment Editor stroke, an undo, a new label value, a moved
segmentation or a new volume. Plain numpy + MRML reads, tested on real scenes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import labelmaps
from .labelmaps import Extent


def segment_stamp(segmentation_node: Any, segment_id: str) -> tuple:
    """What a segment's voxels were read from: changes whenever they may have changed.

    Every representation the segment holds (binary labelmap, closed surface, ...) by object and
    modified time (its scalars' modified time too: an array written in place), and its label value.
    """
    segment = labelmaps.require_segment(segmentation_node, segment_id)
    rep_names: list[str] = []
    segment.GetContainedRepresentationNames(rep_names)  # VTK fills the list
    reps: list[tuple] = []
    for name in sorted(rep_names):
        rep = segment.GetRepresentation(name)
        if rep is None:
            continue
        scalars_time = 0
        point_data = rep.GetPointData() if hasattr(rep, "GetPointData") else None
        if point_data is not None and point_data.GetScalars() is not None:
            scalars_time = point_data.GetScalars().GetMTime()
        reps.append((name, rep.GetAddressAsString(rep.GetClassName()), rep.GetMTime(), scalars_time))
    return (segment.GetLabelValue(), segment.GetMTime(), tuple(reps))


class LockedVoxels:
    """Locked segments' voxels on one grid, cached per segment until the segment changes.

    Attributes:
        reads: how many segments were read from MRML so far (the cache's misses).
    """

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[tuple, tuple[slice, ...] | None, np.ndarray | None]] = {}
        self.reads = 0

    def clear(self) -> None:
        self._cache.clear()

    def mask(
        self,
        segmentation_node: Any,
        segment_ids: Sequence[str],
        volume_ijk_to_local: np.ndarray,
        extent: Extent,
    ) -> np.ndarray:
        """The union of the segments' voxels on ``extent`` of the grid, (k, j, i) bool.

        Args:
            segmentation_node: the segmentation holding the segments.
            segment_ids: the locked segments (each must exist).
            volume_ijk_to_local: (4, 4) volume index → segmentation-local RAS.
            extent: inclusive extent of the volume grid (the whole volume).

        Raises:
            SessionStateError: a segment was removed.
        """
        grid = (np.asarray(volume_ijk_to_local, dtype=np.float64).tobytes(), tuple(extent))
        out = np.zeros(labelmaps.extent_shape_zyx(extent), dtype=bool)
        kept = {}
        for segment_id in segment_ids:
            key = (segmentation_node.GetID(), id(segmentation_node), segment_id)
            stamp = (segment_stamp(segmentation_node, segment_id), grid)
            cached = self._cache.get(key)
            if cached is None or cached[0] != stamp:
                voxels = labelmaps.read_segment(segmentation_node, segment_id, volume_ijk_to_local, extent) > 0
                self.reads += 1
                region, crop = _crop(voxels)
                cached = (stamp, region, crop)
            kept[key] = cached
            _, region, crop = cached
            if region is not None:
                out[region] |= crop
        self._cache = kept  # segments no longer locked are forgotten
        return out


def _crop(voxels: np.ndarray) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
    """The bounding box of the set voxels and the voxels inside it (None, None when empty)."""
    if not voxels.any():
        return None, None
    region = []
    for axis in range(voxels.ndim):
        other = tuple(a for a in range(voxels.ndim) if a != axis)
        hit = np.flatnonzero(voxels.any(axis=other))
        region.append(slice(int(hit[0]), int(hit[-1]) + 1))
    box = tuple(region)
    return box, voxels[box].copy()
