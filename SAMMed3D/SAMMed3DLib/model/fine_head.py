"""Optional refinement head: sharpens the decoder's 32³ logits on a 64³ grid with the image.

This is an extension of this project, not part of the official SAM-Med3D architecture (official
checkpoints never have it and are unchanged by it). The mask decoder predicts 32³ logits (6 mm
cells at 1.5 mm) from 8³ image tokens; a small model trained on few cases learns *what* the
clicked object is but follows its boundary poorly, and each further click adds little. The head
is a small 3D U-Net on the window's 64³ grid (3 mm) that sees what the tokens cannot:

* the window image itself (a learned 2× down-sampling of the 128³ input),
* the decoder's logits, trilinearly up-sampled to 64³,
* the clicks as two distance maps (positive, negative) on the 64³ grid.

It predicts a correction added to the up-sampled logits (its last convolution starts at zero, so
an untrained head returns the decoder's output unchanged). Only the displayed/pasted mask uses
the refined logits; the decoder keeps getting its own 32³ logits back as the dense prompt, as it
was trained.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import click_distance_maps

#: Configuration keys of the head (``config["fine_head"]``) and their defaults.
FINE_HEAD_DEFAULTS: dict[str, Any] = {"channels": [8, 16, 32], "click_reach": 8.0}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01, inplace=True))


class FineHead(nn.Module):
    """Three-level 3D U-Net on the 64³ grid (see the module docstring).

    Args:
        input_size: model input side (128); the head works at ``input_size // 2``.
        channels: widths of the 64³, 32³ and 16³ levels.
        click_reach: reach of the click maps in 64³ cells (8 = 24 mm at 1.5 mm).
    """

    def __init__(self, input_size: int = 128, channels: tuple[int, int, int] | list[int] = (8, 16, 32), click_reach: float = 8.0) -> None:
        super().__init__()
        c0, c1, c2 = (int(c) for c in channels)
        self.input_size = int(input_size)
        self.grid = self.input_size // 2
        # A buffer, so that the state dict alone describes the head (see ``infer_config``).
        self.register_buffer("click_reach", torch.tensor(float(click_reach)))
        self.stem = nn.Conv3d(1, c0, 2, stride=2)
        self.enc0 = nn.Sequential(_block(c0 + 4, c0), _block(c0, c0))
        self.down1 = nn.Conv3d(c0, c1, 2, stride=2)
        self.enc1 = nn.Sequential(_block(c1, c1), _block(c1, c1))
        self.down2 = nn.Conv3d(c1, c2, 2, stride=2)
        self.enc2 = nn.Sequential(_block(c2, c2), _block(c2, c2))
        self.up1 = nn.ConvTranspose3d(c2, c1, 2, stride=2)
        self.dec1 = _block(c1, c1)
        self.up0 = nn.ConvTranspose3d(c1, c0, 2, stride=2)
        self.dec0 = _block(c0, c0)
        self.out = nn.Conv3d(c0, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, logits: torch.Tensor, coords: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """Refined logits (B, 1, G, G, G), G = input_size / 2.

        Args:
            image: (B, 1, S, S, S) the normalised model input.
            logits: (B, 1, L, L, L) the decoder's low-res logits.
            coords: (B, N, 3) click voxel indices of the input, or None.
            labels: (B, N) 1 positive / 0 negative / −1 ignored, or None.
        """
        b = image.shape[0]
        up = F.interpolate(logits.float(), size=(self.grid,) * 3, mode="trilinear", align_corners=False)
        maps = click_distance_maps(coords, labels, (self.input_size,) * 3, (self.grid,) * 3, float(self.click_reach), b, image.device)
        x = torch.cat([self.stem(image.float()), torch.sigmoid(up), up.clamp(-20, 20) / 20, maps.to(up.dtype)], dim=1)
        e0 = self.enc0(x)
        e1 = self.enc1(self.down1(e0))
        e2 = self.enc2(self.down2(e1))
        d1 = self.dec1(self.up1(e2) + e1)
        d0 = self.dec0(self.up0(d1) + e0)
        return up + self.out(d0)
