"""Optional refinement head: sharpens the decoder's 32³ logits on a 64³ grid with the image.

This is an extension of this project, not part of the official SAM-Med3D architecture (official
checkpoints never have it and are unchanged by it). The mask decoder predicts 32³ logits (6 mm
cells at 1.5 mm) from 8³ image tokens; a small model trained on few cases learns *what* the
clicked object is but follows its boundary poorly, and each further click adds little. The head
is a small 3D U-Net on the window's 64³ grid (3 mm) that sees what the tokens cannot:

* the window image itself (a learned 2× down-sampling of the 128³ input),
* the decoder's logits, trilinearly up-sampled to 64³,
* the clicks as two distance maps (positive, negative) on the 64³ grid,
* optionally (``geodesic_reach > 0``) the clicks as two *geodesic* distance maps on the pooled
  image (:mod:`.geodesic`): they follow the anatomy from each click and stop at edges, the cue
  that lets a click spread through a homogeneous structure whatever the structure is.

It predicts a correction added to the up-sampled logits (its last convolution starts at zero, so
an untrained head returns the decoder's output unchanged). Only the displayed/pasted mask uses
the refined logits; the decoder keeps getting its own 32³ logits back as the dense prompt, as it
was trained.

On the CPU at inference its convolutions run on oneDNN (:mod:`.fast_layers`), and inside a
session's window (:func:`.click_maps.reuse_click_maps`) what depends on the window image alone
and the geodesic distances of unchanged clicks are reused: a follow-up click of the default model
costs about half of what it did (``benchmarks/README.md``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .click_maps import active_click_map_cache, click_distance_maps
from .fast_layers import Conv3d, ConvTranspose3d, InstanceNorm3d, fast_path_usable
from .geodesic import geodesic_distance

#: Configuration keys of the head (``config["fine_head"]``) and their defaults. The defaults
#: describe a head without geodesic inputs, so that configs written before those existed keep
#: their meaning; :data:`NEW_FINE_HEAD` is what a new head gets.
FINE_HEAD_DEFAULTS: dict[str, Any] = {"channels": [8, 16, 32], "click_reach": 8.0, "geodesic_reach": 0.0, "geodesic_weight": 20.0}

#: A new head (``python -m training --fine-head``, the default training config): geodesic click
#: maps on, with an intensity weight of 20 cells per normalised unit and a reach of 16 cells.
NEW_FINE_HEAD: dict[str, Any] = {**FINE_HEAD_DEFAULTS, "geodesic_reach": 16.0}

#: Passes of the geodesic scans (see :func:`.geodesic.geodesic_distance`).
GEODESIC_SWEEPS = 2


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(Conv3d(cin, cout, 3, padding=1), InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01, inplace=True))


class FineHead(nn.Module):
    """Three-level 3D U-Net on the 64³ grid (see the module docstring).

    Args:
        input_size: model input side (128); the head works at ``input_size // 2``.
        channels: widths of the 64³, 32³ and 16³ levels.
        click_reach: reach of the click maps in 64³ cells (8 = 24 mm at 1.5 mm).
        geodesic_reach: scale of the geodesic click maps ``exp(−d / reach)`` in 64³ cells;
            0 = no geodesic inputs.
        geodesic_weight: cost of a unit step of the normalised image, in cells.
    """

    def __init__(
        self,
        input_size: int = 128,
        channels: tuple[int, int, int] | list[int] = (8, 16, 32),
        click_reach: float = 8.0,
        geodesic_reach: float = 0.0,
        geodesic_weight: float = 20.0,
    ) -> None:
        super().__init__()
        c0, c1, c2 = (int(c) for c in channels)
        self.input_size = int(input_size)
        self.grid = self.input_size // 2
        # Buffers, so that the state dict alone describes the head (see ``infer_config``).
        self.register_buffer("click_reach", torch.tensor(float(click_reach)))
        self.geodesic = float(geodesic_reach) > 0
        if self.geodesic:
            self.register_buffer("geodesic_reach", torch.tensor(float(geodesic_reach)))
            self.register_buffer("geodesic_weight", torch.tensor(float(geodesic_weight)))
        self.stem = Conv3d(1, c0, 2, stride=2)
        self.enc0 = nn.Sequential(_block(c0 + 4 + 2 * self.geodesic, c0), _block(c0, c0))
        self.down1 = Conv3d(c0, c1, 2, stride=2)
        self.enc1 = nn.Sequential(_block(c1, c1), _block(c1, c1))
        self.down2 = Conv3d(c1, c2, 2, stride=2)
        self.enc2 = nn.Sequential(_block(c2, c2), _block(c2, c2))
        self.up1 = ConvTranspose3d(c2, c1, 2, stride=2)
        self.dec1 = _block(c1, c1)
        self.up0 = ConvTranspose3d(c1, c0, 2, stride=2)
        self.dec0 = _block(c0, c0)
        self.out = Conv3d(c0, 1, 1)
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
        prompts = [torch.sigmoid(up), up.clamp(-20, 20) / 20, maps.to(up.dtype)]
        if self.geodesic:
            prompts.append(self.geodesic_maps(image, coords, labels).to(up.dtype))
        first = self.enc0[0][0]
        if fast_path_usable(up, first.weight):
            # CPU inference: the first convolution's share of the image features depends on the
            # window alone and is kept across its clicks; only the prompt channels are convolved.
            x = self._image_features(image)[0] + first.forward_channels(torch.cat(prompts, dim=1), self.stem.out_channels, False)
            conv_norm_act = self.enc0[0]
            e0 = self.enc0[1](conv_norm_act[2](conv_norm_act[1](x)))  # the first block's norm and activation, the second block
        else:
            e0 = self.enc0(torch.cat([self.stem(image.float()), *prompts], dim=1))
        e1 = self.enc1(self.down1(e0))
        e2 = self.enc2(self.down2(e1))
        d1 = self.dec1(self.up1(e2) + e1)
        d0 = self.dec0(self.up0(d1) + e0)
        return up + self.out(d0)

    def _image_features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the head derives from the window image alone: the first convolution's share of the
        stem's features (with its bias), and the 2×-average-pooled image the geodesic distances
        run on. Inside :func:`.click_maps.reuse_click_maps` (a session's window) both are
        computed once per window image.
        """

        def compute(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            term = self.enc0[0][0].forward_channels(self.stem(img.float()), 0, True)
            return term, F.avg_pool3d(img.detach().float(), 2)

        cache = active_click_map_cache()
        return compute(image) if cache is None else cache.image_feature((id(self), "image"), image, compute)

    @torch.no_grad()
    def geodesic_maps(self, image: torch.Tensor, coords: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """(B, 2, G, G, G) positive/negative maps ``exp(−d / geodesic_reach)`` (0 without clicks).

        ``d`` is the geodesic distance (:mod:`.geodesic`) on the 2×-average-pooled window image
        from the 64³ cells holding the clicks of each polarity. No gradient flows through it.
        Inside :func:`.click_maps.reuse_click_maps` the distances are reused and extended
        (bit-identical, see :class:`.geodesic.GeodesicCache`).
        """
        b = image.shape[0]
        seeds = torch.zeros((b, 2, self.grid, self.grid, self.grid), dtype=torch.bool, device=image.device)
        if coords is not None and labels is not None and coords.numel():
            cells = (coords.detach().float() * (self.grid / self.input_size)).floor().long().clamp(0, self.grid - 1)
            for channel, value in ((0, 1), (1, 0)):
                bi, ni = torch.nonzero(labels == value, as_tuple=True)
                if bi.numel():
                    c = cells[bi, ni]
                    seeds[bi, channel, c[:, 0], c[:, 1], c[:, 2]] = True
        cache = active_click_map_cache()
        if cache is not None and fast_path_usable(image.float(), self.stem.weight):
            pooled = self._image_features(image)[1]  # kept with the window's other image features
        else:
            pooled = F.avg_pool3d(image.detach().float(), 2)
        if cache is not None:  # a session's window: only a new click's polarity is swept, from it alone
            dist = cache.geodesic.distance(pooled, seeds, float(self.geodesic_weight), GEODESIC_SWEEPS)
        else:
            dist = geodesic_distance(pooled, seeds, float(self.geodesic_weight), GEODESIC_SWEEPS)
        return torch.exp(-dist / float(self.geodesic_reach))


def add_geodesic_inputs(head: FineHead, geodesic_reach: float = NEW_FINE_HEAD["geodesic_reach"], geodesic_weight: float = NEW_FINE_HEAD["geodesic_weight"]) -> FineHead:
    """A copy of ``head`` with geodesic click maps as two more inputs, initially ignored.

    Every weight is copied; the first convolution gets zero weights for the two new input
    channels, so the new head returns exactly what ``head`` returned until it is trained.
    """
    if head.geodesic:
        raise ValueError("this fine head already has geodesic inputs")
    channels = [head.stem.out_channels, head.down1.out_channels, head.down2.out_channels]
    new = FineHead(head.input_size, channels, float(head.click_reach), geodesic_reach, geodesic_weight)
    state = head.state_dict()
    key = "enc0.0.0.weight"
    old = state[key]
    state[key] = torch.cat([old, old.new_zeros((old.shape[0], 2, *old.shape[2:]))], dim=1)
    state["geodesic_reach"] = new.geodesic_reach.clone()
    state["geodesic_weight"] = new.geodesic_weight.clone()
    new.load_state_dict(state)
    return new.to(old.device)
