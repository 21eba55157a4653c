"""The SAM-Med3D paper's interactive protocol on a folder of labelled cases.

For every case and every labelled structure, a simulated user clicks and the method (the model
through :class:`SAMMed3DLib.session.Session`, or a baseline with the same click interface)
answers with a mask on the **original image grid**:

1. the first click is a positive voxel of the structure (:func:`SAMMed3DLib.clicks.first_click`);
2. every next click comes from the error region of the current mask against the ground truth,
   on the original grid (:func:`SAMMed3DLib.clicks.next_click`), positive on a false negative,
   negative on a false positive (both through :class:`SAMMed3DLib.clicks.SimulatedUser`, the
   simulator the trainer's rounds use too);
3. Dice and NSD (tolerance 1 mm by default, the official SAM-Med3D metric code's value; see
   :mod:`SAMMed3DLib.metrics`) are recorded after each requested click count (e.g. 1, 3, 5, 10).
   When the mask becomes perfect, the simulated user stops: later counts repeat the last values.

Randomness: each structure gets its own generator seeded from (global seed, CRC-32 of the case
name, label value), so a structure's clicks do not depend on which other cases or labels are
evaluated, or in which order.

Data layout (``../shared/data/README.md``)::

    DATA_DIR/<case>/image.nii.gz   3D image
    DATA_DIR/<case>/label.nii.gz   multi-label map on the same grid (0 = background)
    DATA_DIR/<case>/labels.json    {"labels": {"1": "liver", ...}, ...}

or a single case folder, or an nnU-Net raw dataset: the cases are found by
:func:`SAMMed3DLib.cases.find_cases`, the finder ``training.prepare`` uses too. The label map must
lie on the image grid.

Structures smaller than ``min_voxels`` (default :data:`MIN_STRUCTURE_VOXELS`) or absent from the
label map are skipped with a logged reason and counted in the summary.

``seconds`` in the rows is the time spent inside the method's clicks up to that click count
(the model's image encoding included, click simulation and metrics excluded).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import SimpleITK as sitk

from .atomic import AtomicFiles
from .cases import Case, find_cases, read_case_images, same_grid
from .clicks import ClickMode, SimulatedUser, check_click_mode
from .errors import ConfigError, DataError
from .metrics import DEFAULT_NSD_TOLERANCE_MM, dice, normalized_surface_distance
from .outputs import check_output_path, readable_image, write_text_verified, write_verified

logger = logging.getLogger(__name__)

#: Click counts the paper reports (Table 3).
DEFAULT_CLICKS: tuple[int, ...] = (1, 3, 5, 10)
#: Structures with fewer voxels are skipped: a few voxels are a labelling artefact, not an object
#: a user would segment interactively (the shared data already drops structures under 100).
MIN_STRUCTURE_VOXELS = 10
#: Methods evaluate() knows by name; a callable ``image -> ClickSegmenter`` also works.
METHODS: tuple[str, ...] = ("model", "growcut")
Method = Literal["model", "growcut"]

CSV_COLUMNS: tuple[str, ...] = ("case", "label", "name", "voxels", "clicks", "dice", "nsd", "seconds")

#: progress(done, total, message), called once per structure (evaluated or skipped).
ProgressCallback = Callable[[int, int, str], None]


class ClickSegmenter(Protocol):
    """What the protocol needs from a method: the click interface of ``Session``."""

    def click_index(self, index_xyz: Sequence[float] | np.ndarray, positive: bool = True) -> Any:
        """Add a click at an ITK index (x, y, z) and update the mask."""

    @property
    def mask_array(self) -> np.ndarray:
        """Current mask, (z, y, x) array on the image grid, non-zero = object."""

    def reset(self) -> None:
        """Forget all clicks (start a new object)."""


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


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """Metrics of one structure after ``clicks`` clicks (one CSV row)."""

    case: str
    label: int
    name: str
    voxels: int
    clicks: int
    dice: float
    nsd: float
    seconds: float


@dataclass(frozen=True)
class Skipped:
    """A structure that was not evaluated, and why."""

    case: str
    label: int
    name: str
    voxels: int
    reason: str


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


@dataclass
class EvaluationResult:
    """Everything one evaluation produced.

    Attributes:
        rows: one row per evaluated structure and requested click count.
        skipped: structures left out, with the reason.
        clicks: the requested click counts, ascending.
        model: model name (its card's) or the baseline's name.
        method: "model", "growcut" or the factory's name.
        click_mode: "random" or "center".
        seed: the global seed.
        tolerance_mm: NSD tolerance.
        seconds: wall time of the whole evaluation.
    """

    rows: list[Row]
    skipped: list[Skipped]
    clicks: tuple[int, ...]
    model: str
    method: str
    click_mode: str
    seed: int
    tolerance_mm: float
    seconds: float = 0.0
    cases: list[str] = field(default_factory=list)

    @property
    def structures(self) -> int:
        """Number of evaluated structures (case, label)."""
        return len({(r.case, r.label) for r in self.rows})

    def _mean_by_clicks(self, metric: str, rows: Iterable[Row] | None = None) -> dict[int, float]:
        rows = list(self.rows if rows is None else rows)
        return {k: _mean([getattr(r, metric) for r in rows if r.clicks == k]) for k in self.clicks}

    def mean_dice(self) -> dict[int, float]:
        """Mean Dice over structures, per click count."""
        return self._mean_by_clicks("dice")

    def mean_nsd(self) -> dict[int, float]:
        """Mean NSD over structures, per click count."""
        return self._mean_by_clicks("nsd")

    def per_case(self) -> dict[str, dict[str, Any]]:
        """{case: {"structures": n, "dice": {clicks: mean}, "nsd": {clicks: mean}}}, in case order."""
        out: dict[str, dict[str, Any]] = {}
        for case in dict.fromkeys(r.case for r in self.rows):
            rows = [r for r in self.rows if r.case == case]
            out[case] = {
                "structures": len({r.label for r in rows}),
                "dice": self._mean_by_clicks("dice", rows),
                "nsd": self._mean_by_clicks("nsd", rows),
            }
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """The one-line JSON summary (keys: structures, mean_dice, mean_nsd, model, click_mode, seconds, ...)."""

        def clean(d: Mapping[int, float]) -> dict[str, float | None]:
            return {str(k): (None if math.isnan(v) else round(v, 6)) for k, v in d.items()}

        return {
            "structures": self.structures,
            "skipped": len(self.skipped),
            "cases": len(self.cases),
            "mean_dice": clean(self.mean_dice()),
            "mean_nsd": clean(self.mean_nsd()),
            "model": self.model,
            "method": self.method,
            "click_mode": self.click_mode,
            "seed": self.seed,
            "nsd_tolerance_mm": self.tolerance_mm,
            "seconds": round(self.seconds, 3),
        }

    def write_csv(self, path: str | Path, files: AtomicFiles | None = None) -> Path:
        """Write the per-structure rows (columns :data:`CSV_COLUMNS`); see :func:`write_csv_rows`."""
        rows = [[r.case, r.label, r.name, r.voxels, r.clicks, f"{r.dice:.6f}", f"{r.nsd:.6f}", f"{r.seconds:.4f}"] for r in self.rows]
        return write_csv_rows(path, [CSV_COLUMNS, *rows], files=files)

    def write_summary_csv(self, path: str | Path, files: AtomicFiles | None = None) -> Path:
        """Write means per click count: over all structures (case "ALL"), then per case; see :func:`write_csv_rows`."""
        dice_all, nsd_all = self.mean_dice(), self.mean_nsd()
        rows: list[Sequence[Any]] = [("case", "clicks", "structures", "mean_dice", "mean_nsd")]
        rows += [("ALL", k, self.structures, f"{dice_all[k]:.6f}", f"{nsd_all[k]:.6f}") for k in self.clicks]
        for case, m in self.per_case().items():
            rows += [(case, k, m["structures"], f"{m['dice'][k]:.6f}", f"{m['nsd'][k]:.6f}") for k in self.clicks]
        return write_csv_rows(path, rows, files=files)

    def summary_text(self) -> str:
        """A small table for people: mean Dice/NSD per click count, overall and per case."""
        head = "clicks".ljust(24) + "".join(f"{k:>9}" for k in self.clicks)
        lines = [
            f"{self.method} {self.model!r}, {self.click_mode} clicks, seed {self.seed}: {self.structures} structure(s) "
            f"in {len(self.cases)} case(s), {len(self.skipped)} skipped, {self.seconds:.1f} s",
            head,
            "mean Dice".ljust(24) + "".join(f"{v:9.4f}" for v in self.mean_dice().values()),
            f"mean NSD@{self.tolerance_mm:g}mm".ljust(24) + "".join(f"{v:9.4f}" for v in self.mean_nsd().values()),
        ]
        for case, m in self.per_case().items():
            lines.append(f"  {case[:21]:<22}" + "".join(f"{v:9.4f}" for v in m["dice"].values()))
        for s in self.skipped:
            lines.append(f"skipped {s.case}/{s.label} {s.name}: {s.reason}")
        return "\n".join(lines)


# -- protocol ---------------------------------------------------------------------------------------


def write_csv_rows(path: str | Path, rows: Iterable[Sequence[Any]], files: AtomicFiles | None = None) -> Path:
    """Write ``rows`` as a CSV file all-or-nothing, re-read byte for byte; missing folders are created.

    Args:
        path: the CSV file.
        rows: the header, then the rows.
        files: stage it in this transaction (:func:`~SAMMed3DLib.outputs.all_or_nothing`); None: now.

    Raises:
        OutputError: the path cannot take a file (a folder, read-only), or the write failed.
    """
    path = check_output_path(path, "CSV file", create_folders=True)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return write_text_verified(path, buffer.getvalue(), files=files, make_folders=True)


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


def run_structure(
    segmenter: ClickSegmenter,
    gt_zyx: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    clicks: Sequence[int],
    rng: np.random.Generator,
    click_mode: ClickMode = "random",
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> dict[int, tuple[float, float, float]]:
    """Run the protocol for one structure with a fresh (reset) segmenter.

    Args:
        segmenter: the method, with its image set; it is reset first.
        gt_zyx: ground-truth mask, (z, y, x) boolean array on the image grid.
        spacing_zyx_mm: voxel size per array axis (z, y, x), mm.
        clicks: click counts to record, ascending.
        rng: this structure's generator.
        click_mode: "random" (the paper) or "center".
        tolerance_mm: NSD tolerance.

    Returns:
        {click count: (dice, nsd, seconds in the method so far)}.
    """
    segmenter.reset()
    wanted = set(clicks)
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    user = SimulatedUser(gt_zyx, rng, click_mode, spacing)
    click = user.click()
    elapsed = 0.0
    out: dict[int, tuple[float, float, float]] = {}
    last: tuple[float, float] | None = None
    for k in range(1, max(clicks) + 1):
        if click is not None:
            start = time.perf_counter()
            segmenter.click_index(click.index[::-1], click.positive)  # (z, y, x) → ITK (x, y, z)
            elapsed += time.perf_counter() - start
            pred = np.asarray(segmenter.mask_array) != 0
            last = None  # the mask changed
        if k in wanted:
            if last is None:
                last = (dice(pred, gt_zyx), normalized_surface_distance(pred, gt_zyx, spacing, tolerance_mm))
            out[k] = (last[0], last[1], elapsed)
        if click is not None and k < max(clicks):
            click = user.click(pred)
            if click is None:
                logger.debug("perfect mask after %d click(s): the simulated user stops", k)
    return out


def _method_factory(method: Method | str | SegmenterFactory, model: Any) -> tuple[SegmenterFactory, str, str]:
    """(factory, method name, model name) for a method name or a factory callable."""
    if callable(method):
        return method, getattr(method, "__name__", type(method).__name__), getattr(getattr(model, "card", None), "name", "custom")
    if method == "model":
        if model is None:
            raise ConfigError("method 'model' needs a model: pass model=load_model(...) (CLI: --model NAME|PATH)")
        from .session import Session

        card = getattr(model, "card", None)
        return (lambda image: Session(model, image)), "model", getattr(card, "name", "unnamed")
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
    clicks: Iterable[int] = DEFAULT_CLICKS,
    click_mode: ClickMode | str = "random",
    seed: int = 0,
    cases: Iterable[str] | None = None,
    exclude_cases: Iterable[str] | None = None,
    labels: Sequence[str] | None = None,
    max_cases: int | None = None,
    min_voxels: int = MIN_STRUCTURE_VOXELS,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Run the interactive protocol on every selected structure of a data folder.

    Args:
        data_dir: folder of case folders (see the module docstring for the layout).
        model: a :class:`SAMMed3DLib.Sam3D` (e.g. from ``load_model``) when ``method="model"``.
        method: ``"model"`` (the session around ``model``), ``"growcut"`` (Slicer's Grow from
            seeds, needs slicer-core) or a callable ``image -> segmenter`` with the click
            interface of ``Session`` (``click_index``, ``mask_array``, ``reset``).
        clicks: click counts after which to record metrics.
        click_mode: ``"random"`` (the paper's protocol) or ``"center"``.
        seed: global seed; each structure's generator derives from (seed, case, label).
        cases: only these case names (e.g. a held-out split).
        exclude_cases: leave these case names out.
        labels: only structures whose label value or name is listed (case-insensitive).
        max_cases: at most this many cases (first by name).
        min_voxels: skip structures with fewer voxels.
        tolerance_mm: NSD tolerance in mm.
        progress: ``progress(done, total, message)`` after each structure.

    Returns:
        The rows, skipped structures and summaries.

    Raises:
        DataError: missing/invalid data folder or case, or nothing left to evaluate.
        ConfigError: an invalid option, a missing model, or slicer-core missing for growcut.
    """
    started = time.perf_counter()
    click_counts = check_clicks(clicks)
    mode = check_click_mode(click_mode)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm!r}")
    factory, method_name, model_name = _method_factory(method, model)
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
    done = 0
    for case, structures in plan:
        if not structures:
            continue
        case_start = time.perf_counter()
        image, label_image = _read_case_images(case)
        label_zyx = sitk.GetArrayViewFromImage(label_image)
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
                gt = np.asarray(label_zyx) == value
                metrics = run_structure(segmenter, gt, spacing_zyx, click_counts, structure_rng(seed, case.case_id, value), mode, tolerance_mm)
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
    )


