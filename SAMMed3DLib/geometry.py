"""Physical geometry of images and model windows: LPS/RAS, image grids, window extraction.

Design:

- Physical coordinates are **LPS** millimetres (ITK/SimpleITK); Slicer speaks RAS, and
  :func:`ras_to_lps` / :func:`lps_to_ras` convert (flip x and y).
- :class:`ImageGeometry` is the voxel grid of an original image in ITK terms: index
  ``(i, j, k)`` (numpy arrays of a SimpleITK image are ``(k, j, i)``, i.e. ``zyx``),
  ``point_lps = origin_lps + direction @ (spacing_xyz_mm * index_xyz)``.
- :class:`Window` is the model's input grid: ``size``³ voxels of ``spacing_mm``, its axes always
  world-aligned in canonical **RAS** order (tensor axis 0 → patient Right, 1 → Anterior,
  2 → Superior; ``../shared/spec/SAM_MED3D_FACTS.md`` §3-4), whatever the image's direction, so the
  anatomy reaches the model in the orientation it was trained on.
  ``point_lps = origin_lps + spacing_mm * CANONICAL_DIRECTION_LPS @ index``, where ``index`` is in
  tensor axis order (component k along tensor axis k, the order of point prompts).
  A window covers the half-open continuous index box ``[-0.5, size - 0.5)`` on every axis.
- :func:`extract_window` resamples only the window's ``size``³ points from the original image
  (SimpleITK linear, 0 outside; ~40 ms for 128³ from an oblique 512×512×200 CT on 2 threads; a
  crop + ``torch.grid_sample`` path measured 100 ms, so SimpleITK it is). The reference grid's ITK
  axes are the tensor axes (R, A, S) and its array is transposed afterwards: ordering the ITK axes
  (S, A, R) to get tensor order directly made SimpleITK walk across input slices (126 ms).
- The way back, from the model's logits to the original grid (footprint, paste-back, float
  logits), is :mod:`SAMMed3DLib.paste`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import ConfigError, ImageError, PromptError

logger = logging.getLogger(__name__)

#: Columns are the LPS directions of the model's tensor axes 0, 1, 2 (patient R, A, S).
CANONICAL_DIRECTION_LPS: np.ndarray = np.diag([-1.0, -1.0, 1.0])
CANONICAL_DIRECTION_LPS.setflags(write=False)

#: Flip of x and y between LPS and RAS (the same matrix both ways).
_LPS_RAS_FLIP = np.array([-1.0, -1.0, 1.0])


def _as_points(points: Any, name: str) -> tuple[np.ndarray, bool]:
    """Return (N, 3) float64 points and whether the input was a single (3,) point."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape == (3,):
        return arr[None, :], True
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise PromptError(f"{name} must have shape (3,) or (N, 3), got shape {arr.shape}; pass x, y, z per point")
    return arr, False


def _restore(arr: np.ndarray, single: bool) -> np.ndarray:
    return arr[0] if single else arr


def ras_to_lps(points: Any) -> np.ndarray:
    """Convert RAS points (Slicer) to LPS points (ITK): negate x and y.

    Args:
        points: (3,) or (N, 3) array-like of RAS coordinates in mm.

    Returns:
        float64 array of the same shape, LPS coordinates in mm.

    Raises:
        PromptError: the input is not (3,) or (N, 3).
    """
    arr, single = _as_points(points, "points_ras")
    return _restore(arr * _LPS_RAS_FLIP, single)


def lps_to_ras(points: Any) -> np.ndarray:
    """Convert LPS points (ITK) to RAS points (Slicer): negate x and y.

    Args:
        points: (3,) or (N, 3) array-like of LPS coordinates in mm.

    Returns:
        float64 array of the same shape, RAS coordinates in mm.

    Raises:
        PromptError: the input is not (3,) or (N, 3).
    """
    arr, single = _as_points(points, "points_lps")
    return _restore(arr * _LPS_RAS_FLIP, single)


