"""Build SAM-Med3D models from a configuration dict, and infer that dict from a state dict.

A configuration is ``{"image_encoder": {...}, "prompt_encoder": {...}, "mask_decoder": {...}}``
whose inner keys are the official constructor argument names. Omitted keys take the official
constructors' defaults; unknown keys are an error (a typo would otherwise build a different
model silently). An optional fourth section, ``"fine_head": {"channels": [8, 16, 32],
"click_reach": 8.0, "geodesic_reach": 16.0, "geodesic_weight": 20.0}``, adds this project's
refinement head (:mod:`.fine_head`; ``geodesic_reach`` 0, the default, means no geodesic click
maps); official architectures have none.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError
from .fine_head import FINE_HEAD_DEFAULTS, FineHead
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .sam3d import Sam3D

#: The configuration of the released checkpoints (``sam_med3d.pth``, ``sam_med3d_turbo.pth``):
#: the official ``vit_b_ori`` builder.
VIT_B_ORI: dict[str, dict[str, Any]] = {
    "image_encoder": {
        "img_size": 128,
        "patch_size": 16,
        "in_chans": 1,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "mlp_ratio": 4.0,
        "out_chans": 384,
        "qkv_bias": True,
        "use_abs_pos": True,
        "use_rel_pos": True,
        "window_size": 14,
        "global_attn_indexes": [2, 5, 8, 11],
    },
    "prompt_encoder": {
        "embed_dim": 384,
        "image_embedding_size": [8, 8, 8],
        "input_image_size": [128, 128, 128],
        "mask_in_chans": 16,
    },
    "mask_decoder": {
        "num_multimask_outputs": 3,
        "transformer_dim": 384,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
    },
}

#: Named architectures, used by the registry and to name what an unknown file matches.
KNOWN_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {"vit_b_ori": VIT_B_ORI}

_ENCODER_DEFAULTS: dict[str, Any] = {
    "img_size": 256,
    "patch_size": 16,
    "in_chans": 1,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "out_chans": 256,
    "qkv_bias": True,
    "use_abs_pos": True,
    "use_rel_pos": False,
    "rel_pos_zero_init": True,
    "window_size": 0,
    "global_attn_indexes": [],
}
_PROMPT_REQUIRED = ("embed_dim", "image_embedding_size", "input_image_size", "mask_in_chans")
#: ``click_maps`` is this project's extension (off in the official architecture): see
#: :class:`SAMMed3DLib.model.prompt_encoder.PromptEncoder3D`.
_PROMPT_DEFAULTS: dict[str, Any] = {"click_maps": False}
_DECODER_DEFAULTS: dict[str, Any] = {"num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256}
_DECODER_REQUIRED = ("transformer_dim",)
#: Optional top-level section ``fine_head`` (this project's refinement head, absent in the
#: official architecture): see :mod:`SAMMed3DLib.model.fine_head`.
_FINE_HEAD_DEFAULTS: dict[str, Any] = dict(FINE_HEAD_DEFAULTS)


def _triple(value: Any, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * 3
    try:
        out = [int(v) for v in value]
    except TypeError as exc:
        raise ConfigError(f"prompt_encoder.{name} must be an int or 3 ints, got {value!r}") from exc
    if len(out) != 3:
        raise ConfigError(f"prompt_encoder.{name} must have 3 values, got {value!r}")
    return out


def _check_keys(section: str, given: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown {section} option(s): {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")


def normalize_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate a configuration and fill in the official defaults.

    Raises:
        ConfigError: a section or key is unknown, a required key is missing, or sizes disagree.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"model config must be a dict with image_encoder/prompt_encoder/mask_decoder, got {type(config).__name__}")
    _check_keys("config", config, {"image_encoder", "prompt_encoder", "mask_decoder", "fine_head"})
    missing = [s for s in ("image_encoder", "prompt_encoder", "mask_decoder") if s not in config]
    if missing:
        raise ConfigError(f"model config lacks section(s) {missing}")
    enc_in, pe_in, dec_in = (dict(config[s]) for s in ("image_encoder", "prompt_encoder", "mask_decoder"))
    _check_keys("image_encoder", enc_in, set(_ENCODER_DEFAULTS))
    _check_keys("prompt_encoder", pe_in, set(_PROMPT_REQUIRED) | set(_PROMPT_DEFAULTS))
    _check_keys("mask_decoder", dec_in, set(_DECODER_DEFAULTS) | set(_DECODER_REQUIRED))
    for section, given, required in (("prompt_encoder", pe_in, _PROMPT_REQUIRED), ("mask_decoder", dec_in, _DECODER_REQUIRED)):
        lacking = [k for k in required if k not in given]
        if lacking:
            raise ConfigError(f"{section} config lacks required key(s) {lacking}")
    enc = {**_ENCODER_DEFAULTS, **enc_in}
    enc["global_attn_indexes"] = [int(i) for i in enc["global_attn_indexes"]]
    enc["mlp_ratio"] = float(enc["mlp_ratio"])
    for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "out_chans", "window_size"):
        enc[key] = int(enc[key])
    pe = {**_PROMPT_DEFAULTS, **pe_in}
    if not isinstance(pe["click_maps"], bool):
        raise ConfigError(f"prompt_encoder.click_maps must be true or false, got {pe['click_maps']!r}")
    pe["embed_dim"] = int(pe["embed_dim"])
    pe["mask_in_chans"] = int(pe["mask_in_chans"])
    pe["image_embedding_size"] = _triple(pe["image_embedding_size"], "image_embedding_size")
    pe["input_image_size"] = _triple(pe["input_image_size"], "input_image_size")
    dec = {**_DECODER_DEFAULTS, **dec_in}
    dec = {k: int(v) for k, v in dec.items()}

    grid = enc["img_size"] // enc["patch_size"] if enc["patch_size"] else 0
    problems = []
    if enc["patch_size"] <= 0 or enc["img_size"] % enc["patch_size"]:
        problems.append(f"image_encoder.img_size {enc['img_size']} is not a multiple of patch_size {enc['patch_size']}")
    if enc["num_heads"] <= 0 or enc["embed_dim"] % enc["num_heads"]:
        problems.append(f"image_encoder.embed_dim {enc['embed_dim']} is not divisible by num_heads {enc['num_heads']}")
    if enc["out_chans"] != pe["embed_dim"] or pe["embed_dim"] != dec["transformer_dim"]:
        problems.append(
            f"image_encoder.out_chans ({enc['out_chans']}), prompt_encoder.embed_dim ({pe['embed_dim']}) and "
            f"mask_decoder.transformer_dim ({dec['transformer_dim']}) must be equal"
        )
    if pe["embed_dim"] % 3:
        problems.append(f"prompt_encoder.embed_dim {pe['embed_dim']} must be divisible by 3")
    if dec["transformer_dim"] % 16:
        problems.append(f"mask_decoder.transformer_dim {dec['transformer_dim']} must be divisible by 16 (8 heads at half width)")
    if pe["image_embedding_size"] != [grid] * 3:
        problems.append(f"prompt_encoder.image_embedding_size {pe['image_embedding_size']} must be the token grid {[grid] * 3}")
    if pe["input_image_size"] != [enc["img_size"]] * 3:
        problems.append(f"prompt_encoder.input_image_size {pe['input_image_size']} must be {[enc['img_size']] * 3}")
    bad_idx = [i for i in enc["global_attn_indexes"] if not 0 <= i < enc["depth"]]
    if bad_idx:
        problems.append(f"image_encoder.global_attn_indexes {bad_idx} are outside 0..{enc['depth'] - 1}")
    out: dict[str, dict[str, Any]] = {"image_encoder": enc, "prompt_encoder": pe, "mask_decoder": dec}
    if config.get("fine_head") is not None:
        fine_in = config["fine_head"]
        if not isinstance(fine_in, Mapping):
            raise ConfigError(f"fine_head must be a dict like {FINE_HEAD_DEFAULTS} (or absent), got {fine_in!r}")
        _check_keys("fine_head", fine_in, set(_FINE_HEAD_DEFAULTS))
        fine = {**_FINE_HEAD_DEFAULTS, **fine_in}
        try:
            fine["channels"] = [int(c) for c in fine["channels"]]
            fine["click_reach"] = float(fine["click_reach"])
            fine["geodesic_reach"] = float(fine["geodesic_reach"])
            fine["geodesic_weight"] = float(fine["geodesic_weight"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"fine_head.channels must be 3 ints and click_reach, geodesic_reach, geodesic_weight numbers, got {dict(fine_in)!r}"
            ) from exc
        if len(fine["channels"]) != 3 or min(fine["channels"]) < 1:
            problems.append(f"fine_head.channels must be 3 positive ints, got {fine['channels']}")
        if not fine["click_reach"] > 0:
            problems.append(f"fine_head.click_reach must be > 0, got {fine['click_reach']}")
        if not fine["geodesic_reach"] >= 0:
            problems.append(f"fine_head.geodesic_reach must be >= 0 (0 = no geodesic maps), got {fine['geodesic_reach']}")
        if not fine["geodesic_weight"] >= 0:
            problems.append(f"fine_head.geodesic_weight must be >= 0, got {fine['geodesic_weight']}")
        if enc["img_size"] % 8:
            problems.append(f"fine_head needs image_encoder.img_size divisible by 8, got {enc['img_size']}")
        out["fine_head"] = fine
    if problems:
        raise ConfigError("invalid model config: " + "; ".join(problems))
    return out


def build_sam3d(config: Mapping[str, Any] | str = "vit_b_ori") -> Sam3D:
    """Build a SAM-Med3D model with random weights, in eval mode.

    Args:
        config: a configuration dict (see module docstring) or the name of a known architecture
            (``"vit_b_ori"``).

    Returns:
        The model; ``model.config`` holds the normalised configuration.

    Example:
        >>> from SAMMed3DLib import build_sam3d
        >>> model = build_sam3d("vit_b_ori")  # the released checkpoints' architecture
    """
    if isinstance(config, str):
        if config not in KNOWN_CONFIGS:
            close = difflib.get_close_matches(config, list(KNOWN_CONFIGS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown architecture {config!r}; known: {', '.join(KNOWN_CONFIGS)}.{hint}")
        config = KNOWN_CONFIGS[config]
    cfg = normalize_config(config)
    enc = dict(cfg["image_encoder"])
    enc.pop("rel_pos_zero_init")
    model = Sam3D(
        image_encoder=ImageEncoderViT3D(**enc),
        prompt_encoder=PromptEncoder3D(**cfg["prompt_encoder"]),
        mask_decoder=MaskDecoder3D(**cfg["mask_decoder"]),
        config=cfg,
        fine_head=FineHead(enc["img_size"], **cfg["fine_head"]) if "fine_head" in cfg else None,
    )
    return model.eval()


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Infer the architecture configuration from a state dict's key names and tensor shapes.

    Official checkpoints carry no configuration, but every size is visible in the shapes:
    embedding width (patch projection), depth (block count), patch and image size (patch kernel,
    position embedding), global blocks (15-row vs 27-row relative-position tables), heads
    (relative-position table width = head dim), prompt width, mask channels, click maps (input
    channels of the mask downscaling), IoU head sizes, the refinement head (its widths from the
    convolution shapes, its click reach from a buffer).

    Raises:
        ConfigError: the state dict is not a SAM-Med3D model's.
    """
    sd = state_dict
    try:
        proj = sd["image_encoder.patch_embed.proj.weight"]  # (E, C_in, p, p, p)
        embed_dim, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
        block_ids = {int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
        depth = max(block_ids) + 1 if block_ids else 0
        use_abs_pos = "image_encoder.pos_embed" in sd
        use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_d" in sd
        qkv_bias = "image_encoder.blocks.0.attn.qkv.bias" in sd
        mlp_hidden = int(sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
        out_chans = int(sd["image_encoder.neck.0.weight"].shape[0])
        mask_in_chans = int(sd["prompt_encoder.mask_downscaling.3.weight"].shape[0])
        click_maps = int(sd["prompt_encoder.mask_downscaling.0.weight"].shape[1]) == 3  # mask + 2 click maps
        transformer_dim = int(sd["mask_decoder.iou_token.weight"].shape[1])
        num_mask_tokens = int(sd["mask_decoder.mask_tokens.weight"].shape[0])
        iou_layers = sorted(
            int(m.group(1)) for k in sd if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight", k))
        )
        iou_hidden = int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
        fine = None
        if "fine_head.stem.weight" in sd:
            fine = {
                "channels": [int(sd[f"fine_head.{name}.weight"].shape[0]) for name in ("stem", "down1", "down2")],
                "click_reach": float(sd["fine_head.click_reach"]),
                "geodesic_reach": float(sd.get("fine_head.geodesic_reach", 0.0)),
                "geodesic_weight": float(sd.get("fine_head.geodesic_weight", FINE_HEAD_DEFAULTS["geodesic_weight"])),
            }
    except KeyError as exc:
        raise ConfigError(f"not a SAM-Med3D state dict: key {exc.args[0]!r} is missing") from exc

    if use_abs_pos:
        grid = int(sd["image_encoder.pos_embed"].shape[1])
    else:
        pe_cells = sd.get("prompt_encoder.mask_downscaling.0.weight")
        raise ConfigError(
            "cannot infer img_size from a state dict without an absolute position embedding; pass config= explicitly"
            if pe_cells is not None
            else "not a SAM-Med3D state dict"
        )
    img_size = grid * patch
    global_idx: list[int] = []
    window_size = 0
    num_heads = None
    if use_rel_pos:
        for i in range(depth):
            table = sd[f"image_encoder.blocks.{i}.attn.rel_pos_d"]
            side = (int(table.shape[0]) + 1) // 2
            head_dim = int(table.shape[1])
            num_heads = embed_dim // head_dim
            if side == grid and (window_size == 0 or window_size != grid):
                global_idx.append(i)
            else:
                window_size = side
        # A window equal to the grid is indistinguishable from global attention (same numbers).
    if num_heads is None:
        raise ConfigError("cannot infer num_heads without relative-position tables; pass config= explicitly")
    return normalize_config(
        {
            "image_encoder": {
                "img_size": img_size,
                "patch_size": patch,
                "in_chans": in_chans,
                "embed_dim": embed_dim,
                "depth": depth,
                "num_heads": num_heads,
                "mlp_ratio": mlp_hidden / embed_dim,
                "out_chans": out_chans,
                "qkv_bias": qkv_bias,
                "use_abs_pos": use_abs_pos,
                "use_rel_pos": use_rel_pos,
                "window_size": window_size,
                "global_attn_indexes": global_idx,
            },
            "prompt_encoder": {
                "embed_dim": out_chans,
                "image_embedding_size": [grid] * 3,
                "input_image_size": [img_size] * 3,
                "mask_in_chans": mask_in_chans,
                "click_maps": click_maps,
            },
            "mask_decoder": {
                "num_multimask_outputs": num_mask_tokens - 1,
                "transformer_dim": transformer_dim,
                "iou_head_depth": len(iou_layers),
                "iou_head_hidden_dim": iou_hidden,
            },
            **({"fine_head": fine} if fine is not None else {}),
        }
    )


def match_known_config(config: Mapping[str, Any]) -> str | None:
    """Name of the known architecture equal to ``config`` (after normalisation), if any."""
    cfg = normalize_config(config)
    for name, known in KNOWN_CONFIGS.items():
        if normalize_config(known) == cfg:
            return name
    return None


def copy_config(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Deep copy of a normalised configuration (safe to mutate)."""
    return copy.deepcopy(normalize_config(config))
