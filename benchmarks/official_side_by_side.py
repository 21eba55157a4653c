"""Side by side: the official SAM-Med3D pipeline and this project's session, per click.

    python benchmarks/official_side_by_side.py --official /tmp/official-sammed3d [--official-commit SHA]
        [--threads 2] [--clicks 5] [--out benchmarks/results/official_side_by_side.json]

Same machine, same process, same random official-size weights (``vit_b_ori``, seed 0, built here
and loaded into both networks), same image (the ``sammed3d benchmark`` CT: 512×512×200 voxels of
0.8×0.8×2.5 mm, axis-aligned, with a 20 mm-thick elliptic organ as the label the official crop
centres on), same clicks (the organ's centre, then points within ±30 mm, alternately negative and
positive). Each pipeline runs once untimed (first-call costs), then once timed; clicks alternate
between the two so that the machine's load falls on both alike.

``--official`` is a checkout of github.com/uni-medical/SAM-Med3D outside this repository (it is
never copied here). What runs from it, as published in ``utils/infer_utils.py`` and
``segment_anything/``:

* ``data_preprocess``: ``tio.Resample`` of the whole image to 1.5 mm, ``tio.ToCanonical``,
  ``tio.CropOrPad`` to 128³ around the label, ``tio.ZNormalization`` of the voxels > 0;
* the network from ``sam_model_registry3D["vit_b_ori"]``: its image encoder once, then for every
  click the body of ``sam_model_infer``'s loop: prompt encoder (all clicks so far and the previous
  low-res logits), mask decoder, ``F.interpolate`` to 128³ (trilinear), sigmoid > 0.5;
* ``data_postprocess``: that 128³ mask resampled (nearest, ``tio.Resample``) onto the original
  grid, which is where a user sees it.

``sam_model_infer`` itself is not called: it reruns the encoder on every call and picks its clicks
from the label, so its loop body is run step by step with the same clicks as ours. The package's
``segment_anything/__init__.py`` is not run either: it imports the 2D SAM's automatic mask
generator, which needs torchvision; an empty package module stands in for it, and only the 3D
modules are imported. The checkout's ``MaskDecoder3D.forward`` requires ``multimask_output``,
which ``sam_model_infer`` does not pass (medim's copy of the network defaults it): it is given as
False, as their training code does. ``utils/infer_utils.py`` imports torchio and edt: run this
script with a Python that has them, e.g. a scratch venv made with ``--system-site-packages``;
torchio 1.x changed the private ``CropOrPad`` method the code calls, so use torchio 0.20 (the
release current at the checkout's date; 0.20.23 was measured).

Ours: :class:`SAMMed3DLib.session.Session` (window resampled straight from the image, encoder,
decoder, paste-back onto the original grid). Not part of the test suite (it needs the checkout).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import SAMMed3DLib  # noqa: F401 - first: OpenMP's passive wait is set before torch loads (both pipelines share it)
import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from SAMMed3DLib.atomic import atomic_write_text
from SAMMed3DLib.benchmark import synthetic_ct
from SAMMed3DLib.geometry import lps_to_ras
from SAMMed3DLib.model import build_sam3d
from SAMMed3DLib.session import Session


def import_official(path: Path) -> tuple[Any, Any]:
    """(sam_model_registry3D, utils.infer_utils) from the checkout, without the 2D package __init__."""
    if not (path / "segment_anything" / "build_sam3D.py").is_file() or not (path / "utils" / "infer_utils.py").is_file():
        raise SystemExit(f"{path} is not a SAM-Med3D checkout (segment_anything/build_sam3D.py and utils/infer_utils.py expected)")
    sys.path.insert(0, str(path))
    package = types.ModuleType("segment_anything")
    package.__path__ = [str(path / "segment_anything")]
    sys.modules["segment_anything"] = package
    build = importlib.import_module("segment_anything.build_sam3D")
    try:
        infer_utils = importlib.import_module("utils.infer_utils")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"the official code needs {exc.name}: run this script with a Python that has torchio and edt") from exc
    return build.sam_model_registry3D, infer_utils


def organ_label(image: sitk.Image) -> sitk.Image:
    """The benchmark CT's bright organ (an elliptic cylinder), 20 mm thick around the middle slice."""
    nx, ny, nz = image.GetSize()
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    organ = (((x - 0.6 * nx) / (0.12 * nx)) ** 2 + ((y - 0.45 * ny) / (0.1 * ny)) ** 2) <= 1
    label = np.zeros((nz, ny, nx), np.uint8)
    label[nz // 2 - 4 : nz // 2 + 4] = organ
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(image)
    return out


def clicks(image: sitk.Image, label: sitk.Image, count: int) -> list[tuple[np.ndarray, int]]:
    """The organ's centre (positive), then ``count`` points within ±30 mm, alternately negative and positive (LPS)."""
    index = np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0)[::-1]
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))
    rng = np.random.default_rng(1)
    return [(centre, 1)] + [(centre + rng.uniform(-30, 30, size=3), int(i % 2)) for i in range(count)]


