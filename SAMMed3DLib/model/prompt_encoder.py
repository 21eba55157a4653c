"""3D prompt encoder of SAM-Med3D (points and a low-resolution mask), official state-dict layout.

Point coordinates are voxel indices of the model's input window, component k indexing spatial
tensor axis k of the (B, 1, D, H, W) image (see ``../shared/spec/SAM_MED3D_FACTS.md`` §4).

Quirk kept on purpose: the dense positional encoding (:meth:`PromptEncoder3D.get_dense_pe`)
puts grid axis **1** in coordinate component 0 and grid axis **0** in component 1, whereas the
sparse (point) encoding uses component k for axis k. The released weights were trained with this
mismatch, so a point at embedding cell (a, b, c) encodes like dense cell (b, a, c).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PromptError
from .click_maps import click_distance_maps
from .common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random-Fourier positional encoding; output blocks are [sin, cos, sin] (official layout)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        # Persistent: drawn at random on construction, so it must come from the checkpoint.
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((3, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode (..., 3) coordinates normalised to [0, 1] into (..., 3·num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        sin = torch.sin(coords)
        return torch.cat([sin, torch.cos(coords), sin], dim=-1)

    def forward(self, size: tuple[int, int, int]) -> torch.Tensor:
        """Dense encoding of a grid of ``size`` cells → (C, X, Y, Z), with the axis-0/1 quirk."""
        sx, sy, sz = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((sx, sy, sz), device=device, dtype=torch.float32)
        along0 = (grid.cumsum(dim=0) - 0.5) / sy  # official names this "y" and divides by size[1]
        along1 = (grid.cumsum(dim=1) - 0.5) / sx  # ... and this "x", divided by size[0]
        along2 = (grid.cumsum(dim=2) - 0.5) / sz
        pe = self._pe_encoding(torch.stack([along1, along0, along2], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:
        """Encode (B, N, 3) voxel coordinates of an ``image_size`` volume → (B, N, C)."""
        scale = torch.tensor(image_size, dtype=torch.float32, device=coords_input.device)
        return self._pe_encoding(coords_input.to(torch.float32) / scale)


class PromptEncoder3D(nn.Module):
    """Encodes point and mask prompts for the mask decoder.

    Args:
        embed_dim: prompt embedding width (must be divisible by 3).
        image_embedding_size: (X, Y, Z) cells of the image embedding (8³ for ``vit_b_ori``).
        input_image_size: (X, Y, Z) voxels of the model input (128³).
        mask_in_chans: hidden channels of the mask-downscaling convolutions.
        click_maps: this project's extension, off in the official architecture (whose state
            dicts are unchanged by it). When on, the clicks also enter the dense prompt: two maps
            on the low-resolution grid, one for positive and one for negative clicks, each
            ``max(0, 1 − d / CLICK_MAP_REACH)`` with d the distance (in low-res cells) to the
            nearest click of that label, are stacked with the previous low-res logits (zeros when
            there are none) and go through ``mask_downscaling`` (3 input channels instead of 1)
            into the image embedding. Every image token then knows how far it is from the clicks,
            which a small model trained from scratch learns to use far faster than matching the
            sparse point tokens' Fourier features (the shipped default model uses it). The inputs
            and outputs of the model are the same, so every inference path works unchanged.
    """

    #: Reach of a click map in low-resolution cells (16 cells = half the 32³ grid, 96 mm at 1.5 mm).
    CLICK_MAP_REACH: float = 16.0

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int, int],
        input_image_size: tuple[int, int, int],
        mask_in_chans: int,
        click_maps: bool = False,
    ) -> None:
        super().__init__()
        self.click_maps = bool(click_maps)
        if embed_dim % 3:
            raise ValueError(f"prompt embed_dim must be divisible by 3 (sin/cos/sin blocks), got {embed_dim}")
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(int(s) for s in image_embedding_size)
        self.input_image_size = tuple(int(s) for s in input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))  # negative, positive
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in self.image_embedding_size)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(3 if self.click_maps else 1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, embed_dim, X, Y, Z)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) voxel coords + (B, N) labels → (B, N + 1, C), with the padding point."""
        b = points.shape[0]
        points = points.to(torch.float32) + 0.5  # centre of the voxel
        points = torch.cat([points, points.new_zeros(b, 1, 3)], dim=1)
        labels = torch.cat([labels.to(points.device), labels.new_full((b, 1), -1)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        out = torch.where(lab == -1, torch.zeros_like(pe) + self.not_a_point_embed.weight, pe)
        out = torch.where(lab == 0, out + self.point_embeddings[0].weight, out)
        return torch.where(lab == 1, out + self.point_embeddings[1].weight, out)

    def click_maps_for(self, points: tuple[torch.Tensor, torch.Tensor] | None, bs: int, device: torch.device) -> torch.Tensor:
        """The (B, 2, 4X, 4Y, 4Z) positive/negative click maps on the low-resolution grid.

        A voxel index c of the input maps to low-res cell coordinate (c + 0.5) / s − 0.5 with
        s = input size / low-res size (4), so a click lands on the cell whose voxels hold it.
        Labels other than 0/1 (padding) are ignored; no points gives all-zero maps.
        """
        coords, labels = points if points is not None else (None, None)
        return click_distance_maps(coords, labels, self.input_image_size, self.mask_input_size, self.CLICK_MAP_REACH, bs, device)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords, labels)``: coords (B, N, 3) float voxel indices of the input
                window, component k along tensor axis 2 + k; labels (B, N) int, 1 positive,
                0 negative, −1 ignored. ``None`` for a mask-only prompt.
            boxes: not supported by SAM-Med3D; must be ``None``.
            masks: (B, 1, 4X, 4Y, 4Z) low-resolution logits of a previous prediction, or ``None``
                to use the learned "no mask" embedding (zeros with ``click_maps``).

        Returns:
            sparse (B, N + 1, C) and dense (B, C, X, Y, Z) embeddings.
        """
        if boxes is not None:
            raise PromptError("SAM-Med3D has no box prompt encoder; pass boxes=None and use points")
        if points is not None:
            bs = points[0].shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.not_a_point_embed.weight.device
        if points is not None:
            coords, labels = points
            if coords.dim() != 3 or coords.shape[-1] != 3 or labels.shape != coords.shape[:2]:
                raise PromptError(
                    f"points must be (coords (B, N, 3), labels (B, N)); got {tuple(coords.shape)} and {tuple(labels.shape)}"
                )
            sparse = self._embed_points(coords, labels)
        else:
            sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if self.click_maps:
            if masks is None:
                masks = torch.zeros((bs, 1, *self.mask_input_size), dtype=torch.float32, device=device)
            maps = self.click_maps_for(points, bs, masks.device).to(masks.dtype)
            dense = self.mask_downscaling(torch.cat([masks, maps], dim=1))
        elif masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
