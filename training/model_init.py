"""The model a run starts from: random weights, or an ``--init`` checkpoint, upgraded as asked.

:func:`initial_model` builds ``--model-config`` with random weights, or loads ``--init`` (any
checkpoint :func:`SAMMed3DLib.checkpoint.load_model` reads, with its card; the trainer then checks
that card against the cache's window spec), and applies the upgrades the configuration asks for:

* ``--fine-head`` adds a new fine head (:data:`SAMMed3DLib.model.fine_head.NEW_FINE_HEAD`) to a
  model without one;
* ``--geodesic`` gives an ``--init`` model's head geodesic click maps as two more inputs (weights
  copied, the new inputs' weights start at zero, so training starts from what the head already
  does);
* ``--pe-matrix swap_closed`` redraws the position-encoding matrix (:func:`make_pe_swap_closed`).

``cfg.model_config`` is updated to the model actually built, so the saved ``config.json`` and
the exported card describe it.
"""

from __future__ import annotations

import copy
import logging

import torch

from SAMMed3DLib.errors import ConfigError
from SAMMed3DLib.model import Sam3D, build_sam3d
from SAMMed3DLib.model.build import normalize_config
from SAMMed3DLib.model.fine_head import NEW_FINE_HEAD, FineHead, add_geodesic_inputs

from .config import TrainConfig

logger = logging.getLogger(__name__)


def make_pe_swap_closed(model: Sam3D) -> None:
    """Redraw the prompt encoder's random-Fourier matrix as column pairs (u, v, w), (v, u, w).

    The official position encodings disagree (facts file §4): the dense image encoding of cell
    (a, b, c) equals the sparse encoding of a click at (b, a, c). With an ordinary random
    matrix G the features of a swapped point, sin/cos(2π·Gᵀ·swap(p)), are no linear function of
    those of p, so the decoder cannot match a click to its image position by a learned linear
    map of the encodings, and a model trained from scratch learns to ignore where the click is
    (observed: after 1,200 steps of the first default-model run the predicted mask did not move
    with the click). When every column (u, v, w) of G has a partner (v, u, w), swapping the
    point's first two components permutes the feature columns — a linear map the attention
    projections absorb. The matrix is a persistent buffer stored in every checkpoint, so the
    model and its inference path stay exactly the official ones; only the drawn values differ.
    Whether this speeds up learning is not established yet: on a toy task (two identical balls,
    32³ input, 2³ tokens) the official random matrix learned to follow the click within ~800
    steps and the paired one had not after 1,000 — too coarse a grid to decide, hence opt-in.
    Draws from torch's global generator (seed it for reproducibility).
    """
    pe = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    n = pe.shape[1]
    half = torch.randn((3, (n + 1) // 2), dtype=pe.dtype)
    paired = torch.cat([half, half[[1, 0, 2]]], dim=1)[:, :n]
    with torch.no_grad():
        pe.copy_(paired.to(pe.device))


def initial_model(cfg: TrainConfig) -> Sam3D:
    """Random weights of ``cfg.model_config``, or the weights of ``cfg.init`` (any loadable checkpoint).

    ``cfg.pe_matrix == "swap_closed"`` redraws the position-encoding matrix with
    :func:`make_pe_swap_closed` (after loading ``--init`` weights too).
    """
    if not cfg.init:
        model = build_sam3d(cfg.model_config)
    else:
        try:
            from SAMMed3DLib.checkpoint import load_model
        except ImportError as exc:  # pragma: no cover - the checkpoint module ships with the core
            raise ConfigError("--init needs SAMMed3DLib.checkpoint.load_model, which is missing from this installation") from exc
        model = load_model(cfg.init, device="cpu")
        cfg.model_config = dict(model.config)
    if cfg.fine_head and not model.has_fine_head:
        cfg.model_config = normalize_config({**cfg.model_config, "fine_head": dict(NEW_FINE_HEAD)})
        model.fine_head = FineHead(model.img_size, **cfg.model_config["fine_head"])
        model.config = copy.deepcopy(cfg.model_config)
    if cfg.geodesic and model.has_fine_head and not model.fine_head.geodesic:
        # warm start: the head keeps its weights; the new inputs start with zero weights
        head = model.fine_head = add_geodesic_inputs(model.fine_head)
        geodesic = {"geodesic_reach": float(head.geodesic_reach), "geodesic_weight": float(head.geodesic_weight)}
        cfg.model_config = normalize_config({**cfg.model_config, "fine_head": {**cfg.model_config["fine_head"], **geodesic}})
        model.config = copy.deepcopy(cfg.model_config)
    if cfg.pe_matrix == "swap_closed":
        make_pe_swap_closed(model)
    return model


__all__ = ["initial_model", "make_pe_swap_closed"]