class Official:
    """The official pipeline on one object: preprocess and encode once, then one mask per click."""

    def __init__(self, network: Any, infer_utils: Any, image_path: str, label_path: str) -> None:
        self.network, self.utils = network, infer_utils
        self.image_path, self.label_path = image_path, label_path

    def first(self, point_lps: np.ndarray, label: int) -> tuple[np.ndarray, dict[str, float]]:
        times: dict[str, float] = {}
        t = time.perf_counter()
        subject, meta = self.utils.get_subject_and_meta_info(self.image_path, self.label_path)
        self.roi_image, _, self.meta = self.utils.data_preprocess(
            copy.deepcopy(subject), copy.deepcopy(meta), category_index=1, target_spacing=(1.5, 1.5, 1.5), crop_size=128
        )
        times["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            self.embedding = self.network.image_encoder(self.roi_image)
        times["encoder"] = time.perf_counter() - t
        self.coords, self.labels = torch.zeros(1, 0, 3), torch.zeros(1, 0, dtype=torch.int64)
        self.previous = torch.zeros(1, 1, 32, 32, 32)
        mask, click_times = self.click(point_lps, label)
        return mask, {**times, **click_times}

    def click(self, point_lps: np.ndarray, label: int) -> tuple[np.ndarray, dict[str, float]]:
        times: dict[str, float] = {}
        t = time.perf_counter()
        # the roi tensor's axes are torchio's canonical RAS (x, y, z) axes: index = affine⁻¹ · RAS point
        ras = np.append(lps_to_ras(point_lps), 1.0)
        index = (np.linalg.inv(self.meta["roi_subject_affine"]) @ ras)[:3]
        self.coords = torch.cat([self.coords, torch.tensor(index, dtype=torch.float32).reshape(1, 1, 3)], dim=1)
        self.labels = torch.cat([self.labels, torch.tensor([[label]])], dim=1)
        with torch.no_grad():
            sparse, dense = self.network.prompt_encoder(points=[self.coords, self.labels], boxes=None, masks=self.previous)
            low_res, _ = self.network.mask_decoder(
                image_embeddings=self.embedding,
                image_pe=self.network.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,  # required by this checkout's MaskDecoder3D; sam_model_infer omits it (medim's copy defaults it)
            )
            self.previous = low_res.detach()
            high_res = F.interpolate(low_res, size=self.roi_image.shape[-3:], mode="trilinear", align_corners=False)
        roi_mask = (torch.sigmoid(high_res) > 0.5).numpy().squeeze().astype(np.uint8)
        times["decoder"] = time.perf_counter() - t
        t = time.perf_counter()
        mask = self.utils.data_postprocess(roi_mask, self.meta)
        times["postprocess"] = time.perf_counter() - t
        return mask, times


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def run(official_path: Path, threads: int, count: int, commit: str) -> dict[str, Any]:
    registry, infer_utils = import_official(official_path)
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)  # both pipelines resample with SimpleITK
    torch.manual_seed(0)
    ours_model = build_sam3d("vit_b_ori").eval()
    theirs_model = registry["vit_b_ori"](checkpoint=None).eval()
    theirs_model.load_state_dict(ours_model.state_dict())  # the same weights in both (strict)
    image = synthetic_ct(oblique=False)
    label = organ_label(image)
    points = clicks(image, label, count)
    result: dict[str, Any] = {"threads": threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory() as folder:
        image_path, label_path = str(Path(folder) / "ct.nii"), str(Path(folder) / "organ.nii")
        sitk.WriteImage(image, image_path)
        sitk.WriteImage(label, label_path)
        for timed in (False, True):  # the first round pays first-call costs and is not reported
            ours = Session(ours_model, image, auto_extend=False)
            theirs = Official(theirs_model, infer_utils, image_path, label_path)
            rows = []
            for i, (point, lab) in enumerate(points):
                t = time.perf_counter()
                our_result = ours.click(point, positive=bool(lab))
                our_s = time.perf_counter() - t
                t = time.perf_counter()
                their_mask, their_steps = theirs.first(point, lab) if i == 0 else theirs.click(point, lab)
                their_s = time.perf_counter() - t
                rows.append({
                    "click": i, "positive": bool(lab), "ours_s": round(our_s, 4), "official_s": round(their_s, 4),
                    "ours_steps_s": {k: round(v, 4) for k, v in our_result.timings.items() if k != "total"},
                    "official_steps_s": {k: round(v, 4) for k, v in their_steps.items()},
                    "mask_dice_ours_vs_official": round(dice(ours.mask_array, their_mask), 4),
                })  # fmt: skip
            if timed:
                result["clicks"] = rows
    first, later = result["clicks"][0], result["clicks"][1:]
    ours_next = statistics.median(r["ours_s"] for r in later)
    theirs_next = statistics.median(r["official_s"] for r in later)
    result.update({
        "first_mask_ours_s": first["ours_s"], "first_mask_official_s": first["official_s"],
        "first_mask_ratio_official_over_ours": round(first["official_s"] / first["ours_s"], 2),
        "next_click_ours_s": round(ours_next, 4), "next_click_official_s": round(theirs_next, 4),
        "next_click_ratio_official_over_ours": round(theirs_next / ours_next, 2),
        "image": "sammed3d benchmark CT, 512x512x200, 0.8x0.8x2.5 mm, axis-aligned",
        "official_checkout": {"repository": "github.com/uni-medical/SAM-Med3D", "commit": commit},
    })  # fmt: skip
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of uni-medical/SAM-Med3D outside this repository")
    parser.add_argument("--official-commit", default="unknown", help="the checkout's commit, recorded in the JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=5, help="follow-up clicks after the first (default: %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/official_side_by_side.json")
    args = parser.parse_args()
    result = run(args.official.resolve(), args.threads, args.clicks, args.official_commit)
    text = json.dumps(result, sort_keys=True)
    atomic_write_text(args.out, text + "\n")
    print(f"{'click':<8}{'ours s':>10}{'official s':>12}{'ratio':>8}{'dice':>8}")
    for r in result["clicks"]:
        print(f"{r['click']:<8}{r['ours_s']:>10.3f}{r['official_s']:>12.3f}{r['official_s'] / r['ours_s']:>8.1f}{r['mask_dice_ours_vs_official']:>8.3f}")
    print(f"first mask: official / ours = {result['first_mask_ratio_official_over_ours']}; next click: {result['next_click_ratio_official_over_ours']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
