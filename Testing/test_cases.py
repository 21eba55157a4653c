"""The one case finder (SAMMed3DLib.cases) behind `sammed3d evaluate` and `training.prepare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.cases import find_cases, read_case_images, same_grid
from SAMMed3DLib.errors import DataError
from SAMMed3DLib.evaluate import evaluate


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(path))


def _volume() -> tuple[np.ndarray, np.ndarray]:
    label = np.zeros((12, 12, 12), dtype=np.uint8)
    label[3:8, 3:8, 3:8] = 1
    return (100.0 * label + 10.0).astype(np.float32), label


def _case_folder(folder: Path, meta: dict | None = None) -> None:
    image, label = _volume()
    _write(folder / "image.nii.gz", image)
    _write(folder / "label.nii.gz", label)
    (folder / "labels.json").write_text(json.dumps(meta or {"labels": {"1": "cube"}, "modality": "CT", "region": "test"}))


def _nnunet(root: Path, cases: tuple[str, ...] = ("abc",), labels: dict | None = None) -> None:
    image, label = _volume()
    for case in cases:
        _write(root / "imagesTr" / f"{case}_0000.nii.gz", image)
        _write(root / "labelsTr" / f"{case}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"labels": labels or {"background": 0, "cube": 1}, "channel_names": {"0": "MR"}, "file_ending": ".nii.gz"}))


def test_every_layout_is_found_with_names_paths_and_metadata(tmp_path: Path) -> None:
    _case_folder(tmp_path / "folders" / "b")
    _case_folder(tmp_path / "folders" / "a")
    (tmp_path / "folders" / "notes").mkdir()  # no case file: ignored
    _case_folder(tmp_path / "single")
    _nnunet(tmp_path / "Dataset007_Cube", cases=("y", "x"))
    found = find_cases([tmp_path / "folders", tmp_path / "single", tmp_path / "Dataset007_Cube"])
    assert [c.case_id for c in found] == ["a", "b", "single", "Dataset007_Cube_x", "Dataset007_Cube_y"]
    a, nn = found[0], found[3]
    assert (a.image_path, a.label_path, a.folder) == (tmp_path / "folders/a/image.nii.gz", tmp_path / "folders/a/label.nii.gz", tmp_path / "folders/a")
    assert (a.names, a.modality, a.region) == ({1: "cube"}, "CT", "test")
    assert (nn.image_path.name, nn.label_path.name, nn.names, nn.modality) == ("x_0000.nii.gz", "x.nii.gz", {1: "cube"}, "MR")
    # one folder may be given without a list, and the filters apply to any layout
    assert [c.case_id for c in find_cases(tmp_path / "Dataset007_Cube", cases=["Dataset007_Cube_y"])] == ["Dataset007_Cube_y"]
    assert [c.case_id for c in find_cases(tmp_path / "folders", exclude_cases=["a"])] == ["b"]
    assert [c.case_id for c in find_cases(tmp_path / "folders", max_cases=1)] == ["a"]


def test_nnunet_v1_label_tables_and_missing_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _nnunet(tmp_path / "D1", cases=("p", "q"), labels={"0": "background", "1": "cube"})
    (tmp_path / "D1" / "labelsTr" / "q.nii.gz").unlink()
    (case,) = find_cases(tmp_path / "D1")
    assert (case.case_id, case.names) == ("D1_p", {1: "cube"})
    assert "has no label" in caplog.text


def test_problems_are_named(tmp_path: Path) -> None:
    _case_folder(tmp_path / "one" / "c")
    _case_folder(tmp_path / "two" / "c")
    with pytest.raises(DataError, match=r"case ids occur more than once across the sources: \['c'\]"):
        find_cases([tmp_path / "one", tmp_path / "two"])
    (tmp_path / "half" / "c").mkdir(parents=True)
    (tmp_path / "half" / "c" / "labels.json").write_text('{"labels": {"1": "cube"}}')
    with pytest.raises(DataError, match=r"lacks image\.nii\.gz, label\.nii\.gz"):
        find_cases(tmp_path / "half")
    _case_folder(tmp_path / "empty_labels" / "c", {"labels": {}})
    with pytest.raises(DataError, match=r'no non-empty "labels" object'):
        find_cases(tmp_path / "empty_labels")
    with pytest.raises(DataError, match="nnU-Net raw dataset"):
        find_cases(tmp_path / "missing")


def test_read_case_images_refuses_what_is_not_a_3d_scalar_image(tmp_path: Path) -> None:
    _case_folder(tmp_path / "c")
    (case,) = find_cases(tmp_path / "c")
    image, label = read_case_images(case)
    assert image.GetSize() == label.GetSize() == (12, 12, 12)
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkUInt8), str(tmp_path / "c" / "label.nii.gz"))
    with pytest.raises(DataError, match=r"label\.nii\.gz is a 2D image .* a 3D scalar image is needed"):
        read_case_images(case)
    (tmp_path / "c" / "image.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read .*image\.nii\.gz"):
        read_case_images(case)


class _PaintClicks:
    """A method that paints the clicked voxel: enough to run the protocol on any layout."""

    def __init__(self, image: sitk.Image) -> None:
        self._mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)

    def click_index(self, index_xyz, positive: bool = True) -> None:  # noqa: ANN001
        x, y, z = (int(v) for v in index_xyz)
        self._mask[z, y, x] = int(positive)

    @property
    def mask_array(self) -> np.ndarray:
        return self._mask

    def reset(self) -> None:
        self._mask[...] = 0


def test_evaluation_accepts_an_nnunet_dataset_like_preparation(tmp_path: Path) -> None:
    _nnunet(tmp_path / "Dataset001_Cube")
    result = evaluate(tmp_path / "Dataset001_Cube", method=_PaintClicks, clicks=[1, 2])
    assert result.cases == ["Dataset001_Cube_abc"]
    assert [(r.case, r.label, r.name, r.clicks) for r in result.rows] == [("Dataset001_Cube_abc", 1, "cube", 1), ("Dataset001_Cube_abc", 1, "cube", 2)]


def test_same_grid_compares_size_and_geometry_within_the_callers_tolerances() -> None:
    a = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    b = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    b.SetOrigin((0.004, 0.0, 0.0))
    strict = {"spacing": (1e-4, 1e-5), "origin": (0.0, 1e-3), "direction": (1e-5, 1e-4)}
    loose = {"spacing": (1e-5, 1e-3), "origin": (1e-5, 1e-2), "direction": (1e-5, 1e-3)}
    assert not same_grid(a, b, **strict) and same_grid(a, b, **loose)
    assert not same_grid(a, sitk.Image(4, 5, 7, sitk.sitkUInt8), **loose)
