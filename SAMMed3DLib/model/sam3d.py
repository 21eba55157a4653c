"""The SAM-Med3D container: three sub-modules, called one at a time as the official pipeline does."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .fine_head import FineHead
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D


class Sam3D(nn.Module):
    """SAM-Med3D model: ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``.

    The state-dict layout equals the official ``Sam3D`` (the 2D-SAM ``pixel_mean``/``pixel_std``
    buffers are non-persistent there and unused, so they are left out here).

    Attributes:
        config: the architecture configuration this model was built from (see
            :func:`SAMMed3DLib.build_sam3d`); saved with checkpoints.
        mask_threshold: logit threshold for a binary mask (0.0, i.e. sigmoid > 0.5).
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
        config: dict[str, Any] | None = None,
        fine_head: FineHead | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Registered only when present, so official state dicts keep exactly their keys.
        self.fine_head = fine_head
        self.config = copy.deepcopy(config) if config is not None else {}

    @property
    def img_size(self) -> int:
        """Side of the cubic model input in voxels (128 for the released checkpoints)."""
        return self.image_encoder.img_size

    @property
    def low_res_size(self) -> tuple[int, int, int]:
        """Shape of the low-resolution logits the decoder returns (and takes back as a prompt)."""
        return self.prompt_encoder.mask_input_size

    @property
    def has_fine_head(self) -> bool:
        """Whether the model refines its low-res logits with the image (:mod:`.fine_head`)."""
        return self.fine_head is not None

    def refine(
        self, image: torch.Tensor | None, low_res_logits: torch.Tensor, coords: torch.Tensor | None, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """The logits to display: the fine head's (B, 1, S/2, S/2, S/2), or ``low_res_logits`` as is.

        Args:
            image: (B, 1, S, S, S) the normalised window the embedding was computed from
                (needed only with a fine head).
            low_res_logits: (B, 1, L, L, L) from :meth:`predict_low_res`.
            coords, labels: the clicks passed to :meth:`predict_low_res`.
        """
        if self.fine_head is None:
            return low_res_logits
        if image is None:
            raise ValueError("this model has a fine head: pass the normalised window image to refine()")
        return self.fine_head(image, low_res_logits, coords, labels)

    def predict_low_res(
        self,
        image_embeddings: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for one prompt set per batch item.

        Args:
            image_embeddings: (B, C, X, Y, Z) from ``image_encoder``.
            coords: (B, N, 3) window voxel indices (axis order of the input tensor) or None.
            labels: (B, N) 1 positive / 0 negative, or None.
            mask_logits: (B, 1, 4X, 4Y, 4Z) previous low-res logits, or None.

        Returns:
            low-res logits (B, 1, 4X, 4Y, 4Z) and IoU prediction (B, 1).
        """
        points = (coords, labels) if coords is not None else None
        sparse, dense = self.prompt_encoder(points=points, boxes=None, masks=mask_logits)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
