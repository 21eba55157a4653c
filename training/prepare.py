"""Data preparation: labelled volumes → cleaned, resampled, RAS-canonical training cache.

Usage::

    python -m training.prepare SRC [SRC ...] --out CACHE [--model NAME|PATH]

``SRC`` is either a folder of case folders in the layout of ``../shared/data/train``
(``<case>/image.nii.gz``, multi-label ``<case>/label.nii.gz``, ``<case>/labels.json``) or an
nnU-Net raw dataset folder (``dataset.json`` + ``imagesTr/<case>_0000.nii.gz`` +
``labelsTr/<case>.nii.gz``), or a single case folder: the cases are found by
:func:`SAMMed3DLib.cases.find_cases`, the finder ``sammed3d evaluate`` uses too.

Design
------
0. **The model card fixes the grid.** The voxel size, the window side and the axis orientation
   come from a model card's :class:`~SAMMed3DLib.card.WindowSpec` (``--model``: the model to be
   trained or fine-tuned; without it the card defaults, which the official and the shipped
   default models follow: 1.5 mm, 128³, RAS). ``index.json`` records that spec, and the trainer
   refuses a model whose card disagrees with it.
1. **Resample first, clean second.** Each case is resampled once onto an isotropic grid of the
   card's spacing whose array axes run toward patient **R, A, S** (the orientation of the
   inference window, ``../shared/spec/SAM_MED3D_FACTS.md`` §3): image linear, label map nearest,
   0 outside the source image, no clipping. All cleaning then works on the same voxel size and on
   axis-aligned RAS axes, so "1.5 cm", "1 cm³" and "left/right" mean the same thing everywhere.
   The grid covers the source image's physical bounding box; its size per axis is
   ``floor(extent / spacing)`` (as torchio's ``Resample`` does), at least 1.
2. **The paper's four cleaning steps** (SAM-Med3D §3.2), each a small pure function on numpy
   arrays (:mod:`training.cleaning`, re-exported here), applied per structure in this order:

   a. *split* (step 2, first half) — the multi-class label map becomes one binary mask per
      class (:func:`split_classes`);
   b. *meta* (step 1) — drop a mask whose volume is under 1 cm³ or whose bounding box is
      shorter than 1.5 cm along any axis (:func:`passes_size_check`). The paper states this for
      whole cases; a case whose *image* fails the same test is dropped as well;
   c. *background* (step 2, second half) — drop a mask whose background exceeds 99 % of "the
      whole volume" (:func:`background_fraction`). **Interpretation:** the volume a training
      sample actually shows the model is a window-sized crop around the mask (the official pipeline
      crops/pads every sample to 128³ around its label), so the fraction is measured against
      that crop (128³ for the default card), zero padding counting as background:
      ``1 − min(voxels, 128³) / 128³``. Measured on the whole scan instead, every
      organ smaller than 1 % of a CT (a kidney in a 40-litre abdomen) would go, which is clearly
      not what the released data contains. 1 % of a 128³ crop at 1.5 mm is 20,972 voxels
      (≈ 71 ml), which still removes most small lesions and thin structures, so the threshold
      is an option (``--max-background``) and the command logs every mask it removes. On
      ``../shared/data/train`` the paper's 0.99 keeps 21 of 103 structures; the shipped default
      model was trained with 0.999 (≥ 2,098 voxels ≈ 7 ml), which keeps 74;
   d. *components* (step 3) — keep the 5 largest connected components (26-connectivity,
      :func:`keep_largest_components`), removing the smaller specks;
   e. *symmetry* (step 4) — a paired structure named without a side (``kidney``, ``lung``…)
      whose two largest components lie on either side of a sagittal plane is split into
      ``<name>_left`` and ``<name>_right`` (:func:`split_left_right`); the halves pass (b) again.
3. **Cache.** One uncompressed ``<case>.npz`` per case (``image`` float32 (R, A, S) and
   ``label`` uint8 (R, A, S), values 1..n = the case's cleaned structures) plus ``index.json``
   (the window spec, structure names, voxel counts, bounding boxes, case ids, the grid's LPS origin and
   direction — voxel (i, j, k) lies at ``origin_lps + direction·(i, j, k)·spacing`` — and
   everything dropped and why). Loading a case is one ``np.load``; no NIfTI decoding during training.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from SAMMed3DLib.atomic import atomic_open, atomic_write_json
from SAMMed3DLib.card import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_SPACING_MM,
    WINDOW_ORIENTATION,
    ModelCard,
    WindowSpec,
    orientation_direction_lps,
)
from SAMMed3DLib.cases import Case, find_cases, read_case_images, same_grid
from SAMMed3DLib.errors import DataError, SAMMed3DError

from .cleaning import (
    KEEP_COMPONENTS,
    MAX_BACKGROUND_FRACTION,
    MIN_EXTENT_MM,
    MIN_VOLUME_ML,
    background_fraction,
    is_symmetric_name,
    keep_largest_components,
    mask_bbox,
    passes_size_check,
    split_classes,
    split_left_right,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Geometry: resampling onto an RAS-canonical isotropic grid
# --------------------------------------------------------------------------------------------

#: Direction of the cache grid in LPS, the model window's: index i → −x (Right), j → −y
#: (Anterior), k → +z (Superior).
CACHE_DIRECTION_LPS: tuple[float, ...] = orientation_direction_lps(WINDOW_ORIENTATION)


def ras_reference_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty image whose grid covers ``image``'s physical extent, isotropic, axes toward R, A, S.

    Args:
        image: any 3D SimpleITK image (oblique allowed).
        spacing_mm: output voxel size in mm.

    Returns:
        A float32 SimpleITK image of zeros with direction :data:`CACHE_DIRECTION_LPS`; its size per
        axis is ``max(1, floor(extent_mm / spacing_mm))`` and it is centred on the source.
    """
    size = np.array(image.GetSize(), dtype=float)
    corners_idx = [
        (x, y, z) for x in (-0.5, size[0] - 0.5) for y in (-0.5, size[1] - 0.5) for z in (-0.5, size[2] - 0.5)
    ]
    corners_lps = np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in corners_idx])
    direction = np.array(CACHE_DIRECTION_LPS).reshape(3, 3)
    corners_grid = corners_lps @ direction  # coordinates along the new axes (columns of direction)
    lo, hi = corners_grid.min(axis=0), corners_grid.max(axis=0)
    new_size = np.maximum(1, np.floor((hi - lo) / spacing_mm + 1e-6)).astype(int)
    centre_grid = (lo + hi) / 2.0
    first_centre_grid = centre_grid - (new_size - 1) / 2.0 * spacing_mm
    origin_lps = direction @ first_centre_grid
    ref = sitk.Image([int(s) for s in new_size], sitk.sitkFloat32)
    ref.SetSpacing([spacing_mm] * 3)
    ref.SetDirection(CACHE_DIRECTION_LPS)
    ref.SetOrigin([float(v) for v in origin_lps])
    return ref


