"""The separable paste (image axes = window axes up to order and sign) equals the general one.

The general path interpolates every voxel centre with SimpleITK (``paste._sample_box``); the fast
path (:mod:`SAMMed3DLib.separable`) does three 1-D interpolations. Both must give the same logits
(to float32 rounding) and the same mask, for flipped and permuted axes, anisotropic voxels,
windows across the image's border, zoomed-out windows, both logit grids, and previous labels in
place; oblique grids and non-finite logits keep the general path.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from SAMMed3DLib import paste
from SAMMed3DLib.geometry import ImageGeometry, Window
from SAMMed3DLib.paste import paste_logits, resample_logits_to_grid
from SAMMed3DLib.separable import AXIS_DRIFT_LIMIT, interpolation_matrix, separable_axes

from grids import AXIS_ALIGNED_GRIDS, CENTRE, centred_geometry, rotation_z

GRIDS = AXIS_ALIGNED_GRIDS


def _fields(side: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = np.arange(side) - (side - 1) / 2
    blob = 0.25 * side - np.linalg.norm(np.stack(np.meshgrid(x, x, x, indexing="ij")), axis=0)
    return {
        "scattered": rng.normal(0.0, 1.0, (side,) * 3).astype(np.float32),
        "blob": (blob + 0.3 * rng.normal(size=(side,) * 3)).astype(np.float32),
        "mostly_positive": (rng.normal(0.0, 1.0, (side,) * 3) + 1.5).astype(np.float32),
    }


def _windows() -> list[Window]:
    return [
        Window.centred_at(CENTRE + [3.0, -2.0, 4.0], 32, 1.5),  # inside the 60 mm image
        Window.centred_at(CENTRE + [-40.0, 25.0, 20.0], 32, 1.5),  # across a corner of the image
        Window.centred_at(CENTRE + [1.0, 0.0, -4.0], 32, 2.5),  # zoomed out: larger than the image
    ]


def _general(low: np.ndarray, window: Window, geom: ImageGeometry) -> tuple[tuple[slice, ...], np.ndarray]:
    """SimpleITK's interpolation at every footprint voxel, NaN outside the window (the general path)."""
    fp = paste._footprint(window, geom)
    values = paste._sample_box(paste._low_res_image(low, window), geom, fp.lo_xyz, fp.hi_xyz)
    values[~paste._inside_mask(fp, fp.lo_xyz, fp.hi_xyz)] = np.nan
    return fp.slices_zyx, values


@pytest.mark.parametrize("side", [8, 16], ids=["decoder_grid", "fine_head_grid"])
@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=[g[0] for g in GRIDS])
def test_separable_logits_and_paste_equal_the_general_path(name, spacing, direction, side):
    geom = centred_geometry(spacing, direction)
    rng = np.random.default_rng(sum(map(ord, name)) + side)
    for window, (field, low) in itertools.product(_windows(), _fields(side, rng).items()):
        fp = paste._footprint(window, geom)
        assert fp is not None and fp.is_box
        assert paste._separable(low, window, geom, fp.lo_xyz, fp.hi_xyz) is not None  # the fast path runs
        slices, general = _general(low, window, geom)
        fast = resample_logits_to_grid(low, window, geom)
        assert fast.slices_zyx == slices
        assert np.array_equal(np.isnan(fast.logits_zyx), np.isnan(general))
        assert np.nanmax(np.abs(fast.logits_zyx - general)) < 1e-5, (field, window.spacing_mm)
        for value in (1, 4):
            mask = rng.choice(np.array([0, 1, 4, 6], np.uint8), size=geom.shape_zyx, p=[0.4, 0.3, 0.2, 0.1])
            expected = mask.copy()
            block = expected[slices]
            inside = ~np.isnan(general)
            block[inside] = np.where(general[inside] > 0, value, 0)
            paste_logits(low, window, geom, mask, value=value)
            undecided = np.zeros(geom.shape_zyx, bool)
            undecided[slices] = np.abs(np.nan_to_num(general, nan=1.0)) < 1e-5  # float32 ties at 0
            assert np.array_equal(mask[~undecided], expected[~undecided]), (field, window.spacing_mm, value)
            assert set(np.unique(mask[undecided]).tolist()) <= {0, value}


