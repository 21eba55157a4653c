"""Trainer: samples, simulated interaction, loss, resume, DDP, export, CLI (tiny models)."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.errors import CheckpointError, ConfigError
from SAMMed3DLib.model import build_sam3d
from training.__main__ import main as train_main
from training.config import TrainConfig
from training.dataset import StructureSamples, TrainingCache, crop_start, extract, validation_samples
from training.prepare import PrepareOptions, prepare
from training.trainer import BEST, LAST, ClickLoop, Trainer, evaluate_windows, load_state, lr_factor, mask_only_plan

#: A 32³-input model (2³ tokens, 8³ low-res logits) that trains a step in well under a second.
TINY = {
    "image_encoder": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_chans": 48,
                      "use_rel_pos": True, "window_size": 0, "global_attn_indexes": [0]},
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": [2, 2, 2], "input_image_size": [32, 32, 32], "mask_in_chans": 8},
    "mask_decoder": {"transformer_dim": 48, "iou_head_hidden_dim": 32},
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Runs after conftest's 2-thread setting: with the 2 cores shared by other processes,
    # 2 OpenMP threads oversubscribe and collapse (a tiny step took 3.6 s instead of 0.2 s).
    torch.set_num_threads(1)
    yield


def _write_ball_case(folder: Path, centre_xyz, radius_vox: float, seed: int) -> None:
    """A 40³ (1.5 mm) noisy image with a bright ball labelled 1 and a dim slab labelled 2."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    ball = (xx - centre_xyz[0]) ** 2 + (yy - centre_xyz[1]) ** 2 + (zz - centre_xyz[2]) ** 2 < radius_vox**2
    label = ball.astype(np.uint8)
    label[28:39, 5:35, 5:35] = 2
    img = 100 + 20 * rng.standard_normal((40, 40, 40)) + 400 * ball + 150 * (label == 2)
    for arr, name in ((img.astype(np.float32), "image.nii.gz"), (label, "label.nii.gz")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.5, 1.5, 1.5))
        sitk.WriteImage(im, str(folder / name))
    (folder / "labels.json").write_text(json.dumps({"labels": {"1": "ball", "2": "slab"}, "modality": "CT"}))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for i, (centre, r) in enumerate([((20, 20, 15), 7), ((15, 22, 12), 6), ((24, 18, 14), 8)]):
        _write_ball_case(root / "src" / f"case{i}", centre, r, seed=i)
    prepare([root / "src"], root / "cache", PrepareOptions(window=32))
    return root / "cache"


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        cache=str(cache), out=str(out), model_config=copy.deepcopy(TINY), val_cases=["case2"], samples_per_epoch=8,
        max_steps=4, cycle_steps=4, batch_size=2, lr=1e-3, rounds=3, mask_only_rounds=0, log_every=1, val_every=2,
        ckpt_every=2, val_clicks=[1, 3], export_clicks=[1, 3, 5, 10], progress=False, device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


# -- samples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "shape", "window"),
    [((10, 10, 10), (20, 20, 20), (40, 40, 40), 32), ((0, 5, 30), (50, 9, 35), (60, 60, 40), 32), ((2, 2, 2), (5, 5, 5), (8, 8, 8), 32)],
)
def test_random_crop_keeps_the_structure_inside_when_it_fits(lo, hi, shape, window):
    rng = np.random.default_rng(0)
    lo, hi = np.array(lo), np.array(hi)
    for _ in range(50):
        start = crop_start(lo, hi, shape, window, rng)
        for a in range(3):
            if hi[a] - lo[a] + 1 <= window:
                assert start[a] <= lo[a] and hi[a] < start[a] + window
            else:
                assert lo[a] <= start[a] and start[a] + window - 1 <= hi[a]


def test_extract_pads_with_zeros():
    arr = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 1
    block = extract(arr, (-1, -1, -1), 5)
    assert block.shape == (5, 5, 5) and block[0].sum() == 0 and np.array_equal(block[1:4, 1:4, 1:4], arr)


