"""No stray islands: a click never adds a part of the mask far from the object (SAMMed3DLib.islands, Session(drop_islands=))."""

from __future__ import annotations

import numpy as np
import pytest

from SAMMed3DLib.islands import DEFAULT_GAP_MM, drop_new_islands, resolve_drop_islands
from SAMMed3DLib.session import Session
from test_click_results import BallsModel, low_res_ball, point_lps

WHOLE = (slice(0, 40), slice(0, 40), slice(0, 40))


def _cube(mask: np.ndarray, corner, size) -> None:
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = 1


def test_a_far_new_part_goes_and_the_clicked_part_stays() -> None:
    mask = np.zeros((40, 40, 40), np.uint8)
    _cube(mask, (5, 5, 5), (6, 6, 6))  # the clicked part
    _cube(mask, (25, 25, 25), (6, 6, 6))  # a look-alike 14 voxels (mm) away
    clicked = mask.copy()
    clicked[25:, 25:, 25:] = 0
    dropped = drop_new_islands(mask, WHOLE, np.zeros_like(mask), np.array([[7, 7, 7]]), (1.0, 1.0, 1.0))
    assert dropped == 216
    np.testing.assert_array_equal(mask, clicked)


def test_fragments_closer_than_the_gap_stay_one_part() -> None:
    mask = np.zeros((40, 40, 40), np.uint8)
    _cube(mask, (5, 5, 5), (6, 6, 6))
    _cube(mask, (5, 5, 14), (6, 6, 3))  # 3 voxels (3 mm) beyond: under the 4 mm gap
    _cube(mask, (5, 5, 25), (6, 6, 3))  # 8 mm beyond the fragment: a part of its own
    before = mask.copy()
    dropped = drop_new_islands(mask, WHOLE, np.zeros_like(mask), np.array([[7, 7, 7]]), (1.0, 1.0, 1.0))
    assert dropped == 6 * 6 * 3
    assert mask[5:11, 5:11, 14:17].all() and not mask[5:11, 5:11, 25:28].any()
    assert (mask <= before).all()


def test_the_gap_is_in_mm_on_anisotropic_voxels() -> None:
    # a 2-voxel gap is 2 mm along x (1 mm voxels) but 6 mm along z (3 mm slices)
    along_x = np.zeros((40, 40, 40), np.uint8)
    _cube(along_x, (5, 5, 5), (4, 4, 4))
    _cube(along_x, (5, 5, 11), (4, 4, 4))
    along_z = np.zeros((40, 40, 40), np.uint8)
    _cube(along_z, (5, 5, 5), (4, 4, 4))
    _cube(along_z, (11, 5, 5), (4, 4, 4))
    spacing = (3.0, 1.0, 1.0)
    assert drop_new_islands(along_x, WHOLE, np.zeros_like(along_x), np.array([[6, 6, 6]]), spacing) == 0
    assert drop_new_islands(along_z, WHOLE, np.zeros_like(along_z), np.array([[6, 6, 6]]), spacing) == 64


def test_parts_touching_the_mask_as_it_was_or_holding_a_click_stay() -> None:
    previous = np.zeros((40, 40, 40), np.uint8)
    _cube(previous, (25, 25, 25), (4, 4, 4))  # what the user had accepted
    mask = previous.copy()
    _cube(mask, (25, 25, 29), (4, 4, 4))  # grows what was there
    _cube(mask, (5, 30, 5), (4, 4, 4))  # an earlier positive click's part
    _cube(mask, (5, 5, 5), (4, 4, 4))  # the new click's part
    _cube(mask, (5, 5, 30), (4, 4, 4))  # a stray blob
    clicks = np.array([[6, 6, 6], [6, 31, 6]])
    assert drop_new_islands(mask, WHOLE, previous, clicks, (1.0, 1.0, 1.0)) == 64
    assert not mask[5:9, 5:9, 30:34].any()
    assert mask[25:29, 25:29, 25:33].all() and mask[5:9, 30:34, 5:9].all() and mask[5:9, 5:9, 5:9].all()


