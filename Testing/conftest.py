"""Shared pytest set-up: deterministic seeds, a small thread count, data-folder skip helper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Real labelled volumes, present for developers and CI but not in a user's clone.
SHARED_DATA = Path(os.environ.get("SAMMED3D_SHARED_DATA", ROOT.parent / "shared" / "data" / "train"))


@pytest.fixture(autouse=True)
def _torch_threads_and_seed():
    import torch

    # CI has 2 cores; oversubscribed OpenMP threads collapse (see the facts file), so use 2.
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data/train; skips the test when the folder is absent."""
    if not (SHARED_DATA / "manifest.json").is_file():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only developers and CI have it)")
    return SHARED_DATA
