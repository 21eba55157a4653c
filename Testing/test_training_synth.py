"""Synthetic training images: the generator (every contrast mode), the label-map cache, the mix, a few training steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.errors import ConfigError, DataError
from SAMMed3DLib.model import build_sam3d
from test_training import TINY, _cfg, _one_thread, tiny_cache  # noqa: F401  (fixtures re-used)
from training.config import TrainConfig
from training.dataset import StructureSamples, TrainingCache
from training.interaction import ClickLoop
from training.labelmaps import LabelMapCache, main as labelmaps_main, prepare_labelmaps
from training.prepare import PrepareOptions
from training.synth import MODES, SynthOptions, ct_tissue_classes, synthesize
from training.synth_samples import MixedSamples, SyntheticSamples
from training.trainer import LAST, Trainer, load_state

# -- the generator ---------------------------------------------------------------------------------


def _anatomy(n: int = 80) -> np.ndarray:
    """A label map with touching structures: a body (1), an organ (2) with a lesion (3) inside, a bone (4), a vessel (5)."""
    zz, yy, xx = np.mgrid[:n, :n, :n].astype(float)
    c = n / 2
    lab = np.zeros((n, n, n), dtype=np.uint8)
    lab[((xx - c) / (0.45 * n)) ** 2 + ((yy - c) / (0.4 * n)) ** 2 < 1] = 1
    lab[(xx - c + 8) ** 2 + (yy - c) ** 2 + (zz - c) ** 2 < 14**2] = 2
    lab[(xx - c + 9) ** 2 + (yy - c - 2) ** 2 + (zz - c) ** 2 < 6**2] = 3
    lab[(np.abs(xx - c - 16) < 5) & (np.abs(yy - c) < 5)] = 4
    lab[(xx - c - 4) ** 2 + (yy - c + 14) ** 2 < 4**2] = 5
    return lab


def _contrast_share(result, cnr: float = 1.0) -> float:
    """Share of the target's surroundings in labels that differ from the target by ``cnr`` times their noise.

    Measured in the image, locally: the target's interior (2 voxels in from its boundary) against
    each label's voxels 3 to 6 voxels out from it (beyond the partial volume and blur of the
    boundary, near enough that a bias field or an uptake blob changes little); the difference of
    the medians over the root mean square of the spreads (a robust contrast-to-noise ratio).
    """
    img = result.image.astype(np.float64)
    core = ndimage.binary_erosion(result.target, iterations=2)
    core = img[core if core.sum() >= 20 else result.target]
    ring = ndimage.binary_dilation(result.target, iterations=6) & ~ndimage.binary_dilation(result.target, iterations=2)
    labels, counts = np.unique(result.labels[ring], return_counts=True)

    def centre_spread(x: np.ndarray) -> tuple[float, float]:  # median and MAD: a few mixed voxels change neither
        m = float(np.median(x))
        return m, 1.4826 * float(np.median(np.abs(x - m)))

    core_m, core_s = centre_spread(core)
    differ = 0
    for v, c in zip(labels, counts):
        near_m, near_s = centre_spread(img[ring & (result.labels == v)])
        if abs(near_m - core_m) > cnr * np.sqrt((near_s**2 + core_s**2) / 2):
            differ += c
    return differ / counts.sum()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [2, 3, 4])
def test_the_target_differs_from_part_of_its_surroundings_in_every_mode(mode, value):
    lab = _anatomy()
    names = ["body", "liver", "liver_tumor", "vertebrae_l1", "aorta"]
    shares = []
    for seed in range(6):
        result = synthesize(lab, lab == value, np.random.default_rng(seed), mode, size=64, names=names)
        shares.append(_contrast_share(result))
        assert np.unique(result.means).size > 1  # not one grey: labels get their own intensities
    # measured in the image after blur, resolution change and noise: at least a fifth of the
    # surroundings (the generator asks for 30 % of a 2-voxel rim) is visibly different, every time
    assert min(shares) > 0.2, shares


def test_merged_labels_share_an_intensity_but_the_target_keeps_a_boundary():
    lab = _anatomy()
    opts = SynthOptions(merge_prob=1.0, background_split_prob=0.0)  # every label copies another's mean
    for seed in range(6):
        result = synthesize(lab, lab == 2, np.random.default_rng(seed), "mr", size=64, opts=opts)
        assert np.unique(np.round(result.means, 6)).size < result.means.size  # some labels were merged
        assert _contrast_share(result) > 0.2


@pytest.mark.parametrize("mode", MODES)
def test_output_shape_dtype_range_and_determinism(mode):
    lab = _anatomy()
    a = synthesize(lab, lab == 3, np.random.default_rng(7), mode, size=64)
    b = synthesize(lab, lab == 3, np.random.default_rng(7), mode, size=64)
    c = synthesize(lab, lab == 3, np.random.default_rng(8), mode, size=64)
    assert a.image.shape == a.target.shape == (64, 64, 64) and a.image.dtype == np.float32 and a.target.dtype == bool
    assert np.isfinite(a.image).all() and a.target.any()
    assert np.array_equal(a.image, b.image) and np.array_equal(a.target, b.target) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)
    low, high = {"mr": (0.0, 1.0), "ct": (-1024.0, 3000.0), "pet": (0.0, np.inf)}[mode]
    assert low <= a.image.min() and a.image.max() <= high
    # a target deformed with its labels: it stays a subset of one label of the deformed map
    assert np.unique(a.labels[a.target]).size == 1


def test_ct_mode_follows_the_names_hounsfield_classes():
    assert ct_tissue_classes(["lung_upper_lobe_left", "vertebrae_l1", "liver", "aorta", "urinary_bladder"]) == ["lung", "bone", None, "enhanced", "fluid"]
    lab = _anatomy()
    names = ["body", "lung_left", "liver_tumor", "rib_left_3", "aorta"]
    opts = SynthOptions(ct_name_hint_prob=1.0, merge_prob=0.0, background_split_prob=0.0)
    for seed in range(5):
        result = synthesize(lab, lab == 2, np.random.default_rng(seed), "ct", size=64, names=names, opts=opts)
        lung, bone = result.image[result.labels == 2].mean(), result.image[result.labels == 4].mean()
        assert lung < -500 and bone > 200, (lung, bone)


def test_generator_speed_on_a_128_window():
    lab = np.kron(_anatomy(80), np.ones((2, 2, 2), dtype=np.uint8))  # 160³ block around a 128³ window
    times = []
    for seed, mode in enumerate(MODES * 2):
        t0 = time.perf_counter()
        synthesize(lab, lab == 2, np.random.default_rng(seed), mode, size=128)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 1.0, times  # about 0.2 s on one idle core; generous for a shared CI machine


def test_bad_input_is_refused():
    lab = _anatomy(40)
    with pytest.raises(ValueError, match="unknown synthetic mode"):
        synthesize(lab, lab == 2, np.random.default_rng(0), "xray")
    with pytest.raises(ValueError, match="empty"):
        synthesize(lab, lab == 9, np.random.default_rng(0), "mr")


# -- the label-map cache ------------------------------------------------------------------------------


def _write_map(folder: Path, lab_kji: np.ndarray, names: dict[int, str], spacing, direction=None, origin=(5.0, -12.0, 40.0)) -> sitk.Image:
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(lab_kji)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(folder / "label.nii.gz"))
    (folder / "labels.json").write_text(json.dumps({"labels": {str(k): v for k, v in names.items()}, "region": "test"}))
    return image


def _ball_map(n: int, centres, radius: float, values, dtype=np.uint8) -> np.ndarray:
    zz, yy, xx = np.mgrid[:n, :n, :n]
    lab = np.zeros((n, n, n), dtype=dtype)
    for (x, y, z), v in zip(centres, values):
        lab[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 < radius**2] = v
    return lab


@pytest.fixture(scope="module")
def map_sources(tmp_path_factory) -> Path:
    """Label-only maps in two sets: an oblique anisotropic one with uint16 values above 255, and small ones for a 32³ window."""
    root = tmp_path_factory.mktemp("maps")
    oblique = sitk.VersorTransform((0.2, 1.0, 0.3), 0.5).GetMatrix()
    lab = _ball_map(60, [(20, 30, 30), (42, 30, 30)], 9, [1000, 2035], dtype=np.uint16)
    lab[5:8, 5:8, 5:8] = 7  # a speck: painted, never a target
    _write_map(root / "brains" / "b1", lab, {1000: "ctx_a", 2035: "ctx_b", 7: "speck"}, (1.2, 1.0, 2.0), oblique)
    for i in range(3):
        lab = _ball_map(40, [(14 + i, 20, 20), (27, 20 + i, 20)], 7, [1, 2])
        _write_map(root / "small" / f"s{i}", lab, {1: "organ_a", 2: "organ_b"}, (1.5, 1.5, 1.5))
    return root


def test_label_map_cache_keeps_every_label_resamples_to_ras_and_excludes_cases(map_sources, tmp_path):
    index = prepare_labelmaps([map_sources], tmp_path / "c", PrepareOptions(window=32), exclude=["s2"])
    assert [c["case"] for c in index["cases"]] == ["brains/b1", "small/s0", "small/s1"]
    cache = LabelMapCache(tmp_path / "c")
    b1 = cache.cases[0]
    assert cache.label_names(0) == ["speck", "ctx_a", "ctx_b"]  # renumbered 1..3 in source-value order, the speck kept
    assert [s["name"] for s in b1["structures"]] == ["ctx_a", "ctx_b"]  # the speck is too small to be a target
    label, target = cache.maps(0)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 3}
    assert np.array_equal(np.unique(target), [0, 1, 2]) and np.all(label[target == 1] == 2) and np.all(label[target == 2] == 3)
    # geometry: each ball's centroid, through the cached grid (origin + direction · index · 1.5 mm), lands where it is in the source
    source = sitk.ReadImage(str(map_sources / "brains" / "b1" / "label.nii.gz"))
    src = sitk.GetArrayFromImage(source)
    direction = np.array(b1["direction_lps"]).reshape(3, 3)
    for value, cached in ((1000, 1), (2035, 2)):
        kji = np.argwhere(src == value).mean(axis=0)
        expected = np.array(source.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist()))
        got = np.array(b1["origin_lps"]) + direction @ (np.argwhere(target == cached).mean(axis=0) * 1.5)
        np.testing.assert_allclose(got, expected, atol=1.0)
    # axis 0 runs toward patient Right (−x in LPS), as the image cache's
    np.testing.assert_allclose(direction[:, 0], [-1, 0, 0], atol=1e-9)
    with pytest.raises(DataError, match="not a label-map cache"):
        LabelMapCache(tmp_path)


def test_sets_weigh_by_variety_not_by_case_count(map_sources, tmp_path):
    prepare_labelmaps([map_sources], tmp_path / "c", PrepareOptions(window=32))
    cache = LabelMapCache(tmp_path / "c")
    w = dict(zip(cache.case_ids, cache.case_weights))
    # "brains": 1 map, 2 targets; "small": 3 maps, 6 targets → set weights sqrt(2) : sqrt(6), split among the maps
    assert w["brains/b1"] / w["small/s0"] == pytest.approx(np.sqrt(2) / (np.sqrt(6) / 3))
    assert sum(w.values()) == pytest.approx(1.0)


def test_labelmaps_command_line(map_sources, tmp_path, capsys):
    assert labelmaps_main([str(map_sources / "small"), "--out", str(tmp_path / "c"), "--window", "32"]) == 0
    assert "3 label map(s) of 1 set(s) (small), 6 target(s)" in capsys.readouterr().out
    assert labelmaps_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- samples and the mix ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def map_cache(map_sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mapcache")
    prepare_labelmaps([map_sources / "small"], out, PrepareOptions(window=32))
    return out


def test_synthetic_samples_are_windows_of_a_target_in_every_mode_and_deterministic(map_cache):
    ds = SyntheticSamples(LabelMapCache(map_cache), ModelCard(name="t", config=TINY), samples_per_epoch=12, seed=1)
    a, b = ds[3], ds[3]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt"], b["gt"])
    seen_modes = set()
    for i in range(12):
        item = ds[i]
        img, gt = item["image"][0].numpy(), item["gt"][0].numpy().astype(bool)
        assert img.shape == gt.shape == (32, 32, 32) and img.dtype == np.float32 and gt.any() and np.isfinite(img).all()
        assert item["case"].startswith("synthetic ") and item["structure"] in ("organ_a", "organ_b")
        seen_modes.add(item["case"].split()[1])
        assert float(img.std()) > 0.1  # not a constant window
    assert seen_modes == set(MODES)


def test_the_mix_follows_the_fraction_and_keeps_items_reproducible(tiny_cache, map_cache):
    card = ModelCard(name="t", config=TINY)
    real = StructureSamples(TrainingCache(tiny_cache), card, samples_per_epoch=40, seed=0)
    synthetic = SyntheticSamples(LabelMapCache(map_cache), card, samples_per_epoch=40, seed=0)
    for fraction, expected in ((0.0, 0), (1.0, 40)):
        mix = MixedSamples(real, synthetic, fraction, seed=0)
        assert sum(mix.is_synthetic(i) for i in range(40)) == expected
    mix = MixedSamples(real, synthetic, 0.5, seed=0)
    flags = [mix.is_synthetic(i) for i in range(40)]
    assert 10 <= sum(flags) <= 30
    i = flags.index(True)
    j = flags.index(False)
    assert mix[i]["case"].startswith("synthetic ") and not mix[j]["case"].startswith("synthetic ")
    assert torch.equal(mix[i]["image"], synthetic[i]["image"]) and torch.equal(mix[j]["image"], real[j]["image"])
    mix.set_epoch(1)
    assert [mix.is_synthetic(k) for k in range(40)] != flags


def test_a_few_steps_on_synthetic_samples_reduce_the_loss(map_cache):
    torch.manual_seed(0)
    ds = SyntheticSamples(LabelMapCache(map_cache), ModelCard(name="t", config=TINY), samples_per_epoch=4, seed=0, modes={"mr": 1, "ct": 1, "pet": 1})
    batch = [ds[i] for i in range(2)]
    images = torch.stack([b["image"] for b in batch])
    gts = torch.stack([b["gt"] for b in batch])
    loop = ClickLoop(build_sam3d(TINY).train())
    opt = torch.optim.AdamW(loop.parameters(), lr=2e-3)
    losses = []
    t0 = time.perf_counter()
    for _ in range(25):
        loss, _ = loop(images, gts, [np.random.default_rng(i) for i in range(2)], {2}, 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    assert time.perf_counter() - t0 < 20


# -- configuration and the trainer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"synthetic_fraction": 1.5}, "--synthetic-fraction must lie"),
        ({"synthetic_fraction": 0.5}, "needs --synthetic-cache"),
        ({"synthetic_modes": {"xray": 1.0}}, "--synthetic-modes"),
        ({"synthetic_modes": {"mr": 0.0}}, "--synthetic-modes"),
    ],
)
def test_synthetic_options_are_checked(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(cache="c", out="o", **kw)


@pytest.mark.slow
def test_trainer_mixes_synthetic_samples_resumes_bit_for_bit_and_refuses_a_leaking_cache(tiny_cache, map_cache, tmp_path):
    mix = {"synthetic_cache": str(map_cache), "synthetic_fraction": 0.5}
    full = Trainer(_cfg(tiny_cache, tmp_path / "full", **mix))
    assert isinstance(full.dataset, MixedSamples) and full.synthetic_cases == ["small/s0", "small/s1", "small/s2"]
    full.fit()
    card = full.export(tmp_path / "m.pth")
    full.close()
    assert card.extra["synthetic"]["label_maps_per_set"] == {"small": 3} and card.extra["synthetic"]["fraction"] == 0.5
    part = Trainer(_cfg(tiny_cache, tmp_path / "part", max_steps=2, **mix))
    part.fit()
    part.close()
    # resumed from the run folder alone (its config.json), as `python -m training --out RUN --resume` does
    saved = json.loads((tmp_path / "part" / "config.json").read_text(encoding="utf-8"))
    assert saved["synthetic_fraction"] == 0.5 and saved["synthetic_cache"] == str(map_cache)
    resumed = Trainer(TrainConfig.from_dict({**saved, "max_steps": 4}), resume=True)
    assert resumed.step == 2 and isinstance(resumed.dataset, MixedSamples)
    resumed.fit()
    resumed.close()
    a, b = load_state(tmp_path / "full" / LAST)["model"], load_state(tmp_path / "part" / LAST)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a label-map cache made from the real cases, validation case included, is refused
    prepare_labelmaps([tiny_cache.parent / "src"], tmp_path / "leaky", PrepareOptions(window=32))
    with pytest.raises(ConfigError, match=r"holds validation case\(s\) \['case2'\]"):
        Trainer(_cfg(tiny_cache, tmp_path / "bad", synthetic_cache=str(tmp_path / "leaky"), synthetic_fraction=0.5))
