"""``sammed3d evaluate``: an interactive protocol on a folder of labelled cases.

For every case and every labelled structure, a simulated user prompts and the method (the model
through :class:`SAMMed3DLib.session.Session`, or a baseline with the same interface, such as
:class:`SAMMed3DLib.baselines.GrowCutSession`) answers with a mask on the **original image
grid**. Three protocols (:mod:`SAMMed3DLib.protocols`):

* ``paper`` (the default) — the SAM-Med3D paper's: the first click a positive voxel of the
  structure (:func:`SAMMed3DLib.clicks.first_click`), every next click from the error region of
  the current mask (:func:`SAMMed3DLib.clicks.next_click`), positive on a false negative, negative
  on a false positive (both through :class:`SAMMed3DLib.clicks.SimulatedUser`, the simulator the
  trainer's rounds use too); Dice and NSD (tolerance 1 mm by default, the official SAM-Med3D
  metric code's value; see :mod:`SAMMed3DLib.metrics`) after each requested click count (e.g. 1,
  3, 5, 10). When the mask becomes perfect, the simulated user stops: later counts repeat the
  last values.
* ``cvpr25`` — the CVPR 2025 challenge's: the structure's box first, then 5 clicks at the deepest
  voxel of the largest error; Dice and NSD (2 mm) after each step, Dice/NSD AUC.
* ``correction`` — a corrupted truth set as the existing mask, then N corrective clicks (3 by
  default) by the cvpr25 rule; Dice before and after each click.

Randomness: each structure gets its own generator seeded from (global seed, CRC-32 of the case
name, label value), so a structure's clicks (and box margin, and corruption) do not depend on
which other cases or labels are evaluated, or in which order.

Data layout (``../shared/data/README.md``)::

    DATA_DIR/<case>/image.nii.gz   3D image
    DATA_DIR/<case>/label.nii.gz   multi-label map on the same grid (0 = background)
    DATA_DIR/<case>/labels.json    {"labels": {"1": "liver", ...}, ...}

or a single case folder, or an nnU-Net raw dataset: the cases are found by
:func:`SAMMed3DLib.cases.find_cases`, the finder ``training.prepare`` uses too. The label map must
lie on the image grid.

Structures smaller than ``min_voxels`` (default :data:`MIN_STRUCTURE_VOXELS`) or absent from the
label map are skipped with a logged reason and counted in the summary. The results (rows, JSON,
CSV, plot) are :mod:`SAMMed3DLib.evaluation_results`.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from .cases import Case, find_cases, read_case_images, same_grid
from .clicks import ClickMode, check_click_mode
from .corruption import check_corruption
from .errors import ConfigError, DataError
from .evaluation_results import CSV_COLUMNS, EvaluationResult, Row, Skipped, check_matplotlib, plot_mean_dice, write_csv_rows
from .geometry import ImageGeometry
from .protocols import (
    CORRECTION_CLICKS,
    CVPR25_CLICKS,
    DEFAULT_TOLERANCES_MM,
    PAPER_CLICKS,
    PROTOCOLS,
    ClickSegmenter,
    check_method_supports,
    check_protocol,
    run_correction_structure,
    run_cvpr25_structure,
    run_structure,
)

logger = logging.getLogger(__name__)

#: Click counts the paper reports (Table 3): the ``paper`` protocol's default.
DEFAULT_CLICKS: tuple[int, ...] = PAPER_CLICKS
#: Each protocol's click counts when none are given (cvpr25 and correction record every step up to the largest).
PROTOCOL_CLICKS: dict[str, tuple[int, ...]] = {"paper": PAPER_CLICKS, "cvpr25": (CVPR25_CLICKS,), "correction": (CORRECTION_CLICKS,)}
#: Structures with fewer voxels are skipped: a few voxels are a labelling artefact, not an object
#: a user would segment interactively (the shared data already drops structures under 100).
MIN_STRUCTURE_VOXELS = 10
#: Methods evaluate() knows by name; a callable ``image -> ClickSegmenter`` also works.
METHODS: tuple[str, ...] = ("model", "growcut")
Method = Literal["model", "growcut"]

#: progress(done, total, message), called once per structure (evaluated or skipped).
ProgressCallback = Callable[[int, int, str], None]

SegmenterFactory = Callable[[sitk.Image], ClickSegmenter]


# -- data -------------------------------------------------------------------------------------------


def _select_labels(case: Case, labels: Sequence[str] | None) -> dict[int, str]:
    if not labels:
        return dict(case.names)
    wanted = {str(t).strip().lower() for t in labels}
    return {v: n for v, n in case.names.items() if str(v) in wanted or n.lower() in wanted}


def _read_case_images(case: Case) -> tuple[sitk.Image, sitk.Image]:
    """The case's image and label map, which must lie on one grid (no resampling here)."""
    image, label = read_case_images(case)
    if not same_grid(image, label, spacing=(1e-4, 1e-5), origin=(0.0, 1e-3), direction=(1e-5, 1e-4)):
        raise DataError(
            f"case {case.case_id}: {case.label_path.name} (size {label.GetSize()}, spacing {label.GetSpacing()}) is not on the grid of "
            f"{case.image_path.name} (size {image.GetSize()}, spacing {image.GetSpacing()}); resample the label onto the image"
        )
    return image, label


