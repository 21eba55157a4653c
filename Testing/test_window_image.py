"""The separable window extraction (image axes = window axes up to order and sign) equals SimpleITK's.

:func:`SAMMed3DLib.geometry.extract_window` resamples the window with SimpleITK (linear, 0
outside the image); :mod:`SAMMed3DLib.window_image` computes the same values with three 1-D
interpolations. Both must agree to float32 rounding for flipped and permuted axes, anisotropic
voxels, windows across the image's border and past it, zoomed-out and zoomed-in windows, integer
pixel types and one-voxel-thick images; oblique images keep SimpleITK. The session's windows use
it: their model input is the normalised SimpleITK window.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib.card import official_card
from SAMMed3DLib.errors import ImageError
from SAMMed3DLib.geometry import ImageGeometry, Window, extract_window
from SAMMed3DLib.preprocessing import normalize_window
from SAMMed3DLib.separable import AXIS_DRIFT_LIMIT, separable_axes
from SAMMed3DLib.window_image import _plan, extract_window_fast, extract_window_separable, window_to_index

from grids import AXIS_ALIGNED_GRIDS, CENTRE, permutation, rotation_z

#: The axis-aligned grids of the paste tests, and one with all three axes permuted.
GRIDS = [*AXIS_ALIGNED_GRIDS, ("all_permuted", (1.3, 0.7, 2.2), permutation((1, 2, 0), (-1.0, 1.0, 1.0)))]

#: (name, centre offset from the image centre in mm, window size, window spacing in mm)
WINDOWS = [
    ("inside", (3.1, -2.3, 4.2), 32, 1.5),
    ("across_a_corner", (-40.3, 25.1, 20.7), 32, 1.5),
    ("zoomed_out", (1.3, 0.4, -4.1), 32, 3.7),  # larger than the image on every side
    ("zoomed_in", (-2.9, 5.3, 1.7), 24, 0.45),  # finer than the image's voxels
    ("outside", (0.0, 0.0, 400.0), 16, 1.5),
]


def _image(spacing, direction, rng, extent_mm: float = 60.0, dtype=np.float32) -> sitk.Image:
    size = [int(round(extent_mm / s)) for s in spacing]
    values = rng.normal(40.0, 300.0, size=size[::-1])
    image = sitk.GetImageFromArray(values.astype(dtype))
    half = (np.asarray(size) - 1) / 2.0
    image.SetSpacing(list(spacing))
    image.SetOrigin((CENTRE - np.asarray(direction) @ (np.asarray(spacing) * half)).tolist())
    image.SetDirection(np.asarray(direction).ravel().tolist())
    return image


def _assert_same(fast: np.ndarray, general: np.ndarray) -> None:
    assert fast.shape == general.shape and fast.dtype == np.float32 and fast.flags.c_contiguous
    assert np.array_equal(fast == 0, general == 0)  # the same voxels inside the image
    assert np.max(np.abs(fast - general)) <= 1e-5 * max(1.0, float(np.max(np.abs(general))))


@pytest.mark.parametrize(("window_name", "offset", "size", "spacing_mm"), WINDOWS, ids=[w[0] for w in WINDOWS])
@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=[g[0] for g in GRIDS])
def test_separable_extraction_equals_simpleitk(name, spacing, direction, window_name, offset, size, spacing_mm):
    image = _image(spacing, direction, np.random.default_rng(len(name) + size))
    window = Window.centred_at(CENTRE + np.asarray(offset), size, spacing_mm)
    fast = extract_window_separable(image, window, ImageGeometry.from_image(image))
    assert fast is not None
    general = extract_window(image, window)
    _assert_same(fast, general)
    if window_name == "outside":
        assert not fast.any()
    elif window_name == "across_a_corner":
        assert 0.05 < np.mean(fast != 0) < 0.95  # zero padding past the border, values inside


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float64], ids=["int16", "uint8", "float64"])
def test_other_pixel_types_are_interpolated_like_simpleitk(dtype):
    rng = np.random.default_rng(4)
    image = _image((0.8, 0.8, 2.5), np.eye(3), rng, dtype=np.float64)
    image = sitk.Cast(sitk.Clamp(image, lowerBound=0.0, upperBound=250.0), {np.int16: sitk.sitkInt16, np.uint8: sitk.sitkUInt8, np.float64: sitk.sitkFloat64}[dtype])
    window = Window.centred_at(CENTRE + [5.3, -3.1, 2.2], 32, 1.5)
    _assert_same(extract_window_separable(image, window), extract_window(image, window))


def test_a_one_voxel_thick_image_repeats_its_slice_within_half_a_voxel():
    rng = np.random.default_rng(5)
    image = sitk.GetImageFromArray(rng.normal(size=(1, 40, 30)).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 6.0))
    window = Window.centred_at(image.TransformContinuousIndexToPhysicalPoint((14.3, 19.7, 0.1)), 16, 1.5)
    fast = extract_window_separable(image, window)
    _assert_same(fast, extract_window(image, window))
    assert 0 < np.count_nonzero(fast.any(axis=(0, 1))) <= 4  # 6 mm of S: 4 window planes of 1.5 mm


def test_header_noise_keeps_the_separable_path_and_oblique_images_keep_simpleitk():
    rng = np.random.default_rng(6)
    window = Window.centred_at(CENTRE + [2.2, 1.1, -3.3], 32, 1.5)
    noisy = _image((0.7, 0.9, 3.0), rotation_z(1e-9), rng)  # cosines 1e-9 off, as DICOM headers carry
    fast = extract_window_separable(noisy, window)
    assert fast is not None
    _assert_same(fast, extract_window(noisy, window))
    for radians in (np.deg2rad(20.0), 10 * AXIS_DRIFT_LIMIT / 128):  # oblique; drifts 10x too far over the window
        oblique = _image((0.7, 0.9, 3.0), rotation_z(radians), rng)
        assert extract_window_separable(oblique, window) is None
        assert np.array_equal(extract_window_fast(oblique, window), extract_window(oblique, window))


def test_an_axial_image_is_contracted_straight_into_window_order():
    # ITK's axial (i toward L, j toward P, k toward S) and a RAS-stored one: no final permutation
    for direction in (np.eye(3), np.diag([-1.0, -1.0, 1.0])):
        image = _image((0.8, 0.8, 2.5), direction, np.random.default_rng(9))
        geometry = ImageGeometry.from_image(image)
        m, _ = window_to_index(Window.centred_at(CENTRE, 32, 1.5), geometry)
        follows = separable_axes(m, (32, 32, 32))
        assert follows == (0, 1, 2)
        moves, permutation, _ = _plan((30, 80, 80), 32, follows, (32 * 80, 32 * 80, 32 * 30))
        assert len(moves) == 3 and permutation is None


def test_a_window_reading_a_huge_block_is_left_to_simpleitk():
    # 4x zoomed out over a CT-sized image: the block is the whole image, the products would cost
    # more than SimpleITK's interpolation of the window's points
    image = sitk.Image([512, 512, 200], sitk.sitkFloat32)
    image.SetSpacing((0.8, 0.8, 2.5))
    centre = image.TransformContinuousIndexToPhysicalPoint((255.5, 255.5, 99.5))
    assert extract_window_separable(image, Window.centred_at(centre, 128, 6.0)) is None
    assert extract_window_separable(image, Window.centred_at(centre, 128, 1.5)) is not None
    vector = sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 2)
    assert extract_window_separable(vector, Window.centred_at((0, 0, 0), 8, 1.5)) is None
    with pytest.raises(ImageError, match="3D scalar"):
        extract_window_fast(vector, Window.centred_at((0, 0, 0), 8, 1.5))


def test_separable_extraction_runs_on_the_callers_threads_and_leaves_the_image_alone():
    image = _image((0.8, 0.8, 2.5), np.eye(3), np.random.default_rng(7))
    before = sitk.GetArrayFromImage(image)
    window = Window.centred_at(CENTRE + [1.0, 2.0, 3.0], 32, 1.5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = extract_window_separable(image, window)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, extract_window_separable(image, window))
    assert np.array_equal(sitk.GetArrayFromImage(image), before)


def test_in_place_normalisation_gives_the_copying_result():
    window = extract_window_fast(_image((0.8, 0.8, 2.5), np.eye(3), np.random.default_rng(8)), Window.centred_at(CENTRE, 32, 1.5))
    card = official_card()
    copied = normalize_window(window, card)
    assert not np.array_equal(copied, window)  # the input is left as it was
    in_place = normalize_window(window, card, copy=False)
    assert in_place is window and np.array_equal(in_place, copied)
