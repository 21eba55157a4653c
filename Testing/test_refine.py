"""Boundary refinement (SAMMed3DLib.refine): a coarse mask snapped to the image's edges.

The volumes are anisotropic (and, through the session, oblique); the refined mask must land on the
object the image shows, never move the border by more than the band, keep what the clicks assert
and keep a part thinner than the band.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from SAMMed3DLib.refine import BoundaryRefinement, resolve_refinement
from SAMMed3DLib.session import Session

from test_session import BrightModel, box_case, dice, oblique_volume, paint_box  # noqa: F401 (fixture)

SPACING = np.array([2.0, 0.8, 0.8])  # (z, y, x) mm: thick slices


def _grid(shape=(30, 80, 80)) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij"), axis=-1)


def _sphere(radius_mm: float, centre_mm=(30.0, 32.0, 32.0), shape=(30, 80, 80)) -> np.ndarray:
    return np.linalg.norm(_grid(shape) - np.asarray(centre_mm), axis=-1) <= radius_mm


def _image(truth: np.ndarray, seed: int = 0, noise: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(truth, 300.0, 100.0) + rng.normal(0.0, noise, truth.shape)


def test_a_too_large_mask_shrinks_onto_the_object_and_a_too_small_one_grows() -> None:
    truth = _sphere(12.0)
    image = _image(truth)
    refine = BoundaryRefinement()
    for coarse in (_sphere(14.5), _sphere(9.5)):  # 2.5 mm too large, too small: inside the 3 mm band
        before = dice(coarse, truth)
        after = dice(refine.refine(image, coarse, SPACING), truth)
        # The slices are 2 mm thick, so near the poles the band's edge lies up to a slice off the surface.
        assert before < 0.75 and after > 0.94, (before, after)


def test_a_shifted_mask_moves_onto_the_object() -> None:
    truth = _sphere(12.0)
    shifted = _sphere(12.0, centre_mm=(30.0, 34.4, 32.0))  # 2.4 mm off along y (3 voxels)
    out = BoundaryRefinement().refine(_image(truth, seed=1), shifted, SPACING)
    assert dice(shifted, truth) < 0.9 and dice(out, truth) > 0.96


def test_nothing_farther_than_the_band_from_the_mask_border_changes() -> None:
    truth = _sphere(16.0)  # the image's object is far larger than the mask: the band bounds any growth
    coarse = _sphere(8.0)
    out = BoundaryRefinement(band_mm=3.0).refine(_image(truth), coarse, SPACING)
    outside = ndimage.distance_transform_edt(~coarse, sampling=SPACING)
    inside = ndimage.distance_transform_edt(coarse, sampling=SPACING)
    assert np.array_equal(out[outside > 3.0], coarse[outside > 3.0])
    assert np.array_equal(out[inside > 3.0], coarse[inside > 3.0])


def test_clicks_are_seeds_the_image_cannot_overrule() -> None:
    truth = _sphere(12.0)
    image = _image(truth)
    refine = BoundaryRefinement(click_radius_mm=2.0)
    # A negative click on the object's edge inside the mask, a positive one just outside it.
    neg = np.array([15.0, 40.0, 40.0 + 11.0 / 0.8])  # (z, y, x) index: 11 mm from the centre along x
    pos = np.array([15.0, 40.0, 40.0 - 13.0 / 0.8])  # 13 mm: outside the 12 mm sphere
    out = refine.refine(image, truth, SPACING, [(neg, False), (pos, True)])
    assert not out[tuple(np.rint(neg).astype(int))]
    assert out[tuple(np.rint(pos).astype(int))]
    assert dice(out, truth) > 0.97  # the rest of the border stays on the edge
    # Clicks outside the block are ignored.
    same = refine.refine(image, truth, SPACING, [(np.array([-5.0, 0.0, 0.0]), False)])
    assert dice(same, truth) > 0.98


def test_a_part_thinner_than_the_band_keeps_its_core() -> None:
    shape = (30, 80, 80)
    grid = _grid(shape)
    tube = np.linalg.norm(grid[..., 1:] - np.array([32.0, 32.0]), axis=-1) <= 1.6  # a 3.2 mm wide vessel along z
    out = BoundaryRefinement(band_mm=3.0).refine(_image(tube, noise=5.0), tube, SPACING)
    core = np.linalg.norm(grid[..., 1:] - np.array([32.0, 32.0]), axis=-1) <= 0.5
    assert out[core].all()
    assert dice(out, tube) > 0.85


def test_degenerate_blocks_are_returned_as_they_are() -> None:
    refine = BoundaryRefinement()
    empty = np.zeros((20, 20, 20), bool)
    assert not refine.refine(np.zeros((20, 20, 20)), empty, (1.0, 1.0, 1.0)).any()
    flat = _sphere(10.0, centre_mm=(20.0, 16.0, 16.0), shape=(20, 40, 40))
    out = refine.refine(np.full(flat.shape, 7.0), flat, SPACING)  # no edge at all: distance decides
    assert dice(out, flat) > 0.95
    with pytest.raises(ValueError, match="shape"):
        refine.refine(np.zeros((5, 5, 5)), np.zeros((5, 5, 6)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="band_mm"):
        BoundaryRefinement(band_mm=0.0)


def test_the_default_is_on_for_models_with_a_fine_head_and_off_for_official_ones() -> None:
    class WithHead:
        has_fine_head = True

    class Official:
        has_fine_head = False

    assert resolve_refinement(None, WithHead()) == BoundaryRefinement()
    assert resolve_refinement(None, Official()) is None
    assert resolve_refinement(True, Official()) == BoundaryRefinement()
    assert resolve_refinement(False, WithHead()) is None
    custom = BoundaryRefinement(band_mm=2.0)
    assert resolve_refinement(custom, Official()) is custom
    with pytest.raises(TypeError, match="refine"):
        resolve_refinement("yes", WithHead())


class _FatBrightModel(BrightModel):
    """BrightModel whose masks are too large: its logits are shifted up, so their zero lies a few
    mm outside the object (the masks hold 17 % more voxels than the object)."""

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        self.decoder_calls += 1
        return image_embeddings * 10.0 + 8.0, torch.zeros(1, 1)


def test_in_a_session_the_refined_mask_lands_on_the_object_of_an_oblique_anisotropic_volume(box_case) -> None:  # noqa: F811
    image, truth, centre = box_case
    raw = Session(_FatBrightModel(), image, refine=False)
    raw.click(centre)
    refined = Session(_FatBrightModel(), image, refine=True)
    result = refined.click(centre)
    assert dice(raw.mask_array, truth) < 0.92
    assert dice(refined.mask_array, truth) > 0.98
    # The change the click reports is what the mask became, and undo brings back the empty mask.
    change = result.change
    assert change is not None and np.array_equal(refined.mask_array[change.region], change.after)
    refined.undo()
    assert not refined.mask_array.any()


def test_refinement_never_writes_locked_voxels_or_outside_the_box(box_case) -> None:  # noqa: F811
    image, truth, centre = box_case
    locked = np.zeros_like(truth, dtype=np.uint8)
    grown = ndimage.binary_dilation(truth, iterations=4)
    locked[grown & ~truth] = 1  # a locked shell around the object: the fat model would spill into it
    session = Session(_FatBrightModel(), image, refine=True)
    session.set_locked(locked)
    session.click(centre)
    assert not session.mask_array[locked.astype(bool)].any()
    assert dice(session.mask_array, truth) > 0.9


@pytest.mark.parametrize("spacing", [(2.0, 0.8, 0.8), (1.0, 1.0, 1.0), (0.7, 3.0, 1.2)])
def test_bounded_distances_are_the_euclidean_distance_transform_up_to_the_limit(spacing) -> None:
    from SAMMed3DLib.refine import _bounded_distance

    rng = np.random.default_rng(3)
    target = ndimage.binary_opening(rng.random((24, 30, 28)) < 0.35)
    target[0, 0, 0] = True
    exact = ndimage.distance_transform_edt(~target, sampling=spacing)
    got = _bounded_distance(torch.from_numpy(target), np.array(spacing), 3.0).numpy()
    near = exact <= 3.0
    np.testing.assert_allclose(got[near], exact[near], rtol=1e-5, atol=1e-5)
    assert np.isinf(got[~near]).all()


def test_the_box_maximum_is_scipys_maximum_filter() -> None:
    from SAMMed3DLib.refine import _max_filter

    values = np.random.default_rng(4).random((9, 14, 11)).astype(np.float32)
    expected = ndimage.maximum_filter(values, size=(3, 9, 5), mode="nearest")
    assert np.array_equal(_max_filter(torch.from_numpy(values), [1, 4, 2]).numpy(), expected)
