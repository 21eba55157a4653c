"""Editing an existing answer: a mask as the model's dense prompt, local corrections, boxes, locks.

Used by :class:`~SAMMed3DLib.session.Session` when it starts from an existing mask
(:meth:`~SAMMed3DLib.session.Session.set_mask`: a TotalSegmentator or nnU-Net result, a
colleague's segment, an earlier session), when the object is given by a box
(:meth:`~SAMMed3DLib.session.Session.set_box`), and when some voxels are locked
(:meth:`~SAMMed3DLib.session.Session.set_locked`).

* **The mask as dense prompt.** SAM-Med3D's dense prompt is the decoder's own previous
  low-resolution logits (1, 1, 32³ for a 128³ window; raw logits, no sigmoid). An existing mask is
  turned into such logits by :func:`mask_prompt_logits`: the mask is resampled into the window
  (linear, so a voxel holds the fraction of the mask around it), averaged onto the low-resolution
  grid, and the fraction ``f`` mapped piecewise linearly to ``OUTSIDE`` at 0, 0 at 0.5 and
  ``INSIDE`` at 1. The two values are the median decoder logits of the default model outside and
  inside what it segments (measured on held-out CT: about -9 and +2 to +4), so the prompt looks
  like a confident prediction of the model itself.
* **Local corrections.** :func:`keep_clicked_change` keeps, of what a window proposes, only the
  error region the click points at: the voxels a positive click would add (or a negative click
  would remove) that are 26-connected to the click, within a radius that grows with how deep
  the click lies in the error. A click therefore never flips the far side of an organ the
  annotator already got right, and a model that floods cannot flood far. When the proposal hardly
  overlaps the mask (the model does not recognise it as the object), the change is also cut to
  :data:`MAX_CHANGE_FRACTION` of the mask, nearest the click, and so is the ball
  :func:`force_click` sets: a small structure survives a model that floods near it. Local
  corrections suit a near-correct mask, not a rough one: taking the box's mask as the current
  answer and the cvpr25 clicks as local corrections raised Dice on every click but ended at 0.44
  against 0.65 with the clicks decoded with the box (4 held-back cases, 8 structures, seed 0), so
  a box's clicks keep being decoded with it.
* **Boxes.** :class:`Box` is an axis-aligned box in LPS mm (two opposite corners). SAM-Med3D has
  no box embedding, so a box is used as the CVPR 2025 challenge's SAM-Med3D baseline uses it: a
  window centred on the box (seen at a coarser spacing when the box does not fit,
  :func:`box_window_spacing`), a positive click at its centre, and a prediction confined to the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .errors import PromptError
from .geometry import CANONICAL_DIRECTION_LPS, ImageGeometry, Window
from .paste import window_footprint

#: Dense-prompt logit of a low-resolution voxel fully inside the existing mask.
INSIDE_LOGIT = 4.0
#: Dense-prompt logit of a low-resolution voxel fully outside the existing mask.
OUTSIDE_LOGIT = -8.0
#: A local correction also keeps proposed changes that pass this close to the click (mm), so a
#: click on the edge of an error (not exactly inside it) still selects it.
CLICK_REACH_MM = 3.0
#: A local correction changes voxels within DEPTH_FACTOR × (the click's depth in the error) of
#: the click, clipped to [MIN_RADIUS_MM, MAX_RADIUS_MM]. Chosen on four held-back cases (8
#: structures, near-correct masks, clicks at the deepest error voxel): with today's dense prompt
#: 1.5 gives mean Dice +0.003 after one click and +0.006 after three, no structure losing more
#: than 0.001; 4 lost 0.11 on one structure, and no ball at all lost 0.54. The errors of a
#: near-correct mask are thin (the click 1–4 mm deep) and wide, and the default model's proposal,
#: though it covers 40–100% of the clicked error, is wrong on 5–20× as many voxels around it:
#: keeping its change in a band of twice the depth around the mask (radius 8× the depth) lost 0.07
#: after one click, and keeping only what the click itself flips (decoding with and without it) lost 0.03.
#: A model-free "push" (the mask grown, or shrunk, by the click's depth within 4× the depth of
#: it, that component only) gave +0.000 / +0.005 / +0.009 after 1 / 2 / 3 clicks (one structure
#: −0.05 on its first), and the push where the model agrees +0.003 / +0.008 / +0.010 (one −0.02):
#: within the noise of 8 structures for a rule that ignores the image, so not kept. An
#: edge-guided push (the mask grown, or shrunk, in a band of the depth + 2 mm, decided by
#: geodesic image distance to either side, within 6× the depth of the click, 8–30 mm) gave
#: +0.010 / +0.009 / +0.009 on those four cases but +0.002 / -0.005 / -0.012 on 180 tuning
#: structures (worst first click -0.15): it follows real edges (CT spine +0.03, the sarcoma's MR
#: +0.06 after 3 clicks) and pulls atlas parcels, whose borders have no edge, off their truth
#: (AAL -0.017); how much the intensities inside and outside overlap near the click did not tell
#: the two apart (correlation with the gain -0.16), so not kept either.
DEPTH_FACTOR = 1.5
MIN_RADIUS_MM = 4.5
MAX_RADIUS_MM = 60.0
#: The voxels within this distance of a corrective click (at most half its depth) take its label.
FORCE_RADIUS_MM = 3.0
#: The most a corrective click changes, as a fraction of the mask it corrects (its voxels in the
#: block the click's window covers): the model's change when its proposal overlaps the mask by
#: less than :data:`TRUSTED_OVERLAP`, and the ball forced around the click always, each cut to the
#: voxels nearest the click. On structures the model never saw (FreeSurfer
#: subcortical labels and PAM50 cord levels, 61 structures, near-correct masks) its proposal is
#: often a blob many times the structure's size; without the cap the mean Dice fell by 0.046 after
#: one click (6 structures losing more than 0.10, the inferior lateral ventricle 0.83 → 0.03),
#: with the cap (nearest voxels, model's change and forced ball) at a tenth -0.001 / +0.011 / +0.009
#: after 1 / 2 / 3 clicks, no structure losing more than 0.05 (a twentieth: +0.002 / +0.009 /
#: +0.011; a fifth: -0.010 / +0.003 / +0.003). On eight other cases (the model's held-back and
#: training cases, 180 structures) a tenth gave +0.003 / +0.007 / +0.008 against +0.002 / +0.005 /
#: +0.007 without it (worst first click -0.04 against -0.18). Tested on four more unseen cases
#: (117 structures): -0.027 / -0.022 / -0.020 without it (8 structures losing more than 0.10),
#: -0.001 / +0.005 / +0.004 with it (none).
MAX_CHANGE_FRACTION = 0.1
#: The model's change is cut to the budget only when its proposal for the block overlaps the mask
#: before the click by less than this Dice: a proposal that keeps most of the mask shows the model
#: recognises the object, and its change (a leak a third of the mask) is kept whole.
TRUSTED_OVERLAP = 0.5

Slices3 = tuple[slice, slice, slice]


def region_image(block_zyx: np.ndarray, region: Slices3, geometry: ImageGeometry) -> sitk.Image:
    """A (z, y, x) block of the image grid as a SimpleITK image at its place in space."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(block_zyx))
    ijk_to_lps = geometry.ijk_to_lps
    start = np.array([region[2].start, region[1].start, region[0].start], dtype=np.float64)
    out.SetOrigin(tuple(float(v) for v in ijk_to_lps[:3, :3] @ start + ijk_to_lps[:3, 3]))
    out.SetSpacing(tuple(float(v) for v in geometry.spacing_xyz_mm))
    out.SetDirection(tuple(float(v) for v in geometry.direction.reshape(-1)))
    return out