def resample_label_to_ras(label: sitk.Image, ref: sitk.Image) -> np.ndarray:
    """Resample a label map (nearest) onto a grid from :func:`ras_reference_grid`; 0 outside it.

    The values keep their type: a uint8 map stays uint8, any other (uint16 FreeSurfer colour
    table values up to 2035, signed or float label files) becomes uint16, so that no label value
    up to 65535 (the largest a labels.json may name) is clamped.

    Returns:
        An array (nR, nA, nS) whose axis 0 increases toward patient Right, 1 toward Anterior,
        2 toward Superior (``ref``'s index (i, j, k) = array [i, j, k]).
    """
    pixel = sitk.sitkUInt8 if label.GetPixelID() == sitk.sitkUInt8 else sitk.sitkUInt16
    lab = sitk.Resample(label, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, pixel)
    # SimpleITK arrays are (k, j, i); transpose to (i, j, k) = (R, A, S).
    return np.ascontiguousarray(sitk.GetArrayFromImage(lab).transpose(2, 1, 0))


def resample_to_ras(image: sitk.Image, label: sitk.Image, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Resample an image (linear) and its label map (nearest) onto the RAS grid.

    Args:
        image: source image (any pixel type, 3D).
        label: integer label map on the same grid as ``image``.
        spacing_mm: output isotropic spacing in mm.

    Returns:
        ``(image_ras, label_ras, reference)``: float32 and integer arrays of shape (nR, nA, nS) —
        array axis 0 increases toward patient Right, 1 toward Anterior, 2 toward Superior —
        and the SimpleITK reference grid they lie on (its index (i, j, k) = array [i, j, k]).
        ``label_ras`` is uint8 for a uint8 label map, uint16 otherwise
        (:func:`resample_label_to_ras`).
    """
    ref = ras_reference_grid(image, spacing_mm)
    img = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    image_ras = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0), dtype=np.float32)
    return image_ras, resample_label_to_ras(label, ref), ref


# --------------------------------------------------------------------------------------------
# Preparing one case and the whole cache
# --------------------------------------------------------------------------------------------


@dataclass
class PrepareOptions:
    """Options of :func:`prepare`. Cleaning defaults follow the paper (§3.2).

    ``spacing_mm`` and ``window`` are the window spec of the model card the cache is prepared
    for (:meth:`for_card`); their defaults are the card module's. ``card`` names that card
    (``""``: the defaults).
    """

    spacing_mm: float = DEFAULT_SPACING_MM
    min_volume_ml: float = MIN_VOLUME_ML
    min_extent_mm: float = MIN_EXTENT_MM
    max_background: float = MAX_BACKGROUND_FRACTION
    keep_components: int = KEEP_COMPONENTS
    window: int = DEFAULT_INPUT_SIZE
    card: str = ""

    @classmethod
    def for_card(cls, card: ModelCard, **cleaning: Any) -> PrepareOptions:
        """Options whose grid is ``card``'s window spec; ``cleaning`` sets the other fields."""
        return cls(spacing_mm=card.spacing_mm, window=card.input_size, card=card.name, **cleaning)

    @property
    def window_spec(self) -> WindowSpec:
        """The window spec the cache is prepared for (recorded in ``index.json``)."""
        return WindowSpec(self.spacing_mm, self.window, WINDOW_ORIENTATION)


@dataclass
class Dropped:
    """A mask (or case) removed by a cleaning step."""

    case: str
    structure: str
    step: str
    reason: str


@dataclass
class CaseEntry:
    """Index entry of one cached case."""

    case: str
    file: str
    shape_ras: list[int]
    modality: str
    region: str
    source: str
    origin_lps: list[float]
    structures: list[dict[str, Any]] = field(default_factory=list)
    #: LPS direction (row-major 3×3) of the cache grid: index i → −x, j → −y, k → +z.
    direction_lps: list[float] = field(default_factory=lambda: list(CACHE_DIRECTION_LPS))


def clean_structures(
    case_id: str, label_ras: np.ndarray, names: dict[int, str], opts: PrepareOptions
) -> tuple[list[tuple[str, np.ndarray]], list[Dropped]]:
    """Run cleaning steps a–e of the module docstring on one RAS label map.

    Args:
        case_id: for the drop log.
        label_ras: integer label map (R, A, S) at ``opts.spacing_mm``.
        names: class value → name.
        opts: thresholds.

    Returns:
        The kept ``(name, bool mask)`` structures and the list of drops.
    """
    spacing = [opts.spacing_mm] * 3
    dropped: list[Dropped] = []
    kept: list[tuple[str, np.ndarray]] = []
    for name, mask in split_classes(label_ras, names):
        ok, why = passes_size_check(mask, spacing, opts.min_volume_ml, opts.min_extent_mm)
        if not ok:
            dropped.append(Dropped(case_id, name, "1-size", why))
            continue
        bg = background_fraction(mask, opts.window)
        if bg > opts.max_background:
            dropped.append(Dropped(case_id, name, "2-background", f"background {bg:.4f} of the {opts.window}³ crop > {opts.max_background}"))
            continue
        mask, removed = keep_largest_components(mask, opts.keep_components)
        if removed:
            logger.info("%s/%s: removed %d small connected component(s)", case_id, name, removed)
        if is_symmetric_name(name):
            pair = split_left_right(mask, lr_axis=0, right_is_increasing=True)
            if pair is not None:
                for side, half in zip(("left", "right"), pair):
                    ok, why = passes_size_check(half, spacing, opts.min_volume_ml, opts.min_extent_mm)
                    if ok:
                        kept.append((f"{name}_{side}", half))
                    else:
                        dropped.append(Dropped(case_id, f"{name}_{side}", "4-symmetry", why))
                logger.info("%s/%s: split into left and right", case_id, name)
                continue
        kept.append((name, mask))
    return kept, dropped


def prepare_case(case: Case, out_dir: Path, opts: PrepareOptions) -> tuple[CaseEntry | None, list[Dropped]]:
    """Resample, clean and cache one case. Returns its index entry (None when nothing is kept)."""
    image, label = read_case_images(case)
    if image.GetSize() != label.GetSize():
        raise DataError(f"case {case.case_id}: image size {image.GetSize()} differs from label size {label.GetSize()}")
    extent_mm = [n * s for n, s in zip(image.GetSize(), image.GetSpacing())]
    if min(extent_mm) < opts.min_extent_mm or np.prod(extent_mm) / 1000.0 < opts.min_volume_ml:
        return None, [Dropped(case.case_id, "*", "1-size", f"image extent {extent_mm} mm is under the size limits")]
    if _same_grid(image, label):
        label.CopyInformation(image)  # label files often differ from the image in the last digits
    image_ras, label_ras, ref = resample_to_ras(image, label, opts.spacing_mm)
    kept, dropped = clean_structures(case.case_id, label_ras, case.names, opts)
    if not kept:
        return None, dropped
    if len(kept) > 255:
        raise DataError(f"case {case.case_id} has {len(kept)} structures after cleaning; the cache holds at most 255 per case")
    out_label = np.zeros(label_ras.shape, dtype=np.uint8)
    structures = []
    for value, (name, mask) in enumerate(kept, start=1):
        out_label[mask] = value
        lo, hi = mask_bbox(mask)  # type: ignore[misc]
        voxels = int(mask.sum())
        structures.append(
            {"value": value, "name": name, "voxels": voxels, "volume_ml": round(voxels * opts.spacing_mm**3 / 1000.0, 3),
             "bbox_ras": [list(lo), list(hi)]}
        )
    file_name = f"{case.case_id}.npz"
    _atomic_savez(out_dir / file_name, image=image_ras, label=out_label)
    entry = CaseEntry(
        case.case_id, file_name, list(image_ras.shape), case.modality, case.region, str(case.folder),
        [float(v) for v in ref.GetOrigin()], structures,
    )
    return entry, dropped


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """Same size and nearly the same geometry (label files often differ in the last digits)."""
    return same_grid(a, b, spacing=(1e-5, tol), origin=(1e-5, tol * 10), direction=(1e-5, tol))


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)


