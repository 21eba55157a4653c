"""Options shared by the sub-commands that run the model (model, device, threads)."""

from __future__ import annotations

import argparse
import logging
import math
import os

logger = logging.getLogger(__name__)


def default_threads() -> int:
    """CPU threads for torch: the cores this process may use.

    More threads than free cores collapses OpenMP performance (a 29 ms decoder call took 1.07 s
    when another process held one of two cores; facts file §7), so never more than the cores.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (argparse turns the error into a usage line)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type of a finite number above 0 (a size in mm)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of millimetres above 0 like 0.75, got {text!r}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="registry name (see `sammed3d models`) or checkpoint path (default: %(default)s, ships with the package)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: the cores available)")


#: The session's switches on the command line: (option, Session keyword, help). Each is a
#: ``--name`` / ``--no-name`` pair; None as the default means the model's own default.
_SESSION_SWITCHES = (
    (
        "zoom-out",
        "zoom_out",
        "when the mask leaves its window, also run the model on a 2x (then 4x) coarser window that holds the object "
        "and refine its mask in the native windows (default: %(default)s)",
    ),
    (
        "refine",
        "refine",
        "snap each mask to the image's edges within 3 mm of its border, at the image's resolution (default: on for "
        "this project's models, off for official checkpoints)",
    ),
    (
        "signed-clicks",
        "signed_clicks",
        "a positive click only adds voxels, a negative click only removes them (default: on for this project's "
        "models, off for official checkpoints, whose masks stay the official ones)",
    ),
    (
        "drop-islands",
        "drop_islands",
        "a click never adds a part of the mask more than 4 mm from the mask it had and from every positive click "
        "(default: off)",
    ),
    (
        "adaptive-scale",
        "adaptive_scale",
        "see an object in a 0.75 mm window first, then 1 mm, then 1.5 mm as its positive clicks spread (default: on "
        "for this project's models, off for official checkpoints and with --window-spacing)",
    ),
)


def add_session_args(parser: argparse.ArgumentParser) -> None:
    """``--zoom-out``, ``--refine``, ``--signed-clicks``, ``--drop-islands`` and ``--adaptive-scale`` (each with its ``--no-`` form): the
    session's switches; and ``--window-spacing``."""
    from ..session_steps import ZOOM_OUT_DEFAULT

    for option, keyword, text in _SESSION_SWITCHES:
        default = ZOOM_OUT_DEFAULT if keyword == "zoom_out" else None
        parser.add_argument(f"--{option}", dest=keyword, action=argparse.BooleanOptionalAction, default=default, help=text)
    parser.add_argument(
        "--window-spacing",
        type=positive_float,
        default=None,
        metavar="MM",
        help="voxel spacing of the model's window, mm (default: the model card's, 1.5 mm for the default model); "
        "0.75 sees a structure under 40 mm across at the size the default model was trained on, and loses on larger ones",
    )


def session_options(args: argparse.Namespace) -> dict[str, bool | None]:
    """The :class:`~SAMMed3DLib.session.Session` keywords of :func:`add_session_args`' switches."""
    return {keyword: getattr(args, keyword) for _, keyword, _ in _SESSION_SWITCHES}


def apply_threads(args: argparse.Namespace) -> None:
    import torch

    n = args.threads or default_threads()
    torch.set_num_threads(n)
    logger.debug("torch uses %d CPU thread(s)", n)


def load_model_from_args(args: argparse.Namespace):
    """Load ``args.model`` on ``args.device`` after setting the thread count; its kernels warm up in the background."""
    from ..checkpoint import load_model

    apply_threads(args)
    model = load_model(args.model, device=args.device, warm_up=True)
    logger.info("model %s (%s) on %s", model.card.name, args.model, next(model.parameters()).device)
    return model
