"""Geometry of windows on anisotropic, oblique images; paste-back; window normalisation.

Truths are computed here from the definitions (``point = origin + D @ (spacing * index)`` for
images; ``point = origin + 1.5 * diag(-1, -1, 1) @ index`` for windows), not with the code
under test, so a swapped axis or a flipped sign fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy.ndimage import map_coordinates

from SAMMed3DLib.card import official_card
from SAMMed3DLib.errors import ConfigError, ImageError, ModelCardError, PromptError
from SAMMed3DLib.geometry import CANONICAL_DIRECTION_LPS, ImageGeometry, Window, extract_window, lps_to_ras, ras_to_lps
from SAMMed3DLib.paste import (
    _classify_blocks,  # the block classification of paste_logits' fast path
    paste_logits,
    resample_logits_to_grid,
    window_footprint,
)
from SAMMed3DLib.preprocessing import normalize_window

CANON = np.array([-1.0, -1.0, 1.0])  # LPS signs of tensor axes R, A, S
R, A, S = np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, 1.0])  # LPS unit vectors
BACKGROUND = 10.0


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return m


OBLIQUE = rotation(0, 25.0) @ rotation(1, -20.0)  # rotated about two axes
ANISO = (0.7, 0.9, 3.0)

#: (name, spacing_xyz_mm, direction) of the grids every geometry test runs on.
GRIDS = [
    ("identity_iso", (1.5, 1.5, 1.5), np.eye(3)),
    ("aniso", ANISO, np.eye(3)),
    ("aniso_oblique", ANISO, OBLIQUE),
    ("aniso_oblique_flipped", ANISO, OBLIQUE @ np.diag([-1.0, 1.0, -1.0])),
]
GRID_IDS = [g[0] for g in GRIDS]


def voxel_centres_lps(size_xyz, spacing, origin, direction) -> np.ndarray:
    """(z, y, x, 3) LPS centres of every voxel, from the ITK definition."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size_xyz[::-1]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1) * np.asarray(spacing)
    return idx @ np.asarray(direction).T + np.asarray(origin)


def make_image(size_xyz, spacing, direction, centre_lps, spheres) -> tuple[sitk.Image, np.ndarray]:
    """Image whose physical centre is ``centre_lps``; spheres = [(offset_lps, radius_mm, value)]."""
    half = (np.asarray(size_xyz) - 1) / 2.0
    origin = np.asarray(centre_lps) - np.asarray(direction) @ (np.asarray(spacing) * half)
    pts = voxel_centres_lps(size_xyz, spacing, origin, direction)
    arr = np.full(pts.shape[:3], BACKGROUND, dtype=np.float32)
    for offset, radius, value in spheres:
        arr[np.linalg.norm(pts - (np.asarray(centre_lps) + offset), axis=-1) <= radius] = value
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(list(spacing))
    image.SetOrigin(origin.tolist())
    image.SetDirection(np.asarray(direction).ravel().tolist())
    return image, pts


def window_index_of(points_lps: np.ndarray, window_origin: np.ndarray, spacing: float) -> np.ndarray:
    """Window index (tensor order) of LPS points, from the window definition."""
    return (points_lps - window_origin) * CANON / spacing


CENTRE = np.array([12.0, -30.0, 45.0])
# Distinct intensities toward patient R, A and S: a swapped axis or flipped sign reads a wrong one.
# Offsets 9, 21, 33 mm = 6, 14, 22 window voxels; each is >= 12 mm from every other marker.
MARKERS = [(9.0 * R, 5.0, 100.0), (21.0 * A, 5.0, 200.0), (33.0 * S, 5.0, 300.0)]


# ---------------------------------------------------------------- LPS / RAS and constants


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([1.0, 2.0, 3.0], [-1.0, -2.0, 3.0]),
        ([-10.5, 0.0, -7.25], [10.5, 0.0, -7.25]),
        ([[1, 2, 3], [4, -5, 6]], [[-1, -2, 3], [-4, 5, 6]]),
    ],
)
def test_ras_lps_conversion_is_pinned(given, expected):
    assert np.array_equal(ras_to_lps(given), np.array(expected, dtype=float))
    assert np.array_equal(lps_to_ras(expected), np.array(given, dtype=float))
    assert np.asarray(ras_to_lps(given)).shape == np.asarray(given).shape


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[1, 2, 3, 4]], np.zeros((2, 2, 3))])
def test_ras_lps_rejects_malformed_points(bad):
    with pytest.raises(PromptError, match="shape"):
        ras_to_lps(bad)


