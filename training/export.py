"""Exporting a run: its weights with a model card that records what they were measured to do.

:func:`export_run` reads ``last.pt``/``best.pt`` of a run, measures the validation protocol on
the held-out windows (:func:`training.interaction.evaluate_windows`) and, given the raw case
folders, the evaluation harness on the original image grids
(:func:`SAMMed3DLib.evaluate.evaluate`, through the interactive session); then it writes the
weights and the card (:func:`export_model`: ``SAMMed3DLib.checkpoint.save_model`` plus the card
as ``<path>.json``, the layout shipped next to ``default.pth``).

The exported card is the run's card (built by the trainer from the cache's window spec and the
model configuration) with the description, training data, metrics and provenance filled in, so
the preprocessing facts of the export are the ones the model was trained with.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.model import Sam3D, build_sam3d

from .checkpoints import LAST, load_state
from .config import TrainConfig
from .interaction import evaluate_windows

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger(__name__)


def export_model(model: Sam3D, path: Path, card: ModelCard, extra: dict[str, Any] | None = None) -> Path:
    """Write the model with its card (``SAMMed3DLib.checkpoint.save_model``) and ``<path>.json``.

    The JSON beside the weights is the card shipped next to ``default.pth``.
    """
    from SAMMed3DLib.checkpoint import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, path, card=card, extra=extra, card_json=True)


def harness_metrics(model: Sam3D, eval_data: str | Path, cfg: TrainConfig, clicks: Sequence[int]) -> dict[str, Any]:
    """Mean Dice/NSD of ``sammed3d evaluate`` on the validation cases, per click count.

    Args:
        model: the exported network, with its card as ``model.card`` (the session needs it).
        eval_data: the raw case folders the cache was prepared from.
        cfg: the run's configuration (validation cases, click mode, seed).
        clicks: click counts to report.

    Returns:
        ``dice``, ``nsd``, ``protocol`` and ``per_structure`` entries for the card's metrics.
    """
    from SAMMed3DLib.evaluate import evaluate

    result = evaluate(eval_data, model=model, cases=cfg.val_cases, clicks=clicks, click_mode=cfg.click_mode, seed=cfg.seed)
    return {
        "dice": {str(k): v for k, v in result.mean_dice().items()},
        "nsd": {str(k): v for k, v in result.mean_nsd().items()},
        "protocol": f"sammed3d evaluate: {cfg.click_mode} clicks, seed {cfg.seed}, Dice/NSD on the original image grid through the session, mean over the validation structures",
        "per_structure": [{"case": r.case, "structure": r.name, "clicks": r.clicks, "dice": r.dice, "nsd": r.nsd} for r in result.rows],
    }


def export_run(
    trainer: Trainer,
    path: Path,
    weights: str = LAST,
    clicks: Sequence[int] | None = None,
    name: str = "default",
    description: str = "",
    eval_data: str | Path | None = None,
) -> ModelCard:
    """Export ``weights`` (``last.pt``/``best.pt`` of the trainer's run) with a model card and measured Dice.

    Runs the validation protocol with ``clicks`` (default ``export_clicks``: 1, 3, 5, 10) and
    records it in the card's metrics. With ``eval_data`` (the raw case folders the cache was
    prepared from), the card's ``dice``/``nsd`` come from the evaluation harness instead; the
    window numbers stay under ``window_dice``. Writes ``path`` and the card as ``path`` with ``.json``.

    Args:
        trainer: the run (its folder, configuration, card, device, validation windows and cases).
        path: the ``.pth`` file to write.
        weights: ``last.pt`` or ``best.pt``.
        clicks: click counts to measure.
        name: the card's model name.
        description: the card's description (default: one naming the steps).
        eval_data: raw case folders for the harness numbers, or None.

    Returns:
        The card written.
    """
    cfg = trainer.cfg
    state = load_state(trainer.out / weights)
    step = int(state["step"])
    model = build_sam3d(cfg.model_config)
    model.load_state_dict(state["model"])
    model.to(trainer.device).eval()
    clicks = list(clicks or cfg.export_clicks)
    metrics: dict[str, Any] = {}
    if trainer.val_samples:
        result = evaluate_windows(model, trainer.val_samples, clicks, seed=cfg.seed, mode=cfg.click_mode, device=trainer.device)
        metrics = {
            "dice": result["dice"],
            "protocol": f"{cfg.click_mode} clicks on the {trainer.card.input_size}³ window centred on each held-out structure, all clicks + previous logits fed back",
            "validation_cases": list(cfg.val_cases),
            "per_structure": result["per_structure"],
        }
        if eval_data is not None:
            model.card = trainer.card
            metrics.update({"window_dice": dict(result["dice"]), **harness_metrics(model, eval_data, cfg, clicks)})
    card = dataclasses.replace(
        trainer.card,
        name=name,
        config=cfg.model_config,
        description=description or f"Small SAM-Med3D trained by training/ of this repository ({step} steps)",
        training_data=list(trainer.train_cases),
        metrics=metrics,
        license="Apache-2.0 (weights); training data under their own terms, see shared/data/README.md",
        source="trained by training/ of this repository",
        extra={"training_config": cfg.to_dict(), "step": step, "weights": weights},
    )
    if trainer.synthetic_cases:
        sets: dict[str, int] = {}
        for case in trainer.synthetic_cases:
            sets[case.split("/", 1)[0]] = sets.get(case.split("/", 1)[0], 0) + 1
        card.extra["synthetic"] = {"fraction": cfg.synthetic_fraction, "modes": cfg.synthetic_modes, "label_maps_per_set": sets}
    export_model(model.cpu(), path, card, extra={"step": step})
    logger.info("exported %s (step %d) to %s", weights, step, path)
    return card


__all__ = ["export_model", "export_run", "harness_metrics"]
