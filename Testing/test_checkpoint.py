"""Checkpoints: safe loading, accepted layouts, architecture inference, mismatch messages, atomic saves.

Every model here is a small real SAM-Med3D (well under a million parameters) built with
``build_sam3d``; files are real ``torch.save`` outputs written to ``tmp_path``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from SAMMed3DLib import build_sam3d, load_model, save_model
from SAMMed3DLib import checkpoint as ckpt_mod
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.checkpoint import read_checkpoint, resolve_device, verify_checkpoint
from SAMMed3DLib.errors import (
    CheckpointError,
    CheckpointMismatchError,
    DeviceError,
    ModelCardError,
    UnknownModelError,
    UnsafeCheckpointError,
)
from SAMMed3DLib.model import VIT_B_ORI, match_known_config, normalize_config

ROOT = Path(__file__).resolve().parents[1]


def small_config(
    depth: int = 2,
    window: int = 3,
    global_idx: tuple[int, ...] = (1,),
    img: int = 32,
    patch: int = 8,
    embed: int = 48,
    heads: int = 2,
    out: int = 48,
    mlp_ratio: float = 4.0,
    mask_in: int = 8,
    iou_depth: int = 3,
    iou_hidden: int = 256,
    multimask: int = 3,
) -> dict:
    grid = img // patch
    return {
        "image_encoder": {
            "img_size": img,
            "patch_size": patch,
            "embed_dim": embed,
            "depth": depth,
            "num_heads": heads,
            "mlp_ratio": mlp_ratio,
            "out_chans": out,
            "use_rel_pos": True,
            "window_size": window,
            "global_attn_indexes": list(global_idx),
        },
        "prompt_encoder": {"embed_dim": out, "image_embedding_size": grid, "input_image_size": img, "mask_in_chans": mask_in},
        "mask_decoder": {
            "transformer_dim": out,
            "iou_head_depth": iou_depth,
            "iou_head_hidden_dim": iou_hidden,
            "num_multimask_outputs": multimask,
        },
    }


SMALL = small_config()


def _outputs(model: torch.nn.Module, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image embedding, low-res logits and IoU for a fixed random input and two clicks."""
    gen = torch.Generator().manual_seed(seed)
    size = model.img_size
    image = torch.randn(1, 1, size, size, size, generator=gen)
    coords = torch.tensor([[[size / 2, size / 3, size / 4], [1.0, 2.0, 3.0]]])
    labels = torch.tensor([[1, 0]])
    prev = torch.randn(1, 1, *model.low_res_size, generator=gen)
    with torch.no_grad():
        emb = model.image_encoder(image)
        logits, iou = model.predict_low_res(emb, coords, labels, prev)
    return emb, logits, iou


def _official_container(model: torch.nn.Module) -> dict:
    """What the official train.py saves: one real AdamW step with its three parameter groups."""
    lr = 8e-4
    optimizer = torch.optim.AdamW(
        [
            {"params": model.image_encoder.parameters()},
            {"params": model.prompt_encoder.parameters(), "lr": lr * 0.1},
            {"params": model.mask_decoder.parameters(), "lr": lr * 0.1},
        ],
        lr=lr,
        betas=(0.9, 0.999),
        weight_decay=0.1,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [120, 180], 0.1)
    model.train()
    gen = torch.Generator().manual_seed(3)
    size = model.img_size
    emb = model.image_encoder(torch.randn(1, 1, size, size, size, generator=gen))
    logits, _ = model.predict_low_res(emb, torch.tensor([[[4.0, 5.0, 6.0]]]), torch.tensor([[1]]), None)
    logits.square().mean().backward()
    optimizer.step()
    scheduler.step()
    model.eval()
    args = argparse.Namespace(
        task_name="union_train", click_type="random", multi_click=False, model_type="vit_b_ori",
        checkpoint="./work_dir/SAM/sam_vit_b.pth", device="cuda", work_dir="./work_dir", num_workers=24,
        gpu_ids=[0, 1], multi_gpu=True, resume=False, lr_scheduler="multisteplr", step_size=[120, 180],
        gamma=0.1, num_epochs=200, img_size=128, batch_size=10, accumulation_steps=20, lr=lr,
        weight_decay=0.1, port=12361, rank=0,
    )  # fmt: skip
    return {
        "epoch": 1,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "lr_scheduler_state_dict": scheduler.state_dict(),
        "losses": [0.734],
        "dices": [0],
        "best_loss": float("inf"),
        "best_dice": 0.0,
        "args": args,
        "used_datas": ["data/train/adrenal/ct_WORD", "data/train/liver/ct_WORD"],
    }


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # These models are tiny: on the shared 2-core machine, 2 OpenMP threads wait on a busy core
    # (measured 2.3 s vs 9 ms per forward). Runs after conftest's 2-thread default.
    torch.set_num_threads(1)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(11)
    return build_sam3d(SMALL)


