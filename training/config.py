"""Training configuration: one dataclass, saved as JSON in the run folder, overridable from the CLI.

Every field is a command-line flag (``--lr 3e-4``, ``--model-config '{...}'`` or a JSON file);
:func:`add_arguments` derives the flags from the dataclass so the two never drift apart. The
defaults follow the paper (§5.1): AdamW (the paper's "Adam … with a weight decay of 0.1"),
lr 8e-4, DiceCELoss, random flips, z-normalisation, gradient accumulation; the step-decay cycle
(lr ÷ 10 at 60 %, 80 % and 95 % of each cycle, restored at the start of the next — the paper's
120/160/190 of every 200 epochs) is expressed in optimizer steps because our "epochs" are virtual.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from SAMMed3DLib.atomic import atomic_write_json
from SAMMed3DLib.card import DEFAULT_INPUT_SIZE
from SAMMed3DLib.devices import is_device_name
from SAMMed3DLib.errors import ConfigError
from SAMMed3DLib.model.build import normalize_config

from .synth import mode_weights
from .zoom import check_zoom

#: The shipped default model: 6.14 M parameters (24.6 MB in fp32). Measured on this machine
#: (2 vCPU, torch 2.13, benchmarks/train_speed.py): encoder 0.042 s + first decoder call, fine
#: head (geodesic maps included) and upsampling 0.137 s on 2 threads; one training sample with
#: 10 click rounds 0.64 s on 2 threads without the head, 2.9 s with it trained in every round. 512 tokens make global
#: attention in every block cheap, so no windows (window_size 0). ``click_maps`` feeds the clicks
#: into the dense prompt as well (see :class:`SAMMed3DLib.model.prompt_encoder.PromptEncoder3D`):
#: without it, 1,550 steps had not taught the model to follow the clicks; with it, the
#: in-training validation Dice rose with the click count within 1,500 steps. ``fine_head`` adds
#: 93 k parameters (a 3D U-Net on the 64³ grid, :mod:`SAMMed3DLib.model.fine_head`); the shipped
#: model got it after the rest had trained, with the rest frozen (``--train-only-fine-head``),
#: then geodesic click maps as two more head inputs (``--geodesic``, warm-started from that head).
DEFAULT_MODEL_CONFIG: dict[str, dict[str, Any]] = {
    "image_encoder": {
        "img_size": DEFAULT_INPUT_SIZE,  # the card default: 128³ windows
        "patch_size": 16,
        "in_chans": 1,
        "embed_dim": 192,
        "depth": 6,
        "num_heads": 6,
        "mlp_ratio": 4.0,
        "out_chans": 144,
        "qkv_bias": True,
        "use_abs_pos": True,
        "use_rel_pos": True,
        "window_size": 0,
        "global_attn_indexes": [0, 1, 2, 3, 4, 5],  # all global; what infer_config reads back
    },
    "prompt_encoder": {
        "embed_dim": 144,
        "image_embedding_size": [8, 8, 8],
        "input_image_size": [DEFAULT_INPUT_SIZE] * 3,
        "mask_in_chans": 16,
        "click_maps": True,  # clicks also enter the dense prompt (PromptEncoder3D); learns far faster
    },
    "mask_decoder": {"transformer_dim": 144, "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256},
    # refines the 32³ logits on the 64³ grid from the window image and the clicks (FineHead)
    "fine_head": {"channels": [8, 16, 32], "click_reach": 8.0, "geodesic_reach": 16.0, "geodesic_weight": 20.0},
}


#: ``--pe-matrix``: "keep" leaves the prompt encoder's random-Fourier matrix as built (random, as
#: the official code draws it) or as loaded with --init; "swap_closed" redraws it so that its
#: columns come in (u, v, w) / (v, u, w) pairs (see :func:`training.trainer.make_pe_swap_closed`).
PE_MATRIX_CHOICES: tuple[str, ...] = ("keep", "swap_closed")

#: ``--synthetic-modes``: how often a synthetic sample is MR-, CT- or PET-like (:mod:`training.synth`).
SYNTHETIC_MODE_WEIGHTS: dict[str, float] = {"mr": 0.4, "ct": 0.35, "pet": 0.25}


@dataclass
class TrainConfig:
    """All options of a training run (see ``python -m training --help``)."""

    # data
    cache: str = ""
    out: str = ""
    val_cases: list[str] = field(default_factory=list)
    samples_per_epoch: int = 1000
    num_workers: int = 0
    # synthetic samples (training.synth_samples): label maps from `python -m training.labelmaps`
    synthetic_cache: str = ""
    synthetic_fraction: float = 0.0
    synthetic_modes: dict[str, float] = field(default_factory=lambda: dict(SYNTHETIC_MODE_WEIGHTS))
    # model
    model_config: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_MODEL_CONFIG))
    init: str = ""
    freeze_encoder: bool = False
    pe_matrix: str = "keep"
    fine_head: bool = False
    train_only_fine_head: bool = False
    fine_grad_rounds: int = 0
    geodesic: bool = False
    # optimisation
    max_steps: int = 20000
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 8e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    cycle_steps: int = 0
    decay_at: list[float] = field(default_factory=lambda: [0.6, 0.8, 0.95])
    decay_gamma: float = 0.1
    grad_clip: float = 1.0
    amp: bool = True
    bf16_cpu: bool = False
    # interaction simulation
    rounds: int = 7
    mask_only_rounds: int = 1
    last_round_mask_only: bool = True
    all_clicks: bool = True
    click_mode: str = "random"
    # the share of samples whose interaction corrects a corrupted truth (training.interaction)
    correction_fraction: float = 0.0
    # augmentation
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    intensity_prob: float = 0.5
    # zoom-out (training.zoom): the share of samples seen zoomed out, and the largest factor
    zoom_prob: float = 0.0
    zoom_max: float = 1.0
    # bookkeeping
    seed: int = 0
    threads: int = 0
    device: str = "auto"
    log_every: int = 10
    val_every: int = 500
    val_clicks: list[int] = field(default_factory=lambda: [1, 3, 5])
    ckpt_every: int = 100
    export_clicks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        try:
            self.model_config = normalize_config(self.model_config)
        except ConfigError as exc:
            raise ConfigError(f"--model-config: {exc}") from exc
        positive = ("samples_per_epoch", "max_steps", "batch_size", "grad_accum", "rounds", "log_every", "val_every", "ckpt_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.mask_only_rounds < 0 or self.mask_only_rounds + int(self.last_round_mask_only) > max(self.rounds - 1, 0):
            raise ConfigError(
                f"--mask-only-rounds {self.mask_only_rounds} (+1 for the last round) must leave the first round with a click; rounds = {self.rounds}"
            )
        if self.fine_grad_rounds < 0:
            raise ConfigError(f"--fine-grad-rounds must be ≥ 0 (0 = every round), got {self.fine_grad_rounds}")
        if self.train_only_fine_head and not (self.fine_head or "fine_head" in self.model_config):
            raise ConfigError("--train-only-fine-head needs a fine head: add --fine-head true (or a fine_head section in --model-config)")
        if self.geodesic and not (self.fine_head or "fine_head" in self.model_config):
            raise ConfigError("--geodesic adds geodesic click maps to a fine head: add --fine-head true (or a fine_head section in --model-config)")
        if self.pe_matrix not in PE_MATRIX_CHOICES:
            raise ConfigError(f"--pe-matrix must be one of {', '.join(PE_MATRIX_CHOICES)}, got {self.pe_matrix!r}")
        if self.click_mode not in ("random", "center"):
            raise ConfigError(f"--click-mode must be 'random' or 'center', got {self.click_mode!r}")
        if not 0.0 <= self.correction_fraction <= 1.0:
            raise ConfigError(f"--correction-fraction must lie in [0, 1], got {self.correction_fraction}")
        if not 0 <= self.flip_prob <= 1 or not 0 <= self.intensity_prob <= 1:
            raise ConfigError("--flip-prob and --intensity-prob must lie in [0, 1]")
        if any(not 0 < f < 1 for f in self.decay_at):
            raise ConfigError(f"--decay-at fractions must lie in (0, 1), got {self.decay_at}")
        if not is_device_name(self.device, allow_mps=False):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if any(c < 1 for c in self.val_clicks + self.export_clicks):
            raise ConfigError("click counts must be ≥ 1")
        check_zoom(self.zoom_prob, self.zoom_max)
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ConfigError(f"--synthetic-fraction must lie in [0, 1], got {self.synthetic_fraction}")
        if self.synthetic_fraction > 0 and not self.synthetic_cache:
            raise ConfigError("--synthetic-fraction > 0 needs --synthetic-cache (a folder written by `python -m training.labelmaps`)")
        try:
            mode_weights(self.synthetic_modes)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"--synthetic-modes: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc


def _parse_json_or_file(text: str) -> Any:
    path = Path(text)
    if not text.lstrip().startswith(("{", "[")) and path.is_file():
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON (nor a JSON file): {exc}") from exc


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`TrainConfig` field, default None (= keep config/default)."""
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = str(hints[f.name])
        if f.name in ("cache", "out"):
            continue  # top-level CLI arguments
        if hint.startswith("dict"):
            parser.add_argument(flag, type=_parse_json_or_file, default=None, help="JSON or a JSON file")
        elif hint.startswith("list[str]"):
            parser.add_argument(flag, nargs="*", default=None)
        elif hint.startswith("list[int]"):
            parser.add_argument(flag, nargs="+", type=int, default=None)
        elif hint.startswith("list[float]"):
            parser.add_argument(flag, nargs="+", type=float, default=None)
        elif hint == "<class 'bool'>" or hint == "bool":
            parser.add_argument(flag, type=_bool, nargs="?", const=True, default=None, help="true/false")
        else:
            typ = {"<class 'int'>": int, "<class 'float'>": float, "int": int, "float": float}.get(hint, str)
            parser.add_argument(flag, type=typ, default=None)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields given on the command line."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = value
    return out
