"""Boundary refinement: the model's mask snapped to the image's edges at the image's own resolution.

The model decides on a coarse grid: the default model's fine head on 64³ cells of 3 mm (its window
is 128³ voxels of 1.5 mm), an official checkpoint on the 1.5 mm window itself. Clinical images come
at 0.5–1 mm in-plane, so a pasted mask is a smooth, slightly misplaced surface that ignores the
edges the image shows. :class:`BoundaryRefinement` lets the image decide a thin band around that
surface, the way Slicer's Grow from seeds decides between seeds:

* voxels of the mask deeper than ``band_mm`` are object seeds, voxels farther than ``band_mm``
  outside it are background seeds; so are the mask's medial voxels inside (and outside) the band,
  so that a part thinner than the band keeps its core (a vessel, a thin gap between two parts);
* the clicks are seeds too: a ball of ``click_radius_mm`` around each positive click is object,
  around each negative click background (a click is what the user asserts);
* every voxel of the band takes the label of the nearer seed set by geodesic distance: a step
  between neighbours costs ``sqrt(h² + (w · ΔI)²)`` mm, with ``h`` the step's length in mm and
  ``w = edge_weight / σ`` (σ the robust spread of the image in the band), so crossing an edge costs
  far more than walking along a homogeneous structure. The distances come from the vectorised
  raster scans of :mod:`.model.geodesic`, with each axis's spacing (anisotropic images are fine);
  the depths that define the band are exact Euclidean distances up to the band, taken as a few
  shifted minima of the block (:func:`_bounded_distance`), not a full distance transform.

Nothing farther than ``band_mm`` from the model's surface changes, except the click balls, so the
refinement cannot flood: it moves the border by at most the band. Measured on the held-back cases
of ``shared/data/train`` (paper protocol, seeds 0–2; README, "Models";
``benchmarks/results/refine_heldout.json``): mean Dice after 3 / 5 / 10 clicks +0.05 / +0.03 /
+0.02 with the default model, NSD (1 mm) after 10 clicks 0.24 → 0.30; a band of 2 or 5 mm and
weights of 3 or 30 (seed 0) did no better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .model.geodesic import UNREACHED, step_costs, sweep

#: Width (mm) of the band on each side of the model's surface that the image decides.
DEFAULT_BAND_MM = 3.0
#: Cost of an intensity step of one robust standard deviation, in mm of path.
DEFAULT_EDGE_WEIGHT = 10.0
#: Radius (mm) of the ball around a click that is seeded with the click's label.
DEFAULT_CLICK_RADIUS_MM = 2.0
#: The geodesic scans follow straight runs of at most this many band widths (see ``_nearer_object``).
SCAN_WINDOW_BANDS = 4

Click = tuple[Sequence[float], bool]


@dataclass(frozen=True)
class BoundaryRefinement:
    """How a pasted mask is refined (see the module docstring).

    Attributes:
        band_mm: half-width of the band the image decides, mm (> 0).
        edge_weight: mm of path an intensity step of one robust standard deviation costs (≥ 0).
        click_radius_mm: radius of the ball seeded around each click, mm (≥ 0; the clicked voxel at least).
        sweeps: raster-scan passes of the geodesic distance (≥ 1; paths across a thin band turn little:
            on the held-back cases 1 pass gave about the same Dice, and saved little time, the distance
            transforms costing more).
    """

    band_mm: float = DEFAULT_BAND_MM
    edge_weight: float = DEFAULT_EDGE_WEIGHT
    click_radius_mm: float = DEFAULT_CLICK_RADIUS_MM
    sweeps: int = 2

    def __post_init__(self) -> None:
        if not (self.band_mm > 0 and self.edge_weight >= 0 and self.click_radius_mm >= 0 and int(self.sweeps) >= 1):
            raise ValueError(
                "boundary refinement needs band_mm > 0, edge_weight >= 0, click_radius_mm >= 0 and sweeps >= 1; got "
                f"{self.band_mm}, {self.edge_weight}, {self.click_radius_mm}, {self.sweeps}"
            )

    def refine(
        self,
        image_zyx: np.ndarray,
        mask_zyx: np.ndarray,
        spacing_zyx: Sequence[float],
        clicks: Sequence[Click] = (),
    ) -> np.ndarray:
        """The refined mask of one block: a new (z, y, x) bool array of ``mask_zyx``'s shape.

        Args:
            image_zyx: the image's voxels on the mask's grid (any real dtype).
            mask_zyx: the mask to refine (nonzero = object).
            spacing_zyx: voxel spacing (z, y, x) in mm.
            clicks: ((z, y, x) voxel index in the block, positive) of the object's clicks; clicks
                outside the block are ignored.
        """
        mask = np.asarray(mask_zyx) != 0
        image = np.asarray(image_zyx)
        if image.shape != mask.shape:
            raise ValueError(f"image block {image.shape} and mask block {mask.shape} differ in shape")
        spacing = np.asarray(spacing_zyx, dtype=np.float64).reshape(3)
        bounds = _bounds(mask)
        if bounds is None:
            return mask.copy()
        margin = np.ceil(self.band_mm / spacing).astype(int) + 2
        crop = tuple(slice(max(a - m, 0), min(b + m, n)) for (a, b), m, n in zip(bounds, margin, mask.shape))
        origin = np.array([s.start for s in crop])
        block = mask[crop]
        obj, bg, undecided = self._seeds(block, spacing)
        for centre, positive in clicks:
            ball = _ball(block.shape, np.asarray(centre, dtype=np.float64) - origin, spacing, self.click_radius_mm)
            if ball is None:
                continue
            (obj if positive else bg)[ball] = True
            (bg if positive else obj)[ball] = False
            undecided[ball] = False
        out = mask.copy()
        if not undecided.any() or not obj.any() or not bg.any():
            out[crop] = np.where(undecided, block, obj)
            return out
        values = image[crop].astype(np.float32)
        out[crop] = np.where(undecided, self._nearer_object(values, obj, bg, undecided, spacing), obj)
        return out

    def _seeds(self, block: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(object seeds, background seeds, undecided band) of a cropped mask.

        Depths are Euclidean distances to the nearest voxel of the other label, exact up to the
        band and infinite beyond it (:func:`_bounded_distance`); beyond the crop nothing is known,
        so a mask cut off by the block's face is not given a border there.
        """
        mask = torch.from_numpy(np.ascontiguousarray(block))
        band = self.band_mm
        # The depth of object voxels (0 on background) and that of background voxels, in one pass.
        depth = _bounded_distance(torch.stack([~mask, mask]), spacing, band)
        sides = torch.stack([mask, ~mask])
        seeds = depth > band
        # The core of a part (or a gap) thinner than the band keeps its side: voxels at least as deep
        # as any within a band's reach. A short bump of the border has deeper voxels nearby and is
        # the image's to decide; a vessel's centreline has none and is narrowed, never erased.
        reach = [int(n) for n in np.ceil(band / spacing).astype(int)]
        seeds |= sides & (depth >= _max_filter(depth, reach))
        obj, bg = seeds[0], seeds[1]
        return obj.numpy(), bg.numpy(), (~(obj | bg)).numpy()

    def _nearer_object(self, values: np.ndarray, obj: np.ndarray, bg: np.ndarray, undecided: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        """True where the object seeds are geodesically nearer than the background seeds."""
        low, high = np.percentile(values[undecided], [25.0, 75.0])
        sigma = float(high - low) / 1.349
        if not sigma > 0:
            sigma = float(np.std(values[undecided]))
        weight = self.edge_weight / sigma if sigma > 0 else 0.0
        image = torch.from_numpy(np.ascontiguousarray(values))[None, None]
        costs = step_costs(image, weight, tuple(float(v) for v in spacing))
        seeds = torch.from_numpy(np.stack([obj, bg]))[None]
        # A band voxel's seeds lie within a band or two; runs of 4 band widths (12 mm) lose no
        # label on the benchmark's masks and save half of the scans' doublings.
        windows = tuple(int(n) for n in SCAN_WINDOW_BANDS * np.ceil(self.band_mm / spacing).astype(int))
        dist = sweep(torch.where(seeds, 0.0, UNREACHED).to(torch.float32), costs, int(self.sweeps), windows)[0]
        return (dist[0] < dist[1]).numpy()


def resolve_refinement(refine: bool | BoundaryRefinement | None, model: object) -> BoundaryRefinement | None:
    """The refinement a session uses: ``refine`` as given, or by default (None) the model's.

    By default a model with a fine head (this project's, whose logits live on 3 mm cells) is
    refined; an official checkpoint is not, so that its masks stay the official pipeline's.
    """
    if refine is None:
        refine = bool(getattr(model, "has_fine_head", False))
    if isinstance(refine, BoundaryRefinement):
        return refine
    if not isinstance(refine, bool):
        raise TypeError(f"refine must be True, False, None or a BoundaryRefinement, got {type(refine).__name__}")
    return BoundaryRefinement() if refine else None


def _bounded_distance(target: torch.Tensor, spacing_zyx: np.ndarray, limit_mm: float) -> torch.Tensor:
    """Euclidean distance (mm) from every voxel to the nearest ``target`` voxel, exact up to ``limit_mm``, inf beyond.

    ``target`` is (..., z, y, x): leading dimensions are independent blocks, ``spacing_zyx`` that
    of the last three axes. The squared distance is a sum over axes, so its minimum over the offsets of a box is taken one
    axis at a time (the separable lower envelope of the distance transforms), restricted to the
    offsets of at most ``limit_mm`` along each axis: every voxel within ``limit_mm`` lies in that
    box. A few shifted minima of the block instead of a full distance transform.
    """
    d = torch.where(target, 0.0, float("inf")).to(torch.float32)
    first = d.dim() - 3
    for axis, step in enumerate(np.asarray(spacing_zyx, dtype=np.float64), start=first):
        n = d.shape[axis]
        out = d.clone()
        for k in range(1, min(int(np.floor(limit_mm / step + 1e-9)), n - 1) + 1):
            cost = float((k * step) ** 2)
            ahead, behind = d.narrow(axis, k, n - k), d.narrow(axis, 0, n - k)
            torch.minimum(out.narrow(axis, k, n - k), behind + cost, out=out.narrow(axis, k, n - k))
            torch.minimum(out.narrow(axis, 0, n - k), ahead + cost, out=out.narrow(axis, 0, n - k))
        d = out
    d = d.sqrt_()
    d[d > limit_mm] = float("inf")
    return d


def _max_filter(values: torch.Tensor, reach: Sequence[int]) -> torch.Tensor:
    """Maximum over the box of ``reach`` voxels on each side along each of the last three axes (within the block), by shifted maxima."""
    out = values
    for axis, r in enumerate(reach, start=values.dim() - 3):
        n = out.shape[axis]
        src, out = out, out.clone()
        for k in range(1, min(int(r), n - 1) + 1):
            torch.maximum(out.narrow(axis, k, n - k), src.narrow(axis, 0, n - k), out=out.narrow(axis, k, n - k))
            torch.maximum(out.narrow(axis, 0, n - k), src.narrow(axis, k, n - k), out=out.narrow(axis, 0, n - k))
    return out


def _bounds(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """[start, stop) of the mask's bounding box along each axis, or None when it is empty."""
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        out.append((int(hit[0]), int(hit[-1]) + 1))
    return out


def _ball(shape: tuple[int, ...], centre: np.ndarray, spacing: np.ndarray, radius_mm: float) -> tuple[np.ndarray, ...] | None:
    """Indices of the voxels of a block within ``radius_mm`` of ``centre`` (the nearest voxel at least), or None outside."""
    nearest = np.rint(centre).astype(int)
    if np.any(nearest < 0) or np.any(nearest >= np.array(shape)):
        return None
    reach = np.floor(radius_mm / spacing).astype(int)
    lo = np.maximum(nearest - reach, 0)
    hi = np.minimum(nearest + reach + 1, np.array(shape))
    grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    inside = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, nearest, spacing)) <= radius_mm**2 + 1e-9
    return tuple(g[inside] for g in grid)
