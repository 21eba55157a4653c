"""No stray islands: a click never adds a part of the mask that is far from the object.

A small model trained on few cases often answers a click with the structure under it *and* a few
look-alike blobs centimetres away (another bright vessel, the CSF beside the cord, a neighbouring
nucleus). A user never wants those: they asked for the object they clicked. After each click,
:func:`drop_new_islands` removes the voxels the click added that belong to a part of the mask
which

* does not touch the mask as it was before the click (what the user already accepted, an
  existing mask included), and
* holds no positive click of the object,

where two pieces closer than ``gap_mm`` count as one part, so a tumour made of fragments a few
millimetres apart stays whole. The parts are 26-connected components of the mask after a
separable box dilation by ``gap_mm / 2`` on each axis (cheap: three running maxima), computed in
the block the click changed, plus a one-voxel shell of the mask around it (a piece that goes on
beyond the block touches the mask there).

Off by default (``Session(drop_islands=True)``, ``--drop-islands`` on the command line), because
it helps a model that scatters look-alikes and not one that does not. Measured on structures of
``shared/data/train`` that neither model was trained on (FreeSurfer's subcortical structures, a
spinal cord, a FLAIR lesion: 43 structures; paper protocol, seed 0; README, "Stray islands"):
with the previous default model, mean Dice after 1 / 3 / 5 / 10 clicks 0.079 / 0.135 / 0.161 /
0.236 → 0.110 / 0.152 / 0.193 / 0.267; with the current default (trained on synthetic images
too), 0.125 / 0.263 / 0.338 / 0.429 → 0.126 / 0.256 / 0.325 / 0.403, a loss: its masks rarely
scatter, and what the rule drops is mostly true fragments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Pieces of the mask closer than this (mm) count as one part.
DEFAULT_GAP_MM = 4.0

Slices3 = tuple[slice, slice, slice]


def resolve_drop_islands(drop_islands: bool | None) -> bool:
    """Whether a session drops the islands its clicks add (``Session(drop_islands=)``); None: the default, off for every model."""
    if drop_islands is None:
        return False
    if not isinstance(drop_islands, bool):
        raise TypeError(f"drop_islands must be True, False or None, got {type(drop_islands).__name__}")
    return drop_islands


def _grown(region: Slices3, shape: Sequence[int]) -> Slices3:
    return tuple(slice(max(r.start - 1, 0), min(r.stop + 1, n)) for r, n in zip(region, shape))  # type: ignore[return-value]


def drop_new_islands(
    mask: np.ndarray,
    region: Slices3,
    previous: np.ndarray,
    positive_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    gap_mm: float = DEFAULT_GAP_MM,
) -> int:
    """Clear, in place, the voxels of ``mask[region]`` that form new islands (module docstring); returns how many.

    Args:
        mask: the whole (z, y, x) mask, nonzero = object.
        region: the block the click changed.
        previous: ``mask[region]`` before the click.
        positive_zyx: (N, 3) voxel indices (z, y, x) of the object's positive clicks, whole grid.
        spacing_zyx: voxel spacing in mm.
        gap_mm: pieces closer than this are one part (0: only touching pieces).
    """
    block = mask[region]
    added = (block != 0) & (previous == 0)
    if not added.any():
        return 0
    outer = _grown(region, mask.shape)
    inner = tuple(slice(r.start - o.start, r.stop - o.start) for r, o in zip(region, outer))
    current = mask[outer] != 0
    before = current.copy()  # the shell keeps its voxels: the click changed only the block
    before[inner] = previous != 0
    parts = current.view(np.uint8)
    half = np.floor(0.5 * gap_mm / np.asarray(spacing_zyx, dtype=np.float64)).astype(int)
    for axis, h in enumerate(half):
        if h > 0:
            parts = ndimage.maximum_filter1d(parts, 2 * h + 1, axis=axis)
    labels, count = ndimage.label(parts, structure=np.ones((3, 3, 3), dtype=bool))
    kept = before & current  # what the mask had and still has
    if count <= 1 and kept.any():
        return 0  # one part, and it touches the mask as it was
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[kept])] = True
    start = np.array([o.start for o in outer])
    for p in np.rint(np.asarray(positive_zyx, dtype=np.float64).reshape(-1, 3)).astype(int) - start:
        if np.all(p >= 0) and np.all(p < labels.shape):
            keep[labels[tuple(p)]] = True
    keep[0] = False
    drop = added & ~keep[labels[inner]]
    dropped = int(drop.sum())
    if dropped:
        block[drop] = 0
    return dropped