def mask_fraction_in_window(mask_zyx: np.ndarray, geometry: ImageGeometry, window: Window, samples: int | None = None) -> np.ndarray | None:
    """The mask resampled into ``window`` (linear): (n,)³ float32 in tensor order (R, A, S), or None if empty there.

    ``samples`` (n) per side, ``window.size`` by default; fewer sample the same cube more coarsely
    (``window.size`` must be a multiple of n): the dense prompt needs only 2 samples per side of
    its low-resolution voxels (0.01 s instead of 0.1 s a click for 128³).
    """
    region = window_footprint(window, geometry)
    if region is None:
        return None
    block = mask_zyx[region]
    if not block.any():
        return None
    grid = window
    if samples is not None and samples != window.size:
        step = window.size // samples
        shift = window.spacing_mm * (step - 1) / 2.0  # the centre of each step³ block of window voxels
        grid = Window(window.origin_lps + shift * (CANONICAL_DIRECTION_LPS @ np.ones(3)), samples, window.spacing_mm * step)
    resampled = sitk.Resample(
        region_image(block.astype(np.float32), region, geometry),
        grid.to_reference_image(),
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkFloat32,
    )
    return np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))


def fraction_to_logits(fraction: torch.Tensor) -> torch.Tensor:
    """Map mask fractions in [0, 1] to dense-prompt logits: OUTSIDE at 0, 0 at 0.5, INSIDE at 1."""
    f = fraction.clamp(0.0, 1.0)
    return torch.where(f >= 0.5, (f - 0.5) * (2.0 * INSIDE_LOGIT), (0.5 - f) * (2.0 * OUTSIDE_LOGIT))


