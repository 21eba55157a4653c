"""``sammed3d segment``: image + clicks (and/or a box, an existing mask) → segmentation file (and a preview PNG).

``--init MASK`` starts from an existing segmentation (any label file the CLI reads, on any grid):
the clicks correct it (:meth:`SAMMed3DLib.session.Session.set_mask`). ``--box`` gives the object
as a 3D box (:meth:`SAMMed3DLib.session.Session.set_box`).

The outputs are checked before the image and the model are loaded (extension, folder, neither one
is the input image nor the other output), and written all-or-nothing with
:func:`SAMMed3DLib.outputs.all_or_nothing`: both are verified before either replaces a file.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import PromptError
from ..prompts import positive_first
from ._common import add_model_args, add_session_args, load_model_from_args, session_options

logger = logging.getLogger(__name__)


class _AppendClick(argparse.Action):
    """Collect --point/--negative in the order given, with their label."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        clicks = list(getattr(namespace, "clicks", None) or [])
        try:
            xyz = [float(v) for v in values.replace(" ", "").split(",")]
        except ValueError:
            xyz = []
        if len(xyz) != 3:
            parser.error(f"{option_string} expects three comma-separated numbers like 12.5,-40,88; got {values!r}")
        clicks.append((np.array(xyz), self.const))
        namespace.clicks = clicks


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment one structure from clicks",
        description="Segment one structure in IMAGE from positive/negative clicks and write the mask.",
    )
    p.add_argument("image", help="NIfTI, NRRD, MHA file or DICOM folder")
    p.add_argument("--point", action=_AppendClick, const=1, metavar="X,Y,Z", help="positive click (repeatable)")
    p.add_argument("--negative", action=_AppendClick, const=0, metavar="X,Y,Z", help="negative click (repeatable)")
    frame = p.add_mutually_exclusive_group()
    frame.add_argument("--ras", action="store_true", help="points are RAS mm (Slicer) instead of LPS mm (ITK, default)")
    frame.add_argument("--ijk", action="store_true", help="points are voxel indices (i, j, k) of IMAGE")
    p.add_argument("--out", required=True, help="output: .nii.gz, .nii, .nrrd, .mha or .seg.nrrd (Slicer segmentation)")
    p.add_argument("--name", default="Segment_1", help="segment name in a .seg.nrrd (default: %(default)s)")
    p.add_argument("--color", default="0.9,0.4,0.2", metavar="R,G,B", help="segment colour 0..1 (default: %(default)s)")
    p.add_argument("--preview", metavar="PNG", help="also write three orthogonal slices through the first click")
    p.add_argument("--init", metavar="MASK", help="existing segmentation to correct (label file; non-zero = object, or --init-label)")
    p.add_argument("--init-label", type=int, metavar="N", help="with --init: the label value of the structure (default: every non-zero voxel)")
    p.add_argument(
        "--box",
        metavar="X0,Y0,Z0,X1,Y1,Z1",
        help="the object's 3D box: two opposite corners, in the points' frame (with --ijk: the LPS box around the index box)",
    )
    p.add_argument(
        "--correction",
        choices=("local", "window"),
        default="local",
        help="with --init: a click changes only the error under it (local, default) or its whole window",
    )
    add_model_args(p)
    add_session_args(p)
    p.set_defaults(func=run, clicks=[])


