"""Training package: data preparation, samples, simulated interaction, DDP trainer, export.

* :mod:`training.prepare` — ``python -m training.prepare``: the paper's cleaning steps and an
  RAS-canonical cache on the grid of a model card's window spec (which ``index.json`` records).
* :mod:`training.dataset` — random structure windows with flips and intensity augmentation.
* :mod:`training.trainer` — :class:`Trainer` (``python -m training``, ``torchrun -m training``).
* :mod:`training.config` — :class:`TrainConfig`, the shipped model's ``DEFAULT_MODEL_CONFIG``.

``training`` imports ``SAMMed3DLib`` (model, clicks, metrics, preprocessing), never the reverse.
"""

from __future__ import annotations

from .config import DEFAULT_MODEL_CONFIG, TrainConfig

__all__ = ["DEFAULT_MODEL_CONFIG", "TrainConfig"]
