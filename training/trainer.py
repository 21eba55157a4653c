"""The training loop: simulated interactive segmentation, DDP, AMP, checkpoints, export.

One optimizer step (per rank, per micro-batch of ``batch_size`` samples):

1. The image encoder runs once on the batch of windows (128³ for the default card; the size, the
   spacing and the orientation come from the cache's window spec, which an ``--init`` model's
   card and ``--model-config`` must match).
2. ``rounds`` rounds of interaction follow (:class:`ClickLoop`): round 0 puts the first,
   positive click inside the structure and feeds an all-zero 32³ mask prompt, as inference does;
   each later round either adds a click sampled from the error region of the current prediction
   (positive on a false negative; one :class:`SAMMed3DLib.clicks.SimulatedUser` per sample, the
   simulator of the evaluation harness, repeating its last click on a perfect prediction) or is
   a *mask-only* round (no points, the previous logits alone — ``mask_only_rounds`` random rounds
   plus, by default, the last round, as the official ``train.py`` does). The previous round's
   low-res logits are fed back **detached** (the simulated user sees them; no gradient flows
   through the history). With ``all_clicks`` (default) every click so far is passed, as our
   :class:`SAMMed3DLib.session.Session` and the evaluation harness do at inference; the official
   trainer passes the newest click only.
3. Loss: MONAI ``DiceCELoss(sigmoid=True)`` of every round's logits **upsampled to the window**
   (trilinear, ``align_corners=False`` — exactly what inference thresholds) against the
   full-resolution mask, averaged over rounds. Upsampled rather than low-res vs downsampled
   ground truth because thin and small structures (vessels, lesions of a few voxels) vanish or
   change shape at 32³, and the official ``train.py`` supervises the upsampled masks too; the
   cost is small (a 2 M-voxel loss per round, measured inside the 0.65 s of a sample).

With a fine head (``--fine-head``, :mod:`SAMMed3DLib.model.fine_head`) each round also runs the
head on the decoder's logits, the next click is drawn from the head's mask (what the user sees)
and the head's upsampled logits get the same loss; ``--train-only-fine-head`` freezes everything
else (the encoder and decoder then run without autograd), and ``--fine-grad-rounds N`` trains
the head's output in N random rounds per step only (its backward on 64³ is the costly part).
``--geodesic`` gives an ``--init`` model's head geodesic click maps as two more inputs (weights
copied, the new inputs' weights start at zero, so training starts from what the head already does).

Everything random is derived from ``(seed, step, rank, item)`` (see :mod:`training.dataset`), so
``--resume`` from ``last.pt`` (model, optimizer, scaler, scheduler, step, torch RNG states)
continues bit-for-bit. Rank 0 alone logs, validates and writes checkpoints (atomically: temp
file + ``os.replace``); checkpoints are read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.clicks import SimulatedUser
from SAMMed3DLib.devices import resolve_device
from SAMMed3DLib.errors import CheckpointError, ConfigError
from SAMMed3DLib.metrics import dice
from SAMMed3DLib.model import Sam3D, build_sam3d
from SAMMed3DLib.model.build import normalize_config
from SAMMed3DLib.model.fine_head import NEW_FINE_HEAD, FineHead, add_geodesic_inputs

from . import distributed as D
from .config import TrainConfig
from .dataset import StructureSamples, TrainingCache, check_card_fits_cache, validation_samples

logger = logging.getLogger(__name__)

#: Name of the resumable training state inside the run folder.
LAST = "last.pt"
#: Model weights with the best validation Dice so far (same layout as ``last.pt``).
BEST = "best.pt"


# --------------------------------------------------------------------------------------------
# Interaction simulation
# --------------------------------------------------------------------------------------------


def prompt_tensors(users: Sequence[SimulatedUser], device: torch.device | str, newest_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's point prompt from each batch item's simulated user.

    Args:
        users: one user per batch item, each with the same number of clicks.
        device: where the tensors go.
        newest_only: pass each user's newest click only (the official trainer) instead of all.

    Returns:
        ``(coords, labels)``: float32 (B, N, 3) window indices and int64 (B, N) point labels.
    """
    sel = slice(-1, None) if newest_only else slice(None)
    coords = torch.tensor([u.indices[sel] for u in users], dtype=torch.float32, device=device)
    labels = torch.tensor([u.labels[sel] for u in users], dtype=torch.int64, device=device)
    return coords, labels