@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=[g[0] for g in GRIDS])
def test_separable_logits_are_the_trilinear_interpolant_at_voxel_centres(name, spacing, direction):
    # independent of both paths: the interpolant's definition, u = (w + 0.5) / f - 0.5, clamped
    geom = centred_geometry(spacing, direction)
    window = Window.centred_at(CENTRE + [-10.0, 6.0, 2.0], 32, 1.5)
    low = np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32)
    result = resample_logits_to_grid(low, window, geom)
    k, j, i = np.meshgrid(*(np.arange(s.start, s.stop) for s in result.slices_zyx), indexing="ij")
    points = geom.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64))
    u = (window.lps_to_index(points) + 0.5) / 4.0 - 0.5
    expected = map_coordinates(low.astype(np.float64), u.T, order=1, mode="nearest").reshape(i.shape)
    inside = result.inside_zyx
    assert np.abs(result.logits_zyx[inside] - expected[inside]).max() < 1e-5


def test_direction_noise_of_a_header_keeps_the_fast_path_and_an_oblique_grid_does_not():
    window = Window.centred_at(CENTRE, 32, 1.5)
    low = np.random.default_rng(2).normal(size=(8, 8, 8)).astype(np.float32)
    noisy = centred_geometry((0.7, 0.9, 3.0), rotation_z(1e-9))  # cosines 1e-9 off, as DICOM headers carry
    fp = paste._footprint(window, noisy)
    assert paste._separable(low, window, noisy, fp.lo_xyz, fp.hi_xyz) is not None
    slices, general = _general(low, window, noisy)
    fast = resample_logits_to_grid(low, window, noisy)
    assert np.array_equal(np.isnan(fast.logits_zyx), np.isnan(general))
    assert np.nanmax(np.abs(fast.logits_zyx - general)) < 1e-5
    oblique = centred_geometry((0.7, 0.9, 3.0), rotation_z(np.deg2rad(5.0)))
    a, _ = paste._index_affine(window, oblique)
    assert separable_axes(a, oblique.size_xyz) is None
    slightly = centred_geometry((0.7, 0.9, 3.0), rotation_z(10 * AXIS_DRIFT_LIMIT))  # drifts 10x too far over the image
    assert separable_axes(paste._index_affine(window, slightly)[0], slightly.size_xyz) is None


def test_non_finite_logits_take_the_general_path():
    geom = centred_geometry((0.7, 0.9, 3.0), np.eye(3))
    window = Window.centred_at(CENTRE, 32, 1.5)
    low = np.ones((8, 8, 8), np.float32)
    low[4, 4, 4] = np.nan  # a NaN spreads through a matrix product: the general path keeps it local
    fp = paste._footprint(window, geom)
    assert paste._separable(low, window, geom, fp.lo_xyz, fp.hi_xyz) is None
    mask = np.zeros(geom.shape_zyx, np.uint8)
    paste_logits(low, window, geom, mask)
    slices, general = _general(low, window, geom)
    inside = paste._inside_mask(fp, fp.lo_xyz, fp.hi_xyz)
    assert 0 < np.count_nonzero(mask) < np.count_nonzero(inside)  # voxels near the NaN node are not positive, the rest are
    assert np.array_equal(mask[slices][inside], (general[inside] > 0).astype(np.uint8))


@pytest.mark.parametrize("side", [1, 2, 8])
def test_interpolation_rows_are_two_tap_and_clamped(side):
    factor = 32 / side
    w = np.array([-0.5, 0.0, 3.3, 17.0, 31.0, 31.49])
    m = interpolation_matrix(w, side, factor)
    assert m.shape == (len(w), side) and np.allclose(m.sum(axis=1), 1.0)
    assert np.all(np.count_nonzero(m, axis=1) <= 2)
    nodes = factor * (np.arange(side) + 0.5) - 0.5
    expected = np.interp(w, nodes, np.arange(side, dtype=float)) if side > 1 else np.zeros(len(w))
    assert np.allclose(m @ np.arange(side, dtype=np.float32), expected, atol=1e-5)