def test_samples_are_deterministic_normalised_and_flip_masks_with_images(tiny_cache):
    cache = TrainingCache(tiny_cache, exclude=["case2"])
    card = ModelCard(name="t", config=TINY)
    ds = StructureSamples(cache, card, samples_per_epoch=16, seed=3, flip_prob=0.5, intensity_prob=0.0)
    a, b = ds[5], ds[5]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt"], b["gt"])
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["image"], a["image"]) or ds[5]["structure"] != a["structure"]
    for i in range(16):
        item = ds[i]
        img, gt = item["image"][0], item["gt"][0].bool()
        assert img.shape == gt.shape == (32, 32, 32) and img.dtype == torch.float32
        assert gt.any()
        # the structures are brighter than their surroundings: a flip that moved only the image
        # (or only the mask) would break this
        assert img[gt].mean() > img[~gt].mean() + 0.5


def test_validation_windows_are_centred_and_unaugmented(tiny_cache):
    cache = TrainingCache(tiny_cache, cases=["case2"])
    samples = validation_samples(cache, ModelCard(name="t", config=TINY))
    assert [s["structure"] for s in samples] == ["ball", "slab"]
    centroid = np.argwhere(samples[0]["gt"]).mean(axis=0)
    np.testing.assert_allclose(centroid, [15.5, 15.5, 15.5], atol=1.5)


def test_unknown_cases_are_refused(tiny_cache, tmp_path):
    with pytest.raises(Exception, match="not in the cache"):
        TrainingCache(tiny_cache, exclude=["nope"])
    with pytest.raises(Exception, match="not a training cache"):
        TrainingCache(tmp_path)


# -- schedule and plans --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (9, 1.0), (10, 1.0), (59, 1.0), (60, 0.1), (80, 0.01), (95, 0.001), (99, 0.001), (100, 1.0), (160, 0.1)],
)
def test_lr_factor_warmup_and_cyclic_step_decay(step, expected):
    cfg = TrainConfig(cache="c", out="o", warmup_steps=10, cycle_steps=100, max_steps=400)
    assert lr_factor(step, cfg) == pytest.approx(expected)


@pytest.mark.parametrize(("rounds", "n", "last", "size"), [(7, 1, True, 2), (7, 2, False, 2), (2, 0, True, 1), (1, 0, True, 0)])
def test_mask_only_plan(rounds, n, last, size):
    for seed in range(10):
        plan = mask_only_plan(rounds, n, last, np.random.default_rng(seed))
        assert len(plan) == size and 0 not in plan and all(0 < r < rounds for r in plan)
        if last and rounds > 1:
            assert rounds - 1 in plan


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rounds": 0}, "--rounds"),
        ({"rounds": 2, "mask_only_rounds": 1}, "--mask-only-rounds"),
        ({"lr": 0.0}, "--lr"),
        ({"click_mode": "corner"}, "--click-mode"),
        ({"device": "tpu"}, "--device"),
        ({"model_config": {"image_encoder": {}}}, "--model-config"),
    ],
)
def test_invalid_options_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(cache="c", out="o", **kw)


