"""Editing an existing mask, box prompts and locked voxels, on oblique anisotropic volumes.

``BrightModel`` (see test_session.py) segments the bright voxels of its window whatever the
prompts, so a window's proposal is known exactly: two bright structures stand for the object and
a neighbour the model wrongly proposes too. ``RecordingModel`` is a small random-weight
SAM-Med3D that keeps the dense prompt each decode received.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib import build_sam3d
from SAMMed3DLib.editing import INSIDE_LOGIT, OUTSIDE_LOGIT, Box, box_window_spacing, fraction_to_logits, keep_clicked_change
from SAMMed3DLib.errors import ConfigError, PromptError, SessionStateError
from SAMMed3DLib.model.sam3d import Sam3D
from SAMMed3DLib.session import Session
from test_session import TINY, BrightModel, dice, oblique_volume


def lps_grid(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS mm of every voxel centre."""
    size = image.GetSize()
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    idx = np.stack([xx, yy, zz], -1).astype(float)
    d = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (idx * np.array(image.GetSpacing())) @ d.T


def two_boxes(image: sitk.Image):
    """Image with the object (a box) and, 10 mm away, a bright neighbour; both of one intensity."""
    pts = lps_grid(image)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((40.0, 38.0, 20.0)))
    obj = np.all(np.abs(pts - centre) <= (12.0, 10.0, 18.0), axis=-1)
    neighbour_centre = centre + np.array([30.0, 0.0, 0.0])
    neighbour = np.all(np.abs(pts - neighbour_centre) <= (7.0, 8.0, 12.0), axis=-1)
    arr = np.where(obj | neighbour, 400.0, 100.0).astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out, obj, neighbour, centre, pts


@pytest.fixture
def scene():
    return two_boxes(oblique_volume())


def test_a_click_far_from_the_errors_leaves_the_existing_mask_as_it_was(scene) -> None:
    image, obj, neighbour, centre, pts = scene
    existing = obj & (pts[..., 2] < centre[2] + 12.0)  # the object minus a 6 mm slab at its top
    session = Session(BrightModel(), image, initial_mask=existing.astype(np.uint8))
    before = session.mask_array.copy()
    session.click(centre, positive=True)  # deep inside what is already right
    np.testing.assert_array_equal(session.mask_array, before)


def test_a_positive_click_adds_the_missed_part_and_not_the_neighbour(scene) -> None:
    image, obj, neighbour, centre, pts = scene
    existing = obj & (pts[..., 2] < centre[2] + 8.0)
    start = dice(existing, obj)
    local = Session(BrightModel(), image, initial_mask=existing.astype(np.uint8))
    local.click(centre + np.array([0.0, 0.0, 14.0]), positive=True)  # in the missed slab
    assert start < 0.85 and dice(local.mask_array, obj) > 0.92
    assert not (local.mask_array.astype(bool) & neighbour).any()
    # The whole-window alternative takes the neighbour as well.
    window = Session(BrightModel(), image, initial_mask=existing.astype(np.uint8), correction="window")
    window.click(centre + np.array([0.0, 0.0, 14.0]), positive=True)
    assert (window.mask_array.astype(bool) & neighbour).sum() > 0.5 * neighbour.sum()


def test_a_negative_first_click_on_an_existing_mask_removes_a_leak(scene) -> None:
    image, obj, neighbour, centre, pts = scene
    leak_centre = centre + np.array([0.0, -22.0, 0.0])  # a blob in the dark background, touching the object
    leak = np.linalg.norm(pts - leak_centre, axis=-1) <= 12.0
    existing = obj | leak
    session = Session(BrightModel(), image, initial_mask=existing.astype(np.uint8))
    result = session.click(leak_centre, positive=False)
    assert result.change is not None
    mask = session.mask_array.astype(bool)
    assert not (mask & leak & ~obj).any()
    assert (mask & obj).sum() >= 0.98 * obj.sum()  # what was right stays (up to the model boundary)
    assert session.undo() is not None
    np.testing.assert_array_equal(session.mask_array, existing.astype(np.uint8))


def test_a_negative_first_click_of_a_fresh_object_is_still_refused(scene) -> None:
    image, *_ , centre, _ = scene
    with pytest.raises(PromptError, match="first click of an object must be positive"):
        Session(BrightModel(), image).click(centre, positive=False)


