"""Classic baseline for the click protocol: Slicer's "Grow from seeds" (GrowCut) driven by clicks.

:class:`GrowCutSession` has the click interface of :class:`SAMMed3DLib.session.Session`
(``click``, ``click_index``, ``mask_array``, ``reset``), so ``evaluate(..., method="growcut")``
runs the exact protocol the model runs. Each click is turned into seeds for slicer-core's
``vtkImageGrowCutSegment`` (the filter behind Slicer's Grow from seeds effect; shortest paths
whose cost is the sum of absolute intensity differences, 26-neighbourhood):

* positive clicks → label 1 (object) seeds, small spheres of ``seed_radius_mm`` (the clicked
  voxel at least);
* negative clicks → label 2 (background) seeds, same spheres; later clicks overwrite earlier
  ones where spheres overlap, as paint strokes would;
* the faces of a ``box_mm`` box (192 mm by default: the model's 128 × 1.5 mm window) centred on
  the first click → label 2 seeds. GrowCut runs only inside that region. A later positive click
  closer than ``box_mm / 4`` to a face (or outside) extends the region by a box centred on
  it, as a user would widen the region of interest. Faces that the image border clips are not
  seeded (the structure may touch the border). The filter never grows *from* the outermost
  voxel layer of its input, so the input is the region plus one voxel of margin where the
  image has it.

A box (:meth:`GrowCutSession.set_box`, the ``cvpr25`` protocol's first prompt; clicks so far
are kept) becomes the region instead: background seeds on its faces one voxel outside the box
(a face on the image border gets none) and an object seed sphere at its centre, then Grow from
seeds runs at once. An
existing mask (:meth:`GrowCutSession.set_mask`, the ``correction`` protocol's start) becomes
seeds the same way a user would paint them: its interior eroded by ``mask_band_mm`` (3 mm) as
object, the outside of its dilation by the same band as background, in a region one voxel
beyond the dilation; the band between is left to Grow from seeds (a mask thinner than the band
keeps its deepest voxels as object seeds). The mask stays as given until the first click runs.
After a box or a mask, a positive click on or outside the region's faces widens the region to
take it in, with a margin of a quarter of the region's size (at least 2 voxels) each way.

While the region stays the same, the filter is reused: it then only grows from the new seeds
(GrowCut's incremental mode, as in Slicer's effect). On a 1 mm brain MR (a 155 × 179 × 175
voxel region) the first click took 14.7 s on a busy shared core and each later click about
0.5 s, which is why the region is not re-centred on every click.

Requires ``slicer-core`` (``pip install slicer-core``). ``slicer`` and ``vtk`` are imported only
when a session is created, so ``import SAMMed3DLib`` never needs them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from scipy import ndimage

from .boxes import VoxelBox
from .errors import ConfigError, ImageError, PromptError
from .geometry import ImageGeometry

logger = logging.getLogger(__name__)

#: Side of the background box around each positive click: the model's window (128 × 1.5 mm),
#: so both methods see the same neighbourhood of a click.
DEFAULT_BOX_MM = 192.0
#: Radius of the seed sphere painted at each click. Small, because negative clicks sit in thin
#: false-positive rims next to the object; 2 mm is a few voxels on 1 mm grids and one voxel on
#: coarse (≥ 3 mm) grids.
DEFAULT_SEED_RADIUS_MM = 2.0
#: How far inside (object seeds) and outside (background seeds) an existing mask's border the seeds
#: made from it start: the band between is Grow from seeds' to decide.
DEFAULT_MASK_BAND_MM = 3.0

_OBJECT, _BACKGROUND = 1, 2


def _import_growcut() -> tuple[Any, Any, Any]:
    """slicer.vtkImageGrowCutSegment, vtk and vtk's numpy_support, or a clear error."""
    try:
        import vtk
        from vtk.util import numpy_support

        import slicer
    except ImportError as exc:
        raise ConfigError(
            f"the Grow from seeds baseline needs slicer-core ({exc}); install it with `pip install slicer-core` "
            "or evaluate the model instead (--method model)"
        ) from exc
    if not hasattr(slicer, "vtkImageGrowCutSegment"):
        raise ConfigError("this slicer-core has no vtkImageGrowCutSegment; install slicer-core >= 5.8")
    return slicer.vtkImageGrowCutSegment, vtk, numpy_support


