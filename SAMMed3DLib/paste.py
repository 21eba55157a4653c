"""From the model's low-res logits back to the original image grid: footprint and paste-back.

Design:

- An original voxel belongs to a :class:`~SAMMed3DLib.geometry.Window` when its *centre* lies in
  the window's half-open index box ``[-0.5, size - 0.5)``. One function (``_row_intervals``)
  decides this for every row of original voxels analytically, so the footprint
  (:func:`window_footprint`), the paste-back (:func:`paste_logits`) and the float logits
  (:func:`resample_logits_to_grid`) all agree voxel for voxel.
- :func:`paste_logits` maps the decoder's low-res logits (``(size/4)``³, or a fine head's
  ``(size/2)``³) back onto the original grid. Official SAM-Med3D upsamples them with ``F.interpolate(trilinear, align_corners=False)``;
  that upsampling equals linear interpolation of the low-res grid whose node ``u`` sits at window
  index ``f·(u + 0.5) - 0.5`` (``f = size / L``), clamped at the border. We interpolate that
  continuous function directly at each original voxel centre, which reproduces the official values
  exactly at window voxel centres and never needs the 128³ intermediate. Only voxels that can
  change are evaluated: trilinear interpolation is a convex combination of the 8 surrounding
  nodes, so (a) no point farther than one low-res cell from a positive node can be positive,
  and (b) on the general path below, blocks of original voxels (~8 mm) whose surrounding nodes
  are all positive are positive without interpolating.
- How the rest is interpolated depends on the image's axes. When they are the window's up to
  order and sign (almost every CT and MR; :mod:`.separable`), the interpolation separates into
  three 1-D ones, three small matrix products: a few ms for a whole CT footprint, thresholded
  straight into the mask. Otherwise (oblique images) SimpleITK interpolates the voxels inside the
  window only, in slabs (:mod:`.oblique`), and one masked copy writes them: ``value`` where
  positive, 0 elsewhere in the window. For the scattered logits of random weights in a window of
  a tilted 512×512×200 CT (4.4 M voxels inside it, 8.9 M in the footprint's box) that is 110 ms
  (157 ms of CPU, 2 threads, a loaded machine), SimpleITK's ~13 ns a voxel most of it; compact or
  sparse logits are interpolated only around their mixed blocks (``benchmarks/window_speed.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import ImageError
from .geometry import CANONICAL_DIRECTION_LPS, ImageGeometry, Window
from .oblique import inside_rows, positive_inside
from .oblique import low_res_image as _low_res_image
from .oblique import sample_box as _sample_box
from .separable import separable_axes, separable_logits

logger = logging.getLogger(__name__)

#: |direction component| below which an axis is treated as exactly parallel to a window face.
_PARALLEL_EPS = 1e-12

SliceZYX = tuple[slice, slice, slice]


def _index_affine(window: Window, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with window_index = A @ index_xyz + c (window index in tensor order)."""
    scale = np.diag(CANONICAL_DIRECTION_LPS) / window.spacing_mm
    a = scale[:, None] * (geometry.direction * geometry.spacing_xyz_mm)
    c = scale * (geometry.origin_lps - window.origin_lps)
    return a, c


