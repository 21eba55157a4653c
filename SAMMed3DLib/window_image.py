"""A window's image from an image whose axes are the window's: three 1-D linear interpolations.

:func:`extract_window_fast` returns what :func:`SAMMed3DLib.geometry.extract_window` returns
(SimpleITK's linear resampling of the ``size``³ window, 0 outside the image) and computes it
without SimpleITK when the image's axes are the window's up to order and sign (a signed
permutation of R, A, S: axial, coronal and sagittal acquisitions, flipped or not; almost every CT
and MR). Then the continuous image index along each image axis depends on one window axis only
and the trilinear interpolation separates into three 1-D two-tap interpolations, written as
matrix products on the block of image voxels the window reads, band by band (each band of 32
window rows multiplied with the image columns it uses only; torch, the session's threads): about
18 ms of CPU (10 ms on 2 threads) for a 128³ window of 1.5 mm in a 512×512×200 CT at
0.8×0.8×2.5 mm, where SimpleITK takes about 60 ms of CPU (38 ms; ``benchmarks/window_speed.py``).
Oblique images keep SimpleITK, and so does a window whose block is so large that the products
would cost more (:data:`SIMPLEITK_COST`: a zoomed-out window over a large image).

The interpolation is ITK's (``itk::LinearInterpolateImageFunction`` inside
``itk::ResampleImageFilter``): a window voxel whose continuous image index ``x`` lies in
``[-0.5, n - 0.5)`` on every axis is inside; there ``x`` is clamped to ``[0, n - 1]`` (the half
voxel beyond the last centre repeats the edge value) and interpolated linearly between the two
neighbouring voxels; every other window voxel is 0. The values agree with SimpleITK's to float32
rounding (``Testing/test_window_image.py``: flipped and permuted axes, anisotropic voxels, windows
past the image border, zoomed-out windows, integer pixel types). A window voxel whose centre lies
exactly on the half-voxel boundary of the image (``x`` = -0.5 or ``n`` - 0.5 to the last bit) may
fall on either side in the two paths: SimpleITK computes ``x`` in another order of operations.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .geometry import CANONICAL_DIRECTION_LPS, ImageGeometry, Window, extract_window
from .separable import interpolation_matrix, separable_axes


def window_to_index(window: Window, geometry: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(M, c) with ``index_xyz = M @ window_index + c``, ITK's inverse of direction × spacing."""
    inverse = np.linalg.inv(geometry.direction * geometry.spacing_xyz_mm)
    return inverse @ (window.spacing_mm * CANONICAL_DIRECTION_LPS), inverse @ (window.origin_lps - geometry.origin_lps)


#: How :func:`_contract` can contract each memory position of a (A, B, C) tensor, and where the
#: new axis lands: (position, variant) → new order of the positions (``None`` = the new axis).
_MOVES = {
    (2, 0): (0, 1, None),  # per A: Y[a] @ Wᵀ
    (2, 1): (0, None, 1),  # per A: W @ Y[a]ᵀ
    (1, 0): (0, None, 2),  # per A: W @ Y[a]
    (1, 1): (0, 2, None),  # per A: Y[a]ᵀ @ Wᵀ
    (0, 0): (None, 1, 2),  # W @ (A, B·C)
    (0, 1): (1, 2, None),  # (A, B·C)ᵀ @ Wᵀ
}

#: Window rows per band of an interpolation matrix: each band is multiplied with the image
#: columns its rows use only (two per row), a few times less work than the whole matrix.
BAND_ROWS = 32


@dataclass(frozen=True, eq=False)
class _Axis:
    """One axis's interpolation: the weights of the image voxels [lo, hi) and their bands."""

    weights: np.ndarray  # (size, hi - lo) float32, two non-zeros per row inside the image
    lo: int
    hi: int
    bands: tuple[tuple[int, int, int, int], ...]  # (first row, end row, first column, end column), columns from lo

    @property
    def work(self) -> int:
        """Multiply-adds per line of the other two axes."""
        return sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in self.bands)