class GrowCutSession:
    """Click-driven Grow from seeds on one 3D image (same click interface as ``Session``).

    Args:
        image: 3D SimpleITK scalar image; any pixel type, read once.
        box_mm: side of the background box around each positive click, mm.
        seed_radius_mm: radius of the seed sphere painted at each click, mm.
        distance_penalty: GrowCut's "seed locality" (intensity difference added per mm of path);
            0 as in Slicer's default.

    Raises:
        ImageError: the image is not a 3D scalar image.
        ConfigError: slicer-core is missing, or a size is not positive.
    """

    def __init__(
        self,
        image: sitk.Image,
        *,
        box_mm: float = DEFAULT_BOX_MM,
        seed_radius_mm: float = DEFAULT_SEED_RADIUS_MM,
        distance_penalty: float = 0.0,
        mask_band_mm: float = DEFAULT_MASK_BAND_MM,
    ) -> None:
        self._filter_class, self._vtk, self._numpy_support = _import_growcut()
        if not isinstance(image, sitk.Image) or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ImageError("Grow from seeds needs a 3D scalar SimpleITK image")
        if not (box_mm > 0 and seed_radius_mm >= 0 and distance_penalty >= 0 and mask_band_mm >= 0):
            raise ConfigError(
                "box_mm must be > 0 and seed_radius_mm, distance_penalty, mask_band_mm >= 0; "
                f"got {box_mm}, {seed_radius_mm}, {distance_penalty}, {mask_band_mm}"
            )
        self._image = image
        self._array = sitk.GetArrayViewFromImage(image)  # (z, y, x), the image's pixel type
        self.spacing_zyx_mm = np.array(image.GetSpacing()[::-1], dtype=float)
        self.box_mm = float(box_mm)
        self.seed_radius_mm = float(seed_radius_mm)
        self.distance_penalty = float(distance_penalty)
        self.mask_band_mm = float(mask_band_mm)
        self._geometry = ImageGeometry.from_image(image)
        self._mask = np.zeros(self._array.shape, dtype=np.uint8)
        self._base_mask = np.zeros(self._array.shape, dtype=np.uint8)
        self._clicks: list[tuple[tuple[int, int, int], bool]] = []
        #: [lo, hi) (z, y, x) region that a box or an existing mask gave, and its seeds there.
        self._start_region: tuple[np.ndarray, np.ndarray] | None = None
        self._start_seeds: np.ndarray | None = None
        self._filter: Any = None
        self._filter_crop: tuple[slice, ...] | None = None
        #: Seconds the last click's GrowCut took.
        self.last_seconds = 0.0

    # -- state -------------------------------------------------------------------------------------

    @property
    def mask_array(self) -> np.ndarray:
        """Current mask, (z, y, x) uint8 on the image grid (the session's own buffer: do not modify)."""
        return self._mask

    @property
    def mask(self) -> sitk.Image:
        """Current mask as a SimpleITK uint8 image on the image grid (a copy)."""
        out = sitk.GetImageFromArray(self._mask)
        out.CopyInformation(self._image)
        return out

    @property
    def clicks_zyx(self) -> list[tuple[tuple[int, int, int], bool]]:
        """Clicks so far: ((z, y, x) index, positive)."""
        return list(self._clicks)

    def reset(self) -> None:
        """Forget all clicks and any box; back to the mask :meth:`set_mask` gave (empty without one)."""
        self._clicks.clear()
        self._mask[...] = self._base_mask
        self._filter = None
        self._filter_crop = None
        if not self._base_mask.any():
            self._start_region = self._start_seeds = None
        else:
            self._mask_seeds()

    def set_mask(self, mask_zyx: np.ndarray | sitk.Image) -> None:
        """Start from an existing mask (the current answer); clears clicks and any box.

        The mask is shown as given; the first click runs Grow from seeds from the seeds made of it
        (see the module docstring) and that click. An empty mask means no mask.

        Raises:
            ImageError: the mask's shape is not the image's (z, y, x) shape.
        """
        arr = sitk.GetArrayFromImage(mask_zyx) if isinstance(mask_zyx, sitk.Image) else np.asarray(mask_zyx)
        if arr.shape != self._mask.shape:
            raise ImageError(f"mask shape {arr.shape} does not match the image's (z, y, x) shape {self._mask.shape}")
        self._base_mask = (arr > 0).astype(np.uint8)
        self.reset()

    def set_box(self, corner_a_lps: Sequence[float] | np.ndarray, corner_b_lps: Sequence[float] | np.ndarray) -> np.ndarray:
        """A 3D box (two opposite corners, LPS mm) as the object's prompt: run Grow from seeds in it.

        The box is read as :meth:`SAMMed3DLib.session.Session.set_box` reads it (faces
        perpendicular to L, P, S; on an oblique image the block of voxels holding it). Background
        seeds go on the faces one voxel outside the box, an object seed sphere at its centre (see
        the module docstring); the clicks so far are kept, any mask set before is dropped.

        Returns:
            The session's (z, y, x) uint8 mask buffer (do not modify).

        Raises:
            PromptError: a corner is malformed, or the box holds no voxel of the image.
        """
        box = VoxelBox.from_corners_lps(self._geometry, corner_a_lps, corner_b_lps)
        clicks = list(self._clicks)
        self._base_mask[...] = 0
        self.reset()
        self._clicks.extend(clicks)
        lo = np.asarray(box.first_zyx) - 1
        hi = np.asarray(box.last_zyx) + 2
        self._start_region = (lo, hi)
        seeds = np.zeros(tuple(hi - lo), dtype=np.uint8)
        centre = np.rint(np.asarray(box.center_zyx)).astype(int) - lo
        self._paint(seeds, centre, _OBJECT)
        self._start_seeds = seeds
        start = time.perf_counter()
        self._run()
        self.last_seconds = time.perf_counter() - start
        return self._mask

    # -- clicks ------------------------------------------------------------------------------------

    def click(self, point_lps: Sequence[float] | np.ndarray, positive: bool = True) -> np.ndarray:
        """Add a click at a physical point (LPS mm) and return the updated (z, y, x) mask."""
        point = np.asarray(point_lps, dtype=float).reshape(-1)
        if point.size != 3 or not np.all(np.isfinite(point)):
            raise PromptError(f"a click must be 3 finite LPS coordinates in mm, got {point_lps!r}")
        index_xyz = self._image.TransformPhysicalPointToContinuousIndex([float(v) for v in point])
        return self.click_index(index_xyz, positive)

    def click_index(self, index_xyz: Sequence[float] | np.ndarray, positive: bool = True) -> np.ndarray:
        """Add a click at an ITK index (x, y, z) (rounded to the nearest voxel) and return the mask.

        Returns:
            The session's (z, y, x) uint8 mask buffer (do not modify).

        Raises:
            PromptError: the index is outside the image, or the first click is negative.
        """
        index = np.rint(np.asarray(index_xyz, dtype=float).reshape(-1)).astype(int)
        size_xyz = self._image.GetSize()
        if index.size != 3 or np.any(index < 0) or np.any(index >= np.array(size_xyz)):
            raise PromptError(f"click index {tuple(np.asarray(index_xyz).tolist())} is outside the image of size {size_xyz} (x, y, z)")
        if not self._clicks and not positive and self._start_region is None:
            raise PromptError("the first click of an object must be positive: click inside the structure first")
        self._clicks.append(((int(index[2]), int(index[1]), int(index[0])), bool(positive)))
        start = time.perf_counter()
        self._run()
        self.last_seconds = time.perf_counter() - start
        return self._mask

    # -- internals ---------------------------------------------------------------------------------

    def _mask_seeds(self) -> None:
        """Seeds from the mask of :meth:`set_mask`: eroded interior object, outside the dilation background."""
        box = tuple(slice(s.start, s.stop) for s in ndimage.find_objects(self._base_mask)[0])
        band = np.ceil(self.mask_band_mm / self.spacing_zyx_mm).astype(int) + 1
        lo = np.array([s.start for s in box]) - band - 1
        hi = np.array([s.stop for s in box]) + band + 1
        shape = np.array(self._mask.shape)
        crop = tuple(slice(int(max(a, 0)), int(min(b, n))) for a, b, n in zip(lo, hi, shape))
        block = self._base_mask[crop] != 0
        inside = ndimage.distance_transform_edt(np.pad(block, 1), sampling=self.spacing_zyx_mm)[(slice(1, -1),) * 3]
        outside = ndimage.distance_transform_edt(~block, sampling=self.spacing_zyx_mm)
        obj = inside > self.mask_band_mm
        if not obj.any():  # thinner than the band: its deepest voxels
            obj = inside == inside.max()
        seeds = np.zeros(block.shape, dtype=np.uint8)
        seeds[outside > self.mask_band_mm] = _BACKGROUND
        seeds[obj] = _OBJECT
        # The region is unclipped (faces beyond the image get no seeds); the seeds cover its part in the image.
        full = np.zeros(tuple(hi - lo), dtype=np.uint8)
        full[tuple(slice(c.start - a, c.stop - a) for c, a in zip(crop, lo))] = seeds
        self._start_region = (lo, hi)
        self._start_seeds = full

    def _region(self) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) (z, y, x) of the GrowCut region, unclipped: the box around the first click,
        extended by the box around any positive click within a quarter box of its faces; or the
        region of a box or a mask, widened to take in positive clicks on or beyond its faces."""
        if self._start_region is not None:
            lo, hi = (a.copy() for a in self._start_region)
            for center, positive in self._clicks:
                c = np.asarray(center)
                if positive and (np.any(c <= lo) or np.any(c >= hi - 1)):
                    margin = np.maximum((hi - lo) // 4, 2)
                    lo, hi = np.minimum(lo, c - margin), np.maximum(hi, c + margin + 1)
            return lo, hi
        half = np.maximum(np.rint(self.box_mm / 2 / self.spacing_zyx_mm).astype(int), 1)
        inset = half // 2
        lo = hi = None
        for center, positive in self._clicks:
            c = np.asarray(center)
            if lo is None:
                lo, hi = c - half, c + half + 1
            elif positive and (np.any(c - inset < lo) or np.any(c + inset >= hi)):
                lo, hi = np.minimum(lo, c - half), np.maximum(hi, c + half + 1)
        assert lo is not None and hi is not None  # the first click exists
        return lo, hi

    def _sphere(self) -> np.ndarray:
        """(N, 3) voxel offsets of the seed sphere (the centre voxel at least)."""
        radius = np.maximum(np.floor(self.seed_radius_mm / self.spacing_zyx_mm).astype(int), 0)
        offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij"), axis=-1).reshape(-1, 3)
        return offsets[np.sum((offsets * self.spacing_zyx_mm) ** 2, axis=1) <= self.seed_radius_mm**2 + 1e-9]

    def _paint(self, seeds: np.ndarray, center: np.ndarray, label: int) -> None:
        points = np.asarray(center) + self._sphere()
        keep = np.all((points >= 0) & (points < np.array(seeds.shape)), axis=1)
        seeds[tuple(points[keep].T)] = label

    def _seeds(self, crop: tuple[slice, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        shape = tuple(s.stop - s.start for s in crop)
        origin = np.array([s.start for s in crop])
        seeds = np.zeros(shape, dtype=np.uint8)
        # Background on the box faces that lie inside the image (the filter's crop has a margin
        # layer beyond them); a clipped face is the image border and gets no seeds.
        inner = tuple(slice(max(l, 0) - o, min(h, n) - o) for l, h, n, o in zip(lo, hi, self._array.shape, origin))
        for axis in range(3):
            for face, exists in ((lo[axis], lo[axis] >= 1), (hi[axis] - 1, hi[axis] <= self._array.shape[axis] - 1)):
                if exists:
                    index = list(inner)
                    index[axis] = slice(face - origin[axis], face - origin[axis] + 1)
                    seeds[tuple(index)] = _BACKGROUND
        if self._start_region is not None and self._start_seeds is not None:
            start_lo = self._start_region[0]
            # The part of the start region's seeds that lies in the crop (the crop is clipped to the image).
            a = np.maximum(origin, start_lo)
            b = np.minimum(origin + np.array(shape), start_lo + np.array(self._start_seeds.shape))
            if np.all(b > a):
                block = self._start_seeds[tuple(slice(int(x - s), int(y - s)) for x, y, s in zip(a, b, start_lo))]
                target = seeds[tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, origin))]
                np.copyto(target, block, where=block != 0)
        for center, positive in self._clicks:
            self._paint(seeds, np.asarray(center) - origin, _OBJECT if positive else _BACKGROUND)
        return seeds

    def _to_vtk(self, array: np.ndarray) -> Any:
        image = self._vtk.vtkImageData()
        image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])  # VTK is (x, y, z)
        image.SetSpacing(*[float(s) for s in self.spacing_zyx_mm[::-1]])
        scalars = self._numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
        image.GetPointData().SetScalars(scalars)
        return image

    def _run(self) -> None:
        lo, hi = self._region()
        shape = np.array(self._array.shape)
        crop = tuple(slice(int(max(l - 1, 0)), int(min(h + 1, n))) for l, h, n in zip(lo, hi, shape))
        if any(s.stop - s.start < 3 for s in crop):
            logger.warning("Grow from seeds skipped: region %s is thinner than 3 voxels", crop)
            return
        seeds = self._seeds(crop, lo, hi)
        if self._filter is None or self._filter_crop != crop:
            self._filter = self._filter_class()
            self._filter.SetDistancePenalty(self.distance_penalty)
            self._filter.SetIntensityVolume(self._to_vtk(self._array[crop].astype(np.float32)))
            self._filter_crop = crop
        self._filter.SetSeedLabelVolume(self._to_vtk(seeds))
        self._filter.Update()
        labels = self._numpy_support.vtk_to_numpy(self._filter.GetOutput().GetPointData().GetScalars()).reshape(seeds.shape)
        self._mask[...] = 0
        self._mask[crop] = labels == _OBJECT
        logger.debug("Grow from seeds on %s voxels, %d click(s)", seeds.shape, len(self._clicks))
