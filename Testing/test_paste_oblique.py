"""Paste-back on oblique grids (:mod:`SAMMed3DLib.oblique`) writes exactly the voxels it wrote before.

Before, SimpleITK interpolated an edge-padded logits image over the footprint's whole bounding
box and a mask of the window's voxels picked what was written. Now SimpleITK gets the unpadded
image, whose buffer is the window, in slabs, and the inside mask is written from row runs. The
masks must be bit-identical to the padded interpolation's, on oblique anisotropic grids (flipped
too), windows inside the image, across its corner and zoomed out beyond it, both logit grids,
scattered, compact and empty logits, previous labels in place, several slabs; a float64
interpolant (scipy) confirms the decisions independently. A session with a box, locked voxels,
an existing mask and local corrections gives the same masks, step by step, as one whose paste
is that float64 interpolant.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.ndimage import map_coordinates

from SAMMed3DLib import build_sam3d, oblique, paste, session_steps
from SAMMed3DLib.geometry import ImageGeometry, Window
from SAMMed3DLib.paste import paste_logits
from SAMMed3DLib.session import Session

from grids import CENTRE, centred_geometry, rotation
from test_session import TINY

#: (name, spacing_xyz_mm, direction): a tilted MR, a gantry-tilt CT, a slight in-plane rotation,
#: a flipped oblique and a sagittal-like oblique, all anisotropic.
GRIDS = [
    ("tilted", (0.8, 0.8, 2.5), rotation((0.3, 0.2, 1.0), 20.0)),
    ("gantry_tilt", (0.7, 0.9, 3.0), rotation((1.0, 0.0, 0.0), 25.0)),
    ("in_plane_8deg", (1.1, 0.6, 2.0), rotation((0.0, 0.0, 1.0), 8.0)),
    ("flipped", (0.9, 1.2, 2.2), rotation((0.5, -0.4, 0.3), 33.0, flip_column=2)),
    ("sagittal_oblique", (2.5, 0.8, 1.1), rotation((0.2, 1.0, 0.1), 70.0, flip_column=0)),
]


def _fields(side: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = np.arange(side) - (side - 1) / 2
    blob = 0.3 * side - np.linalg.norm(np.stack(np.meshgrid(x, x, x, indexing="ij")), axis=0)
    single = np.full((side,) * 3, -1.0, np.float32)
    single[side // 3, side // 2, side // 2] = 2.0
    return {
        "scattered": rng.normal(0.0, 1.0, (side,) * 3).astype(np.float32),  # random weights: mixed everywhere
        "blob": (blob + 0.2 * rng.normal(size=(side,) * 3)).astype(np.float32),  # a trained model's compact mask
        "mostly_positive": (rng.normal(0.0, 1.0, (side,) * 3) + 1.5).astype(np.float32),
        "single_positive_node": single,
        "all_negative": -np.abs(rng.normal(0.0, 1.0, (side,) * 3)).astype(np.float32),
        "specks": _specks(side),  # a few isolated positive nodes: several small groups of mixed blocks
    }


def _specks(side: int) -> np.ndarray:
    low = np.full((side,) * 3, -2.0, np.float32)
    for point in ((1, 1, 1), (side - 2, 2, side // 2), (side // 2, side - 2, 1), (side - 2, side - 2, side - 2)):
        low[point] = 3.0
    return low


def _windows() -> list[Window]:
    return [
        Window.centred_at(CENTRE + [3.0, -2.0, 4.0], 32, 1.5),  # inside the 60 mm image
        Window.centred_at(CENTRE + [-40.0, 25.0, 20.0], 32, 1.5),  # across a corner of the image
        Window.centred_at(CENTRE + [1.0, 0.0, -4.0], 32, 2.5),  # zoomed out: larger than the image
    ]


def _padded_values(low: np.ndarray, window: Window, geom: ImageGeometry) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """The general path as it was: the edge-padded logits image over the footprint's bounding box, and its inside mask."""
    fp = paste._footprint(window, geom)
    values = paste._sample_box(oblique.low_res_image(low, window, padded=True), geom, fp.lo_xyz, fp.hi_xyz)
    return fp.slices_zyx, values, paste._inside_mask(fp, fp.lo_xyz, fp.hi_xyz)


def _float64_values(low: np.ndarray, window: Window, geom: ImageGeometry, slices) -> tuple[np.ndarray, np.ndarray]:
    """The interpolant's definition in float64 (u = (w + 0.5) / f - 0.5, clamped) and w in [-0.5, size - 0.5), over ``slices``."""
    k, j, i = np.meshgrid(*(np.arange(s.start, s.stop) for s in slices), indexing="ij")
    w = window.lps_to_index(geom.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)))
    inside = np.all((w >= -0.5) & (w < window.size - 0.5), axis=1).reshape(i.shape)
    u = (w + 0.5) / (window.size / low.shape[0]) - 0.5
    values = map_coordinates(low.astype(np.float64), u.T, order=1, mode="nearest").reshape(i.shape)
    return values, inside


