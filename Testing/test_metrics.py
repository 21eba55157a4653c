"""Dice and NSD against hand-computed numbers, including anisotropic spacing."""

from __future__ import annotations

import numpy as np
import pytest

from SAMMed3DLib.errors import ConfigError, DataError
from SAMMed3DLib.metrics import dice, normalized_surface_distance


def _box(lo: tuple[int, ...], hi: tuple[int, ...], shape: tuple[int, ...] = (10, 10, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


CUBE = _box((2, 2, 2), (5, 5, 5))  # 3³ = 27 voxels, 26 boundary voxels + 1 interior at (3, 3, 3)
CUBE_SHIFTED = _box((3, 2, 2), (6, 5, 5))  # the same cube one voxel further along array axis 0
EMPTY = np.zeros((10, 10, 10), dtype=bool)
FAR = _box((7, 7, 7), (9, 9, 9))


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        (CUBE, CUBE, 1.0),
        (EMPTY, EMPTY, 1.0),  # defined: nothing to find, nothing found
        (EMPTY, CUBE, 0.0),
        (CUBE, EMPTY, 0.0),
        (CUBE_SHIFTED, CUBE, 2 * 18 / 54),  # overlap 2 × 3 × 3 = 18
        (CUBE, FAR, 0.0),
        (_box((0, 0), (2, 4), (4, 4)), _box((0, 0), (4, 4), (4, 4)), 2 * 8 / 24),  # 2D
    ],
    ids=["identical", "both-empty", "missed", "hallucinated", "shifted", "disjoint", "2d-half"],
)
def test_dice(pred: np.ndarray, gt: np.ndarray, expected: float) -> None:
    assert dice(pred, gt) == pytest.approx(expected, abs=1e-12)
    assert dice(gt, pred) == pytest.approx(expected, abs=1e-12)  # symmetric


def test_dice_accepts_0_1_label_arrays() -> None:
    assert dice(CUBE_SHIFTED.astype(np.uint8), CUBE.astype(np.uint8)) == pytest.approx(2 / 3)


# Hand count for CUBE (axis-0 layers 2-4) vs CUBE_SHIFTED (layers 3-5), 26 boundary voxels
# each, 52 in all. Pred layer 3 (9 voxels): 8 are gt boundary voxels (0 mm); its face centre
# (3, 3, 3) is gt's interior voxel, one step along axis 1 or 2 from gt's boundary. Pred layer 4
# (8 boundary voxels; (4, 3, 3) is pred's interior): all on gt's boundary (0 mm). Pred layer 5
# (9 voxels): one step along axis 0 from gt layer 4. Gt is the mirror image. So when one step
# along axis 1/2 is within tolerance but one along axis 0 is not, 17 of 26 count each way
# (34/52); when neither is, 16 each way (32/52).
@pytest.mark.parametrize(
    ("pred", "gt", "spacing", "tolerance", "expected"),
    [
        (CUBE, CUBE, (1, 1, 1), 0.0, 1.0),
        (CUBE_SHIFTED, CUBE, (1, 1, 1), 1.0, 1.0),  # every boundary voxel within 1 mm
        (CUBE_SHIFTED, CUBE, (1, 1, 1), 0.5, 32 / 52),  # 16 each way: the face centres miss too
        (CUBE_SHIFTED, CUBE, (2, 1, 1), 1.0, 34 / 52),  # anisotropic: 2 mm along the shift
        (CUBE_SHIFTED, CUBE, (2, 1, 1), 2.0, 1.0),
        (CUBE_SHIFTED, CUBE, (1, 1, 2), 1.0, 1.0),  # the coarse axis is not the shifted one
        (CUBE_SHIFTED, CUBE, (0.5, 3, 3), 1.0, 1.0),  # face centres are 0.5 mm from the other face
        (CUBE_SHIFTED, CUBE, (0.5, 3, 3), 0.4, 32 / 52),
        (CUBE_SHIFTED, CUBE, 2.0, 1.9, 32 / 52),  # isotropic 2 mm: no step is within 1.9 mm
        (EMPTY, EMPTY, (1, 1, 1), 1.0, 1.0),
        (EMPTY, CUBE, (1, 1, 1), 1.0, 0.0),
        (CUBE, EMPTY, (1, 1, 1), 1.0, 0.0),
        (CUBE, FAR, (1, 1, 1), 2.0, 0.0),
    ],
    ids=[
        "identical",
        "shift-1mm-tol-1",
        "shift-1mm-tol-0.5",
        "aniso-2mm-tol-1",
        "aniso-2mm-tol-2",
        "aniso-other-axis",
        "aniso-fine-shift-axis",
        "aniso-fine-shift-axis-tol-0.4",
        "iso-2mm-tol-1.9",
        "both-empty",
        "missed",
        "hallucinated",
        "far-apart",
    ],
)
def test_normalized_surface_distance(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | float, tolerance: float, expected: float
) -> None:
    assert normalized_surface_distance(pred, gt, spacing, tolerance) == pytest.approx(expected, abs=1e-6)