def test_voxels_outside_every_window_that_ran_are_never_touched() -> None:
    image = sitk.Image([200, 60, 40], sitk.sitkFloat32)
    image.SetSpacing((1.5, 1.5, 3.0))
    image, obj, neighbour, centre, pts = two_boxes(image)
    far = np.zeros(obj.shape, dtype=bool)
    far[:, :, 185:195] = True  # 200+ mm from the click: outside its window
    session = Session(BrightModel(), image, initial_mask=(far | obj).astype(np.uint8), correction="window")
    result = session.click(centre, positive=True)
    assert result.windows and np.array_equal(session.mask_array.astype(bool) & far, far)


class RecordingModel(Sam3D):
    """A small random-weight SAM-Med3D that records the dense prompt of every decode."""

    def __init__(self) -> None:
        base = build_sam3d(TINY)
        super().__init__(base.image_encoder, base.prompt_encoder, base.mask_decoder, base.config)
        self.card = getattr(base, "card", None)
        self.dense: list[torch.Tensor] = []

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        self.dense.append(mask_logits.detach().clone())
        return super().predict_low_res(image_embeddings, coords, labels, mask_logits)


def test_the_existing_mask_reaches_the_decoder_where_it_lies() -> None:
    image = oblique_volume()
    pts = lps_grid(image)
    sphere_centre = np.array(image.TransformContinuousIndexToPhysicalPoint((55.0, 30.0, 18.0)))
    sphere = np.linalg.norm(pts - sphere_centre, axis=-1) <= 15.0
    arr = np.where(sphere, 300.0, 50.0).astype(np.float32) + np.random.default_rng(0).normal(0, 5, sphere.shape).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(image)
    model = RecordingModel()
    session = Session(model, img, initial_mask=sphere.astype(np.uint8))
    click = sphere_centre + np.array([9.0, -4.0, 3.0])
    result = session.click(click, positive=False)
    dense = model.dense[-1][0, 0].numpy()
    assert dense.max() == pytest.approx(INSIDE_LOGIT, abs=0.5) and dense.min() == pytest.approx(OUTSIDE_LOGIT)
    # The centroid of the prompt's inside, mapped back to mm, is the sphere's centre.
    inside = np.argwhere(dense > 0).mean(0)
    window = result.windows[0]
    scale = window.size / dense.shape[0]
    centroid_lps = window.index_to_lps(((inside + 0.5) * scale - 0.5)[None])[0]
    assert np.linalg.norm(centroid_lps - sphere_centre) < 2.0


def test_without_an_existing_mask_the_first_decode_gets_zeros() -> None:
    image = oblique_volume()
    model = RecordingModel()
    session = Session(model, image)
    session.click(np.array(image.TransformContinuousIndexToPhysicalPoint((45.0, 40.0, 20.0))))
    assert float(model.dense[0].abs().max()) == 0.0


def test_mask_fractions_map_to_logits_around_the_threshold() -> None:
    f = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(fraction_to_logits(f).numpy(), [OUTSIDE_LOGIT, OUTSIDE_LOGIT / 2, 0.0, INSIDE_LOGIT / 2, INSIDE_LOGIT])


def test_keep_clicked_change_keeps_only_the_component_under_the_click() -> None:
    before = np.zeros((10, 20, 20), np.uint8)
    before[2:8, 2:8, 2:8] = 1
    after = before.copy()
    after[2:8, 8:11, 2:8] = 1  # grows the object (touching the click)
    after[2:8, 15:19, 15:19] = 1  # and adds an unrelated blob
    out = keep_clicked_change(before, after, np.array([5.0, 9.0, 5.0]), True, np.array([3.0, 1.0, 1.0]))
    assert out[5, 9, 5] == 1 and out[2:8, 15:19, 15:19].sum() == 0 and out[2:8, 2:8, 2:8].all()
    # A negative click only removes, and only near the click: its reach grows with its depth.
    removed = keep_clicked_change(before, np.zeros_like(before), np.array([3.0, 3.0, 3.0]), False, np.ones(3))
    assert removed[3, 3, 3] == 0 and removed[7, 7, 7] == 1 and removed.sum() < before.sum()
    # A click away from every change changes nothing.
    np.testing.assert_array_equal(keep_clicked_change(before, after, np.array([5.0, 3.0, 5.0]), True, np.ones(3)), before)


def test_a_deep_click_in_a_large_missed_region_adds_all_of_it_and_a_shallow_one_only_nearby() -> None:
    before = np.zeros((40, 60, 60), np.uint8)
    before[5:35, 5:30, 5:55] = 1
    after = before.copy()
    after[5:35, 30:55, 5:55] = 1  # the missed half: 25 mm deep from the mask
    deep = keep_clicked_change(before, after, np.array([20.0, 45.0, 30.0]), True, np.ones(3))
    assert deep[5:35, 30:55, 5:55].mean() > 0.75  # depth 16 mm: a 24 mm ball holds most of the 30 × 25 × 50 mm half
    shallow = keep_clicked_change(before, after, np.array([20.0, 31.0, 30.0]), True, np.ones(3))
    assert 0 < shallow[5:35, 30:55, 5:55].sum() < 0.1 * after[5:35, 30:55, 5:55].sum()


