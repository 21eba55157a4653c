"""The shipped default model: file size, card, registry loading, and quality on held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.checkpoint import load_model
from SAMMed3DLib.model import normalize_config
from training.config import DEFAULT_MODEL_CONFIG

MODELS = Path(__file__).resolve().parents[1] / "SAMMed3D" / "SAMMed3DLib" / "Resources" / "Models"
#: Shipped with the package: fp32 weights of a 6.05 M-parameter model must stay under this.
MAX_BYTES = 25_000_000


def _card() -> ModelCard:
    return ModelCard.from_json((MODELS / "default.json").read_text(encoding="utf-8"))


def test_default_model_is_small_and_its_card_matches_the_weights():
    assert (MODELS / "default.pth").stat().st_size < MAX_BYTES
    card = _card()
    model = load_model("default", device="cpu")
    assert model.card.to_dict() == card.to_dict()
    assert model.card.config == normalize_config(DEFAULT_MODEL_CONFIG) == model.config
    assert card.spacing_mm == 1.5 and card.normalization == "zscore_nonzero" and card.intensity_clip is None
    assert card.source == "trained by training/ of this repository"


def test_default_model_card_reports_held_out_dice_and_its_data():
    card = _card()
    assert set(card.metrics["dice"]) == {"1", "3", "5", "10"}
    assert all(0.0 <= v <= 1.0 for v in card.metrics["dice"].values())
    held_out = set(card.metrics["validation_cases"])
    assert len(held_out) == 4 and not held_out & set(card.training_data)
    assert card.extra["step"] > 0 and "interim" in card.description


@pytest.mark.data
@pytest.mark.slow
def test_default_model_segments_a_held_out_organ(shared_data):
    from SAMMed3DLib.evaluate import evaluate

    held_out = _card().metrics["validation_cases"]
    assert "ts_ct_pulmonary" in held_out  # never seen in training
    model = load_model("default", device="cpu")
    result = evaluate(shared_data, model=model, cases=["ts_ct_pulmonary"], labels=["heart"], clicks=[1, 5], click_mode="center")
    by_clicks = {r.clicks: r.dice for r in result.rows}
    # measured when shipping the interim model (300 steps): 0.37 after 1 click, 0.40 after 5;
    # the bound leaves room for kernel differences and holds for any better default model
    assert by_clicks[5] > 0.3, json.dumps(by_clicks)
