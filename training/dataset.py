"""Training samples from a prepared cache: one structure, one model window, augmented, normalised.

Each sample is drawn as the issue and the paper describe: a random case, a random structure of
it, a ``window``³ crop around the structure at a random offset (``window`` is the input size of
the cache's :class:`~SAMMed3DLib.card.WindowSpec`, 128 for the default card; the structure stays inside when
it fits; a larger structure is cut by a window that lies inside its bounding box), zero padding
where the window leaves the volume, random flips of the three axes, then the inference
normalisation (:func:`SAMMed3DLib.preprocessing.normalize_window` with the model card, so training
and inference see identical intensities), then MONAI intensity augmentation
(``RandScaleIntensity``, ``RandShiftIntensity``, ``RandGaussianNoise``) on the normalised values.

Determinism: every random choice of item ``idx`` in epoch ``epoch`` comes from
``numpy.random.default_rng([seed, epoch, idx])`` (MONAI transforms are re-seeded from it), so a
sample depends only on those three numbers — not on worker count, process or history. That is
what makes ``--resume`` bit-for-bit without saving any data-loader state.

Array conventions: cached arrays are (R, A, S) (see :mod:`training.prepare`); samples keep that
order, so window tensor axes 2, 3, 4 run toward R, A, S like the inference window (before a
flip, which mirrors an axis — an augmentation).

One source of grid facts: the cache's ``index.json`` records the window spec (spacing, input
size, orientation) of the card it was prepared for (:attr:`TrainingCache.window_spec`); the
samples take the window size from it, and :func:`check_card_fits_cache` refuses a card that
disagrees (the trainer calls it for the run's card and for an ``--init`` model's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import RandGaussianNoise, RandScaleIntensity, RandShiftIntensity
from torch.utils.data import Dataset

from SAMMed3DLib.card import WINDOW_ORIENTATION, ModelCard, WindowSpec
from SAMMed3DLib.errors import DataError, ModelCardError, SAMMed3DError
from SAMMed3DLib.preprocessing import normalize_window

from .zoom import check_zoom, draw_factor, shrink_image, shrink_mask, zoomed_block

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StructureRef:
    """One structure of the cache: case position in the index, label value, name."""

    case: int
    value: int
    name: str


def _window_spec(index: dict[str, Any], path: Path) -> WindowSpec:
    """The window spec an ``index.json`` records.

    Caches written before the spec was recorded give the same facts in their ``spacing_mm``,
    ``options.window`` and ``orientation`` fields.
    """
    try:
        if "window" in index:
            return WindowSpec.from_dict(index["window"])
        return WindowSpec(index["spacing_mm"], index["options"]["window"], index.get("orientation", WINDOW_ORIENTATION))
    except (KeyError, TypeError, SAMMed3DError) as exc:
        raise DataError(f"{path} records no valid window spec ({exc}); prepare the cache again with `python -m training.prepare`") from exc


def check_card_fits_cache(card: ModelCard, cache: TrainingCache, what: str) -> None:
    """Refuse a card whose window spec differs from the one ``cache`` was prepared for.

    Args:
        card: the model's card.
        cache: the training cache.
        what: how the user named the model, for the message (``"--init default"``).

    Raises:
        ModelCardError: spacing, input size or orientation differ; the message lists them and
            says how to prepare a fitting cache.
    """
    problems = card.window_spec.mismatches(cache.window_spec)
    if problems:
        prepared = cache.index.get("card") or "the card defaults"
        raise ModelCardError(
            f"{what} (card {card.name!r}: {card.window_spec}) does not fit the training cache {cache.root} "
            f"(prepared for {prepared}: {cache.window_spec}): {'; '.join(problems)}. Prepare a cache for this model with "
            f"`python -m training.prepare SRC --out NEW_CACHE --model MODEL` (or --spacing/--window), or change the model"
        )


class TrainingCache:
    """Read access to a cache written by :func:`training.prepare.prepare`.

    Args:
        root: cache folder with ``index.json``.
        cases: case ids to use (None = all); unknown ids raise :class:`DataError`.
        exclude: case ids to leave out (the validation split).
    """

    def __init__(self, root: str | Path, cases: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> None:
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise DataError(f"{self.root} is not a training cache (no index.json); create one with `python -m training.prepare SRC --out {self.root}`")
        self.index: dict[str, Any] = json.loads(index_path.read_text(encoding="utf-8"))
        all_ids = [c["case"] for c in self.index["cases"]]
        wanted = list(cases) if cases is not None else all_ids
        unknown = sorted(set(wanted) - set(all_ids)) + sorted(set(exclude) - set(all_ids))
        if unknown:
            raise DataError(f"case id(s) {unknown} are not in the cache {self.root}; known: {all_ids}")
        self.cases = [c for c in self.index["cases"] if c["case"] in wanted and c["case"] not in set(exclude)]
        if not self.cases:
            raise DataError(f"no case left in {self.root} after selecting {wanted} and excluding {list(exclude)}")
        self.structures = [StructureRef(i, s["value"], s["name"]) for i, c in enumerate(self.cases) for s in c["structures"]]
        self.window_spec = _window_spec(self.index, index_path)
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def spacing_mm(self) -> float:
        """Voxel size of the cached grids in mm (the window spec's)."""
        return self.window_spec.spacing_mm

    @property
    def case_ids(self) -> list[str]:
        return [c["case"] for c in self.cases]

    def arrays(self, case: int) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 (R, A, S), label uint8 (R, A, S)) of case ``case``, loaded once."""
        if case not in self._arrays:
            with np.load(self.root / self.cases[case]["file"]) as data:
                self._arrays[case] = (data["image"], data["label"])
        return self._arrays[case]

    def bbox(self, ref: StructureRef) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive (lo, hi) voxel bounding box of a structure, (R, A, S) order."""
        s = next(s for s in self.cases[ref.case]["structures"] if s["value"] == ref.value)
        return np.array(s["bbox_ras"][0]), np.array(s["bbox_ras"][1])


