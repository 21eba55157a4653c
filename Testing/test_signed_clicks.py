"""Signed clicks: a positive click never removes a voxel, a negative one never adds one (Session(signed_clicks=))."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.editing import resolve_signed_clicks
from SAMMed3DLib.session import Session
from test_click_results import BallsModel, low_res_ball, low_res_cells, point_lps

#: Where the model puts (or takes away) what no click asked for: a low-res cell far from the clicks.
FAR_CELL = (6.0, 6.0, 6.0)


class WanderingModel(BallsModel):
    """Balls of 4 low-res cells around the clicks (+ positive, − negative), and a model that wanders:
    after a negative click it also proposes a blob at ``FAR_CELL``; after a later positive click it
    proposes dropping the ball of the first click."""

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        logits, scores = super().predict_low_res(image_embeddings, coords, labels, mask_logits)
        if int(labels[0, -1]) == 0:
            logits[0, 0][low_res_ball(FAR_CELL, 3.0)] = 2.0
        elif labels.shape[1] > 1:
            logits[0, 0][low_res_ball(low_res_cells(coords[0, 0]), 4.0)] = -2.0
        return logits, scores


def _near(image: sitk.Image, index_xyz, radius_voxels: float) -> np.ndarray:
    z, y, x = np.indices(image.GetSize()[::-1])
    return (x - index_xyz[0]) ** 2 + (y - index_xyz[1]) ** 2 + (z - index_xyz[2]) ** 2 <= radius_voxels**2


def _clicks(session: Session, image: sitk.Image) -> list[np.ndarray]:
    """+ at the centre, − near the ball's edge (its ball takes the half beyond x = 32), + far away: the mask after each."""
    masks = []
    for index, positive in (((32, 32, 32), True), ((40, 32, 32), False), ((32, 32, 50), True)):
        session.click(point_lps(image, index), positive)
        masks.append(session.mask_array.copy())
    return masks


def test_a_negative_click_removes_what_it_points_at_and_adds_nothing_anywhere(one_window_volume) -> None:
    session = Session(WanderingModel(), one_window_volume, auto_extend=False, signed_clicks=True)
    first, after_negative, _ = _clicks(session, one_window_volume)
    assert first[_near(one_window_volume, (32, 32, 32), 3)].all()
    assert not (after_negative & ~first).any(), "a negative click added voxels"
    assert not after_negative[_near(one_window_volume, (40, 32, 32), 2)].any(), "the clicked leak is removed"
    assert after_negative[_near(one_window_volume, (27, 32, 32), 1)].all(), "the rest of the object stays"


def test_a_positive_click_adds_what_it_points_at_and_removes_nothing_anywhere(one_window_volume) -> None:
    session = Session(WanderingModel(), one_window_volume, auto_extend=False, signed_clicks=True)
    _, after_negative, after_positive = _clicks(session, one_window_volume)
    assert not (after_negative & ~after_positive).any(), "a positive click removed voxels"
    assert after_positive[_near(one_window_volume, (32, 32, 50), 3)].all(), "the clicked part is added"


def test_unsigned_clicks_paste_the_models_whole_answer(one_window_volume) -> None:
    # the same clicks without the rule: the far blob appears, the first ball goes (the rule is what stops both)
    session = Session(WanderingModel(), one_window_volume, auto_extend=False, signed_clicks=False)
    first, after_negative, after_positive = _clicks(session, one_window_volume)
    assert (after_negative & ~first).any()
    assert after_negative[_near(one_window_volume, (27, 32, 32), 1)].all() and not after_positive[_near(one_window_volume, (27, 32, 32), 1)].any()


def test_signed_clicks_replay_undo_and_redo_as_clicked(one_window_volume) -> None:
    session = Session(WanderingModel(), one_window_volume, auto_extend=False, signed_clicks=True)
    masks = _clicks(session, one_window_volume)
    session.undo()
    np.testing.assert_array_equal(session.mask_array, masks[1])
    session.redo()
    np.testing.assert_array_equal(session.mask_array, masks[2])
    points, labels = session.points_lps, session.labels
    session.reset()
    session.predict(points, labels)  # a replay, in one call, applies the rule click by click
    np.testing.assert_array_equal(session.mask_array, masks[2])


def test_the_default_is_the_models(one_window_volume) -> None:
    class WithHead:
        has_fine_head = True

    class Official:
        has_fine_head = False

    assert resolve_signed_clicks(None, WithHead()) is True
    assert resolve_signed_clicks(None, Official()) is False
    assert resolve_signed_clicks(False, WithHead()) is False and resolve_signed_clicks(True, Official()) is True
    assert Session(WanderingModel(), one_window_volume).signed_clicks is False  # no fine head: the model's whole answer
    with pytest.raises(TypeError, match="signed_clicks must be"):
        Session(WanderingModel(), one_window_volume, signed_clicks="yes")  # type: ignore[arg-type]