@pytest.mark.parametrize("slab_voxels", [oblique.SLAB_VOXELS, 700], ids=["one_slab", "many_slabs"])
@pytest.mark.parametrize("side", [8, 16], ids=["decoder_grid", "fine_head_grid"])
@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=[g[0] for g in GRIDS])
def test_oblique_paste_writes_the_padded_interpolations_decision_at_every_voxel_inside_the_window(
    name, spacing, direction, side, slab_voxels, monkeypatch
):
    monkeypatch.setattr(oblique, "SLAB_VOXELS", slab_voxels)
    geom = centred_geometry(spacing, direction)
    rng = np.random.default_rng(sum(map(ord, name)) + side)
    for window, (field, low) in itertools.product(_windows(), _fields(side, rng).items()):
        fp = paste._footprint(window, geom)
        assert fp is not None and paste._separable(low, window, geom, fp.lo_xyz, fp.hi_xyz) is None  # the general path
        slices, padded, inside = _padded_values(low, window, geom)
        exact, exact_inside = _float64_values(low, window, geom, slices)
        assert np.array_equal(inside, exact_inside)
        for value in (1, 4):
            mask = rng.choice(np.array([0, 1, 4, 6], np.uint8), size=geom.shape_zyx, p=[0.4, 0.3, 0.2, 0.1])
            expected = mask.copy()
            expected[slices][inside] = np.where(padded[inside] > 0, value, 0)
            paste_logits(low, window, geom, mask, value=value)
            assert np.array_equal(mask, expected), (field, window.spacing_mm, value)  # bit-identical, outside the window too
            decided = inside & (np.abs(exact) > 1e-6)  # float64 and SimpleITK agree but at ties
            assert np.array_equal(mask[slices][decided], np.where(exact[decided] > 0, value, 0).astype(np.uint8))


@pytest.mark.parametrize(("name", "spacing", "direction"), GRIDS, ids=[g[0] for g in GRIDS])
def test_the_unpadded_logits_image_is_the_window_and_gives_the_padded_values_inside_it(name, spacing, direction):
    geom = centred_geometry(spacing, direction)
    low = np.random.default_rng(3).normal(size=(8, 8, 8)).astype(np.float32)
    for window in _windows():
        slices, padded, inside = _padded_values(low, window, geom)
        fp = paste._footprint(window, geom)
        unpadded = sitk.GetArrayFromImage(oblique._resample(oblique.low_res_image(low, window, padded=False), geom, fp.lo_xyz, fp.hi_xyz, np.nan))
        assert np.array_equal(unpadded[inside], padded[inside])  # the same bits: SimpleITK clamps at the buffer's edge
        if not fp.is_box:  # outside the window: not interpolated (rounding on a face aside)
            assert np.isnan(unpadded[~inside]).mean() > 0.99


def test_a_row_end_outside_simpleitks_buffer_is_interpolated_from_the_padded_image():
    geom = centred_geometry((0.8, 0.8, 2.5), rotation((0.3, 0.2, 1.0), 20.0))
    window = Window.centred_at(CENTRE + [3.0, -2.0, 4.0], 32, 1.5)
    low = np.random.default_rng(4).normal(size=(8, 8, 8)).astype(np.float32) + 0.8
    fp = paste._footprint(window, geom)
    lo, hi = fp.lo_xyz, fp.hi_xyz
    # Rows one voxel longer at both ends than the window allows, as a rounding disagreement would make them.
    i_lo, i_hi = fp.i_lo - 1, fp.i_hi + 1
    unpadded = sitk.GetArrayFromImage(oblique._resample(oblique.low_res_image(low, window, padded=False), geom, lo, hi, np.nan))
    wide = oblique.inside_rows(i_lo, i_hi, int(lo[0]), int(hi[0] - lo[0]) + 1)
    assert np.isnan(unpadded[wide]).sum() > 100  # the extra ends are outside SimpleITK's buffer
    positive = oblique.positive_inside(low, window, geom, i_lo, i_hi, lo, hi)
    padded = paste._sample_box(oblique.low_res_image(low, window, padded=True), geom, lo, hi)
    assert np.array_equal(positive[wide], padded[wide] > 0)  # clamped values there, as the padded image has them
    assert positive[wide & np.isnan(unpadded)].any()


def test_inside_rows_equal_comparing_every_column_with_the_row_bounds():
    rng = np.random.default_rng(5)
    i_lo = rng.integers(-5, 40, size=(7, 9))
    i_hi = i_lo + rng.integers(-3, 30, size=(7, 9))  # empty rows (hi < lo) among them
    for first, width in ((0, 35), (10, 12), (-4, 50)):
        columns = first + np.arange(width)
        expected = (columns >= i_lo[..., None]) & (columns <= i_hi[..., None])
        assert np.array_equal(oblique.inside_rows(i_lo, i_hi, first, width), expected)


