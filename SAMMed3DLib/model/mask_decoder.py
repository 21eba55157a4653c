"""3D mask decoder of SAM-Med3D (two-way transformer + hypernetwork heads), official layout.

The transformer's depth (2), heads (8), MLP width (2048) and attention downsampling (2) are
fixed, as in the official ``MaskDecoder3D``. Attention uses PyTorch's fused
``scaled_dot_product_attention`` (same numbers as the explicit softmax to float32 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm3d, MLPBlock

DECODER_DEPTH = 2
DECODER_HEADS = 8
DECODER_MLP_DIM = 2048
ATTENTION_DOWNSAMPLE = 2


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        if self.internal_dim % num_heads:
            raise ValueError(f"{num_heads} heads must divide the attention width {self.internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v)))
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock3D(nn.Module):
    """Token self-attention, token→image, MLP, image→token (SAM's two-way block)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, ATTENTION_DOWNSAMPLE)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, ATTENTION_DOWNSAMPLE)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            # First layer: no positional encoding and no residual (official behaviour).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer3D(nn.Module):
    """Transformer that lets prompt tokens and image tokens attend to each other."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock3D(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, ATTENTION_DOWNSAMPLE)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe: (B, C, X, Y, Z); point_embedding: (B, T, C)."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn_out = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn_out), keys


class MaskDecoder3D(nn.Module):
    """Predicts low-resolution mask logits from an image embedding and prompt embeddings.

    Args:
        transformer_dim: token width (the prompt dimension, 384 for ``vit_b_ori``).
        num_multimask_outputs: masks predicted besides the single-mask output.
        iou_head_depth, iou_head_hidden_dim: size of the IoU prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer3D(DECODER_DEPTH, transformer_dim, DECODER_HEADS, DECODER_MLP_DIM)
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (B_img, C, X, Y, Z) from the image encoder.
            image_pe: (1, C, X, Y, Z) from ``prompt_encoder.get_dense_pe()``.
            sparse_prompt_embeddings: (B, T, C).
            dense_prompt_embeddings: (B, C, X, Y, Z).
            multimask_output: return the 3 alternative masks instead of the single one.

        Returns:
            low-resolution logits (B, 1 or 3, 4X, 4Y, 4Z) and IoU predictions (B, 1 or 3).
        """
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def _upscale(self, image: torch.Tensor) -> torch.Tensor:
        """``output_upscaling`` with channels-last inputs to the transposed convolutions.

        oneDNN's ConvTranspose3d is much faster on channels-last input on CPU (96 → 48 channels,
        16³ → 32³: 4.8 ms vs 16 ms on one thread, a third of a click), and its output then stays
        channels-last. The numbers are the same up to float32 summation order.
        """
        h = image
        for layer in self.output_upscaling:
            if isinstance(layer, nn.ConvTranspose3d):
                h = h.contiguous(memory_format=torch.channels_last_3d)
            h = layer(h)
        return h

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' logits (B, num_mask_tokens, 4X, 4Y, 4Z) and IoU predictions."""
        bs = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(bs, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings
        if src.shape[0] != bs:
            src = torch.repeat_interleave(src, bs, dim=0)
        src = src + dense_prompt_embeddings
        pos = image_pe if image_pe.shape[0] == bs else torch.repeat_interleave(image_pe, bs, dim=0)
        b, c, x, y, z = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self._upscale(src.transpose(1, 2).reshape(b, c, x, y, z))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, x, y, z = upscaled.shape
        # Channel-last features (a view here): (B, 4X·4Y·4Z, C') @ (B, C', masks).
        features = upscaled.permute(0, 2, 3, 4, 1).reshape(b, x * y * z, c)
        masks = (features @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, x, y, z)
        return masks, self.iou_prediction_head(iou_token_out)
