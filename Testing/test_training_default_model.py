"""The shipped default model: file size, card, registry loading, and quality on held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.checkpoint import load_model
from SAMMed3DLib.model import normalize_config
from training.config import DEFAULT_MODEL_CONFIG

MODELS = Path(__file__).resolve().parents[1] / "SAMMed3DLib" / "Resources" / "Models"
#: Shipped with the package: fp32 weights of the 6.14 M-parameter model must stay under this.
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
    assert card.extra["step"] > 0 and card.config["prompt_encoder"]["click_maps"] is True
    assert card.config["fine_head"] == normalize_config(DEFAULT_MODEL_CONFIG)["fine_head"]
    # the comparison the card makes must be like for like: same click counts, same cases
    grow = card.metrics["baseline_grow_from_seeds"]
    assert set(grow["dice"]) == set(card.metrics["dice"]) and "same cases, protocol and seed" in grow["method"]
    assert {r["case"] for r in card.metrics["per_structure"]} == held_out
    bare = card.metrics["without_fine_head"]
    assert set(bare["dice"]) == set(card.metrics["dice"]) and "same cases, protocol and seed" in bare["note"]


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


@pytest.mark.data
@pytest.mark.slow
def test_default_model_beats_grow_from_seeds_after_one_and_three_clicks(shared_data):
    """The held-out comparison of the card, rerun: the model must beat Slicer's classic tool early.

    The validation cases are large structures (tumours, sarcomas, heart): after one click the
    default session sees them in a fine window (:mod:`SAMMed3DLib.scale`), which suits small
    structures and loses there; so one click is compared at the card's spacing, three clicks
    (by which the session has seen them spread) in the default session.
    """
    from SAMMed3DLib.evaluate import evaluate

    card = _card()
    model = load_model("default", device="cpu")
    cases = card.metrics["validation_cases"]
    fixed = evaluate(shared_data, model=model, cases=cases, clicks=[1], click_mode="random", seed=0, adaptive_scale=False)
    default = evaluate(shared_data, model=model, cases=cases, clicks=[3], click_mode="random", seed=0)
    mean = {1: float(np.mean([r.dice for r in fixed.rows])), 3: float(np.mean([r.dice for r in default.rows]))}
    grow = card.metrics["baseline_grow_from_seeds"]["dice"]
    # measured when shipping the adaptive scale (2026-12-03): 0.35 (fixed) / 0.47 against Grow from seeds' 0.21 / 0.28
    assert mean[1] > grow["1"] + 0.05 and mean[3] > grow["3"] + 0.05, json.dumps({"model": mean, "grow": grow})


@pytest.mark.data
@pytest.mark.slow
def test_the_adaptive_scale_segments_small_unseen_structures_better_after_one_click(shared_data):
    """The 20 vertebral levels of the PAM50 cord (15-30 mm, a case no training stage saw): fine first pays."""
    from SAMMed3DLib.evaluate import evaluate

    model = load_model("default", device="cpu")
    mean = {}
    for adaptive in (True, False):
        result = evaluate(shared_data, model=model, cases=["pam50_t2_levels"], clicks=[1], seed=0, adaptive_scale=adaptive)
        mean[adaptive] = float(np.mean([r.dice for r in result.rows]))
    # measured when shipping (2026-12-03): 0.38 against 0.17 at the card's 1.5 mm
    assert mean[True] > mean[False] + 0.1, json.dumps(mean)


@pytest.mark.data
@pytest.mark.slow
def test_the_fine_head_improves_held_out_corrections(shared_data):
    """The same network with and without its fine head, on the held-out cases after 5 and 10 clicks."""
    from SAMMed3DLib.evaluate import evaluate

    cases = _card().metrics["validation_cases"]
    with_head = load_model("default", device="cpu")
    without = load_model("default", device="cpu")
    without.fine_head = None  # the decoder's 32³ logits are pasted as they are
    mean = {}
    for name, model in (("with", with_head), ("without", without)):
        result = evaluate(shared_data, model=model, cases=cases, clicks=[5, 10], click_mode="random", seed=0)
        mean[name] = float(np.mean([r.dice for r in result.rows]))
    # measured when shipping (head step 2,000): 0.49 with the head, 0.42 without (mean of 5 and 10 clicks)
    assert mean["with"] > mean["without"] + 0.02, json.dumps(mean)