def _voxel_counts(label_zyx: np.ndarray) -> dict[int, int]:
    """{label value: voxel count} of a label map (bincount for integer maps: ~10x faster than unique)."""
    flat = np.asarray(label_zyx).ravel()
    if np.issubdtype(flat.dtype, np.integer) and flat.size and flat.min() >= 0:
        counts = np.bincount(flat)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if float(v).is_integer()}


def structure_rng(seed: int, case: str, label: int) -> np.random.Generator:
    """The generator of one structure: depends only on (seed, case name, label value)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(case.encode("utf-8")), int(label)]))


# -- protocol ---------------------------------------------------------------------------------------


def check_clicks(clicks: Iterable[int]) -> tuple[int, ...]:
    """Sorted unique click counts, each >= 1, or :class:`ConfigError`."""
    given = list(clicks)
    try:
        values = sorted({int(c) for c in given})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"click counts must be whole numbers like 1 3 5 10, got {given!r}") from exc
    if not values or values[0] < 1:
        raise ConfigError(f"click counts must be >= 1 (e.g. 1 3 5 10), got {given!r}")
    return tuple(values)


def _method_factory(
    method: Method | str | SegmenterFactory,
    model: Any,
    zoom_out: bool | None = None,
    refine: bool | None = None,
    signed_clicks: bool | None = None,
    drop_islands: bool | None = None,
    window_spacing_mm: float | None = None,
    adaptive_scale: bool | None = None,
) -> tuple[SegmenterFactory, str, str]:
    """(factory, method name, model name) for a method name or a factory callable."""
    if callable(method):
        return method, getattr(method, "__name__", type(method).__name__), getattr(getattr(model, "card", None), "name", "custom")
    if method == "model":
        if model is None:
            raise ConfigError("method 'model' needs a model: pass model=load_model(...) (CLI: --model NAME|PATH)")
        from .session import Session

        card = getattr(model, "card", None)
        switches = {"zoom_out": zoom_out, "refine": refine, "signed_clicks": signed_clicks, "drop_islands": drop_islands, "adaptive_scale": adaptive_scale}
        options: dict[str, Any] = {key: bool(value) for key, value in switches.items() if value is not None}
        if window_spacing_mm is not None:
            from .card import window_card

            options["card"] = window_card(model, window_spacing_mm)
        return (lambda image: Session(model, image, **options)), "model", getattr(card, "name", "unnamed")
    if method == "growcut":
        from .baselines import GrowCutSession, _import_growcut

        _import_growcut()  # fail before reading any data when slicer-core is missing
        return GrowCutSession, "growcut", "grow-from-seeds"
    raise ConfigError(f"method {method!r} is not known; use one of {', '.join(METHODS)}")


def evaluate(
    data_dir: str | Path,
    *,
    model: Any = None,
    method: Method | str | SegmenterFactory = "model",
    protocol: str = "paper",
    clicks: Iterable[int] | None = None,
    click_mode: ClickMode | str = "random",
    corruption: str = "near_correct",
    seed: int = 0,
    cases: Iterable[str] | None = None,
    exclude_cases: Iterable[str] | None = None,
    labels: Sequence[str] | None = None,
    max_cases: int | None = None,
    min_voxels: int = MIN_STRUCTURE_VOXELS,
    tolerance_mm: float | None = None,
    progress: ProgressCallback | None = None,
    zoom_out: bool | None = None,
    refine: bool | None = None,
    signed_clicks: bool | None = None,
    drop_islands: bool | None = None,
    window_spacing_mm: float | None = None,
    adaptive_scale: bool | None = None,
) -> EvaluationResult:
    """Run an interactive protocol on every selected structure of a data folder.

    Args:
        data_dir: folder of case folders (see the module docstring for the layout).
        model: a :class:`SAMMed3DLib.Sam3D` (e.g. from ``load_model``) when ``method="model"``.
        method: ``"model"`` (the session around ``model``), ``"growcut"`` (Slicer's Grow from
            seeds, needs slicer-core) or a callable ``image -> segmenter`` with the click
            interface of ``Session`` (``click_index``, ``mask_array``, ``reset``; ``set_box``
            for cvpr25, ``set_mask`` for correction).
        protocol: ``"paper"``, ``"cvpr25"`` or ``"correction"`` (:data:`~SAMMed3DLib.protocols.PROTOCOLS`).
        clicks: paper: the click counts after which to record metrics (default 1, 3, 5, 10);
            cvpr25 and correction: every step up to the largest count is recorded (default 5
            and 3).
        click_mode: the paper protocol's clicks, ``"random"`` (the paper) or ``"center"``; the
            other protocols use the cvpr25 rule.
        corruption: the correction protocol's start (:data:`~SAMMed3DLib.corruption.CORRUPTIONS`).
        seed: global seed; each structure's generator derives from (seed, case, label).
        cases: only these case names (e.g. a held-out split).
        exclude_cases: leave these case names out.
        labels: only structures whose label value or name is listed (case-insensitive).
        max_cases: at most this many cases (first by name).
        min_voxels: skip structures with fewer voxels.
        tolerance_mm: NSD tolerance in mm; None: the protocol's (paper 1 mm, the others 2 mm).
        progress: ``progress(done, total, message)`` after each structure.
        zoom_out: the model's session zooms out for large objects (``Session(zoom_out=...)``);
            None: the session's default.
        refine: the model's session snaps its masks to the image's edges (``Session(refine=...)``,
            :mod:`.refine`); None: the model's default.
        signed_clicks: the model's session changes the mask only each click's way
            (``Session(signed_clicks=...)``); None: the model's default.
        drop_islands: the model's session drops the far parts a click adds
            (``Session(drop_islands=...)``, :mod:`.islands`); None: the session's default (off).
        window_spacing_mm: the model's window voxel spacing in mm
            (:func:`~SAMMed3DLib.card.with_window_spacing`); None: the model card's.
        adaptive_scale: the model's session sees an object fine first, coarser as its clicks
            spread (``Session(adaptive_scale=...)``, :mod:`.scale`); None: the model's default.

    Returns:
        The rows, skipped structures and summaries.

    Raises:
        DataError: missing/invalid data folder or case, or nothing left to evaluate.
        ConfigError: an invalid option, a missing model, slicer-core missing for growcut, or a
            method without the box or mask input its protocol needs.
    """
    started = time.perf_counter()
    protocol = check_protocol(protocol)
    counts = check_clicks(PROTOCOL_CLICKS[protocol] if clicks is None else clicks)
    click_counts = counts if protocol == "paper" else tuple(range(counts[-1] + 1))
    mode = check_click_mode(click_mode) if protocol == "paper" else "cvpr25"
    kind = check_corruption(corruption) if protocol == "correction" else None
    tolerance_mm = DEFAULT_TOLERANCES_MM[protocol] if tolerance_mm is None else tolerance_mm
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")
    factory, method_name, model_name = _method_factory(method, model, zoom_out, refine, signed_clicks, drop_islands, window_spacing_mm, adaptive_scale)
    if method == "model":
        from .session import Session

        check_method_supports(Session, protocol, method_name)
    elif isinstance(factory, type):
        check_method_supports(factory, protocol, method_name)
    selected = find_cases(data_dir, cases=cases, exclude_cases=exclude_cases, max_cases=max_cases)
    plan = [(case, _select_labels(case, labels)) for case in selected]
    total = sum(len(s) for _, s in plan)
    if total == 0:
        raise DataError(f"no structure named or numbered {list(labels or [])} in the {len(selected)} selected case(s) of {data_dir}")
    if labels:
        matched = {str(v) for _, s in plan for v in s} | {n.lower() for _, s in plan for n in s.values()}
        for token in labels:
            if str(token).strip().lower() not in matched:
                logger.warning("--labels: %r matches no structure in the selected cases", token)

    rows: list[Row] = []
    skipped: list[Skipped] = []
    details: dict[tuple[str, int], dict[str, Any]] = {}
    done = 0
    for case, structures in plan:
        if not structures:
            continue
        case_start = time.perf_counter()
        image, label_image = _read_case_images(case)
        label_zyx = sitk.GetArrayViewFromImage(label_image)
        geometry = ImageGeometry.from_image(image)
        spacing_zyx = tuple(float(s) for s in image.GetSpacing()[::-1])
        present = _voxel_counts(label_zyx)
        unnamed = sorted(v for v in present if v != 0 and v not in case.names)
        if unnamed:
            logger.warning("case %s: label value(s) %s are not named in its label table and are not evaluated", case.case_id, unnamed)
        segmenter: ClickSegmenter | None = None
        for value, name in structures.items():
            voxels = present.get(value, 0)
            reason = None
            if voxels == 0:
                reason = f"absent from {case.label_path.name}"
            elif voxels < min_voxels:
                reason = f"only {voxels} voxel(s), fewer than {min_voxels}"
            if reason is not None:
                logger.info("skip %s/%d %s: %s", case.case_id, value, name, reason)
                skipped.append(Skipped(case.case_id, value, name, voxels, reason))
            else:
                if segmenter is None:
                    segmenter = factory(image)
                    check_method_supports(segmenter, protocol, method_name)
                gt = np.asarray(label_zyx) == value
                rng = structure_rng(seed, case.case_id, value)
                if protocol == "paper":
                    metrics = run_structure(segmenter, gt, spacing_zyx, click_counts, rng, mode, tolerance_mm)  # type: ignore[arg-type]
                elif protocol == "cvpr25":
                    metrics, details[(case.case_id, value)] = run_cvpr25_structure(segmenter, gt, geometry, rng, counts[-1], tolerance_mm)
                else:
                    metrics, details[(case.case_id, value)] = run_correction_structure(
                        segmenter, gt, spacing_zyx, rng, kind, counts[-1], tolerance_mm  # type: ignore[arg-type]
                    )
                rows.extend(Row(case.case_id, value, name, voxels, k, *metrics[k]) for k in click_counts)
                logger.debug("%s/%d %s: Dice %s", case.case_id, value, name, {k: round(m[0], 3) for k, m in metrics.items()})
            done += 1
            if progress is not None:
                progress(done, total, f"{case.case_id}/{name}")
        logger.info("case %s: %d structure(s) in %.1f s", case.case_id, len(structures), time.perf_counter() - case_start)

    return EvaluationResult(
        rows=rows,
        skipped=skipped,
        clicks=click_counts,
        model=model_name,
        method=method_name,
        click_mode=mode,
        seed=int(seed),
        tolerance_mm=float(tolerance_mm),
        seconds=time.perf_counter() - started,
        cases=[c.case_id for c, s in plan if s],
        protocol=protocol,
        corruption=kind,
        details=details,
    )


__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_CLICKS",
    "METHODS",
    "MIN_STRUCTURE_VOXELS",
    "PROTOCOLS",
    "PROTOCOL_CLICKS",
    "Case",
    "ClickSegmenter",
    "EvaluationResult",
    "Row",
    "Skipped",
    "check_clicks",
    "check_matplotlib",
    "evaluate",
    "find_cases",
    "plot_mean_dice",
    "run_structure",
    "structure_rng",
    "write_csv_rows",
]
