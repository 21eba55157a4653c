"""Adaptive window spacing (SAMMed3DLib/scale.py): an object is seen fine first, coarser as its positive clicks spread."""

from __future__ import annotations

import numpy as np
import pytest

from SAMMed3DLib.card import with_window_spacing
from SAMMed3DLib.checkpoint import load_model
from SAMMed3DLib.scale import SCALE_LADDER, SPREAD_FRACTION, object_spacing, resolve_adaptive_scale
from SAMMed3DLib.session import Session
from test_session import BrightModel, oblique_volume, paint_box

CARD_MM = 1.5
SIZE = 128


def _spacing(*points, labels=None) -> float:
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    return object_spacing(pts, np.ones(len(pts), int) if labels is None else np.asarray(labels), CARD_MM, SIZE)


def test_one_click_is_seen_at_the_finest_rung_and_spread_clicks_at_coarser_ones() -> None:
    finest, middle, coarsest = (CARD_MM * f for f in SCALE_LADDER)
    assert (finest, coarsest) == (0.75, 1.5)
    assert _spacing((0, 0, 0)) == finest
    assert _spacing((0, 0, 0), (0, 20, 0)) == finest  # 20 mm: the 96 mm window holds it
    assert _spacing((0, 0, 0), (0, 0, 35)) == middle  # over 0.3 x 96 mm, within 0.3 x 128 mm
    assert _spacing((0, 0, 0), (60, 0, 0)) == coarsest
    assert _spacing((0, 0, 0), (0, 0, SPREAD_FRACTION * SIZE * finest)) == finest  # the limit itself still fits


def test_negative_clicks_do_not_widen_the_object() -> None:
    assert _spacing((0, 0, 0), (80, 0, 0), labels=[1, 0]) == 0.75


def test_on_for_this_projects_models_off_for_official_ones_and_for_a_hand_chosen_spacing(one_window_volume) -> None:
    default = load_model("default")
    assert resolve_adaptive_scale(None, default) is True
    assert resolve_adaptive_scale(None, BrightModel()) is False  # no fine head: an official-style checkpoint
    assert Session(default, one_window_volume).adaptive_scale is True
    assert Session(default, one_window_volume, card=with_window_spacing(default.card, 0.75)).adaptive_scale is False
    assert Session(default, one_window_volume, card=with_window_spacing(default.card, 0.75), adaptive_scale=True).adaptive_scale
    assert Session(BrightModel(), one_window_volume).adaptive_scale is False
    with pytest.raises(TypeError, match="adaptive_scale"):
        resolve_adaptive_scale("yes", default)


@pytest.fixture(scope="module")
def bar_case():
    """An oblique, anisotropic volume with a bright bar 100 mm long (in LPS x) and the default model."""
    image = oblique_volume(size_xyz=(170, 120, 40), spacing=(0.8, 0.9, 2.5), angle_deg=20.0)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((85.0, 60.0, 20.0)))
    truth, image = paint_box(image, centre, (50.0, 8.0, 8.0))
    return load_model("default"), image, truth, centre


def _index_zyx(image, point_lps) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in image.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in point_lps))[::-1])


def test_a_first_click_is_seen_finely_and_its_mask_lands_on_the_click(bar_case) -> None:
    model, image, truth, centre = bar_case
    session = Session(model, image)
    session.click(centre, positive=True)
    assert {w.spacing_mm for w in session.windows} == {0.75}
    assert session.mask_array[_index_zyx(image, centre)] == 1, "the mask covers the clicked voxel"
    mask = session.mask_array > 0
    assert (mask & truth).sum() > 0.8 * mask.sum(), "the mask lies on the bar, not around it"


def test_a_far_positive_click_sees_the_object_again_at_the_coarse_spacing_as_a_fixed_session_would(bar_case) -> None:
    model, image, truth, centre = bar_case
    far = centre + np.array([40.0, 0.0, 0.0])
    adaptive = Session(model, image)
    adaptive.click(centre, positive=True)
    fine_mask = adaptive.mask_array.copy()
    result = adaptive.click(far, positive=True)
    assert {w.spacing_mm for w in result.windows} == {1.5}
    fixed = Session(model, image, adaptive_scale=False)
    fixed.click(centre, positive=True)
    fixed.click(far, positive=True)
    np.testing.assert_array_equal(adaptive.mask_array, fixed.mask_array)
    assert adaptive.mask_array[_index_zyx(image, far)] == 1

    adaptive.undo()  # back to the fine view of the first click, and its next click stays fine
    np.testing.assert_array_equal(adaptive.mask_array, fine_mask)
    near = centre + np.array([0.0, 3.0, 0.0])
    assert {w.spacing_mm for w in adaptive.click(near, positive=True).windows} == {0.75}


def test_moving_clicks_replays_them_at_the_spacing_they_call_for(bar_case) -> None:
    model, image, _, centre = bar_case
    far = centre + np.array([40.0, 0.0, 0.0])
    session = Session(model, image)
    session.predict(np.array([centre, far]), [1, 1])
    fixed = Session(model, image, adaptive_scale=False)
    fixed.predict(np.array([centre, far]), [1, 1])
    np.testing.assert_array_equal(session.mask_array, fixed.mask_array)
    result = session.predict(np.array([centre]), [1])  # the far click removed: fine again
    assert {w.spacing_mm for w in result.windows} == {0.75}


def test_an_edited_mask_and_a_box_are_seen_at_the_cards_spacing(bar_case) -> None:
    model, image, truth, centre = bar_case
    session = Session(model, image, initial_mask=truth.astype(np.uint8))
    assert {w.spacing_mm for w in session.click(centre + np.array([0.0, 9.0, 0.0]), positive=True).windows} == {1.5}
    session = Session(model, image)
    session.click(centre, positive=True)  # a first object, seen finely: its 0.75 mm window stays cached
    session.set_mask(truth.astype(np.uint8))
    assert {w.spacing_mm for w in session.click(centre, positive=True).windows} == {1.5}
    boxed = Session(model, image)
    result = boxed.set_box(centre - np.array([20.0, 8.0, 8.0]), centre + np.array([20.0, 8.0, 8.0]))
    assert all(w.spacing_mm != 0.75 for w in result.windows)
