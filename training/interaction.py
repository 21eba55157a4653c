"""Simulated interaction on model windows: the trainer's click rounds and its validation.

:class:`ClickLoop` is one training forward (per micro-batch of ``batch_size`` windows):

1. The image encoder runs once on the batch of windows.
2. ``rounds`` rounds of interaction follow: round 0 puts the first, positive click inside the
   structure and feeds an all-zero 32³ mask prompt, as inference does; each later round either
   adds a click sampled from the error region of the current prediction (positive on a false
   negative; one :class:`SAMMed3DLib.clicks.SimulatedUser` per sample — the simulator of the
   evaluation harness — repeating its last click on a perfect prediction) or is a *mask-only*
   round (no points, the previous logits alone — ``mask_only_rounds`` random rounds plus, by
   default, the last round, as the official ``train.py`` does; :func:`mask_only_plan`). The
   previous round's low-res logits are fed back **detached** (the simulated user sees them; no
   gradient flows through the history). With ``all_clicks`` (default) every click so far is
   passed, as our :class:`SAMMed3DLib.session.Session` and the evaluation harness do at
   inference; the official trainer passes the newest click only (:func:`prompt_tensors`).
3. Loss: MONAI ``DiceCELoss(sigmoid=True)`` of every round's logits **upsampled to the window**
   (trilinear, ``align_corners=False`` — exactly what inference thresholds) against the
   full-resolution mask, averaged over rounds. Upsampled rather than low-res vs downsampled
   ground truth because thin and small structures (vessels, lesions of a few voxels) vanish or
   change shape at 32³, and the official ``train.py`` supervises the upsampled masks too; the
   cost is small (a 2 M-voxel loss per round, measured inside the 0.65 s of a sample).

**Correction rounds** (``correction_fraction`` of the samples, ``--correction-fraction``): the
interaction starts from a corrupted copy of the ground truth (:func:`SAMMed3DLib.corruption.corrupt`,
``near_correct``: eroded, dilated, holed, cut, shifted or restyled, Dice 0.6–0.95) given as the
round-0 dense prompt exactly as a session gives an existing mask
(:func:`SAMMed3DLib.editing.fraction_to_logits` of its low-resolution fraction), and the first
click is drawn from its error region instead of inside the structure: the model learns to keep
what is right and fix what the click points at.

With a fine head (``--fine-head``, :mod:`SAMMed3DLib.model.fine_head`) each round also runs the
head on the decoder's logits, the next click is drawn from the head's mask (what the user sees)
and the head's upsampled logits get the same loss; ``--train-only-fine-head`` freezes everything
else (the encoder and decoder then run without autograd), and ``--fine-grad-rounds N`` trains
the head's output in N random rounds per step only (its backward on 64³ is the costly part).

:func:`evaluate_windows` is the in-training validation (and the export's window Dice): the same
user and prompt on centred, unaugmented windows, Dice after chosen click counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from SAMMed3DLib.clicks import SimulatedUser, next_click
from SAMMed3DLib.corruption import corrupt
from SAMMed3DLib.devices import resolve_device
from SAMMed3DLib.editing import fraction_to_logits
from SAMMed3DLib.metrics import dice
from SAMMed3DLib.model import Sam3D

logger = logging.getLogger(__name__)

#: Dice range of the corrupted starts of correction rounds (wider than the evaluation's 0.80–0.95:
#: the model should also learn to fix a poor start).
CORRECTION_DICE_RANGE = (0.6, 0.95)


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

    def __init__(
        self, model: Sam3D, click_mode: str = "random", all_clicks: bool = True, correction_fraction: float = 0.0, spacing_mm: float = 1.5
    ) -> None:
        super().__init__()
        self.model = model
        self.click_mode = click_mode
        self.all_clicks = all_clicks
        self.correction_fraction = float(correction_fraction)
        self.spacing_mm = float(spacing_mm)  # the window's voxel size (corruption sizes are in mm)
        self.loss_fn = DiceCELoss(sigmoid=True)

    def _corrected_starts(self, gt_np: np.ndarray, rngs: Sequence[np.random.Generator], prev: torch.Tensor) -> np.ndarray:
        """Pick the correction samples; write their corrupted masks into ``prev`` (dense prompt) and return the starts."""
        starts = np.zeros_like(gt_np)
        if self.correction_fraction <= 0:
            return starts
        for i, rng in enumerate(rngs):
            if not gt_np[i].any() or rng.random() >= self.correction_fraction:
                continue
            start = corrupt(gt_np[i], "near_correct", rng, spacing_mm=(self.spacing_mm,) * 3, dice_range=CORRECTION_DICE_RANGE).mask
            starts[i] = start
            fraction = F.adaptive_avg_pool3d(torch.from_numpy(start.astype(np.float32))[None, None], self.model.low_res_size)
            prev[i] = fraction_to_logits(fraction[0]).to(prev.device, prev.dtype)
        return starts

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
        pred_np = self._corrected_starts(gt_np, rngs, prev)
        users = [SimulatedUser(gt_np[i], rngs[i], self.click_mode) for i in range(b)]
        for i, user in enumerate(users):
            if pred_np[i].any():  # a correction sample: its first click points at an error of the start
                first = next_click(pred_np[i], gt_np[i], user.rng, user.mode)
                if first is not None:
                    user.clicks.append(first)
        total = images.new_zeros(())
        terms = 0
        up = None
        for r in range(rounds):
            if r in mask_only:
                pts = lbl = None
            else:
                for user, pred in zip(users, pred_np):
                    if r == 0 and user.clicks:
                        continue  # a correction sample's first click is already there
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


__all__ = ["ClickLoop", "evaluate_windows", "mask_only_plan", "prompt_tensors"]