def test_swap_closed_position_matrix_makes_click_and_image_encodings_a_permutation():
    from training.trainer import make_pe_swap_closed

    model = build_sam3d(TINY)
    pe = model.prompt_encoder
    grid = pe.image_embedding_size[0]
    cell = 32 // grid
    idx = torch.stack(torch.meshgrid(*[torch.arange(grid)] * 3, indexing="ij"), -1).reshape(-1, 3)
    clicks = (idx * cell + cell / 2 - 0.5).float()[None]  # click at each cell centre (+0.5 inside)

    def sparse_vs_dense():
        sparse = pe.pe_layer.forward_with_coords(clicks + 0.5, (32, 32, 32))[0]  # (cells, C)
        dense = pe.get_dense_pe()[0].reshape(pe.get_dense_pe().shape[1], -1).T  # (cells, C)
        return sparse, dense

    sparse, dense = sparse_vs_dense()
    assert not torch.allclose(sparse, dense, atol=1e-4)  # the official quirk: x and y disagree
    make_pe_swap_closed(model)
    sparse, dense = sparse_vs_dense()
    n = pe.pe_layer.positional_encoding_gaussian_matrix.shape[1]
    half = torch.cat([torch.arange(n // 2, n), torch.arange(0, n // 2)])
    perm = torch.cat([half, half + n, half + 2 * n])
    torch.testing.assert_close(sparse[:, perm], dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("pe_matrix", "paired"), [("keep", False), ("swap_closed", True)])
def test_pe_matrix_option(pe_matrix, paired):
    from training.trainer import initial_model

    torch.manual_seed(0)
    model = initial_model(TrainConfig(cache="c", out="o", model_config=TINY, pe_matrix=pe_matrix))
    g = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    n = g.shape[1] // 2
    assert torch.equal(g[:, :n], g[[1, 0, 2], n:]) is paired
    with pytest.raises(ConfigError, match="--pe-matrix"):
        TrainConfig(cache="c", out="o", pe_matrix="sorted")


def test_config_json_round_trip(tmp_path):
    cfg = TrainConfig(cache="c", out="o", lr=3e-4, val_cases=["a"], model_config=TINY)
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({**cfg.to_dict(), "lrr": 1})


# -- learning ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tiny_cache):
    torch.manual_seed(0)
    cache = TrainingCache(tiny_cache)
    ds = StructureSamples(cache, ModelCard(name="t", config=TINY), samples_per_epoch=4, seed=0, intensity_prob=0.0)
    batch = [ds[i] for i in range(2)]
    images = torch.stack([b["image"] for b in batch])
    gts = torch.stack([b["gt"] for b in batch])
    loop = ClickLoop(build_sam3d(TINY).train())
    opt = torch.optim.AdamW(loop.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        rngs = [np.random.default_rng(i) for i in range(2)]
        loss, logits = loop(images, gts, rngs, {2}, 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert logits.shape == (2, 1, 32, 32, 32)
    assert losses[-1] < 0.7 * losses[0], losses


def test_evaluate_windows_reports_each_click_count(tiny_cache):
    samples = validation_samples(TrainingCache(tiny_cache, cases=["case2"]), ModelCard(name="t", config=TINY))
    result = evaluate_windows(build_sam3d(TINY), samples, [1, 2, 4])
    assert set(result["dice"]) == {"1", "2", "4"}
    assert all(0.0 <= v <= 1.0 for v in result["dice"].values())
    assert [p["structure"] for p in result["per_structure"]] == ["ball", "slab"]


def _tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_continues_bit_for_bit(tiny_cache, tmp_path):
    full = Trainer(_cfg(tiny_cache, tmp_path / "full"))
    full.fit()
    full.close()
    part = Trainer(_cfg(tiny_cache, tmp_path / "part", max_steps=2))
    part.fit()
    part.close()
    assert load_state(tmp_path / "part" / LAST)["step"] == 2
    resumed = Trainer(_cfg(tiny_cache, tmp_path / "part", max_steps=4), resume=True)
    assert resumed.step == 2
    resumed.fit()
    resumed.close()
    a, b = load_state(tmp_path / "full" / LAST), load_state(tmp_path / "part" / LAST)
    assert a["step"] == b["step"] == 4
    assert _tensors_equal(a["model"], b["model"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    loss = lambda s: [h["loss"] for h in json.loads(s["history"]) if "loss" in h]  # noqa: E731
    assert loss(a) == loss(b) and len(loss(a)) == 4
    assert (tmp_path / "full" / BEST).is_file() and json.loads((tmp_path / "full" / "config.json").read_text(encoding="utf-8"))["max_steps"] == 4
    # the resumed run's config.json records the flags it was resumed with (--max-steps 4, not 2)
    assert json.loads((tmp_path / "part" / "config.json").read_text(encoding="utf-8"))["max_steps"] == 4


def test_resume_with_a_new_learning_rate_uses_it(tiny_cache, tmp_path):
    first = Trainer(_cfg(tiny_cache, tmp_path / "run", max_steps=2))
    first.fit()
    first.close()
    old_lr = first.cfg.lr
    resumed = Trainer(_cfg(tiny_cache, tmp_path / "run", max_steps=4, lr=old_lr / 10), resume=True)
    expected = old_lr / 10 * lr_factor(2, resumed.cfg)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([expected])
    resumed.fit()
    resumed.close()
    fresh = Trainer(_cfg(tiny_cache, tmp_path / "fresh", max_steps=4, lr=old_lr / 10))
    fresh.fit()
    fresh.close()
    rates = lambda run: [h["lr"] for h in json.loads(load_state(tmp_path / run / LAST)["history"]) if "lr" in h]  # noqa: E731
    assert rates("run")[:2] == pytest.approx([old_lr * lr_factor(k, first.cfg) for k in (1, 2)])
    assert rates("run")[2:] == pytest.approx(rates("fresh")[2:])


def test_resume_without_state_is_a_clear_error(tiny_cache, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(_cfg(tiny_cache, tmp_path / "none"), resume=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read training state"):
        Trainer(_cfg(tiny_cache, tmp_path / "bad"), resume=True)


@pytest.mark.slow
def test_export_loads_with_load_model_and_segments(tiny_cache, tmp_path):
    from SAMMed3DLib.checkpoint import load_model
    from SAMMed3DLib.session import Session

    trainer = Trainer(_cfg(tiny_cache, tmp_path / "run", max_steps=2))
    trainer.fit()
    card = trainer.export(tmp_path / "out" / "tiny.pth", eval_data=tiny_cache.parent / "src")
    trainer.close()
    assert set(card.metrics["dice"]) == set(card.metrics["nsd"]) == set(card.metrics["window_dice"]) == {"1", "3", "5", "10"}
    assert {(p["case"], p["structure"]) for p in card.metrics["per_structure"]} == {("case2", "ball"), ("case2", "slab")}
    assert card.training_data == ["case0", "case1"] and card.metrics["validation_cases"] == ["case2"]
    assert json.loads((tmp_path / "out" / "tiny.json").read_text(encoding="utf-8"))["source"] == "trained by training/ of this repository"
    model = load_model(tmp_path / "out" / "tiny.pth", device="cpu")
    assert model.card.config == trainer.cfg.model_config and model.card.spacing_mm == 1.5
    reference = load_state(tmp_path / "run" / LAST)["model"]
    assert _tensors_equal({k: v for k, v in model.state_dict().items()}, reference)
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 10, (30, 40, 50)).astype(np.float32))
    result = Session(model, image=image).click_index((25, 20, 15))
    assert result.mask_array.shape == (30, 40, 50) and result.mask_array.dtype == np.uint8


@pytest.mark.slow
def test_fine_tune_from_a_checkpoint_with_a_frozen_encoder(tiny_cache, tmp_path):
    from SAMMed3DLib.checkpoint import save_model

    torch.manual_seed(5)
    start = build_sam3d(TINY)
    save_model(start, tmp_path / "start.pth", card=ModelCard(name="start", config=TINY))
    trainer = Trainer(_cfg(tiny_cache, tmp_path / "ft", max_steps=2, init=str(tmp_path / "start.pth"), freeze_encoder=True))
    trainer.fit()
    trainer.close()
    after = load_state(tmp_path / "ft" / LAST)["model"]
    before = start.state_dict()
    enc = [k for k in before if k.startswith("image_encoder.")]
    dec = [k for k in before if k.startswith("mask_decoder.transformer.")]
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert not all(torch.equal(before[k], after[k]) for k in dec)


# -- DDP -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig.from_dict(cfg_dict))
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    trainer.close()


@pytest.mark.slow
def test_two_process_ddp_on_cpu_gives_identical_weights(tiny_cache, tmp_path):
    cfg = _cfg(tiny_cache, tmp_path / "run", max_steps=2, grad_accum=2, val_every=2)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _tensors_equal(w0, w1)
    torch.manual_seed(cfg.seed)
    init = build_sam3d(TINY).state_dict()
    assert not torch.equal(init["image_encoder.patch_embed.proj.weight"], w0["image_encoder.patch_embed.proj.weight"])
    state = load_state(tmp_path / "run" / LAST)  # written by rank 0 only, without a "module." prefix
    assert state["step"] == 2 and _tensors_equal(state["model"], w0)
    assert not any(k.startswith("module.") for k in state["model"])


# -- command line --------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_trains_resumes_and_exports(tiny_cache, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--cache", str(tiny_cache), "--out", str(run), "--model-config", json.dumps(TINY), "--val-cases", "case2",
              "--samples-per-epoch", "4", "--rounds", "2", "--mask-only-rounds", "0", "--progress", "false", "-q"]
    assert train_main([*common, "--max-steps", "1", "--cycle-steps", "2"]) == 0
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["rounds"] == 2
    assert train_main(["--out", str(run), "--resume", "--max-steps", "2", "--export", str(tmp_path / "m.pth"), "-q"]) == 0
    assert load_state(run / LAST)["step"] == 2 and (tmp_path / "m.pth").is_file() and (tmp_path / "m.json").is_file()
    assert "exported" in capsys.readouterr().out
    assert train_main(["--out", str(tmp_path / "other"), "--resume", "-q"]) == 2
    assert "--cache is required" in capsys.readouterr().err
    assert train_main(["--cache", str(tiny_cache), "--out", str(tmp_path / "x"), "--resume", "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err
