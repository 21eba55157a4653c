"""Model cards: what a checkpoint's weights expect, so preprocessing always matches them.

A card travels inside our own checkpoints (and as a JSON file beside shipped weights). Official
SAM-Med3D files carry none; :func:`official_card` describes their preprocessing
(``../shared/spec/SAM_MED3D_FACTS.md`` §3): a 128³ window at 1.5 mm, canonical RAS axes, z-score
over the window's voxels > 0 with the unbiased std, zero padding outside the image.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ModelCardError
from .model.build import VIT_B_ORI, normalize_config

#: Normalisation schemes the inference path implements (``preprocessing.normalize_window``).
Normalization = Literal["zscore_nonzero"]
NORMALIZATIONS: tuple[str, ...] = ("zscore_nonzero",)

CARD_VERSION = 1


@dataclass
class ModelCard:
    """Everything needed to use a set of weights correctly.

    Attributes:
        name: short model name (registry key or file stem).
        config: architecture configuration (see :func:`SAMMed3DLib.build_sam3d`).
        spacing_mm: isotropic voxel spacing of the model's input window, in mm.
        normalization: intensity normalisation of the window (see ``NORMALIZATIONS``).
        intensity_clip: optional (low, high) clip applied before normalisation, or None.
        description: one line for users.
        training_data: datasets the weights were trained on.
        metrics: measured quality, e.g. ``{"dice": {"1": 0.71, "5": 0.83}, "protocol": "..."}``.
        license: licence of the weights.
        source: where the weights come from (URL or "trained by training/ ...").
        extra: free-form provenance (training config, steps, date).
    """

    name: str
    config: dict[str, Any]
    spacing_mm: float = 1.5
    normalization: str = "zscore_nonzero"
    intensity_clip: tuple[float, float] | None = None
    description: str = ""
    training_data: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.config = normalize_config(self.config)
        except Exception as exc:  # ConfigError → a card-level message naming the card
            raise ModelCardError(f"model card {self.name!r} has an invalid config: {exc}") from exc
        if self.normalization not in NORMALIZATIONS:
            raise ModelCardError(
                f"model card {self.name!r}: normalization {self.normalization!r} is not supported; use one of {NORMALIZATIONS}"
            )
        try:
            self.spacing_mm = float(self.spacing_mm)
        except (TypeError, ValueError) as exc:
            raise ModelCardError(f"model card {self.name!r}: spacing_mm must be a number, got {self.spacing_mm!r}") from exc
        if not self.spacing_mm > 0:
            raise ModelCardError(f"model card {self.name!r}: spacing_mm must be positive, got {self.spacing_mm}")
        if self.intensity_clip is not None:
            lo, hi = (float(v) for v in self.intensity_clip)
            if not lo < hi:
                raise ModelCardError(f"model card {self.name!r}: intensity_clip must be (low, high) with low < high")
            self.intensity_clip = (lo, hi)

    @property
    def input_size(self) -> int:
        """Side of the cubic model input in voxels."""
        return int(self.config["image_encoder"]["img_size"])

    @property
    def window_mm(self) -> float:
        """Physical side of the model's window in mm (192 for 128 × 1.5 mm)."""
        return self.input_size * self.spacing_mm

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["card_version"] = CARD_VERSION
        out["intensity_clip"] = list(self.intensity_clip) if self.intensity_clip is not None else None
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise ModelCardError(f"a model card must be a JSON object, got {type(data).__name__}")
        data = copy.deepcopy(data)
        version = data.pop("card_version", CARD_VERSION)
        if version > CARD_VERSION:
            raise ModelCardError(f"model card version {version} is newer than this software understands ({CARD_VERSION}); update sammed3d")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("name", "config") if k not in data]
        if missing:
            raise ModelCardError(f"model card lacks required field(s) {missing}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"model card has unknown field(s) {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"model card is not valid JSON: {exc}") from exc


def official_card(name: str = "sam_med3d_turbo", config: dict[str, Any] | None = None) -> ModelCard:
    """Card describing the official SAM-Med3D preprocessing, for files that carry no card."""
    return ModelCard(
        name=name,
        config=copy.deepcopy(config if config is not None else VIT_B_ORI),
        spacing_mm=1.5,
        normalization="zscore_nonzero",
        description="Official SAM-Med3D weights (uni-medical/SAM-Med3D)",
        training_data=["SA-Med3D-140K (official)"],
        license="Apache-2.0",
        source="https://github.com/uni-medical/SAM-Med3D",
    )
