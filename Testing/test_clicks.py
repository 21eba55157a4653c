"""Click simulator: where clicks land, their labels, determinism, and invalid inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SAMMed3DLib.clicks import CLICK_MODES, Click, SimulatedUser, bounding_box, error_masks, first_click, next_click
from SAMMed3DLib.errors import ConfigError, DataError


def _ball(shape: tuple[int, ...], center: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


def _box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


@pytest.mark.parametrize("mode", CLICK_MODES)
@pytest.mark.parametrize(
    "gt",
    [
        _ball((40, 30, 20), (20, 12, 9), 6),
        _box((16, 16, 16), (0, 0, 0), (3, 16, 2)),  # touches the array border on every axis
        _ball((24, 24), (10, 13), 5),  # any grid: a 2D slice works too
        np.pad(np.ones((1, 1, 1), dtype=bool), 4),  # a single voxel
    ],
    ids=["ball", "border-slab", "2d-disc", "one-voxel"],
)
def test_first_click_is_a_positive_click_inside_the_structure(gt: np.ndarray, mode: str) -> None:
    for seed in range(20):
        click = first_click(gt, np.random.default_rng(seed), mode)
        assert isinstance(click, Click)
        assert click.positive and click.label == 1
        assert len(click.index) == gt.ndim
        assert all(isinstance(i, int) for i in click.index)
        assert gt[click.index]


@pytest.mark.parametrize(
    ("gt", "expected"),
    [
        (_box((20, 20, 20), (3, 5, 7), (10, 12, 14)), (6, 8, 10)),  # 7³ cube: its middle voxel
        (np.ones((5, 5, 5), dtype=bool), (2, 2, 2)),  # the array border counts as background
        (_ball((31, 31, 31), (15, 15, 15), 10), (15, 15, 15)),
    ],
    ids=["box", "whole-array", "ball"],
)
def test_first_click_center_is_the_voxel_farthest_from_the_border(gt: np.ndarray, expected: tuple[int, ...]) -> None:
    assert first_click(gt, np.random.default_rng(0), "center").index == expected


def test_center_mode_measures_distance_in_mm_when_given_spacing() -> None:
    # Two blobs: A is 5 × 5 × 5 voxels, B is 3 × 9 × 9. In voxels A is thicker (centre depth 3
    # vs 2); with 4 mm along axis 0, B is thicker (depth min(2·4, 5) = 5 mm vs min(3·4, 3) = 3 mm).
    gt = _box((20, 40, 20), (2, 2, 2), (7, 7, 7)) | _box((20, 40, 20), (10, 20, 5), (13, 29, 14))
    in_voxels = first_click(gt, np.random.default_rng(0), "center")
    in_mm = first_click(gt, np.random.default_rng(0), "center", spacing_mm=(4.0, 1.0, 1.0))
    assert in_voxels.index == (4, 4, 4)
    assert in_mm.index == (11, 24, 9)


def test_random_first_click_is_uniform_over_the_structure() -> None:
    # Two disjoint parts of 8 and 24 voxels: about a quarter of the clicks land in the small one.
    small = _box((10, 10, 10), (0, 0, 0), (2, 2, 2))
    large = _box((10, 10, 10), (5, 5, 5), (7, 9, 8))
    rng = np.random.default_rng(1)
    hits = [small[first_click(small | large, rng).index] for _ in range(2000)]
    assert np.mean(hits) == pytest.approx(8 / 32, abs=0.03)


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A prediction with both false negatives and false positives."""
    gt = _ball((32, 32, 32), (16, 16, 16), 9)
    pred = _ball((32, 32, 32), (16, 19, 14), 8)
    return pred, gt


@pytest.mark.parametrize("mode", CLICK_MODES)
def test_next_click_lies_in_the_error_region_with_the_right_label(mode: str) -> None:
    pred, gt = _case()
    fn, fp = error_masks(pred, gt)
    assert fn.any() and fp.any()
    labels = set()
    for seed in range(30):
        click = next_click(pred, gt, np.random.default_rng(seed), mode)
        assert click is not None
        assert fn[click.index] or fp[click.index]
        assert click.positive == bool(fn[click.index])
        labels.add(click.positive)
    if mode == "random":
        assert labels == {True, False}


def test_random_next_click_samples_the_error_region_uniformly() -> None:
    # The paper samples uniformly from FN ∪ FP, so P(positive) = |FN| / |FN ∪ FP|.
    pred, gt = _case()
    fn, fp = error_masks(pred, gt)
    expected = fn.sum() / (fn.sum() + fp.sum())
    rng = np.random.default_rng(7)
    positives = [next_click(pred, gt, rng).positive for _ in range(3000)]
    assert np.mean(positives) == pytest.approx(expected, abs=0.03)


def test_center_next_click_targets_the_middle_of_the_largest_false_negative_component() -> None:
    gt = _box((40, 40, 40), (5, 5, 5), (35, 35, 35))
    pred = gt.copy()
    pred[10:17, 10:17, 10:17] = False  # FN cube of 343 voxels, centre (13, 13, 13)
    pred[25:28, 25:28, 25:28] = False  # a smaller FN cube
    pred[0:4, 0:4, 37:40] = True  # FP blob of 48 voxels
    click = next_click(pred, gt, np.random.default_rng(0), "center")
    assert click == Click((13, 13, 13), True)


def test_center_next_click_is_negative_when_the_largest_component_is_a_false_positive() -> None:
    gt = _box((40, 40, 40), (5, 5, 5), (20, 20, 20))
    pred = gt.copy()
    pred[6, 6, 6] = False  # FN of one voxel
    pred[25:34, 22:31, 24:33] = True  # FP cube 9³, centre (29, 26, 28)
    click = next_click(pred, gt, np.random.default_rng(0), "center")
    assert click == Click((29, 26, 28), False)