def test_a_flooding_proposal_changes_a_small_mask_by_at_most_its_budget_nearest_the_click() -> None:
    from SAMMed3DLib.editing import MAX_CHANGE_FRACTION, change_budget

    # A thin structure of 160 voxels (1 × 2 mm spacing) with a missed piece 10 mm away, and a model
    # that proposes a blob hundreds of times its size around the click (as on anatomy it never saw).
    spacing = np.array([2.0, 1.0, 1.0])
    before = np.zeros((30, 60, 60), np.uint8)
    before[14:16, 20:24, 10:30] = 1
    after = np.zeros_like(before)
    after[5:25, 20:50, 25:55] = 1
    click = np.array([15.0, 30.0, 38.0])
    out = keep_clicked_change(before, after, click, True, spacing)
    added = out.astype(bool) & ~before.astype(bool)
    budget = change_budget(before)
    assert budget == int(MAX_CHANGE_FRACTION * 160) and added.sum() == budget
    assert out[15, 30, 38] == 1 and (out >= before).all()  # what it keeps is around the click, and it only adds
    zz, yy, xx = np.nonzero(added)
    assert (np.sqrt(((zz - 15) * 2.0) ** 2 + (yy - 30.0) ** 2 + (xx - 38.0) ** 2) <= 3.0).all()
    # A proposal that keeps most of the mask is trusted: its change within the click's reach stays
    # whole, more than the budget.
    trusted = before.copy()
    trusted[14:16, 24:28, 10:30] = 1  # grows the structure by half along y
    whole = keep_clicked_change(before, trusted, np.array([15.0, 25.0, 20.0]), True, spacing).astype(bool)
    assert (whole & ~before.astype(bool)).sum() > 2 * budget and not (whole & ~trusted.astype(bool)).any()
    # A window that sees none of the mask starts a new part of the object: no bound.
    assert change_budget(np.zeros_like(before)) is None


def test_the_forced_ball_of_a_click_is_cut_to_the_budget_it_is_given() -> None:
    from SAMMed3DLib.editing import force_click

    before = np.zeros((30, 30, 30), np.uint8)
    before[15, 15, 2:12] = 1  # a 10-voxel thread; the click is far from it
    block = before.copy()
    force_click(block, np.array([15.0, 15.0, 22.0]), True, np.ones(3), 10.0, budget=3)
    added = block.astype(bool) & ~before.astype(bool)
    assert added.sum() == 3 and block[15, 15, 22] == 1
    unbounded = before.copy()
    force_click(unbounded, np.array([15.0, 15.0, 22.0]), True, np.ones(3), 10.0)
    assert (unbounded.astype(bool) & ~before.astype(bool)).sum() > 100  # the whole 3 mm ball


def test_a_box_alone_segments_the_object_inside_it_and_nothing_outside(scene) -> None:
    image, obj, neighbour, centre, pts = scene
    session = Session(BrightModel(), image)
    # The box holds the object and 4 mm of margin, but reaches into no neighbour.
    result = session.set_box(centre - (16.0, 14.0, 22.0), centre + (16.0, 14.0, 22.0))
    mask = session.mask_array.astype(bool)
    fresh = Session(BrightModel(), image)
    fresh.click(centre)  # the same window without the box takes the neighbour too
    assert (fresh.mask_array.astype(bool) & neighbour).any()
    assert dice(mask, obj) > 0.9 and not (mask & neighbour).any()
    assert result.windows[0].spacing_mm == session.card.spacing_mm
    assert session.box is not None and len(session.points_lps) == 0
    # A negative click inside a box is a valid next (or first) prompt; undo restores the box step.
    session.click(centre + (0.0, 0.0, 20.0), positive=False)
    session.undo()
    np.testing.assert_array_equal(session.mask_array, mask)
    session.undo()
    assert session.box is None and not session.mask_array.any()
    session.redo()
    assert session.box is not None
    np.testing.assert_array_equal(session.mask_array, mask)


def test_a_positive_click_outside_the_box_is_refused(scene) -> None:
    image, obj, neighbour, centre, pts = scene
    session = Session(BrightModel(), image)
    session.set_box(centre - 16.0, centre + 16.0)
    before = session.mask_array.copy()
    with pytest.raises(PromptError, match="outside the object's box"):
        session.click(centre + (0.0, 0.0, -18.0))
    np.testing.assert_array_equal(session.mask_array, before)