def _candidate_box(corners_lps: np.ndarray, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive integer (i, j, k) box of voxel centres within the bounding box of LPS corners, clipped."""
    idx = geometry.lps_to_index(corners_lps)
    lo = np.maximum(np.ceil(idx.min(axis=0) - 1e-9), 0).astype(np.int64)
    hi = np.minimum(np.floor(idx.max(axis=0) + 1e-9), np.asarray(geometry.size_xyz) - 1).astype(np.int64)
    if np.any(hi < lo):
        return None
    return lo, hi


def _row_intervals(
    window: Window, geometry: ImageGeometry, k_values: np.ndarray, j_values: np.ndarray, i_range: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive i-range of voxel centres inside the window, for every row (k, j).

    The single definition of "voxel centre inside the window" used by footprint, paste and
    logits: window index ``w = w0(j, k) + i * a`` must satisfy ``-0.5 <= w < size - 0.5`` on
    all three tensor axes.

    Returns:
        (i_lo, i_hi), int64 arrays of shape (len(k_values), len(j_values)); a row is empty
        where ``i_lo > i_hi``. Results are clipped to ``i_range`` (inclusive).
    """
    a, c = _index_affine(window, geometry)
    kk = k_values.astype(np.float64)[:, None]
    jj = j_values.astype(np.float64)[None, :]
    lo = np.full((kk.shape[0], jj.shape[1]), i_range[0], dtype=np.int64)
    hi = np.full_like(lo, i_range[1])
    low_bound, high_bound = -0.5, window.size - 0.5
    for comp in range(3):
        w0 = c[comp] + a[comp, 1] * jj + a[comp, 2] * kk
        step = a[comp, 0]
        if abs(step) < _PARALLEL_EPS:
            outside = (w0 < low_bound) | (w0 >= high_bound)
            hi = np.where(outside, lo - 1, hi)
            continue
        t_low = (low_bound - w0) / step
        t_high = (high_bound - w0) / step
        if step > 0:  # i >= t_low and i < t_high
            comp_lo = np.ceil(t_low)
            comp_hi = np.ceil(t_high) - 1
        else:  # i <= t_low and i > t_high
            comp_lo = np.floor(t_high) + 1
            comp_hi = np.floor(t_low)
        big = np.iinfo(np.int64).max // 4
        lo = np.maximum(lo, np.clip(comp_lo, -big, big).astype(np.int64))
        hi = np.minimum(hi, np.clip(comp_hi, -big, big).astype(np.int64))
    return lo, hi


@dataclass(frozen=True)
class _Footprint:
    """Footprint box (inclusive ITK indices) and the per-row inside intervals over it."""

    lo_xyz: np.ndarray
    hi_xyz: np.ndarray
    i_lo: np.ndarray  # (nk, nj) absolute i index
    i_hi: np.ndarray

    @property
    def is_box(self) -> bool:
        """Whether every voxel centre of the box is inside the window (a window on an axis-aligned grid)."""
        return bool(np.all(self.i_lo == self.lo_xyz[0]) and np.all(self.i_hi == self.hi_xyz[0]))

    @property
    def slices_zyx(self) -> SliceZYX:
        lo, hi = self.lo_xyz, self.hi_xyz
        return (slice(int(lo[2]), int(hi[2]) + 1), slice(int(lo[1]), int(hi[1]) + 1), slice(int(lo[0]), int(hi[0]) + 1))


def _footprint(window: Window, geometry: ImageGeometry) -> _Footprint | None:
    box = _candidate_box(window.corners_lps(), geometry)
    if box is None:
        return None
    lo, hi = box
    k_values = np.arange(lo[2], hi[2] + 1)
    j_values = np.arange(lo[1], hi[1] + 1)
    i_lo, i_hi = _row_intervals(window, geometry, k_values, j_values, (int(lo[0]), int(hi[0])))
    nonempty = i_lo <= i_hi
    if not nonempty.any():
        return None
    ks = np.flatnonzero(nonempty.any(axis=1))
    js = np.flatnonzero(nonempty.any(axis=0))
    k0, k1, j0, j1 = ks[0], ks[-1], js[0], js[-1]
    i_lo, i_hi, nonempty = i_lo[k0 : k1 + 1, j0 : j1 + 1], i_hi[k0 : k1 + 1, j0 : j1 + 1], nonempty[k0 : k1 + 1, j0 : j1 + 1]
    tight_lo = np.array([i_lo[nonempty].min(), lo[1] + j0, lo[2] + k0], dtype=np.int64)
    tight_hi = np.array([i_hi[nonempty].max(), lo[1] + j1, lo[2] + k1], dtype=np.int64)
    return _Footprint(lo_xyz=tight_lo, hi_xyz=tight_hi, i_lo=i_lo, i_hi=i_hi)


def window_footprint(window: Window, geometry: ImageGeometry) -> SliceZYX | None:
    """Bounding box of the original voxels whose centres lie inside the window.

    Args:
        window: the model window.
        geometry: the original image's grid.

    Returns:
        (z, y, x) slices into the image's SimpleITK numpy array (k, j, i order), or None when
        no voxel centre lies in the window.
    """
    fp = _footprint(window, geometry)
    return None if fp is None else fp.slices_zyx


def window_distance(window: Window, geometry: ImageGeometry, region_zyx: SliceZYX) -> np.ndarray:
    """Chebyshev distance, in window voxels, from the window's centre to every voxel centre of a region.

    A voxel centre lies in the window (the footprint's rule, closed at both faces) exactly where
    the distance is at most ``window.size / 2``. Windows share spacing and axes, so distances to
    different windows compare directly: the smaller one is the window that sees the voxel with
    the most context around it.

    Returns:
        float32 array of the region's (z, y, x) shape.
    """
    a, c = _index_affine(window, geometry)
    k, j, i = (np.arange(s.start, s.stop, dtype=np.float64) for s in region_zyx)
    centre = (window.size - 1) / 2.0
    distance: np.ndarray | None = None
    for axis in range(3):
        offset = np.abs(
            (a[axis, 0] * i).astype(np.float32)[None, None, :]
            + (a[axis, 1] * j).astype(np.float32)[None, :, None]
            + (a[axis, 2] * k + c[axis] - centre).astype(np.float32)[:, None, None]
        )
        distance = offset if distance is None else np.maximum(distance, offset, out=distance)
    assert distance is not None
    return distance


def _low_res_array(low_res_logits: Any, window: Window) -> np.ndarray:
    """(L, L, L) float32 numpy copy of numpy/torch logits; leading singleton dims are dropped."""
    if hasattr(low_res_logits, "detach"):  # torch tensor, possibly on an accelerator
        low_res_logits = low_res_logits.detach().float().cpu().numpy()
    arr = np.asarray(low_res_logits, dtype=np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise ValueError(f"low_res_logits must be a cubic (L, L, L) array (optionally with leading 1s), got shape {np.shape(low_res_logits)}")
    if arr.shape[0] > window.size:
        raise ValueError(f"low_res_logits side {arr.shape[0]} is larger than the window size {window.size}")
    return arr


def _separable(low: np.ndarray, window: Window, geometry: ImageGeometry, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> Any:
    """The logits over the inclusive box [lo, hi] as (z, y, x) torch float32, by :mod:`.separable`; None when it does not apply.

    It applies when the image's axes are the window's up to order and sign and every logit is
    finite (a NaN node would spread through a matrix product; the general path keeps it local).
    """
    a, c = _index_affine(window, geometry)
    axes = separable_axes(a, geometry.size_xyz)
    if axes is None or not np.isfinite(low).all():
        return None
    return separable_logits(low, a, c, axes, window.size / low.shape[0], lo_xyz, hi_xyz)


def _inside_mask(fp: _Footprint, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> np.ndarray:
    """(z, y, x) bool: voxel centres of the inclusive sub-box [lo, hi] (inside fp) that are in the window."""
    rows = _box_rows(fp, lo_xyz, hi_xyz)
    return inside_rows(fp.i_lo[rows], fp.i_hi[rows], int(lo_xyz[0]), int(hi_xyz[0] - lo_xyz[0]) + 1)


def _box_rows(fp: _Footprint, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice]:
    """(k, j) slices of ``fp``'s row intervals that cover the inclusive sub-box [lo, hi]."""
    return (slice(int(lo_xyz[2] - fp.lo_xyz[2]), int(hi_xyz[2] - fp.lo_xyz[2]) + 1), slice(int(lo_xyz[1] - fp.lo_xyz[1]), int(hi_xyz[1] - fp.lo_xyz[1]) + 1))


@dataclass(frozen=True)
class FootprintLogits:
    """Float logits of one window on the original grid, over the window's footprint.

    Attributes:
        slices_zyx: (z, y, x) slices of the footprint in the image's SimpleITK array.
        logits_zyx: float32 array of the footprint's shape (z, y, x): logits linearly interpolated
            at original voxel centres; NaN where the voxel centre is outside the window.
    """

    slices_zyx: SliceZYX
    logits_zyx: np.ndarray

    @property
    def inside_zyx(self) -> np.ndarray:
        """bool (z, y, x): voxel centre lies inside the window."""
        return ~np.isnan(self.logits_zyx)


def resample_logits_to_grid(low_res_logits: Any, window: Window, geometry: ImageGeometry) -> FootprintLogits | None:
    """Interpolate low-res logits at every original voxel centre of the window's footprint.

    Equivalent to official SAM-Med3D's trilinear ``align_corners=False`` upsampling to
    ``size``³ (identical at window voxel centres), continued linearly in between. Costs about
    16 ns per footprint voxel (~160 ms for a 10 M-voxel CT footprint); :func:`paste_logits`
    avoids most of it.

    Args:
        low_res_logits: (L, L, L) float numpy array or torch tensor in tensor axis order
            (leading singleton dimensions such as (1, 1, L, L, L) are accepted).
        window: the window the logits belong to.
        geometry: the original image's grid.

    Returns:
        :class:`FootprintLogits`, or None when the window does not overlap the image.
    """
    low = _low_res_array(low_res_logits, window)
    fp = _footprint(window, geometry)
    if fp is None:
        return None
    fast = _separable(low, window, geometry, fp.lo_xyz, fp.hi_xyz)
    values = fast.numpy() if fast is not None else _sample_box(_low_res_image(low, window), geometry, fp.lo_xyz, fp.hi_xyz)
    if not fp.is_box:
        values[~_inside_mask(fp, fp.lo_xyz, fp.hi_xyz)] = np.nan
    return FootprintLogits(slices_zyx=fp.slices_zyx, logits_zyx=values)


def _positive_box(low: np.ndarray, window: Window, geometry: ImageGeometry, fp: _Footprint) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (i, j, k) box inside ``fp`` outside of which the interpolated logits are <= 0."""
    positive = low > 0
    if not positive.any():
        return None
    nodes = np.argwhere(positive)
    side = low.shape[0]
    factor = window.size / side
    # Any point whose low-res coordinate u lies beyond one cell of the positive nodes interpolates
    # only non-positive nodes (with zero weight on the boundary node).
    u_lo = np.maximum(nodes.min(axis=0) - 1.0, -0.5)
    u_hi = np.minimum(nodes.max(axis=0) + 1.0, side - 0.5)
    w_lo, w_hi = factor * (u_lo + 0.5) - 0.5, factor * (u_hi + 0.5) - 0.5
    corners = np.array([[x, y, z] for x in (w_lo[0], w_hi[0]) for y in (w_lo[1], w_hi[1]) for z in (w_lo[2], w_hi[2])])
    box = _candidate_box(window.index_to_lps(corners), geometry)
    if box is None:
        return None
    lo, hi = np.maximum(box[0], fp.lo_xyz), np.minimum(box[1], fp.hi_xyz)
    if np.any(hi < lo):
        return None
    return lo, hi


#: Physical side (mm) of the blocks of original voxels classified before interpolating.
_BLOCK_MM = 8.0
#: Interpolate only the box of mixed blocks when it holds less than this share of the region.
_MIXED_SHARE_LIMIT = 0.6


def _box_counts(table: np.ndarray, lo: list[np.ndarray], hi: list[np.ndarray]) -> np.ndarray:
    """Counts over inclusive node boxes [lo, hi] (per tensor axis) from a zero-padded 3D prefix-sum table."""
    total = np.zeros(np.broadcast_shapes(*(a.shape for a in lo + hi)), dtype=np.int64)
    for corner in range(8):
        bits = [(corner >> axis) & 1 for axis in range(3)]
        index = tuple(hi[axis] + 1 if bit else lo[axis] for axis, bit in enumerate(bits))
        sign = -1 if (3 - sum(bits)) % 2 else 1
        total += sign * table[index]
    return total


def _classify_blocks(
    low: np.ndarray, window: Window, geometry: ImageGeometry, lo: np.ndarray, hi: np.ndarray
) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """Split the voxel box [lo, hi] into blocks; find blocks that are surely positive or mixed.

    A block is surely positive when every low-res node that can weigh in the interpolation at
    any of its voxel centres is > 0 (then the convex combination is > 0); it is mixed unless all
    those nodes are > 0 or all are <= 0.

    Returns:
        block size (bi, bj, bk) in voxels, and bool arrays (nbk, nbj, nbi): surely positive, mixed.
    """
    side = low.shape[0]
    factor = window.size / side
    # At most the box: a fine image (spacing << _BLOCK_MM) would otherwise expand to blocks far larger than it.
    block = tuple(min(max(1, int(round(_BLOCK_MM / s))), int(hi[axis] - lo[axis] + 1)) for axis, s in enumerate(geometry.spacing_xyz_mm))
    starts = [np.arange(lo[axis], hi[axis] + 1, block[axis]) for axis in range(3)]
    ends = [np.minimum(starts[axis] + block[axis] - 1, hi[axis]) for axis in range(3)]
    shape = (len(starts[2]), len(starts[1]), len(starts[0]))
    a, c = _index_affine(window, geometry)
    node_lo, node_hi = [], []
    for comp in range(3):
        w_min = np.full(shape, c[comp])
        w_max = np.full(shape, c[comp])
        for axis, view in ((0, (None, None, slice(None))), (1, (None, slice(None), None)), (2, (slice(None), None, None))):
            x0, x1 = a[comp, axis] * starts[axis], a[comp, axis] * ends[axis]
            w_min = w_min + np.minimum(x0, x1)[view]
            w_max = w_max + np.maximum(x0, x1)[view]
        u_min, u_max = (w_min + 0.5) / factor - 0.5, (w_max + 0.5) / factor - 0.5
        node_lo.append(np.clip(np.floor(u_min), 0, side - 1).astype(np.int64))
        node_hi.append(np.clip(np.floor(u_max) + 1, 0, side - 1).astype(np.int64))
    table = np.zeros((side + 1,) * 3, dtype=np.int64)
    table[1:, 1:, 1:] = (low <= 0).cumsum(0).cumsum(1).cumsum(2)
    non_positive = _box_counts(table, node_lo, node_hi)
    nodes = np.prod([h - l + 1 for l, h in zip(node_lo, node_hi)], axis=0)
    surely_positive = non_positive == 0
    mixed = ~surely_positive & (non_positive < nodes)
    return block, surely_positive, mixed


def _positive_voxels(
    low: np.ndarray, window: Window, geometry: ImageGeometry, fp: _Footprint, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """(z, y, x) bool over the voxel box [lo, hi]: interpolated logit > 0 at every voxel centre inside the window.

    Values at the box's voxels outside the window are unspecified: :func:`paste_logits` writes
    inside the window only. Blocks whose nodes are all positive, or all non-positive, need no
    interpolation; SimpleITK interpolates the bounding box of each connected group of mixed
    blocks when those boxes are few and small enough to pay off (an object that fills the window:
    160 ms of CPU down to ~25 ms for a 9 M-voxel CT footprint; a few specks: one small box each),
    else every voxel of the box inside the window (:func:`.oblique.positive_inside`).
    """
    fast = _separable(low, window, geometry, lo, hi)
    if fast is not None:  # a few ms for a whole CT footprint: no need to classify blocks
        return (fast > 0).numpy()
    if not np.isfinite(low).all():  # NaN nodes: only the exact interpolation can tell (NaN is not > 0)
        return _sample_box(_low_res_image(low, window), geometry, lo, hi, positive_only=True)
    block, surely_positive, mixed = _classify_blocks(low, window, geometry, lo, hi)
    boxes = _mixed_boxes(mixed, block, lo, hi)
    if boxes is None:
        rows = _box_rows(fp, lo, hi)
        return positive_inside(low, window, geometry, fp.i_lo[rows], fp.i_hi[rows], lo, hi)
    nbk, nbj, nbi = surely_positive.shape
    nk, nj, ni = (int(v) for v in (hi - lo + 1)[::-1])
    expanded = np.broadcast_to(surely_positive[:, None, :, None, :, None], (nbk, block[2], nbj, block[1], nbi, block[0]))
    positive = expanded.reshape(nbk * block[2], nbj * block[1], nbi * block[0])[:nk, :nj, :ni].copy()
    for m_lo, m_hi in boxes:  # boxes may overlap: each interpolates its voxels exactly
        sub = tuple(slice(int(m_lo[axis] - lo[axis]), int(m_hi[axis] - lo[axis]) + 1) for axis in (2, 1, 0))
        rows = _box_rows(fp, m_lo, m_hi)
        positive[sub] = positive_inside(low, window, geometry, fp.i_lo[rows], fp.i_hi[rows], m_lo, m_hi)
    return positive


#: At most this many boxes of mixed blocks are interpolated one by one (SimpleITK: ~0.5 ms a call).
_MAX_MIXED_BOXES = 16


def _mixed_boxes(mixed: np.ndarray, block: tuple[int, int, int], lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Inclusive (i, j, k) voxel boxes covering the mixed blocks, one per connected group; None when interpolating the whole box pays more.

    That is when there are more than :data:`_MAX_MIXED_BOXES` groups or their boxes hold more than
    :data:`_MIXED_SHARE_LIMIT` of the box's voxels (scattered logits: mixed almost everywhere).
    """
    labels, count = ndimage.label(mixed, structure=np.ones((3, 3, 3), dtype=bool))
    if count > _MAX_MIXED_BOXES:
        return None
    size = np.asarray(block)
    boxes = []
    for found in ndimage.find_objects(labels):
        b_lo = np.array([found[2].start, found[1].start, found[0].start])
        b_hi = np.array([found[2].stop, found[1].stop, found[0].stop])
        boxes.append((b_lo * size + lo, np.minimum(b_hi * size + lo - 1, hi)))
    if sum(int(np.prod(b_hi - b_lo + 1)) for b_lo, b_hi in boxes) > _MIXED_SHARE_LIMIT * int(np.prod(hi - lo + 1)):
        return None
    return boxes


def paste_logits(
    low_res_logits: Any, window: Window, geometry: ImageGeometry, mask_zyx: np.ndarray, value: int = 1
) -> SliceZYX | None:
    """Threshold the window's logits onto the original grid, in place, inside the window only.

    For every original voxel whose centre lies inside the window: ``value`` where the linearly
    interpolated logit (see :func:`resample_logits_to_grid`) is > 0, else 0 (NaN logits count as
    not positive). Every other voxel of ``mask_zyx`` keeps its value. All computation happens
    before ``mask_zyx`` is written, so an error leaves it unchanged.

    Args:
        low_res_logits: (L, L, L) float numpy array or torch tensor in tensor axis order (leading
            singleton dimensions accepted), L = size / 4 (decoder) or size / 2 (fine head).
        window: the window the logits belong to.
        geometry: the original image's grid.
        mask_zyx: uint8 array of shape ``geometry.shape_zyx`` (SimpleITK order), modified in place.
        value: label written for positive voxels, 1..255.

    Returns:
        (z, y, x) slices of the footprint (the only region that may have changed), or None when
        the window does not overlap the image (nothing changed).

    Raises:
        ImageError: ``mask_zyx`` does not match the image grid.
        ValueError: bad ``value`` or logits shape.
    """
    if not isinstance(mask_zyx, np.ndarray) or mask_zyx.dtype != np.uint8 or mask_zyx.shape != geometry.shape_zyx:
        raise ImageError(
            f"mask_zyx must be a uint8 numpy array of shape {geometry.shape_zyx} (the image grid, z, y, x), "
            f"got {type(mask_zyx).__name__} {getattr(mask_zyx, 'dtype', '')} {getattr(mask_zyx, 'shape', '')}"
        )
    if isinstance(value, bool) or int(value) != value or not 1 <= int(value) <= 255:
        raise ValueError(f"value must be an integer label in 1..255, got {value!r}")
    low = _low_res_array(low_res_logits, window)
    fp = _footprint(window, geometry)
    if fp is None:
        return None
    # Everything that can fail (SimpleITK, memory) runs before the mask is touched.
    box = _positive_box(low, window, geometry, fp)
    positive = fast = inside = None
    if box is not None:
        # An axis-aligned footprint: the separable logits are thresholded straight into the mask below.
        fast = _separable(low, window, geometry, box[0], box[1]) if fp.is_box else None
        if fast is None:
            positive = _positive_voxels(low, window, geometry, fp, box[0], box[1])
        if not fp.is_box:
            inside = _inside_mask(fp, box[0], box[1])
    logger.debug(
        "paste_logits: footprint %s voxels, interpolated %s near positive logits (%s)",
        int(np.prod(fp.hi_xyz - fp.lo_xyz + 1)),
        0 if box is None else int(np.prod(box[1] - box[0] + 1)),
        "separable" if fast is not None else "general",
    )
    slices = fp.slices_zyx
    region = mask_zyx[slices]
    sub = None
    if box is not None:
        lo, hi = box
        sub = region[
            int(lo[2] - fp.lo_xyz[2]) : int(hi[2] - fp.lo_xyz[2]) + 1,
            int(lo[1] - fp.lo_xyz[1]) : int(hi[1] - fp.lo_xyz[1]) + 1,
            int(lo[0] - fp.lo_xyz[0]) : int(hi[0] - fp.lo_xyz[0]) + 1,
        ]
    if fp.is_box:  # every footprint voxel is inside the window: two plain passes, no masks
        region.fill(0)
        if fast is not None:
            np.greater(fast.numpy(), 0, out=sub.view(np.bool_))
            if value != 1:
                sub *= np.uint8(value)
        elif positive is not None:
            np.multiply(positive, np.uint8(value), out=sub, casting="unsafe")
        return slices
    # 1) Unless the box is the whole footprint, clear the non-zero voxels inside the window (step 2
    # rewrites the box's). Slab by slab: np.nonzero over a 10 M-voxel strided footprint costs 40 ms, slab.any() 10 µs.
    if box is None or not (np.array_equal(box[0], fp.lo_xyz) and np.array_equal(box[1], fp.hi_xyz)):
        i_values = np.arange(fp.lo_xyz[0], fp.hi_xyz[0] + 1)
        for k in range(region.shape[0]):
            slab = region[k]
            if not slab.any():
                continue
            rows = np.flatnonzero(slab.any(axis=1))
            j0, j1 = int(rows[0]), int(rows[-1]) + 1
            row_inside = (i_values[None, :] >= fp.i_lo[k, j0:j1, None]) & (i_values[None, :] <= fp.i_hi[k, j0:j1, None])
            np.copyto(slab[j0:j1], np.uint8(0), where=row_inside)
    # 2) The box's voxels inside the window: the label where the interpolated logits are positive,
    # else 0 (outside the box the interpolation is a convex combination of non-positive nodes).
    if sub is not None and positive is not None:
        np.copyto(sub, positive.view(np.uint8) if value == 1 else positive * np.uint8(value), where=inside)
    return slices
