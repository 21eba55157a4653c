"""A window's logits on an oblique image grid: SimpleITK's linear interpolation, in slabs.

When the image's axes are not the window's (a tilted MR acquisition, gantry-tilt CT), the
trilinear interpolation that :mod:`SAMMed3DLib.paste` evaluates at every original voxel centre
does not separate (:mod:`.separable`), and SimpleITK interpolates each voxel. What it costs:

- **Only voxels inside the window are interpolated.** The footprint's bounding box of a tilted
  window holds about twice its voxels (9.2 M against 4.4 M for a 128³ window in a 512×512×200 CT
  tilted by 20°). The logits image is given to SimpleITK *unpadded*: node ``u`` sits at window
  index ``f·(u + 0.5) − 0.5`` (``f = size / L``), so its buffer, ``u ∈ [−0.5, L − 0.5)``, is the
  window, ``[−0.5, size − 0.5)``. Points outside it get the default value without interpolation
  (about a quarter of the cost), and inside it SimpleITK's linear interpolation clamps at the edge
  nodes, which is official SAM-Med3D's ``F.interpolate(align_corners=False)``: the same values as
  the edge-padded image (``Testing/test_paste_oblique.py``).
- **The footprint rule stays the only rule.** Which voxels are inside the window is decided by
  :func:`SAMMed3DLib.paste._row_intervals`, never by SimpleITK's own buffer test, which could
  differ by rounding for a voxel centre on a window face. Along a row the interpolated points
  are monotone, so SimpleITK's inside set of a row is an interval: when both ends of every row's
  interval got a value, every voxel between did; if one did not, that slab is interpolated again
  from the edge-padded image, whose buffer reaches a node beyond the window.
- **Slabs of up to 4 M voxels**, each sampled over the rectangle of its rows inside the window
  (a tilted window's slab is a polygon). A 9 M-voxel float32 result (37 MB) is above glibc's
  largest mmap threshold, so each click paid for fresh zero pages; slabs reuse the heap and bound
  the peak memory.

Other ways measured and not taken (2 threads, the CT above): torch's ``grid_sample`` costs
30 ns a point in 3D and 8-11 ns a point (2 channels) in 2D, with the coordinates still to be
computed; a trilinear gather in torch ~20 ns a voxel; ``scipy.ndimage.affine_transform`` over
100 ns; SimpleITK's nearest neighbour almost as much as its linear interpolation. Deciding voxels
from the signs of the 8 nodes around each window voxel leaves 37 % of them undecided for the
scattered logits of random weights (0.5 % for the default model), and finding each voxel's
window voxel costs more than SimpleITK does. A follow-up click changes every logit (both
models), and bounding each voxel's change by its cell's largest node change leaves 53-91 % of the
voxels of random weights to interpolate again: skipping what a click did not change does not pay.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .geometry import CANONICAL_DIRECTION_LPS, ImageGeometry, Window

#: ITK direction of a window-shaped SimpleITK image whose numpy array (k, j, i) is in tensor
#: order (axis 0, 1, 2): ITK axis i = tensor axis 2 (S), j = axis 1 (A), k = axis 0 (R).
TENSOR_ORDER_ITK_DIRECTION: np.ndarray = CANONICAL_DIRECTION_LPS[:, ::-1].copy()

#: Voxels SimpleITK interpolates per call (a slab of the box): 16 MB of float32, below glibc's
#: largest mmap threshold (32 MB); one call for a whole CT footprint took 10 % more CPU.
SLAB_VOXELS = 4_000_000


def low_res_image(low: np.ndarray, window: Window, padded: bool = True) -> sitk.Image:
    """SimpleITK image of the low-res logits placed as official trilinear upsampling implies.

    Node u (tensor order) sits at window index ``f·(u + 0.5) - 0.5`` with spacing ``f·spacing``,
    ``f = size / L``. Unpadded, the image's buffer is exactly the window; ``padded`` adds one
    edge-replicated node on each side, so that every window point is well inside the buffer.
    SimpleITK's linear interpolation clamps at the buffer's edge, like
    ``F.interpolate(align_corners=False)``, so both give the same values inside the window.
    """
    factor = window.size / low.shape[0]
    pad = 1 if padded else 0
    first_node_index = np.full(3, factor * (-pad + 0.5) - 0.5)
    image = sitk.GetImageFromArray(np.pad(low, 1, mode="edge") if padded else low)
    image.SetSpacing([factor * window.spacing_mm] * 3)
    image.SetOrigin(window.index_to_lps(first_node_index).tolist())
    image.SetDirection(TENSOR_ORDER_ITK_DIRECTION.ravel().tolist())
    return image


def _resample(low_image: sitk.Image, geometry: ImageGeometry, lo_xyz: np.ndarray, hi_xyz: np.ndarray, default: float) -> sitk.Image:
    """SimpleITK's linear interpolation of ``low_image`` at the original voxel centres of an inclusive box."""
    # The output grid is given as parameters, not as a reference image: allocating and zeroing a
    # reference of a CT footprint (4-9 M voxels) cost 15 ms per click.
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(v) for v in hi_xyz - lo_xyz + 1])
    resampler.SetOutputSpacing(geometry.spacing_xyz_mm.tolist())
    resampler.SetOutputDirection(geometry.direction.ravel().tolist())
    resampler.SetOutputOrigin(geometry.index_to_lps(lo_xyz.astype(np.float64)).tolist())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(default)
    return resampler.Execute(low_image)


