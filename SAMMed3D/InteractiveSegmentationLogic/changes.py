"""Segment blocks an update writes: composed under the masking rules, written with rollback.

An update reaches the segmentation as one :class:`SegmentChange` per segment it touches: the
tight inclusive extent on the segmentation's lattice of the voxels whose value changes, with the
voxels before and after. The same records serve the write (after), undo (before) and redo
(after again), bit-exact because the lattice does not change. A failed write puts back the
blocks already written, so no error leaves a half-written segmentation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import labelmaps
from .labelmaps import Extent, Lattice
from .masking import compose_update

logger = logging.getLogger(__name__)


@dataclass
class SegmentChange:
    """One segment's voxels before and after an update, in an inclusive extent of the lattice."""

    segmentId: str
    extent: Extent
    before: np.ndarray
    after: np.ndarray


def bbox_extent(changed: np.ndarray, extent: Extent) -> Extent | None:
    """Inclusive extent of the True voxels of a (k, j, i) block lying on ``extent``."""
    if not changed.any():
        return None
    bounds = []
    for axis in (2, 1, 0):  # i, j, k
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(changed.any(axis=other))
        bounds += [int(idx[0]), int(idx[-1])]
    return (
        extent[0] + bounds[0],
        extent[0] + bounds[1],
        extent[2] + bounds[2],
        extent[2] + bounds[3],
        extent[4] + bounds[4],
        extent[4] + bounds[5],
    )


def sub_block(block: np.ndarray, extent: Extent, sub: Extent) -> np.ndarray:
    """The part of a (k, j, i) block on ``extent`` that lies on ``sub``."""
    return block[
        sub[4] - extent[4] : sub[5] - extent[4] + 1,
        sub[2] - extent[2] : sub[3] - extent[2] + 1,
        sub[0] - extent[0] : sub[1] - extent[0] + 1,
    ]


def union_extent(a: Extent | None, b: Extent | None) -> Extent | None:
    """Smallest extent holding both (None is empty)."""
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), min(a[4], b[4]), max(a[5], b[5]))


def compose_changes(request: Any, update: Any) -> list[SegmentChange]:
    """The blocks an update writes, per segment, after the masking rules.

    Maps the update's decided voxels (:class:`~.logic.ModelUpdate`, volume grid) onto the
    segmentation's lattice, reads the segments the write options involve, applies
    :func:`~.masking.compose_update` and keeps, per segment, the tight block of voxels that
    change. Other segments come first: they lose voxels before the target gains them.
    """
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
    visible = visible_segment_ids(request.segmentationNode, segment_ids)
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
        sub = bbox_extent(before != after, block_extent)
        if sub is not None:
            changes.append(
                SegmentChange(segment_id, sub, sub_block(before, block_extent, sub).copy(), sub_block(after, block_extent, sub).copy())
            )
    # other segments lose voxels first, then the target gains them (no transient overlap)
    changes.sort(key=lambda c: c.segmentId == request.segmentId)
    return changes


def visible_segment_ids(segmentation_node: Any, segment_ids: list[str]) -> list[str]:
    """The segments shown (all of them without a display node)."""
    display = segmentation_node.GetDisplayNode()
    if display is None:
        return list(segment_ids)
    if not display.GetVisibility():
        return []
    return [s for s in segment_ids if display.GetSegmentVisibility(s)]


def write_changes(segmentationNode: Any, lattice: Lattice, changes: list[SegmentChange], after: bool) -> None:
    """Write each change's after (or before, undoing) block; on failure put back what was written."""
    order = changes if after else list(reversed(changes))
    written: list[SegmentChange] = []
    try:
        for change in order:
            labelmaps.write_segment_block(
                segmentationNode, change.segmentId, lattice, change.extent, change.after if after else change.before
            )
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


def blocks_hold(segmentation_node: Any, lattice: Lattice, changes: list[SegmentChange], after: bool) -> bool:
    """Whether every change's block of the segmentation now holds its ``after`` (or ``before``) voxels.

    Read exactly on the lattice the changes were written on; a missing segment holds neither.
    """
    if not changes or segmentation_node.GetScene() is None:
        return False
    segmentation = segmentation_node.GetSegmentation()
    for change in changes:
        if segmentation.GetSegment(change.segmentId) is None:
            return False
        current = labelmaps.read_segment(segmentation_node, change.segmentId, lattice.ijk_to_local, change.extent)
        if not np.array_equal(current, change.after if after else change.before):
            return False
    return True
