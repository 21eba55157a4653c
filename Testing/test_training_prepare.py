"""Data preparation: the paper's cleaning steps, the RAS cache and its round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.errors import DataError
from training.prepare import (
    PrepareOptions,
    background_fraction,
    clean_structures,
    find_cases,
    is_symmetric_name,
    keep_largest_components,
    main,
    passes_size_check,
    prepare,
    split_classes,
    split_left_right,
)


def _box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# -- step 1: size ------------------------------------------------------------------------------


def _diagonal_line(n: int) -> np.ndarray:
    m = np.zeros((n, n, n), dtype=bool)
    m[np.arange(n), np.arange(n), np.arange(n)] = True
    return m


@pytest.mark.parametrize(
    ("mask", "spacing", "keep", "reason"),
    [
        # 5×5×6 voxels at 1.5 mm = 150 × 3.375 mm³ = 0.51 ml: a 0.5 cm³ blob is dropped
        (_box((20, 20, 20), (2, 2, 2), (7, 7, 8)), (1.5, 1.5, 1.5), False, "volume 0.506 ml"),
        # a 20×20×1 plate: 1.35 ml but 1.5 mm thin
        (_box((30, 30, 30), (0, 0, 5), (20, 20, 6)), (1.5, 1.5, 1.5), False, "has a side < 15.0 mm"),
        # a diagonal line: 27 mm along every axis but 0.07 ml
        (_diagonal_line(20), (1.5, 1.5, 1.5), False, "volume"),
        # 12³ voxels = 18 mm sides, 5.8 ml: kept
        (_box((30, 30, 30), (3, 3, 3), (15, 15, 15)), (1.5, 1.5, 1.5), True, ""),
        # anisotropic: 20×20×3 voxels at 1×1×6 mm = 18 mm thick, 7.2 ml: kept
        (_box((30, 30, 10), (0, 0, 0), (20, 20, 3)), (1.0, 1.0, 6.0), True, ""),
        # the same voxels at 1×1×4 mm: 12 mm thick: dropped
        (_box((30, 30, 10), (0, 0, 0), (20, 20, 3)), (1.0, 1.0, 4.0), False, "12.0 mm"),
        (np.zeros((5, 5, 5), dtype=bool), (1.0, 1.0, 1.0), False, "empty"),
    ],
)
def test_size_check(mask, spacing, keep, reason):
    ok, why = passes_size_check(mask, spacing)
    assert ok is keep
    assert reason in why


# -- step 2: split and background ----------------------------------------------------------------


def test_split_classes_one_mask_per_class_and_unnamed_values():
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[0:2] = 1
    label[4:6] = 3
    out = split_classes(label, {1: "liver", 2: "spleen"})
    assert [name for name, _ in out] == ["liver", "label_3"]  # 2 is absent, 3 is unnamed
    assert out[0][1].sum() == 2 * 36 and out[1][1].sum() == 2 * 36
    assert not (out[0][1] & out[1][1]).any()


@pytest.mark.parametrize(
    ("side", "window", "expected"),
    [
        (30, 128, 1 - 27000 / 128**3),  # 1.29 % foreground: kept at 0.99
        (20, 128, 1 - 8000 / 128**3),  # 0.38 %: dropped at 0.99
        (10, 32, 1 - 1000 / 32**3),
        (40, 32, 0.0),  # larger than the crop: no background
    ],
)
def test_background_fraction_of_the_model_crop(side, window, expected):
    mask = _box((200, 200, 200), (50, 60, 70), (50 + side, 60 + side, 70 + side))
    assert background_fraction(mask, window) == pytest.approx(expected)


def test_background_fraction_ignores_shape_and_position():
    # a left/right pair has an empty centre; what counts is how much of a crop it can fill
    pair = np.zeros((100, 20, 20), dtype=bool)
    pair[0:10, 0:10, 0:10] = pair[90:100, 0:10, 0:10] = True
    assert background_fraction(pair, 32) == pytest.approx(1 - 2000 / 32**3)
    assert background_fraction(np.zeros((4, 4, 4), dtype=bool)) == 1.0


# -- step 3: components ------------------------------------------------------------------------


def test_keep_largest_components_keeps_five():
    mask = np.zeros((80, 10, 10), dtype=bool)
    sizes = [8, 1, 6, 2, 7, 5, 3]  # component lengths along axis 0, separated by gaps
    pos = 0
    for s in sizes:
        mask[pos : pos + s, 2:4, 2:4] = True
        pos += s + 2
    cleaned, removed = keep_largest_components(mask, 5)
    assert removed == 2
    assert cleaned.sum() == 4 * (8 + 6 + 7 + 5 + 3)
    assert not cleaned[10, 2, 2]  # the 1-voxel-long component (second) is gone
    same, none_removed = keep_largest_components(cleaned, 5)
    assert none_removed == 0 and np.array_equal(same, cleaned)


def test_diagonal_neighbours_are_one_component():
    mask = _diagonal_line(6)
    cleaned, removed = keep_largest_components(mask, 1)
    assert removed == 0 and cleaned.sum() == 6


# -- step 4: symmetry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("kidney", True), ("lung", True), ("adrenal_gland", True), ("kidney_left", False), ("liver", False), ("l_kidney", False), ("Kidney", True)],
)
def test_symmetric_names(name, expected):
    assert is_symmetric_name(name) is expected


def test_split_left_right_in_ras_order():
    mask = np.zeros((60, 20, 20), dtype=bool)
    mask[5:20, 5:15, 5:15] = True  # low axis-0 index = patient left in an RAS array
    mask[40:52, 5:15, 5:15] = True  # high index = patient right
    left, right = split_left_right(mask, lr_axis=0, right_is_increasing=True)
    assert left[5:20, 5:15, 5:15].all()
    assert right[40:52, 5:15, 5:15].all()
    assert not (left & right).any() and (left | right).sum() == mask.sum()
    # LPS arrays run the other way
    left2, right2 = split_left_right(mask, lr_axis=0, right_is_increasing=False)
    assert np.array_equal(left2, right) and np.array_equal(right2, left)


@pytest.mark.parametrize(
    "second",
    [
        (slice(10, 20), slice(5, 15), slice(16, 19)),  # above the first, same left-right range: not a pair
        (slice(40, 42), slice(5, 7), slice(5, 7)),  # far smaller than the first (< 20 %): not a pair
    ],
)
def test_split_left_right_refuses_non_pairs(second):
    mask = np.zeros((60, 20, 20), dtype=bool)
    mask[5:20, 5:15, 5:15] = True
    mask[second] = True
    assert split_left_right(mask) is None


def test_clean_structures_runs_all_steps_and_logs_drops():
    label = np.zeros((100, 40, 40), dtype=np.uint8)
    label[10:30, 10:30, 10:30] = 1  # "kidney": two halves → left/right
    label[70:90, 10:30, 10:30] = 1
    label[50:53, 5:8, 5:8] = 2  # 27 voxels: under 1 ml
    label[40:60, 32:35, 10:30] = 3  # 4.5 mm thin
    label[40:60, 10:30, 33:40] = 4  # a 7-voxel (10.5 mm) slab... dropped by extent
    kept, dropped = clean_structures("c", label, {1: "kidney", 2: "speck", 3: "plate", 4: "slab"}, PrepareOptions(window=32))
    names = [n for n, _ in kept]
    assert names == ["kidney_left", "kidney_right"]
    left = dict(kept)["kidney_left"]
    assert left[10:30].any() and not left[70:90].any()  # axis 0 increases toward Right
    assert {d.structure: d.step for d in dropped} == {"speck": "1-size", "plate": "1-size", "slab": "1-size"}


def test_background_step_drops_tiny_masks_in_the_window():
    label = np.zeros((60, 60, 60), dtype=np.uint8)
    label[10:22, 10:22, 10:22] = 1  # 1728 voxels (5.8 ml): fine by size, 0.08 % of a 128³ crop
    kept, dropped = clean_structures("c", label, {1: "blob"}, PrepareOptions(window=128, max_background=0.99))
    assert kept == [] and dropped[0].step == "2-background"
    kept, _ = clean_structures("c", label, {1: "blob"}, PrepareOptions(window=128, max_background=0.9995))
    assert [n for n, _ in kept] == ["blob"]


# -- the cache ---------------------------------------------------------------------------------


def _write_case(folder: Path, direction, spacing=(1.2, 1.0, 2.0), size=(50, 40, 30), blob_lps=(20.0, -10.0, 5.0), names=None):
    """An image with a bright ball at ``blob_lps`` (labelled 1) and a second ball (label 2)."""
    folder.mkdir(parents=True)
    ref = sitk.Image(list(size), sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetDirection(direction)
    # centre the volume on the LPS origin so the ball is inside for every direction
    centre_idx = [(n - 1) / 2 for n in size]
    offset = np.array(ref.TransformContinuousIndexToPhysicalPoint(centre_idx))
    ref.SetOrigin(list(-offset))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3).astype(float)
    d = np.array(direction).reshape(3, 3)
    pts = (idx * np.array(spacing)) @ d.T + np.array(ref.GetOrigin())
    dist = np.linalg.norm(pts - np.array(blob_lps), axis=1).reshape(size)
    dist2 = np.linalg.norm(pts - np.array([-20.0, 10.0, -5.0]), axis=1).reshape(size)
    lab_xyz = np.zeros(size, dtype=np.uint8)
    lab_xyz[dist < 10] = 1
    lab_xyz[dist2 < 9] = 2
    img_xyz = (100 + 500 * (lab_xyz > 0)).astype(np.int16)
    image = sitk.GetImageFromArray(img_xyz.transpose(2, 1, 0))
    image.CopyInformation(ref)
    label = sitk.GetImageFromArray(lab_xyz.transpose(2, 1, 0))
    label.CopyInformation(ref)
    sitk.WriteImage(image, str(folder / "image.nii.gz"))
    sitk.WriteImage(label, str(folder / "label.nii.gz"))
    (folder / "labels.json").write_text(json.dumps({"labels": names or {"1": "ball", "2": "other"}, "modality": "CT", "region": "test"}))


DIRECTIONS = {
    "identity": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "flipped": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "permuted": (0, 0, -1, 1, 0, 0, 0, -1, 0),  # sagittal-like: columns are the axes' directions
}


@pytest.mark.parametrize("direction", list(DIRECTIONS), ids=list(DIRECTIONS))
def test_cache_round_trip_and_ras_orientation(tmp_path, direction):
    _write_case(tmp_path / "src" / "case1", DIRECTIONS[direction])
    index = prepare([tmp_path / "src"], tmp_path / "cache", PrepareOptions(window=32))
    entry = index["cases"][0]
    with np.load(tmp_path / "cache" / entry["file"]) as data:
        image, label = data["image"], data["label"]
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert list(image.shape) == entry["shape_ras"] == list(label.shape)
    by_name = {s["name"]: s for s in entry["structures"]}
    assert set(by_name) == {"ball", "other"}
    for s in entry["structures"]:
        assert int((label == s["value"]).sum()) == s["voxels"]
        assert s["volume_ml"] == pytest.approx(4 / 3 * np.pi * (1.0 if s["name"] == "ball" else 0.729), rel=0.15)
    # centroid of the ball in cache indices → LPS with the entry's grid: must be the ball's centre
    centroid = np.argwhere(label == by_name["ball"]["value"]).mean(axis=0)
    d = np.array(entry["direction_lps"]).reshape(3, 3)
    lps = np.array(entry["origin_lps"]) + d @ (centroid * index["spacing_mm"])
    np.testing.assert_allclose(lps, [20.0, -10.0, 5.0], atol=1.0)
    # axis 0 increases toward patient Right = decreasing LPS x: the ball (x = +20, left) sits at
    # lower axis-0 index than the other ball (x = −20, right); axis 1 toward Anterior (−y),
    # axis 2 toward Superior (+z)
    other = np.argwhere(label == by_name["other"]["value"]).mean(axis=0)
    assert centroid[0] < other[0] and centroid[1] > other[1] and centroid[2] > other[2]
    # image resampled linearly: bright inside, no clipping, 0 outside the source
    assert image[tuple(np.round(centroid).astype(int))] == pytest.approx(600, abs=1)


def test_label_values_above_255_survive_resampling(tmp_path):
    # FreeSurfer colour-table labels (ctx-lh-* 1000-1035, ctx-rh-* 2000-2035) in a uint16 map: a
    # uint8 resampling once clamped both to 255, which no labels.json names, so both were lost
    _write_case(tmp_path / "src" / "c", DIRECTIONS["flipped"], names={"1000": "ctx_lh_a", "2035": "ctx_rh_b"})
    label_path = tmp_path / "src" / "c" / "label.nii.gz"
    label = sitk.ReadImage(str(label_path))
    arr = sitk.GetArrayFromImage(label).astype(np.uint16)
    wide = sitk.GetImageFromArray(np.where(arr == 1, 1000, np.where(arr == 2, 2035, 0)).astype(np.uint16))
    wide.CopyInformation(label)
    sitk.WriteImage(wide, str(label_path))
    index = prepare([tmp_path / "src"], tmp_path / "cache", PrepareOptions(window=32))
    assert [s["name"] for s in index["cases"][0]["structures"]] == ["ctx_lh_a", "ctx_rh_b"]
    assert [s["volume_ml"] for s in index["cases"][0]["structures"]] == pytest.approx([4.19, 3.05], rel=0.15)


def test_nnunet_raw_layout(tmp_path):
    root = tmp_path / "Dataset001_Test"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    _write_case(tmp_path / "tmpcase", DIRECTIONS["identity"])
    for name, dst in (("image.nii.gz", root / "imagesTr" / "abc_0000.nii.gz"), ("label.nii.gz", root / "labelsTr" / "abc.nii.gz")):
        (tmp_path / "tmpcase" / name).rename(dst)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney": 1, "other": 2}, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    cases = find_cases([root])
    assert [(c.case_id, c.names, c.modality) for c in cases] == [("Dataset001_Test_abc", {1: "kidney", 2: "other"}, "CT")]
    index = prepare([root], tmp_path / "cache", PrepareOptions(window=32))
    assert [s["name"] for s in index["cases"][0]["structures"]] == ["kidney", "other"]


def test_drops_are_written_to_the_index(tmp_path):
    _write_case(tmp_path / "src" / "c", DIRECTIONS["identity"])
    # the balls hold 4.2 ml and 3.1 ml
    index = prepare([tmp_path / "src"], tmp_path / "cache", PrepareOptions(window=32, min_volume_ml=3.6))
    assert index["dropped_by_step"] == {"1-size": 1}
    assert [(d["case"], d["structure"], d["step"]) for d in index["dropped"]] == [("c", "other", "1-size")]
    assert [s["name"] for s in index["cases"][0]["structures"]] == ["ball"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        find_cases([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no labelled case"):
        find_cases([tmp_path / "empty"])
    _write_case(tmp_path / "src" / "c", DIRECTIONS["identity"])
    with pytest.raises(DataError, match="no structure survived"):
        prepare([tmp_path / "src"], tmp_path / "cache", PrepareOptions(min_volume_ml=1000))


def test_cli_prints_summary(tmp_path, capsys):
    _write_case(tmp_path / "src" / "c", DIRECTIONS["identity"])
    assert main([str(tmp_path / "src"), "--out", str(tmp_path / "cache"), "--max-background", "0.9999"]) == 0
    assert "1 case(s), 2 structure(s)" in capsys.readouterr().out
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "c2")]) == 2


@pytest.mark.data
def test_prepare_one_real_case(shared_data, tmp_path):
    manifest = {c["case"]: c for c in json.loads((shared_data / "manifest.json").read_text(encoding="utf-8"))["cases"]}
    # 15,800 voxels at 1.5 mm = 0.75 % of a 128³ crop: the paper's 0.99 would drop it
    with pytest.raises(DataError, match="no structure survived"):
        prepare([shared_data / "sts002_mr_t1"], tmp_path / "paper")
    index = prepare([shared_data / "sts002_mr_t1"], tmp_path / "cache", PrepareOptions(max_background=0.999))
    entry = index["cases"][0]
    (s,) = entry["structures"]
    (expected,) = manifest["sts002_mr_t1"]["structures"]
    assert s["name"] == expected["name"] == "soft_tissue_sarcoma"
    assert s["volume_ml"] == pytest.approx(expected["volume_ml"], rel=0.1)
    # the 1.5 mm RAS grid covers the source extent: floor(size × spacing / 1.5) per physical axis
    extent = sorted(n * sp for n, sp in zip(manifest["sts002_mr_t1"]["shape_xyz"], manifest["sts002_mr_t1"]["spacing_mm_xyz"]))
    assert sorted(entry["shape_ras"]) == [int(e // 1.5) for e in extent]
