"""Synthetic training images from label maps (the SynthSeg idea), in MR-, CT- and PET-like contrasts.

:func:`synthesize` turns a block of a label map (any anatomy: a brain parcellation, kidneys on a
CT grid, head-and-neck organs) and the target structure inside it into a model window whose
intensities follow no real scanner but look like one of three kinds of image:

* ``"mr"``: a random mean and spread per label (a Gaussian mixture, means anywhere in [0, 1]),
  a smooth multiplicative bias field, Gaussian or Rician noise, a random gamma;
* ``"ct"``: means in Hounsfield-like ranges of tissue classes (air, lung, fat, fluid, soft
  tissue, enhanced, bone), the class chosen from the label's name when it says (a lung is
  air-like, a vertebra bone) and at random otherwise; Gaussian noise, no bias field;
* ``"pet"``: activity per label, some labels (the target often) hot, multiplied by smooth
  low-resolution blobs, a coarse voxel grid (2.25–5.25 mm) with a point-spread blur and
  Poisson counting noise — PET- or SPECT-like.

Every mode then changes the resolution (a coarser voxel, often a thick slice along one random
axis: area-averaged down, blurred, noised at that resolution, trilinear back up), after a small
random smooth deformation (rotation, scaling, a displacement field) of the label map itself.
Some labels share another label's intensity (so boundaries are not always visible), and the
unlabelled part is split into random smooth regions (label maps such as KiTS label only two
structures; the rest of a body is not one flat grey). One rule keeps a sample learnable: at
least :attr:`SynthOptions.min_contrast_fraction` of the target's surroundings (the voxels within
2 voxels of it) must lie in labels whose mean differs from the target's by the mode's contrast
step (:data:`CONTRAST_STEP`); otherwise the target's mean is drawn again (and finally set).

Determinism: everything random comes from the ``numpy.random.Generator`` passed in; the torch
operations used (trilinear interpolation, area pooling, nearest ``grid_sample``, max pooling) are
deterministic on the CPU. Cost: about 0.2–0.3 s for a 128³ window on one core (see the tests and
the README).

Arrays keep the caller's axis order; the window's voxel size is the cache's (the model card's,
1.5 mm); the resolution factors below are relative to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

#: The contrast modes, in the order of ``--synthetic-modes`` weights.
MODES: tuple[str, ...] = ("mr", "ct", "pet")

#: Hounsfield-like ranges of the mean of each CT tissue class, and how often a label with no
#: telling name gets each class.
CT_TISSUES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -900.0), "lung": (-900.0, -650.0), "fat": (-130.0, -60.0), "fluid": (-5.0, 25.0),
    "soft": (20.0, 90.0), "enhanced": (90.0, 320.0), "bone": (250.0, 1400.0),
}
CT_CLASS_PRIOR: dict[str, float] = {"air": 0.04, "lung": 0.06, "fat": 0.12, "fluid": 0.1, "soft": 0.46, "enhanced": 0.12, "bone": 0.1}

#: Name patterns (first match wins) → CT tissue class.
CT_NAME_HINTS: tuple[tuple[str, str], ...] = (
    (r"lung|pulmonary_lobe", "lung"),
    (r"airway|trachea|bronch|sinus|pharynx_air", "air"),
    (r"fat|adipose", "fat"),
    (r"heart|atrium|myocard|aorta|arter|vein|vena|portal|iliac_(artery|vena)|kidney|renal|spleen", "enhanced"),
    (r"vertebra|rib|skull|mandible|femur|hip|sacrum|humerus|scapula|clavic|sternum|bone|costal|tooth|teeth|patella|tibia|fibula|radius|ulna", "bone"),
    (r"csf|ventricle|bladder|cyst|gallbladder|canal|vitreous|lens", "fluid"),
)

#: The smallest mean difference that counts as contrast, per mode (PET: relative to the larger).
CONTRAST_STEP: dict[str, float] = {"mr": 0.1, "ct": 30.0, "pet": 0.5}


@dataclass(frozen=True)
class SynthOptions:
    """Ranges of the random choices of :func:`synthesize` (defaults: SynthSeg-like, milder deformation)."""

    merge_prob: float = 0.25  #: chance that a label takes another label's intensity
    background_split_prob: float = 0.8  #: chance that the unlabelled part is split into regions
    max_background_regions: int = 5
    min_contrast_fraction: float = 0.3  #: of the target's surroundings, in labels that differ
    shell_voxels: int = 2  #: how far the "surroundings" reach
    deform_prob: float = 0.8
    max_rotation_deg: float = 6.0
    max_scaling: float = 0.08
    max_displacement_vox: float = 2.5
    thick_slice_prob: float = 0.5  #: one random axis gets a slice of up to max_slice_factor voxels
    max_slice_factor: float = 4.0
    mr_name_hint_prob: float = 0.0
    ct_name_hint_prob: float = 0.75  #: chance that a label with a telling name gets its tissue class


@dataclass
class SynthResult:
    """One synthetic window: ``image`` float32, ``target`` bool, ``labels`` (the deformed map,
    unlabelled regions renumbered above the map's labels), ``means`` (the intensity drawn per label)."""

    image: np.ndarray
    target: np.ndarray
    labels: np.ndarray
    means: np.ndarray
    mode: str


def ct_tissue_classes(names: Sequence[str]) -> list[str | None]:
    """The CT tissue class each label name implies (None: the name does not say)."""
    out: list[str | None] = []
    for name in names:
        low = name.lower()
        out.append(next((cls for pattern, cls in CT_NAME_HINTS if re.search(pattern, low)), None))
    return out


def mode_weights(modes: Mapping[str, float]) -> np.ndarray:
    """Probabilities of :data:`training.synth.MODES` from a ``{"mr": w, ...}`` mapping (missing = 0)."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown synthetic mode(s) {unknown}; use {', '.join(MODES)}")
    w = np.array([float(modes.get(m, 0.0)) for m in MODES])
    if np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"synthetic mode weights must be ≥ 0 with a positive sum, got {dict(modes)}")
    return w / w.sum()


# -- random fields and resampling ---------------------------------------------------------------


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


def smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: int) -> np.ndarray:
    """A smooth random field: N(0, 1) values on a ``cells``³ lattice, trilinear up to ``shape``."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def deform(labels: np.ndarray, target: np.ndarray, size: int, rng: np.random.Generator, opts: SynthOptions) -> tuple[np.ndarray, np.ndarray]:
    """The centred ``size``³ part of a (larger) block, after a random smooth deformation (nearest).

    The block may be larger than ``size`` (a margin that the rotation and scaling pull in);
    with probability ``1 - deform_prob`` the centre is cut out unchanged.
    """
    offset = [(s - size) // 2 for s in labels.shape]
    if rng.random() >= opts.deform_prob:
        cut = tuple(slice(o, o + size) for o in offset)
        return np.ascontiguousarray(labels[cut]), np.ascontiguousarray(target[cut])
    matrix = _rotation(np.deg2rad(rng.uniform(-opts.max_rotation_deg, opts.max_rotation_deg, 3))) @ np.diag(1 + rng.uniform(-opts.max_scaling, opts.max_scaling, 3))
    # The sampling grid on a coarse lattice (affine part exact under trilinear interpolation,
    # plus a random displacement), in grid_sample's normalised coordinates, then one upsampling.
    cells = 5
    axis = np.linspace(-(size - 1) / 2.0, (size - 1) / 2.0, cells)
    coarse = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1) @ matrix.T
    coarse += rng.standard_normal(coarse.shape) * (rng.uniform(0, opts.max_displacement_vox) / 2.0)
    half = np.array([max(n - 1, 1) / 2.0 for n in labels.shape])
    coarse = (coarse + (np.array(labels.shape) - 1) / 2.0) / half - 1.0  # align_corners=True, array axis order
    coarse = np.moveaxis(coarse[..., ::-1], -1, 0)[None].astype(np.float32)  # (1, 3: x=axis 2, y, z=axis 0, c, c, c)
    grid = F.interpolate(torch.from_numpy(np.ascontiguousarray(coarse)), size=(size,) * 3, mode="trilinear", align_corners=True)
    both = torch.from_numpy(np.stack([labels.astype(np.float32), target.astype(np.float32)]))[None]
    out = F.grid_sample(both, grid.permute(0, 2, 3, 4, 1), mode="nearest", padding_mode="border", align_corners=True)[0]
    new_target = out[1].numpy() > 0.5
    if not new_target.any():  # a small target pulled out of the window: keep it undeformed
        cut = tuple(slice(o, o + size) for o in offset)
        return np.ascontiguousarray(labels[cut]), np.ascontiguousarray(target[cut])
    return out[0].numpy().astype(labels.dtype), new_target


def _shell_histogram(lab: np.ndarray, target: np.ndarray, reach: int, n_labels: int) -> np.ndarray:
    """Voxel count per label of the target's surroundings (within about ``reach`` voxels).

    Measured on every second voxel (the surroundings of a structure, not its exact rim): a
    dilation by ``reach / 2`` there is 8 times cheaper than one at full resolution.
    """
    sub = (slice(None, None, 2),) * 3
    t = target[sub]
    r = max(1, (reach + 1) // 2)
    x = torch.from_numpy(t.astype(np.float32))[None, None]
    for k in ((2 * r + 1, 1, 1), (1, 2 * r + 1, 1), (1, 1, 2 * r + 1)):
        x = F.max_pool3d(x, kernel_size=k, stride=1, padding=tuple(v // 2 for v in k))
    shell = (x[0, 0].numpy() > 0.5) & ~t
    return np.bincount(lab[sub][shell], minlength=n_labels).astype(float)


def _pool(volume: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Area average onto a grid of ``size`` (the voxels of a coarser acquisition)."""
    if tuple(volume.shape) == size:
        return volume
    return F.adaptive_avg_pool3d(_tensor(volume), size)[0, 0].numpy()


# -- intensities per mode -----------------------------------------------------------------------


def _draw_ct(rng: np.random.Generator, n: int, hints: Sequence[str | None], hint_prob: float) -> np.ndarray:
    classes = list(CT_CLASS_PRIOR)
    prior = np.array([CT_CLASS_PRIOR[c] for c in classes])
    out = np.empty(n)
    for i in range(n):
        cls = hints[i] if i < len(hints) and hints[i] is not None and rng.random() < hint_prob else classes[int(rng.choice(len(classes), p=prior / prior.sum()))]
        lo, hi = CT_TISSUES[cls]
        out[i] = rng.uniform(lo, hi)
    return out


def _draw_means(mode: str, rng: np.random.Generator, n: int, hints: Sequence[str | None], opts: SynthOptions) -> np.ndarray:
    """One mean per label (label 0 and the background regions included)."""
    if mode == "mr":
        return rng.uniform(0.0, 1.0, n)
    if mode == "ct":
        return _draw_ct(rng, n, hints, opts.ct_name_hint_prob)
    base = rng.uniform(0.05, 0.3)  # PET: background activity; most tissue near it, some hot
    hot = rng.random(n) < 0.25
    return np.where(hot, base * rng.uniform(3.0, 15.0, n), base * rng.uniform(0.3, 2.0, n))


def _differs(mode: str, a: np.ndarray, b: float) -> np.ndarray:
    if mode == "pet":
        return np.abs(a - b) >= CONTRAST_STEP[mode] * np.maximum(np.abs(a), abs(b))
    return np.abs(a - b) >= CONTRAST_STEP[mode]


def _ensure_contrast(mode: str, means: np.ndarray, shell_hist: np.ndarray, t: int, rng: np.random.Generator, hints, opts: SynthOptions) -> None:
    """Redraw (finally set) the target's mean until enough of its surroundings differ from it."""
    total = shell_hist.sum()
    if total == 0:
        return

    def enough() -> bool:
        return float(shell_hist[_differs(mode, means, means[t])].sum()) >= opts.min_contrast_fraction * total

    for _ in range(20):
        if enough():
            return
        means[t] = _draw_means(mode, rng, len(means), hints, opts)[t]
    dominant = float(means[int(np.argmax(shell_hist))])
    step = 2.0 * CONTRAST_STEP[mode] * (max(abs(dominant), 1e-3) if mode == "pet" else 1.0)
    low_limit = {"mr": -0.2, "ct": -1000.0, "pet": 0.0}[mode]
    sides = [dominant + step, dominant - step]
    if rng.random() < 0.5:
        sides.reverse()
    for value in sides:
        if value >= low_limit:
            means[t] = value
            if enough():
                return
    # the surroundings hold labels on both sides of the target: go beyond all of them
    means[t] = float(means[shell_hist > 0].max()) + step


# -- the generator --------------------------------------------------------------------------------


def synthesize(
    labels: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    mode: str = "mr",
    size: int | None = None,
    names: Sequence[str] = (),
    opts: SynthOptions | None = None,
) -> SynthResult:
    """Paint a synthetic window from a label-map block (see the module docstring).

    Args:
        labels: integer label map block (0 = unlabelled, 1..K labels), 3D; may be larger than
            ``size`` (a margin for the deformation).
        target: bool mask of the target structure on the same block (a subset of one label).
        rng: the only source of randomness.
        mode: ``"mr"``, ``"ct"`` or ``"pet"``.
        size: side of the output window (default: the block's smallest side).
        names: names of labels 1..K (for the CT tissue classes); may be empty.
        opts: the ranges of the random choices.

    Returns:
        The window: ``image`` float32 (size³), ``target`` bool, the deformed ``labels`` and the
        per-label ``means``.

    Raises:
        ValueError: an unknown mode or an empty target.
    """
    if mode not in MODES:
        raise ValueError(f"unknown synthetic mode {mode!r}; use one of {', '.join(MODES)}")
    opts = opts or SynthOptions()
    size = int(size or min(labels.shape))
    if not target.any():
        raise ValueError("the target mask is empty")
    lab, tgt = deform(np.asarray(labels), np.asarray(target, dtype=bool), size, rng, opts)
    lab = lab.astype(np.int32)
    n_labels = int(lab.max()) + 1
    # the unlabelled part: one region, or several smooth random regions
    if rng.random() < opts.background_split_prob:
        regions = int(rng.integers(2, opts.max_background_regions + 1))
        half = tuple((v + 1) // 2 for v in lab.shape)  # regions drawn on every second voxel, repeated
        field = smooth_field(rng, half, int(rng.integers(3, 7)))
        field /= max(float(field.std()), 1e-6)
        cuts = np.sort(rng.normal(0.0, 0.8, regions - 1)).astype(np.float32)
        region = np.searchsorted(cuts, field).astype(np.int32)  # 0..regions-1
        region = region.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: lab.shape[0], : lab.shape[1], : lab.shape[2]]
        outside = lab == 0
        lab[outside] = np.where(region[outside] == 0, 0, n_labels + region[outside] - 1)
        n_labels += regions - 1
    counts = np.bincount(lab[tgt], minlength=n_labels)
    t = int(np.argmax(counts))
    hints: list[str | None] = [None] + ct_tissue_classes(names) if mode == "ct" else []
    means = _draw_means(mode, rng, n_labels, hints, opts)
    merged = rng.random(n_labels) < opts.merge_prob
    for i in np.flatnonzero(merged):
        means[i] = means[int(rng.integers(n_labels))]
    if mode == "pet" and rng.random() < 0.5:
        means[t] = max(means[t], float(means.max()) * rng.uniform(0.7, 1.3))  # a hot lesion
    _ensure_contrast(mode, means, _shell_histogram(lab, tgt, opts.shell_voxels, n_labels), t, rng, hints, opts)
    image = _paint(mode, lab, means, rng, opts)
    return SynthResult(image=image, target=tgt, labels=lab, means=means, mode=mode)


def _paint(mode: str, lab: np.ndarray, means: np.ndarray, rng: np.random.Generator, opts: SynthOptions) -> np.ndarray:
    """The acquisition of the painted label map, on a coarser grid, then trilinear back to the window.

    On the acquisition grid (a coarser voxel, often a thick slice along one axis; PET 2.25–5.25 mm
    everywhere): the area average of the label means (partial volume), the per-label spread of
    the Gaussian mixture, the bias field (MR) or the uptake blobs (PET), the point-spread blur
    and the noise. Everything after the area average is smooth or per acquired voxel, so doing
    it there costs a fraction of full resolution and is what a scanner does.
    """
    n = len(means)
    size = tuple(int(v) for v in lab.shape)
    if mode == "pet":
        factors = np.full(3, rng.uniform(1.5, 3.5))
        psf = rng.uniform(0.3, 0.9, 3)
    else:
        factors = rng.uniform(1.0, 1.6, 3)
        if rng.random() < opts.thick_slice_prob:
            factors[int(rng.integers(3))] = rng.uniform(1.5, opts.max_slice_factor)
        psf = rng.uniform(0.0, 0.6, 3)
    low_size = tuple(max(2, int(round(v / f))) for v, f in zip(size, factors))
    x = _pool(means.astype(np.float32)[lab], low_size)
    spread = {"mr": (0.0, 0.05), "ct": (2.0, 20.0)}.get(mode)
    if spread is not None:
        x = x + _pool(rng.uniform(*spread, n).astype(np.float32)[lab], low_size) * rng.standard_normal(low_size, dtype=np.float32)
    if mode == "mr":
        x = x * np.exp(rng.uniform(0.0, 0.35) * smooth_field(rng, low_size, 4))
    elif mode == "pet":
        x = x * np.exp(rng.uniform(0.1, 0.5) * smooth_field(rng, low_size, int(rng.integers(4, 9))))
    if np.any(psf > 0.05):
        x = ndimage.gaussian_filter(x, sigma=tuple(float(v) for v in psf), mode="nearest")
    if mode == "mr":
        sigma = rng.uniform(0.0, 0.04)
        x = x + sigma * rng.standard_normal(low_size, dtype=np.float32)
        if rng.random() < 0.5:  # Rician: the magnitude of a complex signal with noise in both parts
            x = np.sqrt(x * x + (sigma * rng.standard_normal(low_size, dtype=np.float32)) ** 2)
    elif mode == "ct":
        x = x + rng.uniform(3.0, 30.0) * rng.standard_normal(low_size, dtype=np.float32)
    else:
        counts = rng.uniform(3.0, 60.0) / max(float(np.median(means)), 1e-3)  # expected counts per unit activity
        x = rng.poisson(np.clip(x, 0, None) * counts).astype(np.float32) / np.float32(counts)
    image = x if low_size == size else F.interpolate(_tensor(x), size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    if mode == "mr":
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) / max(hi - lo, 1e-6)) ** np.float32(np.exp(rng.normal(0.0, 0.25)))
    elif mode == "ct":
        image = np.clip(image, -1024.0, 3000.0)
    return np.ascontiguousarray(image, dtype=np.float32)


__all__ = ["CONTRAST_STEP", "CT_TISSUES", "MODES", "SynthOptions", "SynthResult", "ct_tissue_classes", "deform", "mode_weights", "smooth_field", "synthesize"]
