"""SAM-Med3D network: image encoder, prompt encoder, mask decoder, builder."""

from .build import KNOWN_CONFIGS, VIT_B_ORI, build_sam3d, infer_config, match_known_config, normalize_config
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .sam3d import Sam3D

__all__ = [
    "KNOWN_CONFIGS",
    "VIT_B_ORI",
    "ImageEncoderViT3D",
    "MaskDecoder3D",
    "PromptEncoder3D",
    "Sam3D",
    "build_sam3d",
    "infer_config",
    "match_known_config",
    "normalize_config",
]