@pytest.fixture(params=["plain build", "meta build"])
def build_path(request, monkeypatch) -> str:
    """Run a test through both build strategies of load_model (small models normally skip meta)."""
    if request.param == "meta build":
        monkeypatch.setattr(ckpt_mod, "META_BUILD_MIN_ELEMENTS", 0)
    return request.param


# ---------------------------------------------------------------------------------------------
# Accepted layouts


def test_official_container_loads_and_gives_identical_outputs(tmp_path, model, build_path) -> None:
    container = _official_container(model)
    path = tmp_path / "sam_model_latest.pth"
    torch.save(container, path)
    expected = _outputs(model)

    torch.manual_seed(999)  # a different random pe matrix at build time must not leak through
    loaded = load_model(path, device="cpu")

    assert not loaded.training
    assert next(loaded.parameters()).device.type == "cpu"
    _assert_same_weights(model, loaded)
    assert torch.equal(
        loaded.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
    )
    for got, want in zip(_outputs(loaded), expected):
        assert torch.equal(got, want)
    assert loaded.config == normalize_config(SMALL)
    assert loaded.card.name == "sam_model_latest"
    assert loaded.card.normalization == "zscore_nonzero" and loaded.card.spacing_mm == 1.5
    assert all(p.requires_grad for p in loaded.parameters())

    info = read_checkpoint(path)
    assert info.layout == "official"
    assert info.extra["args"]["model_type"] == "vit_b_ori"  # the Namespace, as a plain dict
    assert info.extra["epoch"] == 1 and info.extra["used_datas"][1].endswith("liver/ct_WORD")
    assert info.extra["optimizer_state_dict"]["param_groups"][1]["lr"] == pytest.approx(8e-5)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="bare"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="bare DDP prefix"),
        pytest.param(lambda sd: {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, id="container DDP prefix"),
        pytest.param(lambda sd: {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}}, id="compiled, state_dict key"),
        pytest.param(lambda sd: {"model": sd, "step": 10}, id="model key"),
    ],
)
def test_other_layouts_load(tmp_path, model, wrap) -> None:
    path = tmp_path / "weights.pth"
    torch.save(wrap(model.state_dict()), path)
    loaded = load_model(str(path), device="cpu")
    _assert_same_weights(model, loaded)


def test_half_precision_file_loads_as_float32(tmp_path, model) -> None:
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded = load_model(path, device="cpu")
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, model.state_dict()[key].half().float()), key