def check_matplotlib() -> None:
    """Raise :class:`ConfigError` with the fix when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: `pip install matplotlib` (or the package's `demo` extra)") from exc


def plot_mean_dice(results: EvaluationResult | Sequence[EvaluationResult], png_path: str | Path, files: AtomicFiles | None = None) -> Path:
    """Draw mean Dice (solid) and NSD (dashed) against the number of clicks into a PNG.

    Args:
        results: one result, or several to compare (e.g. the model and the growcut baseline).
        png_path: output .png file (missing folders are created; written atomically, decoded back).
        files: stage it in this transaction (:func:`~SAMMed3DLib.outputs.all_or_nothing`); None: now.

    Raises:
        ConfigError: matplotlib is missing.
        OutputError: the name does not end with .png, the path cannot take a file, or the write failed.
    """
    path = check_output_path(png_path, "plot", extensions=(".png",), create_folders=True)
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, EvaluationResult) else list(results)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    try:
        for res in results:
            label = f"{res.method}: {res.model}"
            line = ax.plot(list(res.mean_dice()), list(res.mean_dice().values()), marker="o", label=f"{label} Dice")[0]
            ax.plot(
                list(res.mean_nsd()),
                list(res.mean_nsd().values()),
                marker="s",
                linestyle="--",
                color=line.get_color(),
                label=f"{label} NSD@{res.tolerance_mm:g}mm",
            )
        first = results[0]
        ax.set_xlabel("clicks")
        ax.set_ylabel("mean over structures")
        ax.set_ylim(0, 1)
        ax.set_xticks(sorted({k for r in results for k in r.clicks}))
        ax.grid(alpha=0.3)
        ax.set_title(f"{first.structures} structures, {first.click_mode} clicks, seed {first.seed}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        write_verified(path, lambda temp: fig.savefig(temp, format="png"), readable_image, suffix=".png", files=files, make_folders=True)
    finally:
        plt.close(fig)
    return path


__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_CLICKS",
    "METHODS",
    "MIN_STRUCTURE_VOXELS",
    "Case",
    "ClickSegmenter",
    "EvaluationResult",
    "Row",
    "Skipped",
    "check_clicks",
    "evaluate",
    "find_cases",
    "plot_mean_dice",
    "run_structure",
    "structure_rng",
    "write_csv_rows",
]