def sample_box(
    low_image: sitk.Image, geometry: ImageGeometry, lo_xyz: np.ndarray, hi_xyz: np.ndarray, positive_only: bool = False
) -> np.ndarray:
    """Linear interpolation of ``low_image`` at the original voxel centres of an inclusive box.

    Returns (z, y, x) float32 values (0 outside the image's buffer), or with ``positive_only``
    the bool array ``values > 0`` computed on a view of SimpleITK's buffer (no float copy: 30 ms
    saved on a CT footprint).
    """
    sampled = _resample(low_image, geometry, lo_xyz, hi_xyz, 0.0)
    if positive_only:
        return sitk.GetArrayViewFromImage(sampled) > 0  # the view is used while `sampled` lives
    return sitk.GetArrayFromImage(sampled)


def inside_rows(i_lo: np.ndarray, i_hi: np.ndarray, first_i: int, width: int) -> np.ndarray:
    """(nk, nj, width) bool: for each row (k, j), the columns ``first_i + x`` within its inclusive [i_lo, i_hi].

    Three runs a row (before, inside, after) written by one ``np.repeat``: a fifth of the time
    of comparing every column with the row's bounds.
    """
    start = np.clip(i_lo - first_i, 0, width)
    stop = np.maximum(np.clip(i_hi - first_i + 1, 0, width), start)
    counts = np.stack([start, stop - start, width - stop], axis=-1).ravel()
    runs = np.tile(np.array([False, True, False]), start.size)
    return np.repeat(runs, counts).reshape(*start.shape, width)


def positive_inside(
    low: np.ndarray, window: Window, geometry: ImageGeometry, i_lo: np.ndarray, i_hi: np.ndarray, lo_xyz: np.ndarray, hi_xyz: np.ndarray
) -> np.ndarray:
    """(z, y, x) bool over the inclusive box [lo, hi]: interpolated logit > 0, at the voxels inside the window.

    Args:
        low: (L, L, L) finite float32 logits in tensor axis order.
        window, geometry: the window and the original image's grid.
        i_lo, i_hi: (nk, nj) inclusive absolute i-range of the voxel centres inside the window,
            for every row (k, j) of the box (the footprint's rule); empty where ``i_lo > i_hi``.
        lo_xyz, hi_xyz: the box, inclusive ITK indices (i, j, k).

    Returns:
        The decision at every voxel of the box inside the window; values elsewhere in the box
        are unspecified (the caller writes only inside the window).
    """
    lo = np.asarray(lo_xyz, dtype=np.int64)
    hi = np.asarray(hi_xyz, dtype=np.int64)
    shape = (int(hi[2] - lo[2] + 1), int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1))
    start = np.maximum(i_lo, lo[0]) - lo[0]
    stop = np.minimum(i_hi, hi[0]) - lo[0]
    rows = start <= stop
    image = low_res_image(low, window, padded=False)
    positive = np.empty(shape, dtype=bool)
    step = max(1, SLAB_VOXELS // (shape[1] * shape[2]))
    for k0 in range(0, shape[0], step):
        k1 = min(k0 + step, shape[0])
        slab_rows = rows[k0:k1]
        if not slab_rows.any():
            continue
        # The slab's rectangle of rows inside the window: a tilted window's slab is a polygon.
        js = np.flatnonzero(slab_rows.any(axis=0))
        j0, j1 = int(js[0]), int(js[-1]) + 1
        i0, i1 = int(start[k0:k1][slab_rows].min()), int(stop[k0:k1][slab_rows].max()) + 1
        rect_lo = lo + np.array([i0, j0, k0])
        rect_hi = lo + np.array([i1 - 1, j1 - 1, k1 - 1])
        sampled = _resample(image, geometry, rect_lo, rect_hi, float("nan"))
        values = sitk.GetArrayViewFromImage(sampled)  # used while `sampled` lives
        kk, jj = np.nonzero(slab_rows[:, j0:j1])
        row_start, row_stop = start[k0:k1, j0:j1][kk, jj] - i0, stop[k0:k1, j0:j1][kk, jj] - i0
        if np.isnan(values[kk, jj, row_start]).any() or np.isnan(values[kk, jj, row_stop]).any():
            # a voxel centre on a window face, outside SimpleITK's buffer by rounding
            sampled = _resample(low_res_image(low, window, padded=True), geometry, rect_lo, rect_hi, 0.0)
            values = sitk.GetArrayViewFromImage(sampled)
        np.greater(values, 0, out=positive[k0:k1, j0:j1, i0:i1])  # NaN (outside the window) is not positive
        del values, sampled
    return positive