def run(args: argparse.Namespace) -> int:
    from ..card import window_card
    from ..geometry import ras_to_lps
    from ..io import SEGMENTATION_EXTENSIONS, read_image, write_preview_png, write_segmentation
    from ..outputs import all_or_nothing, check_distinct, check_output_path
    from ..session import Session

    if not any(label for _, label in args.clicks) and not args.box and not args.init:
        raise PromptError(
            "give at least one positive click with --point X,Y,Z: a new object starts from a click inside the structure "
            "(or give a --box, or an --init mask to correct)"
        )
    if args.init_label is not None and not args.init:
        raise PromptError("--init-label needs --init MASK (the segmentation holding that label)")
    box = _parse_box(args.box) if args.box else None
    try:
        color = tuple(float(c) for c in args.color.split(","))
    except ValueError:
        color = ()
    if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
        raise PromptError(f"--color must be three numbers between 0 and 1 like 0.9,0.4,0.2; got {args.color!r}")
    out = check_output_path(args.out, "the --out file", extensions=tuple(SEGMENTATION_EXTENSIONS))
    preview = check_output_path(args.preview, "the --preview file", extensions=(".png",)) if args.preview else None
    inputs = [("the input image", Path(args.image))] + ([("the --init mask", Path(args.init))] if args.init else [])
    check_distinct([("--out", out), ("--preview", preview)], inputs=inputs)
    t0 = time.perf_counter()
    model = load_model_from_args(args)  # first: its kernels warm up in the background while the image is read
    image = read_image(args.image)
    initial = _read_init(args.init, args.init_label, read_image) if args.init else None
    session = Session(model, image, card=window_card(model, args.window_spacing), correction=args.correction, **session_options(args))
    if initial is not None:
        session.set_mask(initial)
    clicks = _click_order(args.clicks, new_object=initial is None and box is None)
    points = np.array([c for c, _ in clicks], dtype=np.float64).reshape(-1, 3)
    labels = np.array([lab for _, lab in clicks], dtype=np.int64)
    if args.ras:
        points = ras_to_lps(points)
        box = None if box is None else tuple(ras_to_lps(c) for c in box)
    elif args.ijk:
        points = session.geometry.index_to_lps(points)
        box = None if box is None else _index_box_to_lps(box, session.geometry)
    with _ClickProgress(len(labels)) as progress:
        result = session.predict(points, labels, progress=progress, box=box)
    with all_or_nothing() as files:
        write_segmentation(result.mask, out, segment_name=args.name, color_rgb=color, files=files)
        if preview is not None:
            write_preview_png(image, result.mask, _preview_point(points, box, session), preview, files=files)
    voxels = int(np.count_nonzero(session.mask_array))
    spacing = np.prod(image.GetSpacing())
    logger.info(
        "wrote %s: %d voxels (%.1f ml) from %d click(s) in %.2f s",
        out,
        voxels,
        voxels * spacing / 1000.0,
        len(labels),
        time.perf_counter() - t0,
    )
    if preview is not None:
        logger.info("wrote preview %s", preview)
    return 0


def _click_order(clicks: list, new_object: bool) -> list:
    """The clicks as given; for a new object (no --init, no --box) its first --point goes first."""
    if not new_object or not clicks:
        return clicks
    ordered = [clicks[i] for i in positive_first([label for _, label in clicks])]
    if ordered[0] is not clicks[0]:
        logger.info("the first --point runs first (a new object starts from a positive click); the other clicks keep their order")
    return ordered


def _parse_box(text: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or not np.all(np.isfinite(values)):
        raise PromptError(f"--box expects six comma-separated numbers X0,Y0,Z0,X1,Y1,Z1 (two opposite corners); got {text!r}")
    return np.array(values[:3]), np.array(values[3:])


def _index_box_to_lps(box: tuple[np.ndarray, np.ndarray], geometry) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The LPS box around an index box's eight corners (on an oblique image it is larger than the index box)."""
    lo, hi = np.minimum(*box), np.maximum(*box)
    corners = np.array([[(lo, hi)[b][axis] for axis, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
    lps = geometry.index_to_lps(corners)
    return lps.min(axis=0), lps.max(axis=0)


def _read_init(path: str, label: int | None, read_image):  # noqa: ANN001, ANN202
    """The --init segmentation as a 0/1 image (one label of it, with --init-label)."""
    import SimpleITK as sitk

    mask = read_image(path)
    values = sitk.GetArrayViewFromImage(mask)
    if label is None:
        picked = values != 0
    else:
        picked = values == label
        if not picked.any():
            present = np.unique(values[values != 0])[:20].tolist()
            raise PromptError(f"--init-label {label} does not occur in {path}; its labels are {present}")
    out = sitk.GetImageFromArray(picked.astype(np.uint8))
    out.CopyInformation(mask)
    return out


def _preview_point(points: np.ndarray, box, session) -> np.ndarray:  # noqa: ANN001
    """Where the preview's slices cross: the first click, else the box centre, else the mask's centre."""
    if len(points):
        return points[0]
    if box is not None:
        return (np.asarray(box[0]) + np.asarray(box[1])) / 2.0
    where = np.argwhere(session.mask_array)
    centre = where.mean(0)[::-1] if len(where) else (np.array(session.geometry.size_xyz) - 1) / 2.0
    return session.geometry.index_to_lps(centre)


#: Clicks from which ``segment`` shows a progress bar: each click is a decoder pass (0.1–0.6 s on
#: a CPU for the default model), so fewer finish in seconds and the final log line suffices.
PROGRESS_MIN_CLICKS = 10


class _ClickProgress:
    """Context manager giving a ``progress(done, total)`` callback that draws a tqdm bar on stderr.

    It gives None below :data:`PROGRESS_MIN_CLICKS` clicks. The bar appears at the first
    finished click, so an error in the clicks (checked before any runs) prints no empty bar.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None

    def __enter__(self) -> _ClickProgress | None:
        return self if self.total >= PROGRESS_MIN_CLICKS else None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="click", desc="segment", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