def mask_prompt_logits(
    mask_zyx: np.ndarray, geometry: ImageGeometry, window: Window, low_res_size: tuple[int, int, int], device: torch.device
) -> torch.Tensor | None:
    """The existing mask as the decoder's dense prompt in ``window``: (1, 1, *low_res_size) logits, or None where it is empty."""
    samples = 2 * low_res_size[0] if window.size % (2 * low_res_size[0]) == 0 else None
    fraction = mask_fraction_in_window(mask_zyx, geometry, window, samples)
    if fraction is None:
        return None
    x = torch.from_numpy(fraction)[None, None]
    low = torch.nn.functional.adaptive_avg_pool3d(x, low_res_size)
    return fraction_to_logits(low).to(device)


def resolve_signed_clicks(signed_clicks: bool | None, model: object) -> bool:
    """Whether a session's clicks change the mask only their way (``Session(signed_clicks=)``): as given, or the model's default.

    A positive click never removes a voxel and a negative one never adds one, in every window
    the click ran; the model still sees every click and decides its windows, only what it
    proposes against the click's sign is not pasted. On by default (None) for a model with a
    fine head (this project's): in the CVPR 2025 protocol on the held-back cases (3 seeds) it
    raised the final Dice from 0.59 to 0.68 (Grow from seeds 0.67), a negative click no longer
    re-growing what it did not point at (the non-enhancing tumour went from 0.01 to 0.44), and
    left the paper protocol where it was (benchmarks/results/signed_clicks_heldout.json). Off
    for official checkpoints, whose masks stay the official pipeline's.
    """
    if signed_clicks is None:
        return bool(getattr(model, "has_fine_head", False))
    if not isinstance(signed_clicks, bool):
        raise TypeError(f"signed_clicks must be True, False or None, got {type(signed_clicks).__name__}")
    return signed_clicks


