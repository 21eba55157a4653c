"""Synthetic training samples from a label-map cache, and their mix with real ones.

:class:`SyntheticSamples` draws, for item ``idx`` of epoch ``epoch``: a label map (weighted by
:attr:`training.labelmaps.LabelMapCache.case_weights`), one of its targets (any cleaned
structure), the window around it exactly as a real sample's (:func:`training.dataset.structure_window`:
the structure inside when it fits), the same random flips, a contrast mode (``modes`` weights),
then paints the window (:func:`training.synth.synthesize`, from a block 2 × ``margin`` voxels
larger, which the deformation pulls in) and normalises it as inference does
(:func:`SAMMed3DLib.preprocessing.normalize_window`). No MONAI intensity augmentation: the
generator's intensities are random already.

:class:`MixedSamples` returns a synthetic item with probability ``fraction`` and the real
:class:`training.dataset.StructureSamples` item otherwise. Both draw from
``numpy.random.default_rng([seed, epoch, idx, stream])`` (their own streams, apart from the real
samples' ``[seed, epoch, idx]``), so an item depends only on those numbers, as the trainer's
bit-for-bit ``--resume`` needs.

Items have the real samples' keys: ``image`` float32 (1, W, W, W), ``gt`` uint8 (1, W, W, W),
``case`` (``"synthetic <mode> <set>/<case>"`` for synthetic ones), ``structure``, ``idx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.preprocessing import normalize_window

from .dataset import StructureSamples, check_card_fits_cache, extract, random_flips, structure_window
from .labelmaps import LabelMapCache
from .synth import MODES, SynthOptions, mode_weights, synthesize
from .zoom import check_zoom, draw_factor, shrink_labels, zoomed_block

#: Last entries of the seed sequences: the mix's coin and the synthetic sample's choices.
MIX_STREAM, SYNTH_STREAM = 1, 2
#: Voxels of label map read around the window on every side, for the deformation.
BLOCK_MARGIN = 16


class SyntheticSamples(Dataset):
    """Map-style dataset of synthetic samples (see the module docstring); ``len`` is ``samples_per_epoch``."""

    def __init__(
        self,
        cache: LabelMapCache,
        card: ModelCard,
        samples_per_epoch: int = 1000,
        seed: int = 0,
        flip_prob: float = 0.5,
        modes: Mapping[str, float] | None = None,
        opts: SynthOptions | None = None,
        zoom_prob: float = 0.0,
        zoom_max: float = 1.0,
    ) -> None:
        check_card_fits_cache(card, cache, "the model")  # type: ignore[arg-type]  # reads window_spec, root, index
        check_zoom(zoom_prob, zoom_max)
        self.zoom_prob, self.zoom_max = float(zoom_prob), float(zoom_max)
        self.cache = cache
        self.card = card
        self.window = cache.window_spec.input_size
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0
        self.flip_prob = flip_prob
        self.mode_p = mode_weights(modes or {m: 1.0 for m in MODES})
        self.opts = opts or SynthOptions()
        self.by_case: dict[int, list[Any]] = {}
        for ref in cache.structures:
            self.by_case.setdefault(ref.case, []).append(ref)
        self.case_keys = sorted(self.by_case)
        p = cache.case_weights[self.case_keys]
        self.case_p = p / p.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, int(idx), SYNTH_STREAM])
        case = self.case_keys[int(rng.choice(len(self.case_keys), p=self.case_p))]
        refs = self.by_case[case]
        ref = refs[int(rng.integers(len(refs)))]
        label, target = self.cache.maps(case)
        lo, hi = self.cache.bbox(ref)
        start, _ = structure_window(target, ref.value, lo, hi, self.window, rng)
        side = self.window + 2 * BLOCK_MARGIN
        block = start - BLOCK_MARGIN
        lab = tgt = None
        factor = draw_factor(rng, self.zoom_prob, self.zoom_max)
        if factor > 1.0:
            big_start, big = zoomed_block(block, side, factor)
            zoomed_tgt = shrink_labels(extract(target, big_start, big) == ref.value, side)
            if zoomed_tgt[(slice(BLOCK_MARGIN, BLOCK_MARGIN + self.window),) * 3].any():
                lab, tgt = shrink_labels(extract(label, big_start, big), side), zoomed_tgt
        if lab is None:
            lab, tgt = extract(label, block, side), extract(target, block, side) == ref.value
        lab, tgt = random_flips(rng, self.flip_prob, lab, tgt)
        mode = MODES[int(rng.choice(len(MODES), p=self.mode_p))]
        result = synthesize(lab, tgt, rng, mode, self.window, self.cache.label_names(case), self.opts)
        img = normalize_window(result.image, self.card).astype(np.float32, copy=False)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img))[None],
            "gt": torch.from_numpy(result.target.astype(np.uint8))[None],
            "case": f"synthetic {mode} {self.cache.cases[case]['case']}",
            "structure": ref.name,
            "idx": int(idx),
        }


class MixedSamples(Dataset):
    """Real samples, each replaced by a synthetic one with probability ``fraction`` (same ``idx``)."""

    def __init__(self, real: StructureSamples, synthetic: SyntheticSamples, fraction: float, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the synthetic fraction must lie in [0, 1], got {fraction}")
        self.real = real
        self.synthetic = synthetic
        self.fraction = float(fraction)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.real.set_epoch(epoch)
        self.synthetic.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.real)

    def is_synthetic(self, idx: int) -> bool:
        """Whether item ``idx`` of the current epoch is synthetic."""
        return bool(np.random.default_rng([self.seed, self.epoch, int(idx), MIX_STREAM]).random() < self.fraction)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.synthetic[idx] if self.is_synthetic(idx) else self.real[idx]


__all__ = ["BLOCK_MARGIN", "MixedSamples", "SyntheticSamples"]