def mask_only_plan(rounds: int, n_random: int, last_mask_only: bool, rng: np.random.Generator) -> set[int]:
    """Rounds (0-based) that pass no points: ``n_random`` random rounds in 1..rounds−2, plus the last."""
    plan: set[int] = set()
    last = rounds - 1
    if last_mask_only and rounds > 1:
        plan.add(last)
    candidates = [r for r in range(1, rounds) if r not in plan]
    if n_random and candidates:
        plan.update(int(r) for r in rng.choice(candidates, size=min(n_random, len(candidates)), replace=False))
    return plan


class ClickLoop(nn.Module):
    """Sam3D plus the simulated user: one forward = encoder once + ``rounds`` decoder rounds.

    Wrapping the whole interaction in one ``forward`` lets DDP synchronise gradients of every
    sub-module (DDP hooks run only through ``forward``).
    """

    def __init__(self, model: Sam3D, click_mode: str = "random", all_clicks: bool = True) -> None:
        super().__init__()
        self.model = model
        self.click_mode = click_mode
        self.all_clicks = all_clicks
        self.loss_fn = DiceCELoss(sigmoid=True)

    def _trainable(self, prefix_in_head: bool) -> bool:
        """Whether any parameter of the fine head (True) / of the rest of the model (False) trains."""
        return any(p.requires_grad for n, p in self.model.named_parameters() if n.startswith("fine_head.") == prefix_in_head)

    def forward(
        self,
        images: torch.Tensor,
        gts: torch.Tensor,
        rngs: Sequence[np.random.Generator],
        mask_only: set[int],
        rounds: int,
        fine_rounds: set[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one simulated interaction.

        With a fine head the next clicks come from the head's mask (what the user would see);
        the loss is the decoder's (if it trains) plus the head's (if it trains, in
        ``fine_rounds`` only — None = every round: the head's backward is the costly part).

        Args:
            images: (B, 1, W, W, W) float32 normalised windows, axes (R, A, S) (or flipped).
            gts: (B, 1, W, W, W) uint8/float ground-truth masks on the same grid.
            rngs: one numpy Generator per batch item (click sampling).
            mask_only: rounds that pass no points.
            rounds: number of decoder rounds.
            fine_rounds: rounds whose fine-head output is trained (None = all).

        Returns:
            Mean loss over the trained rounds (scalar) and the last round's upsampled logits
            (B, 1, W, W, W) (the head's, if any).
        """
        b = images.shape[0]
        size = images.shape[-3:]
        head = self.model.has_fine_head
        sam_trains = self._trainable(False)
        head_trains = head and self._trainable(True)
        with torch.set_grad_enabled(sam_trains and torch.is_grad_enabled()):
            emb = self.model.image_encoder(images)
        prev = torch.zeros((b, 1, *self.model.low_res_size), dtype=emb.dtype, device=emb.device)
        gt_f = gts.float()
        gt_np = gts[:, 0].bool().cpu().numpy()
        pred_np = np.zeros_like(gt_np)
        users = [SimulatedUser(gt_np[i], rngs[i], self.click_mode) for i in range(b)]
        total = images.new_zeros(())
        terms = 0
        up = None
        for r in range(rounds):
            if r in mask_only:
                pts = lbl = None
            else:
                for user, pred in zip(users, pred_np):
                    user.click_or_repeat(pred)  # a perfect prediction: the user repeats the last click
                pts, lbl = prompt_tensors(users, images.device, newest_only=not self.all_clicks)
            with torch.set_grad_enabled(sam_trains and torch.is_grad_enabled()):
                low, _ = self.model.predict_low_res(emb, pts, lbl, prev)
            up = F.interpolate(low.float(), size=size, mode="trilinear", align_corners=False)
            if sam_trains:
                total = total + self.loss_fn(up, gt_f)
                terms += 1
            if head:
                grad = head_trains and (fine_rounds is None or r in fine_rounds) and torch.is_grad_enabled()
                with torch.set_grad_enabled(grad):
                    fine = self.model.refine(images, low if sam_trains else low.detach(), pts, lbl)
                    up = F.interpolate(fine.float(), size=size, mode="trilinear", align_corners=False)
                if grad:
                    total = total + self.loss_fn(up, gt_f)
                    terms += 1
            prev = low.detach()
            pred_np = (up.detach() > 0)[:, 0].cpu().numpy()
        return total / max(terms, 1), up  # type: ignore[return-value]  # rounds ≥ 1 (TrainConfig)


@torch.no_grad()
def evaluate_windows(
    model: Sam3D,
    samples: Sequence[dict[str, Any]],
    clicks: Sequence[int],
    seed: int = 0,
    mode: str = "random",
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Dice after ``clicks`` simulated clicks on centred windows (the in-training validation).

    The protocol is the evaluation harness's on the model window: first click random inside the
    structure, each next click random in the error region, all clicks so far plus the previous
    low-res logits (zeros first) fed to the decoder, Dice of the upsampled mask (logit > 0)
    against the window's ground truth.

    Args:
        model: the network (put in eval mode here, restored after).
        samples: from :func:`training.dataset.validation_samples`.
        clicks: click counts to report (e.g. 1, 3, 5).
        seed: click RNG seed (item i uses ``default_rng([seed, i])``).
        mode: click mode.
        device: where to run.

    Returns:
        ``{"dice": {"1": mean, ...}, "per_structure": [{case, structure, dice: {...}}]}``.
    """
    was_training = model.training
    model.eval()
    device = resolve_device(device)
    n_max = max(clicks)
    per = []
    for i, s in enumerate(samples):
        rng = np.random.default_rng([seed, i])
        gt = s["gt"]
        emb = model.image_encoder(s["image"][None].to(device))
        prev = torch.zeros((1, 1, *model.low_res_size), device=device)
        pred = np.zeros_like(gt)
        user = SimulatedUser(gt, rng, mode)
        scores: dict[str, float] = {}
        for k in range(1, n_max + 1):
            user.click_or_repeat(pred)
            coords, labels = prompt_tensors([user], device)
            prev, _ = model.predict_low_res(emb, coords, labels, prev)
            shown = model.refine(s["image"][None].to(device), prev, coords, labels)
            up = F.interpolate(shown.float(), size=gt.shape, mode="trilinear", align_corners=False)
            pred = (up[0, 0] > 0).cpu().numpy()
            if k in clicks:
                scores[str(k)] = float(dice(pred, gt))
        per.append({"case": s["case"], "structure": s["structure"], "dice": scores})
    model.train(was_training)
    mean = {str(k): float(np.mean([p["dice"][str(k)] for p in per])) for k in clicks}
    return {"dice": mean, "per_structure": per}


# --------------------------------------------------------------------------------------------
# Optimisation helpers
# --------------------------------------------------------------------------------------------


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): warm-up, then cyclic step decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    cycle = cfg.cycle_steps or cfg.max_steps
    pos = (step % cycle) / cycle
    return cfg.decay_gamma ** sum(pos >= f for f in cfg.decay_at)


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state written by :class:`Trainer` (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}; the file may be truncated — use best.pt or start a new run") from exc
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a training state of this trainer (keys: {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    return state


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


def export_model(model: Sam3D, path: Path, card: ModelCard, extra: dict[str, Any] | None = None) -> Path:
    """Write the model with its card (``SAMMed3DLib.checkpoint.save_model``) and ``<path>.json``.

    The JSON beside the weights is the card shipped next to ``default.pth``.
    """
    from SAMMed3DLib.checkpoint import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, path, card=card, extra=extra, card_json=True)


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Owns one run: model, optimizer, data, run folder. See the module docstring.

    Args:
        cfg: the run's configuration (saved as ``config.json`` in ``cfg.out``).
        resume: continue from ``cfg.out/last.pt``.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.info = D.env_info()
        self.out = Path(cfg.out)
        if resume and not (self.out / LAST).is_file():  # before anything else can fail
            raise CheckpointError(f"cannot resume: {self.out / LAST} does not exist; start without --resume or check --out")
        # one CUDA device per DDP process (LOCAL_RANK); the trainer does not run on MPS
        self.device = resolve_device(cfg.device, cuda_index=self.info.local_rank, allow_mps=False)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        D.init(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        # the cache's window spec (spacing, input size, orientation) is the run's: an --init
        # model must have been made for it, and so must --model-config
        cache_train = TrainingCache(cfg.cache, exclude=cfg.val_cases)
        torch.manual_seed(cfg.seed)
        model = initial_model(cfg)
        if cfg.init:
            check_card_fits_cache(model.card, cache_train, f"--init {cfg.init}")
        self.card = ModelCard(name="run", config=cfg.model_config, spacing_mm=cache_train.spacing_mm)
        check_card_fits_cache(self.card, cache_train, "--model-config")
        if cfg.freeze_encoder:
            for p in model.image_encoder.parameters():
                p.requires_grad_(False)
        if cfg.train_only_fine_head:
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("fine_head."))
        model.to(self.device).train()
        self.model = model
        loop: nn.Module = ClickLoop(model, cfg.click_mode, cfg.all_clicks)
        if self.info.enabled:
            loop = nn.parallel.DistributedDataParallel(
                loop,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # IoU head, box embeddings, no_mask_embed get no gradient
            )
        self.loop = loop
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda" and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif self.device.type == "cpu" and cfg.bf16_cpu:
            self.amp_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best_dice = -1.0
        self.history: list[dict[str, Any]] = []

        self.train_cases = cache_train.case_ids
        self.dataset = StructureSamples(
            cache_train, self.card, cfg.samples_per_epoch, cfg.seed, cfg.flip_prob, cfg.intensity_prob,
            cfg.intensity_scale, cfg.intensity_shift, cfg.noise_std,
        )
        self.val_samples: list[dict[str, Any]] = []
        if cfg.val_cases and self.info.is_main:
            self.val_samples = validation_samples(TrainingCache(cfg.cache, cases=cfg.val_cases), self.card)
        self.sampler = DistributedSampler(
            self.dataset, num_replicas=self.info.world_size, rank=self.info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        if resume:
            self._load(self.out / LAST)
        if self.info.is_main:  # on resume too: flags such as --max-steps may have changed
            cfg.save(self.out / "config.json")
        self.writer = None
        if self.info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                logger.info("tensorboard is not installed; scalars go to the log and history.json only")

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (model unwrapped from DDP)."""
        state = {
            "model": D.unwrap(self.loop).model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_dice": self.best_dice,
            "torch_rng": torch.get_rng_state(),
            "config": json.dumps(self.cfg.to_dict()),
            "history": json.dumps(self.history),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save(self, name: str = LAST) -> Path | None:
        """Write the training state atomically (rank 0 only)."""
        if not self.info.is_main:
            return None
        path = self.out / name
        _atomic_save(self.state_dict(), path)
        return path

    def _load(self, path: Path) -> None:
        state = load_state(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_dice = float(state["best_dice"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        logger.info("resumed from %s at step %d", path, self.step)

    # -- data ----------------------------------------------------------------------------------

    def _batches(self):
        """Micro-batches from the current step on, epoch after epoch (deterministic order)."""
        cfg = self.cfg
        per_rank = len(self.sampler)
        consumed = self.step * cfg.grad_accum * cfg.batch_size
        epoch, offset = divmod(consumed, per_rank)
        while True:
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            order = list(iter(self.sampler))[offset:]
            loader = DataLoader(
                self.dataset, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.num_workers,
                drop_last=True, persistent_workers=False,
            )
            yield from loader
            epoch, offset = epoch + 1, 0

    # -- training ------------------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(self, micro_batches: Sequence[dict[str, Any]]) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss (this rank)."""
        cfg = self.cfg
        plan_rng = np.random.default_rng([cfg.seed, self.step, 1_000_003])
        mask_only = mask_only_plan(cfg.rounds, cfg.mask_only_rounds, cfg.last_round_mask_only, plan_rng)
        fine_rounds = None
        if 0 < cfg.fine_grad_rounds < cfg.rounds:
            fine_rounds = {int(r) for r in plan_rng.choice(cfg.rounds, size=cfg.fine_grad_rounds, replace=False)}
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for m, batch in enumerate(micro_batches):
            rngs = [np.random.default_rng([cfg.seed, self.step, self.info.rank, m, i]) for i in range(batch["image"].shape[0])]
            images = batch["image"].to(self.device, non_blocking=True)
            gts = batch["gt"].to(self.device, non_blocking=True)
            last = m == len(micro_batches) - 1
            sync = contextlib.nullcontext() if (last or not self.info.enabled) else self.loop.no_sync()
            with sync:
                with self._autocast():
                    loss, _ = self.loop(images, gts, rngs, mask_only, cfg.rounds, fine_rounds)
                self.scaler.scale(loss / len(micro_batches)).backward()
            losses.append(float(loss.detach()))
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return float(np.mean(losses))

    def validate(self, clicks: Sequence[int] | None = None) -> dict[str, Any] | None:
        """Validation Dice on the held-out windows (rank 0; None without validation cases)."""
        if not self.val_samples:
            return None
        t0 = time.perf_counter()
        with self._autocast():
            result = evaluate_windows(self.model, self.val_samples, clicks or self.cfg.val_clicks, seed=self.cfg.seed, mode=self.cfg.click_mode, device=self.device)
        logger.info("step %d validation Dice %s (%.1f s)", self.step, result["dice"], time.perf_counter() - t0)
        return result

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``; returns the last validation result (rank 0) or {}."""
        cfg = self.cfg
        batches = self._batches()
        bar = None
        if self.info.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        last_val: dict[str, Any] = {}
        t_log, n_log, loss_acc = time.perf_counter(), 0, 0.0
        while self.step < cfg.max_steps:
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            loss = self.train_step(micro)
            loss_acc += loss
            n_log += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self.step % cfg.log_every == 0:
                mean_loss = D.all_reduce_mean(loss_acc / n_log, self.device)
                dt = time.perf_counter() - t_log
                sps = n_log * cfg.grad_accum * cfg.batch_size * self.info.world_size / dt
                if self.info.is_main:
                    rec = {"step": self.step, "loss": mean_loss, "lr": self.scheduler.get_last_lr()[0], "samples_per_s": sps, "time": time.time()}
                    self.history.append(rec)
                    logger.info("step %d loss %.4f lr %.2e %.2f samples/s", self.step, mean_loss, rec["lr"], sps)
                    if self.writer is not None:
                        self.writer.add_scalar("train/loss", mean_loss, self.step)
                        self.writer.add_scalar("train/lr", rec["lr"], self.step)
                        self.writer.add_scalar("train/samples_per_s", sps, self.step)
                t_log, n_log, loss_acc = time.perf_counter(), 0, 0.0
            if self.step % cfg.val_every == 0 or self.step == cfg.max_steps:
                if self.info.is_main:
                    result = self.validate()
                    if result is not None:
                        last_val = result
                        score = float(np.mean(list(result["dice"].values())))
                        self.history.append({"step": self.step, "val_dice": result["dice"], "time": time.time()})
                        if self.writer is not None:
                            for k, v in result["dice"].items():
                                self.writer.add_scalar(f"val/dice_{k}_clicks", v, self.step)
                        if score > self.best_dice:
                            self.best_dice = score
                            self.save(BEST)
                            logger.info("new best validation Dice %.4f at step %d → %s", score, self.step, self.out / BEST)
                D.barrier()
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save(LAST)
                if self.info.is_main:
                    (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
                D.barrier()
        if bar is not None:
            bar.close()
        if self.writer is not None:
            self.writer.flush()
        return last_val

    def export(
        self,
        path: Path,
        weights: str = LAST,
        clicks: Sequence[int] | None = None,
        name: str = "default",
        description: str = "",
        eval_data: str | Path | None = None,
    ) -> ModelCard:
        """Export ``weights`` (``last.pt``/``best.pt`` of this run) with a model card and measured Dice.

        Runs the validation protocol with ``clicks`` (default ``export_clicks``: 1, 3, 5, 10) and
        records it in the card's metrics. With ``eval_data`` (the raw case folders the cache was
        prepared from), the card's ``dice``/``nsd`` come from the evaluation harness instead
        (:func:`SAMMed3DLib.evaluate.evaluate` on the validation cases, original image grids,
        through the interactive session); the window numbers stay under ``window_dice``.
        Writes ``path`` and the card as ``path`` with ``.json``.
        """
        state = load_state(self.out / weights)
        model = build_sam3d(self.cfg.model_config)
        model.load_state_dict(state["model"])
        model.to(self.device).eval()
        clicks = list(clicks or self.cfg.export_clicks)
        metrics: dict[str, Any] = {}
        self._window_dice: dict[str, float] | None = None
        if self.val_samples:
            result = evaluate_windows(model, self.val_samples, clicks, seed=self.cfg.seed, mode=self.cfg.click_mode, device=self.device)
            self._window_dice = dict(result["dice"])
            metrics = {
                "dice": result["dice"],
                "protocol": f"{self.cfg.click_mode} clicks on the {self.card.input_size}³ window centred on each held-out structure, all clicks + previous logits fed back",
                "validation_cases": list(self.cfg.val_cases),
                "per_structure": result["per_structure"],
            }
            if eval_data is not None:
                metrics.update(self._harness_metrics(model, eval_data, clicks))
        card = ModelCard(
            name=name,
            config=self.cfg.model_config,
            spacing_mm=self.card.spacing_mm,
            normalization="zscore_nonzero",
            description=description or f"Small SAM-Med3D trained by training/ of this repository ({int(state['step'])} steps)",
            training_data=list(self.train_cases),
            metrics=metrics,
            license="Apache-2.0 (weights); training data under their own terms, see shared/data/README.md",
            source="trained by training/ of this repository",
            extra={"training_config": self.cfg.to_dict(), "step": int(state["step"]), "weights": weights},
        )
        export_model(model.cpu(), path, card, extra={"step": int(state["step"])})
        return card

    def _harness_metrics(self, model: Sam3D, eval_data: str | Path, clicks: Sequence[int]) -> dict[str, Any]:
        from SAMMed3DLib.evaluate import evaluate

        model.card = self.card
        result = evaluate(eval_data, model=model, cases=self.cfg.val_cases, clicks=clicks, click_mode=self.cfg.click_mode, seed=self.cfg.seed)
        mean = lambda k, attr: float(np.mean([getattr(r, attr) for r in result.rows if r.clicks == k]))  # noqa: E731
        return {
            "window_dice": {str(k): v for k, v in (self._window_dice or {}).items()},
            "dice": {str(k): mean(k, "dice") for k in clicks},
            "nsd": {str(k): mean(k, "nsd") for k in clicks},
            "protocol": f"sammed3d evaluate: {self.cfg.click_mode} clicks, seed {self.cfg.seed}, Dice/NSD on the original image grid through the session, mean over the validation structures",
            "per_structure": [{"case": r.case, "structure": r.name, "clicks": r.clicks, "dice": r.dice, "nsd": r.nsd} for r in result.rows],
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        D.cleanup()


__all__ = ["BEST", "LAST", "ClickLoop", "Trainer", "evaluate_windows", "export_model", "load_state", "lr_factor", "mask_only_plan"]