def keep_clicked_change(
    before: np.ndarray,
    after: np.ndarray,
    click_zyx: np.ndarray,
    positive: bool,
    spacing_zyx: np.ndarray,
    reach_mm: float = CLICK_REACH_MM,
    budget: int | None = None,
) -> np.ndarray:
    """``before`` with only the part of the proposed change that the click points at.

    A positive click only adds voxels, a negative one only removes them. Of the proposed
    additions (removals), the voxels kept are those within a ball around the click whose radius
    scales with how deep the click lies in the error: ``DEPTH_FACTOR`` times the distance from the
    click to the current mask (for a positive click) or to its outside (for a negative one),
    between ``MIN_RADIUS_MM`` and ``MAX_RADIUS_MM``; and of those, the 26-connected components that
    contain the click or pass within ``reach_mm`` of it.

    Args:
        before: (z, y, x) 0/1 block, the mask before the click.
        after: same shape, what the window proposes.
        click_zyx: (3,) the click's continuous index in the block (z, y, x).
        positive: the click's sign.
        spacing_zyx: voxel spacing (mm) of the block's axes.
        reach_mm: changes within this distance of the click count as the clicked ones.
        budget: :func:`change_budget` of ``before``, when the caller has it already (None: computed here).

    Returns:
        A new (z, y, x) uint8 block.
    """
    before_b = before.astype(bool)
    proposal = after.astype(bool) & ~before_b if positive else before_b & ~after.astype(bool)
    out = before.astype(np.uint8, copy=True)
    if not proposal.any():
        return out
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    depth = click_depth(before_b, click_zyx, positive, spacing)
    radius = float(np.clip(DEPTH_FACTOR * depth, MIN_RADIUS_MM, MAX_RADIUS_MM))
    ball = _ball(proposal.shape, click_zyx, spacing, radius)
    if ball is None:
        return out
    box, inside = ball
    local = proposal[box] & inside
    offset = np.array([s.start for s in box], dtype=np.float64)
    near = _ball(local.shape, np.asarray(click_zyx, dtype=np.float64) - offset, spacing, reach_mm)
    if near is None or not (local[near[0]] & near[1]).any():
        return out
    labels, _ = ndimage.label(local, structure=np.ones((3, 3, 3), dtype=bool))
    chosen = np.unique(labels[near[0]][near[1]])
    chosen = chosen[chosen > 0]
    kept = np.isin(labels, chosen)
    budget = change_budget(before_b) if budget is None else budget
    if budget is not None and np.count_nonzero(kept) > budget and _overlap(after.astype(bool), before_b) < TRUSTED_OVERLAP:
        # The model does not see the mask as the object: a bounded change.
        kept = nearest_voxels(kept, np.asarray(click_zyx, dtype=np.float64) - offset, spacing, budget)
    out[box][kept] = 1 if positive else 0
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean blocks (0 when both are empty)."""
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def change_budget(before: np.ndarray) -> int | None:
    """The most voxels one corrective click may change in a block whose mask is ``before``.

    :data:`MAX_CHANGE_FRACTION` of the mask's voxels there (one at least), or None (no bound) when
    the block holds none of the mask: the click then starts a new part of the object, as a click
    of a fresh session would.
    """
    count = int(np.count_nonzero(before))
    return None if count == 0 else max(1, int(MAX_CHANGE_FRACTION * count))


def nearest_voxels(selected: np.ndarray, click_zyx: np.ndarray, spacing_zyx: np.ndarray, budget: int | None) -> np.ndarray:
    """``selected``, or its ``budget`` voxels nearest the click (ties broken by index order) when it has more (None: no bound)."""
    count = int(np.count_nonzero(selected))
    if budget is None or count <= budget:
        return selected
    index = np.nonzero(selected)
    d2 = sum(((i - c) * s) ** 2 for i, c, s in zip(index, click_zyx, spacing_zyx))
    nearest = np.argsort(d2, kind="stable")[:budget]
    out = np.zeros_like(selected)
    out[tuple(i[nearest] for i in index)] = True
    return out


def force_click(block: np.ndarray, click_zyx: np.ndarray, positive: bool, spacing_zyx: np.ndarray, depth_mm: float, budget: int | None = None) -> None:
    """Give the voxels around a click its label, in place: the click is what the user asserts.

    The ball has radius ``min(FORCE_RADIUS_MM, depth_mm / 2)``: half the way to the mask's
    boundary on the click's side, so it never reaches past the error the click is in. Without it,
    a click the model disagrees with changes nothing, and the same click comes again. Of the ball,
    the voxels that would change are cut to ``budget`` (those nearest the click; the caller passes
    the :func:`change_budget` of the mask before the click, None = no cut): a 3 mm ball is most
    of a structure a few voxels thick.
    """
    radius = min(FORCE_RADIUS_MM, depth_mm / 2.0)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    ball = _ball(block.shape, click_zyx, spacing, radius)
    if ball is None:
        return
    box, inside = ball
    value = 1 if positive else 0
    flips = inside & (block[box] != value)
    offset = np.array([s.start for s in box], dtype=np.float64)
    block[box][nearest_voxels(flips, np.asarray(click_zyx, dtype=np.float64) - offset, spacing, budget)] = value


def click_depth(before: np.ndarray, click_zyx: np.ndarray, positive: bool, spacing_zyx: np.ndarray) -> float:
    """How deep (mm) a click lies in the error it points at: its distance to the mask (+) or to the outside (−)."""
    b = before.astype(bool)
    return _depth(b if positive else ~b, click_zyx, np.asarray(spacing_zyx, dtype=np.float64), MAX_RADIUS_MM / DEPTH_FACTOR)


def _depth(target: np.ndarray, click_zyx: np.ndarray, spacing_zyx: np.ndarray, limit_mm: float) -> float:
    """Distance (mm) from the click to the nearest voxel of ``target``, at most ``limit_mm``."""
    ball = _ball(target.shape, click_zyx, spacing_zyx, limit_mm)
    if ball is None:
        return limit_mm
    box, inside = ball
    found = target[box] & inside
    if not found.any():
        return limit_mm
    offset = np.array([s.start for s in box], dtype=np.float64)
    where = np.argwhere(found).astype(np.float64)
    distances = np.sqrt((((where + offset - np.asarray(click_zyx, dtype=np.float64)) * spacing_zyx) ** 2).sum(axis=1))
    return float(min(distances.min(), limit_mm))


def _ball(shape: tuple[int, ...], centre_zyx: np.ndarray, spacing_zyx: np.ndarray, radius_mm: float) -> tuple[Slices3, np.ndarray] | None:
    """(box slices, boolean ball inside the box) of voxels within ``radius_mm`` of a point, or None outside the block."""
    centre = np.asarray(centre_zyx, dtype=np.float64)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    reach = np.ceil(radius_mm / spacing).astype(int)
    nearest = np.round(centre).astype(int)
    lo = np.maximum(nearest - reach, 0)
    hi = np.minimum(nearest + reach + 1, np.asarray(shape))
    if np.any(lo >= hi):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)], indexing="ij", sparse=True)
    ball = sum(g * g for g in grids) <= max(radius_mm, float(spacing.max()) * 0.87) ** 2
    return box, ball  # type: ignore[return-value]


def corner_bounds(corner_a_lps: Any, corner_b_lps: Any) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) LPS corners of the box with these two opposite corners, in any order.

    Raises:
        PromptError: a corner is not 3 finite numbers.
    """
    a, b = lps_point(corner_a_lps, "the first box corner"), lps_point(corner_b_lps, "the second box corner")
    return np.minimum(a, b), np.maximum(a, b)