def test_canonical_direction_is_ras_in_lps():
    assert np.array_equal(CANONICAL_DIRECTION_LPS, np.diag([-1.0, -1.0, 1.0]))
    assert np.array_equal(Window.centred_at([0, 0, 0], 8, 1.5).direction, CANONICAL_DIRECTION_LPS)


# ---------------------------------------------------------------- ImageGeometry


@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=GRID_IDS)
def test_image_geometry_matches_simpleitk(name, spacing, direction):
    image, _ = make_image((9, 7, 5), spacing, direction, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    rng = np.random.default_rng(1)
    idx = rng.uniform(-0.5, 6.5, size=(6, 3))
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    assert np.allclose(geom.index_to_lps(idx), expected, atol=1e-9)
    assert np.allclose(geom.lps_to_index(expected), idx, atol=1e-9)
    assert np.allclose(geom.index_to_lps(idx[0]), expected[0])  # (3,) in, (3,) out
    assert geom.shape_zyx == sitk.GetArrayViewFromImage(image).shape
    ref = geom.to_reference_image()
    assert ref.GetSize() == image.GetSize() and np.allclose(ref.GetDirection(), image.GetDirection())
    assert np.allclose(ref.GetOrigin(), image.GetOrigin()) and np.allclose(ref.GetSpacing(), image.GetSpacing())
    # Slicer's IJKToRAS round trip
    again = ImageGeometry.from_ijk_to_ras(geom.size_xyz, geom.ijk_to_ras)
    assert np.allclose(again.spacing_xyz_mm, geom.spacing_xyz_mm) and np.allclose(again.origin_lps, geom.origin_lps)
    assert np.allclose(again.direction, geom.direction)


def test_ijk_to_ras_is_pinned():
    geom = ImageGeometry(size_xyz=(4, 5, 6), spacing_xyz_mm=(2.0, 3.0, 4.0), origin_lps=(1.0, 2.0, 3.0), direction=np.eye(3))
    expected = np.array([[-2.0, 0, 0, -1.0], [0, -3.0, 0, -2.0], [0, 0, 4.0, 3.0], [0, 0, 0, 1.0]])
    assert np.array_equal(geom.ijk_to_ras, expected)
    assert geom == ImageGeometry.from_ijk_to_ras((4, 5, 6), expected)
    assert hash(geom) == hash(ImageGeometry.from_ijk_to_ras((4, 5, 6), expected))


@pytest.mark.parametrize(
    ("index", "inside"),
    [((-0.5, 0, 0), True), ((-0.51, 0, 0), False), ((9.5, 6.5, 4.5), True), ((9.51, 0, 0), False), ((0, 6.6, 0), False), ((3, 3, 4.49), True)],
)
def test_contains_lps_uses_voxel_extent(index, inside):
    geom = ImageGeometry(size_xyz=(10, 7, 5), spacing_xyz_mm=ANISO, origin_lps=(5, 6, 7), direction=OBLIQUE)
    point = geom.index_to_lps(np.array(index, dtype=float))
    assert geom.contains_lps(point) is inside
    assert geom.contains_lps(point[None]).tolist() == [inside]


def test_image_geometry_rejects_bad_values():
    with pytest.raises(ImageError, match="spacing_xyz_mm must be positive"):
        ImageGeometry(size_xyz=(2, 2, 2), spacing_xyz_mm=(1, 0, 1), origin_lps=(0, 0, 0), direction=np.eye(3))
    with pytest.raises(ImageError, match="orthonormal"):
        ImageGeometry(size_xyz=(2, 2, 2), spacing_xyz_mm=(1, 1, 1), origin_lps=(0, 0, 0), direction=np.ones((3, 3)))
    with pytest.raises(ImageError, match="3D"):
        ImageGeometry.from_image(sitk.Image([4, 4], sitk.sitkFloat32))


# ---------------------------------------------------------------- Window


@pytest.mark.parametrize(("size", "centre_index"), [(128, 64), (32, 16), (7, 3)])
def test_window_centred_at_the_click(size, centre_index):
    click = np.array([-17.25, 40.5, 3.75])
    window = Window.centred_at(click, size, 1.5)
    assert np.array_equal(window.center_index, [centre_index] * 3)
    assert np.allclose(window.index_to_lps([centre_index] * 3), click, atol=1e-12)
    assert np.allclose(window.center_lps, click, atol=1e-12)
    assert np.allclose(window.lps_to_index(click), [centre_index] * 3, atol=1e-12)
    # one voxel along tensor axis 0/1/2 moves 1.5 mm toward patient Right/Anterior/Superior
    for axis, toward in enumerate((R, A, S)):
        step = np.full(3, float(centre_index))
        step[axis] += 1
        assert np.allclose(window.index_to_lps(step), click + 1.5 * toward, atol=1e-12)


def test_window_numbers_are_pinned():
    window = Window.centred_at([15.0, 15.0, 15.0], 4, 1.5)
    assert np.allclose(window.origin_lps, [18.0, 18.0, 12.0])
    assert np.allclose(window.index_to_lps([[0, 0, 0], [3, 1, 2]]), [[18.0, 18.0, 12.0], [13.5, 16.5, 15.0]])
    assert window.contains_index([-0.5, 0, 0]) and not window.contains_index([3.5, 0, 0])
    assert window.contains_index([[3.49, 0, 0], [0, -0.51, 0]]).tolist() == [True, False]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"center_lps": [0, 0, 0], "size": 0, "spacing_mm": 1.5}, ConfigError, "size"),
        ({"center_lps": [0, 0, 0], "size": 8, "spacing_mm": -1.0}, ConfigError, "spacing_mm"),
        ({"center_lps": [0, np.nan, 0], "size": 8, "spacing_mm": 1.5}, PromptError, "finite"),
        ({"center_lps": [0, 0], "size": 8, "spacing_mm": 1.5}, PromptError, "finite"),
    ],
)
def test_window_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Window.centred_at(**kwargs)


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=GRID_IDS)
def test_extracted_window_shows_the_object_in_tensor_axis_order(name, spacing, direction):
    size_xyz = tuple(int(round(90 / s)) for s in spacing)  # ~90 mm cube
    image, _ = make_image(size_xyz, spacing, direction, CENTRE, MARKERS)
    window = Window.centred_at(CENTRE, 48, 1.5)
    array = extract_window(image, window)
    assert array.shape == (48, 48, 48) and array.dtype == np.float32 and array.flags.c_contiguous
    c = 24
    offsets = {0: (6, 100.0), 1: (14, 200.0), 2: (22, 300.0)}  # tensor axis -> (voxels toward R/A/S, value)
    for axis, (n, value) in offsets.items():
        for probe_axis in range(3):
            for sign in (1, -1):
                index = [c, c, c]
                index[probe_axis] += sign * n
                expected = value if (probe_axis == axis and sign == 1) else BACKGROUND
                assert array[tuple(index)] == pytest.approx(expected, abs=1e-3), (axis, probe_axis, sign)
    # intensity-weighted centre of the R marker (the nearest other marker is 23 mm away) is (30, 24, 24)
    box = array[25:36, 19:30, 19:30] - BACKGROUND
    grid = np.stack(np.meshgrid(np.arange(25, 36), np.arange(19, 30), np.arange(19, 30), indexing="ij"), axis=-1)
    centre = (grid * box[..., None]).sum(axis=(0, 1, 2)) / box.sum()
    assert np.allclose(centre, [30, 24, 24], atol=0.25)