def _float64_paste(low_res_logits, window, geometry, mask_zyx, value=1):
    """paste_logits by the float64 interpolant: ``value`` where positive, 0 elsewhere in the window."""
    low = paste._low_res_array(low_res_logits, window)
    fp = paste._footprint(window, geometry)
    if fp is None:
        return None
    values, inside = _float64_values(low, window, geometry, fp.slices_zyx)
    region = mask_zyx[fp.slices_zyx]
    region[inside] = np.where(values[inside] > 0, value, 0)
    return fp.slices_zyx


def _session_masks(image: sitk.Image, locked: np.ndarray, initial: np.ndarray) -> list[np.ndarray]:
    torch.manual_seed(0)
    model = build_sam3d(TINY).eval()  # random weights: scattered logits, the hardest case for a paste
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
    masks = []
    fresh = Session(model, image, auto_extend=False)
    for offset, positive in (((0, 0, 0), True), ((6, -4, 3), False), ((-5, 7, -2), True)):
        masks.append(fresh.click(centre + np.asarray(offset, float), positive=positive).mask_array)
    editing = Session(model, image, initial_mask=initial)  # previous labels, local correction
    editing.set_locked(locked)
    masks.append(editing.set_box(centre - 25.0, centre + 20.0).mask_array)
    for offset, positive in (((4, 2, -3), False), ((-8, -3, 5), True)):
        masks.append(editing.click(centre + np.asarray(offset, float), positive=positive).mask_array)
    return masks


def test_a_session_on_an_oblique_volume_gives_the_float64_pastes_masks_step_by_step(monkeypatch):
    image = sitk.Image([70, 64, 30], sitk.sitkFloat32)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-30.0, 12.0, -55.0))
    image.SetDirection(rotation((0.3, 0.2, 1.0), 20.0).ravel().tolist())
    rng = np.random.default_rng(6)
    arr = rng.normal(100.0, 30.0, size=(30, 64, 70)).astype(np.float32)
    arr[8:20, 20:44, 25:50] += 300.0
    textured = sitk.GetImageFromArray(arr)
    textured.CopyInformation(image)
    locked = np.zeros(arr.shape, np.uint8)
    locked[10:16, 26:34, 30:40] = 1
    initial = np.zeros(arr.shape, np.uint8)
    initial[9:19, 22:40, 28:46] = 1
    ours = _session_masks(textured, locked, initial)
    monkeypatch.setattr(session_steps, "paste_logits", _float64_paste)
    reference = _session_masks(textured, locked, initial)
    for step, (a, b) in enumerate(zip(ours, reference)):
        assert np.array_equal(a, b), step
    assert all(m.any() for m in ours) and any((m != ours[0]).any() for m in ours[1:])
    assert not (ours[-1].astype(bool) ^ initial.astype(bool))[locked.astype(bool)].any()  # locked voxels kept



def test_specks_are_interpolated_in_one_small_box_each_and_scattered_logits_in_the_whole_box():
    # (a blob fills most of its box: one box of its mixed blocks or the whole box (None), either is exact)
    geom = centred_geometry((0.8, 0.8, 2.5), rotation((0.3, 0.2, 1.0), 20.0), extent_mm=120.0)
    window = Window.centred_at(CENTRE, 64, 1.5)
    rng = np.random.default_rng(8)
    fields = _fields(16, rng)
    fp = paste._footprint(window, geom)
    for field, groups in (("specks", (2, paste._MAX_MIXED_BOXES)), ("blob", (0, 1)), ("scattered", None)):
        low = fields[field]
        lo, hi = paste._positive_box(low, window, geom, fp)
        block, _, mixed = paste._classify_blocks(low, window, geom, lo, hi)
        boxes = paste._mixed_boxes(mixed, block, lo, hi)
        if groups is None:
            assert boxes is None
        elif groups[0] or boxes is not None:
            assert groups[0] <= len(boxes) <= groups[1]
            covered = np.zeros(tuple(hi - lo + 1)[::-1], bool)
            for b_lo, b_hi in boxes:
                covered[tuple(slice(int(b_lo[a] - lo[a]), int(b_hi[a] - lo[a]) + 1) for a in (2, 1, 0))] = True
            expanded = np.repeat(np.repeat(np.repeat(mixed, block[2], 0), block[1], 1), block[0], 2)[: covered.shape[0], : covered.shape[1], : covered.shape[2]]
            assert covered[expanded].all()  # every mixed block's voxels lie in a box
        mask = rng.choice(np.array([0, 1, 4], np.uint8), size=geom.shape_zyx)
        expected = mask.copy()
        slices, padded, inside = _padded_values(low, window, geom)
        expected[slices][inside] = np.where(padded[inside] > 0, 1, 0)
        paste_logits(low, window, geom, mask)
        assert np.array_equal(mask, expected), field
