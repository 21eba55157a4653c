"""Many clicks in one session: click maps without an N × grid tensor.

The 1,000-click memory and time figures are in ``benchmarks/many_clicks.py``; these tests stay
small and check the properties that keep those figures flat.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from SAMMed3DLib.model import click_maps
from SAMMed3DLib.model.click_maps import ClickMapCache, click_distance_maps, reuse_click_maps

CPU = torch.device("cpu")


def dense_click_maps(coords, labels, input_size, grid, reach, batch, device):  # noqa: ANN001
    """The former implementation: one (N, *grid) squared-distance tensor per label and item."""
    maps = torch.zeros((batch, 2, *grid), dtype=torch.float32, device=device)
    if coords is None or labels is None or coords.shape[1] == 0:
        return maps
    scale = torch.tensor([i / g for i, g in zip(input_size, grid)], dtype=torch.float32, device=device)
    cells = (coords.to(device=device, dtype=torch.float32) + 0.5) / scale - 0.5
    axes = [torch.arange(g, dtype=torch.float32, device=device) for g in grid]
    for channel, label in ((0, 1), (1, 0)):
        for b in range(batch):
            pts = cells[b][labels[b].to(device) == label]
            if not len(pts):
                continue
            d2 = (
                (axes[0][None, :, None, None] - pts[:, 0, None, None, None]) ** 2
                + (axes[1][None, None, :, None] - pts[:, 1, None, None, None]) ** 2
                + (axes[2][None, None, None, :] - pts[:, 2, None, None, None]) ** 2
            )
            maps[b, channel] = (1.0 - d2.amin(dim=0).sqrt() / reach).clamp_min(0.0)
    return maps


# -- click maps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_size", "grid", "reach"),
    [
        ((128,) * 3, (64,) * 3, 8.0),  # the default model's fine head (boxes of 18³ cells)
        ((128,) * 3, (32,) * 3, 16.0),  # its prompt encoder (the reach covers the grid)
        ((32,) * 3, (16,) * 3, 5.0),
        ((40, 30, 20), (20, 15, 10), 3.3),  # anisotropic grid, a reach that is no integer
    ],
    ids=["fine_head", "prompt_encoder", "tiny", "anisotropic"],
)
@pytest.mark.parametrize("clicks", [1, 7, 90])
@pytest.mark.parametrize("chunk_cells", [click_maps.CLICK_MAP_CHUNK_CELLS, 5000])
def test_click_maps_equal_the_dense_evaluation_bit_for_bit(monkeypatch, input_size, grid, reach, clicks, chunk_cells) -> None:
    monkeypatch.setattr(click_maps, "CLICK_MAP_CHUNK_CELLS", chunk_cells)  # 5000: several chunks, padded ones
    generator = torch.Generator().manual_seed(clicks)
    # clicks also a little outside the input (as a caller may pass) and repeated ones
    coords = torch.rand(2, clicks, 3, generator=generator) * (torch.tensor(input_size, dtype=torch.float32) + 6) - 3
    coords[:, clicks // 2 :] = coords[:, : clicks - clicks // 2]
    labels = torch.randint(-1, 2, (2, clicks), generator=generator)
    new = click_distance_maps(coords, labels, input_size, grid, reach, 2, CPU)
    old = dense_click_maps(coords, labels, input_size, grid, reach, 2, CPU)
    assert torch.equal(new, old)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (bytes) any torch operation produces while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return out


@pytest.mark.parametrize(("grid", "reach"), [((64,) * 3, 8.0), ((32,) * 3, 16.0)], ids=["fine_head", "prompt_encoder"])
@pytest.mark.parametrize("clicks", [1, 300])
def test_click_map_memory_does_not_grow_with_the_clicks(grid, reach, clicks) -> None:
    coords = torch.rand(1, clicks, 3, generator=torch.Generator().manual_seed(0)) * 127
    labels = (torch.arange(clicks) % 2)[None]
    with _LargestTensor() as probe:
        click_distance_maps(coords, labels, (128,) * 3, grid, reach, 1, CPU)
    # int64 scatter indices of one chunk, or the (1, 2, *grid) float32 maps themselves
    bound = max(8 * click_maps.CLICK_MAP_CHUNK_CELLS, 2 * 4 * int(np.prod(grid)))
    assert probe.largest <= bound
    if clicks > 1:
        with _LargestTensor() as dense:
            dense_click_maps(coords, labels, (128,) * 3, grid, reach, 1, CPU)
        assert dense.largest == 4 * (clicks // 2) * int(np.prod(grid)) > bound  # what the dense version built


def test_cached_click_maps_follow_any_click_sequence_exactly() -> None:
    """Each click extends the cache; a shorter or different sequence recomputes; all exact."""
    generator = torch.Generator().manual_seed(1)
    coords = torch.rand(1, 40, 3, generator=generator) * 127
    labels = torch.randint(0, 2, (1, 40), generator=generator)
    cache = ClickMapCache()
    steps = [slice(0, n) for n in (1, 2, 3, 10, 11, 40, 40)] + [slice(0, 12), slice(5, 30)]  # then an undo, other clicks
    for index in steps:
        for grid, reach in (((64,) * 3, 8.0), ((32,) * 3, 16.0)):
            args = (coords[:, index], labels[:, index], (128,) * 3, grid, reach, 1, CPU)
            with reuse_click_maps(cache):
                cached = click_distance_maps(*args)
            assert torch.equal(cached, dense_click_maps(*args))
    assert len(cache) == 4  # two labels on two grids


def test_cached_click_maps_evaluate_only_the_new_click() -> None:
    coords = torch.rand(1, 301, 3, generator=torch.Generator().manual_seed(2)) * 127
    labels = torch.ones(1, 301, dtype=torch.int64)
    cache = ClickMapCache()
    with reuse_click_maps(cache):
        click_distance_maps(coords[:, :300], labels[:, :300], (128,) * 3, (64,) * 3, 8.0, 1, CPU)
        with _LargestTensor() as probe:
            click_distance_maps(coords, labels, (128,) * 3, (64,) * 3, 8.0, 1, CPU)
    with _LargestTensor() as full:
        click_distance_maps(coords, labels, (128,) * 3, (64,) * 3, 8.0, 1, CPU)
    assert probe.largest <= 64**3 * 8 < full.largest  # one click's box and the grid, not 301 boxes
