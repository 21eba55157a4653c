"""The training loop: one run's model, optimizer, data, DDP, AMP, validation and checkpoints.

One optimizer step (per rank): ``grad_accum`` micro-batches of ``batch_size`` windows from
:class:`training.dataset.StructureSamples` (with ``--synthetic-fraction`` > 0 some of them painted from
label maps instead: :class:`training.synth_samples.MixedSamples`; 128³ for the default card; size, spacing and
orientation are the cache's window spec, which the run's card — an ``--init`` model's card and
``--model-config`` included — must match), each through :class:`training.interaction.ClickLoop`
(the encoder once, ``rounds`` simulated click rounds, the loss of every round: see that module),
gradients accumulated across the micro-batches (DDP synchronises the last one), clipped, one
AdamW step, then the step-decay schedule (:func:`lr_factor`).

The trainer owns the run; its parts live in their own modules: :mod:`training.interaction` (click
rounds, in-training validation), :mod:`training.model_init` (random or ``--init`` weights and
their upgrades), :mod:`training.checkpoints` (state names, reading states back) and
:mod:`training.export` (weights plus measured model card).

Everything random is derived from ``(seed, step, rank, item)`` (see :mod:`training.dataset`), so
``--resume`` from ``last.pt`` (model, optimizer, scaler, scheduler, step, torch RNG states)
continues bit-for-bit. Rank 0 alone logs, validates and writes checkpoints (atomically: temp
file + ``os.replace``); checkpoints are read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from SAMMed3DLib.atomic import atomic_path, atomic_write_json
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.devices import resolve_device
from SAMMed3DLib.errors import CheckpointError, ConfigError

from . import distributed as D
from .checkpoints import BEST, LAST, load_state
from .config import TrainConfig
from .dataset import (
    StructureSamples,
    TrainingCache,
    check_card_fits_cache,
    validation_samples,
)
from .export import export_model, export_run
from .interaction import ClickLoop, evaluate_windows, mask_only_plan
from .labelmaps import LabelMapCache
from .model_init import initial_model, make_pe_swap_closed
from .synth_samples import MixedSamples, SyntheticSamples

logger = logging.getLogger(__name__)


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
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
        loop: nn.Module = ClickLoop(model, cfg.click_mode, cfg.all_clicks, cfg.correction_fraction, self.card.spacing_mm)
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
        real = StructureSamples(
            cache_train, self.card, cfg.samples_per_epoch, cfg.seed, cfg.flip_prob, cfg.intensity_prob,
            cfg.intensity_scale, cfg.intensity_shift, cfg.noise_std, cfg.zoom_prob, cfg.zoom_max,
        )
        self.dataset: StructureSamples | MixedSamples = real
        self.synthetic_cases: list[str] = []
        if cfg.synthetic_fraction > 0:
            maps = LabelMapCache(cfg.synthetic_cache)
            check_card_fits_cache(self.card, maps, "--synthetic-cache")  # type: ignore[arg-type]
            leaked = sorted({c.split("/", 1)[-1] for c in maps.case_ids} & set(cfg.val_cases))
            if leaked:
                raise ConfigError(
                    f"the label-map cache {cfg.synthetic_cache} holds validation case(s) {leaked}: prepare it with "
                    f"`python -m training.labelmaps ... --exclude-cases {' '.join(cfg.val_cases)}`"
                )
            synthetic = SyntheticSamples(
                maps, self.card, cfg.samples_per_epoch, cfg.seed, cfg.flip_prob, cfg.synthetic_modes, zoom_prob=cfg.zoom_prob, zoom_max=cfg.zoom_max
            )
            self.dataset = MixedSamples(real, synthetic, cfg.synthetic_fraction, cfg.seed)
            self.synthetic_cases = maps.case_ids
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
        self._apply_new_lr()
        self.best_dice = float(state["best_dice"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        logger.info("resumed from %s at step %d", path, self.step)

    def _apply_new_lr(self) -> None:
        """Honour ``--lr`` given on resume: the scheduler's saved base rate would otherwise win silently."""
        saved = [float(b) for b in self.scheduler.base_lrs]
        if all(b == self.cfg.lr for b in saved):
            return
        self.scheduler.base_lrs = [self.cfg.lr] * len(self.optimizer.param_groups)
        rate = self.cfg.lr * lr_factor(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.cfg.lr
            group["lr"] = rate
        self.scheduler._last_lr = [rate] * len(self.optimizer.param_groups)  # what get_last_lr() reports
        logger.info("learning rate %.3g from --lr (the run was saved with %.3g)", self.cfg.lr, saved[0])

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
                    atomic_write_json(self.out / "history.json", self.history, indent=1)
                D.barrier()
        if bar is not None:
            bar.close()
        if self.writer is not None:
            self.writer.flush()
        return last_val

    #: ``trainer.export(path, weights=LAST, clicks=None, name="default", description="", eval_data=None)``:
    #: write this run's weights with a measured model card (:func:`training.export.export_run`).
    export = export_run

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        D.cleanup()


# Trainer and lr_factor live here; the other names come from the modules split off this one
# (interaction, checkpoints, model_init, export) and stay importable from here as before.
__all__ = [
    "BEST", "LAST", "ClickLoop", "Trainer", "evaluate_windows", "export_model", "initial_model", "load_state", "lr_factor",
    "make_pe_swap_closed", "mask_only_plan",
]  # fmt: skip
