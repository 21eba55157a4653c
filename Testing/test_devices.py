"""The one device resolver (SAMMed3DLib.devices): the trainer's DDP and no-MPS variants."""

from __future__ import annotations

import pytest
import torch

from SAMMed3DLib import devices
from SAMMed3DLib.devices import resolve_device
from SAMMed3DLib.errors import DeviceError


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has two CUDA devices, the current one being cuda:0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize(
    ("name", "cuda_index", "expected"),
    [("auto", None, "cuda:0"), ("auto", 1, "cuda:1"), ("cuda", 1, "cuda:1"), ("cuda:0", 1, "cuda:0"), ("cpu", 1, "cpu")],
)
def test_cuda_index_chooses_the_device_auto_and_cuda_mean(two_gpus, name, cuda_index, expected) -> None:
    assert resolve_device(name, cuda_index=cuda_index) == torch.device(expected)


def test_a_cuda_index_beyond_the_devices_is_refused(two_gpus) -> None:
    with pytest.raises(DeviceError, match=r"'cuda:5' does not exist: this machine has 2 CUDA device"):
        resolve_device("cuda", cuda_index=5)


def test_without_mps_auto_falls_back_to_the_cpu_and_mps_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("auto", allow_mps=False) == torch.device("cpu")
    with pytest.raises(DeviceError, match="'mps' .* is not supported here"):
        resolve_device("mps", allow_mps=False)
    with pytest.raises(DeviceError, match=r"use one of auto, cpu, cuda, cuda:N \("):
        resolve_device("tpu", allow_mps=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_the_trainer_reports_missing_cuda_through_the_resolver(tmp_path) -> None:
    from training.config import TrainConfig
    from training.trainer import Trainer

    with pytest.raises(DeviceError, match=r"'cuda' is not available.*--device cpu"):
        Trainer(TrainConfig(cache=str(tmp_path / "cache"), out=str(tmp_path / "run"), device="cuda"))


@pytest.mark.parametrize(
    ("name", "allow_mps", "known"),
    [("auto", False, True), (" CPU ", False, True), ("cuda", False, True), ("cuda:3", False, True), ("cuda:x", True, False),
     ("mps", True, True), ("mps", False, False), ("tpu", True, False)],
)
def test_is_device_name_checks_the_spelling_only(name, allow_mps, known) -> None:
    assert devices.is_device_name(name, allow_mps=allow_mps) is known
