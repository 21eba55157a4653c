"""Labelled cases on disk: one finder for evaluation and for training-data preparation.

:func:`find_cases` turns source folders into :class:`Case` records (paths and structure names);
:func:`read_case_images` reads one case's image and label map. ``sammed3d evaluate``
(:mod:`SAMMed3DLib.evaluate`) and ``python -m training.prepare`` both go through them, so every
layout below works in both, and a broken case fails the same way in both.

Accepted layouts (each source folder is one of them):

* a folder of case folders, the layout of ``../shared/data/train`` (its ``manifest.json`` is
  documentation only and not needed)::

      DATA_DIR/<case>/image.nii.gz   3D image
      DATA_DIR/<case>/label.nii.gz   multi-label map on the same grid (0 = background)
      DATA_DIR/<case>/labels.json    {"labels": {"1": "liver", ...}, "modality": ..., "region": ...}

  Sub-folders holding none of the three files are ignored; one holding some but not all of
  them is an error (a half-copied case should not vanish silently);
* a single such case folder;
* an nnU-Net raw dataset: ``dataset.json`` (v1 ``{"labels": {"1": "liver"}}`` or v2
  ``{"labels": {"liver": 1}}``, ``file_ending``, ``channel_names``/``modality``),
  ``imagesTr/<case>_0000<file_ending>`` (first channel) and ``labelsTr/<case><file_ending>``.
  Its cases are named ``<dataset folder>_<case>``; an image without a label is skipped with a
  warning.

Design: finding reads names and JSON only, never an image, so listing a large collection is
cheap; reading checks that both files are 3D scalar images. How closely the label must lie on
the image grid is the caller's decision, with :func:`same_grid` and its tolerances (evaluation
requires it; preparation resamples both and only aligns labels that differ in the last digits).
Every error is a :class:`~SAMMed3DLib.errors.DataError` that names the file and says what the
expected layout is.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import SimpleITK as sitk

from .errors import ConfigError, DataError, ImageError

logger = logging.getLogger(__name__)

IMAGE_FILE, LABEL_FILE, LABELS_JSON = "image.nii.gz", "label.nii.gz", "labels.json"
#: The files of an nnU-Net raw dataset that mark its folder.
NNUNET_JSON, NNUNET_IMAGES, NNUNET_LABELS = "dataset.json", "imagesTr", "labelsTr"
EXPECTED_LAYOUT = (
    f"expected DATA_DIR/<case>/{IMAGE_FILE}, {LABEL_FILE} and {LABELS_JSON} "
    '({"labels": {"1": "liver", ...}}), as in ../shared/data/README.md, '
    f"or an nnU-Net raw dataset ({NNUNET_JSON}, {NNUNET_IMAGES}/, {NNUNET_LABELS}/)"
)
#: Largest label value a labels.json may name (uint16 label maps).
MAX_LABEL_VALUE = 65535

#: One source folder, or several.
Sources = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]]]


@dataclass(frozen=True)
class Case:
    """One labelled case.

    Attributes:
        case_id: unique name (the case folder's name; ``<dataset>_<case>`` for nnU-Net).
        image_path: the 3D image.
        label_path: the multi-label map (0 = background).
        names: label value → structure name, ascending values.
        modality: e.g. ``"CT"`` (from labels.json / dataset.json; ``""`` if not given).
        region: e.g. ``"abdomen"`` (labels.json only; ``""`` if not given).
    """

    case_id: str
    image_path: Path
    label_path: Path
    names: dict[int, str]
    modality: str = ""
    region: str = ""

    @property
    def folder(self) -> Path:
        """The folder holding the image (the case folder; ``imagesTr`` for nnU-Net)."""
        return self.image_path.parent


def _read_json(path: Path, example: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; it must be JSON like {example}") from exc


def read_labels_json(path: Path) -> tuple[dict[int, str], dict[str, Any]]:
    """(value → name, ascending; the whole JSON object) of a case's labels.json.

    Raises:
        DataError: the file is unreadable, not JSON, or its ``labels`` object is empty or invalid.
    """
    example = '{"labels": {"1": "liver"}}'
    data = _read_json(path, example)
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise DataError(f'{path} has no non-empty "labels" object; write {{"labels": {{"1": "liver", ...}}}}')
    out: dict[int, str] = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            value = -1
        if not 1 <= value <= MAX_LABEL_VALUE or not isinstance(name, str) or not name:
            raise DataError(f"{path}: label {key!r}: {name!r} is invalid; keys are label values >= 1, values are names")
        out[value] = name
    return dict(sorted(out.items())), data


def _case_folder(folder: Path) -> Case | None:
    """The case in ``folder``, None when it holds none of the case files."""
    files = (IMAGE_FILE, LABEL_FILE, LABELS_JSON)
    present = [(folder / f).is_file() for f in files]
    if not any(present):
        return None
    if not all(present):
        missing = [f for f, ok in zip(files, present) if not ok]
        raise DataError(f"case folder {folder} lacks {', '.join(missing)}; {EXPECTED_LAYOUT}")
    names, meta = read_labels_json(folder / LABELS_JSON)
    return Case(folder.name, folder / IMAGE_FILE, folder / LABEL_FILE, names, str(meta.get("modality", "")), str(meta.get("region", "")))


def _is_nnunet(root: Path) -> bool:
    return (root / NNUNET_JSON).is_file() and (root / NNUNET_IMAGES).is_dir()


def _nnunet_names(labels: dict[str, Any]) -> dict[int, str]:
    """Label value → name of a dataset.json ``labels`` table (v1 or v2), background dropped."""
    names: dict[int, str] = {}
    for key, value in labels.items():
        # nnU-Net v2: {"name": value}; v1: {"value": "name"}.
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit() and not key.isdigit()):
            names[int(value)] = str(key)
        elif isinstance(value, list):  # v2 region-based labels: skip (not plain classes)
            continue
        else:
            names[int(key)] = str(value)
    names.pop(0, None)
    return dict(sorted(names.items()))


def _nnunet_cases(root: Path) -> list[Case]:
    meta = _read_json(root / NNUNET_JSON, '{"labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}')
    names = _nnunet_names(meta.get("labels", {}))
    modality = ""
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if isinstance(channels, dict) and channels:
        modality = str(channels.get("0", next(iter(channels.values()))))
    suffix = meta.get("file_ending", ".nii.gz")
    out = []
    for image_path in sorted((root / NNUNET_IMAGES).glob(f"*_0000{suffix}")):
        case_id = image_path.name[: -len(f"_0000{suffix}")]
        label_path = root / NNUNET_LABELS / f"{case_id}{suffix}"
        if not label_path.is_file():
            logger.warning("nnU-Net case %s has no label %s; skipped", case_id, label_path)
            continue
        out.append(Case(f"{root.name}_{case_id}", image_path, label_path, dict(names), modality, ""))
    return out


def _cases_of(root: Path) -> list[Case]:
    """Every case of one source folder, sorted by name (see the module docstring)."""
    if not os.path.isdir(root):  # False for any OSError too (e.g. a name longer than the file system allows)
        raise DataError(f"data folder {root} does not exist or is not a folder; {EXPECTED_LAYOUT}")
    if _is_nnunet(root):
        found = _nnunet_cases(root)
    else:
        single = _case_folder(root)
        found = [single] if single is not None else [c for c in (_case_folder(p) for p in sorted(root.iterdir()) if p.is_dir()) if c is not None]
    if not found:
        raise DataError(f"no labelled case: data folder {root} holds no case folders; {EXPECTED_LAYOUT}")
    return found


def _as_source_list(sources: Sources) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        return [Path(sources).expanduser()]
    return [Path(s).expanduser() for s in sources]


def _select(found: list[Case], where: str, cases: Iterable[str] | None, exclude_cases: Iterable[str] | None, max_cases: int | None) -> list[Case]:
    by_name = {c.case_id: c for c in found}
    if cases is not None:
        wanted = list(dict.fromkeys(cases))
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            hints = {n: difflib.get_close_matches(n, list(by_name), n=1) for n in unknown}
            said = ", ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
            raise DataError(f"case(s) {said} not found in {where}; available: {', '.join(by_name)}")
        found = [by_name[n] for n in sorted(wanted)]
    if exclude_cases is not None:
        excluded = set(exclude_cases)
        for name in sorted(excluded - set(by_name)):
            logger.warning("--exclude-cases: no case named %r in %s", name, where)
        found = [c for c in found if c.case_id not in excluded]
    if max_cases is not None:
        if max_cases < 1:
            raise ConfigError(f"max_cases must be >= 1, got {max_cases}")
        found = found[:max_cases]
    if not found:
        raise DataError(f"no case of {where} is left after the case filters")
    return found


def find_cases(
    sources: Sources,
    *,
    cases: Iterable[str] | None = None,
    exclude_cases: Iterable[str] | None = None,
    max_cases: int | None = None,
) -> list[Case]:
    """The labelled cases of one or more source folders, after the case filters.

    Args:
        sources: a folder (of case folders, a single case folder or an nnU-Net raw dataset) or
            several; cases come source by source, each source's sorted by name.
        cases: only these case ids (e.g. a held-out split), sorted by name; unknown ids are an
            error (with a "did you mean" hint).
        exclude_cases: leave these case ids out (unknown ones are logged).
        max_cases: keep at most this many (the first, after the other filters).

    Returns:
        The cases; no image has been read yet (see :func:`read_case_images`).

    Raises:
        DataError: a source is missing or holds no valid case; a case folder is incomplete or its
            labels.json invalid; a case id occurs in two sources; a name in ``cases`` is unknown.
        ConfigError: ``max_cases`` < 1.
    """
    roots = _as_source_list(sources)
    found = [case for root in roots for case in _cases_of(root)]
    ids = [c.case_id for c in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"case ids occur more than once across the sources: {dupes}; rename the case folders")
    where = str(roots[0]) if len(roots) == 1 else ", ".join(str(r) for r in roots)
    return _select(found, where, cases, exclude_cases, max_cases)


def same_grid(
    a: sitk.Image, b: sitk.Image, *, spacing: tuple[float, float], origin: tuple[float, float], direction: tuple[float, float]
) -> bool:
    """Whether two images have the same size and, within tolerances, the same geometry.

    Args:
        a, b: the images (e.g. a case's image and label map).
        spacing, origin, direction: ``(rtol, atol)`` of :func:`numpy.allclose` for the voxel
            spacing (mm), the origin (mm) and the direction cosines. Callers choose them for
            their purpose: evaluation requires the label on the image grid, preparation treats
            labels that differ in the last digits as on it.
    """
    return (
        a.GetSize() == b.GetSize()
        and bool(np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=spacing[0], atol=spacing[1]))
        and bool(np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=origin[0], atol=origin[1]))
        and bool(np.allclose(a.GetDirection(), b.GetDirection(), rtol=direction[0], atol=direction[1]))
    )


def read_image(path: str | os.PathLike[str], case_id: str | None = None) -> sitk.Image:
    """Read one 3D scalar image file (a case's image or label map).

    Raises:
        DataError: the file is unreadable (the message gives the reader's last line), is a FIFO,
            socket or device (which could block the reader forever), is a NIfTI file that is
            truncated, corrupt or holds NaN/inf voxels (the checks of ``sammed3d segment``,
            :func:`SAMMed3DLib.image_checks.check_nifti_file`), or is not a 3D scalar image.
    """
    from .image_checks import check_nifti_file
    from .special_files import special_file_kind

    kind = special_file_kind(Path(path))
    if kind is not None:
        raise DataError(f"cannot read {path}: it is {kind}, not a regular file, and reading it could block forever")
    if str(path).lower().endswith((".nii", ".nii.gz")):
        try:
            check_nifti_file(path)
        except ImageError as exc:
            raise DataError(f"case {case_id}: {exc}" if case_id else str(exc)) from exc
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"{path} is a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} component(s); "
            "a 3D scalar image is needed"
        )
    return image


def read_case_images(case: Case) -> tuple[sitk.Image, sitk.Image]:
    """Read a case's image and label map, both checked to be 3D scalar images (:func:`read_image`).

    Returns:
        ``(image, label)`` as SimpleITK images (the label's grid is not compared with the image's).

    Raises:
        DataError: a file cannot be read as a 3D scalar image (see :func:`read_image`).
    """
    return read_image(case.image_path, case.case_id), read_image(case.label_path, case.case_id)


__all__ = [
    "EXPECTED_LAYOUT", "IMAGE_FILE", "LABELS_JSON", "LABEL_FILE", "Case", "find_cases", "read_case_images", "read_image", "read_labels_json",
    "same_grid",
]  # fmt: skip