def _bands(weights: np.ndarray) -> tuple[tuple[int, int, int, int], ...]:
    """Bands of :data:`BAND_ROWS` rows with the column range each uses (rows without weights: empty range)."""
    out = []
    for r0 in range(0, weights.shape[0], BAND_ROWS):
        r1 = min(r0 + BAND_ROWS, weights.shape[0])
        used = np.flatnonzero(weights[r0:r1].any(axis=0))
        out.append((r0, r1, int(used[0]), int(used[-1]) + 1) if used.size else (r0, r1, 0, 0))
    return tuple(out)


def _axis_weights(x: np.ndarray, n: int) -> _Axis | None:
    """ITK's linear interpolation weights at continuous indices ``x`` of an axis of ``n`` voxels.

    The weights cover the voxels [lo, hi) that carry one; rows outside ``[-0.5, n - 0.5)`` are 0.
    None when no index lies inside.
    """
    inside = (x >= -0.5) & (x < n - 0.5)
    if not inside.any():
        return None
    weights = interpolation_matrix(np.where(inside, x, 0.0), n, 1.0)  # clamped to [0, n - 1]
    weights[~inside] = 0.0
    used = np.flatnonzero(weights.any(axis=0))
    lo, hi = int(used[0]), int(used[-1]) + 1
    weights = np.ascontiguousarray(weights[:, lo:hi])
    return _Axis(weights, lo, hi, _bands(weights))


def _contract(y, position: int, variant: int, axis: _Axis):  # torch tensors (torch is imported by the caller)
    """Contract memory axis ``position`` of the 3-D tensor ``y`` with ``axis``'s weights: see :data:`_MOVES`.

    Band by band: a matrix product writes its rows of the new axis straight into the result
    where it is one 2-D product (``out=`` a view); a batched product (whose ``out=`` view torch
    would fill one matrix at a time) is copied there.
    """
    import torch

    w = torch.from_numpy(axis.weights)
    a, b, c = y.shape
    m = w.shape[0]
    order = _MOVES[(position, variant)]
    new = order.index(None)
    out = torch.empty([m if o is None else (a, b, c)[o] for o in order], dtype=y.dtype)
    flat = y.reshape(a, b * c) if position == 0 else None  # a copy only for a strided first block
    rows = y.view(a * b, c) if (position, variant) == (2, 0) and y.is_contiguous() else None
    for r0, r1, c0, c1 in axis.bands:
        target = out.narrow(new, r0, r1 - r0)
        if c1 == c0:
            target.zero_()
            continue
        band = w[r0:r1, c0:c1]
        if flat is not None and variant == 0:
            torch.mm(band, flat[c0:c1], out=target.view(r1 - r0, b * c))
        elif flat is not None:
            torch.mm(flat[c0:c1].T, band.T, out=out.view(b * c, m)[:, r0:r1])
        elif rows is not None:
            torch.mm(rows[:, c0:c1], band.T, out=out.view(a * b, m)[:, r0:r1])
        else:
            part = y.narrow(position, c0, c1 - c0)
            if (position, variant) == (2, 0):
                target.copy_(torch.matmul(part, band.T))
            elif (position, variant) == (2, 1):
                target.copy_(torch.matmul(band, part.transpose(1, 2)))
            elif (position, variant) == (1, 0):
                target.copy_(torch.matmul(band, part))
            else:
                target.copy_(torch.matmul(part.transpose(1, 2), band.T))
    return out


#: The cost of permuting the result into window order, in multiply-adds per window voxel (a
#: strided copy of one float costs about as much as 50 multiply-adds of a matrix product).
_PERMUTE_COST = 50.0
#: SimpleITK's cost per window voxel in the same unit (about 20 ns of CPU): a window whose block
#: of image voxels is so large that the products cost more (a zoomed-out window over a large
#: image reads up to the whole image) is left to SimpleITK.
SIMPLEITK_COST = 1000.0