def crop_start(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int], window: int, rng: np.random.Generator | None) -> np.ndarray:
    """Start index of a ``window``³ crop containing the box [lo, hi] (per axis) when it fits.

    Per axis: if the structure's extent fits, the start is uniform among the positions that keep
    it inside (and, where possible, keep the crop inside the volume); if it does not fit, the
    crop lies inside the structure's extent. ``rng=None`` centres the crop on the box instead
    (validation, the official CropOrPad behaviour). Starts may be negative or run past the
    volume: that part is zero-padded.
    """
    starts = []
    for a in range(3):
        extent = hi[a] - lo[a] + 1
        if rng is None:
            starts.append(int((lo[a] + hi[a] + 1) // 2 - window // 2))
            continue
        if extent <= window:
            first, last = hi[a] - window + 1, lo[a]
            # prefer starts that keep the window inside the volume (less padding)
            inner_first, inner_last = max(first, 0), min(last, shape[a] - window)
            if inner_first <= inner_last:
                first, last = inner_first, inner_last
        else:
            first, last = lo[a], hi[a] - window + 1
        starts.append(int(rng.integers(first, last + 1)))
    return np.array(starts)


def extract(array: np.ndarray, start: Sequence[int], window: int, fill: float = 0) -> np.ndarray:
    """The ``window``³ block of ``array`` starting at ``start`` (zero/``fill`` outside)."""
    out = np.full((window,) * 3, fill, dtype=array.dtype)
    src, dst = [], []
    for a in range(3):
        s0, s1 = max(start[a], 0), min(start[a] + window, array.shape[a])
        if s1 <= s0:
            return out
        src.append(slice(s0, s1))
        dst.append(slice(s0 - start[a], s1 - start[a]))
    out[tuple(dst)] = array[tuple(src)]
    return out


def structure_window(label: np.ndarray, value: int, lo: np.ndarray, hi: np.ndarray, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random ``window``³ crop around structure ``value`` of ``label``: (start, bool mask in it).

    The start comes from :func:`crop_start`; a structure wider than the window can leave a
    hole at the crop (a U shape), and then the window is centred on one of its voxels instead.
    """
    start = crop_start(lo, hi, label.shape, window, rng)
    gt = extract(label, start, window) == value
    if not gt.any():
        voxels = np.argwhere(label == value)
        start = voxels[int(rng.integers(len(voxels)))] - window // 2
        gt = extract(label, start, window) == value
    return start, gt


def random_flips(rng: np.random.Generator, prob: float, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flips (each axis with probability ``prob``) applied to every array."""
    flips = [a for a in range(3) if rng.random() < prob]
    if not flips:
        return list(arrays)
    return [np.ascontiguousarray(np.flip(a, axis=flips)) for a in arrays]


class StructureSamples(Dataset):
    """Map-style dataset of random training samples (see the module docstring).

    ``len`` is ``samples_per_epoch``; item ``idx`` is reproducible from (seed, epoch, idx).
    Call :meth:`set_epoch` before iterating a new epoch.

    Each item is a dict: ``image`` float32 tensor (1, W, W, W) (normalised, augmented), ``gt``
    uint8 tensor (1, W, W, W), ``case``/``structure`` names, ``idx``.
    """

    def __init__(
        self,
        cache: TrainingCache,
        card: ModelCard,
        samples_per_epoch: int = 1000,
        seed: int = 0,
        flip_prob: float = 0.5,
        intensity_prob: float = 0.5,
        intensity_scale: float = 0.1,
        intensity_shift: float = 0.1,
        noise_std: float = 0.05,
        zoom_prob: float = 0.0,
        zoom_max: float = 1.0,
    ) -> None:
        check_card_fits_cache(card, cache, "the model")
        check_zoom(zoom_prob, zoom_max)
        self.zoom_prob, self.zoom_max = float(zoom_prob), float(zoom_max)
        self.cache = cache
        self.card = card
        self.window = cache.window_spec.input_size
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0
        self.flip_prob = flip_prob
        self.by_case: dict[int, list[StructureRef]] = {}
        for ref in cache.structures:
            self.by_case.setdefault(ref.case, []).append(ref)
        self.case_keys = sorted(self.by_case)
        self._scale = RandScaleIntensity(factors=intensity_scale, prob=intensity_prob)
        self._shift = RandShiftIntensity(offsets=intensity_shift, prob=intensity_prob)
        self._noise = RandGaussianNoise(prob=intensity_prob, mean=0.0, std=noise_std)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, int(idx)])
        case = self.case_keys[int(rng.integers(len(self.case_keys)))]
        refs = self.by_case[case]
        ref = refs[int(rng.integers(len(refs)))]
        image, label = self.cache.arrays(case)
        lo, hi = self.cache.bbox(ref)
        start, gt = structure_window(label, ref.value, lo, hi, self.window, rng)
        img = None
        factor = draw_factor(rng, self.zoom_prob, self.zoom_max)
        if factor > 1.0:
            big_start, big = zoomed_block(start, self.window, factor)
            zoomed_gt = shrink_mask(extract(label, big_start, big) == ref.value, self.window)
            if zoomed_gt.any():
                img, gt = shrink_image(extract(image, big_start, big), self.window), zoomed_gt
        if img is None:
            img = extract(image, start, self.window)
        img, gt = random_flips(rng, self.flip_prob, img, gt)
        img = normalize_window(img, self.card).astype(np.float32, copy=False)
        x = torch.from_numpy(img)[None]
        for t in (self._scale, self._shift, self._noise):
            t.set_random_state(seed=int(rng.integers(2**31 - 1)))
            x = t(x)
        x = torch.as_tensor(x, dtype=torch.float32).contiguous()
        if hasattr(x, "as_tensor"):
            x = x.as_tensor()
        return {
            "image": x,
            "gt": torch.from_numpy(gt.astype(np.uint8))[None],
            "case": self.cache.cases[case]["case"],
            "structure": ref.name,
            "idx": int(idx),
        }


def validation_samples(cache: TrainingCache, card: ModelCard) -> list[dict[str, Any]]:
    """Every structure of ``cache`` as a centred, normalised, unaugmented window (the eval crop).

    Returns:
        Dicts with ``image`` float32 (1, W, W, W), ``gt`` bool numpy (W, W, W), ``case``,
        ``structure``; window axes (R, A, S).
    """
    check_card_fits_cache(card, cache, "the model")
    out = []
    window = cache.window_spec.input_size
    for ref in cache.structures:
        image, label = cache.arrays(ref.case)
        lo, hi = cache.bbox(ref)
        start = crop_start(lo, hi, image.shape, window, None)
        img = normalize_window(extract(image, start, window), card).astype(np.float32, copy=False)
        gt = extract(label, start, window) == ref.value
        out.append({"image": torch.from_numpy(np.ascontiguousarray(img))[None], "gt": gt, "case": cache.cases[ref.case]["case"], "structure": ref.name})
    return out