def prepare(sources: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], opts: PrepareOptions | None = None) -> dict[str, Any]:
    """Build a training cache from labelled sources; see the module docstring.

    Args:
        sources: case folders, folders of case folders, or nnU-Net raw dataset folders.
        out_dir: cache folder (created); ``index.json`` and one ``<case>.npz`` per case.
        opts: cleaning and resampling options.

    Returns:
        The index dict written to ``out_dir/index.json``.

    Raises:
        DataError: a source is unusable, or no structure survives cleaning.
    """
    opts = opts or PrepareOptions()
    spec = opts.window_spec  # checks spacing and window
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = find_cases(sources)
    entries: list[CaseEntry] = []
    dropped: list[Dropped] = []
    for case in cases:
        t0 = time.perf_counter()
        entry, drops = prepare_case(case, out, opts)
        dropped.extend(drops)
        for d in drops:
            logger.info("dropped %s/%s at step %s: %s", d.case, d.structure, d.step, d.reason)
        if entry is not None:
            entries.append(entry)
            logger.info("%s: %d structure(s) kept, %d dropped, shape %s (%.1f s)", case.case_id, len(entry.structures), len(drops), entry.shape_ras, time.perf_counter() - t0)
        else:
            logger.warning("%s: nothing kept after cleaning", case.case_id)
    if not entries:
        raise DataError(f"no structure survived cleaning in {[str(s) for s in sources]}; check the labels or relax the thresholds")
    by_step: dict[str, int] = {}
    for d in dropped:
        by_step[d.step] = by_step.get(d.step, 0) + 1
    index = {
        "version": 1,
        "window": spec.to_dict(),
        "card": opts.card or None,
        "spacing_mm": spec.spacing_mm,
        "orientation": spec.orientation,
        "axes": "array axis 0 → patient Right, 1 → Anterior, 2 → Superior",
        "options": asdict(opts),
        "cases": [asdict(e) for e in entries],
        "dropped": [asdict(d) for d in dropped],
        "dropped_by_step": by_step,
        "n_structures": sum(len(e.structures) for e in entries),
    }
    atomic_write_json(out / "index.json", index, indent=1)
    logger.info("cache %s: %d case(s), %d structure(s); dropped per step: %s", out, len(entries), index["n_structures"], by_step)
    return index