@pytest.mark.parametrize(
    "corners, match",
    [(((0, 0, 0), (0, 10, 10)), "flat"), (((0, 0, "a"), (1, 1, 1)), "3 numbers"), (((0, 0, np.nan), (1, 1, 1)), "finite")],
)
def test_bad_boxes_are_refused_with_a_clear_error(scene, corners, match) -> None:
    image = scene[0]
    with pytest.raises(PromptError, match=match):
        Session(BrightModel(), image).set_box(*corners)


def test_a_box_larger_than_one_window_is_seen_zoomed_out() -> None:
    image = sitk.Image([110, 100, 60], sitk.sitkFloat32)
    image.SetSpacing((2.5, 2.5, 4.0))
    image.SetOrigin((-100.0, 40.0, 10.0))
    pts = lps_grid(image)
    centre = pts[30, 50, 55]
    obj = np.all(np.abs(pts - centre) <= (115.0, 100.0, 95.0), axis=-1)  # 230 mm across: wider than 192 mm
    arr = np.where(obj, 400.0, 100.0).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(image)
    session = Session(BrightModel(), img)
    result = session.set_box(centre - (120.0, 105.0, 100.0), centre + (120.0, 105.0, 100.0))
    window = result.windows[0]
    assert window.spacing_mm > session.card.spacing_mm
    assert window.spacing_mm == pytest.approx(box_window_spacing(session.box, 128, 1.5, 8))
    assert dice(session.mask_array, obj) > 0.95


class FineBrightModel(BrightModel):
    """BrightModel standing for one of this project's models (a fine head), which sees small boxes zoomed in."""

    @property
    def has_fine_head(self) -> bool:
        return True


def test_a_small_box_is_seen_zoomed_in_by_our_models_and_at_the_card_spacing_by_official_ones() -> None:
    from SAMMed3DLib.editing import BOX_ZOOM_IN_FRACTION, BOX_ZOOM_IN_LIMIT

    image = oblique_volume()
    pts = lps_grid(image)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((45.0, 40.0, 20.0)))
    sphere = np.linalg.norm(pts - centre, axis=-1) <= 6.0  # 12 mm across: a few voxels at the card's spacing
    img = sitk.GetImageFromArray(np.where(sphere, 400.0, 100.0).astype(np.float32))
    img.CopyInformation(image)
    lo, hi = centre - 8.0, centre + 8.0
    ours = Session(FineBrightModel(), img, refine=False, auto_extend=False)
    window = ours.set_box(lo, hi).windows[0]
    card = ours.card
    assert window.spacing_mm == pytest.approx(card.spacing_mm / BOX_ZOOM_IN_LIMIT)  # 16 mm: as fine as allowed
    assert dice(ours.mask_array, sphere) > 0.8
    official = Session(BrightModel(), img, auto_extend=False)
    assert official.set_box(lo, hi).windows[0].spacing_mm == pytest.approx(card.spacing_mm)
    # The spacing follows the box: its longest side spans the fraction of the window, within the limits.
    size, spacing = card.input_size, card.spacing_mm
    medium = Box.from_corners((0, 0, 0), (0.3 * size * spacing, 10, 10))
    assert box_window_spacing(medium, size, spacing, 8, zoom_in=True) == pytest.approx(0.3 * spacing / BOX_ZOOM_IN_FRACTION)
    large = Box.from_corners((0, 0, 0), (0.6 * size * spacing, 10, 10))
    assert box_window_spacing(large, size, spacing, 8, zoom_in=True) == pytest.approx(spacing)
    huge = Box.from_corners((0, 0, 0), (2.0 * size * spacing, 10, 10))
    assert box_window_spacing(huge, size, spacing, 8, zoom_in=True) == box_window_spacing(huge, size, spacing, 8) > spacing


def test_locked_voxels_are_never_written(scene) -> None:
    image, obj, neighbour, centre, pts = scene
    locked = obj & (pts[..., 0] > centre[0] + 4.0)  # a finished segment overlapping the object
    session = Session(BrightModel(), image)
    session.set_locked(locked.astype(np.uint8))
    session.click(centre)
    mask = session.mask_array.astype(bool)
    assert not (mask & locked).any()
    assert (mask & obj & ~locked).sum() >= 0.85 * (obj & ~locked).sum()
    session.set_locked(None)
    session.click(centre + (0.0, 2.0, 0.0))
    assert (session.mask_array.astype(bool) & locked).any()


