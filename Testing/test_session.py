"""Session behaviour on oblique, anisotropic volumes: placement, caching, undo, large objects.

Placement tests use ``BrightModel``: a real torch module pair standing in for SAM-Med3D's
encoder and decoder whose output is known (logits > 0 exactly where the normalised window is
bright). It lets the tests check that the session resamples the right window, maps it back onto
the original grid and lands on the object. A small random-weight SAM-Med3D runs the real
network path end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from SAMMed3DLib import build_sam3d
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.errors import ImageError, PromptError, SessionStateError
from SAMMed3DLib.geometry import lps_to_ras
from SAMMed3DLib.model.sam3d import Sam3D
from SAMMed3DLib.history import History
from SAMMed3DLib.prompts import order_clicks
from SAMMed3DLib.session import MaskChange, Session

TINY = {
    "image_encoder": {
        "img_size": 128, "patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 4, "out_chans": 48,
        "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [1],
    },
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 8, "input_image_size": 128, "mask_in_chans": 16},
    "mask_decoder": {"transformer_dim": 48},
}


class _PoolEncoder(torch.nn.Module):
    """'Encoder' whose embedding is the window's brightness above the object/background midpoint,
    averaged onto the low-res grid; counts its calls.

    The test volumes hold two intensity levels (background and object); the midpoint of their
    normalised values is where a box's partial-volume boundary lies, so thresholding the
    trilinearly interpolated embedding at 0 reproduces the box.
    """

    img_size = 128

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        values, counts = torch.unique(torch.round(x[x > x.min()] * 1000) / 1000, return_counts=True)
        levels = values[torch.argsort(counts, descending=True)[:2]]
        return F.avg_pool3d(x - levels.mean(), 4)


class BrightModel(Sam3D):
    """Predicts 'bright voxels of the window', ignoring prompts."""

    def __init__(self) -> None:
        base = build_sam3d(TINY)
        super().__init__(_PoolEncoder(), base.prompt_encoder, base.mask_decoder, base.config)
        self.card = ModelCard(name="bright", config=base.config)
        self.decoder_calls = 0

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        self.decoder_calls += 1
        return image_embeddings * 10.0, torch.zeros(1, 1)


def oblique_volume(size_xyz=(90, 80, 40), spacing=(0.7, 0.9, 3.0), angle_deg=25.0) -> sitk.Image:
    image = sitk.Image(list(size_xyz), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin((-30.0, 12.0, -55.0))
    image.SetDirection(sitk.VersorTransform((0.4, 0.3, 1.0), np.deg2rad(angle_deg)).GetMatrix())
    return image


def paint_box(image: sitk.Image, centre_lps, half_extent_mm, value_in=400.0, value_out=100.0) -> np.ndarray:
    """Fill ``image`` with an axis-aligned (in LPS) box; returns the truth mask (z, y, x)."""
    size = image.GetSize()
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    idx = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1).astype(float)
    d = np.array(image.GetDirection()).reshape(3, 3)
    pts = np.array(image.GetOrigin()) + (idx * np.array(image.GetSpacing())) @ d.T
    inside = np.all(np.abs(pts - np.asarray(centre_lps)) <= np.asarray(half_extent_mm), axis=1).reshape(zz.shape)
    arr = np.where(inside, value_in, value_out).astype(np.float32)
    filled = sitk.GetImageFromArray(arr)
    filled.CopyInformation(image)
    image_out = filled
    return inside, image_out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture
def box_case():
    image = oblique_volume()
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((50.0, 35.0, 22.0)))
    truth, image = paint_box(image, centre, (16.0, 12.0, 20.0))
    return image, truth, centre


def test_click_lands_on_the_object_of_an_oblique_anisotropic_volume(box_case) -> None:
    image, truth, centre = box_case
    session = Session(BrightModel(), image)
    result = session.click(centre)
    window = result.windows[0]
    np.testing.assert_allclose(window.index_to_lps(np.array([[64.0, 64.0, 64.0]]))[0], centre, atol=1e-6)
    assert dice(session.mask_array, truth) > 0.9
    assert result.mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(result.mask.GetDirection(), image.GetDirection())
    assert result.mask.GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("frame", ["lps", "ras", "index"])
def test_the_three_click_frames_agree(box_case, frame) -> None:
    image, truth, centre = box_case
    session = Session(BrightModel(), image)
    if frame == "lps":
        session.click(centre)
    elif frame == "ras":
        session.click_ras(lps_to_ras(centre))
    else:
        session.click_index(image.TransformPhysicalPointToContinuousIndex(tuple(centre)))
    assert dice(session.mask_array, truth) > 0.9


def test_follow_up_clicks_in_the_window_are_decoder_only(box_case) -> None:
    image, _, centre = box_case
    model = BrightModel()
    session = Session(model, image)
    session.click(centre)
    session.click(centre + np.array([5.0, -3.0, 4.0]), positive=False)
    session.click(centre + np.array([-4.0, 2.0, 0.0]))
    assert model.image_encoder.calls == 1
    assert model.decoder_calls == 3


def test_voxels_outside_the_window_footprint_keep_their_values() -> None:
    image = oblique_volume(size_xyz=(300, 60, 30), spacing=(1.0, 1.0, 2.0), angle_deg=0.0)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((40.0, 30.0, 15.0)))
    truth, image = paint_box(image, centre, (8.0, 8.0, 8.0))
    session = Session(BrightModel(), image, auto_extend=False)
    start = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    start[:, :, 250:] = 1  # an existing segment far from the click (> 96 mm away)
    session.set_mask(start)
    result = session.click(centre)
    assert np.array_equal(session.mask_array[:, :, 250:], start[:, :, 250:])
    changed = np.argwhere(session.mask_array != start)
    zyx = result.changed_zyx
    assert all(zyx[a].start <= changed[:, a].min() and changed[:, a].max() < zyx[a].stop for a in range(3))


def test_undo_redo_reset_restore_exact_voxels(box_case) -> None:
    image, truth, centre = box_case
    session = Session(BrightModel(), image)
    start = np.zeros_like(truth, dtype=np.uint8)
    start[0:3, 0:5, 0:5] = 1
    session.set_mask(start)
    session.click(centre)
    after_first = session.mask_array.copy()
    session.click(centre + np.array([3.0, 0.0, 0.0]), positive=False)
    assert session.undo() is not None
    assert np.array_equal(session.mask_array, after_first) and len(session.points_lps) == 1
    assert session.undo() is not None
    assert np.array_equal(session.mask_array, start) and len(session.points_lps) == 0
    assert session.undo() is None
    session.redo()
    assert np.array_equal(session.mask_array, after_first)
    session.reset()
    assert np.array_equal(session.mask_array, start) and len(session.points_lps) == 0


@pytest.mark.parametrize(
    ("point_index", "positive", "error", "match"),
    [
        ((-40.0, 10.0, 10.0), True, PromptError, "outside the image"),
        ((45.0, 40.0, 20.0), False, PromptError, "first click of an object must be positive"),
    ],
)
def test_bad_clicks_raise_clear_errors(box_case, point_index, positive, error, match) -> None:
    image, _, _ = box_case
    session = Session(BrightModel(), image)
    with pytest.raises(error, match=match):
        session.click_index(point_index, positive=positive)
    assert session.mask_array.sum() == 0


def test_click_before_an_image_is_set() -> None:
    with pytest.raises(SessionStateError, match="set_image"):
        Session(BrightModel()).click((0.0, 0.0, 0.0))


def test_nan_image_is_refused() -> None:
    arr = np.zeros((10, 20, 20), dtype=np.float32)
    arr[5, 5, 5] = np.nan
    with pytest.raises(ImageError):
        Session(BrightModel(), sitk.GetImageFromArray(arr))


def test_volume_smaller_than_the_window_and_click_at_the_border() -> None:
    image = oblique_volume(size_xyz=(60, 50, 20), spacing=(1.0, 1.2, 2.0), angle_deg=10.0)  # 60×60×40 mm
    corner = np.array(image.TransformContinuousIndexToPhysicalPoint((1.0, 1.0, 1.0)))
    truth, image = paint_box(image, corner, (30.0, 30.0, 30.0))
    session = Session(BrightModel(), image)
    session.click(corner)
    assert dice(session.mask_array, truth) > 0.85


def test_objects_longer_than_one_window_are_followed() -> None:
    image = oblique_volume(size_xyz=(360, 120, 80), spacing=(1.0, 1.5, 2.0), angle_deg=0.0)
    start = np.array(image.TransformContinuousIndexToPhysicalPoint((60.0, 60.0, 40.0)))
    bar_centre = np.array(image.TransformContinuousIndexToPhysicalPoint((180.0, 60.0, 40.0)))
    truth, image = paint_box(image, bar_centre, (150.0, 30.0, 30.0))  # a 300 mm long bar
    single = Session(BrightModel(), image, auto_extend=False, zoom_out=False)
    single.click(start)
    followed = Session(BrightModel(), image, auto_extend=True, zoom_out=False)
    followed.click(start)
    assert dice(single.mask_array, truth) < 0.8
    assert dice(followed.mask_array, truth) > 0.9
    assert len(followed.windows) >= 2


def test_windows_cached_for_an_earlier_object_do_not_stop_the_next_one_being_followed(monkeypatch) -> None:
    # The limit on automatic windows is per object: an image whose earlier objects left windows
    # cached (reset keeps the embeddings) still follows the next long object.
    from SAMMed3DLib import session_steps

    monkeypatch.setattr(session_steps, "MAX_WINDOWS", 3)
    image = oblique_volume(size_xyz=(360, 120, 80), spacing=(1.0, 1.5, 2.0), angle_deg=0.0)
    start = np.array(image.TransformContinuousIndexToPhysicalPoint((60.0, 60.0, 40.0)))
    bar_centre = np.array(image.TransformContinuousIndexToPhysicalPoint((180.0, 60.0, 40.0)))
    truth, image = paint_box(image, bar_centre, (150.0, 30.0, 30.0))
    fresh = Session(BrightModel(), image, auto_extend=True, zoom_out=False)
    fresh.click(start)
    assert dice(fresh.mask_array, truth) > 0.9
    session = Session(BrightModel(), image, auto_extend=True, zoom_out=False)
    session.click(start)
    session.reset()
    assert len(session.windows) == 3  # cached, with nothing decided since the reset
    session.click(start)
    assert np.array_equal(session.mask_array, fresh.mask_array)


def test_a_click_far_away_opens_a_second_window_and_keeps_the_first_result() -> None:
    image = oblique_volume(size_xyz=(400, 40, 30), spacing=(1.0, 1.5, 2.0), angle_deg=0.0)
    a = np.array(image.TransformContinuousIndexToPhysicalPoint((60.0, 20.0, 15.0)))
    b = np.array(image.TransformContinuousIndexToPhysicalPoint((330.0, 20.0, 15.0)))
    truth_a, image = paint_box(image, a, (20.0, 20.0, 20.0))
    arr = sitk.GetArrayFromImage(image)
    truth_b, image_b = paint_box(image, b, (20.0, 20.0, 20.0))
    arr = np.maximum(arr, sitk.GetArrayFromImage(image_b))
    both = sitk.GetImageFromArray(arr)
    both.CopyInformation(image)
    model = BrightModel()
    session = Session(model, both, auto_extend=False)
    session.click(a)
    session.click(b)
    assert len(session.windows) == 2 and model.image_encoder.calls == 2
    assert dice(session.mask_array, truth_a | truth_b) > 0.9


def test_predict_runs_only_new_clicks_and_replays_moved_ones(box_case) -> None:
    image, truth, centre = box_case
    model = BrightModel()
    session = Session(model, image)
    pts = np.stack([centre, centre + np.array([4.0, 0.0, 0.0])])
    session.predict(pts[:1], [1])
    session.predict(pts, [1, 0])
    assert model.decoder_calls == 2
    moved = pts.copy()
    moved[1] += np.array([0.0, 2.0, 0.0])
    session.predict(moved, [1, 0])
    assert model.decoder_calls == 4  # replay of both clicks, no new encoder pass
    assert model.image_encoder.calls == 1
    np.testing.assert_allclose(session.points_lps, moved)
    session.undo()
    np.testing.assert_allclose(session.points_lps, pts)


def test_real_network_end_to_end_is_deterministic(box_case) -> None:
    image, _, centre = box_case
    model = build_sam3d(TINY)
    model.card = ModelCard(name="tiny", config=model.config)
    a = Session(model, image, auto_extend=False)
    ra = a.click(centre)
    a.click(centre + np.array([3.0, 3.0, 0.0]), positive=False)
    b = Session(model, image, auto_extend=False)
    rb = b.click(centre)
    assert np.array_equal(sitk.GetArrayFromImage(ra.mask), sitk.GetArrayFromImage(rb.mask))
    assert set(ra.timings) >= {"extract", "encoder", "decoder", "paste", "total"}


def test_a_result_keeps_showing_the_mask_of_its_own_click(box_case) -> None:
    image, _, centre = box_case
    session = Session(BrightModel(), image)
    first = session.click(centre)
    expected = session.mask_array.copy()
    session.undo()  # changes the session's buffer before `first.mask` was ever read
    assert session.mask_array.sum() == 0
    assert np.array_equal(sitk.GetArrayFromImage(first.mask), expected)
    second = session.redo()
    assert np.array_equal(second.mask_array, expected)


def test_predict_with_a_bad_point_changes_nothing(box_case) -> None:
    image, _, centre = box_case
    session = Session(BrightModel(), image)
    session.predict(centre[None], [1])
    mask = session.mask_array.copy()
    outside = np.array(image.TransformContinuousIndexToPhysicalPoint((-40.0, 10.0, 10.0)))
    with pytest.raises(PromptError, match="outside the image"):
        session.predict(np.stack([centre + 2.0, outside]), [1, 0])  # a replay that would fail midway
    assert np.array_equal(session.mask_array, mask)
    np.testing.assert_allclose(session.points_lps, centre[None])


# -- click order (Session.set_points) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "labels", "positive", "negative", "expected_points", "expected_labels"),
    [
        # a new click is appended after the session's clicks
        ([[0, 0, 0], [5, 0, 0]], [1, 0], [[0, 0, 0], [9, 9, 9]], [[5, 0, 0]], [[0, 0, 0], [5, 0, 0], [9, 9, 9]], [1, 0, 1]),
        # a removed click keeps the others in order
        ([[0, 0, 0], [5, 0, 0], [7, 0, 0]], [1, 0, 1], [[0, 0, 0], [7, 0, 0]], [], [[0, 0, 0], [7, 0, 0]], [1, 1]),
        # first point negative: the first positive moves to the front
        ([[5, 0, 0], [1, 1, 1]], [0, 1], [[2, 2, 2]], [[5, 0, 0]], [[2, 2, 2], [5, 0, 0]], [1, 0]),
        # fresh session: positives first
        ([], [], [[1, 0, 0]], [[2, 0, 0]], [[1, 0, 0], [2, 0, 0]], [1, 0]),
    ],
)
def test_order_clicks(previous, labels, positive, negative, expected_points, expected_labels) -> None:
    points, got_labels = order_clicks(
        np.array(previous, float).reshape(-1, 3), np.array(labels), np.array(positive, float).reshape(-1, 3), np.array(negative, float).reshape(-1, 3)
    )
    assert points.tolist() == expected_points and got_labels.tolist() == expected_labels


def test_order_clicks_needs_a_positive_point() -> None:
    with pytest.raises(PromptError, match="no positive"):
        order_clicks(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), np.ones((1, 3)))


def test_set_points_keeps_the_session_order_so_an_added_point_costs_one_decoder_pass(box_case) -> None:
    image, _, centre = box_case
    model = BrightModel()
    session = Session(model, image)
    a, b, c = centre, centre + np.array([4.0, 0.0, 0.0]), centre + np.array([0.0, 3.0, 0.0])
    session.set_points(np.array([a]), np.zeros((0, 3)))
    session.set_points(np.array([a]), np.array([b]))
    # the caller lists the positives in another order and adds one: nothing replays
    session.set_points(np.array([c, a]), np.array([b]))
    assert model.decoder_calls == 3
    np.testing.assert_array_equal(session.points_lps, [a, b, c])
    assert session.labels.tolist() == [1, 0, 1]


# -- one history: state, restore, and the change each step reports ------------------------------------


def test_history_stack_semantics() -> None:
    history: History[str] = History(limit=2)
    assert not history.can_undo and history.undo() is None and history.redo() is None
    for step in ("a", "b", "c"):
        history.push(step)
    assert len(history) == 2 and history.last() == "c"  # "a" fell off the limit
    assert history.upcoming() is None
    assert history.undo() == "c" and history.can_redo and history.last() == "b" and history.upcoming() == "c"
    assert history.redo() == "c" and not history.can_redo
    history.undo()
    history.push("d")  # a new step forgets what could be redone
    assert not history.can_redo and history.last() == "d"
    history.discard("b")
    assert history.undo() == "d" and history.undo() is None
    history.clear()
    assert not history.can_redo


@pytest.mark.parametrize("limit", [0, -1, 1.5])
def test_history_rejects_a_bad_limit(limit) -> None:
    with pytest.raises(ValueError, match="limit"):
        History(limit=limit)


def test_every_step_reports_exactly_the_voxels_it_changed(box_case) -> None:
    image, _, centre = box_case
    session = Session(BrightModel(), image)
    steps = [lambda: session.click(centre), lambda: session.click(centre + np.array([6.0, 0.0, 0.0]), positive=False),
             lambda: session.predict(np.stack([centre + np.array([2.0, 1.0, 0.0])]), [1]), session.undo, session.redo]
    for step in steps:
        before = session.mask_array.copy()
        result = step()
        after = session.mask_array.copy()
        change = result.change
        assert isinstance(change, MaskChange) and result.changed_zyx == change.region
        np.testing.assert_array_equal(change.before, before[change.region])
        np.testing.assert_array_equal(change.after, after[change.region])
        outside = np.ones(before.shape, dtype=bool)
        outside[change.region] = False
        np.testing.assert_array_equal(before[outside], after[outside])


def test_restore_returns_the_session_exactly_and_keeps_the_next_click_decoder_only(box_case) -> None:
    image, _, centre = box_case
    model = BrightModel()
    session = Session(model, image, keep_history=False)
    session.click(centre)
    state, mask_one = session.state(), session.mask_array.copy()
    far = np.array(image.TransformContinuousIndexToPhysicalPoint((5.0, 5.0, 2.0)))
    second = session.click(far, positive=True)  # may open a second window
    encoder_calls = model.image_encoder.calls
    assert session.undo() is None, "a session without history leaves undo to its owner"
    session.restore(state, second.change.region, second.change.before)
    np.testing.assert_array_equal(session.mask_array, mask_one)
    np.testing.assert_array_equal(session.points_lps, [centre])
    for (logits, output), (kept_logits, kept_output) in zip(session.state().window_logits, state.window_logits):
        assert logits is kept_logits and output is kept_output
    session.click(centre + np.array([1.0, 0.0, 0.0]))
    assert model.image_encoder.calls == encoder_calls, "cached embeddings survive a restore"
    # and forward again
    session.restore(state, second.change.region, second.change.before)
    after = session.click(far)
    np.testing.assert_array_equal(after.change.after, second.change.after)


def test_predict_with_several_new_clicks_is_one_undo_step(box_case) -> None:
    image, _, centre = box_case
    session = Session(BrightModel(), image)
    empty = session.mask_array.copy()
    session.predict(np.stack([centre, centre + np.array([3.0, 0.0, 0.0])]), [1, 0])
    assert session.undo() is not None and session.undo() is None
    np.testing.assert_array_equal(session.mask_array, empty)
    assert len(session.points_lps) == 0


# -- one mask, many windows ------------------------------------------------------------------------


class NegativeErasesModel(BrightModel):
    """Bright voxels of the window, unless a negative click falls in the window: then nothing."""

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        logits, score = super().predict_low_res(image_embeddings, coords, labels, mask_logits)
        if labels is not None and bool((labels == 0).any()):
            return torch.full_like(logits, -10.0), score
        return logits, score


def _window_distance_zyx(session: Session, window, shape_zyx) -> np.ndarray:
    """Chebyshev distance (window voxels) from the window centre, per voxel, computed independently."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    index_xyz = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1).astype(float)
    idx = window.lps_to_index(session.geometry.index_to_lps(index_xyz))
    return np.abs(idx - (window.size - 1) / 2.0).max(axis=1).reshape(shape_zyx)


