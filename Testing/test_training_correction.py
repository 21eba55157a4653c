"""Correction rounds: training interactions that start from a corrupted ground truth (issue: editing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.editing import fraction_to_logits
from SAMMed3DLib.model import build_sam3d
from SAMMed3DLib.model.sam3d import Sam3D
from test_training import TINY, _one_thread, tiny_cache  # noqa: F401  (fixtures re-used)
from training.dataset import StructureSamples, TrainingCache
from training.interaction import ClickLoop


class _Recording(Sam3D):
    """The tiny SAM-Med3D, keeping every dense prompt and point prompt it was given."""

    def __init__(self) -> None:
        base = build_sam3d(TINY)
        super().__init__(base.image_encoder, base.prompt_encoder, base.mask_decoder, base.config)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        self.calls.append((mask_logits.detach().clone(), None if coords is None else coords.clone(), None if labels is None else labels.clone()))
        return super().predict_low_res(image_embeddings, coords, labels, mask_logits)


def _batch(cache_root, n=2):
    ds = StructureSamples(TrainingCache(cache_root), ModelCard(name="t", config=TINY), samples_per_epoch=4, seed=0, intensity_prob=0.0)
    batch = [ds[i] for i in range(n)]
    return torch.stack([b["image"] for b in batch]), torch.stack([b["gt"] for b in batch])


def test_a_correction_round_starts_from_a_corrupted_truth_and_clicks_its_error(tiny_cache) -> None:
    images, gts = _batch(tiny_cache)
    model = _Recording()
    loop = ClickLoop(model, correction_fraction=1.0, spacing_mm=1.5)
    loop(images, gts, [np.random.default_rng(i) for i in range(2)], set(), 2)
    dense0, coords0, labels0 = model.calls[0]
    assert float(dense0.abs().max()) > 0  # the corrupted mask is the round-0 dense prompt
    gt = gts[:, 0].bool().numpy()
    for i in range(2):
        inside = dense0[i, 0] > 0
        low_gt = torch.nn.functional.adaptive_avg_pool3d(gts[i : i + 1].float(), dense0.shape[-3:])[0, 0] > 0.5
        truth_prompt = fraction_to_logits(torch.nn.functional.adaptive_avg_pool3d(gts[i : i + 1].float(), dense0.shape[-3:])[0])
        assert float((inside == low_gt).float().mean()) > 0.8  # close to the truth...
        assert not torch.allclose(dense0[i], truth_prompt)  # ...but not the truth
        click = tuple(int(v) for v in coords0[i, 0].round().tolist())
        # The first click is in the start's error: positive iff the voxel belongs to the truth.
        assert bool(labels0[i, 0]) == bool(gt[i][click])
    # Without correction rounds the first dense prompt is zeros, as at inference on a new object.
    model.calls.clear()
    ClickLoop(model)(images, gts, [np.random.default_rng(i) for i in range(2)], set(), 1)
    assert float(model.calls[0][0].abs().max()) == 0.0


@pytest.mark.slow
def test_a_few_steps_with_correction_rounds_reduce_the_loss(tiny_cache) -> None:
    torch.manual_seed(0)
    images, gts = _batch(tiny_cache)
    loop = ClickLoop(build_sam3d(TINY).train(), correction_fraction=0.5)
    opt = torch.optim.AdamW(loop.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        loss, _ = loop(images, gts, [np.random.default_rng(i) for i in range(2)], set(), 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_run_with_correction_rounds_trains_and_keeps_its_setting(tiny_cache, tmp_path) -> None:
    from SAMMed3DLib.errors import ConfigError
    from test_training import _cfg
    from training import distributed as D
    from training.config import TrainConfig
    from training.trainer import Trainer

    run = Trainer(_cfg(tiny_cache, tmp_path / "run", max_steps=2, correction_fraction=0.5))
    assert D.unwrap(run.loop).correction_fraction == 0.5
    run.fit()
    run.close()
    assert TrainConfig.load(tmp_path / "run" / "config.json").correction_fraction == 0.5
    with pytest.raises(ConfigError, match="correction-fraction must lie in"):
        _cfg(tiny_cache, tmp_path / "bad", correction_fraction=1.5)