def test_extract_rejects_non_3d_images():
    with pytest.raises(ImageError, match="3D scalar"):
        extract_window(sitk.Image([8, 8], sitk.sitkFloat32), Window.centred_at([0, 0, 0], 8, 1.5))


@pytest.mark.parametrize("corner", [(0, 0, 0), (1, 1, 1), (0.5, 0.5, 0), (1, 0.5, 0.5)], ids=["corner0", "corner1", "bottom_face", "side_face"])
def test_window_at_the_image_border_is_zero_padded(corner):
    size_xyz = (60, 50, 16)
    image, _ = make_image(size_xyz, ANISO, OBLIQUE, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    click = geom.index_to_lps(np.array(corner, dtype=float) * (np.array(size_xyz) - 1))
    window = Window.centred_at(click, 32, 1.5)
    array = extract_window(image, window)
    # which window voxels lie in the image, from the definitions
    t = np.stack(np.meshgrid(*(np.arange(32.0),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    pts = window.origin_lps + 1.5 * CANON * t
    idx = (pts - geom.origin_lps) @ OBLIQUE / np.asarray(ANISO)
    inside = np.all((idx > -0.5 + 1e-6) & (idx < np.asarray(size_xyz) - 0.5 - 1e-6), axis=1)
    outside = np.any((idx < -0.5 - 1e-6) | (idx > np.asarray(size_xyz) - 0.5 + 1e-6), axis=1)
    values = array.reshape(-1)
    assert 0.05 < inside.mean() < 0.95 and outside.mean() > 0.05  # the window straddles the border
    assert np.all(values[outside] == 0.0)
    assert np.allclose(values[inside], BACKGROUND)


# ---------------------------------------------------------------- footprint and paste-back


def box_logits(window: Window, centre_lps, half_mm, side: int) -> np.ndarray:
    """Low-res logits (tensor order): signed mm distance inside a box with half-sides along R, A, S.

    ``min_a(half_a - |d_a|)`` is linear across each face, so trilinear interpolation puts the zero
    crossing on the faces (only edges and corners round off).
    """
    factor = window.size / side
    x = factor * (np.arange(side) + 0.5) - 0.5  # window index of low-res nodes
    t = np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1)
    pts = window.origin_lps + window.spacing_mm * CANON * t
    d = (pts - centre_lps) * CANON  # offsets along R, A, S in mm
    return np.min(np.asarray(half_mm) - np.abs(d), axis=-1).astype(np.float32)


def truth_inside_window(pts: np.ndarray, window: Window) -> np.ndarray:
    w = window_index_of(pts, window.origin_lps, window.spacing_mm)
    return np.all((w >= -0.5) & (w < window.size - 0.5), axis=-1)


def bbox_slices(mask: np.ndarray):
    nz = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(nz.min(axis=0), nz.max(axis=0), strict=True))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("side", [12, 24], ids=["decoder_grid", "fine_head_grid"])
@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=GRID_IDS)
def test_paste_lands_on_the_object_and_only_inside_the_window(name, spacing, direction, side):
    size_xyz = tuple(int(round(100 / s)) for s in spacing)
    image, pts = make_image(size_xyz, spacing, direction, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    click = CENTRE + 5.0 * R - 3.0 * S
    window = Window.centred_at(click, 48, 1.5)  # 72 mm window inside a 100 mm image
    # a box off the click, long along R, flat along S: a swapped axis or flipped sign misses it
    obj_centre = click + 6.0 * R + 4.0 * A - 3.0 * S
    half = (16.0, 10.0, 6.0)
    logits = box_logits(window, obj_centre, half, side=side)  # size/4 (decoder) or size/2 (fine head)
    d = (pts - obj_centre) * CANON
    truth = np.all(np.abs(d) < np.asarray(half), axis=-1)
    inside = truth_inside_window(pts, window)
    assert not np.any(truth & ~inside)  # the object fits in the window

    footprint = window_footprint(window, geom)
    assert footprint == bbox_slices(inside)  # tight bounding box of the voxel centres inside
    mask = np.full(geom.shape_zyx, 7, dtype=np.uint8)
    assert paste_logits(logits, window, geom, mask) == footprint
    assert np.all(mask[~inside] == 7)  # nothing outside the window changed
    assert set(np.unique(mask[inside]).tolist()) <= {0, 1}
    assert dice(mask == 1, truth) > 0.9
    # exactly the official interpolant: trilinear in low-res coordinates u = (x + 0.5) / f - 0.5, clamped
    u = (window_index_of(pts[inside], window.origin_lps, 1.5) + 0.5) / (48 / side) - 0.5
    expected = map_coordinates(logits, u.T, order=1, mode="nearest")
    got = mask[inside] == 1
    assert np.all((got == (expected > 0)) | (np.abs(expected) < 1e-4))
    # a second paste of negative logits clears the window and only the window
    assert paste_logits(-np.abs(logits) - 1, window, geom, mask, value=3) == footprint
    assert np.all(mask[inside] == 0) and np.all(mask[~inside] == 7)


@pytest.mark.parametrize("hole", ["corner_notch", "single_node"])
@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=GRID_IDS)
def test_paste_of_an_object_filling_the_window_is_exact(name, spacing, direction, hole):
    # positive almost everywhere (an organ larger than the window) with a notch in one corner or
    # a one-node hole: blocks of positive nodes are filled without interpolation, the rest is
    # interpolated
    size_xyz = tuple(int(round(100 / s)) for s in spacing)
    image, pts = make_image(size_xyz, spacing, direction, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    window = Window.centred_at(CENTRE, 48, 1.5)
    rng = np.random.default_rng(7)
    low = rng.uniform(0.5, 3.0, size=(12, 12, 12)).astype(np.float32)
    if hole == "corner_notch":
        low[8:, 9:, :4] = rng.uniform(-3.0, 0.5, size=(4, 3, 4))
    else:
        low[6, 5, 7] = -100.0
    block, surely_positive, mixed = _classify_blocks(low, window, geom, *_footprint_box(window, geom))
    assert surely_positive.mean() > 0.5 and mixed.any()  # the test exercises both kinds of block
    inside = truth_inside_window(pts, window)
    mask = np.full(geom.shape_zyx, 7, dtype=np.uint8)
    paste_logits(low, window, geom, mask, value=2)
    u = (window_index_of(pts[inside], window.origin_lps, 1.5) + 0.5) / 4.0 - 0.5
    expected = map_coordinates(low, u.T, order=1, mode="nearest")
    got = mask[inside]
    assert np.all((got == 2) == (expected > 0))
    assert np.all(got[expected <= 0] == 0) and np.all(mask[~inside] == 7)


def _footprint_box(window: Window, geom: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    fp = window_footprint(window, geom)
    return np.array([fp[2].start, fp[1].start, fp[0].start]), np.array([fp[2].stop - 1, fp[1].stop - 1, fp[0].stop - 1])


def test_paste_keeps_other_labels_outside_and_accepts_torch_logits():
    image, pts = make_image((60, 50, 20), ANISO, OBLIQUE, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    window = Window.centred_at(CENTRE, 16, 1.5)
    inside = truth_inside_window(pts, window)
    mask = np.zeros(geom.shape_zyx, dtype=np.uint8)
    mask[inside] = 2
    mask[~inside] = 5
    logits = torch.ones(1, 1, 4, 4, 4)
    paste_logits(logits, window, geom, mask, value=9)
    assert np.all(mask[inside] == 9) and np.all(mask[~inside] == 5)


def test_logits_on_the_window_grid_equal_official_upsampling():
    size, side = 32, 8
    window = Window.centred_at([3.0, -4.0, 5.0], size, 1.5)
    # an original grid equal to the window grid: ITK axes i, j, k = tensor axes 0, 1, 2
    geom = ImageGeometry(size_xyz=(size,) * 3, spacing_xyz_mm=(1.5,) * 3, origin_lps=window.origin_lps, direction=CANONICAL_DIRECTION_LPS)
    low = torch.randn(side, side, side)
    official = F.interpolate(low[None, None], size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
    result = resample_logits_to_grid(low, window, geom)
    assert result is not None and result.slices_zyx == (slice(0, size),) * 3
    assert np.all(result.inside_zyx)
    assert np.abs(result.logits_zyx - official.transpose(2, 1, 0)).max() < 1e-5
    mask = np.zeros(geom.shape_zyx, dtype=np.uint8)
    paste_logits(low.numpy(), window, geom, mask)
    agree = (mask == 1) == (official.transpose(2, 1, 0) > 0)
    near_zero = np.abs(official.transpose(2, 1, 0)) < 1e-5
    assert np.all(agree | near_zero)


def test_resampled_logits_agree_with_paste_on_an_oblique_grid():
    image, pts = make_image((70, 60, 20), ANISO, OBLIQUE, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    window = Window.centred_at(CENTRE + 4.0 * A, 32, 1.5)
    low = torch.randn(8, 8, 8).numpy()
    result = resample_logits_to_grid(low, window, geom)
    inside = truth_inside_window(pts, window)
    assert np.array_equal(result.inside_zyx, inside[result.slices_zyx])
    mask = np.zeros(geom.shape_zyx, dtype=np.uint8)
    paste_logits(low, window, geom, mask)
    expected = np.zeros_like(mask)
    expected[result.slices_zyx][result.inside_zyx & (result.logits_zyx > 0)] = 1
    assert np.array_equal(mask, expected)


def test_image_smaller_than_the_window():
    size_xyz = (12, 10, 6)  # 8.4 x 9 x 18 mm inside a 48 mm window
    image, pts = make_image(size_xyz, ANISO, OBLIQUE, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    window = Window.centred_at(CENTRE, 32, 1.5)
    array = extract_window(image, window)
    t = np.argwhere(array > 0)
    covered = window.index_to_lps(t.astype(float))
    assert np.all(geom.contains_lps(covered))  # non-zero only over the image, zero padding elsewhere
    assert 0 < len(t) < array.size
    assert window_footprint(window, geom) == (slice(0, 6), slice(0, 10), slice(0, 12))
    mask = np.full(geom.shape_zyx, 4, dtype=np.uint8)
    paste_logits(np.ones((8, 8, 8), np.float32), window, geom, mask)
    assert np.all(mask == 1)


def test_disjoint_window_changes_nothing():
    image, _ = make_image((20, 20, 8), ANISO, OBLIQUE, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    window = Window.centred_at(CENTRE + 500.0 * S, 16, 1.5)
    assert window_footprint(window, geom) is None
    mask = np.full(geom.shape_zyx, 3, dtype=np.uint8)
    assert paste_logits(np.ones((4, 4, 4), np.float32), window, geom, mask) is None
    assert np.all(mask == 3)
    assert resample_logits_to_grid(np.ones((4, 4, 4)), window, geom) is None
    assert np.all(extract_window(image, window) == 0)


@pytest.mark.parametrize(
    ("logits", "mask", "value", "error", "match"),
    [
        (np.ones((4, 4, 4)), np.zeros((8, 20, 20), np.uint16), 1, ImageError, "uint8"),
        (np.ones((4, 4, 4)), np.zeros((8, 20, 21), np.uint8), 1, ImageError, "shape"),
        (np.ones((4, 4, 5)), np.zeros((8, 20, 20), np.uint8), 1, ValueError, "cubic"),
        (np.ones((32, 32, 32)), np.zeros((8, 20, 20), np.uint8), 1, ValueError, "larger than the window"),
        (np.ones((4, 4, 4)), np.zeros((8, 20, 20), np.uint8), 0, ValueError, "1..255"),
        (np.ones((4, 4, 4)), np.zeros((8, 20, 20), np.uint8), 256, ValueError, "1..255"),
    ],
)
def test_paste_rejects_bad_arguments(logits, mask, value, error, match):
    image, _ = make_image((20, 20, 8), ANISO, OBLIQUE, CENTRE, [])
    with pytest.raises(error, match=match):
        paste_logits(logits, Window.centred_at(CENTRE, 16, 1.5), ImageGeometry.from_image(image), mask, value=value)


# ---------------------------------------------------------------- normalize_window


def card(clip=None):
    c = official_card()
    c.intensity_clip = clip
    return c


def test_normalize_uses_unbiased_statistics_of_positive_voxels():
    x = np.array([-5.0, 0.0, 1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    mean, std = 2.5, np.sqrt(5.0 / 3.0)  # of [1, 2, 3, 4], divisor n - 1
    out = normalize_window(x, card())
    assert out.dtype == np.float32
    assert np.allclose(out, (x - mean) / std, atol=1e-6)
    assert out[1] == pytest.approx(-2.5 / std, abs=1e-6)  # padding/zero voxels are normalised too
    assert x[0] == -5.0  # input untouched


def test_normalize_matches_torch_unbiased_std_on_a_window():
    rng = np.random.default_rng(3)
    x = rng.normal(20.0, 50.0, size=(16, 16, 16)).astype(np.float32)
    fg = torch.from_numpy(x)[torch.from_numpy(x) > 0]
    expected = (x - fg.mean().item()) / fg.std().item()  # torch.std is unbiased, as torchio uses it
    assert np.allclose(normalize_window(x, card()), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([-3.0, -1.0, -2.0, 0.0], np.array([-1.5, 0.5, -0.5, 1.5]) / np.sqrt(5 / 3)),  # none > 0: all voxels
        ([-2.0, 0.0, 2.0, 0.0], np.array([-2.0, 0.0, 2.0, 0.0]) / np.sqrt(8 / 3)),  # one voxel > 0: all voxels
        ([7.0, 7.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0]),  # constant: mean only
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),  # empty foreground and constant
        ([5.0], [0.0]),  # a single voxel
    ],
    ids=["no_positive", "one_positive", "constant", "all_zero", "single_voxel"],
)
def test_normalize_guards_degenerate_windows(values, expected):
    out = normalize_window(np.array(values, dtype=np.float32), card())
    assert np.all(np.isfinite(out))
    assert np.allclose(out, np.array(expected, dtype=np.float64).ravel(), atol=1e-6)


def test_normalize_clips_before_statistics():
    x = np.array([-2000.0, 50.0, 100.0, 3000.0], dtype=np.float32)
    out = normalize_window(x, card(clip=(-1000.0, 1000.0)))
    clipped = np.array([-1000.0, 50.0, 100.0, 1000.0])
    fg = clipped[clipped > 0]
    assert np.allclose(out, (clipped - fg.mean()) / fg.std(ddof=1), atol=1e-6)


def test_normalize_rejects_unknown_scheme():
    c = card()
    c.normalization = "minmax"
    with pytest.raises(ModelCardError, match="not supported"):
        normalize_window(np.ones(4, np.float32), c)


def _paste_reference(low: np.ndarray, window: Window, geom: ImageGeometry, mask: np.ndarray, value: int) -> np.ndarray:
    """What paste_logits must write: SimpleITK's interpolation at every footprint voxel, > 0 inside the window."""
    expected = mask.copy()
    full = resample_logits_to_grid(low, window, geom)
    if full is not None:
        block = expected[full.slices_zyx]
        block[full.inside_zyx] = np.where(full.logits_zyx[full.inside_zyx] > 0, value, 0)
    return expected


@pytest.mark.parametrize("side", [8, 16], ids=["decoder_grid", "fine_head_grid"])
@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=GRID_IDS)
def test_paste_equals_interpolating_every_voxel(name, spacing, direction, side):
    # Random logit fields (scattered masks, compact blobs, all-positive with holes), windows in the
    # image and across its border, a coarser window grid (a zoomed-out box's window), a previous
    # scattered mask and other labels in place: the paste is voxel for voxel the full interpolation.
    size_xyz = tuple(int(round(60 / s)) for s in spacing)
    image, _ = make_image(size_xyz, spacing, direction, CENTRE, [])
    geom = ImageGeometry.from_image(image)
    rng = np.random.default_rng(sum(map(ord, name)) + side)
    x = np.arange(side) - (side - 1) / 2
    blob = 0.25 * side - np.linalg.norm(np.stack(np.meshgrid(x, x, x, indexing="ij")), axis=0)
    fields = {
        "scattered": rng.normal(0.0, 1.0, (side,) * 3),
        "mostly_positive": rng.normal(0.0, 1.0, (side,) * 3) + 1.5,
        "blob": blob + 0.3 * rng.normal(size=(side,) * 3),
        "filled_with_hole": np.where(rng.random((side,) * 3) < 0.03, -1.0, 1.0) * rng.uniform(0.2, 2.0, (side,) * 3),
    }
    windows = [
        Window.centred_at(CENTRE + 3.0 * R - 2.0 * S, 32, 1.5),  # inside the 60 mm image
        Window.centred_at(CENTRE + 40.0 * R + 25.0 * A, 32, 1.5),  # across a corner of the image
        Window.centred_at(CENTRE - 4.0 * S, 32, 2.5),  # a coarser grid: a box's zoomed-out window
    ]
    for window in windows:
        for field_name, low in fields.items():
            low = low.astype(np.float32)
            for value in (1, 4):
                mask = rng.choice(np.array([0, 1, 4, 6], np.uint8), size=geom.shape_zyx, p=[0.4, 0.3, 0.2, 0.1])
                expected = _paste_reference(low, window, geom, mask, value)
                paste_logits(low, window, geom, mask, value=value)
                assert np.array_equal(mask, expected), (field_name, window.spacing_mm, value)