def test_a_part_that_goes_on_beyond_the_changed_block_stays() -> None:
    # the block the click changed ends at x = 20; beyond it the mask already holds the part's rest
    mask = np.zeros((40, 40, 40), np.uint8)
    _cube(mask, (5, 5, 20), (4, 4, 6))  # outside the block: unchanged by the click
    region = (slice(0, 40), slice(0, 40), slice(0, 20))
    previous = mask[region].copy()
    _cube(mask, (5, 5, 14), (4, 4, 6))  # new voxels inside the block, touching the rest at x = 19 | 20
    _cube(mask, (30, 30, 5), (4, 4, 4))  # new, stray
    _cube(mask, (5, 30, 5), (4, 4, 4))  # new, clicked
    assert drop_new_islands(mask, region, previous, np.array([[6, 31, 6]]), (1.0, 1.0, 1.0)) == 64
    assert mask[5:9, 5:9, 14:26].all() and not mask[30:34, 30:34, 5:9].any()


def test_nothing_added_nothing_dropped() -> None:
    mask = np.zeros((40, 40, 40), np.uint8)
    _cube(mask, (25, 25, 25), (4, 4, 4))
    previous = mask.copy()
    mask[25, 25, 25] = 0  # a negative click only removed
    assert drop_new_islands(mask, WHOLE, previous, np.zeros((0, 3)), (1.0, 1.0, 1.0)) == 0
    assert DEFAULT_GAP_MM == 4.0


class IslandModel(BallsModel):
    """The balls of :class:`BallsModel` around the clicks, plus a look-alike blob far away on every positive click.

    Low-res cell (6, 6, 25) of the window of a click at voxel (20, 20, 20) is voxel (39, 39, 39) of the
    test image (window axes toward R, A, S; the one_window_volume's x and y go toward L and P)."""

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        logits, scores = super().predict_low_res(image_embeddings, coords, labels, mask_logits)
        if int(labels[0, -1]) == 1:
            logits[0, 0][low_res_ball((6.0, 6.0, 25.0), 3.0)] = 2.0
        return logits, scores


def _blob(session: Session) -> np.ndarray:
    return session.mask_array[37:42, 37:42, 37:42]  # the core of the far blob, 3 low-res cells (18 mm) around voxel 39


def test_a_session_click_keeps_the_clicked_object_and_drops_the_far_blob(one_window_volume) -> None:
    session = Session(IslandModel(), one_window_volume, auto_extend=False, drop_islands=True)
    session.click(point_lps(one_window_volume, (20, 20, 20)), True)
    assert session.mask_array[18:23, 18:23, 18:23].all(), "the clicked object is kept"
    assert not _blob(session).any(), "the far blob is dropped"
    session.click(point_lps(one_window_volume, (39, 39, 39)), True)  # the user asks for it: now it stays
    assert _blob(session).all() and session.mask_array[18:23, 18:23, 18:23].all()
    session.undo()
    assert not _blob(session).any()


def test_without_the_rule_the_blob_is_pasted(one_window_volume) -> None:
    session = Session(IslandModel(), one_window_volume, auto_extend=False, drop_islands=False)
    session.click(point_lps(one_window_volume, (20, 20, 20)), True)
    assert _blob(session).all()


def test_a_blob_touching_an_existing_mask_stays(one_window_volume) -> None:
    existing = np.zeros((64, 64, 64), np.uint8)
    existing[38:41, 38:41, 30:36] = 1  # the blob grows what the user brought (they overlap at x = 34, 35)
    session = Session(IslandModel(), one_window_volume, auto_extend=False, drop_islands=True, initial_mask=existing, correction="window")
    session.click(point_lps(one_window_volume, (20, 20, 20)), True)
    assert _blob(session).all()


def test_defaults_and_bad_values() -> None:
    assert resolve_drop_islands(None) is False  # off by default, for every model
    assert resolve_drop_islands(True) is True
    with pytest.raises(TypeError, match="drop_islands"):
        resolve_drop_islands("yes")  # type: ignore[arg-type]
    assert Session(BallsModel()).drop_islands is False
