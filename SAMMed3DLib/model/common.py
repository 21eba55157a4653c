"""Small building blocks shared by the encoder, prompt encoder, decoder and fine head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def click_distance_maps(
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    input_size: Sequence[int],
    grid: Sequence[int],
    reach: float,
    batch: int,
    device: torch.device,
) -> torch.Tensor:
    """(B, 2, *grid) positive/negative click maps ``max(0, 1 − d / reach)`` on a coarse lattice.

    ``d`` is the distance, in grid cells, from a cell centre to the nearest click of that label.
    Click ``c`` (voxel index of an input of ``input_size``, tensor axis order) sits at cell
    coordinate ``(c + 0.5) / s − 0.5`` with ``s = input_size / grid`` per axis, so it lands on
    the cell whose voxels hold it. Labels other than 0/1 (padding) are ignored; no clicks (None
    or N = 0) give zeros. Used by the prompt encoder's ``click_maps`` and by the fine head.
    """
    maps = torch.zeros((batch, 2, *grid), dtype=torch.float32, device=device)
    if coords is None or labels is None or coords.shape[1] == 0:
        return maps
    scale = torch.tensor([i / g for i, g in zip(input_size, grid)], dtype=torch.float32, device=device)
    cells = (coords.to(device=device, dtype=torch.float32) + 0.5) / scale - 0.5  # (B, N, 3)
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


class LayerNorm3d(nn.Module):
    """Channel-wise LayerNorm for (B, C, D, H, W) tensors, with biased variance.

    Matches the official ``LayerNorm3d`` (eps 1e-6, statistics over the channel axis only).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation in between (``lin1`` → act → ``lin2``)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (hypernetwork and IoU heads)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip([input_dim] + hidden, hidden + [output_dim])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x
