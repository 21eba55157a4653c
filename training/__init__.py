"""Training package: data preparation, samples, simulated interaction, DDP trainer, export.

* :mod:`training.prepare` — ``python -m training.prepare``: the paper's cleaning steps and an
  RAS-canonical cache on the grid of a model card's window spec (which ``index.json`` records).
* :mod:`training.dataset` — random structure windows with flips and intensity augmentation.
* :mod:`training.cleaning` — the paper's cleaning steps as pure functions (used by ``prepare``).
* :mod:`training.interaction` — simulated click rounds (:class:`ClickLoop`) and window validation.
* :mod:`training.model_init` — the starting model: random, or ``--init`` weights and upgrades.
* :mod:`training.trainer` — :class:`Trainer` (``python -m training``, ``torchrun -m training``).
* :mod:`training.checkpoints` — the run folder's training states (``last.pt``, ``best.pt``).
* :mod:`training.export` — a run's weights with a measured model card.
* :mod:`training.config` — :class:`TrainConfig`, the shipped model's ``DEFAULT_MODEL_CONFIG``.

``training`` imports ``SAMMed3DLib`` (model, clicks, metrics, preprocessing), never the reverse.
"""

from __future__ import annotations

from .config import DEFAULT_MODEL_CONFIG, TrainConfig

__all__ = ["DEFAULT_MODEL_CONFIG", "TrainConfig"]
