"""Model cards: what a checkpoint's weights expect, so preprocessing always matches them.

A card travels inside our own checkpoints (and as a JSON file beside shipped weights). Official
SAM-Med3D files carry none; :func:`official_card` describes their preprocessing
(``../shared/spec/SAM_MED3D_FACTS.md`` §3): a 128³ window at 1.5 mm, canonical RAS axes, z-score
over the window's voxels > 0 with the unbiased std, zero padding outside the image.

The window's grid facts — voxel size, side in voxels, axis orientation — are a card's
:attr:`ModelCard.window_spec` (:class:`WindowSpec`). The training cache records the spec it was
prepared for (``training.prepare``) and the trainer checks every model against it, so these
numbers are stated here once: :data:`DEFAULT_SPACING_MM`, :data:`DEFAULT_INPUT_SIZE` (the
official architecture's input size) and :data:`WINDOW_ORIENTATION` (every window, whatever the
card: the inference path extracts canonical RAS windows, :class:`SAMMed3DLib.geometry.Window`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError, ModelCardError
from .model.build import VIT_B_ORI, normalize_config

logger = logging.getLogger(__name__)

#: Normalisation schemes the inference path implements (``preprocessing.normalize_window``).
Normalization = Literal["zscore_nonzero"]
NORMALIZATIONS: tuple[str, ...] = ("zscore_nonzero",)

CARD_VERSION = 1

#: Window voxel sizes of any CT or MR model, in mm; a card outside them gets a warning (a card
#: that lies within them cannot be told from the weights).
PLAUSIBLE_SPACING_MM = (0.2, 10.0)
#: Narrowest intensity clip that leaves a window any contrast (a warning below it).
MIN_CLIP_WIDTH = 1e-3
#: Types of the card fields that are not checked by their own validation.
_FIELD_TYPES: dict[str, type] = {
    "name": str,
    "config": dict,
    "normalization": str,
    "description": str,
    "training_data": list,
    "metrics": dict,
    "license": str,
    "source": str,
    "extra": dict,
}

#: Voxel size of the official SAM-Med3D window, the default of every card, in mm.
DEFAULT_SPACING_MM = 1.5
#: Side of the official window in voxels: the official architecture's input size.
DEFAULT_INPUT_SIZE = int(VIT_B_ORI["image_encoder"]["img_size"])
#: Axis orientation of every model window: tensor axis 0 → patient Right, 1 → Anterior, 2 → Superior.
WINDOW_ORIENTATION = "RAS"

#: Orientation letter → (LPS axis it lies along, sign toward that side).
_LETTER_AXIS_SIGN: dict[str, tuple[int, float]] = {"R": (0, -1.0), "L": (0, 1.0), "A": (1, -1.0), "P": (1, 1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_direction_lps(orientation: str) -> tuple[float, ...]:
    """The ITK direction matrix (row-major 3 × 3, LPS) of a grid whose axes run toward ``orientation``.

    Args:
        orientation: three letters, one per array axis, naming the patient side the index
            increases toward (``"RAS"``: axis 0 → Right, 1 → Anterior, 2 → Superior).

    Returns:
        9 floats; column k is the LPS unit vector of array axis k (``(-1, 0, 0, 0, -1, 0, 0, 0, 1)``
        for RAS).

    Raises:
        ModelCardError: not three letters of R/L, A/P, S/I covering the three body axes.
    """
    code = str(orientation).upper()
    if len(code) != 3 or any(c not in _LETTER_AXIS_SIGN for c in code) or len({_LETTER_AXIS_SIGN[c][0] for c in code}) != 3:
        raise ModelCardError(f"orientation {orientation!r} must be three letters, one of R/L, A/P and S/I each (e.g. {WINDOW_ORIENTATION!r})")
    matrix = [0.0] * 9
    for axis, letter in enumerate(code):
        row, sign = _LETTER_AXIS_SIGN[letter]
        matrix[3 * row + axis] = sign
    return tuple(matrix)


@dataclass(frozen=True)
class WindowSpec:
    """The grid of a model's input window: what a training cache must be prepared for.

    Attributes:
        spacing_mm: isotropic voxel size in mm.
        input_size: side of the cubic window in voxels.
        orientation: patient directions of the window's array axes (always
            :data:`WINDOW_ORIENTATION` for cards; stored so that a cache says what it holds).
    """

    spacing_mm: float = DEFAULT_SPACING_MM
    input_size: int = DEFAULT_INPUT_SIZE
    orientation: str = WINDOW_ORIENTATION

    def __post_init__(self) -> None:
        try:
            spacing, size = float(self.spacing_mm), int(self.input_size)
        except (TypeError, ValueError) as exc:
            raise ModelCardError(f"window spacing_mm and input_size must be numbers, got {self.spacing_mm!r} and {self.input_size!r}") from exc
        if not spacing > 0 or size < 1 or size != self.input_size:
            raise ModelCardError(f"window spacing_mm must be > 0 and input_size a whole number >= 1, got {self.spacing_mm!r} and {self.input_size!r}")
        orientation_direction_lps(self.orientation)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "orientation", str(self.orientation).upper())

    @property
    def direction_lps(self) -> tuple[float, ...]:
        """The window grid's ITK direction (see :func:`orientation_direction_lps`)."""
        return orientation_direction_lps(self.orientation)

    def mismatches(self, other: WindowSpec) -> list[str]:
        """What differs from ``other``, one phrase per fact (empty when they agree)."""
        out = []
        if self.spacing_mm != other.spacing_mm:
            out.append(f"spacing {self.spacing_mm:g} mm vs {other.spacing_mm:g} mm")
        if self.input_size != other.input_size:
            out.append(f"window {self.input_size}³ vs {other.input_size}³ voxels")
        if self.orientation != other.orientation:
            out.append(f"orientation {self.orientation} vs {other.orientation}")
        return out

    def __str__(self) -> str:
        return f"{self.input_size}³ voxels of {self.spacing_mm:g} mm, axes {self.orientation}"

    def to_dict(self) -> dict[str, Any]:
        """``{"spacing_mm", "input_size", "orientation"}``, as ``index.json`` stores it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowSpec:
        """Read :meth:`to_dict`'s output; unknown keys are an error (a newer writer)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            raise ModelCardError(f"a window spec is an object with keys {sorted(known)}, got {data!r}")
        return cls(**data)


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
    spacing_mm: float = DEFAULT_SPACING_MM
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
        if not _is_number(self.spacing_mm) or not math.isfinite(self.spacing_mm) or not self.spacing_mm > 0:
            raise ModelCardError(
                f"model card {self.name!r}: spacing_mm must be a positive number of mm, got {self.spacing_mm!r}; fix the card "
                "(the JSON file beside the weights, or the checkpoint's model_card)"
            )
        self.spacing_mm = float(self.spacing_mm)
        low, high = PLAUSIBLE_SPACING_MM
        if not low <= self.spacing_mm <= high:
            logger.warning(
                "model card %r says the model's window has voxels of %g mm, outside the %g-%g mm of any CT or MR model: the "
                "card is probably wrong (mm expected) and the masks will be too; check it against the weights' training",
                self.name, self.spacing_mm, low, high,
            )
        self.intensity_clip = _check_clip(self.name, self.intensity_clip)

    @property
    def input_size(self) -> int:
        """Side of the cubic model input in voxels."""
        return int(self.config["image_encoder"]["img_size"])

    @property
    def window_spec(self) -> WindowSpec:
        """The grid of the model's input window: spacing, input size, orientation."""
        return WindowSpec(self.spacing_mm, self.input_size, WINDOW_ORIENTATION)

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
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelCardError(f"model card card_version must be a whole number >= 1, got {version!r}; the card is damaged: fix or re-export it")
        if version > CARD_VERSION:
            raise ModelCardError(f"model card version {version} is newer than this software understands ({CARD_VERSION}); update sammed3d")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("name", "config") if k not in data]
        if missing:
            raise ModelCardError(f"model card lacks required field(s) {missing}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"model card has unknown field(s) {unknown}")
        wrong = [
            f"{key} ({type(data[key]).__name__}, expected {kind.__name__})"
            for key, kind in _FIELD_TYPES.items()
            if key in data and not isinstance(data[key], kind)
        ]
        if wrong:
            raise ModelCardError(f"model card {data.get('name')!r} has field(s) of the wrong type: {', '.join(wrong)}; fix the card")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"model card is not valid JSON: {exc}") from exc


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_clip(name: str, clip: Any) -> tuple[float, float] | None:
    """``(low, high)`` as floats, or None; anything else is a :class:`ModelCardError`."""
    if clip is None:
        return None
    if isinstance(clip, (str, bytes)) or not isinstance(clip, (list, tuple)) or len(clip) != 2 or not all(_is_number(v) for v in clip):
        raise ModelCardError(
            f"model card {name!r}: intensity_clip must be null or two numbers [low, high], got {clip!r}; fix the card "
            "(the JSON file beside the weights, or the checkpoint's model_card)"
        )
    low, high = float(clip[0]), float(clip[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ModelCardError(f"model card {name!r}: intensity_clip must be two finite numbers with low < high, got {list(clip)}; fix the card")
    if high - low < MIN_CLIP_WIDTH:
        logger.warning(
            "model card %r clips intensities to [%g, %g], narrower than %g: every window would be nearly constant; the card "
            "is probably wrong", name, low, high, MIN_CLIP_WIDTH,
        )
    return (low, high)


def with_window_spacing(card: ModelCard, spacing_mm: float) -> ModelCard:
    """A copy of ``card`` whose window has voxels of ``spacing_mm`` (a finer window for small structures).

    Raises:
        ConfigError: ``spacing_mm`` is not a finite number above 0.
    """
    value = float(spacing_mm)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"the window spacing must be a number of millimetres above 0 like 0.75, got {spacing_mm!r}")
    return dataclasses.replace(card, spacing_mm=value)


def window_card(model: Any, spacing_mm: float | None) -> ModelCard | None:
    """``model``'s card (or the official one for weights without a card) with windows of
    ``spacing_mm``, for ``Session(card=...)``; None when ``spacing_mm`` is None (keep the model's)."""
    if spacing_mm is None:
        return None
    return with_window_spacing(getattr(model, "card", None) or official_card(config=model.config), spacing_mm)


def official_card(name: str = "sam_med3d_turbo", config: dict[str, Any] | None = None) -> ModelCard:
    """Card describing the official SAM-Med3D preprocessing, for files that carry no card."""
    return ModelCard(
        name=name,
        config=copy.deepcopy(config if config is not None else VIT_B_ORI),
        spacing_mm=DEFAULT_SPACING_MM,
        normalization="zscore_nonzero",
        description="Official SAM-Med3D weights (uni-medical/SAM-Med3D)",
        training_data=["SA-Med3D-140K (official)"],
        license="Apache-2.0",
        source="https://github.com/uni-medical/SAM-Med3D",
    )
