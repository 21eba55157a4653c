"""Zoom-out augmentation (training.zoom): structures appear smaller, in their context, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.errors import ConfigError
from test_training import TINY, _cfg, _one_thread, tiny_cache  # noqa: F401  (fixtures re-used)
from test_training_synth import map_cache, map_sources  # noqa: F401  (fixtures re-used)
from training.dataset import StructureSamples, TrainingCache
from training.labelmaps import LabelMapCache
from training.synth_samples import SyntheticSamples
from training.zoom import draw_factor, shrink_image, shrink_labels, shrink_mask, zoomed_block


def test_a_zoomed_block_keeps_the_window_centre_and_shrinks_what_it_holds():
    start, big = zoomed_block((10, -4, 0), 32, 2.0)
    assert big == 64 and np.array_equal(start, (-6, -20, -16))  # centre (26, 12, 16) in both
    # a ball of radius 8 voxels seen zoomed out twice: radius 4, same place in the window
    zz, yy, xx = np.mgrid[:64, :64, :64]
    ball = (zz - 31.5) ** 2 + (yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 8**2
    small = shrink_mask(ball, 32)
    assert small.sum() == pytest.approx(ball.sum() / 8, rel=0.1)
    np.testing.assert_allclose(np.argwhere(small).mean(axis=0), (15.5, 15.5, 15.5), atol=0.1)
    # image values are averages (no aliasing of a one-voxel checkerboard), labels are picked, never mixed
    checker = ((zz + yy + xx) % 2).astype(np.float32)
    np.testing.assert_allclose(shrink_image(checker, 32), 0.5)
    labels = np.where(ball, 7, 3).astype(np.uint8)
    assert set(np.unique(shrink_labels(labels, 32))) == {3, 7}
    # a non-integer factor: every output voxel averages the input voxels it covers
    ramp = np.broadcast_to(np.arange(48, dtype=np.float32)[:, None, None], (48, 48, 48))
    out = shrink_image(ramp, 32)
    assert out.shape == (32, 32, 32) and np.all(np.diff(out[:, 0, 0]) > 0) and out[0, 0, 0] == pytest.approx(0.5)


def test_factors_are_drawn_only_when_asked_and_stay_in_range():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert draw_factor(rng, 0.0, 3.0) == 1.0 and rng.bit_generator.state == state  # no draw: old runs keep their samples
    factors = np.array([draw_factor(rng, 0.5, 2.5) for _ in range(2000)])
    zoomed = factors > 1.0
    assert 0.45 < zoomed.mean() < 0.55 and factors.max() <= 2.5 and factors.min() == 1.0
    assert 0.4 < np.median(np.log(factors[zoomed]) / np.log(2.5)) < 0.6  # log-uniform


def test_zoomed_real_samples_show_the_structure_smaller_and_are_reproducible(tiny_cache):
    cache = TrainingCache(tiny_cache)
    card = ModelCard(name="t", config=TINY)
    plain = StructureSamples(cache, card, samples_per_epoch=12, seed=2, flip_prob=0.0, intensity_prob=0.0)
    zoomed = StructureSamples(cache, card, samples_per_epoch=12, seed=2, flip_prob=0.0, intensity_prob=0.0, zoom_prob=1.0, zoom_max=2.0)
    ratios = []
    for i in range(12):
        a, b = plain[i], zoomed[i]
        assert b["image"].shape == a["image"].shape == (1, 32, 32, 32) and b["gt"].any()
        assert torch.equal(zoomed[i]["image"], b["image"]) and torch.equal(zoomed[i]["gt"], b["gt"])
        if a["structure"] == b["structure"] == "ball":
            ratios.append(float(b["gt"].sum()) / float(a["gt"].sum()))
    # a volume shrinks by f³ with f log-uniform in [1, 2] (a factor near 1 may round a voxel or two up)
    assert len(ratios) >= 3 and np.mean(ratios) < 0.7 and max(ratios) < 1.15 and min(ratios) > 1 / 8 * 0.7


def test_zoomed_synthetic_samples_paint_smaller_targets(map_cache):
    maps = LabelMapCache(map_cache)
    card = ModelCard(name="t", config=TINY)
    plain = SyntheticSamples(maps, card, samples_per_epoch=10, seed=1, flip_prob=0.0)
    zoomed = SyntheticSamples(maps, card, samples_per_epoch=10, seed=1, flip_prob=0.0, zoom_prob=1.0, zoom_max=2.0)
    sizes_plain = [float(plain[i]["gt"].sum()) for i in range(10)]
    sizes_zoomed = []
    for i in range(10):
        item = zoomed[i]
        assert item["gt"].any() and torch.isfinite(item["image"]).all() and float(item["image"].std()) > 0.1
        sizes_zoomed.append(float(item["gt"].sum()))
    assert np.mean(sizes_zoomed) < 0.7 * np.mean(sizes_plain)


@pytest.mark.parametrize(("kw", "match"), [({"zoom_prob": 1.5}, "--zoom-prob"), ({"zoom_prob": 0.5, "zoom_max": 0.5}, "--zoom-max")])
def test_zoom_options_are_checked(tiny_cache, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tiny_cache, tmp_path / "run", **kw)
    with pytest.raises(ConfigError, match=match):
        StructureSamples(TrainingCache(tiny_cache), ModelCard(name="t", config=TINY), **kw)