@functools.lru_cache(maxsize=64)
def _plan(
    extent: tuple[int, int, int], size: int, follows: tuple[int, int, int], work: tuple[int, int, int]
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...] | None, float]:
    """The cheapest sequence of (position, variant) moves that contracts every image axis, and its cost.

    ``extent`` is the block's size in memory order (k, j, i); image axis ``p`` sits at memory
    position ``2 - p``, becomes window axis ``follows[p]`` and costs ``work[p]`` multiply-adds per
    line of the other two axes (:attr:`_Axis.work`). The cost is the multiply-adds of the three
    products, plus :data:`_PERMUTE_COST` per window voxel when the result is not already in
    window order (0, 1, 2); the second item is then the permutation that puts it there.
    """
    best: tuple[float, tuple[tuple[int, int], ...], tuple[int, ...] | None] | None = None
    for axes in itertools.permutations(range(3)):  # image axes in the order they are contracted
        for variants in itertools.product((0, 1), repeat=3):
            labels: list[tuple[str, int]] = [("image", 2 - q) for q in range(3)]  # memory order of the block
            shape = list(extent)
            cost, moves = 0.0, []
            for p, variant in zip(axes, variants):
                position = labels.index(("image", p))
                cost += float(np.prod(shape)) / shape[position] * work[p]
                order = _MOVES[(position, variant)]
                labels = [("window", follows[p]) if o is None else labels[o] for o in order]
                shape = [size if o is None else shape[o] for o in order]
                moves.append((position, variant))
            window_order = [label[1] for label in labels]
            permutation = None if window_order == [0, 1, 2] else tuple(window_order.index(t) for t in range(3))
            if permutation is not None:
                cost += _PERMUTE_COST * size**3
            if best is None or cost < best[0]:
                best = (cost, tuple(moves), permutation)
    assert best is not None
    return best[1], best[2], best[0]


def extract_window_separable(image: sitk.Image, window: Window, geometry: ImageGeometry | None = None) -> np.ndarray | None:
    """:func:`~SAMMed3DLib.geometry.extract_window` by three 1-D interpolations, or None for an oblique image.

    Args:
        image: 3D scalar SimpleITK image.
        window: the window to sample.
        geometry: ``ImageGeometry.from_image(image)``, when the caller has it.

    Returns:
        float32 (size, size, size) array in tensor axis order (R, A, S), C-contiguous; None when
        the image's axes are not the window's up to order and sign, when the products would cost
        more than SimpleITK (:data:`SIMPLEITK_COST`), or for an image that is not 3D scalar.
    """
    import torch

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return None  # extract_window says what is wrong
    geometry = ImageGeometry.from_image(image) if geometry is None else geometry
    size = window.size
    m, c = window_to_index(window, geometry)
    follows = separable_axes(m, (size, size, size))  # image axis p follows window axis follows[p]
    if follows is None:
        return None
    w = np.arange(size, dtype=np.float64)
    middle = (size - 1) / 2.0
    axes: list[_Axis] = []
    for p in range(3):
        t = follows[p]
        off_axis = sum(m[p, q] * middle for q in range(3) if q != t)  # below AXIS_DRIFT_LIMIT over the window
        axis = _axis_weights(m[p, t] * w + c[p] + off_axis, geometry.size_xyz[p])
        if axis is None:
            return np.zeros((size, size, size), dtype=np.float32)
        axes.append(axis)
    extent = (axes[2].hi - axes[2].lo, axes[1].hi - axes[1].lo, axes[0].hi - axes[0].lo)
    moves, permutation, cost = _plan(extent, size, follows, tuple(axis.work for axis in axes))  # type: ignore[arg-type]
    if cost > SIMPLEITK_COST * size**3:
        return None
    view = sitk.GetArrayViewFromImage(image)[axes[2].lo : axes[2].hi, axes[1].lo : axes[1].hi, axes[0].lo : axes[0].hi]
    if view.dtype != np.float32:
        view = view.astype(np.float32)
    with warnings.catch_warnings():  # read only: torch warns about any array it cannot write to
        warnings.simplefilter("ignore", UserWarning)
        y = torch.from_numpy(view)
    labels = [2, 1, 0]  # image axis at each memory position
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):  # float32 under a caller's CPU autocast too
        for position, variant in moves:
            p = labels[position]
            y = _contract(y, position, variant, axes[p])
            labels = [-1 if o is None else labels[o] for o in _MOVES[(position, variant)]]
        if permutation is not None:
            y = y.permute(permutation)
        return y.contiguous().numpy()


def extract_window_fast(image: sitk.Image, window: Window, geometry: ImageGeometry | None = None) -> np.ndarray:
    """:func:`~SAMMed3DLib.geometry.extract_window`: separable when the axes allow and it is cheaper, else SimpleITK."""
    array = extract_window_separable(image, window, geometry)
    return extract_window(image, window) if array is None else array
