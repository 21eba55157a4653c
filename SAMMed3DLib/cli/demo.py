"""``sammed3d demo``: the whole pipeline on a sample that needs no download.

The sample is the MNI152 T1 template that nilearn's wheel ships (with its white-matter
probability map as the reference). Without nilearn, a generated phantom is used instead. The
demo simulates a user: a first click at the centre of the structure, then clicks at the centre
of the largest error, printing Dice after each; it writes the segmentation (Slicer .seg.nrrd),
a preview PNG and a JSON summary, all three or none (:func:`SAMMed3DLib.outputs.all_or_nothing`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ._common import add_model_args, add_session_args, load_model_from_args, session_options

logger = logging.getLogger(__name__)

_MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


def _nilearn_data_dir() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if (folder / _MNI_T1).is_file() and (folder / _MNI_WM).is_file() else None


def phantom(seed: int = 0) -> tuple[sitk.Image, sitk.Image, str]:
    """A CT-like phantom (1 × 1 × 2.5 mm, 160 × 160 × 64) with a bright ellipsoid 'organ'.

    Returns:
        image (float32, HU-like), reference label (uint8), structure name.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:64, 0:160, 0:160].astype(np.float32)
    body = ((x - 80) / 70) ** 2 + ((y - 80) / 60) ** 2 <= 1
    organ = ((x - 95) / 28) ** 2 + ((y - 70) / 20) ** 2 + ((z - 32) / 10) ** 2 <= 1
    arr = np.where(body, 40.0, -1000.0) + np.where(organ, 110.0, 0.0) + rng.normal(0, 12, x.shape)
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.SetSpacing((1.0, 1.0, 2.5))
    label = sitk.GetImageFromArray(organ.astype(np.uint8))
    label.CopyInformation(image)
    return image, label, "organ"


def load_sample() -> tuple[sitk.Image, sitk.Image, str, str]:
    """(image, reference label, structure name, sample description)."""
    folder = _nilearn_data_dir()
    if folder is None:
        image, label, name = phantom()
        return image, label, name, "generated CT-like phantom (nilearn not installed)"
    image = sitk.ReadImage(str(folder / _MNI_T1), sitk.sitkFloat32)
    wm = sitk.ReadImage(str(folder / _MNI_WM), sitk.sitkFloat32)
    label = sitk.Cast(wm > 0.5, sitk.sitkUInt8)
    label.CopyInformation(image)
    return image, label, "white_matter", "MNI152 2009a T1 template from the nilearn wheel"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on a bundled sample", description=__doc__)
    p.add_argument("--out", default="sammed3d-demo", help="output folder (default: %(default)s)")
    p.add_argument("--clicks", type=int, default=5, help="simulated clicks (default: %(default)s)")
    add_model_args(p)
    add_session_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..clicks import SimulatedUser
    from ..io import write_preview_png, write_segmentation
    from ..metrics import dice
    from ..outputs import all_or_nothing, write_text_verified
    from ..session import Session

    if args.clicks < 1:
        raise SystemExit("--clicks must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image, label, name, description = load_sample()
    print(f"sample: {description}; structure: {name}")
    model = load_model_from_args(args)
    print(f"model: {model.card.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) on {next(model.parameters()).device}")
    gt = sitk.GetArrayFromImage(label) > 0
    session = Session(model, image, **session_options(args))
    user = SimulatedUser(gt, np.random.default_rng(0), mode="center")
    first_lps = None
    history = []
    pred = np.zeros_like(gt)
    for n in range(1, args.clicks + 1):
        click = user.click(pred)
        if click is None:
            print("perfect mask: no error left to click on")
            break
        index_xyz = np.array(click.index[::-1], dtype=np.float64)
        point_lps = session.geometry.index_to_lps(index_xyz)
        first_lps = point_lps if first_lps is None else first_lps
        t = time.perf_counter()
        session.click(point_lps, positive=click.positive)
        seconds = time.perf_counter() - t
        pred = session.mask_array > 0
        d = float(dice(pred, gt))
        history.append({"click": n, "positive": bool(click.positive), "dice": round(d, 4), "seconds": round(seconds, 3)})
        print(f"click {n:2d} {'+' if click.positive else '-'} at LPS {np.round(point_lps, 1).tolist()} mm: Dice {d:.3f} ({seconds:.2f} s)")
    seg_path = out / f"{name}.seg.nrrd"
    preview = out / "preview.png"
    summary = {"sample": description, "structure": name, "model": model.card.name, "clicks": history}
    with all_or_nothing() as files:
        write_segmentation(session.mask, seg_path, segment_name=name, files=files)
        write_preview_png(image, session.mask, first_lps, preview, files=files)
        write_text_verified(out / "summary.json", json.dumps(summary, indent=2), files=files)
    print(f"wrote {seg_path}, {preview} and {out / 'summary.json'}")
    return 0