def lps_point(value: Any, what: str) -> np.ndarray:
    """``value`` as 3 finite LPS coordinates (float64), or :class:`PromptError` naming ``what`` (e.g. "a click")."""
    try:
        point = np.asarray(value, dtype=np.float64).reshape(3)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{what} must be 3 numbers (x, y, z in mm), got {value!r}") from exc
    if not np.all(np.isfinite(point)):
        raise PromptError(f"{what} must be finite, got {point.tolist()}")
    return point


@dataclass(frozen=True, eq=False)
class Box:
    """An axis-aligned 3D box in LPS mm, the object's bounds (``lo`` ≤ ``hi`` componentwise)."""

    lo_lps: np.ndarray
    hi_lps: np.ndarray

    @classmethod
    def from_corners(cls, corner_a_lps: Any, corner_b_lps: Any) -> Box:
        """The box with these two opposite corners (any two, in any order).

        Raises:
            PromptError: a corner is not 3 finite numbers, or the box is flat (zero extent).
        """
        lo, hi = corner_bounds(corner_a_lps, corner_b_lps)
        if np.any(hi - lo <= 0):
            raise PromptError(
                f"the box from {lo.tolist()} to {hi.tolist()} mm is flat (zero extent along an axis): "
                "give two opposite corners of a 3D box"
            )
        lo.setflags(write=False)
        hi.setflags(write=False)
        return cls(lo, hi)

    @property
    def center_lps(self) -> np.ndarray:
        return (self.lo_lps + self.hi_lps) / 2.0

    @property
    def extent_mm(self) -> np.ndarray:
        return self.hi_lps - self.lo_lps

    def as_tuple(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        return tuple(float(v) for v in self.lo_lps), tuple(float(v) for v in self.hi_lps)  # type: ignore[return-value]

    def contains_lps(self, points_lps: np.ndarray, tolerance_mm: float = 1e-6) -> np.ndarray:
        pts = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        return np.all((pts >= self.lo_lps - tolerance_mm) & (pts <= self.hi_lps + tolerance_mm), axis=1)

    def region_mask(self, geometry: ImageGeometry, region: Slices3) -> np.ndarray:
        """Boolean (z, y, x) block of ``region`` (slices with a step sample every step-th voxel): voxel centres inside the box."""
        m = geometry.ijk_to_lps
        k, j, i = (np.arange(s.start, s.stop, s.step or 1, dtype=np.float64) for s in region)
        inside = np.ones((len(k), len(j), len(i)), dtype=bool)
        for axis in range(3):
            coord = (m[axis, 0] * i)[None, None, :] + (m[axis, 1] * j)[None, :, None] + (m[axis, 2] * k + m[axis, 3])[:, None, None]
            inside &= (coord >= self.lo_lps[axis] - 1e-6) & (coord <= self.hi_lps[axis] + 1e-6)
        return inside


#: With ``zoom_in``, a box is seen at the spacing that makes its longest side this fraction of the
#: window's side, when that is finer than the card's (48 voxels of 128: a box under 72 mm at 1.5 mm)...
BOX_ZOOM_IN_FRACTION = 0.375
#: ... and at most this many times finer than the card's spacing.
BOX_ZOOM_IN_LIMIT = 2.0


def box_window_spacing(box: Box, size: int, spacing_mm: float, margin_voxels: int, zoom_in: bool = False) -> float:
    """Spacing of a ``size``³ window centred on ``box`` that holds it ``margin_voxels`` from every face.

    The card's spacing when the box fits; a coarser one (the window zooms out) when it does not.
    With ``zoom_in``, a small box is seen finer, so that its longest side spans
    :data:`BOX_ZOOM_IN_FRACTION` of the window (at most :data:`BOX_ZOOM_IN_LIMIT` times finer than
    the card): the model then sees a small structure at the size it was trained on. The default
    model, trained at 1.5 mm, segmented structures under 40 mm across far better at 0.75 mm
    (README, "Correcting an existing mask, boxes, locked voxels").
    """
    usable = max(size - 1 - 2 * margin_voxels, 1)
    extent = float(np.max(box.extent_mm))
    fitting = max(spacing_mm, extent / usable)
    if not zoom_in or fitting > spacing_mm:
        return float(fitting)
    return float(max(spacing_mm / BOX_ZOOM_IN_LIMIT, min(spacing_mm, extent / (BOX_ZOOM_IN_FRACTION * size))))


#: Default of ``box=`` in ``Session.predict`` and ``Session.set_points``: keep the current box.
KEEP_BOX: Any = object()


def as_box(box: Any) -> Box | None:
    """A :class:`Box` from a Box, two corners, or None."""
    if box is None or isinstance(box, Box):
        return box
    try:
        corner_a, corner_b = box
    except (TypeError, ValueError) as exc:
        raise PromptError(f"a box is two opposite corners ((x, y, z), (x, y, z)) in LPS mm, got {box!r}") from exc
    return Box.from_corners(corner_a, corner_b)


def same_box(a: Box | None, b: Box | None) -> bool:
    """Whether two boxes (or None) are the same."""
    if a is None or b is None:
        return a is b
    return bool(np.array_equal(a.lo_lps, b.lo_lps) and np.array_equal(a.hi_lps, b.hi_lps))
