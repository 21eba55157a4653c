"""The rules of the cvpr25 and correction protocols on hand-made volumes: the box, the click, the corruptions."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.boxes import VoxelBox, cvpr25_box
from SAMMed3DLib.clicks import cvpr25_click, next_click
from SAMMed3DLib.corruption import CORRUPTIONS, corrupt
from SAMMed3DLib.errors import ConfigError, DataError, PromptError
from SAMMed3DLib.geometry import ImageGeometry
from SAMMed3DLib.metrics import challenge_nsd, dice, trapezoid_auc


def _block(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def _ellipsoid(shape: tuple[int, int, int], center: tuple[float, float, float], radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing)) <= radius_mm**2


def _geometry(size_xyz: tuple[int, int, int], direction: tuple[float, ...]) -> ImageGeometry:
    image = sitk.Image(list(size_xyz), sitk.sitkUInt8)
    image.SetSpacing((0.8, 1.1, 3.0))
    image.SetOrigin((-40.0, 12.5, 80.0))
    image.SetDirection(direction)
    return ImageGeometry.from_image(image)


#: Index axes along -P, +S, -L (permuted and flipped, as many scanners write them).
PERMUTED = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
OBLIQUE = sitk.VersorTransform((0.3, 1.0, 0.2), 0.5).GetMatrix()


# -- the cvpr25 click --------------------------------------------------------------------------------


def test_cvpr25_click_is_the_deepest_voxel_of_the_largest_error_missed_or_leaked() -> None:
    gt = _block((30, 30, 30), (5, 5, 5), (25, 25, 25))
    pred = gt.copy()
    pred[8:15, 8:15, 8:15] = False  # a 7³ miss (343 voxels): the largest error
    pred[26:29, 10:13, 10:13] = True  # a 3³ leak outside (27 voxels)
    click = cvpr25_click(pred, gt)
    assert click is not None and click.index == (11, 11, 11) and click.positive

    pred = gt.copy()
    pred[8:10, 8:10, 8:10] = False  # a small miss
    pred[0:5, 0:30, 0:30] = True  # a leak of 5 slices above the structure: 4500 voxels
    click = cvpr25_click(pred, gt)
    assert click is not None and not click.positive
    # Deepest in a 5-slice slab whose top is the array border (border counts as border) and whose
    # bottom touches the structure: slice 2, with the (y, x) tie broken the challenge's way.
    assert click.index[0] == 2 and pred[click.index] and not gt[click.index]


def test_cvpr25_click_takes_misses_and_leaks_as_one_error_region() -> None:
    """A miss touching a leak is one component (unlike "center" mode, which labels them apart)."""
    gt = np.zeros((30, 30, 40), dtype=bool)
    pred = np.zeros_like(gt)
    gt[2:7, 2:7, 2:7] = True  # miss, 125 voxels ...
    pred[2:7, 7:9, 2:7] = True  # ... touching a 50-voxel leak: one 175-voxel error component
    gt[15:20, 15:20, 20:26] = True  # a separate 150-voxel miss
    click = cvpr25_click(pred, gt)
    assert click is not None and click.positive
    assert click.index[0] == 4 and click.index[2] == 4 and 4 <= click.index[1] <= 6  # inside the joined component
    centre = next_click(pred, gt, np.random.default_rng(0), "center")
    assert centre is not None and centre.index[2] >= 20  # "center" picks the 150-voxel miss


def test_cvpr25_click_joins_diagonal_neighbours_and_measures_depth_in_mm() -> None:
    error = np.zeros((20, 20, 30), dtype=bool)
    error[2:5, 2:5, 2:5] = True
    error[5:8, 5:8, 5:8] = True  # corner to corner with the first: one 54-voxel component
    error[12:15, 12:15, 20:25] = True  # 45 voxels
    click = cvpr25_click(np.zeros_like(error), error)
    assert click is not None and click.index in {(3, 3, 3), (6, 6, 6)}

    # One component: a 5³ cube joined to a 3 × 9 × 9 plate. In voxels the cube is deeper (3 vs 2);
    # with 4 mm along axis 0 the plate is (min(2·4, 5) = 5 mm against 3 mm).
    gt = np.zeros((20, 20, 30), dtype=bool)
    gt[2:7, 2:7, 2:7] = True
    gt[2:5, 2:11, 7:16] = True
    vox = cvpr25_click(np.zeros_like(gt), gt)
    mm = cvpr25_click(np.zeros_like(gt), gt, spacing_mm=(4.0, 1.0, 1.0))
    assert vox is not None and vox.index[:2] == (4, 4) and vox.index[2] <= 6  # in the cube
    assert mm is not None and mm.index[2] >= 8 and mm.index[0] == 3


def test_cvpr25_click_is_deterministic_and_leaves_numpy_global_state_alone() -> None:
    gt = _block((10, 10, 10), (3, 3, 3), (5, 5, 5))  # 2³: all 8 voxels equally deep
    state = np.random.get_state()[1].copy()
    clicks = {cvpr25_click(np.zeros_like(gt), gt).index for _ in range(5)}  # type: ignore[union-attr]
    assert len(clicks) == 1 and np.array_equal(np.random.get_state()[1], state)
    # The challenge: np.random.seed(42), then a uniform choice among the deepest voxels in array order.
    expected = tuple(int(i) for i in np.argwhere(gt)[np.random.RandomState(42).choice(8)])
    assert clicks == {expected}


def test_cvpr25_click_none_when_perfect_and_errors_on_bad_input() -> None:
    gt = _block((8, 8, 8), (2, 2, 2), (5, 5, 5))
    assert cvpr25_click(gt, gt) is None
    assert cvpr25_click(np.zeros_like(gt), np.zeros_like(gt)) is None
    with pytest.raises(DataError, match="share one grid"):
        cvpr25_click(np.zeros((8, 8, 7), dtype=bool), gt)
    with pytest.raises(ConfigError, match="spacing_mm must be 3 positive numbers"):
        cvpr25_click(np.zeros_like(gt), gt, spacing_mm=(1.0, 0.0, 1.0))


# -- the cvpr25 box ----------------------------------------------------------------------------------


def test_cvpr25_box_is_the_median_slice_box_over_the_whole_z_range() -> None:
    gt = np.zeros((24, 40, 50), dtype=bool)
    gt[2:6, 10:30, 5:45] = True  # a bulky top: 4 slices of 800 voxels
    gt[6:20, 18:21, 20:23] = True  # a thin tail: 14 slices of 9 voxels
    gt[4, 8, 30] = True  # one voxel beyond the bulk on slice 4
    box = cvpr25_box(gt)
    # The voxels' median slice (z_indices[n // 2] in array order) is 4, not the middle of 2..19.
    assert box.first_zyx == (2, 8, 5) and box.last_zyx == (19, 29, 44)
    assert box.shape == (18, 22, 40) and box.mask(gt.shape)[gt].all()

    tail_heavy = np.zeros((24, 40, 50), dtype=bool)
    tail_heavy[2:20, 18:21, 20:23] = True
    tail_heavy[10, 5:35, 10:12] = True  # a wide voxel row on the median slice only
    box = cvpr25_box(tail_heavy)
    assert box.first_zyx == (2, 5, 10) and box.last_zyx == (19, 34, 22)


def test_cvpr25_box_margin_is_the_challenges_and_seeded() -> None:
    gt = np.zeros((20, 300, 512), dtype=bool)
    gt[5:15, 100:200, 200:300] = True
    tight = cvpr25_box(gt)
    margins = set()
    for seed in range(40):
        box = cvpr25_box(gt, np.random.default_rng(seed))
        assert box == cvpr25_box(gt, np.random.default_rng(seed))
        dy = tight.first_zyx[1] - box.first_zyx[1]
        dx = tight.first_zyx[2] - box.first_zyx[2]
        assert box.first_zyx[0] == 5 and box.last_zyx[0] == 14  # z is never widened
        assert (box.last_zyx[1] - tight.last_zyx[1], box.last_zyx[2] - tight.last_zyx[2]) == (dy, dx)
        margins.add((dy, dx))
    # shift 0..5 → int(shift · 512 / 256) in x and int(shift · 300 / 256) in y.
    assert margins == {(int(s * 300 / 256), int(s * 512 / 256)) for s in range(6)}
    edge = np.zeros((4, 10, 600), dtype=bool)
    edge[1:3, 0:10, 0:600] = True  # the whole slice: the margin is clipped to the array
    assert cvpr25_box(edge, np.random.default_rng(1)).last_zyx == (2, 9, 599)


def test_box_bounds_are_the_voxel_corners_in_lps_and_what_the_session_confines_to() -> None:
    from SAMMed3DLib.editing import Box as LpsBox

    geometry = _geometry((50, 40, 20), PERMUTED)
    box = VoxelBox((3, 10, 7), (8, 21, 30))
    lo, hi = box.bounds_lps(geometry)
    corners = geometry.lps_to_index(np.array([lo, hi]))
    np.testing.assert_allclose(np.sort(corners, axis=0), [[6.5, 9.5, 2.5], [30.5, 21.5, 8.5]], atol=1e-9)
    # The box's physical size: 24 × 0.8, 12 × 1.1, 6 × 3.0 mm, along permuted LPS axes.
    np.testing.assert_allclose(np.sort(hi - lo), np.sort([24 * 0.8, 12 * 1.1, 6 * 3.0]))
    assert VoxelBox.from_corners_lps(geometry, lo, hi) == box
    assert VoxelBox.from_corners_lps(geometry, hi, lo) == box  # either order
    whole = tuple(slice(0, n) for n in geometry.shape_zyx)
    assert np.array_equal(LpsBox.from_corners(lo, hi).region_mask(geometry, whole), box.mask(geometry.shape_zyx))
    assert box.center_zyx == (5.5, 15.5, 18.5) and box.shape == (6, 12, 24)

    # Oblique: the LPS box holds the block (every voxel centre inside), and gives back a block holding it.
    geometry = _geometry((50, 40, 20), OBLIQUE)
    lo, hi = box.bounds_lps(geometry)
    inside = LpsBox.from_corners(lo, hi).region_mask(geometry, whole)
    assert inside[box.slices].all() and inside.sum() > box.mask(geometry.shape_zyx).sum()
    back = VoxelBox.from_corners_lps(geometry, lo, hi)
    assert all(a <= b for a, b in zip(back.first_zyx, box.first_zyx)) and all(a >= b for a, b in zip(back.last_zyx, box.last_zyx))


def test_box_from_corners_rejects_boxes_without_voxels() -> None:
    geometry = _geometry((10, 10, 10), OBLIQUE)
    far = geometry.index_to_lps([40.0, 40.0, 40.0])
    with pytest.raises(PromptError, match="holds no voxel of the image"):
        VoxelBox.from_corners_lps(geometry, far, far + 5.0)
    with pytest.raises(PromptError, match="box corner must be finite"):
        VoxelBox.from_corners_lps(geometry, [0.0, np.nan, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(PromptError, match="3 numbers"):
        VoxelBox.from_corners_lps(geometry, [0.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(DataError, match="0 <= first <= last"):
        VoxelBox((3, 2, 1), (2, 5, 5))
    with pytest.raises(DataError, match="is empty"):
        cvpr25_box(np.zeros((4, 4, 4), dtype=bool))


# -- the challenge's metrics -------------------------------------------------------------------------


def test_challenge_nsd_is_zero_at_or_below_dice_0_2_and_auc_is_the_trapezoid() -> None:
    gt = _block((20, 20, 20), (5, 5, 5), (15, 15, 15))
    assert challenge_nsd(gt, gt, (1.0, 1.0, 1.0), 1.0) == 1.0
    tiny = _block((20, 20, 20), (5, 5, 5), (7, 7, 7))
    assert dice(tiny, gt) <= 0.2 and challenge_nsd(tiny, gt, (1.0, 1.0, 1.0), dice(tiny, gt)) == 0.0
    assert trapezoid_auc([0.5, 0.7, 0.8, 0.8, 0.9]) == pytest.approx(0.6 + 0.75 + 0.8 + 0.85)
    assert trapezoid_auc([1.0] * 5) == 4.0 and trapezoid_auc([0.3]) == 0.0


# -- corruptions ---------------------------------------------------------------------------------------

SPACING = (3.0, 0.8, 0.9)  # anisotropic, z coarse
ORGAN = _ellipsoid((24, 80, 70), (12, 40, 35), 16.0, SPACING)
TUBE = _block((30, 30, 90), (12, 12, 5), (18, 18, 85))  # 6 × 6 voxels across, 80 long


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize(("truth", "spacing"), [(ORGAN, SPACING), (TUBE, (1.0, 1.0, 1.0))], ids=["organ", "tube"])
def test_corruptions_are_seeded_and_reach_their_dice_range(kind: str, truth: np.ndarray, spacing: tuple[float, ...]) -> None:
    results = [corrupt(truth, kind, np.random.default_rng(seed), spacing) for seed in range(4)]
    again = corrupt(truth, kind, np.random.default_rng(0), spacing)
    assert np.array_equal(again.mask, results[0].mask) and again.parts == results[0].parts
    assert len({r.mask.tobytes() for r in results}) >= 3  # different seeds, (mostly) different masks
    for r in results:
        assert r.mask.shape == truth.shape and r.mask.dtype == bool
        assert r.dice == pytest.approx(dice(r.mask, truth))
        assert r.kind == kind and 0.0 < r.strength < 1.0
        # A tube 6 voxels across moves in steps (one voxel of shift is 17 % of it): a little slack.
        assert 0.78 <= r.dice <= 0.96, (kind, r.parts, r.dice, r.target)
    assert np.mean([abs(r.dice - r.target) for r in results]) < 0.05


def test_each_corruption_does_what_its_name_says() -> None:
    rng = np.random.default_rng
    eroded = corrupt(ORGAN, "erode", rng(0), SPACING).mask
    dilated = corrupt(ORGAN, "dilate", rng(0), SPACING).mask
    holes = corrupt(ORGAN, "holes", rng(0), SPACING).mask
    slab = corrupt(ORGAN, "missing_slab", rng(0), SPACING).mask
    shifted = corrupt(ORGAN, "shift", rng(0), SPACING).mask
    assert (eroded <= ORGAN).all() and (dilated >= ORGAN).all() and (holes <= ORGAN).all() and (slab <= ORGAN).all()
    # Holes are inside: the voxels removed include some whose every neighbour is in the structure.
    from scipy import ndimage

    interior = ndimage.binary_erosion(ORGAN)
    assert (interior & ~holes).any()
    # The missing slab is whole planes across one axis: along it, removed and kept planes do not mix.
    removed = ORGAN & ~slab
    axes = [a for a in range(3) if not (removed.any(axis=tuple(b for b in range(3) if b != a)) & slab.any(axis=tuple(b for b in range(3) if b != a))).any()]
    assert axes, "no axis along which the removed voxels fill whole planes"
    # The shifted copy is the truth translated by whole voxels.
    offset = np.argwhere(shifted).min(axis=0) - np.argwhere(ORGAN).min(axis=0)
    assert np.array_equal(np.roll(ORGAN, tuple(offset), axis=(0, 1, 2)), shifted) and np.any(offset != 0)


def test_near_correct_mixes_a_boundary_kind_with_others() -> None:
    parts = [corrupt(ORGAN, "near_correct", np.random.default_rng(seed), SPACING).parts for seed in range(12)]
    assert all(p[0] in ("erode", "dilate", "style") for p in parts)
    assert any(len(p) > 1 for p in parts) and len({p[0] for p in parts}) > 1


def test_corruption_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="corruption 'blur' is not known"):
        corrupt(ORGAN, "blur", 0)
    with pytest.raises(DataError, match="empty mask"):
        corrupt(np.zeros((5, 5, 5), dtype=bool), "erode", 0)
    with pytest.raises(DataError, match="3D mask"):
        corrupt(np.ones((5, 5), dtype=bool), "erode", 0)
    with pytest.raises(ConfigError, match="dice_range must satisfy"):
        corrupt(ORGAN, "erode", 0, dice_range=(0.9, 0.8))
    with pytest.raises(ConfigError, match="spacing_mm must be 3 positive numbers"):
        corrupt(ORGAN, "erode", 0, spacing_mm=(1.0, -1.0, 1.0))