def _card_of(model: str) -> ModelCard:
    """The model card of a registry name or checkpoint path (loads the model on the CPU)."""
    from SAMMed3DLib.checkpoint import load_model

    return load_model(model, device="cpu").card


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m training.prepare SRC... --out CACHE [--model NAME|PATH]``."""
    defaults = WindowSpec()
    parser = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="case folders, folders of case folders, or nnU-Net raw dataset folders")
    parser.add_argument("--out", required=True, help="cache folder to write")
    parser.add_argument("--model", help="registry name or checkpoint of the model to train or fine-tune: its card sets spacing and window "
                        f"(default: the card defaults, {defaults})")
    parser.add_argument("--spacing", type=float, help=f"isotropic output spacing in mm (default: the card's, {defaults.spacing_mm:g})")
    parser.add_argument("--window", type=int, help=f"model window side in voxels, the crop of --max-background (default: the card's, {defaults.input_size})")
    parser.add_argument("--min-volume-ml", type=float, default=MIN_VOLUME_ML)
    parser.add_argument("--min-extent-mm", type=float, default=MIN_EXTENT_MM)
    parser.add_argument("--max-background", type=float, default=MAX_BACKGROUND_FRACTION, help="drop masks whose background exceeds this fraction of the window crop (paper: 0.99)")
    parser.add_argument("--keep-components", type=int, default=KEEP_COMPONENTS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if (args.spacing is not None and not args.spacing > 0) or (args.window is not None and args.window < 1) or not 0 < args.max_background <= 1 or args.keep_components < 1:
        parser.error("--spacing must be > 0, --window ≥ 1, --max-background in (0, 1], --keep-components ≥ 1")
    cleaning = {"min_volume_ml": args.min_volume_ml, "min_extent_mm": args.min_extent_mm, "max_background": args.max_background, "keep_components": args.keep_components}
    try:
        if args.model:
            opts = PrepareOptions.for_card(_card_of(args.model), **cleaning)
            for flag, given, own in (("--spacing", args.spacing, opts.spacing_mm), ("--window", args.window, opts.window)):
                if given is not None and given != own:
                    parser.error(f"{flag} {given:g} disagrees with the card of {args.model} ({own:g}); drop {flag} to prepare the cache for that model")
        else:
            opts = PrepareOptions(spacing_mm=args.spacing or defaults.spacing_mm, window=args.window or defaults.input_size, **cleaning)
        index = prepare(args.sources, args.out, opts)
    except SAMMed3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(index['cases'])} case(s), {index['n_structures']} structure(s) of {opts.window_spec} written to {args.out}; dropped per step: {index['dropped_by_step']}")
    for d in index["dropped"]:
        print(f"  dropped {d['case']}/{d['structure']} ({d['step']}): {d['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