def test_overlapping_windows_each_decide_the_voxels_nearest_their_centre_and_a_click_changes_only_those() -> None:
    image = oblique_volume(size_xyz=(300, 60, 50), spacing=(1.0, 1.5, 2.0), angle_deg=0.0)
    a = np.array(image.TransformContinuousIndexToPhysicalPoint((80.0, 30.0, 25.0)))
    b = np.array(image.TransformContinuousIndexToPhysicalPoint((210.0, 30.0, 25.0)))  # 130 mm apart: the windows overlap
    truth, image = paint_box(image, (a + b) / 2, (120.0, 25.0, 30.0))
    session = Session(NegativeErasesModel(), image, auto_extend=False, zoom_out=False)
    session.click(a)
    session.click(b)
    assert len(session.windows) == 2
    assert dice(session.mask_array, truth) > 0.9
    before = session.mask_array.copy()
    d_a = _window_distance_zyx(session, session.windows[0], before.shape)
    d_b = _window_distance_zyx(session, session.windows[1], before.shape)
    half = session.windows[0].size / 2.0
    owned_by_b = (d_b <= half) & (d_b <= d_a)  # ties go to the later window
    owned_by_a = (d_a <= half) & ~owned_by_b
    assert (owned_by_a & (d_b <= half)).any(), "the test needs a real overlap"
    # a negative click in A erases what A decides, and only that
    session.click(a + np.array([5.0, 0.0, 0.0]), positive=False)
    after = session.mask_array
    assert not after[owned_by_a].any()
    np.testing.assert_array_equal(after[~owned_by_a], before[~owned_by_a])
    assert after[owned_by_b & truth].mean() > 0.9, "B keeps deciding its side of the overlap"
    # undo brings every voxel back
    session.undo()
    np.testing.assert_array_equal(session.mask_array, before)


def test_an_object_twice_the_window_is_one_mask_and_a_click_at_one_end_leaves_the_other_end() -> None:
    image = oblique_volume(size_xyz=(400, 70, 50), spacing=(1.0, 1.5, 2.0), angle_deg=0.0)
    start = np.array(image.TransformContinuousIndexToPhysicalPoint((50.0, 35.0, 25.0)))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((200.0, 35.0, 25.0)))
    truth, image = paint_box(image, centre, (192.0, 30.0, 35.0))  # 384 mm: twice the 192 mm window
    session = Session(NegativeErasesModel(), image, auto_extend=True)
    session.click(start)
    far_end = np.array(image.TransformContinuousIndexToPhysicalPoint((360.0, 35.0, 25.0)))
    session.click(far_end)
    assert len(session.windows) >= 3
    assert dice(session.mask_array, truth) > 0.9
    before = session.mask_array.copy()
    session.click(start + np.array([0.0, 4.0, 0.0]), positive=False)  # erases the start window's part only
    changed = session.mask_array != before
    assert changed.any()
    far = _window_distance_zyx(session, session.windows[-1], before.shape) <= 32  # around the far end
    assert not changed[far].any(), "a click at one end changed voxels at the other end"