@pytest.mark.slow
def test_loaded_weights_do_not_depend_on_the_file(tmp_path, model) -> None:
    """Files are memory-mapped while read; the model must own its weights (an in-place overwrite
    of a mapped file would otherwise kill the process with SIGBUS)."""
    path = tmp_path / "m.pth"
    torch.save(_official_container(model), path)
    expected = float(sum(p.double().sum() for p in model.state_dict().values()))
    script = textwrap.dedent(
        f"""
        import torch
        from SAMMed3DLib import checkpoint, load_model
        checkpoint.META_BUILD_MIN_ELEMENTS = 0  # the assign path, where tensors are taken as loaded
        model = load_model({str(path)!r}, device="cpu")
        open({str(path)!r}, "wb").close()  # truncate in place, as `cp other.pth m.pth` would
        print(float(sum(p.double().sum() for p in model.state_dict().values())))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert float(result.stdout.strip()) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Architecture inference


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(small_config(), id="depth2-window3-global1"),
        pytest.param(small_config(depth=3, window=6, global_idx=(0, 2), mask_in=4, iou_depth=2, iou_hidden=32), id="padded-window6"),
        pytest.param(small_config(depth=4, window=2, global_idx=(1, 3), img=48, patch=16, embed=36, heads=3, mlp_ratio=2.0), id="depth4-window2-grid3"),
        pytest.param(small_config(depth=2, window=3, global_idx=(0,), out=96, multimask=2), id="out96-multimask2"),
    ],
)
def test_infer_config_round_trip(tmp_path, config) -> None:
    torch.manual_seed(5)
    original = build_sam3d(config)
    path = tmp_path / "model.pth"
    torch.save({"model_state_dict": original.state_dict()}, path)

    loaded = load_model(path, device="cpu")

    assert loaded.config == normalize_config(config)
    assert match_known_config(loaded.config) is None
    for got, want in zip(_outputs(loaded), _outputs(original)):
        assert torch.equal(got, want)


def test_explicit_config_and_card_arguments(tmp_path, model) -> None:
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    card = ModelCard(name="mine", config=SMALL, spacing_mm=2.0, license="CC-BY-4.0")

    assert load_model(path, device="cpu", config=SMALL).config == normalize_config(SMALL)
    with_card = load_model(path, device="cpu", card=card)
    assert with_card.card == card
    with pytest.raises(ModelCardError, match="different architecture"):
        load_model(path, device="cpu", config=SMALL, card=ModelCard(name="other", config=small_config(depth=3, global_idx=(2,))))


# ---------------------------------------------------------------------------------------------
# Mismatches


def test_mismatch_names_keys_shapes_and_counts(tmp_path, model) -> None:
    path = tmp_path / "small.pth"
    torch.save({"model_state_dict": model.state_dict()}, path)
    other = small_config(depth=3, window=3, global_idx=(1,), embed=64)

    with pytest.raises(CheckpointMismatchError) as info:
        load_model(path, device="cpu", config=other)

    message = str(info.value)
    assert str(path) in message and "the config= argument" in message
    assert "missing key(s): image_encoder.blocks.2." in message  # the file has 2 blocks, the model 3
    assert "15 missing key(s)" in message and "(15 in all)" in message
    assert "34 shape mismatch(es): image_encoder.blocks.0.attn.proj.bias: file (48,) vs model (64,)" in message
    assert "The file matches no known architecture" in message and "depth 2" in message and "global blocks [1]" in message


def test_mismatch_names_the_known_architecture_the_file_matches(tmp_path) -> None:
    # Shapes of the released vit_b_ori checkpoints, at the storage cost of one float per tensor.
    with torch.device("meta"):
        reference = build_sam3d("vit_b_ori")
    expanded = {k: torch.zeros(1).expand(v.shape) for k, v in reference.state_dict().items()}
    path = tmp_path / "turbo_shaped.pth"
    torch.save({"model_state_dict": expanded, "epoch": 200}, path)
    assert path.stat().st_size < 1_000_000

    with pytest.raises(CheckpointMismatchError, match=r"unexpected key\(s\): image_encoder\.blocks\.10\.") as info:
        load_model(path, device="cpu", config=SMALL)
    message = str(info.value)
    assert "The file itself matches the known architecture 'vit_b_ori'" in message
    assert "embed_dim 768, depth 12" in message and "global blocks [2, 5, 8, 11]" in message
    assert "without config=" in message

    assert verify_checkpoint(path, "vit_b_ori") == normalize_config(VIT_B_ORI)
    assert verify_checkpoint(path) == normalize_config(VIT_B_ORI)
    with pytest.raises(CheckpointMismatchError, match="expected architecture"):
        verify_checkpoint(path, SMALL)


def test_unexpected_extra_key_is_named(tmp_path, model) -> None:
    state = dict(model.state_dict())
    state["pixel_mean"] = torch.zeros(3, 1, 1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected key\(s\): pixel_mean"):
        load_model(path, device="cpu")


def test_not_a_sam_checkpoint(tmp_path) -> None:
    path = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"does not hold SAM-Med3D weights.*Its first keys: bias, weight"):
        load_model(path, device="cpu")


# ---------------------------------------------------------------------------------------------
# Unsafe files


class _SystemCall:
    """Unpickling this runs ``os.system(command)``: the classic malicious checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Exec:
    """Unpickling this runs ``exec(source)``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (exec, (self.source,))


def _write_torch(path: Path, payload: object) -> None:
    torch.save(payload, path)


def _write_raw_pickle(path: Path, payload: dict) -> None:
    """A plain pickle (no torch container), as a hand-made attack file would be."""
    with open(path, "wb") as handle:
        pickle.dump({"model_state_dict": {}, **{k: v for k, v in payload.items() if k != "model_state_dict"}}, handle, protocol=2)


@pytest.mark.parametrize("write", [_write_torch, _write_raw_pickle], ids=["torch.save zip", "raw pickle"])
@pytest.mark.parametrize(
    "attack, refused",
    [
        (lambda marker: _SystemCall(f"touch {marker}"), r"(posix|nt)\.system"),
        (lambda marker: _Exec(f"open({str(marker)!r}, 'w').close()"), r"(builtins\.)?exec"),
    ],
    ids=["os.system", "exec"],
)
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, model, write, attack, refused) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    write(path, {"model_state_dict": model.state_dict(), "args": attack(marker)})

    # The payload is real: a plain unpickler runs it (this is what weights_only=False would do).
    if write is _write_raw_pickle:
        with open(path, "rb") as handle:
            pickle.load(handle)  # noqa: S301 (deliberate, on our own crafted file)
        assert marker.exists()
        marker.unlink()

    with pytest.raises(UnsafeCheckpointError, match=rf"refused to load .*evil\.pth.*{refused}.*it was not loaded"):
        load_model(path, device="cpu")
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


def test_numpy_objects_are_refused_too(tmp_path, model) -> None:
    path = tmp_path / "numpy_inside.pth"
    torch.save({"model_state_dict": model.state_dict(), "best_dice": np.float64(0.8)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"numpy"):
        load_model(path, device="cpu")


# ---------------------------------------------------------------------------------------------
# Damaged files


def _good_bytes(model: torch.nn.Module, tmp_path: Path) -> bytes:
    path = tmp_path / "good.pth"
    torch.save({"model_state_dict": model.state_dict()}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda good: b"", r"empty \(0 bytes\)"),
        (lambda good: b"these are not the weights you are looking for\n", r"download or copy it again"),
        (lambda good: good[: len(good) // 2], r"download or copy it again"),
        (lambda good: good[:-30], r"download or copy it again"),
        (lambda good: b"PK\x03\x04" + bytes(range(256)) * 8, r"download or copy it again"),
        (lambda good: good[:1000] + bytes(len(good) - 1000), r"download or copy it again"),
    ],
    ids=["empty", "text", "zip cut in half", "zip tail cut", "random bytes", "zeroed body"],
)
def test_damaged_files_raise_checkpoint_error(tmp_path, model, make, match) -> None:
    path = tmp_path / "damaged.pth"
    path.write_bytes(make(_good_bytes(model, tmp_path)))
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path, device="cpu")
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"epoch": 3, "losses": [0.5]}, r"holds no model weights.*found keys epoch, losses"),
        ([1, 2, 3], r"holds a list, not a dict of weights"),
        ({"model_state_dict": {"a": 1.0}}, r"not named tensors: 'a' \(float\)"),
        ({"format": "sammed3d", "format_version": 99, "model_state_dict": {}}, r"newer sammed3d.*update sammed3d"),
    ],
    ids=["no weights", "list", "non-tensor entry", "newer format"],
)
def test_files_without_usable_weights(tmp_path, payload, match) -> None:
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_missing_path_and_folder(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_model(tmp_path / "nope.pth", device="cpu")
    with pytest.raises(CheckpointError, match=r"is not a file"):
        load_model(tmp_path, device="cpu")


# ---------------------------------------------------------------------------------------------
# Our format


def test_save_load_round_trip_preserves_weights_card_and_extra(tmp_path, model, build_path) -> None:
    card = ModelCard(
        name="tiny",
        config=SMALL,
        spacing_mm=1.5,
        intensity_clip=(-1000, 1000),
        training_data=["shared/data/train"],
        metrics={"dice": {"1": 0.61, "5": 0.74}},
        license="Apache-2.0",
        extra={"steps": 12},
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    path = save_model(model, tmp_path / "tiny.pth", card=card, extra={"epoch": 4, "optimizer_state_dict": optimizer.state_dict()})

    raw = torch.load(path, map_location="cpu", weights_only=True)  # no allow-list needed
    assert raw["format"] == "sammed3d" and raw["format_version"] == 1
    assert raw["model_card"] == card.to_dict() and raw["epoch"] == 4
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == card.to_dict()

    loaded = load_model(path, device="cpu")
    _assert_same_weights(model, loaded)
    assert loaded.card == card
    assert read_checkpoint(path).extra["optimizer_state_dict"]["param_groups"][0]["lr"] == 1e-4

    again = save_model(loaded, tmp_path / "again.pth", card_json=False)  # card taken from model.card
    assert load_model(again, device="cpu").card == card
    assert not (tmp_path / "again.json").exists()


def test_save_without_card_writes_a_minimal_one(tmp_path, model) -> None:
    path = save_model(model, tmp_path / "plain.pth")
    loaded = load_model(path, device="cpu")
    assert loaded.card.name == "plain" and loaded.card.config == normalize_config(SMALL)


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"best": np.float64(0.5)}, r"extra\['best'\].*numpy.*\.item\(\)"),
        ({"args": argparse.Namespace(lr=1.0)}, r"extra\['args'\].*vars\(args\)"),
        ({"format": "mine"}, r"reserved key\(s\) \['format'\]"),
        ({"history": [{"dice": object()}]}, r"extra\['history'\]\[0\]\['dice'\]"),
    ],
    ids=["numpy scalar", "namespace", "reserved key", "nested object"],
)
def test_save_refuses_values_that_would_not_load_safely(tmp_path, model, extra, match) -> None:
    with pytest.raises(CheckpointError, match=match):
        save_model(model, tmp_path / "x.pth", extra=extra)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_a_card_for_another_architecture(tmp_path, model) -> None:
    card = ModelCard(name="wrong", config=small_config(depth=3, global_idx=(2,)))
    with pytest.raises(ModelCardError, match="different architecture"):
        save_model(model, tmp_path / "x.pth", card=card)


def test_save_into_missing_folder_fails_cleanly(tmp_path, model) -> None:
    target = tmp_path / "no" / "such" / "folder" / "m.pth"
    with pytest.raises(CheckpointError, match=r"folder .* does not exist; create it first"):
        save_model(model, target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_save_keeps_the_previous_file(tmp_path, model) -> None:
    """A write that fails midway (file-size limit, like a full disk) leaves the old file intact."""
    path = tmp_path / "model.pth"
    save_model(model, path)
    before = path.read_bytes(), path.with_suffix(".json").read_text(encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        from SAMMed3DLib import build_sam3d, save_model
        from SAMMed3DLib.errors import CheckpointError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # make oversized writes fail with EFBIG instead of killing us
        torch.manual_seed(123)
        model = build_sam3d({SMALL!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            save_model(model, {str(path)!r})
        except CheckpointError as exc:
            print("REFUSED:", exc)
            sys.exit(0)
        sys.exit(1)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "could not write" in result.stdout and "previous file there is unchanged" in result.stdout
    assert (path.read_bytes(), path.with_suffix(".json").read_text(encoding="utf-8")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pth"]  # no temporary left
    _assert_same_weights(model, load_model(path, device="cpu"))


# ---------------------------------------------------------------------------------------------
# safetensors (optional dependency)


def test_safetensors_needs_the_package(tmp_path) -> None:
    try:
        import safetensors  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("safetensors is installed; the next test covers loading")
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(CheckpointError, match=r"pip install safetensors"):
        load_model(path, device="cpu")


def test_safetensors_round_trip(tmp_path, model) -> None:
    storage = pytest.importorskip("safetensors.torch")
    card = ModelCard(name="st", config=SMALL)
    path = tmp_path / "model.safetensors"
    storage.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"model_card": card.to_json()})
    loaded = load_model(path, device="cpu")
    _assert_same_weights(model, loaded)
    assert loaded.card == card


# ---------------------------------------------------------------------------------------------
# Registry names and devices


def test_registry_name_not_downloaded_says_what_to_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAMMED3D_CACHE_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"not downloaded yet.*run `sammed3d models download sam_med3d_turbo`"):
        load_model("sam_med3d_turbo", device="cpu")


def test_registry_name_loads_the_cached_file(tmp_path, monkeypatch, model) -> None:
    monkeypatch.setenv("SAMMED3D_CACHE_DIR", str(tmp_path))
    torch.save(_official_container(model), tmp_path / "sam_med3d_turbo.pth")
    loaded = load_model("sam_med3d_turbo", device="cpu")
    assert loaded.card.name == "sam_med3d_turbo" and loaded.card.license == "Apache-2.0"
    _assert_same_weights(model, loaded)


def test_default_model_is_shipped_or_reported_missing() -> None:
    shipped = ROOT / "SAMMed3DLib" / "Resources" / "Models" / "default.pth"
    if shipped.exists():
        loaded = load_model("default", device="cpu")
        assert loaded.card.name and not loaded.training
    else:
        with pytest.raises(CheckpointError, match=r"not shipped with this version yet"):
            load_model("default", device="cpu")


def test_unknown_name_suggests_the_closest(tmp_path) -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'sam_med3d_trubo'.*Did you mean 'sam_med3d_turbo'"):
        load_model("sam_med3d_trubo", device="cpu")


@pytest.mark.parametrize(
    "name, expected",
    [("cpu", "cpu"), (" CPU ", "cpu"), (torch.device("cpu"), "cpu")],
)
def test_resolve_device_accepts(name, expected) -> None:
    assert resolve_device(name) == torch.device(expected)


def test_resolve_device_auto_prefers_cuda() -> None:
    want = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == want


@pytest.mark.parametrize(
    "name, match",
    [
        ("gpu", r"unknown device 'gpu'; use one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:x", r"unknown device"),
        ("cuda:99", r"not available|does not exist"),
    ],
)
def test_resolve_device_refuses(name, match) -> None:
    with pytest.raises(DeviceError, match=match):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_reported_before_reading_the_file(tmp_path) -> None:
    with pytest.raises(DeviceError, match=r"'cuda' is not available.*available: cpu.*--device cpu"):
        load_model(tmp_path / "does_not_matter.pth", device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_onto_cuda_gives_the_cpu_outputs(tmp_path, model) -> None:
    path = save_model(model, tmp_path / "m.pth")
    loaded = load_model(path, device="cuda")
    assert next(loaded.parameters()).device.type == "cuda"
    _assert_same_weights(model, loaded.cpu())
