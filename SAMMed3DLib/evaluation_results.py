"""What ``sammed3d evaluate`` produced: per-structure rows, summaries, JSON, CSV files and the plot.

One :class:`Row` per structure and recorded step. ``clicks`` counts the clicks given so far: in the
``paper`` protocol the requested click counts (1, 3, 5, 10); in ``cvpr25`` step 0 is the box alone
and 1–5 the clicks after it; in ``correction`` step 0 is the corrupted mask as given (before any
click) and 1–N the corrective clicks. ``seconds`` is the time spent inside the method up to that
step (the model's image encoding included; click simulation and metrics excluded).

:meth:`EvaluationResult.to_json_dict` gives, for every protocol, the per-step means
(``mean_dice``, ``mean_nsd``), ``final_dice``/``final_nsd`` (the last step), ``seconds_per_step``
(mean time of each step over the structures) and ``per_structure`` rows; for ``cvpr25`` and
``correction`` also ``dice_auc``/``nsd_auc`` (:func:`~SAMMed3DLib.metrics.trapezoid_auc` over the
click steps 1..N, the box or start left out, as the challenge does: 0 to N - 1, so 0 to 4 for 5
clicks), and for ``correction`` the start Dice, the mean change after each click and the worst
first-click change.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import AtomicFiles
from .errors import ConfigError
from .metrics import trapezoid_auc
from .outputs import check_output_path, readable_image, write_text_verified, write_verified

CSV_COLUMNS: tuple[str, ...] = ("case", "label", "name", "voxels", "clicks", "dice", "nsd", "seconds")


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


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


@dataclass
class EvaluationResult:
    """Everything one evaluation produced.

    Attributes:
        rows: one row per evaluated structure and recorded step.
        skipped: structures left out, with the reason.
        clicks: the recorded click counts (steps), ascending.
        model: model name (its card's) or the baseline's name.
        method: "model", "growcut" or the factory's name.
        click_mode: "random" or "center" (paper protocol), "cvpr25" (the other two).
        seed: the global seed.
        tolerance_mm: NSD tolerance.
        seconds: wall time of the whole evaluation.
        cases: the evaluated case names.
        protocol: "paper", "cvpr25" or "correction".
        corruption: the corruption kind of the ``correction`` protocol, else None.
        details: per structure (case, label), protocol facts for the JSON rows (the box, the
            corruption's parts and Dice).
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
    protocol: str = "paper"
    corruption: str | None = None
    details: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

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

    def by_structure(self) -> dict[tuple[str, int], list[Row]]:
        """{(case, label): its rows in step order}, in evaluation order."""
        out: dict[tuple[str, int], list[Row]] = {}
        for r in self.rows:
            out.setdefault((r.case, r.label), []).append(r)
        return {key: sorted(rows, key=lambda r: r.clicks) for key, rows in out.items()}

    def _click_steps(self, rows: Sequence[Row]) -> list[Row]:
        """The rows after a click: all of them for ``paper``, steps 1..N for the others."""
        return list(rows) if self.protocol == "paper" else [r for r in rows if r.clicks >= 1]

    def structure_summaries(self) -> list[dict[str, Any]]:
        """One dict per structure: its steps, Dice, NSD, seconds per step, AUCs and protocol facts."""
        out = []
        for (case, label), rows in self.by_structure().items():
            steps = _step_seconds(rows)
            entry: dict[str, Any] = {
                "case": case,
                "label": label,
                "name": rows[0].name,
                "voxels": rows[0].voxels,
                "clicks": [r.clicks for r in rows],
                "dice": [round(r.dice, 6) for r in rows],
                "nsd": [round(r.nsd, 6) for r in rows],
                "seconds": [round(s, 4) for s in steps],
            }
            if self.protocol != "paper":
                clicked = self._click_steps(rows)
                entry["dice_auc"] = round(trapezoid_auc([r.dice for r in clicked]), 6)
                entry["nsd_auc"] = round(trapezoid_auc([r.nsd for r in clicked]), 6)
            entry.update(self.details.get((case, label), {}))
            out.append(entry)
        return out

    def correction_summary(self) -> dict[str, Any]:
        """Start Dice, mean change after each click, the worst first-click change (``correction`` only)."""
        structures = list(self.by_structure().values())
        start = [rows[0].dice for rows in structures]
        change = {k: _mean([r.dice - rows[0].dice for rows in structures for r in rows if r.clicks == k]) for k in self.clicks if k >= 1}
        first = [rows[1].dice - rows[0].dice for rows in structures if len(rows) > 1]
        return {
            "start_dice": _round(_mean(start)),
            "mean_change": {str(k): _round(v) for k, v in change.items()},
            "worst_first_click_change": _round(min(first)) if first else None,
            "first_click_losses_over_0.10": sum(1 for d in first if d < -0.10),
        }

    def to_json_dict(self) -> dict[str, Any]:
        """The one-line JSON summary (see the module docstring for the keys)."""

        def clean(d: Mapping[int, float]) -> dict[str, float | None]:
            return {str(k): _round(v) for k, v in d.items()}

        last = self.clicks[-1]
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "structures": self.structures,
            "skipped": len(self.skipped),
            "cases": len(self.cases),
            "mean_dice": clean(self.mean_dice()),
            "mean_nsd": clean(self.mean_nsd()),
            "final_dice": _round(self.mean_dice()[last]),
            "final_nsd": _round(self.mean_nsd()[last]),
        }
        summaries = self.structure_summaries()
        if self.protocol != "paper":
            out["dice_auc"] = _round(_mean([s["dice_auc"] for s in summaries]))
            out["nsd_auc"] = _round(_mean([s["nsd_auc"] for s in summaries]))
        steps = [[s["seconds"][i] for s in summaries if len(s["seconds"]) > i] for i in range(len(self.clicks))]
        out["seconds_per_step"] = [_round(_mean(v)) for v in steps]
        if self.protocol == "correction":
            out["corruption"] = self.corruption
            out.update(self.correction_summary())
        out.update(
            {
                "model": self.model,
                "method": self.method,
                "click_mode": self.click_mode,
                "seed": self.seed,
                "nsd_tolerance_mm": self.tolerance_mm,
                "seconds": round(self.seconds, 3),
                "per_structure": summaries,
            }
        )
        return out

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
        what = {"paper": f"{self.click_mode} clicks", "cvpr25": "cvpr25 protocol (box, then clicks)"}.get(
            self.protocol, f"correction protocol from {self.corruption} masks"
        )
        head = ("clicks" if self.protocol == "paper" else "clicks (0: box)" if self.protocol == "cvpr25" else "clicks (0: start)").ljust(24)
        lines = [
            f"{self.method} {self.model!r}, {what}, seed {self.seed}: {self.structures} structure(s) "
            f"in {len(self.cases)} case(s), {len(self.skipped)} skipped, {self.seconds:.1f} s",
            head + "".join(f"{k:>9}" for k in self.clicks),
            "mean Dice".ljust(24) + "".join(f"{v:9.4f}" for v in self.mean_dice().values()),
            f"mean NSD@{self.tolerance_mm:g}mm".ljust(24) + "".join(f"{v:9.4f}" for v in self.mean_nsd().values()),
        ]
        for case, m in self.per_case().items():
            lines.append(f"  {case[:21]:<22}" + "".join(f"{v:9.4f}" for v in m["dice"].values()))
        if self.protocol != "paper" and self.rows:
            j = self.to_json_dict()
            lines.append(f"Dice AUC {j['dice_auc']:.4f}, NSD AUC {j['nsd_auc']:.4f} (trapezoid over clicks 1-{self.clicks[-1]})")
            if self.protocol == "correction":
                change = ", ".join(f"{k} click(s) {v:+.4f}" for k, v in j["mean_change"].items() if v is not None)
                lines.append(
                    f"start Dice {j['start_dice']:.4f}; mean change after {change}; worst first click {j['worst_first_click_change']:+.4f}"
                )
        for s in self.skipped:
            lines.append(f"skipped {s.case}/{s.label} {s.name}: {s.reason}")
        return "\n".join(lines)


def _step_seconds(rows: Sequence[Row]) -> list[float]:
    """Seconds of each step from the cumulative seconds of a structure's rows."""
    out, before = [], 0.0
    for r in rows:
        out.append(max(r.seconds - before, 0.0))
        before = r.seconds
    return out


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
        ax.set_xlabel("clicks" if first.protocol == "paper" else "clicks (0: box)" if first.protocol == "cvpr25" else "clicks (0: start)")
        ax.set_ylabel("mean over structures")
        ax.set_ylim(0, 1)
        ax.set_xticks(sorted({k for r in results for k in r.clicks}))
        ax.grid(alpha=0.3)
        ax.set_title(f"{first.structures} structures, {first.protocol} protocol, {first.click_mode} clicks, seed {first.seed}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        write_verified(path, lambda temp: fig.savefig(temp, format="png"), readable_image, suffix=".png", files=files, make_folders=True)
    finally:
        plt.close(fig)
    return path


__all__ = ["CSV_COLUMNS", "EvaluationResult", "Row", "Skipped", "check_matplotlib", "plot_mean_dice", "write_csv_rows"]