def _frozen_array(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64) + 0.0  # -0.0 becomes 0.0, so equal geometries hash equally
    if arr.shape != shape:
        raise ImageError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ImageError(f"{name} must be finite, got {arr.tolist()}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ImageGeometry:
    """Voxel grid of an original image, ITK conventions.

    ``point_lps = origin_lps + direction @ (spacing_xyz_mm * index_xyz)``.

    Attributes:
        size_xyz: number of voxels along ITK index axes (i, j, k); a SimpleITK numpy array of
            this image has shape ``size_xyz[::-1]`` (z, y, x).
        spacing_xyz_mm: (3,) float64, voxel spacing along i, j, k in mm.
        origin_lps: (3,) float64, LPS position in mm of the centre of voxel (0, 0, 0).
        direction: (3, 3) float64; column c is the unit LPS direction of index axis c.
    """

    size_xyz: tuple[int, int, int]
    spacing_xyz_mm: np.ndarray
    origin_lps: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.size_xyz)
        if len(size) != 3 or min(size) < 1:
            raise ImageError(f"size_xyz must be 3 positive integers, got {self.size_xyz}")
        spacing = _frozen_array(self.spacing_xyz_mm, (3,), "spacing_xyz_mm")
        if np.any(spacing <= 0):
            raise ImageError(f"spacing_xyz_mm must be positive, got {spacing.tolist()}")
        direction = _frozen_array(self.direction, (3, 3), "direction")
        if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3 or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
            raise ImageError(f"direction must be an orthonormal 3x3 matrix, got {direction.tolist()}")
        object.__setattr__(self, "size_xyz", size)
        object.__setattr__(self, "spacing_xyz_mm", spacing)
        object.__setattr__(self, "origin_lps", _frozen_array(self.origin_lps, (3,), "origin_lps"))
        object.__setattr__(self, "direction", direction)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageGeometry):
            return NotImplemented
        return (
            self.size_xyz == other.size_xyz
            and np.array_equal(self.spacing_xyz_mm, other.spacing_xyz_mm)
            and np.array_equal(self.origin_lps, other.origin_lps)
            and np.array_equal(self.direction, other.direction)
        )

    def __hash__(self) -> int:
        return hash((self.size_xyz, self.spacing_xyz_mm.tobytes(), self.origin_lps.tobytes(), self.direction.tobytes()))

    @classmethod
    def from_image(cls, image: sitk.Image) -> ImageGeometry:
        """Geometry of a 3D SimpleITK image.

        Raises:
            ImageError: the image is not 3D.
        """
        if image.GetDimension() != 3:
            raise ImageError(f"expected a 3D image, got a {image.GetDimension()}D image of size {image.GetSize()}")
        return cls(
            size_xyz=image.GetSize(),
            spacing_xyz_mm=image.GetSpacing(),
            origin_lps=image.GetOrigin(),
            direction=np.reshape(image.GetDirection(), (3, 3)),
        )

    @classmethod
    def from_ijk_to_ras(cls, size_xyz: tuple[int, int, int], ijk_to_ras: Any) -> ImageGeometry:
        """Geometry from a Slicer volume's IJK-to-RAS 4x4 matrix (IJK = ITK index order).

        Args:
            size_xyz: voxels along I, J, K.
            ijk_to_ras: (4, 4) homogeneous matrix mapping (i, j, k, 1) to RAS mm.
        """
        m = np.asarray(ijk_to_ras, dtype=np.float64)
        if m.shape != (4, 4):
            raise ImageError(f"ijk_to_ras must be a 4x4 matrix, got shape {m.shape}")
        linear = m[:3, :3] * _LPS_RAS_FLIP[:, None]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise ImageError(f"ijk_to_ras has a zero column: {m.tolist()}")
        return cls(size_xyz=size_xyz, spacing_xyz_mm=spacing, origin_lps=m[:3, 3] * _LPS_RAS_FLIP, direction=linear / spacing)

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix mapping ITK index (i, j, k, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing_xyz_mm
        m[:3, 3] = self.origin_lps
        return m

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix mapping ITK index (i, j, k, 1) to RAS mm (Slicer's IJKToRAS)."""
        m = self.ijk_to_lps
        m[:3, :] *= _LPS_RAS_FLIP[:, None]
        return m

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Shape of this image's SimpleITK numpy array: (k, j, i)."""
        return (self.size_xyz[2], self.size_xyz[1], self.size_xyz[0])

    def to_reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An all-zero SimpleITK image on this grid (reference for resampling or a new mask)."""
        image = sitk.Image([int(v) for v in self.size_xyz], pixel_type)
        image.SetSpacing(self.spacing_xyz_mm.tolist())
        image.SetOrigin(self.origin_lps.tolist())
        image.SetDirection(self.direction.ravel().tolist())
        return image

    def index_to_lps(self, index_xyz: Any) -> np.ndarray:
        """Map (continuous) ITK indices to LPS points.

        Args:
            index_xyz: (3,) or (N, 3) indices in (i, j, k) order.

        Returns:
            float64 LPS mm, same shape as the input.
        """
        idx, single = _as_points(index_xyz, "index_xyz")
        pts = idx @ (self.direction * self.spacing_xyz_mm).T + self.origin_lps
        return _restore(pts, single)

    def lps_to_index(self, points_lps: Any) -> np.ndarray:
        """Map LPS points to continuous ITK indices (i, j, k); integer values are voxel centres.

        Args:
            points_lps: (3,) or (N, 3) LPS mm.

        Returns:
            float64 continuous indices in (i, j, k) order, same shape as the input.
        """
        pts, single = _as_points(points_lps, "points_lps")
        idx = (pts - self.origin_lps) @ self.direction / self.spacing_xyz_mm
        return _restore(idx, single)

    def contains_lps(self, points_lps: Any) -> np.ndarray | bool:
        """Whether points lie inside the voxel extent: continuous index within [-0.5, size - 0.5].

        Args:
            points_lps: (3,) or (N, 3) LPS mm.

        Returns:
            bool for a (3,) input, (N,) bool array for an (N, 3) input.
        """
        idx = self.lps_to_index(points_lps)
        size = np.asarray(self.size_xyz, dtype=np.float64)
        inside = np.all((idx >= -0.5) & (idx <= size - 0.5), axis=-1)
        return bool(inside) if np.ndim(inside) == 0 else inside


@dataclass(frozen=True, eq=False)
class Window:
    """The model's cubic input grid in physical space, axes in canonical RAS tensor order.

    ``point_lps = origin_lps + spacing_mm * CANONICAL_DIRECTION_LPS @ index`` with ``index`` in
    tensor axis order (component k along tensor axis k: R, A, S). The window covers the
    half-open continuous index box ``[-0.5, size - 0.5)`` on each axis.

    Attributes:
        origin_lps: (3,) float64, LPS mm of the centre of window voxel (0, 0, 0).
        size: voxels per side (the model's input size, 128 for SAM-Med3D).
        spacing_mm: isotropic voxel spacing in mm (1.5 for SAM-Med3D).
    """

    origin_lps: np.ndarray
    size: int
    spacing_mm: float

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or int(self.size) != self.size or int(self.size) < 1:
            raise ConfigError(f"window size must be a positive integer, got {self.size!r}")
        spacing = float(self.spacing_mm)
        if not (np.isfinite(spacing) and spacing > 0):
            raise ConfigError(f"window spacing_mm must be a positive number, got {self.spacing_mm!r}")
        origin = np.array(self.origin_lps, dtype=np.float64) + 0.0  # no -0.0 (hash)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise PromptError(f"window origin_lps must be 3 finite numbers, got {self.origin_lps!r}")
        origin.setflags(write=False)
        object.__setattr__(self, "origin_lps", origin)
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "spacing_mm", spacing)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return self.size == other.size and self.spacing_mm == other.spacing_mm and np.array_equal(self.origin_lps, other.origin_lps)

    def __hash__(self) -> int:
        return hash((self.origin_lps.tobytes(), self.size, self.spacing_mm))

    @classmethod
    def centred_at(cls, center_lps: Any, size: int, spacing_mm: float) -> Window:
        """Window whose voxel ``size // 2`` (on every axis) is centred exactly at ``center_lps``.

        For size 128 a click at ``center_lps`` is window index (64, 64, 64).

        Args:
            center_lps: (3,) LPS mm.
            size: voxels per side.
            spacing_mm: voxel spacing in mm.

        Raises:
            PromptError: ``center_lps`` is not 3 finite numbers.
            ConfigError: size or spacing is invalid.
        """
        center = np.asarray(center_lps, dtype=np.float64)
        if center.shape != (3,) or not np.all(np.isfinite(center)):
            raise PromptError(f"window centre must be 3 finite LPS coordinates, got {center_lps!r}")
        if isinstance(size, bool) or int(size) != size or int(size) < 1:
            raise ConfigError(f"window size must be a positive integer, got {size!r}")
        half = np.full(3, float(int(size) // 2))
        origin = center - float(spacing_mm) * (CANONICAL_DIRECTION_LPS @ half)
        return cls(origin_lps=origin, size=int(size), spacing_mm=float(spacing_mm))

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) LPS directions of tensor axes 0, 1, 2 as columns (always canonical RAS)."""
        return CANONICAL_DIRECTION_LPS

    @property
    def center_index(self) -> np.ndarray:
        """(3,) float64 window index of the centre voxel, ``size // 2`` on every axis."""
        return np.full(3, float(self.size // 2))

    @property
    def center_lps(self) -> np.ndarray:
        """(3,) float64 LPS mm of the centre of voxel ``size // 2`` (the click of :meth:`centred_at`)."""
        return self.index_to_lps(self.center_index)

    def index_to_lps(self, index: Any) -> np.ndarray:
        """Map window indices (tensor axis order) to LPS points.

        Args:
            index: (3,) or (N, 3) continuous window indices, component k along tensor axis k.

        Returns:
            float64 LPS mm, same shape as the input.
        """
        idx, single = _as_points(index, "window index")
        pts = self.origin_lps + self.spacing_mm * (idx * np.diag(CANONICAL_DIRECTION_LPS))
        return _restore(pts, single)

    def lps_to_index(self, points_lps: Any) -> np.ndarray:
        """Map LPS points to continuous window indices in tensor axis order.

        These are the point prompts of the model (voxel indices, component k along tensor axis k).

        Args:
            points_lps: (3,) or (N, 3) LPS mm.

        Returns:
            float64 indices, same shape as the input.
        """
        pts, single = _as_points(points_lps, "points_lps")
        idx = (pts - self.origin_lps) * np.diag(CANONICAL_DIRECTION_LPS) / self.spacing_mm
        return _restore(idx, single)

    def contains_index(self, index: Any) -> np.ndarray | bool:
        """Whether continuous window indices lie in the window's box ``[-0.5, size - 0.5)``.

        Args:
            index: (3,) or (N, 3) window indices in tensor axis order.

        Returns:
            bool for a (3,) input, (N,) bool array for an (N, 3) input.
        """
        idx, single = _as_points(index, "window index")
        inside = np.all((idx >= -0.5) & (idx < self.size - 0.5), axis=-1)
        return bool(inside[0]) if single else inside

    def contains_lps(self, points_lps: Any) -> np.ndarray | bool:
        """Whether LPS points lie in the window's box (see :meth:`contains_index`)."""
        return self.contains_index(self.lps_to_index(points_lps))

    def corners_lps(self) -> np.ndarray:
        """(8, 3) float64 LPS corners of the window's box (continuous indices -0.5 and size - 0.5)."""
        lo, hi = -0.5, self.size - 0.5
        corners = np.array([[a, b, c] for a in (lo, hi) for b in (lo, hi) for c in (lo, hi)])
        return self.index_to_lps(corners)

    def to_reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """Empty SimpleITK image on the window grid; its ITK index (i, j, k) is the window index.

        Its ITK axes are the tensor axes (R, A, S), so its numpy array is (k, j, i) = tensor
        axes (2, 1, 0) (transpose it to get tensor order).
        """
        image = sitk.Image([self.size] * 3, pixel_type)
        image.SetSpacing([self.spacing_mm] * 3)
        image.SetOrigin(self.origin_lps.tolist())
        image.SetDirection(CANONICAL_DIRECTION_LPS.ravel().tolist())
        return image


def _check_scalar_3d(image: sitk.Image, name: str = "image") -> None:
    if not isinstance(image, sitk.Image):
        raise ImageError(f"{name} must be a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            f"{name} must be a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel; read it with SAMMed3DLib.io.read_image"
        )


def extract_window(image: sitk.Image, window: Window) -> np.ndarray:
    """Resample the window's voxels from the original image.

    Only the ``size``³ window points are computed (linear interpolation, SimpleITK); points
    outside the image's voxel extent are 0.

    Args:
        image: original 3D scalar image (any pixel type), LPS geometry.
        window: the window to sample.

    Returns:
        float32 array (size, size, size) in tensor axis order (R, A, S), C-contiguous.

    Raises:
        ImageError: the image is not 3D scalar.
    """
    _check_scalar_3d(image)
    resampled = sitk.Resample(image, window.to_reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return _transpose_xyz(sitk.GetArrayViewFromImage(resampled))


def _transpose_xyz(array_kji: np.ndarray) -> np.ndarray:
    """C-contiguous copy of a (k, j, i) array as (i, j, k).

    One 2D transpose per j plane keeps both sides cache-friendly: 7 ms for 128³ float32 against
    10-30 ms for ``np.ascontiguousarray(a.transpose(2, 1, 0))`` on this project's 2-core machine,
    single-threaded so it does not collapse when the cores are busy (torch's 2-thread permute
    measured 16-44 ms there).
    """
    out = np.empty(array_kji.shape[::-1], dtype=array_kji.dtype)
    for j in range(array_kji.shape[1]):
        out[:, j, :] = array_kji[:, j, :].T
    return out
