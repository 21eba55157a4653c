"""The window spacing an object is seen at: fine first, coarser as its clicks show it is large.

SAM-Med3D sees a 128³ window; at the card's 1.5 mm a 15 mm nucleus or a cord level is ten
voxels across, and this project's models answer a first click with a mask of a fairly constant
size in window voxels, whatever the object's size (on the held-back cases the first mask's extent
did not separate structures under 30 mm from ones over 150 mm). A finer window sees a small
structure at the size the model segments well, and loses large ones it cannot hold. One click says
nothing about the size; the clicks that follow do: a user corrects a mask too small for the object
with positive clicks far from the first.

So an object started from clicks (not an edited mask, not a box) is seen on a ladder of window
spacings (:data:`SCALE_LADDER`, fractions of the card's spacing: 0.75, 1.0, then 1.5 mm for the
default model): at the finest rung whose window holds the positive clicks' spread
(:func:`object_spacing`: the largest side of their bounding box at most :data:`SPREAD_FRACTION`
of the window's width). When a click widens the spread past a rung, the session sees the object
again at the coarser spacing: it replays every click there (cached embeddings are kept), so its
mask is always what the clicks give at the spacing they call for, in whatever order they came, and
an undo returns to the finer one. Measured on the held-back cases in
``benchmarks/results/adaptive_scale_heldout.json``.

No rung is coarser than the card's. A 3.0 mm window (384 mm across) segments large blob-like
objects much better (CT liver 0.45 -> 0.83 after 10 clicks) but thin or fissure-bounded ones
(vessels, lung lobes, the cord) and 70-150 mm organs worse; every rule from the clicks tried for
taking it (a spread past the 1.5 mm window, a click far from all earlier ones, only early in the
object) that raised the structures over 150 mm by 0.08-0.10 after 5 clicks cost 0.006-0.03 after
10 clicks elsewhere, and the strictest that is level elsewhere (a click 86 mm from all earlier
ones) adds only 0.04 there and loses the cord (``benchmarks/results/coarse_rung_long_structures.json``).

Off for official checkpoints (their masks stay the official pipeline's at 1.5 mm) and when a
window spacing is chosen by hand (``--window-spacing``, ``Session(card=with_window_spacing(...))``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Window spacings of an object started from clicks, as fractions of the card's spacing, finest first.
SCALE_LADDER: tuple[float, ...] = (0.5, 2.0 / 3.0, 1.0)
#: A rung holds the object while its positive clicks span at most this fraction of its window's width.
SPREAD_FRACTION = 0.3


def resolve_adaptive_scale(adaptive_scale: bool | None, model: object, card: Any = None) -> bool:
    """Whether a session sees objects fine first (``Session(adaptive_scale=)``): as given, or the model's default.

    On by default (None) for a model with a fine head (this project's); off for official
    checkpoints, whose masks stay the official pipeline's, and when ``card`` (the session's own)
    sets another window spacing than the model's card (a spacing chosen by hand).
    """
    if adaptive_scale is None:
        model_card = getattr(model, "card", None)
        if card is not None and (model_card is None or card.spacing_mm != model_card.spacing_mm):
            return False
        return bool(getattr(model, "has_fine_head", False))
    if not isinstance(adaptive_scale, bool):
        raise TypeError(f"adaptive_scale must be True, False or None, got {type(adaptive_scale).__name__}")
    return adaptive_scale


def object_spacing(points_lps: np.ndarray, labels: np.ndarray, card_spacing_mm: float, window_size: int) -> float:
    """The window spacing (mm) for an object with these clicks: the finest rung that holds its positive clicks.

    Args:
        points_lps: (N, 3) clicks, LPS mm.
        labels: (N,) 1 positive / 0 negative.
        card_spacing_mm: the model card's spacing (the coarsest rung).
        window_size: the window's voxels per side.
    """
    positive = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)[np.asarray(labels) == 1]
    spread = float(np.ptp(positive, axis=0).max()) if len(positive) > 1 else 0.0
    for fraction in SCALE_LADDER[:-1]:
        spacing = card_spacing_mm * fraction
        if spread <= SPREAD_FRACTION * window_size * spacing:
            return spacing
    return card_spacing_mm * SCALE_LADDER[-1]


__all__ = ["SCALE_LADDER", "SPREAD_FRACTION", "object_spacing", "resolve_adaptive_scale"]