def test_center_next_click_treats_diagonal_neighbours_as_one_component() -> None:
    # Two 2³ FN cubes touching only at a corner are one 16-voxel component (26-connectivity),
    # larger than a separate 12-voxel FP bar; with 6-connectivity the bar would win.
    gt = _box((20, 20, 20), (2, 2, 2), (6, 6, 6))
    pred = gt.copy()
    pred[2:4, 2:4, 2:4] = False
    pred[4:6, 4:6, 4:6] = False
    pred[12, 12, 4:16] = True
    click = next_click(pred, gt, np.random.default_rng(0), "center")
    assert click is not None and click.positive
    assert ndimage.label(~pred & gt)[1] == 2  # with 6-connectivity they are two components


@pytest.mark.parametrize("mode", CLICK_MODES)
def test_the_same_seed_gives_the_same_clicks(mode: str) -> None:
    pred, gt = _case()

    def sequence(seed: int) -> list[Click | None]:
        rng = np.random.default_rng(seed)
        return [first_click(gt, rng, mode)] + [next_click(pred, gt, rng, mode) for _ in range(5)]

    assert sequence(3) == sequence(3)
    if mode == "random":
        assert sequence(3) != sequence(4)


@pytest.mark.parametrize("mode", CLICK_MODES)
@pytest.mark.parametrize("empty", [False, True], ids=["perfect", "both-empty"])
def test_next_click_is_none_when_there_is_no_error(mode: str, empty: bool) -> None:
    gt = np.zeros((10, 10, 10), dtype=bool) if empty else _ball((10, 10, 10), (5, 5, 5), 3)
    assert next_click(gt.copy(), gt, np.random.default_rng(0), mode) is None


def test_next_click_on_an_empty_prediction_clicks_inside_the_structure() -> None:
    gt = _ball((20, 20, 20), (8, 9, 10), 4)
    click = next_click(np.zeros_like(gt), gt, np.random.default_rng(0))
    assert click is not None and click.positive and gt[click.index]


def test_random_mode_computes_no_distance_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("random mode must not compute a distance transform")

    monkeypatch.setattr(ndimage, "distance_transform_edt", forbidden)
    pred, gt = _case()
    rng = np.random.default_rng(0)
    assert gt[first_click(gt, rng, "random").index]
    assert next_click(pred, gt, rng, "random") is not None


def test_accepts_0_1_integer_masks_and_seeds() -> None:
    gt = _ball((12, 12, 12), (6, 6, 6), 3).astype(np.uint8)
    assert first_click(gt, 5) == first_click(gt.astype(bool), np.random.default_rng(5))


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (_box((8, 9, 10), (1, 2, 3), (4, 5, 6)), (slice(1, 4), slice(2, 5), slice(3, 6))),
        (np.zeros((4, 4, 4), dtype=bool), None),
        (_box((8, 8), (0, 7), (8, 8)), (slice(0, 8), slice(7, 8))),
    ],
)
def test_bounding_box(mask: np.ndarray, expected: tuple[slice, ...] | None) -> None:
    assert bounding_box(mask) == expected


def test_invalid_inputs_raise_clear_errors() -> None:
    gt = _ball((10, 10, 10), (5, 5, 5), 3)
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="empty"):
        first_click(np.zeros((4, 4, 4), dtype=bool), rng)
    with pytest.raises(DataError, match=r"shape \(10, 10, 9\) differs"):
        next_click(gt[:, :, :9], gt, rng)
    with pytest.raises(ConfigError, match="click mode 'ritm' is not known; use one of random, center"):
        first_click(gt, rng, "ritm")
    with pytest.raises(ConfigError, match="spacing_mm must be 3 positive numbers"):
        first_click(gt, rng, "center", spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="spacing_mm must be 3 positive numbers"):
        next_click(gt, gt, rng, "center", spacing_mm=(1.0, 1.0))


# -- the simulated user (the one click loop of evaluation, demo and training) ---------------------


@pytest.mark.parametrize("mode", CLICK_MODES)
def test_simulated_user_draws_the_clicks_of_first_and_next_click_in_order(mode: str) -> None:
    pred, gt = _case()
    user = SimulatedUser(gt, np.random.default_rng(7), mode, spacing_mm=(1.0, 1.0, 2.0))
    got = [user.click(pred) for _ in range(4)]
    rng = np.random.default_rng(7)
    expected = [first_click(gt, rng, mode, (1.0, 1.0, 2.0))] + [next_click(pred, gt, rng, mode, (1.0, 1.0, 2.0)) for _ in range(3)]
    assert got == expected and user.clicks == expected
    assert user.indices == [c.index for c in expected] and user.labels == [int(c.positive) for c in expected]


def test_simulated_user_stops_or_repeats_on_a_perfect_prediction() -> None:
    gt = _ball((12, 12, 12), (6, 6, 6), 3)
    user = SimulatedUser(gt, 0)
    first = user.click()
    assert first is not None and first.positive
    assert user.click(gt.copy()) is None and user.clicks == [first]  # evaluation: the user is done
    assert user.click_or_repeat(gt.copy()) == first and user.clicks == [first, first]  # training: same click again
    with pytest.raises(DataError, match="needs the current prediction"):
        user.click()
    with pytest.raises(ConfigError, match="click mode 'edge'"):
        SimulatedUser(gt, 0, "edge")
