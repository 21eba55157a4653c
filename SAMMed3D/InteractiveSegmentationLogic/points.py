"""The clicks of a segment: two markups nodes stored with the segmentation.

Design:

- Each segment's clicks live in two ``vtkMRMLMarkupsFiducialNode`` nodes, one for positive (+,
  green) and one for negative (−, red) points. The segmentation node references them with the
  roles ``SAMMed3DPositivePoints_<segment ID>`` and ``SAMMed3DNegativePoints_<segment ID>`` (the
  ID percent-encoded, because a role must not contain spaces, ``:`` or ``;``). Node references
  are saved with the scene and remapped when a scene is imported, so saving the scene (.mrml +
  .seg.nrrd + .mrk.json) and reloading it keeps every segment's clicks, ready to resume.
  Each points node also carries the attributes ``SAMMed3D.SegmentID`` and ``SAMMed3D.Sign``.
- The order the model sees them in is the session's business
  (:meth:`SAMMed3DLib.session.Session.set_points`): the nodes hold two sets of points.
- :class:`PointsSnapshot` copies control points (node frame, so parent transforms are left alone)
  so undo/redo can put the clicks back together with the voxels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np


logger = logging.getLogger(__name__)

POSITIVE_ROLE_PREFIX = "SAMMed3DPositivePoints_"
NEGATIVE_ROLE_PREFIX = "SAMMed3DNegativePoints_"
SEGMENT_ID_ATTRIBUTE = "SAMMed3D.SegmentID"
SIGN_ATTRIBUTE = "SAMMed3D.Sign"
#: Colours of the point glyphs: green "object here", red "not object here" (RGB 0..1).
POSITIVE_COLOR = (0.15, 0.85, 0.25)
NEGATIVE_COLOR = (0.95, 0.2, 0.2)


def points_role(segment_id: str, positive: bool) -> str:
    """Node reference role under which the segmentation node stores a segment's points node."""
    return (POSITIVE_ROLE_PREFIX if positive else NEGATIVE_ROLE_PREFIX) + quote(segment_id, safe="")


def get_points_nodes(segmentation_node: Any, segment_id: str) -> tuple[Any | None, Any | None]:
    """(positive, negative) points nodes stored with a segment, None where there is none."""
    return (
        segmentation_node.GetNodeReference(points_role(segment_id, True)),
        segmentation_node.GetNodeReference(points_role(segment_id, False)),
    )


def _new_points_node(scene: Any, segmentation_node: Any, segment_id: str, positive: bool) -> Any:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    segment_name = segment.GetName() if segment is not None else segment_id
    sign = "+" if positive else "-"
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{segment_name} {sign} points")
    node.SetAttribute(SEGMENT_ID_ATTRIBUTE, segment_id)
    node.SetAttribute(SIGN_ATTRIBUTE, "positive" if positive else "negative")
    node.SetControlPointLabelFormat(f"{sign}%d")
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetActiveColor(*color)
    segmentation_node.SetNodeReferenceID(points_role(segment_id, positive), node.GetID())
    return node


def ensure_points_nodes(segmentation_node: Any, segment_id: str) -> tuple[Any, Any]:
    """The segment's (positive, negative) points nodes, created and referenced if missing."""
    scene = segmentation_node.GetScene()
    positive, negative = get_points_nodes(segmentation_node, segment_id)
    if positive is None:
        positive = _new_points_node(scene, segmentation_node, segment_id, True)
    if negative is None:
        negative = _new_points_node(scene, segmentation_node, segment_id, False)
    return positive, negative


@dataclass
class PointsSnapshot:
    """Control points of some markups nodes, in each node's own frame.

    Attributes:
        nodes: the markups nodes.
        positions: per node, (N, 3) float64 positions in the node's frame (RAS mm before its
            parent transform).
        labels: per node, the N control point labels.
    """

    nodes: list[Any] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)

    @classmethod
    def take(cls, nodes: list[Any | None]) -> PointsSnapshot:
        snap = cls()
        for node in nodes:
            if node is None or node.GetScene() is None:
                continue
            # Only defined points: the place widget's preview point (the one following the mouse)
            # is not a click, and restoring it as a defined point would add a phantom + point.
            defined = [n for n in range(node.GetNumberOfControlPoints()) if node.GetNthControlPointPositionStatus(n) == node.PositionDefined]
            pos = np.array([node.GetNthControlPointPosition(n) for n in defined], dtype=np.float64).reshape(-1, 3)
            snap.nodes.append(node)
            snap.positions.append(pos)
            snap.labels.append([node.GetNthControlPointLabel(n) for n in defined])
        return snap

    def restore(self) -> None:
        """Put the points back (nodes removed from the scene are skipped; a point being placed is dropped)."""
        for node, pos, labels in zip(self.nodes, self.positions, self.labels):
            if node.GetScene() is None:
                continue
            was = node.StartModify()
            node.RemoveAllControlPoints()
            for p, label in zip(pos, labels):
                node.AddControlPoint(float(p[0]), float(p[1]), float(p[2]), label)
            node.EndModify(was)


    def restore_keeping_new(self, since: PointsSnapshot) -> None:
        """Put these points back, but keep the points placed after ``since`` was taken.

        For an undo made outside the module (the Segment Editor's Ctrl+Z): the user may already
        have placed the next point, which must survive the step back.
        """
        current = PointsSnapshot.take(self.nodes)
        for node, pos, labels in zip(self.nodes, self.positions, self.labels):
            if node.GetScene() is None or node not in current.nodes:
                continue
            now = current.nodes.index(node)
            old = [tuple(p) for p in since.positions[since.nodes.index(node)]] if node in since.nodes else []
            added = []
            for p, label in zip(current.positions[now], current.labels[now]):
                if tuple(p) in old:
                    old.remove(tuple(p))
                else:
                    added.append((p, label))
            was = node.StartModify()
            node.RemoveAllControlPoints()
            for p, label in list(zip(pos, labels)) + added:
                node.AddControlPoint(float(p[0]), float(p[1]), float(p[2]), label)
            node.EndModify(was)


def clear_points(nodes: list[Any | None]) -> None:
    for node in nodes:
        if node is not None and node.GetScene() is not None:
            node.RemoveAllControlPoints()
