"""A window's logits on an image grid whose axes are the window's, up to order and sign.

The window's tensor axes run toward patient R, A, S (:class:`~SAMMed3DLib.geometry.Window`).
Almost every CT and MR volume is stored with a direction that is a signed permutation of those
axes (axial, coronal or sagittal acquisitions, flipped or not); only oblique ones are not. Then
the window index along each tensor axis depends on one image index only, and the trilinear
interpolation of the low-res logits that :mod:`SAMMed3DLib.paste` evaluates at every original
voxel centre separates into three 1-D two-tap linear interpolations. They are written here as
three small matrix products (torch, so they use the session's threads): for the 4.4 M voxels of
a window's footprint in a 512×512×200 CT at 0.8×0.8×2.5 mm this costs a few milliseconds
instead of the ~90 ms of SimpleITK's general interpolation (``benchmarks/window_speed.py``).

The values are those of the general path (:func:`SAMMed3DLib.paste.resample_logits_to_grid`):
node ``u`` of the low-res grid sits at window index ``f·(u + 0.5) − 0.5`` (``f = size / L``) and
the interpolation is clamped at the border, which is official SAM-Med3D's
``F.interpolate(trilinear, align_corners=False)`` at window voxel centres and its linear
continuation elsewhere. They agree to float32 rounding (``Testing/test_paste_fast.py``).
"""

from __future__ import annotations

import numpy as np

#: An image axis may drift off the window axis it follows by at most this many window voxels
#: over the whole image (direction cosines of 1e-7 from a DICOM header stay within it) for the
#: separable path; the off-axis part is taken at the middle of the box, so the values differ from
#: the general path's by less than this shift of the logits: below float32 resolution of a
#: window index.
AXIS_DRIFT_LIMIT = 1e-4


def separable_axes(index_affine: np.ndarray, size_xyz: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """For each tensor axis, the image axis (0 = i, 1 = j, 2 = k) it follows; None for an oblique grid.

    Args:
        index_affine: (3, 3) ``A`` of ``window_index = A @ index_xyz + c`` (row = tensor axis).
        size_xyz: the image's size, which bounds how far an off-axis term can drift.
    """
    a = np.abs(np.asarray(index_affine, dtype=np.float64))
    extent = np.asarray(size_xyz, dtype=np.float64)
    axes = []
    for t in range(3):
        p = int(np.argmax(a[t]))
        if a[t, p] == 0.0 or any(a[t, q] * extent[q] > AXIS_DRIFT_LIMIT for q in range(3) if q != p):
            return None
        axes.append(p)
    return tuple(axes) if sorted(axes) == [0, 1, 2] else None  # type: ignore[return-value]


def interpolation_matrix(window_index: np.ndarray, side: int, factor: float) -> np.ndarray:
    """(n, side) float32 weights of linear interpolation of ``side`` nodes at window indices.

    Node ``u`` sits at window index ``factor·(u + 0.5) − 0.5``; beyond the first and last node
    the value is clamped (edge replication), as in ``F.interpolate(align_corners=False)``.
    Every row has at most two non-zero weights, summing to 1.
    """
    u = np.clip((np.asarray(window_index, dtype=np.float64) + 0.5) / factor - 0.5, 0.0, side - 1.0)
    u0 = np.minimum(np.floor(u).astype(np.int64), max(side - 2, 0))
    u1 = np.minimum(u0 + 1, side - 1)
    frac = u - u0
    weights = np.zeros((len(u), side), dtype=np.float64)
    rows = np.arange(len(u))
    np.add.at(weights, (rows, u0), 1.0 - frac)
    np.add.at(weights, (rows, u1), frac)
    return weights.astype(np.float32)


def separable_logits(
    low: np.ndarray,
    index_affine: np.ndarray,
    index_offset: np.ndarray,
    axes: tuple[int, int, int],
    factor: float,
    lo_xyz: np.ndarray,
    hi_xyz: np.ndarray,
):  # -> torch.Tensor (torch is imported here only: this module is importable without it)
    """Interpolated logits at every original voxel centre of the inclusive box [lo, hi].

    Args:
        low: (L, L, L) finite float32 logits in tensor axis order.
        index_affine, index_offset: ``A`` and ``c`` of ``window_index = A @ index_xyz + c``.
        axes: :func:`separable_axes` of ``A``.
        factor: window voxels per low-res node (``size / L``).
        lo_xyz, hi_xyz: the box, inclusive ITK indices (i, j, k).

    Returns:
        (nk, nj, ni) float32 torch tensor, the box in the image's (z, y, x) array order.
    """
    import torch

    side = low.shape[0]
    lo = np.asarray(lo_xyz, dtype=np.int64)
    hi = np.asarray(hi_xyz, dtype=np.int64)
    middle = (lo + hi) / 2.0
    matrices = {}
    for t, p in enumerate(axes):
        n = np.arange(lo[p], hi[p] + 1, dtype=np.float64)
        off_axis = sum(index_affine[t, q] * middle[q] for q in range(3) if q != p)
        w = index_affine[t, p] * n + index_offset[t] + off_axis
        matrices[p] = torch.from_numpy(interpolation_matrix(w, side, factor))
    # low's tensor axes reordered to the image's (k, j, i): tensor axis t follows image axis axes[t].
    order = [axes.index(q) for q in (2, 1, 0)]
    grid = torch.from_numpy(np.ascontiguousarray(low.transpose(order), dtype=np.float32))
    mk, mj, mi = matrices[2], matrices[1], matrices[0]
    # float32 under a caller's CPU bf16 autocast too: logits near 0 decide the mask.
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        t1 = (mk @ grid.reshape(side, side * side)).reshape(-1, side, side)  # (nk, L, L)
        t2 = torch.matmul(mj, t1)  # (nk, nj, L)
        return (t2.reshape(-1, side) @ mi.T).reshape(mk.shape[0], mj.shape[0], mi.shape[0])