def test_nsd_spacing_follows_the_array_axis_order_of_a_simpleitk_array() -> None:
    import SimpleITK as sitk

    # An image with 2 mm along x (ITK axis 0 = array axis 2): shifting along x is 2 mm.
    image = sitk.GetImageFromArray(np.zeros((10, 10, 10), dtype=np.uint8))
    image.SetSpacing((2.0, 1.0, 1.0))
    gt = CUBE
    pred = np.moveaxis(CUBE_SHIFTED, 0, 2)  # shifted along array axis 2 (x)
    spacing_zyx = image.GetSpacing()[::-1]
    assert normalized_surface_distance(pred, gt, spacing_zyx, 1.0) == pytest.approx(34 / 52, abs=1e-6)


def test_nsd_does_not_depend_on_the_volume_around_the_masks() -> None:
    big_gt = np.zeros((60, 70, 80), dtype=bool)
    big_pred = np.zeros_like(big_gt)
    big_gt[30:33, 40:43, 50:53] = True
    big_pred[31:34, 40:43, 50:53] = True
    assert normalized_surface_distance(big_pred, big_gt, (2, 1, 1), 1.0) == pytest.approx(34 / 52, abs=1e-6)


def test_nsd_of_masks_touching_the_array_border() -> None:
    gt = np.ones((3, 3, 3), dtype=bool)
    assert normalized_surface_distance(gt, gt, 1.0, 0.0) == 1.0
    pred = gt.copy()
    pred[2] = False  # 18 voxels, all boundary (the array border counts as background)
    # gt: 26 boundary voxels; its layer 2 (9) is 1 mm from pred's layer 1, the other 17 coincide
    # with pred's boundary. pred: its (1, 1, 1) is gt's interior voxel, 1 mm from gt's boundary;
    # the other 17 coincide.
    assert normalized_surface_distance(pred, gt, 1.0, 0.5) == pytest.approx((17 + 17) / (18 + 26), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pred": CUBE[:, :, :9]}, DataError, r"shape \(10, 10, 9\) differs"),
        ({"spacing_mm": (1.0, 1.0)}, ConfigError, "spacing_mm must be one positive number or 3"),
        ({"spacing_mm": (1.0, -1.0, 1.0)}, ConfigError, "spacing_mm must be one positive number or 3"),
        ({"spacing_mm": "abc"}, ConfigError, "spacing_mm must be one positive number or 3"),
        ({"tolerance_mm": -1.0}, ConfigError, "tolerance_mm must be a finite number >= 0"),
        ({"pred": np.zeros((2, 2, 2, 2), bool), "gt": np.zeros((2, 2, 2, 2), bool)}, DataError, "2D or 3D"),
    ],
)
def test_nsd_invalid_inputs(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"pred": CUBE, "gt": CUBE, "spacing_mm": (1.0, 1.0, 1.0), "tolerance_mm": 1.0} | kwargs
    with pytest.raises(error, match=match):
        normalized_surface_distance(**args)


def test_dice_shape_mismatch() -> None:
    with pytest.raises(DataError, match="must share one grid"):
        dice(CUBE, CUBE[:5])