def test_a_mask_image_on_another_grid_is_resampled_and_one_elsewhere_refused(scene) -> None:
    image, obj, neighbour, centre, pts = scene
    truth = sitk.GetImageFromArray(obj.astype(np.uint8))
    truth.CopyInformation(image)
    coarse = sitk.Resample(truth, [s // 2 for s in image.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           image.GetOrigin(), [2 * s for s in image.GetSpacing()], image.GetDirection(), 0, sitk.sitkUInt8)
    session = Session(BrightModel(), image, initial_mask=coarse)
    assert dice(session.mask_array, obj) > 0.85
    elsewhere = sitk.Image(truth)
    elsewhere.SetOrigin(tuple(np.array(image.GetOrigin()) + 5000.0))
    with pytest.raises(SessionStateError, match="lies outside the image"):
        session.set_mask(elsewhere)
    with pytest.raises(SessionStateError, match="shape"):
        session.set_mask(np.zeros((3, 4, 5), np.uint8))


@pytest.mark.parametrize(
    "points, labels, match",
    [
        ([[0.0, 0.0, 0.0]], ["1"], "1 \\(positive\\) or 0"),
        ([[0.0, 0.0, 0.0]], None, "sequence of 1"),
        ([[0.0, 0.0, 0.0]], [0.5], "1 \\(positive\\) or 0"),
        ([[0.0, 0.0]], [1], "shape \\(N, 3\\)"),
        ([[0.0, 0.0, 0.0]], [1, 0], "1 points but 2 labels"),
        ([["x", 0.0, 0.0]], [1], "must be numbers"),
    ],
)
def test_predict_refuses_malformed_prompts(scene, points, labels, match) -> None:
    image, *_ = scene
    with pytest.raises(PromptError, match=match):
        Session(BrightModel(), image).predict(points, labels)


def test_unknown_correction_mode_is_refused(scene) -> None:
    with pytest.raises(ConfigError, match="correction must be one of"):
        Session(BrightModel(), scene[0], correction="global")


def test_box_corners_in_any_order_give_the_same_box() -> None:
    a = Box.from_corners((10, -5, 3), (-2, 7, 9))
    b = Box.from_corners((-2, 7, 9), (10, -5, 3))
    np.testing.assert_array_equal(a.lo_lps, b.lo_lps)
    np.testing.assert_array_equal(a.hi_lps, (10, 7, 9))


def test_a_click_the_model_disagrees_with_still_sets_the_voxels_around_it() -> None:
    from SAMMed3DLib.editing import FORCE_RADIUS_MM, click_depth, force_click

    before = np.zeros((30, 30, 30), np.uint8)
    before[:, :, :10] = 1  # the mask; the click is 12 mm from it, in a region the model left out
    click = np.array([15.0, 15.0, 22.0])
    block = keep_clicked_change(before, before.copy(), click, True, np.ones(3))  # the model proposes nothing
    depth = click_depth(before, click, True, np.ones(3))
    assert depth == pytest.approx(13.0)
    force_click(block, click, True, np.ones(3), depth)
    assert block[15, 15, 22] == 1 and block[15, 15, 22 + int(FORCE_RADIUS_MM)] == 1 and block[15, 15, 22 + int(FORCE_RADIUS_MM) + 1] == 0
    # Half the depth bounds it: a click 2 mm from the mask sets only the voxels within 1 mm.
    near = np.array([15.0, 15.0, 11.0])
    block = before.copy()
    force_click(block, near, True, np.ones(3), click_depth(before, near, True, np.ones(3)))
    assert block[15, 15, 11] == 1 and block[15, 15, 13] == 0


def test_the_dense_prompt_sampled_coarsely_matches_the_full_window_resampling() -> None:
    from SAMMed3DLib.editing import mask_fraction_in_window
    from SAMMed3DLib.geometry import ImageGeometry, Window

    image = oblique_volume()
    pts = lps_grid(image)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((45.0, 40.0, 20.0)))
    mask = (np.linalg.norm((pts - centre) / (14.0, 9.0, 20.0), axis=-1) <= 1.0).astype(np.uint8)
    geometry = ImageGeometry.from_image(image)
    window = Window.centred_at(centre + 2.7, 128, 1.5)
    pool = lambda f: torch.nn.functional.adaptive_avg_pool3d(torch.from_numpy(f)[None, None], (32, 32, 32))  # noqa: E731
    full = pool(mask_fraction_in_window(mask, geometry, window))
    coarse = pool(mask_fraction_in_window(mask, geometry, window, 64))
    assert float((full - coarse).abs().mean()) < 0.01
    assert float(((full > 0.5) == (coarse > 0.5)).float().mean()) > 0.99
