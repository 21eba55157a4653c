"""The run folder's training states: their names and how they are read back.

A state (``last.pt``, ``best.pt``) holds the model (unwrapped from DDP), optimizer, scheduler,
scaler, step, best validation Dice, torch RNG states, the configuration and the history (see
:meth:`training.trainer.Trainer.state_dict`). The trainer writes them atomically (temp file +
``os.replace``); this module reads them with ``torch.load(weights_only=True)``, so a state file
can never run code, and turns every failure into a :class:`~SAMMed3DLib.errors.CheckpointError`
that says what to do.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from SAMMed3DLib.errors import CheckpointError

logger = logging.getLogger(__name__)

#: Name of the resumable training state inside the run folder.
LAST = "last.pt"
#: Model weights with the best validation Dice so far (same layout as ``last.pt``).
BEST = "best.pt"


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state written by :class:`Trainer` (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}; the file may be truncated — use best.pt or start a new run") from exc
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a training state of this trainer (keys: {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    return state


__all__ = ["BEST", "LAST", "load_state"]
