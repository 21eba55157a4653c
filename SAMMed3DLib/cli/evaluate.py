"""``sammed3d evaluate``: an interactive protocol (paper, cvpr25, correction) on a labelled data folder → CSV (+ JSON, plot).

Every output (the CSV, the ``*_summary.csv`` beside it, the ``--plot`` PNG) is checked before the
evaluation starts, none may be a file of the evaluated cases, and all are written all-or-nothing at
the end (:func:`SAMMed3DLib.outputs.all_or_nothing`), each re-read before it replaces a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..clicks import CLICK_MODES
from ..corruption import CORRUPTIONS
from ..errors import DataError, OutputError
from ..evaluate import METHODS, MIN_STRUCTURE_VOXELS, PROTOCOLS
from ._common import add_model_args, add_session_args, apply_threads, load_model_from_args, session_options

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="Dice/NSD per structure under an interactive protocol (paper, cvpr25, correction)",
        description=(
            "Run an interactive protocol on DATA_DIR (case folders with image.nii.gz, label.nii.gz, labels.json). "
            "paper (default): the SAM-Med3D paper's, a first click inside each structure, each next click in the error "
            "region, Dice and NSD@1mm after the given click counts. cvpr25: the CVPR 2025 challenge's, the structure's "
            "box (middle slice, over its z-range) first, then 5 clicks at the deepest voxel of the largest error, Dice "
            "and NSD@2mm after each step, Dice/NSD AUC. correction: a corrupted copy of the truth as the existing mask, "
            "then N corrective clicks (--clicks, default 3) by the cvpr25 rule, Dice before and after each click."
        ),
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder of case folders (or one case folder)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper", help="the protocol (default: %(default)s)")
    p.add_argument(
        "--clicks", type=int, nargs="+", default=None, metavar="N",
        help="paper: click counts to report (default: 1 3 5 10); cvpr25, correction: the number of clicks (default: 5, 3)",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="CSV", help="per-structure results; a *_summary.csv is written beside it")
    p.add_argument("--method", choices=METHODS, default="model", help="the model, or Slicer's Grow from seeds baseline (needs slicer-core)")
    p.add_argument("--click-mode", choices=CLICK_MODES, default="random", help="paper protocol: random (the paper's) or center, RITM-style (default: %(default)s)")
    p.add_argument(
        "--corruption", choices=CORRUPTIONS, default="near_correct",
        help="correction protocol: how the existing mask is made from the truth (default: %(default)s, Dice 0.80-0.95)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="global seed; each structure's clicks derive from it (default: %(default)s)")
    p.add_argument("--cases", nargs="+", metavar="CASE", help="evaluate only these cases (e.g. a held-out split)")
    p.add_argument("--exclude-cases", nargs="+", metavar="CASE", help="leave these cases out")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="only these structures (label values or names)")
    p.add_argument("--max-cases", type=int, metavar="N", help="at most N cases (first by name)")
    p.add_argument("--min-voxels", type=int, default=MIN_STRUCTURE_VOXELS, help="skip smaller structures (default: %(default)s)")
    p.add_argument("--tolerance-mm", type=float, default=None, help="NSD tolerance in mm (default: 1 for paper, 2 for cvpr25 and correction)")
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON line to stdout (nothing else): per-step means, final_dice, final_nsd, seconds_per_step, "
        "dice_auc and nsd_auc (cvpr25, correction), per-structure rows",
    )  # fmt: skip
    p.add_argument("--plot", metavar="PNG", help="draw mean Dice and NSD against clicks (needs matplotlib)")
    add_model_args(p)
    add_session_args(p)
    p.set_defaults(func=run)


def summary_path(out: Path) -> Path:
    """``results.csv`` → ``results_summary.csv``."""
    return out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")


def _case_files(data_dir: str) -> list[tuple[str, Path]]:
    """The images, label maps and label tables of DATA_DIR's cases: no output may replace them."""
    from ..cases import LABELS_JSON, NNUNET_JSON, find_cases

    files = []
    for case in find_cases(data_dir):
        candidates = (
            ("image", case.image_path),
            ("label map", case.label_path),
            ("labels", case.folder / LABELS_JSON),
            ("dataset", case.folder.parent / NNUNET_JSON),
        )
        files += [(f"case {case.case_id}'s {what}", path) for what, path in candidates if path.is_file()]
    return files


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..evaluate import check_matplotlib, evaluate, plot_mean_dice
    from ..outputs import all_or_nothing, check_distinct, check_output_path

    # Fail before a long run, not after it.
    out = check_output_path(args.out, "the --out file", create_folders=True)
    summary = check_output_path(summary_path(out), "the summary file", create_folders=True)
    plot = check_output_path(args.plot, "the --plot file", extensions=(".png",), create_folders=True) if args.plot else None
    check_distinct([("--out", out), ("the summary file", summary), ("--plot", plot)], inputs=_case_files(args.data_dir))
    if plot is not None:
        check_matplotlib()
    if args.method == "model":
        model = load_model_from_args(args)
    else:
        apply_threads(args)
        model = None

    bar = tqdm(total=0, unit="structure", desc="evaluate", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int, message: str) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.set_postfix_str(message, refresh=False)
        bar.update(done - bar.n)

    try:
        result = evaluate(
            args.data_dir,
            model=model,
            method=args.method,
            protocol=args.protocol,
            clicks=args.clicks,
            click_mode=args.click_mode,
            corruption=args.corruption,
            seed=args.seed,
            cases=args.cases,
            exclude_cases=args.exclude_cases,
            labels=args.labels,
            max_cases=args.max_cases,
            min_voxels=args.min_voxels,
            tolerance_mm=args.tolerance_mm,
            progress=progress,
            window_spacing_mm=args.window_spacing,
            **session_options(args),
        )
    finally:
        bar.close()
    _refuse_nothing_evaluated(result, args)

    with all_or_nothing() as files:
        result.write_csv(out, files=files)
        result.write_summary_csv(summary, files=files)
        if plot is not None:
            plot_mean_dice(result, plot, files=files)
    try:
        if args.json:
            print(json.dumps(result.to_json_dict() | {"csv": str(out)}, sort_keys=False), flush=True)
        else:
            print(result.summary_text())
            print(f"wrote {out} and {summary}" + (f" and {plot}" if plot else ""), flush=True)
    except OSError as exc:  # e.g. stdout redirected to a full disk
        raise OutputError(f"cannot print the summary to standard output: {exc}; the CSV files were written: {out}, {summary}") from exc
    return 0


def _refuse_nothing_evaluated(result, args: argparse.Namespace) -> None:  # noqa: ANN001 (an EvaluationResult)
    """Raise DataError, before any output is written, when every structure was skipped; say why each was."""
    if result.structures:
        return
    shown = [f"{s.case}/{s.label} {s.name}: {s.reason}" for s in result.skipped[:5]]
    more = f"; ... ({len(result.skipped)} in all)" if len(result.skipped) > 5 else ""
    raise DataError(
        f"no structure was evaluated: all {len(result.skipped)} were skipped ({'; '.join(shown)}{more}). Nothing was written. "
        "Check that each label map holds the values its label table names, as whole numbers (a resampled, float label map "
        f"may hold none of them), and the options --min-voxels (now {args.min_voxels}) and --labels"
    )
