"""Click prompts of one object: validation and the order the session sees them in.

An editor keeps an object's clicks as two sets, the positive and the negative points (Slicer: two
markups nodes). The session needs one ordered list, because its windows' logits are the outcome
of the clicks in order: adding a click costs one decoder pass, while moving or deleting one
means a replay. :func:`order_clicks` keeps the clicks the session already has in its order and
appends the new ones (positives first), so an added point never triggers a replay.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import PromptError
from .geometry import ImageGeometry, lps_to_ras


_NO_POSITIVE = "no positive (+) point: place a + point inside the structure to segment it"


def require_positive(positive_lps: np.ndarray) -> None:
    """Raise PromptError when there is no positive point (the model needs one to start)."""
    if len(positive_lps) == 0:
        raise PromptError(_NO_POSITIVE)


def positive_first(labels: Sequence[int]) -> list[int]:
    """The order (indices into ``labels``) in which a new object takes its clicks.

    The clicks keep the order given, except that when the first one is negative the first
    positive click moves to the front: a new object starts from a positive click (there is
    nothing a negative one could remove yet).

    Raises:
        PromptError: there is no positive click.
    """
    order = list(range(len(labels)))
    first = next((i for i in order if int(labels[i]) == 1), None)
    if first is None:
        raise PromptError(_NO_POSITIVE)
    return [first] + [i for i in order if i != first] if first else order


def as_points(points_lps: Any) -> np.ndarray:
    """(N, 3) float64 points from anything array-like of N × 3 numbers (N may be 0).

    Raises:
        PromptError: the points are not numbers, or not N × 3.
    """
    try:
        pts = np.asarray(points_lps, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"points must be numbers, N rows of (x, y, z) in mm, got {points_lps!r}") from exc
    if pts.size == 0:
        return pts.reshape(0, 3)
    if pts.ndim == 1 and pts.shape == (3,):
        return pts.reshape(1, 3)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise PromptError(f"points must be N rows of (x, y, z) in mm, i.e. shape (N, 3); got shape {pts.shape}")
    return pts


def as_labels(labels: Sequence[Any] | np.ndarray | None, count: int) -> list[int]:
    """Click labels as ints, each exactly 1 (positive) or 0 (negative), one per point.

    Booleans count as 1/0. Anything else (strings, None, 0.5) is refused rather than rounded.

    Raises:
        PromptError: a label is not 0 or 1, or there are not ``count`` labels.
    """
    if labels is None or isinstance(labels, (str, bytes)):
        raise PromptError(f"labels must be a sequence of 1 (positive) and 0 (negative), one per point; got {labels!r}")
    out: list[int] = []
    for value in np.asarray(labels, dtype=object).reshape(-1):
        if isinstance(value, (bool, np.bool_)):
            out.append(int(value))
        elif isinstance(value, numbers.Real) and not isinstance(value, (str, bytes)) and float(value) in (0.0, 1.0):
            out.append(int(value))
        else:
            raise PromptError(f"labels must be 1 (positive) or 0 (negative), got {value!r}")
    if len(out) != count:
        raise PromptError(f"got {count} points but {len(out)} labels: give one label (1 or 0) per point")
    return out


def order_clicks(
    previous_lps: np.ndarray,
    previous_labels: np.ndarray,
    positive_lps: np.ndarray,
    negative_lps: np.ndarray,
    allow_negative_first: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """All current clicks in the order the session should see them.

    Clicks equal (same position, same sign) to one the session already has keep the session's
    order; the others follow, positives first. The first click is positive unless
    ``allow_negative_first`` (an object that starts from an existing mask or a box, where a
    negative click alone is a valid correction).

    Args:
        previous_lps: (M, 3) the session's clicks, LPS mm, in order.
        previous_labels: (M,) their labels, 1 positive / 0 negative.
        positive_lps: (P, 3) current positive points, LPS mm.
        negative_lps: (Q, 3) current negative points, LPS mm.

    Returns:
        (P + Q, 3) float64 points and (P + Q,) int64 labels.

    Raises:
        PromptError: there is no positive point and ``allow_negative_first`` is False.
    """
    positive_lps = as_points(positive_lps)
    negative_lps = as_points(negative_lps)
    if not allow_negative_first:
        require_positive(positive_lps)
    remaining = [(p, 1) for p in positive_lps] + [(p, 0) for p in negative_lps]
    ordered: list[tuple[np.ndarray, int]] = []
    for point, label in zip(np.asarray(previous_lps).reshape(-1, 3), np.asarray(previous_labels).reshape(-1)):
        for i, (candidate, cand_label) in enumerate(remaining):
            if cand_label == int(label) and np.array_equal(candidate, point):
                ordered.append(remaining.pop(i))
                break
    ordered += remaining
    if not allow_negative_first:
        ordered = [ordered[i] for i in positive_first([label for _, label in ordered])]
    points = np.array([p for p, _ in ordered], dtype=np.float64).reshape(-1, 3)
    labels = np.array([label for _, label in ordered], dtype=np.int64)
    return points, labels


def check_click_labels(labels: Sequence[int], first: bool, points: np.ndarray, box: Any, editing: bool) -> None:
    """Refuse a negative first click of a fresh object (no edited mask, no box) and positive clicks outside ``box``."""
    if first and labels and not labels[0] and not (editing or box is not None):
        raise PromptError(
            "the first click of an object must be positive: click inside the structure first (a negative "
            "click alone is valid only when correcting an existing mask, set_mask, or inside a box, set_box)"
        )
    if box is not None:
        positive = np.asarray(labels, dtype=np.int64) == 1
        if positive.any() and not box.contains_lps(points[positive]).all():
            raise PromptError("a positive click lies outside the object's box: move the box around it (set_box) or clear_box()")


def check_click_point(point: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
    """Return the (3,) LPS ``point`` if it lies inside the image of ``geometry``, else raise :class:`PromptError`."""
    if not geometry.contains_lps(point[None])[0]:
        index = geometry.lps_to_index(point[None])[0]
        raise PromptError(
            f"click at LPS {np.round(point, 2).tolist()} mm (RAS {np.round(lps_to_ras(point), 2).tolist()}, "
            f"voxel {np.round(index, 1).tolist()}) lies outside the image of size {list(geometry.size_xyz)}: "
            "click inside the image (check that points and image share the same coordinate frame)"
        )
    return point
