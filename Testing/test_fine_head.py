"""The optional refinement head: config, state dict, checkpoint, session and trainer (tiny models)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.checkpoint import load_model, save_model
from SAMMed3DLib.errors import ConfigError
from SAMMed3DLib.model import VIT_B_ORI, build_sam3d, infer_config, normalize_config
from SAMMed3DLib.model.click_maps import click_distance_maps
from SAMMed3DLib.session import Session

#: 32³ input, 2³ tokens, 8³ low-res logits, 16³ fine grid.
TINY = {
    "image_encoder": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_chans": 48,
                      "use_rel_pos": True, "window_size": 0, "global_attn_indexes": [0]},
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": [2, 2, 2], "input_image_size": [32, 32, 32], "mask_in_chans": 8,
                       "click_maps": True},
    "mask_decoder": {"transformer_dim": 48, "iou_head_hidden_dim": 32},
}
TINY_FINE = {**copy.deepcopy(TINY), "fine_head": {"channels": [4, 6, 8], "click_reach": 5.0}}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _model(config, seed: int = 0, out_scale: float = 0.0):
    torch.manual_seed(seed)
    model = build_sam3d(config)
    if out_scale and model.has_fine_head:  # a trained-looking head: the last conv is zero at init
        with torch.no_grad():
            model.fine_head.out.weight.normal_(0.0, out_scale)
    return model.eval()


# -- configuration and state dict ------------------------------------------------------------------


def test_official_architecture_has_no_fine_head() -> None:
    with torch.device("meta"):
        official = build_sam3d(VIT_B_ORI)
    assert "fine_head" not in official.config and not official.has_fine_head
    assert not any(k.startswith("fine_head.") for k in official.state_dict())


def test_config_defaults_and_round_trip_through_the_state_dict() -> None:
    filled = normalize_config({**TINY, "fine_head": {}})
    # a config without the geodesic keys (written before they existed) means a head without them
    assert filled["fine_head"] == {"channels": [8, 16, 32], "click_reach": 8.0, "geodesic_reach": 0.0, "geodesic_weight": 20.0}
    model = _model(TINY_FINE)
    assert model.config["fine_head"] == {"channels": [4, 6, 8], "click_reach": 5.0, "geodesic_reach": 0.0, "geodesic_weight": 20.0}
    assert not model.fine_head.geodesic
    assert infer_config(model.state_dict()) == normalize_config(TINY_FINE) == model.config
    assert infer_config(_model(TINY).state_dict()) == normalize_config(TINY)  # no head inferred from none


@pytest.mark.parametrize(
    ("fine", "match"),
    [
        ({"chanels": [4, 4, 4]}, r"unknown fine_head option\(s\): 'chanels' \(did you mean 'channels'\?\)"),
        ({"channels": [4, 4]}, r"fine_head.channels must be 3 positive ints"),
        ({"channels": "wide"}, r"fine_head.channels must be 3 ints"),
        ({"click_reach": 0}, r"fine_head.click_reach must be > 0"),
        ({"geodesic_reach": -1}, r"fine_head.geodesic_reach must be >= 0"),
        ({"geodesic_weight": -2}, r"fine_head.geodesic_weight must be >= 0"),
        ({"geodesic_weight": "steep"}, r"geodesic_weight numbers"),
        ([4, 4, 4], r"fine_head must be a dict"),
    ],
)
def test_invalid_fine_head_configs_are_refused(fine, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_sam3d({**TINY, "fine_head": fine})


# -- the head ------------------------------------------------------------------------------------


def test_click_distance_maps_peak_at_each_click_and_ignore_padding() -> None:
    coords = torch.tensor([[[3.0, 30.0, 17.0], [31.0, 0.0, 8.0], [9.0, 9.0, 9.0]]])  # 32³ input → 16³ grid
    labels = torch.tensor([[1, 0, -1]])
    maps = click_distance_maps(coords, labels, (32,) * 3, (16,) * 3, 4.0, 1, torch.device("cpu"))
    assert maps.shape == (1, 2, 16, 16, 16)
    for channel, voxel in ((0, (3, 30, 17)), (1, (31, 0, 8))):
        peak = np.unravel_index(int(maps[0, channel].argmax()), (16, 16, 16))
        assert tuple(int(i) for i in peak) == tuple(v // 2 for v in voxel)
    assert maps[0, 0, 1, 15, 8] > maps[0, 0, 1, 15, 7] > 0 and maps[0, 0, 1, 15, 3] == 0  # 4-cell reach
    assert maps[0, :, 4, 4, 4].sum() == 0  # the padding click (9, 9, 9) draws nothing
    assert not click_distance_maps(None, None, (32,) * 3, (16,) * 3, 4.0, 2, torch.device("cpu")).any()


def test_untrained_head_returns_the_upsampled_decoder_logits() -> None:
    model = _model(TINY_FINE)
    image = torch.randn(1, 1, 32, 32, 32)
    low = torch.randn(1, 1, 8, 8, 8)
    coords, labels = torch.tensor([[[5.0, 6.0, 7.0]]]), torch.tensor([[1]])
    with torch.inference_mode():
        out = model.refine(image, low, coords, labels)
    torch.testing.assert_close(out, F.interpolate(low, size=(16, 16, 16), mode="trilinear", align_corners=False))
    plain = _model(TINY)
    assert plain.refine(None, low, coords, labels) is low  # no head: the decoder's logits as they are
    with pytest.raises(ValueError, match="pass the normalised window image"):
        model.refine(None, low, coords, labels)


def test_trained_head_follows_the_image_and_the_clicks() -> None:
    model = _model(TINY_FINE, out_scale=0.5)
    image = torch.randn(1, 1, 32, 32, 32)
    low = torch.zeros(1, 1, 8, 8, 8)
    one = (torch.tensor([[[4.0, 4.0, 4.0]]]), torch.tensor([[1]]))
    with torch.inference_mode():
        base = model.refine(image, low, *one)
        other_image = model.refine(-image, low, *one)
        other_click = model.refine(image, low, torch.tensor([[[28.0, 28.0, 28.0]]]), torch.tensor([[1]]))
        negative = model.refine(image, low, one[0], torch.tensor([[0]]))
    assert base.shape == (1, 1, 16, 16, 16)
    for changed in (other_image, other_click, negative):
        assert (changed - base).abs().max() > 1e-3


def test_checkpoint_with_a_head_round_trips(tmp_path: Path) -> None:
    model = _model(TINY_FINE, out_scale=0.5)
    save_model(model, tmp_path / "fine.pth", card=ModelCard(name="fine", config=model.config))
    loaded = load_model(tmp_path / "fine.pth", device="cpu")
    assert loaded.has_fine_head and loaded.config == model.config
    image, low = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 8, 8, 8)
    clicks = (torch.tensor([[[5.0, 6.0, 7.0], [20.0, 3.0, 9.0]]]), torch.tensor([[1, 0]]))
    with torch.inference_mode():
        torch.testing.assert_close(loaded.refine(image, low, *clicks), model.refine(image, low, *clicks), rtol=0, atol=0)
    # A bare state dict (no card) is recognised by its keys and shapes.
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    assert load_model(tmp_path / "bare.pth", device="cpu").config == model.config


# -- session ------------------------------------------------------------------------------------


def _ball_image() -> tuple[sitk.Image, tuple[int, int, int]]:
    zz, yy, xx = np.mgrid[:40, :44, :48]
    ball = (xx - 24) ** 2 + (yy - 22) ** 2 + (zz - 20) ** 2 < 64
    image = sitk.GetImageFromArray((100 + 300 * ball).astype(np.float32))
    image.SetSpacing((1.5, 1.5, 1.5))
    return image, (24, 22, 20)


def test_session_shows_the_heads_mask_and_feeds_the_decoder_its_own_logits() -> None:
    model = _model(TINY_FINE)
    with torch.no_grad():
        model.fine_head.out.bias.fill_(50.0)  # the head says "everything"; the decoder does not
    model.card = ModelCard(name="fine", config=model.config, spacing_mm=1.5)
    fed_back = []
    original = model.predict_low_res

    def spy(emb, coords, labels, prev):  # noqa: ANN001
        fed_back.append(prev.clone())
        return original(emb, coords, labels, prev)

    model.predict_low_res = spy  # type: ignore[method-assign]
    image, centre = _ball_image()
    session = Session(model, image, auto_extend=False, adaptive_scale=False)  # one window of the card's spacing
    first = session.click_index(centre).mask_array.copy()
    footprint = first.sum()
    assert footprint > 0.9 * 32**3  # the head's all-positive output was pasted over the window
    decoder_logits = session._windows[0].logits.clone()
    assert decoder_logits.shape == (1, 1, 8, 8, 8) and session._windows[0].output.shape == (1, 1, 16, 16, 16)
    session.click_index((30, 22, 20), positive=False)
    torch.testing.assert_close(fed_back[-1], decoder_logits)  # the decoder's logits, not the head's
    session.undo()
    np.testing.assert_array_equal(session.mask_array, first)
    torch.testing.assert_close(session._windows[0].logits, decoder_logits)
    # The head's logits are not kept in the history (8x the decoder's); the mask they gave is, and
    # the next click in the window makes them again.
    from SAMMed3DLib.windows import DECIDED

    assert session._windows[0].output is DECIDED
    session.click_index((30, 22, 20), positive=False)
    assert session._windows[0].output.shape == (1, 1, 16, 16, 16)


# -- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    from training.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("fine_data")
    zz, yy, xx = np.mgrid[:40, :40, :40]
    for i, (centre, r) in enumerate([((20, 20, 15), 7), ((15, 22, 12), 6), ((24, 18, 14), 8)]):
        folder = root / "src" / f"case{i}"
        folder.mkdir(parents=True)
        ball = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2 < r**2
        img = 100 + 20 * np.random.default_rng(i).standard_normal((40, 40, 40)) + 400 * ball
        for arr, name in ((img.astype(np.float32), "image.nii.gz"), (ball.astype(np.uint8), "label.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.5, 1.5, 1.5))
            sitk.WriteImage(im, str(folder / name))
        (folder / "labels.json").write_text('{"labels": {"1": "ball"}, "modality": "CT"}', encoding="utf-8")
    prepare([root / "src"], root / "cache", PrepareOptions(window=32))
    return root / "cache"


def _cfg(cache: Path, out: Path, **kw):
    from training.config import TrainConfig

    base = dict(
        cache=str(cache), out=str(out), model_config=copy.deepcopy(TINY), val_cases=["case2"], samples_per_epoch=8,
        max_steps=3, batch_size=2, lr=3e-3, rounds=3, mask_only_rounds=0, last_round_mask_only=False, log_every=1,
        val_every=3, ckpt_every=3, val_clicks=[1, 3], progress=False, device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_training_only_the_head_leaves_the_rest_of_a_checkpoint_unchanged(tiny_cache: Path, tmp_path: Path) -> None:
    from training.trainer import LAST, Trainer, load_state

    start = _model(TINY, seed=3)
    save_model(start, tmp_path / "start.pth", card=ModelCard(name="start", config=start.config))
    cfg = _cfg(tiny_cache, tmp_path / "run", init=str(tmp_path / "start.pth"), fine_head=True, train_only_fine_head=True, fine_grad_rounds=2)
    trainer = Trainer(cfg)
    trainer.fit()
    card = trainer.export(tmp_path / "fine.pth")
    trainer.close()
    after = load_state(tmp_path / "run" / LAST)["model"]
    before = start.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every decoder/encoder tensor as loaded
    head = [k for k in after if k.startswith("fine_head.")]
    assert head and not torch.equal(after["fine_head.out.weight"], torch.zeros_like(after["fine_head.out.weight"]))
    # a new head gets geodesic click maps (NEW_FINE_HEAD)
    assert card.config["fine_head"] == {"channels": [8, 16, 32], "click_reach": 8.0, "geodesic_reach": 16.0, "geodesic_weight": 20.0}
    loaded = load_model(tmp_path / "fine.pth", device="cpu")
    assert loaded.has_fine_head and loaded.fine_head.geodesic


def test_train_only_fine_head_without_a_head_is_refused(tiny_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--train-only-fine-head needs a fine head"):
        _cfg(tiny_cache, tmp_path / "x", train_only_fine_head=True)
    with pytest.raises(ConfigError, match="--fine-grad-rounds must be ≥ 0"):
        _cfg(tiny_cache, tmp_path / "x", fine_grad_rounds=-1)


@pytest.mark.slow
def test_a_few_head_steps_reduce_the_loss_on_a_fixed_batch(tiny_cache: Path) -> None:
    from training.dataset import StructureSamples, TrainingCache
    from training.trainer import ClickLoop

    cache = TrainingCache(tiny_cache)
    ds = StructureSamples(cache, ModelCard(name="t", config=TINY), samples_per_epoch=4, seed=0, intensity_prob=0.0)
    batch = [ds[i] for i in range(2)]
    images, gts = torch.stack([b["image"] for b in batch]), torch.stack([b["gt"] for b in batch])
    model = _model(TINY_FINE, seed=1).train()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fine_head."))
    loop = ClickLoop(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(20):
        loss, logits = loop(images, gts, [np.random.default_rng(i) for i in range(2)], set(), 3, {0, 2})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert logits.shape == (2, 1, 32, 32, 32)
    assert losses[-1] < 0.7 * losses[0], losses
