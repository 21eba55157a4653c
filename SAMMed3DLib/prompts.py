"""Click prompts of one object: validation and the order the session sees them in.

An editor keeps an object's clicks as two sets, the positive and the negative points (Slicer: two
markups nodes). The session needs one ordered list, because its windows' logits are the outcome
of the clicks in order: adding a click costs one decoder pass, while moving or deleting one
means a replay. :func:`order_clicks` keeps the clicks the session already has in its order and
appends the new ones (positives first), so an added point never triggers a replay.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import PromptError


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


def order_clicks(
    previous_lps: np.ndarray,
    previous_labels: np.ndarray,
    positive_lps: np.ndarray,
    negative_lps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """All current clicks in the order the session should see them.

    Clicks equal (same position, same sign) to one the session already has keep the session's
    order; the others follow, positives first. The first click is always positive.

    Args:
        previous_lps: (M, 3) the session's clicks, LPS mm, in order.
        previous_labels: (M,) their labels, 1 positive / 0 negative.
        positive_lps: (P, 3) current positive points, LPS mm.
        negative_lps: (Q, 3) current negative points, LPS mm.

    Returns:
        (P + Q, 3) float64 points and (P + Q,) int64 labels.

    Raises:
        PromptError: there is no positive point.
    """
    positive_lps = np.asarray(positive_lps, dtype=np.float64).reshape(-1, 3)
    negative_lps = np.asarray(negative_lps, dtype=np.float64).reshape(-1, 3)
    require_positive(positive_lps)
    remaining = [(p, 1) for p in positive_lps] + [(p, 0) for p in negative_lps]
    ordered: list[tuple[np.ndarray, int]] = []
    for point, label in zip(np.asarray(previous_lps).reshape(-1, 3), np.asarray(previous_labels).reshape(-1)):
        for i, (candidate, cand_label) in enumerate(remaining):
            if cand_label == int(label) and np.array_equal(candidate, point):
                ordered.append(remaining.pop(i))
                break
    ordered += remaining
    ordered = [ordered[i] for i in positive_first([label for _, label in ordered])]
    points = np.array([p for p, _ in ordered], dtype=np.float64).reshape(-1, 3)
    labels = np.array([label for _, label in ordered], dtype=np.int64)
    return points, labels
